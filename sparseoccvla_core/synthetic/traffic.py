"""Everything that moves in the synthetic world, and the signal-obeying ego driver.

Vehicles, cyclists and the ego follow their routes with the Intelligent Driver Model (Treiber et al. 2000):
``a = a_max [1 - (v / v0)^4 - (s*(v, dv) / gap)^2]``, ``s* = s0 + v T + v dv / (2 sqrt(a_max b))``.  The gap is
to the nearest object on the route ahead (found by projecting every object onto the route) or to a virtual
stopped obstacle at a stop line whose light is red (or amber when the vehicle can still stop comfortably).
The desired speed drops on curves so lateral acceleration stays under 2 m/s^2.  A left-turning ego also
waits at the junction entry while oncoming traffic approaches.  Pedestrians walk at a constant speed along
sidewalks and cross on zebras only while vehicles have red.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..batch import occ3d_class
from .primitives import TEX_PLAIN, TEX_WINDOW_BAND, ObjectBuilder, SceneObject
from .world import Route, StaticWorld, vehicle_size

# Occ3D class of each nuScenes category the world uses.
CATEGORY_TO_OCC: dict[str, int] = {
    category: occ3d_class(name)
    for category, name in (
        ("vehicle.car", "car"),
        ("vehicle.truck", "truck"),
        ("vehicle.bus.rigid", "bus"),
        ("vehicle.construction", "construction_vehicle"),
        ("vehicle.motorcycle", "motorcycle"),
        ("vehicle.bicycle", "bicycle"),
        ("human.pedestrian.adult", "pedestrian"),
        ("movable_object.trafficcone", "traffic_cone"),
        ("movable_object.barrier", "barrier"),
    )
}

# IDM parameters (Treiber et al.; urban values).
IDM_S0 = 2.0  # m, jam distance
IDM_T = 1.4  # s, time headway
IDM_B = 2.0  # m/s^2, comfortable deceleration
MAX_BRAKE = 7.0  # m/s^2
MAX_LAT_ACC = 2.0  # m/s^2 on curves
LOOKAHEAD = 60.0  # m searched for a leader

_CAR_COLORS = np.array(
    [
        [0.92, 0.92, 0.92],
        [0.08, 0.08, 0.09],
        [0.62, 0.63, 0.66],
        [0.35, 0.36, 0.38],
        [0.62, 0.08, 0.07],
        [0.10, 0.20, 0.50],
        [0.05, 0.10, 0.25],
        [0.75, 0.70, 0.58],
        [0.20, 0.35, 0.25],
    ],
    dtype=np.float32,
)
_CLOTHES = np.array(
    [[0.15, 0.15, 0.2], [0.6, 0.1, 0.1], [0.1, 0.3, 0.6], [0.8, 0.8, 0.75], [0.3, 0.4, 0.2], [0.7, 0.5, 0.2]],
    dtype=np.float32,
)
_GLASS = np.array([0.12, 0.15, 0.19], dtype=np.float32)
_TYRE = np.array([0.06, 0.06, 0.06], dtype=np.float32)


# ----------------------------------------------------------------------------------------------- bodies
def body_builder(category: str, size, color_seed: int, with_rider: bool = True) -> ObjectBuilder:
    """Primitives of an agent's body in its local frame (x forward, origin at the box bottom centre)."""
    l, w, h = size
    cls = CATEGORY_TO_OCC[category]
    r = np.random.default_rng(color_seed)
    b = ObjectBuilder()
    if category in ("vehicle.car",):
        paint = _CAR_COLORS[r.integers(len(_CAR_COLORS))]
        b.box(0.0, 0.0, 0.3, 0.6 * h, l, w, paint, cls)
        b.box(-0.08 * l, 0.0, 0.6 * h, 0.93 * h, 0.5 * l, 0.88 * w, _GLASS, cls)
        b.box(-0.08 * l, 0.0, 0.93 * h, h, 0.46 * l, 0.86 * w, paint, cls)
        for sx in (-0.32, 0.32):  # one box per axle: the wheel pair (the body hides the axle between them)
            b.box(sx * l, 0.0, 0.0, 0.62, 0.62, w - 0.02, _TYRE, cls)
    elif category in ("vehicle.truck", "vehicle.construction"):
        paint = (
            _CAR_COLORS[r.integers(len(_CAR_COLORS))] if category == "vehicle.truck" else np.array([0.9, 0.65, 0.05])
        )
        cargo = np.array([0.85, 0.85, 0.82]) if category == "vehicle.truck" else paint * 0.8
        cab = min(2.2, 0.3 * l)
        b.box(0.5 * l - 0.5 * cab, 0.0, 0.5, 0.85 * h, cab, w, paint, cls)
        b.box(0.5 * l - 0.45 * cab, 0.0, 0.55 * h, 0.8 * h, cab * 0.8, w * 1.01, _GLASS, cls)
        b.box(-0.5 * cab, 0.0, 0.8, h, l - cab - 0.2, w, cargo, cls)
        for sx in (0.38, -0.1, -0.38):
            b.box(sx * l, 0.0, 0.0, 0.95, 0.95, w - 0.04, _TYRE, cls)
    elif category == "vehicle.bus.rigid":
        paint = np.array([[0.85, 0.2, 0.15], [0.15, 0.35, 0.7], [0.9, 0.9, 0.88]])[r.integers(3)]
        b.box(0.0, 0.0, 0.4, h, l, w, paint, cls, TEX_WINDOW_BAND)
        for sx in (0.33, -0.3):
            b.box(sx * l, 0.0, 0.0, 1.0, 1.0, w - 0.04, _TYRE, cls)
    elif category in ("vehicle.motorcycle", "vehicle.bicycle"):
        frame = (
            _CAR_COLORS[r.integers(len(_CAR_COLORS))] if category == "vehicle.motorcycle" else np.array([0.1, 0.3, 0.6])
        )
        wheel_r = 0.33 if category == "vehicle.bicycle" else 0.32
        body_h = 0.9 if category == "vehicle.bicycle" else 1.0
        b.box(
            0.0, 0.0, 2 * wheel_r - 0.1, body_h, 0.75 * l, 0.12 if category == "vehicle.bicycle" else 0.35, frame, cls
        )
        for sx in (-0.5 * l + wheel_r, 0.5 * l - wheel_r):
            b.box(sx, 0.0, 0.0, 2 * wheel_r, 2 * wheel_r, 0.08, _TYRE, cls)
        if with_rider:
            shirt = _CLOTHES[r.integers(len(_CLOTHES))]
            b.box(-0.1, 0.0, body_h + 0.02, h - 0.3, 0.35, 0.45, shirt, cls)
            b.ellipsoid(-0.05, 0.0, h - 0.15, 0.13, 0.13, 0.15, np.array([0.2, 0.2, 0.22]), cls, TEX_PLAIN)
    elif category == "human.pedestrian.adult":
        shirt, trousers = _CLOTHES[r.integers(len(_CLOTHES))], _CLOTHES[r.integers(len(_CLOTHES))] * 0.7
        b.box(0.0, 0.0, 0.0, 0.48 * h, 0.3, 0.38, trousers, cls)
        b.box(0.0, 0.0, 0.48 * h, 0.86 * h, 0.32, 0.5, shirt, cls)
        b.ellipsoid(0.0, 0.0, 0.93 * h, 0.11, 0.1, 0.13, np.array([0.78, 0.6, 0.48]), cls, TEX_PLAIN)
    elif category == "movable_object.trafficcone":
        orange, white = np.array([1.0, 0.4, 0.05]), np.array([0.95, 0.95, 0.95])
        b.box(0.0, 0.0, 0.0, 0.05, l, w, np.array([0.1, 0.1, 0.1]), cls)
        b.box(0.0, 0.0, 0.05, 0.45 * h, 0.3, 0.3, orange, cls)
        b.box(0.0, 0.0, 0.45 * h, 0.62 * h, 0.22, 0.22, white, cls)
        b.box(0.0, 0.0, 0.62 * h, h, 0.14, 0.14, orange, cls)
    elif category == "movable_object.barrier":
        concrete = np.array([0.78, 0.77, 0.74])
        b.box(0.0, 0.0, 0.0, 0.35 * h, l, w, concrete, cls)
        b.box(0.0, 0.0, 0.35 * h, h, 0.55 * l, w, np.array([0.95, 0.95, 0.95]) if color_seed % 2 else concrete, cls)
    else:
        raise ValueError(f"no body model for {category}")
    return b


