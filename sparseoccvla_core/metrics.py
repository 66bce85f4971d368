"""The paper's evaluation metrics (SparseOccVLA sec. 4.1), as the public reference code computes them.

Pure numpy (plus pycocoevalcap for text); no model imports, so the ROS side and tests use it freely.

* **Occupancy** (Occ3D-nuScenes, docs/reference_choices.md §8.1): :class:`OccupancyMIoU` accumulates one
  18 x 18 confusion matrix (rows = GT, columns = prediction) over the whole split; IoU_c = TP / (TP + FP + FN)
  and mIoU = nanmean over the 17 semantic classes 0..16 (free = 17 excluded).  A class that appears neither
  in the GT nor in the predictions of the whole split gets IoU = NaN (0/0) and drops out of the mean; a class
  predicted but absent from the GT counts as 0, as the official Occ3D ``Metric_mIoU`` does (OPUS's copy
  ignores every class without GT instead: ``ignore_classes_without_gt=True``).  The camera mask is optional:
  the official current-frame protocol uses it, the forecasting protocol (SparseWorld / PreWorld) does not.
* **Forecasting** (docs/reference_choices.md §8.2): current frames with ``frame_idx`` in [5, scene_len - 8] only
  (:func:`forecast_eval_frames`); future key frames +2 / +4 / +6 = 1 s / 2 s / 3 s, each compared with that
  future frame's own labels in its own ego frame, no camera mask; "Avg" is the mean of the three mIoUs.
* **Planning** (docs/reference_choices.md §8.3): :func:`l2_errors` and :func:`collision_rate` at 1 s / 2 s / 3 s
  and their average.
  Default convention ``"stp3"`` (ST-P3 / VAD / OmniDrive / SparseWorld: the metric at N s is the mean over
  all waypoints up to N s); ``"uniad"`` is the value at the N s waypoint (UniAD).  Per step the value is the
  mean over the samples whose GT waypoint is valid.  Collision: exact oriented-rectangle intersection
  (separating-axis test, as SparseDrive / DiffusionDrive-nuScenes do with shapely polygons) between the ego
  box along the path and the GT boxes of other agents at the same future step, in the current ego frame.
  Ego box: :class:`EgoBox` (4.084 m x 1.85 m, ST-P3 / VAD), yaw from the path's tangent.  Steps where the GT
  trajectory itself collides are not counted, the denominator stays the sample count (ST-P3).
* **Understanding** (docs/reference_choices.md §8.4, HERMES protocol): :func:`caption_metrics` runs
  pycocoevalcap's BLEU-1..4, ROUGE-L and CIDEr on the raw strings (no PTBTokenizer).  METEOR as HERMES computes
  it: NLTK's ``meteor_score`` per pair (alpha 0.9, beta 3, gamma 0.5; exact, Porter-stem and WordNet-synonym
  matches), averaged over the pairs, with WordNet 3.0 read offline from the system's ``wordnet-base`` package
  (:mod:`sparseoccvla_core.wordnet`).  HERMES tokenizes with ``word_tokenize`` (Punkt sentence split, then the
  Treebank word tokenizer); Punkt's model is download-only, so we run NLTK's Treebank word tokenizer on the whole
  answer (``word_tokenize(..., preserve_line=True)``): only a period inside a multi-sentence answer can differ
  ("stop. Then" keeps "stop." as one token).  pycocoevalcap's Java METEOR 1.5 (``-l en -norm``, corpus score,
  the coco-caption METEOR) is reported beside it as ``METEOR_java`` when ``java`` is on PATH.
  See :data:`METEOR_BACKEND`.
* **nuScenes-QA** (docs/reference_choices.md §8.5): :func:`qa_accuracy`, exact match overall and per template type.
* **Baselines** for the learning check: single-class occupancy, mean trajectory, constant velocity,
  majority answer.

Values are reported as the papers print them: mIoU / IoU / collision rate / accuracy in percent, L2 in metres,
text metrics as fractions (CIDEr not multiplied by 100).
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
from typing import TYPE_CHECKING, Mapping, Optional, Sequence, Union

import numpy as np

if TYPE_CHECKING:
    import torch
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

from .batch import FREE_CLASS, OCC3D_CLASSES
from .geometry.ego_box import EgoBox, boxes_overlap, ego_boxes_along_path, path_headings  # noqa: F401  (public here too)

ArrayLike = Union[np.ndarray, "torch.Tensor", Sequence]  # CPU/GPU torch tensors are converted with _np()

#: Forecast horizons of the paper's tables (s) and the Occ3D key-frame period (s, 2 Hz).
FORECAST_HORIZONS_S: tuple[float, ...] = (1.0, 2.0, 3.0)
KEYFRAME_DT_S: float = 0.5
#: Forecasting protocol of SparseWorld / PreWorld / OccWorld (docs/reference_choices.md §8.2).
FORECAST_SKIP_FIRST: int = 5
FORECAST_SKIP_LAST: int = 7
#: Planning horizons (s) and waypoint period (s).
PLAN_HORIZONS_S: tuple[float, ...] = (1.0, 2.0, 3.0)
PLAN_DT_S: float = 0.5
PLAN_CONVENTIONS: tuple[str, ...] = ("stp3", "uniad")
#: Which METEOR implementation :func:`caption_metrics` reports as 'METEOR' (stated in every table that reports it).
METEOR_BACKEND: str = (
    "NLTK meteor_score as HERMES (mean over pairs; WordNet 3.0 from wordnet-base; NLTK Treebank word tokens, "
    "no Punkt sentence split)"
)
#: The second METEOR, 'METEOR_java' (when ``java`` is on PATH).
JAVA_METEOR_BACKEND: str = "pycocoevalcap Java METEOR 1.5 (-l en -norm, corpus score)"
#: Categories that are obstacles for the collision metric (ST-P3 / VAD: vehicles and pedestrians).
COLLISION_CATEGORY_PREFIXES: tuple[str, ...] = ("vehicle.", "human.pedestrian.")


def _np(x: ArrayLike) -> np.ndarray:
    """numpy view of an array-like (CPU torch tensors included)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x)


