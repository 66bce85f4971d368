"""nuScenes rosbag2 (MCAP) replay: converter, player, recorder and bag evaluation (``sparseoccvla bag|play|record|eval-bag``)."""
