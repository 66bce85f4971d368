"""Closed-loop metrics per episode and in total (formulas: docs/closed_loop.md §4).

Every metric reads an :class:`~.sim.EpisodeLog` (inner rate, 20 Hz):

* **route completion** (CARLA Leaderboard 1.0): new arc length gained along the route, counted only while all four
  ego-box corners are on the driveable surface and the ego is within 3 m of the route, over the route length,
  clipped to [0, 1];
* **progress**: the farthest rear-axle arc length reached minus the start, m;
* **at-fault collisions** (nuPlan's ``no_ego_at_fault_collisions`` categories): the first overlap of the ego box
  with each agent's box (each agent counted once); not at fault when the ego stands (< 0.05 m/s, "stopped ego") or
  the other agent's centre is behind the ego box's rear quarter ("active rear"); per class pedestrian / vehicle /
  static object;
* **driveable-area compliance**: share of samples with a corner off the driveable surface; compliant when none;
* **red-light violations** (CARLA "running a red light"): the front bumper crosses a stop line of the route while
  that line's signal is red (amber is not an infraction);
* **time to collision** (nuPlan ``time_to_collision_within_bound``): every 0.1 s while the ego moves, the ego box and
  every agent ahead of the rear axle are moved at constant velocity for 0.1 .. 3.0 s; TTC = the first overlap time
  (agents already overlapping are collisions, not TTC); compliant when the episode's minimum TTC exceeds 0.95 s;
* **comfort** (nuPlan ``ego_is_comfortable`` bounds): longitudinal acceleration in [-4.05, 2.40] m/s², |lateral
  acceleration| <= 4.89 m/s², |yaw rate| <= 0.95 rad/s, |yaw acceleration| <= 1.93 rad/s², |longitudinal jerk|
  <= 4.13 m/s³, |jerk| <= 8.37 m/s³, derivatives by a Savitzky-Golay filter (window 0.45 s, order 2);
* **driving score** (CARLA Leaderboard 1.0): route completion x infraction penalty, the penalty being the product
  0.50 per at-fault pedestrian collision, 0.60 per vehicle collision, 0.65 per static-object collision, 0.70 per
  red light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..metrics import boxes_overlap
from .sim import KEY_FRAME_DT, EpisodeLog, Event, ego_box_of

STOPPED_SPEED = 0.05  # m/s
ROUTE_LATERAL_M = 3.0  # progress counts within this distance of the route
RED = 2
TTC_STEP_S = 0.1
TTC_HORIZON_S = 3.0
TTC_THRESHOLD_S = 0.95
#: nuPlan ego_is_comfortable bounds
COMFORT = {
    "min_lon_accel": -4.05,
    "max_lon_accel": 2.40,
    "max_abs_lat_accel": 4.89,
    "max_abs_yaw_rate": 0.95,
    "max_abs_yaw_accel": 1.93,
    "max_abs_lon_jerk": 4.13,
    "max_abs_mag_jerk": 8.37,
}
SAVGOL_WINDOW_S = 0.45
#: CARLA Leaderboard 1.0 infraction coefficients
PENALTY = {"pedestrian": 0.50, "vehicle": 0.60, "static": 0.65, "red_light": 0.70}


@dataclass
class Collision:
    t: float
    agent: int
    agent_class: str
    category: str
    ego_speed: float
    at_fault: bool
    kind: str  # "active_front" | "active_lateral" | "stopped_ego" | "active_rear"


def collisions(log: EpisodeLog) -> list[Collision]:
    """First overlap of the ego box with each agent, classified (module docstring)."""
    if log.agent_boxes.shape[1] == 0:
        return []
    ego_boxes = np.stack([ego_box_of(p, log.ego_box) for p in log.ego[:, :3]])  # [T, 5]
    hit = boxes_overlap(ego_boxes[:, None, :], log.agent_boxes)  # [T, A]
    out = []
    for j in np.nonzero(hit.any(axis=0))[0]:
        k = int(np.argmax(hit[:, j]))
        speed = float(log.ego[k, 3])
        box = ego_boxes[k]
        d = log.agent_boxes[k, j, :2] - box[:2]
        x_rel = math.cos(box[4]) * d[0] + math.sin(box[4]) * d[1]
        y_rel = -math.sin(box[4]) * d[0] + math.cos(box[4]) * d[1]
        if speed < STOPPED_SPEED:
            kind = "stopped_ego"
        elif x_rel < -0.25 * log.ego_box.length:
            kind = "active_rear"
        elif abs(y_rel) > 0.5 * log.ego_box.width and x_rel < 0.5 * log.ego_box.length:
            kind = "active_lateral"
        else:
            kind = "active_front"
        out.append(
            Collision(
                float(log.t[k]),
                int(j),
                log.agent_class[j],
                log.agent_category[j],
                speed,
                kind in ("active_front", "active_lateral"),
                kind,
            )  # fmt: skip
        )
    return sorted(out, key=lambda c: c.t)


def red_light_violations(log: EpisodeLog) -> list[tuple[float, float, int]]:
    """(time, stop-line arc length, group) of every stop line crossed by the front bumper while red."""
    front = log.route_s + log.front_offset
    out = []
    for s_stop, group in log.stops:
        if group >= log.signal.shape[1]:
            continue
        crossed = np.nonzero((front[:-1] < s_stop) & (front[1:] >= s_stop) & (np.abs(log.route_lat[1:]) < 3.5))[0]
        for k in crossed:
            if log.signal[k, group] == RED:
                out.append((float(log.t[k + 1]), float(s_stop), int(group)))
    return out


def route_completion(log: EpisodeLog) -> tuple[float, float]:
    """(route completion in [0, 1], progress m) - module docstring."""
    s = log.route_s
    best = np.maximum.accumulate(s)
    gained = np.diff(best, prepend=best[0])
    ok = log.on_road & (np.abs(log.route_lat) < ROUTE_LATERAL_M)
    counted = float(np.sum(gained[ok]))
    rc = float(np.clip(counted / max(log.route_length, 1e-6), 0.0, 1.0))
    return rc, float(best[-1] - log.s_start)


def min_time_to_collision(log: EpisodeLog) -> tuple[float, float]:
    """(minimum TTC s over the episode (inf when never within the horizon), time it happened s)."""
    stride = max(1, int(round(TTC_STEP_S / log.dt)))
    taus = np.arange(1, int(round(TTC_HORIZON_S / TTC_STEP_S)) + 1) * TTC_STEP_S  # [H]
    best, when = math.inf, float("nan")
    if log.agent_boxes.shape[1] == 0:
        return best, when
    for k in range(0, len(log.t), stride):
        x, y, yaw, v = log.ego[k]
        if v < STOPPED_SPEED:
            continue
        box = ego_box_of(np.array([x, y, yaw]), log.ego_box)
        agents = log.agent_boxes[k]
        d = agents[:, :2] - np.array([x, y])
        ahead = (math.cos(yaw) * d[:, 0] + math.sin(yaw) * d[:, 1]) > 0.0
        near = ahead & (np.linalg.norm(d, axis=1) < v * TTC_HORIZON_S + 30.0)
        near &= ~boxes_overlap(box[None], agents)
        if not near.any():
            continue
        a = agents[near]
        av = log.agent_vel[k][near]
        ego_future = np.repeat(box[None], len(taus), axis=0)
        ego_future[:, 0] += taus * v * math.cos(yaw)
        ego_future[:, 1] += taus * v * math.sin(yaw)
        fut = np.repeat(a[None], len(taus), axis=0)  # [H, N, 5]
        fut[:, :, :2] += taus[:, None, None] * av[None]
        hit = boxes_overlap(ego_future[:, None, :], fut).any(axis=1)  # [H]
        if hit.any():
            ttc = float(taus[int(np.argmax(hit))])
            if ttc < best:
                best, when = ttc, float(log.t[k])
    return best, when


def _savgol(x: np.ndarray, dt: float, deriv: int) -> np.ndarray:
    from scipy.signal import savgol_filter

    window = int(round(SAVGOL_WINDOW_S / dt)) | 1
    if len(x) < window:
        out = x
        for _ in range(deriv):
            out = np.gradient(out, dt) if len(out) > 1 else np.zeros_like(out)
        return out
    return savgol_filter(x, window, 2, deriv=deriv, delta=dt, mode="interp")


def comfort(log: EpisodeLog) -> dict:
    """Peak values of the nuPlan comfort quantities and whether all stay within :data:`COMFORT`."""
    dt = log.dt
    v = log.ego[:, 3]
    yaw = np.unwrap(log.ego[:, 2])
    lon_acc = _savgol(v, dt, 1)
    yaw_rate = _savgol(yaw, dt, 1)
    yaw_acc = _savgol(yaw, dt, 2)
    v_s = _savgol(v, dt, 0)
    lat_acc = v_s * yaw_rate
    lon_jerk = _savgol(lon_acc, dt, 1)
    lat_jerk = _savgol(lat_acc, dt, 1)
    mag_jerk = np.hypot(lon_jerk, lat_jerk)
    peaks = {
        "min_lon_accel": float(lon_acc.min()),
        "max_lon_accel": float(lon_acc.max()),
        "max_abs_lat_accel": float(np.abs(lat_acc).max()),
        "max_abs_yaw_rate": float(np.abs(yaw_rate).max()),
        "max_abs_yaw_accel": float(np.abs(yaw_acc).max()),
        "max_abs_lon_jerk": float(np.abs(lon_jerk).max()),
        "max_abs_mag_jerk": float(mag_jerk.max()),
    }
    violated = [k for k, bound in COMFORT.items() if (peaks[k] < bound if k == "min_lon_accel" else peaks[k] > bound)]
    return {"comfortable": not violated, "violated": violated, **{k: round(val, 3) for k, val in peaks.items()}}


def driving_score(route_completion_: float, counts: dict) -> tuple[float, float]:
    """(driving score, infraction penalty) of CARLA Leaderboard 1.0 from the infraction counts."""
    penalty = 1.0
    for key, coefficient in PENALTY.items():
        penalty *= coefficient ** int(counts.get(key, 0))
    return route_completion_ * penalty, penalty


def episode_metrics(log: EpisodeLog) -> tuple[dict, list[Event]]:
    """Every metric of one episode (a JSON-able dict) and the metric events (collisions, red lights)."""
    rc, progress = route_completion(log)
    cols = collisions(log)
    reds = red_light_violations(log)
    at_fault = {
        c: sum(1 for x in cols if x.at_fault and x.agent_class == c) for c in ("pedestrian", "vehicle", "static")
    }
    ds, penalty = driving_score(rc, {**at_fault, "red_light": len(reds)})
    ttc, ttc_t = min_time_to_collision(log)
    com = comfort(log)
    events = []
    for c in cols:
        events.append(
            Event(
                c.t,
                int(c.t // KEY_FRAME_DT),
                "collision",
                f"{'at-fault ' if c.at_fault else ''}collision ({c.kind.replace('_', ' ')}) with a {c.category} "
                f"at {c.ego_speed:.1f} m/s",
            )  # fmt: skip
        )
    for t, s_stop, group in reds:
        events.append(
            Event(
                t,
                int(t // KEY_FRAME_DT),
                "red_light",
                f"ran the red light of signal group {group} (stop line at s {s_stop:.0f} m)",
            )
        )
    offroad = 1.0 - float(np.mean(log.on_road))
    if offroad > 0:
        k = int(np.argmax(~log.on_road))
        events.append(Event(float(log.t[k]), int(log.t[k] // KEY_FRAME_DT), "off_road", "left the driveable surface"))
    fallbacks = {kind: sum(1 for e in log.events if e.kind == kind) for kind in ("no_plan", "invalid_plan")}
    distance = float(np.sum(np.hypot(*np.diff(log.ego[:, :2], axis=0).T))) if len(log.ego) > 1 else 0.0
    metrics = {
        "driving_score": round(ds, 4),
        "route_completion": round(rc, 4),
        "infraction_penalty": round(penalty, 4),
        "progress_m": round(progress, 2),
        "route_length_m": round(log.route_length, 2),
        "collisions_at_fault": sum(at_fault.values()),
        "collisions_at_fault_by_class": at_fault,
        "collisions_not_at_fault": sum(1 for c in cols if not c.at_fault),
        "red_light_violations": len(reds),
        "offroad_fraction": round(offroad, 4),
        "drivable_area_compliant": offroad == 0.0,
        "min_ttc_s": None if not math.isfinite(ttc) else round(ttc, 2),
        "ttc_compliant": not (ttc <= TTC_THRESHOLD_S),
        "comfort": com,
        "no_plan_frames": fallbacks["no_plan"],
        "invalid_plan_frames": fallbacks["invalid_plan"],
        "braking_fallback_s": round(float(np.sum(log.braking)) * log.dt, 2),
        "distance_m": round(distance, 2),
        "mean_speed_mps": round(float(np.mean(log.ego[:, 3])), 3),
        "duration_s": round(float(log.t[-1] - log.t[0]), 2),
    }
    return metrics, events


def total_metrics(per_episode: list[dict]) -> dict:
    """Totals over episodes: means of the scores, sums of the counts, rates of the compliances."""
    n = len(per_episode)
    if n == 0:
        return {"episodes": 0}
    mean = lambda key: round(float(np.mean([m[key] for m in per_episode])), 4)  # noqa: E731
    total = lambda key: int(sum(m[key] for m in per_episode))  # noqa: E731
    km = sum(m["distance_m"] for m in per_episode) / 1000.0
    ttcs = [m["min_ttc_s"] for m in per_episode if m["min_ttc_s"] is not None]
    at_fault = total("collisions_at_fault")
    return {
        "episodes": n,
        "driving_score": mean("driving_score"),
        "route_completion": mean("route_completion"),
        "infraction_penalty": mean("infraction_penalty"),
        "progress_m": round(sum(m["progress_m"] for m in per_episode), 1),
        "collisions_at_fault": at_fault,
        "collisions_at_fault_by_class": {
            c: int(sum(m["collisions_at_fault_by_class"][c] for m in per_episode))
            for c in ("pedestrian", "vehicle", "static")
        },
        "collisions_not_at_fault": total("collisions_not_at_fault"),
        "red_light_violations": total("red_light_violations"),
        "offroad_fraction": mean("offroad_fraction"),
        "drivable_area_compliance_rate": round(sum(bool(m["drivable_area_compliant"]) for m in per_episode) / n, 4),
        "ttc_compliance_rate": round(sum(bool(m["ttc_compliant"]) for m in per_episode) / n, 4),
        "min_ttc_s": min(ttcs) if ttcs else None,
        "comfort_rate": round(sum(bool(m["comfort"]["comfortable"]) for m in per_episode) / n, 4),
        "no_plan_frames": total("no_plan_frames"),
        "invalid_plan_frames": total("invalid_plan_frames"),
        "distance_km": round(km, 3),
        "at_fault_collisions_per_km": round(at_fault / km, 3) if km > 0 else None,
    }
