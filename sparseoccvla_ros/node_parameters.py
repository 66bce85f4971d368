"""Parameters of the driving node: name, default, description, range, and whether it may change at run time.

``config/driving.yaml`` lists the same keys with the same defaults (``test/test_driving_node.py`` checks it), and
the node (``sparseoccvla_ros/driving_node.py``) declares each with a ParameterDescriptor built here, so ``ros2
param describe`` shows units and ranges and rclpy enforces them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from sparseoccvla_core.config import SparseOccVLAConfig
from sparseoccvla_core.model import DEFAULT_SCORE_THRESHOLD

#: Driving commands a checkpoint knows by default (0 left, 1 straight, 2 right); the loaded model's count rules.
DEFAULT_NUM_COMMANDS: int = next(f.default for f in dataclasses.fields(SparseOccVLAConfig) if f.name == "num_commands")


@dataclass(frozen=True)
class NodeParameter:
    """One parameter: default (its type is the parameter type), description, read-only flag, range or choices."""

    default: Any
    description: str
    read_only: bool = True
    lo: Optional[float] = None
    hi: Optional[float] = None
    choices: tuple[str, ...] = ()


#: Every parameter (config/driving.yaml lists the same keys with the same defaults; a test checks it).
PARAMETERS: dict[str, NodeParameter] = {
    "checkpoint": NodeParameter("", "checkpoint folder written by save_pretrained / `sparseoccvla train` (required)"),
    "device": NodeParameter("cpu", "torch device: cpu | cuda | cuda:N"),
    "dtype": NodeParameter("float32", "model dtype", choices=("float32", "bfloat16", "float16")),
    "frame_id": NodeParameter("base_link", "ego frame id of every output"),
    "image_transport": NodeParameter(
        "compressed",
        "camera message type on ~/input/<CAM>/image: compressed = sensor_msgs/CompressedImage, raw = sensor_msgs/Image",
        choices=("compressed", "raw"),
    ),
    "calibration_file": NodeParameter(
        "", "camera calibration YAML (cam2ego per camera); /tf_static wins per camera where tf2_msgs is installed"
    ),
    "sync_slop_s": NodeParameter(0.1, "max stamp spread (newest - oldest) of one camera set, s", lo=0.0, hi=10.0),
    "sync_queue_size": NodeParameter(4, "pending messages kept per camera by the synchronizer", lo=1, hi=100),
    "sync_min_period_s": NodeParameter(
        0.25,
        "lower bound of each camera's frame period, s; lets a set be emitted as soon "
        "as its last camera arrives (0 = wait for the next frames, one period of latency)",
        lo=0.0,
        hi=10.0,
    ),
    "odometry_history_s": NodeParameter(3.0, "odometry kept for lookup at the set stamp, s", lo=0.1, hi=60.0),
    "max_odometry_gap_s": NodeParameter(
        0.2, "odometry farther than this from the set stamp -> frame rejected, s", lo=0.0, hi=10.0
    ),
    "acceleration_window_s": NodeParameter(
        0.5,
        "ego acceleration = velocity difference over this window, s "
        "(0.5 = the key-frame interval the training data uses)",
        lo=0.01,
        hi=5.0,
    ),
    "reset_time_gap_s": NodeParameter(1.5, "a larger gap between frames starts a new sequence, s", False, 0.01, 3600.0),
    "reset_pose_jump_m": NodeParameter(
        20.0, "a larger jump in ego position starts a new sequence, m", False, 0.01, 1e6
    ),
    "score_threshold": NodeParameter(
        DEFAULT_SCORE_THRESHOLD,
        "occupancy points below this score are not published (0..1; the default is the model's)",
        False,
        0.0,
        1.0,
    ),
    "explain": NodeParameter(
        True,
        "publish the language explanation (~/output/explanation and a text marker) every "
        "frame; the reasoning is always generated because the planner attends to it",
        False,
    ),
    "history_interval_s": NodeParameter(
        0.0,
        "minimum spacing of the model's past frames, s; 0 = every processed frame "
        "(key-frame streams); 0.5 when cameras run faster than the key frames the checkpoint "
        "was trained on",
        False,
        0.0,
        10.0,
    ),
    "max_question_chars": NodeParameter(1000, "AskScene rejects longer questions, characters", False, 1, 100000),
    "driving_command": NodeParameter(
        1,
        "driving command (0 left, 1 straight, 2 right) used until one arrives on ~/input/command",
        False,
        0,
        DEFAULT_NUM_COMMANDS - 1,
    ),
    "diagnostics_period_s": NodeParameter(1.0, "/diagnostics publishing period, s", lo=0.05, hi=60.0),
    "diagnostics_hold_s": NodeParameter(
        5.0,
        "a problem stays reported on /diagnostics this long after it last happened, s (wall time)",
        lo=0.1,
        hi=3600.0,
    ),
    "stale_input_s": NodeParameter(
        2.0, "no camera image for this long (wall time) after images flowed -> WARN stale input, s", lo=0.1, hi=3600.0
    ),
    "output_history_depth": NodeParameter(
        10,
        "outputs are reliable + transient local, keep last this many per topic: a message a subscriber "
        "missed (lost packet, discovery still in progress) is re-sent while it is among the last N; "
        "memory bound N x message size per topic (docs/ros_conventions.md §4)",
        lo=1,
        hi=100,
    ),
    "latency_budget_s": NodeParameter(
        1.0,
        "a frame whose camera-set-complete -> outputs-published latency exceeds this -> WARN, s",
        False,
        0.0,
        3600.0,
    ),
}


def descriptor(name: str, p: NodeParameter) -> ParameterDescriptor:
    d = ParameterDescriptor(name=name, description=p.description, read_only=p.read_only)
    if p.choices:
        d.additional_constraints = "one of: " + ", ".join(p.choices)
    if p.lo is not None:
        if isinstance(p.default, bool):
            pass
        elif isinstance(p.default, int):
            d.integer_range = [IntegerRange(from_value=int(p.lo), to_value=int(p.hi), step=1)]
        else:
            d.floating_point_range = [FloatingPointRange(from_value=float(p.lo), to_value=float(p.hi), step=0.0)]
    return d


__all__ = ["DEFAULT_NUM_COMMANDS", "PARAMETERS", "NodeParameter", "descriptor"]
