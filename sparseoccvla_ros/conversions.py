"""ROS messages <-> SparseOccVLA core types (DESIGN.md §5).  The only module that knows both.

Inputs:

* ``sensor_msgs/CompressedImage`` (JPEG / PNG) and raw ``sensor_msgs/Image`` (rgb8, bgr8, mono8) -> [H, W, 3]
  uint8 RGB.  A JPEG may be decoded directly at 1/2, 1/4 or 1/8 size (libjpeg DCT scaling) when the model
  input is that much smaller; the returned factor scales the intrinsics exactly.
* ``sensor_msgs/CameraInfo`` -> K [3, 3]; ``nav_msgs/Odometry`` -> :class:`OdometrySample`.
* The **calibration YAML** (camera -> ego extrinsics; schema below) and ``/tf_static`` transforms.

Outputs: ``sensor_msgs/PointCloud2`` (x, y, z float32, class uint8, score float32 [, time float32]),
``sparseoccvla_msgs/OccupancyForecast``, ``sparseoccvla_msgs/DrivingPlan`` + ``nav_msgs/Path``,
``visualization_msgs/MarkerArray`` and ``diagnostic_msgs/DiagnosticArray``.  Point-cloud ``data`` is always set
from ``bytes`` (a memoryview is ~40x slower in these rclpy wheels, ROS_NOTES.md §1.e).

Calibration YAML schema (``calibration_file``; the bag converter writes one beside every bag)::

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import cv2
import numpy as np
import yaml
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Pose, PoseStamped, Quaternion
from nav_msgs.msg import Odometry, Path as PathMsg
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from sparseoccvla_core.batch import CAMERA_NAMES, OCC3D_CLASSES
from sparseoccvla_core.data.camera import pose_matrix
from sparseoccvla_core.data.images import CorruptImageError
from sparseoccvla_core.pipeline import OccupancyFrame, PlanResult, StepResult, path_headings
from sparseoccvla_msgs.msg import AnchorTrajectory, DrivingPlan, OccupancyForecast

from .synchronizer import NS_PER_S, OdometrySample

CALIBRATION_FORMAT = "sparseoccvla_calibration"
CALIBRATION_VERSION = 1

#: PointCloud2 layout of occupancy clouds (packed, little-endian; 17 bytes per point).
OCCUPANCY_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("class", "u1"), ("score", "<f4")])
#: Forecast cloud for RViz: the occupancy layout + ``time`` (s after the header stamp); 21 bytes per point.
FORECAST_DTYPE = np.dtype(
    [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("class", "u1"), ("score", "<f4"), ("time", "<f4")]
)

_NUMPY_TO_POINTFIELD = {
    np.dtype("int8"): PointField.INT8, np.dtype("uint8"): PointField.UINT8,
    np.dtype("int16"): PointField.INT16, np.dtype("uint16"): PointField.UINT16,
    np.dtype("int32"): PointField.INT32, np.dtype("uint32"): PointField.UINT32,
    np.dtype("float32"): PointField.FLOAT32, np.dtype("float64"): PointField.FLOAT64,
}
_POINTFIELD_TO_NUMPY = {v: k for k, v in _NUMPY_TO_POINTFIELD.items()}

#: RGB colour per Occ3D class (0..16), the palette commonly used to draw Occ3D-nuScenes occupancy.
CLASS_COLORS: np.ndarray = np.array(
    [
        (0, 0, 0), (255, 120, 50), (255, 192, 203), (255, 255, 0), (0, 150, 245), (0, 255, 255),
        (200, 180, 0), (255, 0, 0), (255, 240, 150), (135, 60, 0), (160, 32, 240), (255, 0, 255),
        (139, 137, 137), (75, 0, 75), (150, 240, 80), (230, 230, 250), (0, 175, 0),
    ],
    dtype=np.float32,
) / 255.0


class ConversionError(ValueError):
    """A message cannot be converted (unsupported encoding, wrong size, NaN values); the text says what is wrong."""


# ----------------------------------------------------------------------------------------------- time
def stamp_to_ns(stamp: Time) -> int:
    """builtin_interfaces/Time -> ns."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    """ns -> builtin_interfaces/Time."""
    ns = int(ns)
    return Time(sec=ns // NS_PER_S, nanosec=ns % NS_PER_S)


def make_header(stamp_ns: int, frame_id: str) -> Header:
    return Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)


# ----------------------------------------------------------------------------------------------- images
_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def decode_compressed_image(msg: CompressedImage, reduction: int = 1) -> np.ndarray:
    """CompressedImage (JPEG / PNG) -> [H, W, 3] uint8 RGB.

    Args:
        msg: the message (``format`` e.g. "jpeg", "rgb8; jpeg compressed bgr8", "png").
        reduction: decode at 1/reduction size (1, 2, 4 or 8; exact for JPEG when both sides divide by it): pixel
            ``j`` of the result covers input pixels ``[r j, r (j + 1))``, so K scales by ``1 / r``.
    Raises:
        CorruptImageError: empty, truncated or undecodable data (names the frame id and the format).
    """
    if reduction not in _REDUCED:
        raise ValueError(f"reduction must be 1, 2, 4 or 8, got {reduction}")
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    where = f"CompressedImage from frame '{msg.header.frame_id}' (format '{msg.format}')"
    if data.size < 4:
        raise CorruptImageError(f"{where} has no image data ({data.size} bytes)")
    is_jpeg = data[0] == 0xFF and data[1] == 0xD8
    if is_jpeg and bytes(data[-2:]) != b"\xff\xd9" and bytes(np.trim_zeros(data, "b")[-2:]) != b"\xff\xd9":
        raise CorruptImageError(f"{where} is a truncated JPEG (no EOI marker)")
    img = cv2.imdecode(data, _REDUCED[reduction] if is_jpeg else cv2.IMREAD_COLOR)
    if img is None:
        raise CorruptImageError(f"{where} could not be decoded (corrupt data)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def jpeg_reduction(msg: CompressedImage, target_hw: Sequence[int]) -> int:
    """Largest exact JPEG reduction (8, 4, 2, 1) keeping the decoded image at least ``target_hw`` after a cover-resize.

    The model resizes an (H, W) image by ``s = max(H'/H, W'/W)`` and crops; decoding at 1/r is exact when r divides
    H and W, and loses nothing when ``H / r >= s H`` and ``W / r >= s W``.
    """
    from sparseoccvla_core.data.images import jpeg_size

    data = bytes(msg.data)
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        return 1
    try:
        h, w = jpeg_size(data)
    except CorruptImageError:
        return 1
    th, tw = int(target_hw[0]), int(target_hw[1])
    s = max(th / h, tw / w)
    rh, rw = math.ceil(h * s), math.ceil(w * s)
    for r in (8, 4, 2):
        if h % r == 0 and w % r == 0 and h // r >= rh and w // r >= rw:
            return r
    return 1


def image_to_rgb(msg: Image) -> np.ndarray:
    """Raw sensor_msgs/Image (rgb8, bgr8, mono8) -> [H, W, 3] uint8 RGB (copies; honours ``step`` padding).

    Raises:
        ConversionError: unsupported encoding or a data size that disagrees with height x step.
    """
    channels = {"rgb8": 3, "bgr8": 3, "mono8": 1}
    enc = msg.encoding.lower()
    if enc not in channels:
        raise ConversionError(f"Image encoding '{msg.encoding}' is not supported; publish rgb8, bgr8 or mono8")
    c, h, w, step = channels[enc], int(msg.height), int(msg.width), int(msg.step)
    if h == 0 or w == 0:
        raise ConversionError(f"Image from frame '{msg.header.frame_id}' is empty ({w}x{h})")
    if step < w * c or len(msg.data) < h * step:
        raise ConversionError(
            f"Image from frame '{msg.header.frame_id}': {len(msg.data)} bytes do not hold {h} rows of step {step} "
            f"for {w}x{h} {enc}"
        )
    rows = np.frombuffer(bytes(msg.data), dtype=np.uint8, count=h * step).reshape(h, step)  # [H, step]
    img = rows[:, : w * c].reshape(h, w, c)  # [H, W, C]
    if enc == "rgb8":
        return img.copy()
    if enc == "bgr8":
        return np.ascontiguousarray(img[:, :, ::-1])
    return np.repeat(img, 3, axis=2)


def camera_info_to_intrinsics(msg: CameraInfo) -> tuple[np.ndarray, tuple[int, int]]:
    """CameraInfo -> (K [3, 3] float64, (H, W)).

    Raises:
        ConversionError: a zero / non-finite K (an uncalibrated camera).
    """
    k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(k)) or k[0, 0] <= 0 or k[1, 1] <= 0 or k[2, 2] != 1.0:
        raise ConversionError(
            f"CameraInfo of frame '{msg.header.frame_id}' has no valid K (fx, fy > 0, K[2][2] = 1): {k.tolist()}"
        )
    return k, (int(msg.height), int(msg.width))


def scale_intrinsics(k: np.ndarray, factor: float) -> np.ndarray:
    """K of an image resized by ``factor`` (pixel-area convention: u' = factor * u)."""
    out = np.asarray(k, dtype=np.float64).copy()
    out[:2] *= factor
    return out


# ----------------------------------------------------------------------------------------------- odometry
def odometry_to_sample(msg: Odometry) -> OdometrySample:
    """nav_msgs/Odometry -> :class:`OdometrySample` (pose in ``header.frame_id``, twist in ``child_frame_id``).

    Raises:
        ConversionError: NaN / Inf anywhere in pose or twist, or a zero quaternion.
    """
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    v, w = msg.twist.twist.linear, msg.twist.twist.angular
    sample = OdometrySample(
        stamp_ns=stamp_to_ns(msg.header.stamp),
        position=np.array([p.x, p.y, p.z], dtype=np.float64),
        orientation_xyzw=np.array([q.x, q.y, q.z, q.w], dtype=np.float64),
        linear_velocity=np.array([v.x, v.y, v.z], dtype=np.float64),
        angular_velocity=np.array([w.x, w.y, w.z], dtype=np.float64),
    )
    for name in ("position", "orientation_xyzw", "linear_velocity", "angular_velocity"):
        if not np.all(np.isfinite(getattr(sample, name))):
            raise ConversionError(f"Odometry {name} contains NaN or Inf (stamp {sample.stamp_ns} ns)")
    if np.linalg.norm(sample.orientation_xyzw) < 1e-6:
        raise ConversionError(f"Odometry orientation is a zero quaternion (stamp {sample.stamp_ns} ns)")
    return sample


# ----------------------------------------------------------------------------------------------- calibration
@dataclass
class CameraCalibration:
    """Calibration of one camera.

    Args:
        name: nuScenes camera name.
        cam2ego: [4, 4] camera -> ego transform.
        frame_id: TF frame of the camera.
        intrinsics: [3, 3] K (optional; CameraInfo takes precedence).
        image_size: (W, H) pixels (optional).
    """

    name: str
    cam2ego: np.ndarray
    frame_id: str
    intrinsics: Optional[np.ndarray] = None
    image_size: Optional[tuple[int, int]] = None


def _matrix_to_wxyz(rot: np.ndarray) -> list[float]:
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
    """Write the calibration YAML (schema in the module docstring)."""
    entries: dict[str, Any] = {}
    for name, cal in cameras.items():
        m = np.asarray(cal.cam2ego, dtype=np.float64)
        entry: dict[str, Any] = {
            "frame_id": cal.frame_id,
            "translation": [float(x) for x in m[:3, 3]],
            "rotation_wxyz": [float(x) for x in _matrix_to_wxyz(m[:3, :3])],
        }
        if cal.image_size is not None:
            entry["image_size"] = [int(cal.image_size[0]), int(cal.image_size[1])]
        if cal.intrinsics is not None:
            entry["intrinsics"] = np.asarray(cal.intrinsics, dtype=np.float64).tolist()
        entries[name] = entry
    doc = {"format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION, "ego_frame": ego_frame, "cameras": entries}
    path = Path(path)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def load_calibration(path: str | Path) -> tuple[dict[str, CameraCalibration], str]:
    """Read the calibration YAML.

    Returns:
        ({camera name: CameraCalibration}, ego frame id).
    Raises:
        FileNotFoundError: missing file.  ValueError: a schema violation, naming the key to fix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"calibration file {path} not found (set calibration_file to the YAML beside the bag)")
    doc = yaml.safe_load(path.read_text()) or {}
    if not isinstance(doc, dict) or doc.get("format") != CALIBRATION_FORMAT:
        raise ValueError(f"{path}: not a SparseOccVLA calibration file (expected 'format: {CALIBRATION_FORMAT}')")
    if doc.get("version") != CALIBRATION_VERSION:
        raise ValueError(f"{path}: unsupported calibration version {doc.get('version')!r} (expected {CALIBRATION_VERSION})")
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
        t = np.asarray(entry["translation"], dtype=np.float64)
        q = np.asarray(entry["rotation_wxyz"], dtype=np.float64)
        if t.shape != (3,) or q.shape != (4,) or not np.all(np.isfinite(t)) or not np.all(np.isfinite(q)):
            raise ValueError(f"{path}: cameras.{name} needs translation [x, y, z] and rotation_wxyz [w, x, y, z]")
        if abs(np.linalg.norm(q) - 1.0) > 1e-3:
            raise ValueError(f"{path}: cameras.{name}.rotation_wxyz is not a unit quaternion (norm {np.linalg.norm(q):.4f})")
        k = entry.get("intrinsics")
        if k is not None:
            k = np.asarray(k, dtype=np.float64)
            if k.shape != (3, 3):
                raise ValueError(f"{path}: cameras.{name}.intrinsics must be a 3x3 matrix")
        size = entry.get("image_size")
        out[name] = CameraCalibration(
            name=name,
            cam2ego=pose_matrix(q, t),
            frame_id=str(entry.get("frame_id", name)),
            intrinsics=k,
            image_size=(int(size[0]), int(size[1])) if size is not None else None,
        )
    return out, str(doc.get("ego_frame", "base_link"))


def transform_to_matrix(translation: Any, rotation: Any) -> np.ndarray:
    """geometry_msgs Vector3 + Quaternion (x, y, z, w) -> [4, 4]."""
    return pose_matrix((rotation.w, rotation.x, rotation.y, rotation.z), (translation.x, translation.y, translation.z))


def tf_to_cam2ego(
    transforms: Iterable[Any], ego_frame: str, camera_frames: Mapping[str, str]
) -> dict[str, np.ndarray]:
    """cam2ego of every camera reachable from ``ego_frame`` in a set of static transforms (``/tf_static``).

    Args:
        transforms: geometry_msgs/TransformStamped (parent ``header.frame_id`` -> child ``child_frame_id``).
        ego_frame: the ego frame (e.g. base_link).
        camera_frames: {camera name: its TF frame id}.
    Returns:
        {camera name: [4, 4] camera -> ego} for the cameras whose chain to ``ego_frame`` is complete.
    """
    parent_of: dict[str, tuple[str, np.ndarray]] = {}
    for t in transforms:
        parent_of[t.child_frame_id.lstrip("/")] = (
            t.header.frame_id.lstrip("/"), transform_to_matrix(t.transform.translation, t.transform.rotation)
        )
    out = {}
    for name, frame in camera_frames.items():
        m, node, hops = np.eye(4), frame.lstrip("/"), 0
        while node != ego_frame.lstrip("/") and node in parent_of and hops < 32:
            parent, t = parent_of[node]
            m = t @ m  # child -> parent, composed up the tree
            node, hops = parent, hops + 1
        if node == ego_frame.lstrip("/"):
            out[name] = m
    return out


# ----------------------------------------------------------------------------------------------- point clouds
def array_to_pointcloud2(arr: np.ndarray, header: Header) -> PointCloud2:
    """Structured numpy array [M] -> unorganised PointCloud2 (one field per dtype field, packed)."""
    fields = []
    for name in arr.dtype.names:
        dt, offset = arr.dtype.fields[name][:2]
        fields.append(PointField(name=name, offset=offset, datatype=_NUMPY_TO_POINTFIELD[dt.newbyteorder("=")], count=1))
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = 1, int(arr.shape[0])
    msg.fields = fields
    msg.is_bigendian = False
    msg.point_step = arr.dtype.itemsize
    msg.row_step = arr.dtype.itemsize * int(arr.shape[0])
    msg.is_dense = True
    msg.data = np.ascontiguousarray(arr).tobytes()  # bytes, never a memoryview (ROS_NOTES §1.e)
    return msg


def pointcloud2_to_array(msg: PointCloud2) -> np.ndarray:
    """PointCloud2 -> structured numpy array [height * width] (field names and offsets from the message).

    Raises:
        ConversionError: big-endian data, a field count > 1 or an unknown datatype.
    """
    if msg.is_bigendian:
        raise ConversionError("big-endian PointCloud2 is not supported")
    names, formats, offsets = [], [], []
    for f in msg.fields:
        if f.count != 1 or f.datatype not in _POINTFIELD_TO_NUMPY:
            raise ConversionError(f"PointCloud2 field '{f.name}' (datatype {f.datatype}, count {f.count}) is not supported")
        names.append(f.name)
        formats.append(_POINTFIELD_TO_NUMPY[f.datatype].newbyteorder("<"))
        offsets.append(f.offset)
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": msg.point_step})
    n = int(msg.width) * int(msg.height)
    return np.frombuffer(bytes(msg.data), dtype=dtype, count=n)


def occupancy_to_pointcloud2(frame: OccupancyFrame, header: Header) -> PointCloud2:
    """One occupancy frame -> PointCloud2 with fields x, y, z (float32, m), class (uint8), score (float32)."""
    arr = np.empty(len(frame.points), dtype=OCCUPANCY_DTYPE)
    arr["x"], arr["y"], arr["z"] = frame.points[:, 0], frame.points[:, 1], frame.points[:, 2]
    arr["class"], arr["score"] = frame.classes, frame.scores
    return array_to_pointcloud2(arr, header)


def _transform(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    return (points.astype(np.float64) @ m[:3, :3].T + m[:3, 3]).astype(np.float32)  # [M, 3]


def forecast_to_time_cloud(frames: Sequence[OccupancyFrame], header: Header) -> PointCloud2:
    """All forecast frames in one PointCloud2 for RViz, in the *current* ego frame, with a ``time`` field.

    Each frame's points are moved from their own future ego frame into the current one with the frame's
    planned pose, so RViz can colour the whole forecast by ``time`` (s after ``header.stamp``).
    """
    total = sum(len(f.points) for f in frames)
    arr = np.empty(total, dtype=FORECAST_DTYPE)
    i = 0
    for f in frames:
        j = i + len(f.points)
        pts = _transform(f.points, f.ego_pose)
        arr["x"][i:j], arr["y"][i:j], arr["z"][i:j] = pts[:, 0], pts[:, 1], pts[:, 2]
        arr["class"][i:j], arr["score"][i:j], arr["time"][i:j] = f.classes, f.scores, f.time_s
        i = j
    return array_to_pointcloud2(arr, header)


def _pose_msg(m: np.ndarray) -> Pose:
    pose = Pose()
    pose.position = Point(x=float(m[0, 3]), y=float(m[1, 3]), z=float(m[2, 3]))
    w, x, y, z = _matrix_to_wxyz(m[:3, :3])
    pose.orientation = Quaternion(x=x, y=y, z=z, w=w)
    return pose


def forecast_to_msg(frames: Sequence[OccupancyFrame], stamp_ns: int, frame_id: str) -> OccupancyForecast:
    """sparseoccvla_msgs/OccupancyForecast: one cloud per horizon, each in its own future ego frame.

    A cloud's frame id is ``<frame_id>_t<i>`` (i = 1..T, the i-th future key frame) and its stamp is the
    input stamp + its horizon; ``future_ego_poses[i]`` places that frame in ``frame_id``.
    """
    msg = OccupancyForecast()
    msg.header = make_header(stamp_ns, frame_id)
    msg.horizons = [float(f.time_s) for f in frames]
    msg.clouds = [
        occupancy_to_pointcloud2(f, make_header(stamp_ns + int(round(f.time_s * NS_PER_S)), f"{frame_id}_t{i + 1}"))
        for i, f in enumerate(frames)
    ]
    msg.future_ego_poses = [_pose_msg(f.ego_pose) for f in frames]
    return msg


# ----------------------------------------------------------------------------------------------- plan
def _yaw_quaternion(yaw: float) -> Quaternion:
    return Quaternion(x=0.0, y=0.0, z=math.sin(yaw / 2.0), w=math.cos(yaw / 2.0))


def waypoints_to_path(waypoints: np.ndarray, header: Header) -> PathMsg:
    """[T, 2] waypoints -> nav_msgs/Path; each pose heads along the path (from the previous point)."""
    path = PathMsg()
    path.header = header
    for (x, y), yaw in zip(np.asarray(waypoints, dtype=np.float64), path_headings(waypoints)):
        pose = PoseStamped()
        pose.header = header
        pose.pose.position = Point(x=float(x), y=float(y), z=0.0)
        pose.pose.orientation = _yaw_quaternion(float(yaw))
        path.poses.append(pose)
    return path


def plan_to_msgs(plan: PlanResult, reasoning: str, stamp_ns: int, frame_id: str) -> tuple[DrivingPlan, PathMsg]:
    """PlanResult -> (sparseoccvla_msgs/DrivingPlan, nav_msgs/Path of the chosen trajectory)."""
    header = make_header(stamp_ns, frame_id)
    path = waypoints_to_path(plan.waypoints, header)
    msg = DrivingPlan()
    msg.header = header
    msg.path = path
    msg.waypoint_dt = float(plan.waypoint_dt)
    for traj, cmd in zip(plan.anchors, plan.anchor_commands):
        anchor = AnchorTrajectory(command=int(cmd))
        anchor.waypoints = [Point(x=float(x), y=float(y), z=0.0) for x, y in traj]
        msg.anchors.append(anchor)
    msg.anchor_scores = [float(s) for s in plan.anchor_scores]
    msg.chosen_anchor = int(plan.chosen_anchor)
    msg.reasoning = reasoning
    return msg, path


# ----------------------------------------------------------------------------------------------- markers
def _color(r: float, g: float, b: float, a: float = 1.0) -> ColorRGBA:
    return ColorRGBA(r=float(r), g=float(g), b=float(b), a=float(a))


def _score_color(score: float) -> ColorRGBA:
    """Low score blue -> high score red (anchors)."""
    s = float(np.clip(score, 0.0, 1.0))
    return _color(s, 0.2, 1.0 - s, 0.35 + 0.65 * s)


def result_to_markers(
    result: StepResult, frame_id: str, voxel_size: float, show_text: bool = True, text_height_m: float = 2.0,
    max_voxels: int = 10000,
) -> MarkerArray:
    """Debug markers: voxels as one CUBE_LIST per class (namespace ``occupancy``, id = Occ3D class, class colour),
    anchors (LINE_STRIPs coloured by score), the chosen path and the explanation (TEXT_VIEW_FACING above the car).
    The first marker is DELETEALL so stale markers vanish.

    Markers need one Python object per voxel, so at most ``max_voxels`` voxels (the highest-scoring) are drawn;
    the PointCloud2 on ``~/output/occupancy`` always carries all of them.
    """
    header = make_header(result.stamp_ns, frame_id)
    markers = [Marker(header=header, action=Marker.DELETEALL)]

    occ = result.occupancy
    keep = np.argsort(-occ.scores, kind="stable")[:max_voxels] if len(occ.scores) > max_voxels else slice(None)
    pts, classes = occ.points[keep], occ.classes[keep].astype(np.int64)
    for cls in np.unique(classes):
        voxels = Marker(header=header, ns="occupancy", id=int(cls), type=Marker.CUBE_LIST, action=Marker.ADD)
        voxels.pose.orientation.w = 1.0
        voxels.scale.x = voxels.scale.y = voxels.scale.z = float(voxel_size)
        r, g, b = CLASS_COLORS[min(int(cls), len(CLASS_COLORS) - 1)].tolist()
        voxels.color = ColorRGBA(r=r, g=g, b=b, a=1.0)
        voxels.points = [Point(x=x, y=y, z=z) for x, y, z in pts[classes == cls].tolist()]
        markers.append(voxels)

    for k, (traj, score) in enumerate(zip(result.plan.anchors, result.plan.anchor_scores)):
        line = Marker(header=header, ns="anchors", id=k, type=Marker.LINE_STRIP, action=Marker.ADD)
        line.pose.orientation.w = 1.0
        line.scale.x = 0.1
        line.color = _score_color(score)
        line.points = [Point(x=0.0, y=0.0, z=0.0)] + [Point(x=float(x), y=float(y), z=0.0) for x, y in traj]
        markers.append(line)

    chosen = Marker(header=header, ns="plan", id=0, type=Marker.LINE_STRIP, action=Marker.ADD)
    chosen.pose.orientation.w = 1.0
    chosen.scale.x = 0.4
    chosen.color = _color(0.1, 1.0, 0.1)
    chosen.points = [Point(x=0.0, y=0.0, z=0.05)] + [
        Point(x=float(x), y=float(y), z=0.05) for x, y in result.plan.waypoints
    ]
    markers.append(chosen)

    if show_text:
        text = Marker(header=header, ns="explanation", id=0, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD)
        text.pose.position.z = 4.0
        text.pose.orientation.w = 1.0
        text.scale.z = float(text_height_m)
        text.color = _color(1.0, 1.0, 1.0)
        text.text = result.explanation or "(no explanation)"
        markers.append(text)
    return MarkerArray(markers=markers)


# ----------------------------------------------------------------------------------------------- diagnostics
def diagnostic_status(
    name: str, level: int, message: str, values: Mapping[str, Any], hardware_id: str = ""
) -> DiagnosticStatus:
    """One DiagnosticStatus (level OK=0 / WARN=1 / ERROR=2 / STALE=3); values formatted as strings."""
    status = DiagnosticStatus(level=bytes([int(level)]), name=name, message=message, hardware_id=hardware_id)
    out = []
    for k, v in values.items():
        out.append(KeyValue(key=str(k), value=f"{v:.6g}" if isinstance(v, float) else str(v)))
    status.values = out
    return status


def diagnostic_array(stamp: Time, statuses: Sequence[DiagnosticStatus]) -> DiagnosticArray:
    msg = DiagnosticArray()
    msg.header.stamp = stamp
    msg.status = list(statuses)
    return msg


__all__ = [
    "CLASS_COLORS", "FORECAST_DTYPE", "OCCUPANCY_DTYPE", "OCC3D_CLASSES", "CameraCalibration", "ConversionError",
    "CorruptImageError", "array_to_pointcloud2", "camera_info_to_intrinsics", "decode_compressed_image",
    "diagnostic_array", "diagnostic_status", "forecast_to_msg", "forecast_to_time_cloud", "image_to_rgb",
    "jpeg_reduction", "load_calibration", "make_header", "ns_to_stamp", "occupancy_to_pointcloud2",
    "odometry_to_sample", "plan_to_msgs", "pointcloud2_to_array", "result_to_markers", "save_calibration",
    "scale_intrinsics", "stamp_to_ns", "tf_to_cam2ego", "transform_to_matrix", "waypoints_to_path",
]
