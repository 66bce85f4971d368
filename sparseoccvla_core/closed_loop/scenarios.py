"""The closed-loop episodes: six scenario kinds on the synthetic world's layouts (docs/closed_loop.md §2).

Episode ``i`` of ``scenario_set(seed, n)`` is kind ``KINDS[i % 6]``, built from ``SeedSequence([seed, i, a])``
(``a`` = the first attempt whose intersection world has the ego route the kind needs), so an episode's world,
traffic and appearance depend only on (seed, i).  The default seed 2000 is neither a training world's (0) nor the
demo's (1000).

Every episode starts the ego at its route's start point at a cruise speed ``v0`` (8-11 m/s), after 4 s of traffic
warm-up without the ego; vehicles overlapping the ego's lane from 8 m behind the ego to the end of its route are
removed, so what the ego meets ahead is what the kind puts there:

=====================  ===========  ===================================================================  =====
kind                   layout       situation                                                            limit
=====================  ===========  ===================================================================  =====
straight               straight     the light stays green; drive 100 m                                   15 s
red_light              intersection straight through; the ego's light is red until ``d / v0 + 5`` s          25 s
                                    (d: front bumper to the stop line), then green; drive to 25 m
                                    past the stop line
braking_lead           straight     a car 22 m ahead at ``v0`` brakes at 5 m/s² from t = 3 s to a stop;  12 s
                                    drive to 5 m behind where it stops
pedestrian_crossing    straight     a pedestrian steps off the right kerb mid-block and crosses the ego   16 s
                                    lane, timed to be in it 1 s before the ego arrives at ``v0``;
                                    drive 100 m
parked_car             straight     a parked car blocks the ego lane 55 m ahead; drive to 5 m behind it   12 s
turn                   intersection a right turn on green (pedestrians may cross the exit road); drive   22 s
                                    to 25 m past the turn
=====================  ===========  ===================================================================  =====

The route of every kind is the world's ego lane (:class:`~sparseoccvla_core.synthetic.world.Route`); its length is
what route completion is measured against, the limit is the episode's duration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..metrics import EgoBox
from ..synthetic.paths import Path
from ..synthetic.render import Look
from ..synthetic.traffic import Agent, TrafficSimulation, body_builder
from ..synthetic.world import Route, SignalProgram, StaticWorld, build_world, vehicle_size

KINDS: tuple[str, ...] = ("straight", "red_light", "braking_lead", "pedestrian_crossing", "parked_car", "turn")
LAYOUT: dict[str, str] = {
    "straight": "straight",
    "red_light": "intersection",
    "braking_lead": "straight",
    "pedestrian_crossing": "straight",
    "parked_car": "straight",
    "turn": "intersection",
}
MANEUVER: dict[str, str] = {"red_light": "straight", "turn": "right"}
DURATION_S: dict[str, float] = {
    "straight": 15.0,
    "red_light": 25.0,
    "braking_lead": 12.0,
    "pedestrian_crossing": 16.0,
    "parked_car": 12.0,
    "turn": 22.0,
}
DEFAULT_SEED = 2000
WARMUP_S = 4.0
WARMUP_DT = 0.1
TRAVEL_M = 160.0  # sizes the scenery and where traffic spawns (synthetic.world / traffic)
EGO_BOX = EgoBox()
FRONT_OFFSET = EGO_BOX.center_offset + 0.5 * EGO_BOX.length  # rear axle -> front bumper, m
LEAD_GAP_M, LEAD_BRAKE_T, LEAD_DECEL = 22.0, 3.0, 5.0
PARKED_GAP_M = 55.0
PED_SPEED = 1.4  # m/s
PED_GO_S = 2.0  # s, the pedestrian starts walking
RED_EXTRA_S = 5.0  # s the red light lasts beyond the ego's arrival at its cruise speed
GOAL_MARGIN_M = 5.0  # goals behind a stopping / parked car: front bumper this far behind its rear
MAX_ATTEMPTS = 64


@dataclass(frozen=True)
class ScenarioSpec:
    """One episode: ``kind`` of :data:`KINDS`, seeded by (``seed``, ``index``); ``duration_s`` None = the kind's."""

    index: int
    seed: int
    kind: str
    duration_s: Optional[float] = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown scenario kind {self.kind!r}; choose from {', '.join(KINDS)}")
        if self.duration_s is not None and not 0.5 <= self.duration_s <= 600.0:
            raise ValueError(f"episode duration must be in [0.5, 600] s, got {self.duration_s}")

    @property
    def name(self) -> str:
        return f"{self.index:02d}-{self.kind}"

    @property
    def layout(self) -> str:
        return LAYOUT[self.kind]

    @property
    def limit_s(self) -> float:
        return float(self.duration_s if self.duration_s is not None else DURATION_S[self.kind])


