"""The score dataclasses every result is built from: Occ3D mIoU, per-horizon planning values, QA accuracy.

Each mirrors the dict one function of :mod:`sparseoccvla_core.metrics` returns (``OccupancyMIoU.compute``,
``l2_errors`` / ``collision_rate``, ``qa_accuracy``); ``to_dict`` gives that dict back, as written to
``metrics.json`` (see ``sparseoccvla_core/evaluation/results.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
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


@dataclass
class ForecastResult:
    """Forecasting mIoU per horizon (no camera mask).

    Args:
        horizons: horizon key ("1s", ...) -> scores of that horizon.
        avg_miou: mean of the horizons' mIoU (None when one is undefined), percent.
        avg_geometry_iou: mean of the horizons' geometry IoU, percent.
        num_frames: current frames of the protocol scored at the first horizon.
    """

    horizons: dict[str, OccupancyScores]
    avg_miou: Optional[float]
    avg_geometry_iou: Optional[float]
    num_frames: int

    def to_dict(self) -> JsonDict:
        out: JsonDict = {key: scores.to_dict() for key, scores in self.horizons.items()}
        out.update(avg_miou=self.avg_miou, avg_geometry_iou=self.avg_geometry_iou, num_frames=self.num_frames)
        return out

    @classmethod
    def from_dict(cls, d: JsonDict) -> "ForecastResult":
        scalars = ("avg_miou", "avg_geometry_iou", "num_frames")
        horizons = {k: OccupancyScores.from_dict(v) for k, v in d.items() if k not in scalars}
        return cls(horizons, d["avg_miou"], d["avg_geometry_iou"], d["num_frames"])


@dataclass
class TextExample:
    """One generated answer next to its reference."""

    prediction: str
    reference: str


@dataclass
class UnderstandingResult:
    """OmniDrive-nuScenes understanding metrics (``metrics.caption_metrics``), fractions.

    Args:
        bleu: BLEU-1..4.
        rouge_l: ROUGE-L.
        cider: CIDEr (not x100).
        meteor: METEOR (None when not computed).
        num_pairs: prediction / reference pairs scored.
        meteor_backend: which METEOR ran, or why none did.
        examples: the first few pairs, for reading.
        meteor_java: pycocoevalcap's Java METEOR 1.5 beside it (None when not computed).
        meteor_java_backend: which Java METEOR ran, or why none did.
        per_kind: question kind ("desc", "conv") -> that kind's caption metrics without METEOR (BLEU-1..4,
            ROUGE_L, CIDEr, num_pairs; CIDEr's document frequencies from that kind's references only); empty
            when the kinds are unknown (then absent from ``metrics.json``).
    """

    bleu: tuple[float, float, float, float]
    rouge_l: float
    cider: float
    meteor: Optional[float]
    num_pairs: int
    meteor_backend: str
    examples: list[TextExample] = field(default_factory=list)
    per_kind: dict[str, JsonDict] = field(default_factory=dict)
    meteor_java: Optional[float] = None
    meteor_java_backend: str = "not computed"

    def to_dict(self) -> JsonDict:
        out: JsonDict = {f"BLEU-{n + 1}": b for n, b in enumerate(self.bleu)}
        out.update({"ROUGE_L": self.rouge_l, "CIDEr": self.cider, "METEOR": self.meteor, "num_pairs": self.num_pairs})
        out["meteor_backend"] = self.meteor_backend
        out.update({"METEOR_java": self.meteor_java, "meteor_java_backend": self.meteor_java_backend})
        out["examples"] = [asdict(e) for e in self.examples]
        if self.per_kind:
            out["per_kind"] = {k: dict(v) for k, v in self.per_kind.items()}
        return out

    @classmethod
    def from_dict(cls, d: JsonDict) -> "UnderstandingResult":
        return cls(
            bleu=tuple(d[f"BLEU-{n}"] for n in range(1, 5)),  # type: ignore[arg-type]
            rouge_l=d["ROUGE_L"],
            cider=d["CIDEr"],
            meteor=d["METEOR"],
            num_pairs=d["num_pairs"],
            meteor_backend=d["meteor_backend"],
            examples=[TextExample(**e) for e in d.get("examples", [])],
            per_kind={k: dict(v) for k, v in d.get("per_kind", {}).items()},
            meteor_java=d.get("METEOR_java"),
            meteor_java_backend=d.get("meteor_java_backend", "not computed"),
        )
