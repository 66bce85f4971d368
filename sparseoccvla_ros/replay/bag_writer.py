"""``sparseoccvla bag``: a nuScenes scene (or the synthetic world) -> a rosbag2 MCAP bag for replay and evaluation.

    sparseoccvla bag --data /data/nuscenes --scene scene-0103 --out bags/scene-0103
    sparseoccvla bag --data data/synth --all --out bags/synth            # every scene, in time order
    sparseoccvla bag --data /data/nuscenes --scene scene-0103 --out bags/scene-0103-12hz --sweeps

Topics and types follow the de-facto nuScenes converter (foxglove ``nuscenes2mcap``; names in
:mod:`sparseoccvla_ros.replay.topics`), so the bag plays into the driving node with the remaps of the launch file:

* ``/<CAM>/image_rect_compressed`` sensor_msgs/CompressedImage: the ORIGINAL JPEG bytes of the sample_data file
  (no re-encoding), ``format: jpeg``, ``header.frame_id`` = the camera channel, stamp = the sample_data timestamp.
* ``/<CAM>/camera_info`` sensor_msgs/CameraInfo: K of ``calibrated_sensor``, ``P = [K | 0]``, no distortion
  (the images are rectified), image size of the sample_data; same stamp and frame id as the image.
* ``/odom`` nav_msgs/Odometry: pose of ``ego_pose`` in ``map`` (copied verbatim), twist in ``base_link`` by finite
  differences of the ego poses exactly as the loaders compute the model's ego state
  (:func:`sparseoccvla_core.geometry.ego_motion.ego_states`: backward differences, vx, vy and the yaw rate).
  Key-frame bags carry one sample per key frame, the key frame's reference pose (the LIDAR_TOP ego pose, or
  CAM_FRONT's without lidar: :mod:`sparseoccvla_core.data.frames`), so the node's ego pose and ego state at a key
  frame are those ``sparseoccvla eval`` feeds the model.  With ``--sweeps`` odometry comes at every CAM_FRONT
  sample_data pose (~12 Hz) as well, and the backward difference spans one sweep instead of one key frame.
* ``/tf`` tf2_msgs/TFMessage ``map -> base_link`` for every odometry sample (same stamp and pose).
* ``/tf_static`` tf2_msgs/TFMessage ``base_link -> <CAM>`` from ``calibrated_sensor`` (quaternion and translation
  copied verbatim), written before anything else of each scene, offered with the transient-local QoS profile
  recorded in the bag metadata so ``ros2 bag play`` latches it.
* Key frames (2 Hz) by default; ``--sweeps`` adds every non-key camera sample_data between the scene's first and
  last key frame (~12 Hz).

Ground truth for ``sparseoccvla eval-bag``, one message per key frame, all stamped with (and logged at) the key
frame's CAM_FRONT stamp, the stamp the node gives its outputs of that camera set:

* ``/gt/occupancy`` sensor_msgs/PointCloud2, frame ``base_link``: the current Occ3D voxels that are not free, as
  voxel centres (:func:`sparseoccvla_core.occ_grid.labels_to_points` on the model config's shifted grid), fields
  ``x, y, z`` float32 at 0, 4, 8 and ``class`` uint8 at 12, padded to a 16-byte point (every field 4-byte aligned).
* ``/gt/occupancy_camera_mask`` sensor_msgs/Image ``16UC1`` [X rows, Y columns]: bit z of pixel (x, y) is Occ3D's
  ``mask_camera[x, y, z]`` (the official current-frame protocol's mask; it covers free voxels too, so it cannot
  ride on the cloud).
* ``/gt/trajectory`` nav_msgs/Path: the GT waypoints of :func:`~sparseoccvla_core.geometry.ego_motion.future_waypoints`
  in the current ego frame (only the valid ones: fewer than 6 poses near the scene end); each pose is stamped with
  its future key frame's CAM_FRONT stamp and oriented with the GT relative heading.
* ``/gt/boxes`` visualization_msgs/MarkerArray: a DELETEALL marker, then one CUBE per vehicle / pedestrian box,
  ``ns`` = key frames ahead (``"0"`` = the current key frame, ``"1"`` .. ``"6"`` the future steps the collision
  metric uses), in the current ego frame: x, y, yaw, length (scale.x), width (scale.y) are exactly
  :func:`sparseoccvla_core.evaluation.future_agent_boxes` (the collision GT of ``sparseoccvla eval``); z and
  height are the annotation's, for display only.
* ``/gt/command`` std_msgs/UInt8: the driving command of :func:`~sparseoccvla_core.geometry.ego_motion.driving_command`.
  It has no header, so it is logged at the key frame's FIRST camera stamp: the node holds it before the camera set
  completes (it subscribes to it on ``~/input/command``).
* ``/gt/frame_info`` std_msgs/String, JSON ``{"scene", "scene_token", "sample_token", "frame_index",
  "scene_length", "timestamp_us", "camera_stamps_ns"}``: what ``eval-bag`` needs to apply the forecasting protocol.

The grid of the GT cloud, the plan horizon and the bag-format version are stored in the bag metadata's
``custom_data`` (``sparseoccvla.*`` keys).  ``calibration.yaml`` (:mod:`sparseoccvla_core.calibration_file`) is
written inside the bag folder.  Several scenes go into one bag in time order; scenes whose time spans overlap
(different vehicles recording at once) are refused, because their messages would interleave.

The bag is rosbag2 metadata version 9 by default (``--metadata-version 8`` for older readers), MCAP storage with
zstd chunk compression (``--compression none`` to switch it off), message definitions embedded, so ``rosbags``,
the ``mcap`` reader, Foxglove and ``ros2 bag info/play`` read it.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from sparseoccvla_core.batch import CAMERA_NAMES, FREE_CLASS

from ..pointcloud import point_fields
from . import topics
from .typestore import make_msg, replay_typestore, serialize, stamp_from_ns

#: Version of the GT topic layout (custom_data ``sparseoccvla.bag_format``); ``eval-bag`` checks it.
BAG_FORMAT_VERSION = 1
NS_PER_US = 1000
#: Message priority at equal log time (lower first): calibration before data, the camera info before its image.
_PRIO_TF_STATIC, _PRIO_COMMAND, _PRIO_ODOM, _PRIO_INFO, _PRIO_IMAGE, _PRIO_GT = range(6)
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


# ============================================================================ message builders (rosbags objects)
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


# ============================================================================ scene -> messages
@dataclass
class _Event:
    """One message to write: log time, tie-break priority, topic and a thunk producing the rosbags message."""

    time_ns: int
    prio: int
    topic: str
    build: Callable[[], Any]


@dataclass
class SceneSummary:
    """What was written for one scene."""

    name: str
    key_frames: int
    start_ns: int
    end_ns: int
    gt_occupancy_frames: int
    missing_label_files: int


@dataclass
class BagSummary:
    """Result of :func:`write_bag`.

    Args:
        path: bag folder.
        scenes: per scene summary.
        topic_counts: messages per topic.
        bytes: size of the bag folder's files.
        seconds: wall time of the conversion.
        calibration_files: the calibration YAML(s) written.
    """

    path: Path
    scenes: list[SceneSummary] = field(default_factory=list)
    topic_counts: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    seconds: float = 0.0
    calibration_files: list[Path] = field(default_factory=list)

    @property
    def key_frames(self) -> int:
        return sum(s.key_frames for s in self.scenes)

    @property
    def messages(self) -> int:
        return sum(self.topic_counts.values())


def _us_to_ns(us: int) -> int:
    return int(us) * NS_PER_US


class _SceneConverter:
    """Builds the time-ordered message events of one scene from the devkit tables and the dataset code."""

    def __init__(self, nusc, layout, cfg, sweeps: bool) -> None:
        self.nusc, self.layout, self.cfg, self.sweeps = nusc, layout, cfg, sweeps
        from sparseoccvla_core.data.dataset import KEYFRAME_INTERVAL_S

        step = cfg.plan_dt / KEYFRAME_INTERVAL_S
        if abs(step - round(step)) > 1e-6 or round(step) < 1:
            raise ValueError(f"plan_dt {cfg.plan_dt} s must be a multiple of the {KEYFRAME_INTERVAL_S} s key frames")
        self.plan_step = int(round(step))
        self._last_labels: Optional[tuple[Path, Any]] = None

    # ------------------------------------------------------------------ helpers
    def _sd(self, token: str) -> dict:
        return self.nusc.get("sample_data", token)

    def _image_bytes(self, sd: dict) -> bytes:
        path = self.layout.root / sd["filename"]
        if not path.is_file():
            raise FileNotFoundError(f"image {path} of sample_data {sd['token']} not found (incomplete download?)")
        return path.read_bytes()

    def calibration(self, scene) -> dict[str, dict]:
        """{camera: {translation, rotation (w, x, y, z), K [3, 3], width, height}} of the scene's first key frame."""
        sample = self.nusc.get("sample", scene.sample_tokens[0])
        out = {}
        for cam in CAMERA_NAMES:
            sd = self._sd(sample["data"][cam])
            cs = self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            out[cam] = {
                "translation": [float(v) for v in cs["translation"]],
                "rotation": [float(v) for v in cs["rotation"]],
                "K": np.asarray(cs["camera_intrinsic"], dtype=np.float64),
                "width": int(sd["width"]),
                "height": int(sd["height"]),
            }
        return out

    def _camera_records(self, scene) -> list[dict]:
        """Camera sample_data records to publish, in time order (key frames; + sweeps with ``--sweeps``)."""
        first = self.nusc.get("sample", scene.sample_tokens[0])
        last = self.nusc.get("sample", scene.sample_tokens[-1])
        records = []
        if not self.sweeps:
            for tok in scene.sample_tokens:
                sample = self.nusc.get("sample", tok)
                records += [self._sd(sample["data"][cam]) for cam in CAMERA_NAMES]
        else:
            for cam in CAMERA_NAMES:
                sd, end = self._sd(first["data"][cam]), last["data"][cam]
                while True:
                    records.append(sd)
                    if sd["token"] == end or not sd["next"]:
                        break
                    sd = self._sd(sd["next"])
        return sorted(records, key=lambda r: (r["timestamp"], CAMERA_NAMES.index(self._channel(r))))

    def _channel(self, sd: dict) -> str:
        if "channel" in sd:  # the devkit adds it on load
            return sd["channel"]
        cs = self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        return self.nusc.get("sensor", cs["sensor_token"])["channel"]

    def _odometry_poses(self, scene) -> list[dict]:
        """ego_pose records published on /odom and /tf, time ordered, unique timestamps (see module docstring)."""
        from sparseoccvla_core.data.frames import REFERENCE_SENSOR

        poses: dict[int, dict] = {}
        for tok in scene.sample_tokens:
            sample = self.nusc.get("sample", tok)
            ref_sd = sample["data"].get(REFERENCE_SENSOR, sample["data"][CAMERA_NAMES[0]])
            rec = self.nusc.get("ego_pose", self._sd(ref_sd)["ego_pose_token"])
            poses[int(rec["timestamp"])] = rec
        if self.sweeps:
            for sd in self._camera_records(scene):
                if self._channel(sd) == CAMERA_NAMES[0]:
                    rec = self.nusc.get("ego_pose", sd["ego_pose_token"])
                    poses.setdefault(int(rec["timestamp"]), rec)
        return [poses[t] for t in sorted(poses)]

    # ------------------------------------------------------------------ events
    def events(self, scene) -> tuple[list[_Event], SceneSummary, dict[str, dict]]:
        """All messages of one scene (+ its summary and calibration)."""
        from sparseoccvla_core.geometry.camera import pose_matrix
        from sparseoccvla_core.geometry.ego_motion import ego_states

        nusc, ev = self.nusc, []
        calib = self.calibration(scene)
        cams = self._camera_records(scene)
        # cameras
        for sd in cams:
            cam, s = self._channel(sd), _us_to_ns(sd["timestamp"])
            cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            k = np.asarray(cs["camera_intrinsic"], dtype=np.float64)
            ev.append(
                _Event(
                    s,
                    _PRIO_INFO,
                    topics.camera_info_topic(cam),
                    lambda s=s, cam=cam, k=k, sd=sd: camera_info_msg(s, cam, k, sd["height"], sd["width"]),
                )
            )
            ev.append(
                _Event(
                    s,
                    _PRIO_IMAGE,
                    topics.image_topic(cam),
                    lambda s=s, cam=cam, sd=sd: compressed_image_msg(s, cam, self._image_bytes(sd)),
                )
            )
        # odometry + tf
        poses = self._odometry_poses(scene)
        if self.sweeps:  # backward differences over every published pose
            mats = np.stack([pose_matrix(p["rotation"], p["translation"]) for p in poses])
            states = ego_states(mats, np.asarray([p["timestamp"] for p in poses], dtype=np.int64))
        else:  # one pose per key frame: the loader's own ego state (the model input of `sparseoccvla eval`)
            if len(poses) != len(scene):
                raise ValueError(f"scene {scene.name}: two key frames share a reference ego pose timestamp")
            states = scene.ego_state
        for p, st in zip(poses, states):
            s = _us_to_ns(p["timestamp"])
            ev.append(
                _Event(
                    s,
                    _PRIO_ODOM,
                    topics.ODOM_TOPIC,
                    lambda s=s, p=p, st=st: odometry_msg(
                        s, p["translation"], p["rotation"], (float(st[0]), float(st[1])), float(st[4])
                    ),
                )
            )
            ev.append(
                _Event(
                    s,
                    _PRIO_ODOM,
                    topics.TF_TOPIC,
                    lambda s=s, p=p: make_msg(
                        TYPE_TF,
                        transforms=[
                            transform_stamped(s, topics.MAP_FRAME, topics.EGO_FRAME, p["translation"], p["rotation"])
                        ],
                    ),
                )
            )
        # ground truth per key frame
        n_occ, n_missing = 0, 0
        samples = [nusc.get("sample", tok) for tok in scene.sample_tokens]
        all_stamps = [
            {cam: _us_to_ns(self._sd(smp["data"][cam])["timestamp"]) for cam in CAMERA_NAMES} for smp in samples
        ]
        stamps = [st[CAMERA_NAMES[0]] for st in all_stamps]  # CAM_FRONT stamp of each key frame
        for i, tok in enumerate(scene.sample_tokens):
            cam_stamps = all_stamps[i]
            s = stamps[i]
            info = {
                "scene": scene.name,
                "scene_token": scene.token,
                "sample_token": tok,
                "frame_index": i,
                "scene_length": len(scene),
                "timestamp_us": int(scene.timestamps[i]),
                "camera_stamps_ns": cam_stamps,
            }
            ev.append(
                _Event(
                    s,
                    _PRIO_GT,
                    topics.GT_FRAME_TOPIC,
                    lambda info=info: make_msg(TYPE_STRING, data=json.dumps(info, sort_keys=True)),
                )
            )
            wp, valid, yaws, fut_idx = self._trajectory(scene, i)
            cmd = self._command(wp, valid)
            ev.append(
                _Event(
                    min(cam_stamps.values()),
                    _PRIO_COMMAND,
                    topics.GT_COMMAND_TOPIC,
                    lambda cmd=cmd: make_msg(TYPE_UINT8, data=cmd),
                )
            )
            n_valid = int(valid.sum())
            ev.append(
                _Event(
                    s,
                    _PRIO_GT,
                    topics.GT_TRAJECTORY_TOPIC,
                    lambda s=s, wp=wp, yaws=yaws, n=n_valid, f=fut_idx: path_msg(
                        s, wp[:n], yaws[:n], [stamps[j] for j in f[:n]]
                    ),
                )
            )
            ev.append(_Event(s, _PRIO_GT, topics.GT_BOXES_TOPIC, lambda s=s, i=i: boxes_msg(s, self._boxes(scene, i))))
            label_path = self.layout.occ3d_path(scene.name, tok)
            if label_path.is_file():
                n_occ += 1
                ev.append(_Event(s, _PRIO_GT, topics.GT_OCCUPANCY_TOPIC, lambda s=s, p=label_path: self._cloud(s, p)))
                ev.append(_Event(s, _PRIO_GT, topics.GT_CAMERA_MASK_TOPIC, lambda s=s, p=label_path: self._mask(s, p)))
            else:
                n_missing += 1
        # /tf_static before anything else of the scene: base_link -> each camera
        start_ns = min(e.time_ns for e in ev)
        ev.append(
            _Event(
                start_ns,
                _PRIO_TF_STATIC,
                topics.TF_STATIC_TOPIC,
                lambda: make_msg(
                    TYPE_TF,
                    transforms=[
                        transform_stamped(start_ns, topics.EGO_FRAME, cam, c["translation"], c["rotation"])
                        for cam, c in calib.items()
                    ],
                ),
            )
        )
        end_ns = max(e.time_ns for e in ev)
        summary = SceneSummary(scene.name, len(scene), start_ns, end_ns, n_occ, n_missing)
        ev.sort(key=lambda e: (e.time_ns, e.prio))  # stable: write order inside a priority class is kept
        return ev, summary, calib

    def _trajectory(self, scene, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
        """GT waypoints [T, 2], valid [T], relative GT headings [T], future key-frame indices (dataset rules)."""
        from sparseoccvla_core.geometry.camera import invert_pose, yaw_of
        from sparseoccvla_core.geometry.ego_motion import future_frames, future_waypoints

        horizon, step = self.cfg.plan_horizon, self.plan_step
        wp, valid = future_waypoints(scene.ego2global, i, horizon, step)  # the dataset's rule
        fut = [int(j) for j in future_frames(len(scene), i, horizon, step)]
        yaws = np.zeros(horizon)
        for t, j in enumerate(fut):
            if j >= 0:
                yaws[t] = float(yaw_of(invert_pose(scene.ego2global[i]) @ scene.ego2global[j]))
        return wp, valid, yaws, fut

    @staticmethod
    def _command(wp: np.ndarray, valid: np.ndarray) -> int:
        from sparseoccvla_core.geometry.ego_motion import driving_command

        return int(driving_command(wp, valid))

    def _boxes(self, scene, i: int) -> list[tuple[np.ndarray, np.ndarray, list[str]]]:
        """Per step 0..T: boxes of :func:`future_agent_boxes` + (z, height) and category of each, same order."""
        from sparseoccvla_core import metrics as M
        from sparseoccvla_core.evaluation import future_agent_boxes
        from sparseoccvla_core.geometry.camera import invert_pose

        horizon, step = self.cfg.plan_horizon, self.plan_step
        tokens = [
            scene.sample_tokens[i + s * step] if i + s * step < len(scene) else None for s in range(0, horizon + 1)
        ]
        boxes, mask = future_agent_boxes(self.nusc, tokens, scene.ego2global[i])
        g2e = invert_pose(scene.ego2global[i])
        prefixes = tuple(M.COLLISION_CATEGORY_PREFIXES)
        out = []
        for s, tok in enumerate(tokens):
            zh, cats = [], []
            if tok is not None:
                for ann_token in self.nusc.get("sample", tok)["anns"]:
                    ann = self.nusc.get("sample_annotation", ann_token)
                    if ann["category_name"].startswith(prefixes):
                        zh.append(
                            (float(g2e[2, :3] @ np.asarray(ann["translation"]) + g2e[2, 3]), float(ann["size"][2]))
                        )
                        cats.append(ann["category_name"])
            b = boxes[s][mask[s]]
            if len(b) != len(zh):
                raise RuntimeError(
                    f"box bookkeeping mismatch at {tok}: {len(b)} collision boxes, {len(zh)} annotations"
                )
            out.append((b, np.asarray(zh, dtype=np.float64).reshape(-1, 2), cats))
        return out

    def _labels(self, path: Path):
        """Occ3D labels of one file (the last one is kept: the cloud and the mask of a key frame share it)."""
        from sparseoccvla_core.data.occ3d import load_occ3d_labels

        if self._last_labels is None or self._last_labels[0] != path:
            self._last_labels = (path, load_occ3d_labels(path))
        return self._last_labels[1]

    def _cloud(self, stamp_ns: int, path: Path) -> Any:
        from sparseoccvla_core.data.occ3d import occ3d_points

        pts, lab = occ3d_points(self._labels(path), self.cfg.point_cloud_range, self.cfg.voxel_size, "none")
        return gt_cloud_msg(stamp_ns, pts, lab)

    def _mask(self, stamp_ns: int, path: Path) -> Any:
        return camera_mask_msg(stamp_ns, self._labels(path).mask_camera)


# ============================================================================ writer
def _qos(transient_local: bool, depth: int):
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    zero = QosTime(sec=0, nsec=0)
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=depth,
        reliability=QosReliability.RELIABLE,
        durability=QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
        deadline=zero,
        lifespan=zero,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=zero,
        avoid_ros_namespace_conventions=False,
    )


