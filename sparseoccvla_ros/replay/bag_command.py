"""``sparseoccvla bag``: nuScenes / synthetic scenes -> a rosbag2 MCAP bag (+ GT topics).

    sparseoccvla bag --data /data/nuscenes --scene scene-0103 --out bags/scene-0103
    sparseoccvla bag --data data/synth --all --out bags/synth            # every scene, in time order
    sparseoccvla bag --data /data/nuscenes --scene scene-0103 --out bags/scene-0103-12hz --sweeps

What the bag holds: :mod:`sparseoccvla_ros.replay.bag_writer`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterable, Optional

from .bag_writer import write_bag


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="nuScenes dataroot or synthetic world (sparseoccvla synth)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--scene", nargs="+", metavar="NAME", help="scene name(s), e.g. scene-0103")
    which.add_argument("--all", action="store_true", help="every scene of the tables (time order, one bag)")
    parser.add_argument(
        "--out", required=True, help="bag folder to create (rosbag2: <out>/<name>.mcap + metadata.yaml)"
    )
    parser.add_argument("--sweeps", action="store_true", help="also write the non-key camera frames (~12 Hz)")
    parser.add_argument("--version", default=None, help="nuScenes version folder (default: the only one)")
    parser.add_argument(
        "--metadata-version",
        type=int,
        choices=(8, 9),
        default=9,
        help="rosbag2 metadata version (default %(default)s: Jazzy and newer; 8 for older readers)",
    )
    parser.add_argument(
        "--compression", choices=("zstd", "none"), default="zstd", help="MCAP chunk compression (default %(default)s)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bag folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        summary = write_bag(
            args.data,
            args.out,
            scenes=None if args.all else args.scene,
            sweeps=args.sweeps,
            version=args.version,
            metadata_version=args.metadata_version,
            compression=args.compression,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"sparseoccvla bag: error: {err}", file=sys.stderr)
        return 2
    mb = summary.bytes / 1e6
    print(
        f"[bag] wrote {summary.messages} messages ({summary.key_frames} key frames of {len(summary.scenes)} "
        f"scene(s)) to {summary.path} in {summary.seconds:.1f} s: {mb:.1f} MB, "
        f"{mb / max(summary.seconds, 1e-9):.1f} MB/s, {summary.key_frames / max(summary.seconds, 1e-9):.1f} key frames/s"
    )
    missing = sum(s.missing_label_files for s in summary.scenes)
    if missing:
        print(f"[bag] {missing} key frame(s) have no Occ3D labels: no /gt/occupancy for them", file=sys.stderr)
    for path in summary.calibration_files:
        print(f"[bag] calibration: {path}")
    return 0


def main(argv: Optional[Iterable[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="sparseoccvla bag", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(None if argv is None else list(argv)))


if __name__ == "__main__":
    sys.exit(main())