# ============================================================================ occupancy: Occ3D mIoU


class OccupancyMIoU:
    """Dataset-level Occ3D mIoU from an accumulated confusion matrix.

    Args:
        num_classes: classes including free (Occ3D: 18).
        free_class: label of free space (Occ3D: 17); excluded from the mean.
        use_camera_mask: count only voxels with ``mask_camera == 1`` (official current-frame protocol);
            False = all voxels (forecasting protocol).
        ignore_classes_without_gt: True = a class with no GT voxel in the whole split is NaN even when it
            was predicted (OPUS); False = official Occ3D (NaN only when neither GT nor prediction has it).
    """

    def __init__(
        self,
        num_classes: int = len(OCC3D_CLASSES),
        free_class: int = FREE_CLASS,
        use_camera_mask: bool = False,
        ignore_classes_without_gt: bool = False,
    ) -> None:
        if not 0 <= free_class < num_classes:
            raise ValueError(f"free_class {free_class} must be in [0, {num_classes})")
        self.num_classes = num_classes
        self.free_class = free_class
        self.use_camera_mask = use_camera_mask
        self.ignore_classes_without_gt = ignore_classes_without_gt
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.num_frames = 0

    def update(self, pred: ArrayLike, gt: ArrayLike, camera_mask: Optional[ArrayLike] = None) -> None:
        """Add one frame.

        Args:
            pred: [X, Y, Z] (any shape) predicted labels in [0, num_classes).
            gt: same shape, GT labels; values outside [0, num_classes) are ignored (as Occ3D does).
            camera_mask: same shape, nonzero = visible; required when ``use_camera_mask``.

        Raises:
            ValueError: on shape mismatch, out-of-range predictions or a missing camera mask.
        """
        pred, gt = _np(pred), _np(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} != GT shape {gt.shape}")
        gt = gt.astype(np.int64, copy=False)
        pred = pred.astype(np.int64, copy=False)
        valid = (gt >= 0) & (gt < self.num_classes)
        if self.use_camera_mask:
            if camera_mask is None:
                raise ValueError("use_camera_mask=True needs the frame's mask_camera")
            camera_mask = _np(camera_mask)
            if camera_mask.shape != gt.shape:
                raise ValueError(f"camera mask shape {camera_mask.shape} != GT shape {gt.shape}")
            valid &= camera_mask.astype(bool)
        pred_v = pred[valid]
        if pred_v.size and (pred_v.min() < 0 or pred_v.max() >= self.num_classes):
            raise ValueError(
                f"predicted labels must be in [0, {self.num_classes}), got [{pred_v.min()}, {pred_v.max()}]"
            )
        c = self.num_classes
        flat = gt[valid] * c + pred_v  # row = GT, column = prediction
        self.confusion += np.bincount(flat, minlength=c * c).reshape(c, c)
        self.num_frames += 1

    def merge(self, other: "OccupancyMIoU") -> None:
        """Add another accumulator's counts (e.g. from another worker)."""
        if other.confusion.shape != self.confusion.shape:
            raise ValueError("cannot merge accumulators with different class counts")
        self.confusion += other.confusion
        self.num_frames += other.num_frames

    def iou_per_class(self) -> np.ndarray:
        """[num_classes] IoU in [0, 1] per class (NaN where undefined, see the class docstring)."""
        conf = self.confusion.astype(np.float64)
        tp = np.diag(conf)
        gt_count = conf.sum(axis=1)
        pred_count = conf.sum(axis=0)
        union = gt_count + pred_count - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = tp / union
        if self.ignore_classes_without_gt:
            iou[gt_count == 0] = np.nan
        return iou

    def geometry_iou(self) -> float:
        """IoU of occupied (any class != free) vs free, in [0, 1] (Occ3D 'IoU' / SparseWorld 'Avg IoU')."""
        sem = np.arange(self.num_classes) != self.free_class
        tp = self.confusion[np.ix_(sem, sem)].sum()
        fp = self.confusion[self.free_class, sem].sum()
        fn = self.confusion[sem, self.free_class].sum()
        denom = tp + fp + fn
        return float(tp / denom) if denom else float("nan")

    def miou(self) -> float:
        """mIoU in [0, 1] over the semantic classes (free excluded), NaN classes skipped."""
        iou = np.delete(self.iou_per_class(), self.free_class)
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def compute(self) -> dict:
        """Summary in percent: ``miou``, ``geometry_iou``, ``iou_per_class`` (name -> % or None), ``num_frames``."""
        iou = self.iou_per_class()
        names = OCC3D_CLASSES if self.num_classes == len(OCC3D_CLASSES) else tuple(map(str, range(self.num_classes)))
        return {
            "miou": _pct(self.miou()),
            "geometry_iou": _pct(self.geometry_iou()),
            "iou_per_class": {names[c]: _pct(iou[c]) for c in range(self.num_classes) if c != self.free_class},
            "num_frames": self.num_frames,
            "camera_mask": self.use_camera_mask,
        }