def available_scenes(nusc) -> list[str]:
    """Scene names of the loaded tables, in time order of their first key frame."""
    first = {s["name"]: nusc.get("sample", s["first_sample_token"])["timestamp"] for s in nusc.scene}
    return sorted(first, key=lambda n: (first[n], n))


def names_hint(names: Sequence[str], limit: int = 40) -> str:
    """Scene names for an error message (the first ``limit`` and how many more)."""
    head = ", ".join(names[:limit])
    return head + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _check_output(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise FileExistsError(f"output bag {out} exists; choose a new --out or pass --overwrite")
    if out.is_dir() and (out / "metadata.yaml").is_file() or (out.is_dir() and not any(out.iterdir())):
        shutil.rmtree(out)
        return
    raise FileExistsError(f"--overwrite refuses to delete {out}: it is not a rosbag2 folder (no metadata.yaml)")


def write_bag(
    data: str | Path,
    out: str | Path,
    scenes: Optional[Sequence[str]] = None,
    sweeps: bool = False,
    version: Optional[str] = None,
    metadata_version: int = 9,
    compression: str = "zstd",
    overwrite: bool = False,
    progress: bool = True,
    cfg=None,
) -> BagSummary:
    """Convert scenes of a nuScenes-format dataset into one rosbag2 MCAP bag (module docstring).

    Args:
        data: dataset root (nuScenes dataroot or a synthetic world).
        out: bag folder to create (rosbag2 layout: ``out/<name>.mcap`` + ``metadata.yaml``).
        scenes: scene names; None = every scene of the tables.
        sweeps: also write the non-key camera frames (~12 Hz).
        version: nuScenes version folder (None = the only one).
        metadata_version: rosbag2 metadata version, 9 (Jazzy and newer) or 8.
        compression: "zstd" (MCAP chunk compression) or "none".
        overwrite: replace an existing bag folder.
        progress: show a tqdm progress bar.
        cfg: ``SparseOccVLAConfig`` whose grid / plan horizon the GT uses (default: the paper config's).
    Returns:
        :class:`BagSummary`.
    Raises:
        FileNotFoundError: missing dataset root / tables / images.  ValueError: unknown scene (the message lists the
        available ones), overlapping scenes, bad options.  FileExistsError: ``out`` exists.
    """
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

    from sparseoccvla_core.config import SparseOccVLAConfig
    from sparseoccvla_core.data.frames import index_split, load_nuscenes
    from sparseoccvla_core.data.layout import resolve_layout

    if metadata_version not in (8, 9):
        raise ValueError(f"metadata_version must be 8 or 9, got {metadata_version}")
    if compression not in ("zstd", "none"):
        raise ValueError(f"compression must be 'zstd' or 'none', got {compression!r}")
    cfg = cfg if cfg is not None else SparseOccVLAConfig()
    t0 = time.perf_counter()
    out = Path(out)
    _check_output(out, overwrite)
    layout = resolve_layout(data, version)
    nusc = load_nuscenes(layout)
    names_all = available_scenes(nusc)
    if scenes is None:
        names = names_all
    else:
        unknown = [n for n in scenes if n not in names_all]
        if unknown:
            raise ValueError(f"unknown scene(s) {unknown} in {layout.table_root}; available: {names_hint(names_all)}")
        names = [n for n in names_all if n in set(scenes)]  # time order
    if not names:
        raise ValueError(f"{layout.table_root} has no scenes")
    frames = index_split(layout, "bag", num_frames=1, nusc=nusc, scenes=names)
    conv = _SceneConverter(nusc, layout, cfg, sweeps)

    ts = replay_typestore()
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = Writer(out, version=metadata_version, storage_plugin=StoragePlugin.MCAP)
    if compression == "zstd":
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    custom = {
        "sparseoccvla.bag_format": str(BAG_FORMAT_VERSION),
        "sparseoccvla.source": f"{layout.root} ({layout.version})",
        "sparseoccvla.scenes": json.dumps(names),
        "sparseoccvla.sweeps": json.dumps(bool(sweeps)),
        "sparseoccvla.occupancy_range": json.dumps([float(v) for v in cfg.point_cloud_range]),
        "sparseoccvla.voxel_size": json.dumps(float(cfg.voxel_size)),
        "sparseoccvla.occupancy_grid": json.dumps(list(cfg.grid_shape)),
        "sparseoccvla.plan_horizon": json.dumps(int(cfg.plan_horizon)),
        "sparseoccvla.plan_dt": json.dumps(float(cfg.plan_dt)),
        "sparseoccvla.free_class": json.dumps(int(FREE_CLASS)),
    }
    for key, value in custom.items():
        writer.set_custom_data(key, value)
    summary = BagSummary(path=out)
    calibs: list[tuple[str, dict]] = []
    writer.open()
    try:
        conns = {}
        for topic, msgtype in bag_topics().items():
            static = topic == topics.TF_STATIC_TOPIC
            conns[topic] = writer.add_connection(
                topic, msgtype, typestore=ts, offered_qos_profiles=[_qos(static, 1 if static else 10)]
            )
        counts = {t: 0 for t in conns}
        bar = _progress_bar(sum(len(s) for s in frames), progress)
        prev_end: Optional[tuple[str, int]] = None
        for scene in frames:
            events, scene_summary, calib = conv.events(scene)
            if prev_end is not None and scene_summary.start_ns <= prev_end[1]:
                raise ValueError(
                    f"scenes {prev_end[0]} and {scene.name} overlap in time; their messages would "
                    "interleave: write them to separate bags (--scene)"
                )
            prev_end = (scene.name, scene_summary.end_ns)
            for e in events:
                msg = e.build()
                writer.write(conns[e.topic], e.time_ns, serialize(msg, bag_topics()[e.topic], ts))
                counts[e.topic] += 1
                if e.topic == topics.GT_FRAME_TOPIC:
                    bar.update(1)
            summary.scenes.append(scene_summary)
            calibs.append((scene.name, calib))
        bar.close()
    except BaseException:
        writer.close()  # leave a readable (partial) bag behind, then report
        raise
    writer.close()
    summary.topic_counts = {t: c for t, c in counts.items() if c}
    summary.calibration_files = _write_calibrations(out, calibs)
    summary.bytes = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    summary.seconds = time.perf_counter() - t0
    return summary


def calibration_entries(calib: dict[str, dict]) -> dict:
    """{camera: CameraCalibration} of a converter calibration dict (see ``_SceneConverter.calibration``)."""
    from sparseoccvla_core.calibration_file import CameraCalibration
    from sparseoccvla_core.geometry.camera import pose_matrix

    return {
        cam: CameraCalibration(
            name=cam,
            cam2ego=pose_matrix(c["rotation"], c["translation"]),
            frame_id=cam,
            intrinsics=c["K"],
            image_size=(c["width"], c["height"]),
        )
        for cam, c in calib.items()
    }


def _same_calibration(a: dict[str, dict], b: dict[str, dict]) -> bool:
    return all(
        np.allclose(a[c]["translation"], b[c]["translation"])
        and np.allclose(a[c]["rotation"], b[c]["rotation"])
        and np.allclose(a[c]["K"], b[c]["K"])
        for c in CAMERA_NAMES
    )


def _write_calibrations(out: Path, calibs: list[tuple[str, dict]]) -> list[Path]:
    """calibration.yaml from the first scene; a scene with a different rig also gets calibration_<scene>.yaml."""
    from sparseoccvla_core.calibration_file import save_calibration

    written = [save_calibration(out / topics.CALIBRATION_FILENAME, calibration_entries(calibs[0][1]), topics.EGO_FRAME)]
    for name, calib in calibs[1:]:
        if not _same_calibration(calibs[0][1], calib):
            path = out / f"calibration_{name}.yaml"
            print(
                f"[bag] warning: {name} has a different camera rig than {calibs[0][0]}; {topics.CALIBRATION_FILENAME}"
                f" holds {calibs[0][0]}'s, {path.name} holds {name}'s (/tf_static carries each scene's own)",
                file=sys.stderr,
            )
            written.append(save_calibration(path, calibration_entries(calib), topics.EGO_FRAME))
    return written


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="bag", unit="key frame")


