"""The ego vehicle of the closed loop: a kinematic bicycle driven by a plan tracker (docs/closed_loop.md §3).

* **Model**: kinematic bicycle about the rear axle (Rajamani, *Vehicle Dynamics and Control*, section 2.2; the model of
  nuPlan's ``KinematicBicycleModel``): ``x' = v cos(yaw)``, ``y' = v sin(yaw)``, ``yaw' = v tan(delta) / L``,
  ``v' = a``; ``L`` = 2.588 m (the nuScenes ego, a Renault Zoe), no reverse (``v >= 0``), steering and its rate and
  the acceleration limited.  The state is the rear-axle centre, the ego-frame origin of docs/frames_and_units.md
  §2.1, so a plan's waypoints are targets for exactly this point.
* **Tracker**: pure pursuit (Coulter 1992) on the plan's polyline (the pose at the plan's stamp, then the six
  waypoints, then the last segment extended) with a speed-dependent look-ahead, and a speed PID on the plan's own
  speed profile (segment speeds of the 0.5 s waypoints, read 0.25 s ahead, plus the profile's slope as a feed
  forward).  The same tracker drives every planner: the model, the baselines and the expert.
* **Fallback**: with no valid plan the ego brakes at :data:`BRAKE_DECEL` (4.0 m/s², just inside nuPlan's
  comfortable deceleration of 4.05 m/s²) with the steering held, until it stands.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

WHEELBASE = 2.588  # m, nuScenes ego (Renault Zoe)
MAX_STEER = 0.6  # rad
MAX_STEER_RATE = 1.0  # rad/s
MAX_ACCEL = 3.0  # m/s^2
MAX_DECEL = 7.0  # m/s^2 (the world's MAX_BRAKE)
BRAKE_DECEL = 4.0  # m/s^2, the fallback when no valid plan is in force
PLAN_DT = 0.5  # s between waypoints (docs/frames_and_units.md §6)
SPEED_PREVIEW_S = 0.25  # s, the speed reference is read this far ahead on the plan's profile
KP, KI = 1.2, 0.25  # speed PID gains (1/s, 1/s^2); the derivative term is the profile's slope (feed forward)
INTEGRAL_LIMIT = 2.0  # m/s, anti-windup clamp of the integral term
LOOKAHEAD_GAIN, LOOKAHEAD_MIN, LOOKAHEAD_MAX = 0.8, 4.0, 15.0  # pure-pursuit look-ahead = clip(0.8 v + 2, 4, 15) m
LOOKAHEAD_OFFSET = 2.0
STOP_PLAN_M = 0.5  # a plan shorter than this (m, over 3 s) is a stop: speed reference 0, steering held


@dataclass
class BicycleState:
    """Rear-axle pose in the global frame and speed: x, y (m), yaw (rad), v (m/s)."""

    x: float
    y: float
    yaw: float
    v: float

    def as_array(self) -> np.ndarray:
        return np.array([self.x, self.y, self.yaw, self.v])


def bicycle_step(state: BicycleState, accel: float, steer: float, dt: float) -> tuple[BicycleState, float]:
    """Advance the kinematic bicycle by ``dt`` (midpoint rule); returns (new state, yaw rate rad/s)."""
    v_new = max(0.0, state.v + accel * dt)
    v_mid = 0.5 * (state.v + v_new)
    yaw_rate = v_mid * math.tan(steer) / WHEELBASE
    yaw_mid = state.yaw + 0.5 * yaw_rate * dt
    return (
        BicycleState(
            state.x + v_mid * math.cos(yaw_mid) * dt,
            state.y + v_mid * math.sin(yaw_mid) * dt,
            math.atan2(math.sin(state.yaw + yaw_rate * dt), math.cos(state.yaw + yaw_rate * dt)),
            v_new,
        ),
        yaw_rate,
    )


def plan_to_global(plan_xy: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Waypoints [T, 2] in the ego frame of ``pose`` (x, y, yaw) -> global [T, 2]."""
    c, s = math.cos(pose[2]), math.sin(pose[2])
    p = np.asarray(plan_xy, dtype=np.float64)
    return np.stack([pose[0] + c * p[:, 0] - s * p[:, 1], pose[1] + s * p[:, 0] + c * p[:, 1]], axis=1)