def _pct(x: float) -> Optional[float]:
    """Fraction -> percent; NaN -> None (JSON null)."""
    return None if x is None or not math.isfinite(float(x)) else 100.0 * float(x)


def forecast_eval_frames(
    frame_idx: ArrayLike,
    scene_len: ArrayLike,
    skip_first: int = FORECAST_SKIP_FIRST,
    skip_last: int = FORECAST_SKIP_LAST,
) -> np.ndarray:
    """Which current frames the forecasting protocol evaluates (SparseWorld / PreWorld).

    Protocol: docs/reference_choices.md §8.2.

    The first ``skip_first`` and last ``skip_last`` key frames of each scene are excluded, i.e. a frame counts
    iff ``skip_first <= frame_idx <= scene_len - 1 - skip_last`` (= [5, scene_len - 8] by default), so all
    futures up to +6 key frames (3 s) exist.

    Args:
        frame_idx: [...] int index of the key frame in its scene (0-based).
        scene_len: [...] int number of key frames of that scene (broadcasts with ``frame_idx``).

    Returns:
        bool array of the broadcast shape (a 0-d array for scalars; use ``bool()``).
    """
    idx, n = _np(frame_idx).astype(np.int64), _np(scene_len).astype(np.int64)
    if np.any(idx < 0) or np.any(idx >= n):
        raise ValueError("frame_idx must lie in [0, scene_len)")
    return (idx >= skip_first) & (idx <= n - 1 - skip_last)


