"""``sparseoccvla record``: write topics (by default the driving node's outputs) to a rosbag2 MCAP bag.

    sparseoccvla record --out BAG [TOPIC ...] [--node /sparseoccvla/driving_node] [--use-sim-time]

With no TOPIC, records everything published under ``<node>/output`` plus ``/diagnostics``; topics are found on
the ROS graph and subscribed as they appear (the recorder may start before the node).  A topic name ending in
``/`` records every topic under it.  Subscriptions are generic: ``create_subscription(..., raw=True)`` hands over
the serialized CDR bytes, which go into the bag unchanged (what ``ros2 bag record`` does), with the message
definitions of the custom ``sparseoccvla_msgs`` types taken from :mod:`.typestore` so any MCAP reader (Foxglove,
``mcap``, ``rosbags``, ``ros2 bag``) decodes them.  The log time of each message is its receive time on the
recorder's clock (ROS time: sim time under ``--use-sim-time``, else wall time), as rosbag2 records it.

A topic is subscribed once it has a publisher; the subscription is reliable, keep last 100, unless a publisher of
the topic offers best effort (then best effort, so it still matches - as ``ros2 bag record`` adapts its QoS), and
transient local when every publisher offers it (the driving node's outputs: a recorder that matched after the
first outputs still receives them from the node's history).  Under ``--use-sim-time`` messages that arrive before
the first ``/clock`` are held and logged at the first ``/clock`` time: one bag, one time base.
Ctrl-C (or :meth:`BagRecorder.close`) finalizes the MCAP file.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from . import topics
from .player import install_stop_signals, resolve_message_class

DIAGNOSTICS_TOPIC = "/diagnostics"
#: Subscription depth (keep last): messages received while the recorder's executor is busy writing wait here.
RECORDER_DEPTH = 100
#: Under sim time, messages that arrive before the first ``/clock`` wait (at most this many) for it, s.t. the whole
#: bag has one time base (they are logged at the first ``/clock`` time).
MAX_PENDING_BEFORE_CLOCK = 10_000


def default_topics(node_path: str = f"{topics.NODE_NAMESPACE}/{topics.NODE_NAME}") -> list[str]:
    """The recorder's default selection: everything under ``<node>/output/`` and ``/diagnostics``."""
    return [f"{node_path.rstrip('/')}/output/", DIAGNOSTICS_TOPIC]


