"""The research command line: ``sparseoccvla <command> [options]``.

Commands are implemented next to the concept they run (one module each) and imported only when chosen, so
``sparseoccvla --help`` is instant.  Each command module provides ``add_arguments(parser)`` and ``run(args)``.

    sparseoccvla --help
    sparseoccvla synth --out data/synth --scenes 4 --seed 0
    sparseoccvla <command> --help
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# command -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("sparseoccvla_core.synthetic.cli", "write a synthetic nuScenes-format driving dataset"),
    "inspect-data": ("sparseoccvla_core.data.inspect_data", "summarise a dataset root and time loading one batch"),
    "anchors": ("sparseoccvla_core.data.anchors", "K-means planning anchors per driving command + dataset statistics"),
    "info": ("sparseoccvla_core.model_info", "parameters of the model per part and training stage (markdown)"),
    "train": ("sparseoccvla_core.training", "train one of the paper's three stages (sec. 4.2)"),
    "pretrain-llm": (
        "sparseoccvla_core.text_pretraining",
        "train a random-init LLM on the training text before stage 2",
    ),
    "eval": ("sparseoccvla_core.evaluation", "the paper's metrics of a checkpoint on a split (Tables 1, 2, 5)"),
    "export": ("sparseoccvla_core.export", "re-save a checkpoint with half-precision parameters (distribution)"),
    "bag": ("sparseoccvla_ros.replay.bag_writer", "nuScenes / synthetic scenes -> rosbag2 MCAP (+ GT topics)"),
    "eval-bag": ("sparseoccvla_ros.replay.eval_bag", "score a recording of the node's outputs against a GT bag"),
    "calibration": ("sparseoccvla_ros.replay.calibration_cmd", "camera calibration YAML from nuScenes tables or a bag"),
    "play": ("sparseoccvla_ros.replay.player", "play a rosbag2 bag in real time (raw CDR, /clock, latched /tf_static)"),
    "record": ("sparseoccvla_ros.replay.recorder", "record the driving node's outputs (or any topics) to MCAP"),
    "drive": ("sparseoccvla_ros.bringup", "pip-only bringup: player + driving node + recorder in one process"),
    "demo": ("sparseoccvla_ros.demo.command", "the main job: held-out scene -> ROS 2 replay + questions -> report"),
    "closed-loop": (
        "sparseoccvla_ros.closed_loop.command",
        "closed-loop driving in the synthetic world over ROS 2 (+ baselines) -> report",
    ),
    "bench": (
        "sparseoccvla_ros.replay.bench_node",
        "stage latency, the paper's efficiency ratios, node latency (table + JSON)",
    ),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<13} {help_}" for name, (_, help_) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="sparseoccvla",
        description="SparseOccVLA research tools (data, training, evaluation, replay).",
        epilog=f"commands:\n{lines}\n\nRun 'sparseoccvla <command> --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command", help="one of the commands below")
    return parser


def build_command_parser(command: str) -> argparse.ArgumentParser:
    """Parser of one command (imports its module)."""
    module_name, help_ = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"sparseoccvla {command}", description=help_)
    module.add_arguments(parser)
    parser.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv[:1] or ["--help"])  # prints help or a clear 'invalid choice' error
        return 2
    args = build_command_parser(argv[0]).parse_args(argv[1:])
    result = args._run(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
