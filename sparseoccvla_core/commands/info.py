"""``sparseoccvla info``: parameters of SparseOccVLA per part and per training stage, as a markdown table.

    sparseoccvla info --preset paper
    sparseoccvla info --preset tiny
    sparseoccvla info --config my_model.yaml

The table: :func:`sparseoccvla_core.model_info.parameter_markdown`.
"""

from __future__ import annotations

import argparse

from ..model_info import load_config, parameter_markdown


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=("paper", "tiny"), default="paper", help="model preset (default: paper)")
    parser.add_argument("--config", default=None, help="YAML model config (overrides --preset)")
    parser.add_argument(
        "--device",
        choices=("auto", "meta", "cpu"),
        default="auto",
        help="where to build the model: meta = shapes only (no tokenizer: the LLM gets llm_vocab_size rows); auto = cpu for the tiny preset, meta otherwise",
    )


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.preset, args.config)
    meta = args.device == "meta" or (args.device == "auto" and (args.config is not None or args.preset != "tiny"))
    print(
        f"SparseOccVLA parameters ({'config ' + args.config if args.config else args.preset + ' preset'}"
        f"{', built on the meta device' if meta else ''})\n"
    )
    print(parameter_markdown(cfg, meta))
    return 0
