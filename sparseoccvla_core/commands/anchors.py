"""``sparseoccvla anchors``: K-means planning anchors per driving command + dataset statistics.

    sparseoccvla anchors --data DIR [--split train] --out anchors.npz [--per-command 6] [--seed 0]

What is written: :mod:`sparseoccvla_core.data.anchors`.
"""

from __future__ import annotations

import argparse

from ..batch import COMMANDS
from ..data.anchors import collect_trajectories, compute_anchors, save_anchors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset root (nuScenes dataroot or synthetic world)")
    parser.add_argument("--version", default=None, help="nuScenes version folder (default: the only one)")
    parser.add_argument("--split", default="train", help="split to cluster (default: train)")
    parser.add_argument("--out", required=True, help="output file, .npz or .safetensors (a .json is written beside)")
    parser.add_argument("--per-command", type=int, default=6, help="anchors per driving command (default 6 -> 18)")
    parser.add_argument("--horizon", type=int, default=6, help="waypoints per trajectory at 0.5 s (default 6)")
    parser.add_argument(
        "--dt",
        type=float,
        default=0.5,
        help="seconds between waypoints, for the kinematic arcs of a command with too few trajectories",
    )
    parser.add_argument("--seed", type=int, default=0, help="k-means seed (default 0)")
    parser.add_argument("--mirror", action="store_true", help="add y-mirrored trajectories (left <-> right)")


def run(args: argparse.Namespace) -> int:
    trajs = collect_trajectories(args.data, args.split, args.horizon, args.version)
    anchor_set = compute_anchors(trajs, args.per_command, args.seed, args.mirror, dt=args.dt)
    out, json_path = save_anchors(anchor_set, args.out)
    counts = dict(zip(COMMANDS, anchor_set.stats["counts"].tolist()))
    print(
        f"{anchor_set.anchors_flat.shape[0]} anchors from {anchor_set.info['num_complete_trajectories']} complete "
        f"trajectories (per command {counts}) -> {out} and {json_path}"
    )
    for name, why in anchor_set.info["fallback"].items():
        print(f"note: command {name}: {why}")
    return 0
