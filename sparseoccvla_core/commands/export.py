"""``sparseoccvla export``: re-save a checkpoint with half-precision parameters (distribution).

    sparseoccvla export --ckpt runs/default/s3 --out checkpoints/default --dtype float16 --overwrite

What the copy is: :mod:`sparseoccvla_core.export`.
"""

from __future__ import annotations

import argparse

from ..export import DTYPES, export_checkpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="checkpoint folder to export")
    parser.add_argument("--out", required=True, help="output folder (a new path or an empty folder, see --overwrite)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the checkpoint files of an existing --out (e.g. checkpoints/default)",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16", help="storage dtype of parameters")


def run(args: argparse.Namespace) -> int:
    info = export_checkpoint(args.ckpt, args.out, DTYPES[args.dtype])
    print(
        f"exported {args.ckpt} -> {args.out}: model.safetensors {info['bytes'] / 2**20:.1f} MiB ({args.dtype}), "
        f"largest parameter change on reload {info['max_abs_error']:.2e}"
    )
    return 0
