"""One closed-loop episode: the ego executes plans, the world's traffic and signals answer (docs/closed_loop.md §3).

The loop, per 2 Hz key frame ``k`` (time ``t_k = 0.5 k`` s):

1. :meth:`Episode.key_frame` records the ego pose of the frame and returns its :class:`KeyFrame` (pose, ego state
   as the bags carry it, the route's driving command), from which a caller renders the cameras
   (:func:`render_cameras`) and asks a planner for a plan;
2. :meth:`Episode.apply_plan` hands the plan (6 waypoints in the frame's ego frame) to the tracker, or, for no plan
   or a plan with a NaN / wrong shape, switches to braking and records an event;
3. :meth:`Episode.advance` runs the inner loop at :data:`INNER_DT` (20 Hz) for 0.5 s: tracker -> kinematic
   bicycle -> traffic and signals (IDM, the world's own rules) -> log.

The episode ends at its time limit.  :meth:`Episode.log` returns the :class:`EpisodeLog` that
:mod:`.metrics` scores and :mod:`.replay` draws.  Nothing here knows ROS or the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np

from ..metrics import EgoBox
from ..synthetic.world import SURF_ROAD
from .scenarios import EGO_BOX, FRONT_OFFSET, EpisodeSetup, ScenarioSpec, build_episode
from .vehicle import BicycleState, PlanTracker, bicycle_step, global_to_ego, plan_to_global

INNER_DT = 0.05  # s, the fixed inner rate of the ego, the controller and the traffic (20 Hz)
KEY_FRAME_DT = 0.5  # s between key frames (the model's camera rate, nuScenes key frames)
PLAN_STEPS = 6
SIGNAL_CODE = {"green": 0, "yellow": 1, "red": 2}
COMMAND_THRESHOLD_M = 2.0  # lateral offset of the route 3 s ahead that makes the command left / right (UniAD)


def agent_class(category: str) -> str:
    """Collision class of a nuScenes category: 'pedestrian', 'vehicle' (incl. cycles) or 'static' (objects)."""
    if category.startswith("human."):
        return "pedestrian"
    if category.startswith("vehicle."):
        return "vehicle"
    return "static"


@dataclass
class Event:
    """Something that happened in an episode (plan fallbacks here; collisions etc. are added by the metrics)."""

    t: float
    frame: int
    kind: str
    text: str

    def to_dict(self) -> dict:
        return {"t": round(self.t, 2), "frame": self.frame, "kind": self.kind, "text": self.text}


@dataclass
class KeyFrame:
    """The world at key frame ``index`` as a sensor stack reports it (ego frame conventions of docs/frames_and_units).

    Args:
        pose: ego (x, y, yaw) in the global frame (``map``).
        velocity: (vx, vy) in the ego frame, m/s: backward difference over the last key frame as the bags' odometry
            (:mod:`sparseoccvla_ros.replay.bag_writer`), the true speed at frame 0.
        yaw_rate: rad/s, the same backward difference.
        accel: longitudinal acceleration last commanded, m/s^2.
        command: the route's driving command (0 left, 1 straight, 2 right).
        speed: true speed, m/s.
    """

    index: int
    t: float
    pose: np.ndarray
    velocity: np.ndarray
    yaw_rate: float
    accel: float
    command: int
    speed: float


@dataclass
class FrameRecord:
    """Per key frame, for the report: pose, the plan in force (global) or None, its status, the signal states."""

    index: int
    t: float
    pose: np.ndarray
    plan_global: Optional[np.ndarray] = None
    status: str = "none"
    signals: list = field(default_factory=list)
    occupancy: Optional[np.ndarray] = None  # [M, 3] predicted (x, y, class) in this frame's ego frame, if any
    ground: Optional[np.ndarray] = None  # [H, W] surface codes on the VIEW grid of this frame's ego frame
    route_xy: Optional[np.ndarray] = None  # [N, 2] the route ahead / behind in this frame's ego frame
    stop_lines: list = field(default_factory=list)  # (x, y, yaw, state) of the route's stop lines, ego frame


#: Top-down window of the report's replay, ego frame: x (forward) and y (left) ranges, m, and the raster step.
VIEW_X, VIEW_Y, VIEW_RES = (-15.0, 45.0), (-20.0, 20.0), 0.5


@dataclass
class EpisodeLog:
    """Everything the metrics and the replay need, at the inner rate (T samples) and per key frame.

    Args:
        ego: [T, 4] rear-axle (x, y, yaw, v); accel / steer / yaw_rate [T].
        agent_boxes: [T, A, 5] (cx, cy, length, width, yaw) of every other agent; agent_vel [T, A, 2] m/s.
        agent_class: [A] 'pedestrian' | 'vehicle' | 'static'; agent_category [A] nuScenes names.
        route_s / route_lat: [T] rear-axle arc length on the ego route and signed lateral offset (left +), m.
        on_road: [T] all four ego-box corners on the driveable surface.
        stops: (arc length of the stop line, signal group) on the route; signal: [T, G] 0 green 1 amber 2 red.
        braking: [T] the no-plan fallback was in force during the step ending at that sample.
    """

    name: str
    kind: str
    dt: float
    t: np.ndarray
    ego: np.ndarray
    accel: np.ndarray
    steer: np.ndarray
    yaw_rate: np.ndarray
    agent_boxes: np.ndarray
    agent_vel: np.ndarray
    agent_class: list
    agent_category: list
    route_s: np.ndarray
    route_lat: np.ndarray
    s_start: float
    route_length: float
    on_road: np.ndarray
    stops: list
    signal: np.ndarray
    braking: np.ndarray
    events: list = field(default_factory=list)
    frames: list = field(default_factory=list)
    limit_s: float = 0.0
    ego_box: EgoBox = EGO_BOX
    front_offset: float = FRONT_OFFSET
    notes: str = ""


def ego_box_of(pose: np.ndarray, box: EgoBox = EGO_BOX) -> np.ndarray:
    """(cx, cy, length, width, yaw) of the ego footprint at a rear-axle pose (x, y, yaw)."""
    return np.array(
        [
            pose[0] + box.center_offset * math.cos(pose[2]),
            pose[1] + box.center_offset * math.sin(pose[2]),
            box.length,
            box.width,
            pose[2],
        ]
    )


def box_corners(box: np.ndarray) -> np.ndarray:
    """[..., 4, 2] corners of boxes [..., 5]."""
    box = np.asarray(box, np.float64)
    c, s = np.cos(box[..., 4]), np.sin(box[..., 4])
    hl, hw = 0.5 * box[..., 2], 0.5 * box[..., 3]
    sx = np.array([1, 1, -1, -1])
    sy = np.array([1, -1, -1, 1])
    x = box[..., None, 0] + c[..., None] * hl[..., None] * sx - s[..., None] * hw[..., None] * sy
    y = box[..., None, 1] + s[..., None] * hl[..., None] * sx + c[..., None] * hw[..., None] * sy
    return np.stack([x, y], axis=-1)


class Episode:
    """One closed-loop episode (module docstring).

    Args:
        setup: a built episode (:func:`~.scenarios.build_episode`), or a :class:`ScenarioSpec` to build.
        inner_dt: the fixed inner step, s (must divide 0.5 s).
    """

    def __init__(self, setup: EpisodeSetup | ScenarioSpec, inner_dt: float = INNER_DT) -> None:
        if isinstance(setup, ScenarioSpec):
            setup = build_episode(setup)
        steps = round(KEY_FRAME_DT / inner_dt)
        if steps < 1 or abs(steps * inner_dt - KEY_FRAME_DT) > 1e-9:
            raise ValueError(f"inner_dt must divide {KEY_FRAME_DT} s, got {inner_dt}")
        self.setup, self.spec = setup, setup.spec
        self.world, self.traffic, self.route = setup.world, setup.traffic, setup.route
        self.inner_dt, self.steps_per_frame = inner_dt, steps
        ego = self.traffic.agents[0]
        self.state = BicycleState(float(ego.pose[0]), float(ego.pose[1]), float(ego.pose[2]), float(setup.v0))
        self.tracker = PlanTracker()
        # until the first plan: hold the initial speed and heading (matters only in real-time mode)
        self.tracker.set_plan(plan_to_global(self._cruise(setup.v0), ego.pose), ego.pose[:2], 0.0)
        self.t = 0.0
        self.accel = 0.0
        self.yaw_rate = 0.0
        self.frame_index = -1
        self.num_frames = int(round(self.spec.limit_s / KEY_FRAME_DT))
        self._s_hint = setup.s_start
        self.events: list[Event] = []
        self.frames: list[FrameRecord] = []
        self._frame_poses: dict[int, np.ndarray] = {}
        self._rows: dict[str, list] = {k: [] for k in ("t", "ego", "accel", "steer", "yaw_rate", "boxes", "vel",
                                                        "s", "lat", "on_road", "signal", "braking")}  # fmt: skip
        others = self.traffic.agents[1:]
        self.agent_category = [a.category for a in others]
        self.agent_class = [agent_class(a.category) for a in others]
        self._record()

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _cruise(v: float) -> np.ndarray:
        return np.stack([v * KEY_FRAME_DT * np.arange(1, PLAN_STEPS + 1), np.zeros(PLAN_STEPS)], axis=1)

    @property
    def pose(self) -> np.ndarray:
        return np.array([self.state.x, self.state.y, self.state.yaw])

    def project(self, xy: np.ndarray) -> tuple[float, float]:
        """(arc length, signed lateral offset) of a point on the ego route near the last projection."""
        path = self.route.path
        s0, _ = path.project(np.asarray(xy, np.float64)[None], self._s_hint - 10.0, self._s_hint + 20.0)
        p, h = path.pose(float(s0[0]))
        tangent = np.array([math.cos(h), math.sin(h)])
        s = float(s0[0]) + float(np.clip((np.asarray(xy) - p) @ tangent, -1.0, 1.0))
        p, h = path.pose(s)
        d = np.asarray(xy) - p
        lat = math.cos(h) * d[1] - math.sin(h) * d[0]
        return s, float(lat)

    def signal_states(self) -> list[str]:
        groups = 0 if self.world.signals is None else self.world.signals.groups
        return [self.traffic.signal_state(g) for g in range(groups)]

    def command(self) -> int:
        """Driving command from the route: its lateral offset 3 s ahead (>= 12 m) in the ego frame, +-2 m."""
        s, _ = self.project(self.pose[:2])
        ahead, _ = self.route.path.pose(s + max(self.state.v, 4.0) * 3.0)
        y = global_to_ego(ahead[None], self.pose)[0, 1]
        return 0 if y > COMMAND_THRESHOLD_M else 2 if y < -COMMAND_THRESHOLD_M else 1

    def _record(self, braking: bool = False) -> None:
        r = self._rows
        r["t"].append(self.t)
        r["ego"].append(self.state.as_array())
        r["accel"].append(self.accel)
        r["steer"].append(self.tracker.steer)
        r["yaw_rate"].append(self.yaw_rate)
        others = self.traffic.agents[1:]
        r["boxes"].append(
            np.array([[a.pose[0], a.pose[1], a.size[0], a.size[1], a.pose[2]] for a in others]).reshape(-1, 5)
        )
        r["vel"].append(
            np.array([[a.v * math.cos(a.pose[2]), a.v * math.sin(a.pose[2])] for a in others]).reshape(-1, 2)
        )
        s, lat = self.project(self.pose[:2])
        self._s_hint = s
        r["s"].append(s)
        r["lat"].append(lat)
        corners = box_corners(ego_box_of(self.pose))
        surface, _ = self.world.ground.lookup(corners[:, 0], corners[:, 1])
        r["on_road"].append(bool(np.all(surface == SURF_ROAD)))
        r["signal"].append([SIGNAL_CODE[x] for x in self.signal_states()])
        r["braking"].append(braking)

    # ------------------------------------------------------------------ the loop
    def key_frame(self) -> KeyFrame:
        """Start the next key frame: record its pose and return what the sensors report."""
        self.frame_index += 1
        k = self.frame_index
        pose = self.pose
        self._frame_poses[k] = pose
        if k > 0:
            prev = self._frame_poses[k - 1]
            velocity = global_to_ego(pose[None, :2], prev)[0] / KEY_FRAME_DT
            c, s = math.cos(pose[2] - prev[2]), math.sin(pose[2] - prev[2])
            velocity = np.array([c * velocity[0] + s * velocity[1], -s * velocity[0] + c * velocity[1]])
            yaw_rate = math.atan2(s, c) / KEY_FRAME_DT
        else:
            velocity, yaw_rate = np.array([self.state.v, 0.0]), self.yaw_rate
        self.frames.append(self._frame_record(k, pose))
        return KeyFrame(k, self.t, pose, velocity, float(yaw_rate), self.accel, self.command(), self.state.v)

    def _frame_record(self, k: int, pose: np.ndarray) -> FrameRecord:
        """The frame's record with what the top-down replay draws (ground raster, route, stop lines)."""
        xs = np.arange(VIEW_X[0], VIEW_X[1], VIEW_RES) + 0.5 * VIEW_RES
        ys = np.arange(VIEW_Y[0], VIEW_Y[1], VIEW_RES) + 0.5 * VIEW_RES
        gx, gy = np.meshgrid(xs, ys, indexing="ij")  # [X, Y] ego frame
        c, s = math.cos(pose[2]), math.sin(pose[2])
        surface, _ = self.world.ground.lookup(pose[0] + c * gx - s * gy, pose[1] + s * gx + c * gy)
        s_now, _ = self.project(pose[:2])
        route, _ = self.route.path.pose(np.arange(s_now - 20.0, s_now + 70.0, 1.0))
        states = self.signal_states()
        stops = []
        for s_stop, group in self.route.stops:
            if s_now - 20.0 < s_stop < s_now + 70.0 and group < len(states):
                p, h = self.route.path.pose(s_stop)
                q = global_to_ego(p[None], pose)[0]
                stops.append((float(q[0]), float(q[1]), float(h - pose[2]), states[group]))
        return FrameRecord(k, self.t, pose, signals=states, ground=surface.astype(np.uint8),
                           route_xy=global_to_ego(route, pose), stop_lines=stops)  # fmt: skip

    def frame_pose(self, index: int) -> np.ndarray:
        return self._frame_poses[index]

    def apply_plan(self, plan_xy: Optional[np.ndarray], frame: Optional[int] = None, reason: str = "") -> str:
        """Hand the plan of key frame ``frame`` (default: the current one) to the tracker.

        Args:
            plan_xy: [6, 2] waypoints in that frame's ego frame, or None when no plan came.
            reason: for a missing plan, what happened (e.g. "no plan within 5.0 s").
        Returns:
            "ok", "missing" or "invalid" (the last two brake and add an event).
        """
        k = self.frame_index if frame is None else frame
        record = next((f for f in reversed(self.frames) if f.index == k), None)
        if plan_xy is None:
            self.tracker.brake()
            self.events.append(
                Event(
                    self.t,
                    k,
                    "no_plan",
                    f"no plan for key frame {k}{': ' + reason if reason else ''}; braking at 4 m/s²",
                )
            )
            status = "missing"
        else:
            arr = np.asarray(plan_xy, dtype=np.float64)
            if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) < 1 or not np.all(np.isfinite(arr)):
                self.tracker.brake()
                what = (
                    f"shape {arr.shape}"
                    if arr.ndim != 2 or arr.shape[-1] != 2 or len(arr) < 1
                    else "non-finite waypoints"
                )
                self.events.append(
                    Event(self.t, k, "invalid_plan", f"plan of key frame {k} rejected ({what}); braking at 4 m/s²")
                )
                status = "invalid"
            else:
                pose = self._frame_poses[k]
                self.tracker.set_plan(plan_to_global(arr, pose), pose[:2], k * KEY_FRAME_DT)
                status = "ok"
                if record is not None:
                    record.plan_global = plan_to_global(arr, pose)
        if record is not None:
            record.status = status
        return status

    def step(self) -> None:
        """One inner step: control -> bicycle -> traffic -> log."""
        dt = self.inner_dt
        braking = self.tracker.braking
        accel, steer = self.tracker.command(self.state, self.t, dt)
        self.state, self.yaw_rate = bicycle_step(self.state, accel, steer, dt)
        self.accel = accel
        ego = self.traffic.agents[0]
        ego.pose = self.pose
        ego.v = self.state.v
        ego.accel = accel
        self.traffic.step(dt)
        ego.s = self._s_hint
        self.t = round(self.t + dt, 9)
        self._record(braking)

    def advance(self, on_step=None) -> None:
        """Run the inner loop for one key-frame interval; ``on_step(episode)`` after each inner step."""
        for _ in range(self.steps_per_frame):
            self.step()
            if on_step is not None:
                on_step(self)

    def log(self) -> EpisodeLog:
        r = self._rows
        a = len(self.agent_class)
        return EpisodeLog(
            name=self.spec.name,
            kind=self.spec.kind,
            dt=self.inner_dt,
            t=np.array(r["t"]),
            ego=np.array(r["ego"]),
            accel=np.array(r["accel"]),
            steer=np.array(r["steer"]),
            yaw_rate=np.array(r["yaw_rate"]),
            agent_boxes=np.array(r["boxes"]).reshape(len(r["t"]), a, 5),
            agent_vel=np.array(r["vel"]).reshape(len(r["t"]), a, 2),
            agent_class=list(self.agent_class),
            agent_category=list(self.agent_category),
            route_s=np.array(r["s"]),
            route_lat=np.array(r["lat"]),
            s_start=self.setup.s_start,
            route_length=self.setup.route_length,
            on_road=np.array(r["on_road"], dtype=bool),
            stops=[(float(s), int(g)) for s, g in self.route.stops],
            signal=np.array(r["signal"], dtype=np.int8).reshape(len(r["t"]), -1),
            braking=np.array(r["braking"], dtype=bool),
            events=list(self.events),
            frames=list(self.frames),
            limit_s=self.spec.limit_s,
            notes=self.setup.notes,
        )


