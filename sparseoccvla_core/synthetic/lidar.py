"""Simulated roof LiDAR (LIDAR_TOP): a 32-beam, 360-degree sweep from the rendered depth of the world.

The sensor sits at the real nuScenes LIDAR_TOP mounting (embedded calibration).  Its field of view is covered
by three 120-degree virtual pinhole views at the sensor origin (vertical +11 to -31 degrees), rendered depth-only
by :mod:`render`.  Each beam (32 elevations from -30.67 to +10.67 degrees, the Velodyne HDL-32E pattern used by
nuScenes, times ``azimuths`` directions) reads its pixel; the surface point on that pixel's ray (at most half a
pixel, 0.13 degrees, off the nominal beam, so points lie exactly on surfaces) within ``max_range`` becomes a point
``(x, y, z, intensity, ring)`` in the LiDAR frame (x right, y forward, z up), the nuScenes ``.pcd.bin`` layout.
The same panorama gives the Occ3D ``mask_lidar``.
"""

from __future__ import annotations

import numpy as np

from .calibration import SensorCalibration
from .render import Camera, View

BEAM_ELEVATIONS_DEG = np.linspace(-30.67, 10.67, 32)
TOP_DEG, BOTTOM_DEG = 11.0, 31.0
# Return intensity (0-255) per Occ3D class: retro-reflective paint / signs bright, asphalt dark.
_INTENSITY = np.array([30, 40, 25, 35, 30, 30, 30, 15, 60, 30, 30, 8, 12, 20, 6, 25, 5, 0], np.float32)


NUM_VIEWS = 3
VIEW_FOV = 2 * np.pi / NUM_VIEWS


def virtual_views(lidar: SensorCalibration, width: int = 480) -> list[Camera]:
    """Three 120-degree pinhole views (yaw 0, 120, 240 degrees in the ego frame) at the LiDAR origin."""
    f = 0.5 * width / np.tan(0.5 * VIEW_FOV)
    cy = f * np.tan(np.radians(TOP_DEG))
    height = int(np.ceil(cy + f * np.tan(np.radians(BOTTOM_DEG))))
    K = np.array([[f, 0.0, 0.5 * width], [0.0, f, cy], [0.0, 0.0, 1.0]])
    views = []
    for k in range(NUM_VIEWS):
        yaw = k * VIEW_FOV
        m = np.eye(4)
        m[:3, 0] = [np.sin(yaw), -np.cos(yaw), 0.0]  # camera x (right)
        m[:3, 1] = [0.0, 0.0, -1.0]  # camera y (down)
        m[:3, 2] = [np.cos(yaw), np.sin(yaw), 0.0]  # camera z (forward)
        m[:3, 3] = lidar.translation
        views.append(Camera(f"LIDAR_VIEW_{k}", K, m, width, height))
    return views


class LidarModel:
    """Beam pattern of the sweep, pre-projected into the virtual views.

    Args:
        lidar: LIDAR_TOP calibration.
        views: the virtual views from :func:`virtual_views`.
        azimuths: directions per revolution.
        max_range: farthest return, m.
    """

    def __init__(self, lidar: SensorCalibration, views: list[Camera], azimuths: int = 1080, max_range: float = 70.0):
        self.lidar = lidar
        self.views = views
        self.max_range = max_range
        el = np.radians(BEAM_ELEVATIONS_DEG)[:, None]
        az = (np.arange(azimuths) * 2 * np.pi / azimuths)[None, :]
        dirs = np.stack(
            np.broadcast_arrays(np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)), -1
        )  # [32, A, 3]
        self.dirs = dirs.reshape(-1, 3)  # [32 * A, 3] ego-frame unit directions
        self.ring = np.repeat(np.arange(len(BEAM_ELEVATIONS_DEG)), azimuths).astype(np.float32)
        sector = np.floor(((az[0] + 0.5 * VIEW_FOV) % (2 * np.pi)) / VIEW_FOV).astype(int) % NUM_VIEWS
        self.view_of = np.tile(sector, len(BEAM_ELEVATIONS_DEG))
        self.pix = np.zeros(len(self.dirs), np.int64)
        self.pix_rays = np.zeros((len(self.dirs), 3))  # ego-frame ray of each beam's pixel, unit camera depth
        for k, cam in enumerate(views):
            sel = self.view_of == k
            dc = self.dirs[sel] @ cam.cam2ego[:3, :3]  # ego -> camera rotation (transpose)
            u = np.clip((dc[:, 0] / dc[:, 2] * cam.K[0, 0] + cam.K[0, 2]).astype(int), 0, cam.width - 1)
            v = np.clip((dc[:, 1] / dc[:, 2] * cam.K[1, 1] + cam.K[1, 2]).astype(int), 0, cam.height - 1)
            self.pix[sel] = v * cam.width + u
            self.pix_rays[sel] = cam.rays_cam[self.pix[sel]] @ cam.cam2ego[:3, :3].T

    def sweep(self, views: list[View], rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """Points [M, 5] float32 (x, y, z, intensity, ring) in the LiDAR frame and their instance ids [M]."""
        depth = np.empty(len(self.dirs), np.float32)
        cls = np.empty(len(self.dirs), np.uint8)
        inst = np.empty(len(self.dirs), np.int32)
        for k, view in enumerate(views):
            sel = self.view_of == k
            depth[sel] = view.depth.reshape(-1)[self.pix[sel]]
            cls[sel] = view.cls.reshape(-1)[self.pix[sel]]
            inst[sel] = view.instance.reshape(-1)[self.pix[sel]]
        ray_len = np.linalg.norm(self.pix_rays, axis=1)
        rng_m = depth * ray_len
        keep = np.isfinite(rng_m) & (rng_m < self.max_range) & (rng_m > 1.0)
        r = rng_m[keep]
        if rng is not None:
            r = r + rng.normal(0.0, 0.02, r.shape)  # 2 cm range noise (HDL-32E spec)
        p_ego = np.asarray(self.lidar.translation) + (r / ray_len[keep])[:, None] * self.pix_rays[keep]
        s2e = self.lidar.sensor2ego
        p_lidar = (p_ego - s2e[:3, 3]) @ s2e[:3, :3]  # ego -> lidar (inverse rotation)
        intensity = _INTENSITY[cls[keep]]
        if rng is not None:
            intensity = np.clip(intensity + rng.normal(0.0, 3.0, intensity.shape), 0, 255)
        pts = np.concatenate([p_lidar, intensity[:, None], self.ring[keep, None]], axis=1).astype(np.float32)
        return pts, inst[keep]
