"""``sparseoccvla closed-loop``: the driving node drives in the synthetic world over ROS 2, then the baselines.

    sparseoccvla closed-loop                                   # checkpoints/default, 6 episodes, seed 2000
    sparseoccvla closed-loop --episodes 12 --seed 7 --out outputs/cl7
    sparseoccvla closed-loop --mode realtime                   # late plans cost: the ego keeps the previous one
    sparseoccvla closed-loop --no-model                        # the baselines only (no ROS, no rendering)

Stages (progress lines ``[closed-loop <elapsed> s] <stage>: ...``):

1. **bringup** (pip-only: one process, real DDS): ``sim_node`` (:mod:`.sim_node`), ``driving_node`` (the
   package's ``config/driving.yaml``, sim time, the checkpoint, a calibration YAML written from the synthetic
   world's nuScenes calibration) and a recorder (:class:`~sparseoccvla_ros.replay.recorder.BagRecorder`: the
   sensors, ``/gt/...``, ``/sim/events``, the node's outputs and ``/diagnostics`` -> ``<out>/recording``, MCAP), each
   node on its own single-threaded executor thread, as ``sparseoccvla drive`` does;
2. **model**: every episode (``--seed``, ``--episodes``, ``--kinds``) driven by the node's plans (lockstep by
   default); one line per key frame, the real-time factor per episode;
3. **baselines**: constant velocity, the mean training trajectory and the privileged rule-based expert on the
   same episodes, in-process (they read no images, so nothing is rendered for them);
4. **report**: ``<out>/closed_loop.html``, ``closed_loop.md``, ``metrics.json``, ``images/`` (top-down strips).

Exit status 0; 2 for bad input (one line); 1 when a stage fails (the message says which); 130 after Ctrl-C, which stops the episode in
progress, finalizes the recording and still writes the report of what was driven (the cut episode marked).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from ..replay import topics

NODE_PATH = f"{topics.NODE_NAMESPACE}/{topics.NODE_NAME}"
DEFAULT_TIMEOUT = {"lockstep": 10.0, "realtime": 1.5}


class ClosedLoopError(RuntimeError):
    """A stage failed; the message says which and what to do."""


class Progress:
    def __init__(self, quiet: bool = False) -> None:
        self.t0 = time.perf_counter()
        self.quiet = quiet

    def __call__(self, stage: str, text: str, always: bool = False) -> None:
        if not self.quiet or always:
            print(f"[closed-loop {time.perf_counter() - self.t0:6.1f} s] {stage}: {text}", file=sys.stderr, flush=True)


def write_calibration(path: Path, width: int, height: int) -> Path:
    """The synthetic world's cameras (nuScenes calibration, intrinsics at ``width`` x ``height``) as the node's YAML."""
    from sparseoccvla_core.calibration_file import CameraCalibration, save_calibration
    from sparseoccvla_core.synthetic.calibration import camera_calibrations

    cams = {
        c.channel: CameraCalibration(
            c.channel, c.sensor2ego, c.channel, c.scaled_intrinsics(width, height), (width, height)
        )
        for c in camera_calibrations()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_calibration(path, cams, topics.EGO_FRAME)


def sim_input_remaps(node_path: str = NODE_PATH) -> list[tuple[str, str]]:
    """Remaps of sim_node's inputs onto the driving node's outputs (this bringup and launch/closed_loop.launch.py)."""
    return [("~/input/plan", f"{node_path}/output/plan"), ("~/input/occupancy", f"{node_path}/output/occupancy")]


def sim_remaps(node_path: str = NODE_PATH) -> list[str]:
    """:func:`sim_input_remaps` as ``--ros-args`` (``-r src:=dst`` pairs)."""
    return [arg for src, dst in sim_input_remaps(node_path) for arg in ("-r", f"{src}:={dst}")]


def record_selection(node_path: str = NODE_PATH) -> list[str]:
    sel = [topics.image_topic(c) for c in topics.CAMERA_NAMES] + [
        topics.camera_info_topic(c) for c in topics.CAMERA_NAMES
    ]
    return sel + [
        topics.ODOM_TOPIC,
        topics.TF_TOPIC,
        topics.TF_STATIC_TOPIC,
        "/gt/",
        "/sim/",
        f"{node_path}/output/",
        "/diagnostics",
    ]


class ClosedLoopBringup:
    """sim_node + driving_node + recorder on one rclpy context (module docstring)."""

    def __init__(
        self,
        checkpoint: Path,
        out: Path,
        mode: str = "lockstep",
        plan_timeout_s: float = 10.0,
        width: int = 480,
        height: int = 270,
        rate: float = 1.0,
        params_file: Optional[str] = None,
        parameters: Optional[list[str]] = None,
        record: bool = True,
    ) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter import Parameter

        from ..bringup import default_params_file, node_cli_args
        from ..driving_node import DrivingNode
        from ..replay.recorder import BagRecorder
        from .sim_node import SimNode

        self.context = rclpy.context.Context()
        rclpy.init(context=self.context)
        self.node = self.sim = self.recorder = None
        self._recorder_node = None
        self.executors: list[Any] = []
        self._threads: list[threading.Thread] = []
        try:
            calibration = write_calibration(out / "calibration.yaml", width, height)
            sim_time = [Parameter("use_sim_time", value=True)]
            extra = [f"checkpoint:={checkpoint}", f"calibration_file:={calibration}", *(parameters or [])]
            self.node = DrivingNode(
                context=self.context,
                namespace=topics.NODE_NAMESPACE,
                cli_args=node_cli_args(params_file or default_params_file(), extra=extra),
                parameter_overrides=sim_time,
            )
            self.sim = SimNode(mode, plan_timeout_s, width, height, rate=rate, context=self.context,
                               cli_args=["--ros-args", *sim_remaps()])  # fmt: skip
            if record:
                self._recorder_node = rclpy.create_node(
                    "bag_recorder", context=self.context, parameter_overrides=sim_time
                )
                self.recorder = BagRecorder(self._recorder_node, out / "recording", record_selection())
            for n in (self.node, self.sim, self._recorder_node):
                if n is not None:
                    ex = SingleThreadedExecutor(context=self.context)
                    ex.add_node(n)
                    self.executors.append(ex)
        except BaseException:
            self.close()
            raise
        for i, ex in enumerate(self.executors):
            t = threading.Thread(target=self._spin, args=(ex,), name=f"closed-loop-executor-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def _spin(self, executor: Any) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            executor.spin()
        except (ExternalShutdownException, KeyboardInterrupt):
            pass
        except Exception:  # noqa: BLE001 - the context torn down under the executor at Ctrl-C
            if self.context.ok():
                raise

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Until the model is loaded, the node subscribes the cameras and the recorder has every sensor topic."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.sim.stop_event.is_set():
            level, text = self.node.model_status
            if level >= 2:
                raise ClosedLoopError(f"the driving node could not load the model: {text}")
            if self.node.pipeline is not None:
                break
            self.sim.publish_clock(self._first_clock)
            time.sleep(0.05)
        if self.sim.stop_event.is_set():
            return
        if not self.sim.wait_for_driver(max(1.0, deadline - time.monotonic()), clock_ns=self._first_clock):
            if self.sim.stop_event.is_set():
                return
            raise ClosedLoopError("the driving node did not subscribe the camera topics in time")
        if self.recorder is not None:
            want = {topics.image_topic(c) for c in topics.CAMERA_NAMES} | {f"{NODE_PATH}/output/plan", "/sim/events"}
            end = time.monotonic() + 10.0
            while time.monotonic() < end and not want <= set(self.recorder.counts):
                time.sleep(0.05)

    _first_clock = 0

    def drain(self, linger_s: float = 0.5, max_s: float = 5.0) -> None:
        """Before closing: until the node is idle, the recorder has every /sim/events message and nothing new came
        for ``linger_s`` (at most ``max_s``), so the recording ends with the last frame's outputs and events."""
        if self.recorder is None:
            return
        end = time.monotonic() + max_s
        last, since = -1, time.monotonic()
        while time.monotonic() < end:
            total = self.recorder.total
            if total != last or not self.node.idle:
                last, since = total, time.monotonic()
            elif (
                time.monotonic() - since >= linger_s
                and self.recorder.count_under("/sim/events") >= self.sim.events_published
            ):
                return
            time.sleep(0.05)

    def stop(self) -> None:
        if self.sim is not None:
            self.sim.stop_event.set()

    def close(self) -> None:
        import rclpy

        if self.recorder is not None:
            self.recorder.close()
        for ex in self.executors:
            ex.shutdown(timeout_sec=5.0)
        self.executors = []
        for n in (self.sim, self.node, self._recorder_node):
            if n is not None:
                try:
                    n.destroy_node()
                except Exception:  # noqa: BLE001 - already destroyed
                    pass
        self.sim = self.node = self._recorder_node = None
        rclpy.try_shutdown(context=self.context)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=5.0)


