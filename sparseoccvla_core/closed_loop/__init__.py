"""Closed-loop driving in the synthetic world (docs/closed_loop.md): the planner drives, the world answers.

Pure Python + numpy, no ROS (docs/design.md §2): ``scenarios`` (the episode set), ``vehicle`` (kinematic bicycle,
pure pursuit + speed PID), ``sim`` (one episode: ego + traffic + signals at a fixed inner rate, key frames at
2 Hz, camera rendering through the synthetic renderer), ``metrics`` (per-episode and total scores, CARLA-style
driving score), ``planners`` (constant velocity, mean trajectory, privileged rule-based expert), ``runner``
(episodes with an in-process planner), ``replay`` (top-down strips) and ``report`` (closed_loop.html / .md).
The ROS 2 side (``sim_node``, ``sparseoccvla closed-loop``) lives in :mod:`sparseoccvla_ros.closed_loop`.
"""

from .scenarios import KINDS, ScenarioSpec, scenario_set

__all__ = ["KINDS", "ScenarioSpec", "scenario_set"]
