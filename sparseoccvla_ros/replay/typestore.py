"""The ``rosbags`` type store of the replay tools: standard ROS 2 types plus ``sparseoccvla_msgs``, and CDR helpers.

The converter (``sparseoccvla bag``), the player, the recorder and ``sparseoccvla eval-bag`` read and write raw CDR
through `rosbags <https://gitlab.com/ternaris/rosbags>`_, which needs no ROS installation: its bundled stores hold
the standard interfaces (sensor_msgs, nav_msgs, tf2_msgs, visualization_msgs, ...) of each ROS 2 distribution.
:func:`replay_typestore` takes the newest ROS 2 store the installed ``rosbags`` ships and registers this package's
own messages (``msg/msg/*.msg``) parsed from their ``.msg`` text, found in this order:

1. ``share/sparseoccvla_msgs/msg`` under each prefix of ``AMENT_PREFIX_PATH`` (a colcon or pip install);
2. ``share/sparseoccvla_msgs/msg`` under ``sys.prefix`` (the virtual environment of ``scripts/install.sh``);
3. the ``msg/msg`` folder of this repository (a source checkout).

Pure Python (no rclpy import).  Example::

    from sparseoccvla_ros.replay.typestore import replay_typestore, serialize, deserialize
    ts = replay_typestore()
    Header = ts.types["std_msgs/msg/Header"]
    raw = serialize(msg, "nav_msgs/msg/Path")          # bytes, CDR little endian (as rosbag2 stores it)
    msg = deserialize(raw, "nav_msgs/msg/Path")
    marker = make_msg("visualization_msgs/msg/Marker", ns="1", type=1)  # every other field at its ROS default
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

MSGS_PACKAGE = "sparseoccvla_msgs"
#: The custom message types this package defines (``msg/msg/<Name>.msg``), dependency order.
CUSTOM_MESSAGES: tuple[str, ...] = ("AnchorTrajectory", "DrivingPlan", "OccupancyForecast")
_REPO_MSG_DIR = Path(__file__).resolve().parents[2] / "msg" / "msg"


def newest_ros2_store():
    """The ``rosbags.typesys.Stores`` member of the newest ROS 2 distribution the installed rosbags knows.

    Stores are declared in release order (``ROS2_DASHING`` ... ``ROS2_KILTED``, ``ROS2_LYRICAL`` in rosbags 0.11);
    ``LATEST`` is not used because its meaning changes between rosbags releases without a name.
    """
    from rosbags.typesys import Stores

    ros2 = [s for s in Stores if s.name.startswith("ROS2_")]
    if not ros2:
        raise RuntimeError("the installed rosbags ships no ROS 2 type store; install rosbags>=0.10")
    return ros2[-1]


def _candidate_msg_dirs() -> list[Path]:
    dirs: list[Path] = []
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            dirs.append(Path(prefix) / "share" / MSGS_PACKAGE / "msg")
    dirs.append(Path(sys.prefix) / "share" / MSGS_PACKAGE / "msg")
    dirs.append(_REPO_MSG_DIR)
    return dirs


def find_msg_dir(candidates: Optional[Iterable[Path]] = None) -> Path:
    """The first folder holding every ``.msg`` file of :data:`CUSTOM_MESSAGES` (search order: module docstring).

    Raises:
        FileNotFoundError: none of the candidates has them (the message lists every folder tried).
    """
    tried = list(candidates) if candidates is not None else _candidate_msg_dirs()
    for d in tried:
        if all((d / f"{name}.msg").is_file() for name in CUSTOM_MESSAGES):
            return d
    raise FileNotFoundError(
        f"the {MSGS_PACKAGE} message definitions ({', '.join(n + '.msg' for n in CUSTOM_MESSAGES)}) are in none of: "
        + ", ".join(str(d) for d in tried)
        + "; run scripts/install.sh or source the colcon workspace"
    )


def custom_message_texts(msg_dir: Optional[Path] = None) -> dict[str, str]:
    """``{"sparseoccvla_msgs/msg/<Name>": .msg text}`` of every custom message."""
    d = find_msg_dir() if msg_dir is None else Path(msg_dir)
    return {f"{MSGS_PACKAGE}/msg/{name}": (d / f"{name}.msg").read_text(encoding="utf-8") for name in CUSTOM_MESSAGES}


def build_typestore(msg_dir: Optional[Path] = None, store=None):
    """A new rosbags ``Typestore``: ``store`` (default :func:`newest_ros2_store`) + the custom messages.

    Args:
        msg_dir: folder with the ``.msg`` files (default :func:`find_msg_dir`).
        store: a ``rosbags.typesys.Stores`` member.
    Returns:
        ``rosbags.typesys.store.Typestore``.
    """
    from rosbags.typesys import get_types_from_msg, get_typestore

    ts = get_typestore(store if store is not None else newest_ros2_store())
    types: dict[str, Any] = {}
    for name, text in custom_message_texts(msg_dir).items():
        types.update(get_types_from_msg(text, name))
    ts.register(types)
    return ts


@functools.lru_cache(maxsize=1)
def replay_typestore():
    """The cached process-wide type store of the replay tools (see :func:`build_typestore`)."""
    return build_typestore()


def serialize(msg: Any, msgtype: str, typestore=None) -> bytes:
    """A rosbags message object -> CDR bytes (little endian, with the 4-byte encapsulation header, as in rosbag2).

    Args:
        msg: an instance of ``typestore.types[msgtype]``.
        msgtype: e.g. ``"sensor_msgs/msg/CompressedImage"``.
        typestore: default :func:`replay_typestore`.
    """
    ts = typestore if typestore is not None else replay_typestore()
    return bytes(ts.serialize_cdr(msg, msgtype))


def deserialize(data: bytes | memoryview, msgtype: str, typestore=None) -> Any:
    """CDR bytes -> rosbags message object of ``msgtype`` (see :func:`serialize`)."""
    ts = typestore if typestore is not None else replay_typestore()
    return ts.deserialize_cdr(bytes(data), msgtype)


def msg_class(msgtype: str, typestore=None) -> Any:
    """The rosbags dataclass of ``msgtype`` (e.g. ``msg_class("std_msgs/msg/Header")(stamp=..., frame_id="map")``).

    Raises:
        KeyError: the type is not in the store (the message names the store).
    """
    ts = typestore if typestore is not None else replay_typestore()
    try:
        return ts.types[msgtype]
    except KeyError:
        raise KeyError(f"message type {msgtype!r} is not in the replay type store ({len(ts.types)} types)") from None


def stamp_from_ns(ns: int, typestore=None) -> Any:
    """``builtin_interfaces/msg/Time`` of an integer nanosecond stamp."""
    t = msg_class("builtin_interfaces/msg/Time", typestore)
    return t(sec=int(ns) // 1_000_000_000, nanosec=int(ns) % 1_000_000_000)


def stamp_to_ns(stamp: Any) -> int:
    """``builtin_interfaces/msg/Time`` (rosbags or rclpy) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


