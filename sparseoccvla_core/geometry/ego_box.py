"""The ego footprint along a planned path, and oriented-box overlap (docs/reference_choices.md §8.3).

Used by the planning metrics (:func:`sparseoccvla_core.metrics.collision_rate`), the pipeline's published plan
(headings along the waypoints) and the closed loop (collisions).  Pure numpy; boxes are (cx, cy, length, width, yaw)
in one ego frame, m and rad.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence, Union

import numpy as np

if TYPE_CHECKING:
    import torch

ArrayLike = Union[np.ndarray, "torch.Tensor", Sequence]  # torch tensors are converted with _np()


def _np(x: ArrayLike) -> np.ndarray:
    """numpy view of an array-like (torch tensors are moved to the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x)


@dataclass(frozen=True)
class EgoBox:
    """The ego vehicle footprint used by the collision metric.

    Args:
        length: m, along x (nuScenes Renault Zoe, ST-P3 / VAD / SparseDrive: 4.084).
        width: m, along y (1.85).
        center_offset: m, box centre ahead of the ego-frame origin (rear axle) along the heading.  ST-P3 / VAD
            shift the box 0.5 m forward in the LiDAR frame, whose origin is 0.985793 m ahead of the rear axle
            (nuScenes LIDAR_TOP extrinsics; OmniDrive issue #8 adds the two): 1.485793 m in the ego frame.
        min_move: m; a step shorter than this keeps the previous heading (a standing car has no tangent).
    """

    length: float = 4.084
    width: float = 1.85
    center_offset: float = 0.5 + 0.985793
    min_move: float = 0.05

    def __post_init__(self) -> None:
        if self.length <= 0 or self.width <= 0:
            raise ValueError(f"ego box length and width must be positive, got {self.length} x {self.width}")


def path_headings(traj: ArrayLike, min_move: float = EgoBox.min_move) -> np.ndarray:
    """Yaw (rad) of the ego at each waypoint from the path tangent.

    The heading at step t is the direction of ``p_t - p_{t-1}`` (``p_0`` = the origin, the current pose with
    yaw 0); steps shorter than ``min_move`` keep the previous heading.

    Args:
        traj: [N, T, 2] waypoints in the current ego frame.

    Returns:
        [N, T] yaw, rad.
    """
    traj = _np(traj).astype(np.float64)
    prev = np.concatenate([np.zeros_like(traj[:, :1]), traj[:, :-1]], axis=1)  # [N, T, 2] previous point
    d = traj - prev
    moving = np.linalg.norm(d, axis=-1) >= min_move  # [N, T]
    yaw = np.arctan2(d[..., 1], d[..., 0])
    out = np.zeros(traj.shape[:2])
    current = np.zeros(traj.shape[0])
    for t in range(traj.shape[1]):  # T = 6: a loop over steps, vectorised over samples
        current = np.where(moving[:, t], yaw[:, t], current)
        out[:, t] = current
    return out


def ego_boxes_along_path(traj: ArrayLike, ego: EgoBox = EgoBox()) -> np.ndarray:
    """Ego footprints at each waypoint.

    Args:
        traj: [N, T, 2] rear-axle positions in the current ego frame, m.
        ego: footprint size and centre offset.

    Returns:
        [N, T, 5] boxes (cx, cy, length, width, yaw).
    """
    traj = _np(traj).astype(np.float64)
    yaw = path_headings(traj, ego.min_move)
    cx = traj[..., 0] + ego.center_offset * np.cos(yaw)
    cy = traj[..., 1] + ego.center_offset * np.sin(yaw)
    size = np.broadcast_to(np.array([ego.length, ego.width]), traj.shape[:2] + (2,))
    return np.concatenate([cx[..., None], cy[..., None], size, yaw[..., None]], axis=-1)


def boxes_overlap(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Exact intersection test of oriented rectangles (separating-axis theorem), broadcasting.

    Touching boxes count as intersecting (as shapely's ``intersects``).

    Args:
        a: [..., 5] (cx, cy, length, width, yaw).
        b: [..., 5], broadcastable with ``a``.

    Returns:
        [...] bool.
    """
    a, b = _np(a).astype(np.float64), _np(b).astype(np.float64)
    ca, cb = a[..., :2], b[..., :2]
    ua = np.stack([np.cos(a[..., 4]), np.sin(a[..., 4])], axis=-1)  # [..., 2] box a's length axis
    va = np.stack([-ua[..., 1], ua[..., 0]], axis=-1)  # width axis
    ub = np.stack([np.cos(b[..., 4]), np.sin(b[..., 4])], axis=-1)
    vb = np.stack([-ub[..., 1], ub[..., 0]], axis=-1)
    delta = cb - ca
    separated = np.zeros(np.broadcast_shapes(a.shape[:-1], b.shape[:-1]), dtype=bool)
    for axis in (ua, va, ub, vb):
        ra = 0.5 * a[..., 2] * np.abs((ua * axis).sum(-1)) + 0.5 * a[..., 3] * np.abs((va * axis).sum(-1))
        rb = 0.5 * b[..., 2] * np.abs((ub * axis).sum(-1)) + 0.5 * b[..., 3] * np.abs((vb * axis).sum(-1))
        separated |= np.abs((delta * axis).sum(-1)) > ra + rb + 1e-9
    return ~separated