def global_to_ego(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Global points [N, 2] -> the ego frame of ``pose`` (x, y, yaw)."""
    c, s = math.cos(pose[2]), math.sin(pose[2])
    d = np.asarray(points, dtype=np.float64) - np.asarray(pose[:2])
    return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], axis=1)


class PlanTracker:
    """Pure pursuit + speed PID on the plan in force, or the braking fallback (module docstring)."""

    def __init__(self) -> None:
        self.polyline: np.ndarray | None = None  # [7 + 1, 2] global: plan origin, 6 waypoints, extension
        self.plan_t0 = 0.0
        self.speeds: np.ndarray | None = None  # [6] segment speeds m/s
        self.braking = False
        self.integral = 0.0
        self.steer = 0.0
        self.stop_plan = False

    def set_plan(self, waypoints_global: np.ndarray, origin: np.ndarray, t0: float) -> None:
        """Follow ``waypoints_global`` [T, 2] (0.5 s apart, the first 0.5 s after ``t0``) from ``origin`` [2]."""
        pts = np.concatenate([np.asarray(origin, np.float64)[None, :2], np.asarray(waypoints_global, np.float64)])
        seg = np.diff(pts, axis=0)
        seg_len = np.linalg.norm(seg, axis=1)
        self.speeds = seg_len / PLAN_DT
        self.stop_plan = float(seg_len.sum()) < STOP_PLAN_M
        moving = np.nonzero(seg_len > 0.05)[0]
        direction = seg[moving[-1]] / seg_len[moving[-1]] if len(moving) else None
        ext = pts[-1] + (20.0 * direction if direction is not None else 0.0)
        self.polyline = np.concatenate([pts, np.asarray(ext, np.float64).reshape(1, 2)])
        self.plan_t0 = float(t0)
        self.braking = False

    def brake(self) -> None:
        """Drop the plan: brake at BRAKE_DECEL until standing (steering held)."""
        self.braking = True
        self.polyline = None
        self.integral = 0.0

    def speed_reference(self, t: float) -> tuple[float, float]:
        """(speed m/s, its slope m/s^2) of the plan's profile at time ``t``, read SPEED_PREVIEW_S ahead."""
        if self.speeds is None or self.stop_plan:
            return 0.0, 0.0
        tau = t - self.plan_t0 + SPEED_PREVIEW_S
        mids = (np.arange(len(self.speeds)) + 0.5) * PLAN_DT
        v = float(np.interp(tau, mids, self.speeds))
        k = int(np.clip(np.searchsorted(mids, tau) - 1, 0, len(mids) - 2))
        slope = (self.speeds[k + 1] - self.speeds[k]) / PLAN_DT if mids[0] <= tau <= mids[-1] else 0.0
        return v, float(slope)

    def _target(self, state: BicycleState, lookahead: float) -> np.ndarray:
        pts = self.polyline
        seg = np.diff(pts, axis=0)
        seg_len2 = np.maximum((seg**2).sum(1), 1e-12)
        p = np.array([state.x, state.y])
        u = np.clip(((p - pts[:-1]) * seg).sum(1) / seg_len2, 0.0, 1.0)
        proj = pts[:-1] + u[:, None] * seg
        i = int(np.argmin(((proj - p) ** 2).sum(1)))
        remaining = lookahead
        pos, j = proj[i], i
        while j < len(seg):
            left = float(np.linalg.norm(pts[j + 1] - pos))
            if left >= remaining:
                return pos + (pts[j + 1] - pos) / max(left, 1e-9) * remaining
            remaining -= left
            j += 1
            pos = pts[j]
        return pts[-1]

    def command(self, state: BicycleState, t: float, dt: float) -> tuple[float, float]:
        """(acceleration m/s^2, steering rad) for the next ``dt``."""
        if self.braking or self.polyline is None:
            accel = -BRAKE_DECEL if state.v > 0.0 else 0.0
            return accel, self.steer
        v_ref, slope = self.speed_reference(t)
        err = v_ref - state.v
        self.integral = float(np.clip(self.integral + err * dt, -INTEGRAL_LIMIT, INTEGRAL_LIMIT))
        if v_ref < 0.05 and state.v < 0.05:
            self.integral = 0.0
        accel = float(np.clip(slope + KP * err + KI * self.integral, -MAX_DECEL, MAX_ACCEL))
        steer = self.steer
        if not self.stop_plan:
            lookahead = float(np.clip(LOOKAHEAD_GAIN * state.v + LOOKAHEAD_OFFSET, LOOKAHEAD_MIN, LOOKAHEAD_MAX))
            target = self._target(state, lookahead)
            dx, dy = target[0] - state.x, target[1] - state.y
            alpha = math.atan2(dy, dx) - state.yaw
            alpha = math.atan2(math.sin(alpha), math.cos(alpha))
            dist = max(math.hypot(dx, dy), 1e-3)
            desired = math.atan2(2.0 * WHEELBASE * math.sin(alpha), dist)
            desired = float(np.clip(desired, -MAX_STEER, MAX_STEER))
            step = MAX_STEER_RATE * dt
            steer = float(np.clip(desired, self.steer - step, self.steer + step))
        self.steer = steer
        return accel, steer
