"""ROS messages <-> SparseOccVLA core types.  The only module that knows both (docs/design.md §2).

Inputs:

* ``sensor_msgs/CompressedImage`` (JPEG / PNG) and raw ``sensor_msgs/Image`` (rgb8, bgr8, mono8) -> [H, W, 3]
  uint8 RGB.  JPEGs are decoded strictly (libjpeg-turbo through ``simplejpeg``: a recoverable error such as
  "Corrupt JPEG data" is an error, not a warning on stderr), optionally at 1/2, 1/4 or 1/8 size (libjpeg DCT
  scaling) when the model input is that much smaller; the returned factor scales the intrinsics exactly.
* ``sensor_msgs/CameraInfo`` -> K [3, 3]; ``nav_msgs/Odometry`` -> :class:`OdometrySample`;
  ``/tf_static`` transforms -> cam2ego per camera.  The calibration YAML is a file format and lives in
  :mod:`sparseoccvla_core.calibration_file` (re-exported here for compatibility).

Outputs: ``sensor_msgs/PointCloud2`` with 4-byte aligned fields (x, y, z, rgb, score float32 [, time float32],
class uint8 + 3 padding bytes; ``rgb`` is the class colour of :data:`sparseoccvla_core.batch.OCC3D_COLORS` packed
as RViz / PCL expect, 0x00RRGGBB in the bits of a float32), ``sparseoccvla_msgs/OccupancyForecast``,
``sparseoccvla_msgs/DrivingPlan`` + ``nav_msgs/Path`` and ``diagnostic_msgs/DiagnosticArray``; RViz markers are
built by :mod:`.markers`.  Point-cloud ``data`` is always set from ``bytes`` (assigning a memoryview is far slower
in the rclpy wheels of PyPI).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import cv2
import numpy as np
import simplejpeg
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Pose, PoseStamped, Quaternion
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from sparseoccvla_core.batch import OCC3D_CLASSES, OCC3D_COLORS
from sparseoccvla_core.calibration_file import (  # noqa: F401 - re-exported: the YAML moved to the core
    CALIBRATION_FORMAT,
    CALIBRATION_VERSION,
    CameraCalibration,
    load_calibration,
    matrix_to_wxyz,
    save_calibration,
)
from sparseoccvla_core.data.images import CorruptImageError
from sparseoccvla_core.geometry.camera import pose_matrix
from sparseoccvla_core.pipeline import OccupancyFrame, PlanResult, path_headings
from sparseoccvla_msgs.msg import AnchorTrajectory, DrivingPlan, OccupancyForecast

from .pointcloud import PointCloudFormatError, cloud_to_array, point_fields
from .synchronizer import NS_PER_S, OdometrySample


def _aligned_dtype(float_fields: Sequence[str]) -> np.dtype:
    """x, y, z, ``float_fields`` (float32 each), then ``class`` (uint8) padded to a multiple of 4 bytes."""
    names = ["x", "y", "z", *float_fields, "class"]
    formats = ["<f4"] * (len(names) - 1) + ["u1"]
    offsets = [4 * i for i in range(len(names))]
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": 4 * len(names)})


#: PointCloud2 layout of occupancy clouds: every field 4-byte aligned (PCL / Open3D readers require it); 24 bytes.
OCCUPANCY_DTYPE = _aligned_dtype(["rgb", "score"])
#: Forecast cloud for RViz: the occupancy layout + ``time`` (s after the header stamp); 28 bytes per point.
FORECAST_DTYPE = _aligned_dtype(["rgb", "score", "time"])


#: Class colour packed as RViz / PCL read an ``rgb`` field: 0x00RRGGBB in the bits of a float32, index = class id.
PACKED_CLASS_RGB: np.ndarray = (
    ((np.asarray(OCC3D_COLORS, dtype=np.uint32) * np.array([1 << 16, 1 << 8, 1], dtype=np.uint32)).sum(axis=1))
    .astype(np.uint32)
    .view(np.float32)
)


def packed_rgb(classes: np.ndarray) -> np.ndarray:
    """[M] class ids -> [M] float32 packed colours (ids beyond the palette take its last colour)."""
    idx = np.clip(np.asarray(classes, dtype=np.int64), 0, len(PACKED_CLASS_RGB) - 1)
    return PACKED_CLASS_RGB[idx]


def unpack_rgb(rgb: np.ndarray) -> np.ndarray:
    """[M] packed float32 colours -> [M, 3] uint8 RGB (inverse of :func:`packed_rgb`)."""
    bits = np.ascontiguousarray(rgb, dtype=np.float32).view(np.uint32)
    return np.stack([(bits >> 16) & 0xFF, (bits >> 8) & 0xFF, bits & 0xFF], axis=-1).astype(np.uint8)


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
_REDUCTIONS = (1, 2, 4, 8)


def decode_compressed_image(msg: CompressedImage, reduction: int = 1) -> np.ndarray:
    """CompressedImage (JPEG / PNG) -> [H, W, 3] uint8 RGB.

    JPEGs are decoded by libjpeg-turbo in strict mode (``simplejpeg``): data that libjpeg only warns about
    ("Corrupt JPEG data: premature end of data segment", bad Huffman codes, a missing EOI) is rejected here,
    where OpenCV would return an image with grey or smeared blocks.  A bit flip that still forms valid entropy
    codes cannot be detected by any decoder (JPEG has no checksum).

    Args:
        msg: the message (``format`` e.g. "jpeg", "rgb8; jpeg compressed bgr8", "png").
        reduction: decode at 1/reduction size (1, 2, 4 or 8; exact for JPEG when both sides divide by it): pixel
            ``j`` of the result covers input pixels ``[r j, r (j + 1))``, so K scales by ``1 / r``.
    Raises:
        CorruptImageError: empty, truncated, corrupt or undecodable data (names the frame id and the format).
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 1, 2, 4 or 8, got {reduction}")
    data = bytes(msg.data)
    where = f"CompressedImage from frame '{msg.header.frame_id}' (format '{msg.format}')"
    if len(data) < 4:
        raise CorruptImageError(f"{where} has no image data ({len(data)} bytes)")
    if data[:2] == b"\xff\xd8":
        try:
            h, w = simplejpeg.decode_jpeg_header(data)[:2]
            img = simplejpeg.decode_jpeg(
                data, colorspace="RGB", strict=True, min_height=-(-h // reduction), min_width=-(-w // reduction)
            )
        except ValueError as exc:
            raise CorruptImageError(f"{where} is a corrupt JPEG: {str(exc).strip()}") from exc
        return np.ascontiguousarray(img)
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
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


# ----------------------------------------------------------------------------------------------- /tf_static
def transform_to_matrix(translation: Any, rotation: Any) -> np.ndarray:
    """geometry_msgs Vector3 + Quaternion (x, y, z, w) -> [4, 4]."""
    return pose_matrix((rotation.w, rotation.x, rotation.y, rotation.z), (translation.x, translation.y, translation.z))


def tf_to_cam2ego(transforms: Iterable[Any], ego_frame: str, camera_frames: Mapping[str, str]) -> dict[str, np.ndarray]:
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
            t.header.frame_id.lstrip("/"),
            transform_to_matrix(t.transform.translation, t.transform.rotation),
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
    fields = [PointField(name=n, offset=o, datatype=d, count=1) for n, o, d in point_fields(arr.dtype)]
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = 1, int(arr.shape[0])
    msg.fields = fields
    msg.is_bigendian = False
    msg.point_step = arr.dtype.itemsize
    msg.row_step = arr.dtype.itemsize * int(arr.shape[0])
    msg.is_dense = True
    msg.data = np.ascontiguousarray(arr).tobytes()  # bytes, never a memoryview (docs/ros_conventions.md §6)
    return msg


def pointcloud2_to_array(msg: PointCloud2) -> np.ndarray:
    """PointCloud2 -> structured numpy array [height * width] (field names and offsets from the message).

    Raises:
        ConversionError: big-endian data, a field count > 1 or an unknown datatype.
    """
    try:
        return cloud_to_array(msg)
    except PointCloudFormatError as exc:
        raise ConversionError(str(exc)) from exc


def occupancy_to_pointcloud2(frame: OccupancyFrame, header: Header) -> PointCloud2:
    """One occupancy frame -> PointCloud2 (:data:`OCCUPANCY_DTYPE`: x, y, z m, rgb class colour, score, class)."""
    arr = np.zeros(len(frame.points), dtype=OCCUPANCY_DTYPE)  # zeros: the padding bytes are deterministic
    arr["x"], arr["y"], arr["z"] = frame.points[:, 0], frame.points[:, 1], frame.points[:, 2]
    arr["class"], arr["score"], arr["rgb"] = frame.classes, frame.scores, packed_rgb(frame.classes)
    return array_to_pointcloud2(arr, header)


def _transform(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    return (points.astype(np.float64) @ m[:3, :3].T + m[:3, 3]).astype(np.float32)  # [M, 3]


def forecast_to_time_cloud(frames: Sequence[OccupancyFrame], header: Header) -> PointCloud2:
    """All forecast frames in one PointCloud2 for RViz, in the *current* ego frame, with a ``time`` field.

    Each frame's points are moved from their own future ego frame into the current one with the frame's
    planned pose, so RViz can colour the whole forecast by ``time`` (s after ``header.stamp``).
    """
    total = sum(len(f.points) for f in frames)
    arr = np.zeros(total, dtype=FORECAST_DTYPE)
    i = 0
    for f in frames:
        j = i + len(f.points)
        pts = _transform(f.points, f.ego_pose)
        arr["x"][i:j], arr["y"][i:j], arr["z"][i:j] = pts[:, 0], pts[:, 1], pts[:, 2]
        arr["class"][i:j], arr["score"][i:j], arr["time"][i:j] = f.classes, f.scores, f.time_s
        arr["rgb"][i:j] = packed_rgb(f.classes)
        i = j
    return array_to_pointcloud2(arr, header)


def _pose_msg(m: np.ndarray) -> Pose:
    pose = Pose()
    pose.position = Point(x=float(m[0, 3]), y=float(m[1, 3]), z=float(m[2, 3]))
    w, x, y, z = matrix_to_wxyz(m[:3, :3])
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
    "CALIBRATION_FORMAT",
    "CALIBRATION_VERSION",
    "FORECAST_DTYPE",
    "OCCUPANCY_DTYPE",
    "OCC3D_CLASSES",
    "PACKED_CLASS_RGB",
    "CameraCalibration",
    "ConversionError",
    "CorruptImageError",
    "array_to_pointcloud2",
    "camera_info_to_intrinsics",
    "decode_compressed_image",
    "diagnostic_array",
    "diagnostic_status",
    "forecast_to_msg",
    "forecast_to_time_cloud",
    "image_to_rgb",
    "jpeg_reduction",
    "load_calibration",
    "make_header",
    "matrix_to_wxyz",
    "ns_to_stamp",
    "occupancy_to_pointcloud2",
    "odometry_to_sample",
    "packed_rgb",
    "plan_to_msgs",
    "pointcloud2_to_array",
    "save_calibration",
    "scale_intrinsics",
    "stamp_to_ns",
    "tf_to_cam2ego",
    "transform_to_matrix",
    "unpack_rgb",
    "waypoints_to_path",
]
