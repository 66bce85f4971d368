"""Lane-following paths of the synthetic world: polylines parameterised by arc length.

Every moving thing (ego, vehicles, cyclists, pedestrians) drives / walks along one :class:`Path`; its state is
the arc length ``s`` and the speed along it.  Poses are interpolated linearly between polyline vertices and
extrapolated along the last segment beyond the end.
"""

from __future__ import annotations

import numpy as np

DENSE_STEP = 1.0  # m between the cached samples used for projections and curvature look-ups


class Path:
    """A 2D polyline in the global frame with arc-length lookup.

    Args:
        points: [P, 2] vertices, m (at least two, consecutive duplicates are removed).
    """

    def __init__(self, points: np.ndarray) -> None:
        pts = np.asarray(points, dtype=np.float64)
        keep = np.concatenate([[True], np.linalg.norm(np.diff(pts, axis=0), axis=1) > 1e-6])
        pts = pts[keep]
        if len(pts) < 2:
            raise ValueError("a Path needs at least two distinct points")
        self.points = pts
        seg = np.diff(pts, axis=0)  # [P-1, 2]
        self.seg_len = np.linalg.norm(seg, axis=1)
        self.s = np.concatenate([[0.0], np.cumsum(self.seg_len)])  # [P] arc length at each vertex
        self.seg_heading = np.arctan2(seg[:, 1], seg[:, 0])  # [P-1]
        self.length = float(self.s[-1])
        self._dense: np.ndarray | None = None
        self._kappa: np.ndarray | None = None

    def dense(self) -> np.ndarray:
        """[M, 2] points every ``DENSE_STEP`` m from s = 0 to the end plus 80 m of extrapolation (cached)."""
        if self._dense is None:
            self._dense, _ = self.pose(np.arange(0.0, self.length + 80.0, DENSE_STEP))
        return self._dense

    def dense_curvature(self) -> np.ndarray:
        """[M] |curvature| at the dense samples (cached)."""
        if self._kappa is None:
            self._kappa = self.curvature(np.arange(0.0, self.length + 80.0, DENSE_STEP))
        return self._kappa

    def pose(self, s) -> tuple[np.ndarray, np.ndarray]:
        """Position [..., 2] and heading [...] (rad) at arc length(s) ``s``."""
        s = np.asarray(s, dtype=np.float64)
        i = np.clip(np.searchsorted(self.s, s, side="right") - 1, 0, len(self.seg_len) - 1)
        frac = s - self.s[i]
        heading = self.seg_heading[i]
        xy = self.points[i] + frac[..., None] * np.stack([np.cos(heading), np.sin(heading)], axis=-1)
        # smooth heading across vertices: blend with the next segment over the last metre of a segment
        nxt = np.minimum(i + 1, len(self.seg_len) - 1)
        w = np.clip(1.0 - (self.s[i + 1] - s), 0.0, 1.0) * 0.5 * (nxt != i)
        dh = np.angle(np.exp(1j * (self.seg_heading[nxt] - heading)))
        return xy, heading + w * dh

    def curvature(self, s) -> np.ndarray:
        """|curvature| (1/m) at ``s`` from the heading change over +-2 m."""
        s = np.asarray(s, dtype=np.float64)
        _, h0 = self.pose(s - 2.0)
        _, h1 = self.pose(s + 2.0)
        return np.abs(np.angle(np.exp(1j * (h1 - h0)))) / 4.0

    def project(self, xy: np.ndarray, s_lo: float, s_hi: float) -> tuple[np.ndarray, np.ndarray]:
        """Nearest path arc length within [s_lo, s_hi] for each point (on the 1 m dense samples).

        Args:
            xy: [N, 2] query points.
        Returns:
            (s [N], lateral distance [N]) of the nearest sample of the path in the window.
        """
        dense = self.dense()
        i0 = int(np.clip(np.ceil(s_lo / DENSE_STEP), 0, len(dense) - 1))
        i1 = int(np.clip(np.floor(s_hi / DENSE_STEP), i0, len(dense) - 1)) + 1
        pts = dense[i0:i1]  # [M, 2]
        diff = np.asarray(xy)[:, None, :] - pts[None]
        d2 = np.einsum("nmc,nmc->nm", diff, diff)  # [N, M]
        j = np.argmin(d2, axis=1)
        return (i0 + j) * DENSE_STEP, np.sqrt(d2[np.arange(len(j)), j])

    def offset(self, lateral: float) -> "Path":
        """The polyline shifted ``lateral`` m to the left (negative: right) of the direction of travel."""
        return Path(offset_polyline(self.points, lateral))

    def reversed(self) -> "Path":
        return Path(self.points[::-1].copy())


def offset_polyline(points: np.ndarray, lateral: float) -> np.ndarray:
    """Shift a polyline [P, 2] by ``lateral`` m along its left normal (vertex normals averaged)."""
    pts = np.asarray(points, dtype=np.float64)
    seg = np.diff(pts, axis=0)
    seg /= np.linalg.norm(seg, axis=1, keepdims=True)
    tang = np.concatenate([seg[:1], seg[:-1] + seg[1:], seg[-1:]], axis=0)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True)
    normal = np.stack([-tang[:, 1], tang[:, 0]], axis=1)
    return pts + lateral * normal


def bezier(p0, h0: float, p3, h3: float, n: int = 24) -> np.ndarray:
    """Cubic Bezier [n, 2] from ``p0`` (heading ``h0``) to ``p3`` (heading ``h3``), a smooth lane connector."""
    p0, p3 = np.asarray(p0, float), np.asarray(p3, float)
    k = 0.5523 * np.linalg.norm(p3 - p0) / np.sqrt(2.0)  # quarter-circle handle length for 90 degree turns
    p1 = p0 + k * np.array([np.cos(h0), np.sin(h0)])
    p2 = p3 - k * np.array([np.cos(h3), np.sin(h3)])
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3
