"""Per key frame camera history, calibration and ego poses of a nuScenes-format dataset through nuscenes-devkit.

For every key frame of a split this builds, once, everything the model input needs (paper sec. 3.1:
multi-view, multi-frame sampling with intrinsics, cam2ego and ego poses): the six camera files of the current
frame and of ``F - 1`` past frames, their intrinsics, cam2ego and the ego pose of each frame.  The devkit's
``NuScenes`` object is only used while indexing and is dropped afterwards, so the index pickles cheaply into
DataLoader workers.

* **Past frames** are the previous key frames (``past="keyframes"``, ``stride`` key frames apart, 0.5 s each in
  nuScenes) or camera sweeps (``past="sweeps"``, ``stride`` sweeps apart per camera; 6 = ~0.5 s at 12 Hz, OPUS'
  test interval, docs/reference_choices.md §2.6).  Missing history (scene start) repeats the oldest real frame with
  ``frame_valid = False`` (:mod:`sparseoccvla_core.batch` convention).
* **Frame ego pose**: a key frame's reference pose is the LIDAR_TOP ego pose (Occ3D labels are in the ego frame
  at the lidar timestamp) or CAM_FRONT's when there is no lidar; a sweep frame uses its CAM_FRONT pose.
* **cam2ego** includes the ego motion between each camera's own timestamp and the frame's reference pose
  (``inv(E_ref) @ E_cam @ C``), so projecting an ego-frame point with it is exact, like mmdet3d's ``lidar2cam``
  (cameras fire up to ~45 ms before the lidar; ignoring it moves near points by a few pixels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..batch import CAMERA_NAMES
from ..geometry.camera import invert_pose, pose_matrix
from ..geometry.ego_motion import ego_states
from .layout import DatasetLayout, split_scene_names

PAST_MODES: tuple[str, ...] = ("keyframes", "sweeps")
REFERENCE_SENSOR = "LIDAR_TOP"


@dataclass
class SceneFrames:
    """Indexed key frames of one scene.  ``R`` camera-set rows: key frames first (row i = key frame i), then sweeps.

    Args:
        name: scene name (``scene-0061``).
        token: scene token.
        location: log location (``singapore-onenorth``, ...).
        sample_tokens: [S] key-frame sample tokens in time order.
        timestamps: [S] int64 key-frame timestamps, us.
        ego2global: [S, 4, 4] key-frame reference ego poses.
        ego_state: [S, EGO_STATE_DIM] float32 ego state of each key frame (:func:`ego_motion.ego_states`).
        row_files: [R] tuples of V image paths relative to the dataset root.
        row_intrinsics: [R, V, 3, 3] K of the original images.
        row_cam2ego: [R, V, 4, 4] camera -> the row's reference ego frame (motion compensated).
        row_ego2global: [R, 4, 4] reference ego pose of each row.
        row_image_hw: [R, V, 2] original image (H, W).
        history: [S, F] row index of frame f of key frame i (f = 0 current, then past, most recent first).
        history_valid: [S, F] bool, False where the history was padded.
    """

    name: str
    token: str
    location: str
    sample_tokens: list[str]
    timestamps: np.ndarray
    ego2global: np.ndarray
    ego_state: np.ndarray
    row_files: list[tuple[str, ...]]
    row_intrinsics: np.ndarray
    row_cam2ego: np.ndarray
    row_ego2global: np.ndarray
    row_image_hw: np.ndarray
    history: np.ndarray
    history_valid: np.ndarray

    def __len__(self) -> int:
        return len(self.sample_tokens)


@dataclass
class _Rows:
    files: list[tuple[str, ...]] = field(default_factory=list)
    intrinsics: list[np.ndarray] = field(default_factory=list)
    cam2ego: list[np.ndarray] = field(default_factory=list)
    ego2global: list[np.ndarray] = field(default_factory=list)
    image_hw: list[np.ndarray] = field(default_factory=list)
    by_key: dict[tuple[str, ...], int] = field(default_factory=dict)


class _DevkitIndexer:
    """Caches the devkit lookups (calibration, poses) that many frames share while a split is indexed."""

    def __init__(self, nusc) -> None:
        self.nusc = nusc
        self._calib: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._pose: dict[str, np.ndarray] = {}

    def calib(self, token: str) -> tuple[np.ndarray, np.ndarray]:
        """calibrated_sensor token -> (K [3, 3], sensor2ego [4, 4])."""
        if token not in self._calib:
            rec = self.nusc.get("calibrated_sensor", token)
            k = np.asarray(rec["camera_intrinsic"], dtype=np.float64)
            if k.shape != (3, 3):
                raise ValueError(f"calibrated_sensor {token} has no 3x3 camera_intrinsic (got {k.shape})")
            self._calib[token] = (k, pose_matrix(rec["rotation"], rec["translation"]))
        return self._calib[token]

    def pose(self, token: str) -> np.ndarray:
        """ego_pose token -> ego2global [4, 4]."""
        if token not in self._pose:
            rec = self.nusc.get("ego_pose", token)
            self._pose[token] = pose_matrix(rec["rotation"], rec["translation"])
        return self._pose[token]

    def walk_prev(self, sd_token: str, steps: int) -> Optional[str]:
        """The sample_data ``steps`` records before ``sd_token`` on the same sensor, None past the start."""
        for _ in range(steps):
            sd_token = self.nusc.get("sample_data", sd_token)["prev"]
            if not sd_token:
                return None
        return sd_token

    def add_row(self, rows: _Rows, sd_tokens: tuple[str, ...], ref_pose_token: str) -> int:
        key = sd_tokens + (ref_pose_token,)
        if key in rows.by_key:
            return rows.by_key[key]
        e_ref = self.pose(ref_pose_token)
        g2e = invert_pose(e_ref)
        files, ks, c2e, hw = [], [], [], []
        for tok in sd_tokens:
            sd = self.nusc.get("sample_data", tok)
            k, sensor2ego = self.calib(sd["calibrated_sensor_token"])
            if sd["ego_pose_token"] == ref_pose_token:
                c2e.append(sensor2ego)
            else:
                c2e.append(g2e @ self.pose(sd["ego_pose_token"]) @ sensor2ego)
            files.append(sd["filename"])
            ks.append(k)
            hw.append((int(sd["height"]), int(sd["width"])))
        rows.by_key[key] = len(rows.files)
        rows.files.append(tuple(files))
        rows.intrinsics.append(np.stack(ks))
        rows.cam2ego.append(np.stack(c2e))
        rows.ego2global.append(e_ref)
        rows.image_hw.append(np.asarray(hw, dtype=np.int64))
        return rows.by_key[key]


def _camera_tokens(sample: dict, sample_token: str) -> tuple[str, ...]:
    missing = [c for c in CAMERA_NAMES if c not in sample["data"]]
    if missing:
        raise ValueError(f"sample {sample_token} has no sample_data for {missing}; all six cameras are required")
    return tuple(sample["data"][c] for c in CAMERA_NAMES)


def index_scene(indexer: _DevkitIndexer, scene: dict, num_frames: int, past: str, stride: int) -> SceneFrames:
    """Index one scene (see :class:`SceneFrames`)."""
    nusc = indexer.nusc
    samples = []
    token = scene["first_sample_token"]
    while token:
        rec = nusc.get("sample", token)
        samples.append(rec)
        token = rec["next"]
    if len(samples) != scene.get("nbr_samples", len(samples)):
        raise ValueError(
            f"scene {scene['name']}: sample chain has {len(samples)} key frames, table says {scene['nbr_samples']}"
        )
    rows = _Rows()
    cam_tokens, ref_pose_tokens = [], []
    for rec in samples:
        cams = _camera_tokens(rec, rec["token"])
        ref_sd = rec["data"].get(REFERENCE_SENSOR, cams[0])  # cams[0] is CAM_FRONT
        ref_pose = nusc.get("sample_data", ref_sd)["ego_pose_token"]
        indexer.add_row(rows, cams, ref_pose)
        cam_tokens.append(cams)
        ref_pose_tokens.append(ref_pose)
    s = len(samples)
    history = np.zeros((s, num_frames), dtype=np.int64)
    valid = np.zeros((s, num_frames), dtype=bool)
    for i in range(s):
        last_row = i
        for f in range(num_frames):
            row: Optional[int] = None
            if f == 0:
                row = i
            elif past == "keyframes":
                j = i - f * stride
                row = j if j >= 0 else None
            else:
                prev = tuple(indexer.walk_prev(t, f * stride) for t in cam_tokens[i])
                if all(prev):
                    ref_pose = nusc.get("sample_data", prev[0])["ego_pose_token"]
                    row = indexer.add_row(rows, prev, ref_pose)  # type: ignore[arg-type]
            if row is None:  # repeat the oldest real frame, marked invalid
                history[i, f:] = last_row
                break
            history[i, f] = last_row = row
            valid[i, f] = True
    ego2global = np.stack([indexer.pose(t) for t in ref_pose_tokens])  # [S, 4, 4]
    timestamps = np.asarray([rec["timestamp"] for rec in samples], dtype=np.int64)
    log = nusc.get("log", scene["log_token"])
    return SceneFrames(
        name=scene["name"],
        token=scene["token"],
        location=str(log.get("location", "")),
        sample_tokens=[rec["token"] for rec in samples],
        timestamps=timestamps,
        ego2global=ego2global,
        ego_state=ego_states(ego2global, timestamps),
        row_files=rows.files,
        row_intrinsics=np.stack(rows.intrinsics),
        row_cam2ego=np.stack(rows.cam2ego),
        row_ego2global=np.stack(rows.ego2global),
        row_image_hw=np.stack(rows.image_hw),
        history=history,
        history_valid=valid,
    )


def load_nuscenes(layout: DatasetLayout):
    """``nuscenes.nuscenes.NuScenes`` for the layout (tables checked by :func:`layout.resolve_layout`)."""
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version=layout.version, dataroot=str(layout.root), verbose=False)


def index_split(
    layout: DatasetLayout,
    split: str,
    num_frames: int = 1,
    past: str = "keyframes",
    stride: int = 1,
    nusc=None,
    scenes: Optional[list[str]] = None,
) -> list[SceneFrames]:
    """Index every scene of ``split`` present in the dataset.

    Args:
        layout: the dataset.
        split: split name (``train`` / ``val`` / ... see :func:`layout.split_scene_names`).
        num_frames: F, current + past frames per key frame.
        past: "keyframes" or "sweeps".
        stride: key frames (or sweeps) between consecutive history frames.
        nusc: an already loaded ``NuScenes`` (else loaded here).
        scenes: restrict to these scene names (in this order).
    Returns:
        One :class:`SceneFrames` per scene, in split order.
    Raises:
        ValueError: bad ``past`` / ``stride``, or none of the split's scenes is in this version.
    """
    if past not in PAST_MODES:
        raise ValueError(f"past must be one of {PAST_MODES}, got {past!r}")
    if stride < 1 or num_frames < 1:
        raise ValueError("stride and num_frames must be >= 1")
    names = scenes if scenes is not None else split_scene_names(layout, split)
    nusc = nusc if nusc is not None else load_nuscenes(layout)
    by_name = {s["name"]: s for s in nusc.scene}
    present = [n for n in names if n in by_name]
    if not present:
        raise ValueError(
            f"none of the {len(names)} scenes of split {split!r} is in {layout.table_root} "
            f"(it has {sorted(by_name)[:5]}...); use the split of this version (v1.0-mini: mini_train / mini_val)"
        )
    indexer = _DevkitIndexer(nusc)
    return [index_scene(indexer, by_name[n], num_frames, past, stride) for n in present]
