"""``sparseoccvla bench``: stage latency, the paper's efficiency ratios, node latency (table + JSON).

    sparseoccvla bench [--ckpt checkpoints/default | --preset tiny] [--threads 1 2] [--repeats 20] [--warmup 3]
                       [--node | --no-node] [--soak-minutes 10] [--json outputs/bench/<timestamp>.json]

The sections: :mod:`sparseoccvla_core.bench`.  The ROS package registers the command
(``sparseoccvla_ros.replay.bench_node``) and passes the node section (section 3) to :func:`run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Optional

from ..bench import DEFAULT_CHECKPOINT, BenchOptions, NodeSection, format_report, run_bench


def default_json_path() -> Path:
    """outputs/bench/<UTC timestamp>.json (relative to the working directory)."""
    return Path("outputs") / "bench" / (_dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + ".json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--ckpt", default=None, help=f"checkpoint folder (default {DEFAULT_CHECKPOINT})")
    which.add_argument("--preset", choices=("tiny", "paper"), default=None, help="random weights of a preset instead")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU thread counts (default 1 2)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per measurement (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default %(default)s)")
    parser.add_argument("--stream-frames", type=int, default=8, help="F of ratio (b) (paper: %(default)s)")
    parser.add_argument(
        "--stream-paper-repeats",
        type=int,
        default=3,
        help="timed runs of ratio (b) at the paper's ResNet-50 backbone (0 skips it; default %(default)s)",
    )
    parser.add_argument(
        "--stream-paper-image-size",
        type=int,
        nargs=2,
        default=[256, 704],
        metavar=("H", "W"),
        help="input of that backbone (paper: 256 704)",
    )
    parser.add_argument("--ask-tokens", type=int, default=None, help="answer cap of ratio (c) (default the model's)")
    parser.add_argument("--prefill-layers", type=int, default=2, help="LLM layers of ratio (a) on CPU (default 2)")
    parser.add_argument("--prefill-width", type=int, default=4096, help="LLM width of ratio (a) (paper: 4096)")
    parser.add_argument("--prefill-heads", type=int, default=32, help="LLM heads of ratio (a) (paper: 32)")
    parser.add_argument("--prefill-mlp", type=int, default=11008, help="LLM MLP width of ratio (a) (paper: 11008)")
    parser.add_argument("--prefill-repeats", type=int, default=5, help="timed prefills per length (default 5)")
    parser.add_argument(
        "--node", action=argparse.BooleanOptionalAction, default=True, help="run the ROS node section (default on)"
    )
    parser.add_argument("--node-rates", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="replay speeds")
    parser.add_argument("--node-bag", default=None, help="GT bag to replay (default: a synthetic scene written here)")
    parser.add_argument("--node-frames", type=int, default=20, help="key frames of the synthetic bag (default 20)")
    parser.add_argument(
        "--node-image-size", type=int, nargs=2, default=[1600, 900], metavar=("W", "H"), help="synthetic camera size"
    )
    parser.add_argument("--soak-minutes", type=float, default=10.0, help="looped replay for RSS (default 10)")
    parser.add_argument("--rss-sample-s", type=float, default=5.0, help="RSS sampling period of the soak, s")
    parser.add_argument(
        "--cuda", action=argparse.BooleanOptionalAction, default=True, help="the CUDA section when a GPU is present"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="output JSON (default outputs/bench/<timestamp>.json)")


def options_from(args: argparse.Namespace) -> BenchOptions:
    """The parsed flags as :class:`BenchOptions` (lists stay lists, as the report records them)."""
    return BenchOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(BenchOptions)})


def run(args: argparse.Namespace, node_section: Optional[NodeSection] = None) -> int:
    """The command (``sparseoccvla bench`` runs it through the ROS package's ``bench_node``, which passes the node
    section; the core never imports ROS)."""
    if args.preset is None and args.ckpt is None and not DEFAULT_CHECKPOINT.is_dir():
        print(
            f"sparseoccvla bench: error: no checkpoint at {DEFAULT_CHECKPOINT}: train one, pass --ckpt DIR, "
            "or time random weights with --preset tiny",
            file=sys.stderr,
        )
        return 2
    try:
        report = run_bench(options_from(args), node_section)
    except (FileNotFoundError, ValueError) as exc:
        print(f"sparseoccvla bench: error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    path = Path(args.json) if args.json else default_json_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"[bench] wrote {path}")
    return 0