def _frame_progress(progress: Progress, name: str):
    def on_frame(episode, k: int, status: str) -> None:
        progress(
            "model",
            f"{name} key frame {k + 1}/{episode.num_frames}  t {episode.t:5.1f} s  v {episode.state.v:4.1f} m/s  plan {status}",
        )

    return on_frame


def run_model(args, specs, checkpoint: Path, out: Path, progress: Progress, stop_hook) -> tuple[list, dict]:
    """Bring up the nodes, drive every episode, close (recording finalized); returns (results, info)."""
    from .sim_node import episode_stamp_ns

    progress("bringup", f"driving_node ({checkpoint}) + sim_node ({args.mode}) + recorder -> {out / 'recording'}")
    bringup = ClosedLoopBringup(
        checkpoint,
        out,
        args.mode,
        args.plan_timeout,
        args.width,
        args.height,
        args.rate,
        args.params_file,
        args.param,
        record=not args.no_record,
    )
    stop_hook(bringup.stop)
    results, info = [], {}
    try:
        bringup._first_clock = episode_stamp_ns(specs[0], 0.0) - 1_000_000_000
        t0 = time.perf_counter()
        bringup.wait_ready()
        progress("bringup", f"model loaded and subscribed in {time.perf_counter() - t0:.1f} s")
        sim_s = wall_s = 0.0
        for spec in specs:
            if bringup.sim.stop_event.is_set():
                break
            progress("model", f"episode {spec.name} ({spec.limit_s:g} s)", always=True)
            res = bringup.sim.run_episode(spec, on_frame=_frame_progress(progress, spec.name))
            if res is None:
                break
            res.interrupted = bringup.sim.stop_event.is_set()
            results.append(res)
            sim_s += float(res.log.t[-1])
            wall_s += res.wall_s
            m = res.metrics
            progress("model", f"{spec.name}: DS {m['driving_score']:.2f}, RC {m['route_completion']:.2f}, at-fault "
                     f"collisions {m['collisions_at_fault']}, red lights {m['red_light_violations']}, no/bad plans "
                     f"{m['no_plan_frames']}/{m['invalid_plan_frames']}; real-time factor {res.real_time_factor:.2f}"
                     + (f"; plans took over {m['plan_delay_s']['mean']:.2f} s (sim) after their key frame on average, "
                        f"{m['plan_delay_s']['max']:.2f} s at most" if "plan_delay_s" in m else "")
                     + (" (interrupted)" if res.interrupted else ""), always=True)  # fmt: skip
        info["real_time_factor"] = round(sim_s / wall_s, 3) if wall_s > 0 else None
        info["simulated_s"], info["wall_s"] = round(sim_s, 2), round(wall_s, 2)
        s = bringup.node.stats
        info["node"] = {
            "sets_completed": s.sets_completed,
            "frames_published": s.frames_published,
            "sets_dropped": s.sets_dropped,
        }
    finally:
        bringup.drain()
        recorded = bringup.recorder.total if bringup.recorder is not None else 0
        has_recorder = bringup.recorder is not None
        bringup.close()
        info["recording"] = str(out / "recording") if has_recorder else None
        info["recorded_messages"] = recorded
        progress("bringup", f"closed; recording finalized ({recorded} messages) -> {out / 'recording'}", always=True)
    return results, info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sparseoccvla_core.closed_loop.planners import BASELINES
    from sparseoccvla_core.closed_loop.scenarios import DEFAULT_SEED, KINDS
    from sparseoccvla_core.default_checkpoint import default_checkpoint

    from ..closed_loop.sim_node import MODES

    parser.add_argument("--ckpt", default=None, help=f"checkpoint folder (default {default_checkpoint()})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="episode seed (default %(default)s)")
    parser.add_argument(
        "--episodes", type=int, default=len(KINDS), help="episodes; episode i is kind i mod 6 (default %(default)s)"
    )
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help="comma-separated scenario kinds to cycle (default: all six)"
    )
    parser.add_argument(
        "--duration", type=float, default=None, metavar="S", help="time limit of every episode, s (default: per kind)"
    )
    parser.add_argument("--mode", choices=MODES, default="lockstep", help="lockstep (default) or realtime")
    parser.add_argument("--rate", type=float, default=1.0, help="realtime mode: sim seconds per wall second")
    parser.add_argument("--plan-timeout", type=float, default=None, metavar="S",
                        help="lockstep: wall s to wait for a plan (10); realtime: sim s a plan stays valid (1.5)")  # fmt: skip
    parser.add_argument(
        "--width", type=int, default=480, help="camera width, pixels (default 480, the default checkpoint's)"
    )
    parser.add_argument("--height", type=int, default=270, help="camera height, pixels (default %(default)s)")
    parser.add_argument(
        "--baselines", default=",".join(BASELINES), help="comma-separated baselines, or 'none' (default: all three)"
    )
    parser.add_argument("--no-model", action="store_true", help="skip the model (no ROS): baselines only")
    parser.add_argument("--no-record", action="store_true", help="do not record an MCAP")
    parser.add_argument("--out", default=None, help="output folder (default outputs/closed_loop-<YYYYmmdd-HHMMSS>)")
    parser.add_argument("--params-file", default=None, help="driving node parameters (default config/driving.yaml)")
    parser.add_argument(
        "-p", "--param", action="append", default=[], metavar="NAME:=VALUE", help="extra driving node parameter"
    )
    parser.add_argument("--quiet", action="store_true", help="one progress line per episode instead of per key frame")


