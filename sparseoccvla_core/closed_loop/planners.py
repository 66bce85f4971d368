"""Closed-loop baselines, run in-process on the same episodes as the model (docs/closed_loop.md §5).

A planner maps the current :class:`~.sim.KeyFrame` (and, for the privileged expert, the episode's world state) to
6 waypoints 0.5 s apart in the current ego frame, exactly what the driving node publishes; the same tracker then
executes every planner's output.

* :class:`ConstantVelocity` - the current velocity (the bags' backward difference) extrapolated for 3 s, the
  open-loop evaluation's constant-velocity baseline (:func:`sparseoccvla_core.metrics.constant_velocity_trajectory`);
* :class:`MeanTrajectory` - always the mean training trajectory: the mean of the 6-waypoint future trajectories of
  the training world's ego (:func:`mean_training_trajectory`; by default the world the default checkpoint is
  trained on: ``sparseoccvla synth`` seed 0, 28 scenes x 40 key frames, train split), as ``sparseoccvla eval``'s
  mean-trajectory baseline;
* :class:`RuleExpert` - a privileged rule-based driver that reads the world state: lane following on the ego
  route, IDM (Treiber et al. 2000, the world's parameters) behind the nearest obstacle among the agents in the ego
  lane and those predicted (constant velocity, 3 s) to enter it, stopping at red and catchable amber lights
  (signal program known, so future phases too), curve speed limited to 2 m/s² lateral acceleration;
* :class:`ConstantSpeedStraight` - always straight ahead at a fixed speed (the tests' 15 m/s reckless planner).

None of them needs images (``needs_images = False``): the runner does not render cameras for them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

import numpy as np

from ..metrics import constant_velocity_trajectory
from ..synthetic.traffic import IDM_B, IDM_S0, IDM_T, MAX_BRAKE, MAX_LAT_ACC
from .scenarios import EGO_BOX, FRONT_OFFSET
from .sim import KEY_FRAME_DT, PLAN_STEPS, Episode, KeyFrame
from .vehicle import global_to_ego

EXPERT_A_MAX = 1.5  # m/s^2
EXPERT_DT = 0.1  # s, rollout step
PREDICT_TIMES = np.arange(0.0, 3.01, 0.5)  # s, constant-velocity prediction of the other agents
CORRIDOR_MARGIN = 0.3  # m added to the half widths when testing whether an agent is in the ego lane
AMBER_DECEL = 3.0  # m/s^2, an amber light is obeyed when stopping needs less than this (the world's rule)


class ConstantVelocity:
    name = "constant velocity"
    needs_images = False

    def plan(self, episode: Episode, kf: KeyFrame) -> np.ndarray:
        return constant_velocity_trajectory(np.asarray(kf.velocity)[None], horizon=PLAN_STEPS, dt=KEY_FRAME_DT)[0]


class ConstantSpeedStraight:
    """Straight ahead at ``speed`` m/s whatever happens."""

    needs_images = False

    def __init__(self, speed: float = 15.0) -> None:
        self.speed = float(speed)
        self.name = f"straight at {self.speed:g} m/s"

    def plan(self, episode: Episode, kf: KeyFrame) -> np.ndarray:
        return constant_velocity_trajectory(np.array([[self.speed, 0.0]]), horizon=PLAN_STEPS, dt=KEY_FRAME_DT)[0]


class MeanTrajectory:
    name = "mean trajectory"
    needs_images = False

    def __init__(self, mean: np.ndarray) -> None:
        mean = np.asarray(mean, dtype=np.float64)
        if mean.shape != (PLAN_STEPS, 2) or not np.all(np.isfinite(mean)):
            raise ValueError(f"mean trajectory must be a finite [{PLAN_STEPS}, 2] array, got {mean.shape}")
        self.mean = mean

    def plan(self, episode: Episode, kf: KeyFrame) -> np.ndarray:
        return self.mean.copy()


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sparseoccvla" / "closed_loop"


def mean_training_trajectory(seed: int = 0, scenes: int = 28, frames: int = 40, cache: bool = True) -> dict:
    """Mean 6-waypoint future trajectory of the ego over the train split of a synthetic training world.

    The world is ``sparseoccvla synth --seed SEED --scenes SCENES --frames FRAMES`` (layouts cycled); only its
    traffic is simulated (no rendering), the waypoints are the next six key-frame ego positions in the current ego
    frame (:func:`sparseoccvla_core.geometry.ego_motion` conventions), and frames without six future key frames are
    skipped.  The result is cached under ``~/.cache/sparseoccvla/closed_loop/``.

    Returns:
        {"mean": [6, 2] list, "num_trajectories": int, "seed", "scenes", "frames"}.
    """
    from ..synthetic.config import SynthConfig
    from ..synthetic.generate import setup_scene, simulate_scene

    path = _cache_dir() / f"mean_trajectory_s{seed}_{scenes}x{frames}.json"
    if cache and path.is_file():
        return json.loads(path.read_text())
    cfg = SynthConfig(num_scenes=scenes, seed=seed, num_frames=frames, write_lidar=False)
    trajs = []
    for i in range(scenes):
        if cfg.split_of(i) != "train":
            continue
        states = simulate_scene(cfg, setup_scene(cfg, i))
        poses = np.array([s.ego_pose for s in states])
        for k in range(len(poses) - PLAN_STEPS):
            trajs.append(global_to_ego(poses[k + 1 : k + 1 + PLAN_STEPS, :2], poses[k]))
    if not trajs:
        raise ValueError(f"no training trajectory with {PLAN_STEPS} future key frames (seed {seed}, {scenes} scenes)")
    result = {
        "mean": np.mean(trajs, axis=0).round(4).tolist(),
        "num_trajectories": len(trajs),
        "seed": seed,
        "scenes": scenes,
        "frames": frames,
    }
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))
    return result


class RuleExpert:
    """Privileged IDM + lane following + signal compliance on the world state (module docstring)."""

    name = "expert"
    needs_images = False

    def __init__(self, horizon_s: float = 3.0) -> None:
        self.horizon_s = horizon_s

    def _obstacle(self, episode: Episode, s_rear: float) -> tuple[float, float]:
        """(gap m from the ego's front bumper, speed along the route m/s) of the nearest obstacle, or (inf, 0)."""
        others = episode.traffic.agents[1:]
        if not others:
            return math.inf, 0.0
        path = episode.route.path
        pos = np.array([a.pose[:2] for a in others])
        yaw = np.array([a.pose[2] for a in others])
        speed = np.array([a.v for a in others])
        vel = speed[:, None] * np.stack([np.cos(yaw), np.sin(yaw)], axis=1)
        size = np.array([a.size[:2] for a in others])
        ego_xy = episode.pose[:2]
        near = np.linalg.norm(pos - ego_xy, axis=1) < 90.0
        if not near.any():
            return math.inf, 0.0
        idx = np.nonzero(near)[0]
        pred = pos[idx, None, :] + PREDICT_TIMES[None, :, None] * vel[idx, None, :]  # [N, P, 2]
        flat = pred.reshape(-1, 2)
        s_proj, lat = path.project(flat, s_rear, s_rear + 80.0)
        s_proj, lat = s_proj.reshape(len(idx), -1), lat.reshape(len(idx), -1)
        extent = 0.5 * np.maximum(size[idx, 0], size[idx, 1])
        inside = lat < (0.5 * EGO_BOX.width + 0.5 * size[idx, 1] + CORRIDOR_MARGIN)[:, None]
        gap = s_proj - extent[:, None] - (s_rear + FRONT_OFFSET)
        ahead = (gap > -1.0) & (s_proj > s_rear + 0.5)
        hit = inside & ahead  # [N, P]
        best, best_v = math.inf, 0.0
        for j in np.nonzero(hit.any(axis=1))[0]:
            if hit[j, 0]:  # in the lane now: a leader, moving at its speed along the route
                _, h = path.pose(s_proj[j, 0])
                g, v_along = gap[j, 0], max(0.0, float(vel[idx[j]] @ np.array([math.cos(h), math.sin(h)])))
            else:  # predicted to enter the lane: an obstacle standing where it enters
                p = int(np.argmax(hit[j]))
                g, v_along = gap[j, p], 0.0
            if g < best:
                best, best_v = float(g), v_along
        return max(best, 0.01) if math.isfinite(best) else best, best_v

    def plan(self, episode: Episode, kf: KeyFrame) -> np.ndarray:
        path = episode.route.path
        s_rear, _ = episode.project(kf.pose[:2])
        v = float(episode.state.v)
        v_des = float(episode.setup.v0)
        lead_gap, v_lead = self._obstacle(episode, s_rear)
        lead_front = s_rear + FRONT_OFFSET + lead_gap  # route position of the obstacle's near edge
        program = episode.world.signals
        kappa = path.dense_curvature()
        s, out = s_rear, []
        steps = int(round(self.horizon_s / EXPERT_DT))
        per_wp = int(round(KEY_FRAME_DT / EXPERT_DT))
        for n in range(1, steps + 1):
            tau = (n - 1) * EXPERT_DT
            front = s + FRONT_OFFSET
            gap, vl = (lead_front + v_lead * tau - front, v_lead) if math.isfinite(lead_gap) else (math.inf, 0.0)
            if program is not None:
                for s_stop, group in episode.route.stops:
                    dist = s_stop - front
                    if dist < -0.5:
                        continue
                    state = program.state(group, episode.t + tau)
                    if (state == "red" or (state == "yellow" and dist > v * v / (2 * AMBER_DECEL))) and dist < gap:
                        gap, vl = max(dist, 0.01), 0.0
                    break
            i0 = int(np.clip(s, 0, len(kappa) - 1))
            k_max = float(np.max(kappa[i0 : i0 + 30])) if i0 < len(kappa) - 1 else 0.0
            v0 = min(v_des, math.sqrt(MAX_LAT_ACC / max(k_max, 1e-4)))
            acc = EXPERT_A_MAX * (1.0 - (v / max(v0, 0.1)) ** 4)
            if math.isfinite(gap):
                s_star = IDM_S0 + max(0.0, v * IDM_T + v * (v - vl) / (2.0 * math.sqrt(EXPERT_A_MAX * IDM_B)))
                acc -= EXPERT_A_MAX * (s_star / max(gap, 0.05)) ** 2
            acc = float(np.clip(acc, -MAX_BRAKE, EXPERT_A_MAX))
            v_new = max(0.0, v + acc * EXPERT_DT)
            s += 0.5 * (v + v_new) * EXPERT_DT
            v = v_new
            if n % per_wp == 0:
                out.append(path.pose(s)[0])
        return global_to_ego(np.array(out), kf.pose)


def make_baseline(name: str, mean: Optional[np.ndarray] = None):
    """A baseline by its command-line name: constant-velocity | mean-trajectory | expert."""
    if name == "constant-velocity":
        return ConstantVelocity()
    if name == "mean-trajectory":
        if mean is None:
            mean = np.asarray(mean_training_trajectory()["mean"])
        return MeanTrajectory(mean)
    if name == "expert":
        return RuleExpert()
    raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")


BASELINES = ("constant-velocity", "mean-trajectory", "expert")
