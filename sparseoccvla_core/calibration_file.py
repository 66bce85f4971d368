"""The camera calibration YAML and the rule that combines it with live calibration sources.  Pure Python (no ROS).

A file format, not a message conversion: ``sparseoccvla calibration`` and the bag converter write it, the driving
node (``sparseoccvla_ros/driving_node.py``) reads it, and :func:`resolve_camera_models` decides, per camera, which
source of extrinsics and intrinsics wins.  The message side (``/tf_static`` -> cam2ego, CameraInfo -> K) lives in
``sparseoccvla_ros/conversions.py``; this module only sees their results as numpy arrays.

Schema (``calibration_file`` of the node; the bag converter writes one beside every bag)::

    format: sparseoccvla_calibration        # required, identifies the file
    version: 1                              # required
    ego_frame: base_link                    # frame the extrinsics map into (the ego / vehicle frame)
    cameras:                                # required: one entry per camera, keyed by nuScenes camera name
      CAM_FRONT:
        frame_id: CAM_FRONT                 # optional, the camera's TF frame (default: the camera name)
        translation: [1.70, 0.016, 1.51]    # required, camera origin in the ego frame, m
        rotation_wxyz: [0.50, -0.50, 0.50, -0.50]  # required, camera -> ego rotation, unit quaternion (w, x, y, z)
                                            #   (nuScenes calibrated_sensor order; camera axes x right, y down, z forward)
        image_size: [1600, 900]             # optional, width, height in pixels of the published image
        intrinsics: [[1266.4, 0, 816.3], [0, 1266.4, 491.5], [0, 0, 1]]  # optional K, used until a CameraInfo arrives
      CAM_FRONT_RIGHT: {...}

The translation + quaternion form is nuScenes' ``calibrated_sensor`` record, so a converter copies it verbatim.

Precedence (one rule, :func:`resolve_camera_models`), per camera:

* extrinsics (cam2ego): a complete ``/tf_static`` chain from the ego frame to the camera's frame wins; the YAML
  entry is the fallback;
* intrinsics (K, image size): the latest CameraInfo wins; the YAML ``intrinsics`` (+ ``image_size``) are the
  fallback;
* a camera with neither source for either part makes the whole set unusable: :class:`CalibrationIncompleteError`
  names every such camera and what to provide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import yaml

from .batch import CAMERA_NAMES
from .geometry.camera import pose_matrix

CALIBRATION_FORMAT = "sparseoccvla_calibration"
CALIBRATION_VERSION = 1

#: Where a camera's extrinsics / intrinsics came from (reported in diagnostics).
SOURCE_TF_STATIC = "tf_static"
SOURCE_CAMERA_INFO = "camera_info"
SOURCE_CALIBRATION_FILE = "calibration_file"


@dataclass
class CameraCalibration:
    """Calibration of one camera, as stored in the YAML.

    Args:
        name: nuScenes camera name.
        cam2ego: [4, 4] camera -> ego transform.
        frame_id: TF frame of the camera.
        intrinsics: [3, 3] K (optional; CameraInfo takes precedence).
        image_wh: (W, H) pixels the intrinsics belong to (optional; the YAML's ``image_size: [width, height]``).
    """

    name: str
    cam2ego: np.ndarray
    frame_id: str
    intrinsics: Optional[np.ndarray] = None
    image_wh: Optional[tuple[int, int]] = None


def matrix_to_wxyz(rot: np.ndarray) -> list[float]:
    """Rotation matrix [3, 3] -> unit quaternion (w, x, y, z) with w >= 0 (Shepperd's method)."""
    m = np.asarray(rot, dtype=np.float64)
    tr = np.trace(m)
    if tr > 0:
        s = math.sqrt(tr + 1.0) * 2
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.asarray(q) / np.linalg.norm(q)
    return (q if q[0] >= 0 else -q).tolist()


def save_calibration(path: str | Path, cameras: Mapping[str, CameraCalibration], ego_frame: str = "base_link") -> Path:
    """Write the calibration YAML (schema in the module docstring).  Returns the path."""
    entries: dict[str, Any] = {}
    for name, cal in cameras.items():
        m = np.asarray(cal.cam2ego, dtype=np.float64)
        entry: dict[str, Any] = {
            "frame_id": cal.frame_id,
            "translation": [float(x) for x in m[:3, 3]],
            "rotation_wxyz": [float(x) for x in matrix_to_wxyz(m[:3, :3])],
        }
        if cal.image_wh is not None:
            entry["image_size"] = [int(cal.image_wh[0]), int(cal.image_wh[1])]
        if cal.intrinsics is not None:
            entry["intrinsics"] = np.asarray(cal.intrinsics, dtype=np.float64).tolist()
        entries[name] = entry
    doc = {"format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION, "ego_frame": ego_frame, "cameras": entries}
    path = Path(path)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _numbers(path: Path, camera: str, key: str, value: Any) -> np.ndarray:
    """``cameras.<camera>.<key>`` as a float array; a value that is not numeric names file, camera and field."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: cameras.{camera}.{key} must hold numbers, got {value!r}") from None


def load_calibration(path: str | Path) -> tuple[dict[str, CameraCalibration], str]:
    """Read the calibration YAML.

    Returns:
        ({camera name: CameraCalibration}, ego frame id).
    Raises:
        FileNotFoundError: missing file.  ValueError: a schema violation, naming the key to fix.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"calibration file {path} is a directory: give the calibration YAML inside it")
    if not path.is_file():
        raise FileNotFoundError(f"calibration file {path} not found (set calibration_file to the YAML beside the bag)")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ValueError(
            f"{path}: not valid YAML{where} ({problem}); fix the file or rewrite it with 'sparseoccvla calibration'"
        ) from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file (a calibration YAML is expected)") from None
    if not isinstance(doc, dict) or doc.get("format") != CALIBRATION_FORMAT:
        raise ValueError(f"{path}: not a SparseOccVLA calibration file (expected 'format: {CALIBRATION_FORMAT}')")
    if doc.get("version") != CALIBRATION_VERSION:
        raise ValueError(
            f"{path}: unsupported calibration version {doc.get('version')!r} (expected {CALIBRATION_VERSION})"
        )
    cams = doc.get("cameras")
    if not isinstance(cams, dict) or not cams:
        raise ValueError(f"{path}: 'cameras' must map camera names to their calibration")
    out = {}
    for name, entry in cams.items():
        if name not in CAMERA_NAMES:
            raise ValueError(f"{path}: unknown camera '{name}'; expected names from {list(CAMERA_NAMES)}")
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: cameras.{name} must be a mapping")
        for key in ("translation", "rotation_wxyz"):
            if key not in entry:
                raise ValueError(f"{path}: cameras.{name}.{key} is required")
        t = _numbers(path, name, "translation", entry["translation"])
        q = _numbers(path, name, "rotation_wxyz", entry["rotation_wxyz"])
        if t.shape != (3,) or q.shape != (4,) or not np.all(np.isfinite(t)) or not np.all(np.isfinite(q)):
            raise ValueError(f"{path}: cameras.{name} needs translation [x, y, z] and rotation_wxyz [w, x, y, z]")
        if abs(np.linalg.norm(q) - 1.0) > 1e-3:
            raise ValueError(
                f"{path}: cameras.{name}.rotation_wxyz is not a unit quaternion (norm {np.linalg.norm(q):.4f})"
            )
        k = entry.get("intrinsics")
        if k is not None:
            k = _numbers(path, name, "intrinsics", k)
            if k.shape != (3, 3):
                raise ValueError(f"{path}: cameras.{name}.intrinsics must be a 3x3 matrix")
        size = entry.get("image_size")
        if size is not None:
            size = _numbers(path, name, "image_size", size)
            if size.shape != (2,) or not np.all(size > 0) or not np.all(size == np.round(size)):
                raise ValueError(f"{path}: cameras.{name}.image_size must be [width, height] in pixels, got {size}")
        out[name] = CameraCalibration(
            name=name,
            cam2ego=pose_matrix(q, t),
            frame_id=str(entry.get("frame_id", name)),
            intrinsics=k,
            image_wh=(int(size[0]), int(size[1])) if size is not None else None,
        )
    return out, str(doc.get("ego_frame", "base_link"))


# ----------------------------------------------------------------------------------------------- precedence
class CalibrationIncompleteError(ValueError):
    """Some cameras have no extrinsics or no intrinsics from any source; the text names them and the fix."""


@dataclass(frozen=True)
class CameraModel:
    """The calibration the node uses for one camera, with where each part came from.

    Args:
        name: nuScenes camera name.
        cam2ego: [4, 4] camera -> ego transform.
        intrinsics: [3, 3] K at ``image_wh``.
        image_wh: (W, H) the intrinsics belong to, pixels; None when unknown (YAML K without image_size).
        extrinsics_source: :data:`SOURCE_TF_STATIC` or :data:`SOURCE_CALIBRATION_FILE`.
        intrinsics_source: :data:`SOURCE_CAMERA_INFO` or :data:`SOURCE_CALIBRATION_FILE`.
    """

    name: str
    cam2ego: np.ndarray
    intrinsics: np.ndarray
    image_wh: Optional[tuple[int, int]]
    extrinsics_source: str
    intrinsics_source: str

    @property
    def image_size(self) -> Optional[tuple[int, int]]:
        """The former name of :attr:`image_wh` ((W, H)), still read by ``sparseoccvla_ros/driving_node.py``."""
        return self.image_wh


def camera_frame_ids(
    cameras: Sequence[str], info_frames: Mapping[str, str], yaml_cal: Mapping[str, CameraCalibration]
) -> dict[str, str]:
    """TF frame of each camera: its CameraInfo ``header.frame_id``, else the YAML ``frame_id``, else its name."""
    out = {}
    for cam in cameras:
        frame = info_frames.get(cam) or ""
        if not frame and cam in yaml_cal:
            frame = yaml_cal[cam].frame_id
        out[cam] = frame or cam
    return out


def resolve_camera_models(
    cameras: Sequence[str],
    yaml_cal: Mapping[str, CameraCalibration],
    tf_cam2ego: Mapping[str, np.ndarray],
    camera_info: Mapping[str, tuple[np.ndarray, tuple[int, int]]],
    tf_available: bool = True,
) -> dict[str, CameraModel]:
    """Apply the precedence rule of the module docstring to every camera.

    Args:
        cameras: camera names, in model order.
        yaml_cal: the calibration YAML's cameras (may be empty).
        tf_cam2ego: {camera: [4, 4] cam2ego} from ``/tf_static`` (complete chains only).
        camera_info: {camera: (K [3, 3], (H, W))} from the latest CameraInfo of each camera.
        tf_available: whether ``/tf_static`` is subscribed (only changes the advice in the error text).
    Returns:
        {camera: CameraModel} for every camera.
    Raises:
        CalibrationIncompleteError: a camera lacks extrinsics or intrinsics from every source.
    """
    out: dict[str, CameraModel] = {}
    no_extrinsics, no_intrinsics = [], []
    for cam in cameras:
        cal = yaml_cal.get(cam)
        if cam in tf_cam2ego:
            cam2ego, ext_src = np.asarray(tf_cam2ego[cam], dtype=np.float64), SOURCE_TF_STATIC
        elif cal is not None:
            cam2ego, ext_src = np.asarray(cal.cam2ego, dtype=np.float64), SOURCE_CALIBRATION_FILE
        else:
            no_extrinsics.append(cam)
            cam2ego = ext_src = None
        if cam in camera_info:
            k, (h, w) = camera_info[cam]
            size: Optional[tuple[int, int]] = (int(w), int(h)) if h > 0 and w > 0 else None
            intr_src = SOURCE_CAMERA_INFO
        elif cal is not None and cal.intrinsics is not None:
            k, size, intr_src = cal.intrinsics, cal.image_wh, SOURCE_CALIBRATION_FILE
        else:
            no_intrinsics.append(cam)
            k = intr_src = None
        if cam2ego is not None and k is not None:
            out[cam] = CameraModel(cam, cam2ego, np.asarray(k, dtype=np.float64), size, ext_src, intr_src)
    problems = []
    if no_extrinsics:
        where = (
            "publish them on /tf_static or add them to calibration_file"
            if tf_available
            else ("add them to calibration_file (/tf_static is not subscribed: tf2_msgs does not import)")
        )
        problems.append(f"no extrinsics (cam2ego) for cameras {no_extrinsics}: {where}")
    if no_intrinsics:
        problems.append(
            f"no intrinsics for cameras {no_intrinsics}: publish their CameraInfo or add intrinsics to calibration_file"
        )
    if problems:
        raise CalibrationIncompleteError("; ".join(problems))
    return out


__all__ = [
    "CALIBRATION_FORMAT",
    "CALIBRATION_VERSION",
    "SOURCE_CALIBRATION_FILE",
    "SOURCE_CAMERA_INFO",
    "SOURCE_TF_STATIC",
    "CalibrationIncompleteError",
    "CameraCalibration",
    "CameraModel",
    "camera_frame_ids",
    "load_calibration",
    "matrix_to_wxyz",
    "resolve_camera_models",
    "save_calibration",
]
