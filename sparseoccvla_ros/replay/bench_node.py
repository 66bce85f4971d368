"""The node section of ``sparseoccvla bench``: input -> plan latency, sustained rate, drops and RSS over DDS.

Run through ``sparseoccvla bench --node`` (:mod:`sparseoccvla_core.bench`); each replay is a separate
``sparseoccvla drive`` process (bag player -> driving node -> recorder on one rclpy context, real DDS on
localhost), so the figures are those of the deployed bringup and its RSS is not mixed with the bench's models:

* one replay per ``rates`` entry (1x, 2x, 4x of the bag's 2 Hz key frames), recorded, then scored with
  ``eval-bag``'s bookkeeping (:func:`~sparseoccvla_ros.replay.eval_bag.evaluate_bags`): the wall-clock latency
  from the recorder's receipt of a set's last CameraInfo to its plan (p50 / p95), the node's
  ``sets_dropped_behind`` counter from its last /diagnostics, and key frames without a plan;
  the sustained key-frame rate is (plans - 1) / (last plan - first plan) in the recorder's receive time;
* one looped replay (``--loop``, no recording) of ``soak_minutes``: the process's resident set size
  (``VmRSS`` of ``/proc/<pid>/status``) when playing starts, after warm-up and at the end, sampled every
  ``sample_s``; a flat curve after warm-up means no leak.

The bag is a synthetic scene (``sparseoccvla synth`` + ``sparseoccvla bag``) unless one is given.  No rclpy import
here: the processes import it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from .topics import NODE_NAME, NODE_NAMESPACE

NS_PER_S = 1_000_000_000
MAX_RSS_SAMPLES = 200  # samples kept in the JSON (evenly thinned)


def make_synthetic_bag(work_dir: Path, frames: int, width: int, height: int, seed: int = 0) -> Path:
    """One synthetic scene of ``frames`` key frames (``width`` x ``height`` JPEG cameras, no lidar) as a GT bag.

    Raises:
        RuntimeError: ``synth`` or ``bag`` failed.
    """
    from sparseoccvla_core.cli import main as cli_main

    world, bag = work_dir / "world", work_dir / "gt"
    synth = ["synth", "--out", str(world), "--scenes", "1", "--frames", str(frames), "--width", str(width)]
    synth += ["--height", str(height), "--no-lidar", "--seed", str(seed), "--workers", "1"]
    if cli_main(synth) != 0:
        raise RuntimeError(f"sparseoccvla {' '.join(synth)} failed")
    if cli_main(["bag", "--data", str(world), "--all", "--out", str(bag), "--no-progress"]) != 0:
        raise RuntimeError(f"sparseoccvla bag --data {world} failed")
    return bag


def calibration_file(bag: Path) -> Optional[Path]:
    """The calibration YAML ``sparseoccvla bag`` writes inside the bag folder (None if absent)."""
    path = bag / "calibration.yaml"
    return path if path.is_file() else None


def drive_command(
    bag: Path, checkpoint: Path, rate: float, record: Optional[Path] = None, loop: bool = False
) -> list[str]:
    """``sparseoccvla drive`` as an argv list (this interpreter, ``-m sparseoccvla_core.cli``)."""
    cmd = [sys.executable, "-m", "sparseoccvla_core.cli", "drive", "--bag", str(bag), "--checkpoint", str(checkpoint)]
    cmd += ["--rate", f"{rate:g}", "--linger", "2"]
    cal = calibration_file(bag)
    if cal is not None:
        cmd += ["--calibration-file", str(cal)]
    if record is not None:
        cmd += ["--record", str(record)]
    if loop:
        cmd += ["--loop"]  # progress bar on: its first line marks the start of playing
    else:
        cmd += ["--quiet"]
    return cmd


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)  # the node's torch threads
    return env


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (``VmRSS``), bytes.

    Raises:
        OSError: no such process, or no ``/proc`` (Linux only).
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no VmRSS in /proc/{pid}/status")


def replay_once(bag: Path, checkpoint: Path, rate: float, out: Path, threads: int, timeout_s: float) -> dict[str, Any]:
    """One recorded replay at ``rate``, scored: latency, sustained rate, dropped sets (module docstring)."""
    from .eval_bag import evaluate_bags, read_gt_bag, read_pred_bag

    node = f"{NODE_NAMESPACE.rstrip('/')}/{NODE_NAME}"
    proc = subprocess.run(
        drive_command(bag, checkpoint, rate, record=out),
        env=_env(threads),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    entry: dict[str, Any] = {"rate": rate}
    if proc.returncode != 0:
        entry["error"] = f"drive exited {proc.returncode}: {proc.stderr[-2000:]}"
        return entry
    replay = evaluate_bags(bag, out, node=node).extra["replay"]
    pred = read_pred_bag(out, node)
    logs = sorted(o.log_ns for o in pred.outputs["plan"].values())
    span = (logs[-1] - logs[0]) / NS_PER_S if len(logs) >= 2 else 0.0
    stamps = sorted(read_gt_bag(bag).frames)
    bag_span = (stamps[-1] - stamps[0]) / NS_PER_S if len(stamps) >= 2 else 0.0
    drops = replay.get("node_drop_counters") or {}
    latency = replay["latency"]
    entry.update(
        key_frames=replay["key_frames"],
        offered_key_frames_per_s=(len(stamps) - 1) / bag_span * rate if bag_span > 0 else 0.0,
        sustained_plans_per_s=(len(logs) - 1) / span if span > 0 else None,
        plans=len(logs),
        plan_latency=latency.get("plan"),
        latency_clock=latency["clock"],
        dropped_sets=int(drops["sets_dropped_behind"]) if "sets_dropped_behind" in drops else None,
        node_drop_counters=drops,
        missed_plans=replay["missed"]["plan"],
    )
    return entry


def _thin(samples: Sequence[tuple[float, int]], keep: int) -> list[tuple[float, int]]:
    if len(samples) <= keep:
        return list(samples)
    step = (len(samples) - 1) / (keep - 1)
    return [samples[round(i * step)] for i in range(keep)]


def soak(
    bag: Path,
    checkpoint: Path,
    minutes: float,
    threads: int,
    sample_s: float,
    log_path: Path,
    startup_timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Looped replay for ``minutes`` after playing starts; RSS of the bringup process sampled every ``sample_s``.

    Returns:
        ``{"minutes", "rss_start_mib", "rss_after_warmup_mib", "rss_end_mib", "rss_max_mib", "growth_mib",
        "samples": [(s, bytes)], "plans_published", "exit_code"}`` or ``{"error": ...}``.
    """
    mib = 1.0 / 2**20
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            drive_command(bag, checkpoint, 1.0, loop=True), stdout=log, stderr=subprocess.STDOUT, env=_env(threads)
        )
    try:
        deadline = time.monotonic() + startup_timeout_s
        while b"play " not in log_path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                return {
                    "error": f"the looped replay did not start (exit {proc.poll()}): "
                    + log_path.read_text(errors="replace")[-2000:]
                }
            time.sleep(0.1)
        t0 = time.monotonic()
        samples = [(0.0, rss_bytes(proc.pid))]
        duration = minutes * 60.0
        while (elapsed := time.monotonic() - t0) < duration:
            time.sleep(min(sample_s, max(0.0, duration - elapsed)))
            if proc.poll() is not None:
                return {"error": f"the looped replay exited early ({proc.returncode})"}
            samples.append((time.monotonic() - t0, rss_bytes(proc.pid)))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # the bringup's Ctrl-C path: stop the player, close, exit
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    warm_at = min(30.0, 0.25 * duration)
    after_warmup = next((rss for t, rss in samples if t >= warm_at), samples[-1][1])
    text = log_path.read_text(errors="replace")
    published = re.findall(r"(\d+) published", text)
    return {
        "minutes": minutes,
        "sample_s": sample_s,
        "warmup_s": warm_at,
        "rss_start_mib": samples[0][1] * mib,
        "rss_after_warmup_mib": after_warmup * mib,
        "rss_end_mib": samples[-1][1] * mib,
        "rss_max_mib": max(r for _, r in samples) * mib,
        "growth_after_warmup_mib": (samples[-1][1] - after_warmup) * mib,
        "samples": [[round(t, 2), r] for t, r in _thin(samples, MAX_RSS_SAMPLES)],
        "plans_published": int(published[-1]) if published else None,
        "exit_code": proc.returncode,
    }


