"""``sparseoccvla calibration``: write the camera calibration YAML from nuScenes tables or from a bag.

    sparseoccvla calibration --data /data/nuscenes --scene scene-0103 --out calibration.yaml
    sparseoccvla calibration --bag bags/scene-0103 --out calibration.yaml

* ``--data``: the ``calibrated_sensor`` records of the scene's first key frame (default: the first scene in time
  order) - extrinsics (translation + rotation, camera -> ego), K and the image size of its sample_data.
* ``--bag``: a rosbag2 bag (MCAP or sqlite3, read with ``rosbags``; no ROS installation needed).  Extrinsics come
  from the first ``/tf_static`` messages, composing parent -> child transforms up to ``--ego-frame`` (a camera may
  hang below intermediate frames); intrinsics and image size from the first CameraInfo of each camera.  A camera's
  TF frame is its CameraInfo ``header.frame_id`` (the camera name when empty).  CameraInfo topics are
  ``/<CAM>/camera_info`` (foxglove nuscenes2mcap), else any CameraInfo topic whose name contains ``/<CAM>/``.

The YAML schema is :mod:`sparseoccvla_core.calibration_file` (the driving node's ``calibration_file`` fallback:
``/tf_static`` and CameraInfo win when they arrive).  Pure Python: no rclpy import.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np

from sparseoccvla_core.batch import CAMERA_NAMES

from . import topics

TF_TYPE = "tf2_msgs/msg/TFMessage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"


class CalibrationSourceError(ValueError):
    """The source lacks something the YAML needs (the message names the camera and what is missing)."""


def calibration_from_tables(data: str | Path, scene: Optional[str] = None, version: Optional[str] = None) -> dict:
    """{camera: CameraCalibration} from ``calibrated_sensor`` of a scene's first key frame.

    Raises:
        FileNotFoundError: bad dataset root / tables.  ValueError: unknown scene (lists the available ones).
    """
    from sparseoccvla_core.data.frames import load_nuscenes
    from sparseoccvla_core.data.layout import resolve_layout

    from .bag_writer import available_scenes, calibration_entries, names_hint

    layout = resolve_layout(data, version)
    nusc = load_nuscenes(layout)
    names = available_scenes(nusc)
    if not names:
        raise ValueError(f"{layout.table_root} has no scenes")
    name = scene or names[0]
    if name not in names:
        raise ValueError(f"unknown scene {name!r} in {layout.table_root}; available: {names_hint(names)}")
    rec = next(s for s in nusc.scene if s["name"] == name)
    sample = nusc.get("sample", rec["first_sample_token"])
    calib = {}
    for cam in CAMERA_NAMES:
        if cam not in sample["data"]:
            raise CalibrationSourceError(f"scene {name}: the first key frame has no {cam} sample_data")
        sd = nusc.get("sample_data", sample["data"][cam])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        calib[cam] = {
            "translation": [float(v) for v in cs["translation"]],
            "rotation": [float(v) for v in cs["rotation"]],
            "K": np.asarray(cs["camera_intrinsic"], dtype=np.float64),
            "width": int(sd["width"]),
            "height": int(sd["height"]),
        }
    return calibration_entries(calib)


def _transform_matrix(t: Any) -> np.ndarray:
    """geometry_msgs/Transform (rosbags or rclpy) -> [4, 4]."""
    from sparseoccvla_core.geometry.camera import pose_matrix

    r, p = t.rotation, t.translation
    return pose_matrix((r.w, r.x, r.y, r.z), (p.x, p.y, p.z))


def chain_to_frame(transforms: dict[str, tuple[str, np.ndarray]], frame: str, target: str) -> Optional[np.ndarray]:
    """Compose child -> parent transforms from ``frame`` up to ``target``; None when the chain is broken.

    Args:
        transforms: {child frame: (parent frame, [4, 4] child -> parent)}.
        frame: start frame (a camera).
        target: the ego frame.
    """
    m, node = np.eye(4), frame.lstrip("/")
    for _ in range(64):
        if node == target:
            return m
        if node not in transforms:
            return None
        parent, t = transforms[node]
        m, node = t @ m, parent
    return None  # a loop in the tree


def calibration_from_bag(bag: str | Path, ego_frame: str = topics.EGO_FRAME) -> dict:
    """{camera: CameraCalibration} from a bag's ``/tf_static`` + CameraInfo (module docstring).

    Raises:
        FileNotFoundError: no bag at ``bag``.  CalibrationSourceError: no /tf_static, no CameraInfo for a camera,
        or no transform chain from a camera's frame to ``ego_frame`` (the message lists the frames present).
    """
    from rosbags.rosbag2 import Reader

    from sparseoccvla_core.calibration_file import CameraCalibration

    from .typestore import deserialize, replay_typestore

    bag = Path(bag)
    if not (bag / "metadata.yaml").is_file() and not bag.is_file():
        raise FileNotFoundError(f"no rosbag2 bag at {bag} (expected a folder with metadata.yaml)")
    ts = replay_typestore()
    with Reader(bag) as reader:
        tf_conns = [c for c in reader.connections if c.topic == topics.TF_STATIC_TOPIC and c.msgtype == TF_TYPE]
        info_conns = [c for c in reader.connections if c.msgtype == CAMERA_INFO_TYPE]
        if not tf_conns:
            raise CalibrationSourceError(f"{bag} has no {topics.TF_STATIC_TOPIC} ({TF_TYPE}) topic")
        by_cam: dict[str, Any] = {}
        for cam in CAMERA_NAMES:
            exact = [c for c in info_conns if c.topic == topics.camera_info_topic(cam)]
            loose = [c for c in info_conns if f"/{cam}/" in f"{c.topic}/"]
            if exact or loose:
                by_cam[cam] = (exact or loose)[0]
        missing = [c for c in CAMERA_NAMES if c not in by_cam]
        if missing:
            raise CalibrationSourceError(
                f"{bag}: no CameraInfo topic for {missing} (CameraInfo topics: {sorted(c.topic for c in info_conns)})"
            )
        transforms: dict[str, tuple[str, np.ndarray]] = {}
        for _, _, raw in reader.messages(connections=tf_conns):
            for t in deserialize(raw, TF_TYPE, ts).transforms:
                child = t.child_frame_id.lstrip("/")
                transforms.setdefault(child, (t.header.frame_id.lstrip("/"), _transform_matrix(t.transform)))
        infos: dict[str, Any] = {}
        wanted = {c.id: cam for cam, c in by_cam.items()}
        for conn, _, raw in reader.messages(connections=list(by_cam.values())):
            cam = wanted[conn.id]
            if cam not in infos:
                infos[cam] = deserialize(raw, CAMERA_INFO_TYPE, ts)
            if len(infos) == len(by_cam):
                break
    out = {}
    for cam in CAMERA_NAMES:
        info = infos.get(cam)
        if info is None:
            raise CalibrationSourceError(f"{bag}: topic {by_cam[cam].topic} has no messages")
        frame = info.header.frame_id.lstrip("/") or cam
        m = chain_to_frame(transforms, frame, ego_frame.lstrip("/"))
        if m is None:
            raise CalibrationSourceError(
                f"{bag}: no {topics.TF_STATIC_TOPIC} chain from {cam}'s frame {frame!r} to {ego_frame!r} "
                f"(child frames present: {sorted(transforms)})"
            )
        k = np.asarray(info.k, dtype=np.float64).reshape(3, 3)
        if not np.all(np.isfinite(k)) or k[0, 0] <= 0 or k[1, 1] <= 0:
            raise CalibrationSourceError(f"{bag}: {by_cam[cam].topic} has no valid K (fx, fy must be > 0)")
        size = (int(info.width), int(info.height)) if info.width and info.height else None
        out[cam] = CameraCalibration(name=cam, cam2ego=m, frame_id=frame, intrinsics=k, image_wh=size)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="nuScenes dataroot or synthetic world (calibrated_sensor table)")
    src.add_argument("--bag", help="rosbag2 bag folder with /tf_static and the cameras' CameraInfo")
    parser.add_argument(
        "--scene",
        default=None,
        help="with --data: scene whose first key frame is used (default: the first scene in time order)",
    )
    parser.add_argument("--version", default=None, help="with --data: nuScenes version folder")
    parser.add_argument(
        "--ego-frame", default=topics.EGO_FRAME, help="ego frame of the extrinsics (default %(default)s)"
    )
    parser.add_argument("--out", required=True, help="YAML file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    from sparseoccvla_core.calibration_file import save_calibration

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        print(f"sparseoccvla calibration: error: {out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        if args.data:
            cams = calibration_from_tables(args.data, args.scene, args.version)
        else:
            if args.scene:
                raise ValueError("--scene applies to --data only")
            cams = calibration_from_bag(args.bag, args.ego_frame)
    except (FileNotFoundError, ValueError) as err:
        print(f"sparseoccvla calibration: error: {err}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    save_calibration(out, cams, args.ego_frame)
    print(f"[calibration] wrote {len(cams)} cameras to {out}")
    return 0