def forecast_steps(horizons_s: Sequence[float] = FORECAST_HORIZONS_S, dt: float = KEYFRAME_DT_S) -> list[int]:
    """Future key-frame offsets of the horizons: 1 s, 2 s, 3 s at 2 Hz -> [2, 4, 6]."""
    return _steps(horizons_s, dt)


def _steps(horizons_s: Sequence[float], dt: float) -> list[int]:
    steps = [int(round(h / dt)) for h in horizons_s]
    if any(s < 1 or abs(s * dt - h) > 1e-6 for s, h in zip(steps, horizons_s)):
        raise ValueError(f"horizons {tuple(horizons_s)} s must be positive multiples of the step {dt} s")
    return steps


def horizon_key(h: float) -> str:
    """1.0 -> '1s' (the key used in every metrics dict)."""
    return f"{h:g}s"


def class_histogram(semantics: ArrayLike, num_classes: int = len(OCC3D_CLASSES)) -> np.ndarray:
    """[num_classes] int64 voxel count per label of a label grid (for the most-frequent-class baseline)."""
    s = _np(semantics).astype(np.int64).ravel()
    s = s[(s >= 0) & (s < num_classes)]
    return np.bincount(s, minlength=num_classes)


def most_frequent_class(class_counts: ArrayLike, free_class: int = FREE_CLASS) -> int:
    """The semantic class (free excluded) with most voxels; ties go to the lower id."""
    counts = _np(class_counts).astype(np.int64).copy()
    counts[free_class] = -1
    if counts.max() <= 0:
        raise ValueError("class counts contain no occupied voxel")
    return int(np.argmax(counts))


def single_class_prediction(gt: ArrayLike, cls: int, free_class: int = FREE_CLASS) -> np.ndarray:
    """Baseline: the GT occupancy geometry, every occupied voxel labelled ``cls``."""
    gt = _np(gt)
    return np.where(gt != free_class, cls, free_class).astype(gt.dtype)


# ============================================================================ planning: L2 and collision


def _aggregate(per_step: np.ndarray, steps: Sequence[int], horizons_s: Sequence[float], convention: str) -> dict:
    """Per-step values [T] -> {'1s','2s','3s','avg','per_step'} under a convention."""
    if convention not in PLAN_CONVENTIONS:
        raise ValueError(f"convention must be one of {PLAN_CONVENTIONS}, got {convention!r}")
    out: dict = {}
    for h, s in zip(horizons_s, steps):
        if convention == "stp3":
            vals = per_step[:s]  # every waypoint up to the horizon
            out[horizon_key(h)] = float(np.nanmean(vals)) if np.isfinite(vals).any() else None
        else:
            v = per_step[s - 1]  # the waypoint at the horizon
            out[horizon_key(h)] = float(v) if np.isfinite(v) else None
    vals = [out[horizon_key(h)] for h in horizons_s]
    out["avg"] = float(np.mean(vals)) if all(v is not None for v in vals) else None
    out["per_step"] = [float(v) if np.isfinite(v) else None for v in per_step]
    return out


def _check_traj(pred: np.ndarray, gt: np.ndarray, mask: Optional[ArrayLike]) -> np.ndarray:
    if pred.ndim != 3 or pred.shape[-1] != 2 or pred.shape != gt.shape:
        raise ValueError(f"trajectories must both be [N, T, 2], got {pred.shape} and {gt.shape}")
    m = np.ones(pred.shape[:2], dtype=bool) if mask is None else _np(mask).astype(bool)
    if m.shape != pred.shape[:2]:
        raise ValueError(f"mask must be [N, T] = {pred.shape[:2]}, got {m.shape}")
    return m


