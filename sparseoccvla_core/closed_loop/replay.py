"""Top-down replay strips of closed-loop episodes (the report's pictures, docs/closed_loop.md §7).

One PNG per (planner, episode): up to ``panels`` key frames spread over the episode, always including the first
frame of each collision, red-light and plan-fallback event.  Each panel is the frame's ego frame seen from above
(x forward = up, y left = left, metres): the ground (road, sidewalk, terrain, islands), the route, the route's stop
lines in their signal colour, the other agents (vehicles blue, pedestrians red, objects grey), the ego box (green;
red while it overlaps an agent), the ego's path over the last 3 s, the plan in force (orange; "NO PLAN" when the
ego brakes for want of one) and, for the model, its predicted occupancy (Occ3D class colours).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..batch import OCC3D_COLORS
from ..metrics import boxes_overlap
from .sim import VIEW_X, VIEW_Y, box_corners, ego_box_of
from .vehicle import global_to_ego

GROUND_RGB = np.array([[0.55, 0.68, 0.45], [0.42, 0.42, 0.44], [0.78, 0.77, 0.74], [0.70, 0.66, 0.55]])
SIGNAL_RGB = {"green": "#2ca02c", "yellow": "#ffb000", "red": "#d62728"}
AGENT_RGB = {"vehicle": "#1f77b4", "pedestrian": "#d62728", "static": "#7f7f7f"}


def pick_frames(result, panels: int = 6) -> list[int]:
    """Key frames to draw: evenly spread, plus the first frame of every event (at most ``panels``)."""
    n = len(result.log.frames)
    if n == 0:
        return []
    events = sorted({min(n - 1, max(0, e.frame)) for e in result.events})
    even = [int(round(i)) for i in np.linspace(0, n - 1, panels)]
    chosen = list(dict.fromkeys(events[: panels // 2 + 1]))
    for f in even:
        if len(chosen) >= panels:
            break
        if all(abs(f - c) > 1 for c in chosen):
            chosen.append(f)
    return sorted(chosen)[:panels]


def _to_view(xy: np.ndarray) -> np.ndarray:
    """Ego-frame (x forward, y left) -> plot (horizontal = -y, vertical = x)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    return np.stack([-xy[:, 1], xy[:, 0]], axis=1)


def draw_panel(ax, result, frame: int) -> None:
    log = result.log
    rec = log.frames[frame]
    k = int(np.argmin(np.abs(log.t - rec.t)))
    pose = rec.pose
    if rec.ground is not None:
        rgb = GROUND_RGB[np.clip(rec.ground, 0, 3)]  # [X, Y, 3]
        img = rgb[::-1, ::-1]  # rows: x descending (up = forward); columns: y descending (left = +y)
        ax.imshow(img, extent=(-VIEW_Y[1], -VIEW_Y[0], VIEW_X[0], VIEW_X[1]), interpolation="nearest")
    if rec.route_xy is not None:
        r = _to_view(rec.route_xy)
        ax.plot(r[:, 0], r[:, 1], color="white", lw=0.8, ls="--", alpha=0.8)
    for x, y, yaw, state in rec.stop_lines:
        n = np.array([-math.sin(yaw), math.cos(yaw)]) * 1.8
        seg = _to_view(np.array([[x, y] - n, [x, y] + n]))
        ax.plot(seg[:, 0], seg[:, 1], color=SIGNAL_RGB.get(state, "k"), lw=3)
    if rec.occupancy is not None and len(rec.occupancy):
        occ = rec.occupancy
        colors = np.asarray(OCC3D_COLORS, dtype=np.float64)[np.clip(occ[:, 2].astype(int), 0, len(OCC3D_COLORS) - 1)]
        if colors.max() > 1.0:
            colors = colors / 255.0
        v = _to_view(occ[:, :2])
        ax.scatter(v[:, 0], v[:, 1], s=0.5, c=colors[:, :3], alpha=0.3, linewidths=0)
    boxes = log.agent_boxes[k]
    ego_box = ego_box_of(log.ego[k, :3], log.ego_box)
    hit = boxes_overlap(ego_box[None], boxes) if len(boxes) else np.zeros(0, bool)
    for j, box in enumerate(boxes):
        corners = global_to_ego(box_corners(box), pose)
        if np.all(np.abs(corners[:, 1]) > 25) or np.all((corners[:, 0] < -20) | (corners[:, 0] > 50)):
            continue
        v = _to_view(corners)
        ax.fill(v[:, 0], v[:, 1], color=AGENT_RGB.get(log.agent_class[j], "k"), alpha=0.9, lw=0.4, ec="k", zorder=5)
    trail = log.ego[max(0, k - int(3.0 / log.dt)) : k + 1, :2]
    tv = _to_view(global_to_ego(trail, pose))
    ax.plot(tv[:, 0], tv[:, 1], color="#2ca02c", lw=1.2)
    v = _to_view(global_to_ego(box_corners(ego_box), pose))
    ax.fill(v[:, 0], v[:, 1], color="#d62728" if hit.any() else "#2ca02c", alpha=0.95, lw=0.8, ec="k", zorder=6)
    if rec.plan_global is not None and rec.status == "ok":
        p = _to_view(global_to_ego(np.concatenate([pose[None, :2], rec.plan_global]), pose))
        ax.plot(p[:, 0], p[:, 1], color="#ff7f0e", lw=1.0, marker="o", ms=2.0, alpha=0.8, zorder=4)
    elif rec.status in ("missing", "invalid"):
        ax.text(0, 8, "NO PLAN" if rec.status == "missing" else "BAD PLAN", color="#d62728", ha="center",
                fontsize=8, weight="bold")  # fmt: skip
    marks = [e.kind.replace("_", " ") for e in result.events if e.frame == rec.index]
    light = "/".join(dict.fromkeys(state for *_, state in rec.stop_lines)) or "none ahead"
    ax.set_title(f"t {rec.t:.1f} s  v {log.ego[k, 3]:.1f} m/s\nroute's light: {light}" + (f"\n{', '.join(marks)}" if marks else ""),
                 fontsize=7)  # fmt: skip
    ax.set_xlim(-VIEW_Y[1], -VIEW_Y[0])
    ax.set_ylim(VIEW_X[0], VIEW_X[1])
    ax.set_aspect("equal")
    ax.tick_params(labelsize=5)


def strip_png(result, path: str | Path, panels: int = 6) -> Path:
    """Write one episode's strip (module docstring); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = pick_frames(result, panels)
    fig, axes = plt.subplots(1, max(1, len(frames)), figsize=(1.9 * max(1, len(frames)), 3.4), dpi=90)
    axes = np.atleast_1d(axes)
    for ax, f in zip(axes, frames):
        draw_panel(ax, result, f)
    m = result.metrics
    fig.suptitle(
        f"{result.planner} - {result.spec.name}: DS {m['driving_score']:.2f}, RC {m['route_completion']:.2f}, "
        f"at-fault collisions {m['collisions_at_fault']}, red lights {m['red_light_violations']}",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["strip_png", "pick_frames", "draw_panel"]
