"""Overfit check of the Sparse Occupancy Encoder: train stage 1 on a few key frames and score the same frames.

A model that cannot fit the frames it trains on will not generalise to a held-out world, so this is the first
check of any change to the encoder, its losses or its read-out (docs/experiments.md §10).  It trains the real
stage-1 objective (:meth:`SparseOccVLA.forward` with ``stage=1``: eq. 10 + the distillation term) with the
training config's optimiser and schedule (:func:`sparseoccvla_core.training.train_stage`), then decodes each
frame's occupancy exactly as inference does (:func:`decode_occupancy`) and scores it against the frame's Occ3D
labels with the camera mask (:class:`OccupancyMIoU`).

Besides the IoUs it reports two read-out diagnostics per class (summed over the frames): ``covered`` = the share
of the class's camera-visible GT voxels that hold a decoded voxel of any class (geometry reaches the object),
and ``labelled`` = the share that hold a decoded voxel of the right class.

Usage::

    sparseoccvla synth --out runs/overfit --scenes 1 --frames 8 --seed 5 --layouts intersection \
        --width 480 --height 270 --no-lidar
    sparseoccvla overfit --data runs/overfit --config config/model_default.yaml --updates 240
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .batch import FREE_CLASS, OCC3D_CLASSES
from .config import SparseOccVLAConfig
from .data.occ3d import load_occ3d_labels
from .metrics import OccupancyMIoU
from .occupancy_encoder import decode_occupancy
from .train_config import TrainConfig

#: score threshold of the read-out when none is given (the model's inference default).
OVERFIT_SCORE_THRESHOLD: float = 0.35


@dataclass
class OverfitResult:
    """Scores of an overfit run on its own training frames (percentages).

    Args:
        frames: key frames trained on and scored.
        updates: optimizer updates.
        seconds: wall time of the training, s.
        geometry_iou: occupied-vs-free IoU, camera mask, %.
        miou: mean IoU over the classes present in the frames' GT, camera mask, %.
        iou: per-class IoU (class name -> %, NaN where the class has no GT voxel).
        covered: per-class share of camera-visible GT voxels holding any decoded voxel, %.
        labelled: per-class share of camera-visible GT voxels holding a decoded voxel of their class, %.
        decoded_voxels: mean decoded (occupied) voxels per frame.
        gt_voxels: mean camera-visible occupied GT voxels per frame.
        losses: the last logged value of each loss term.
    """

    frames: int
    updates: int
    seconds: float
    geometry_iou: float
    miou: float
    iou: dict[str, float]
    covered: dict[str, float]
    labelled: dict[str, float]
    decoded_voxels: float
    gt_voxels: float
    losses: dict[str, float] = field(default_factory=dict)

    def summary(self, classes: Sequence[str] = ("car", "driveable_surface", "manmade", "vegetation")) -> str:
        parts = [
            f"{self.frames} frames, {self.updates} updates in {self.seconds:.0f} s "
            f"({self.seconds / max(self.updates, 1):.2f} s/update)",
            f"geometry IoU {self.geometry_iou:.1f} %, mIoU {self.miou:.1f} %",
            ", ".join(f"{c} IoU {self.iou.get(c, math.nan):.1f} %" for c in classes),
            f"car voxels covered {self.covered.get('car', math.nan):.0f} %, labelled car "
            f"{self.labelled.get('car', math.nan):.0f} %",
            f"decoded {self.decoded_voxels:.0f} voxels/frame vs {self.gt_voxels:.0f} GT",
        ]
        return "\n".join(parts)


@torch.no_grad()
def score_frames(
    model, dataset, collate_fn, score_threshold: float = OVERFIT_SCORE_THRESHOLD, batch_size: int = 2
) -> tuple[OccupancyMIoU, np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Decode every frame of ``dataset`` and score it against its Occ3D labels (camera mask).

    Returns:
        (metric, gt_count [C], covered_count [C], labelled_count [C], decoded voxels/frame, GT voxels/frame),
        counts over camera-visible GT voxels of each Occ3D class.
    """
    cfg: SparseOccVLAConfig = model.cfg
    metric = OccupancyMIoU(use_camera_mask=True, ignore_classes_without_gt=True)
    n_cls = len(OCC3D_CLASSES)
    gt_count, covered, labelled = (np.zeros(n_cls, np.int64) for _ in range(3))
    decoded_total, gt_total, frames = 0, 0, 0
    lo = np.asarray(cfg.point_cloud_range[:3])
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = collate_fn(items)
            enc = model.encode_scene(batch)
            for b, item in enumerate(items):
                pts, cls, _ = decode_occupancy(enc.layer_points[-1][b], enc.layer_logits[-1][b], cfg, score_threshold)
                labels = load_occ3d_labels(dataset.layout.occ3d_path(item.scene_name, item.sample_token))
                gt = labels.semantics.astype(np.int64)
                mask = labels.mask_camera.astype(bool)
                pred = np.full(gt.shape, FREE_CLASS, np.int64)
                ijk = np.floor((pts.numpy() - lo) / cfg.voxel_size).astype(np.int64)
                pred[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = cls.numpy()
                metric.update(pred, gt, mask)
                occ_gt = mask & (gt != FREE_CLASS)
                g = gt[occ_gt]
                p = pred[occ_gt]
                gt_count += np.bincount(g, minlength=n_cls)[:n_cls]
                covered += np.bincount(g[p != FREE_CLASS], minlength=n_cls)[:n_cls]
                labelled += np.bincount(g[p == g], minlength=n_cls)[:n_cls]
                decoded_total += int(len(pts))
                gt_total += int(occ_gt.sum())
                frames += 1
    finally:
        model.train(was_training)
    return metric, gt_count, covered, labelled, decoded_total / max(frames, 1), gt_total / max(frames, 1)


def overfit_check(
    model,
    dataset,
    collate_fn,
    tcfg: TrainConfig,
    updates: int,
    out_dir: Optional[str | Path] = None,
    score_threshold: float = OVERFIT_SCORE_THRESHOLD,
    progress: bool = False,
) -> OverfitResult:
    """Train ``model`` on ``dataset`` with stage 1 for about ``updates`` optimizer updates, then score the same frames.

    Args:
        model: a fresh :class:`~sparseoccvla_core.model.SparseOccVLA` (or one to continue from).
        dataset: the frames (a :class:`~sparseoccvla_core.data.dataset.DrivingDataset`, usually one scene).
        collate_fn: its collate function.
        tcfg: optimiser settings (``batch_size``, ``lr``, warm-up ...); ``epochs`` is replaced so that the run makes
            ``ceil(updates / updates_per_epoch)`` epochs.
        updates: optimizer updates wanted (rounded up to whole epochs).
        out_dir: where the stage writes its checkpoint (a temporary folder when None).
        score_threshold: read-out threshold.
        progress: show the training progress bar.
    """
    from dataclasses import replace

    from .training import train_stage

    # One epoch of ``updates`` batches over the frames repeated in order (a per-frame epoch would checkpoint every
    # few updates: most of a short run's time).
    per_update = tcfg.batch_size * tcfg.grad_accum_steps
    repeated = _Repeated(dataset, updates * per_update)
    tcfg = replace(tcfg, epochs=(1, tcfg.epochs[1], tcfg.epochs[2]), keep_checkpoints=1)
    with tempfile.TemporaryDirectory(prefix="overfit-") as tmp:
        out = Path(out_dir) if out_dir is not None else Path(tmp) / "stage1"
        t0 = time.perf_counter()
        state = train_stage(model, repeated, collate_fn, 1, tcfg, out, progress=progress)
        seconds = time.perf_counter() - t0
        losses = _last_losses(out)
    metric, gt_count, covered, labelled, decoded, gt_vox = score_frames(model, dataset, collate_fn, score_threshold)
    names = list(OCC3D_CLASSES)
    iou = metric.iou_per_class() * 100.0
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = covered / gt_count * 100.0
        lab = labelled / gt_count * 100.0
    return OverfitResult(
        frames=len(dataset),
        updates=int(state.global_step),
        seconds=seconds,
        geometry_iou=float(metric.geometry_iou()) * 100.0,
        miou=float(metric.miou()) * 100.0,
        iou={names[c]: float(iou[c]) for c in range(len(iou)) if c != FREE_CLASS},
        covered={names[c]: float(cov[c]) for c in range(len(names)) if c != FREE_CLASS},
        labelled={names[c]: float(lab[c]) for c in range(len(names)) if c != FREE_CLASS},
        decoded_voxels=decoded,
        gt_voxels=gt_vox,
        losses=losses,
    )


class _Repeated(torch.utils.data.Dataset):
    """``dataset`` cycled to ``length`` items (the trainer shuffles the indices; each frame appears equally often)."""

    def __init__(self, dataset, length: int) -> None:
        self.dataset, self.length = dataset, max(int(length), len(dataset))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        return self.dataset[i % len(self.dataset)]


def _last_losses(out: Path) -> dict[str, float]:
    """The last row of the stage's loss CSV (empty when there is none)."""
    import csv

    path = out / "losses.csv"
    if not path.is_file():
        return {}
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    out_row = {}
    for k, v in rows[-1].items():
        try:
            out_row[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out_row


def build_overfit(
    data: str | Path,
    config: str | Path,
    train_config: str | Path,
    frames: Optional[int] = None,
    split: str = "train",
    overrides: Optional[dict] = None,
    seed: int = 0,
):
    """A fresh model from ``config`` and the first ``frames`` key frames of ``split`` of ``data``.

    Args:
        data: dataset root (usually a one-scene synthetic world).
        config: model config YAML (``preset`` + overrides).
        train_config: training config YAML (optimiser, batch size, GT cap, visibility); one loader worker.
        frames: key frames used (None = the whole split).
        split: split read.
        overrides: model-config fields replacing the YAML's (the study's levers, e.g. ``{"points_per_layer": [4, 128]}``).
        seed: seed of the model initialisation and the data order.

    Returns:
        (model, frames dataset, collate function, training config).
    """
    from dataclasses import replace

    from accelerate.utils import set_seed

    from .data.dataset import DrivingDataset, make_collate
    from .model import SparseOccVLA
    from .train_setup import build_tokenizer, dataset_options, load_model_config

    cfg = load_model_config(str(config))
    if overrides:
        unknown = sorted(set(overrides) - set(vars(cfg)))
        if unknown:
            raise ValueError(f"unknown model config field(s) {unknown}")
        cfg = replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    tcfg = replace(TrainConfig.from_yaml(train_config), num_workers=0, seed=seed, train_split=split)
    set_seed(seed)
    dataset = DrivingDataset(data, split, cfg, None, dataset_options(tcfg, 1, cfg))
    if len(dataset) == 0:
        raise ValueError(f"split {split!r} of {data} has no key frame")
    dataset.tokenizer = build_tokenizer(cfg, dataset)
    used = dataset
    if frames is not None:
        used = torch.utils.data.Subset(dataset, range(min(frames, len(dataset))))
        used.layout = dataset.layout  # score_frames reads the labels through the dataset's layout
    return SparseOccVLA(cfg, dataset.tokenizer), used, make_collate(dataset.tokenizer), tcfg


def overfit_world(
    data: str | Path,
    config: str | Path,
    train_config: str | Path,
    updates: int,
    frames: Optional[int] = None,
    split: str = "train",
    overrides: Optional[dict] = None,
    score_threshold: float = OVERFIT_SCORE_THRESHOLD,
    seed: int = 0,
    progress: bool = False,
) -> OverfitResult:
    """:func:`overfit_check` of a fresh model (:func:`build_overfit`) on the first ``frames`` key frames."""
    model, used, collate_fn, tcfg = build_overfit(data, config, train_config, frames, split, overrides, seed)
    return overfit_check(model, used, collate_fn, tcfg, updates, score_threshold=score_threshold, progress=progress)
