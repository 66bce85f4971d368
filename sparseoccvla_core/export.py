"""Export a checkpoint for distribution: the same folder layout, parameters stored in half precision.

    sparseoccvla export --ckpt runs/default/s3 --out checkpoints/default --dtype float16

The copy loads with :meth:`SparseOccVLA.from_pretrained` like any checkpoint; its float16 parameters are cast to
the model's dtype (float32 on CPU) on load, so inference runs in full precision from half the bytes.  Buffers (the
planner's anchors) are kept in their own dtype.  The command prints the file size and the largest absolute
difference of the reloaded parameters from the source's, the precision the export cost.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="checkpoint folder to export")
    parser.add_argument("--out", required=True, help="output folder (created; files in it are replaced)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16", help="storage dtype of parameters")


def export_checkpoint(ckpt: str | Path, out: str | Path, dtype: torch.dtype = torch.float16) -> dict:
    """Re-save ``ckpt`` into ``out`` with parameters stored as ``dtype``.

    Returns:
        {"bytes": size of model.safetensors, "max_abs_error": largest parameter change after reloading}.
    """
    from .model import WEIGHTS_FILE, SparseOccVLA

    source = SparseOccVLA.from_pretrained(ckpt)
    source.save_pretrained(out, dtype=dtype)
    reloaded = SparseOccVLA.from_pretrained(out)
    error = 0.0
    for a, b in zip(source.parameters(), reloaded.parameters()):
        error = max(error, float((a.detach() - b.detach()).abs().max())) if a.numel() else error
    return {"bytes": (Path(out) / WEIGHTS_FILE).stat().st_size, "max_abs_error": error}


def run(args: argparse.Namespace) -> int:
    info = export_checkpoint(args.ckpt, args.out, DTYPES[args.dtype])
    print(
        f"exported {args.ckpt} -> {args.out}: model.safetensors {info['bytes'] / 2**20:.1f} MiB ({args.dtype}), "
        f"largest parameter change on reload {info['max_abs_error']:.2e}"
    )
    return 0