# ----------------------------------------------------------------------------------------------- agents
@dataclass
class Agent:
    """One annotated object (or the ego).

    Args:
        category: nuScenes category name.
        size: (length, width, height), m.
        route: followed route (None for parked / static objects).
        s: arc length on the route, m.
        v: speed along the route, m/s.
        v_des: desired speed, m/s.
        pose: (x, y, yaw) in the global frame (kept up to date).
        static_attribute: nuScenes attribute of a static object (parked, without_rider, ...) or None.
        body: primitives in the local frame.
        is_ego: the ego vehicle (never annotated, never rendered).
        a_max: maximum acceleration, m/s^2.
    """

    category: str
    size: tuple
    route: Route | None
    s: float
    v: float
    v_des: float
    pose: np.ndarray
    static_attribute: str | None
    body: ObjectBuilder | None
    is_ego: bool = False
    a_max: float = 1.5
    accel: float = 0.0
    constraint: str = "free"  # what limited the last acceleration: free / leader / signal / yield / curve
    leader: int = -1
    gap: float = float("inf")  # m to the leader (or the binding stop point)


@dataclass
class AgentSnapshot:
    """Pose and motion of one agent at a key frame (global frame)."""

    index: int
    category: str
    center: np.ndarray  # [3] box centre
    size: tuple  # (l, w, h)
    yaw: float
    velocity: np.ndarray  # [2] m/s
    attribute: str | None


