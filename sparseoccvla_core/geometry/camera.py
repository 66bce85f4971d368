"""Pinhole camera and rigid-pose geometry shared by the loaders, the pipeline and the calibration (paper sec. 3.1:
points are projected into the views with the intrinsics, cam2ego and ego poses).

Conventions (as :mod:`sparseoccvla_core.batch`): 4x4 homogeneous matrices map column vectors,
``p_dst = M @ [x, y, z, 1]``; cameras are OpenCV (x right, y down, z forward); pixel coordinates are continuous
with the image spanning ``[0, W) x [0, H)`` (pixel ``i`` covers ``[i, i + 1)``), the convention under which a
resize by ``s`` maps ``u -> s * u`` (BEVDet / SparseBEV do the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def quaternion_to_matrix(q_wxyz: Sequence[float]) -> np.ndarray:
    """Unit quaternion (w, x, y, z), nuScenes / pyquaternion order -> rotation matrix [3, 3] float64."""
    w, x, y, z = np.asarray(q_wxyz, dtype=np.float64) / np.linalg.norm(q_wxyz)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def pose_matrix(rotation_wxyz: Sequence[float], translation: Sequence[float]) -> np.ndarray:
    """nuScenes (rotation, translation) record -> 4x4 float64 transform (sensor -> ego, or ego -> global)."""
    m = np.eye(4)
    m[:3, :3] = quaternion_to_matrix(rotation_wxyz)
    m[:3, 3] = translation
    return m


def invert_pose(m: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms [..., 4, 4] (R^T, -R^T t), exact and cheaper than ``np.linalg.inv``."""
    out = np.zeros_like(m)
    rot_t = np.swapaxes(m[..., :3, :3], -1, -2)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", rot_t, m[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def transform_points(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to points [P, 3]; returns [P, 3] in the dtype of ``points``."""
    points = np.asarray(points)
    out = points.astype(np.float64) @ m[:3, :3].T + m[:3, 3]
    return out.astype(points.dtype if points.dtype.kind == "f" else np.float64)


def yaw_of(m: np.ndarray) -> np.ndarray:
    """Heading (rad) of the x axis of rotation(s) [..., 4, 4] or [..., 3, 3] in the parent's xy plane."""
    return np.arctan2(m[..., 1, 0], m[..., 0, 0])


def project_points(
    points_ego: np.ndarray,
    intrinsics: np.ndarray,
    cam2ego: np.ndarray,
    image_hw: tuple[int, int],
    min_depth: float = 0.1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project ego-frame points into one camera.

    Args:
        points_ego: [P, 3] points in the ego frame, m.
        intrinsics: [3, 3] pinhole K of the (possibly resized) image.
        cam2ego: [4, 4] camera -> ego.
        image_hw: (H, W) of that image.
        min_depth: points closer than this (camera z, m) count as behind the camera.
    Returns:
        uv: [P, 2] pixel coordinates (continuous, see module docstring),
        depth: [P] camera-frame z, m,
        inside: [P] bool, in front of the camera and within ``[0, W) x [0, H)``.
    """
    cam = transform_points(invert_pose(cam2ego), np.asarray(points_ego, dtype=np.float64))  # [P, 3]
    depth = cam[:, 2]
    uvw = cam @ np.asarray(intrinsics, dtype=np.float64).T  # [P, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = uvw[:, :2] / uvw[:, 2:3]
    h, w = image_hw
    inside = (depth > min_depth) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    return uv, depth, inside


@dataclass(frozen=True)
class ResizeCrop:
    """An image resize by ``scale`` followed by a crop of the window starting at ``(crop_x, crop_y)``.

    Args:
        scale: (sx, sy) resize factors (output pixels per input pixel).
        resized_hw: (H, W) after resizing, before cropping.
        crop_xy: (x0, y0) top-left corner of the crop in the resized image; may be negative (zero padding).
        out_hw: (H, W) of the final image.
    """

    scale: tuple[float, float]
    resized_hw: tuple[int, int]
    crop_xy: tuple[int, int]
    out_hw: tuple[int, int]

    def apply_to_intrinsics(self, k: np.ndarray) -> np.ndarray:
        """K [3, 3] of the input image -> K of the output image (u' = sx * u - x0, v' = sy * v - y0)."""
        sx, sy = self.scale
        x0, y0 = self.crop_xy
        a = np.array([[sx, 0.0, -x0], [0.0, sy, -y0], [0.0, 0.0, 1.0]])
        return a @ np.asarray(k, dtype=np.float64)


def resize_crop_for(
    in_hw: tuple[int, int],
    out_hw: tuple[int, int],
    scale_factor: float = 1.0,
    bottom_fraction: float = 0.0,
    x_fraction: float = 0.5,
) -> ResizeCrop:
    """The BEVDet / SparseBEV test-time transform from an input size to ``out_hw``.

    The image is scaled (aspect kept) so that it covers ``out_hw`` (``s = max(H'/H, W'/W) * scale_factor``), then
    cropped: vertically the sky is cut and the bottom kept (``bottom_fraction`` of the resized height is cut
    from the bottom, 0 by default), horizontally at ``x_fraction`` of the spare width (centred by default).
    nuScenes 1600x900 -> 704x256: s = 0.44, resized 704x396, the top 140 rows cut (paper / SparseBEV setting).

    Args:
        in_hw: input (H, W).
        out_hw: output (H, W).
        scale_factor: extra scale (augmentation), 1 = cover exactly.
        bottom_fraction: fraction of the resized height cut from the bottom (augmentation).
        x_fraction: position of the horizontal crop in [0, 1].
    Returns:
        The :class:`ResizeCrop`.
    """
    (h, w), (oh, ow) = in_hw, out_hw
    s = max(oh / h, ow / w) * scale_factor
    rh, rw = int(round(h * s)), int(round(w * s))
    y0 = int(round(rh * (1.0 - bottom_fraction))) - oh
    x0 = int(round((rw - ow) * x_fraction))
    # Exact per-axis factors of the integer resized size (what cv2.resize does), so intrinsics stay exact.
    return ResizeCrop(scale=(rw / w, rh / h), resized_hw=(rh, rw), crop_xy=(x0, y0), out_hw=(oh, ow))
