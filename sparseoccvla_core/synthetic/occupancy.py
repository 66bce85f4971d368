"""Occ3D-nuScenes labels of the synthetic world: semantics from the world geometry, camera and LiDAR masks.

Grid: [200, 200, 16] voxels of 0.4 m indexed [x, y, z] in the *current* ego frame, with the convention of
:mod:`sparseoccvla_core.occ_grid` (voxel centre ``z = -0.2 + 0.4 (k + 0.5)``: the road is layer 0, like the real
labels).

* ``semantics``: 17 (free) everywhere, then layer 0 takes the ground class under each voxel column (surface
  raster: driveable_surface / sidewalk / terrain / other_flat), then every object primitive marks the voxels
  whose centre lies inside it (thin scenery primitives are widened to one voxel so poles are not lost; an
  annotated object smaller than the voxel spacing keeps the one voxel nearest its centre).  Buildings keep only their outer 0.45 m shell (walls and roof; their inside, ground included, is free), as
  real labels built from LiDAR surfaces do.  Movers
  are written after scenery.  The ego car itself is free.
* ``mask_camera``: a voxel is observed by a camera when its centre projects inside the image with a z-depth no
  larger than the rendered depth at that pixel plus ``VISIBILITY_TOLERANCE`` (a depth-buffer test, equivalent
  to Occ3D's ray casting up to the first occupied voxel); union over the six cameras.
* ``mask_lidar``: the same test against a 360-degree depth panorama rendered from the LIDAR_TOP position with
  the HDL-32E vertical field of view (+11 to -31 degrees), as three 120-degree virtual pinhole views.

Voxel centres are fixed in the ego frame and so are the sensors, so each voxel's pixel and depth per sensor are
computed once (:class:`VoxelProjector`) and every frame only gathers and compares.
"""

from __future__ import annotations

import numpy as np

from ..batch import FREE_CLASS
from ..occ_grid import OCC3D_NOMINAL_RANGE, OCC3D_Z_SHIFT, grid_shape
from .primitives import BOX, SceneObject
from .world import SURFACE_TO_OCC, GroundMap

FREE = FREE_CLASS  # Occ3D's free-space label
VOXEL_SIZE = 0.4
PC_RANGE: tuple[float, ...] = (
    OCC3D_NOMINAL_RANGE[0],
    OCC3D_NOMINAL_RANGE[1],
    OCC3D_NOMINAL_RANGE[2] + OCC3D_Z_SHIFT,
    OCC3D_NOMINAL_RANGE[3],
    OCC3D_NOMINAL_RANGE[4],
    OCC3D_NOMINAL_RANGE[5] + OCC3D_Z_SHIFT,
)
GRID = grid_shape(PC_RANGE, VOXEL_SIZE)  # (200, 200, 16)
VISIBILITY_TOLERANCE = 0.35  # m: a voxel centre lies at most ~half a voxel diagonal behind the surface it holds
SHELL = 0.45  # m: thickness of the occupied shell of hollow objects (buildings)


def voxel_centers_ego() -> np.ndarray:
    """[X, Y, Z, 3] float32 voxel centres in the ego frame (m)."""
    axes = [PC_RANGE[i] + (np.arange(GRID[i]) + 0.5) * VOXEL_SIZE for i in range(3)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).astype(np.float32)


_CENTERS = voxel_centers_ego()


def _yaw_of(ego2global: np.ndarray) -> float:
    return float(np.arctan2(ego2global[1, 0], ego2global[0, 0]))


def semantics(ego2global: np.ndarray, ground: GroundMap, objects: list[SceneObject]) -> np.ndarray:
    """[200, 200, 16] uint8 Occ3D classes in the ego frame ``ego2global`` (flat world: yaw + translation).

    Args:
        ego2global: [4, 4] ego pose.
        ground: the scene's surface raster.
        objects: scenery first, then movers (later objects overwrite earlier ones).
    """
    sem = np.full(GRID, FREE, np.uint8)
    yaw = _yaw_of(ego2global)
    c, s = np.cos(yaw), np.sin(yaw)
    tx, ty = ego2global[0, 3], ego2global[1, 3]
    # 1. ground layer
    layer0 = _CENTERS[:, :, 0, :2]  # [X, Y, 2]
    gx = tx + c * layer0[..., 0] - s * layer0[..., 1]
    gy = ty + s * layer0[..., 0] + c * layer0[..., 1]
    surf, _ = ground.lookup(gx, gy)
    sem[:, :, 0] = SURFACE_TO_OCC[surf]
    # 2. objects, each on the voxel window covering its bounds
    lo_ego = np.array(PC_RANGE[:3])
    for obj in objects:
        rel = obj.center[:, :2] - np.array([tx, ty])
        ex = c * rel[:, 0] + s * rel[:, 1]  # primitive centres in the ego frame
        ey = -s * rel[:, 0] + c * rel[:, 1]
        reach = np.linalg.norm(obj.half[:, :2], axis=1) + VOXEL_SIZE
        lo = np.array([np.min(ex - reach), np.min(ey - reach), np.min(obj.center[:, 2] - obj.half[:, 2])])
        hi = np.array([np.max(ex + reach), np.max(ey + reach), np.max(obj.center[:, 2] + obj.half[:, 2])])
        i0 = np.clip(np.floor((lo - lo_ego) / VOXEL_SIZE).astype(int), 0, GRID)
        i1 = np.clip(np.ceil((hi - lo_ego) / VOXEL_SIZE).astype(int) + 1, 0, GRID)
        if np.any(i1 <= i0):
            continue
        win = _CENTERS[i0[0] : i1[0], i0[1] : i1[1], i0[2] : i1[2]]  # [a, b, c, 3]
        pts = win.reshape(-1, 3)
        label = _label_points(pts, ex, ey, obj, yaw)
        if label is None:
            continue
        sub = sem[i0[0] : i1[0], i0[1] : i1[1], i0[2] : i1[2]].reshape(-1)
        hit = label >= 0
        sub[hit] = label[hit]
        sem[i0[0] : i1[0], i0[1] : i1[1], i0[2] : i1[2]] = sub.reshape(win.shape[:3])
    return sem