def l2_errors(
    pred: ArrayLike,
    gt: ArrayLike,
    mask: Optional[ArrayLike] = None,
    convention: str = "stp3",
    horizons_s: Sequence[float] = PLAN_HORIZONS_S,
    dt: float = PLAN_DT_S,
) -> dict:
    """Open-loop L2 (m) at each horizon and their average.

    Per step t: mean over samples with a valid GT waypoint of ||pred_t - gt_t||.  ``"stp3"`` (default; ST-P3,
    VAD, OmniDrive, SparseWorld): L2@N s = mean of the per-step values over steps 1..N/dt.  ``"uniad"``: the
    per-step value at step N/dt.  ``avg`` = mean of the horizon values (the papers' "Avg." column).

    Args:
        pred: [N, T, 2] planned (x, y) waypoints, current ego frame, m.
        gt: [N, T, 2] GT waypoints.
        mask: [N, T] bool, True where the GT waypoint exists (None = all valid).
        convention: "stp3" or "uniad".
        horizons_s: horizons in seconds.
        dt: waypoint period, s.

    Returns:
        {'1s', '2s', '3s', 'avg'} floats (None where no sample is valid) and 'per_step' [T].
    """
    pred, gt = _np(pred).astype(np.float64), _np(gt).astype(np.float64)
    m = _check_traj(pred, gt, mask)
    steps = _steps(horizons_s, dt)
    if max(steps) > pred.shape[1]:
        raise ValueError(f"horizon {max(horizons_s)} s needs {max(steps)} waypoints, trajectories have {pred.shape[1]}")
    dist = np.linalg.norm(pred - gt, axis=-1)  # [N, T]
    count = m.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_step = np.where(m, dist, 0.0).sum(axis=0) / count  # NaN where no valid sample
    return _aggregate(per_step, steps, horizons_s, convention)


def collision_flags(
    traj: ArrayLike, agent_boxes: ArrayLike, agent_mask: ArrayLike, ego: EgoBox = EgoBox()
) -> np.ndarray:
    """Whether the ego box at each waypoint intersects any agent box of the same future step.

    Args:
        traj: [N, T, 2] ego waypoints, current ego frame.
        agent_boxes: [N, T, A, 5] other agents' boxes (cx, cy, length, width, yaw) at each future step,
            current ego frame.
        agent_mask: [N, T, A] bool, True for real boxes (padding False).
        ego: ego footprint.

    Returns:
        [N, T] bool.
    """
    boxes, amask = _np(agent_boxes).astype(np.float64), _np(agent_mask).astype(bool)
    traj = _np(traj)
    if boxes.ndim != 4 or boxes.shape[-1] != 5 or boxes.shape[:2] != traj.shape[:2] or amask.shape != boxes.shape[:3]:
        raise ValueError(
            f"agent_boxes must be [N, T, A, 5] and agent_mask [N, T, A] with N, T of the trajectory {traj.shape[:2]}; "
            f"got {boxes.shape} and {amask.shape}"
        )
    if boxes.shape[2] == 0:
        return np.zeros(traj.shape[:2], dtype=bool)
    ego_boxes = ego_boxes_along_path(traj, ego)  # [N, T, 5]
    hit = boxes_overlap(ego_boxes[:, :, None, :], boxes) & amask  # [N, T, A]
    return hit.any(axis=-1)


