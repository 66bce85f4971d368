"""SparseOccVLAPipeline on a tiny untrained, seeded checkpoint: streaming caches, resets, validation, parity.

* the backbone sees each frame exactly once across a stream (forward hook counts calls and images);
* ``ask`` and the planner's reasoning reuse the frame's KV cache (the LLM never re-runs the scene prefix), with no
  transformers deprecation warning;
* a time gap / backwards stamp / pose jump / ``reset()`` clears the history;
* ``step`` equals ``SparseOccVLA.predict`` on the same frames (same history, same diffusion noise);
* an image of another size is resized with its intrinsics scaled (checked against an exact 2x upsample).
"""

import math

import numpy as np
import pytest
import torch

from sparseoccvla_core.batch import CAMERA_NAMES, DrivingBatch
from sparseoccvla_core.config import SparseOccVLAConfig
from sparseoccvla_core.llm import cache_keyword
from sparseoccvla_core.model import SparseOccVLA
from sparseoccvla_core.pipeline import (
    CameraFrame,
    FrameInput,
    PipelineOptions,
    SparseOccVLAPipeline,
    path_headings,
    poses_along_path,
)
from sparseoccvla_core.synthetic.calibration import camera_calibrations

T0 = 1_532_402_927_612_460_000
HALF_S = 500_000_000


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt")
    SparseOccVLA(SparseOccVLAConfig.tiny(num_frames=3, max_new_tokens=8)).save_pretrained(
        path
    )  # short answers: fast tests
    return path


@pytest.fixture()
def pipe(checkpoint):
    return SparseOccVLAPipeline.from_pretrained(checkpoint, PipelineOptions(score_threshold=0.0))


def _frame(cfg, i, rng, size=None, x=None):
    h, w = size or cfg.image_size
    cams = []
    for c in camera_calibrations():
        img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        cams.append(CameraFrame(c.channel, img, c.scaled_intrinsics(w, h), c.sensor2ego))
    pose = np.eye(4)
    yaw = 0.05 * i
    pose[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    pose[:3, 3] = [411.3 + (2.0 * i if x is None else x), 1180.9, 0.0]
    return FrameInput(cams, pose, velocity=(4.0, 0.1), acceleration=(0.2, 0.0), yaw_rate=0.1, stamp_ns=T0 + i * HALF_S)


def test_backbone_runs_once_per_frame_and_outputs_are_sane(pipe):
    cfg = pipe.cfg
    calls = []
    # the ResNet is entered through nn.Module.__call__ (forward_multiview calls the backbone's forward directly)
    hook = pipe.model.backbone.resnet.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append(int(kwargs["pixel_values"].shape[0])), with_kwargs=True
    )
    rng = np.random.default_rng(0)
    results = [pipe.step(_frame(cfg, i, rng)) for i in range(3)]
    hook.remove()
    assert calls == [cfg.num_views] * 3, "each step must run the backbone once, on the new frame's views only"
    assert [r.history_frames for r in results] == [0, 1, 2] and pipe.history_length == 2
    r = results[-1]
    assert r.stamp_ns == T0 + 2 * HALF_S and not r.sequence_reset
    occ = r.occupancy
    assert occ.points.dtype == np.float32 and occ.points.shape[1] == 3 and len(occ.points) > 0
    assert len(occ.points) == len(occ.classes) == len(occ.scores) and occ.classes.max() < 17
    lo, hi = np.array(cfg.point_cloud_range[:3]), np.array(cfg.point_cloud_range[3:])
    assert ((occ.points >= lo) & (occ.points <= hi)).all() and np.isfinite(occ.scores).all()
    assert len(r.forecast) == cfg.forecast_frames
    assert [f.time_s for f in r.forecast] == pytest.approx(
        [cfg.forecast_dt * (t + 1) for t in range(cfg.forecast_frames)]
    )
    plan = r.plan
    assert plan.waypoints.shape == (cfg.plan_horizon, 2) and plan.anchors.shape == (
        cfg.num_anchors,
        cfg.plan_horizon,
        2,
    )
    assert np.isfinite(plan.anchors).all() and ((plan.anchor_scores >= 0) & (plan.anchor_scores <= 1)).all()
    assert plan.chosen_anchor == int(np.argmax(plan.anchor_scores))
    np.testing.assert_array_equal(plan.waypoints, plan.anchors[plan.chosen_anchor])
    assert isinstance(r.explanation, str)
    assert set(r.timings_s) >= {"backbone", "encoder", "llm", "forecaster", "planner", "total"}
    assert all(v >= 0 for v in r.timings_s.values())
    # the forecast frames sit on the planned path: frame at t = 1.0 s is the 2nd waypoint
    np.testing.assert_allclose(r.forecast[1].ego_pose[:2, 3], plan.waypoints[1], atol=1e-5)


