"""The messages of a GT bag (``sparseoccvla bag``; the layout: :mod:`sparseoccvla_ros.replay.bag_writer`): the topic
types, the bag-format version and one builder per message, as ``rosbags`` objects.

The closed-loop simulator (:mod:`sparseoccvla_ros.closed_loop.sim_node`) publishes the same messages.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from sparseoccvla_core.batch import CAMERA_NAMES

from ..pointcloud import point_fields
from . import topics
from .typestore import make_msg, stamp_from_ns

#: Version of the GT topic layout (custom_data ``sparseoccvla.bag_format``); ``eval-bag`` checks it.
BAG_FORMAT_VERSION = 1
#: Colour (r, g, b) of the GT boxes per category prefix, for display.
_BOX_COLORS = {"vehicle.": (0.0, 0.6, 1.0), "human.pedestrian.": (1.0, 0.2, 0.2)}

# rosbag2 / nav_msgs types of each topic
TYPE_IMAGE = "sensor_msgs/msg/CompressedImage"
TYPE_INFO = "sensor_msgs/msg/CameraInfo"
TYPE_ODOM = "nav_msgs/msg/Odometry"
TYPE_TF = "tf2_msgs/msg/TFMessage"
TYPE_CLOUD = "sensor_msgs/msg/PointCloud2"
TYPE_RAW_IMAGE = "sensor_msgs/msg/Image"
TYPE_PATH = "nav_msgs/msg/Path"
TYPE_MARKERS = "visualization_msgs/msg/MarkerArray"
TYPE_UINT8 = "std_msgs/msg/UInt8"
TYPE_STRING = "std_msgs/msg/String"

#: Point layout of /gt/occupancy (16 bytes: x, y, z float32, class uint8, 3 bytes padding).
GT_CLOUD_DTYPE = np.dtype(
    {
        "names": ["x", "y", "z", "class"],
        "formats": ["<f4", "<f4", "<f4", "u1"],
        "offsets": [0, 4, 8, 12],
        "itemsize": 16,
    }
)


def bag_topics() -> dict[str, str]:
    """Every topic a converted bag can hold -> its message type."""
    out = {}
    for cam in CAMERA_NAMES:
        out[topics.image_topic(cam)] = TYPE_IMAGE
        out[topics.camera_info_topic(cam)] = TYPE_INFO
    out.update(
        {
            topics.ODOM_TOPIC: TYPE_ODOM,
            topics.TF_TOPIC: TYPE_TF,
            topics.TF_STATIC_TOPIC: TYPE_TF,
            topics.GT_OCCUPANCY_TOPIC: TYPE_CLOUD,
            topics.GT_CAMERA_MASK_TOPIC: TYPE_RAW_IMAGE,
            topics.GT_TRAJECTORY_TOPIC: TYPE_PATH,
            topics.GT_BOXES_TOPIC: TYPE_MARKERS,
            topics.GT_COMMAND_TOPIC: TYPE_UINT8,
            topics.GT_FRAME_TOPIC: TYPE_STRING,
        }
    )
    return out


def header(stamp_ns: int, frame_id: str) -> Any:
    """std_msgs/Header."""
    return make_msg("std_msgs/msg/Header", stamp=stamp_from_ns(stamp_ns), frame_id=frame_id)


def _quat_xyzw(q_wxyz: Sequence[float]) -> Any:
    w, x, y, z = (float(v) for v in q_wxyz)
    return make_msg("geometry_msgs/msg/Quaternion", x=x, y=y, z=z, w=w)


def _yaw_quat(yaw: float) -> Any:
    return _quat_xyzw((math.cos(yaw / 2.0), 0.0, 0.0, math.sin(yaw / 2.0)))


def _point(x: float, y: float, z: float) -> Any:
    return make_msg("geometry_msgs/msg/Point", x=float(x), y=float(y), z=float(z))


def _vector(x: float, y: float, z: float) -> Any:
    return make_msg("geometry_msgs/msg/Vector3", x=float(x), y=float(y), z=float(z))


def compressed_image_msg(stamp_ns: int, frame_id: str, jpeg: bytes) -> Any:
    """sensor_msgs/CompressedImage holding ``jpeg`` unchanged (``format: jpeg``)."""
    return make_msg(
        TYPE_IMAGE, header=header(stamp_ns, frame_id), format="jpeg", data=np.frombuffer(jpeg, dtype=np.uint8)
    )


def camera_info_msg(stamp_ns: int, frame_id: str, k: np.ndarray, height: int, width: int) -> Any:
    """sensor_msgs/CameraInfo of a rectified pinhole camera: K, R = I, P = [K | 0], plumb_bob with D = 0."""
    k = np.asarray(k, dtype=np.float64).reshape(3, 3)
    p = np.zeros((3, 4))
    p[:, :3] = k
    return make_msg(
        TYPE_INFO,
        header=header(stamp_ns, frame_id),
        height=int(height),
        width=int(width),
        distortion_model="plumb_bob",
        d=np.zeros(5),
        k=k.reshape(-1).copy(),
        r=np.eye(3).reshape(-1),
        p=p.reshape(-1),
    )


def transform_stamped(
    stamp_ns: int, parent: str, child: str, translation: Sequence[float], rotation_wxyz: Sequence[float]
) -> Any:
    """geometry_msgs/TransformStamped parent -> child (nuScenes translation + (w, x, y, z) quaternion)."""
    tf = make_msg("geometry_msgs/msg/Transform", translation=_vector(*translation), rotation=_quat_xyzw(rotation_wxyz))
    return make_msg(
        "geometry_msgs/msg/TransformStamped", header=header(stamp_ns, parent), child_frame_id=child, transform=tf
    )


def odometry_msg(
    stamp_ns: int,
    translation: Sequence[float],
    rotation_wxyz: Sequence[float],
    velocity_xy: Sequence[float],
    yaw_rate: float,
) -> Any:
    """nav_msgs/Odometry: pose in ``map``, twist (vx, vy, yaw rate) in ``base_link``; covariances unknown (0)."""
    pose = make_msg("geometry_msgs/msg/Pose", position=_point(*translation), orientation=_quat_xyzw(rotation_wxyz))
    twist = make_msg(
        "geometry_msgs/msg/Twist",
        linear=_vector(velocity_xy[0], velocity_xy[1], 0.0),
        angular=_vector(0.0, 0.0, yaw_rate),
    )
    return make_msg(
        TYPE_ODOM,
        header=header(stamp_ns, topics.MAP_FRAME),
        child_frame_id=topics.EGO_FRAME,
        pose=make_msg("geometry_msgs/msg/PoseWithCovariance", pose=pose, covariance=np.zeros(36)),
        twist=make_msg("geometry_msgs/msg/TwistWithCovariance", twist=twist, covariance=np.zeros(36)),
    )


def gt_cloud_msg(stamp_ns: int, points: np.ndarray, labels: np.ndarray, frame_id: str = topics.EGO_FRAME) -> Any:
    """/gt/occupancy PointCloud2 (:data:`GT_CLOUD_DTYPE`) of voxel centres [M, 3] and classes [M]."""
    arr = np.zeros(len(points), dtype=GT_CLOUD_DTYPE)
    arr["x"], arr["y"], arr["z"] = points[:, 0], points[:, 1], points[:, 2]
    arr["class"] = np.asarray(labels).astype(np.uint8)
    fields = [
        make_msg("sensor_msgs/msg/PointField", name=n, offset=o, datatype=d, count=1)
        for n, o, d in point_fields(GT_CLOUD_DTYPE)
    ]
    data = np.frombuffer(arr.tobytes(), dtype=np.uint8)
    return make_msg(
        TYPE_CLOUD,
        header=header(stamp_ns, frame_id),
        height=1,
        width=len(arr),
        fields=fields,
        is_bigendian=False,
        point_step=GT_CLOUD_DTYPE.itemsize,
        row_step=GT_CLOUD_DTYPE.itemsize * len(arr),
        data=data,
        is_dense=True,
    )


def pack_camera_mask(mask: np.ndarray) -> np.ndarray:
    """[X, Y, Z <= 16] bool -> [X, Y] uint16 with bit z = mask[..., z]."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3 or mask.shape[2] > 16:
        raise ValueError(f"camera mask must be [X, Y, Z<=16], got {mask.shape}")
    weights = (1 << np.arange(mask.shape[2], dtype=np.uint32)).astype(np.uint32)
    return (mask.astype(np.uint32) @ weights).astype(np.uint16)


