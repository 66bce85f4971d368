"""The figures of ``sparseoccvla eval``: per-horizon bars (``horizons.png``) and qualitative BEV frames (``bev_*.png``).

matplotlib (Agg backend) is imported inside the functions, so importing this module stays cheap.  BEV panels are
drawn top-down in the current ego frame (x forward = up, y left = left), coloured with ``batch.OCC3D_COLORS``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from .. import metrics as M
from ..batch import FREE_CLASS, OCC3D_COLORS
from .results import EvalResults
from .scores import HorizonScores

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@dataclass
class QualitativeFrame:
    """One frame kept for the qualitative BEV plots (numpy, current ego frame, m); not part of metrics.json.

    Args:
        sample_token, scene_name, frame_index: which key frame.
        front_image: [H, W, 3] float in [0, 1], CAM_FRONT of the current frame.
        gt_top: [X, Y] class of the highest occupied GT voxel per column (free where empty); None without labels.
        pred_top: [X, Y] the same for the prediction.
        gt_trajectory: [T, 2] GT waypoints; gt_trajectory_mask: [T] bool.
        plan: [T, 2] planned waypoints.
        anchors: [K, T, 2] denoised anchor trajectories; anchor_scores: [K]; chosen_anchor: the plan's anchor.
        agent_boxes: [T, A, 5] future GT boxes (cx, cy, l, w, yaw); agent_mask: [T, A] bool.
        reasoning: the generated driving reasoning, if any.
    """

    sample_token: str
    scene_name: str
    frame_index: int
    front_image: np.ndarray
    gt_top: Optional[np.ndarray]
    pred_top: np.ndarray
    gt_trajectory: np.ndarray
    gt_trajectory_mask: np.ndarray
    plan: np.ndarray
    anchors: np.ndarray
    anchor_scores: np.ndarray
    chosen_anchor: int
    agent_boxes: np.ndarray
    agent_mask: np.ndarray
    reasoning: Optional[str]


def top_view(grid: np.ndarray, free_class: int = FREE_CLASS) -> np.ndarray:
    """[X, Y, Z] labels -> [X, Y] class of the highest non-free voxel of each column (free where none)."""
    occupied = grid != free_class  # [X, Y, Z]
    z_top = grid.shape[2] - 1 - np.argmax(occupied[:, :, ::-1], axis=2)  # [X, Y] highest occupied layer
    top = np.take_along_axis(grid, z_top[..., None], axis=2)[..., 0]
    return np.where(occupied.any(axis=2), top, free_class).astype(np.uint8)


def _grouped_bars(
    ax: "Axes", keys: Sequence[str], series: Sequence[tuple[str, dict[str, Optional[float]]]], title: str
) -> None:
    """One group of bars per horizon, one bar per series, each bar labelled with its value (2 decimals); y from 0."""
    x = np.arange(len(keys))
    width = 0.8 / max(len(series), 1)
    top = 0.0
    for j, (label, vals) in enumerate(series):
        heights = [vals.get(k) or 0.0 for k in keys]
        bars = ax.bar(x + j * width - 0.4 + width / 2, heights, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
        top = max(top, *heights)
    ax.set_ylim(0.0, 1.15 * top if top > 0 else 1.0)  # an all-zero panel still shows its zero bars on a 0..1 axis
    ax.set_title(title)
    ax.set_xticks(x)
    ax.set_xticklabels(keys)
    ax.grid(axis="y", alpha=0.3)
    if series:
        ax.legend(fontsize=8)


def horizons_figure(results: EvalResults) -> "Figure":
    """Per-horizon bars: forecasting mIoU; L2 and collision rate of the model (both conventions) and of the
    planning baselines (ST-P3 convention).  Returns the matplotlib figure (3 axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [M.horizon_key(h) for h in M.FORECAST_HORIZONS_S]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    fc = results.forecasting.horizons
    _grouped_bars(
        axes[0], keys, [("model", {k: fc[k].miou for k in keys if k in fc})], "Forecasting mIoU (%) - no camera mask"
    )
    scores, bl = results.planning.scores, results.baselines
    baselines = (
        ("mean traj. ST-P3", bl.planning_mean_trajectory.scores if bl.planning_mean_trajectory else None),
        ("const. vel. ST-P3", bl.planning_constant_velocity),
    )
    for ax, metric, title in ((axes[1], "l2", "Planning L2 (m)"), (axes[2], "collision", "Collision rate (%)")):
        series: list[tuple[str, dict[str, Optional[float]]]] = []
        if scores is not None:
            model: dict[str, HorizonScores] = getattr(scores, metric)
            series += [("model ST-P3", model["stp3"].horizons), ("model UniAD", model["uniad"].horizons)]
        for label, base in baselines:
            if base is not None:
                series.append((label, getattr(base, metric)["stp3"].horizons))
        _grouped_bars(ax, keys, series, title)
    fig.tight_layout()
    return fig


def plot_horizons(results: EvalResults, path: Path) -> None:
    """Write :func:`horizons_figure` to ``path`` (PNG)."""
    import matplotlib.pyplot as plt

    fig = horizons_figure(results)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _class_image(top: np.ndarray) -> np.ndarray:
    """[X, Y] classes -> [X, Y, 3] RGB float."""
    return np.asarray(OCC3D_COLORS, dtype=np.float32)[top] / 255.0


def box_corners(box: np.ndarray) -> np.ndarray:
    """(cx, cy, l, w, yaw) -> [4, 2] corners (x, y)."""
    cx, cy, length, width, yaw = box
    c, s = math.cos(yaw), math.sin(yaw)
    local = np.array([[length, width], [-length, width], [-length, -width], [length, -width]]) / 2
    return np.column_stack([cx + c * local[:, 0] - s * local[:, 1], cy + s * local[:, 0] + c * local[:, 1]])


def plot_bev(frame: QualitativeFrame, pc_range: Sequence[float], path: Path) -> None:
    """Front camera | GT occupancy + GT trajectory | predicted occupancy + plan + anchors, top-down (x up, y left).

    Args:
        frame: the frame's images, top views and trajectories.
        pc_range: (x_min, y_min, z_min, x_max, y_max, z_max) of the occupancy grid, m.
        path: PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Polygon as MplPolygon

    fig, axes = plt.subplots(1, 3, figsize=(16, 5.6))
    axes[0].imshow(np.clip(frame.front_image, 0, 1))
    axes[0].set_title(f"CAM_FRONT  {frame.scene_name} #{frame.frame_index}")
    axes[0].axis("off")
    extent = [pc_range[1], pc_range[4], pc_range[0], pc_range[3]]  # y_min, y_max, x_min, x_max
    panels = [
        ("GT occupancy + GT trajectory", frame.gt_top),
        ("Predicted occupancy + plan (anchors thin)", frame.pred_top),
    ]
    for ax, (title, top) in zip(axes[1:], panels):
        if top is not None:
            ax.imshow(_class_image(top), origin="lower", extent=extent, interpolation="nearest")
        ax.set_xlim(pc_range[4], pc_range[1])  # +y (left) on the left of the image
        ax.set_ylim(pc_range[0], pc_range[3])
        ax.set_title(title)
        ax.set_xlabel("y (m, left +)")
        ax.set_ylabel("x (m, forward)")
        ego = M.ego_boxes_along_path(np.zeros((1, 1, 2)))[0, 0]
        ax.add_patch(MplPolygon(box_corners(ego)[:, ::-1], closed=True, fill=True, color="black"))
    gt = np.vstack([[0.0, 0.0], frame.gt_trajectory[frame.gt_trajectory_mask]])
    axes[1].plot(gt[:, 1], gt[:, 0], "-o", color="lime", lw=2, ms=4, label="GT trajectory")
    if frame.agent_boxes.shape[0]:  # the GT agents at the last future step, outlined
        last = frame.agent_boxes.shape[0] - 1
        for box in frame.agent_boxes[last][frame.agent_mask[last]]:
            axes[1].add_patch(MplPolygon(box_corners(box)[:, ::-1], closed=True, fill=False, color="red", lw=1))
    for k, traj in enumerate(frame.anchors):
        pts = np.vstack([[0.0, 0.0], traj])
        axes[2].plot(pts[:, 1], pts[:, 0], "-", color="gray", lw=0.7, alpha=0.3 + 0.7 * float(frame.anchor_scores[k]))
    if len(frame.plan):  # evaluated with plan=False: no plan to draw
        plan = np.vstack([[0.0, 0.0], frame.plan])
        axes[2].plot(
            plan[:, 1], plan[:, 0], "-o", color="orange", lw=2, ms=4, label=f"plan (anchor {frame.chosen_anchor})"
        )
    axes[2].plot(gt[:, 1], gt[:, 0], "--", color="lime", lw=1, label="GT")
    axes[1].legend(loc="lower left", fontsize=8)
    axes[2].legend(loc="lower left", fontsize=8)
    if frame.reasoning:
        fig.text(0.01, 0.01, f"reasoning: {frame.reasoning[:180]}", fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
