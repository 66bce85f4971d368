"""Per-frame predictions + ground truth -> the paper's metrics (SparseOccVLA sec. 4.1), with no model or data loader.

:class:`MetricAccumulator` is the one place where ``sparseoccvla eval`` (``evaluation/loop.py``) and any other
scorer (e.g. the bag evaluation) turn predictions into :class:`~sparseoccvla_core.evaluation.results.EvalResults`,
so every caller gets the same protocols and the same ``metrics.json``::

    acc = MetricAccumulator(cfg, baseline_stats)          # cfg: the model's SparseOccVLAConfig
    for each frame:
        acc.add_occupancy(points, classes, gt_semantics, camera_mask, scores)
        acc.add_forecast(2.0, points_2s, classes_2s, gt_semantics_2s, scores_2s)   # protocol frames only
        acc.add_static_forecast(2.0, current_grid, ego2global_now, ego2global_2s, gt_semantics_2s)  # same frames
        acc.add_plan(plan, gt_trajectory, gt_mask, ego_velocity, agent_boxes, agent_mask,
                     command=gt_command, planned_command=chosen_anchor_command, scenario=scenario_record)
        acc.add_understanding(answer, reference, question, kind); acc.add_qa(answer, gt_answer, template_type, num_hop)
    results = acc.finalize(split="val", num_samples=n)
    write_report(results, out_dir)                        # sparseoccvla_core/evaluation/report.py

The metric definitions themselves are in :mod:`sparseoccvla_core.metrics`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from .. import metrics as M
from ..batch import COMMANDS, FREE_CLASS, OCC3D_CLASSES
from ..occ_grid import points_to_labels
from .baselines import (
    BaselineResults,
    ClassBaseline,
    MajorityAnswerBaseline,
    MeanTrajectoryBaseline,
    QuestionPriorBaseline,
    RetrievalBaseline,
    TrainingStatistics,
    TrainingSummary,
)
from .ground_truth import pad_agents
from .results import (
    STOP_DISPLACEMENT_M,
    CommandMatchResult,
    CurrentOccupancy,
    EvalResults,
    ForecastResult,
    PlanningResult,
    ReasoningExample,
    RedLightResult,
    TextExample,
    UnderstandingResult,
)
from .scores import HorizonScores, OccupancyScores, PlanScores, QAResult

if TYPE_CHECKING:
    from ..config import SparseOccVLAConfig

ArrayLike = M.ArrayLike  # numpy array or torch tensor (any device)

#: Generated reasonings / understanding answers kept as examples in metrics.json.
NUM_EXAMPLES: int = 8


def _np(x: ArrayLike, dtype: Optional[type] = None) -> np.ndarray:
    """numpy copy of an array or tensor (torch tensors detached, moved to the CPU, cast to float32 if half)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()
    return np.asarray(x) if dtype is None else np.asarray(x).astype(dtype)


def move_labels(
    labels: ArrayLike,
    ego2global_from: ArrayLike,
    ego2global_to: ArrayLike,
    pc_range: Sequence[float],
    voxel_size: float,
    free_class: int = FREE_CLASS,
) -> np.ndarray:
    """A dense label grid moved rigidly from one ego frame into another (the static-world forecast).

    Every occupied voxel centre p (``from`` ego frame) goes to ``inverse(ego2global_to) @ ego2global_from @ p``
    in float64 and is re-voxelised on the same grid; voxels that leave the grid are dropped, voxels that fall
    into one cell keep the last one written (grid order), everything else is free.

    Args:
        labels: [X, Y, Z] Occ3D labels in the ``from`` ego frame (``free_class`` = free).
        ego2global_from: [4, 4] ego pose of the frame the labels are in.
        ego2global_to: [4, 4] ego pose of the target frame.
        pc_range: (x_min, y_min, z_min, x_max, y_max, z_max) of the grid, m (both frames).
        voxel_size: voxel edge, m.
        free_class: free label.

    Returns:
        [X, Y, Z] uint8 labels in the ``to`` ego frame.
    """
    grid = _np(labels)
    a, b = _np(ego2global_from, np.float64), _np(ego2global_to, np.float64)
    if a.shape != (4, 4) or b.shape != (4, 4):
        raise ValueError(f"ego poses must be [4, 4], got {a.shape} and {b.shape}")
    rel = np.linalg.solve(b, a)  # inverse(to) @ from, float64
    ijk = np.argwhere(grid != free_class)  # [M, 3]
    cls = grid[tuple(ijk.T)]
    # voxel centres in float64 (occ_grid.index_to_points rounds them to float32)
    centres = np.asarray(pc_range[:3], dtype=np.float64) + (ijk.astype(np.float64) + 0.5) * voxel_size
    moved = centres @ rel[:3, :3].T + rel[:3, 3]
    return points_to_labels(moved, cls, pc_range, voxel_size, free_class=free_class)


