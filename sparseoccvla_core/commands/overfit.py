"""``sparseoccvla overfit``: train stage 1 on a few key frames and score the same frames (the encoder's first check).

    sparseoccvla overfit --data runs/overfit --config config/model_default.yaml --updates 240
    sparseoccvla overfit --data runs/overfit --config config/model_default.yaml --set points_per_layer=[4,128]

What it measures: :mod:`sparseoccvla_core.overfit` (docs/experiments.md §10).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import yaml

from ..overfit import OVERFIT_SCORE_THRESHOLD, overfit_world


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset root (e.g. a one-scene synthetic world)")
    parser.add_argument("--config", default="config/model_default.yaml", help="model config YAML")
    parser.add_argument("--train-config", default="config/train_default.yaml", help="training config YAML")
    parser.add_argument("--updates", type=int, default=240, help="optimizer updates (default %(default)s)")
    parser.add_argument("--frames", type=int, default=None, help="use the first N key frames (default: all)")
    parser.add_argument("--split", default="train", help="split read (default %(default)s)")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="model-config overrides, YAML values (e.g. point_class_features=64 'points_per_layer=[4,128]')",
    )
    parser.add_argument("--score-threshold", type=float, default=OVERFIT_SCORE_THRESHOLD)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the result to this JSON file")


def parse_overrides(items: list[str]) -> dict:
    """``FIELD=VALUE`` strings -> {field: YAML-parsed value}; a malformed item is a ValueError naming it."""
    out = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE")
        out[field.strip()] = yaml.safe_load(value)
    return out


def run(args: argparse.Namespace) -> int:
    for name in ("config", "train_config"):
        if not Path(getattr(args, name)).is_file():
            raise SystemExit(f"error: --{name.replace('_', '-')} {getattr(args, name)} is not a file")
    if args.updates < 1:
        raise SystemExit("error: --updates must be >= 1")
    result = overfit_world(
        args.data,
        args.config,
        args.train_config,
        args.updates,
        frames=args.frames,
        split=args.split,
        overrides=parse_overrides(args.set),
        score_threshold=args.score_threshold,
        seed=args.seed,
        progress=True,
    )
    print(result.summary())
    iou = ", ".join(f"{k} {v:.1f}" for k, v in result.iou.items() if not math.isnan(v))
    print(f"per-class IoU (%): {iou}")
    if args.json:
        Path(args.json).write_text(json.dumps(vars(result), indent=1) + "\n")
    return 0