def unpack_camera_mask(packed: np.ndarray, z: int) -> np.ndarray:
    """Inverse of :func:`pack_camera_mask`: [X, Y] uint16 -> [X, Y, z] bool."""
    bits = np.arange(z, dtype=np.uint16)
    return ((np.asarray(packed, dtype=np.uint16)[..., None] >> bits) & 1).astype(bool)


def camera_mask_msg(stamp_ns: int, mask: np.ndarray, frame_id: str = topics.EGO_FRAME) -> Any:
    """/gt/occupancy_camera_mask sensor_msgs/Image ``16UC1`` (see module docstring)."""
    packed = pack_camera_mask(mask).astype("<u2")
    x, y = packed.shape
    return make_msg(
        TYPE_RAW_IMAGE,
        header=header(stamp_ns, frame_id),
        height=x,
        width=y,
        encoding="16UC1",
        is_bigendian=0,
        step=2 * y,
        data=np.frombuffer(packed.tobytes(), dtype=np.uint8),
    )


def path_msg(
    stamp_ns: int,
    waypoints: np.ndarray,
    yaws: np.ndarray,
    pose_stamps_ns: Sequence[int],
    frame_id: str = topics.EGO_FRAME,
) -> Any:
    """nav_msgs/Path of waypoints [T, 2] (z = 0) with headings [T] and one stamp per pose."""
    poses = []
    for (x, y), yaw, s in zip(np.asarray(waypoints, dtype=np.float64), yaws, pose_stamps_ns):
        pose = make_msg("geometry_msgs/msg/Pose", position=_point(x, y, 0.0), orientation=_yaw_quat(float(yaw)))
        poses.append(make_msg("geometry_msgs/msg/PoseStamped", header=header(int(s), frame_id), pose=pose))
    return make_msg(TYPE_PATH, header=header(stamp_ns, frame_id), poses=poses)


