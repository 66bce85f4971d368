"""``sparseoccvla drive``: the pip-only bringup - bag player, driving node and recorder in one process.

    sparseoccvla drive --bag BAG --checkpoint CKPT [--rate R] [--record OUT] [--use-sim-time] [--loop]
                       [--params-file config/driving.yaml] [--calibration-file YAML] [-p NAME:=VALUE ...]

The same nodes as ``ros2 launch sparseoccvla_ros driving.launch.py`` (full ROS 2 install), configured the same
way: the driving node reads ``config/driving.yaml`` (``--params-file``) and gets its input remaps from
:func:`sparseoccvla_ros.replay.topics.node_remaps` - the one list the launch file uses too - through rclpy's
command-line arguments (``Node(..., cli_args=["--ros-args", "--params-file", F, "-r", "~/input/...:=/..."])``).
Each node is spun by its own :class:`~rclpy.executors.SingleThreadedExecutor` in its own thread, as the driving
node spins its helper nodes (rclpy's ``MultiThreadedExecutor`` re-submits a waiting callback in a loop that holds
the GIL, rclpy issue #1452, which starved inference under ``/clock`` traffic); the player paces the bag from its
own thread.

Order of events: the recorder and the node start; the player waits until the model is loaded and the node's
inputs are subscribed (so no camera set is lost to loading or discovery), plays the bag, then the bringup waits
until the node has published its last outputs and the recorder has them (no new output for ``--linger`` s, or
``--max-linger`` s at most), closes the bag and exits 0.  Ctrl-C stops it at any point, still finalizing the
recording.  Inputs (bag, checkpoint, params and calibration files, ``--record``) are checked before ROS starts
(:mod:`sparseoccvla_core.cli_inputs`): a bad one ends the command with one line and exit status 2, as does a
parameter the node rejects; a bag without camera images is refused (the node could do nothing with it).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from .replay import topics

REPO_PARAMS = Path(__file__).resolve().parents[1] / "config" / "driving.yaml"


def default_params_file() -> Path:
    """config/driving.yaml: from the installed package share (colcon / pip data files), else the checkout."""
    candidates = [Path(sys.prefix) / "share" / "sparseoccvla_ros" / "config" / "driving.yaml", REPO_PARAMS]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"config/driving.yaml not found in {[str(c) for c in candidates]}; pass --params-file")


def node_cli_args(
    params_file: str | Path,
    image_suffix: str = topics.IMAGE_SUFFIX,
    odometry_topic: str = topics.ODOM_TOPIC,
    extra: Optional[list[str]] = None,
) -> list[str]:
    """``--ros-args`` of the driving node: the params file, then one ``-r`` per remap of :func:`topics.node_remaps`.

    Args:
        params_file: YAML with ``/**: ros__parameters:``.
        image_suffix: camera topics are ``/<CAM>/<suffix>``.
        odometry_topic: the Odometry topic.
        extra: further ``NAME:=VALUE`` parameter assignments (each becomes ``-p NAME:=VALUE``).
    """
    args = ["--ros-args", "--params-file", str(params_file)]
    for src, dst in topics.node_remaps(image_suffix, odometry_topic):
        args += ["-r", f"{src}:={dst}"]
    for assignment in extra or []:
        args += ["-p", assignment]
    return args


class Bringup:
    """Player + driving node + recorder on one rclpy context (see the module docstring).

    Args:
        bag: rosbag2 folder to play.
        checkpoint: model checkpoint folder (overrides the params file).
        params_file: node parameters (default :func:`default_params_file`).
        rate / loop / loop_time / start_s: player options (:class:`~.replay.player.BagPlayer`).
        record: bag folder for the outputs, /diagnostics and the cameras' CameraInfo (None = no recording).
        use_sim_time: node and recorder follow the player's ``/clock`` (published at ``clock_hz``).
        namespace: the driving node's namespace.
        parameters: extra ``NAME:=VALUE`` node parameters (e.g. ``calibration_file:=/path.yaml``).
        linger_s: after the bag ends, stop once no output arrived for this long, s.
        max_linger_s: ... or after this long at most, s.
    """

    def __init__(
        self,
        bag: str | Path,
        checkpoint: str | Path,
        params_file: Optional[str | Path] = None,
        rate: float = 1.0,
        loop: bool = False,
        loop_time: str = "jump",
        start_s: float = 0.0,
        record: Optional[str | Path] = None,
        use_sim_time: bool = False,
        clock_hz: float = 100.0,
        namespace: str = topics.NODE_NAMESPACE,
        parameters: Optional[list[str]] = None,
        linger_s: float = 2.0,
        max_linger_s: float = 60.0,
        wait_timeout_s: float = 300.0,
        progress: bool = True,
        context: Any = None,
    ) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter import Parameter

        from .driving_node import DrivingNode
        from .replay.player import BagPlayer
        from .replay.recorder import BagRecorder, default_topics

        self.context = context if context is not None else rclpy.context.Context()
        rclpy.init(context=self.context)
        self.linger_s, self.max_linger_s, self.wait_timeout_s = linger_s, max_linger_s, wait_timeout_s
        self.stop_requested = threading.Event()
        self.node = self.recorder = self.player = None
        self._player_node = self._recorder_node = None
        self.executors: list[Any] = []
        try:
            sim = [Parameter("use_sim_time", value=bool(use_sim_time))]
            params = params_file if params_file is not None else default_params_file()
            self.node = DrivingNode(
                context=self.context,
                namespace=namespace,
                cli_args=node_cli_args(params, extra=[f"checkpoint:={checkpoint}", *(parameters or [])]),
                parameter_overrides=sim,
            )
            node_path = f"{self.node.get_namespace().rstrip('/')}/{self.node.get_name()}"
            if record is not None:
                self._recorder_node = rclpy.create_node("bag_recorder", context=self.context, parameter_overrides=sim)
                # + CameraInfo (small): its receive times give eval-bag a wall-clock input->output latency
                selection = default_topics(node_path) + [topics.camera_info_topic(c) for c in topics.CAMERA_NAMES]
                self.recorder = BagRecorder(self._recorder_node, record, selection)
            self._player_node = rclpy.create_node("bag_player", context=self.context)
            self.player = BagPlayer(
                self._player_node,
                bag,
                rate=rate,
                loop=loop,
                loop_time=loop_time,
                start_s=start_s,
                clock_hz=clock_hz if use_sim_time else 0.0,
                progress=progress,
            )
            for n in (self.node, self._player_node, self._recorder_node):
                if n is not None:
                    executor = SingleThreadedExecutor(context=self.context)
                    executor.add_node(n)
                    self.executors.append(executor)
        except BaseException:
            self.close()
            raise
        self._spin_threads = [
            threading.Thread(target=self._spin, args=(e,), name=f"bringup-executor-{i}", daemon=True)
            for i, e in enumerate(self.executors)
        ]
        for t in self._spin_threads:
            t.start()

    def _spin(self, executor: Any) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            executor.spin()
        except (ExternalShutdownException, KeyboardInterrupt):
            pass
        except Exception as exc:  # noqa: BLE001 - a context torn down under the executor at Ctrl-C
            if self.context.ok():
                raise
            del exc

    # ------------------------------------------------------------------ phases
    def wait_ready(self) -> bool:
        """Until the model is loaded and the node subscribes to the bag's input topics (False on timeout/failure)."""
        deadline = time.monotonic() + self.wait_timeout_s
        self.player.hold_clock(self.player.first_ns)  # sim-time nodes get a clock while they wait
        while time.monotonic() < deadline and not self.player.stop_event.is_set():
            level, text = self.node.model_status
            if level >= 2:  # ERROR: the checkpoint could not be loaded
                self.node.get_logger().error(f"not playing the bag: {text}")
                return False
            if self.node.pipeline is not None:
                break
            time.sleep(0.05)
        else:
            return False
        left = max(1.0, deadline - time.monotonic())
        return self.player.wait_for_subscribers(left, settle_s=0.5)

    def play(self):
        """Play the bag (blocks); returns the player's :class:`~.replay.player.PlaybackStats`."""
        return self.player.play()

    def wait_outputs_done(self) -> None:
        """After the bag: wait until the node is idle and no output arrived for ``linger_s`` (<= ``max_linger_s``)."""
        start = time.monotonic()

        def snapshot():
            s = self.node.stats
            with s.lock:
                node_count = (s.frames_published, s.sets_completed)
            # outputs only: /diagnostics keeps arriving every period and would never look quiet
            recorded = self.recorder.count_under("/output/") if self.recorder is not None else 0
            return node_count, recorded, self.node.idle

        last, stable_since = snapshot(), time.monotonic()
        while time.monotonic() - start < self.max_linger_s and not self.stop_requested.is_set():
            time.sleep(0.05)
            now = snapshot()
            if now != last or not now[2]:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since >= self.linger_s:
                return

    def record_final_diagnostics(self, timeout_s: float = 2.0) -> None:
        """Publish the node's diagnostics once more and wait until the recorder has them, so the recording ends
        with the final counters (sets completed, dropped, synchronizer drops) rather than the last periodic ones."""
        if self.recorder is None:
            self.node.publish_diagnostics()
            return
        before = self.recorder.count_under("/diagnostics")
        self.node.publish_diagnostics()
        deadline = time.monotonic() + timeout_s
        while self.recorder.count_under("/diagnostics") == before and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> None:
        """Ask the player to stop and skip the linger (thread-safe, e.g. from a signal handler)."""
        self.stop_requested.set()
        if self.player is not None:
            self.player.stop_event.set()

    def close(self) -> None:
        """Stop everything, finalize the recording and shut the context down (idempotent)."""
        import rclpy

        if self.player is not None:
            self.player.close()
        if self.recorder is not None:
            self.recorder.close()
        for executor in self.executors:
            executor.shutdown(timeout_sec=5.0)
        self.executors = []
        for n in (self.node, self._player_node, self._recorder_node):
            if n is not None:
                try:
                    n.destroy_node()
                except Exception:  # noqa: BLE001 - already destroyed
                    pass
        self.node = self._player_node = self._recorder_node = None
        rclpy.try_shutdown(context=self.context)
        for thread in getattr(self, "_spin_threads", []):
            if thread is not threading.current_thread():
                thread.join(timeout=5.0)

    def run(self) -> int:
        """wait_ready -> play -> wait_outputs_done -> close; returns the exit status."""
        try:
            if not self.wait_ready():
                if self.player.stop_event.is_set():
                    return 0
                print("sparseoccvla drive: the node did not become ready (see the log above)", file=sys.stderr)
                return 1
            stats = self.play()
            self.wait_outputs_done()
            if not self.node.flush_outputs(timeout_s=5.0):  # recorders in other processes have the last outputs
                self.node.get_logger().warning("some outputs were not acknowledged by every subscriber within 5 s")
            self.record_final_diagnostics()
            s = self.node.stats
            print(
                f"[drive] played {stats.published} messages in {stats.wall_s:.1f} s; node: {s.sets_completed} "
                f"camera sets, {s.frames_published} published, {s.sets_dropped} dropped (fell behind)"
                + (f"; recorded {self.recorder.total} messages -> {self.recorder.out}" if self.recorder else ""),
                file=sys.stderr,
            )
            return 0
        finally:
            self.close()


# ---------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .replay.player import LOOP_TIME_MODES

    parser.add_argument("--bag", required=True, help="rosbag2 folder to play (e.g. from 'sparseoccvla bag')")
    from sparseoccvla_core.default_checkpoint import default_checkpoint

    parser.add_argument(
        "--checkpoint",
        default=str(default_checkpoint()),
        help="model checkpoint folder (save_pretrained; default: the committed checkpoints/default)",
    )
    parser.add_argument(
        "--params-file", default=None, help="node parameters YAML (default: the package's config/driving.yaml)"
    )
    parser.add_argument(
        "--calibration-file",
        default=None,
        help="camera calibration YAML (the converter writes one beside the bag); needed where "
        "tf2_msgs is missing and the bag's /tf_static cannot be read",
    )
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="extra node parameter, ROS syntax (repeatable), e.g. -p device:=cuda",
    )
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default %(default)s)")
    parser.add_argument("--loop", action="store_true", help="replay the bag until Ctrl-C")
    parser.add_argument(
        "--loop-time",
        choices=LOOP_TIME_MODES,
        default="jump",
        help="how time continues across loops (see 'sparseoccvla play --help')",
    )
    parser.add_argument("--start", type=float, default=0.0, metavar="S", help="skip the first S seconds")
    parser.add_argument(
        "--record",
        default=None,
        metavar="OUT",
        help="record the outputs, /diagnostics and the CameraInfo topics (for latency) to OUT",
    )
    parser.add_argument(
        "--use-sim-time",
        action="store_true",
        help="node and recorder follow the player's /clock (published at --clock Hz)",
    )
    parser.add_argument(
        "--clock", type=float, default=100.0, metavar="HZ", help="/clock rate with --use-sim-time (default %(default)s)"
    )
    parser.add_argument("--namespace", default=topics.NODE_NAMESPACE, help="node namespace (default %(default)s)")
    parser.add_argument(
        "--linger",
        type=float,
        default=2.0,
        metavar="S",
        help="after the bag ends, exit once no output came for S seconds (default %(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    params = list(args.param)
    if args.calibration_file:
        params.append(f"calibration_file:={Path(args.calibration_file).resolve()}")
    try:
        bringup = Bringup(
            args.bag,
            Path(args.checkpoint).resolve(),
            params_file=args.params_file,
            rate=args.rate,
            loop=args.loop,
            loop_time=args.loop_time,
            start_s=args.start,
            record=args.record,
            use_sim_time=args.use_sim_time,
            clock_hz=args.clock,
            namespace=args.namespace,
            parameters=params,
            linger_s=args.linger,
            progress=not args.quiet,
        )
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        # inputs were checked before anything started (sparseoccvla_core.cli_inputs); what is left is a bad
        # parameter or file the node itself rejects: one line, exit 2, and cli.main removes a created recording
        print(f"sparseoccvla drive: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    from .replay.player import install_stop_signals

    install_stop_signals(bringup.stop)  # Ctrl-C: stop playing, finalize the recording, exit 0
    return bringup.run()
