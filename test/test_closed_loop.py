"""Closed-loop simulation, metrics and baselines without ROS (sparseoccvla_core.closed_loop, docs/closed_loop.md).

Metrics are checked on hand-made logs whose answers are known; the episodes are the real scenario set, driven by
in-process planners (no rendering, a few seconds each).
"""

import math

import numpy as np
import pytest

from sparseoccvla_core.closed_loop import metrics as M
from sparseoccvla_core.closed_loop.planners import ConstantSpeedStraight, ConstantVelocity, MeanTrajectory, RuleExpert
from sparseoccvla_core.closed_loop.report import write_report
from sparseoccvla_core.closed_loop.runner import run_episode, run_planner
from sparseoccvla_core.closed_loop.scenarios import ScenarioSpec, scenario_set
from sparseoccvla_core.closed_loop.sim import EpisodeLog
from sparseoccvla_core.closed_loop.vehicle import WHEELBASE, BicycleState, PlanTracker, bicycle_step

SEED = 2000


# ---------------------------------------------------------------------------------------------- hand-made logs
def make_log(x, v=None, agents=None, agent_class=("vehicle",), signal=None, stops=(), on_road=None, route_length=100.0,
             dt=0.05):  # fmt: skip
    """A log of an ego driving along +x (route = the x axis, s = x) at the given positions."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    v = np.gradient(x, dt) if v is None else np.broadcast_to(np.asarray(v, np.float64), (n,)).copy()
    ego = np.stack([x, np.zeros(n), np.zeros(n), v], axis=1)
    boxes = np.zeros((n, 0, 5)) if agents is None else np.asarray(agents, np.float64).reshape(n, -1, 5)
    a = boxes.shape[1]
    return EpisodeLog(
        name="hand", kind="straight", dt=dt, t=np.arange(n) * dt, ego=ego, accel=np.gradient(v, dt),
        steer=np.zeros(n), yaw_rate=np.zeros(n), agent_boxes=boxes, agent_vel=np.zeros((n, a, 2)),
        agent_class=list(agent_class)[:a], agent_category=[f"{c}.x" for c in agent_class][:a], route_s=x.copy(),
        route_lat=np.zeros(n), s_start=float(x[0]), route_length=route_length,
        on_road=np.ones(n, bool) if on_road is None else np.asarray(on_road, bool), stops=list(stops),
        signal=np.zeros((n, 1), np.int8) if signal is None else np.asarray(signal, np.int8).reshape(n, -1),
        braking=np.zeros(n, bool),
    )  # fmt: skip


def test_route_completion_counts_new_progress_on_the_road_only():
    x = np.linspace(0.0, 50.0, 101)
    rc, progress = M.route_completion(make_log(x))
    assert rc == pytest.approx(0.5) and progress == pytest.approx(50.0)
    off = np.zeros(101, bool)
    off[51:] = True  # the second half driven with a corner off the driveable surface
    rc_off, progress_off = M.route_completion(make_log(x, on_road=~off))
    assert rc_off == pytest.approx(0.25) and progress_off == pytest.approx(50.0)
    back_and_forth = np.concatenate([np.linspace(0, 30, 61), np.linspace(30, 10, 41), np.linspace(10, 40, 61)])
    assert M.route_completion(make_log(back_and_forth))[0] == pytest.approx(0.4)  # no credit twice for one metre
    assert M.route_completion(make_log(np.linspace(0, 300, 101)))[0] == 1.0  # clipped


def test_collisions_are_counted_once_per_agent_and_classified():
    n = 40
    x = np.linspace(0.0, 19.5, n)  # 10 m/s
    lead = np.tile([[20.0, 0.0, 4.0, 1.8, 0.0]], (n, 1))  # a standing car whose rear is at 18 m
    log = make_log(x, agents=lead[:, None], agent_class=("vehicle",))
    cols = M.collisions(log)
    assert len(cols) == 1 and cols[0].at_fault and cols[0].kind == "active_front" and cols[0].agent_class == "vehicle"
    # the ego box front is 1.486 + 2.042 = 3.528 m ahead of the rear axle: first overlap when x >= 18 - 3.528
    assert cols[0].t == pytest.approx(log.t[np.argmax(x + 3.528 >= 18.0)])
    stopped = make_log(np.zeros(n), v=0.0, agents=np.tile([[3.0, 0.0, 4.0, 1.8, 0.0]], (n, 1))[:, None])
    assert M.collisions(stopped)[0].kind == "stopped_ego" and not M.collisions(stopped)[0].at_fault
    rear = make_log(x, agents=np.stack([x - 1.5, np.zeros(n), 4 + 0 * x, 1.8 + 0 * x, 0 * x], 1)[:, None])
    c = M.collisions(rear)[0]
    assert c.kind == "active_rear" and not c.at_fault
    ped = make_log(x, agents=np.tile([[12.0, 0.0, 0.7, 0.7, 0.0]], (n, 1))[:, None], agent_class=("pedestrian",))
    m, events = M.episode_metrics(ped)
    assert m["collisions_at_fault_by_class"] == {"pedestrian": 1, "vehicle": 0, "static": 0}
    assert m["driving_score"] == pytest.approx(M.route_completion(ped)[0] * 0.5)
    assert [e.kind for e in events] == ["collision"]


def test_red_light_violation_only_when_the_front_crosses_on_red():
    x = np.linspace(0.0, 20.0, 41)  # front bumper from 3.5 to 23.5 m; stop line at 10 m
    stops = [(10.0, 0)]
    red = np.full((41, 1), 2)
    assert len(M.red_light_violations(make_log(x, signal=red, stops=stops))) == 1
    assert M.red_light_violations(make_log(x, signal=np.zeros((41, 1)), stops=stops)) == []
    assert M.red_light_violations(make_log(x, signal=np.ones((41, 1)), stops=stops)) == []  # amber: no infraction
    stop_short = np.minimum(x, 10.0 - 3.528 - 0.5)  # stops 0.5 m before the line
    assert M.red_light_violations(make_log(stop_short, signal=red, stops=stops)) == []
    m, _ = M.episode_metrics(make_log(x, signal=red, stops=stops))
    assert m["red_light_violations"] == 1 and m["driving_score"] == pytest.approx(0.2 * 0.7)


def test_time_to_collision_and_comfort():
    n = 41
    x = np.linspace(0.0, 10.0, n)  # 5 m/s
    far = np.tile([[40.0, 0.0, 4.0, 1.8, 0.0]], (n, 1))[:, None]
    ttc, t = M.min_time_to_collision(make_log(x, agents=far))
    # at t = 0 the gap from the ego front (3.528) to the car's rear (38) is 34.47 m: beyond 3 s at 5 m/s; at
    # x = 10 it is 24.47 m, still > 15 m: no TTC within the horizon
    assert math.isinf(ttc)
    near = np.tile([[20.0, 0.0, 4.0, 1.8, 0.0]], (n, 1))[:, None]
    ttc, _ = M.min_time_to_collision(make_log(x, agents=near))
    # last sample x = 10: gap 18 - 13.528 = 4.47 m at 5 m/s -> first overlap at 0.9 s (0.1 s steps)
    assert ttc == pytest.approx(0.9)
    assert not M.episode_metrics(make_log(x, agents=near))[0]["ttc_compliant"]
    smooth = M.comfort(make_log(np.linspace(0, 50, 201), v=10.0))
    assert smooth["comfortable"] and abs(smooth["max_lon_accel"]) < 1e-6
    t = np.arange(201) * 0.05
    v = np.where(t < 5.0, 10.0, np.maximum(0.0, 10.0 - 6.0 * (t - 5.0)))  # 6 m/s^2 braking
    hard = M.comfort(make_log(np.cumsum(v) * 0.05, v=v))
    assert not hard["comfortable"] and "min_lon_accel" in hard["violated"] and hard["min_lon_accel"] < -5.0


def test_driving_score_penalties_multiply():
    ds, p = M.driving_score(0.8, {"pedestrian": 1, "vehicle": 2, "static": 0, "red_light": 1})
    assert p == pytest.approx(0.5 * 0.6 * 0.6 * 0.7) and ds == pytest.approx(0.8 * p)
    total = M.total_metrics([M.episode_metrics(make_log(np.linspace(0, 50, 101)))[0]] * 2)
    assert total["episodes"] == 2 and total["route_completion"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------- vehicle
def test_bicycle_and_tracker():
    s = BicycleState(0.0, 0.0, 0.0, 5.0)
    steer = math.atan(WHEELBASE / 20.0)  # a 20 m radius circle
    for _ in range(int(round(2 * math.pi * 20.0 / 5.0 / 0.01))):
        s, rate = bicycle_step(s, 0.0, steer, 0.01)
    assert rate == pytest.approx(5.0 / 20.0, rel=1e-6)
    assert math.hypot(s.x, s.y) < 0.1  # back where it started
    tracker = PlanTracker()
    state = BicycleState(0.0, 1.0, 0.0, 5.0)  # 1 m left of a straight 8 m/s plan along y = 0
    tracker.set_plan(np.stack([np.arange(1, 7) * 4.0, np.zeros(6)], axis=1), np.array([0.0, 0.0]), 0.0)
    t = 0.0
    for _ in range(60):
        a, d = tracker.command(state, t, 0.05)
        state, _ = bicycle_step(state, a, d, 0.05)
        t += 0.05
    assert abs(state.y) < 0.2 and state.v == pytest.approx(8.0, abs=0.5)
    tracker.brake()
    v_before = state.v
    for _ in range(20):
        a, d = tracker.command(state, t, 0.05)
        assert a == -4.0
        state, _ = bicycle_step(state, a, d, 0.05)
    assert state.v == pytest.approx(v_before - 4.0)  # 1 s at 4 m/s^2


# ---------------------------------------------------------------------------------------------- episodes
def test_scenario_set_and_bad_input():
    specs = scenario_set(SEED, 8)
    assert [s.kind for s in specs[:6]] == [
        "straight",
        "red_light",
        "braking_lead",
        "pedestrian_crossing",
        "parked_car",
        "turn",
    ]
    assert specs[6].kind == "straight" and specs[7].name == "07-red_light"
    with pytest.raises(ValueError, match="episodes must be >= 1"):
        scenario_set(SEED, 0)
    with pytest.raises(ValueError, match="unknown scenario kind"):
        scenario_set(SEED, 2, ("straight", "flying"))
    with pytest.raises(ValueError, match="duration"):
        ScenarioSpec(0, SEED, "straight", duration_s=0.0)


def test_deterministic_per_seed():
    spec = ScenarioSpec(2, SEED, "braking_lead", duration_s=6.0)
    a, b = run_episode(spec, RuleExpert()), run_episode(spec, RuleExpert())
    assert a.metrics == b.metrics
    np.testing.assert_array_equal(a.log.ego, b.log.ego)
    np.testing.assert_array_equal(a.log.agent_boxes, b.log.agent_boxes)
    other = run_episode(ScenarioSpec(2, SEED + 1, "braking_lead", duration_s=6.0), RuleExpert())
    assert not np.array_equal(other.log.ego[:, :2], a.log.ego[:, :2])


@pytest.mark.parametrize("kind", ["straight", "red_light"])
def test_expert_completes_straight_and_intersection_cleanly(kind):
    res = run_episode(ScenarioSpec(0 if kind == "straight" else 1, SEED, kind), RuleExpert())
    m = res.metrics
    assert m["route_completion"] == 1.0 and m["driving_score"] == 1.0
    assert m["collisions_at_fault"] == 0 and m["collisions_not_at_fault"] == 0
    assert m["red_light_violations"] == 0 and m["drivable_area_compliant"]
    if kind == "red_light":  # it waited at the red light (IDM creeps up to the line), then drove on green
        k = int(np.argmin(res.log.ego[:, 3]))
        gap = res.log.stops[0][0] - (res.log.route_s[k] + res.log.front_offset)
        assert res.log.ego[k, 3] < 1.0 and res.log.signal[k, 0] == 2 and 0.0 < gap < 5.0


def test_reckless_planner_runs_the_red_light_and_hits_the_braking_lead():
    reckless = ConstantSpeedStraight(15.0)
    red = run_episode(ScenarioSpec(1, SEED, "red_light"), reckless)
    assert red.metrics["red_light_violations"] >= 1 and red.metrics["driving_score"] < 0.75
    assert any(e.kind == "red_light" for e in red.events)
    lead = run_episode(ScenarioSpec(2, SEED, "braking_lead"), reckless)
    assert lead.metrics["collisions_at_fault_by_class"]["vehicle"] >= 1
    assert lead.metrics["driving_score"] <= 0.6 and not lead.metrics["ttc_compliant"]
    assert any(e.kind == "collision" and "vehicle.car" in e.text for e in lead.events)


class _NaNPlanner:
    name = "nan"

    def plan(self, episode, kf):
        return np.full((6, 2), np.nan)


class _SilentPlanner:
    name = "silent"

    def plan(self, episode, kf):
        return None


@pytest.mark.parametrize("planner,kind", [(_NaNPlanner(), "invalid_plan"), (_SilentPlanner(), "no_plan")])
def test_nan_and_silent_planners_make_the_ego_brake_and_are_reported(planner, kind):
    res = run_episode(ScenarioSpec(0, SEED, "straight", duration_s=4.0), planner)
    v = res.log.ego[:, 3]
    assert v[0] > 7.0 and v[-1] == 0.0  # 8-11 m/s braked to a stop at 4 m/s^2 within 3 s
    assert np.all(np.diff(v) <= 1e-9)
    assert np.diff(v)[: int(1.0 / res.log.dt)] == pytest.approx(-4.0 * res.log.dt)
    assert [e.kind for e in res.events if e.kind in ("no_plan", "invalid_plan")] == [kind] * 8
    key = "invalid_plan_frames" if kind == "invalid_plan" else "no_plan_frames"
    assert res.metrics[key] == 8 and res.metrics["braking_fallback_s"] == pytest.approx(4.0)


def test_baselines_and_report(tmp_path):
    specs = scenario_set(SEED, 2, ("braking_lead", "pedestrian_crossing"), duration_s=8.0)
    mean = np.stack([np.arange(1, 7) * 2.5, np.zeros(6)], axis=1)
    runs = {p.name: run_planner(specs, p) for p in (ConstantVelocity(), MeanTrajectory(mean), RuleExpert())}
    assert runs["expert"]["total"]["collisions_at_fault"] == 0
    assert (
        runs["constant velocity"]["total"]["collisions_at_fault"] >= 1
    )  # neither the lead nor the pedestrian stops it
    report = write_report(tmp_path, runs, {"episodes": 2, "seed": SEED, "mode": "lockstep"})
    html = report["html"].read_text()
    assert "Closed-loop driving" in html and "driving score" in html and "01-pedestrian_crossing" in html
    assert len(report["images"]) == 6 and all(p.is_file() and p.stat().st_size > 10_000 for p in report["images"])
    for p in report["images"]:
        assert f"images/{p.name}" in html and f"images/{p.name}" in report["md"].read_text()
    with pytest.raises(ValueError, match="mean trajectory"):
        MeanTrajectory(np.zeros((5, 2)))


def test_launch_file_arguments_remaps_and_executables():
    """launch/closed_loop.launch.py (the launch library is not on PyPI: checked on its syntax tree, like
    test_package does for driving.launch.py): its arguments, the shared remap helpers, installed executables only."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    tree = ast.parse((root / "launch" / "closed_loop.launch.py").read_text())
    declared = {
        n.args[0].value
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "DeclareLaunchArgument"
    }
    assert {"checkpoint", "seed", "episodes", "kinds", "mode", "record", "rviz", "out", "params_file"} <= declared
    names = {getattr(n.func, "id", getattr(n.func, "attr", "")) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert {"sim_input_remaps", "node_remaps", "rviz_remaps", "record_selection", "write_calibration"} <= names
    executables = {
        kw.value.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Node"
        for kw in n.keywords
        if kw.arg == "executable"
    }
    setup = (root / "setup.py").read_text()
    assert executables == {"driving_node", "sim_node", "rviz2"}
    assert "sim_node = sparseoccvla_ros.closed_loop.sim_node:main" in setup
