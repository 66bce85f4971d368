"""The results of an evaluation as small dataclasses, and their ``metrics.json`` layout.

:meth:`EvalResults.to_dict` is the content of ``metrics.json`` (key names, order and values are the file format
that ``sparseoccvla eval`` has always written and ``test/test_learning_check.py`` reads); :meth:`EvalResults.from_dict`
reads it back.  Units as the papers print them (``UNITS``): mIoU / IoU / collision rate / QA accuracy in percent,
L2 in metres, text metrics as fractions.  A value that is undefined (no sample, 0/0) is ``None`` (JSON null).

Horizon keys are ``metrics.horizon_key(h)``: ``"1s"``, ``"2s"``, ``"3s"``; planning conventions are
``metrics.PLAN_CONVENTIONS``: ``"stp3"`` (default) and ``"uniad"``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

from .. import metrics as M
from .baselines import BaselineResults
from .scores import (  # noqa: F401  (ForecastResult, TextExample, UnderstandingResult re-exported)
    ForecastResult,
    JsonDict,
    OccupancyScores,
    PlanScores,
    QAResult,
    TextExample,
    UnderstandingResult,
)

#: A plan (or a GT trajectory) "stops" when its 3-s displacement is below this, m (red-light metric).
STOP_DISPLACEMENT_M: float = 2.0

#: The unit of each kind of number in ``metrics.json``.
UNITS: dict[str, str] = {
    "miou": "percent",
    "iou": "percent",
    "l2": "m",
    "collision": "percent",
    "qa_accuracy": "percent",
    "text": "fraction (CIDEr not x100)",
}


def protocol_text() -> dict[str, str]:
    """The protocol of each table, stored in ``metrics.json`` and printed under each table of ``metrics.md``."""
    return {
        "understanding": (
            "OmniDrive-nuScenes description + conversation answers (HERMES); pycocoevalcap BLEU/ROUGE-L/CIDEr on raw "
            f"strings, no PTBTokenizer; METEOR: {M.METEOR_BACKEND}; beside it: {M.JAVA_METEOR_BACKEND}"
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
        "occupancy_per_class": (
            "IoU of each Occ3D class from the same dataset-level confusion as the mIoU (camera mask and none); "
            "'-' = the class is neither in the GT nor predicted on the scored voxels (undefined, left out of the mean)"
        ),
        "forecast_static_world": (
            "static-world baseline: the model's own current-frame occupancy (its scored voxel grid, classes kept) "
            "moved into each future key frame's ego frame with the GT ego poses (voxel centres through "
            "inverse(ego2global_future) @ ego2global_current, float64), re-voxelised on the grid (voxels leaving it "
            "dropped), scored on exactly the forecasting frames and labels above"
        ),
        "red_light": (
            f"synthetic worlds only (scenario/<split>/<token>.json): planning samples (all 6 GT waypoints) with "
            f"signal_ahead == 'red' whose GT 3-s displacement (norm of the 6th GT waypoint) < {STOP_DISPLACEMENT_M:g} m; "
            f"the plan stops when its 3-s displacement < {STOP_DISPLACEMENT_M:g} m; rate = stopped / such frames"
        ),
        "command_match": (
            "planning samples (all 6 GT waypoints): command of the chosen anchor (anchors are clustered per command, "
            "the planner's anchor_commands) == GT driving command (0 left / 1 straight / 2 right from the lateral "
            "offset of the last GT waypoint, 2 m threshold); percent overall and per GT command"
        ),
        "understanding_retrieval": (
            "retrieval baseline: each understanding question answered with the most frequent answer to the same "
            "question text in the training split's OmniDrive desc + conv files (ties alphabetical; the overall most "
            "frequent training answer when the question never occurs in training); same metrics and pairs as the model"
        ),
    }


# ============================================================================ occupancy


@dataclass
class CurrentOccupancy:
    """Current-frame occupancy with and without the camera mask; ``missing_label_files`` = label lookups that failed."""

    camera_mask: OccupancyScores
    no_mask: OccupancyScores
    missing_label_files: int

    def to_dict(self) -> JsonDict:
        return {
            "camera_mask": self.camera_mask.to_dict(),
            "no_mask": self.no_mask.to_dict(),
            "missing_label_files": self.missing_label_files,
        }

    @classmethod
    def from_dict(cls, d: JsonDict) -> "CurrentOccupancy":
        return cls(
            OccupancyScores.from_dict(d["camera_mask"]),
            OccupancyScores.from_dict(d["no_mask"]),
            d["missing_label_files"],
        )


# ============================================================================ planning


@dataclass
class RedLightResult:
    """Red-light stopping (synthetic worlds): planning samples at a red signal where the GT ego stops.

    Args:
        num_scenario_frames: planning samples that had a scenario record.
        num_red: of those, samples with ``signal_ahead == "red"``.
        num_frames: of those, samples whose GT 3-s displacement < ``threshold_m`` (the metric's frames).
        num_stopped: of ``num_frames``, samples whose plan's 3-s displacement < ``threshold_m``.
        stop_rate: ``num_stopped / num_frames`` in percent (None when there are no such frames).
        mean_plan_displacement_m: mean 3-s displacement of the plan at those frames, m (None without frames).
        threshold_m: the stop threshold, m.
    """

    num_scenario_frames: int
    num_red: int
    num_frames: int
    num_stopped: int
    stop_rate: Optional[float]
    mean_plan_displacement_m: Optional[float]
    threshold_m: float = STOP_DISPLACEMENT_M

    def to_dict(self) -> JsonDict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: JsonDict) -> "RedLightResult":
        return cls(**d)


@dataclass
class CommandMatchResult:
    """Command of the chosen anchor vs the GT driving command.

    Args:
        num_frames: planning samples with both commands.
        match_rate: percent of them whose commands agree (None without samples).
        per_command: GT command name ("left", "straight", "right") -> {"num_frames", "match_rate" (% or None)}.
        confusion: [3][3] counts, row = GT command, column = chosen anchor's command.
    """

    num_frames: int
    match_rate: Optional[float]
    per_command: dict[str, JsonDict]
    confusion: list[list[int]]

    def to_dict(self) -> JsonDict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: JsonDict) -> "CommandMatchResult":
        return cls(**d)


@dataclass
class PlanningResult:
    """Open-loop planning of the model.

    Args:
        num_samples: samples with a complete GT future that were scored.
        scores: L2 and collision (None when no sample was scored).
        ego_box: the ego footprint of the collision metric.
        collision_categories: category-name prefixes of the obstacles.
        red_light: red-light stopping (None without scenario records; then absent from ``metrics.json``).
        command_match: chosen anchor's command vs GT command (None when no command was given; absent then).
    """

    num_samples: int
    scores: Optional[PlanScores]
    ego_box: M.EgoBox = field(default_factory=M.EgoBox)
    collision_categories: tuple[str, ...] = M.COLLISION_CATEGORY_PREFIXES
    red_light: Optional[RedLightResult] = None
    command_match: Optional[CommandMatchResult] = None

    def to_dict(self) -> JsonDict:
        scores = self.scores.to_dict() if self.scores is not None else {"l2": None, "collision": None}
        out: JsonDict = {
            "num_samples": self.num_samples,
            "ego_box": asdict(self.ego_box),
            "collision_categories": list(self.collision_categories),
            **scores,
        }
        if self.red_light is not None:
            out["red_light"] = self.red_light.to_dict()
        if self.command_match is not None:
            out["command_match"] = self.command_match.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: JsonDict) -> "PlanningResult":
        scores = PlanScores.from_dict(d) if d["l2"] is not None else None
        return cls(
            d["num_samples"],
            scores,
            M.EgoBox(**d["ego_box"]),
            tuple(d["collision_categories"]),
            red_light=RedLightResult.from_dict(d["red_light"]) if d.get("red_light") else None,
            command_match=CommandMatchResult.from_dict(d["command_match"]) if d.get("command_match") else None,
        )


# ============================================================================ language


@dataclass
class ReasoningExample:
    """The driving reasoning the model generated for one key frame."""

    sample_token: str
    reasoning: str


# ============================================================================ the whole evaluation


@dataclass
class EvalResults:
    """Everything ``metrics.json`` holds.

    Args:
        split: evaluated split (or recording) name.
        num_samples: key frames evaluated.
        num_samples_in_split: key frames in the split.
        num_queries: occupancy tokens of the model (the tables' "Token" column).
        num_global_queries: global scene tokens of the model.
        occupancy, forecasting, planning: the occupancy and planning results.
        understanding: None when no understanding question was asked.
        nuscenes_qa: None when no nuScenes-QA question was asked.
        reasoning_examples: the first few generated driving reasonings.
        baselines: the trivial baselines.
        protocol: table -> protocol text (:func:`protocol_text`).
        units: metric -> unit (:data:`UNITS`).
        seconds: wall time per phase (None: not measured, omitted from the file).
        extra: further top-level entries written last (``sparseoccvla eval``: checkpoint, data).
    """

    split: str
    num_samples: int
    num_samples_in_split: int
    num_queries: int
    num_global_queries: int
    occupancy: CurrentOccupancy
    forecasting: ForecastResult
    planning: PlanningResult
    understanding: Optional[UnderstandingResult]
    nuscenes_qa: Optional[QAResult]
    reasoning_examples: list[ReasoningExample]
    baselines: BaselineResults
    protocol: dict[str, str] = field(default_factory=protocol_text)
    units: dict[str, str] = field(default_factory=lambda: dict(UNITS))
    seconds: Optional[dict[str, float]] = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> JsonDict:
        """The ``metrics.json`` object (plain Python types; key order as written)."""
        out: JsonDict = {
            "split": self.split,
            "num_samples": self.num_samples,
            "config": {"num_queries": self.num_queries, "num_global_queries": self.num_global_queries},
            "protocol": dict(self.protocol),
            "units": dict(self.units),
            "occupancy": self.occupancy.to_dict(),
            "forecasting": self.forecasting.to_dict(),
            "planning": self.planning.to_dict(),
            "understanding": self.understanding.to_dict() if self.understanding is not None else None,
            "nuscenes_qa": self.nuscenes_qa.to_dict() if self.nuscenes_qa is not None else None,
            "reasoning_examples": [asdict(r) for r in self.reasoning_examples],
            "baselines": self.baselines.to_dict(),
            "num_samples_in_split": self.num_samples_in_split,
        }
        if self.seconds is not None:
            out["seconds"] = dict(self.seconds)
        clash = set(self.extra) & set(out)
        if clash:
            raise ValueError(f"extra entries {sorted(clash)} would overwrite metrics")
        out.update(self.extra)
        return _plain(out)

    @classmethod
    def from_dict(cls, d: JsonDict) -> "EvalResults":
        """Read a ``metrics.json`` object back (entries this class does not know go to ``extra``)."""
        known = {
            "split",
            "num_samples",
            "config",
            "protocol",
            "units",
            "occupancy",
            "forecasting",
            "planning",
            "understanding",
            "nuscenes_qa",
            "reasoning_examples",
            "baselines",
            "num_samples_in_split",
            "seconds",
        }
        return cls(
            split=d["split"],
            num_samples=d["num_samples"],
            num_samples_in_split=d["num_samples_in_split"],
            num_queries=d["config"]["num_queries"],
            num_global_queries=d["config"]["num_global_queries"],
            occupancy=CurrentOccupancy.from_dict(d["occupancy"]),
            forecasting=ForecastResult.from_dict(d["forecasting"]),
            planning=PlanningResult.from_dict(d["planning"]),
            understanding=UnderstandingResult.from_dict(d["understanding"]) if d.get("understanding") else None,
            nuscenes_qa=QAResult.from_dict(d["nuscenes_qa"]) if d.get("nuscenes_qa") else None,
            reasoning_examples=[ReasoningExample(**r) for r in d.get("reasoning_examples", [])],
            baselines=BaselineResults.from_dict(d["baselines"]),
            protocol=dict(d["protocol"]),
            units=dict(d["units"]),
            seconds=dict(d["seconds"]) if "seconds" in d else None,
            extra={k: v for k, v in d.items() if k not in known},
        )


def _plain(value: Any) -> Any:
    """numpy scalars / arrays and tuples -> Python numbers / lists, recursively (what ``json`` writes)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value
