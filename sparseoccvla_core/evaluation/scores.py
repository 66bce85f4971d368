"""The score dataclasses every result is built from: Occ3D mIoU, per-horizon planning values, QA accuracy.

Each mirrors the dict one function of :mod:`sparseoccvla_core.metrics` returns (``OccupancyMIoU.compute``,
``l2_errors`` / ``collision_rate``, ``qa_accuracy``); ``to_dict`` gives that dict back, as written to
``metrics.json`` (see ``sparseoccvla_core/evaluation/results.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from .. import metrics as M

JsonDict = dict[str, Any]  # a parsed JSON object (metrics.json or one of its entries)


@dataclass
class OccupancyScores:
    """Occ3D mIoU of one protocol (``metrics.OccupancyMIoU.compute``).

    Args:
        miou: mIoU over the 17 semantic classes, percent (None when no class is defined).
        geometry_iou: occupied-vs-free IoU, percent.
        iou_per_class: class name -> IoU percent (None where undefined), free excluded.
        num_frames: frames accumulated.
        camera_mask: whether only camera-visible voxels counted.
    """

    miou: Optional[float]
    geometry_iou: Optional[float]
    iou_per_class: dict[str, Optional[float]]
    num_frames: int
    camera_mask: bool

    @classmethod
    def of(cls, accumulator: M.OccupancyMIoU) -> "OccupancyScores":
        """The scores of an accumulated confusion matrix."""
        return cls(**accumulator.compute())

    def to_dict(self) -> JsonDict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: JsonDict) -> "OccupancyScores":
        return cls(**d)


@dataclass
class HorizonScores:
    """One planning metric under one convention (``metrics.l2_errors`` / ``metrics.collision_rate``).

    Args:
        horizons: horizon key ("1s", "2s", "3s") -> value (None where no sample is valid).
        avg: mean of the horizon values (the papers' "Avg." column), None when one is undefined.
        per_step: [T] per-waypoint values.
    """

    horizons: dict[str, Optional[float]]
    avg: Optional[float]
    per_step: list[Optional[float]]

    def value(self, key: str) -> Optional[float]:
        """The value at a horizon key, or ``avg`` for ``"avg"``."""
        return self.avg if key == "avg" else self.horizons[key]

    @classmethod
    def from_dict(cls, d: JsonDict) -> "HorizonScores":
        return cls({k: v for k, v in d.items() if k not in ("avg", "per_step")}, d["avg"], list(d["per_step"]))

    def to_dict(self) -> JsonDict:
        return {**self.horizons, "avg": self.avg, "per_step": list(self.per_step)}


@dataclass
class PlanScores:
    """L2 (m) and collision rate (%) of a set of trajectories, convention ("stp3" / "uniad") -> scores."""

    l2: dict[str, HorizonScores]
    collision: dict[str, HorizonScores]

    def to_dict(self) -> JsonDict:
        return {
            "l2": {c: s.to_dict() for c, s in self.l2.items()},
            "collision": {c: s.to_dict() for c, s in self.collision.items()},
        }

    @classmethod
    def from_dict(cls, d: JsonDict) -> "PlanScores":
        return cls(
            {c: HorizonScores.from_dict(s) for c, s in d["l2"].items()},
            {c: HorizonScores.from_dict(s) for c, s in d["collision"].items()},
        )


@dataclass
class QAResult:
    """nuScenes-QA exact-match accuracy (``metrics.qa_accuracy``), percent.

    Args:
        overall: accuracy over all questions.
        count: questions scored.
        per_type: template type -> accuracy.
        per_type_hop: "<type>_H<hop>" -> accuracy.
    """

    overall: float
    count: int
    per_type: dict[str, float]
    per_type_hop: dict[str, float]

    def to_dict(self) -> JsonDict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: JsonDict) -> "QAResult":
        return cls(**d)
