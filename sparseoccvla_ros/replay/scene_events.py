"""One scene of a nuScenes-format dataset -> the time-ordered messages of its GT bag (``sparseoccvla bag``).

:class:`SceneConverter` reads the devkit tables and the dataset code (the same ego poses, ego state, future
waypoints, command, Occ3D labels and collision boxes ``sparseoccvla eval`` uses) and returns :class:`Event` s that
:func:`sparseoccvla_ros.replay.bag_writer.write_bag` serialises in log-time order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from sparseoccvla_core.batch import CAMERA_NAMES

from . import topics
from .bag_messages import (
    TYPE_STRING,
    TYPE_TF,
    TYPE_UINT8,
    boxes_msg,
    camera_info_msg,
    camera_mask_msg,
    compressed_image_msg,
    gt_cloud_msg,
    odometry_msg,
    path_msg,
    transform_stamped,
)
from .typestore import make_msg

NS_PER_US = 1000
#: Message priority at equal log time (lower first): calibration before data, the camera info before its image.
_PRIO_TF_STATIC, _PRIO_COMMAND, _PRIO_ODOM, _PRIO_INFO, _PRIO_IMAGE, _PRIO_GT = range(6)


@dataclass
class Event:
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


def _us_to_ns(us: int) -> int:
    return int(us) * NS_PER_US


class SceneConverter:
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
    def events(self, scene) -> tuple[list[Event], SceneSummary, dict[str, dict]]:
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
                Event(
                    s,
                    _PRIO_INFO,
                    topics.camera_info_topic(cam),
                    lambda s=s, cam=cam, k=k, sd=sd: camera_info_msg(s, cam, k, sd["height"], sd["width"]),
                )
            )
            ev.append(
                Event(
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
                Event(
                    s,
                    _PRIO_ODOM,
                    topics.ODOM_TOPIC,
                    lambda s=s, p=p, st=st: odometry_msg(
                        s, p["translation"], p["rotation"], (float(st[0]), float(st[1])), float(st[4])
                    ),
                )
            )
            ev.append(
                Event(
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
                Event(
                    s,
                    _PRIO_GT,
                    topics.GT_FRAME_TOPIC,
                    lambda info=info: make_msg(TYPE_STRING, data=json.dumps(info, sort_keys=True)),
                )
            )
            wp, valid, yaws, fut_idx = self._trajectory(scene, i)
            cmd = self._command(wp, valid)
            ev.append(
                Event(
                    min(cam_stamps.values()),
                    _PRIO_COMMAND,
                    topics.GT_COMMAND_TOPIC,
                    lambda cmd=cmd: make_msg(TYPE_UINT8, data=cmd),
                )
            )
            n_valid = int(valid.sum())
            ev.append(
                Event(
                    s,
                    _PRIO_GT,
                    topics.GT_TRAJECTORY_TOPIC,
                    lambda s=s, wp=wp, yaws=yaws, n=n_valid, f=fut_idx: path_msg(
                        s, wp[:n], yaws[:n], [stamps[j] for j in f[:n]]
                    ),
                )
            )
            ev.append(Event(s, _PRIO_GT, topics.GT_BOXES_TOPIC, lambda s=s, i=i: boxes_msg(s, self._boxes(scene, i))))
            label_path = self.layout.occ3d_path(scene.name, tok)
            if label_path.is_file():
                n_occ += 1
                ev.append(Event(s, _PRIO_GT, topics.GT_OCCUPANCY_TOPIC, lambda s=s, p=label_path: self._cloud(s, p)))
                ev.append(Event(s, _PRIO_GT, topics.GT_CAMERA_MASK_TOPIC, lambda s=s, p=label_path: self._mask(s, p)))
            else:
                n_missing += 1
        # /tf_static before anything else of the scene: base_link -> each camera
        start_ns = min(e.time_ns for e in ev)
        ev.append(
            Event(
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
