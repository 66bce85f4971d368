"""The demo report: ``report.html`` + ``report.md`` with PNG figures beside them (``images/``), opened from disk.

Pure Python + numpy + matplotlib (Agg) + OpenCV: no ROS, no model.  :func:`write_report` takes a
:class:`ReportData` (filled by :mod:`.collect` from the GT bag and the recording, or built by hand in tests) and
writes, per key frame shown: the six cameras (nuScenes surround layout), the BEV occupancy predicted vs GT, the
forecast at 1 / 2 / 3 s beside the GT future, the planned trajectory vs GT with the scored anchors, the
explanation and the questions asked there; then the metric tables of ``eval-bag`` (occupancy, forecast, planning,
QA, latency), the per-stage timing chart of the node and how to open the recording in Foxglove / RViz2.

BEV panels are top-down in the ego frame of the panel's key frame (x forward = up, y left = left, metres, ego at
the origin; docs/frames_and_units.md), coloured with :data:`sparseoccvla_core.batch.OCC3D_COLORS`.  Section ids
of the HTML are :data:`SECTIONS` (a test checks each is present and every referenced image exists).

The pages are Jinja2 templates shipped with the package (``templates/report.html.j2``, autoescaped, and
``templates/report.md.j2``); this module computes the figures, the tables and the values they show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Sequence

import jinja2
import numpy as np

from sparseoccvla_core import metrics as M
from sparseoccvla_core.batch import FREE_CLASS, OCC3D_CLASSES, OCC3D_COLORS

#: HTML section ids, in order (each is an ``<h2 id=...>``; the metric tables are ``metrics-<kind>``).
SECTIONS: tuple[str, ...] = (
    "summary",
    "frames",
    "metrics",
    "metrics-occupancy",
    "metrics-forecast",
    "metrics-planning",
    "metrics-qa",
    "metrics-latency",
    "timing",
    "recording",
)
#: Surround layout of the camera thumbnails (the nuScenes devkit's): front row, then back row.
CAMERA_GRID: tuple[tuple[str, ...], ...] = (
    ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"),
    ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"),
)
THUMB_WIDTH = 320
IMAGES_DIR = "images"
#: The report templates (package data of ``sparseoccvla_ros.demo``).
TEMPLATES = {"html": "report.html.j2", "md": "report.md.j2"}


# ============================================================================ data
@dataclass
class QuestionAnswer:
    """One ``AskScene`` call.

    Args:
        question: the question sent.
        answer: the model's answer ("" when it failed).
        success: the service's ``success``.
        error: the service's ``error_message`` (or the client's timeout text).
        latency_s: the node's own answering time (``latency_s`` of the response), s.
        round_trip_s: request sent -> response received at the client, s.
        trigger_frame: key frame index whose outputs triggered the question (None: asked after the replay).
        scene_frame: key frame index the answer is about (from ``scene_stamp``; None when unknown).
        scene_stamp_ns: ``scene_stamp`` of the response, ns.
    """

    question: str
    answer: str
    success: bool
    error: str
    latency_s: float
    round_trip_s: float
    trigger_frame: Optional[int]
    scene_frame: Optional[int]
    scene_stamp_ns: int = 0


@dataclass
class ReportFrame:
    """What the report shows for one key frame (numpy, the key frame's ego frame, m).

    Args:
        index: key frame index in its scene.  scene: scene name.  stamp_ns: CAM_FRONT stamp.
        jpegs: camera name -> JPEG bytes of the key frame (missing cameras are drawn blank).
        gt_points [N, 3], gt_labels [N]: GT occupancy voxel centres (None without labels).
        pred_points [M, 3], pred_classes [M], pred_scores [M]: the node's occupancy (None: no output).
        forecast: horizon s -> (points [K, 3], classes [K]) in that future key frame's ego frame.
        gt_future: horizon s -> (points, labels) GT of that future key frame (None past the scene end).
        plan [T, 2]: planned waypoints.  gt_trajectory [n, 2]: GT waypoints (n <= T near the scene end).
        anchors [K, T, 2], anchor_scores [K], chosen_anchor: the planner's denoised anchors and scores.
        explanation: the LLM's explanation / reasoning text.
        questions: the questions answered about this key frame.
    """

    index: int
    scene: str
    stamp_ns: int
    jpegs: dict[str, bytes] = field(default_factory=dict)
    gt_points: Optional[np.ndarray] = None
    gt_labels: Optional[np.ndarray] = None
    pred_points: Optional[np.ndarray] = None
    pred_classes: Optional[np.ndarray] = None
    pred_scores: Optional[np.ndarray] = None
    forecast: dict[float, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    gt_future: dict[float, Optional[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    plan: Optional[np.ndarray] = None
    gt_trajectory: Optional[np.ndarray] = None
    anchors: Optional[np.ndarray] = None
    anchor_scores: Optional[np.ndarray] = None
    chosen_anchor: int = 0
    explanation: Optional[str] = None
    questions: list[QuestionAnswer] = field(default_factory=list)


@dataclass
class ReportData:
    """Everything the report shows.

    Args:
        run: run name (the output folder's name).  created: date text.  source: what was replayed (one line).
        checkpoint: the checkpoint folder.  pc_range: (x_min, y_min, z_min, x_max, y_max, z_max) m.
        voxel_size: m.  key_frames: key frames in the bag.  frames: the key frames shown.
        results: ``sparseoccvla_core.evaluation.EvalResults`` of eval-bag (``extra["replay"]`` included).
        questions: every question asked (also attached to ``frames``).
        stage_times_s: node stage -> per-frame seconds (from the recorded /diagnostics).
        replay: counters of the replay (``sets_completed``, ``frames_published``, ``sets_dropped_behind``, rate, ...).
        phases_s: demo phase -> wall seconds.
        recording: the recording folder (MCAP inside); gt_bag: the GT bag folder; eval_dir: eval-bag's folder.
        node: the node's fully qualified name.
    """

    run: str
    created: str
    source: str
    checkpoint: str
    pc_range: Sequence[float]
    voxel_size: float
    key_frames: int
    frames: list[ReportFrame]
    results: Any
    questions: list[QuestionAnswer] = field(default_factory=list)
    stage_times_s: dict[str, list[float]] = field(default_factory=dict)
    replay: dict[str, Any] = field(default_factory=dict)
    phases_s: dict[str, float] = field(default_factory=dict)
    recording: Optional[Path] = None
    gt_bag: Optional[Path] = None
    eval_dir: Optional[Path] = None
    node: str = "/sparseoccvla/driving_node"


# ============================================================================ figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def camera_mosaic(jpegs: dict[str, bytes], path: Path, thumb_width: int = THUMB_WIDTH) -> None:
    """Six camera thumbnails in the surround layout (:data:`CAMERA_GRID`), each labelled, as one PNG.

    A camera missing from ``jpegs`` (or whose JPEG does not decode) is a grey tile saying so.
    """
    import cv2

    tiles: dict[str, Optional[np.ndarray]] = {}
    for row in CAMERA_GRID:
        for cam in row:
            data = jpegs.get(cam)
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
            tiles[cam] = img
    shapes = [t.shape for t in tiles.values() if t is not None]
    aspect = shapes[0][0] / shapes[0][1] if shapes else 9 / 16
    tw, th = thumb_width, max(1, round(thumb_width * aspect))
    rows = []
    for row in CAMERA_GRID:
        cells = []
        for cam in row:
            img = tiles[cam]
            if img is None:
                cell = np.full((th, tw, 3), 128, np.uint8)
                cv2.putText(cell, "no image", (10, th // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1)
            else:
                cell = cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA)
            cv2.rectangle(cell, (0, 0), (tw, 20), (0, 0, 0), -1)
            cv2.putText(cell, cam, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
            cells.append(cell)
        rows.append(np.concatenate(cells, axis=1))
    cv2.imwrite(str(path), np.concatenate(rows, axis=0))


def top_view_image(
    points: Optional[np.ndarray],
    labels: Optional[np.ndarray],
    pc_range: Sequence[float],
    voxel_size: float,
    scores: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, set[int]]:
    """Labelled points -> ([X, Y, 3] RGB float top view, classes present); white (free) without points.

    The points are voxelised on the grid (best score per voxel, :func:`sparseoccvla_core.occ_grid.points_to_labels`)
    and each column shows its highest occupied voxel (:func:`sparseoccvla_core.evaluation.plots.top_view`).
    """
    from sparseoccvla_core.evaluation.plots import top_view
    from sparseoccvla_core.occ_grid import grid_shape, points_to_labels

    if points is None or labels is None or len(points) == 0:
        x, y, _ = grid_shape(pc_range, voxel_size)
        top = np.full((x, y), FREE_CLASS, np.uint8)
    else:
        grid = points_to_labels(points, labels, pc_range, voxel_size, free_class=FREE_CLASS, scores=scores)
        top = top_view(grid)
    present = {int(c) for c in np.unique(top) if c != FREE_CLASS}
    return np.asarray(OCC3D_COLORS, dtype=np.float32)[top] / 255.0, present


def _bev_axes(ax, image: Optional[np.ndarray], pc_range: Sequence[float], title: str, ego: bool = True) -> None:
    """Draw a top view (x up, y left) in metres with the ego footprint at the origin."""
    from matplotlib.patches import Polygon

    from sparseoccvla_core.evaluation.plots import box_corners

    extent = [pc_range[1], pc_range[4], pc_range[0], pc_range[3]]
    if image is not None:
        ax.imshow(image, origin="lower", extent=extent, interpolation="nearest")
    ax.set_xlim(pc_range[4], pc_range[1])  # +y (left) on the left
    ax.set_ylim(pc_range[0], pc_range[3])
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("y (m, left +)", fontsize=8)
    ax.set_ylabel("x (m, forward)", fontsize=8)
    ax.tick_params(labelsize=7)
    if ego:
        box = M.ego_boxes_along_path(np.zeros((1, 1, 2)))[0, 0]
        ax.add_patch(Polygon(box_corners(box)[:, ::-1], closed=True, color="black", label="ego"))


def _class_legend(fig, classes: set[int], ncol: int = 7) -> None:
    from matplotlib.patches import Patch

    if not classes:
        fig.text(0.5, 0.01, "no occupied voxel", ha="center", fontsize=8)
        return
    handles = [
        Patch(facecolor=np.asarray(OCC3D_COLORS[c]) / 255.0, edgecolor="grey", label=OCC3D_CLASSES[c])
        for c in sorted(classes)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(ncol, len(handles)), fontsize=8, frameon=False)


def plot_occupancy(frame: ReportFrame, pc_range: Sequence[float], voxel_size: float, path: Path) -> None:
    """Predicted | GT occupancy, top-down, class legend below."""
    plt = _plt()
    pred, pc = top_view_image(frame.pred_points, frame.pred_classes, pc_range, voxel_size, frame.pred_scores)
    gt, gc = top_view_image(frame.gt_points, frame.gt_labels, pc_range, voxel_size)
    fig, axes = plt.subplots(1, 2, figsize=(9, 5.4))
    n_pred = 0 if frame.pred_points is None else len(frame.pred_points)
    _bev_axes(axes[0], pred if frame.pred_points is not None else None, pc_range, f"predicted ({n_pred} points)")
    if frame.pred_points is None:
        axes[0].text(0, 0, "no output for this key frame", ha="center", va="center", fontsize=9)
    _bev_axes(axes[1], gt if frame.gt_points is not None else None, pc_range, "ground truth (Occ3D)")
    if frame.gt_points is None:
        axes[1].text(0, 0, "no labels", ha="center", va="center", fontsize=9)
    _class_legend(fig, pc | gc)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_forecast(frame: ReportFrame, pc_range: Sequence[float], voxel_size: float, path: Path) -> None:
    """Forecast at 1 / 2 / 3 s (top row) beside the GT of those future key frames (bottom row)."""
    plt = _plt()
    horizons = list(M.FORECAST_HORIZONS_S)
    fig, axes = plt.subplots(2, len(horizons), figsize=(3.4 * len(horizons), 7.4))
    classes: set[int] = set()
    for j, h in enumerate(horizons):
        fc = frame.forecast.get(h)
        img, c = top_view_image(*(fc if fc is not None else (None, None)), pc_range, voxel_size)
        classes |= c if fc is not None else set()
        _bev_axes(axes[0, j], img if fc is not None else None, pc_range, f"forecast +{h:g} s")
        if fc is None:
            axes[0, j].text(0, 0, "no forecast", ha="center", va="center", fontsize=8)
        gt = frame.gt_future.get(h)
        img, c = top_view_image(*(gt if gt is not None else (None, None)), pc_range, voxel_size)
        classes |= c if gt is not None else set()
        _bev_axes(axes[1, j], img if gt is not None else None, pc_range, f"GT key frame +{h:g} s")
        if gt is None:
            axes[1, j].text(0, 0, "past the scene end", ha="center", va="center", fontsize=8)
    _class_legend(fig, classes, ncol=6)
    fig.tight_layout(rect=(0, 0.11, 1, 1), h_pad=1.5)
    fig.savefig(path, dpi=70)
    plt.close(fig)


def plot_plan(frame: ReportFrame, pc_range: Sequence[float], voxel_size: float, path: Path) -> None:
    """Planned trajectory vs GT over the predicted occupancy (faded), every anchor drawn with alpha = its score."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 5.6))
    img, _ = top_view_image(frame.pred_points, frame.pred_classes, pc_range, voxel_size, frame.pred_scores)
    _bev_axes(ax, 0.55 + 0.45 * img, pc_range, "plan vs GT (anchors: alpha = score)")
    pts = [np.zeros((1, 2))]
    if frame.anchors is not None and len(frame.anchors):
        scores = frame.anchor_scores if frame.anchor_scores is not None else np.ones(len(frame.anchors))
        for k, traj in enumerate(frame.anchors):
            a = np.vstack([[0.0, 0.0], traj])
            alpha = float(np.clip(0.08 + 0.92 * scores[k], 0.0, 1.0))
            ax.plot(a[:, 1], a[:, 0], "-", color="tab:blue", lw=1.0, alpha=alpha)
            pts.append(traj)
        ax.plot([], [], "-", color="tab:blue", lw=1.0, label=f"{len(frame.anchors)} anchors")
    if frame.gt_trajectory is not None and len(frame.gt_trajectory):
        g = np.vstack([[0.0, 0.0], frame.gt_trajectory])
        ax.plot(g[:, 1], g[:, 0], "-o", color="limegreen", lw=2, ms=4, label="GT trajectory")
        pts.append(frame.gt_trajectory)
    if frame.plan is not None and len(frame.plan):
        p = np.vstack([[0.0, 0.0], frame.plan])
        label = "plan" + (f" (anchor {frame.chosen_anchor})" if frame.anchors is not None else "")
        ax.plot(p[:, 1], p[:, 0], "-o", color="darkorange", lw=2, ms=4, label=label)
        pts.append(frame.plan)
    else:
        ax.text(0, 5, "no plan for this key frame", ha="center", fontsize=9)
    allp = np.vstack(pts)
    half = max(12.0, float(np.abs(allp).max()) + 4.0)  # zoom on the trajectories, at least 24 m wide
    ax.set_xlim(min(half, pc_range[4]), max(-half, pc_range[1]))
    ax.set_ylim(max(min(-half / 2, float(allp[:, 0].min()) - 3.0), pc_range[0]), min(1.5 * half, pc_range[3]))
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_stage_timing(stage_times_s: dict[str, list[float]], phases_s: dict[str, float], path: Path) -> None:
    """Per-stage time of the node (median bar, p95 whisker, ms; from /diagnostics) | the demo's phases (s)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    names = [n for n in stage_times_s if stage_times_s[n]]
    if names:
        med = [1e3 * float(np.median(stage_times_s[n])) for n in names]
        p95 = [1e3 * float(np.percentile(stage_times_s[n], 95)) for n in names]
        y = np.arange(len(names))
        bars = axes[0].barh(y, med, color="tab:blue", xerr=[np.zeros(len(med)), np.subtract(p95, med)], capsize=3)
        axes[0].bar_label(bars, labels=[f"{m:.1f}" for m in med], fontsize=7, padding=3)
        axes[0].set_yticks(y)
        axes[0].set_yticklabels(names, fontsize=8)
        axes[0].invert_yaxis()
        n = max(len(v) for v in stage_times_s.values())
        axes[0].set_title(f"node stage time per key frame, ms (median, whisker p95; {n} frames)", fontsize=9)
    else:
        axes[0].text(0.5, 0.5, "no stage timings recorded", ha="center", transform=axes[0].transAxes)
    axes[0].set_xlabel("ms", fontsize=8)
    if phases_s:
        y = np.arange(len(phases_s))
        bars = axes[1].barh(y, list(phases_s.values()), color="tab:gray")
        axes[1].bar_label(bars, labels=[f"{v:.1f}" for v in phases_s.values()], fontsize=7, padding=3)
        axes[1].set_yticks(y)
        axes[1].set_yticklabels(list(phases_s), fontsize=8)
        axes[1].invert_yaxis()
    axes[1].set_title("demo phases, wall s", fontsize=9)
    axes[1].set_xlabel("s", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ============================================================================ tables
def _fmt(v: Optional[float], digits: int = 2) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _counts(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) if d else "-"


@dataclass
class Table:
    """A titled table (rendered as markdown and as HTML), with a note under it."""

    id: str
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


def metric_tables(data: ReportData) -> list[Table]:
    """The five metric tables (ids ``metrics-occupancy`` ... ``metrics-latency``) from eval-bag's results."""
    r = data.results
    replay = (r.extra or {}).get("replay", {}) if r is not None else {}
    proto = getattr(r, "protocol", {}) or {}
    tables = []
    # occupancy
    rows = []
    occ = getattr(r, "occupancy", None)
    if occ is not None:
        for label, s in (("camera mask", occ.camera_mask), ("no mask", occ.no_mask)):
            rows.append([label, _fmt(s.miou), _fmt(s.geometry_iou), str(s.num_frames)])
    per_class = ""
    if occ is not None and occ.no_mask.iou_per_class:
        defined = [(k, v) for k, v in occ.no_mask.iou_per_class.items() if v is not None]
        per_class = "Per-class IoU (no mask): " + (", ".join(f"{k} {v:.1f}" for k, v in defined) or "none defined")
    tables.append(
        Table(
            "metrics-occupancy",
            "Occupancy (current frame, Occ3D)",
            ["protocol", "mIoU %", "IoU (geometry) %", "frames"],
            rows,
            " ".join(x for x in (per_class + ".", f"Protocol: {proto.get('occupancy', '')}.") if x != "."),
        )
    )
    # forecast
    fc = getattr(r, "forecasting", None)
    rows = []
    if fc is not None:
        keys = [M.horizon_key(h) for h in M.FORECAST_HORIZONS_S]
        vals = [fc.horizons[k].miou if k in fc.horizons else None for k in keys]
        rows.append(["mIoU %", *(_fmt(v) for v in vals), _fmt(fc.avg_miou)])
        rows.append(
            [
                "IoU (geometry) %",
                *(_fmt(getattr(fc.horizons.get(k), "geometry_iou", None)) for k in keys),
                _fmt(fc.avg_geometry_iou),
            ]
        )
    n_fc = getattr(fc, "num_frames", 0) if fc is not None else 0
    tables.append(
        Table(
            "metrics-forecast",
            "Occupancy forecast",
            ["", "1 s", "2 s", "3 s", "avg"],
            rows,
            f"{n_fc} current frames scored. Protocol: {proto.get('forecasting', '')}.",
        )
    )
    # planning
    pl = getattr(r, "planning", None)
    rows = []
    if pl is not None and pl.scores is not None:
        for conv in M.PLAN_CONVENTIONS:
            l2, col = pl.scores.l2[conv], pl.scores.collision[conv]
            keys = ("1s", "2s", "3s", "avg")
            rows.append([conv, *(_fmt(l2.value(k)) for k in keys), *(_fmt(col.value(k)) for k in keys)])
    tables.append(
        Table(
            "metrics-planning",
            "Planning (open loop)",
            ["convention", "L2 1 s (m)", "2 s", "3 s", "avg", "collision 1 s (%)", "2 s", "3 s", "avg"],
            rows,
            f"{getattr(pl, 'num_samples', 0)} samples with a complete GT future. "
            f"Protocol: {proto.get('planning', '')}.",
        )
    )
    # QA: the questions of this run (free-form: no reference answers), + nuScenes-QA accuracy when scored
    asked = data.questions
    ok = [q for q in asked if q.success]
    lat = [q.latency_s for q in ok]
    rows = [
        [
            "AskScene during the replay",
            f"{len(ok)} / {len(asked)}",
            _fmt(float(np.median(lat)), 3) if lat else "-",
            _fmt(max(lat), 3) if lat else "-",
            _fmt(float(np.median([q.round_trip_s for q in ok])), 3) if ok else "-",
        ]
    ]
    qa = getattr(r, "nuscenes_qa", None)
    note = "Free-form questions have no reference answer: the answers are shown with their key frames above."
    if qa is not None:
        note += f" nuScenes-QA accuracy: {qa.overall:.1f} % over {qa.count} questions."
    tables.append(
        Table(
            "metrics-qa",
            "Questions (AskScene)",
            ["", "answered", "latency p50 (s)", "latency max (s)", "round trip p50 (s)"],
            rows,
            note,
        )
    )
    # latency
    lat_d = replay.get("latency", {}) or {}
    rows = []
    for kind in ("occupancy", "forecast", "plan"):
        v = lat_d.get(kind)
        if isinstance(v, dict):
            rows.append([kind, *(_fmt(v.get(c), 3) for c in ("p50", "p90", "p95", "max")), str(v.get("count"))])
    matched, missed = replay.get("matched", {}), replay.get("missed", {})
    rp = data.replay
    note = (
        f"Input -> output latency, clock: {lat_d.get('clock', 'unavailable')}"
        + (f" ({lat_d['note']})" if "note" in lat_d else "")
        + f". Key frames {replay.get('key_frames', data.key_frames)}: matched {_counts(matched)}, missed {_counts(missed)}."
        + (
            f" Node: {rp.get('sets_completed', '-')} camera sets completed, {rp.get('frames_published', '-')} "
            f"published, {rp.get('sets_dropped_behind', '-')} dropped (fell behind)."
            if rp
            else ""
        )
    )
    tables.append(
        Table("metrics-latency", "Latency", ["output", "p50 (s)", "p90 (s)", "p95 (s)", "max (s)", "count"], rows, note)
    )
    return tables


# ============================================================================ writers
def _rel(path: Path, base: Path) -> str:
    try:
        return Path(path).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return Path(path).resolve().as_uri()


def _frame_images(data: ReportData, frame: ReportFrame, images: Path, n: int) -> dict[str, Path]:
    stem = f"frame{frame.index:03d}"
    paths = {
        "cameras": images / f"{stem}_cameras.png",
        "occupancy": images / f"{stem}_occupancy.png",
        "forecast": images / f"{stem}_forecast.png",
        "plan": images / f"{stem}_plan.png",
    }
    camera_mosaic(frame.jpegs, paths["cameras"])
    plot_occupancy(frame, data.pc_range, data.voxel_size, paths["occupancy"])
    plot_forecast(frame, data.pc_range, data.voxel_size, paths["forecast"])
    plot_plan(frame, data.pc_range, data.voxel_size, paths["plan"])
    return paths


def _qa_text(q: QuestionAnswer) -> str:
    about = f"key frame {q.scene_frame}" if q.scene_frame is not None else "an unknown key frame"
    asked = f"asked after key frame {q.trigger_frame}" if q.trigger_frame is not None else "asked after the replay"
    return f"{asked}, answer about {about}, node {q.latency_s:.3f} s, round trip {q.round_trip_s:.3f} s"


def recording_help(data: ReportData, base: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(links [(label, relative href)], instruction lines) for opening the recording in Foxglove / RViz2."""
    links = []
    for label, folder in (
        ("recording (node outputs)", data.recording),
        ("GT bag (cameras, odometry, GT)", data.gt_bag),
    ):
        if folder is None:
            continue
        mcaps = sorted(Path(folder).glob("*.mcap"))
        for m in mcaps:
            links.append((f"{label}: {m.name}", _rel(m, base)))
    if data.eval_dir is not None:
        for name in ("metrics.json", "metrics.md"):
            if (Path(data.eval_dir) / name).is_file():
                links.append((f"eval-bag {name}", _rel(Path(data.eval_dir) / name, base)))
    rec = str(data.recording) if data.recording else "RECORDING"
    gt = str(data.gt_bag) if data.gt_bag else "GT_BAG"
    lines = [
        "Foxglove: Open local file -> the recording's .mcap (add the GT bag's .mcap to see the cameras too); a 3D "
        f"panel with display frame base_link for {data.node}/output/occupancy (colour by rgb), .../output/path; "
        "Image panels for /<CAM>/image_rect_compressed; Raw Messages for .../output/explanation; Diagnostics.",
        "RViz2 (full ROS 2 install): `ros2 bag play " + gt + "` and `ros2 bag play " + rec + "` in two terminals, "
        "then `rviz2 -d rviz/sparseoccvla.rviz` (fixed frame base_link), or replay the bag through the node again: "
        f"`ros2 launch sparseoccvla_ros driving.launch.py checkpoint:={data.checkpoint} bag:={gt}`.",
    ]
    return links, lines


def write_report(data: ReportData, out_dir: str | Path, progress=None) -> tuple[Path, Path]:
    """Write ``report.html``, ``report.md`` and ``images/*.png`` into ``out_dir``.

    Args:
        data: what to show.
        out_dir: the run folder (created).
        progress: optional ``f(done, total)`` called after each key frame's figures.
    Returns:
        (html path, markdown path).
    """
    out = Path(out_dir)
    images = out / IMAGES_DIR
    images.mkdir(parents=True, exist_ok=True)
    frame_paths = []
    for n, frame in enumerate(data.frames):
        frame_paths.append(_frame_images(data, frame, images, n))
        if progress is not None:
            progress(n + 1, len(data.frames))
    timing = images / "timing.png"
    plot_stage_timing(data.stage_times_s, data.phases_s, timing)
    horizons = Path(data.eval_dir) / "horizons.png" if data.eval_dir is not None else None
    tables = metric_tables(data)
    links, help_lines = recording_help(data, out)
    context = {
        "data": data,
        "summary": _summary_rows(data),
        "frames": [(f, {k: _rel(p, out) for k, p in paths.items()}) for f, paths in zip(data.frames, frame_paths)],
        "unplaced": [q for q in data.questions if not any(q in f.questions for f in data.frames)],
        "tables": tables,
        "horizons": _rel(horizons, out) if horizons is not None and horizons.is_file() else None,
        "timing": _rel(timing, out),
        "links": links,
        "help_lines": help_lines,
    }
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text(_templates().get_template(TEMPLATES["html"]).render(context))
    md_path.write_text(_templates().get_template(TEMPLATES["md"]).render(context))
    return html_path, md_path


@lru_cache(maxsize=1)
def _templates() -> jinja2.Environment:
    """The report's templates: HTML autoescaped (every value is text, never markup), markdown as is."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("sparseoccvla_ros.demo", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), disabled_extensions=("md.j2",)),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.globals["qa_text"] = _qa_text
    return env


def _summary_rows(data: ReportData) -> list[tuple[str, str]]:
    rp = data.replay
    rows = [
        ("source", data.source),
        ("checkpoint", data.checkpoint),
        ("key frames", f"{data.key_frames} in the bag, {len(data.frames)} shown below"),
        ("questions", f"{sum(q.success for q in data.questions)} of {len(data.questions)} answered"),
    ]
    if rp:
        rows.append(
            (
                "replay",
                f"rate {rp.get('rate', '-')}x: {rp.get('sets_completed', '-')} camera sets completed, "
                f"{rp.get('frames_published', '-')} published, {rp.get('sets_dropped_behind', '-')} dropped "
                f"(node fell behind), {rp.get('sync_messages_dropped', '-')} synchronizer drops, "
                f"{_fmt(rp.get('wall_s'), 1)} s",
            )
        )
    if data.phases_s:
        rows.append(("wall time", ", ".join(f"{k} {v:.1f} s" for k, v in data.phases_s.items())))
    return rows
