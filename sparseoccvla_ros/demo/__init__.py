"""``sparseoccvla demo``: the main job in one command - a held-out scene through the ROS 2 nodes, and its report.

    sparseoccvla demo                                   # synthetic scene (seed 1000), checkpoints/default
    sparseoccvla demo --ckpt runs/stage3 --layout curve --frames 16 --out outputs/my_run
    sparseoccvla demo --data /data/nuscenes --scene scene-0103
    sparseoccvla demo --bag bags/scene-0103

Modules (none of them imports rclpy at import time; :mod:`.report` never does):

* :mod:`.command` - the command line and the pipeline of stages (scene -> bag -> replay + questions -> eval-bag ->
  report), with progress lines;
* :mod:`.questions` - the ``AskScene`` client that asks questions during the replay;
* :mod:`.collect` - reads the GT bag and the recording back into the report's data (rosbags, no ROS install);
* :mod:`.report` - figures (matplotlib) and ``report.html`` / ``report.md`` from that data.
"""
