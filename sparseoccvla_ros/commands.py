"""The ``sparseoccvla`` commands of the ROS 2 package, registered with the core's CLI through the
``sparseoccvla.commands`` entry-point group (setup.py): the core never names this package.

Each module provides ``add_arguments(parser)`` and ``run(args)``; it is imported only when its command is chosen.
"""

from __future__ import annotations

# command -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "bag": ("sparseoccvla_ros.replay.bag_command", "nuScenes / synthetic scenes -> rosbag2 MCAP (+ GT topics)"),
    "eval-bag": ("sparseoccvla_ros.replay.eval_bag", "score a recording of the node's outputs against a GT bag"),
    "calibration": ("sparseoccvla_ros.replay.calibration_cmd", "camera calibration YAML from nuScenes tables or a bag"),
    "play": ("sparseoccvla_ros.replay.player", "play a rosbag2 bag in real time (raw CDR, /clock, latched /tf_static)"),
    "record": ("sparseoccvla_ros.replay.recorder", "record the driving node's outputs (or any topics) to MCAP"),
    "drive": ("sparseoccvla_ros.bringup", "pip-only bringup: player + driving node + recorder in one process"),
    "demo": ("sparseoccvla_ros.demo.command", "the main job: held-out scene -> ROS 2 replay + questions -> report"),
    "closed-loop": (
        "sparseoccvla_ros.closed_loop.command",
        "closed-loop driving in the synthetic world over ROS 2 (+ baselines) -> report",
    ),
    "bench": (
        "sparseoccvla_ros.replay.bench_node",
        "stage latency, the paper's efficiency ratios, node latency (table + JSON)",
    ),
}