_NUMPY_OF_BASE = {
    "bool": "bool",
    "byte": "uint8",
    "char": "uint8",
    "octet": "uint8",
    "int8": "int8",
    "uint8": "uint8",
    "int16": "int16",
    "uint16": "uint16",
    "int32": "int32",
    "uint32": "uint32",
    "int64": "int64",
    "uint64": "uint64",
    "float32": "float32",
    "float64": "float64",
}


def _default_value(node: tuple, ts) -> Any:
    """Default of one field description of ``Typestore.fielddefs`` (0, "", False, empty / zero arrays)."""
    import numpy as np
    from rosbags.typesys.store import Nodetype

    kind, detail = node
    if kind == Nodetype.BASE:
        base = detail[0]
        return "" if base in ("string", "wstring") else (False if base == "bool" else (0.0 if "float" in base else 0))
    if kind == Nodetype.NAME:
        return make_msg(detail, typestore=ts)
    sub, length = detail  # ARRAY (fixed length) or SEQUENCE (length 0 = unbounded)
    count = length if kind == Nodetype.ARRAY else 0
    if sub[0] == Nodetype.BASE and sub[1][0] in _NUMPY_OF_BASE:
        return np.zeros(count, dtype=_NUMPY_OF_BASE[sub[1][0]])
    return [_default_value(sub, ts) for _ in range(count)]


def make_msg(msgtype: str, typestore=None, **fields: Any) -> Any:
    """A rosbags message of ``msgtype`` with every field not given set to its ROS default (recursively).

    Numeric arrays must be given as numpy arrays of the field's dtype (rosbags' CDR serializer requires it).

    Example::

        marker = make_msg("visualization_msgs/msg/Marker", ns="1", id=0, type=1)

    Raises:
        KeyError: unknown message type; TypeError: a field the type does not have.
    """
    ts = typestore if typestore is not None else replay_typestore()
    cls = msg_class(msgtype, ts)
    _, defs = ts.fielddefs[msgtype]
    names = {name for name, _ in defs}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise TypeError(f"{msgtype} has no field(s) {unknown}; fields: {sorted(names)}")
    values = {name: fields[name] if name in fields else _default_value(node, ts) for name, node in defs}
    return cls(**values)