def node_section(
    checkpoint: Path,
    work_dir: Path,
    rates: Sequence[float] = (1.0, 2.0, 4.0),
    soak_minutes: float = 10.0,
    bag: Optional[str | Path] = None,
    frames: int = 20,
    image_wh: Sequence[int] = (1600, 900),
    threads: int = 2,
    sample_s: float = 5.0,
    replay_timeout_s: float = 1800.0,
) -> dict[str, Any]:
    """Replays at every rate, then the soak (module docstring).

    Args:
        checkpoint: checkpoint folder the node loads.
        work_dir: scratch folder (synthetic world, bags, recordings, logs).
        rates: replay speeds.
        soak_minutes: looped replay duration for the RSS, minutes.
        bag: GT bag to replay (None: a synthetic scene of ``frames`` key frames at ``image_wh`` (W, H)).
        threads: the node's torch threads (``OMP_NUM_THREADS`` of its process).
        sample_s: RSS sampling period, s.
        replay_timeout_s: limit of one recorded replay, s.
    Returns:
        ``{"bag", "key_frames", "threads", "rates": [...], "soak": {...}}``.
    Raises:
        ValueError: a rate or duration that is not positive.
    """
    if any(r <= 0 for r in rates) or soak_minutes <= 0 or sample_s <= 0:
        raise ValueError("node rates, --soak-minutes and --rss-sample-s must be > 0")
    work_dir.mkdir(parents=True, exist_ok=True)
    if bag is None:
        bag_path = make_synthetic_bag(work_dir, frames, int(image_wh[0]), int(image_wh[1]))
        source = f"synthetic scene, {frames} key frames, {image_wh[0]}x{image_wh[1]} cameras"
    else:
        bag_path, source = Path(bag), str(bag)
    runs = []
    for rate in rates:
        print(f"[bench] node: replay at {rate:g}x ...", file=sys.stderr, flush=True)
        runs.append(replay_once(bag_path, checkpoint, rate, work_dir / f"rec_{rate:g}x", threads, replay_timeout_s))
    print(f"[bench] node: {soak_minutes:g}-minute looped replay (RSS) ...", file=sys.stderr, flush=True)
    soak_result = soak(bag_path, checkpoint, soak_minutes, threads, sample_s, work_dir / "soak.log")
    key_frames = next((r["key_frames"] for r in runs if "key_frames" in r), None)
    return {"bag": source, "key_frames": key_frames, "threads": threads, "rates": runs, "soak": soak_result}