def boxes_msg(
    stamp_ns: int, steps: Sequence[tuple[np.ndarray, np.ndarray, Sequence[str]]], frame_id: str = topics.EGO_FRAME
) -> Any:
    """MarkerArray: DELETEALL, then per step s a CUBE per box, ``ns = str(s)``.

    Args:
        steps: per step (boxes [A, 5] (cx, cy, length, width, yaw), z_height [A, 2] (centre z, height),
            categories [A]).
    """
    hdr = header(stamp_ns, frame_id)
    markers = [make_msg("visualization_msgs/msg/Marker", header=hdr, action=3)]  # DELETEALL
    for s, (boxes, zh, cats) in enumerate(steps):
        fade = 1.0 - 0.1 * s
        for j, (box, (zc, height), cat) in enumerate(zip(boxes, zh, cats)):
            rgb = next((c for p, c in _BOX_COLORS.items() if cat.startswith(p)), (0.7, 0.7, 0.7))
            pose = make_msg(
                "geometry_msgs/msg/Pose", position=_point(box[0], box[1], zc), orientation=_yaw_quat(float(box[4]))
            )
            markers.append(
                make_msg(
                    "visualization_msgs/msg/Marker",
                    header=hdr,
                    ns=str(s),
                    id=j,
                    type=1,
                    action=0,
                    pose=pose,
                    scale=_vector(box[2], box[3], height),
                    color=make_msg(
                        "std_msgs/msg/ColorRGBA", r=rgb[0] * fade, g=rgb[1] * fade, b=rgb[2] * fade, a=0.5 if s else 0.8
                    ),
                )
            )
    return make_msg(TYPE_MARKERS, markers=markers)
