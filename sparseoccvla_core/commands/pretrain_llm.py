"""``sparseoccvla pretrain-llm``: train a random-init LLM on the training text before stage 2.

    sparseoccvla pretrain-llm --init runs/s1 --data data/synth --out runs/s1_text --epochs 12

What it trains and writes: :mod:`sparseoccvla_core.text_pretraining`.
"""

from __future__ import annotations

import argparse

from ..text_pretraining import TextSchedule, text_pretrain_from_stage1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TextSchedule()
    parser.add_argument("--init", required=True, help="output folder of stage 1 (the model whose LLM is trained)")
    parser.add_argument("--data", required=True, help="dataset root (the one the stages train on)")
    parser.add_argument("--out", required=True, help="output folder (a stage-1 model folder; stage 2's --init)")
    parser.add_argument("--train-config", default=None, help="training config YAML: its train_split, qa_sources, seed")
    parser.add_argument(
        "--epochs", type=int, default=d.epochs, help="passes over the training text (default %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="texts per update (default %(default)s)")
    parser.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default %(default)s)")
    parser.add_argument("--val-split", default="val", help="split whose text measures the NLL each epoch ('' = none)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def run(args: argparse.Namespace) -> int:
    schedule = TextSchedule(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    text_pretrain_from_stage1(
        args.init,
        args.data,
        args.out,
        schedule,
        train_config=args.train_config,
        val_split=args.val_split,
        progress=not args.no_progress,
    )
    return 0
