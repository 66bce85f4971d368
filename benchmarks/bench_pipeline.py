"""Streaming inference speed: ``SparseOccVLAPipeline.step`` per frame (total and per stage) and ``ask`` latency.

Builds a seeded, untrained model of the tiny preset (as the tests do) or loads a checkpoint, streams synthetic
camera frames (random RGB, the synthetic world's nuScenes camera rig, the ego driving straight at 8 m/s, key frames
0.5 s apart) through :meth:`SparseOccVLAPipeline.step` after a warm-up, then asks questions about the last frame.
Prints the median and 95th percentile of the step time, the median of every stage of ``StepResult.timings_s``
and the median ``ask`` latency.

The inputs and questions are the benchmark harness's (:func:`sparseoccvla_core.bench.synthetic_frames`,
``sparseoccvla bench``), so the two time the same stream; this script adds the device, dtype and camera size.  An untrained
model rarely emits EOS, so its reasoning runs to ``max_new_tokens`` every frame: the LLM stage is the worst case
for that cap.  Run it on a quiet machine; other processes on the same cores move every number.

    python benchmarks/bench_pipeline.py [--frames 30] [--warmup 3] [--threads 2] [--device cpu] [--dtype float32]
        [--checkpoint CKPT] [--num-frames 2] [--max-new-tokens 32] [--camera-size 900 1600] [--asks 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from sparseoccvla_core.bench import DTYPES, QUESTIONS, synthetic_frames
from sparseoccvla_core.config import SparseOccVLAConfig
from sparseoccvla_core.model import SparseOccVLA
from sparseoccvla_core.pipeline import PipelineOptions, SparseOccVLAPipeline


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def build_pipeline(args: argparse.Namespace) -> SparseOccVLAPipeline:
    options = PipelineOptions(seed=args.seed)
    if args.checkpoint:
        return SparseOccVLAPipeline.from_pretrained(args.checkpoint, options, device=args.device, dtype=args.dtype)
    overrides = {"num_frames": args.num_frames}
    if args.max_new_tokens is not None:
        overrides["max_new_tokens"] = args.max_new_tokens
    torch.manual_seed(args.seed)
    model = SparseOccVLA(SparseOccVLAConfig.tiny(**overrides))
    return SparseOccVLAPipeline(model, options, device=args.device, dtype=DTYPES[args.dtype])


def run(args: argparse.Namespace) -> dict:
    """Warm-up, timed stream and questions; returns the measured numbers (seconds)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    t_build = time.perf_counter()
    pipe = build_pipeline(args)
    build_s = time.perf_counter() - t_build
    height, width = args.camera_size or tuple(pipe.cfg.image_size)
    frames = synthetic_frames(pipe.cfg, args.warmup + args.frames, args.seed, image_hw=(height, width))
    for frame in frames[: args.warmup]:
        pipe.step(frame)
    totals, stages, reasoning_chars = [], {}, []
    for frame in frames[args.warmup :]:
        t0 = time.perf_counter()
        result = pipe.step(frame)
        totals.append(time.perf_counter() - t0)
        for name, seconds in result.timings_s.items():
            if name != "total":
                stages.setdefault(name, []).append(seconds)
        reasoning_chars.append(len(result.explanation))
    asks, ask_tokens = [], []
    for i in range(args.asks):
        t0 = time.perf_counter()
        answer = pipe.ask(QUESTIONS[i % len(QUESTIONS)])
        asks.append(time.perf_counter() - t0)
        ask_tokens.append(answer.generated_tokens)
    return {
        "device": str(pipe.device),
        "dtype": str(pipe.dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "num_frames": pipe.cfg.num_frames,
        "max_new_tokens": pipe.cfg.max_new_tokens,
        "camera_size": [height, width],
        "build_s": build_s,
        "frames": len(totals),
        "step_median_s": statistics.median(totals),
        "step_p95_s": percentile(totals, 95),
        "step_min_s": min(totals),
        "stage_median_s": {k: statistics.median(v) for k, v in stages.items()},
        "reasoning_chars_median": statistics.median(reasoning_chars),
        "ask_median_s": statistics.median(asks) if asks else math.nan,
        "ask_generated_tokens_median": statistics.median(ask_tokens) if ask_tokens else 0,
    }


def print_report(r: dict) -> None:
    print(
        f"device {r['device']} {r['dtype']}, {r['threads']} threads, num_frames {r['num_frames']}, "
        f"max_new_tokens {r['max_new_tokens']}, cameras {r['camera_size'][1]}x{r['camera_size'][0]}, "
        f"model built in {r['build_s']:.1f} s"
    )
    print(
        f"step over {r['frames']} frames: median {r['step_median_s'] * 1e3:.1f} ms, "
        f"p95 {r['step_p95_s'] * 1e3:.1f} ms, min {r['step_min_s'] * 1e3:.1f} ms"
    )
    print("| stage | median ms |")
    print("|---|---:|")
    for name, seconds in r["stage_median_s"].items():
        print(f"| {name} | {seconds * 1e3:.1f} |")
    print(
        f"ask: median {r['ask_median_s'] * 1e3:.1f} ms ({r['ask_generated_tokens_median']:.0f} generated tokens); "
        f"reasoning median {r['reasoning_chars_median']:.0f} characters"
    )


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=30, help="timed frames (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed frames first (default %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu", help="torch device (default %(default)s)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--checkpoint", default=None, help="time this checkpoint instead of the seeded tiny preset")
    parser.add_argument("--num-frames", type=int, default=2, help="frames the tiny encoder sees (default %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="reasoning / answer cap (tiny: 32)")
    parser.add_argument(
        "--camera-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="camera image size (default: the network's; 900 1600 adds nuScenes-size resizing)",
    )
    parser.add_argument("--asks", type=int, default=5, help="questions asked after the stream (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.warmup < 0 or args.asks < 0:
        parser.error("--frames must be >= 1, --warmup and --asks >= 0")
    report = run(args)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
