"""Occ3D-nuScenes ground truth: ``labels.npz`` -> sparse points, the concatenated GT and its future transforms.

* Current-frame GT: the non-free voxels of ``gts/<scene>/<token>/labels.npz`` as voxel centres in true ego
  metres (:mod:`sparseoccvla_core.occ_grid`: Occ3D's road layer sits 0.8 m below the nuScenes ego ground, so the
  grid is shifted up by ``OCC3D_Z_SHIFT``; ``cfg.point_cloud_range`` carries the shifted range).
* Concatenated GT ``G`` (paper appendix A, "Sparse Occupancy Encoder Training"): the current frame and the next
  T key frames' GT warped into the current ego frame by the ego poses (``inv(E_cur) @ E_fut``, SparseWorld's
  ``temporal2ego``), voxelised on an extended range and deduplicated per voxel (earliest frame wins, so the
  current frame's own labels are kept where frames overlap).  Default extended range: SparseWorld's
  ``[-80, -60, -3, 80, 60, 6.6]`` (REFERENCE_FACTS §1.2) in Occ3D nominal z, i.e. ``z in [-2.2, 7.4]`` in ego
  metres, 0.4 m voxels aligned with the Occ3D grid.
* Forecast supervision ``G_t`` (eq. 11, appendix A "End to End Training"): ``G`` transformed into future frame
  t's ego frame by the GT poses (``inv(E_t) @ E_cur``), cropped to the extended range.
* Evaluation GT of future frame t: that frame's own labels in its own ego frame (REFERENCE_FACTS §7.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..batch import FREE_CLASS
from ..occ_grid import OCC3D_Z_SHIFT, grid_shape, labels_to_points
from .camera import transform_points

OCC3D_GRID_SHAPE: tuple[int, int, int] = (200, 200, 16)
#: SparseWorld's extended range for the stacked (concatenated) GT, Occ3D nominal z (REFERENCE_FACTS §1.2) ...
SPARSEWORLD_EXTENDED_RANGE_NOMINAL: tuple[float, ...] = (-80.0, -60.0, -3.0, 80.0, 60.0, 6.6)
#: ... and the same range in true ego metres (z shifted like the Occ3D grid, see occ_grid.py).
EXTENDED_RANGE_EGO: tuple[float, ...] = (
    -80.0,
    -60.0,
    -3.0 + OCC3D_Z_SHIFT,
    80.0,
    60.0,
    6.6 + OCC3D_Z_SHIFT,
)
VISIBILITY_MASKS: tuple[str, ...] = ("none", "camera", "lidar")


@dataclass
class Occ3DLabels:
    """One ``labels.npz``.

    Args:
        semantics: [200, 200, 16] uint8 class ids, [x, y, z] order, 17 = free.
        mask_lidar: [200, 200, 16] bool voxels observed by the lidar.
        mask_camera: [200, 200, 16] bool voxels observed by a camera.
    """

    semantics: np.ndarray
    mask_lidar: np.ndarray
    mask_camera: np.ndarray


def load_occ3d_labels(path: str | Path) -> Occ3DLabels:
    """Read an Occ3D ``labels.npz``.

    Raises:
        FileNotFoundError: missing file (the message says where Occ3D GT is expected);
        ValueError: a key is missing or an array has the wrong shape.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Occ3D labels {path} not found: expected <occ3d_root>/<scene_name>/<sample_token>/labels.npz "
            "(download Occ3D-nuScenes 'gts' into the dataset root, or pass occ3d_root=)"
        )
    with np.load(path) as npz:
        missing = {"semantics", "mask_lidar", "mask_camera"} - set(npz.files)
        if missing:
            raise ValueError(f"{path}: missing keys {sorted(missing)} (an Occ3D labels.npz has semantics, "
                             "mask_lidar, mask_camera)")
        sem, lid, cam = npz["semantics"], npz["mask_lidar"], npz["mask_camera"]
    for name, arr in (("semantics", sem), ("mask_lidar", lid), ("mask_camera", cam)):
        if arr.shape != OCC3D_GRID_SHAPE:
            raise ValueError(f"{path}: {name} has shape {arr.shape}, expected {OCC3D_GRID_SHAPE} ([x, y, z])")
    return Occ3DLabels(semantics=sem.astype(np.uint8), mask_lidar=lid.astype(bool), mask_camera=cam.astype(bool))