class BagRecorder:
    """Records topics through an rclpy node into a new MCAP bag (module docstring).

    Args:
        node: rclpy node to subscribe with (the caller spins it).
        out: bag folder to create (must not exist).
        selection: topic names; a name ending in ``/`` selects every topic under that prefix.
        poll_s: how often the graph is checked for new matching topics, s.
    Raises:
        FileExistsError: ``out`` exists.
    """

    def __init__(self, node: Any, out: str | Path, selection: list[str], poll_s: float = 0.2) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        from .typestore import replay_typestore

        self.node, self.out = node, Path(out)
        if self.out.exists():
            raise FileExistsError(f"{self.out} exists; choose a new --out folder (rosbag2 never overwrites)")
        self.selection = list(selection)
        self._typestore = replay_typestore()
        self._writer = Writer(self.out, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._lock = threading.Lock()
        self._connections: dict[str, Any] = {}
        self._subscriptions: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.last_receive_monotonic = 0.0
        self._pending: list[tuple[str, bytes]] = []  # (topic, CDR) received under sim time before the first /clock
        self.dropped_before_clock = 0
        self.closed = False
        self._discover()
        # graph polling on the steady clock: under use_sim_time a paused /clock would stop a ROS-time timer
        from rclpy.clock import Clock, ClockType

        self._timer = node.create_timer(poll_s, self._discover, clock=Clock(clock_type=ClockType.STEADY_TIME))

    def _wanted(self, name: str) -> bool:
        return any(name.startswith(sel) if sel.endswith("/") else name == sel for sel in self.selection)

    def _discover(self) -> None:
        """Subscribe to every matching topic now on the graph (timer callback; cheap when nothing is new)."""
        if self.closed:
            return
        if self._pending:
            self._poll_clock()
        for name, types in self.node.get_topic_names_and_types():
            if name in self._subscriptions or not self._wanted(name) or not types:
                continue
            if not self.node.get_publishers_info_by_topic(name):
                continue  # only subscribers so far (e.g. the node's inputs): wait for a publisher to pick the QoS
            msgtype = types[0]
            try:
                cls = resolve_message_class(msgtype)
            except ImportError as exc:
                self.node.get_logger().warning(f"{name} not recorded: {exc}", throttle_duration_sec=10.0)
                continue
            self._subscribe(name, msgtype, cls)

    def _qos(self, name: str) -> Any:
        """Match the publishers' offer, as ``ros2 bag record`` does: best effort if any publisher is best effort,
        transient local if every publisher is (then the messages a publisher still holds from before the match -
        the driving node keeps its last ``output_history_depth`` outputs - are delivered too)."""
        from rclpy.qos import (
            DurabilityPolicy,
            QoSDurabilityPolicy,
            QoSHistoryPolicy,
            QoSProfile,
            QoSReliabilityPolicy,
            ReliabilityPolicy,
        )

        infos = self.node.get_publishers_info_by_topic(name)
        best_effort = any(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for i in infos)
        latched = bool(infos) and all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos)
        return QoSProfile(
            reliability=QoSReliabilityPolicy.BEST_EFFORT if best_effort else QoSReliabilityPolicy.RELIABLE,
            durability=QoSDurabilityPolicy.TRANSIENT_LOCAL if latched else QoSDurabilityPolicy.VOLATILE,
            history=QoSHistoryPolicy.KEEP_LAST,
            depth=RECORDER_DEPTH,
        )

    def _subscribe(self, name: str, msgtype: str, cls: Any) -> None:
        from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

        qos = self._qos(name)
        from rclpy.qos import QoSDurabilityPolicy, QoSReliabilityPolicy

        reliable = qos.reliability == QoSReliabilityPolicy.RELIABLE
        latched = qos.durability == QoSDurabilityPolicy.TRANSIENT_LOCAL
        offered = Qos(
            QosHistory.KEEP_LAST,
            1,
            QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
            QosDurability.TRANSIENT_LOCAL if latched else QosDurability.VOLATILE,
            QosTime(0, 0),
            QosTime(0, 0),
            QosLiveliness.AUTOMATIC,
            QosTime(0, 0),
            False,
        )
        with self._lock:
            if msgtype in self._typestore.types:
                conn = self._writer.add_connection(
                    name, msgtype, typestore=self._typestore, offered_qos_profiles=[offered]
                )
            else:  # a type rosbags does not know: store it with its definition from the installed interface
                conn = self._writer.add_connection(
                    name, msgtype, msgdef=_msgdef_of(msgtype), rihs01="", offered_qos_profiles=[offered]
                )
            self._connections[name] = conn
            self.counts[name] = 0
        self._subscriptions[name] = self.node.create_subscription(
            cls, name, lambda raw, name=name: self._on_message(name, raw), qos, raw=True
        )
        self.node.get_logger().info(f"recording {name} ({msgtype})")

    def _on_message(self, name: str, raw: bytes) -> None:
        now = self.node.get_clock().now().nanoseconds
        with self._lock:
            if self.closed:
                return
            self.last_receive_monotonic = time.monotonic()
            if now == 0:
                # sim time before the first /clock: hold the message and log it at the first /clock time, so the
                # bag has one time base (wall time here would mix two, years apart)
                if len(self._pending) >= MAX_PENDING_BEFORE_CLOCK:
                    self.dropped_before_clock += 1
                    return
                self._pending.append((name, raw))
                self.counts[name] += 1
                return
            if self._pending:
                self._flush_pending(now)
            self._writer.write(self._connections[name], now, raw)
            self.counts[name] += 1

    def _flush_pending(self, log_ns: int) -> None:
        """Write the messages held before the first ``/clock`` at ``log_ns`` (under ``_lock``)."""
        for name, raw in self._pending:
            self._writer.write(self._connections[name], log_ns, raw)
        self._pending.clear()

    def _poll_clock(self) -> None:
        """Timer: once sim time runs, write what waited for it even when no new message arrives."""
        now = self.node.get_clock().now().nanoseconds
        if now:
            with self._lock:
                if self._pending and not self.closed:
                    self._flush_pending(now)

    @property
    def total(self) -> int:
        """Messages written so far."""
        with self._lock:
            return sum(self.counts.values())

    def count_under(self, fragment: str) -> int:
        """Messages written so far on topics whose name contains ``fragment`` (e.g. ``"/output/"``)."""
        with self._lock:
            return sum(n for name, n in self.counts.items() if fragment in name)

    def close(self) -> None:
        """Stop subscribing and finalize the bag (idempotent)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self._pending:
                # logged at the clock's time; if no /clock ever came the bag holds no sim time at all, so wall
                # time is its one time base
                self._flush_pending(self.node.get_clock().now().nanoseconds or time.time_ns())
            self._writer.close()
        try:
            self._timer.cancel()
            for sub in self._subscriptions.values():
                self.node.destroy_subscription(sub)
        except Exception:  # noqa: BLE001 - the node may already be destroyed at shutdown
            pass


def _msgdef_of(msgtype: str) -> str:
    """``.msg`` text of an installed interface (share/<pkg>/msg/<Name>.msg on the AMENT prefixes or in the venv)."""
    import os

    pkg, _, name = msgtype.split("/")
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    for prefix in prefixes:
        path = Path(prefix) / "share" / pkg / "msg" / f"{name}.msg"
        if path.is_file():
            return path.read_text(encoding="utf-8")
    raise ImportError(f"no message definition for {msgtype} under {prefixes}")


# ---------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="bag folder to create (MCAP storage)")
    parser.add_argument(
        "topics",
        nargs="*",
        help="topics to record; a name ending in '/' records every topic under it "
        "(default: <node>/output/ and /diagnostics)",
    )
    parser.add_argument(
        "--node",
        default=f"{topics.NODE_NAMESPACE}/{topics.NODE_NAME}",
        help="fully qualified name of the driving node (default %(default)s)",
    )
    parser.add_argument("--use-sim-time", action="store_true", help="log times on /clock instead of wall time")
    parser.add_argument(
        "--duration", type=float, default=0.0, metavar="S", help="stop after S seconds (default: until Ctrl-C)"
    )


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.parameter import Parameter

    rclpy.init()
    node = rclpy.create_node(
        "bag_recorder", parameter_overrides=[Parameter("use_sim_time", value=bool(args.use_sim_time))]
    )
    recorder: Optional[BagRecorder] = None
    code = 0
    stop = threading.Event()
    install_stop_signals(stop.set)  # Ctrl-C (even twice, as ros2 launch forwards it) ends the loop, then close()
    try:
        recorder = BagRecorder(node, args.out, args.topics or default_topics(args.node))
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        end = time.monotonic() + args.duration if args.duration > 0 else None
        while rclpy.ok() and not stop.is_set() and (end is None or time.monotonic() < end):
            executor.spin_once(timeout_sec=0.1)
    except FileExistsError as exc:
        print(f"sparseoccvla record: error: {exc}", file=sys.stderr)
        code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # a second SIGINT (ros2 launch forwards the terminal's Ctrl-C) must not abort finalizing the bag
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if recorder is not None:
            recorder.close()
            print(
                f"[record] {recorder.total} messages on {len(recorder.counts)} topics -> {recorder.out}",
                file=sys.stderr,
            )
        node.destroy_node()
        rclpy.try_shutdown()
    return code
