"""The trivial baselines of ``sparseoccvla eval``: their training-split statistics and their results.

The baselines (scored by :class:`~sparseoccvla_core.evaluation.accumulator.MetricAccumulator` on the same frames
and protocols as the model): occupancy "most frequent training class on the GT geometry", planning
"training-set mean trajectory" and "constant velocity" (needs no statistics), QA "majority training answer" and
"most frequent training answer to the same question" (a per-question prior: it sees the question, not the scene),
understanding "most frequent training answer to the same question" (retrieval), and forecasting "static world"
(the model's own current occupancy moved by the GT ego motion; needs no statistics).
:func:`training_statistics` computes what they need from a training split (of the evaluated root or of another
one, ``sparseoccvla eval --train-data``): the mean of the full T-waypoint training trajectories, the class
histogram of the training Occ3D labels (at most ``max_occ_frames`` evenly spaced frames), the most frequent
nuScenes-QA training answer (overall and per question text) and, per OmniDrive understanding question text, its most frequent training answer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Optional, Sequence, TypeVar

import numpy as np

from .. import metrics as M
from ..batch import FREE_CLASS, OCC3D_CLASSES
from .ground_truth import load_nuscenes_qa_records
from .scores import ForecastResult, JsonDict, OccupancyScores, PlanScores, QAResult, UnderstandingResult

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
        retrieval_answers: OmniDrive understanding question text -> its most frequent training answer (None
            without OmniDrive training files).
        retrieval_fallback: the most frequent training answer over all understanding questions (for questions
            that never occur in training).
        num_understanding_pairs: training question / answer pairs counted for the retrieval answers.
        qa_question_answers: nuScenes-QA question text -> its most frequent (normalised) training answer (None
            without the file); questions never asked in training get ``majority_answer``.
        root: dataset root the statistics come from (None = the evaluated root).
    """

    mean_trajectory: Optional[np.ndarray]
    num_trajectories: int
    class_counts: Optional[np.ndarray]
    num_occ_frames: int
    majority_answer: Optional[str]
    num_qa: int
    split: str = "train"
    retrieval_answers: Optional[dict[str, str]] = None
    retrieval_fallback: Optional[str] = None
    num_understanding_pairs: int = 0
    root: Optional[str] = None
    qa_question_answers: Optional[dict[str, str]] = None

    def qa_prior_answer(self, question: str) -> Optional[str]:
        """The per-question QA baseline's answer: the most frequent training answer to ``question``, else the
        overall majority answer (None without nuScenes-QA training questions)."""
        if self.qa_question_answers is None:
            return None
        return self.qa_question_answers.get(question, self.majority_answer)

    def retrieval_answer(self, question: str) -> Optional[str]:
        """The retrieval baseline's answer: the most frequent training answer to ``question``, else the fallback."""
        if self.retrieval_answers is None:
            return None
        return self.retrieval_answers.get(question, self.retrieval_fallback)

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
    from ..data.frames import index_split
    from ..data.layout import qa_split_name
    from ..data.occ3d import load_occ3d_labels
    from ..geometry.ego_motion import future_waypoints

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
    majority, n_qa, per_question = None, 0, None
    qa_path = layout.nuscenes_qa_root / f"NuScenes_{qa_split_name(split)}_questions.json"
    if qa_path.is_file():
        records = [r for recs in load_nuscenes_qa_records(qa_path).values() for r in recs]
        if records:
            majority, n_qa = M.majority_answer([r.answer for r in records]), len(records)
            by_question: dict[str, list[str]] = {}
            for r in records:
                by_question.setdefault(r.question, []).append(r.answer)
            per_question = {q: M.majority_answer(a) for q, a in by_question.items()}
    retrieval, fallback, n_pairs = retrieval_answers(layout, split, [token for _, token in frames])
    return TrainingStatistics(
        mean,
        len(trajs),
        counts,
        n_occ,
        majority,
        n_qa,
        split,
        retrieval,
        fallback,
        n_pairs,
        str(layout.root),
        per_question,
    )