# ============================================================================ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="nuScenes dataroot or synthetic world (sparseoccvla synth)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--scene", nargs="+", metavar="NAME", help="scene name(s), e.g. scene-0103")
    which.add_argument("--all", action="store_true", help="every scene of the tables (time order, one bag)")
    parser.add_argument(
        "--out", required=True, help="bag folder to create (rosbag2: <out>/<name>.mcap + metadata.yaml)"
    )
    parser.add_argument("--sweeps", action="store_true", help="also write the non-key camera frames (~12 Hz)")
    parser.add_argument("--version", default=None, help="nuScenes version folder (default: the only one)")
    parser.add_argument(
        "--metadata-version",
        type=int,
        choices=(8, 9),
        default=9,
        help="rosbag2 metadata version (default %(default)s: Jazzy and newer; 8 for older readers)",
    )
    parser.add_argument(
        "--compression", choices=("zstd", "none"), default="zstd", help="MCAP chunk compression (default %(default)s)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bag folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        summary = write_bag(
            args.data,
            args.out,
            scenes=None if args.all else args.scene,
            sweeps=args.sweeps,
            version=args.version,
            metadata_version=args.metadata_version,
            compression=args.compression,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"sparseoccvla bag: error: {err}", file=sys.stderr)
        return 2
    mb = summary.bytes / 1e6
    print(
        f"[bag] wrote {summary.messages} messages ({summary.key_frames} key frames of {len(summary.scenes)} "
        f"scene(s)) to {summary.path} in {summary.seconds:.1f} s: {mb:.1f} MB, "
        f"{mb / max(summary.seconds, 1e-9):.1f} MB/s, {summary.key_frames / max(summary.seconds, 1e-9):.1f} key frames/s"
    )
    missing = sum(s.missing_label_files for s in summary.scenes)
    if missing:
        print(f"[bag] {missing} key frame(s) have no Occ3D labels: no /gt/occupancy for them", file=sys.stderr)
    for path in summary.calibration_files:
        print(f"[bag] calibration: {path}")
    return 0


def main(argv: Optional[Iterable[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="sparseoccvla bag", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(None if argv is None else list(argv)))


if __name__ == "__main__":
    sys.exit(main())