def collision_rate(
    pred: ArrayLike,
    gt: ArrayLike,
    agent_boxes: ArrayLike,
    agent_mask: ArrayLike,
    mask: Optional[ArrayLike] = None,
    convention: str = "stp3",
    horizons_s: Sequence[float] = PLAN_HORIZONS_S,
    dt: float = PLAN_DT_S,
    ego: EgoBox = EgoBox(),
) -> dict:
    """Open-loop collision rate (%) at each horizon and their average.

    Per step t: the fraction of samples (with a valid GT waypoint at t) whose planned ego box hits an agent
    box at step t, where steps at which the GT trajectory itself hits an agent are not counted as collisions
    (their sample stays in the denominator; ST-P3 / SparseDrive).  Aggregation over steps as in
    :func:`l2_errors` (``"stp3"`` mean up to the horizon, default; ``"uniad"`` at the horizon).

    Args:
        pred: [N, T, 2] planned waypoints, current ego frame, m.
        gt: [N, T, 2] GT waypoints.
        agent_boxes: [N, T, A, 5] GT agent boxes per future step, current ego frame.
        agent_mask: [N, T, A] bool.
        mask: [N, T] bool GT waypoint validity (None = all valid).
        convention: "stp3" or "uniad".
        horizons_s: horizons in seconds.
        dt: waypoint period, s.
        ego: ego footprint.

    Returns:
        {'1s', '2s', '3s', 'avg'} in percent and 'per_step' [T].
    """
    pred, gt = _np(pred).astype(np.float64), _np(gt).astype(np.float64)
    m = _check_traj(pred, gt, mask)
    steps = _steps(horizons_s, dt)
    if max(steps) > pred.shape[1]:
        raise ValueError(f"horizon {max(horizons_s)} s needs {max(steps)} waypoints, trajectories have {pred.shape[1]}")
    pred_hit = collision_flags(pred, agent_boxes, agent_mask, ego)
    gt_hit = collision_flags(gt, agent_boxes, agent_mask, ego)
    counted = pred_hit & ~gt_hit & m  # [N, T]
    with np.errstate(invalid="ignore", divide="ignore"):
        per_step = 100.0 * counted.sum(axis=0) / m.sum(axis=0)
    return _aggregate(per_step, steps, horizons_s, convention)


def mean_trajectory(trajs: ArrayLike, mask: Optional[ArrayLike] = None) -> np.ndarray:
    """Baseline: per-step mean of training trajectories over samples with a valid waypoint.

    Args:
        trajs: [N, T, 2]; mask: [N, T] bool.

    Returns:
        [T, 2].
    """
    trajs = _np(trajs).astype(np.float64)
    m = np.ones(trajs.shape[:2], dtype=bool) if mask is None else _np(mask).astype(bool)
    count = m.sum(axis=0)
    if (count == 0).any():
        raise ValueError("every waypoint step needs at least one valid training trajectory")
    return (trajs * m[..., None]).sum(axis=0) / count[:, None]


def constant_velocity_trajectory(velocity_xy: ArrayLike, horizon: int = 6, dt: float = PLAN_DT_S) -> np.ndarray:
    """Baseline: extrapolate the current ego velocity (current ego frame) in a straight line.

    Args:
        velocity_xy: [N, 2] (vx, vy) m/s in the current ego frame.
        horizon: waypoints T.
        dt: waypoint period, s.

    Returns:
        [N, T, 2] waypoints (k * dt * v for k = 1..T).
    """
    v = _np(velocity_xy).astype(np.float64)
    t = dt * np.arange(1, horizon + 1)  # [T]
    return v[:, None, :] * t[None, :, None]


# ============================================================================ language: captions and QA


def _single(value: Union[str, Sequence[str]]) -> list[str]:
    if isinstance(value, str):
        return [value]
    refs = [str(v) for v in value]
    if not refs:
        raise ValueError("every prediction needs at least one reference")
    return refs


def _meteor_clean(s: str) -> str:
    # The Java METEOR speaks a line protocol with '|||' separators: a newline or '|||' inside a string would
    # desynchronise it (hang).  Only METEOR sees this cleaned text; the other metrics get the raw string.
    return " ".join(s.replace("|||", " ").split())


def java_available() -> bool:
    """True when a ``java`` executable is on PATH (pycocoevalcap's Java METEOR needs it)."""
    return shutil.which("java") is not None