# ------------------------------------------------------------------------------------------- sensors
def render_cameras(episode: Episode, width: int, height: int, quality: int = 90, noise: float = 2.0) -> list:
    """The six cameras at the current time through the synthetic renderer (nuScenes calibration, ``sparseoccvla
    synth``'s look): a list of ``(channel, K [3, 3] at width x height, JPEG bytes)`` in CAMERA_NAMES order."""
    from ..synthetic.generate import ego_matrix, frame_objects, sensor_rig
    from ..synthetic.render import PackedScene, render

    rig = sensor_rig(width, height)
    setup = episode.setup
    packed = PackedScene.pack(frame_objects(episode.world, episode.traffic))
    ego2global = ego_matrix(episode.pose)
    out = []
    for cam in rig.cameras:
        view = render(cam, ego2global, packed, episode.world.ground, setup.look, setup.noise_rng, noise)
        ok, buf = cv2.imencode(
            ".jpg", cv2.cvtColor(view.rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
        )
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {cam.name}")
        out.append((cam.name, cam.K.copy(), buf.tobytes()))
    return out


def agent_boxes_ego(episode: Episode) -> tuple[np.ndarray, list]:
    """Boxes [A, 5] (cx, cy, l, w, yaw) of the other agents in the current ego frame, and their categories."""
    pose = episode.pose
    others = episode.traffic.agents[1:]
    if not others:
        return np.zeros((0, 5)), []
    xy = global_to_ego(np.array([a.pose[:2] for a in others]), pose)
    yaw = np.array([a.pose[2] for a in others]) - pose[2]
    size = np.array([a.size[:2] for a in others])
    return np.concatenate([xy, size, yaw[:, None]], axis=1), [a.category for a in others]
