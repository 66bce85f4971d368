"""``sparseoccvla eval``: the paper's evaluation (SparseOccVLA sec. 4.1, Tables 1, 2, 5) of a checkpoint on a split.

    sparseoccvla eval --ckpt runs/stage3 --data data/synth --out runs/eval
    sparseoccvla eval --ckpt runs/stage3 --data /data/nuscenes --out runs/eval --device cuda --batch-size 4
    sparseoccvla eval --ckpt runs/stage3 --data data/heldout --split all --train-data data/synth --out runs/heldout

For every key frame of the split (``--split``, default ``val``) the model's :meth:`SparseOccVLA.predict` gives the
current occupancy, the T forecast frames, the plan and the driving reasoning; understanding questions reuse the
same scene prefix.  Metrics and protocols (``sparseoccvla_core.metrics``, docs/reference_choices.md §8):

* Understanding (Table 1 left): BLEU-1..4 / ROUGE-L / CIDEr on raw strings via pycocoevalcap over the
  OmniDrive-nuScenes description + conversation answers (HERMES); METEOR = NLTK meteor_score per answer as HERMES
  (WordNet from wordnet-base), pycocoevalcap's Java METEOR 1.5 beside it when java is on PATH.
* Occupancy (current frame): Occ3D mIoU over 17 classes with the camera mask (official) and without.
* Forecasting (Table 1 right): mIoU at 1 s / 2 s / 3 s (future key frames +2 / +4 / +6, each against its own
  labels in its own ego frame), no camera mask, current frames with index in [5, scene_len - 8], Avg = mean.
* Planning (Table 2): L2 and collision rate at 1 s / 2 s / 3 s and Avg, ST-P3 convention (mean over the
  waypoints up to the horizon, default) and UniAD convention (at the horizon); only samples whose 6 GT waypoints
  all exist (VAD ``fut_valid_flag`` / OmniDrive / SparseDrive).  Collision GT = boxes of vehicles and pedestrians
  (nuScenes ``sample_annotation`` of each future key frame, through nuscenes-devkit) in the current ego frame.
* nuScenes-QA (Table 5): exact-match accuracy overall and per template type.
* Per-class IoU (camera mask and none), the chosen anchor's command vs the GT command, and (synthetic worlds,
  ``scenario/<split>/<token>.json``) the red-light stop rate; forecasting beside a static-world baseline (the
  model's current occupancy moved by the GT ego motion), understanding beside a retrieval baseline (the most
  frequent training answer to the same question).  ``results.protocol_text`` states each protocol.
* Baselines (for the learning check): occupancy "most frequent training class on the GT geometry", planning
  "training-set mean trajectory" and "constant velocity", QA "majority training answer".  Training statistics
  are computed here from the training split (``--train-split``): mean of the full 6-waypoint training
  trajectories, class histogram of the training Occ3D labels (at most ``--baseline-train-frames`` evenly spaced
  frames), the most frequent nuScenes-QA training answer.

Outputs in ``--out``: ``metrics.json``, ``metrics.md`` (tables laid out like the paper's, each naming its
protocol), ``horizons.png`` (per-horizon bars) and ``bev_<n>_<token>.png`` qualitative frames (front camera, GT vs
predicted occupancy top-down coloured by class, GT vs planned trajectory with the denoised anchors).

Modules:

* ``accumulator``: :class:`MetricAccumulator`, per-frame predictions + GT -> :class:`EvalResults`, no model or
  data loader needed (``sparseoccvla eval`` and the bag evaluation both score through it).
* ``scores``, ``results``: the result dataclasses; ``EvalResults.to_dict()`` is ``metrics.json``.
* ``loop``: :func:`evaluate` / :func:`evaluate_checkpoint`, the model on a dataset split.
* ``ground_truth``: Occ3D labels, future agent boxes, nuScenes-QA records of a dataset root.
* ``baselines``: the baselines' training statistics and results.
* ``report`` (metrics.json, metrics.md), ``plots`` (PNG figures), ``command`` (``add_arguments`` / ``run``).
"""

from ..batch import OCC3D_COLORS
from .accumulator import MetricAccumulator, move_labels
from .baselines import BaselineResults, RetrievalBaseline, TrainingStatistics, retrieval_answers, training_statistics
from .command import add_arguments, run
from .ground_truth import LabelCache, QARecord, future_agent_boxes, load_nuscenes_qa_records, pad_agents
from .loop import (
    ALL_SPLITS,
    UNDERSTANDING_KINDS,
    EvalOptions,
    EvalReport,
    answer_questions,
    dataset_splits,
    evaluate,
    evaluate_checkpoint,
)
from .plots import QualitativeFrame, horizons_figure, plot_bev, plot_horizons, top_view
from .report import MODEL_ROW, render_markdown, write_report
from .results import (
    STOP_DISPLACEMENT_M,
    UNITS,
    CommandMatchResult,
    CurrentOccupancy,
    EvalResults,
    ForecastResult,
    PlanningResult,
    ReasoningExample,
    RedLightResult,
    TextExample,
    UnderstandingResult,
    protocol_text,
)
from .scores import HorizonScores, OccupancyScores, PlanScores, QAResult

__all__ = [
    "ALL_SPLITS",
    "MODEL_ROW",
    "OCC3D_COLORS",
    "UNDERSTANDING_KINDS",
    "STOP_DISPLACEMENT_M",
    "UNITS",
    "BaselineResults",
    "CommandMatchResult",
    "CurrentOccupancy",
    "EvalOptions",
    "EvalReport",
    "EvalResults",
    "ForecastResult",
    "HorizonScores",
    "LabelCache",
    "MetricAccumulator",
    "OccupancyScores",
    "PlanScores",
    "PlanningResult",
    "QAResult",
    "QARecord",
    "QualitativeFrame",
    "ReasoningExample",
    "RedLightResult",
    "RetrievalBaseline",
    "TextExample",
    "TrainingStatistics",
    "UnderstandingResult",
    "add_arguments",
    "answer_questions",
    "dataset_splits",
    "evaluate",
    "evaluate_checkpoint",
    "future_agent_boxes",
    "horizons_figure",
    "load_nuscenes_qa_records",
    "move_labels",
    "pad_agents",
    "plot_bev",
    "plot_horizons",
    "protocol_text",
    "render_markdown",
    "retrieval_answers",
    "run",
    "top_view",
    "training_statistics",
    "write_report",
]
