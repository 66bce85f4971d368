"""``sparseoccvla eval``: the paper's evaluation (SparseOccVLA sec. 4.1, Tables 1, 2, 5) of a checkpoint on a split.

    sparseoccvla eval --ckpt runs/stage3 --data data/synth --out runs/eval
    sparseoccvla eval --ckpt runs/stage3 --data /data/nuscenes --out runs/eval --device cuda --batch-size 4

For every key frame of the split (``--split``, default ``val``) the model's :meth:`SparseOccVLA.predict` gives the
current occupancy, the T forecast frames, the plan and the driving reasoning; understanding questions reuse the
same scene prefix.  Metrics and protocols (``sparseoccvla_core.metrics``, REFERENCE_FACTS §3, §4, §6, §7):

* Understanding (Table 1 left): BLEU-1..4 / ROUGE-L / CIDEr on raw strings via pycocoevalcap over the
  OmniDrive-nuScenes description + conversation answers (HERMES); METEOR = pycocoevalcap's Java METEOR 1.5.
* Occupancy (current frame): Occ3D mIoU over 17 classes with the camera mask (official) and without.
* Forecasting (Table 1 right): mIoU at 1 s / 2 s / 3 s (future key frames +2 / +4 / +6, each against its own
  labels in its own ego frame), no camera mask, current frames with index in [5, scene_len - 8], Avg = mean.
* Planning (Table 2): L2 and collision rate at 1 s / 2 s / 3 s and Avg, ST-P3 convention (mean over the
  waypoints up to the horizon, default) and UniAD convention (at the horizon); only samples whose 6 GT waypoints
  all exist (VAD ``fut_valid_flag`` / OmniDrive / SparseDrive).  Collision GT = boxes of vehicles and pedestrians
  (nuScenes ``sample_annotation`` of each future key frame, through nuscenes-devkit) in the current ego frame.
* nuScenes-QA (Table 5): exact-match accuracy overall and per template type.
* Baselines (for the learning check): occupancy "most frequent training class on the GT geometry", planning
  "training-set mean trajectory" and "constant velocity", QA "majority training answer".  Training statistics
  are computed here from the training split (``--train-split``): mean of the full 6-waypoint training
  trajectories, class histogram of the training Occ3D labels (at most ``--baseline-train-frames`` evenly spaced
  frames), the most frequent nuScenes-QA training answer.

Outputs in ``--out``: ``metrics.json``, ``metrics.md`` (tables laid out like the paper's, each naming its
protocol), ``horizons.png`` (per-horizon bars) and ``bev_<n>_<token>.png`` qualitative frames (front camera, GT vs
predicted occupancy top-down coloured by class, GT vs planned trajectory with the denoised anchors).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from . import metrics as M
from .batch import FREE_CLASS, OCC3D_CLASSES, DrivingBatch
from .occ_grid import points_to_labels

logger = logging.getLogger(__name__)

#: Occ3D-nuScenes class colours (RGB 0-255) used by the BEV plots, index = class id; free is white.
OCC3D_COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),  # others
    (255, 120, 50),  # barrier
    (255, 192, 203),  # bicycle
    (255, 255, 0),  # bus
    (0, 150, 245),  # car
    (0, 255, 255),  # construction_vehicle
    (200, 180, 0),  # motorcycle
    (255, 0, 0),  # pedestrian
    (255, 240, 150),  # traffic_cone
    (135, 60, 0),  # trailer
    (160, 32, 240),  # truck
    (255, 0, 255),  # driveable_surface
    (139, 137, 137),  # other_flat
    (75, 0, 75),  # sidewalk
    (150, 240, 80),  # terrain
    (230, 230, 250),  # manmade
    (0, 175, 0),  # vegetation
    (255, 255, 255),  # free
)
#: HERMES scores the description and the conversation answers (REFERENCE_FACTS §6.2).
UNDERSTANDING_KINDS: tuple[str, ...] = ("desc", "conv")


@dataclass
class EvalOptions:
    """What ``evaluate`` runs.

    Args:
        split: split to evaluate.
        train_split: split the baselines' statistics come from.
        version: nuScenes version folder (None = the only one).
        batch_size: key frames per forward pass.
        num_workers: DataLoader workers.
        device: "cpu", "cuda", "cuda:1", ... or "auto".
        max_samples: evaluate only the first N key frames of the split (None = all; the protocols' numbers
            need all).
        text: OmniDrive-nuScenes understanding metrics (generation; the slowest part).
        qa: nuScenes-QA accuracy.
        meteor: compute METEOR (needs java).
        max_text_samples: key frames whose questions are asked (None = all evaluated frames).
        max_questions_per_sample: cap on the understanding and on the nuScenes-QA questions per key frame, each
            (None = all).
        max_new_tokens: answer length cap (None = the model config's).
        score_threshold: occupancy score threshold of ``predict`` (None = the model's default).
        baselines: compute the trivial baselines (reads training statistics).
        baseline_train_frames: at most this many training Occ3D frames (evenly spaced) for the class histogram.
        num_qualitative: qualitative BEV frames to plot (evenly spaced over the evaluated frames).
        seed: seed of the diffusion noise (deterministic plans).
    """

    split: str = "val"
    train_split: str = "train"
    version: Optional[str] = None
    batch_size: int = 1
    num_workers: int = 0
    device: str = "auto"
    max_samples: Optional[int] = None
    text: bool = True
    qa: bool = True
    meteor: bool = True
    max_text_samples: Optional[int] = None
    max_questions_per_sample: Optional[int] = None
    max_new_tokens: Optional[int] = None
    score_threshold: Optional[float] = None
    baselines: bool = True
    baseline_train_frames: int = 2000
    num_qualitative: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        for name in ("max_samples", "max_text_samples", "max_questions_per_sample", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if self.num_qualitative < 0 or self.baseline_train_frames < 1:
            raise ValueError("num_qualitative must be >= 0 and baseline_train_frames >= 1")


@dataclass
class QualitativeFrame:
    """One frame kept for the qualitative plots (numpy, current ego frame)."""

    sample_token: str
    scene_name: str
    frame_index: int
    front_image: np.ndarray  # [H, W, 3] float in [0, 1], CAM_FRONT of the current frame
    gt_top: Optional[np.ndarray]  # [X, Y] class of the highest occupied voxel per column (FREE where empty)
    pred_top: np.ndarray  # [X, Y]
    gt_trajectory: np.ndarray  # [T, 2]
    gt_trajectory_mask: np.ndarray  # [T]
    plan: np.ndarray  # [T, 2]
    anchors: np.ndarray  # [K, T, 2] denoised anchor trajectories
    anchor_scores: np.ndarray  # [K]
    chosen_anchor: int
    agent_boxes: np.ndarray  # [T, A, 5] future GT boxes (cx, cy, l, w, yaw)
    agent_mask: np.ndarray  # [T, A]
    reasoning: Optional[str]


@dataclass
class EvalReport:
    """``metrics`` (the content of metrics.json) and the qualitative frames."""

    metrics: dict
    qualitative: list[QualitativeFrame] = field(default_factory=list)


# ============================================================================ ground truth helpers


class _LabelCache:
    """Occ3D labels by (scene, token), a few frames deep: frame i's +2 future is frame i+2's current frame."""

    def __init__(self, layout, capacity: int = 16) -> None:
        self.layout, self.capacity = layout, capacity
        self._data: "OrderedDict[str, Any]" = OrderedDict()
        self.missing = 0

    def get(self, scene_name: str, token: str):
        """Occ3DLabels, or None when the file does not exist (counted in ``missing``)."""
        from .data.occ3d import load_occ3d_labels

        if token in self._data:
            self._data.move_to_end(token)
            return self._data[token]
        path = self.layout.occ3d_path(scene_name, token)
        labels = load_occ3d_labels(path) if path.is_file() else None
        if labels is None:
            self.missing += 1
        self._data[token] = labels
        if len(self._data) > self.capacity:
            self._data.popitem(last=False)
        return labels


def top_view(grid: np.ndarray, free_class: int = FREE_CLASS) -> np.ndarray:
    """[X, Y, Z] labels -> [X, Y] class of the highest non-free voxel of each column (free where none)."""
    occupied = grid != free_class  # [X, Y, Z]
    z_top = grid.shape[2] - 1 - np.argmax(occupied[:, :, ::-1], axis=2)  # [X, Y] highest occupied layer
    top = np.take_along_axis(grid, z_top[..., None], axis=2)[..., 0]
    return np.where(occupied.any(axis=2), top, free_class).astype(np.uint8)


def future_agent_boxes(
    nusc,
    future_tokens: Sequence[Optional[str]],
    ego2global: np.ndarray,
    categories: Sequence[str] = M.COLLISION_CATEGORY_PREFIXES,
) -> tuple[np.ndarray, np.ndarray]:
    """GT boxes of other agents at each future key frame, in the current ego frame (collision GT).

    Args:
        nusc: ``nuscenes.nuscenes.NuScenes``.
        future_tokens: T sample tokens of the future key frames (None beyond the scene end).
        ego2global: [4, 4] current ego pose (the key frame's reference pose, as the GT trajectory uses).
        categories: category-name prefixes that count as obstacles (default vehicles + pedestrians, ST-P3 / VAD).

    Returns:
        boxes [T, A, 5] (cx, cy, length, width, yaw) and mask [T, A] bool.
    """
    from .data.camera import invert_pose, quaternion_to_matrix

    g2e = invert_pose(np.asarray(ego2global, dtype=np.float64))
    ego_yaw = math.atan2(ego2global[1, 0], ego2global[0, 0])
    prefixes = tuple(categories)
    per_step: list[np.ndarray] = []
    for token in future_tokens:
        rows = []
        if token is not None:
            for ann_token in nusc.get("sample", token)["anns"]:
                ann = nusc.get("sample_annotation", ann_token)
                if not ann["category_name"].startswith(prefixes):
                    continue
                rot = quaternion_to_matrix(ann["rotation"])
                yaw = math.atan2(rot[1, 0], rot[0, 0]) - ego_yaw
                width, length = float(ann["size"][0]), float(ann["size"][1])  # nuScenes size = (w, l, h)
                rows.append([*ann["translation"][:2], length, width, yaw])
        if rows:
            arr = np.asarray(rows, dtype=np.float64)
            xy = arr[:, :2] @ g2e[:2, :2].T + g2e[:2, 3]  # global (x, y) -> current ego (ego z is irrelevant in BEV)
            # a 2D transform is exact here because nuScenes poses are (nearly) level: the full 3D transform of the
            # box centre differs only by the z-tilt terms, sub-centimetre over 40 m.
            per_step.append(np.column_stack([xy, arr[:, 2:4], np.arctan2(np.sin(arr[:, 4]), np.cos(arr[:, 4]))]))
        else:
            per_step.append(np.zeros((0, 5)))
    a = max((len(b) for b in per_step), default=0)
    boxes = np.zeros((len(per_step), a, 5))
    mask = np.zeros((len(per_step), a), dtype=bool)
    for t, b in enumerate(per_step):
        boxes[t, : len(b)], mask[t, : len(b)] = b, True
    return boxes, mask


def _pad_agents(boxes: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Lists of [T, A_i, 5] / [T, A_i] -> [N, T, A, 5] / [N, T, A]."""
    n, t = len(boxes), boxes[0].shape[0] if boxes else 0
    a = max([b.shape[1] for b in boxes] + [0])
    out, out_mask = np.zeros((n, t, a, 5)), np.zeros((n, t, a), dtype=bool)
    for i, (b, m) in enumerate(zip(boxes, masks)):
        out[i, :, : b.shape[1]], out_mask[i, :, : b.shape[1]] = b, m
    return out, out_mask


def load_nuscenes_qa_records(path: Path) -> dict[str, list[dict]]:
    """nuScenes-QA file -> {sample_token: [{question, answer, template_type, num_hop}]} (REFERENCE_FACTS §6.3)."""
    data = json.loads(Path(path).read_text())
    questions = data.get("questions") if isinstance(data, dict) else None
    if not isinstance(questions, list):
        raise ValueError(f"{path}: expected {{'questions': [...]}} (nuScenes-QA format)")
    out: dict[str, list[dict]] = {}
    for i, q in enumerate(questions):
        try:
            rec = {
                "question": str(q["question"]),
                "answer": str(q["answer"]),
                "template_type": str(q.get("template_type", "unknown")),
                "num_hop": int(q.get("num_hop", 0)),
            }
            out.setdefault(q["sample_token"], []).append(rec)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: question {i} lacks sample_token / question / answer") from None
    return out


# ============================================================================ training statistics (baselines)


@dataclass
class TrainingStatistics:
    """Training-split statistics behind the trivial baselines.

    Args:
        mean_trajectory: [T, 2] mean of the training trajectories with all T waypoints valid (None if none).
        num_trajectories: how many trajectories entered the mean.
        class_counts: [18] Occ3D voxel count per class over the sampled training frames (None without labels).
        num_occ_frames: training frames read for ``class_counts``.
        majority_answer: most frequent nuScenes-QA training answer (None without the file).
        num_qa: training questions counted.
    """

    mean_trajectory: Optional[np.ndarray]
    num_trajectories: int
    class_counts: Optional[np.ndarray]
    num_occ_frames: int
    majority_answer: Optional[str]
    num_qa: int


def training_statistics(
    layout, nusc, split: str, horizon: int, max_occ_frames: int, plan_step: int = 1
) -> TrainingStatistics:
    """Compute :class:`TrainingStatistics` from a split of the dataset (ego poses, Occ3D labels, nuScenes-QA).

    Args:
        layout: the dataset layout (``sparseoccvla_core.data.layout``).
        nusc: a loaded ``NuScenes``.
        split: the training split name.
        horizon: waypoints per trajectory.
        max_occ_frames: at most this many label files (evenly spaced over the split) for the class histogram.
        plan_step: key frames between waypoints (1 = 0.5 s, nuScenes).
    """
    from .data.ego_motion import future_waypoints
    from .data.frames import index_split
    from .data.layout import qa_split_name
    from .data.occ3d import load_occ3d_labels

    scenes = index_split(layout, split, num_frames=1, nusc=nusc)
    trajs = []
    frames: list[tuple[str, str]] = []
    for scene in scenes:
        for i, token in enumerate(scene.sample_tokens):
            wp, valid = future_waypoints(scene.ego2global[i::plan_step], 0, horizon)
            if valid.all():
                trajs.append(wp)
            frames.append((scene.name, token))
    mean = M.mean_trajectory(np.stack(trajs)) if trajs else None
    with_labels = [f for f in frames if layout.occ3d_path(*f).is_file()]
    counts = None
    if with_labels:
        pick = np.unique(
            np.linspace(0, len(with_labels) - 1, min(max_occ_frames, len(with_labels))).round().astype(int)
        )
        counts = np.zeros(len(OCC3D_CLASSES), dtype=np.int64)
        for k in pick:
            counts += M.class_histogram(load_occ3d_labels(layout.occ3d_path(*with_labels[k])).semantics)
        n_occ = len(pick)
    else:
        n_occ = 0
    majority, n_qa = None, 0
    qa_path = layout.nuscenes_qa_root / f"NuScenes_{qa_split_name(split)}_questions.json"
    if qa_path.is_file():
        answers = [r["answer"] for recs in load_nuscenes_qa_records(qa_path).values() for r in recs]
        if answers:
            majority, n_qa = M.majority_answer(answers), len(answers)
    return TrainingStatistics(mean, len(trajs), counts, n_occ, majority, n_qa)


# ============================================================================ the evaluation loop


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name} requested but CUDA is not available (use --device cpu)")
    return device


@torch.no_grad()
def _answer_questions(
    model, batch: DrivingBatch, questions: list[list[str]], max_new_tokens: Optional[int]
) -> list[list[str]]:
    """Answer every item's questions on one cached scene prefix (the scene is encoded once for all questions).

    Questions are asked in rounds: round r asks each item its r-th question; items with fewer questions repeat
    their last one in that round (batched decoding costs the same) and the answer is dropped.  ``predict`` answers
    one question per item; asking many through it would re-run the encoder, the reasoning and the planner per
    question, so this reuses the model's own steps (``_encode``, ``connector``, ``_scene_prefix``, ``llm.generate``)
    and encodes each batch's scene once more than ``predict`` already did, instead of once per question.
    """
    from .tokenizer import encode_qa

    rounds = max((len(q) for q in questions), default=0)
    answers: list[list[str]] = [[] for _ in questions]
    if rounds == 0:
        return answers
    # Same steps as SparseOccVLA.predict: encoder -> connector -> scene prefix (LLM once, KV cached).
    enc = model._encode(batch)
    prefix = model._scene_prefix(model.connector(enc.queries, enc.query_points), batch)
    asked = [qs if qs else ["?"] for qs in questions]
    for r in range(rounds):
        round_q = [qs[min(r, len(qs) - 1)] for qs in asked]
        prompts = [encode_qa(model.tokenizer, q, None, model.cfg.max_text_tokens)[0] for q in round_q]
        texts = model.llm.generate(prefix, prompts, max_new_tokens).texts
        for i, qs in enumerate(questions):
            if r < len(qs):
                answers[i].append(texts[i].strip())
    return answers


class _Accumulator:
    """Everything one evaluation accumulates over the split, frame by frame (numbered as in the module docstring)."""

    def __init__(
        self,
        cfg,
        dataset,
        nusc,
        labels: "_LabelCache",
        opt: EvalOptions,
        base_cls: Optional[int],
        qual_idx: set[int],
        nqa: dict[str, list[dict]],
    ) -> None:
        self.cfg, self.dataset, self.nusc, self.labels, self.opt = cfg, dataset, nusc, labels, opt
        self.base_cls, self.qual_idx, self.nqa = base_cls, qual_idx, nqa
        self.grid_shape = tuple(cfg.grid_shape)
        self.occ_cam, self.occ_all = M.OccupancyMIoU(use_camera_mask=True), M.OccupancyMIoU()
        self.base_cam, self.base_all = M.OccupancyMIoU(use_camera_mask=True), M.OccupancyMIoU()
        self.fc_steps = M.forecast_steps()  # future key frames +2 / +4 / +6
        # 1-based forecast index of each horizon (the forecaster's frames are cfg.forecast_dt apart)
        self.fc_index = [int(round(k * M.KEYFRAME_DT_S / cfg.forecast_dt)) for k in self.fc_steps]
        self.forecast = {M.horizon_key(h): M.OccupancyMIoU() for h in M.FORECAST_HORIZONS_S}
        self.plan: dict[str, list[np.ndarray]] = {k: [] for k in ("pred", "gt", "mask", "vel", "boxes", "box_mask")}
        self.text_preds: list[str] = []
        self.text_refs: list[str] = []
        self.qa: dict[str, list] = {k: [] for k in ("pred", "answer", "type", "hop")}
        self.reasoning_examples: list[dict] = []
        self.qualitative: list[QualitativeFrame] = []
        self.n_text_frames = 0

    def _grid(self, points: torch.Tensor, classes: torch.Tensor, scores: torch.Tensor) -> np.ndarray:
        """Predicted sparse points -> dense [X, Y, Z] labels on the Occ3D grid (best score per voxel)."""
        return points_to_labels(
            points.float().cpu().numpy(),
            classes.cpu().numpy(),
            self.cfg.point_cloud_range,
            self.cfg.voxel_size,
            scores=scores.float().cpu().numpy(),
        )

    def frame(self, g: int, i: int, batch: DrivingBatch, out) -> tuple[list[str], list[tuple]]:
        """Score item ``i`` of a batch (global index ``g``); returns its questions and what each one is scored by."""
        cfg, token = self.cfg, batch.sample_tokens[i]
        scene, fi = self.dataset.locate(g)
        if scene.sample_tokens[fi] != token:
            raise RuntimeError(
                f"batch item {token} is not dataset item {g} ({scene.sample_tokens[fi]}): keep shuffle off"
            )
        # 1. current-frame occupancy (camera mask and no mask) + the single-class baseline on the GT geometry
        lab = self.labels.get(scene.name, token)
        pred_grid = self._grid(out.occupancy_points[i], out.occupancy_classes[i], out.occupancy_scores[i])
        if lab is not None:
            if lab.semantics.shape != self.grid_shape:
                raise ValueError(f"labels are {lab.semantics.shape} but the model's grid is {self.grid_shape}")
            self.occ_cam.update(pred_grid, lab.semantics, lab.mask_camera)
            self.occ_all.update(pred_grid, lab.semantics)
            if self.base_cls is not None:
                base = M.single_class_prediction(lab.semantics, self.base_cls)
                self.base_cam.update(base, lab.semantics, lab.mask_camera)
                self.base_all.update(base, lab.semantics)
        # 2. forecasting: protocol frames only; each future frame's own labels in its own ego frame, no mask
        if bool(M.forecast_eval_frames(fi, len(scene))):
            for h, k, fk in zip(M.FORECAST_HORIZONS_S, self.fc_steps, self.fc_index):
                fut_lab = self.labels.get(scene.name, scene.sample_tokens[fi + k])
                if fk > len(out.forecast_points[i]) or fut_lab is None:
                    continue  # the model forecasts fewer frames than this horizon, or no labels
                fut = self._grid(
                    out.forecast_points[i][fk - 1], out.forecast_classes[i][fk - 1], out.forecast_scores[i][fk - 1]
                )
                self.forecast[M.horizon_key(h)].update(fut, fut_lab.semantics)
        # 3. planning: samples with a complete GT future; collision GT = future boxes from the devkit
        gt_traj = batch.gt_trajectory[i].float().cpu().numpy()
        gt_mask = batch.gt_trajectory_mask[i].cpu().numpy().astype(bool)
        boxes, box_mask = np.zeros((cfg.plan_horizon, 0, 5)), np.zeros((cfg.plan_horizon, 0), dtype=bool)
        if gt_mask.all() or g in self.qual_idx:
            step = self.dataset.plan_step  # key frames per waypoint
            fut_tokens = [
                scene.sample_tokens[fi + s * step] if fi + s * step < len(scene) else None
                for s in range(1, cfg.plan_horizon + 1)
            ]
            boxes, box_mask = future_agent_boxes(self.nusc, fut_tokens, scene.ego2global[fi])
        if gt_mask.all():
            for key, value in (
                ("pred", out.plan[i].float().cpu().numpy()),
                ("gt", gt_traj),
                ("mask", gt_mask),
                ("vel", batch.ego_state[i, :2].float().cpu().numpy()),  # (vx, vy), current ego frame
                ("boxes", boxes),
                ("box_mask", box_mask),
            ):
                self.plan[key].append(value)
        reasoning = out.reasoning[i] if out.reasoning is not None else None
        if reasoning is not None and len(self.reasoning_examples) < 8:
            self.reasoning_examples.append({"sample_token": token, "reasoning": reasoning})
        if g in self.qual_idx:
            self.qualitative.append(
                QualitativeFrame(
                    sample_token=token,
                    scene_name=scene.name,
                    frame_index=fi,
                    front_image=batch.images[i, 0, 0].permute(1, 2, 0).float().cpu().numpy(),  # [H, W, 3]
                    gt_top=top_view(lab.semantics) if lab is not None else None,
                    pred_top=top_view(pred_grid),
                    gt_trajectory=gt_traj,
                    gt_trajectory_mask=gt_mask,
                    plan=out.plan[i].float().cpu().numpy(),
                    anchors=out.anchor_trajectories[i].float().cpu().numpy(),
                    anchor_scores=out.anchor_scores[i].float().cpu().numpy(),
                    chosen_anchor=int(out.chosen_anchor[i]),
                    agent_boxes=boxes,
                    agent_mask=box_mask,
                    reasoning=reasoning,
                )
            )
        # 4. this frame's questions (asked by the caller on one cached scene prefix)
        questions: list[str] = []
        refs: list[tuple] = []
        omni = self.dataset.omnidrive if self.opt.text and self.dataset.omnidrive.available else None
        if (omni is not None or self.nqa) and (
            self.opt.max_text_samples is None or self.n_text_frames < self.opt.max_text_samples
        ):
            self.n_text_frames += 1
            cap = self.opt.max_questions_per_sample  # per source, so both metrics get answers
            for pair in (omni.pairs(token, UNDERSTANDING_KINDS) if omni is not None else [])[:cap]:
                questions.append(pair.question)
                refs.append(("text", pair.answer))
            for rec in self.nqa.get(token, [])[:cap]:
                questions.append(rec["question"])
                refs.append(("qa", rec))
        return questions, refs

    def answers(self, refs: list[tuple], answers: list[str]) -> None:
        """Record the generated answers of one frame against their references."""
        for (kind, ref), pred in zip(refs, answers):
            if kind == "text":
                self.text_preds.append(pred)
                self.text_refs.append(ref)
            else:
                for key, value in (
                    ("pred", pred),
                    ("answer", ref["answer"]),
                    ("type", ref["template_type"]),
                    ("hop", ref["num_hop"]),
                ):
                    self.qa[key].append(value)

    def metrics(self, stats: Optional["TrainingStatistics"], notes: list[str]) -> dict:
        """The metrics dict (metrics.json) from everything accumulated."""
        cfg, opt = self.cfg, self.opt
        out: dict = {
            "split": opt.split,
            "num_samples": None,  # filled by evaluate()
            "config": {"num_queries": cfg.num_queries, "num_global_queries": cfg.num_global_queries},
            "protocol": _protocol_text(),
            "units": {
                "miou": "percent",
                "iou": "percent",
                "l2": "m",
                "collision": "percent",
                "qa_accuracy": "percent",
                "text": "fraction (CIDEr not x100)",
            },
            "occupancy": {
                "camera_mask": self.occ_cam.compute(),
                "no_mask": self.occ_all.compute(),
                "missing_label_files": self.labels.missing,
            },
        }
        fc = {key: acc.compute() for key, acc in self.forecast.items()}
        mious = [fc[M.horizon_key(h)]["miou"] for h in M.FORECAST_HORIZONS_S]
        ious = [fc[M.horizon_key(h)]["geometry_iou"] for h in M.FORECAST_HORIZONS_S]
        fc["avg_miou"] = float(np.mean(mious)) if all(v is not None for v in mious) else None
        fc["avg_geometry_iou"] = float(np.mean(ious)) if all(v is not None for v in ious) else None
        fc["num_frames"] = self.forecast[M.horizon_key(M.FORECAST_HORIZONS_S[0])].num_frames
        out["forecasting"] = fc
        out["planning"] = _planning_metrics(self.plan, cfg)
        out["understanding"] = None
        if self.text_preds:
            use_meteor = opt.meteor and M.java_available()
            und = M.caption_metrics(self.text_preds, self.text_refs, meteor=use_meteor)
            if opt.meteor and not use_meteor:
                und["meteor_backend"] = "not computed: no java runtime on PATH"
            und["examples"] = [
                {"prediction": p, "reference": r} for p, r in list(zip(self.text_preds, self.text_refs))[:8]
            ]
            out["understanding"] = und
        qa = self.qa
        out["nuscenes_qa"] = M.qa_accuracy(qa["pred"], qa["answer"], qa["type"], qa["hop"]) if qa["pred"] else None
        out["reasoning_examples"] = self.reasoning_examples
        out["baselines"] = _baseline_metrics(self, stats, notes)
        return out


def evaluate(model, data: str | Path, options: Optional[EvalOptions] = None) -> EvalReport:
    """Run the paper's evaluation of ``model`` on a dataset split.

    Args:
        model: a :class:`~sparseoccvla_core.model.SparseOccVLA` (moved to ``options.device`` here).
        data: dataset root (nuScenes dataroot or a synthetic world).
        options: :class:`EvalOptions`.

    Returns:
        :class:`EvalReport`; ``write_report`` writes it.  Keys the learning check compares: ``occupancy.no_mask.miou``
        vs ``baselines.occupancy_most_frequent_class.no_mask.miou``, ``planning.l2.stp3.avg`` vs
        ``baselines.planning_mean_trajectory.l2.stp3.avg``, ``nuscenes_qa.overall`` vs
        ``baselines.qa_majority_answer.accuracy.overall``.

    Raises:
        FileNotFoundError / ValueError: bad dataset root, version or split (from the data loader).
    """
    from torch.utils.data import DataLoader, Subset

    from .data.dataset import DatasetOptions, DrivingDataset, make_collate
    from .data.frames import load_nuscenes
    from .data.layout import qa_split_name

    opt = options or EvalOptions()
    cfg = model.cfg
    device = _resolve_device(opt.device)
    model = model.to(device).eval()
    seconds: dict[str, float] = {"setup": 0.0, "predict": 0.0, "questions": 0.0, "scoring": 0.0, "metrics": 0.0}
    t0 = time.perf_counter()

    # Setup: the split (occupancy GT is read here, as dense labels with masks, not by the loader), the devkit
    # tables for the collision GT, the training statistics of the baselines.
    ds_options = DatasetOptions(version=opt.version, load_occupancy=False, qa_choice="first")
    dataset = DrivingDataset(data, opt.split, cfg, tokenizer=model.tokenizer, options=ds_options)
    if len(dataset) == 0:
        raise ValueError(f"split {opt.split!r} of {data} has no key frames")
    layout = dataset.layout
    n_eval = len(dataset) if opt.max_samples is None else min(opt.max_samples, len(dataset))
    loader = DataLoader(
        Subset(dataset, range(n_eval)),
        batch_size=opt.batch_size,
        shuffle=False,
        num_workers=opt.num_workers,
        collate_fn=make_collate(model.tokenizer),
    )
    nusc = load_nuscenes(layout)
    stats: Optional[TrainingStatistics] = None
    notes: list[str] = []
    if opt.baselines:
        try:
            stats = training_statistics(
                layout, nusc, opt.train_split, cfg.plan_horizon, opt.baseline_train_frames, dataset.plan_step
            )
        except ValueError as exc:  # e.g. no training split in this dataset
            notes.append(f"no training statistics: {exc}")
    base_cls = None
    if stats is not None and stats.class_counts is not None and stats.class_counts[:FREE_CLASS].sum() > 0:
        base_cls = M.most_frequent_class(stats.class_counts)
    nqa_path = layout.nuscenes_qa_root / f"NuScenes_{qa_split_name(opt.split)}_questions.json"
    nqa = load_nuscenes_qa_records(nqa_path) if (opt.qa and nqa_path.is_file()) else {}
    qual_idx = _qualitative_indices(dataset, n_eval, opt.num_qualitative, cfg.plan_horizon)
    acc = _Accumulator(cfg, dataset, nusc, _LabelCache(layout), opt, base_cls, qual_idx, nqa)
    generator = torch.Generator(device=device).manual_seed(opt.seed)
    seconds["setup"] = time.perf_counter() - t0

    index = 0
    for batch in _progress(loader, n_eval, opt.batch_size):
        t = time.perf_counter()
        batch = batch.to(device)
        thr = {} if opt.score_threshold is None else {"score_threshold": opt.score_threshold}
        out = model.predict(batch, generate_text=True, generator=generator, **thr)
        seconds["predict"] += time.perf_counter() - t
        t = time.perf_counter()
        asked = [acc.frame(index + i, i, batch, out) for i in range(batch.batch_size)]
        seconds["scoring"] += time.perf_counter() - t
        if any(q for q, _ in asked):
            t = time.perf_counter()
            answers = _answer_questions(model, batch, [q for q, _ in asked], opt.max_new_tokens)
            for (_, refs), ans in zip(asked, answers):
                acc.answers(refs, ans)
            seconds["questions"] += time.perf_counter() - t
        index += batch.batch_size

    t = time.perf_counter()
    metrics = acc.metrics(stats, notes)
    metrics["num_samples"], metrics["num_samples_in_split"] = n_eval, len(dataset)
    seconds["metrics"] = time.perf_counter() - t
    metrics["seconds"] = {**seconds, "total": time.perf_counter() - t0}
    return EvalReport(metrics=metrics, qualitative=acc.qualitative)


def _qualitative_indices(dataset, n_eval: int, k: int, horizon: int) -> set[int]:
    """``k`` evenly spaced evaluated indices, preferring key frames whose whole GT future exists."""
    full = []
    for g in range(n_eval):
        scene, i = dataset.locate(g)
        if i + horizon * dataset.plan_step < len(scene):
            full.append(g)
    pool = full or list(range(n_eval))
    if k <= 0 or not pool:
        return set()
    return {pool[j] for j in np.linspace(0, len(pool) - 1, min(k, len(pool))).round().astype(int)}


def _progress(loader, total: int, batch_size: int):
    """tqdm progress over batches when tqdm is installed (it is a dependency), plain iteration otherwise."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is in install_requires
        return loader
    return tqdm(loader, total=math.ceil(total / batch_size), desc="eval", unit="batch", leave=False)


def _plan_scores(pred: np.ndarray, plan: dict, cfg) -> dict:
    """L2 and collision of trajectories [N, T, 2] against the accumulated GT, under both conventions."""
    g, m = np.stack(plan["gt"]), np.stack(plan["mask"])
    b, bm = _pad_agents(plan["boxes"], plan["box_mask"])
    return {
        "l2": {c: M.l2_errors(pred, g, m, convention=c, dt=cfg.plan_dt) for c in M.PLAN_CONVENTIONS},
        "collision": {c: M.collision_rate(pred, g, b, bm, m, convention=c, dt=cfg.plan_dt) for c in M.PLAN_CONVENTIONS},
    }


def _planning_metrics(plan: dict, cfg) -> dict:
    out: dict = {
        "num_samples": len(plan["pred"]),
        "ego_box": asdict(M.EgoBox()),
        "collision_categories": list(M.COLLISION_CATEGORY_PREFIXES),
        "l2": None,
        "collision": None,
    }
    if plan["pred"]:
        out.update(_plan_scores(np.stack(plan["pred"]), plan, cfg))
    return out


def _baseline_metrics(acc: "_Accumulator", stats: Optional[TrainingStatistics], notes: list[str]) -> dict:
    """The trivial baselines scored exactly like the model (same frames, same protocols)."""
    out: dict = {"notes": list(notes)}
    if stats is None:
        return out
    out["training_statistics"] = {
        "split": acc.opt.train_split,
        "num_trajectories": stats.num_trajectories,
        "num_occ_frames": stats.num_occ_frames,
        "num_qa": stats.num_qa,
    }
    if acc.base_cls is not None and acc.base_all.num_frames:
        out["occupancy_most_frequent_class"] = {
            "class": OCC3D_CLASSES[acc.base_cls],
            "camera_mask": acc.base_cam.compute(),
            "no_mask": acc.base_all.compute(),
        }
    if acc.plan["gt"]:
        n, t = len(acc.plan["gt"]), acc.cfg.plan_horizon
        if stats.mean_trajectory is not None:
            mean = np.broadcast_to(stats.mean_trajectory, (n, t, 2))
            out["planning_mean_trajectory"] = {
                **_plan_scores(mean, acc.plan, acc.cfg),
                "trajectory": stats.mean_trajectory.tolist(),
            }
        const_vel = M.constant_velocity_trajectory(np.stack(acc.plan["vel"]), t, acc.cfg.plan_dt)
        out["planning_constant_velocity"] = _plan_scores(const_vel, acc.plan, acc.cfg)
    qa = acc.qa
    if stats.majority_answer is not None and qa["answer"]:
        out["qa_majority_answer"] = {
            "answer": stats.majority_answer,
            "accuracy": M.qa_accuracy([stats.majority_answer] * len(qa["answer"]), qa["answer"], qa["type"], qa["hop"]),
        }
    return out


def _protocol_text() -> dict:
    return {
        "understanding": (
            "OmniDrive-nuScenes description + conversation answers (HERMES); pycocoevalcap BLEU/ROUGE-L/CIDEr on raw "
            f"strings, no PTBTokenizer; METEOR: {M.METEOR_BACKEND}"
        ),
        "occupancy": (
            "Occ3D-nuScenes mIoU over classes 0..16, dataset-level 18x18 confusion; camera mask (official) and none"
        ),
        "forecasting": (
            "mIoU at 1/2/3 s = future key frames +2/+4/+6 vs their own labels in their own ego frame, no camera mask, "
            "current frames with index in [5, scene_len - 8] (first 5 and last 7 of each scene excluded); Avg = mean"
        ),
        "planning": (
            "open loop, samples with all 6 GT waypoints; 'stp3' (default) = mean over waypoints up to the horizon "
            "(ST-P3/VAD/OmniDrive/SparseWorld), 'uniad' = value at the horizon; collision = exact box intersection of "
            "the ego box (4.084 m x 1.85 m, centre 1.486 m ahead of the rear axle, yaw from the path) with GT "
            "vehicle and "
            "pedestrian boxes of the same future key frame; steps where the GT trajectory collides are not counted"
        ),
        "nuscenes_qa": "exact match after lower-casing / whitespace / trailing-period normalisation",
    }


# ============================================================================ report: markdown, JSON, plots


#: Label of the evaluated model's rows in the tables.
MODEL_ROW: str = "SparseOccVLA (this checkpoint)"


def _row(*cells) -> str:
    """One markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _fmt(v: Optional[float], digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def render_markdown(metrics: dict, title: str = "SparseOccVLA evaluation") -> str:
    """The tables of ``metrics.md``: laid out like the paper's Tables 1, 2, 5, each followed by its protocol."""
    lines = [
        f"# {title}",
        "",
        f"Split `{metrics['split']}`: {metrics['num_samples']} of {metrics['num_samples_in_split']} key frames "
        "evaluated.",
        "",
    ]
    proto = metrics["protocol"]
    tokens = metrics["config"]["num_queries"]
    und = metrics.get("understanding")
    lines += [
        "## Table 1 (left) - Understanding, OmniDrive-nuScenes",
        "",
        "| Method | Token | METEOR | ROUGE | CIDEr |",
        "|---|---|---|---|---|",
    ]
    if und:
        lines.append(_row(MODEL_ROW, tokens, *(_fmt(und[k], 3) for k in ("METEOR", "ROUGE_L", "CIDEr"))))
        lines += [
            "",
            f"BLEU-1..4: {', '.join(_fmt(und[f'BLEU-{n}'], 3) for n in range(1, 5))} over {und['num_pairs']} answers.",
        ]
    else:
        lines.append(_row(MODEL_ROW, tokens, "-", "-", "-"))
        lines += ["", "No OmniDrive-nuScenes description / conversation files for this split (or text evaluation off)."]
    lines += ["", f"Protocol: {proto['understanding']}.", ""]

    fc = metrics["forecasting"]
    lines += [
        "## Table 1 (right) - Occupancy forecasting, Occ3D-nuScenes",
        "",
        "| Method | mIoU 1s | 2s | 3s | Avg | IoU Avg |",
        "|---|---|---|---|---|---|",
    ]
    lines.append(
        f"| {MODEL_ROW} | "
        + " | ".join(_fmt(fc[M.horizon_key(h)]["miou"]) for h in M.FORECAST_HORIZONS_S)
        + f" | {_fmt(fc['avg_miou'])} | {_fmt(fc['avg_geometry_iou'])} |"
    )
    lines += ["", f"Protocol: {proto['forecasting']}; {fc['num_frames']} current frames.", ""]

    occ = metrics["occupancy"]
    base = metrics["baselines"].get("occupancy_most_frequent_class")
    lines += [
        "## Current-frame occupancy (as Tables 6 / 8 'Curr'), Occ3D-nuScenes",
        "",
        "| Method | mIoU (camera mask) | mIoU (no mask) | IoU (no mask) |",
        "|---|---|---|---|",
    ]
    occ_rows = [(MODEL_ROW, occ)] + ([(f"Baseline: GT geometry, all `{base['class']}`", base)] if base else [])
    for label, entry in occ_rows:
        cells = (entry["camera_mask"]["miou"], entry["no_mask"]["miou"], entry["no_mask"]["geometry_iou"])
        lines.append(_row(label, *(_fmt(v) for v in cells)))
    lines += ["", f"Protocol: {proto['occupancy']}; {occ['no_mask']['num_frames']} frames.", ""]

    pl = metrics["planning"]
    lines += [
        "## Table 2 - Open-loop planning, nuScenes",
        "",
        "| Method | Convention | L2 (m) 1s | 2s | 3s | Avg. | Collision (%) 1s | 2s | 3s | Avg. |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows: list[tuple[str, dict]] = []
    if pl["l2"] is not None:
        rows.append((MODEL_ROW, pl))
    for name, label in (
        ("planning_mean_trajectory", "Baseline: training mean trajectory"),
        ("planning_constant_velocity", "Baseline: constant velocity"),
    ):
        if name in metrics["baselines"]:
            rows.append((label, metrics["baselines"][name]))
    for label, entry in rows:
        for conv in M.PLAN_CONVENTIONS:
            l2, col = entry["l2"][conv], entry["collision"][conv]
            tag = "ST-P3 (default)" if conv == "stp3" else "UniAD"
            cells = [_fmt(l2[k]) for k in ("1s", "2s", "3s", "avg")] + [_fmt(col[k]) for k in ("1s", "2s", "3s", "avg")]
            lines.append(f"| {label} | {tag} | " + " | ".join(cells) + " |")
    lines += ["", f"Protocol: {proto['planning']}; {pl['num_samples']} samples.", ""]

    qa = metrics.get("nuscenes_qa")
    lines += ["## Table 5 - nuScenes-QA", ""]
    if qa:
        types = sorted(qa["per_type"])
        lines += ["| Method | Acc. (%) | " + " | ".join(types) + " |", "|---|---|" + "---|" * len(types)]
        lines.append(
            f"| {MODEL_ROW} | "
            + _fmt(qa["overall"], 1)
            + " | "
            + " | ".join(_fmt(qa["per_type"][t], 1) for t in types)
            + " |"
        )
        maj = metrics["baselines"].get("qa_majority_answer")
        if maj:
            acc = maj["accuracy"]
            lines.append(
                f"| Baseline: majority answer `{maj['answer']}` | {_fmt(acc['overall'], 1)} | "
                + " | ".join(_fmt(acc["per_type"].get(t), 1) for t in types)
                + " |"
            )
        lines += ["", f"Protocol: {proto['nuscenes_qa']}; {qa['count']} questions.", ""]
    else:
        lines += ["No nuScenes-QA questions for this split (or QA evaluation off).", ""]
    for note in metrics["baselines"].get("notes", []):
        lines.append(f"Note: {note}")
    return "\n".join(lines).rstrip() + "\n"


def _grouped_bars(ax, keys: Sequence[str], series: Sequence[tuple[str, dict]], title: str) -> None:
    """One group of bars per horizon, one bar per series, each bar labelled with its value (2 decimals); y from 0."""
    x = np.arange(len(keys))
    width = 0.8 / max(len(series), 1)
    top = 0.0
    for j, (label, vals) in enumerate(series):
        heights = [vals.get(k) or 0.0 for k in keys]
        bars = ax.bar(x + j * width - 0.4 + width / 2, heights, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
        top = max(top, *heights)
    ax.set_ylim(0.0, 1.15 * top if top > 0 else 1.0)  # an all-zero panel still shows its zero bars on a 0..1 axis
    ax.set_title(title)
    ax.set_xticks(x)
    ax.set_xticklabels(keys)
    ax.grid(axis="y", alpha=0.3)
    if series:
        ax.legend(fontsize=8)


def plot_horizons(metrics: dict, path: Path) -> None:
    """Write :func:`horizons_figure` to ``path`` (PNG)."""
    import matplotlib.pyplot as plt

    fig = horizons_figure(metrics)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def horizons_figure(metrics: dict):
    """Per-horizon bars of a metrics dict: forecasting mIoU; L2 and collision rate of the model (both conventions)
    and of the planning baselines (ST-P3 convention).  Returns the matplotlib figure (3 axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [M.horizon_key(h) for h in M.FORECAST_HORIZONS_S]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    fc = metrics["forecasting"]
    _grouped_bars(axes[0], keys, [("model", {k: fc[k]["miou"] for k in keys if k in fc})],
                  "Forecasting mIoU (%) - no camera mask")
    pl, bl = metrics["planning"], metrics["baselines"]
    for ax, metric, title in ((axes[1], "l2", "Planning L2 (m)"), (axes[2], "collision", "Collision rate (%)")):
        series: list[tuple[str, dict]] = []
        if pl[metric] is not None:
            series += [("model ST-P3", pl[metric]["stp3"]), ("model UniAD", pl[metric]["uniad"])]
        for name, label in (
            ("planning_mean_trajectory", "mean traj. ST-P3"),
            ("planning_constant_velocity", "const. vel. ST-P3"),
        ):
            if name in bl and bl[name].get(metric) is not None:
                series.append((label, bl[name][metric]["stp3"]))
        _grouped_bars(ax, keys, series, title)
    fig.tight_layout()
    return fig


def _class_image(top: np.ndarray) -> np.ndarray:
    """[X, Y] classes -> [X, Y, 3] RGB float."""
    return np.asarray(OCC3D_COLORS, dtype=np.float32)[top] / 255.0


def plot_bev(frame: QualitativeFrame, pc_range: Sequence[float], path: Path) -> None:
    """Front camera | GT occupancy + GT trajectory | predicted occupancy + plan + anchors, top-down (x up, y left)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Polygon as MplPolygon

    fig, axes = plt.subplots(1, 3, figsize=(16, 5.6))
    axes[0].imshow(np.clip(frame.front_image, 0, 1))
    axes[0].set_title(f"CAM_FRONT  {frame.scene_name} #{frame.frame_index}")
    axes[0].axis("off")
    extent = [pc_range[1], pc_range[4], pc_range[0], pc_range[3]]  # y_min, y_max, x_min, x_max
    panels = [
        ("GT occupancy + GT trajectory", frame.gt_top),
        ("Predicted occupancy + plan (anchors thin)", frame.pred_top),
    ]
    for ax, (title, top) in zip(axes[1:], panels):
        if top is not None:
            ax.imshow(_class_image(top), origin="lower", extent=extent, interpolation="nearest")
        ax.set_xlim(pc_range[4], pc_range[1])  # +y (left) on the left of the image
        ax.set_ylim(pc_range[0], pc_range[3])
        ax.set_title(title)
        ax.set_xlabel("y (m, left +)")
        ax.set_ylabel("x (m, forward)")
        ego = M.ego_boxes_along_path(np.zeros((1, 1, 2)))[0, 0]
        ax.add_patch(MplPolygon(_box_corners(ego)[:, ::-1], closed=True, fill=True, color="black"))
    gt = np.vstack([[0.0, 0.0], frame.gt_trajectory[frame.gt_trajectory_mask]])
    axes[1].plot(gt[:, 1], gt[:, 0], "-o", color="lime", lw=2, ms=4, label="GT trajectory")
    for t in range(frame.agent_boxes.shape[0]):  # the GT agents at the last future step, outlined
        if t != frame.agent_boxes.shape[0] - 1:
            continue
        for box in frame.agent_boxes[t][frame.agent_mask[t]]:
            axes[1].add_patch(MplPolygon(_box_corners(box)[:, ::-1], closed=True, fill=False, color="red", lw=1))
    for k, traj in enumerate(frame.anchors):
        pts = np.vstack([[0.0, 0.0], traj])
        axes[2].plot(pts[:, 1], pts[:, 0], "-", color="gray", lw=0.7, alpha=0.3 + 0.7 * float(frame.anchor_scores[k]))
    plan = np.vstack([[0.0, 0.0], frame.plan])
    axes[2].plot(plan[:, 1], plan[:, 0], "-o", color="orange", lw=2, ms=4, label=f"plan (anchor {frame.chosen_anchor})")
    axes[2].plot(gt[:, 1], gt[:, 0], "--", color="lime", lw=1, label="GT")
    axes[1].legend(loc="lower left", fontsize=8)
    axes[2].legend(loc="lower left", fontsize=8)
    if frame.reasoning:
        fig.text(0.01, 0.01, f"reasoning: {frame.reasoning[:180]}", fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _box_corners(box: np.ndarray) -> np.ndarray:
    """(cx, cy, l, w, yaw) -> [4, 2] corners (x, y)."""
    cx, cy, length, width, yaw = box
    c, s = math.cos(yaw), math.sin(yaw)
    local = np.array([[length, width], [-length, width], [-length, -width], [length, -width]]) / 2
    return np.column_stack([cx + c * local[:, 0] - s * local[:, 1], cy + s * local[:, 0] + c * local[:, 1]])


def write_report(
    report: EvalReport, out_dir: str | Path, pc_range: Sequence[float], extra: Optional[dict] = None
) -> list[Path]:
    """Write metrics.json, metrics.md, horizons.png and the qualitative BEV frames; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = dict(report.metrics)
    if extra:
        metrics.update(extra)
    files = [out / "metrics.json", out / "metrics.md", out / "horizons.png"]
    files[0].write_text(json.dumps(metrics, indent=2, default=_json_default) + "\n")
    files[1].write_text(render_markdown(metrics))
    plot_horizons(metrics, files[2])
    for n, frame in enumerate(report.qualitative):
        path = out / f"bev_{n:02d}_{frame.sample_token[:8]}.png"
        plot_bev(frame, pc_range, path)
        files.append(path)
    return files


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def evaluate_checkpoint(
    ckpt: str | Path, data: str | Path, out: str | Path, options: Optional[EvalOptions] = None
) -> dict:
    """Load a checkpoint, evaluate it and write the report; returns the metrics dict (``sparseoccvla eval``)."""
    from .model import SparseOccVLA

    model = SparseOccVLA.from_pretrained(ckpt)
    report = evaluate(model, data, options)
    write_report(report, out, model.cfg.point_cloud_range, extra={"checkpoint": str(ckpt), "data": str(data)})
    return report.metrics


# ============================================================================ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = EvalOptions()
    parser.add_argument("--ckpt", required=True, help="checkpoint folder (save_pretrained / a training stage's --out)")
    parser.add_argument("--data", required=True, help="dataset root (nuScenes dataroot or a synthetic world)")
    parser.add_argument("--out", required=True, help="output folder for metrics.json, metrics.md and the PNG plots")
    parser.add_argument("--split", default=d.split, help="split to evaluate (default %(default)s)")
    parser.add_argument(
        "--train-split", default=d.train_split, help="split of the baselines' statistics (default %(default)s)"
    )
    parser.add_argument("--version", default=None, help="nuScenes version folder (default: the only one under --data)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--num-workers", type=int, default=d.num_workers)
    parser.add_argument("--device", default=d.device, help="cpu, cuda, cuda:N or auto (default %(default)s)")
    parser.add_argument(
        "--max-samples", type=int, default=None, help="evaluate only the first N key frames (default: all)"
    )
    parser.add_argument("--no-text", action="store_true", help="skip the OmniDrive understanding metrics")
    parser.add_argument("--no-qa", action="store_true", help="skip nuScenes-QA")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (it needs java)")
    parser.add_argument(
        "--max-text-samples", type=int, default=None, help="key frames whose questions are asked (default: all)"
    )
    parser.add_argument(
        "--max-questions-per-sample",
        type=int,
        default=None,
        help="cap on the understanding and on the nuScenes-QA questions per key frame, each",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="answer length cap (default: the model config's)"
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help="occupancy score threshold (default: the model's, SparseWorld's 0.35)",
    )
    parser.add_argument("--no-baselines", action="store_true", help="skip the trivial baselines")
    parser.add_argument(
        "--baseline-train-frames",
        type=int,
        default=d.baseline_train_frames,
        help="training Occ3D frames read for the most-frequent-class baseline (default %(default)s)",
    )
    parser.add_argument("--num-qualitative", type=int, default=d.num_qualitative, help="qualitative BEV frames to plot")
    parser.add_argument("--seed", type=int, default=d.seed, help="diffusion noise seed")


def run(args: argparse.Namespace) -> int:
    options = EvalOptions(
        split=args.split,
        train_split=args.train_split,
        version=args.version,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        max_samples=args.max_samples,
        text=not args.no_text,
        qa=not args.no_qa,
        meteor=not args.no_meteor,
        max_text_samples=args.max_text_samples,
        max_questions_per_sample=args.max_questions_per_sample,
        max_new_tokens=args.max_new_tokens,
        score_threshold=args.score_threshold,
        baselines=not args.no_baselines,
        baseline_train_frames=args.baseline_train_frames,
        num_qualitative=args.num_qualitative,
        seed=args.seed,
    )
    ckpt = Path(args.ckpt)
    if not ckpt.is_dir():
        raise SystemExit(
            f"--ckpt {ckpt} is not a folder (give a checkpoint written by save_pretrained / sparseoccvla train)"
        )
    try:
        metrics = evaluate_checkpoint(ckpt, args.data, args.out, options)
    except (FileNotFoundError, ValueError) as exc:  # bad checkpoint / dataset / split: the message names the fix
        raise SystemExit(f"sparseoccvla eval: {exc}") from exc
    out = Path(args.out)
    print((out / "metrics.md").read_text())
    print(f"wrote {out / 'metrics.json'}, {out / 'metrics.md'} and plots in {metrics['seconds']['total']:.1f} s")
    return 0