@dataclass
class FrameState:
    """The world at one key frame.

    Args:
        t: time since the first key frame, s.
        ego_pose: (x, y, yaw) of the ego (rear-axle centre on the ground), global.
        ego_speed, ego_accel, ego_yaw_rate: ego motion (m/s, m/s^2, rad/s).
        ego_behavior: one of cruise / follow / stop_signal / stopped_signal / yield / stopped_queue / accelerate /
            turn (see :func:`ego_behavior`).
        ego_maneuver: the ego route's maneuver ("straight", "left", "right").
        signal_ahead: (state, distance to the stop line in m) of the next signal on the ego route within 80 m,
            or None.
        ego_leader: index of the agent the ego follows (or -1) and the gap to it, m.
        agents: snapshots of every non-ego agent.
        signal_states: state of each signal group.
        in_turn: the ego is on its turning connector.
    """

    t: float
    ego_pose: np.ndarray
    ego_speed: float
    ego_accel: float
    ego_yaw_rate: float
    ego_behavior: str
    ego_maneuver: str
    signal_ahead: tuple | None
    ego_leader: tuple
    agents: list
    signal_states: list
    in_turn: bool


class TrafficSimulation:
    """Spawns agents on the static world's routes and steps them forward.

    Args:
        world: the static world.
        rng: the scene's generator.
        ego_travel_m: rough ego distance over the scene (used to decide where traffic is worth spawning).
        warmup_s: seconds simulated before t = 0.
    """

    def __init__(self, world: StaticWorld, rng: np.random.Generator, ego_travel_m: float, warmup_s: float) -> None:
        self.world = world
        self.rng = rng
        self.t = -warmup_s
        self.agents: list[Agent] = []
        ego_route = world.ego_route
        v_ego = float(rng.uniform(8.0, 11.5))
        s0 = max(0.0, ego_route.start_s - 0.85 * v_ego * warmup_s)
        ego = Agent(
            "vehicle.car",
            (4.08, 1.73, 1.56),
            ego_route,
            s0,
            0.85 * v_ego,
            v_ego,
            np.zeros(3),
            None,
            None,
            is_ego=True,
            a_max=1.6,
        )
        self.agents.append(ego)
        mid, _ = ego_route.path.pose(ego_route.start_s + 0.5 * ego_travel_m)
        self.focus = mid
        self.focus_radius = 0.5 * ego_travel_m + 110.0
        self._spawn_vehicles()
        self._spawn_walkers()
        self._spawn_static()
        for a in self.agents:
            self._update_pose(a)

    # --- spawning ------------------------------------------------------------------------------------------------
    def _near_focus(self, xy) -> bool:
        return float(np.linalg.norm(np.asarray(xy) - self.focus)) < self.focus_radius

    def _clear(self, xy, radius: float) -> bool:
        for a in self.agents:
            if a.route is None:
                continue
            p, _ = a.route.path.pose(a.s)
            if np.linalg.norm(p - xy) < radius:
                return False
        return True

    def _spawn_vehicles(self) -> None:
        r = self.rng
        ego = self.agents[0]
        ego_xy, _ = ego.route.path.pose(ego.s)
        cyclists = 0
        spacing = float(r.uniform(25.0, 60.0))  # mean gap between spawned vehicles: the scene's traffic density
        for route, kerb_lane in self.world.vehicle_routes:
            s = float(r.uniform(0, 30))
            while s < route.path.length - 5:
                s += float(r.uniform(0.5, 1.5) * spacing)
                xy, _ = route.path.pose(s)
                if not self._near_focus(xy) or not self._clear(xy, 9.0):
                    continue
                if np.linalg.norm(xy - ego_xy) < 25.0:
                    continue
                u = r.random()
                category = (
                    "vehicle.car"
                    if u < 0.74
                    else "vehicle.truck"
                    if u < 0.86
                    else "vehicle.bus.rigid"
                    if u < 0.94
                    else "vehicle.motorcycle"
                )
                size = vehicle_size(category, r)
                v_des = float(r.uniform(7.0, 12.0)) if category != "vehicle.bus.rigid" else float(r.uniform(6.0, 9.0))
                body = body_builder(category, size, int(r.integers(1 << 30)))
                self.agents.append(
                    Agent(
                        category,
                        size,
                        route,
                        s,
                        0.8 * v_des,
                        v_des,
                        np.zeros(3),
                        None,
                        body,
                        a_max=1.5 if category == "vehicle.car" else 1.0,
                    )
                )
            if kerb_lane == 0 and route.maneuver == "straight" and cyclists < 2 and r.random() < 0.5:
                bike_route = Route(route.path.offset(-1.1), stops=route.stops, walk=False)
                for _ in range(3):
                    s_b = float(r.uniform(0.3, 0.7) * route.path.length)
                    xy, _ = bike_route.path.pose(s_b)
                    if self._near_focus(xy) and self._clear(xy, 12.0) and np.linalg.norm(xy - ego_xy) > 20.0:
                        size = vehicle_size("vehicle.bicycle", r)
                        body = body_builder("vehicle.bicycle", size, int(r.integers(1 << 30)))
                        v_des = float(r.uniform(3.5, 5.5))
                        self.agents.append(
                            Agent(
                                "vehicle.bicycle",
                                size,
                                bike_route,
                                s_b,
                                v_des,
                                v_des,
                                np.zeros(3),
                                None,
                                body,
                                a_max=1.0,
                            )
                        )
                        cyclists += 1
                        break

    def _spawn_walkers(self) -> None:
        r = self.rng
        for route in self.world.walk_routes:
            for _ in range(int(r.integers(0, 4))):
                s = float(r.uniform(0.0, route.path.length))
                xy, _ = route.path.pose(s)
                if not self._near_focus(xy) or not self._clear(xy, 1.5):
                    continue
                standing = r.random() < 0.25
                if not route.stops:  # walkers keep to their own side of the sidewalk
                    route = Route(route.path.offset(float(r.uniform(-0.6, 0.6))), walk=True)
                size = (float(r.uniform(0.6, 0.85)), float(r.uniform(0.55, 0.75)), float(r.uniform(1.55, 1.9)))
                v = 0.0 if standing else float(r.uniform(1.0, 1.6))
                body = body_builder("human.pedestrian.adult", size, int(r.integers(1 << 30)))
                self.agents.append(Agent("human.pedestrian.adult", size, route, s, v, v, np.zeros(3), None, body))

    def _spawn_static(self) -> None:
        for category, x, y, yaw, size, attribute, seed in self.world.parked:
            if not self._near_focus((x, y)):
                continue
            with_rider = attribute != "cycle.without_rider"
            body = body_builder(category, size, seed, with_rider=with_rider)
            self.agents.append(Agent(category, size, None, 0.0, 0.0, 0.0, np.array([x, y, yaw]), attribute, body))

    # --- stepping ------------------------------------------------------------------------------------------------
    def _update_pose(self, a: Agent) -> None:
        if a.route is not None:
            xy, h = a.route.path.pose(a.s)
            a.pose = np.array([xy[0], xy[1], h])

    def signal_state(self, group: int, t: float | None = None) -> str:
        if self.world.signals is None:
            return "green"
        return self.world.signals.state(group, self.t if t is None else t)

    def step(self, dt: float) -> None:
        """Advance every agent by ``dt`` seconds (IDM for drivers, constant speed for walkers)."""
        poses = np.array([a.pose for a in self.agents])  # [N, 3]
        lengths = np.array([a.size[0] for a in self.agents])
        widths = np.array([a.size[1] for a in self.agents])
        speeds = np.array([a.v for a in self.agents])
        vel = speeds[:, None] * np.stack([np.cos(poses[:, 2]), np.sin(poses[:, 2])], axis=1)
        accels = np.zeros(len(self.agents))
        for i, a in enumerate(self.agents):
            if a.route is None:
                continue
            if a.route.walk:
                accels[i] = self._walker_speed(a)
                continue
            accels[i] = self._driver_accel(i, a, poses, lengths, widths, vel)
        for i, a in enumerate(self.agents):
            if a.route is None:
                continue
            if a.route.walk:
                a.s += a.v * dt
            else:
                a.accel = float(accels[i])
                new_v = max(0.0, a.v + a.accel * dt)
                a.s += 0.5 * (a.v + new_v) * dt
                a.v = new_v
            self._update_pose(a)
        self.t += dt

    def _walker_speed(self, a: Agent) -> float:
        """Walkers stop at a kerb whose crossing is closed (vehicles not red), else keep their pace."""
        walking = a.v_des > 0
        if not walking:
            a.v = 0.0
            return 0.0
        for s_stop, group in a.route.stops:
            dist = s_stop - a.s
            if 0.0 <= dist < 1.0 and self.signal_state(group) != "red":
                a.v = 0.0 if dist < 0.2 else 0.4
                return 0.0
        a.v = a.v_des
        return 0.0

    def _driver_accel(self, i, a: Agent, poses, lengths, widths, vel) -> float:
        path = a.route.path
        # 1. leader on the route: nearest object whose centre lies within the swept lane ahead
        others = np.ones(len(self.agents), bool)
        others[i] = False
        d_xy = poses[:, :2] - poses[i, :2]
        near = others & (np.linalg.norm(d_xy, axis=1) < LOOKAHEAD + 10.0)
        gap, v_lead, leader = np.inf, 0.0, -1
        if near.any():
            idx = np.nonzero(near)[0]
            s_proj, lat = path.project(poses[idx, :2], a.s + 0.5, a.s + LOOKAHEAD)
            ok = lat < 0.5 * widths[i] + 0.5 * widths[idx] + 0.25
            if ok.any():
                idx, s_proj = idx[ok], s_proj[ok]
                extent = 0.5 * np.maximum(lengths[idx], widths[idx])
                gaps = s_proj - a.s - 0.5 * lengths[i] - extent
                j = int(np.argmin(gaps))
                gap, leader = float(gaps[j]), int(idx[j])
                _, h_i = path.pose(s_proj[j])
                v_lead = float(vel[leader] @ np.array([np.cos(h_i), np.sin(h_i)]))
        constraint = "leader" if leader >= 0 else "free"
        # 2. signals: a red (or catchable amber) light is a stopped obstacle at its stop line
        for s_stop, group in a.route.stops:
            dist = s_stop - a.s - 0.5 * lengths[i]
            if dist < -0.5 or dist > 120.0:
                continue
            state = self.signal_state(group)
            must_stop = state == "red" or (state == "yellow" and dist > a.v**2 / (2 * 3.0))
            if must_stop and dist < gap:
                gap, v_lead, leader, constraint = max(dist, 0.01), 0.0, -1, "signal"
            break
        # 3. a left-turning ego yields to oncoming traffic before entering the junction
        if (
            a.is_ego
            and a.route.maneuver == "left"
            and a.route.turn_span is not None
            and self.world.layout == "intersection"
        ):
            dist = a.route.turn_span[0] - a.s - 0.5 * lengths[i]
            if -0.5 < dist < 60.0 and self._oncoming_traffic(i) and dist < gap:
                gap, v_lead, leader, constraint = max(dist, 0.01), 0.0, -1, "yield"
        # 4. IDM with a curvature-limited desired speed
        kap = path.dense_curvature()
        i0 = int(np.clip(a.s, 0, len(kap) - 1))
        kappa = float(np.max(kap[i0 : i0 + 30])) if i0 < len(kap) - 1 else 0.0
        v0 = min(a.v_des, np.sqrt(MAX_LAT_ACC / max(kappa, 1e-4)))
        if v0 < a.v_des - 0.5 and constraint == "free":
            constraint = "curve"
        acc = a.a_max * (1.0 - (a.v / max(v0, 0.1)) ** 4)
        if np.isfinite(gap):
            dv = a.v - v_lead
            s_star = IDM_S0 + max(0.0, a.v * IDM_T + a.v * dv / (2.0 * np.sqrt(a.a_max * IDM_B)))
            acc -= a.a_max * (s_star / max(gap, 0.05)) ** 2
        a.constraint, a.leader, a.gap = constraint, leader, gap
        return float(np.clip(acc, -MAX_BRAKE, a.a_max))

    def _oncoming_traffic(self, i: int) -> bool:
        """Whether a vehicle of the opposite approach is within 45 m of the junction and not yet past it."""
        center = self.world.junction_center
        ego = self.agents[i]
        for j, b in enumerate(self.agents):
            if j == i or b.route is None or b.route.walk:
                continue
            if np.cos(b.pose[2] - ego.pose[2]) > -0.7:
                continue
            to_center = center - b.pose[:2]
            dist = float(np.linalg.norm(to_center))
            approaching = to_center @ np.array([np.cos(b.pose[2]), np.sin(b.pose[2])]) > -2.0
            if dist < 45.0 and approaching and (b.v > 0.5 or dist < 15.0):
                return True
        return False

    # --- key-frame state -----------------------------------------------------------------------------------------
    def snapshot(self) -> FrameState:
        ego = self.agents[0]
        snaps = []
        for k, a in enumerate(self.agents[1:]):
            yaw = float(a.pose[2])
            vel = a.v * np.array([np.cos(yaw), np.sin(yaw)])
            center = np.array([a.pose[0], a.pose[1], 0.5 * a.size[2]])
            snaps.append(AgentSnapshot(k, a.category, center, a.size, yaw, vel, self.attribute(a)))
        signal_ahead = None
        for s_stop, group in ego.route.stops:
            dist = s_stop - ego.s - 0.5 * ego.size[0]
            if -1.0 < dist < 80.0:
                signal_ahead = (self.signal_state(group), float(dist))
                break
        span = ego.route.turn_span
        in_turn = span is not None and span[0] - 3.0 <= ego.s <= span[1]
        groups = 0 if self.world.signals is None else self.world.signals.groups
        leader = (ego.leader - 1 if ego.leader > 0 else -1, 0.0)
        if ego.leader > 0:
            leader = (ego.leader - 1, float(np.linalg.norm(self.agents[ego.leader].pose[:2] - ego.pose[:2])))
        return FrameState(
            t=float(self.t),
            ego_pose=ego.pose.copy(),
            ego_speed=float(ego.v),
            ego_accel=float(ego.accel),
            ego_yaw_rate=0.0,
            ego_behavior=ego_behavior(ego, in_turn),
            ego_maneuver=ego.route.maneuver,
            signal_ahead=signal_ahead,
            ego_leader=leader,
            agents=snaps,
            signal_states=[self.signal_state(g) for g in range(groups)],
            in_turn=in_turn,
        )

    @staticmethod
    def attribute(a: Agent) -> str | None:
        """nuScenes attribute name of an agent at the current time."""
        if a.category.startswith("movable_object"):
            return None
        if a.route is None:
            return a.static_attribute
        if a.category == "human.pedestrian.adult":
            return "pedestrian.moving" if a.v > 0.2 else "pedestrian.standing"
        if a.category in ("vehicle.bicycle", "vehicle.motorcycle"):
            return "cycle.with_rider"
        return "vehicle.moving" if a.v > 0.3 else "vehicle.stopped"

    def objects(self) -> list[SceneObject]:
        """Renderable / voxelisable objects of the non-ego agents, instance index = agent index - 1."""
        out = []
        for k, a in enumerate(self.agents[1:]):
            out.append(a.body.build(float(a.pose[0]), float(a.pose[1]), float(a.pose[2]), instance=k))
        return out