def scenario_set(
    seed: int = DEFAULT_SEED,
    episodes: int = len(KINDS),
    kinds: Optional[tuple[str, ...]] = None,
    duration_s: Optional[float] = None,
) -> list[ScenarioSpec]:
    """Episodes ``0 .. episodes-1``; episode ``i`` is ``kinds[i % len(kinds)]`` (default: all six kinds)."""
    kinds = tuple(kinds) if kinds else KINDS
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown scenario kind(s) {', '.join(bad)}; choose from {', '.join(KINDS)}")
    return [ScenarioSpec(i, int(seed), kinds[i % len(kinds)], duration_s) for i in range(episodes)]


# ------------------------------------------------------------------------------------------- scripted agents
@dataclass
class BrakeScript:
    """A driver that follows IDM until ``t_brake``, then brakes at ``decel`` to a stop and stays."""

    t_brake: float
    decel: float

    def accel(self, t: float, agent: Agent, idm: float) -> float:
        if t < self.t_brake:
            return idm
        return -self.decel if agent.v > 0.0 else 0.0


@dataclass
class WalkScript:
    """A pedestrian that stands until ``t_go``, then walks its route at ``speed``."""

    t_go: float
    speed: float

    def walk_speed(self, t: float) -> float:
        return 0.0 if t < self.t_go else self.speed


class ClosedLoopTraffic(TrafficSimulation):
    """The world's traffic with an externally driven ego (agent 0) and scripted agents.

    The ego is skipped by the IDM update (its pose is set by the closed loop) but stays in the pose table, so every
    other driver sees it as a leader or an obstacle exactly as in the open-loop world.
    """

    def step(self, dt: float) -> None:
        ego = self.agents[0]
        route, ego.route = ego.route, None
        try:
            super().step(dt)
        finally:
            ego.route = route

    def _driver_accel(self, i, a: Agent, poses, lengths, widths, vel) -> float:
        acc = super()._driver_accel(i, a, poses, lengths, widths, vel)
        script = getattr(a, "script", None)
        return script.accel(self.t, a, acc) if isinstance(script, BrakeScript) else acc

    def _walker_speed(self, a: Agent) -> float:
        script = getattr(a, "script", None)
        if isinstance(script, WalkScript):
            a.v = script.walk_speed(self.t)
            return 0.0
        return super()._walker_speed(a)


@dataclass
class EpisodeSetup:
    """A built episode: world, traffic at t = 0, the ego's start and route, appearance and sensor-noise generator.

    Args:
        route_length: m of the ego route (rear-axle arc length from ``s_start``) that counts as completed.
        actors: scenario agents by role ("lead", "pedestrian", "parked") -> the Agent object.
        notes: one line on what this episode contains.
    """

    spec: ScenarioSpec
    world: StaticWorld
    traffic: ClosedLoopTraffic
    look: Look
    noise_rng: np.random.Generator
    route: Route
    s_start: float
    v0: float
    route_length: float
    actors: dict = field(default_factory=dict)
    notes: str = ""


