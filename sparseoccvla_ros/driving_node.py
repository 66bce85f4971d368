"""The SparseOccVLA driving node: six cameras + odometry in; occupancy, forecast, plan, explanation out (DESIGN.md §5).

Run (pip-only ROS 2, from the repository root)::

    driving_node --ros-args --params-file config/driving.yaml -p checkpoint:=DIR -r __ns:=/sparseoccvla \
        -r ~/input/CAM_FRONT/image:=/CAM_FRONT/image_rect_compressed ...   (or edit the YAML / use the launch file)

On a full ROS 2 install: ``ros2 launch sparseoccvla_ros driving.launch.py checkpoint:=DIR``.

I/O only (STYLE.md "Model vs. runtime vs. node"): messages are converted by :mod:`.conversions`, camera sets are
built by :mod:`.synchronizer`, all model work happens in :class:`~sparseoccvla_core.pipeline.SparseOccVLAPipeline`.

Threads: subscription callbacks only store messages (O(1)) in their own mutually exclusive callback group; a
camera set that completes replaces the pending one in a one-slot mailbox (a replaced set is counted as dropped:
the node processes only the newest complete set when it falls behind).  One worker thread loads the model, decodes
images, runs ``pipeline.step`` and publishes.  ``~/ask_scene`` and the diagnostics timer have their own callback
groups, so under the :class:`~rclpy.executors.MultiThreadedExecutor` of :func:`main` neither sensor callbacks nor
``/clock`` are ever starved by inference.

Camera extrinsics (cam2ego): one precedence rule - per camera, a transform from ``/tf_static`` (ego frame ->
camera frame, when ``tf2_msgs`` is importable, i.e. on a full ROS 2 install) wins over the calibration YAML
(``calibration_file``); the YAML covers every camera ``/tf_static`` does not.  With no YAML and no ``tf2_msgs``
the node refuses to start; a camera set whose cameras are not all calibrated is rejected with an ERROR diagnostic.
Intrinsics come from each camera's CameraInfo (latest), else from the YAML.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (
    QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data,
)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import String, UInt8
from visualization_msgs.msg import MarkerArray

from sparseoccvla_core.batch import CAMERA_NAMES
from sparseoccvla_core.data.images import CorruptImageError
from sparseoccvla_core.pipeline import CameraFrame, FrameInput, PipelineOptions, SparseOccVLAPipeline, StepResult
from sparseoccvla_msgs.msg import DrivingPlan, OccupancyForecast
from sparseoccvla_msgs.srv import AskScene

from . import conversions as conv
from .synchronizer import (
    NS_PER_S, CameraSet, CameraSetSynchronizer, OdometryHistory, OdometryLookupError,
)

try:  # only on a full ROS 2 install (not on PyPI, ROS_NOTES.md §1.0)
    from tf2_msgs.msg import TFMessage  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the install
    TFMessage = None

OK, WARN, ERROR, STALE = 0, 1, 2, 3
#: Seconds between repeats of the same kind of bad-input warning in the log.
WARN_THROTTLE_S = 5.0
#: A camera whose last image is this much older than the freshest camera's is reported as silent, s (wall time).
CAMERA_SILENT_S = 1.0


@dataclass(frozen=True)
class _Param:
    default: Any
    description: str
    read_only: bool = True
    lo: Optional[float] = None
    hi: Optional[float] = None
    choices: tuple[str, ...] = ()


#: Every parameter (config/driving.yaml lists the same keys with the same defaults; a test checks it).
PARAMETERS: dict[str, _Param] = {
    "checkpoint": _Param("", "checkpoint folder written by save_pretrained / `sparseoccvla train` (required)"),
    "device": _Param("cpu", "torch device: cpu | cuda | cuda:N"),
    "dtype": _Param("float32", "model dtype", choices=("float32", "bfloat16", "float16")),
    "frame_id": _Param("base_link", "ego frame id of every output"),
    "image_transport": _Param("compressed", "camera message type on ~/input/<CAM>/image: "
                              "compressed = sensor_msgs/CompressedImage, raw = sensor_msgs/Image",
                              choices=("compressed", "raw")),
    "calibration_file": _Param("", "camera calibration YAML (cam2ego per camera); /tf_static wins per camera "
                               "where tf2_msgs is installed"),
    "sync_slop_s": _Param(0.1, "max stamp spread (newest - oldest) of one camera set, s", lo=0.0, hi=10.0),
    "sync_queue_size": _Param(4, "pending messages kept per camera by the synchronizer", lo=1, hi=100),
    "sync_min_period_s": _Param(0.25, "lower bound of each camera's frame period, s; lets a set be emitted as soon "
                                "as its last camera arrives (0 = wait for the next frames, one period of latency)",
                                lo=0.0, hi=10.0),
    "odometry_history_s": _Param(3.0, "odometry kept for lookup at the set stamp, s", lo=0.1, hi=60.0),
    "max_odometry_gap_s": _Param(0.2, "odometry farther than this from the set stamp -> frame rejected, s",
                                 lo=0.0, hi=10.0),
    "acceleration_window_s": _Param(0.5, "ego acceleration = velocity difference over this window, s "
                                    "(0.5 = the key-frame interval the training data uses)", lo=0.01, hi=5.0),
    "reset_time_gap_s": _Param(1.5, "a larger gap between frames starts a new sequence, s", False, 0.01, 3600.0),
    "reset_pose_jump_m": _Param(20.0, "a larger jump in ego position starts a new sequence, m", False, 0.01, 1e6),
    "score_threshold": _Param(0.3, "occupancy points below this score are not published (0..1)", False, 0.0, 1.0),
    "explain": _Param(True, "publish the language explanation (~/output/explanation and a text marker) every "
                      "frame; the reasoning is always generated because the planner attends to it", False),
    "history_interval_s": _Param(0.0, "minimum spacing of the model's past frames, s; 0 = every processed frame "
                                 "(key-frame streams); 0.5 when cameras run faster than the key frames the checkpoint "
                                 "was trained on", False, 0.0, 10.0),
    "max_question_chars": _Param(1000, "AskScene rejects longer questions, characters", False, 1, 100000),
    "driving_command": _Param(1, "driving command (0 left, 1 straight, 2 right) used until one arrives on "
                              "~/input/command", False, 0, 2),
    "diagnostics_period_s": _Param(1.0, "/diagnostics publishing period, s", lo=0.05, hi=60.0),
}


def _descriptor(name: str, p: _Param) -> ParameterDescriptor:
    d = ParameterDescriptor(name=name, description=p.description, read_only=p.read_only)
    if p.choices:
        d.additional_constraints = "one of: " + ", ".join(p.choices)
    if p.lo is not None:
        if isinstance(p.default, bool):
            pass
        elif isinstance(p.default, int):
            d.integer_range = [IntegerRange(from_value=int(p.lo), to_value=int(p.hi), step=1)]
        else:
            d.floating_point_range = [FloatingPointRange(from_value=float(p.lo), to_value=float(p.hi), step=0.0)]
    return d


class _Stats:
    """Counters and timings reported on /diagnostics (written by callbacks and the worker)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sets_completed = 0
        self.sets_dropped = 0  # complete sets replaced before the worker took them (fell behind)
        self.frames_published = 0
        self.ignored_no_clock = 0
        self.bad_input: dict[str, int] = {}
        self.last_problem = ""
        self.last_problem_level = OK
        self.problem_since_report = False
        self.publish_times: deque[float] = deque(maxlen=50)  # node-clock seconds of published frames
        self.last_timings: dict[str, float] = {}
        self.last_latency_s = float("nan")
        self.last_age_s = float("nan")
        self.last_stamp_ns = 0

    def problem(self, kind: str, text: str, level: int = WARN) -> None:
        with self.lock:
            self.bad_input[kind] = self.bad_input.get(kind, 0) + 1
            self.last_problem, self.last_problem_level, self.problem_since_report = text, level, True


