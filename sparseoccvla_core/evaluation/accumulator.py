"""Per-frame predictions + ground truth -> the paper's metrics (SparseOccVLA sec. 4.1), with no model or data loader.

:class:`MetricAccumulator` is the one place where ``sparseoccvla eval`` (``evaluation/loop.py``) and any other
scorer (e.g. the bag evaluation) turn predictions into :class:`~sparseoccvla_core.evaluation.results.EvalResults`,
so every caller gets the same protocols and the same ``metrics.json``::

    acc = MetricAccumulator(cfg, baseline_stats)          # cfg: the model's SparseOccVLAConfig
    for each frame:
        acc.add_occupancy(points, classes, gt_semantics, camera_mask, scores)
        acc.add_forecast(2.0, points_2s, classes_2s, gt_semantics_2s, scores_2s)   # protocol frames only
        acc.add_plan(plan, gt_trajectory, gt_mask, ego_velocity, agent_boxes, agent_mask)
        acc.add_understanding(answer, reference); acc.add_qa(answer, gt_answer, template_type, num_hop)
    results = acc.finalize(split="val", num_samples=n)
    write_report(results, out_dir)                        # sparseoccvla_core/evaluation/report.py

The metric definitions themselves are in :mod:`sparseoccvla_core.metrics`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from .. import metrics as M
from ..batch import OCC3D_CLASSES
from ..occ_grid import points_to_labels
from .baselines import (
    BaselineResults,
    ClassBaseline,
    MajorityAnswerBaseline,
    MeanTrajectoryBaseline,
    TrainingStatistics,
    TrainingSummary,
)
from .ground_truth import pad_agents
from .results import (
    CurrentOccupancy,
    EvalResults,
    ForecastResult,
    PlanningResult,
    ReasoningExample,
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
        self._plan_pred: list[np.ndarray] = []  # [T, 2] each
        self._plan_gt: list[np.ndarray] = []  # [T, 2]
        self._plan_mask: list[np.ndarray] = []  # [T] bool
        self._plan_velocity: list[np.ndarray] = []  # [2] (vx, vy)
        self._plan_boxes: list[np.ndarray] = []  # [T, A_i, 5]
        self._plan_box_mask: list[np.ndarray] = []  # [T, A_i]
        self._text: list[TextExample] = []
        self._qa_pred: list[str] = []
        self._qa_answer: list[str] = []
        self._qa_type: list[str] = []
        self._qa_hop: list[int] = []
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

    # ------------------------------------------------------------------ planning
    def add_plan(
        self,
        plan: ArrayLike,
        gt_trajectory: ArrayLike,
        gt_mask: ArrayLike,
        ego_velocity: ArrayLike,
        agent_boxes: Optional[ArrayLike] = None,
        agent_mask: Optional[ArrayLike] = None,
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
    def add_understanding(self, prediction: str, reference: str) -> None:
        """One generated answer to an OmniDrive-nuScenes description / conversation question and its reference."""
        self._text.append(TextExample(str(prediction), str(reference)))

    def add_qa(self, prediction: str, answer: str, template_type: str = "unknown", num_hop: int = 0) -> None:
        """One nuScenes-QA answer and its GT (template type and hop count for the per-type accuracies)."""
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
            meteor: compute METEOR when a ``java`` runtime exists (the report says when it does not).
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
            planning=PlanningResult(num_samples=len(self._plan_pred), scores=plan_scores),
            understanding=self._understanding(meteor),
            nuscenes_qa=self._qa_scores(self._qa_pred) if self._qa_pred else None,
            reasoning_examples=list(self._reasoning),
            baselines=self._baselines(notes),
        )

    def _understanding(self, meteor: bool) -> Optional[UnderstandingResult]:
        if not self._text:
            return None
        use_meteor = meteor and M.java_available()
        d = M.caption_metrics([e.prediction for e in self._text], [e.reference for e in self._text], meteor=use_meteor)
        if meteor and not use_meteor:
            d["meteor_backend"] = "not computed: no java runtime on PATH"
        result = UnderstandingResult.from_dict(d)
        result.examples = list(self._text[:NUM_EXAMPLES])
        return result

    def _qa_scores(self, predictions: Sequence[str]) -> QAResult:
        """Accuracy of one answer per recorded nuScenes-QA question (the model's, or a baseline's)."""
        return QAResult.from_dict(M.qa_accuracy(predictions, self._qa_answer, self._qa_type, self._qa_hop))

    def _baselines(self, notes: Sequence[str]) -> BaselineResults:
        """The trivial baselines scored exactly like the model (same frames, same protocols)."""
        out = BaselineResults(notes=list(notes))
        stats = self.baseline_stats
        if stats is None:
            return out
        out.training_statistics = TrainingSummary(
            stats.split, stats.num_trajectories, stats.num_occ_frames, stats.num_qa
        )
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
        return out
