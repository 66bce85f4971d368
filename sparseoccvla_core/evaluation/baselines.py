"""The trivial baselines of ``sparseoccvla eval``: their training-split statistics and their results.

The baselines (scored by :class:`~sparseoccvla_core.evaluation.accumulator.MetricAccumulator` on the same frames
and protocols as the model): occupancy "most frequent training class on the GT geometry", planning
"training-set mean trajectory" and "constant velocity" (needs no statistics), QA "majority training answer".
:func:`training_statistics` computes what they need from a training split: the mean of the full T-waypoint
training trajectories, the class histogram of the training Occ3D labels (at most ``max_occ_frames`` evenly
spaced frames) and the most frequent nuScenes-QA training answer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Optional, TypeVar

import numpy as np

from .. import metrics as M
from ..batch import FREE_CLASS, OCC3D_CLASSES
from .ground_truth import load_nuscenes_qa_records
from .scores import JsonDict, OccupancyScores, PlanScores, QAResult

if TYPE_CHECKING:
    from nuscenes.nuscenes import NuScenes

    from ..data.layout import DatasetLayout

_T = TypeVar("_T")


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
        split: the split the statistics come from.
    """

    mean_trajectory: Optional[np.ndarray]
    num_trajectories: int
    class_counts: Optional[np.ndarray]
    num_occ_frames: int
    majority_answer: Optional[str]
    num_qa: int
    split: str = "train"

    def most_frequent_class(self) -> Optional[int]:
        """The occupancy baseline's class: the semantic class with most training voxels (None without labels)."""
        if self.class_counts is None or self.class_counts[:FREE_CLASS].sum() <= 0:
            return None
        return M.most_frequent_class(self.class_counts)


def training_statistics(
    layout: "DatasetLayout", nusc: "NuScenes", split: str, horizon: int, max_occ_frames: int, plan_step: int = 1
) -> TrainingStatistics:
    """Compute :class:`TrainingStatistics` from a split of the dataset (ego poses, Occ3D labels, nuScenes-QA).

    Args:
        layout: the dataset layout (``sparseoccvla_core.data.layout``).
        nusc: a loaded ``NuScenes``.
        split: the training split name.
        horizon: waypoints per trajectory.
        max_occ_frames: at most this many label files (evenly spaced over the split) for the class histogram.
        plan_step: key frames between waypoints (1 = 0.5 s, nuScenes).

    Raises:
        ValueError: the split does not exist in the dataset.
    """
    from ..data.ego_motion import future_waypoints
    from ..data.frames import index_split
    from ..data.layout import qa_split_name
    from ..data.occ3d import load_occ3d_labels

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
        answers = [r.answer for recs in load_nuscenes_qa_records(qa_path).values() for r in recs]
        if answers:
            majority, n_qa = M.majority_answer(answers), len(answers)
    return TrainingStatistics(mean, len(trajs), counts, n_occ, majority, n_qa, split)


# ============================================================================ results (metrics.json "baselines")


@dataclass
class TrainingSummary:
    """What the baselines' training statistics were computed from."""

    split: str
    num_trajectories: int
    num_occ_frames: int
    num_qa: int


@dataclass
class ClassBaseline:
    """Occupancy baseline: the GT geometry with every occupied voxel labelled ``class_name`` (JSON key "class")."""

    class_name: str
    camera_mask: OccupancyScores
    no_mask: OccupancyScores

    def to_dict(self) -> JsonDict:
        return {"class": self.class_name, "camera_mask": self.camera_mask.to_dict(), "no_mask": self.no_mask.to_dict()}

    @classmethod
    def from_dict(cls, d: JsonDict) -> "ClassBaseline":
        return cls(d["class"], OccupancyScores.from_dict(d["camera_mask"]), OccupancyScores.from_dict(d["no_mask"]))


@dataclass
class MeanTrajectoryBaseline:
    """Planning baseline: the training-set mean trajectory ([T, 2] m) for every sample."""

    scores: PlanScores
    trajectory: list[list[float]]

    def to_dict(self) -> JsonDict:
        return {**self.scores.to_dict(), "trajectory": [list(p) for p in self.trajectory]}

    @classmethod
    def from_dict(cls, d: JsonDict) -> "MeanTrajectoryBaseline":
        return cls(PlanScores.from_dict(d), [list(p) for p in d["trajectory"]])


@dataclass
class MajorityAnswerBaseline:
    """nuScenes-QA baseline: the most frequent training answer for every question."""

    answer: str
    accuracy: QAResult

    def to_dict(self) -> JsonDict:
        return {"answer": self.answer, "accuracy": self.accuracy.to_dict()}

    @classmethod
    def from_dict(cls, d: JsonDict) -> "MajorityAnswerBaseline":
        return cls(d["answer"], QAResult.from_dict(d["accuracy"]))


@dataclass
class BaselineResults:
    """The trivial baselines, scored on the same frames with the same protocols as the model.

    A baseline that could not be computed (no training statistics, no labels, no QA) is None and absent from
    ``metrics.json``; ``notes`` say why when it is not obvious.
    """

    notes: list[str] = field(default_factory=list)
    training_statistics: Optional[TrainingSummary] = None
    occupancy_most_frequent_class: Optional[ClassBaseline] = None
    planning_mean_trajectory: Optional[MeanTrajectoryBaseline] = None
    planning_constant_velocity: Optional[PlanScores] = None
    qa_majority_answer: Optional[MajorityAnswerBaseline] = None

    def to_dict(self) -> JsonDict:
        out: JsonDict = {"notes": list(self.notes)}
        if self.training_statistics is not None:
            out["training_statistics"] = asdict(self.training_statistics)
        for name in (
            "occupancy_most_frequent_class",
            "planning_mean_trajectory",
            "planning_constant_velocity",
            "qa_majority_answer",
        ):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: JsonDict) -> "BaselineResults":
        def opt(key: str, parse: Callable[[JsonDict], _T]) -> Optional[_T]:
            return parse(d[key]) if key in d else None

        return cls(
            notes=list(d.get("notes", [])),
            training_statistics=opt("training_statistics", lambda v: TrainingSummary(**v)),
            occupancy_most_frequent_class=opt("occupancy_most_frequent_class", ClassBaseline.from_dict),
            planning_mean_trajectory=opt("planning_mean_trajectory", MeanTrajectoryBaseline.from_dict),
            planning_constant_velocity=opt("planning_constant_velocity", PlanScores.from_dict),
            qa_majority_answer=opt("qa_majority_answer", MajorityAnswerBaseline.from_dict),
        )
