"""The six nuScenes cameras and the roof LiDAR of the synthetic car: real nuScenes calibration, embedded.

The numbers in ``nuscenes_calibration.json`` are the calibration of nuScenes scene-0061 (v1.0-mini, log
n015-2018-07-24-11-22-45+0800) as stored in mmdetection3d's demo info file; see the file's ``source`` field.
They are embedded so that generating data never needs the nuScenes download.  Intrinsics are scaled to the
rendered image size (a pure resize of the native 1600 x 900 image: fx, cx scale with width, fy, cy with
height).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..batch import CAMERA_NAMES

CALIBRATION_FILE = Path(__file__).with_name("nuscenes_calibration.json")


def quaternion_to_matrix(wxyz) -> np.ndarray:
    """Unit quaternion [w, x, y, z] -> rotation matrix [3, 3] (float64)."""
    w, x, y, z = np.asarray(wxyz, dtype=np.float64) / np.linalg.norm(wxyz)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def yaw_to_quaternion(yaw: float) -> list[float]:
    """Rotation about +z by ``yaw`` rad as a nuScenes quaternion [w, x, y, z]."""
    return [float(np.cos(yaw / 2.0)), 0.0, 0.0, float(np.sin(yaw / 2.0))]


@dataclass(frozen=True)
class SensorCalibration:
    """One sensor's mounting on the ego vehicle (nuScenes ``calibrated_sensor``).

    Args:
        channel: nuScenes channel name, e.g. ``CAM_FRONT`` or ``LIDAR_TOP``.
        rotation_wxyz: sensor -> ego rotation quaternion [w, x, y, z].
        translation: sensor origin in the ego frame [3], m.
        intrinsics: [3, 3] pinhole K at the native 1600 x 900 resolution (cameras only, else None).
    """

    channel: str
    rotation_wxyz: tuple[float, float, float, float]
    translation: tuple[float, float, float]
    intrinsics: np.ndarray | None = None

    @property
    def sensor2ego(self) -> np.ndarray:
        """[4, 4] homogeneous sensor -> ego transform."""
        m = np.eye(4)
        m[:3, :3] = quaternion_to_matrix(self.rotation_wxyz)
        m[:3, 3] = self.translation
        return m

    def scaled_intrinsics(self, width: int, height: int, native: tuple[int, int] = (1600, 900)) -> np.ndarray:
        """K [3, 3] for an image resized from the native size to ``width`` x ``height``."""
        if self.intrinsics is None:
            raise ValueError(f"{self.channel} is not a camera; it has no intrinsics")
        k = self.intrinsics.copy()
        k[0] *= width / native[0]
        k[1] *= height / native[1]
        return k


@lru_cache(maxsize=1)
def _load() -> dict:
    with open(CALIBRATION_FILE) as f:
        return json.load(f)


def camera_calibrations() -> list[SensorCalibration]:
    """The six cameras in :data:`CAMERA_NAMES` order."""
    data = _load()
    out = []
    for name in CAMERA_NAMES:
        c = data["cameras"][name]
        k = np.array([[c["fx"], 0.0, c["cx"]], [0.0, c["fy"], c["cy"]], [0.0, 0.0, 1.0]])
        out.append(SensorCalibration(name, tuple(c["rotation_wxyz"]), tuple(c["translation"]), k))
    return out


def lidar_calibration() -> SensorCalibration:
    """LIDAR_TOP (nuScenes lidar frame: x right, y forward, z up)."""
    c = _load()["lidar"]["LIDAR_TOP"]
    return SensorCalibration("LIDAR_TOP", tuple(c["rotation_wxyz"]), tuple(c["translation"]))
