"""Export a checkpoint for distribution (``sparseoccvla export``): the same layout, half-precision parameters.

    sparseoccvla export --ckpt runs/default/s3 --out checkpoints/default --dtype float16

The copy loads with :meth:`SparseOccVLA.from_pretrained` like any checkpoint; its float16 parameters are cast to
the model's dtype (float32 on CPU) on load, so inference runs in full precision from half the bytes.  Buffers (the
planner's anchors) are kept in their own dtype.  The command prints the file size and the largest absolute
difference of the reloaded parameters from the source's, the precision the export cost.
"""

from __future__ import annotations

from pathlib import Path

import torch

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


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
