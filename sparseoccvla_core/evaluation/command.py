"""``sparseoccvla eval``: the command line of the evaluation (``add_arguments`` / ``run``, see ``sparseoccvla_core/cli.py``).

sparseoccvla eval --ckpt runs/stage3 --data data/synth --out runs/eval
sparseoccvla eval --ckpt runs/stage3 --data /data/nuscenes --out runs/eval --device cuda --batch-size 4
sparseoccvla eval --ckpt runs/stage3 --data data/heldout --split all --train-data data/synth --out runs/heldout
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .loop import EvalOptions, evaluate_checkpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``sparseoccvla eval``."""
    d = EvalOptions()
    parser.add_argument("--ckpt", required=True, help="checkpoint folder (save_pretrained / a training stage's --out)")
    parser.add_argument("--data", required=True, help="dataset root (nuScenes dataroot or a synthetic world)")
    parser.add_argument("--out", required=True, help="output folder for metrics.json, metrics.md and the PNG plots")
    parser.add_argument(
        "--split",
        default=d.split,
        help="split to evaluate, or 'all' = every split of --data (a held-out world) (default %(default)s)",
    )
    parser.add_argument(
        "--train-split", default=d.train_split, help="split of the baselines' statistics (default %(default)s)"
    )
    parser.add_argument(
        "--train-data",
        default=None,
        help="dataset root whose --train-split gives every baseline's statistics (class histogram, mean "
        "trajectory, majority and retrieval answers) (default: --data)",
    )
    parser.add_argument("--version", default=None, help="nuScenes version folder (default: the only one under --data)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--num-workers", type=int, default=d.num_workers)
    parser.add_argument("--device", default=d.device, help="cpu, cuda, cuda:N or auto (default %(default)s)")
    parser.add_argument(
        "--max-samples", type=int, default=None, help="evaluate only the first N key frames (default: all)"
    )
    parser.add_argument("--no-text", action="store_true", help="skip the OmniDrive understanding metrics")
    parser.add_argument("--no-qa", action="store_true", help="skip nuScenes-QA")
    parser.add_argument(
        "--no-plan",
        action="store_true",
        help="skip the driving reasoning and the plan (no planning metrics); with --no-text --no-qa nothing is "
        "generated: occupancy and forecast only, e.g. for a stage-1 checkpoint",
    )
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (NLTK's and the Java one)")
    parser.add_argument(
        "--max-text-samples", type=int, default=None, help="key frames whose questions are asked (default: all)"
    )
    parser.add_argument(
        "--max-questions-per-sample",
        type=int,
        default=None,
        help="cap on the understanding and on the nuScenes-QA questions per key frame, each",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="answer length cap (default: the model config's)"
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help="occupancy score threshold (default: the model's, SparseWorld's 0.35)",
    )
    parser.add_argument("--no-baselines", action="store_true", help="skip the trivial baselines")
    parser.add_argument(
        "--baseline-train-frames",
        type=int,
        default=d.baseline_train_frames,
        help="training Occ3D frames read for the most-frequent-class baseline (default %(default)s)",
    )
    parser.add_argument("--num-qualitative", type=int, default=d.num_qualitative, help="qualitative BEV frames to plot")
    parser.add_argument("--seed", type=int, default=d.seed, help="diffusion noise seed")


def run(args: argparse.Namespace) -> int:
    """Evaluate ``--ckpt`` on ``--data`` and write the report to ``--out``; prints metrics.md."""
    options = EvalOptions(
        split=args.split,
        train_split=args.train_split,
        train_data=args.train_data,
        version=args.version,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        max_samples=args.max_samples,
        text=not args.no_text,
        plan=not args.no_plan,
        qa=not args.no_qa,
        meteor=not args.no_meteor,
        max_text_samples=args.max_text_samples,
        max_questions_per_sample=args.max_questions_per_sample,
        max_new_tokens=args.max_new_tokens,
        score_threshold=args.score_threshold,
        baselines=not args.no_baselines,
        baseline_train_frames=args.baseline_train_frames,
        num_qualitative=args.num_qualitative,
        seed=args.seed,
    )
    ckpt = Path(args.ckpt)
    if not ckpt.is_dir():
        raise SystemExit(
            f"--ckpt {ckpt} is not a folder (give a checkpoint written by save_pretrained / sparseoccvla train)"
        )
    try:
        results = evaluate_checkpoint(ckpt, args.data, args.out, options)
    except (FileNotFoundError, ValueError) as exc:  # bad checkpoint / dataset / split: the message names the fix
        raise SystemExit(f"sparseoccvla eval: {exc}") from exc
    out = Path(args.out)
    total = (results.seconds or {}).get("total", 0.0)
    print((out / "metrics.md").read_text())
    print(f"wrote {out / 'metrics.json'}, {out / 'metrics.md'} and plots in {total:.1f} s")
    return 0
