"""The evaluation loop of ``sparseoccvla eval``: a checkpoint's predictions on a dataset split, scored frame by frame.

    sparseoccvla eval --ckpt runs/stage3 --data data/synth --out runs/eval

For every key frame :meth:`SparseOccVLA.predict` gives the current occupancy, the forecast frames, the plan and the
driving reasoning; this module reads the frame's ground truth (Occ3D labels, future agent boxes, questions) and
hands both to :class:`~sparseoccvla_core.evaluation.accumulator.MetricAccumulator`, which computes the metrics.
Understanding and nuScenes-QA questions are answered on the same cached scene prefix.  ``--split all`` scores
every split of the root in turn into one accumulator (a held-out world none of which was trained on);
``--train-data`` takes the baselines' training statistics from another root's training split.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

import numpy as np
import torch

from .. import metrics as M
from ..batch import DrivingBatch
from .accumulator import MetricAccumulator
from .baselines import TrainingStatistics, training_statistics
from .ground_truth import LabelCache, QARecord, future_agent_boxes, load_nuscenes_qa_records
from .plots import QualitativeFrame, top_view
from .report import write_report
from .results import EvalResults

if TYPE_CHECKING:
    from nuscenes.nuscenes import NuScenes
    from torch.utils.data import DataLoader

    from ..data.dataset import DrivingDataset
    from ..data.layout import DatasetLayout
    from ..model import PredictOutput, SparseOccVLA

#: HERMES scores the description and the conversation answers (docs/reference_choices.md §8.4).
UNDERSTANDING_KINDS: tuple[str, ...] = ("desc", "conv")

#: ``--split`` value that evaluates every split of the dataset root in turn.
ALL_SPLITS: str = "all"

#: Per-key-frame scenario facts of a synthetic world: ``<root>/scenario/<split>/<sample_token>.json``
#: (written by ``sparseoccvla synth``, ``sparseoccvla_core/synthetic/generate.py`` ``SCENARIO_DIR``).
SCENARIO_DIR: str = "scenario"


@dataclass
class EvalOptions:
    """What ``evaluate`` runs.

    Args:
        split: split to evaluate; ``"all"`` = every split of the root (train + val: a held-out world).
        train_split: split the baselines' statistics come from.
        train_data: dataset root whose ``train_split`` gives the baselines' statistics (None = the evaluated
            root), e.g. the training world when a separately generated world is evaluated.
        version: nuScenes version folder (None = the only one).
        batch_size: key frames per forward pass.
        num_workers: DataLoader workers.
        device: "cpu", "cuda", "cuda:1", ... or "auto".
        max_samples: evaluate only the first N key frames of the split (None = all; the protocols' numbers
            need all).
        text: OmniDrive-nuScenes understanding metrics (generation; the slowest part).
        plan: the driving reasoning and the plan (planning metrics).  False skips the reasoning's generation too:
            with ``text`` and ``qa`` off, nothing is generated and only occupancy and forecast are scored (a
            stage-1 checkpoint's check).
        qa: nuScenes-QA accuracy.
        meteor: compute METEOR (NLTK's needs WordNet, the Java one beside it needs java).
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
    train_data: Optional[str] = None
    version: Optional[str] = None
    batch_size: int = 1
    num_workers: int = 0
    device: str = "auto"
    max_samples: Optional[int] = None
    text: bool = True
    plan: bool = True
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
class EvalReport:
    """What :func:`evaluate` returns: the metrics and the qualitative frames (``write_report`` writes both)."""

    metrics: EvalResults
    qualitative: list[QualitativeFrame] = field(default_factory=list)


@dataclass(frozen=True)
class _Question:
    """One question asked about a frame and what its answer is scored against."""

    text: str
    reference: Optional[str] = None  # OmniDrive understanding answer
    qa: Optional[QARecord] = None  # nuScenes-QA record
    kind: Optional[str] = None  # OmniDrive kind of an understanding question ("desc" / "conv")


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name} requested but CUDA is not available (use --device cpu)")
    return device


@torch.no_grad()
def answer_questions(
    model: "SparseOccVLA", batch: DrivingBatch, questions: list[list[str]], max_new_tokens: Optional[int]
) -> list[list[str]]:
    """Answer every item's questions on one cached scene prefix (the scene is encoded once for all questions).

    Questions are asked in rounds: round r asks each item its r-th question; items with fewer questions repeat
    their last one in that round (batched decoding costs the same) and the answer is dropped.  ``predict`` answers
    one question per item; asking many through it would re-run the encoder, the reasoning and the planner per
    question, so this reuses the model's own steps (``encode_scene``, ``scene_tokens``, ``scene_prefix``,
    ``answer``) and encodes each batch's scene once more than ``predict`` already did, instead of once per question.

    Args:
        model: the model (eval mode, on the batch's device).
        batch: B key frames.
        questions: per item, its questions (may be empty).
        max_new_tokens: answer length cap (None = the model config's).

    Returns:
        Per item, one answer per question.
    """
    rounds = max((len(q) for q in questions), default=0)
    answers: list[list[str]] = [[] for _ in questions]
    if rounds == 0:
        return answers
    # Same steps as SparseOccVLA.predict: encoder -> connector -> scene prefix (LLM once, KV cached).
    enc = model.encode_scene(batch)
    prefix = model.scene_prefix(model.scene_tokens(enc), batch.ego_state, batch.command)
    asked = [qs if qs else ["?"] for qs in questions]
    for r in range(rounds):
        texts = model.answer(prefix, [qs[min(r, len(qs) - 1)] for qs in asked], max_new_tokens).texts
        for i, qs in enumerate(questions):
            if r < len(qs):
                answers[i].append(texts[i].strip())
    return answers


class _SplitScorer:
    """Reads each evaluated frame's ground truth from the dataset and feeds the prediction to the accumulator."""

    def __init__(
        self,
        model: "SparseOccVLA",
        dataset: "DrivingDataset",
        nusc: "NuScenes",
        opt: EvalOptions,
        accumulator: MetricAccumulator,
        qual_idx: set[int],
        nqa: dict[str, list[QARecord]],
    ) -> None:
        self.cfg, self.dataset, self.nusc, self.opt = model.cfg, dataset, nusc, opt
        self.acc, self.qual_idx, self.nqa = accumulator, qual_idx, nqa
        planner_cmds = getattr(getattr(model, "planner", None), "anchor_commands", None)
        self.anchor_commands = (
            planner_cmds.detach().cpu().numpy().astype(np.int64) if planner_cmds is not None else None
        )  # [K] command of each anchor (anchors are clustered per command)
        from ..data.layout import qa_split_name

        self.scenario_dir = dataset.layout.root / SCENARIO_DIR / qa_split_name(dataset.split)
        self.labels = LabelCache(dataset.layout)
        self.fc_steps = M.forecast_steps()  # future key frames +2 / +4 / +6
        self.qualitative: list[QualitativeFrame] = []
        self.n_text_frames = 0

    def frame(self, g: int, i: int, batch: DrivingBatch, out: "PredictOutput") -> list[_Question]:
        """Score item ``i`` of a batch (global index ``g``); returns the questions to ask about it."""
        cfg, acc, token = self.cfg, self.acc, batch.sample_tokens[i]
        scene, fi = self.dataset.locate(g)
        if scene.sample_tokens[fi] != token:
            raise RuntimeError(
                f"batch item {token} is not dataset item {g} ({scene.sample_tokens[fi]}): keep shuffle off"
            )
        # 1. current-frame occupancy (camera mask and no mask) + the single-class baseline on the GT geometry
        lab = self.labels.get(scene.name, token)
        if lab is not None:
            pred_grid = acc.add_occupancy(
                out.occupancy_points[i],
                out.occupancy_classes[i],
                lab.semantics,
                lab.mask_camera,
                out.occupancy_scores[i],
            )
        else:
            pred_grid = acc.prediction_grid(out.occupancy_points[i], out.occupancy_classes[i], out.occupancy_scores[i])
        # 2. forecasting: protocol frames only; each future frame's own labels in its own ego frame, no mask
        if bool(M.forecast_eval_frames(fi, len(scene))):
            for h, k in zip(M.FORECAST_HORIZONS_S, self.fc_steps):
                fut_lab = self.labels.get(scene.name, scene.sample_tokens[fi + k])
                fk = acc.forecast_frame(h)
                if fk > len(out.forecast_points[i]) or fut_lab is None:
                    continue  # the model forecasts fewer frames than this horizon, or no labels
                acc.add_forecast(
                    h,
                    out.forecast_points[i][fk - 1],
                    out.forecast_classes[i][fk - 1],
                    fut_lab.semantics,
                    out.forecast_scores[i][fk - 1],
                )
                # the static-world baseline on exactly these frames: the current prediction moved by GT ego motion
                acc.add_static_forecast(h, pred_grid, scene.ego2global[fi], scene.ego2global[fi + k], fut_lab.semantics)
        # 3. planning: samples with a complete GT future; collision GT = future boxes from the devkit
        gt_traj = batch.gt_trajectory[i].float().cpu().numpy()
        gt_mask = batch.gt_trajectory_mask[i].cpu().numpy().astype(bool)
        boxes, box_mask = np.zeros((cfg.plan_horizon, 0, 5)), np.zeros((cfg.plan_horizon, 0), dtype=bool)
        planned = out.plan is not None
        if planned and (gt_mask.all() or g in self.qual_idx):
            step = self.dataset.plan_step  # key frames per waypoint
            fut_tokens = [
                scene.sample_tokens[fi + s * step] if fi + s * step < len(scene) else None
                for s in range(1, cfg.plan_horizon + 1)
            ]
            boxes, box_mask = future_agent_boxes(self.nusc, fut_tokens, scene.ego2global[fi])
        if planned:
            self._add_plan(out, i, batch, gt_traj, gt_mask, boxes, box_mask, token)
        reasoning = out.reasoning[i] if out.reasoning is not None else None
        if reasoning is not None:
            acc.add_reasoning(token, reasoning)
        if g in self.qual_idx:
            no_plan = np.zeros((0, 2), np.float32)
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
                    plan=out.plan[i].float().cpu().numpy() if planned else no_plan,
                    anchors=out.anchor_trajectories[i].float().cpu().numpy()
                    if planned
                    else np.zeros((0, cfg.plan_horizon, 2), np.float32),
                    anchor_scores=out.anchor_scores[i].float().cpu().numpy() if planned else np.zeros(0),
                    chosen_anchor=int(out.chosen_anchor[i]) if planned else -1,
                    agent_boxes=boxes,
                    agent_mask=box_mask,
                    reasoning=reasoning,
                )
            )
        return self._questions(token)

    def _add_plan(self, out, i, batch, gt_traj, gt_mask, boxes, box_mask, token) -> None:
        self.acc.add_plan(
            out.plan[i],
            gt_traj,
            gt_mask,
            batch.ego_state[i, :2],  # (vx, vy), ego frame
            boxes,
            box_mask,
            command=int(batch.command[i]),
            planned_command=self._anchor_command(int(out.chosen_anchor[i])),
            scenario=self._scenario(token),
        )

    def _anchor_command(self, chosen: int) -> int:
        """Command of the chosen anchor: the planner's ``anchor_commands``, else command-major blocks."""
        if self.anchor_commands is not None and 0 <= chosen < len(self.anchor_commands):
            return int(self.anchor_commands[chosen])
        return chosen // self.cfg.anchors_per_command

    def _scenario(self, token: str) -> Optional[dict]:
        """The frame's scenario record (synthetic worlds), None when the root has none."""
        path = self.scenario_dir / f"{token}.json"
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(record, dict) or "signal_ahead" not in record:
            raise ValueError(f"{path}: expected a scenario record with 'signal_ahead'")
        return record

    def _questions(self, token: str) -> list[_Question]:
        """4. this frame's questions (asked by the caller on one cached scene prefix)."""
        questions: list[_Question] = []
        omni = self.dataset.omnidrive if self.opt.text and self.dataset.omnidrive.available else None
        if (omni is not None or self.nqa) and (
            self.opt.max_text_samples is None or self.n_text_frames < self.opt.max_text_samples
        ):
            self.n_text_frames += 1
            cap = self.opt.max_questions_per_sample  # per source, so both metrics get answers
            for pair in (omni.pairs(token, UNDERSTANDING_KINDS) if omni is not None else [])[:cap]:
                questions.append(_Question(pair.question, reference=pair.answer, kind=pair.source))
            for rec in self.nqa.get(token, [])[:cap]:
                questions.append(_Question(rec.question, qa=rec))
        return questions

    def answers(self, questions: list[_Question], answers: list[str]) -> None:
        """Record the generated answers of one frame against their references."""
        for q, pred in zip(questions, answers):
            if q.qa is not None:
                self.acc.add_qa(pred, q.qa.answer, q.qa.template_type, q.qa.num_hop, question=q.text)
            elif q.reference is not None:
                self.acc.add_understanding(pred, q.reference, question=q.text, kind=q.kind)


