"""Parameters of SparseOccVLA per part and per training stage, as a markdown table (``sparseoccvla info``).

The paper preset is built on the ``meta`` device (shapes only, no memory, no weights needed), so the table of the
7B-scale model prints in seconds on any machine::

    sparseoccvla info --preset paper
    sparseoccvla info --preset tiny
    sparseoccvla info --config my_model.yaml
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

import torch

from .config import SparseOccVLAConfig


def _human(n: int) -> str:
    if n >= 10**9:
        return f"{n / 1e9:.2f} B"
    if n >= 10**6:
        return f"{n / 1e6:.2f} M"
    if n >= 10**3:
        return f"{n / 1e3:.1f} K"
    return str(n)


def load_config(preset: str, config_path: Optional[str]) -> SparseOccVLAConfig:
    """The preset, or a YAML config file (which may itself name a preset plus overrides)."""
    if config_path:
        return SparseOccVLAConfig.from_yaml(config_path)
    if preset == "paper":
        return SparseOccVLAConfig.paper()
    if preset == "tiny":
        return SparseOccVLAConfig.tiny()
    raise ValueError(f"preset must be 'paper' or 'tiny', got {preset!r}")


def parameter_markdown(cfg: SparseOccVLAConfig, meta: bool) -> str:
    """Build the model (on ``meta`` when asked) and return its per-part parameter table in markdown."""
    from .model import SparseOccVLA  # heavy import only when the command runs

    with torch.device("meta") if meta else nullcontext():
        model = SparseOccVLA(cfg)
    totals = model.parameter_table()
    per_stage = {}
    for stage in (1, 2, 3):
        model.set_stage(stage)
        per_stage[stage] = model.parameter_table(trainable_only=True)
    lines = [
        "| part | parameters | trained in stage 1 | stage 2 | stage 3 |",
        "|---|---:|---:|---:|---:|",
    ]
    for part, count in totals.items():
        cells = [_human(per_stage[s][part]) if per_stage[s][part] else "-" for s in (1, 2, 3)]
        lines.append(f"| {part} | {_human(count)} | " + " | ".join(cells) + " |")
    total_cells = [_human(sum(per_stage[s].values())) for s in (1, 2, 3)]
    lines.append(f"| **total** | **{_human(sum(totals.values()))}** | " + " | ".join(total_cells) + " |")
    return "\n".join(lines)
