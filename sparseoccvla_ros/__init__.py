"""ROS 2 adapters of SparseOccVLA: nodes and message conversions (thin; the logic lives in sparseoccvla_core)."""