def _count_llm_tokens(pipe):
    """Records (tokens fed, tokens already in the KV cache) of every LLM decoder call."""
    seen = []
    cache_arg = cache_keyword(pipe.model.llm.decoder)

    def pre_hook(module, args, kwargs):
        emb = kwargs.get("inputs_embeds")
        tokens = int(emb.shape[1]) if emb is not None else int(kwargs["input_ids"].shape[1])
        seen.append((tokens, kwargs[cache_arg].get_seq_length()))

    return seen, pipe.model.llm.decoder.register_forward_pre_hook(pre_hook, with_kwargs=True)


def test_prefix_encoded_once_and_reused_by_ask(pipe):
    cfg = pipe.cfg
    prefix_len = cfg.num_queries + cfg.num_global_queries + 1
    with pytest.raises(RuntimeError, match="step"):
        pipe.ask("Is the road clear?")
    rng = np.random.default_rng(1)
    seen, hook = _count_llm_tokens(pipe)
    pipe.step(_frame(cfg, 0, rng))
    step_calls = list(seen)
    seen.clear()
    a1 = pipe.ask("Is there a pedestrian ahead?")
    a2 = pipe.ask("What is the traffic light state?", max_new_tokens=5)
    hook.remove()
    # the step encodes the prefix exactly once (the only call on an empty cache); the reasoning runs after it
    assert step_calls[0] == (prefix_len, 0) and [c for c in step_calls if c[1] == 0] == [(prefix_len, 0)]
    assert step_calls[1][1] == prefix_len and all(past > prefix_len for _, past in step_calls[2:])
    # ask never re-runs the prefix: each starts on the cropped prefix cache with its prompt, then one token at a time
    assert [past for _, past in seen].count(prefix_len) == 2 and all(past >= prefix_len for _, past in seen)
    assert sum(n for n, _ in seen) == a1.prompt_tokens + a1.generated_tokens + a2.prompt_tokens + a2.generated_tokens
    assert a1.stamp_ns == T0 and a2.generated_tokens <= 5 and a1.latency_s > 0
    # the cache is back at the prefix length after each answer (the same question gives the same answer)
    assert pipe.ask("Is there a pedestrian ahead?").text == a1.text
    with pytest.raises(ValueError, match="empty"):
        pipe.ask("  ")
    with pytest.raises(ValueError, match="max_question_chars"):
        pipe.ask("why? " * 300)
    with pytest.raises(ValueError, match="tokens"):
        pipe.ask(" ".join(f"w{i}" for i in range(120)))  # short in characters, too long in tokens


def test_step_and_ask_emit_no_future_warning(pipe):
    """The KV cache goes through transformers' current cache argument: no deprecation warning on every frame."""
    import warnings

    rng = np.random.default_rng(7)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe.step(_frame(pipe.cfg, 0, rng))
        pipe.ask("Is the road clear?", max_new_tokens=3)
    future = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if issubclass(w.category, FutureWarning)]
    assert not future, future


def test_sequence_resets(pipe):
    cfg = pipe.cfg
    rng = np.random.default_rng(2)
    for i in range(3):
        pipe.step(_frame(cfg, i, rng))
    assert pipe.history_length == 2
    gap = pipe.step(_frame(cfg, 10, rng, x=2.0 * 3))  # 3.5 s after the previous frame
    assert gap.sequence_reset and "time gap" in gap.reset_reason and gap.history_frames == 0
    back = pipe.step(_frame(cfg, 9, rng, x=2.0 * 3))  # stamp goes backwards
    assert back.sequence_reset and "backwards" in back.reset_reason
    ok = pipe.step(_frame(cfg, 10, rng, x=2.0 * 3))
    assert not ok.sequence_reset and ok.history_frames == 1
    jump = pipe.step(_frame(cfg, 11, rng, x=500.0))
    assert jump.sequence_reset and "jumped" in jump.reset_reason
    pipe.reset()
    assert pipe.history_length == 0 and pipe.step(_frame(cfg, 12, rng, x=500.0)).history_frames == 0