def _build_world(spec: ScenarioSpec):
    want = MANEUVER.get(spec.kind)
    for attempt in range(MAX_ATTEMPTS):
        world_ss, traffic_ss, look_ss, noise_ss, ego_ss = np.random.SeedSequence(
            [spec.seed, spec.index, attempt]
        ).spawn(5)
        world = build_world(spec.layout, np.random.default_rng(world_ss), TRAVEL_M)
        if want is None or world.ego_route.maneuver == want:
            return world, traffic_ss, look_ss, noise_ss, ego_ss
    raise RuntimeError(
        f"no {spec.layout} world with a '{want}' ego route in {MAX_ATTEMPTS} attempts (seed {spec.seed})"
    )


def _lane_overlap(route: Route, xy: np.ndarray, s_lo: float, s_hi: float, half_width: float) -> bool:
    s, lat = route.path.project(np.asarray(xy, np.float64)[None], s_lo, s_hi)
    return bool(s_lo + 0.5 < s[0] < s_hi - 0.5 and lat[0] < half_width)


def _place_agent(traffic: ClosedLoopTraffic, agent: Agent) -> Agent:
    traffic.agents.append(agent)
    traffic._update_pose(agent)
    return agent


def build_episode(spec: ScenarioSpec) -> EpisodeSetup:
    """Build episode ``spec`` (deterministic per (seed, index)); see the module docstring for each kind."""
    world, traffic_ss, look_ss, noise_ss, ego_ss = _build_world(spec)
    ego_rng = np.random.default_rng(ego_ss)
    route = world.ego_route
    s_start = float(route.start_s)
    v0 = float(ego_rng.uniform(8.0, 11.0))
    limit = spec.limit_s
    kind = spec.kind
    stop_s = float(route.stops[0][0]) if route.stops else None

    # signals: the kind decides the ego group's phase at t = 0 (warm-up runs at t < 0 on the same program)
    notes = ""
    if world.signals is not None:
        program = world.signals
        if kind == "red_light":
            d = stop_s - (s_start + FRONT_OFFSET)
            red_left = d / v0 + RED_EXTRA_S
            green = max(program.green_s, red_left)
            # group 0 is red from green + 3 s (after its amber) to the end of the 2 (green + 4) s cycle
            world.signals = SignalProgram(green_s=green, offset_s=float(2 * green + 8.0 - red_left), groups=2)
            notes = f"stop line {d:.0f} m ahead, red for {red_left:.1f} s, then green"
        elif program.groups == 2:  # turn: the ego's group green for the whole episode
            world.signals = SignalProgram(green_s=max(program.green_s, limit + 5.0), offset_s=0.0, groups=2)
        else:  # straight layout: vehicles green for the whole episode (pedestrians wait at the zebra)
            world.signals = SignalProgram(green_s=limit + 10.0, offset_s=0.0, groups=1, ped_s=program.ped_s)

    traffic = ClosedLoopTraffic(world, np.random.default_rng(traffic_ss), TRAVEL_M, WARMUP_S)
    ego = traffic.agents[0]
    ego_route = ego.route
    ego.route, ego.pose, ego.v = None, np.array([1e7, 1e7, 0.0]), 0.0  # absent during the warm-up
    for _ in range(int(round(WARMUP_S / WARMUP_DT))):
        traffic.step(WARMUP_DT)
    traffic.t = 0.0
    xy, heading = route.path.pose(s_start)
    ego.route, ego.s, ego.v, ego.v_des = ego_route, s_start, v0, v0
    ego.pose = np.array([xy[0], xy[1], float(heading)])

    # route length per kind (rear-axle arc length from s_start)
    if kind == "red_light":
        route_length = (stop_s + 25.0) - (s_start + FRONT_OFFSET)
    elif kind == "turn":
        route_length = float(route.turn_span[1]) + 25.0 - s_start
    else:
        route_length = 100.0
    s_end = s_start + route_length + 40.0

    # clear the ego lane of vehicles and static objects from 8 m behind the ego to the end of the route
    kept = [ego]
    for a in traffic.agents[1:]:
        walker = a.route is not None and a.route.walk
        half = 0.5 * a.size[1] + 1.75
        if not walker and _lane_overlap(route, a.pose[:2], s_start - 8.0, s_end, half):
            continue
        kept.append(a)
    traffic.agents = kept

    actors: dict = {}
    size_rng = np.random.default_rng(ego_rng.integers(1 << 30))
    if kind == "braking_lead":
        size = vehicle_size("vehicle.car", size_rng)
        s_lead = s_start + FRONT_OFFSET + LEAD_GAP_M + 0.5 * size[0]
        lead = Agent("vehicle.car", size, route, s_lead, v0, v0, np.zeros(3), None,
                     body_builder("vehicle.car", size, int(size_rng.integers(1 << 30))), a_max=1.5)  # fmt: skip
        lead.script = BrakeScript(LEAD_BRAKE_T, LEAD_DECEL)
        actors["lead"] = _place_agent(traffic, lead)
        s_stop_lead = s_lead + v0 * LEAD_BRAKE_T + v0**2 / (2 * LEAD_DECEL)
        route_length = s_stop_lead - 0.5 * size[0] - GOAL_MARGIN_M - FRONT_OFFSET - s_start
        notes = f"lead car {LEAD_GAP_M:.0f} m ahead at {v0:.1f} m/s brakes at {LEAD_DECEL:.0f} m/s² from t = {LEAD_BRAKE_T:.0f} s"
    elif kind == "parked_car":
        size = vehicle_size("vehicle.car", size_rng)
        s_car = s_start + FRONT_OFFSET + PARKED_GAP_M + 0.5 * size[0]
        p, h = route.path.pose(s_car)
        car = Agent("vehicle.car", size, None, 0.0, 0.0, 0.0, np.array([p[0], p[1], float(h)]), "vehicle.parked",
                    body_builder("vehicle.car", size, int(size_rng.integers(1 << 30))))  # fmt: skip
        actors["parked"] = _place_agent(traffic, car)
        route_length = PARKED_GAP_M - GOAL_MARGIN_M
        notes = f"parked car in the ego lane {PARKED_GAP_M:.0f} m ahead"
    elif kind == "pedestrian_crossing":
        t_arrive = 6.0
        s_cross = s_start + FRONT_OFFSET + v0 * t_arrive
        p, h = route.path.pose(s_cross)
        normal = np.array([-math.sin(h), math.cos(h)])  # left of the ego's travel
        along = np.array([math.cos(h), math.sin(h)])
        road = world.roads[0]
        _, lane_off = road.centerline.project(p[None], 0.0, road.centerline.length + 80.0)
        end_lat = road.kerb + float(lane_off[0]) + 1.0  # 1 m onto the far (left) sidewalk
        size = (0.7, 0.65, 1.75)
        corridor = 0.5 * EGO_BOX.width + 0.5 * size[1]
        t_enter = t_arrive - 1.0  # in the ego lane 1 s before the ego would reach it at v0
        start_lat = -(corridor + PED_SPEED * (t_enter - PED_GO_S))  # right of the lane centre, reached at PED_GO_S
        pts = [p + start_lat * normal, p + end_lat * normal, p + end_lat * normal + 30.0 * along]
        ped_route = Route(Path(np.array(pts)), walk=True)
        ped = Agent("human.pedestrian.adult", size, ped_route, 0.0, 0.0, PED_SPEED, np.zeros(3), None,
                    body_builder("human.pedestrian.adult", size, int(size_rng.integers(1 << 30))))  # fmt: skip
        ped.script = WalkScript(PED_GO_S, PED_SPEED)
        actors["pedestrian"] = _place_agent(traffic, ped)
        notes = f"pedestrian crosses {s_cross - s_start - FRONT_OFFSET:.0f} m ahead, walking from t = {ped.script.t_go:.1f} s"
    elif kind == "turn":
        notes = "right turn at a signalised junction on green"
    elif kind == "straight":
        notes = "straight road, green light"
    return EpisodeSetup(
        spec,
        world,
        traffic,
        Look.sample(np.random.default_rng(look_ss), world.frame_yaw),
        np.random.default_rng(noise_ss),
        route,
        s_start,
        v0,
        float(route_length),
        actors,
        notes,
    )