def caption_metrics(
    predictions: Sequence[str],
    references: Sequence[Union[str, Sequence[str]]],
    meteor: bool = True,
    java_meteor: Optional[bool] = None,
) -> dict:
    """Understanding metrics as HERMES scores OmniDrive-nuScenes (docs/reference_choices.md §8.4).

    pycocoevalcap BLEU-1..4, ROUGE-L and CIDEr(-D free, the coco "CIDEr") on the raw strings, each pair its own
    id with a one-element list (no PTBTokenizer).  CIDEr's IDF is computed over the given corpus, so a single
    pair scores 0 (coco-caption #9).  'METEOR' is HERMES's NLTK METEOR (:func:`nltk_meteor`, see
    :data:`METEOR_BACKEND`); 'METEOR_java' is pycocoevalcap's Java METEOR 1.5 (:data:`JAVA_METEOR_BACKEND`).

    Args:
        predictions: [M] generated answers.
        references: [M] GT answer per prediction (a string, or a list of reference strings).
        meteor: compute METEOR.  NLTK METEOR needs the WordNet 3.0 database (``apt-get install wordnet-base``):
            without it 'METEOR' is None and 'meteor_backend' says why.  False skips both METEORs.
        java_meteor: also run the Java METEOR: None = when ``java`` is on PATH, True = always (RuntimeError
            without java), False = never.  Ignored when ``meteor`` is False.

    Returns:
        {'METEOR', 'METEOR_java', 'ROUGE_L', 'CIDEr', 'BLEU-1', 'BLEU-2', 'BLEU-3', 'BLEU-4'} floats (the METEORs
        None when not computed), 'num_pairs' int, 'meteor_backend' and 'meteor_java_backend' str (which
        implementation ran, or why none did).

    Raises:
        ValueError: different lengths or no pairs.
        RuntimeError: ``java_meteor=True`` without java.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("caption_metrics needs at least one prediction/reference pair")
    res = {i: [str(p)] for i, p in enumerate(predictions)}
    gts = {i: _single(r) for i, r in enumerate(references)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    out = {f"BLEU-{n + 1}": float(bleu[n]) for n in range(4)}
    out.update({"ROUGE_L": float(rouge), "CIDEr": float(cider), "METEOR": None, "METEOR_java": None})
    out["meteor_backend"] = out["meteor_java_backend"] = "not computed"
    if meteor:
        from .wordnet import load_wordnet, wordnet_unavailable_reason

        wordnet = load_wordnet()
        if wordnet is None:
            out["meteor_backend"] = f"not computed: {wordnet_unavailable_reason()}"
        else:
            out["METEOR"] = nltk_meteor([res[i][0] for i in res], [gts[i] for i in gts], wordnet)
            out["meteor_backend"] = METEOR_BACKEND
        run_java = java_available() if java_meteor is None else java_meteor
        if run_java:
            out["METEOR_java"] = _java_meteor(gts, res)
            out["meteor_java_backend"] = JAVA_METEOR_BACKEND
        elif java_meteor is None:
            out["meteor_java_backend"] = "not computed: no java runtime on PATH"
    out["num_pairs"] = len(predictions)
    return out


def meteor_tokenize(text: str) -> list[str]:
    """NLTK's Treebank word tokenizer on the whole string (``word_tokenize(text, preserve_line=True)``).

    HERMES's ``word_tokenize`` first splits sentences with Punkt, whose model is a download; without it a
    sentence-final period inside the text stays on its word ("stop. Then" -> ["stop.", "Then"]).
    """
    from nltk.tokenize import word_tokenize

    return word_tokenize(str(text), preserve_line=True)


def nltk_meteor(
    predictions: Sequence[str], references: Sequence[Union[str, Sequence[str]]], wordnet: "WordNetCorpusReader"
) -> float:
    """HERMES's METEOR: mean over pairs of NLTK ``meteor_score`` (best over a pair's references).

    Per pair (Lavie & Agarwal 2007, NLTK defaults alpha 0.9, beta 3, gamma 0.5): m unigrams aligned by exact,
    Porter-stem, then WordNet-synonym match (lower-cased); P = m / len(hyp), R = m / len(ref),
    F = P R / (0.9 P + 0.1 R), score = F (1 - 0.5 (chunks / m)^3), 0 when m = 0.

    Args:
        predictions: [M] generated answers.
        references: [M] reference string (or list of strings) per prediction.
        wordnet: NLTK WordNet reader (:func:`sparseoccvla_core.wordnet.load_wordnet`).

    Returns:
        the mean score, a fraction in [0, 1).
    """
    from nltk.translate.meteor_score import meteor_score

    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"nltk_meteor needs matching non-empty lists ({len(predictions)} vs {len(references)})")
    scores = [
        meteor_score([meteor_tokenize(r) for r in _single(refs)], meteor_tokenize(p), wordnet=wordnet)
        for p, refs in zip(predictions, references)
    ]
    return float(np.mean(scores))


def _java_meteor(gts: Mapping[int, list[str]], res: Mapping[int, list[str]]) -> float:
    """Corpus METEOR from pycocoevalcap's Java METEOR 1.5 (one JVM per call, a few seconds to start)."""
    if not java_available():
        raise RuntimeError(
            "METEOR needs a Java runtime (pycocoevalcap runs meteor-1.5.jar): install one "
            "(e.g. apt-get install default-jre-headless) or pass java_meteor=False"
        )
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        score, _ = scorer.compute_score(
            {k: [_meteor_clean(s) for s in v] for k, v in gts.items()},
            {k: [_meteor_clean(s) for s in v] for k, v in res.items()},
        )
    finally:
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()
    return float(score)


