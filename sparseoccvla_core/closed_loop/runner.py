"""Episodes with an in-process planner (the baselines; tests' planners), lockstep: key frame -> plan -> 0.5 s."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from .metrics import episode_metrics, total_metrics
from .scenarios import ScenarioSpec
from .sim import Episode, EpisodeLog


@dataclass
class EpisodeResult:
    """One planner on one episode: the log, its metrics and every event (plan fallbacks + metric events)."""

    spec: ScenarioSpec
    planner: str
    log: EpisodeLog
    metrics: dict
    events: list = field(default_factory=list)
    wall_s: float = 0.0
    interrupted: bool = False  # stopped (Ctrl-C) before its time limit

    @property
    def real_time_factor(self) -> float:
        """Simulated seconds per wall second."""
        return float(self.log.t[-1]) / self.wall_s if self.wall_s > 0 else float("nan")


def finish_episode(episode: Episode, planner_name: str, wall_s: float) -> EpisodeResult:
    log = episode.log()
    metrics, metric_events = episode_metrics(log)
    events = sorted(log.events + metric_events, key=lambda e: (e.t, e.kind))
    return EpisodeResult(episode.spec, planner_name, log, metrics, events, wall_s)


def run_episode(
    spec: ScenarioSpec,
    planner,
    on_frame: Optional[Callable[[Episode, int], None]] = None,
) -> EpisodeResult:
    """Drive one episode with ``planner.plan(episode, key_frame)`` (an array, or None for no plan)."""
    t0 = time.perf_counter()
    episode = Episode(spec)
    for _ in range(episode.num_frames):
        kf = episode.key_frame()
        plan = planner.plan(episode, kf)
        episode.apply_plan(plan, reason="the planner returned none")
        episode.advance()
        if on_frame is not None:
            on_frame(episode, kf.index)
    return finish_episode(episode, getattr(planner, "name", type(planner).__name__), time.perf_counter() - t0)


def run_planner(specs: list[ScenarioSpec], planner, progress: Optional[Callable[[str], None]] = None) -> dict:
    """Every episode with one planner; returns {"planner", "episodes": [EpisodeResult], "total": dict}."""
    results = []
    for spec in specs:
        res = run_episode(spec, planner)
        results.append(res)
        if progress is not None:
            m = res.metrics
            progress(
                f"{res.planner}: {spec.name} DS {m['driving_score']:.2f} RC {m['route_completion']:.2f} "
                f"collisions {m['collisions_at_fault']} red {m['red_light_violations']} ({res.wall_s:.1f} s)"
            )
    return {
        "planner": getattr(planner, "name", ""),
        "episodes": results,
        "total": total_metrics([r.metrics for r in results]),
    }
