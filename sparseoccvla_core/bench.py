"""The benchmark harness: per-stage latency and the paper's efficiency ratios, measured side by side in one run.

    sparseoccvla bench [--ckpt checkpoints/default | --preset tiny] [--threads 1 2] [--repeats 20] [--warmup 3]
                       [--stream-frames 8] [--stream-paper-repeats 3] [--prefill-layers 2] [--node | --no-node] [--soak-minutes 10]
                       [--json outputs/bench/<timestamp>.json]

Prints a table and writes every figure (seconds) with the machine it ran on to a JSON file.  Each timing is the
median and 95th percentile over ``--repeats`` runs after ``--warmup`` untimed ones; every ratio carries the two
absolute times it divides (``ratio = baseline.median_s / ours.median_s``).  Sections:

1. ``stages``: :meth:`SparseOccVLAPipeline.step` on a stream of synthetic camera sets (random RGB, the synthetic
   world's nuScenes camera rig, the ego driving straight at 8 m/s, key frames 0.5 s apart), one entry per CPU
   thread count (``torch.set_num_threads``): the step's own stage timings (``StepResult.timings_s``) and the whole
   step; the LLM stage is also split into the scene-prefix prefill and the reasoning generation, timed by calling
   the model's ``llm.encode_prefix`` and ``reason`` on a prefix of the model's shape.
2. ``ratios`` (at the largest thread count):

   (a) ``prefill``: the LLM prefill of the scene prefix (N + G + 1 tokens, paper sec. 3.2: occupancy tokens, global
       scene tokens, ego token) against 2,500 tokens (HERMES's BEV tokens) and 513 tokens (OmniDrive's Q-Former
       queries), on one LLM built from the config (LoRA attached as in the model, random weights: timing only).
       On CPU it has the paper's LLM width (4096, 32 heads, MLP 11008; Vicuna-7B) with ``--prefill-layers``
       layers instead of 32, which the output says; with CUDA the ``cuda`` section uses the full paper LLM.
   (b) ``streaming``: the pipeline's per-frame backbone cache (each frame through the ResNet + FPN once) against
       recomputing the backbone on all F = ``--stream-frames`` frames every step (paper: F = 8), both through the
       same pipeline and model; the backbone stage and the whole step.  The recomputing run swaps the model's
       ``image_features`` for one that encodes the whole frame window and keeps the current frame's features, so
       both runs produce the same outputs (checked: ``outputs_match``).  ``backbone_paper``: the same backbone
       stage at the paper's ResNet-50 + FPN on 256 x 704 inputs (:func:`paper_backbone_ratio`).
   (c) ``ask``: answering a question on the cached scene prefix (what ``SparseOccVLAPipeline.ask`` does) against
       re-encoding the scene for every question (sparse occupancy encoder from the cached backbone features,
       connector, scene-prefix prefill, then the same answer); both generate the same tokens (checked).
3. ``node`` (``--node``, needs rclpy): the driving node over real DDS (``sparseoccvla drive``: bag player ->
   driving node -> recorder) at ``--node-rates`` replay speeds, scored with ``eval-bag``'s latency and drop
   bookkeeping, and the RSS of the bringup process through a ``--soak-minutes`` looped replay
   (:mod:`sparseoccvla_ros.replay.bench_node`).
4. ``cuda`` (when ``torch.cuda.is_available()``, unless ``--no-cuda``): the paper preset in bfloat16 with random
   weights: step time, stages and peak GPU memory, and the prefill ratios on its full-depth LLM.

Never run this as a timed test: other processes on the same cores move every number.

The command line: sparseoccvla_core/commands/bench.py; ``benchmarks/bench_pipeline.py`` times a stream with the
same inputs (:func:`synthetic_frames`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
import platform
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from .batch import CameraRig
from .config import SparseOccVLAConfig
from .default_checkpoint import default_checkpoint
from .model import SparseOccVLA
from .pipeline import STAGES, CameraFrame, FrameInput, PipelineOptions, SparseOccVLAPipeline

#: Default checkpoint: the repository's ``checkpoints/default/`` (``sparseoccvla train`` writes it there).
DEFAULT_CHECKPOINT = default_checkpoint()
#: Prefill lengths of the two baselines of ratio (a): HERMES's BEV tokens and OmniDrive's Q-Former queries.
HERMES_BEV_TOKENS = 2500
OMNIDRIVE_QFORMER_TOKENS = 513
#: Targets of the ratios (the efficiency the paper claims, as the project tracks it: docs/benchmarks.md §1).
TARGET_PREFILL_VS_HERMES = 3.0
TARGET_STREAMING_BACKBONE = 6.0
TARGET_ASK = 3.0
KEYFRAME_NS = 500_000_000  # nuScenes key frames: 2 Hz
T0_NS = 1_532_402_927_612_460_000
SPEED_MPS = 8.0
QUESTIONS = (
    "Is there a pedestrian ahead?",
    "What is the traffic light state?",
    "How many cars are in front of the ego vehicle?",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------------- statistics
def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Median, 95th percentile (linear interpolation), min and count of timings in seconds.

    Args:
        values: one or more timings, s.
    Returns:
        ``{"median_s", "p95_s", "min_s", "n"}``.
    Raises:
        ValueError: no values.
    """
    if len(values) == 0:
        raise ValueError("no timings to summarize")
    v = np.asarray(values, dtype=np.float64)
    return {
        "median_s": float(np.median(v)),
        "p95_s": float(np.percentile(v, 95)),
        "min_s": float(v.min()),
        "n": int(v.size),
    }


