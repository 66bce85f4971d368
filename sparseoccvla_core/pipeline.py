"""Streaming inference for one vehicle: ``SparseOccVLAPipeline.step(frame)`` / ``ask(question)`` (docs/design.md §5).

The pipeline owns a :class:`~sparseoccvla_core.model.SparseOccVLA` and the streaming state of one vehicle.  It
runs the model's public step methods (paper sec. 3, the same steps ``SparseOccVLA.predict`` runs) so that no work
is done twice on the stream:

1. **Backbone** (part 1): only the *new* frame's six images go through the ResNet + FPN.  The features of the
   past ``num_frames - 1`` frames are cached with their intrinsics, cam2ego and ego pose (a frame goes through
   the backbone once, ever).
2. **Sparse occupancy encoder** (sec. 3.1) on [current, cached past frames] (most recent first; missing past
   frames at the start of a sequence are padded with the oldest real frame and marked invalid, as the loaders do).
3. **LLM** (sec. 3.2): the scene prefix ``[T_o, T_g, T_ego]`` is encoded once per frame; its KV cache is kept
   and reused by the planning reasoning (generated here for the checkpoint's ``cfg.plan_question``, the prompt the
   plan stream was trained with; its hidden states T_r guide the planner) and by every later
   :meth:`SparseOccVLAPipeline.ask` about this frame.
4. **Forecaster** (eq. 6-7): T future frames from T'_o (LLM states of the occupancy tokens) and Q_L.
5. **Planner** (sec. 3.3, eq. 8): anchors scored with the reasoning, truncated DDIM denoising, chosen anchor.

A sequence reset (stamp not after the previous one, a time gap above ``reset_time_gap_s``, an ego jump above
``reset_pose_jump_m``, or an explicit :meth:`~SparseOccVLAPipeline.reset`) clears the frame history.

Inputs and outputs are small dataclasses of numpy arrays in SI units and the ego frame (no ROS here; the ROS
node converts messages with ``sparseoccvla_ros/conversions.py``).  Usage::

    pipe = SparseOccVLAPipeline.from_pretrained("ckpt")
    result = pipe.step(FrameInput(cameras=[CameraFrame("CAM_FRONT", rgb, K, cam2ego), ...],
                                  ego2global=pose, velocity=(v, 0), acceleration=(0, 0), yaw_rate=0.0,
                                  stamp_ns=t))
    print(result.explanation, result.plan.waypoints)
    print(pipe.ask("Is there a pedestrian ahead?").text)
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .batch import CAMERA_NAMES, EGO_STATE_DIM, CameraRig
from .config import SparseOccVLAConfig
from .data.images import resize_crop_array
from .geometry.camera import ResizeCrop, invert_pose, resize_crop_for
from .geometry.ego_box import path_headings as _path_headings
from .geometry.ego_motion import COMMAND_STRAIGHT
from .llm import ScenePrefix
from .model import DEFAULT_SCORE_THRESHOLD, SparseOccVLA
from .occupancy_encoder import decode_occupancy

#: Stage names of :attr:`StepResult.timings_s` (in execution order).
STAGES: tuple[str, ...] = ("preprocess", "backbone", "encoder", "llm", "forecaster", "planner", "decode")


# ----------------------------------------------------------------------------------------------- inputs
@dataclass
class CameraFrame:
    """One camera image with its calibration.

    Args:
        name: camera name, one of :data:`~sparseoccvla_core.batch.CAMERA_NAMES`.
        image: [H, W, 3] uint8 RGB (any size; resized / cropped to ``cfg.image_size`` with ``intrinsics`` updated).
        intrinsics: [3, 3] pinhole K of ``image``, pixels.
        cam2ego: [4, 4] camera -> ego transform (camera axes: x right, y down, z forward), m.
    """

    name: str
    image: np.ndarray
    intrinsics: np.ndarray
    cam2ego: np.ndarray


@dataclass
class FrameInput:
    """One synchronized key frame.

    Args:
        cameras: the six cameras (any order; matched by name).
        ego2global: [4, 4] ego pose in the global (odometry / map) frame, m.
        velocity: (vx, vy) ego-frame velocity, m/s (a third component is ignored).
        acceleration: (ax, ay) ego-frame acceleration, m/s^2 (a third component is ignored).
        yaw_rate: rad/s.
        stamp_ns: stamp of the camera set, ns.
        command: driving command (0 left, 1 straight, 2 right), from a route planner.
    """

    cameras: Sequence[CameraFrame]
    ego2global: np.ndarray
    velocity: Sequence[float]
    acceleration: Sequence[float]
    yaw_rate: float
    stamp_ns: int
    command: int = COMMAND_STRAIGHT


# ----------------------------------------------------------------------------------------------- outputs
@dataclass
class OccupancyFrame:
    """Sparse semantic occupancy of one frame.

    Args:
        points: [M, 3] float32 occupied voxel centres in this frame's ego frame, m.
        classes: [M] uint8 Occ3D labels (0..16).
        scores: [M] float32 sigmoid scores in [0, 1].
        time_s: seconds after the input stamp (0 for the current frame).
        ego_pose: [4, 4] float64 pose of this frame's ego frame in the current ego frame (identity for the current
            frame; for a forecast frame, the planned pose at ``time_s``).
    """

    points: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    time_s: float
    ego_pose: np.ndarray


@dataclass
class PlanResult:
    """The planner's output (current ego frame, x forward / y left, m).

    Args:
        waypoints: [T, 2] float32 chosen trajectory, ``waypoint_dt`` apart, first one step after the stamp.
        anchors: [K, T, 2] float32 every anchor after denoising.
        anchor_scores: [K] float32 scorer probabilities.
        anchor_commands: [K] int64 driving command each anchor was clustered for.
        chosen_anchor: index of ``waypoints`` in ``anchors``.
        waypoint_dt: seconds between waypoints.
    """

    waypoints: np.ndarray
    anchors: np.ndarray
    anchor_scores: np.ndarray
    anchor_commands: np.ndarray
    chosen_anchor: int
    waypoint_dt: float


@dataclass
class StepResult:
    """Everything one :meth:`SparseOccVLAPipeline.step` produces.

    Args:
        stamp_ns: the input frame's stamp (every output is about this instant), ns.
        occupancy: current occupancy.
        forecast: T future frames (``cfg.forecast_frames``), each in its own future ego frame.
        plan: the plan.
        explanation: the LLM's driving reasoning (the tokens the planner attended to), as text.
        timings_s: seconds per stage (:data:`STAGES`) and ``total``.
        sequence_reset: True when this frame started a new sequence (history cleared first).
        reset_reason: why (empty when no reset).
        history_frames: past frames used by the encoder (0 .. num_frames - 1).
    """

    stamp_ns: int
    occupancy: OccupancyFrame
    forecast: list[OccupancyFrame]
    plan: PlanResult
    explanation: str
    timings_s: dict[str, float]
    sequence_reset: bool
    reset_reason: str
    history_frames: int


@dataclass
class Answer:
    """Answer of :meth:`SparseOccVLAPipeline.ask`.

    Args:
        text: the generated answer.
        stamp_ns: stamp of the frame the answer is about, ns.
        latency_s: seconds spent (waiting for the scene + generation).
        prompt_tokens: tokens of the question prompt run through the LLM (the scene prefix is not re-run).
        generated_tokens: tokens generated.
    """

    text: str
    stamp_ns: int
    latency_s: float
    prompt_tokens: int
    generated_tokens: int


@dataclass
class PipelineOptions:
    """Run-time knobs of the pipeline (deployment, not model hyper-parameters).

    Args:
        reset_time_gap_s: a larger gap between consecutive frames starts a new sequence, s.
        reset_pose_jump_m: a larger jump of the ego position between consecutive frames starts a new sequence, m.
        score_threshold: occupancy points below this score are dropped (current and forecast frames).
        max_question_chars: :meth:`SparseOccVLAPipeline.ask` rejects longer questions.
        history_interval_s: minimum spacing of the cached past frames, s.  0 = every processed frame joins the
            history (right for a key-frame stream).  With cameras faster than the spacing the checkpoint was trained
            with (12 Hz sweeps, key-frame history 0.5 s apart) set that spacing: a frame joins the history only when
            it is at least 0.9 x this after the newest cached frame (every frame still goes through the backbone
            exactly once).
        seed: seed of the diffusion noise generator (deterministic plans for a given input stream).
    """

    reset_time_gap_s: float = 1.5
    reset_pose_jump_m: float = 20.0
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    max_question_chars: int = 1000
    history_interval_s: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.reset_time_gap_s <= 0 or self.reset_pose_jump_m <= 0:
            raise ValueError("reset_time_gap_s and reset_pose_jump_m must be > 0")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if self.max_question_chars < 1:
            raise ValueError("max_question_chars must be >= 1")
        if self.history_interval_s < 0:
            raise ValueError(f"history_interval_s must be >= 0, got {self.history_interval_s}")


# ----------------------------------------------------------------------------------------------- helpers
def path_headings(waypoints: np.ndarray) -> np.ndarray:
    """Heading (rad) along a path starting at the ego origin: direction from the previous point to each waypoint.

    The same tangent rule the planning metrics use for the ego box (:func:`sparseoccvla_core.geometry.ego_box.path_headings`), for one path
    and with a 1 cm stand-still threshold.

    Args:
        waypoints: [T, 2] (x, y), m.
    Returns:
        [T] float64 yaw; a waypoint that does not move (< 1 cm) keeps the previous heading (0 at the start).
    """
    return _path_headings(np.asarray(waypoints, dtype=np.float64)[None], min_move=0.01)[0]


def poses_along_path(waypoints: np.ndarray, waypoint_dt: float, times_s: Sequence[float]) -> np.ndarray:
    """Ego poses at ``times_s`` after the stamp, interpolated along a planned path (origin at t = 0).

    Args:
        waypoints: [T, 2] (x, y) at ``waypoint_dt``, 2 * waypoint_dt, ...; m.
        waypoint_dt: seconds between waypoints.
        times_s: query times, s (clamped to the path's end).
    Returns:
        [len(times_s), 4, 4] float64 future-ego -> current-ego transforms (planar: rotation about z).
    """
    wp = np.concatenate([np.zeros((1, 2)), np.asarray(waypoints, dtype=np.float64)], axis=0)  # [T+1, 2]
    heading = np.concatenate([[0.0], path_headings(waypoints)])  # [T+1]
    heading = np.unwrap(heading)
    t_knots = np.arange(len(wp)) * waypoint_dt
    out = np.tile(np.eye(4), (len(times_s), 1, 1))
    for i, t in enumerate(times_s):
        t = float(np.clip(t, 0.0, t_knots[-1]))
        x, y = np.interp(t, t_knots, wp[:, 0]), np.interp(t, t_knots, wp[:, 1])
        yaw = float(np.interp(t, t_knots, heading))
        c, s = math.cos(yaw), math.sin(yaw)
        out[i, :2, :2] = [[c, -s], [s, c]]
        out[i, 0, 3], out[i, 1, 3] = x, y
    return out


@dataclass
class _CachedFrame:
    """Backbone features and geometry of one processed frame (the streaming history)."""

    stamp_ns: int
    features: list[torch.Tensor]  # per level [V, C, h, w]
    intrinsics: torch.Tensor  # [V, 3, 3]
    cam2ego: torch.Tensor  # [V, 4, 4]
    ego2global: np.ndarray  # [4, 4] float64 (global coordinates can be large: kept in double precision)


@dataclass
class _Scene:
    """The most recent frame's LLM scene prefix (KV cache), shared by the planner's reasoning and ``ask``."""

    stamp_ns: int
    prefix: ScenePrefix
    lock: threading.Lock = field(default_factory=threading.Lock)


class SparseOccVLAPipeline:
    """Streaming SparseOccVLA inference for one vehicle (see the module docstring).

    Thread safety: ``step`` calls are serialized; ``ask`` may run concurrently with ``step`` (e.g. from a ROS
    service thread): it answers about the most recent *completed* frame, whose KV cache it locks while generating.

    Args:
        model: the model (put in eval mode; moved to ``device`` / ``dtype``).
        options: run-time knobs.
        device: torch device.
        dtype: float32, or bfloat16 / float16 on a GPU.
    """

    def __init__(
        self,
        model: SparseOccVLA,
        options: Optional[PipelineOptions] = None,
        device: Union[str, torch.device] = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if model.tokenizer is None:
            raise ValueError("the model has no tokenizer (shape-only build); load a checkpoint with from_pretrained")
        self.options = options or PipelineOptions()
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.cfg: SparseOccVLAConfig = model.cfg
        self._history: deque[_CachedFrame] = deque(maxlen=max(0, self.cfg.num_frames - 1))
        self._last_position: Optional[np.ndarray] = None
        self._last_stamp_ns: Optional[int] = None
        self._resize_cache: dict[tuple[int, int], ResizeCrop] = {}
        self._generator = torch.Generator(device=self.device).manual_seed(self.options.seed)
        self._step_lock = threading.Lock()
        self._scene_lock = threading.Lock()  # guards self._scene (the reference), not the cache itself
        self._scene: Optional[_Scene] = None
        self.frames_processed = 0
        self.resets = 0

    @classmethod
    def from_pretrained(
        cls,
        directory: Union[str, Path],
        options: Optional[PipelineOptions] = None,
        device: Union[str, torch.device] = "cpu",
        dtype: Union[str, torch.dtype] = torch.float32,
    ) -> "SparseOccVLAPipeline":
        """Load a checkpoint (``SparseOccVLA.save_pretrained`` folder) into a pipeline.

        Args:
            directory: checkpoint folder.
            options: run-time knobs.
            device: torch device ("cpu", "cuda", "cuda:1").
            dtype: torch dtype or its name ("float32", "bfloat16", "float16").
        Raises:
            FileNotFoundError / ValueError: from ``SparseOccVLA.from_pretrained``; ValueError for an unknown dtype.
        """
        if isinstance(dtype, str):
            names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
            if dtype not in names:
                raise ValueError(f"dtype must be one of {sorted(names)}, got {dtype!r}")
            dtype = names[dtype]
        model = SparseOccVLA.from_pretrained(directory, map_location="cpu")
        return cls(model, options=options, device=device, dtype=dtype)

    # ------------------------------------------------------------------ state
    @property
    def history_length(self) -> int:
        """Past frames currently cached."""
        return len(self._history)

    @property
    def last_stamp_ns(self) -> Optional[int]:
        """Stamp of the most recent completed frame (None before the first)."""
        scene = self._scene
        return None if scene is None else scene.stamp_ns

    def reset(self) -> None:
        """Start a new sequence: forget the frame history (the last scene stays answerable by ``ask``)."""
        self._history.clear()
        self._last_position = None
        self._last_stamp_ns = None
        self.resets += 1

    def warmup(self) -> float:
        """Run one step on a blank frame, then forget it: allocations and lazy initialisation happen here rather
        than on the first real frame, whose latency would otherwise be several steps long.

        The blank frame has six black images at ``cfg.image_size`` looking forward from the ego origin (any
        geometry runs the same kernels).  Call it before the first frame: afterwards the pipeline has no history
        (as after :meth:`reset`); the answerable scene, the counters and the diffusion noise generator are those
        from before the call, so the outputs of the frames that follow are those of a pipeline never warmed up.

        Returns:
            Wall time of the warm-up step, s.
        """
        h, w = self.cfg.image_size
        k = np.array([[w, 0.0, w / 2.0], [0.0, w, h / 2.0], [0.0, 0.0, 1.0]])
        cam2ego = np.eye(4)
        cam2ego[:3, :3] = [[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]  # optical (x right, z fwd) -> ego
        cameras = [CameraFrame(name, np.zeros((h, w, 3), np.uint8), k, cam2ego) for name in CAMERA_NAMES]
        frame = FrameInput(cameras, np.eye(4), (0.0, 0.0), (0.0, 0.0), 0.0, stamp_ns=0)
        scene, resets, processed = self._scene, self.resets, self.frames_processed
        noise_state = self._generator.get_state()  # the diffusion noise of the first real frame stays the same
        t0 = time.perf_counter()
        self.step(frame)
        elapsed = time.perf_counter() - t0
        self.reset()
        with self._scene_lock:
            self._scene = scene
        self.resets, self.frames_processed = resets, processed
        self._generator.set_state(noise_state)
        return elapsed

    def _reset_reason(self, frame: FrameInput) -> str:
        if self._last_stamp_ns is None:
            return ""
        dt = (frame.stamp_ns - self._last_stamp_ns) * 1e-9
        if dt <= 0:
            return f"stamp went backwards or repeated ({dt:+.3f} s)"
        if dt > self.options.reset_time_gap_s:
            return f"time gap {dt:.3f} s > reset_time_gap_s {self.options.reset_time_gap_s}"
        jump = float(np.linalg.norm(np.asarray(frame.ego2global)[:3, 3] - self._last_position))
        if jump > self.options.reset_pose_jump_m:
            return f"ego jumped {jump:.1f} m > reset_pose_jump_m {self.options.reset_pose_jump_m}"
        return ""

    # ------------------------------------------------------------------ input validation
    def _transform_for(self, hw: tuple[int, int]) -> ResizeCrop:
        transform = self._resize_cache.get(hw)
        if transform is None:
            transform = resize_crop_for(hw, tuple(self.cfg.image_size))
            self._resize_cache[hw] = transform
        return transform

    def _prepare(self, frame: FrameInput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray, torch.Tensor]:
        """Validate one frame and build its tensors.

        Returns:
            images [V, 3, H, W] in [0, 1], intrinsics [V, 3, 3], cam2ego [V, 4, 4], ego2global [4, 4] float64 numpy,
            ego_state [6].
        Raises:
            ValueError: naming the camera / field to fix.
        """
        cfg = self.cfg
        names = [c.name for c in frame.cameras]
        expected = CAMERA_NAMES[: cfg.num_views]
        if len(names) != len(expected) or set(names) != set(expected):
            missing = sorted(set(expected) - set(names))
            extra = sorted(set(names) - set(expected))
            raise ValueError(
                f"a frame needs exactly the {len(expected)} cameras {list(expected)}; got {len(names)} "
                f"(missing {missing}, unexpected {extra})"
            )
        by_name = {c.name: c for c in frame.cameras}
        images, ks, c2es = [], [], []
        for name in expected:
            cam = by_name[name]
            img = cam.image
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                got = f"{type(img).__name__} {getattr(img, 'dtype', '')} {getattr(img, 'shape', '')}"
                raise ValueError(f"{name}: image must be an [H, W, 3] uint8 RGB array, got {got}")
            if min(img.shape[:2]) < 8:
                raise ValueError(f"{name}: image of {img.shape[1]}x{img.shape[0]} pixels is too small")
            k = np.asarray(cam.intrinsics, dtype=np.float64)
            if k.shape != (3, 3) or not np.all(np.isfinite(k)) or k[0, 0] <= 0 or k[1, 1] <= 0:
                raise ValueError(f"{name}: intrinsics must be a finite [3, 3] K with fx, fy > 0, got {k.tolist()}")
            c2e = np.asarray(cam.cam2ego, dtype=np.float64)
            if c2e.shape != (4, 4) or not np.all(np.isfinite(c2e)):
                raise ValueError(f"{name}: cam2ego must be a finite [4, 4] transform")
            hw = (int(img.shape[0]), int(img.shape[1]))
            if hw != tuple(cfg.image_size):
                transform = self._transform_for(hw)
                img = resize_crop_array(img, transform)
                k = transform.apply_to_intrinsics(k)
            images.append(img)
            ks.append(k)
            c2es.append(c2e)
        pose = np.asarray(frame.ego2global, dtype=np.float64)
        if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
            raise ValueError("ego2global must be a finite [4, 4] pose (NaN / Inf odometry?)")
        vel = np.asarray(frame.velocity, dtype=np.float64).reshape(-1)
        acc = np.asarray(frame.acceleration, dtype=np.float64).reshape(-1)
        yaw_rate = float(frame.yaw_rate)
        if vel.size < 2 or acc.size < 2:
            raise ValueError("velocity and acceleration need at least (x, y) components")
        if not (np.all(np.isfinite(vel[:2])) and np.all(np.isfinite(acc[:2])) and math.isfinite(yaw_rate)):
            raise ValueError("velocity, acceleration and yaw_rate must be finite (NaN odometry?)")
        if int(frame.command) not in range(cfg.num_commands):
            raise ValueError(f"command must be in [0, {cfg.num_commands}), got {frame.command}")
        ego_state = np.array([vel[0], vel[1], acc[0], acc[1], yaw_rate, math.hypot(vel[0], vel[1])])
        assert ego_state.shape == (EGO_STATE_DIM,)
        dev, dt = self.device, self.dtype
        stacked = torch.from_numpy(np.stack(images))  # [V, H, W, 3] uint8
        images_t = stacked.to(dev).permute(0, 3, 1, 2).to(dt) / 255.0  # [V, 3, H, W]
        return (
            images_t,
            torch.as_tensor(np.stack(ks), dtype=torch.float32, device=dev),
            torch.as_tensor(np.stack(c2es), dtype=torch.float32, device=dev),
            pose,
            torch.as_tensor(ego_state, dtype=torch.float32, device=dev),
        )

    # ------------------------------------------------------------------ streaming step
    def _stack_frames(
        self, current: _CachedFrame
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """[current, past most recent first], padded with the oldest real frame (invalid) to ``num_frames``.

        Returns:
            features per level [1, F, V, C, h, w], intrinsics [1, F, V, 3, 3], cam2ego [1, F, V, 4, 4],
            ego2global [1, F, 4, 4], frame_valid [1, F] bool.
        """
        frames = [current] + list(reversed(self._history))  # most recent first
        valid = [True] * len(frames)
        while len(frames) < self.cfg.num_frames:
            frames.append(frames[-1])
            valid.append(False)
        # Poses re-based on the current ego frame in float64: the encoder only needs relative motion, and UTM-sized
        # global coordinates would lose centimetres in float32.
        to_current = invert_pose(current.ego2global)
        poses = np.stack([to_current @ f.ego2global for f in frames])  # [F, 4, 4]
        features = [
            torch.stack([f.features[level] for f in frames])[None]  # [1, F, V, C, h, w]
            for level in range(len(current.features))
        ]
        return (
            features,
            torch.stack([f.intrinsics for f in frames])[None],  # [1, F, V, 3, 3]
            torch.stack([f.cam2ego for f in frames])[None],  # [1, F, V, 4, 4]
            torch.as_tensor(poses, dtype=torch.float32, device=self.device)[None],  # [1, F, 4, 4]
            torch.tensor([valid], dtype=torch.bool, device=self.device),  # [1, F]
        )

    def step(self, frame: FrameInput) -> StepResult:
        """Process one synchronized key frame.

        Args:
            frame: the frame (see :class:`FrameInput`).
        Returns:
            :class:`StepResult` stamped with ``frame.stamp_ns``.
        Raises:
            ValueError: invalid input (the message names the camera / field); the history is left unchanged.
        """
        with self._step_lock, torch.inference_mode():
            return self._step(frame)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _step(self, frame: FrameInput) -> StepResult:
        cfg, model, opts = self.cfg, self.model, self.options
        timings: dict[str, float] = {}
        t_start = tick = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal tick
            self._sync()
            now = time.perf_counter()
            timings[name] = now - tick
            tick = now

        images, intrinsics, cam2ego, ego2global, ego_state = self._prepare(frame)
        reason = self._reset_reason(frame)
        if reason:
            self.reset()
        lap("preprocess")

        # 1. backbone on the new frame only; past frames come from the cache
        feats = model.image_features(images[None, None])  # per level [1, 1, V, C, h, w]
        current = _CachedFrame(frame.stamp_ns, [f[0, 0] for f in feats], intrinsics, cam2ego, ego2global)
        lap("backbone")

        # 2. sparse occupancy encoder over [current, past...] and the connector's occupancy tokens (eq. 2)
        features, ks, c2es, e2gs, valid = self._stack_frames(current)
        ego = ego_state[None].to(self.dtype)  # [1, 6]
        command = torch.tensor([int(frame.command)], dtype=torch.long, device=self.device)  # [1]
        rig = CameraRig(ks, c2es, (int(images.shape[-2]), int(images.shape[-1])))
        enc = model.encode_features(features, rig, e2gs, valid, ego)
        tokens = model.scene_tokens(enc)  # [1, N, H]
        lap("encoder")

        # 3. scene prefix once (KV cached), then the driving reasoning after it (the checkpoint's plan prompt)
        prefix = model.scene_prefix(tokens, ego, command)  # hidden [1, N+G+1, H]
        reasoning = model.reason(prefix)
        lap("llm")

        # 4. forecaster from T'_o (LLM states at the occupancy positions) and Q_L (eq. 6-7)
        forecast = model.forecast(prefix, enc, ego, command)
        lap("forecaster")

        # 5. planner guided by the reasoning tokens and the scene states (sec. 3.3)
        plan = model.plan(prefix, enc, reasoning, ego, command, generator=self._generator)
        lap("planner")

        # read-out: occupied voxels of the current and forecast frames, numpy outputs
        thr = opts.score_threshold
        occ = self._occupancy(enc.layer_points[-1][0], enc.layer_logits[-1][0], 0.0, np.eye(4), thr)
        waypoints = plan.plan[0].float().cpu().numpy()
        times = [(t + 1) * cfg.forecast_dt for t in range(cfg.forecast_frames)]
        future_poses = poses_along_path(waypoints, cfg.plan_dt, times)
        frames = [
            self._occupancy(p[0], l[0], t, pose, thr)
            for p, l, t, pose in zip(forecast.points, forecast.logits, times, future_poses)
        ]
        plan_result = PlanResult(
            waypoints=waypoints.astype(np.float32),
            anchors=plan.trajectories[0].float().cpu().numpy().astype(np.float32),
            anchor_scores=plan.scores[0].float().cpu().numpy().astype(np.float32),
            anchor_commands=model.planner.anchor_commands.cpu().numpy().astype(np.int64),
            chosen_anchor=int(plan.chosen[0]),
            waypoint_dt=float(cfg.plan_dt),
        )
        lap("decode")

        # commit: this frame joins the history (at the configured spacing) and its scene is the one ``ask`` answers
        interval_ns = 0.9 * self.options.history_interval_s * 1e9
        if not self._history or frame.stamp_ns - self._history[-1].stamp_ns >= interval_ns:
            self._history.append(current)
        self._last_stamp_ns = int(frame.stamp_ns)
        self._last_position = np.asarray(frame.ego2global, dtype=np.float64)[:3, 3].copy()
        with self._scene_lock:
            self._scene = _Scene(frame.stamp_ns, prefix)
        self.frames_processed += 1
        timings["total"] = time.perf_counter() - t_start
        return StepResult(
            stamp_ns=int(frame.stamp_ns),
            occupancy=occ,
            forecast=frames,
            plan=plan_result,
            explanation=reasoning.texts[0],
            timings_s=timings,
            sequence_reset=bool(reason),
            reset_reason=reason,
            history_frames=int(valid[0].sum()) - 1,
        )

    def _occupancy(
        self, points: torch.Tensor, logits: torch.Tensor, time_s: float, pose: np.ndarray, threshold: float
    ) -> OccupancyFrame:
        pts, cls, scores = decode_occupancy(points, logits, self.cfg, threshold)
        return OccupancyFrame(
            points=pts.float().cpu().numpy().astype(np.float32),
            classes=cls.cpu().numpy().astype(np.uint8),
            scores=scores.float().cpu().numpy().astype(np.float32),
            time_s=float(time_s),
            ego_pose=np.asarray(pose, dtype=np.float64),
        )

    # ------------------------------------------------------------------ questions
    def ask(self, question: str, max_new_tokens: Optional[int] = None) -> Answer:
        """Answer a free-form question about the most recent processed frame (reuses its scene KV cache).

        Args:
            question: natural-language question.
            max_new_tokens: answer length cap (default ``cfg.max_new_tokens``).
        Returns:
            :class:`Answer`.
        Raises:
            RuntimeError: no frame processed yet.
            ValueError: empty question, or longer than ``max_question_chars`` / the model's ``max_text_tokens``.
        """
        t0 = time.perf_counter()
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty: ask something about the scene")
        if len(question) > self.options.max_question_chars:
            raise ValueError(
                f"the question has {len(question)} characters; at most max_question_chars = "
                f"{self.options.max_question_chars} are accepted"
            )
        with self._scene_lock:
            scene = self._scene
        if scene is None:
            raise RuntimeError("no frame has been processed yet: call step() with a camera frame before ask()")
        prompt = self.model.question_prompt(question, max_tokens=self.cfg.llm_max_positions)
        if len(prompt) > self.cfg.max_text_tokens:
            raise ValueError(
                f"the question is {len(prompt)} tokens with its prompt; the model accepts at most "
                f"max_text_tokens = {self.cfg.max_text_tokens}: shorten it"
            )
        with scene.lock, torch.inference_mode():
            out = self.model.answer(scene.prefix, [prompt], max_new_tokens=max_new_tokens)
        return Answer(
            text=out.texts[0],
            stamp_ns=scene.stamp_ns,
            latency_s=time.perf_counter() - t0,
            prompt_tokens=len(prompt),
            generated_tokens=len(out.token_ids[0]),
        )
