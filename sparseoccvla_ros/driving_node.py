"""The SparseOccVLA driving node: six cameras + odometry in; occupancy, forecast, plan, explanation out.

Architecture: docs/design.md §6; ROS conventions: docs/ros_conventions.md.

Run (pip-only ROS 2, from the repository root)::

    driving_node --ros-args --params-file config/driving.yaml -p checkpoint:=DIR -r __ns:=/sparseoccvla \
        -r ~/input/CAM_FRONT/image:=/CAM_FRONT/image_rect_compressed ...   (or edit the YAML / use the launch file)

On a full ROS 2 install: ``ros2 launch sparseoccvla_ros driving.launch.py checkpoint:=DIR``.

I/O only (the node layer of docs/design.md §2): messages are converted by :mod:`.conversions`, camera sets are
built by :mod:`.synchronizer`, all model work happens in :class:`~sparseoccvla_core.pipeline.SparseOccVLAPipeline`.

Threads: the node is spun by a :class:`~rclpy.executors.SingleThreadedExecutor` (:func:`main`).  Its callbacks
(cameras, CameraInfo, odometry, command, ``/tf_static``, ``/clock``, the diagnostics timer) only store data and
return in microseconds; a camera set that completes replaces the pending one in a one-slot mailbox (a replaced set
is counted as dropped: the node processes only the newest complete set when it falls behind).  One worker thread
loads the model, decodes images, runs ``pipeline.step`` and publishes.  ``~/ask_scene`` is served by a small
helper node (``<name>_ask_scene``, the service keeps the name ``<node>/ask_scene``) with its own single-threaded
executor and thread, so a question being answered never delays sensor callbacks or ``/clock``.  Under sim time
``/clock`` is served the same way by ``<name>_clock`` (:meth:`DrivingNode._move_clock_to_helper`), so 100 Hz of
``/clock`` does not wake the node's executor 100 times a second.
rclpy's MultiThreadedExecutor is deliberately not used: while a callback waits in its thread pool, the executor
re-submits it in a loop that holds the GIL (rclpy issue #1452), which under ``/clock`` traffic stalled the worker
for seconds and kept the main thread from seeing Ctrl-C.  :func:`main` also wakes at least every
:data:`SPIN_WAKE_S` so SIGINT / SIGTERM end the process within a second, and shutdown waits at most
:data:`SHUTDOWN_JOIN_S` for a step in progress.

Camera calibration: one precedence rule (:func:`sparseoccvla_core.calibration_file.resolve_camera_models`), per
camera - extrinsics from ``/tf_static`` (a complete chain from ``frame_id`` to the camera's frame) win over the
calibration YAML (``calibration_file``), the YAML covers every camera ``/tf_static`` does not; intrinsics from the
latest CameraInfo win over the YAML's.  ``/tf_static`` is subscribed whenever ``tf2_msgs`` imports (a full ROS 2
install, or a pip-only install where ``scripts/install.sh`` built it).  With no YAML and no ``tf2_msgs`` the node
refuses to start; a camera set whose cameras are not all calibrated is dropped with an ERROR diagnostic that names
the cameras and the missing part.

Diagnostics (``/diagnostics``, statuses ``<node>: model | inputs | inference``): every problem raises an alarm
of its own kind with a fixed level, held for ``diagnostics_hold_s`` after it last happened
(:mod:`.health`); docs/ros_node.md §7 lists the levels.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from typing import Any, Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (
    QoSDurabilityPolicy,
    QoSHistoryPolicy,
    QoSProfile,
    QoSReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import String, UInt8
from visualization_msgs.msg import MarkerArray

from sparseoccvla_core.batch import CAMERA_NAMES
from sparseoccvla_core.calibration_file import (
    CalibrationIncompleteError,
    CameraCalibration,
    camera_frame_ids,
    load_calibration,
    resolve_camera_models,
)
from sparseoccvla_core.cli_inputs import check_checkpoint
from sparseoccvla_core.data.images import CorruptImageError
from sparseoccvla_core.pipeline import CameraFrame, FrameInput, PipelineOptions, SparseOccVLAPipeline, StepResult
from sparseoccvla_msgs.msg import DrivingPlan, OccupancyForecast
from sparseoccvla_msgs.srv import AskScene

from . import conversions as conv
from .health import ERROR, OK, WARN, AlarmBoard, LogThrottle, StampGapCounter, input_age_s
from .markers import result_to_markers
from .node_parameters import DEFAULT_NUM_COMMANDS, PARAMETERS, descriptor
from .synchronizer import (
    NS_PER_S,
    CameraSet,
    CameraSetSynchronizer,
    OdometryHistory,
    OdometryLookupError,
)

try:  # a full ROS 2 install, or the TFMessage-only package scripts/install.sh builds on pip-only installs
    from tf2_msgs.msg import TFMessage  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the install
    TFMessage = None

#: Seconds between two log lines of the same kind of problem (each kind has its own throttle).
WARN_THROTTLE_S = 5.0
#: A camera whose last image is this much older than the freshest camera's is reported as silent, s (wall time).
CAMERA_SILENT_S = 1.0
#: The main thread returns from the executor's wait at least this often, s (signals are handled in between).
SPIN_WAKE_S = 0.1
#: Shutdown waits this long for a step in progress before leaving the daemon worker behind, s.
SHUTDOWN_JOIN_S = 1.0
#: Poll interval while waiting for odometry or calibration to catch up with the cameras, s (short: it adds
#: at most this much latency to a frame; long enough not to spin a core).
ODOMETRY_POLL_S = 0.005
#: Frame latencies kept for the health report's latency percentiles (the last this many frames).
LATENCY_HISTORY = 100
#: Publish times kept for the health report's output rate (the last this many frames).
RATE_HISTORY = 50

#: Questions that ask what the ego vehicle should do: the planning prompt asks exactly this every frame, so when the
#: LLM generates nothing for one, AskScene answers with the frame's planning explanation.
ACTION_QUESTION_PATTERN = re.compile(
    r"\b(should|action|do next|next move|plan(ned|ning)?|going to do|manoeuv\w*|maneuv\w*|what (to|will) (it )?do)\b",
    re.IGNORECASE,
)

#: Alarm kinds reported under the ``inference`` status (all others belong to ``inputs``).
INFERENCE_KINDS = frozenset({"inference", "latency", "time_backwards"})


def output_qos(depth: int) -> QoSProfile:
    """QoS of every ``~/output/*`` and ``~/debug/*`` topic: reliable, transient local, keep last ``depth``."""
    return QoSProfile(
        reliability=QoSReliabilityPolicy.RELIABLE,
        history=QoSHistoryPolicy.KEEP_LAST,
        depth=depth,
        durability=QoSDurabilityPolicy.TRANSIENT_LOCAL,
    )


class _Stats:
    """Counters and timings reported on /diagnostics (written by callbacks and the worker under ``lock``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sets_completed = 0
        self.sets_dropped = 0  # complete sets replaced before the worker took them (fell behind)
        self.frames_published = 0
        self.ignored_no_clock = 0
        self.bad_input: dict[str, int] = {}
        self.publish_times: list[float] = []  # wall seconds of the last published frames (rate)
        self.latencies_s: list[float] = []  # camera set complete -> outputs published, last frames, s
        self.last_timings: dict[str, float] = {}
        self.last_latency_s = float("nan")
        self.last_age_s = float("nan")
        self.age_time_base = "none"
        self.last_stamp_ns = 0

    def count(self, kind: str) -> None:
        with self.lock:
            self.bad_input[kind] = self.bad_input.get(kind, 0) + 1


class DrivingNode(Node):
    """SparseOccVLA driving node (topics, parameters and threads: see the module docstring and docs/ros_node.md).

    Args:
        node_name: node name (default ``driving_node``).
        **kwargs: forwarded to :class:`rclpy.node.Node` (``context``, ``namespace``, ``parameter_overrides``, ...).
    Raises:
        ValueError: invalid parameters (no checkpoint, unknown choice) or no source of camera extrinsics.
    """

    def __init__(self, node_name: str = "driving_node", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        try:
            self._setup()
        except Exception:
            self._teardown_helpers()
            super().destroy_node()  # release the half-built node's handles before reporting the error
            raise

    def _setup(self) -> None:
        for name, p in PARAMETERS.items():
            self.declare_parameter(name, p.default, descriptor(name, p))
        self._p = {name: self.get_parameter(name).value for name in PARAMETERS}
        self._validate_parameters()

        self.stats = _Stats()
        self._input_alarms = AlarmBoard(float(self._p["diagnostics_hold_s"]))
        self._inference_alarms = AlarmBoard(float(self._p["diagnostics_hold_s"]))
        self._log_throttle = LogThrottle(WARN_THROTTLE_S)
        self._pipeline: Optional[SparseOccVLAPipeline] = None
        self._model_status = (WARN, "loading the model")
        self._command = int(self._p["driving_command"])
        self._stop = threading.Event()
        self._mailbox: Optional[tuple[CameraSet, float]] = None
        self._busy = False  # the inference thread is processing a set
        self._mailbox_cv = threading.Condition()
        self._last_published_stamp_ns: Optional[int] = None
        self._stamp_offset_ns: Optional[int] = None  # min(node clock at receipt - stamp): the stream's time base
        self._diag_snapshot: dict[str, int] = {}
        self._explanations: dict[int, str] = {}  # set stamp -> the planner's reasoning, last few sets

        # --- calibration sources (precedence: sparseoccvla_core.calibration_file.resolve_camera_models)
        self._yaml_cal: dict[str, CameraCalibration] = {}
        self._tf_transforms: dict[str, Any] = {}  # child frame -> geometry_msgs/TransformStamped from /tf_static
        self._tf_lock = threading.Lock()
        self._calibration_sources: dict[str, str] = {}
        ego_frame = self._p["frame_id"]
        if self._p["calibration_file"]:
            self._yaml_cal, yaml_ego = load_calibration(self._p["calibration_file"])
            if yaml_ego != ego_frame:
                self.get_logger().warning(
                    f"calibration_file maps cameras into '{yaml_ego}' but frame_id is '{ego_frame}'; "
                    "the extrinsics are used as cam2ego of the output frame"
                )
        elif TFMessage is None:
            raise ValueError(
                "no source of camera extrinsics: set the calibration_file parameter to the calibration YAML "
                "(the bag converter writes one beside every bag), or run scripts/install.sh so that tf2_msgs "
                "imports and the node can read /tf_static"
            )
        self._camera_info: dict[str, tuple[np.ndarray, tuple[int, int], str]] = {}
        self._last_msg_time: dict[str, float] = {}
        self._stamp_gaps = {cam: StampGapCounter() for cam in CAMERA_NAMES}  # frames lost before reaching us

        # --- input handling
        self._sync = CameraSetSynchronizer(
            CAMERA_NAMES,
            queue_size=int(self._p["sync_queue_size"]),
            max_span_s=float(self._p["sync_slop_s"]),
            min_period_s=float(self._p["sync_min_period_s"]),
        )
        self._odometry = OdometryHistory(
            max_age_s=float(self._p["odometry_history_s"]), max_gap_s=float(self._p["max_odometry_gap_s"])
        )
        group = MutuallyExclusiveCallbackGroup()
        self._sensor_group = group
        # Camera images are subscribed once the model is loaded (_subscribe_images): a player that waits for
        # subscribers (sparseoccvla play) then starts when frames can be used, not while the model loads.
        for cam in CAMERA_NAMES:
            self.create_subscription(
                CameraInfo,
                f"~/input/{cam}/camera_info",
                lambda msg, cam=cam: self._on_camera_info(cam, msg),
                qos_profile_sensor_data,
                callback_group=group,
            )
        odom_qos = QoSProfile(reliability=QoSReliabilityPolicy.BEST_EFFORT, depth=20)  # accepts reliable publishers
        self.create_subscription(Odometry, "~/input/odometry", self._on_odometry, odom_qos, callback_group=group)
        self.create_subscription(UInt8, "~/input/command", self._on_command, 10, callback_group=group)
        if TFMessage is not None:
            # latched like tf2's static listener: late joiners get every static transform published before
            tf_qos = QoSProfile(
                reliability=QoSReliabilityPolicy.RELIABLE,
                durability=QoSDurabilityPolicy.TRANSIENT_LOCAL,
                history=QoSHistoryPolicy.KEEP_LAST,
                depth=100,
            )
            self.create_subscription(TFMessage, "/tf_static", self._on_tf_static, tf_qos, callback_group=group)

        # --- outputs: reliable, transient local, keep last N (docs/ros_conventions.md §4).  With depth 1 a
        # message a subscriber had not acknowledged yet (a fragment lost under load, or a subscriber whose side of
        # discovery was still in progress) was replaced by the next set's before DDS re-sent it: recorders missed
        # outputs the node had published.  N bounds the memory (N messages per topic); transient local hands a
        # recorder that matched late the outputs published before (it must ask for transient local too).
        out_qos = output_qos(int(self._p["output_history_depth"]))
        self._pub_occupancy = self.create_publisher(PointCloud2, "~/output/occupancy", out_qos)
        self._pub_forecast = self.create_publisher(OccupancyForecast, "~/output/forecast", out_qos)
        self._pub_forecast_cloud = self.create_publisher(PointCloud2, "~/output/forecast_cloud", out_qos)
        self._pub_plan = self.create_publisher(DrivingPlan, "~/output/plan", out_qos)
        self._pub_path = self.create_publisher(PathMsg, "~/output/path", out_qos)
        self._pub_explanation = self.create_publisher(String, "~/output/explanation", out_qos)
        self._pub_markers = self.create_publisher(MarkerArray, "~/debug/markers", out_qos)
        self._pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_lock = threading.Lock()

        self._diag_timer = self.create_timer(
            float(self._p["diagnostics_period_s"]), self.publish_diagnostics, callback_group=group
        )
        self.add_on_set_parameters_callback(self._on_set_parameters)

        # --- helper nodes, each with its own executor thread (see the module docstring): AskScene, and /clock
        self._helpers: list[tuple[Node, SingleThreadedExecutor, threading.Thread]] = []
        ask_node = self._start_helper("ask_scene")
        ask_node.create_service(AskScene, self.resolve_service_name("~/ask_scene"), self._on_ask)
        if self.get_parameter("use_sim_time").value:
            self._move_clock_to_helper()

        self._worker = threading.Thread(target=self._run_worker, name="sparseoccvla-inference", daemon=True)
        self._worker.start()

    def _start_helper(self, suffix: str) -> Node:
        """A node ``<name>_<suffix>`` spun by its own SingleThreadedExecutor in a daemon thread."""
        node = rclpy.create_node(
            f"{self.get_name()}_{suffix}",
            namespace=self.get_namespace(),
            context=self.context,
            use_global_arguments=False,
            start_parameter_services=False,
        )
        executor = SingleThreadedExecutor(context=self.context)
        executor.add_node(node)
        thread = threading.Thread(
            target=self._spin_helper, args=(executor,), name=f"sparseoccvla-{suffix}", daemon=True
        )
        self._helpers.append((node, executor, thread))
        thread.start()
        return node

    def _spin_helper(self, executor: SingleThreadedExecutor) -> None:
        try:
            executor.spin()
        except (ExternalShutdownException, KeyboardInterrupt):
            pass
        except Exception:  # noqa: BLE001 - rclpy may touch a destroyed guard condition while shutting down
            # ... or build its wait set on a context a SIGINT has just shut down (RCLError): a stop, not a crash
            if not self._stop.is_set() and self.context.ok():
                raise

    def _move_clock_to_helper(self) -> None:
        """Serve ``/clock`` from a helper node's executor instead of this node's (sim time only).

        rclpy subscribes ``/clock`` on the node itself, so at 100 Hz the main executor woke 100 times a second and
        rebuilt its whole wait set each time (~2 ms of Python holding the GIL per message, which slowed the worker).
        The node's TimeSource (rclpy keeps it in ``Node._time_source``; there is no public accessor) is moved to a
        helper node with a single subscription: the node's clock is still set by every ``/clock`` message.
        """
        source = self._time_source
        source.detach_node()  # drops the /clock subscription of this node
        source.attach_node(self._start_helper("clock"))  # the helper's use_sim_time is False: nothing subscribed yet
        source.ros_time_is_active = True  # subscribes /clock on the helper and keeps this node's clock on ROS time

    # ------------------------------------------------------------------ parameters
    def _validate_parameters(self) -> None:
        for name, p in PARAMETERS.items():
            if p.choices and self._p[name] not in p.choices:
                raise ValueError(f"parameter {name} = {self._p[name]!r}; expected one of {list(p.choices)}")
        if not self._p["checkpoint"]:
            raise ValueError(
                "parameter checkpoint is empty: give the folder written by save_pretrained "
                "(-p checkpoint:=DIR or the params file)"
            )

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Dynamic parameters (read_only=False) update the pipeline options; ranges are enforced by rclpy."""
        for param in params:
            if param.name in PARAMETERS and not PARAMETERS[param.name].read_only:
                self._p[param.name] = param.value
        pipe = self._pipeline
        if pipe is not None:
            self._apply_options(pipe)
        if any(p.name == "driving_command" for p in params):
            self._command = int(self._p["driving_command"])
        return SetParametersResult(successful=True)

    def _options(self) -> PipelineOptions:
        return PipelineOptions(
            reset_time_gap_s=float(self._p["reset_time_gap_s"]),
            reset_pose_jump_m=float(self._p["reset_pose_jump_m"]),
            score_threshold=float(self._p["score_threshold"]),
            max_question_chars=int(self._p["max_question_chars"]),
            history_interval_s=float(self._p["history_interval_s"]),
        )

    def _apply_options(self, pipe: SparseOccVLAPipeline) -> None:
        opts = self._options()
        pipe.options.reset_time_gap_s = opts.reset_time_gap_s
        pipe.options.reset_pose_jump_m = opts.reset_pose_jump_m
        pipe.options.score_threshold = opts.score_threshold
        pipe.options.max_question_chars = opts.max_question_chars
        pipe.options.history_interval_s = opts.history_interval_s

    # ------------------------------------------------------------------ problems: alarm + throttled log per kind
    def _warn(self, kind: str, text: str, level: int = WARN) -> None:
        """Count, raise the alarm of this kind (held, see :mod:`.health`) and log, throttled per kind."""
        now = time.monotonic()
        self.stats.count(kind)
        board = self._inference_alarms if kind in INFERENCE_KINDS else self._input_alarms
        board.raise_alarm(kind, level, text, now)
        suppressed = self._log_throttle.admit(kind, now)
        if suppressed is None:
            return
        line = text + (
            f" [{suppressed} more '{kind}' messages in the last {WARN_THROTTLE_S:.0f} s]" if suppressed else ""
        )
        if level >= ERROR:  # one call site per severity: rclpy ties a severity to the calling line
            self.get_logger().error(line)
        else:
            self.get_logger().warning(line)

    # ------------------------------------------------------------------ callbacks (O(1): store and return)
    def _clock_ready(self) -> bool:
        """False while use_sim_time is on and no /clock has arrived (now() == 0): inputs are ignored."""
        if self.get_clock().now().nanoseconds == 0:
            with self.stats.lock:
                self.stats.ignored_no_clock += 1
            return False
        return True

    def _on_image(self, cam: str, msg: Any) -> None:
        if not self._clock_ready():
            return
        self._last_msg_time[cam] = time.monotonic()
        stamp = conv.stamp_to_ns(msg.header.stamp)
        if stamp == 0:
            self._warn("no_stamp", f"{cam}: image without header.stamp ignored (publish real stamps)")
            return
        offset = self.get_clock().now().nanoseconds - stamp
        self._stamp_gaps[cam].add(stamp)
        before = (self._sync.stats.late, self._sync.stats.resets)
        sets = self._sync.add(cam, stamp, msg)
        if self._sync.stats.resets > before[1]:
            self._stamp_offset_ns = None  # a new time line (bag loop / new bag)
            self._warn(
                "time_jump",
                f"{cam}: image stamps jumped backwards (bag loop / new bag): synchronizer reset, "
                "pending images dropped",
            )
        if self._sync.stats.late > before[0]:
            self._warn(
                "out_of_order",
                f"{cam}: an image whose stamp is not newer than the last synchronized set (or lies far behind the "
                "camera's newer images while the other cameras went on: one reordered image, not a time jump) "
                "was dropped",
            )
        if self._stamp_offset_ns is None or offset < self._stamp_offset_ns:
            self._stamp_offset_ns = offset
        for s in sets:
            with self._mailbox_cv:
                with self.stats.lock:
                    self.stats.sets_completed += 1
                    if self._mailbox is not None:
                        self.stats.sets_dropped += 1  # the worker fell behind: keep only the newest set
                self._mailbox = (s, time.perf_counter())
                self._mailbox_cv.notify()

    def _on_camera_info(self, cam: str, msg: CameraInfo) -> None:
        try:
            k, hw = conv.camera_info_to_intrinsics(msg)
        except conv.ConversionError as exc:
            self._warn("camera_info", f"{cam}: {exc}")
            return
        self._camera_info[cam] = (k, hw, msg.header.frame_id)

    def _on_odometry(self, msg: Odometry) -> None:
        if not self._clock_ready():
            return
        self._last_msg_time["odometry"] = time.monotonic()
        try:
            self._odometry.add(conv.odometry_to_sample(msg))
        except (conv.ConversionError, ValueError) as exc:
            self._warn("odometry", f"odometry rejected: {exc}")

    def _on_command(self, msg: UInt8) -> None:
        pipe = self._pipeline
        n = pipe.cfg.num_commands if pipe is not None else DEFAULT_NUM_COMMANDS
        if msg.data >= n:
            self._warn(
                "command",
                f"driving command {msg.data} ignored: the model knows commands 0..{n - 1} "
                "(0 left, 1 straight, 2 right)",
            )
            return
        self._command = int(msg.data)

    def _on_tf_static(self, msg: Any) -> None:
        with self._tf_lock:
            for t in msg.transforms:
                self._tf_transforms[t.child_frame_id.lstrip("/")] = t

    # ------------------------------------------------------------------ worker
    def _run_worker(self) -> None:
        try:
            check_checkpoint(self._p["checkpoint"])  # one clear line for a missing / truncated checkpoint
            pipe = SparseOccVLAPipeline.from_pretrained(
                self._p["checkpoint"], options=self._options(), device=self._p["device"], dtype=self._p["dtype"]
            )
        except Exception as exc:  # noqa: BLE001 - any load failure must surface as an ERROR diagnostic
            self._model_status = (ERROR, f"model failed to load: {exc}")
            self.get_logger().error(f"could not load checkpoint '{self._p['checkpoint']}': {exc}")
            return
        warmup_s = pipe.warmup()  # the first real frame would otherwise take several steps
        self._pipeline = pipe
        self._subscribe_images()
        cfg = pipe.cfg
        self._model_status = (OK, f"model loaded ({cfg.num_queries} queries, {cfg.num_frames} frames, {pipe.device})")
        self.get_logger().info(
            f"SparseOccVLA loaded from {self._p['checkpoint']} on {pipe.device} (warm-up step {warmup_s:.2f} s)"
        )
        while not self._stop.is_set():
            with self._mailbox_cv:
                if self._mailbox is None:
                    self._mailbox_cv.wait(timeout=0.1)
                item, self._mailbox = self._mailbox, None
                self._busy = item is not None
            if item is None:
                continue
            try:
                self._process(pipe, *item)
            except Exception as exc:  # noqa: BLE001 - the node must survive any single bad frame
                if self._stop.is_set():
                    return  # shutting down: handles may already be gone
                self._warn("inference", f"frame dropped: {type(exc).__name__}: {exc}", ERROR)
                self.publish_diagnostics()
            finally:
                self._busy = False

    def flush_outputs(self, timeout_s: float = 5.0) -> bool:
        """Wait until every reliable subscriber acknowledged every output published so far (at most ``timeout_s``
        in all), so a bringup that stops the node does not take re-sends still due with it.

        Returns:
            True when everything was acknowledged in time.
        """
        from rclpy.duration import Duration

        deadline = time.monotonic() + timeout_s
        publishers = (
            self._pub_occupancy,
            self._pub_forecast,
            self._pub_forecast_cloud,
            self._pub_plan,
            self._pub_path,
            self._pub_explanation,
            self._pub_markers,
        )
        acked = True
        for pub in publishers:
            left = max(0.0, deadline - time.monotonic())
            try:
                acked = pub.wait_for_all_acked(Duration(seconds=left)) and acked
            except Exception:  # noqa: BLE001 - a context already shut down (Ctrl-C): nothing left to deliver
                return False
        return acked

    @property
    def pipeline(self) -> Optional[SparseOccVLAPipeline]:
        """The loaded pipeline (None while the model loads or after it failed to load)."""
        return self._pipeline

    @property
    def model_status(self) -> tuple[int, str]:
        """(diagnostic level, text) of the model: WARN while loading, OK once loaded, ERROR when loading failed."""
        return self._model_status

    @property
    def idle(self) -> bool:
        """No camera set waiting for or in inference (a bringup waits for this before it stops recording)."""
        with self._mailbox_cv:
            return self._mailbox is None and not self._busy

    def _subscribe_images(self) -> None:
        """Subscribe the six camera image topics (called by the inference thread once the model is loaded).

        Best effort (sensor data), depth 2: the synchronizer keeps its own bounded queues and the callbacks only
        store, so a deeper DDS queue would only deliver stale frames (docs/ros_conventions.md §4).
        """
        image_qos = QoSProfile(
            reliability=QoSReliabilityPolicy.BEST_EFFORT,
            history=QoSHistoryPolicy.KEEP_LAST,
            depth=2,
            durability=QoSDurabilityPolicy.VOLATILE,
        )
        image_type = CompressedImage if self._p["image_transport"] == "compressed" else Image
        for cam in CAMERA_NAMES:
            self.create_subscription(
                image_type,
                f"~/input/{cam}/image",
                lambda msg, cam=cam: self._on_image(cam, msg),
                image_qos,
                callback_group=self._sensor_group,
            )

    def _lookup_odometry(self, stamp_ns: int) -> Any:
        """Odometry at the set stamp; waits briefly (<= max_odometry_gap_s) when odometry lags the cameras."""
        deadline = time.monotonic() + float(self._p["max_odometry_gap_s"])
        while True:
            try:
                return self._odometry.lookup(stamp_ns)
            except OdometryLookupError:
                if time.monotonic() >= deadline or self._stop.is_set():
                    raise
                time.sleep(ODOMETRY_POLL_S)

    def camera_models(self) -> dict[str, Any]:
        """The calibration of every camera under the precedence rule (raises CalibrationIncompleteError)."""
        info = {cam: (k, hw) for cam, (k, hw, _) in self._camera_info.items()}
        frames = camera_frame_ids(CAMERA_NAMES, {c: v[2] for c, v in self._camera_info.items()}, self._yaml_cal)
        with self._tf_lock:
            transforms = list(self._tf_transforms.values())
        tf_cam2ego = conv.tf_to_cam2ego(transforms, self._p["frame_id"], frames) if transforms else {}
        return resolve_camera_models(CAMERA_NAMES, self._yaml_cal, tf_cam2ego, info, tf_available=TFMessage is not None)

    def _frame_input(self, pipe: SparseOccVLAPipeline, cset: CameraSet) -> FrameInput:
        """Decode and calibrate one camera set (raises ValueError subclasses on bad input)."""
        target_hw = tuple(pipe.cfg.image_size)
        # a CameraInfo stamped like its image may be taken by the executor after the image that completed the set
        # (first set of a bag): wait for it briefly, as for odometry, before calling the set uncalibrated
        deadline = time.monotonic() + float(self._p["max_odometry_gap_s"])
        while True:
            try:
                models = self.camera_models()
                break
            except CalibrationIncompleteError:
                if time.monotonic() >= deadline or self._stop.is_set():
                    raise
                time.sleep(ODOMETRY_POLL_S)
        self._calibration_sources = {cam: f"{m.extrinsics_source}+{m.intrinsics_source}" for cam, m in models.items()}
        cameras = []
        for cam in CAMERA_NAMES:
            msg = cset.messages[cam]
            model = models[cam]
            scale = 1.0
            if isinstance(msg, CompressedImage):
                r = conv.jpeg_reduction(msg, target_hw)
                rgb = conv.decode_compressed_image(msg, reduction=r)
                scale = 1.0 / r
            else:
                rgb = conv.image_to_rgb(msg)
            if model.image_size is not None:
                w, h = model.image_size
                expect = (round(h * scale), round(w * scale))
                if rgb.shape[:2] != expect:
                    raise conv.ConversionError(
                        f"{cam}: image is {rgb.shape[1]}x{rgb.shape[0]} but its calibration ({model.intrinsics_source})"
                        f" is for {w}x{h}" + (f" (decoded at 1/{round(1 / scale)})" if scale != 1.0 else "")
                    )
            cameras.append(CameraFrame(cam, rgb, conv.scale_intrinsics(model.intrinsics, scale), model.cam2ego))
        odom = self._lookup_odometry(cset.stamp_ns)
        acc = self._odometry.acceleration(cset.stamp_ns, float(self._p["acceleration_window_s"]))
        return FrameInput(
            cameras=cameras,
            ego2global=odom.pose_matrix(),
            velocity=odom.linear_velocity[:2],
            acceleration=acc[:2],
            yaw_rate=float(odom.angular_velocity[2]),
            stamp_ns=cset.stamp_ns,
            command=self._command,
        )

    def _drop(self, kind: str, cset: CameraSet, exc: Exception, level: int) -> None:
        self._warn(kind, f"camera set at {cset.stamp_ns} ns dropped: {exc}", level)
        if level >= ERROR:
            self.publish_diagnostics()

    def _process(self, pipe: SparseOccVLAPipeline, cset: CameraSet, t_ready: float) -> None:
        t0 = time.perf_counter()
        try:
            frame = self._frame_input(pipe, cset)
        except CorruptImageError as exc:
            return self._drop("corrupt_image", cset, exc, ERROR)
        except CalibrationIncompleteError as exc:
            return self._drop("calibration", cset, exc, ERROR)
        except OdometryLookupError as exc:
            return self._drop("odometry_gap", cset, exc, WARN)
        except ValueError as exc:
            return self._drop("bad_input", cset, exc, ERROR)
        t_decode = time.perf_counter() - t0
        try:
            result = pipe.step(frame)
        except ValueError as exc:
            return self._drop("bad_input", cset, ValueError(f"rejected by the pipeline: {exc}"), ERROR)
        last = self._last_published_stamp_ns
        if last is not None and result.stamp_ns <= last:
            # outputs go back in time (bag loop, new bag, a publisher restarted): say so before publishing them
            self._warn(
                "time_backwards",
                f"outputs go back in time: stamp {result.stamp_ns} ns after {last} ns "
                f"({(result.stamp_ns - last) / NS_PER_S:+.3f} s); the model's history was reset "
                f"({result.reset_reason or 'new sequence'})",
            )
        elif result.sequence_reset and pipe.frames_processed > 1:
            self.get_logger().info(f"new sequence: {result.reset_reason}")
        t1 = time.perf_counter()
        self._publish_result(pipe, result)
        t_publish = time.perf_counter() - t1
        latency = time.perf_counter() - t_ready
        self._last_published_stamp_ns = result.stamp_ns
        now_ns = self.get_clock().now().nanoseconds
        age_s, base = input_age_s(now_ns, cset.stamp_ns, self._stamp_offset_ns)
        budget = float(self._p["latency_budget_s"])
        if latency > budget:
            self._warn("latency", f"latency {latency:.3f} s over latency_budget_s = {budget:.3f} s")
        with self.stats.lock:
            s = self.stats
            s.frames_published += 1
            s.last_timings = {"decode": t_decode, **result.timings_s, "publish": t_publish}
            s.last_latency_s = latency
            s.latencies_s = (s.latencies_s + [latency])[-LATENCY_HISTORY:]
            s.last_age_s, s.age_time_base = age_s, base
            s.last_stamp_ns = cset.stamp_ns
            s.publish_times = (s.publish_times + [time.monotonic()])[-RATE_HISTORY:]
        return None

    def _publish_result(self, pipe: SparseOccVLAPipeline, result: StepResult) -> None:
        """Every output carries the input set's stamp (never now())."""
        frame_id, stamp = self._p["frame_id"], result.stamp_ns
        header = conv.make_header(stamp, frame_id)
        self._pub_occupancy.publish(conv.occupancy_to_pointcloud2(result.occupancy, header))
        self._pub_forecast.publish(conv.forecast_to_msg(result.forecast, stamp, frame_id))
        self._pub_forecast_cloud.publish(conv.forecast_to_time_cloud(result.forecast, header))
        plan, path = conv.plan_to_msgs(result.plan, result.explanation, stamp, frame_id)
        self._pub_plan.publish(plan)
        self._pub_path.publish(path)
        self._explanations[stamp] = result.explanation  # AskScene answers action questions with it (see _on_ask)
        while len(self._explanations) > 8:
            self._explanations.pop(next(iter(self._explanations)))
        explain = bool(self._p["explain"])
        if explain:
            self._pub_explanation.publish(String(data=result.explanation))
        self._pub_markers.publish(result_to_markers(result, frame_id, pipe.cfg.voxel_size, show_text=explain))

    # ------------------------------------------------------------------ service
    def _on_ask(self, request: AskScene.Request, response: AskScene.Response) -> AskScene.Response:
        t0 = time.perf_counter()
        pipe = self._pipeline
        if pipe is None:
            response.success, response.error_message = False, f"the model is not ready: {self._model_status[1]}"
        elif pipe.frames_processed == 0:
            response.success, response.error_message = (
                False,
                (
                    "no camera set has been processed yet: the node answers about the latest processed camera set; "
                    "publish the six camera images and odometry (e.g. play a bag) and ask again"
                ),
            )
        else:
            try:
                answer = pipe.ask(request.question)
                response.scene_stamp = conv.ns_to_stamp(answer.stamp_ns)
                text = answer.text.strip()
                if not text:
                    text, error = self._answer_without_generation(request.question, answer.stamp_ns)
                    response.error_message = error
                response.success, response.answer = bool(text), text
            except ValueError as exc:  # empty / too long question: the text says what to change
                response.success, response.error_message = False, str(exc)
            except RuntimeError as exc:
                response.success, response.error_message = False, f"the question could not be answered: {exc}"
        response.latency_s = float(time.perf_counter() - t0)
        return response

    def _answer_without_generation(self, question: str, stamp_ns: int) -> tuple[str, str]:
        """(answer, error) when the LLM generated nothing (an EOS first) for a question.

        A question about what the ego vehicle should do is what the planning prompt asks every frame, so it is
        answered with the explanation published for the same camera set; any other question fails with a message.
        """
        explanation = self._explanations.get(stamp_ns, "").strip()
        if explanation and ACTION_QUESTION_PATTERN.search(question):
            return explanation, ""
        return "", (
            "the model generated an empty answer to this question (the checkpoint has no answer for it); "
            "rephrase it, or ask what the ego vehicle should do to get the planner's reasoning for this scene"
        )

    # ------------------------------------------------------------------ diagnostics
    def _check_inputs(self, now: float) -> dict[str, Any]:
        """Raise the alarms of conditions seen by polling (silent cameras, stale input, drops); input values."""
        s, sync = self.stats, self._sync.stats
        with s.lock:
            counters = {
                "sets_completed": s.sets_completed,
                "sets_dropped_behind": s.sets_dropped,
                "sync_messages_dropped": sync.dropped,
                "sync_late_messages": sync.late,
                "sync_resets": sync.resets,
                "ignored_before_clock": s.ignored_no_clock,
                # camera sets lost before the synchronizer (DDS queue overwritten while busy), from stamp gaps
                "frames_missed": max(g.missed for g in self._stamp_gaps.values()),
            }
            bad = dict(s.bad_input)
        values: dict[str, Any] = {**counters, **{f"bad_{k}": v for k, v in bad.items()}}
        prev, self._diag_snapshot = self._diag_snapshot, dict(counters)
        new_drops = {
            k: counters[k] - prev.get(k, 0) for k in ("sets_dropped_behind", "sync_messages_dropped", "frames_missed")
        }
        if any(new_drops.values()):
            self._input_alarms.raise_alarm(
                "drops",
                WARN,
                "dropped: " + ", ".join(f"{v} {k}" for k, v in new_drops.items() if v),
                now,
                counted=False,
            )
        ages = {}
        for topic in (*CAMERA_NAMES, "odometry"):
            last = self._last_msg_time.get(topic)
            ages[topic] = float("inf") if last is None else now - last
            values[f"age_{topic}_s"] = ages[topic]
        cams = {t: ages[t] for t in CAMERA_NAMES}
        silent = [t for t, a in cams.items() if a == float("inf")]
        freshest = min(cams.values())
        stale_s = float(self._p["stale_input_s"])
        if len(silent) == len(CAMERA_NAMES):
            self._input_alarms.raise_alarm("waiting", WARN, f"waiting for cameras {silent}", now, counted=False)
        elif freshest > stale_s:
            self._input_alarms.raise_alarm(
                "stale_input",
                WARN,
                f"inputs stale: no camera image for {freshest:.1f} s (bag ended or sensors stopped)",
                now,
                counted=False,
            )
        else:
            self._input_alarms.clear("waiting")
            # a camera far behind the others has stopped (cameras of one rig publish within ms of each other)
            lagging = [t for t, a in cams.items() if a - freshest > CAMERA_SILENT_S]
            if lagging:
                self._input_alarms.raise_alarm(
                    "missing_camera",
                    WARN,
                    f"no images from cameras {lagging} while others publish: no camera set completes",
                    now,
                    counted=False,
                )
        values["calibration_sources"] = (
            ", ".join(f"{c}={v}" for c, v in self._calibration_sources.items()) or "none yet"
        )
        values["tf_static"] = "subscribed" if TFMessage is not None else "unavailable (tf2_msgs does not import)"
        return values

    def publish_diagnostics(self) -> None:
        """Publish the model / inputs / inference statuses (timer, and at once after an ERROR from the worker)."""
        with self._diag_lock:
            try:
                self._publish_diagnostics_locked()
            except Exception as exc:  # noqa: BLE001 - diagnostics must never take the node down
                if not self._stop.is_set():
                    self.get_logger().error(f"diagnostics failed: {type(exc).__name__}: {exc}")

    def _publish_diagnostics_locked(self) -> None:
        name = self.get_name()
        now = time.monotonic()
        input_values = self._check_inputs(now)
        s = self.stats
        with s.lock:
            times = [t for t in s.publish_times if t >= now - 10.0]
            rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) >= 2 and times[-1] > times[0] else 0.0
            lat = sorted(s.latencies_s)
            latency: dict[str, Any] = {
                "frames_published": s.frames_published,
                "rate_hz": rate,
                "latency_s": s.last_latency_s,
                "latency_p50_s": lat[len(lat) // 2] if lat else float("nan"),
                "latency_max_s": lat[-1] if lat else float("nan"),
                "input_age_s": s.last_age_s,
                "input_age_time_base": s.age_time_base,
                "last_stamp_ns": s.last_stamp_ns,
                **{f"time_{k}_s": v for k, v in s.last_timings.items()},
            }
            published = s.frames_published
        pipe = self._pipeline
        if pipe is not None:
            latency.update(history_frames=pipe.history_length, sequence_resets=pipe.resets)
        in_level, in_msg = self._input_alarms.summary(now, "inputs OK")
        inf_level, inf_msg = self._inference_alarms.summary(now, "running" if published else "no frame processed yet")
        if inf_level == OK and not published:
            inf_level = WARN
        device = self._p["device"]
        statuses = [
            conv.diagnostic_status(
                f"{name}: model",
                self._model_status[0],
                self._model_status[1],
                {"checkpoint": self._p["checkpoint"]},
                hardware_id=device,
            ),
            conv.diagnostic_status(f"{name}: inputs", in_level, in_msg, input_values, hardware_id=device),
            conv.diagnostic_status(f"{name}: inference", inf_level, inf_msg, latency, hardware_id=device),
        ]
        self._pub_diagnostics.publish(conv.diagnostic_array(self.get_clock().now().to_msg(), statuses))

    # ------------------------------------------------------------------ shutdown
    def _teardown_helpers(self, join_s: float = SHUTDOWN_JOIN_S) -> None:
        """Stop the worker and the helper nodes (each waited for at most ``join_s``)."""
        stop, cv, worker = (getattr(self, n, None) for n in ("_stop", "_mailbox_cv", "_worker"))
        if stop is not None:  # None when __init__ failed early (bad parameters)
            stop.set()
        if cv is not None:
            with cv:
                cv.notify_all()
        helpers = getattr(self, "_helpers", [])
        for _, executor, _ in helpers:
            executor.shutdown(timeout_sec=0.0)
        for node, _, thread in helpers:
            if thread.is_alive() and threading.current_thread() is not thread:
                thread.join(timeout=join_s)
            node.destroy_node()
        helpers.clear()
        if worker is not None and worker.is_alive() and threading.current_thread() is not worker:
            worker.join(timeout=join_s)

    def destroy_node(self, join_s: float = SHUTDOWN_JOIN_S) -> None:
        """Stop the worker (waiting at most ``join_s`` for a step in progress) and the AskScene helper, then
        destroy the node."""
        self._teardown_helpers(join_s)
        super().destroy_node()


def main(args: Optional[list[str]] = None, exit_process: bool = True) -> int:
    """Console script ``driving_node``: spin the node under a SingleThreadedExecutor until Ctrl-C / SIGTERM.

    Args:
        args: command line (default ``sys.argv``), ``--ros-args`` included.
        exit_process: after the node and rclpy are shut down, end the process at once with ``os._exit`` (the
            interpreter's own teardown of torch alone takes 1-3 s on a loaded machine, which made Ctrl-C look
            ignored); False returns the exit code instead (for callers that embed the node).
    Returns:
        0 on a clean stop, 2 on invalid parameters, a missing or unreadable file (calibration, checkpoint) (only
        when ``exit_process`` is False; otherwise the process exits with it).
    """
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = DrivingNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_WAKE_S)  # returns at least every SPIN_WAKE_S: signals are seen
            if node.model_status[0] >= ERROR:  # the checkpoint could not be loaded: a process has nothing to do
                print(f"driving_node: error: {node.model_status[1]}", file=sys.stderr)
                code = 2
                break
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ValueError, FileNotFoundError) as exc:  # bad parameters, calibration file: one line, no traceback
        print(f"driving_node: error: {' '.join(str(exc).split())}", file=sys.stderr)
        code = 2
    except Exception:
        # SIGINT between the rclpy.ok() check and the wait: rclpy's handler has already shut the context down and
        # the wait set cannot be built (RCLError "the given context is not valid"): a normal stop, not a crash
        if rclpy.ok():
            raise
    finally:
        # a terminal's Ctrl-C reaches the whole process group and ros2 launch forwards a second SIGINT: ignore
        # further ones so no KeyboardInterrupt aborts the teardown (the node would exit -2 mid-destroy)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    if exit_process:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
