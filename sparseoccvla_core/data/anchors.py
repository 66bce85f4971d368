"""Planning anchors (paper sec. 3.3): K-means on the training split's GT future trajectories, per driving command.

As DiffusionDrive's nuScenes branch (docs/reference_choices.md §7.1, SparseDrive ``kmeans_plan.py``): K-means
with K = 6 separately for each of the 3 commands (left / straight / right) on the cumulative (x, y) ego-frame
trajectories (6 steps -> 12-d vectors), using only samples whose 6 waypoints are all valid -> 18 anchors.
Saved together with the dataset statistics the planner and the ego-state token normalise with.

    sparseoccvla anchors --data DIR [--split train] --out anchors.npz [--per-command 6] [--seed 0]

writes ``anchors.npz`` (or ``.safetensors``) and ``anchors.json`` (the same statistics, human-readable):

* ``anchors`` [C, K, T, 2] per command (C = 3: 0 left, 1 straight, 2 right), ``anchors_flat`` [C*K, T, 2] with
  ``anchor_commands`` [C*K] (command-major order);
* ``mean_trajectory`` / ``trajectory_std`` [T, 2]; ``xy_mean`` / ``xy_std`` [2] pooled over steps;
  ``step_mean`` / ``step_std`` [2] of the per-step displacements; ``counts`` [C] samples per command;
  ``ego_state_mean`` / ``ego_state_std`` [EGO_STATE_DIM] over all key frames of the split.

A command with fewer distinct trajectories than K (small or synthetic datasets) gets the kinematic arcs of that
command instead (constant speed and yaw rate, :func:`.ego_motion.kinematic_fan`, the planner's default anchors); the
JSON records that under ``fallback``.  (Clustering such a command on the pooled trajectories would duplicate the
other commands' anchors: duplicated anchors get identical scores and make the positive anchor, the first of the
tied argmin, ill-defined.)  ``--mirror`` adds each
trajectory mirrored in y (left <-> right turns) before clustering, a symmetric augmentation for small sets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..batch import COMMANDS, EGO_STATE_FIELDS
from ..geometry.ego_motion import COMMAND_LEFT, COMMAND_RIGHT, driving_command, future_waypoints, kinematic_fan
from .frames import index_split
from .layout import resolve_layout


def kmeans(x: np.ndarray, k: int, seed: int = 0, n_init: int = 10, max_iter: int = 300) -> np.ndarray:
    """Deterministic K-means (k-means++ seeding, Lloyd iterations, best of ``n_init`` by inertia).

    Args:
        x: [N, D] data.
        k: clusters; at most the number of distinct rows.
        seed: RNG seed.
        n_init: restarts.
        max_iter: Lloyd iterations per restart.
    Returns:
        [k, D] float64 centres, sorted by their first coordinate then second (stable order across runs).
    Raises:
        ValueError: fewer distinct rows than ``k``.
    """
    x = np.asarray(x, dtype=np.float64)
    if len(np.unique(x, axis=0)) < k:
        raise ValueError(f"k-means needs at least {k} distinct samples, got {len(np.unique(x, axis=0))}")
    rng = np.random.default_rng(seed)
    best, best_inertia = None, np.inf
    sq = (x * x).sum(1)  # [N]
    for _ in range(n_init):
        centres = [x[rng.integers(len(x))]]
        d2 = ((x - centres[0]) ** 2).sum(1)
        for _ in range(1, k):  # k-means++: next centre with probability ~ squared distance
            c = x[rng.choice(len(x), p=d2 / d2.sum())] if d2.sum() > 0 else x[rng.integers(len(x))]
            centres.append(c)
            d2 = np.minimum(d2, ((x - c) ** 2).sum(1))
        c = np.stack(centres)  # [k, D]
        for _ in range(max_iter):
            dist = sq[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None]  # [N, k] squared distances
            assign = dist.argmin(1)
            new = np.stack([x[assign == j].mean(0) if np.any(assign == j) else c[j] for j in range(k)])
            empty = [j for j in range(k) if not np.any(assign == j)]
            for j in empty:  # re-seed an empty cluster at the worst-served point
                new[j] = x[dist[np.arange(len(x)), assign].argmax()]
            if np.allclose(new, c):
                c = new
                break
            c = new
        dist = sq[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None]
        inertia = dist.min(1).sum()
        if inertia < best_inertia - 1e-9:
            best, best_inertia = c, inertia
    order = np.lexsort((best[:, 1], best[:, 0]))
    return best[order]


@dataclass
class TrajectorySet:
    """GT trajectories of a split.

    Args:
        waypoints: [N, T, 2] future (x, y) in each key frame's ego frame, m.
        valid: [N, T] bool.
        commands: [N] int64.
        ego_state: [N, EGO_STATE_DIM] float32.
    """

    waypoints: np.ndarray
    valid: np.ndarray
    commands: np.ndarray
    ego_state: np.ndarray


def collect_trajectories(root: str | Path, split: str, horizon: int, version: Optional[str] = None) -> TrajectorySet:
    """Waypoints, command and ego state of every key frame of ``split`` (poses only; no image is read)."""
    layout = resolve_layout(root, version)
    wps, valids, cmds, states = [], [], [], []
    for scene in index_split(layout, split, num_frames=1):
        for i in range(len(scene)):
            wp, valid = future_waypoints(scene.ego2global, i, horizon)
            wps.append(wp)
            valids.append(valid)
            cmds.append(driving_command(wp, valid))
        states.append(scene.ego_state)
    return TrajectorySet(
        waypoints=np.stack(wps),
        valid=np.stack(valids),
        commands=np.asarray(cmds, dtype=np.int64),
        ego_state=np.concatenate(states),
    )


@dataclass
class AnchorSet:
    """Anchors and dataset statistics (see module docstring for the fields)."""

    anchors: np.ndarray
    stats: dict[str, np.ndarray]
    info: dict

    @property
    def anchors_flat(self) -> np.ndarray:
        """[C*K, T, 2], command-major."""
        c, k = self.anchors.shape[:2]
        return self.anchors.reshape(c * k, *self.anchors.shape[2:])  # [C*K, T, 2]

    @property
    def anchor_commands(self) -> np.ndarray:
        c, k = self.anchors.shape[:2]
        return np.repeat(np.arange(c), k)


def compute_anchors(
    trajs: TrajectorySet, per_command: int = 6, seed: int = 0, mirror: bool = False, dt: float = 0.5
) -> AnchorSet:
    """K-means anchors per command + statistics from a :class:`TrajectorySet`.

    Args:
        trajs: the split's trajectories.
        per_command: anchors per command.
        seed: K-means seed (command c uses ``seed + c``).
        mirror: add y-mirrored trajectories first.
        dt: seconds between waypoints (nuScenes key frames: 0.5), for the kinematic arcs of a command with too few
            trajectories.

    Raises:
        ValueError: fewer than ``per_command`` distinct complete trajectories in the whole split.
    """
    full = trajs.valid.all(1)  # only samples with all T waypoints (DiffusionDrive / OmniDrive)
    wp, cmd = trajs.waypoints[full].astype(np.float64), trajs.commands[full]
    if mirror:
        flipped = wp * np.array([1.0, -1.0])
        flip_cmd = np.where(cmd == COMMAND_LEFT, COMMAND_RIGHT, np.where(cmd == COMMAND_RIGHT, COMMAND_LEFT, cmd))
        wp, cmd = np.concatenate([wp, flipped]), np.concatenate([cmd, flip_cmd])
    n, t = wp.shape[:2]
    flat = wp.reshape(n, t * 2)  # [N, 2T] cumulative positions
    n_distinct = len(np.unique(flat, axis=0)) if n else 0
    if n_distinct < per_command:
        raise ValueError(
            f"only {n_distinct} distinct complete {t}-step trajectories in the split; need >= {per_command} "
            "(use more scenes or a smaller --per-command)"
        )
    anchors = np.zeros((len(COMMANDS), per_command, t, 2))
    fan, fan_commands = kinematic_fan(len(COMMANDS), per_command, t, dt)  # [C*K, T, 2], [C*K]
    fallback: dict[str, str] = {}
    for c, name in enumerate(COMMANDS):
        x = flat[cmd == c]
        distinct = len(np.unique(x, axis=0)) if len(x) else 0
        if distinct < per_command:
            fallback[name] = f"only {distinct} distinct trajectories (< {per_command}): kinematic arcs"
            anchors[c] = fan[fan_commands == c]
            continue
        anchors[c] = kmeans(x, per_command, seed=seed + c).reshape(per_command, t, 2)  # [K, T, 2]
    steps = np.diff(np.concatenate([np.zeros((n, 1, 2)), wp], axis=1), axis=1)  # [N, T, 2] per-step displacement
    stats = {
        "mean_trajectory": wp.mean(0),
        "trajectory_std": wp.std(0),
        "xy_mean": wp.reshape(-1, 2).mean(0),
        "xy_std": wp.reshape(-1, 2).std(0),
        "step_mean": steps.reshape(-1, 2).mean(0),
        "step_std": steps.reshape(-1, 2).std(0),
        "counts": np.bincount(trajs.commands[full], minlength=len(COMMANDS)),
        "ego_state_mean": trajs.ego_state.mean(0),
        "ego_state_std": trajs.ego_state.std(0),
    }
    info = {
        "num_key_frames": int(len(trajs.commands)),
        "num_complete_trajectories": int(full.sum()),
        "per_command": per_command,
        "seed": seed,
        "mirror": mirror,
        "commands": list(COMMANDS),
        "ego_state_fields": list(EGO_STATE_FIELDS),
        "fallback": fallback,
    }
    return AnchorSet(anchors=anchors.astype(np.float32), stats={k: np.asarray(v) for k, v in stats.items()}, info=info)


def save_anchors(anchor_set: AnchorSet, path: str | Path) -> tuple[Path, Path]:
    """Write ``path`` (.npz or .safetensors) and the JSON beside it; returns both paths."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "anchors": anchor_set.anchors,
        "anchors_flat": anchor_set.anchors_flat,
        "anchor_commands": anchor_set.anchor_commands.astype(np.int64),
        **{k: np.asarray(v, dtype=np.int64 if k == "counts" else np.float32) for k, v in anchor_set.stats.items()},
    }
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(
            {k: np.ascontiguousarray(v) for k, v in arrays.items()},
            str(path),
            metadata={"info": json.dumps(anchor_set.info)},
        )
    elif path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        raise ValueError(f"--out must end in .npz or .safetensors, got {path.name}")
    json_path = path.with_suffix(".json")
    doc = {**anchor_set.info, **{k: np.asarray(v).tolist() for k, v in arrays.items()}}
    json_path.write_text(json.dumps(doc, indent=1))
    return path, json_path


def load_anchors(path: str | Path) -> AnchorSet:
    """Read what :func:`save_anchors` wrote."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"anchor file {path} not found (create it with 'sparseoccvla anchors')")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.numpy import load_file

        arrays = load_file(str(path))
        with safe_open(str(path), framework="numpy") as f:
            info = json.loads((f.metadata() or {}).get("info", "{}"))
    else:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        json_path = path.with_suffix(".json")
        info = json.loads(json_path.read_text()) if json_path.is_file() else {}
        info = {k: v for k, v in info.items() if k not in arrays}
    skip = {"anchors", "anchors_flat", "anchor_commands"}
    return AnchorSet(anchors=arrays["anchors"], stats={k: v for k, v in arrays.items() if k not in skip}, info=info)