# ---------------------------------------------------------------------- the `sparseoccvla bench` command
def bench_node_section(args, model) -> dict[str, Any]:
    """Section 3 of :func:`sparseoccvla_core.bench.run_bench`: :func:`node_section` with the command's options
    (``args``: :class:`sparseoccvla_core.bench.BenchOptions`; skipped with the reason when rclpy is missing)."""
    import tempfile

    try:
        import rclpy  # noqa: F401 - only probing that the ROS 2 Python client is installed
    except ImportError as exc:
        return {"skipped": f"rclpy is not importable ({exc}); source a ROS 2 install or pass --no-node"}
    from sparseoccvla_core.bench import DEFAULT_CHECKPOINT

    with tempfile.TemporaryDirectory(prefix="sparseoccvla-bench-") as tmp:
        ckpt = args.ckpt if args.preset is None else None
        if ckpt is None and args.preset is not None:
            ckpt = Path(tmp) / "checkpoint"
            model.save_pretrained(ckpt)
        elif ckpt is None:
            ckpt = DEFAULT_CHECKPOINT
        return node_section(
            checkpoint=Path(ckpt),
            work_dir=Path(tmp),
            rates=args.node_rates,
            soak_minutes=args.soak_minutes,
            bag=args.node_bag,
            frames=args.node_frames,
            image_wh=args.node_image_size,
            threads=max(args.threads),
            sample_s=args.rss_sample_s,
        )


def add_arguments(parser) -> None:
    """``sparseoccvla bench``'s options (:func:`sparseoccvla_core.commands.bench.add_arguments`)."""
    from sparseoccvla_core.commands import bench

    bench.add_arguments(parser)


def run(args) -> int:
    """``sparseoccvla bench``: the model sections of :mod:`sparseoccvla_core.bench` plus this module's node section."""
    from sparseoccvla_core.commands import bench

    return bench.run(args, bench_node_section)
