"""The Occ3D voxel grid in the nuScenes ego frame: voxel index <-> ego-frame point, one definition for all code.

Occ3D-nuScenes labels are a [200, 200, 16] grid indexed [x, y, z] with 0.4 m voxels.  Its documentation gives
the range x, y in [-40, 40] m and z in [-1.0, 5.4] m "in the ego frame", but in the real labels the road
(driveable_surface) occupies only z-layer 0 - nominal z in [-1.0, -0.6] m - while the nuScenes ego-frame
ground is at z = 0 (measured on real LiDAR, docs/frames_and_units.md §4).  We therefore place
the grid ``OCC3D_Z_SHIFT`` = 0.8 m higher than nominal, so that voxel centres are true ego-frame metres
(layer 0 centre at z = 0.0, the ground) and projecting them into the cameras is geometrically right.
``SparseOccVLAConfig.point_cloud_range`` carries the shifted range; index <-> point conversions use it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

OCC3D_Z_SHIFT: float = 0.8  # m, ego z = Occ3D nominal z + OCC3D_Z_SHIFT
OCC3D_NOMINAL_RANGE: tuple[float, ...] = (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4)


def grid_shape(pc_range: Sequence[float], voxel_size: float) -> tuple[int, int, int]:
    """Cells (X, Y, Z) of the range."""
    return tuple(int(round((pc_range[i + 3] - pc_range[i]) / voxel_size)) for i in range(3))  # type: ignore[return-value]


def index_to_points(ijk: np.ndarray, pc_range: Sequence[float], voxel_size: float) -> np.ndarray:
    """Voxel indices [M, 3] (x, y, z order) -> voxel centres [M, 3] float32 in ego metres."""
    lo = np.asarray(pc_range[:3], dtype=np.float64)
    return (lo + (np.asarray(ijk, dtype=np.float64) + 0.5) * voxel_size).astype(np.float32)


def points_to_index(points: np.ndarray, pc_range: Sequence[float], voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Ego-frame points [M, 3] -> (voxel indices [M, 3] int64, inside-grid mask [M] bool)."""
    lo = np.asarray(pc_range[:3], dtype=np.float64)
    shape = np.asarray(grid_shape(pc_range, voxel_size))
    ijk = np.floor((np.asarray(points, dtype=np.float64) - lo) / voxel_size).astype(np.int64)
    inside = np.all((ijk >= 0) & (ijk < shape), axis=-1)
    return ijk, inside


def labels_to_points(
    semantics: np.ndarray, pc_range: Sequence[float], voxel_size: float, free_class: int = 17
) -> tuple[np.ndarray, np.ndarray]:
    """Dense Occ3D ``semantics`` [X, Y, Z] -> sparse occupied voxel centres [M, 3] and labels [M]."""
    ijk = np.argwhere(semantics != free_class)
    return index_to_points(ijk, pc_range, voxel_size), semantics[tuple(ijk.T)].astype(np.int64)


def points_to_labels(
    points: np.ndarray,
    labels: np.ndarray,
    pc_range: Sequence[float],
    voxel_size: float,
    free_class: int = 17,
    scores: np.ndarray | None = None,
) -> np.ndarray:
    """Sparse labelled points -> dense [X, Y, Z] uint8 grid (free elsewhere).

    Where several points fall in one voxel the highest-scoring one wins (the last one when no scores).
    """
    shape = grid_shape(pc_range, voxel_size)
    grid = np.full(shape, free_class, dtype=np.uint8)
    ijk, inside = points_to_index(points, pc_range, voxel_size)
    ijk, labels = ijk[inside], np.asarray(labels)[inside]
    if scores is not None:
        order = np.argsort(np.asarray(scores)[inside], kind="stable")  # ascending: best written last
        ijk, labels = ijk[order], labels[order]
    grid[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = labels.astype(np.uint8)
    return grid