class DrivingNode(Node):
    """SparseOccVLA driving node (topics, parameters and threads: see the module docstring and README).

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
            super().destroy_node()  # release the half-built node's handles before reporting the error
            raise

    def _setup(self) -> None:
        for name, p in PARAMETERS.items():
            self.declare_parameter(name, p.default, _descriptor(name, p))
        self._p = {name: self.get_parameter(name).value for name in PARAMETERS}
        self._validate_parameters()

        self.stats = _Stats()
        self._pipeline: Optional[SparseOccVLAPipeline] = None
        self._model_status = (WARN, "loading the model")
        self._command = int(self._p["driving_command"])
        self._stop = threading.Event()
        self._mailbox: Optional[tuple[CameraSet, float]] = None
        self._mailbox_cv = threading.Condition()

        # --- calibration: YAML first, /tf_static overrides per camera (one documented rule)
        self._yaml_cal: dict[str, conv.CameraCalibration] = {}
        self._tf_cam2ego: dict[str, np.ndarray] = {}
        self._tf_transforms: dict[str, Any] = {}
        ego_frame = self._p["frame_id"]
        if self._p["calibration_file"]:
            self._yaml_cal, yaml_ego = conv.load_calibration(self._p["calibration_file"])
            if yaml_ego != ego_frame:
                self.get_logger().warning(
                    f"calibration_file maps cameras into '{yaml_ego}' but frame_id is '{ego_frame}'; "
                    "the extrinsics are used as cam2ego of the output frame"
                )
        elif TFMessage is None:
            raise ValueError(
                "no source of camera extrinsics: set the calibration_file parameter to the calibration YAML "
                "(the bag converter writes one beside every bag); /tf_static needs tf2_msgs, which this ROS 2 "
                "install (pip-only rclpy) does not have"
            )
        self._camera_info: dict[str, tuple[np.ndarray, tuple[int, int], str]] = {}
        self._last_msg_time: dict[str, float] = {}

        # --- input handling
        self._sync = CameraSetSynchronizer(
            CAMERA_NAMES, queue_size=int(self._p["sync_queue_size"]), max_span_s=float(self._p["sync_slop_s"]),
            min_period_s=float(self._p["sync_min_period_s"]),
        )
        self._odometry = OdometryHistory(
            max_age_s=float(self._p["odometry_history_s"]), max_gap_s=float(self._p["max_odometry_gap_s"])
        )
        self._sensor_group = MutuallyExclusiveCallbackGroup()
        self._service_group = MutuallyExclusiveCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        # Cameras: best effort (sensor data), depth 2 - the synchronizer keeps its own bounded queues and callbacks
        # only store, so a deeper DDS queue would only deliver stale frames (ROS_NOTES §3).
        image_qos = QoSProfile(
            reliability=QoSReliabilityPolicy.BEST_EFFORT, history=QoSHistoryPolicy.KEEP_LAST, depth=2,
            durability=QoSDurabilityPolicy.VOLATILE,
        )
        image_type = CompressedImage if self._p["image_transport"] == "compressed" else Image
        for cam in CAMERA_NAMES:
            self.create_subscription(
                image_type, f"~/input/{cam}/image", lambda msg, cam=cam: self._on_image(cam, msg), image_qos,
                callback_group=self._sensor_group,
            )
            self.create_subscription(
                CameraInfo, f"~/input/{cam}/camera_info", lambda msg, cam=cam: self._on_camera_info(cam, msg),
                qos_profile_sensor_data, callback_group=self._sensor_group,
            )
        odom_qos = QoSProfile(reliability=QoSReliabilityPolicy.BEST_EFFORT, depth=20)  # accepts reliable publishers
        self.create_subscription(Odometry, "~/input/odometry", self._on_odometry, odom_qos, callback_group=self._sensor_group)
        self.create_subscription(UInt8, "~/input/command", self._on_command, 10, callback_group=self._sensor_group)
        if TFMessage is not None:
            tf_qos = QoSProfile(
                reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL, depth=100
            )
            self.create_subscription(TFMessage, "/tf_static", self._on_tf_static, tf_qos, callback_group=self._sensor_group)

        # --- outputs: reliable, depth 1 (large clouds are lost best-effort, ROS_NOTES §1.e)
        out_qos = QoSProfile(
            reliability=QoSReliabilityPolicy.RELIABLE, history=QoSHistoryPolicy.KEEP_LAST, depth=1,
            durability=QoSDurabilityPolicy.VOLATILE,
        )
        self._pub_occupancy = self.create_publisher(PointCloud2, "~/output/occupancy", out_qos)
        self._pub_forecast = self.create_publisher(OccupancyForecast, "~/output/forecast", out_qos)
        self._pub_forecast_cloud = self.create_publisher(PointCloud2, "~/output/forecast_cloud", out_qos)
        self._pub_plan = self.create_publisher(DrivingPlan, "~/output/plan", out_qos)
        self._pub_path = self.create_publisher(PathMsg, "~/output/path", out_qos)
        self._pub_explanation = self.create_publisher(String, "~/output/explanation", out_qos)
        self._pub_markers = self.create_publisher(MarkerArray, "~/debug/markers", out_qos)
        self._pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        self.create_service(AskScene, "~/ask_scene", self._on_ask, callback_group=self._service_group)
        self._diag_timer = self.create_timer(
            float(self._p["diagnostics_period_s"]), self._publish_diagnostics, callback_group=self._timer_group
        )
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._worker = threading.Thread(target=self._run_worker, name="sparseoccvla-inference", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ parameters
    def _validate_parameters(self) -> None:
        for name, p in PARAMETERS.items():
            if p.choices and self._p[name] not in p.choices:
                raise ValueError(f"parameter {name} = {self._p[name]!r}; expected one of {list(p.choices)}")
        if not self._p["checkpoint"]:
            raise ValueError("parameter checkpoint is empty: give the folder written by save_pretrained "
                             "(-p checkpoint:=DIR or the params file)")

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
            reset_time_gap_s=float(self._p["reset_time_gap_s"]), reset_pose_jump_m=float(self._p["reset_pose_jump_m"]),
            score_threshold=float(self._p["score_threshold"]), max_question_chars=int(self._p["max_question_chars"]),
            history_interval_s=float(self._p["history_interval_s"]),
        )

    def _apply_options(self, pipe: SparseOccVLAPipeline) -> None:
        opts = self._options()
        pipe.options.reset_time_gap_s = opts.reset_time_gap_s
        pipe.options.reset_pose_jump_m = opts.reset_pose_jump_m
        pipe.options.score_threshold = opts.score_threshold
        pipe.options.max_question_chars = opts.max_question_chars
        pipe.options.history_interval_s = opts.history_interval_s

    # ------------------------------------------------------------------ callbacks (O(1): store and return)
    def _clock_ready(self) -> bool:
        """False while use_sim_time is on and no /clock has arrived (now() == 0): inputs are ignored."""
        if self.get_clock().now().nanoseconds == 0:
            with self.stats.lock:
                self.stats.ignored_no_clock += 1
            return False
        return True

    def _warn(self, kind: str, text: str, level: int = WARN) -> None:
        self.stats.problem(kind, text, level)
        self.get_logger().warning(text, throttle_duration_sec=WARN_THROTTLE_S)

    def _on_image(self, cam: str, msg: Any) -> None:
        if not self._clock_ready():
            return
        self._last_msg_time[cam] = time.monotonic()
        stamp = conv.stamp_to_ns(msg.header.stamp)
        if stamp == 0:
            self._warn("no_stamp", f"{cam}: image without header.stamp ignored (publish real stamps)")
            return
        before = (self._sync.stats.late, self._sync.stats.resets)
        sets = self._sync.add(cam, stamp, msg)
        if self._sync.stats.late > before[0]:
            self._warn("out_of_order", f"{cam}: image stamp {stamp} ns is older than the last synchronized set; dropped")
        if self._sync.stats.resets > before[1]:
            self._warn("time_jump", "camera stamps jumped backwards (bag loop / new bag): synchronizer reset")
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
        if msg.data > 2:
            self._warn("command", f"driving command {msg.data} ignored (0 left, 1 straight, 2 right)")
            return
        self._command = int(msg.data)

    def _on_tf_static(self, msg: Any) -> None:  # pragma: no cover - needs tf2_msgs (full ROS 2 install)
        for t in msg.transforms:
            self._tf_transforms[t.child_frame_id.lstrip("/")] = t
        frames = {cam: self._camera_frame(cam) for cam in CAMERA_NAMES}
        self._tf_cam2ego = conv.tf_to_cam2ego(self._tf_transforms.values(), self._p["frame_id"], frames)

    def _camera_frame(self, cam: str) -> str:
        info = self._camera_info.get(cam)
        if info is not None and info[2]:
            return info[2]
        cal = self._yaml_cal.get(cam)
        return cal.frame_id if cal is not None else cam

    # ------------------------------------------------------------------ worker
    def _run_worker(self) -> None:
        try:
            pipe = SparseOccVLAPipeline.from_pretrained(
                self._p["checkpoint"], options=self._options(), device=self._p["device"], dtype=self._p["dtype"]
            )
        except Exception as exc:  # noqa: BLE001 - any load failure must surface as an ERROR diagnostic
            self._model_status = (ERROR, f"model failed to load: {exc}")
            self.get_logger().error(f"could not load checkpoint '{self._p['checkpoint']}': {exc}")
            return
        self._pipeline = pipe
        cfg = pipe.cfg
        self._model_status = (OK, f"model loaded ({cfg.num_queries} queries, {cfg.num_frames} frames, {pipe.device})")
        self.get_logger().info(f"SparseOccVLA loaded from {self._p['checkpoint']} on {pipe.device}")
        while not self._stop.is_set():
            with self._mailbox_cv:
                if self._mailbox is None:
                    self._mailbox_cv.wait(timeout=0.1)
                item, self._mailbox = self._mailbox, None
            if item is None:
                continue
            try:
                self._process(pipe, *item)
            except Exception as exc:  # noqa: BLE001 - the node must survive any single bad frame
                self._warn("inference", f"frame dropped: {type(exc).__name__}: {exc}", ERROR)
                self._publish_diagnostics()

    def _lookup_odometry(self, stamp_ns: int) -> Any:
        """Odometry at the set stamp; waits briefly (<= max_odometry_gap_s) when odometry lags the cameras."""
        deadline = time.monotonic() + float(self._p["max_odometry_gap_s"])
        while True:
            try:
                return self._odometry.lookup(stamp_ns)
            except OdometryLookupError:
                if time.monotonic() >= deadline or self._stop.is_set():
                    raise
                time.sleep(0.005)

    def _frame_input(self, pipe: SparseOccVLAPipeline, cset: CameraSet) -> FrameInput:
        """Decode and calibrate one camera set (raises ValueError subclasses on bad input)."""
        target_hw = tuple(pipe.cfg.image_size)
        missing = [c for c in CAMERA_NAMES if c not in self._tf_cam2ego and c not in self._yaml_cal]
        if missing:
            raise conv.ConversionError(
                f"no extrinsics (cam2ego) for cameras {missing}: add them to calibration_file"
                + (" or publish them on /tf_static" if TFMessage is not None else "")
            )
        cameras = []
        for cam in CAMERA_NAMES:
            msg = cset.messages[cam]
            scale = 1.0
            if isinstance(msg, CompressedImage):
                r = conv.jpeg_reduction(msg, target_hw)
                rgb = conv.decode_compressed_image(msg, reduction=r)
                scale = 1.0 / r
            else:
                rgb = conv.image_to_rgb(msg)
            info = self._camera_info.get(cam)
            cal = self._yaml_cal.get(cam)
            if info is not None:
                k, (h, w) = info[0], info[1]
            elif cal is not None and cal.intrinsics is not None:
                k = cal.intrinsics
                w, h = cal.image_size if cal.image_size is not None else (round(rgb.shape[1] / scale), round(rgb.shape[0] / scale))
            else:
                raise conv.ConversionError(f"{cam}: no CameraInfo received yet and no intrinsics in calibration_file")
            expect = (round(h * scale), round(w * scale))
            if h > 0 and w > 0 and rgb.shape[:2] != expect:
                raise conv.ConversionError(
                    f"{cam}: image is {rgb.shape[1]}x{rgb.shape[0]} but its calibration is for {w}x{h}"
                    + (f" (decoded at 1/{round(1 / scale)})" if scale != 1.0 else "")
                )
            cam2ego = self._tf_cam2ego.get(cam)
            if cam2ego is None:
                cam2ego = cal.cam2ego  # type: ignore[union-attr]
            cameras.append(CameraFrame(cam, rgb, conv.scale_intrinsics(k, scale), cam2ego))
        odom = self._lookup_odometry(cset.stamp_ns)
        acc = self._odometry.acceleration(cset.stamp_ns, float(self._p["acceleration_window_s"]))
        return FrameInput(
            cameras=cameras, ego2global=odom.pose_matrix(), velocity=odom.linear_velocity[:2],
            acceleration=acc[:2], yaw_rate=float(odom.angular_velocity[2]), stamp_ns=cset.stamp_ns,
            command=self._command,
        )

    def _process(self, pipe: SparseOccVLAPipeline, cset: CameraSet, t_ready: float) -> None:
        t0 = time.perf_counter()
        try:
            frame = self._frame_input(pipe, cset)
        except CorruptImageError as exc:
            self._warn("corrupt_image", f"camera set at {cset.stamp_ns} ns dropped: {exc}", ERROR)
            self._publish_diagnostics()
            return
        except OdometryLookupError as exc:
            self._warn("odometry_gap", f"camera set at {cset.stamp_ns} ns dropped: {exc}")
            self._publish_diagnostics()
            return
        except ValueError as exc:
            self._warn("bad_input", f"camera set at {cset.stamp_ns} ns dropped: {exc}", ERROR)
            self._publish_diagnostics()
            return
        t_decode = time.perf_counter() - t0
        try:
            result = pipe.step(frame)
        except ValueError as exc:
            self._warn("bad_input", f"camera set at {cset.stamp_ns} ns rejected by the pipeline: {exc}", ERROR)
            self._publish_diagnostics()
            return
        if result.sequence_reset and pipe.frames_processed > 1:
            self.get_logger().info(f"new sequence: {result.reset_reason}", throttle_duration_sec=WARN_THROTTLE_S)
        t1 = time.perf_counter()
        self._publish_result(result)
        t_publish = time.perf_counter() - t1
        now = self.get_clock().now().nanoseconds
        with self.stats.lock:
            s = self.stats
            s.frames_published += 1
            s.last_timings = {"decode": t_decode, **result.timings_s, "publish": t_publish}
            s.last_latency_s = time.perf_counter() - t_ready
            s.last_age_s = (now - cset.stamp_ns) / NS_PER_S
            s.last_stamp_ns = cset.stamp_ns
            s.publish_times.append(now / NS_PER_S)

    def _publish_result(self, result: StepResult) -> None:
        """Every output carries the input set's stamp (never now())."""
        frame_id, stamp = self._p["frame_id"], result.stamp_ns
        header = conv.make_header(stamp, frame_id)
        self._pub_occupancy.publish(conv.occupancy_to_pointcloud2(result.occupancy, header))
        self._pub_forecast.publish(conv.forecast_to_msg(result.forecast, stamp, frame_id))
        self._pub_forecast_cloud.publish(conv.forecast_to_time_cloud(result.forecast, header))
        plan, path = conv.plan_to_msgs(result.plan, result.explanation, stamp, frame_id)
        self._pub_plan.publish(plan)
        self._pub_path.publish(path)
        explain = bool(self._p["explain"])
        if explain:
            self._pub_explanation.publish(String(data=result.explanation))
        voxel = self._pipeline.cfg.voxel_size if self._pipeline is not None else 0.4
        self._pub_markers.publish(conv.result_to_markers(result, frame_id, voxel, show_text=explain))

    # ------------------------------------------------------------------ service
    def _on_ask(self, request: AskScene.Request, response: AskScene.Response) -> AskScene.Response:
        t0 = time.perf_counter()
        pipe = self._pipeline
        if pipe is None:
            response.success, response.error_message = False, f"the model is not ready: {self._model_status[1]}"
        else:
            try:
                answer = pipe.ask(request.question)
                response.success, response.answer = True, answer.text
                response.scene_stamp = conv.ns_to_stamp(answer.stamp_ns)
            except (ValueError, RuntimeError) as exc:
                response.success, response.error_message = False, str(exc)
        response.latency_s = float(time.perf_counter() - t0)
        return response

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        name = self.get_name()
        now = self.get_clock().now()
        wall = time.monotonic()
        s = self.stats
        sync = self._sync.stats
        with s.lock:
            times = list(s.publish_times)
            window = [t for t in times if t >= now.nanoseconds / NS_PER_S - 10.0]
            rate = (len(window) - 1) / (window[-1] - window[0]) if len(window) >= 2 and window[-1] > window[0] else 0.0
            level, message = (s.last_problem_level, s.last_problem) if s.problem_since_report else (OK, "inputs OK")
            s.problem_since_report = False
            bad = dict(s.bad_input)
            timings = dict(s.last_timings)
            input_values: dict[str, Any] = {
                "sets_completed": s.sets_completed, "sets_dropped_behind": s.sets_dropped,
                "sync_messages_dropped": sync.dropped, "sync_late_messages": sync.late,
                "sync_resets": sync.resets, "ignored_before_clock": s.ignored_no_clock,
                **{f"bad_{k}": v for k, v in bad.items()},
            }
            latency = {
                "frames_published": s.frames_published, "rate_hz": rate, "latency_s": s.last_latency_s,
                "input_age_s": s.last_age_s, "last_stamp_ns": s.last_stamp_ns,
                **{f"time_{k}_s": v for k, v in timings.items()},
            }
        for topic in (*CAMERA_NAMES, "odometry"):
            last = self._last_msg_time.get(topic)
            input_values[f"age_{topic}_s"] = float("inf") if last is None else wall - last
        silent = [t for t in CAMERA_NAMES if t not in self._last_msg_time]
        ages = {t: input_values[f"age_{t}_s"] for t in CAMERA_NAMES}
        freshest = min(ages.values())
        # a camera far behind the others has stopped (cameras of one rig publish within milliseconds of each other)
        lagging = [t for t, a in ages.items() if a - freshest > CAMERA_SILENT_S and t not in silent]
        if level == OK and silent and s.sets_completed == 0:
            level, message = WARN, f"waiting for cameras {silent}"
        elif level == OK and (lagging or (silent and freshest < CAMERA_SILENT_S)):
            level, message = WARN, f"no images from cameras {silent + lagging} while others publish: no camera set completes"
        pipe = self._pipeline
        if pipe is not None:
            latency.update(history_frames=pipe.history_length, sequence_resets=pipe.resets)
        statuses = [
            conv.diagnostic_status(f"{name}: model", self._model_status[0], self._model_status[1],
                                   {"checkpoint": self._p["checkpoint"]}, hardware_id=self._p["device"]),
            conv.diagnostic_status(f"{name}: inputs", level, message, input_values, hardware_id=self._p["device"]),
            conv.diagnostic_status(f"{name}: inference", OK if s.frames_published else WARN,
                                   "running" if s.frames_published else "no frame processed yet", latency,
                                   hardware_id=self._p["device"]),
        ]
        self._pub_diagnostics.publish(conv.diagnostic_array(now.to_msg(), statuses))

    # ------------------------------------------------------------------ shutdown
    def destroy_node(self) -> None:
        """Stop the worker thread, then destroy the node."""
        stop, cv, worker = (getattr(self, n, None) for n in ("_stop", "_mailbox_cv", "_worker"))
        if stop is not None:  # None when __init__ failed early (bad parameters)
            stop.set()
        if cv is not None:
            with cv:
                cv.notify_all()
        if worker is not None and worker.is_alive() and threading.current_thread() is not worker:
            worker.join(timeout=30.0)
        super().destroy_node()


def main(args: Optional[list[str]] = None) -> int:
    """Console script ``driving_node``: spin the node under a MultiThreadedExecutor until Ctrl-C."""
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = DrivingNode()
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ValueError, FileNotFoundError) as exc:
        print(f"driving_node: {exc}")
        code = 1
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