def ego_behavior(ego: Agent, in_turn: bool) -> str:
    """Discrete ego behaviour from its motion and the constraint that limited its acceleration."""
    stopped = ego.v < 0.3
    if ego.constraint == "signal":
        return "stopped_signal" if stopped else "stop_signal"
    if ego.constraint == "yield":
        return "yield"
    if ego.constraint == "leader" and stopped:
        return "stopped_queue"
    if in_turn:
        return "turn"
    if ego.constraint == "leader" and ego.leader >= 0 and ego.gap < max(25.0, 3.0 * ego.v):
        return "follow"
    if ego.accel > 0.4 and ego.v < ego.v_des - 1.0:
        return "accelerate"
    if ego.constraint == "curve":
        return "curve"
    return "cruise"


def simulate(
    world: StaticWorld,
    rng: np.random.Generator,
    num_frames: int,
    dt: float,
    steps_per_frame: int,
    warmup_s: float,
    ego_travel_m: float,
    on_key_frame=None,
) -> list[FrameState]:
    """Run the traffic and return the world state at each 2 Hz key frame.

    Args:
        on_key_frame: optional callback ``f(sim, frame_index, state)`` called at each key frame (to render).
    """
    sim = TrafficSimulation(world, rng, ego_travel_m, warmup_s)
    for _ in range(int(round(warmup_s / dt))):
        sim.step(dt)
    sim.t = 0.0
    states = []
    for k in range(num_frames):
        if k > 0:
            for _ in range(steps_per_frame):
                sim.step(dt)
        state = sim.snapshot()
        # yaw rate from the route heading around the current arc length
        ego = sim.agents[0]
        _, h0 = ego.route.path.pose(ego.s - 0.5 * ego.v * dt)
        _, h1 = ego.route.path.pose(ego.s + 0.5 * ego.v * dt)
        state.ego_yaw_rate = float(np.angle(np.exp(1j * (h1 - h0))) / dt)
        states.append(state)
        if on_key_frame is not None:
            on_key_frame(sim, k, state)
    return states
