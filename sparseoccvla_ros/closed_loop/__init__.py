"""Closed-loop driving over ROS 2 (docs/closed_loop.md): ``sim_node`` and the ``sparseoccvla closed-loop`` bringup."""
