"""``sparseoccvla synth``: write a synthetic nuScenes-format driving dataset.

    sparseoccvla synth --out data/synth --scenes 4 --seed 0
    sparseoccvla synth --out /tmp/tiny --scenes 1 --frames 6 --width 352 --height 198   # seconds, for tests

The result loads with ``nuscenes.nuscenes.NuScenes(version="v1.0-synth", dataroot=OUT)`` and with the project's
loaders (same layout as real nuScenes + Occ3D + OmniDrive + nuScenes-QA); see docs/data.md §4.
"""

from __future__ import annotations

import argparse
import time

from ..synthetic.config import LAYOUTS, SynthConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SynthConfig()
    parser.add_argument("--out", required=True, help="dataset root to write (the devkit dataroot)")
    parser.add_argument("--scenes", type=int, default=d.num_scenes, help="number of scenes (default %(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed, help="master seed (default %(default)s)")
    parser.add_argument(
        "--frames", type=int, default=d.num_frames, help="2 Hz key frames per scene (default %(default)s = 20 s)"
    )
    parser.add_argument("--width", type=int, default=d.width, help="image width in pixels (default %(default)s)")
    parser.add_argument("--height", type=int, default=d.height, help="image height in pixels (default %(default)s)")
    parser.add_argument(
        "--layouts",
        nargs="+",
        choices=LAYOUTS,
        default=list(d.layouts),
        help="road layouts cycled over the scenes (default: all)",
    )
    parser.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality, help="JPEG quality (default %(default)s)")
    parser.add_argument("--version", default=d.version, help="nuScenes version folder name (default %(default)s)")
    parser.add_argument("--no-lidar", action="store_true", help="do not write LIDAR_TOP sweeps")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default min(2, cpus)); output bytes do not depend on it",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset previously written to --out")


def run(args: argparse.Namespace) -> int:
    from ..synthetic.generate import default_workers, generate_dataset

    try:
        cfg = SynthConfig(
            num_scenes=args.scenes,
            seed=args.seed,
            num_frames=args.frames,
            width=args.width,
            height=args.height,
            jpeg_quality=args.jpeg_quality,
            version=args.version,
            layouts=tuple(args.layouts),
            write_lidar=not args.no_lidar,
        )
    except ValueError as err:
        raise SystemExit(f"sparseoccvla synth: error: {err}") from None
    workers = default_workers() if args.workers is None else max(1, args.workers)
    start = time.perf_counter()

    def progress(done: int, total: int, name: str) -> None:
        elapsed = time.perf_counter() - start
        print(f"[synth] {name} done ({done}/{total}, {elapsed:.1f} s)", flush=True)

    try:
        info = generate_dataset(cfg, args.out, workers=workers, overwrite=args.overwrite, progress=progress)
    except FileExistsError as err:
        raise SystemExit(f"sparseoccvla synth: error: {err}") from None
    elapsed = time.perf_counter() - start
    print(
        f"[synth] wrote {len(info['scenes'])} scenes ({info['key_frames']} key frames, train {len(info['train'])}, "
        f"val {len(info['val'])}) to {args.out} in {elapsed:.1f} s = {info['key_frames'] / elapsed:.2f} key frames/s"
    )
    return 0
