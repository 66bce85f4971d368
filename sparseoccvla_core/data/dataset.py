"""The training / evaluation dataset: one item per nuScenes key frame, batched into a ``DrivingBatch``.

``DrivingDataset(root, split, cfg, tokenizer)`` reads a nuScenes-format dataset (real nuScenes + Occ3D +
OmniDrive / nuScenes-QA, or the synthetic world; docs/data.md §1) and yields :class:`DrivingItem`;
:func:`collate` pads and stacks items into :class:`~sparseoccvla_core.batch.DrivingBatch` (every field and
convention is documented there)::

    from torch.utils.data import DataLoader
    ds = DrivingDataset("data/synth", "train", SparseOccVLAConfig.tiny(), tokenizer)
    loader = DataLoader(ds, batch_size=2, shuffle=True, collate_fn=collate, num_workers=2)

Per item (paper sec. 3 + appendix A): F frames x 6 cameras resized to ``cfg.image_size`` with intrinsics updated;
cam2ego and ego poses; ego state; the driving command and ``cfg.plan_horizon`` GT waypoints; Occ3D GT of the
current frame, the concatenated GT ``G`` (current + ``cfg.forecast_frames`` future frames, extended range),
``G`` in each future frame (eq. 11) and each future frame's own labels (evaluation); one understanding QA pair
and the driving-decision (plan) prompt ``cfg.plan_question`` + reasoning, tokenized with the model's chat template.

No work is done twice: calibration, poses, ego states and the camera history are indexed once per split
(:mod:`.frames`); decoded + resized images and sparse Occ3D points are kept in small LRU caches (consecutive key
frames share their past images and future labels), each JPEG is decoded once per item at reduced resolution.

Bad data: a missing dataset root / version / table / image / label file raises with the path to fix.  A corrupt
or truncated JPEG raises :class:`~.images.CorruptImageError` (``on_bad_image="raise"``, default) or, with
``on_bad_image="skip"``, the item is replaced by the next key frame whose images decode (a warning names the
file once; the replacement is deterministic).
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..batch import CAMERA_NAMES, FREE_CLASS, DrivingBatch, pad_text
from ..config import SparseOccVLAConfig
from ..geometry.camera import ResizeCrop, invert_pose, resize_crop_for
from ..geometry.ego_motion import driving_command, future_waypoints
from .frames import SceneFrames, index_split
from .images import CorruptImageError, load_image
from .layout import DatasetLayout, qa_split_name, resolve_layout
from .occ3d import EXTENDED_RANGE_EGO, VISIBILITY_MASKS, concat_gt, load_occ3d_labels, occ3d_points, to_future_frame
from .qa import (
    DESCRIPTION_QUESTION,
    OMNIDRIVE_KINDS,
    PLANNING_QUESTION,
    QA_SOURCES,
    DriveLMFrame,
    OmniDriveQA,
    QAPair,
    load_drivelm,
    load_nuscenes_qa,
    planning_answer,
)

logger = logging.getLogger(__name__)

#: nuScenes key frames are sampled at 2 Hz.
KEYFRAME_INTERVAL_S: float = 0.5


@dataclass
class DatasetOptions:
    """Loader options (data-side knobs; the model's sizes come from ``SparseOccVLAConfig``).

    Args:
        version: nuScenes version folder; None = the only one under the root.
        past: "keyframes" (previous key frames) or "sweeps" (previous camera sweeps) for the F - 1 past frames.
        past_stride: key frames (or sweeps) between history frames (sweeps: 6 = ~0.5 s, OPUS' test interval).
        occ3d_root: Occ3D ``gts`` folder when not ``root/gts``.
        omnidrive_root: OmniDrive QA folder when not ``root/omnidrive``.
        nuscenes_qa_root: nuScenes-QA folder when not ``root/nuscenes_qa``.
        drivelm_file: a DriveLM-nuScenes JSON to use as a QA source ("drivelm").
        load_occupancy: read Occ3D GT (False for splits without labels, e.g. nuScenes test).
        future_occupancy: also read the future frames' labels and build the concatenated and per-future-frame GT
            (False: items carry the current frame's GT only, ``occ_concat_*`` and ``future_*`` None; training
            stage 1 with ``occ_gt: current`` needs nothing else).
        occ_visibility: "none" (all labelled voxels, as OPUS / SparseWorld train), "camera" or "lidar".
        concat_range: range of the concatenated GT in ego metres (default SparseWorld's extended range,
            z-shifted like the Occ3D grid); must align with the voxel grid.
        max_gt_points: randomly keep at most this many points of each GT point set (None = all).
        gt_keep_classes: labels whose points the cap always keeps (the other points are subsampled to fill the
            rest of ``max_gt_points``; when the kept points alone exceed it, all of them are kept).
        qa_sources: QA sources the understanding pair is drawn from (see :data:`.qa.QA_SOURCES`).
        qa_choice: "random" (a random pair per item) or "first" (deterministic, for evaluation).
        require_text: raise when an item has no QA pair or plan text (else the item gets the prompt with no
            answer, i.e. no language loss).
        on_bad_image: "raise" or "skip" for a corrupt / truncated JPEG (see module docstring).
        augment: image augmentation (off by default): random resize scale in ``aug_scale_range`` times the
            cover scale, random horizontal crop position, random bottom crop in ``aug_bottom_crop_range``, and
            brightness / contrast jitter of ``aug_color_jitter``; the same geometric draw for all images of an item.
        aug_scale_range: (min, max) resize factor relative to the test-time scale; SparseBEV's resize_lim
            (0.38, 0.55) at 0.44 test scale = (0.86, 1.25).
        aug_bottom_crop_range: (min, max) fraction of the resized height cut at the bottom (SparseBEV: 0).
        aug_color_jitter: max relative brightness / contrast change, 0 = off.
        cache_items: entries of each LRU cache (decoded images, sparse Occ3D frames); None = sized for sequential
            reading (2 F V images, 2 (T + 1) label frames: a few MB at the paper size), 0 disables caching.
        seed: base seed of the deterministic choices (skip policy order, "first" ties).
    """

    version: Optional[str] = None
    past: str = "keyframes"
    past_stride: int = 1
    occ3d_root: Optional[str] = None
    omnidrive_root: Optional[str] = None
    nuscenes_qa_root: Optional[str] = None
    drivelm_file: Optional[str] = None
    load_occupancy: bool = True
    future_occupancy: bool = True
    occ_visibility: str = "none"
    concat_range: tuple[float, float, float, float, float, float] = EXTENDED_RANGE_EGO  # type: ignore[assignment]
    max_gt_points: Optional[int] = None
    gt_keep_classes: tuple[int, ...] = ()
    qa_sources: tuple[str, ...] = ("desc", "conv", "vqa", "keywords", "nuscenes_qa", "drivelm")
    qa_choice: str = "random"
    require_text: bool = False
    on_bad_image: str = "raise"
    augment: bool = False
    aug_scale_range: tuple[float, float] = (0.86, 1.25)
    aug_bottom_crop_range: tuple[float, float] = (0.0, 0.0)
    aug_color_jitter: float = 0.0
    cache_items: Optional[int] = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.concat_range = tuple(float(v) for v in self.concat_range)  # type: ignore[assignment]
        self.qa_sources = tuple(self.qa_sources)
        unknown = sorted(set(self.qa_sources) - set(QA_SOURCES))
        if unknown:
            raise ValueError(f"unknown qa_sources {unknown}; valid: {QA_SOURCES}")
        if self.qa_choice not in ("random", "first"):
            raise ValueError(f"qa_choice must be 'random' or 'first', got {self.qa_choice!r}")
        if self.on_bad_image not in ("raise", "skip"):
            raise ValueError(f"on_bad_image must be 'raise' or 'skip', got {self.on_bad_image!r}")
        if self.occ_visibility not in VISIBILITY_MASKS:
            raise ValueError(f"occ_visibility must be one of {VISIBILITY_MASKS}, got {self.occ_visibility!r}")
        if len(self.concat_range) != 6:
            raise ValueError("concat_range must be (x_min, y_min, z_min, x_max, y_max, z_max)")
        if self.max_gt_points is not None and self.max_gt_points < 1:
            raise ValueError("max_gt_points must be >= 1 or None")


@dataclass
class DrivingItem:
    """One key frame before batching (numpy, unpadded).  Shapes as in :class:`DrivingBatch` without ``B``.

    Args:
        images: [F, V, H, W, 3] uint8 RGB (converted to float [F, V, 3, H, W] by :func:`collate`).
        intrinsics: [F, V, 3, 3] float32.
        cam2ego: [F, V, 4, 4] float32.
        ego2global: [F, 4, 4] float64.
        frame_valid: [F] bool.
        ego_state: [EGO_STATE_DIM] float32.
        command: driving command.
        gt_trajectory: [T_plan, 2] float32; gt_trajectory_mask: [T_plan] bool.
        occ_points / occ_labels: [G, 3] float32 / [G] int64 current GT (None without occupancy).
        occ_concat_points / occ_concat_labels: [Gc, 3] / [Gc] concatenated GT.
        future_points / future_labels: T arrays [Gt, 3] / [Gt] (eq. 11 targets, empty beyond the scene end).
        future_eval_points / future_eval_labels: T arrays, each future frame's own labels.
        future_valid: [T] bool.
        qa_ids / qa_labels, plan_ids / plan_labels: token id lists (None without a tokenizer).
        qa_pair, plan_text: the chosen texts (for inspection / evaluation).
        sample_token, scene_token, scene_name, frame_index, scene_length, timestamp: bookkeeping.
    """

    images: np.ndarray
    intrinsics: np.ndarray
    cam2ego: np.ndarray
    ego2global: np.ndarray
    frame_valid: np.ndarray
    ego_state: np.ndarray
    command: int
    gt_trajectory: np.ndarray
    gt_trajectory_mask: np.ndarray
    occ_points: Optional[np.ndarray]
    occ_labels: Optional[np.ndarray]
    occ_concat_points: Optional[np.ndarray]
    occ_concat_labels: Optional[np.ndarray]
    future_points: Optional[list[np.ndarray]]
    future_labels: Optional[list[np.ndarray]]
    future_eval_points: Optional[list[np.ndarray]]
    future_eval_labels: Optional[list[np.ndarray]]
    future_valid: np.ndarray
    qa_ids: Optional[list[int]]
    qa_labels: Optional[list[int]]
    plan_ids: Optional[list[int]]
    plan_labels: Optional[list[int]]
    qa_pair: Optional[QAPair]
    plan_text: Optional[str]
    sample_token: str
    scene_token: str
    scene_name: str
    frame_index: int
    scene_length: int
    timestamp: int


class LRUCache:
    """A small least-recently-used cache (per process: each DataLoader worker has its own)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, key: Any, compute: Callable[[], Any]) -> Any:
        if self.capacity <= 0:
            return compute()
        if key in self._data:
            self._data.move_to_end(key)
            self.hits += 1
            return self._data[key]
        self.misses += 1
        value = compute()
        self._data[key] = value
        if len(self._data) > self.capacity:
            self._data.popitem(last=False)
        return value


class DrivingDataset(Dataset):
    """Key frames of one split as :class:`DrivingItem` (see module docstring).

    Args:
        root: dataset root (nuScenes dataroot or a synthetic world).
        split: "train", "val" (or "mini_train" / "mini_val" / "test"; see :mod:`.layout`).
        cfg: model config (image size, frames, grid, horizons, text length).
        tokenizer: the model's tokenizer; None = no text fields.
        options: :class:`DatasetOptions`.
        scenes: restrict to these scene names.
        nusc: an already loaded ``nuscenes.nuscenes.NuScenes`` of this root (saves reloading the tables when
            several splits are built; it is not kept).
    Raises:
        FileNotFoundError / ValueError: bad root, version, tables, split (messages name what to fix).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        cfg: SparseOccVLAConfig,
        tokenizer=None,
        options: Optional[DatasetOptions] = None,
        scenes: Optional[Sequence[str]] = None,
        nusc=None,
    ) -> None:
        self.cfg = cfg
        self.split = split
        self.tokenizer = tokenizer
        self.options = options or DatasetOptions()
        opt = self.options
        if cfg.num_views != len(CAMERA_NAMES):
            raise ValueError(f"nuScenes has {len(CAMERA_NAMES)} cameras; cfg.num_views is {cfg.num_views}")
        self.layout: DatasetLayout = resolve_layout(
            root, opt.version, opt.occ3d_root, opt.omnidrive_root, opt.nuscenes_qa_root
        )
        self.forecast_step = self._keyframe_step(cfg.forecast_dt, "forecast_dt")
        self.plan_step = self._keyframe_step(cfg.plan_dt, "plan_dt")
        self._check_concat_range()
        self.scenes: list[SceneFrames] = index_split(
            self.layout,
            split,
            cfg.num_frames,
            opt.past,
            opt.past_stride,
            nusc=nusc,
            scenes=list(scenes) if scenes else None,
        )
        lengths = np.asarray([len(s) for s in self.scenes], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(lengths)])
        auto = opt.cache_items is None
        self._image_cache = LRUCache(2 * cfg.num_frames * cfg.num_views if auto else opt.cache_items)
        self._occ_cache = LRUCache(2 * (cfg.forecast_frames + 1) if auto else opt.cache_items)
        self._warned_files: set[str] = set()
        self._setup_text()

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _keyframe_step(dt: float, name: str) -> int:
        step = dt / KEYFRAME_INTERVAL_S
        if abs(step - round(step)) > 1e-6 or round(step) < 1:
            raise ValueError(
                f"cfg.{name} = {dt} s must be a multiple of the {KEYFRAME_INTERVAL_S} s key-frame interval"
            )
        return int(round(step))

    def _check_concat_range(self) -> None:
        r, c, v = self.cfg.point_cloud_range, self.options.concat_range, self.cfg.voxel_size
        offsets = [(r[i] - c[i]) / v for i in range(3)] + [(c[i + 3] - r[i + 3]) / v for i in range(3)]
        if any(o < -1e-6 or abs(o - round(o)) > 1e-6 for o in offsets):
            raise ValueError(
                f"concat_range {c} must contain cfg.point_cloud_range {r} and be aligned with its "
                f"{v} m voxels (each bound offset by a whole number of voxels)"
            )

    def _setup_text(self) -> None:
        opt, qa_split = self.options, qa_split_name(self.split)
        self.omnidrive = OmniDriveQA(self.layout.omnidrive_root, qa_split)
        self.nuscenes_qa: dict[str, list[QAPair]] = {}
        nqa_path = self.layout.nuscenes_qa_root / f"NuScenes_{qa_split}_questions.json"
        if "nuscenes_qa" in opt.qa_sources and nqa_path.is_file():
            self.nuscenes_qa = load_nuscenes_qa(nqa_path)
        self.drivelm: dict[str, DriveLMFrame] = {}
        if opt.drivelm_file:
            self.drivelm = load_drivelm(opt.drivelm_file)
        self._omni_kinds = tuple(k for k in OMNIDRIVE_KINDS if k in opt.qa_sources)

    # ------------------------------------------------------------------ indexing
    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, index: int) -> tuple[SceneFrames, int]:
        """Dataset index -> (scene, key-frame index within the scene)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} key frames")
        s = int(np.searchsorted(self._starts, index, side="right") - 1)
        return self.scenes[s], int(index - self._starts[s])

    # ------------------------------------------------------------------ item
    def __getitem__(self, index: int) -> DrivingItem:
        if self.options.on_bad_image == "raise":
            return self._item(index)
        for attempt in range(len(self)):
            candidate = (index + attempt) % len(self)
            try:
                return self._item(candidate)
            except CorruptImageError as exc:
                key = str(exc)
                if key not in self._warned_files:
                    self._warned_files.add(key)
                    logger.warning("skipping key frame %d: %s", candidate, exc)
        raise CorruptImageError(f"no key frame of split {self.split!r} has decodable images")

    def _item(self, index: int) -> DrivingItem:
        scene, i = self.locate(index)
        rng = random.Random(int(torch.randint(0, 2**62, ()).item())) if self._needs_rng() else None
        cfg, opt = self.cfg, self.options
        # 1. camera history: images, intrinsics (after resize / crop), cam2ego, frame poses
        rows = scene.history[i]  # [F]
        images, intrinsics = self._load_images(scene, rows, rng)
        cam2ego = scene.row_cam2ego[rows].astype(np.float32)  # [F, V, 4, 4]
        ego2global = scene.row_ego2global[rows]  # [F, 4, 4]
        # 2. ego state, waypoints (plan_dt steps) and command
        wp, wp_valid = self._waypoints(scene, i)
        command = driving_command(wp, wp_valid)
        # 3. occupancy GT (current, concatenated, per future frame)
        occ = self._occupancy(scene, i, rng) if opt.load_occupancy else None
        # 4. text
        qa_pair, plan_text = self._texts(scene, i, wp, wp_valid, rng)
        qa_ids = qa_labels = plan_ids = plan_labels = None
        if self.tokenizer is not None:
            from ..tokenizer import encode_qa

            if qa_pair is not None:
                qa_ids, qa_labels = encode_qa(self.tokenizer, qa_pair.question, qa_pair.answer, cfg.max_text_tokens)
            else:
                qa_ids, qa_labels = encode_qa(self.tokenizer, DESCRIPTION_QUESTION, None, cfg.max_text_tokens)
            plan_ids, plan_labels = encode_qa(self.tokenizer, cfg.plan_question, plan_text, cfg.max_text_tokens)
        t = cfg.forecast_frames
        return DrivingItem(
            images=images,
            intrinsics=intrinsics,
            cam2ego=cam2ego,
            ego2global=ego2global,
            frame_valid=scene.history_valid[i].copy(),
            ego_state=scene.ego_state[i].copy(),
            command=command,
            gt_trajectory=wp,
            gt_trajectory_mask=wp_valid,
            occ_points=occ[0] if occ else None,
            occ_labels=occ[1] if occ else None,
            occ_concat_points=occ[2] if occ else None,
            occ_concat_labels=occ[3] if occ else None,
            future_points=occ[4] if occ else None,
            future_labels=occ[5] if occ else None,
            future_eval_points=occ[6] if occ else None,
            future_eval_labels=occ[7] if occ else None,
            future_valid=np.asarray([i + (k + 1) * self.forecast_step < len(scene) for k in range(t)]),
            qa_ids=qa_ids,
            qa_labels=qa_labels,
            plan_ids=plan_ids,
            plan_labels=plan_labels,
            qa_pair=qa_pair,
            plan_text=plan_text,
            sample_token=scene.sample_tokens[i],
            scene_token=scene.token,
            scene_name=scene.name,
            frame_index=i,
            scene_length=len(scene),
            timestamp=int(scene.timestamps[i]),
        )

    def _needs_rng(self) -> bool:
        opt = self.options
        return opt.augment or opt.qa_choice == "random" or opt.max_gt_points is not None

    # ------------------------------------------------------------------ images
    def _transform(self, in_hw: tuple[int, int], rng: Optional[random.Random]) -> ResizeCrop:
        opt = self.options
        if not opt.augment or rng is None:
            return resize_crop_for(in_hw, self.cfg.image_size)
        return resize_crop_for(
            in_hw,
            self.cfg.image_size,
            scale_factor=rng.uniform(*opt.aug_scale_range),
            bottom_fraction=rng.uniform(*opt.aug_bottom_crop_range),
            x_fraction=rng.uniform(0.0, 1.0),
        )

    def _load_images(self, scene: SceneFrames, rows: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
        cfg, opt = self.cfg, self.options
        f, v = len(rows), len(CAMERA_NAMES)
        h, w = cfg.image_size
        images = np.empty((f, v, h, w, 3), dtype=np.uint8)
        intrinsics = np.empty((f, v, 3, 3), dtype=np.float32)
        draw: dict[tuple[int, int], ResizeCrop] = {}  # one geometric draw per input size per item
        decoded: dict[tuple[int, int], np.ndarray] = {}  # (row, view) -> image: padded frames repeat rows
        for fi, row in enumerate(rows):
            for vi in range(v):
                in_hw = tuple(int(x) for x in scene.row_image_hw[row, vi])
                if in_hw not in draw:
                    draw[in_hw] = self._transform(in_hw, rng)  # type: ignore[arg-type]
                tr = draw[in_hw]  # type: ignore[index]
                intrinsics[fi, vi] = tr.apply_to_intrinsics(scene.row_intrinsics[row, vi])
                key = (int(row), vi)
                if key not in decoded:
                    path = self.layout.root / scene.row_files[row][vi]
                    if opt.augment:
                        decoded[key] = load_image(path, tr, in_hw)  # type: ignore[arg-type]
                    else:
                        decoded[key] = self._image_cache.get_or_compute(
                            (str(path), tr), lambda p=path, t=tr, s=in_hw: load_image(p, t, s)
                        )
                images[fi, vi] = decoded[key]
        if opt.augment and opt.aug_color_jitter > 0 and rng is not None:
            j = opt.aug_color_jitter
            brightness, contrast = rng.uniform(1 - j, 1 + j), rng.uniform(1 - j, 1 + j)
            x = images.astype(np.float32)
            mean = x.mean(axis=(2, 3, 4), keepdims=True)  # [F, V, 1, 1, 1]
            images = np.clip((x - mean) * contrast + mean * brightness, 0, 255).astype(np.uint8)
        return images, intrinsics

    # ------------------------------------------------------------------ trajectory
    def _waypoints(self, scene: SceneFrames, i: int) -> tuple[np.ndarray, np.ndarray]:
        # the key frames at plan_dt: frames i + step, i + 2 step, ...
        return future_waypoints(scene.ego2global, i, self.cfg.plan_horizon, self.plan_step)

    # ------------------------------------------------------------------ occupancy
    def _frame_points(self, scene: SceneFrames, j: int) -> tuple[np.ndarray, np.ndarray]:
        token = scene.sample_tokens[j]

        def compute() -> tuple[np.ndarray, np.ndarray]:
            labels = load_occ3d_labels(self.layout.occ3d_path(scene.name, token))
            return occ3d_points(labels, self.cfg.point_cloud_range, self.cfg.voxel_size, self.options.occ_visibility)

        return self._occ_cache.get_or_compute(("occ", scene.name, token), compute)

    def _subsample(self, pts: np.ndarray, lab: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
        m = self.options.max_gt_points
        if m is None or len(pts) <= m:
            return pts, lab
        pick = np.random.default_rng(rng.getrandbits(63))
        if self.options.gt_keep_classes:
            kept = np.isin(lab, np.asarray(self.options.gt_keep_classes))
            rest = np.flatnonzero(~kept)
            n_rest = min(len(rest), max(m - int(kept.sum()), 0))
            keep = np.sort(np.concatenate([np.flatnonzero(kept), pick.choice(rest, n_rest, replace=False)]))
        else:
            keep = np.sort(pick.choice(len(pts), m, replace=False))
        return pts[keep], lab[keep]

    def _occupancy(self, scene: SceneFrames, i: int, rng):
        cfg, opt = self.cfg, self.options
        t, step = cfg.forecast_frames, self.forecast_step
        cur_pts, cur_lab = self._frame_points(scene, i)
        if not opt.future_occupancy:
            cur_pts, cur_lab = self._subsample(cur_pts, cur_lab, rng)
            return cur_pts, cur_lab, None, None, None, None, None, None
        future_idx = [i + (k + 1) * step for k in range(t)]
        frames = [(cur_pts, cur_lab)]
        to_current = [np.eye(4)]
        g2e_cur = invert_pose(scene.ego2global[i])
        for j in future_idx:
            if j < len(scene):
                frames.append(self._frame_points(scene, j))
                to_current.append(g2e_cur @ scene.ego2global[j])  # inv(E_cur) @ E_fut
        g_pts, g_lab = concat_gt(frames, to_current, opt.concat_range, cfg.voxel_size)
        fut_pts, fut_lab, ev_pts, ev_lab = [], [], [], []
        for k, j in enumerate(future_idx):
            if j < len(scene):
                cur2fut = invert_pose(scene.ego2global[j]) @ scene.ego2global[i]  # inv(E_fut) @ E_cur
                p, lab = to_future_frame(g_pts, g_lab, cur2fut, opt.concat_range)
                ep, el = frames[k + 1]
            else:
                p, lab = np.zeros((0, 3), np.float32), np.zeros((0,), np.int64)
                ep, el = p, lab
            p, lab = self._subsample(p, lab, rng)
            fut_pts.append(p)
            fut_lab.append(lab)
            ev_pts.append(ep)
            ev_lab.append(el)
        cur_pts, cur_lab = self._subsample(cur_pts, cur_lab, rng)
        g_pts, g_lab = self._subsample(g_pts, g_lab, rng)
        return cur_pts, cur_lab, g_pts, g_lab, fut_pts, fut_lab, ev_pts, ev_lab

    # ------------------------------------------------------------------ text
    def frame_texts(
        self, scene: SceneFrames, i: int, wp: Optional[np.ndarray] = None, wp_valid: Optional[np.ndarray] = None
    ) -> tuple[list[QAPair], Optional[str]]:
        """Every understanding pair of key frame ``i`` of ``scene`` from the configured ``qa_sources``, and its
        planning-reasoning text (None when the frame has none).  ``wp`` / ``wp_valid`` are computed when the
        ``planning`` source needs them and they are not given."""
        opt, token = self.options, scene.sample_tokens[i]
        pairs: list[QAPair] = []
        if self._omni_kinds and self.omnidrive.available:
            pairs += self.omnidrive.pairs(token, self._omni_kinds)
        pairs += self.nuscenes_qa.get(token, [])
        dl = self.drivelm.get(token) if "drivelm" in opt.qa_sources else None
        if dl is not None:
            pairs += dl.pairs
        if "planning" in opt.qa_sources:
            if wp is None or wp_valid is None:
                wp, wp_valid = self._waypoints(scene, i)
            if bool(np.all(wp_valid)):
                pairs.append(QAPair(PLANNING_QUESTION, planning_answer(wp), "planning"))
        plan = self.omnidrive.plan_text(token) if self.omnidrive.available else None
        if plan is None and dl is not None:
            plan = dl.plan_text
        return pairs, plan

    def text_pairs(self) -> list[tuple[str, str]]:
        """(question, answer) of every understanding pair and every planning-reasoning text of the split, in key-frame
        order, duplicates kept (their frequency is the split's): the text a training stage draws its eq.-5 targets
        from.  The planning reasoning comes as ``(cfg.plan_question, text)``."""
        out: list[tuple[str, str]] = []
        for scene in self.scenes:
            for i in range(len(scene)):
                pairs, plan = self.frame_texts(scene, i)
                out += [(p.question, p.answer) for p in pairs]
                if plan:
                    out.append((self.cfg.plan_question, plan))
        return out

    def _texts(self, scene: SceneFrames, i: int, wp, wp_valid, rng) -> tuple[Optional[QAPair], Optional[str]]:
        opt, token = self.options, scene.sample_tokens[i]
        pairs, plan = self.frame_texts(scene, i, wp, wp_valid)
        if opt.require_text and (not pairs or plan is None):
            raise FileNotFoundError(
                f"sample {token} ({scene.name}) has no {'QA pair' if not pairs else 'plan text'} in "
                f"{self.layout.omnidrive_root} / {self.layout.nuscenes_qa_root}"
                + (f" / {opt.drivelm_file}" if opt.drivelm_file else "")
                + " (set require_text=False to train such items without a language loss)"
            )
        if not pairs:
            return None, plan
        if opt.qa_choice == "first" or rng is None:
            return pairs[0], plan
        return pairs[rng.randrange(len(pairs))], plan


# ---------------------------------------------------------------------- collate
def _pad_points(
    arrays: Sequence[np.ndarray], labels: Sequence[np.ndarray]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lists of [G_i, 3] / [G_i] -> [N, Gmax, 3] float32, [N, Gmax] int64 (FREE_CLASS pad), [N, Gmax] bool."""
    n, g = len(arrays), max((len(a) for a in arrays), default=0)
    pts = np.zeros((n, g, 3), dtype=np.float32)
    lab = np.full((n, g), FREE_CLASS, dtype=np.int64)
    mask = np.zeros((n, g), dtype=bool)
    for k, (a, b) in enumerate(zip(arrays, labels)):
        pts[k, : len(a)] = a
        lab[k, : len(a)] = b
        mask[k, : len(a)] = True
    return torch.from_numpy(pts), torch.from_numpy(lab), torch.from_numpy(mask)


def collate(items: Sequence[DrivingItem], pad_token_id: int = 0) -> DrivingBatch:
    """Stack and pad items into a :class:`DrivingBatch` (images to float [0, 1], [B, F, V, 3, H, W]).

    Args:
        items: dataset items (all with or all without occupancy / text).
        pad_token_id: id written in padded text positions (masked by ``*_attention_mask``; labels are
            IGNORE_INDEX there, so its value never matters for the loss).
    Returns:
        The batch; ``validate()`` passes.
    """
    if not items:
        raise ValueError("collate needs at least one item")
    images = torch.from_numpy(np.stack([it.images for it in items]))  # [B, F, V, H, W, 3] uint8
    images = images.permute(0, 1, 2, 5, 3, 4).contiguous().float().div_(255.0)  # [B, F, V, 3, H, W]
    out: dict[str, Any] = dict(
        images=images,
        intrinsics=torch.from_numpy(np.stack([it.intrinsics for it in items])),
        cam2ego=torch.from_numpy(np.stack([it.cam2ego for it in items])),
        ego2global=torch.from_numpy(np.stack([it.ego2global for it in items]).astype(np.float64)),
        frame_valid=torch.from_numpy(np.stack([it.frame_valid for it in items])),
        ego_state=torch.from_numpy(np.stack([it.ego_state for it in items])),
        command=torch.tensor([it.command for it in items], dtype=torch.int64),
        gt_trajectory=torch.from_numpy(np.stack([it.gt_trajectory for it in items])),
        gt_trajectory_mask=torch.from_numpy(np.stack([it.gt_trajectory_mask for it in items])),
        sample_tokens=[it.sample_token for it in items],
        scene_tokens=[it.scene_token for it in items],
        frame_indices=torch.tensor([it.frame_index for it in items], dtype=torch.int64),
        scene_lengths=torch.tensor([it.scene_length for it in items], dtype=torch.int64),
        timestamps=torch.tensor([it.timestamp for it in items], dtype=torch.int64),
    )
    has_occ = [it.occ_points is not None for it in items]
    if any(has_occ):
        if not all(has_occ):
            raise ValueError("collate: some items have occupancy GT and some do not")
        out["occ_points"], out["occ_labels"], out["occ_mask"] = _pad_points(
            [it.occ_points for it in items], [it.occ_labels for it in items]
        )
        if any(it.occ_concat_points is None for it in items):  # current-frame GT only (future_occupancy False)
            return _finish_collate(out, items, pad_token_id)
        out["occ_concat_points"], out["occ_concat_labels"], out["occ_concat_mask"] = _pad_points(
            [it.occ_concat_points for it in items], [it.occ_concat_labels for it in items]
        )
        b, t = len(items), len(items[0].future_points)
        for name in ("future", "future_eval"):
            flat_p = [p for it in items for p in getattr(it, f"{name}_points")]
            flat_l = [lab for it in items for lab in getattr(it, f"{name}_labels")]
            p, lab, m = _pad_points(flat_p, flat_l)  # [B*T, G, ...]
            out[f"{name}_points"] = p.view(b, t, -1, 3)  # [B, T, G, 3]
            out[f"{name}_labels"] = lab.view(b, t, -1)  # [B, T, G]
            out[f"{name}_mask"] = m.view(b, t, -1)  # [B, T, G]
    return _finish_collate(out, items, pad_token_id)


def _finish_collate(out: dict[str, Any], items: Sequence[DrivingItem], pad_token_id: int) -> DrivingBatch:
    """Text fields of :func:`collate`, then the batch."""
    has_text = [it.qa_ids is not None for it in items]
    if any(has_text):
        if not all(has_text):
            raise ValueError("collate: some items have text and some do not")
        out["qa_input_ids"], out["qa_attention_mask"], out["qa_labels"] = pad_text(
            [it.qa_ids for it in items], [it.qa_labels for it in items], pad_token_id
        )
        out["plan_input_ids"], out["plan_attention_mask"], out["plan_labels"] = pad_text(
            [it.plan_ids for it in items], [it.plan_labels for it in items], pad_token_id
        )
    return DrivingBatch(**out)


def make_collate(tokenizer) -> Callable[[Sequence[DrivingItem]], DrivingBatch]:
    """``collate`` with the tokenizer's pad id (a picklable partial for DataLoader workers)."""
    import functools

    pad = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
    return functools.partial(collate, pad_token_id=pad)