def dataset_splits(layout: "DatasetLayout") -> list[str]:
    """The splits of a dataset root, in order: the keys of ``splits.json`` (synthetic worlds, custom roots), else
    nuScenes' official train / val splits of the version (``mini_train`` / ``mini_val`` for v1.0-mini)."""
    if layout.splits_file.is_file():
        return [str(k) for k in json.loads(layout.splits_file.read_text())]
    official = {"v1.0-trainval": ["train", "val"], "v1.0-mini": ["mini_train", "mini_val"], "v1.0-test": ["test"]}
    if layout.version not in official:
        raise ValueError(
            f"--split {ALL_SPLITS}: no splits.json under {layout.root} and no official splits of "
            f"{layout.version!r}; name one split"
        )
    return official[layout.version]


def evaluate(model: "SparseOccVLA", data: str | Path, options: Optional[EvalOptions] = None) -> EvalReport:
    """Run the paper's evaluation of ``model`` on a dataset split (or on every split, ``split="all"``).

    Args:
        model: the model (moved to ``options.device`` here).
        data: dataset root (nuScenes dataroot or a synthetic world).
        options: :class:`EvalOptions`.

    Returns:
        :class:`EvalReport`; ``write_report`` writes it.  Numbers the learning check compares (metrics.json
        keys): ``occupancy.no_mask.miou`` vs ``baselines.occupancy_most_frequent_class.no_mask.miou``,
        ``planning.l2.stp3.avg`` vs ``baselines.planning_mean_trajectory.l2.stp3.avg``, ``nuscenes_qa.overall`` vs
        ``baselines.qa_majority_answer.accuracy.overall``.

    Raises:
        FileNotFoundError / ValueError: bad dataset root, version or split (from the data loader).
    """
    from torch.utils.data import DataLoader, Subset

    from ..data.dataset import DatasetOptions, DrivingDataset, make_collate
    from ..data.frames import load_nuscenes
    from ..data.layout import qa_split_name, resolve_layout, split_scene_names

    opt = options or EvalOptions()
    cfg = model.cfg
    device = _resolve_device(opt.device)
    model = model.to(device).eval()
    seconds: dict[str, float] = {"setup": 0.0, "predict": 0.0, "questions": 0.0, "scoring": 0.0, "metrics": 0.0}
    t0 = time.perf_counter()

    # Setup: the split(s) (occupancy GT is read here, as dense labels with masks, not by the loader), the devkit
    # tables for the collision GT, the training statistics of the baselines (of --train-data when given).
    ds_options = DatasetOptions(version=opt.version, load_occupancy=False, qa_choice="first")
    layout = resolve_layout(data, opt.version)
    nusc = load_nuscenes(layout)
    datasets: list[DrivingDataset] = []
    if opt.split == ALL_SPLITS:
        seen: set[str] = set()
        for split in dataset_splits(layout):
            names = [n for n in split_scene_names(layout, split) if n not in seen]
            seen.update(names)
            if not names:
                continue
            ds = DrivingDataset(
                data, split, cfg, tokenizer=model.tokenizer, options=ds_options, scenes=names, nusc=nusc
            )
            if len(ds):
                datasets.append(ds)
    else:
        ds = DrivingDataset(data, opt.split, cfg, tokenizer=model.tokenizer, options=ds_options, nusc=nusc)
        datasets = [ds] if len(ds) else []
    if not datasets:
        raise ValueError(f"split {opt.split!r} of {data} has no key frames")
    n_total = sum(len(ds) for ds in datasets)
    n_eval = n_total if opt.max_samples is None else min(opt.max_samples, n_total)
    stats: Optional[TrainingStatistics] = None
    notes: list[str] = []
    if opt.baselines:
        if opt.train_data is not None:
            train_layout = resolve_layout(opt.train_data)
            train_nusc = load_nuscenes(train_layout)
        else:
            train_layout, train_nusc = layout, nusc
        try:
            stats = training_statistics(
                train_layout,
                train_nusc,
                opt.train_split,
                cfg.plan_horizon,
                opt.baseline_train_frames,
                datasets[0].plan_step,
            )
        except ValueError as exc:  # e.g. no training split in this dataset
            notes.append(f"no training statistics: {exc}")
        if opt.train_data is not None:
            notes.append(f"baselines' training statistics from {train_layout.root} (split {opt.train_split!r})")
    accumulator = MetricAccumulator(cfg, stats)
    # evaluated frames and qualitative frames of each split (the first n_eval frames over the splits in order)
    plan: list[tuple["DrivingDataset", int, int]] = []
    remaining, left_qual = n_eval, opt.num_qualitative
    for d, ds in enumerate(datasets):
        n_d = min(remaining, len(ds))
        remaining -= n_d
        share = left_qual if d == len(datasets) - 1 else round(opt.num_qualitative * n_d / max(n_eval, 1))
        share = min(share, left_qual)
        left_qual -= share
        if n_d:
            plan.append((ds, n_d, share))
    generator = torch.Generator(device=device).manual_seed(opt.seed)
    thr = {} if opt.score_threshold is None else {"score_threshold": opt.score_threshold}
    seconds["setup"] = time.perf_counter() - t0

    scorers: list[_SplitScorer] = []
    missing = 0
    for dataset, n_d, n_qual in plan:
        t = time.perf_counter()
        nqa_path = layout.nuscenes_qa_root / f"NuScenes_{qa_split_name(dataset.split)}_questions.json"
        nqa = load_nuscenes_qa_records(nqa_path) if (opt.qa and nqa_path.is_file()) else {}
        qual_idx = _qualitative_indices(dataset, n_d, n_qual, cfg.plan_horizon)
        scorer = _SplitScorer(model, dataset, nusc, opt, accumulator, qual_idx, nqa)
        scorers.append(scorer)
        loader = DataLoader(
            Subset(dataset, range(n_d)),
            batch_size=opt.batch_size,
            shuffle=False,
            num_workers=opt.num_workers,
            collate_fn=make_collate(model.tokenizer),
        )
        seconds["setup"] += time.perf_counter() - t
        index = 0
        for batch in _progress(loader, n_d, opt.batch_size):
            t = time.perf_counter()
            batch = batch.to(device)
            out = model.predict(batch, generate_text=opt.plan, generator=generator, plan=opt.plan, **thr)
            seconds["predict"] += time.perf_counter() - t
            t = time.perf_counter()
            asked = [scorer.frame(index + i, i, batch, out) for i in range(batch.batch_size)]
            seconds["scoring"] += time.perf_counter() - t
            if any(asked):
                t = time.perf_counter()
                answers = answer_questions(model, batch, [[q.text for q in qs] for qs in asked], opt.max_new_tokens)
                for qs, ans in zip(asked, answers):
                    scorer.answers(qs, ans)
                seconds["questions"] += time.perf_counter() - t
            index += batch.batch_size
        missing += scorer.labels.missing

    t = time.perf_counter()
    results = accumulator.finalize(
        opt.split, n_eval, n_total, meteor=opt.meteor, missing_label_files=missing, notes=notes
    )
    seconds["metrics"] = time.perf_counter() - t
    results.seconds = {**seconds, "total": time.perf_counter() - t0}
    if opt.split == ALL_SPLITS:
        results.extra["splits"] = {ds.split: n_d for ds, n_d, _ in plan}
    if opt.train_data is not None:
        results.extra["train_data"] = str(opt.train_data)
    return EvalReport(metrics=results, qualitative=[q for s in scorers for q in s.qualitative])


def _qualitative_indices(dataset: "DrivingDataset", n_eval: int, k: int, horizon: int) -> set[int]:
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


def _progress(loader: "DataLoader", total: int, batch_size: int) -> Iterable[DrivingBatch]:
    """tqdm progress over batches when tqdm is installed (it is a dependency), plain iteration otherwise."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is in install_requires
        return loader
    return tqdm(loader, total=math.ceil(total / batch_size), desc="eval", unit="batch", leave=False)


def evaluate_checkpoint(
    ckpt: str | Path, data: str | Path, out: str | Path, options: Optional[EvalOptions] = None
) -> EvalResults:
    """Load a checkpoint, evaluate it and write the report (``sparseoccvla eval``); returns the metrics."""
    from ..model import SparseOccVLA

    model = SparseOccVLA.from_pretrained(ckpt)
    report = evaluate(model, data, options)
    report.metrics.extra.update(checkpoint=str(ckpt), data=str(data))
    write_report(report.metrics, out, report.qualitative, model.cfg.point_cloud_range)
    return report.metrics
