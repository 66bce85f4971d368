"""``sparseoccvla train``: train one of the paper's three stages (sec. 4.2).

    sparseoccvla train --stage 1 --config config/model_tiny.yaml --train-config config/train_tiny.yaml \\
        --data data/synth --out runs/stage1
    sparseoccvla train --stage 2 --train-config config/train_tiny.yaml --data data/synth --init runs/stage1 --out runs/stage2
    # several GPUs (DDP), unchanged arguments:
    accelerate launch --multi_gpu --num_processes 8 -m sparseoccvla_core.cli train --stage 1 ...

The stage's output folder and resuming: :mod:`sparseoccvla_core.training`; what is resolved before training:
:func:`sparseoccvla_core.train_setup.run_stage`.
"""

from __future__ import annotations

import argparse

from ..train_config import STAGES
from ..train_setup import TrainOverrides, run_stage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", type=int, required=True, choices=STAGES, help="training stage (paper sec. 4.2)")
    parser.add_argument(
        "--config",
        default=None,
        help="model config YAML (e.g. config/model_tiny.yaml) or 'tiny' / 'paper'; "
        "required for stage 1 from scratch, otherwise checked against the --init checkpoint",
    )
    parser.add_argument(
        "--train-config",
        default=None,
        help="training config YAML (config/train_tiny.yaml, "
        "config/train_paper.yaml) or 'tiny' / 'paper' (default: paper)",
    )
    parser.add_argument(
        "--data", required=True, help="dataset root (nuScenes layout: <DIR>/<version>/, gts/, omnidrive/, ...)"
    )
    parser.add_argument(
        "--init", default=None, help="output folder of the previous stage (required for stages 2 and 3)"
    )
    parser.add_argument("--out", required=True, help="output folder of this stage")
    parser.add_argument("--resume", action="store_true", help="continue this stage from the newest checkpoint in --out")
    parser.add_argument(
        "--anchors",
        default=None,
        help="planning anchors file from 'sparseoccvla anchors' "
        "(default: computed from the training split when the model has none)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="override the epochs of this stage")
    parser.add_argument("--batch-size", type=int, default=None, help="override the per-device batch size")
    parser.add_argument("--grad-accum", type=int, default=None, help="override gradient accumulation steps")
    parser.add_argument("--lr", type=float, default=None, help="override the base learning rate")
    parser.add_argument("--seed", type=int, default=None, help="override the seed")
    parser.add_argument("--num-workers", type=int, default=None, help="override DataLoader workers")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def run(args: argparse.Namespace) -> int:
    overrides = TrainOverrides(
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum_steps=args.grad_accum,
        lr=args.lr,
        seed=args.seed,
        num_workers=args.num_workers,
    )
    state = run_stage(
        args.stage,
        args.data,
        args.out,
        config=args.config,
        train_config=args.train_config,
        init=args.init,
        resume=args.resume,
        anchors=args.anchors,
        overrides=overrides,
        progress=not args.no_progress,
    )
    print(f"stage {state.stage}: {state.epoch}/{state.epochs} epochs, {state.global_step} updates -> {args.out}")
    return 0 if state.complete else 1