def _batch(frames_newest_first, valid, cfg):
    """A DrivingBatch of one item built directly from FrameInputs (independent of the pipeline's stacking)."""

    def cams(f):
        return sorted(f.cameras, key=lambda c: CAMERA_NAMES.index(c.name))

    images = torch.stack(
        [
            torch.stack([torch.from_numpy(c.image).permute(2, 0, 1).float() / 255.0 for c in cams(f)])
            for f in frames_newest_first
        ]
    )[None]
    intr = torch.tensor(np.array([[c.intrinsics for c in cams(f)] for f in frames_newest_first]), dtype=torch.float32)[
        None
    ]
    c2e = torch.tensor(np.array([[c.cam2ego for c in cams(f)] for f in frames_newest_first]), dtype=torch.float32)[None]
    cur = frames_newest_first[0]
    e2g = torch.tensor(np.array([f.ego2global for f in frames_newest_first]), dtype=torch.float32)[None]
    vx, vy = cur.velocity
    ego = torch.tensor([[vx, vy, cur.acceleration[0], cur.acceleration[1], cur.yaw_rate, math.hypot(vx, vy)]])
    return DrivingBatch(
        images=images,
        intrinsics=intr,
        cam2ego=c2e,
        ego2global=e2g,
        frame_valid=torch.tensor([valid]),
        ego_state=ego.float(),
        command=torch.tensor([cur.command]),
    )


def test_step_equals_predict(pipe):
    cfg = pipe.cfg
    rng = np.random.default_rng(3)
    f0, f1 = _frame(cfg, 0, rng), _frame(cfg, 1, rng)
    r0, r1 = pipe.step(f0), pipe.step(f1)
    gen = torch.Generator().manual_seed(pipe.options.seed)
    model = pipe.model
    p0 = model.predict(
        _batch([f0, f0, f0], [True, False, False], cfg), generate_text=True, generator=gen, score_threshold=0.0
    )
    p1 = model.predict(
        _batch([f1, f0, f0], [True, True, False], cfg), generate_text=True, generator=gen, score_threshold=0.0
    )
    for r, p in ((r0, p0), (r1, p1)):
        np.testing.assert_allclose(r.occupancy.points, p.occupancy_points[0].numpy(), atol=1e-4)
        np.testing.assert_array_equal(r.occupancy.classes, p.occupancy_classes[0].numpy())
        np.testing.assert_allclose(r.occupancy.scores, p.occupancy_scores[0].numpy(), atol=1e-4)
        for t in range(cfg.forecast_frames):
            np.testing.assert_allclose(r.forecast[t].points, p.forecast_points[0][t].numpy(), atol=1e-4)
        np.testing.assert_allclose(r.plan.anchors, p.anchor_trajectories[0].numpy(), atol=1e-4)
        np.testing.assert_allclose(r.plan.anchor_scores, p.anchor_scores[0].numpy(), atol=1e-4)
        assert r.plan.chosen_anchor == int(p.chosen_anchor[0])
        assert r.explanation == p.reasoning[0]


def test_input_validation_and_resize(checkpoint):
    pipe = SparseOccVLAPipeline.from_pretrained(checkpoint, PipelineOptions(score_threshold=0.0))
    cfg = pipe.cfg
    rng = np.random.default_rng(4)
    f = _frame(cfg, 0, rng)
    with pytest.raises(ValueError, match="missing \\['CAM_BACK'\\]"):
        pipe.step(FrameInput([c for c in f.cameras if c.name != "CAM_BACK"], f.ego2global, (0, 0), (0, 0), 0.0, T0))
    bad_pose = f.ego2global.copy()
    bad_pose[0, 3] = np.nan
    with pytest.raises(ValueError, match="ego2global"):
        pipe.step(FrameInput(f.cameras, bad_pose, (0, 0), (0, 0), 0.0, T0))
    with pytest.raises(ValueError, match="velocity"):
        pipe.step(FrameInput(f.cameras, f.ego2global, (np.nan, 0), (0, 0), 0.0, T0))
    float_cams = [CameraFrame(c.name, c.image.astype(np.float32), c.intrinsics, c.cam2ego) for c in f.cameras]
    with pytest.raises(ValueError, match="uint8"):
        pipe.step(FrameInput(float_cams, f.ego2global, (0, 0), (0, 0), 0.0, T0))
    assert pipe.history_length == 0 and pipe.last_stamp_ns is None  # rejected frames leave no trace

    # a 2x larger image (exact nearest-neighbour upsample, K doubled) gives the same outputs as the original
    big = [
        CameraFrame(
            c.name, np.repeat(np.repeat(c.image, 2, 0), 2, 1), np.diag([2.0, 2.0, 1.0]) @ c.intrinsics, c.cam2ego
        )
        for c in f.cameras
    ]
    r_big = pipe.step(FrameInput(big, f.ego2global, f.velocity, f.acceleration, f.yaw_rate, f.stamp_ns))
    ref = SparseOccVLAPipeline.from_pretrained(checkpoint, PipelineOptions(score_threshold=0.0)).step(f)
    np.testing.assert_allclose(r_big.occupancy.points, ref.occupancy.points, atol=1e-4)
    np.testing.assert_allclose(r_big.plan.anchors, ref.plan.anchors, atol=1e-4)


