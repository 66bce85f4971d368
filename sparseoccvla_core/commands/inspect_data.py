"""``sparseoccvla inspect-data``: what a dataset root holds and what one batch of it looks like.

    sparseoccvla inspect-data --data DIR [--split train] [--items 8] [--preset tiny|paper] [--config FILE]

Prints the counts of :func:`sparseoccvla_core.data.inspect_data.summarize`, the shapes of one collated batch and
the loading speed (items / s, cold and warm cache).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import fields

import torch

from ..config import SparseOccVLAConfig
from ..data.dataset import DatasetOptions, DrivingDataset, collate
from ..data.inspect_data import summarize
from ..data.layout import resolve_layout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset root")
    parser.add_argument("--version", default=None, help="nuScenes version folder (default: the only one)")
    parser.add_argument("--split", default="train", help="split (default: train)")
    parser.add_argument("--items", type=int, default=8, help="items to load for the shape / speed check (0 = none)")
    parser.add_argument("--preset", choices=("tiny", "paper"), default="tiny", help="model config preset")
    parser.add_argument("--config", default=None, help="model config YAML (overrides --preset)")
    parser.add_argument("--past", choices=("keyframes", "sweeps"), default="keyframes", help="past-frame source")


def run(args: argparse.Namespace) -> int:
    if args.config:
        cfg = SparseOccVLAConfig.from_yaml(args.config)
    else:
        cfg = SparseOccVLAConfig.tiny() if args.preset == "tiny" else SparseOccVLAConfig.paper()
    layout = resolve_layout(args.data, args.version)
    opts = DatasetOptions(
        version=layout.version, past=args.past, qa_choice="first", load_occupancy=layout.occ3d_root.is_dir()
    )
    t0 = time.perf_counter()
    ds = DrivingDataset(args.data, args.split, cfg, None, opts)
    print(f"indexed in {time.perf_counter() - t0:.2f} s")
    for key, value in summarize(ds).items():
        print(f"{key:>18}: {value}")
    n = min(args.items, len(ds))
    if n == 0:
        return 0
    for label in ("cold", "warm"):
        t0 = time.perf_counter()
        items = [ds[i] for i in range(n)]
        dt = time.perf_counter() - t0
        print(f"{label} cache: {n / dt:.1f} items/s ({1000 * dt / n:.1f} ms per item)")
    batch = collate(items)
    batch.validate()
    print("batch of", n)
    for f in fields(batch):
        value = getattr(batch, f.name)
        if isinstance(value, torch.Tensor):
            print(f"  {f.name:<22} {tuple(value.shape)} {str(value.dtype).replace('torch.', '')}")
    return 0
