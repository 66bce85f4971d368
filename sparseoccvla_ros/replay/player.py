"""``sparseoccvla play``: publish a rosbag2 bag (MCAP or sqlite3) over rclpy in real time.

    sparseoccvla play BAG [--rate R] [--loop] [--loop-time jump|shift] [--start S] [--clock [HZ]] [--delay S]

What goes on the wire is what the bag holds: every message is published as its raw CDR bytes (rclpy's
``Publisher.publish(bytes)`` publishes serialized data unchanged), so header stamps are exact.  Each topic's
message class is resolved with :mod:`importlib` from its type name (``sensor_msgs/msg/CompressedImage`` ->
``sensor_msgs.msg.CompressedImage``); a type this ROS 2 install cannot import is skipped with a warning.

Pacing follows rosbag2's player (``ros2 bag play``): message ``i`` goes out at ``t_wall0 + (t_i - t_0) / rate``
where ``t_i`` is the bag's time of the message.  QoS mirrors the real drivers a bag replaces: camera images and
CameraInfo best-effort with sensor-data QoS (``rclpy.qos.qos_profile_sensor_data``), ``/tf_static`` reliable +
transient local (latched, like tf2's StaticTransformBroadcaster; published once, before the first message), every
other topic reliable, keep last 10.

``--clock [HZ]`` publishes ``rosgraph_msgs/Clock`` on ``/clock`` at HZ (40 when no value is given, as
``ros2 bag play --clock``) from the bag's time: held at the first message's time while the player waits, then
advancing with the playback, so nodes with ``use_sim_time`` see time move the way the bag does.

Before the first message the player waits: ``--delay S`` waits S seconds; by default it waits until every input
topic of the driving node that the bag holds (cameras, CameraInfo, odometry: the targets of
:func:`topics.node_remaps`; and ``/tf_static``, which must arrive before the first camera set) has a matched
subscription (up to ``--wait-timeout`` s, then plays anyway with a warning), then ``--settle`` s more so the
subscribers' side of discovery completes too.  Without this the first camera set is lost to DDS discovery.

Looping (``--loop``): two ways of continuing after the last message, chosen with ``--loop-time``:

* ``jump`` (default): every pass replays the bag unchanged, so time jumps back at the seam - what
  ``ros2 bag play --loop`` does.  It is the default because the player's contract is the bag's exact bytes and
  stamps: outputs of every pass match the ground truth by stamp (``sparseoccvla eval-bag``), nothing is rewritten
  (raw CDR, no cost per message), and the node's synchronizer and pipeline must handle a time jump anyway (new
  bag, restarted player).
* ``shift``: pass ``k`` adds ``k * (bag duration + one median message period)`` to every ``builtin_interfaces/Time``
  in every message (headers, transforms, path poses, markers) and to ``/clock``, so time keeps increasing - for
  consumers that cannot take a backwards jump (tf2 buffers under sim time, time-series plots).  Messages are
  deserialized, shifted and serialized again.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from . import topics

NS_PER_S = 1_000_000_000
SENSOR_TYPES = ("sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo")
LOOP_TIME_MODES = ("jump", "shift")


class BagError(RuntimeError):
    """The bag cannot be opened or holds nothing playable (the message says what to do)."""


def resolve_message_class(msgtype: str) -> Any:
    """ROS 2 message class of a bag type name, e.g. ``"nav_msgs/msg/Odometry"`` -> ``nav_msgs.msg.Odometry``.

    Raises:
        ImportError: the interface package is not installed (the message names it).
    """
    parts = msgtype.split("/")
    if len(parts) == 2:  # ROS 1 style 'pkg/Name' as some tools write it
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3:
        raise ImportError(f"cannot parse message type {msgtype!r} (expected 'package/msg/Name')")
    pkg, kind, name = parts
    try:
        module = importlib.import_module(f"{pkg}.{kind}")
        return getattr(module, name)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"message type {msgtype} is not installed in this ROS 2 environment ({exc})") from None


def shift_stamps(msg: Any, offset_ns: int) -> None:
    """Add ``offset_ns`` to every ``builtin_interfaces/Time`` inside a ROS 2 message, in place (recursive)."""
    for field, ftype in msg.get_fields_and_field_types().items():
        if "/" not in ftype:
            continue  # primitive or sequence of primitives (e.g. image bytes): no stamp inside
        value = getattr(msg, field)
        if ftype == "builtin_interfaces/Time":
            total = value.sec * NS_PER_S + value.nanosec + offset_ns
            value.sec, value.nanosec = total // NS_PER_S, total % NS_PER_S
        elif ftype.startswith("sequence<") or ftype.endswith("]"):
            for item in value:
                if ftype.startswith("sequence<builtin_interfaces/Time") or ftype.startswith("builtin_interfaces/Time["):
                    total = item.sec * NS_PER_S + item.nanosec + offset_ns
                    item.sec, item.nanosec = total // NS_PER_S, total % NS_PER_S
                else:
                    shift_stamps(item, offset_ns)
        else:
            shift_stamps(value, offset_ns)


@dataclass
class _Topic:
    name: str
    msgtype: str
    cls: Any
    publisher: Any = None


@dataclass
class PlaybackStats:
    """What one :meth:`BagPlayer.play` call did."""

    published: int = 0
    passes: int = 0
    skipped_topics: tuple[str, ...] = ()
    wall_s: float = 0.0
    max_lag_s: float = 0.0  # worst lateness of a message against its schedule, s (CPU contention shows here)
    interrupted: bool = False


class BagPlayer:
    """Publishes one bag through an rclpy node (see the module docstring for timing, QoS and looping).

    Args:
        node: the rclpy node to publish from (the caller spins it, or not: publishing needs no executor).
        bag: path of the rosbag2 folder (or a ``.mcap`` file inside one).
        rate: playback speed factor (2.0 = twice real time).
        loop: replay the bag until stopped.
        loop_time: ``jump`` or ``shift`` (module docstring).
        start_s: skip the first ``start_s`` seconds of the bag (``/tf_static`` is always published).
        clock_hz: publish ``/clock`` at this rate; 0 = no ``/clock``.
        topics_filter: play only these topics (default: all).
        progress: show a tqdm progress bar.
        max_passes: with ``loop``, stop after this many passes (None = until stopped).
    Raises:
        BagError: unreadable bag, bad options, or nothing to play.
    """

    def __init__(
        self,
        node: Any,
        bag: str | Path,
        rate: float = 1.0,
        loop: bool = False,
        loop_time: str = "jump",
        start_s: float = 0.0,
        clock_hz: float = 0.0,
        topics_filter: Optional[list[str]] = None,
        progress: bool = True,
        max_passes: Optional[int] = None,
    ) -> None:
        from rosbags.rosbag2 import Reader

        if rate <= 0:
            raise BagError(f"--rate must be > 0, got {rate}")
        if loop_time not in LOOP_TIME_MODES:
            raise BagError(f"--loop-time must be one of {LOOP_TIME_MODES}, got {loop_time!r}")
        if clock_hz < 0 or start_s < 0:
            raise BagError("--clock and --start must be >= 0")
        path = Path(bag)
        if path.is_file() and path.suffix in (".mcap", ".db3"):
            path = path.parent  # rosbags reads the bag folder (metadata.yaml beside the storage file)
        if not (path / "metadata.yaml").is_file():
            raise BagError(f"{bag} is not a rosbag2 bag folder (no metadata.yaml)")
        self.node, self.path = node, path
        self.rate, self.loop, self.loop_time, self.clock_hz = float(rate), bool(loop), loop_time, float(clock_hz)
        self.progress, self.max_passes = progress, max_passes
        self.stop_event = threading.Event()
        self._clock_ns: Optional[int] = None  # bag time shown on /clock; None = not started
        self._clock_lock = threading.Lock()
        # (wall monotonic, bag ns, cap ns) while playing: /clock runs from the anchor and stops at the pass's end
        self._clock_anchor: Optional[tuple[float, int, int]] = None
        try:
            self._reader = Reader(path)
            self._reader.open()
        except Exception as exc:  # noqa: BLE001 - rosbags raises several types for unreadable bags
            raise BagError(f"cannot open bag {path}: {exc}") from exc
        self._topics: dict[str, _Topic] = {}
        skipped = []
        for conn in self._reader.connections:
            if topics_filter and conn.topic not in topics_filter:
                continue
            if conn.topic == topics.CLOCK_TOPIC:
                continue  # the player makes its own /clock from the playback time
            try:
                cls = resolve_message_class(conn.msgtype)
            except ImportError as exc:
                skipped.append(conn.topic)
                node.get_logger().warning(f"{conn.topic} not played: {exc}")
                continue
            self._topics.setdefault(conn.topic, _Topic(conn.topic, conn.msgtype, cls))
        self.skipped_topics = tuple(sorted(set(skipped)))
        self._connections = [c for c in self._reader.connections if c.topic in self._topics]
        if not self._connections:
            raise BagError(f"{path}: no playable topics (skipped: {list(self.skipped_topics)})")
        self.start_ns = int(self._reader.start_time)
        self.end_ns = int(self._reader.end_time)
        self.first_ns = self.start_ns + int(start_s * NS_PER_S)
        if self.first_ns > self.end_ns:
            raise BagError(
                f"--start {start_s} s is past the end of the bag ({(self.end_ns - self.start_ns) / 1e9:.2f} s)"
            )
        self.message_count = sum(c.msgcount for c in self._connections)
        self._period_ns = self._median_period_ns()
        for t in self._topics.values():
            t.publisher = node.create_publisher(t.cls, t.name, self._qos(t))
        self._clock_pub = None
        if self.clock_hz > 0:
            from rosgraph_msgs.msg import Clock

            self._clock_pub = node.create_publisher(Clock, topics.CLOCK_TOPIC, 10)

    # ------------------------------------------------------------------ setup helpers
    def _qos(self, t: _Topic) -> Any:
        from rclpy.qos import (
            QoSDurabilityPolicy,
            QoSHistoryPolicy,
            QoSProfile,
            QoSReliabilityPolicy,
            qos_profile_sensor_data,
        )

        if t.msgtype in SENSOR_TYPES:
            return qos_profile_sensor_data  # what camera drivers offer (best effort, keep last 5)
        if t.name == topics.TF_STATIC_TOPIC:
            return QoSProfile(
                reliability=QoSReliabilityPolicy.RELIABLE,
                history=QoSHistoryPolicy.KEEP_LAST,
                depth=100,
                durability=QoSDurabilityPolicy.TRANSIENT_LOCAL,
            )
        return QoSProfile(reliability=QoSReliabilityPolicy.RELIABLE, history=QoSHistoryPolicy.KEEP_LAST, depth=10)

    def _median_period_ns(self) -> int:
        """Median spacing of one topic's messages (the loop seam in ``shift`` mode keeps this spacing)."""
        busiest = max(self._connections, key=lambda c: c.msgcount)
        if busiest.msgcount < 2:
            return NS_PER_S // 2
        stamps = [ts for _, ts, _ in self._reader.messages(connections=[busiest])]
        gaps = [b - a for a, b in zip(stamps, stamps[1:]) if b > a]
        return int(statistics.median(gaps)) if gaps else NS_PER_S // 2

    @property
    def camera_images(self) -> int:
        """Camera image messages (CompressedImage / Image) the bag will play."""
        return sum(c.msgcount for c in self._connections if c.msgtype in SENSOR_TYPES[:2])

    @property
    def input_topics(self) -> list[str]:
        """Topics of the bag that the driving node subscribes to (targets of :func:`topics.node_remaps`, and
        ``/tf_static``: the camera extrinsics must be there before the first camera set)."""
        wanted = {target for _, target in topics.node_remaps()} | {topics.TF_STATIC_TOPIC}
        return sorted(t for t in self._topics if t in wanted)

    # ------------------------------------------------------------------ waiting
    def wait_for_subscribers(
        self,
        timeout_s: float,
        settle_s: float = 0.5,
        required: Optional[list[str]] = None,
        also: Sequence[str] = (),
    ) -> bool:
        """Wait until each topic in ``required`` (default :attr:`input_topics`) has a matched subscription, and
        each topic in ``also`` (any topic, e.g. an output a recorder must be subscribed to) has a subscriber.

        Returns:
            True when all matched before ``timeout_s``; False on timeout or stop (the caller plays anyway).
        """
        names = self.input_topics if required is None else required
        pubs = [self._topics[n].publisher for n in names if n in self._topics]
        deadline = time.monotonic() + timeout_s
        self.hold_clock(self.first_ns)
        while not self.stop_event.is_set():
            missing = [p.topic_name for p in pubs if p.get_subscription_count() == 0]
            missing += [t for t in also if self.node.count_subscribers(t) == 0]
            if not missing:
                self._sleep(settle_s)
                return True
            if time.monotonic() >= deadline:
                self.node.get_logger().warning(
                    f"no subscriber on {missing} after {timeout_s:.0f} s; playing anyway (is the node running, "
                    "with the remaps of config/driving.yaml / sparseoccvla_ros.replay.topics?)"
                )
                return False
            self._sleep(0.05)
        return False

    def wait_delay(self, delay_s: float) -> None:
        """Wait ``delay_s`` seconds (``/clock`` held at the first message's time)."""
        self.hold_clock(self.first_ns)
        self._sleep(delay_s)

    def linger(self, seconds: float) -> None:
        """Stay up ``seconds`` after playing (``/clock`` keeps the bag-end time :meth:`play` left it at), so
        downstream nodes finish and recorders write their last messages; returns early on stop."""
        self._sleep(seconds)

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stop_event.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return
            self.stop_event.wait(min(left, 0.05))

    # ------------------------------------------------------------------ /clock
    def hold_clock(self, bag_ns: int) -> None:
        with self._clock_lock:
            self._clock_anchor = None
            self._clock_ns = bag_ns
        self._ensure_clock_thread()

    def _run_clock_from(self, wall: float, bag_ns: int, cap_ns: int) -> None:
        """Run ``/clock`` from ``bag_ns`` at ``wall`` at the playback rate, never past ``cap_ns`` (the pass's end: a
        pass that lags behind wall time, e.g. on a loaded machine, must not show a time the bag never reaches)."""
        with self._clock_lock:
            self._clock_anchor = (wall, bag_ns, cap_ns)

    def clock_now_ns(self) -> Optional[int]:
        """The bag time ``/clock`` shows now (None before the player started)."""
        with self._clock_lock:
            if self._clock_anchor is not None:
                wall, bag_ns, cap_ns = self._clock_anchor
                return min(cap_ns, bag_ns + int((time.monotonic() - wall) * self.rate * NS_PER_S))
            return self._clock_ns

    def _ensure_clock_thread(self) -> None:
        if self._clock_pub is None or getattr(self, "_clock_thread", None) is not None:
            return
        self._clock_thread = threading.Thread(target=self._clock_loop, name="bag-player-clock", daemon=True)
        self._clock_thread.start()

    def _clock_loop(self) -> None:
        from rosgraph_msgs.msg import Clock

        period = 1.0 / self.clock_hz
        next_t = time.monotonic()
        while not self.stop_event.is_set():
            ns = self.clock_now_ns()
            if ns is not None:
                self._publish_clock(Clock, ns)
            next_t += period
            self.stop_event.wait(max(0.0, next_t - time.monotonic()))

    def _publish_clock(self, clock_cls: Any, ns: int) -> None:
        from builtin_interfaces.msg import Time

        try:
            self._clock_pub.publish(clock_cls(clock=Time(sec=ns // NS_PER_S, nanosec=ns % NS_PER_S)))
        except Exception:  # noqa: BLE001 - the context may be shutting down under us (Ctrl-C)
            self.stop_event.set()

    # ------------------------------------------------------------------ playback
    def play(self, on_message: Optional[Callable[[str, int], None]] = None) -> PlaybackStats:
        """Publish the bag (all passes when looping) until it ends or :attr:`stop_event` is set.

        Args:
            on_message: called with (topic, bag time ns as published) after each message (tests, progress).
        Returns:
            :class:`PlaybackStats`.
        """
        from rclpy.serialization import deserialize_message, serialize_message
        from tqdm import tqdm

        stats = PlaybackStats(skipped_topics=self.skipped_topics)
        t_begin = time.monotonic()
        tf_static = self._topics.get(topics.TF_STATIC_TOPIC)
        if tf_static is not None:  # latched once, before anything else, whatever --start says
            for _conn, _ts, raw in self._reader.messages(
                connections=[c for c in self._connections if c.topic == topics.TF_STATIC_TOPIC]
            ):
                tf_static.publisher.publish(raw)
                stats.published += 1
        others = [c for c in self._connections if c.topic != topics.TF_STATIC_TOPIC]
        per_pass = sum(c.msgcount for c in others)
        total = None if self.loop else per_pass
        bar = tqdm(total=total, unit="msg", desc=f"play {self.path.name}", disable=not self.progress, file=sys.stderr)
        span = self.end_ns - self.first_ns + self._period_ns
        try:
            while not self.stop_event.is_set():
                offset = span * stats.passes if self.loop_time == "shift" else 0
                wall0 = time.monotonic()
                self._run_clock_from(wall0, self.first_ns + offset, self.end_ns + offset + self._period_ns)
                for conn, ts, raw in self._reader.messages(connections=others, start=self.first_ns):
                    due = wall0 + (ts - self.first_ns) / self.rate / NS_PER_S
                    self._sleep(due - time.monotonic())
                    if self.stop_event.is_set():
                        break
                    stats.max_lag_s = max(stats.max_lag_s, time.monotonic() - due)
                    t = self._topics[conn.topic]
                    if offset:
                        msg = deserialize_message(raw, t.cls)
                        shift_stamps(msg, offset)
                        raw = serialize_message(msg)
                    t.publisher.publish(raw)
                    stats.published += 1
                    bar.update(1)
                    if on_message is not None:
                        on_message(conn.topic, ts + offset)
                else:
                    stats.passes += 1
                    if self.loop and (self.max_passes is None or stats.passes < self.max_passes):
                        # the seam keeps one message period between the last message and the next pass
                        self._sleep(self._period_ns / self.rate / NS_PER_S)
                        continue
                break
        finally:
            bar.close()
        stats.interrupted = self.stop_event.is_set()
        stats.wall_s = time.monotonic() - t_begin
        end_ns = self.end_ns + (span * (stats.passes - 1) if self.loop_time == "shift" and stats.passes else 0)
        self.hold_clock(end_ns)  # /clock stays at the end of the bag while the last outputs are recorded
        return stats

    def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until reliable subscribers acknowledged everything published (before the node goes away)."""
        from rclpy.duration import Duration

        for t in self._topics.values():
            try:
                t.publisher.wait_for_all_acked(Duration(seconds=timeout_s))
            except Exception:  # noqa: BLE001 - best-effort publishers / shutdown: nothing to wait for
                pass

    def close(self) -> None:
        """Stop ``/clock`` and release the bag (publishers belong to the node)."""
        self.stop_event.set()
        thread = getattr(self, "_clock_thread", None)
        if thread is not None:
            thread.join(timeout=2.0)
        if self._reader is not None:  # idempotent: a bringup closes its player on every exit path
            self._reader.close()
            self._reader = None


def install_stop_signals(on_stop: Callable[[], None]) -> None:
    """SIGINT / SIGTERM call ``on_stop()`` (idempotent) instead of raising KeyboardInterrupt anywhere.

    A terminal's Ctrl-C reaches every process of the foreground group and ``ros2 launch`` then forwards a second
    SIGINT to its children; a KeyboardInterrupt raised inside the shutdown path (closing a bag, joining a thread)
    would abort it.  Replaces rclpy's handler, so the caller owns the shutdown (call from the main thread).
    """

    def handler(signum: int, frame: Any) -> None:  # noqa: ARG001 - signal API
        on_stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


# ---------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", help="rosbag2 folder (MCAP or sqlite3), e.g. written by 'sparseoccvla bag'")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default %(default)s)")
    parser.add_argument("--loop", action="store_true", help="replay the bag until Ctrl-C")
    parser.add_argument(
        "--loop-time",
        choices=LOOP_TIME_MODES,
        default="jump",
        help="jump: time jumps back at every pass, stamps exactly the bag's (default, as ros2 bag "
        "play --loop); shift: stamps and /clock shifted so time keeps increasing",
    )
    parser.add_argument("--start", type=float, default=0.0, metavar="S", help="skip the first S seconds of the bag")
    parser.add_argument(
        "--clock",
        type=float,
        nargs="?",
        const=40.0,
        default=0.0,
        metavar="HZ",
        help="publish /clock at HZ (40 when no value is given) for nodes with use_sim_time",
    )
    parser.add_argument(
        "--delay",
        type=float,
        default=None,
        metavar="S",
        help="wait S seconds before playing (default: until the driving node's input topics have "
        "subscribers, see --wait-timeout)",
    )
    parser.add_argument(
        "--wait-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="longest wait for subscribers when --delay is not given (default %(default)s)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.5,
        metavar="S",
        help="extra wait after the subscribers matched, for the far side of discovery (default %(default)s)",
    )
    parser.add_argument(
        "--linger",
        type=float,
        default=0.0,
        metavar="S",
        help="after the last message, stay up S more seconds (/clock held at the bag's end) so downstream nodes "
        "finish and recorders write their last messages; Ctrl-C ends it at once (default %(default)s)",
    )
    parser.add_argument(
        "--wait-for-subscriber",
        action="append",
        default=[],
        metavar="TOPIC",
        help="when waiting for subscribers, also wait until TOPIC has one (repeatable; e.g. the node's "
        "output/plan, so a recorder is ready before the first frame)",
    )
    parser.add_argument("--topics", nargs="+", default=None, help="play only these topics")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init()
    node = rclpy.create_node("bag_player")
    player = None
    code = 0
    try:
        player = BagPlayer(
            node,
            args.bag,
            rate=args.rate,
            loop=args.loop,
            loop_time=args.loop_time,
            start_s=args.start,
            clock_hz=args.clock or 0.0,
            topics_filter=args.topics,
            progress=not args.quiet,
        )
        install_stop_signals(player.stop_event.set)
        if not player.camera_images:
            print(
                f"sparseoccvla play: warning: {player.path} has no camera image topics with messages (it has: "
                f"{', '.join(sorted(player._topics))}); a driving node will produce nothing from it",
                file=sys.stderr,
            )
        if args.delay is None:
            player.wait_for_subscribers(args.wait_timeout, args.settle, also=args.wait_for_subscriber)
        else:
            player.wait_delay(args.delay)
        stats = player.play()
        player.flush()
        print(
            f"[play] {stats.published} messages in {stats.wall_s:.1f} s ({stats.passes} passes, "
            f"max lateness {stats.max_lag_s * 1e3:.0f} ms)",
            file=sys.stderr,
        )
        if args.linger > 0 and not player.stop_event.is_set():
            player.linger(args.linger)  # interruptible: Ctrl-C sets stop_event
    except BagError as exc:
        print(f"sparseoccvla play: error: {exc}", file=sys.stderr)
        code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        code = 0
    finally:
        if player is not None:
            player.close()
        node.destroy_node()
        rclpy.try_shutdown()
    return code