class MetricAccumulator:
    """Accumulates one split's (or recording's) predictions frame by frame and computes the metrics.

    Args:
        cfg: the model config: the Occ3D grid (``point_cloud_range``, ``voxel_size``), the forecast and plan
            timing (``forecast_dt``, ``plan_dt``, ``plan_horizon``) and the token counts reported in the tables.
        baseline_stats: training statistics of the trivial baselines (None = no baselines, only ``notes``).

    Attributes:
        occupancy_camera, occupancy_all: current-frame Occ3D mIoU with / without the camera mask.
        forecast: horizon key ("1s", ...) -> forecasting mIoU (no camera mask).
    """

    def __init__(self, cfg: "SparseOccVLAConfig", baseline_stats: Optional[TrainingStatistics] = None) -> None:
        self.cfg = cfg
        self.grid_shape = tuple(cfg.grid_shape)
        self.baseline_stats = baseline_stats
        self.baseline_class = baseline_stats.most_frequent_class() if baseline_stats is not None else None
        self.occupancy_camera, self.occupancy_all = M.OccupancyMIoU(use_camera_mask=True), M.OccupancyMIoU()
        self._base_camera, self._base_all = M.OccupancyMIoU(use_camera_mask=True), M.OccupancyMIoU()
        self.forecast = {M.horizon_key(h): M.OccupancyMIoU() for h in M.FORECAST_HORIZONS_S}
        self.static_forecast = {M.horizon_key(h): M.OccupancyMIoU() for h in M.FORECAST_HORIZONS_S}
        self._commands: list[tuple[int, int]] = []  # (GT command, chosen anchor's command) per counted plan
        self._red: list[tuple[float, float]] = []  # (GT, plan) 3-s displacement, m, of counted plans at red
        self._num_scenario = 0  # counted plans with a scenario record
        self._plan_pred: list[np.ndarray] = []  # [T, 2] each
        self._plan_gt: list[np.ndarray] = []  # [T, 2]
        self._plan_mask: list[np.ndarray] = []  # [T] bool
        self._plan_velocity: list[np.ndarray] = []  # [2] (vx, vy)
        self._plan_boxes: list[np.ndarray] = []  # [T, A_i, 5]
        self._plan_box_mask: list[np.ndarray] = []  # [T, A_i]
        self._text: list[TextExample] = []
        self._text_question: list[Optional[str]] = []
        self._text_kind: list[Optional[str]] = []
        self._qa_pred: list[str] = []
        self._qa_answer: list[str] = []
        self._qa_type: list[str] = []
        self._qa_hop: list[int] = []
        self._qa_question: list[Optional[str]] = []
        self._reasoning: list[ReasoningExample] = []

    # ------------------------------------------------------------------ occupancy
    def prediction_grid(self, points: ArrayLike, classes: ArrayLike, scores: Optional[ArrayLike] = None) -> np.ndarray:
        """Predicted sparse points -> dense [X, Y, Z] uint8 labels on the Occ3D grid (best score per voxel).

        Args:
            points: [M, 3] voxel centres, ego frame, m.
            classes: [M] Occ3D classes.
            scores: [M] scores (None: the last point of a voxel wins).
        """
        return points_to_labels(
            _np(points, np.float32),
            _np(classes),
            self.cfg.point_cloud_range,
            self.cfg.voxel_size,
            scores=None if scores is None else _np(scores, np.float32),
        )

    def _check_gt(self, gt_semantics: np.ndarray) -> None:
        if gt_semantics.shape != self.grid_shape:
            raise ValueError(f"labels are {gt_semantics.shape} but the model's grid is {self.grid_shape}")

    def add_occupancy(
        self,
        pred_points: ArrayLike,
        pred_classes: ArrayLike,
        gt_semantics: ArrayLike,
        camera_mask: Optional[ArrayLike] = None,
        pred_scores: Optional[ArrayLike] = None,
    ) -> np.ndarray:
        """Score one frame's current occupancy (and the most-frequent-class baseline on its GT geometry).

        Args:
            pred_points: [M, 3] predicted occupied voxel centres, current ego frame, m.
            pred_classes: [M] Occ3D classes.
            gt_semantics: [X, Y, Z] Occ3D labels (17 = free) on the config's grid.
            camera_mask: [X, Y, Z] camera visibility; None = the frame enters only the no-mask mIoU.
            pred_scores: [M] scores (several points in one voxel: the best one counts).

        Returns:
            [X, Y, Z] the dense predicted labels that were scored.
        """
        gt = _np(gt_semantics)
        self._check_gt(gt)
        pred = self.prediction_grid(pred_points, pred_classes, pred_scores)
        mask = None if camera_mask is None else _np(camera_mask)
        if mask is not None:
            self.occupancy_camera.update(pred, gt, mask)
        self.occupancy_all.update(pred, gt)
        if self.baseline_class is not None:
            base = M.single_class_prediction(gt, self.baseline_class)
            if mask is not None:
                self._base_camera.update(base, gt, mask)
            self._base_all.update(base, gt)
        return pred

    def forecast_frame(self, horizon_s: float) -> int:
        """1-based index of the model's forecast frame at ``horizon_s`` (its frames are ``cfg.forecast_dt`` apart)."""
        return int(round(horizon_s / self.cfg.forecast_dt))

    def add_forecast(
        self,
        horizon_s: float,
        pred_points: ArrayLike,
        pred_classes: ArrayLike,
        gt_semantics: ArrayLike,
        pred_scores: Optional[ArrayLike] = None,
    ) -> None:
        """Score one forecast frame against that future frame's own labels in its own ego frame (no camera mask).

        The caller chooses which current frames count (``metrics.forecast_eval_frames``: index in
        [5, scene_len - 8]).

        Args:
            horizon_s: one of ``metrics.FORECAST_HORIZONS_S`` (1, 2, 3 s).
            pred_points: [M, 3] forecast occupied voxel centres in the future frame's ego frame, m.
            pred_classes: [M] classes.
            gt_semantics: [X, Y, Z] that future key frame's Occ3D labels.
            pred_scores: [M] scores.
        """
        key = M.horizon_key(horizon_s)
        if key not in self.forecast:
            raise ValueError(f"horizon {horizon_s} s is not one of {M.FORECAST_HORIZONS_S}")
        gt = _np(gt_semantics)
        self._check_gt(gt)
        self.forecast[key].update(self.prediction_grid(pred_points, pred_classes, pred_scores), gt)

    def add_static_forecast(
        self,
        horizon_s: float,
        current_labels: ArrayLike,
        ego2global_current: ArrayLike,
        ego2global_future: ArrayLike,
        gt_semantics: ArrayLike,
    ) -> np.ndarray:
        """Score the static-world baseline at one horizon: the current prediction moved by the GT ego motion.

        Call it on exactly the frames and labels given to :meth:`add_forecast` (same protocol).

        Args:
            horizon_s: one of ``metrics.FORECAST_HORIZONS_S``.
            current_labels: [X, Y, Z] the model's current-frame prediction as scored (``add_occupancy`` /
                ``prediction_grid`` return it).
            ego2global_current: [4, 4] GT ego pose of the current key frame (float64).
            ego2global_future: [4, 4] GT ego pose of the future key frame.
            gt_semantics: [X, Y, Z] that future key frame's Occ3D labels.

        Returns:
            [X, Y, Z] the moved labels that were scored.
        """
        key = M.horizon_key(horizon_s)
        if key not in self.static_forecast:
            raise ValueError(f"horizon {horizon_s} s is not one of {M.FORECAST_HORIZONS_S}")
        gt, cur = _np(gt_semantics), _np(current_labels)
        self._check_gt(gt)
        self._check_gt(cur)
        moved = move_labels(cur, ego2global_current, ego2global_future, self.cfg.point_cloud_range, self.cfg.voxel_size)
        self.static_forecast[key].update(moved, gt)
        return moved

    # ------------------------------------------------------------------ planning
    def add_plan(
        self,
        plan: ArrayLike,
        gt_trajectory: ArrayLike,
        gt_mask: ArrayLike,
        ego_velocity: ArrayLike,
        agent_boxes: Optional[ArrayLike] = None,
        agent_mask: Optional[ArrayLike] = None,
        command: Optional[int] = None,
        planned_command: Optional[int] = None,
        scenario: Optional[dict] = None,
    ) -> bool:
        """Record one plan; only samples whose T GT waypoints all exist count (VAD ``fut_valid_flag``).

        Args:
            plan: [T, 2] planned (x, y) waypoints, current ego frame, m.
            gt_trajectory: [T, 2] GT waypoints.
            gt_mask: [T] bool, True where the GT waypoint exists.
            ego_velocity: [2] (vx, vy) m/s in the current ego frame (the constant-velocity baseline).
            agent_boxes: [T, A, 5] (cx, cy, length, width, yaw) GT obstacle boxes per future step, current ego
                frame (``future_agent_boxes``); None = no obstacle known (no step counts as a collision).
            agent_mask: [T, A] bool, True for real boxes (required with ``agent_boxes``).
            command: GT driving command (0 left / 1 straight / 2 right, ``batch.COMMANDS``); with
                ``planned_command`` it enters the command match.
            planned_command: command of the chosen anchor (the planner's ``anchor_commands[chosen_anchor]``).
            scenario: the frame's scenario record (synthetic worlds, ``scenario/<split>/<token>.json``:
                ``signal_ahead`` ...); None = unknown (the red-light metric then ignores the frame).

        Returns:
            Whether the sample was counted.
        """
        pred, gt = _np(plan, np.float64), _np(gt_trajectory, np.float64)
        mask = _np(gt_mask).astype(bool)
        t = self.cfg.plan_horizon
        if pred.shape != (t, 2) or gt.shape != (t, 2) or mask.shape != (t,):
            raise ValueError(
                f"plan and gt_trajectory must be [{t}, 2] and gt_mask [{t}], got {pred.shape}, {gt.shape}, {mask.shape}"
            )
        if not mask.all():
            return False
        if agent_boxes is None:
            boxes, box_mask = np.zeros((t, 0, 5)), np.zeros((t, 0), dtype=bool)
        elif agent_mask is None:
            raise ValueError("agent_boxes needs agent_mask")
        else:
            boxes, box_mask = _np(agent_boxes, np.float64), _np(agent_mask).astype(bool)
            if boxes.ndim != 3 or boxes.shape[0] != t or boxes.shape[2] != 5 or box_mask.shape != boxes.shape[:2]:
                raise ValueError(
                    f"agent_boxes must be [{t}, A, 5] and agent_mask [{t}, A], got {boxes.shape}, {box_mask.shape}"
                )
        self._plan_pred.append(pred)
        self._plan_gt.append(gt)
        self._plan_mask.append(mask)
        self._plan_velocity.append(_np(ego_velocity, np.float64).reshape(2))
        self._plan_boxes.append(boxes)
        self._plan_box_mask.append(box_mask)
        if command is not None and planned_command is not None:
            cmds = (int(command), int(planned_command))
            if not all(0 <= c < len(COMMANDS) for c in cmds):
                raise ValueError(f"commands must be in [0, {len(COMMANDS)}), got {cmds}")
            self._commands.append(cmds)
        if scenario is not None:
            self._num_scenario += 1
            if scenario.get("signal_ahead") == "red":
                self._red.append((float(np.linalg.norm(gt[-1])), float(np.linalg.norm(pred[-1]))))
        return True

    def plan_scores(self, trajectories: ArrayLike) -> PlanScores:
        """L2 and collision of [N, T, 2] trajectories (one per counted sample, in order) under both conventions."""
        pred = _np(trajectories, np.float64)
        gt, mask = np.stack(self._plan_gt), np.stack(self._plan_mask)
        boxes, box_mask = pad_agents(self._plan_boxes, self._plan_box_mask)
        dt = self.cfg.plan_dt
        l2, collision = {}, {}
        for c in M.PLAN_CONVENTIONS:
            l2[c] = HorizonScores.from_dict(M.l2_errors(pred, gt, mask, convention=c, dt=dt))
            collision[c] = HorizonScores.from_dict(
                M.collision_rate(pred, gt, boxes, box_mask, mask, convention=c, dt=dt)
            )
        return PlanScores(l2=l2, collision=collision)

    # ------------------------------------------------------------------ language
    def add_understanding(
        self, prediction: str, reference: str, question: Optional[str] = None, kind: Optional[str] = None
    ) -> None:
        """One generated answer to an OmniDrive-nuScenes description / conversation question and its reference.

        Args:
            prediction: the generated answer.
            reference: the reference answer.
            question: the question text (the retrieval baseline answers it; None = no baseline for this run).
            kind: "desc" / "conv" (per-kind metrics; None = not broken down).
        """
        self._text.append(TextExample(str(prediction), str(reference)))
        self._text_question.append(None if question is None else str(question))
        self._text_kind.append(None if kind is None else str(kind))

    def add_qa(
        self,
        prediction: str,
        answer: str,
        template_type: str = "unknown",
        num_hop: int = 0,
        question: Optional[str] = None,
    ) -> None:
        """One nuScenes-QA answer and its GT (template type and hop count for the per-type accuracies; the question
        text for the per-question baseline, which is computed only when every question has one)."""
        self._qa_question.append(None if question is None else str(question))
        self._qa_pred.append(str(prediction))
        self._qa_answer.append(str(answer))
        self._qa_type.append(str(template_type))
        self._qa_hop.append(int(num_hop))

    def add_reasoning(self, sample_token: str, reasoning: str) -> None:
        """A generated driving reasoning (the first :data:`NUM_EXAMPLES` are kept as examples)."""
        if len(self._reasoning) < NUM_EXAMPLES:
            self._reasoning.append(ReasoningExample(sample_token, reasoning))

    # ------------------------------------------------------------------ results
    def finalize(
        self,
        split: str,
        num_samples: int,
        num_samples_in_split: Optional[int] = None,
        meteor: bool = True,
        missing_label_files: int = 0,
        notes: Sequence[str] = (),
    ) -> EvalResults:
        """Compute every metric from what was added.

        Args:
            split: split (or recording) name reported.
            num_samples: key frames evaluated.
            num_samples_in_split: key frames available (None = ``num_samples``).
            meteor: compute METEOR (NLTK's when WordNet is installed, Java 1.5's beside it when ``java`` is on
                PATH; the report says which ran).
            missing_label_files: label files that were looked up but missing (reported).
            notes: remarks printed under the tables (e.g. why a baseline is missing).
        """
        fc = {key: OccupancyScores.of(acc) for key, acc in self.forecast.items()}
        mious = [s.miou for s in fc.values()]
        ious = [s.geometry_iou for s in fc.values()]
        plan_scores = self.plan_scores(np.stack(self._plan_pred)) if self._plan_pred else None
        return EvalResults(
            split=split,
            num_samples=num_samples,
            num_samples_in_split=num_samples if num_samples_in_split is None else num_samples_in_split,
            num_queries=self.cfg.num_queries,
            num_global_queries=self.cfg.num_global_queries,
            occupancy=CurrentOccupancy(
                OccupancyScores.of(self.occupancy_camera), OccupancyScores.of(self.occupancy_all), missing_label_files
            ),
            forecasting=ForecastResult(
                horizons=fc,
                avg_miou=float(np.mean(mious)) if all(v is not None for v in mious) else None,
                avg_geometry_iou=float(np.mean(ious)) if all(v is not None for v in ious) else None,
                num_frames=self.forecast[M.horizon_key(M.FORECAST_HORIZONS_S[0])].num_frames,
            ),
            planning=PlanningResult(
                num_samples=len(self._plan_pred),
                scores=plan_scores,
                red_light=self._red_light(),
                command_match=self._command_match(),
            ),
            understanding=self._understanding(meteor),
            nuscenes_qa=self._qa_scores(self._qa_pred) if self._qa_pred else None,
            reasoning_examples=list(self._reasoning),
            baselines=self._baselines(notes, meteor),
        )

    def _red_light(self) -> Optional[RedLightResult]:
        """Red-light stopping over the counted plans that had a scenario record (None without any)."""
        if not self._num_scenario:
            return None
        at = [(g, p) for g, p in self._red if g < STOP_DISPLACEMENT_M]
        stopped = sum(p < STOP_DISPLACEMENT_M for _, p in at)
        return RedLightResult(
            num_scenario_frames=self._num_scenario,
            num_red=len(self._red),
            num_frames=len(at),
            num_stopped=int(stopped),
            stop_rate=100.0 * stopped / len(at) if at else None,
            mean_plan_displacement_m=float(np.mean([p for _, p in at])) if at else None,
        )

    def _command_match(self) -> Optional[CommandMatchResult]:
        """Chosen anchor's command vs GT command over the counted plans that had both (None without any)."""
        if not self._commands:
            return None
        c = len(COMMANDS)
        confusion = np.zeros((c, c), dtype=np.int64)
        for gt_cmd, plan_cmd in self._commands:
            confusion[gt_cmd, plan_cmd] += 1
        rows = confusion.sum(axis=1)
        per = {
            name: {
                "num_frames": int(rows[k]),
                "match_rate": 100.0 * float(confusion[k, k]) / float(rows[k]) if rows[k] else None,
            }
            for k, name in enumerate(COMMANDS)
        }
        total = int(confusion.sum())
        return CommandMatchResult(total, 100.0 * float(np.trace(confusion)) / total, per, confusion.tolist())

    def _caption_scores(self, predictions: Sequence[str], meteor: bool) -> UnderstandingResult:
        """Caption metrics of one answer per recorded understanding pair (the model's or a baseline's)."""
        refs = [e.reference for e in self._text]
        d = M.caption_metrics(list(predictions), refs, meteor=meteor)
        result = UnderstandingResult.from_dict(d)
        result.examples = [TextExample(p, r) for p, r in zip(predictions[:NUM_EXAMPLES], refs)]
        kinds = sorted({k for k in self._text_kind if k is not None})
        for kind in kinds:
            idx = [i for i, k in enumerate(self._text_kind) if k == kind]
            per = M.caption_metrics([predictions[i] for i in idx], [refs[i] for i in idx], meteor=False)
            keys = [f"BLEU-{n}" for n in range(1, 5)] + ["ROUGE_L", "CIDEr"]
            result.per_kind[kind] = {**{k: per[k] for k in keys}, "num_pairs": len(idx)}
        return result

    def _understanding(self, meteor: bool) -> Optional[UnderstandingResult]:
        if not self._text:
            return None
        return self._caption_scores([e.prediction for e in self._text], meteor)

    def _qa_scores(self, predictions: Sequence[str]) -> QAResult:
        """Accuracy of one answer per recorded nuScenes-QA question (the model's, or a baseline's)."""
        return QAResult.from_dict(M.qa_accuracy(predictions, self._qa_answer, self._qa_type, self._qa_hop))

    def _static_forecast(self) -> Optional[ForecastResult]:
        """The static-world forecasting baseline (None when no forecast frame was scored for it)."""
        first = self.static_forecast[M.horizon_key(M.FORECAST_HORIZONS_S[0])]
        if not any(acc.num_frames for acc in self.static_forecast.values()):
            return None
        fc = {key: OccupancyScores.of(acc) for key, acc in self.static_forecast.items()}
        mious, ious = [s.miou for s in fc.values()], [s.geometry_iou for s in fc.values()]
        return ForecastResult(
            horizons=fc,
            avg_miou=float(np.mean(mious)) if all(v is not None for v in mious) else None,
            avg_geometry_iou=float(np.mean(ious)) if all(v is not None for v in ious) else None,
            num_frames=first.num_frames,
        )

    def _retrieval(self, stats: TrainingStatistics, meteor: bool) -> Optional[RetrievalBaseline]:
        """The understanding retrieval baseline on the model's pairs (None without a table or questions)."""
        if stats.retrieval_answers is None or stats.retrieval_fallback is None or not self._text:
            return None
        if any(q is None for q in self._text_question):
            return None
        questions = [q for q in self._text_question if q is not None]
        answers = [stats.retrieval_answer(q) or stats.retrieval_fallback for q in questions]
        return RetrievalBaseline(
            scores=self._caption_scores(answers, meteor),
            num_fallback=sum(q not in stats.retrieval_answers for q in questions),
            num_training_questions=len(stats.retrieval_answers),
            fallback_answer=stats.retrieval_fallback,
        )

    def _baselines(self, notes: Sequence[str], meteor: bool = False) -> BaselineResults:
        """The trivial baselines scored exactly like the model (same frames, same protocols)."""
        out = BaselineResults(notes=list(notes))
        out.forecast_static_world = self._static_forecast()  # needs no training statistics
        stats = self.baseline_stats
        if stats is None:
            return out
        out.training_statistics = TrainingSummary(
            stats.split,
            stats.num_trajectories,
            stats.num_occ_frames,
            stats.num_qa,
            stats.num_understanding_pairs if stats.retrieval_answers is not None else None,
            stats.root,
        )
        out.understanding_retrieval = self._retrieval(stats, meteor)
        if self.baseline_class is not None and self._base_all.num_frames:
            out.occupancy_most_frequent_class = ClassBaseline(
                OCC3D_CLASSES[self.baseline_class],
                OccupancyScores.of(self._base_camera),
                OccupancyScores.of(self._base_all),
            )
        if self._plan_gt:
            n, t = len(self._plan_gt), self.cfg.plan_horizon
            if stats.mean_trajectory is not None:
                mean = np.broadcast_to(stats.mean_trajectory, (n, t, 2))
                out.planning_mean_trajectory = MeanTrajectoryBaseline(
                    self.plan_scores(mean), np.asarray(stats.mean_trajectory).tolist()
                )
            velocity = np.stack(self._plan_velocity)
            out.planning_constant_velocity = self.plan_scores(
                M.constant_velocity_trajectory(velocity, t, self.cfg.plan_dt)
            )
        if stats.majority_answer is not None and self._qa_answer:
            accuracy = self._qa_scores([stats.majority_answer] * len(self._qa_answer))
            out.qa_majority_answer = MajorityAnswerBaseline(stats.majority_answer, accuracy)
        questions = self._qa_question
        if stats.qa_question_answers is not None and questions and all(q is not None for q in questions):
            prior = [stats.qa_prior_answer(q) for q in questions]
            out.qa_question_prior = QuestionPriorBaseline(
                self._qa_scores(prior),
                sum(q not in stats.qa_question_answers for q in questions),
                len(stats.qa_question_answers),
            )
        return out