def _validate(args) -> tuple[list, list[str]]:
    from sparseoccvla_core.closed_loop.planners import BASELINES
    from sparseoccvla_core.closed_loop.scenarios import scenario_set

    if not 32 <= args.width <= 4096 or not 32 <= args.height <= 4096:
        raise ValueError(f"--width/--height must be in [32, 4096], got {args.width}x{args.height}")
    if args.rate <= 0:
        raise ValueError(f"--rate must be > 0, got {args.rate}")
    if args.plan_timeout is None:
        args.plan_timeout = DEFAULT_TIMEOUT[args.mode]
    if args.plan_timeout <= 0:
        raise ValueError(f"--plan-timeout must be > 0, got {args.plan_timeout}")
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    specs = scenario_set(args.seed, args.episodes, kinds, args.duration)
    baselines = [] if args.baselines.strip() == "none" else [b.strip() for b in args.baselines.split(",") if b.strip()]
    bad = [b for b in baselines if b not in BASELINES]
    if bad:
        raise ValueError(f"unknown baseline(s) {', '.join(bad)}; choose from {', '.join(BASELINES)} or 'none'")
    if args.no_model and not baselines:
        raise ValueError("--no-model with --baselines none leaves nothing to run")
    return specs, baselines


def run(args: argparse.Namespace) -> int:
    from sparseoccvla_core.closed_loop.planners import make_baseline
    from sparseoccvla_core.closed_loop.report import report_info, write_report
    from sparseoccvla_core.closed_loop.runner import run_planner

    from ..demo.command import DemoError, resolve_checkpoint
    from ..replay.player import install_stop_signals

    try:
        specs, baselines = _validate(args)
        checkpoint = None if args.no_model else resolve_checkpoint(args.ckpt)
    except (ValueError, DemoError) as exc:
        print(f"sparseoccvla closed-loop: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("outputs") / f"closed_loop-{datetime.now():%Y%m%d-%H%M%S}"
    if (out / "recording").exists() and not args.no_model and not args.no_record:
        print(f"sparseoccvla closed-loop: error: {out / 'recording'} exists; choose a new --out", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(args.quiet)
    stopped = threading.Event()
    hooks: list = []

    def on_signal() -> None:
        stopped.set()
        for h in hooks:
            h()

    install_stop_signals(on_signal)
    load0 = os.getloadavg()[0]
    runs: dict = {}
    info = {}
    code = 0
    if not args.no_model:
        try:
            results, info = run_model(args, specs, checkpoint, out, progress, hooks.append)
        except (ClosedLoopError, ValueError, FileNotFoundError, RuntimeError) as exc:
            print(f"sparseoccvla closed-loop: error in the model stage: {exc}", file=sys.stderr)
            return 1
        from sparseoccvla_core.closed_loop.metrics import total_metrics

        if results:
            runs["model"] = {"episodes": results, "total": total_metrics([r.metrics for r in results])}
    mean_info = None
    for name in baselines:
        if stopped.is_set():
            break
        if name == "mean-trajectory":
            from sparseoccvla_core.closed_loop.planners import mean_training_trajectory

            progress("baselines", "mean training trajectory (synthetic world seed 0, 28 scenes, train split; cached)")
            mean_info = mean_training_trajectory()
            planner = make_baseline(name, mean=mean_info["mean"])
        else:
            planner = make_baseline(name)
        runs[planner.name] = run_planner(specs, planner, progress=lambda text: progress("baselines", text, always=True))
    if stopped.is_set():
        code = 130
    if not runs:
        print("sparseoccvla closed-loop: stopped before any episode was driven", file=sys.stderr)
        return code or 1
    report = write_report(
        out,
        runs,
        report_info(
            episodes=len(specs),
            seed=args.seed,
            kinds=sorted({s.kind for s in specs}),
            mode=args.mode,
            checkpoint=None if checkpoint is None else str(checkpoint),
            interrupted=stopped.is_set(),
            machine=f"{os.cpu_count()} CPUs, load average {load0:.1f} at the start and {os.getloadavg()[0]:.1f} at "
            "the end (other jobs on the machine slow the real-time factor)",
            mean_trajectory=mean_info,
            **info,
        ),  # fmt: skip
        progress=lambda text: progress("report", text),
    )
    progress(
        "report",
        f"{report['html']} (+ {report['md'].name}, {report['json'].name}, {len(report['images'])} strips)",
        always=True,
    )
    return code


# ---------------------------------------------------------------------- sim_node alone (launch file)
def sim_node_main(argv: list[str]) -> int:
    """``sim_node [options] --ros-args ...``: episodes against a driving node in another process, then the report."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.utilities import remove_ros_args

    from sparseoccvla_core.closed_loop.metrics import total_metrics
    from sparseoccvla_core.closed_loop.report import report_info, write_report

    from ..replay.player import install_stop_signals
    from .sim_node import SimNode, episode_stamp_ns

    parser = argparse.ArgumentParser(prog="sim_node", description="closed-loop simulator node (docs/closed_loop.md)")
    add_arguments(parser)
    args = parser.parse_args(remove_ros_args(["sim_node", *argv])[1:])
    try:
        specs, _ = _validate(args)
    except ValueError as exc:
        print(f"sim_node: error: {exc}", file=sys.stderr)
        return 2
    rclpy.init(args=["sim_node", *argv])
    node = SimNode(args.mode, args.plan_timeout, args.width, args.height, rate=args.rate)
    install_stop_signals(node.stop_event.set)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    progress = Progress(args.quiet)
    results = []
    try:
        progress("sim_node", "waiting for the driving node to subscribe the cameras")
        if node.wait_for_driver(600.0, clock_ns=episode_stamp_ns(specs[0], 0.0) - 1_000_000_000):
            for spec in specs:
                res = node.run_episode(spec, on_frame=_frame_progress(progress, spec.name))
                if res is None:
                    break
                results.append(res)
                if node.stop_event.is_set():
                    break
    finally:
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown()
    if results and args.out:
        runs = {"model": {"episodes": results, "total": total_metrics([r.metrics for r in results])}}
        write_report(args.out, runs, report_info(episodes=len(specs), seed=args.seed, mode=args.mode,
                                                 kinds=sorted({s.kind for s in specs})))  # fmt: skip
        progress("report", f"{Path(args.out) / 'closed_loop.html'}", always=True)
    return 130 if node.stop_event.is_set() else 0