def ratio_entry(
    baseline_label: str,
    baseline: dict[str, Any],
    ours_label: str,
    ours: dict[str, Any],
    target: Optional[float] = None,
) -> dict[str, Any]:
    """How many times cheaper ``ours`` is than ``baseline`` (medians), with both absolute times beside it.

    Args:
        baseline_label / ours_label: what was timed.
        baseline / ours: :func:`summarize` outputs.
        target: the ratio the paper's claim needs (None: no target).
    Returns:
        ``{"baseline": {label, median_s, p95_s}, "ours": {...}, "ratio", "target", "meets_target"}``.
    """
    ratio = baseline["median_s"] / ours["median_s"] if ours["median_s"] > 0 else math.inf
    return {
        "baseline": {"label": baseline_label, "median_s": baseline["median_s"], "p95_s": baseline["p95_s"]},
        "ours": {"label": ours_label, "median_s": ours["median_s"], "p95_s": ours["p95_s"]},
        "ratio": ratio,
        "target": target,
        "meets_target": None if target is None else bool(ratio >= target),
    }


def _time(fn: Callable[[], Any], repeats: int, warmup: int, sync: Callable[[], None]) -> tuple[list[float], Any]:
    """Wall times of ``fn`` (``warmup`` untimed calls first); returns (seconds, the last result)."""
    out = None
    for _ in range(warmup):
        out = fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times, out


def _time_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int, sync: Callable[[], None]
) -> dict[str, list[float]]:
    """Wall times of several callables, alternating them in every round so that a load change on the machine
    moves all of them alike; ``warmup`` untimed rounds first.  Returns name -> seconds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def _sync_for(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


# ---------------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model, cores, torch / Python versions, default threads, GPU (if any) and the date (UTC, ISO 8601)."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_default_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return info


# ---------------------------------------------------------------------------------------------- inputs
def _camera_rig(height: int, width: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, K [3, 3] for a ``height`` x ``width`` image, cam2ego [4, 4]) of the synthetic world's six cameras."""
    from .synthetic.calibration import camera_calibrations

    return [(c.channel, c.scaled_intrinsics(width, height), c.sensor2ego) for c in camera_calibrations()]


def synthetic_frames(
    cfg: SparseOccVLAConfig, count: int, seed: int = 0, image_hw: Optional[Sequence[int]] = None
) -> list[FrameInput]:
    """``count`` key frames of a straight drive: random RGB images, the synthetic camera rig.

    Args:
        cfg: the model's config (image size, views).
        count: frames.
        seed: image noise seed.
        image_hw: (H, W) of the camera images (default ``cfg.image_size``; a larger one adds the resizing).
    Returns:
        :class:`FrameInput` list 0.5 s apart, the ego 4 m further along +x each frame.
    """
    height, width = image_hw if image_hw is not None else cfg.image_size
    rig = _camera_rig(height, width)[: cfg.num_views]
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        cameras = [
            CameraFrame(name, rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), k, c2e)
            for name, k, c2e in rig
        ]
        pose = np.eye(4)
        pose[:3, 3] = [400.0 + SPEED_MPS * 0.5 * i, 1180.0, 0.0]
        frames.append(FrameInput(cameras, pose, (SPEED_MPS, 0.0), (0.0, 0.0), 0.0, stamp_ns=T0_NS + i * KEYFRAME_NS))
    return frames


# ---------------------------------------------------------------------------------------------- models
def load_model(ckpt: Optional[str], preset: Optional[str], seed: int = 0) -> tuple[SparseOccVLA, str]:
    """The model to time: a checkpoint folder, or a preset with random weights.

    Args:
        ckpt: ``save_pretrained`` folder (used when ``preset`` is None).
        preset: "tiny" or "paper" (random weights, seeded).
        seed: torch seed of the random weights.
    Returns:
        (model on CPU in float32, a description for the report).
    Raises:
        FileNotFoundError / ValueError: from :meth:`SparseOccVLA.from_pretrained`.
    """
    if preset is not None:
        torch.manual_seed(seed)
        cfg = SparseOccVLAConfig.tiny() if preset == "tiny" else SparseOccVLAConfig.paper()
        return SparseOccVLA(cfg), f"preset {preset} (random weights, seed {seed})"
    path = Path(ckpt if ckpt is not None else DEFAULT_CHECKPOINT)
    return SparseOccVLA.from_pretrained(path), f"checkpoint {path}"


def prefix_length(cfg: SparseOccVLAConfig) -> int:
    """Tokens of the scene prefix ``[T_o, T_g, T_ego]``: N + G + 1 (paper sec. 3.2)."""
    return cfg.num_queries + cfg.num_global_queries + 1