def occ3d_points(
    labels: Occ3DLabels, pc_range: Sequence[float], voxel_size: float, visibility: str = "none"
) -> tuple[np.ndarray, np.ndarray]:
    """Non-free voxels as sparse ego-frame points.

    Args:
        labels: the Occ3D grid.
        pc_range: shifted point-cloud range of the grid (``cfg.point_cloud_range``).
        voxel_size: voxel edge, m.
        visibility: "none" (every labelled voxel, as OPUS / SparseWorld train), "camera" or "lidar" (only voxels
            visible to that sensor).
    Returns:
        points [M, 3] float32 voxel centres, labels [M] int64.
    """
    if visibility not in VISIBILITY_MASKS:
        raise ValueError(f"visibility must be one of {VISIBILITY_MASKS}, got {visibility!r}")
    if grid_shape(pc_range, voxel_size) != labels.semantics.shape:
        raise ValueError(
            f"point_cloud_range {tuple(pc_range)} / voxel {voxel_size} give grid {grid_shape(pc_range, voxel_size)}, "
            f"but the labels are {labels.semantics.shape}"
        )
    sem = labels.semantics
    if visibility != "none":
        mask = labels.mask_camera if visibility == "camera" else labels.mask_lidar
        sem = np.where(mask, sem, np.uint8(FREE_CLASS))
    return labels_to_points(sem, pc_range, voxel_size, free_class=FREE_CLASS)


def crop_to_range(points: np.ndarray, labels: np.ndarray, pc_range: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Keep points inside ``[x_min, x_max) x [y_min, y_max) x [z_min, z_max)``."""
    lo, hi = np.asarray(pc_range[:3]), np.asarray(pc_range[3:])
    keep = np.all((points >= lo) & (points < hi), axis=1)
    return points[keep], labels[keep]


def concat_gt(
    frames: Sequence[tuple[np.ndarray, np.ndarray]],
    frame_to_current: Sequence[np.ndarray],
    extended_range: Sequence[float],
    voxel_size: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The concatenated GT ``G``: frames warped into the current ego frame, voxelised and deduplicated.

    Args:
        frames: per frame (points [M_t, 3] in that frame's ego frame, labels [M_t]); index 0 = current frame,
            then future frames in time order.
        frame_to_current: per frame the 4x4 transform ``inv(E_cur) @ E_t`` (identity for the current frame).
        extended_range: range of ``G`` in the current ego frame; must be aligned with the voxel grid.
        voxel_size: voxel edge, m.
    Returns:
        points [G, 3] float32 voxel centres of the extended grid, labels [G] int64; one point per voxel, the
        earliest frame's label where several frames occupy a voxel; current-frame voxels come first.
    """
    if len(frames) != len(frame_to_current):
        raise ValueError("one transform per frame is required")
    lo = np.asarray(extended_range[:3], dtype=np.float64)
    shape = np.asarray(grid_shape(extended_range, voxel_size), dtype=np.int64)
    all_idx, all_lab = [], []
    for (pts, lab), m in zip(frames, frame_to_current):
        if len(pts) == 0:
            continue
        warped = transform_points(m, pts.astype(np.float64))  # [M_t, 3] current ego frame
        ijk = np.floor((warped - lo) / voxel_size).astype(np.int64)  # [M_t, 3]
        inside = np.all((ijk >= 0) & (ijk < shape), axis=1)
        all_idx.append(ijk[inside])
        all_lab.append(np.asarray(lab)[inside])
    if not all_idx:
        return np.zeros((0, 3), np.float32), np.zeros((0,), np.int64)
    ijk = np.concatenate(all_idx)  # [M, 3] in frame order
    lab = np.concatenate(all_lab).astype(np.int64)
    linear = (ijk[:, 0] * shape[1] + ijk[:, 1]) * shape[2] + ijk[:, 2]  # [M]
    _, first = np.unique(linear, return_index=True)  # first occurrence = earliest frame
    first.sort()  # keep frame order (current frame first)
    centres = (lo + (ijk[first] + 0.5) * voxel_size).astype(np.float32)  # [G, 3]
    return centres, lab[first]


def to_future_frame(
    points: np.ndarray, labels: np.ndarray, current_to_future: np.ndarray, crop_range: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """``G_t`` of eq. 11: the concatenated GT in future frame t's ego frame (``inv(E_t) @ E_cur``), cropped."""
    moved = transform_points(current_to_future, points)
    return crop_to_range(moved.astype(np.float32), labels, crop_range)
