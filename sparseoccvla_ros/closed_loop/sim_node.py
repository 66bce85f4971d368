"""``sim_node``: the synthetic world as a ROS 2 simulator the driving node drives in (docs/closed_loop.md §6).

Per key frame it publishes exactly what a bag of ``sparseoccvla bag`` holds (topic names and message builders of
:mod:`sparseoccvla_ros.replay.bag_messages`, stamped with the key frame's sim time):

* ``/<CAM>/image_rect_compressed`` (JPEG rendered by the synthetic renderer with the nuScenes calibration) and
  ``/<CAM>/camera_info``, ``/odom`` (twist by backward difference over the last key frame, as the bags), ``/tf``
  (``map -> base_link``), ``/tf_static`` (``base_link -> <CAM>``, latched), ``/clock``;
* GT: ``/gt/command`` (the route's driving command, which the driving node reads), ``/gt/boxes`` (the agents of the
  current frame, ``ns "0"``), ``/gt/frame_info`` (JSON: episode, frame index, sim time);
* ``/sim/events`` (std_msgs/String, JSON per event: a missing or invalid plan, and at the end of an episode its
  metrics and metric events) and ``/diagnostics`` (``sim_node: planner``: OK, or WARN while the ego brakes for
  want of a valid plan).

It subscribes ``~/input/plan`` (sparseoccvla_msgs/DrivingPlan, remapped to the driving node's ``~/output/plan``)
and ``~/input/occupancy`` (the node's occupancy cloud, kept for the report's top-down replay).

**Lockstep** (default): publish key frame k, wait (wall clock, ``plan_timeout_s``) for the plan stamped with
frame k, then advance 0.5 s at the 20 Hz inner rate with ``/clock`` following; results depend on the seed only.
**Real time** (``mode="realtime"``): the inner loop is paced by the wall clock (``rate`` x real time); key frames
are published on time, a plan is applied when it arrives (converted with the ego pose of the frame it was computed
for), a late plan means the ego keeps the previous one, and a plan older than ``plan_timeout_s`` of sim time makes
the ego brake.

The node owns no thread: :meth:`SimNode.run_episode` is called by the bringup (:mod:`.command`) or by
:func:`main` from the main thread, while an executor spins the node's callbacks elsewhere.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, Callable, Optional

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy

from sparseoccvla_core.batch import CAMERA_NAMES
from sparseoccvla_core.closed_loop.runner import EpisodeResult, finish_episode
from sparseoccvla_core.closed_loop.scenarios import ScenarioSpec
from sparseoccvla_core.closed_loop.sim import KEY_FRAME_DT, Episode, agent_boxes_ego, render_cameras
from sparseoccvla_core.synthetic.calibration import camera_calibrations, yaw_to_quaternion

from ..replay import bag_messages as bw
from ..replay import topics
from ..replay.player import resolve_message_class
from ..replay.typestore import make_msg, serialize

NS_PER_S = 1_000_000_000
#: Sim time of episode i's first key frame: a fixed epoch plus 1000 s per episode (stamps never go backwards and
#: the driving node's history resets between episodes: docs/design.md §5).
EPOCH_NS = 1_800_000_000 * NS_PER_S
EPISODE_SPACING_NS = 1000 * NS_PER_S
EVENTS_TOPIC = "/sim/events"
MODES = ("lockstep", "realtime")


def episode_stamp_ns(spec: ScenarioSpec, t: float) -> int:
    return EPOCH_NS + spec.index * EPISODE_SPACING_NS + int(round(t * NS_PER_S))


def plan_from_msg(msg: Any) -> np.ndarray:
    """DrivingPlan -> [T, 2] waypoints (its ``path``), as sent (NaN kept: the episode decides what is valid)."""
    pts = [(p.pose.position.x, p.pose.position.y) for p in msg.path.poses]
    return np.array(pts, dtype=np.float64).reshape(-1, 2)


class SimNode(Node):
    """The closed-loop simulator node (module docstring).

    Args:
        mode: "lockstep" or "realtime".
        plan_timeout_s: lockstep: wall seconds to wait for a frame's plan; realtime: sim seconds a plan stays valid.
        width, height, jpeg_quality: rendered camera images.
        rate: realtime only, sim seconds per wall second.
        **kwargs: rclpy Node arguments (context, namespace, cli_args, parameter_overrides).
    """

    def __init__(
        self,
        mode: str = "lockstep",
        plan_timeout_s: float = 10.0,
        width: int = 480,
        height: int = 270,
        jpeg_quality: int = 90,
        rate: float = 1.0,
        node_name: str = "sim_node",
        **kwargs: Any,
    ) -> None:
        super().__init__(node_name, **kwargs)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if plan_timeout_s <= 0 or rate <= 0:
            raise ValueError(f"plan_timeout_s and rate must be > 0, got {plan_timeout_s} and {rate}")
        self.mode, self.plan_timeout_s, self.rate = mode, float(plan_timeout_s), float(rate)
        self.width, self.height, self.jpeg_quality = int(width), int(height), int(jpeg_quality)
        self.stop_event = threading.Event()
        self._plans: dict[int, np.ndarray] = {}  # stamp ns -> waypoints
        self._occupancy: dict[int, np.ndarray] = {}  # stamp ns -> [M, 3] (x, y, class)
        self._cv = threading.Condition()
        self.fallbacks = 0
        self.events_published = 0
        self._delays: list[float] = []  # real time: sim s from a key frame to when its plan took over
        reliable = QoSProfile(reliability=QoSReliabilityPolicy.RELIABLE, history=QoSHistoryPolicy.KEEP_LAST, depth=10)
        latched = QoSProfile(
            reliability=QoSReliabilityPolicy.RELIABLE,
            history=QoSHistoryPolicy.KEEP_LAST,
            depth=1,
            durability=QoSDurabilityPolicy.TRANSIENT_LOCAL,
        )
        types = self._types = bw.bag_topics()
        self._pubs: dict[str, Any] = {}
        for name, msgtype in types.items():
            if name in (topics.GT_OCCUPANCY_TOPIC, topics.GT_CAMERA_MASK_TOPIC, topics.GT_TRAJECTORY_TOPIC):
                continue  # not known in closed loop (no future, no labels rendered)
            try:
                cls = resolve_message_class(msgtype)
            except ImportError as exc:  # tf2_msgs on a pip-only install without scripts/install.sh's build
                self.get_logger().warning(f"{name} not published: {exc}")
                continue
            self._pubs[name] = self.create_publisher(cls, name, latched if name == topics.TF_STATIC_TOPIC else reliable)
        from diagnostic_msgs.msg import DiagnosticArray
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import PointCloud2
        from std_msgs.msg import String

        from sparseoccvla_msgs.msg import DrivingPlan

        self._String, self._DiagnosticArray, self._Clock = String, DiagnosticArray, Clock
        self._clock_pub = self.create_publisher(Clock, topics.CLOCK_TOPIC, 10)
        self._events_pub = self.create_publisher(String, EVENTS_TOPIC, reliable)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(DrivingPlan, "~/input/plan", self._on_plan, reliable)
        self.create_subscription(PointCloud2, "~/input/occupancy", self._on_occupancy, reliable)
        self._publish_tf_static()

    # ------------------------------------------------------------------ callbacks (store and return)
    def _on_plan(self, msg: Any) -> None:
        stamp = msg.header.stamp.sec * NS_PER_S + msg.header.stamp.nanosec
        with self._cv:
            self._plans[stamp] = plan_from_msg(msg)
            self._cv.notify_all()

    def _on_occupancy(self, msg: Any) -> None:
        from ..pointcloud import cloud_to_array

        try:
            arr = cloud_to_array(msg)
            pts = np.stack([arr["x"], arr["y"], arr["class"].astype(np.float32)], axis=1)
        except (KeyError, ValueError):
            return
        stamp = msg.header.stamp.sec * NS_PER_S + msg.header.stamp.nanosec
        with self._cv:
            self._occupancy[stamp] = pts

    # ------------------------------------------------------------------ publishing
    def _publish(self, topic: str, msg: Any) -> None:
        pub = self._pubs.get(topic)
        if pub is not None:
            pub.publish(serialize(msg, self._types[topic]))

    def _publish_tf_static(self) -> None:
        transforms = [
            bw.transform_stamped(EPOCH_NS, topics.EGO_FRAME, c.channel, c.translation, c.rotation_wxyz)
            for c in camera_calibrations()
        ]
        self._publish(topics.TF_STATIC_TOPIC, make_msg(bw.TYPE_TF, transforms=transforms))

    def publish_clock(self, stamp_ns: int) -> None:
        from builtin_interfaces.msg import Time

        self._clock_pub.publish(self._Clock(clock=Time(sec=stamp_ns // NS_PER_S, nanosec=stamp_ns % NS_PER_S)))

    def publish_event(self, payload: dict) -> None:
        self._events_pub.publish(self._String(data=json.dumps(payload)))
        self.events_published += 1

    def publish_diagnostics(self, level: int, message: str, values: dict) -> None:
        from ..conversions import diagnostic_status

        msg = self._DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [diagnostic_status(f"{self.get_name()}: planner", level, message, values, hardware_id="sim")]
        self._diag_pub.publish(msg)

    def publish_key_frame(self, episode: Episode, kf: Any, stamp: int) -> None:
        """Clock, command, odometry, tf, the six cameras and the GT topics of key frame ``kf``."""
        self.publish_clock(stamp)
        self._publish(topics.GT_COMMAND_TOPIC, make_msg(bw.TYPE_UINT8, data=int(kf.command)))
        q = yaw_to_quaternion(float(kf.pose[2]))
        translation = (float(kf.pose[0]), float(kf.pose[1]), 0.0)
        self._publish(topics.ODOM_TOPIC, bw.odometry_msg(stamp, translation, q, kf.velocity, kf.yaw_rate))
        tf = bw.transform_stamped(stamp, topics.MAP_FRAME, topics.EGO_FRAME, translation, q)
        self._publish(topics.TF_TOPIC, make_msg(bw.TYPE_TF, transforms=[tf]))
        for cam, k, jpeg in render_cameras(episode, self.width, self.height, self.jpeg_quality):
            self._publish(topics.camera_info_topic(cam), bw.camera_info_msg(stamp, cam, k, self.height, self.width))
            self._publish(topics.image_topic(cam), bw.compressed_image_msg(stamp, cam, jpeg))
        boxes, cats = agent_boxes_ego(episode)
        near = np.linalg.norm(boxes[:, :2], axis=1) < 60.0 if len(boxes) else np.zeros(0, bool)
        zh = np.array([[0.85, 1.7]] * int(near.sum())).reshape(-1, 2)
        self._publish(
            topics.GT_BOXES_TOPIC, bw.boxes_msg(stamp, [(boxes[near], zh, [c for c, n in zip(cats, near) if n])])
        )
        info = {"scene": episode.spec.name, "frame_index": kf.index, "scene_length": episode.num_frames,
                "t": round(kf.t, 3), "kind": episode.spec.kind}  # fmt: skip
        self._publish(topics.GT_FRAME_TOPIC, make_msg(bw.TYPE_STRING, data=json.dumps(info)))

    # ------------------------------------------------------------------ readiness
    def wait_for_driver(self, timeout_s: float, settle_s: float = 0.5, clock_ns: int = EPOCH_NS) -> bool:
        """Until every camera topic has a subscriber and the plan input a publisher (False on timeout / stop).

        Meanwhile ``/clock`` holds ``clock_ns`` (before the first episode), so a sim-time driving node has a clock
        when the first key frame arrives (it ignores inputs while its clock reads 0).
        """
        deadline = time.monotonic() + timeout_s
        cams = [self._pubs[topics.image_topic(c)] for c in CAMERA_NAMES]
        while time.monotonic() < deadline and not self.stop_event.is_set():
            self.publish_clock(clock_ns)
            if all(p.get_subscription_count() > 0 for p in cams) and self.count_publishers(
                self.resolve_topic_name("~/input/plan")
            ):
                self.stop_event.wait(settle_s)
                return not self.stop_event.is_set()
            self.stop_event.wait(0.05)
        return False

    # ------------------------------------------------------------------ episodes
    def _take_plan(self, stamp: int, timeout_s: float) -> Optional[np.ndarray]:
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while stamp not in self._plans:
                left = deadline - time.monotonic()
                if left <= 0 or self.stop_event.is_set():
                    return None
                self._cv.wait(min(left, 0.1))
            return self._plans.pop(stamp)

    def _fallback(self, episode: Episode, status: str) -> None:
        event = episode.events[-1]
        self.fallbacks += 1
        self.publish_event({"episode": episode.spec.name, **event.to_dict()})
        self.publish_diagnostics(1, event.text, {"episode": episode.spec.name, "frame": event.frame,
                                                  "status": status, "fallbacks": self.fallbacks})  # fmt: skip
        self.get_logger().warning(f"{episode.spec.name}: {event.text}")

    def run_episode(
        self, spec: ScenarioSpec, on_frame: Optional[Callable[[Episode, int, str], None]] = None
    ) -> Optional[EpisodeResult]:
        """Drive one episode with the plans arriving on ``~/input/plan``; None when stopped before the first frame.

        ``on_frame(episode, frame_index, plan_status)`` is called after each key frame's plan was handled.
        """
        wall0 = time.perf_counter()
        episode = Episode(spec)
        self._delays = []
        if self.mode == "lockstep":
            self._run_lockstep(episode, on_frame)
        else:
            self._run_realtime(episode, on_frame)
        if episode.frame_index < 0:
            return None
        result = finish_episode(episode, "model", time.perf_counter() - wall0)
        if self.mode == "realtime":  # sim seconds from a key frame to the moment its plan took over
            d = np.array(self._delays) if self._delays else np.full(1, np.nan)
            result.metrics["plan_delay_s"] = {"plans": len(self._delays), "mean": round(float(np.mean(d)), 3),
                                              "max": round(float(np.max(d)), 3)}  # fmt: skip
        with self._cv:
            for record in result.log.frames:
                stamp = episode_stamp_ns(spec, record.t)
                record.occupancy = self._occupancy.pop(stamp, None)
            self._plans.clear()
            self._occupancy.clear()
        self.publish_event({"episode": spec.name, "kind": "episode_end", "interrupted": self.stop_event.is_set(),
                            "metrics": result.metrics, "events": [e.to_dict() for e in result.events]})  # fmt: skip
        self.publish_diagnostics(0, f"{spec.name} finished", {"episode": spec.name, "fallbacks": self.fallbacks})
        return result

    def _run_lockstep(self, episode: Episode, on_frame) -> None:
        spec = episode.spec
        for _ in range(episode.num_frames):
            if self.stop_event.is_set():
                return
            kf = episode.key_frame()
            stamp = episode_stamp_ns(spec, kf.t)
            self.publish_key_frame(episode, kf, stamp)
            plan = self._take_plan(stamp, self.plan_timeout_s)
            if self.stop_event.is_set() and plan is None:
                return
            status = episode.apply_plan(plan, reason=f"none within {self.plan_timeout_s:g} s (lockstep)")
            if status != "ok":
                self._fallback(episode, status)
            episode.advance(on_step=lambda e: self.publish_clock(episode_stamp_ns(spec, e.t)))
            if on_frame is not None:
                on_frame(episode, kf.index, status)

    def _run_realtime(self, episode: Episode, on_frame) -> None:
        spec = episode.spec
        wall0 = time.monotonic()
        newest_plan_t, braking_reported = 0.0, False  # sim time of the frame whose plan is in force
        frames: dict[int, int] = {}  # stamp -> frame index
        for _ in range(episode.num_frames):
            if self.stop_event.is_set():
                return
            kf = episode.key_frame()
            stamp = episode_stamp_ns(spec, kf.t)
            frames[stamp] = kf.index
            self.publish_key_frame(episode, kf, stamp)
            status = "pending"
            for _ in range(episode.steps_per_frame):
                with self._cv:
                    arrived = sorted((s, p) for s, p in self._plans.items() if s in frames)
                    self._plans.clear()
                for s, plan in arrived:
                    j = frames[s]
                    if j * KEY_FRAME_DT < newest_plan_t:
                        continue  # older than the plan in force
                    status = episode.apply_plan(plan, frame=j)
                    newest_plan_t = j * KEY_FRAME_DT
                    self._delays.append(episode.t - newest_plan_t)
                    braking_reported = status != "ok"
                    if status != "ok":
                        self._fallback(episode, status)
                stale = episode.t - newest_plan_t > self.plan_timeout_s
                if stale and not braking_reported:
                    episode.apply_plan(
                        None, frame=kf.index, reason=f"none newer than {self.plan_timeout_s:g} s (real time)"
                    )
                    self._fallback(episode, "missing")
                    braking_reported = True
                episode.step()
                self.publish_clock(episode_stamp_ns(spec, episode.t))
                ahead = wall0 + episode.t / self.rate - time.monotonic()
                if ahead > 0:
                    self.stop_event.wait(ahead)
                if self.stop_event.is_set():
                    return
            if on_frame is not None:
                on_frame(episode, kf.index, status)


def main(args: Optional[list[str]] = None) -> int:
    """Run ``sim_node`` alone (for ``launch/closed_loop.launch.py``): episodes, then the report if ``--out``."""
    from .command import sim_node_main

    return sim_node_main(sys.argv[1:] if args is None else args)


if __name__ == "__main__":
    sys.exit(main())