# ---------------------------------------------------------------------------------------------- 1. stages
def _stream(
    pipe: SparseOccVLAPipeline, frames: Sequence[FrameInput], warmup: int
) -> tuple[dict[str, list[float]], list[float], Any]:
    """Step every frame; returns (per-stage seconds, step wall seconds, last result) of the frames after ``warmup``."""
    stages: dict[str, list[float]] = {name: [] for name in STAGES}
    totals: list[float] = []
    result = None
    for i, frame in enumerate(frames):
        t0 = time.perf_counter()
        result = pipe.step(frame)
        wall = time.perf_counter() - t0
        if i < warmup:
            continue
        totals.append(wall)
        for name in STAGES:
            stages[name].append(result.timings_s[name])
    return stages, totals, result


def llm_split(model: SparseOccVLA, repeats: int, warmup: int, seed: int = 0) -> dict[str, Any]:
    """The LLM stage in two parts: the scene-prefix prefill and the reasoning generation after it.

    Times ``model.llm.encode_prefix`` on a [1, N + G + 1, H] prefix (random embeddings of the model's shape) and
    ``model.reason`` on its cache (greedy, up to ``cfg.max_new_tokens``; the cache is cropped back every time).

    Returns:
        ``{"prefix_tokens", "prefill": stats, "reasoning": stats, "reasoning_tokens"}``.
    """
    p = next(model.parameters())
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(1, prefix_length(model.cfg), model.cfg.llm_hidden_size, generator=g)
    embeds = (embeds * 0.02).to(device=p.device, dtype=p.dtype)
    sync = _sync_for(p.device)
    with torch.inference_mode():
        prefill, prefix = _time(lambda: model.llm.encode_prefix(embeds), repeats, warmup, sync)
        reasoning, out = _time(lambda: model.reason(prefix), repeats, warmup, sync)
    return {
        "prefix_tokens": prefix_length(model.cfg),
        "prefill": summarize(prefill),
        "reasoning": summarize(reasoning),
        "reasoning_tokens": len(out.token_ids[0]),
    }