def test_path_geometry_helpers():
    wp = np.array([[1.0, 0.0], [2.0, 1.0], [2.0, 1.0], [2.0, 3.0]])
    np.testing.assert_allclose(path_headings(wp), [0.0, math.pi / 4, math.pi / 4, math.pi / 2])
    poses = poses_along_path(wp, 0.5, [0.25, 1.0, 5.0])
    np.testing.assert_allclose(poses[0][:2, 3], [0.5, 0.0])
    np.testing.assert_allclose(poses[1][:2, 3], [2.0, 1.0])
    np.testing.assert_allclose(poses[2][:2, 3], [2.0, 3.0])  # clamped to the end of the path
    assert math.atan2(poses[2][1, 0], poses[2][0, 0]) == pytest.approx(math.pi / 2)


def test_ask_concurrent_with_step(pipe):
    """A service thread may ask while the worker steps: answers are about a completed frame, nothing breaks."""
    import threading

    cfg = pipe.cfg
    rng = np.random.default_rng(5)
    frames = [_frame(cfg, i, rng) for i in range(3)]
    pipe.step(frames[0])
    errors = []

    def worker():
        try:
            for f in frames[1:]:
                pipe.step(f)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    answers = [pipe.ask("Is the road clear?", max_new_tokens=4) for _ in range(3)]
    t.join()
    assert not errors
    assert all(a.stamp_ns in {f.stamp_ns for f in frames} for a in answers)
    assert [a.stamp_ns for a in answers] == sorted(a.stamp_ns for a in answers)
    assert pipe.ask("Is the road clear?").stamp_ns == frames[-1].stamp_ns


def test_history_interval_keeps_training_spacing(checkpoint):
    """Cameras at 10 Hz, history spacing 0.2 s: only frames ~0.2 s apart are kept as past frames."""
    pipe = SparseOccVLAPipeline.from_pretrained(checkpoint, PipelineOptions(history_interval_s=0.2))
    cfg = pipe.cfg
    rng = np.random.default_rng(6)
    calls = []
    hook = pipe.model.backbone.resnet.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
    for i in range(5):
        f = _frame(cfg, 0, rng, x=0.4 * i)
        f.stamp_ns = T0 + i * 100_000_000
        r = pipe.step(f)
    hook.remove()
    assert len(calls) == 5 and not r.sequence_reset  # every frame through the backbone once, no reset
    assert [c.stamp_ns for c in pipe._history] == [T0 + 200_000_000, T0 + 400_000_000]
    assert r.history_frames == 2  # the frame at 0.4 s saw the cached frames at 0.2 s and 0.0 s (spacing kept)


def test_warmup_leaves_the_outputs_of_the_following_frames_unchanged(checkpoint):
    cold = SparseOccVLAPipeline.from_pretrained(checkpoint, PipelineOptions(score_threshold=0.0))
    warm = SparseOccVLAPipeline.from_pretrained(checkpoint, PipelineOptions(score_threshold=0.0))
    assert warm.warmup() > 0
    assert warm.frames_processed == 0 and warm.resets == 0 and warm.history_length == 0
    assert warm.last_stamp_ns is None  # nothing to ask about until a real frame arrives
    for i in range(2):
        a = cold.step(_frame(cold.cfg, i, np.random.default_rng(i)))
        b = warm.step(_frame(warm.cfg, i, np.random.default_rng(i)))
        np.testing.assert_array_equal(a.occupancy.points, b.occupancy.points)
        np.testing.assert_array_equal(a.plan.waypoints, b.plan.waypoints)
        assert a.explanation == b.explanation and a.sequence_reset == b.sequence_reset
