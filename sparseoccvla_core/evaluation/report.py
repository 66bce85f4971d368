"""The report of ``sparseoccvla eval``: ``metrics.json``, ``metrics.md`` and the plots.

``metrics.md`` lays the tables out like the paper's (SparseOccVLA Tables 1, 2 and 5, and the current-frame
occupancy as its Tables 6 / 8 'Curr' column), each followed by the protocol it was computed with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from .. import metrics as M
from .plots import QualitativeFrame, plot_bev, plot_horizons
from .results import EvalResults
from .scores import OccupancyScores, PlanScores

#: Label of the evaluated model's rows in the tables.
MODEL_ROW: str = "SparseOccVLA (this checkpoint)"


def _row(*cells: object) -> str:
    """One markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _fmt(v: Optional[float], digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _understanding_table(results: EvalResults) -> list[str]:
    und = results.understanding
    lines = [
        "## Table 1 (left) - Understanding, OmniDrive-nuScenes",
        "",
        "| Method | Token | METEOR | ROUGE | CIDEr |",
        "|---|---|---|---|---|",
    ]
    if und is not None:
        lines.append(_row(MODEL_ROW, results.num_queries, *(_fmt(v, 3) for v in (und.meteor, und.rouge_l, und.cider))))
        bleu = ", ".join(_fmt(b, 3) for b in und.bleu)
        lines += ["", f"BLEU-1..4: {bleu} over {und.num_pairs} answers."]
    else:
        lines.append(_row(MODEL_ROW, results.num_queries, "-", "-", "-"))
        lines += ["", "No OmniDrive-nuScenes description / conversation files for this split (or text evaluation off)."]
    return lines + ["", f"Protocol: {results.protocol['understanding']}.", ""]


def _forecasting_table(results: EvalResults) -> list[str]:
    fc = results.forecasting
    mious = [fc.horizons[M.horizon_key(h)].miou for h in M.FORECAST_HORIZONS_S]
    return [
        "## Table 1 (right) - Occupancy forecasting, Occ3D-nuScenes",
        "",
        "| Method | mIoU 1s | 2s | 3s | Avg | IoU Avg |",
        "|---|---|---|---|---|---|",
        _row(MODEL_ROW, *(_fmt(v) for v in mious), _fmt(fc.avg_miou), _fmt(fc.avg_geometry_iou)),
        "",
        f"Protocol: {results.protocol['forecasting']}; {fc.num_frames} current frames.",
        "",
    ]


def _occupancy_table(results: EvalResults) -> list[str]:
    occ = results.occupancy
    base = results.baselines.occupancy_most_frequent_class
    lines = [
        "## Current-frame occupancy (as Tables 6 / 8 'Curr'), Occ3D-nuScenes",
        "",
        "| Method | mIoU (camera mask) | mIoU (no mask) | IoU (no mask) |",
        "|---|---|---|---|",
    ]
    rows: list[tuple[str, OccupancyScores, OccupancyScores]] = [(MODEL_ROW, occ.camera_mask, occ.no_mask)]
    if base is not None:
        rows.append((f"Baseline: GT geometry, all `{base.class_name}`", base.camera_mask, base.no_mask))
    for label, cam, all_ in rows:
        lines.append(_row(label, *(_fmt(v) for v in (cam.miou, all_.miou, all_.geometry_iou))))
    return lines + ["", f"Protocol: {results.protocol['occupancy']}; {occ.no_mask.num_frames} frames.", ""]


def _planning_table(results: EvalResults) -> list[str]:
    lines = [
        "## Table 2 - Open-loop planning, nuScenes",
        "",
        "| Method | Convention | L2 (m) 1s | 2s | 3s | Avg. | Collision (%) 1s | 2s | 3s | Avg. |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    bl = results.baselines
    rows: list[tuple[str, Optional[PlanScores]]] = [
        (MODEL_ROW, results.planning.scores),
        (
            "Baseline: training mean trajectory",
            bl.planning_mean_trajectory.scores if bl.planning_mean_trajectory else None,
        ),
        ("Baseline: constant velocity", bl.planning_constant_velocity),
    ]
    keys = ("1s", "2s", "3s", "avg")
    for label, scores in rows:
        if scores is None:
            continue
        for conv in M.PLAN_CONVENTIONS:
            l2, col = scores.l2[conv], scores.collision[conv]
            tag = "ST-P3 (default)" if conv == "stp3" else "UniAD"
            cells = [_fmt(l2.value(k)) for k in keys] + [_fmt(col.value(k)) for k in keys]
            lines.append(_row(label, tag, *cells))
    return lines + ["", f"Protocol: {results.protocol['planning']}; {results.planning.num_samples} samples.", ""]


def _qa_table(results: EvalResults) -> list[str]:
    qa = results.nuscenes_qa
    lines = ["## Table 5 - nuScenes-QA", ""]
    if qa is None:
        return lines + ["No nuScenes-QA questions for this split (or QA evaluation off).", ""]
    types = sorted(qa.per_type)
    lines += ["| Method | Acc. (%) | " + " | ".join(types) + " |", "|---|---|" + "---|" * len(types)]
    # written out (not _row) so that a table without template types keeps its empty type cell
    lines.append(
        f"| {MODEL_ROW} | {_fmt(qa.overall, 1)} | " + " | ".join(_fmt(qa.per_type[t], 1) for t in types) + " |"
    )
    maj = results.baselines.qa_majority_answer
    if maj is not None:
        acc = maj.accuracy
        lines.append(
            f"| Baseline: majority answer `{maj.answer}` | {_fmt(acc.overall, 1)} | "
            + " | ".join(_fmt(acc.per_type.get(t), 1) for t in types)
            + " |"
        )
    return lines + ["", f"Protocol: {results.protocol['nuscenes_qa']}; {qa.count} questions.", ""]


def render_markdown(results: EvalResults, title: str = "SparseOccVLA evaluation") -> str:
    """The tables of ``metrics.md``: laid out like the paper's Tables 1, 2, 5, each followed by its protocol.

    To re-render a written report: ``render_markdown(EvalResults.from_dict(json.load(open("metrics.json"))))``.
    """
    lines = [
        f"# {title}",
        "",
        f"Split `{results.split}`: {results.num_samples} of {results.num_samples_in_split} key frames evaluated.",
        "",
    ]
    for table in (_understanding_table, _forecasting_table, _occupancy_table, _planning_table, _qa_table):
        lines += table(results)
    lines += [f"Note: {note}" for note in results.baselines.notes]
    return "\n".join(lines).rstrip() + "\n"


def write_report(
    results: EvalResults,
    out_dir: str | Path,
    qualitative: Sequence[QualitativeFrame] = (),
    pc_range: Optional[Sequence[float]] = None,
) -> list[Path]:
    """Write ``metrics.json``, ``metrics.md``, ``horizons.png`` and one ``bev_<n>_<token>.png`` per qualitative frame.

    Args:
        results: the metrics (``results.to_dict()`` is written as metrics.json).
        out_dir: output folder (created).
        qualitative: frames to plot top-down.
        pc_range: (x_min, y_min, z_min, x_max, y_max, z_max) of the occupancy grid, m; needed with ``qualitative``.

    Returns:
        The files written.

    Raises:
        ValueError: qualitative frames without ``pc_range`` (checked before anything is written).
    """
    if qualitative and pc_range is None:
        raise ValueError("write_report needs pc_range to plot qualitative frames")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "metrics.json", out / "metrics.md", out / "horizons.png"]
    files[0].write_text(json.dumps(results.to_dict(), indent=2) + "\n")
    files[1].write_text(render_markdown(results))
    plot_horizons(results, files[2])
    for n, frame in enumerate(qualitative):
        path = out / f"bev_{n:02d}_{frame.sample_token[:8]}.png"
        plot_bev(frame, pc_range or (), path)
        files.append(path)
    return files