def stage_latency(
    model: SparseOccVLA, repeats: int, warmup: int, seed: int, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """Section 1 at the current thread count: stage timings and the whole step of a synthetic stream.

    Returns:
        ``{"threads", "step": stats, "stages": {name: stats}, "llm_split": ..., "reasoning_chars"}``.
    """
    pipe = SparseOccVLAPipeline(model, PipelineOptions(seed=seed), device=device, dtype=dtype)
    pipe.warmup()
    frames = synthetic_frames(model.cfg, warmup + repeats, seed)
    stages, totals, result = _stream(pipe, frames, warmup)
    return {
        "threads": torch.get_num_threads(),
        "step": summarize(totals),
        "step_internal_total": summarize([sum(s) for s in zip(*stages.values())]),
        "stages": {name: summarize(v) for name, v in stages.items()},
        "llm_split": llm_split(pipe.model, repeats, max(1, warmup), seed),
        "reasoning_chars": len(result.explanation),
    }


# ---------------------------------------------------------------------------------------------- 2a. prefill
def prefill_llm_config(
    base: SparseOccVLAConfig, layers: Optional[int], width: int, heads: int, mlp: int, max_len: int
) -> SparseOccVLAConfig:
    """The config of ratio (a)'s LLM: ``base``'s LLM (LoRA included) at the given shape, room for ``max_len``."""
    return dataclasses.replace(
        base,
        llm_path=None,
        tokenizer_path=None,
        llm_hidden_size=width,
        llm_num_heads=heads,
        llm_intermediate_size=mlp,
        llm_num_layers=layers if layers is not None else base.llm_num_layers,
        llm_max_positions=max(base.llm_max_positions, max_len + 1),
    )


def prefill_ratios(
    llm: torch.nn.Module, ours: dict[str, int], repeats: int, warmup: int, description: str, seed: int = 0
) -> dict[str, Any]:
    """Ratio (a): prefill time at the scene-prefix length(s) against 2,500 and 513 tokens on one LLM.

    Args:
        llm: a :class:`~sparseoccvla_core.llm.SceneLanguageModel` (its ``encode_prefix`` is timed).
        ours: name -> scene-prefix length (e.g. the timed model's N + G + 1 and the paper's 613).
        repeats / warmup: timed / untimed prefills per length.
        description: what LLM this is (printed with the ratios).
    Returns:
        ``{"llm", "lengths": {name: tokens}, "prefill": {name: stats}, "ratios": {name: ratio_entry}}``.
    """
    p = next(llm.parameters())
    width = llm.hidden_size
    lengths = dict(ours)
    lengths["omnidrive_qformer"] = OMNIDRIVE_QFORMER_TOKENS
    lengths["hermes_bev"] = HERMES_BEV_TOKENS
    g = torch.Generator().manual_seed(seed)
    sync = _sync_for(p.device)
    embeds = {
        name: (torch.randn(1, length, width, generator=g) * 0.02).to(device=p.device, dtype=p.dtype)
        for name, length in lengths.items()
    }
    with torch.inference_mode():
        fns = {name: (lambda e=e: llm.encode_prefix(e)) for name, e in embeds.items()}
        timings = {name: summarize(t) for name, t in _time_interleaved(fns, repeats, warmup, sync).items()}
    ratios = {}
    for name, length in ours.items():
        ratios[f"hermes_bev_vs_{name}"] = ratio_entry(
            f"prefill {HERMES_BEV_TOKENS} tokens (HERMES BEV)",
            timings["hermes_bev"],
            f"prefill {length} tokens ({name})",
            timings[name],
            TARGET_PREFILL_VS_HERMES,
        )
        ratios[f"omnidrive_qformer_vs_{name}"] = ratio_entry(
            f"prefill {OMNIDRIVE_QFORMER_TOKENS} tokens (OmniDrive Q-Former)",
            timings["omnidrive_qformer"],
            f"prefill {length} tokens ({name})",
            timings[name],
        )
    return {"llm": description, "lengths": lengths, "prefill": timings, "ratios": ratios}


def cpu_prefill_section(
    model_cfg: SparseOccVLAConfig, layers: int, width: int, heads: int, mlp: int, repeats: int, warmup: int
) -> dict[str, Any]:
    """Ratio (a) on CPU: the paper's LLM width with ``layers`` layers (random weights, float32)."""
    from .llm import SceneLanguageModel

    paper = SparseOccVLAConfig.paper()
    cfg = prefill_llm_config(paper, layers, width, heads, mlp, HERMES_BEV_TOKENS)
    vocab = 1024  # the prefill runs from inputs_embeds: the embedding rows are never read (saves ~1 GB at 4096)
    torch.manual_seed(0)
    llm = SceneLanguageModel(cfg, vocab).eval()
    ours = {"scene_prefix": prefix_length(model_cfg)}
    if prefix_length(paper) != ours["scene_prefix"]:
        ours["scene_prefix_paper"] = prefix_length(paper)
    description = (
        f"Llama decoder, width {width}, {heads} heads, MLP {mlp}, {layers} of {paper.llm_num_layers} layers "
        f"(fewer layers on CPU; the paper's LLM is Vicuna-7B), LoRA r={cfg.lora_r}, random weights, float32, CPU"
    )
    out = prefill_ratios(llm, ours, repeats, warmup, description)
    del llm
    return out


# ---------------------------------------------------------------------------------------------- 2b. streaming
class RecomputeAllFrames:
    """Stand-in for ``model.image_features`` in a pipeline without a backbone cache.

    Called by the pipeline with the new frame's images [1, 1, V, 3, H, W], it runs the backbone on the whole
    window [current, past most recent first] padded with the oldest frame to F frames (as the pipeline pads its
    history), i.e. the work of a model that re-encodes all F frames every step, and returns the current frame's
    features, identical to the streaming path's.

    Args:
        image_features: the model's original ``image_features`` (bound method).
        num_frames: F.
    """

    def __init__(self, image_features: Callable[[torch.Tensor], list[torch.Tensor]], num_frames: int) -> None:
        self._image_features = image_features
        self.num_frames = num_frames
        self._past: deque[torch.Tensor] = deque(maxlen=max(0, num_frames - 1))
        self.frames_encoded = 0

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        window = [images[:, 0]] + list(reversed(self._past))  # each [1, V, 3, H, W], most recent first
        while len(window) < self.num_frames:
            window.append(window[-1])
        feats = self._image_features(torch.stack(window, dim=1))  # per level [1, F, V, C, h, w]
        self.frames_encoded += self.num_frames
        self._past.append(images[:, 0])
        return [f[:, :1].clone() for f in feats]  # per level [1, 1, V, C, h, w]


def streaming_model(model: SparseOccVLA, num_frames: int, seed: int = 0) -> tuple[SparseOccVLA, str]:
    """``model`` if it sees ``num_frames`` frames, else a random-weight model of its config with that many.

    (The encoder's temporal mixing has ``num_frames`` x points weights, so a checkpoint trained for fewer frames
    cannot be run at F = 8.)
    """
    if model.cfg.num_frames == num_frames:
        return model, "the timed model"
    torch.manual_seed(seed)
    other = SparseOccVLA(dataclasses.replace(model.cfg, num_frames=num_frames), tokenizer=model.tokenizer)
    return (
        other,
        f"the timed model's config with num_frames={num_frames} (random weights; it has {model.cfg.num_frames})",
    )


def streaming_ratios(model: SparseOccVLA, num_frames: int, repeats: int, warmup: int, seed: int = 0) -> dict[str, Any]:
    """Ratio (b): backbone cache vs recomputing all F frames, backbone stage and whole step.

    Returns:
        ``{"model", "num_frames", "cached": {...}, "recompute": {...}, "outputs_match", "ratios": {...}}``.
    """
    m, description = streaming_model(model, num_frames, seed)
    warmup = max(warmup, num_frames - 1)  # the timed steps all have a full history of F - 1 past frames
    frames = synthetic_frames(m.cfg, warmup + repeats, seed)
    pipes = {mode: SparseOccVLAPipeline(m, PipelineOptions(seed=seed)) for mode in ("cached", "recompute")}
    wrapper = RecomputeAllFrames(m.image_features, num_frames)
    backbone: dict[str, list[float]] = {"cached": [], "recompute": []}
    step: dict[str, list[float]] = {"cached": [], "recompute": []}
    results: dict[str, Any] = {}
    for i, frame in enumerate(frames):  # the two pipelines alternate frame by frame (same load on both)
        for mode, pipe in pipes.items():
            if mode == "recompute":
                m.image_features = wrapper  # instance attribute: shadows the method for this step only
            try:
                t0 = time.perf_counter()
                results[mode] = pipe.step(frame)
                wall = time.perf_counter() - t0
            finally:
                if mode == "recompute":
                    del m.image_features
            if i >= warmup:
                backbone[mode].append(results[mode].timings_s["backbone"])
                step[mode].append(wall)
    runs = {mode: {"backbone": summarize(backbone[mode]), "step": summarize(step[mode])} for mode in pipes}
    a, b = results["cached"], results["recompute"]
    match = bool(
        np.allclose(a.plan.waypoints, b.plan.waypoints, atol=1e-4)
        and np.allclose(a.occupancy.points, b.occupancy.points, atol=1e-4)
        and a.explanation == b.explanation
    )
    ratios = {
        "backbone": ratio_entry(
            f"backbone on all {num_frames} frames",
            runs["recompute"]["backbone"],
            "backbone on the new frame (cache)",
            runs["cached"]["backbone"],
            TARGET_STREAMING_BACKBONE,
        ),
        "step": ratio_entry(
            f"step recomputing {num_frames} frames",
            runs["recompute"]["step"],
            "step with the backbone cache",
            runs["cached"]["step"],
        ),
    }
    return {"model": description, "num_frames": num_frames, **runs, "outputs_match": match, "ratios": ratios}


def paper_backbone_ratio(
    num_frames: int, repeats: int, warmup: int, image_size: Sequence[int], seed: int = 0
) -> dict[str, Any]:
    """Ratio (b) at the paper's backbone: ResNet-50 + FPN (random weights) on six views of ``image_size``.

    The pipeline's backbone stage is ``image_features`` of the new frame, [1, 1, V, 3, H, W]; a model without
    the cache runs it on the whole window, [1, F, V, 3, H, W].  Both are timed here on the same module (the rest
    of the paper preset, a 7B LLM, does not run on this CPU; the ``cuda`` section runs the whole preset).  At
    the default checkpoint's 64 x 160 ResNet the stage takes milliseconds and the single-frame call pays a
    larger share of per-call overhead than the batched window, so its ratio stays below F; at the paper's
    input the convolutions dominate.

    Returns:
        ``{"backbone", "image_size", "num_frames", "cached", "recompute"}`` (timing stats).
    """
    from .backbone import ImageBackbone

    cfg = SparseOccVLAConfig.paper(image_size=tuple(int(s) for s in image_size))
    torch.manual_seed(seed)
    backbone = ImageBackbone(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.image_size
    inputs = {
        "cached": torch.rand(1, 1, cfg.num_views, 3, h, w, generator=g),
        "recompute": torch.rand(1, num_frames, cfg.num_views, 3, h, w, generator=g),
    }
    times: dict[str, list[float]] = {"cached": [], "recompute": []}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for mode, x in inputs.items():  # alternate (same load on both)
                t0 = time.perf_counter()
                backbone.forward_multiview(x)
                if i >= warmup:
                    times[mode].append(time.perf_counter() - t0)
    depths = "-".join(str(d) for d in cfg.backbone_depths)
    return {
        "backbone": (
            f"ResNet ({cfg.backbone_layer_type}, depths {depths}; ResNet-50) + FPN {cfg.fpn_dim} ch, "
            f"{cfg.num_views} views of {h}x{w}, random weights, float32"
        ),
        "image_size": [h, w],
        "num_frames": num_frames,
        "cached": summarize(times["cached"]),
        "recompute": summarize(times["recompute"]),
    }


# ---------------------------------------------------------------------------------------------- 2c. ask
def scene_inputs(cfg: SparseOccVLAConfig, seed: int = 0) -> dict[str, Any]:
    """Model-level inputs of one scene: random images [1, F, V, 3, H, W] and the synthetic rig's geometry."""
    height, width = cfg.image_size
    rig = _camera_rig(height, width)[: cfg.num_views]
    f, v = cfg.num_frames, cfg.num_views
    g = torch.Generator().manual_seed(seed)
    poses = torch.eye(4).repeat(1, f, 1, 1)  # [1, F, 4, 4]
    poses[0, :, 0, 3] = -SPEED_MPS * 0.5 * torch.arange(f)  # past frames behind along -x, in the current ego frame
    return {
        "images": torch.rand(1, f, v, 3, height, width, generator=g),
        "intrinsics": torch.tensor(np.stack([k for _, k, _ in rig]), dtype=torch.float32).expand(1, f, v, 3, 3),
        "cam2ego": torch.tensor(np.stack([c for _, _, c in rig]), dtype=torch.float32).expand(1, f, v, 4, 4),
        "ego2global": poses,
        "frame_valid": torch.ones(1, f, dtype=torch.bool),
        "ego_state": torch.tensor([[SPEED_MPS, 0.0, 0.0, 0.0, 0.0, SPEED_MPS]]),
        "command": torch.tensor([1]),
        "image_size": (height, width),
    }


def ask_ratio(
    model: SparseOccVLA, repeats: int, warmup: int, max_new_tokens: Optional[int] = None, seed: int = 0
) -> dict[str, Any]:
    """Ratio (c): a question on the cached scene prefix vs re-encoding the scene for every question.

    Both paths start from the frame's backbone features (the streaming cache holds them either way) and end
    with the same greedy ``model.answer``; the baseline first runs the encoder, the connector and the prefix
    prefill again.

    Returns:
        ``{"cached": stats, "reencode": stats, "answer_tokens", "same_answers", "max_new_tokens", "ratios"}``.
    """
    model = model.eval()
    s = scene_inputs(model.cfg, seed)
    max_new = max_new_tokens if max_new_tokens is not None else model.cfg.max_new_tokens
    counter = {"cached": 0, "reencode": 0}

    def next_question(path: str) -> str:  # each path asks the same sequence of questions
        counter[path] += 1
        return QUESTIONS[counter[path] % len(QUESTIONS)]

    with torch.inference_mode():
        feats = model.image_features(s["images"])

        def encode():
            rig = CameraRig(s["intrinsics"], s["cam2ego"], s["image_size"])
            enc = model.encode_features(feats, rig, s["ego2global"], s["frame_valid"], s["ego_state"])
            return model.scene_prefix(model.scene_tokens(enc), s["ego_state"], s["command"])

        prefix = encode()
        answers: dict[str, list] = {"cached": [], "reencode": []}

        def cached():
            out = model.answer(prefix, [next_question("cached")], max_new_tokens=max_new)
            answers["cached"].append(out.token_ids[0])
            return out

        def reencode():
            out = model.answer(encode(), [next_question("reencode")], max_new_tokens=max_new)
            answers["reencode"].append(out.token_ids[0])
            return out

        times = _time_interleaved({"cached": cached, "reencode": reencode}, repeats, warmup, lambda: None)
    cached_s, reencode_s = summarize(times["cached"]), summarize(times["reencode"])
    return {
        "cached": cached_s,
        "reencode": reencode_s,
        "max_new_tokens": max_new,
        "answer_tokens": statistics.median(len(t) for t in answers["cached"]),
        "same_answers": answers["cached"] == answers["reencode"],
        "ratios": {
            "ask": ratio_entry(
                "re-encode scene + answer", reencode_s, "answer on the cached prefix", cached_s, TARGET_ASK
            )
        },
    }


# ---------------------------------------------------------------------------------------------- 4. cuda
def cuda_section(repeats: int, warmup: int, seed: int = 0) -> dict[str, Any]:
    """The paper preset in bfloat16 on the GPU (random weights): step, stages, peak memory, prefill ratios."""
    device = torch.device("cuda")
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with device:  # build straight on the GPU: 7B parameters in float32 on the host would need ~28 GB
            model = SparseOccVLA(SparseOccVLAConfig.paper())
    finally:
        torch.set_default_dtype(previous)
    torch.cuda.reset_peak_memory_stats(device)
    stages = stage_latency(model, repeats, warmup, seed, device="cuda", dtype=torch.bfloat16)
    peak = torch.cuda.max_memory_allocated(device)
    prefill = prefill_ratios(
        model.llm,
        {"scene_prefix": prefix_length(model.cfg)},
        repeats,
        max(1, warmup),
        f"the paper preset's LLM ({model.cfg.llm_num_layers} layers, width {model.cfg.llm_hidden_size}), "
        "random weights, bfloat16",
    )
    return {
        "gpu": torch.cuda.get_device_name(device),
        "preset": "paper (random weights)",
        "dtype": "bfloat16",
        **stages,
        "peak_memory_bytes": int(peak),
        "prefill": prefill,
    }


# ---------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class BenchOptions:
    """What :func:`run_bench` measures and how often (``sparseoccvla bench``'s flags, same names and defaults).

    Args:
        ckpt: checkpoint folder (None: the default checkpoint unless ``preset`` is given).
        preset: 'tiny' / 'paper' random weights instead of a checkpoint.
        threads: CPU thread counts of the stage section (the ratios run at the largest).
        repeats, warmup: timed and untimed runs of each measurement.
        stream_frames: F of ratio (b).
        stream_paper_repeats: timed runs of ratio (b) at the paper's ResNet-50 (0 skips it).
        stream_paper_image_size: (H, W) input of that backbone.
        ask_tokens: answer cap of ratio (c) (None: the model's).
        prefill_layers, prefill_width, prefill_heads, prefill_mlp, prefill_repeats: the LLM of ratio (a) on CPU.
        node: run the ROS node section (section 3; needs the node section callable).
        node_rates, node_bag, node_frames, node_image_size, soak_minutes, rss_sample_s: that section's replay
            speeds, GT bag (None: a synthetic one), its key frames and (W, H) camera size, the soak and its RSS
            sampling period.
        cuda: the CUDA section when a GPU is present.
        seed: every random input.
        json: where the command writes the report (recorded in it).
    """

    ckpt: Optional[str] = None
    preset: Optional[str] = None
    threads: Sequence[int] = (1, 2)
    repeats: int = 20
    warmup: int = 3
    stream_frames: int = 8
    stream_paper_repeats: int = 3
    stream_paper_image_size: Sequence[int] = (256, 704)
    ask_tokens: Optional[int] = None
    prefill_layers: int = 2
    prefill_width: int = 4096
    prefill_heads: int = 32
    prefill_mlp: int = 11008
    prefill_repeats: int = 5
    node: bool = True
    node_rates: Sequence[float] = (1.0, 2.0, 4.0)
    node_bag: Optional[str] = None
    node_frames: int = 20
    node_image_size: Sequence[int] = (1600, 900)
    soak_minutes: float = 10.0
    rss_sample_s: float = 5.0
    cuda: bool = True
    seed: int = 0
    json: Optional[str] = None


# ---------------------------------------------------------------------------------------------- the run
def run_bench(args: BenchOptions, node_section: Optional[NodeSection] = None) -> dict[str, Any]:
    """Every section of the module docstring; returns the JSON document."""
    if any(t < 1 for t in args.threads):
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.repeats < 1 or args.warmup < 0:
        raise ValueError("--repeats must be >= 1 and --warmup >= 0")
    if args.stream_frames < 1:
        raise ValueError("--stream-frames must be >= 1")
    if args.stream_paper_repeats < 0:
        raise ValueError("--stream-paper-repeats must be >= 0")
    initial_threads = torch.get_num_threads()
    options = dataclasses.asdict(args)
    report: dict[str, Any] = {"command": "sparseoccvla bench", "options": options, "machine": machine_info()}
    model, description = load_model(args.ckpt, args.preset, args.seed)
    model.eval()
    cfg = model.cfg
    report["model"] = {
        "source": description,
        "num_queries": cfg.num_queries,
        "num_global_queries": cfg.num_global_queries,
        "scene_prefix_tokens": prefix_length(cfg),
        "num_frames": cfg.num_frames,
        "image_size": list(cfg.image_size),
        "max_new_tokens": cfg.max_new_tokens,
        "llm": f"width {cfg.llm_hidden_size}, {cfg.llm_num_layers} layers, {cfg.llm_num_heads} heads",
        "device": "cpu",
        "dtype": "float32",
    }
    report["repeats"], report["warmup"] = args.repeats, args.warmup
    try:
        report["stages"] = []
        for threads in args.threads:
            torch.set_num_threads(threads)
            _progress(f"stages, {threads} thread(s)")
            report["stages"].append(stage_latency(model, args.repeats, args.warmup, args.seed))
        ratio_threads = max(args.threads)
        torch.set_num_threads(ratio_threads)
        ratios: dict[str, Any] = {"threads": ratio_threads}
        _progress("ratio (a): LLM prefill")
        ratios["prefill"] = cpu_prefill_section(
            cfg,
            args.prefill_layers,
            args.prefill_width,
            args.prefill_heads,
            args.prefill_mlp,
            args.prefill_repeats,
            1,
        )
        _progress(f"ratio (b): streaming, F = {args.stream_frames}")
        ratios["streaming"] = streaming_ratios(model, args.stream_frames, args.repeats, args.warmup, args.seed)
        if args.stream_paper_repeats > 0:
            h, w = args.stream_paper_image_size
            _progress(f"ratio (b): backbone stage at the paper's ResNet-50, {h}x{w}, F = {args.stream_frames}")
            paper_bb = paper_backbone_ratio(
                args.stream_frames, args.stream_paper_repeats, 1, args.stream_paper_image_size, args.seed
            )
            ratios["streaming"]["paper_backbone"] = paper_bb
            ratios["streaming"]["ratios"]["backbone_paper"] = ratio_entry(
                f"ResNet-50 on all {args.stream_frames} frames",
                paper_bb["recompute"],
                "ResNet-50 on the new frame (cache)",
                paper_bb["cached"],
                TARGET_STREAMING_BACKBONE,
            )
        _progress("ratio (c): ask")
        ratios["ask"] = ask_ratio(model, args.repeats, max(1, args.warmup), args.ask_tokens, args.seed)
        report["ratios"] = ratios
    finally:
        torch.set_num_threads(initial_threads)
    if args.node and node_section is None:
        report["node"] = {"skipped": "no node section given (run_bench without sparseoccvla_ros)"}
    elif args.node:
        _progress("node section (sparseoccvla drive over DDS)")
        report["node"] = node_section(args, model)
    else:
        report["node"] = {"skipped": "--no-node"}
    if args.cuda and torch.cuda.is_available():
        _progress("cuda: paper preset, bfloat16")
        report["cuda"] = cuda_section(args.repeats, args.warmup, args.seed)
    else:
        report["cuda"] = {"skipped": "--no-cuda" if not args.cuda else "torch.cuda.is_available() is False"}
    return report


#: Section 3: ``f(options, model) -> dict``, given by the ROS package (``sparseoccvla bench`` passes it).
NodeSection = Callable[["BenchOptions", SparseOccVLA], dict[str, Any]]


def _progress(text: str) -> None:
    print(f"[bench] {text} ...", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- output
def _ms(stats: Optional[dict]) -> str:
    if not stats:
        return "-"
    return f"{stats['median_s'] * 1e3:.1f} / {stats['p95_s'] * 1e3:.1f}"


def _ratio_row(name: str, r: dict) -> str:
    target = "-" if r["target"] is None else f">= {r['target']:g}x ({'met' if r['meets_target'] else 'NOT met'})"
    return (
        f"| {name} | {r['baseline']['label']}: {r['baseline']['median_s'] * 1e3:.1f} ms | "
        f"{r['ours']['label']}: {r['ours']['median_s'] * 1e3:.1f} ms | {r['ratio']:.2f}x | {target} |"
    )


def format_report(report: dict[str, Any]) -> str:
    """The printed tables (markdown): stages per thread count, ratios, node and CUDA sections."""
    m, mach = report["model"], report["machine"]
    lines = [
        f"# sparseoccvla bench - {mach['date']}",
        "",
        f"Machine: {mach['cpu']}, {mach['cores']} cores, torch {mach['torch']}"
        + (f", GPU {mach['gpu']}" if mach["gpu"] else ""),
        f"Model: {m['source']}; N + G + 1 = {m['scene_prefix_tokens']} prefix tokens, {m['num_frames']} frames, "
        f"{m['image_size'][1]}x{m['image_size'][0]} input, LLM {m['llm']}, max_new_tokens {m['max_new_tokens']}",
        f"Timings: median / p95 in ms over {report['repeats']} repeats after {report['warmup']} warm-up",
        "",
    ]
    stages = report["stages"]
    lines += ["| stage | " + " | ".join(f"{s['threads']} thread(s)" for s in stages) + " |"]
    lines += ["|---|" + "---:|" * len(stages)]
    for name in STAGES:
        lines.append(f"| {name} | " + " | ".join(_ms(s["stages"][name]) for s in stages) + " |")
    lines.append("| llm: prefill (separately) | " + " | ".join(_ms(s["llm_split"]["prefill"]) for s in stages) + " |")
    lines.append(
        "| llm: reasoning (separately) | " + " | ".join(_ms(s["llm_split"]["reasoning"]) for s in stages) + " |"
    )
    lines.append("| **step (end to end)** | " + " | ".join(_ms(s["step"]) for s in stages) + " |")
    r = report.get("ratios")
    if r:
        pre, st, ask = r["prefill"], r["streaming"], r["ask"]
        lines += [
            "",
            f"Ratios ({r['threads']} thread(s)); ratio = baseline median / ours median",
            "",
            "| ratio | baseline | ours | ratio | target |",
            "|---|---|---|---:|---|",
        ]
        for name, entry in pre["ratios"].items():
            lines.append(_ratio_row(f"(a) {name}", entry))
        for name, entry in st["ratios"].items():
            lines.append(_ratio_row(f"(b) streaming {name}", entry))
        lines.append(_ratio_row("(c) ask", ask["ratios"]["ask"]))
        lines += [
            "",
            f"(a) LLM: {pre['llm']}",
            f"(b) model: {st['model']}; outputs of both runs match: {st['outputs_match']}",
        ]
        if "paper_backbone" in st:
            lines.append(f"(b) backbone_paper: {st['paper_backbone']['backbone']}, backbone stage only")
        lines += [
            f"(c) {ask['answer_tokens']} answer tokens (cap {ask['max_new_tokens']}); same answers: "
            f"{ask['same_answers']}",
        ]
    node = report.get("node", {})
    lines += ["", "## Node (sparseoccvla drive over DDS)", ""]
    if "skipped" in node:
        lines.append(f"skipped: {node['skipped']}")
    else:
        lines += [
            f"bag: {node['bag']} ({node['key_frames']} key frames); node threads {node['threads']}",
            "",
            "| replay | offered key frames/s | sustained plans/s | plan latency p50 / p95 ms | dropped sets | missed |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for run in node["rates"]:
            if "error" in run:
                lines.append(f"| {run['rate']:g}x | error: {run['error'][-200:]!r} | | | | |")
                continue
            lat = run.get("plan_latency") or {}
            p50 = "-" if not lat else f"{lat['p50'] * 1e3:.0f} / {lat['p95'] * 1e3:.0f}"
            sustained = "-" if run["sustained_plans_per_s"] is None else f"{run['sustained_plans_per_s']:.2f}"
            lines.append(
                f"| {run['rate']:g}x | {run['offered_key_frames_per_s']:.2f} | {sustained} | {p50} | "
                f"{run['dropped_sets']} | {run['missed_plans']} |"
            )
        soak = node["soak"]
        if "error" in soak:
            lines.append(f"soak: {soak['error']}")
        else:
            lines.append(
                f"\nRSS over a {soak['minutes']:g}-minute looped replay (bringup process): start "
                f"{soak['rss_start_mib']:.0f} MiB, after warm-up {soak['rss_after_warmup_mib']:.0f} MiB, end "
                f"{soak['rss_end_mib']:.0f} MiB, max {soak['rss_max_mib']:.0f} MiB; {soak['plans_published']} plans"
            )
    cuda = report.get("cuda", {})
    lines += ["", "## CUDA: paper preset, bfloat16", ""]
    if "skipped" in cuda:
        lines.append(f"skipped: {cuda['skipped']}")
    else:
        lines.append(
            f"{cuda['gpu']}: step {_ms(cuda['step'])} ms, peak memory {cuda['peak_memory_bytes'] / 2**30:.2f} GiB"
        )
        lines += ["", "| stage | median / p95 ms |", "|---|---:|"]
        lines += [f"| {name} | {_ms(cuda['stages'][name])} |" for name in STAGES]
        for name, entry in cuda["prefill"]["ratios"].items():
            lines.append(_ratio_row(f"(a) {name}", entry))
    return "\n".join(lines) + "\n"