def _label_points(pts: np.ndarray, ex: np.ndarray, ey: np.ndarray, obj: SceneObject, ego_yaw: float):
    """Occ3D class per ego-frame point (-1 outside) for one object; primitives given in ego-frame centres."""
    out = np.full(len(pts), -1, np.int16)
    interior = np.zeros(len(pts), bool)
    for k in range(len(obj.kind)):
        dyaw = obj.yaw[k] - ego_yaw
        cy, sy = np.cos(dyaw), np.sin(dyaw)
        dx, dy, dz = pts[:, 0] - ex[k], pts[:, 1] - ey[k], pts[:, 2] - obj.center[k, 2]
        lx, ly = cy * dx + sy * dy, -sy * dx + cy * dy
        # thin scenery parts (poles, arms) are widened to one voxel so they are not lost between voxel centres;
        # annotated objects keep their exact shape (their voxels must project onto their own pixels)
        hx, hy, hz = obj.half[k] if obj.instance >= 0 else np.maximum(obj.half[k], 0.5 * VOXEL_SIZE)
        if obj.kind[k] == BOX:
            inside = (np.abs(lx) <= hx) & (np.abs(ly) <= hy) & (np.abs(dz) <= hz)
            if obj.hollow and k == 0:
                interior = (np.abs(lx) < hx - SHELL) & (np.abs(ly) < hy - SHELL) & (dz < hz - SHELL)
        else:
            inside = (lx / hx) ** 2 + (ly / hy) ** 2 + (dz / hz) ** 2 <= 1.0
        out[inside] = obj.cls[k]
    if obj.hollow:
        out[interior] = FREE  # never observed, like the inside of a real building
    if obj.instance >= 0 and not (out >= 0).any():
        # an annotated object smaller than the voxel spacing still occupies the voxel holding its centre
        base = np.argmin(
            (pts[:, 0] - ex.mean()) ** 2 + (pts[:, 1] - ey.mean()) ** 2 + (pts[:, 2] - obj.center[:, 2].mean()) ** 2
        )
        out[base] = obj.cls[0]
    return out if (out >= 0).any() else None


class VoxelProjector:
    """Pixel and depth of every voxel centre in a set of ego-mounted pinhole views (computed once).

    Args:
        views: (K [3, 3], cam2ego [4, 4], width, height) per view.
    """

    def __init__(self, views: list[tuple[np.ndarray, np.ndarray, int, int]]) -> None:
        pts = _CENTERS.reshape(-1, 3).astype(np.float64)
        self.pix = []
        self.depth = []
        self.t_exit = []  # per view: [H*W] camera depth at which each pixel's ray leaves the grid box
        lo, hi = np.array(PC_RANGE[:3]), np.array(PC_RANGE[3:])
        for K, cam2ego, w, h in views:
            u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
            pixels = np.stack([u, v, np.ones_like(u)], axis=-1).reshape(-1, 3)
            rays = pixels @ np.linalg.inv(K).T @ cam2ego[:3, :3].T  # ego frame, unit camera depth
            with np.errstate(divide="ignore", invalid="ignore"):
                ta = (lo - cam2ego[:3, 3]) / rays
                tb = (hi - cam2ego[:3, 3]) / rays
            self.t_exit.append(np.nan_to_num(np.maximum(ta, tb).min(axis=1), nan=0.0).astype(np.float32))
            ego2cam = np.linalg.inv(cam2ego)
            pc = pts @ ego2cam[:3, :3].T + ego2cam[:3, 3]
            z = pc[:, 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                u = pc[:, 0] / z * K[0, 0] + K[0, 2]
                v = pc[:, 1] / z * K[1, 1] + K[1, 2]
            ok = (z > 0.1) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
            idx = np.nonzero(ok)[0]
            self.pix.append((idx, (v[idx].astype(np.int64) * w + u[idx].astype(np.int64))))
            self.depth.append(z[idx].astype(np.float32))

    def visible(self, depth_maps: list[np.ndarray], tolerance: float = VISIBILITY_TOLERANCE) -> np.ndarray:
        """[200, 200, 16] uint8: 1 where some view sees the voxel.

        A voxel is seen when its pixel's ray ends on a surface inside the grid and the voxel centre is not
        behind that surface (z-depth test), i.e. it lies on a ray from the sensor to an occupied voxel, as in
        Occ3D's ray casting.  Rays into the sky or ending beyond the grid observe nothing.
        """
        vis = np.zeros(GRID[0] * GRID[1] * GRID[2], bool)
        for (idx, pix), z, dmap, ends in zip(self.pix, self.depth, depth_maps, self._ends_in_grid(depth_maps)):
            d = dmap.reshape(-1)[pix]
            seen = (z <= d + tolerance) & ends[pix]
            vis[idx[seen]] = True
        return vis.reshape(GRID).astype(np.uint8)

    def _ends_in_grid(self, depth_maps: list[np.ndarray]) -> list[np.ndarray]:
        """Per view, [H*W] bool: the pixel's surface lies inside the voxel grid (depth <= the ray's grid exit)."""
        return [
            np.isfinite(d := dmap.reshape(-1)) & (d <= t_exit + 0.2) for t_exit, dmap in zip(self.t_exit, depth_maps)
        ]
