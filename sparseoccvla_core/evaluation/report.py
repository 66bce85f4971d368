"""The report of ``sparseoccvla eval``: ``metrics.json``, ``metrics.md`` and the plots.

``metrics.md`` lays the tables out like the paper's (SparseOccVLA Tables 1, 2 and 5, and the current-frame
occupancy as its Tables 6 / 8 'Curr' column), each followed by the protocol it was computed with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from .. import metrics as M
from ..batch import FREE_CLASS, OCC3D_CLASSES
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
    ret = results.baselines.understanding_retrieval
    if und is not None:
        lines.append(_row(MODEL_ROW, results.num_queries, *(_fmt(v, 3) for v in (und.meteor, und.rouge_l, und.cider))))
        if ret is not None:
            s = ret.scores
            label = "Baseline: most frequent training answer to the question"
            lines.append(_row(label, "-", *(_fmt(v, 3) for v in (s.meteor, s.rouge_l, s.cider))))
        bleu = ", ".join(_fmt(b, 3) for b in und.bleu)
        lines += ["", f"BLEU-1..4: {bleu} over {und.num_pairs} answers."]
        java = f"{_fmt(und.meteor_java, 3)} ({und.meteor_java_backend})"
        lines += ["", f"METEOR: {und.meteor_backend}. Java METEOR 1.5 beside it: {java}."]
        if und.per_kind:
            lines += ["", "| Question kind | Method | BLEU-4 | ROUGE | CIDEr | Answers |", "|---|---|---|---|---|---|"]
            for kind in sorted(und.per_kind):
                sources = [(MODEL_ROW, und.per_kind[kind])]
                if ret is not None and kind in ret.scores.per_kind:
                    sources.append(("Baseline: retrieval", ret.scores.per_kind[kind]))
                for label, d in sources:
                    cells = (_fmt(d["BLEU-4"], 3), _fmt(d["ROUGE_L"], 3), _fmt(d["CIDEr"], 3), d["num_pairs"])
                    lines.append(_row(kind, label, *cells))
        if ret is not None:
            lines += [
                "",
                f"Retrieval baseline: {ret.num_training_questions} training question texts; {ret.num_fallback} "
                f"answers fell back to `{ret.fallback_answer[:60]}`. Protocol: "
                f"{results.protocol.get('understanding_retrieval', '-')}.",
            ]
    else:
        lines.append(_row(MODEL_ROW, results.num_queries, "-", "-", "-"))
        lines += ["", "No OmniDrive-nuScenes description / conversation files for this split (or text evaluation off)."]
    return lines + ["", f"Protocol: {results.protocol['understanding']}.", ""]


def _forecasting_table(results: EvalResults) -> list[str]:
    fc = results.forecasting
    lines = [
        "## Table 1 (right) - Occupancy forecasting, Occ3D-nuScenes",
        "",
        "| Method | mIoU 1s | 2s | 3s | Avg | IoU Avg |",
        "|---|---|---|---|---|---|",
    ]
    rows = [(MODEL_ROW, fc)]
    static = results.baselines.forecast_static_world
    if static is not None:
        rows.append(("Baseline: static world (current occupancy moved by GT ego motion)", static))
    for label, r in rows:
        mious = [r.horizons[M.horizon_key(h)].miou for h in M.FORECAST_HORIZONS_S]
        lines.append(_row(label, *(_fmt(v) for v in mious), _fmt(r.avg_miou), _fmt(r.avg_geometry_iou)))
    lines += ["", f"Protocol: {results.protocol['forecasting']}; {fc.num_frames} current frames."]
    if static is not None:
        lines += ["", f"Static world: {results.protocol.get('forecast_static_world', '-')}."]
    return lines + [""]


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


def _per_class_table(results: EvalResults) -> list[str]:
    """Per-class IoU of the current frame (camera mask and none); '-' = class neither in the GT nor predicted."""
    occ = results.occupancy
    names = [n for c, n in enumerate(OCC3D_CLASSES) if c != FREE_CLASS]
    names += [n for n in occ.no_mask.iou_per_class if n not in names]  # a non-Occ3D class set, if any
    lines = [
        "## Current-frame occupancy per class (IoU %)",
        "",
        "| Class | IoU (camera mask) | IoU (no mask) |",
        "|---|---|---|",
    ]
    for name in names:
        lines.append(
            _row(name, _fmt(occ.camera_mask.iou_per_class.get(name)), _fmt(occ.no_mask.iou_per_class.get(name)))
        )
    lines.append(_row("**mIoU**", _fmt(occ.camera_mask.miou), _fmt(occ.no_mask.miou)))
    protocol = results.protocol.get("occupancy_per_class", results.protocol["occupancy"])
    return lines + ["", f"Protocol: {protocol}.", ""]


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
    lines += ["", f"Protocol: {results.protocol['planning']}; {results.planning.num_samples} samples.", ""]
    return lines + _command_lines(results) + _red_light_lines(results)


def _command_lines(results: EvalResults) -> list[str]:
    cm = results.planning.command_match
    if cm is None:
        return []
    per = cm.per_command
    lines = [
        "## Planning - chosen anchor's command vs GT command",
        "",
        "| Method | Match (%) | " + " | ".join(f"GT {c} (%)" for c in per) + " |",
        "|---|---|" + "---|" * len(per),
        _row(MODEL_ROW, _fmt(cm.match_rate, 1), *(_fmt(v["match_rate"], 1) for v in per.values())),
        _row("Frames", cm.num_frames, *(v["num_frames"] for v in per.values())),
    ]
    return lines + ["", f"Protocol: {results.protocol.get('command_match', '-')}.", ""]


def _red_light_lines(results: EvalResults) -> list[str]:
    rl = results.planning.red_light
    if rl is None:
        return []
    lines = ["## Planning - red-light stop rate (synthetic worlds)", ""]
    if rl.num_frames == 0:
        lines.append(
            f"No such frames: {rl.num_red} of {rl.num_scenario_frames} planning samples are at a red light, "
            f"none where the GT ego stops (3-s displacement < {rl.threshold_m:g} m)."
        )
    else:
        lines += [
            "| Method | Frames (red, GT stops) | Plan stops | Stop rate (%) | Mean plan 3-s displacement (m) |",
            "|---|---|---|---|---|",
            _row(MODEL_ROW, rl.num_frames, rl.num_stopped, _fmt(rl.stop_rate, 1), _fmt(rl.mean_plan_displacement_m)),
        ]
    return lines + ["", f"Protocol: {results.protocol.get('red_light', '-')}.", ""]


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
    prior = results.baselines.qa_question_prior
    if prior is not None:
        acc = prior.accuracy
        lines.append(
            "| Baseline: most frequent training answer to the same question (no scene) | "
            + f"{_fmt(acc.overall, 1)} | "
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
    tables = (_understanding_table, _forecasting_table, _occupancy_table, _per_class_table, _planning_table, _qa_table)
    for table in tables:
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