def normalize_answer(answer: str) -> str:
    """Short-answer normalisation before exact match: lower case, single spaces, no trailing period."""
    return " ".join(str(answer).strip().lower().split()).rstrip(".").strip()


def qa_accuracy(
    predictions: Sequence[str],
    answers: Sequence[str],
    template_types: Optional[Sequence[str]] = None,
    num_hops: Optional[Sequence[int]] = None,
    normalize: bool = True,
) -> dict:
    """nuScenes-QA exact-match accuracy (%) overall, per template type and per type + hop.

    Protocol: docs/reference_choices.md §8.5.

    The reference classifies into a closed vocabulary and compares ``str(answer)``; a generative model's text
    is first normalised (:func:`normalize_answer`) when ``normalize`` is True.

    Args:
        predictions: [M] predicted answers.
        answers: [M] GT answers.
        template_types: [M] template type per question (exist, count, object, status, comparison) or None.
        num_hops: [M] hop count per question (0 / 1) or None.
        normalize: normalise both sides before comparing.

    Returns:
        {'overall': %, 'count': M, 'per_type': {type: %}, 'per_type_hop': {'<type>_H<hop>': %}}.
    """
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answers")
    if not predictions:
        raise ValueError("qa_accuracy needs at least one question")
    f = normalize_answer if normalize else str
    correct = np.array([f(p) == f(a) for p, a in zip(predictions, answers)])
    out: dict = {
        "overall": 100.0 * float(correct.mean()),
        "count": int(correct.size),
        "per_type": {},
        "per_type_hop": {},
    }
    if template_types is not None:
        if len(template_types) != len(predictions):
            raise ValueError("template_types must have one entry per question")
        types = np.asarray([str(t) for t in template_types])
        for t in sorted(set(types)):
            out["per_type"][t] = 100.0 * float(correct[types == t].mean())
        if num_hops is not None:
            if len(num_hops) != len(predictions):
                raise ValueError("num_hops must have one entry per question")
            keys = np.asarray([f"{t}_H{int(h)}" for t, h in zip(types, num_hops)])
            for k in sorted(set(keys)):
                out["per_type_hop"][k] = 100.0 * float(correct[keys == k].mean())
    return out


def majority_answer(train_answers: Sequence[str], normalize: bool = True) -> str:
    """Baseline: the most frequent training answer (ties broken alphabetically, deterministic)."""
    if not train_answers:
        raise ValueError("majority_answer needs at least one training answer")
    f = normalize_answer if normalize else str
    counts = Counter(f(a) for a in train_answers)
    best = max(counts.values())
    return min(a for a, c in counts.items() if c == best)