def retrieval_answers(
    layout: "DatasetLayout", split: str, sample_tokens: Sequence[str], kinds: tuple[str, ...] = ("desc", "conv")
) -> tuple[Optional[dict[str, str]], Optional[str], int]:
    """The retrieval baseline's table: per OmniDrive question text, its most frequent answer in ``split``.

    Read with the dataset's own OmniDrive reader (``sparseoccvla_core/data/qa.py`` ``OmniDriveQA``), the same
    kinds the understanding metric asks (description + conversation, HERMES).  Answers are compared as raw strings;
    ties go to the alphabetically first answer (``metrics.majority_answer``, deterministic).

    Args:
        layout: the dataset layout.
        split: the training split name.
        sample_tokens: key frames of that split.
        kinds: OmniDrive kinds read.

    Returns:
        (question -> answer, overall most frequent answer, pairs counted); (None, None, 0) without OmniDrive files.
    """
    from ..data.layout import qa_split_name
    from ..data.qa import OmniDriveQA

    omni = OmniDriveQA(layout.omnidrive_root, qa_split_name(split))
    if not omni.available:
        return None, None, 0
    by_question: dict[str, list[str]] = {}
    every: list[str] = []
    for token in sample_tokens:
        for pair in omni.pairs(token, kinds):
            by_question.setdefault(pair.question, []).append(pair.answer)
            every.append(pair.answer)
    if not every:
        return None, None, 0
    table = {q: M.majority_answer(a, normalize=False) for q, a in by_question.items()}
    return table, M.majority_answer(every, normalize=False), len(every)


# ============================================================================ results (metrics.json "baselines")


@dataclass
class TrainingSummary:
    """What the baselines' training statistics were computed from (``root`` / ``num_understanding_pairs``
    are written only when known, so older ``metrics.json`` files keep their layout)."""

    split: str
    num_trajectories: int
    num_occ_frames: int
    num_qa: int
    num_understanding_pairs: Optional[int] = None
    root: Optional[str] = None

    def to_dict(self) -> JsonDict:
        return {k: v for k, v in asdict(self).items() if v is not None}


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
class QuestionPriorBaseline:
    """nuScenes-QA baseline: for every question, the most frequent training answer to the same question text.

    It reads the question and never the scene, so it is what a model reaches from the question templates alone.

    Args:
        accuracy: its accuracy on the model's questions.
        num_fallback: questions never asked in training (answered with the overall majority answer).
        num_training_questions: distinct training question texts.
    """

    accuracy: QAResult
    num_fallback: int
    num_training_questions: int

    def to_dict(self) -> JsonDict:
        return {
            "accuracy": self.accuracy.to_dict(),
            "num_fallback": self.num_fallback,
            "num_training_questions": self.num_training_questions,
        }

    @classmethod
    def from_dict(cls, d: JsonDict) -> "QuestionPriorBaseline":
        return cls(QAResult.from_dict(d["accuracy"]), d["num_fallback"], d["num_training_questions"])


@dataclass
class RetrievalBaseline:
    """Understanding baseline: the most frequent training answer to the same question (``TrainingStatistics``).

    Args:
        scores: caption metrics of the retrieved answers on the model's question / reference pairs.
        num_fallback: pairs whose question never occurs in training (answered with ``fallback_answer``).
        num_training_questions: distinct training question texts.
        fallback_answer: the overall most frequent training answer.
    """

    scores: UnderstandingResult
    num_fallback: int
    num_training_questions: int
    fallback_answer: str

    def to_dict(self) -> JsonDict:
        return {
            "num_fallback": self.num_fallback,
            "num_training_questions": self.num_training_questions,
            "fallback_answer": self.fallback_answer,
            **self.scores.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: JsonDict) -> "RetrievalBaseline":
        return cls(
            UnderstandingResult.from_dict(d), d["num_fallback"], d["num_training_questions"], d["fallback_answer"]
        )


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
    qa_question_prior: Optional[QuestionPriorBaseline] = None
    forecast_static_world: Optional[ForecastResult] = None
    understanding_retrieval: Optional[RetrievalBaseline] = None

    def to_dict(self) -> JsonDict:
        out: JsonDict = {"notes": list(self.notes)}
        if self.training_statistics is not None:
            out["training_statistics"] = self.training_statistics.to_dict()
        for name in (
            "occupancy_most_frequent_class",
            "planning_mean_trajectory",
            "planning_constant_velocity",
            "qa_majority_answer",
            "qa_question_prior",
            "forecast_static_world",
            "understanding_retrieval",
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
            qa_question_prior=opt("qa_question_prior", QuestionPriorBaseline.from_dict),
            forecast_static_world=opt("forecast_static_world", ForecastResult.from_dict),
            understanding_retrieval=opt("understanding_retrieval", RetrievalBaseline.from_dict),
        )
