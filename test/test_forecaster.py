"""Occupancy forecaster (eq. 6, eq. 7, eq. 11): T point sets, recursion over steps, fusion and loss by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sparseoccvla_core.config import SparseOccVLAConfig
from sparseoccvla_core.forecaster import OccupancyForecaster, forecast_losses
from sparseoccvla_core.losses import occupancy_losses


@pytest.fixture
def cfg() -> SparseOccVLAConfig:
    return SparseOccVLAConfig.tiny(num_queries=10, forecast_frames=4, forecast_points_per_query=3)


def _inputs(cfg, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = cfg.num_queries
    return (
        torch.randn(b, n, cfg.llm_hidden_size, generator=g),
        torch.randn(b, n, cfg.query_dim, generator=g),
        torch.rand(b, n, 3, generator=g) * 20 - 10,
        torch.tensor([[5.0, 0.0, 0.1, 0.0, 0.0, 5.0]] * b),
        torch.ones(b, dtype=torch.long),
    )


def test_returns_t_point_sets_with_classes(cfg):
    fc = OccupancyForecaster(cfg).eval()
    out = fc(*_inputs(cfg))
    assert len(out.points) == len(out.logits) == len(out.centres) == cfg.forecast_frames
    for pts, logits in zip(out.points, out.logits):
        assert pts.shape == (2, cfg.num_queries, cfg.forecast_points_per_query, 3)
        assert logits.shape == (2, cfg.num_queries, cfg.forecast_points_per_query, cfg.num_classes - 1)
    # the frames differ (time enters eq. 7 and the centres move)
    assert not torch.allclose(out.points[0], out.points[1])


def test_fusion_is_residual_mlp_of_concatenation(cfg):
    """Eq. 6: Q_hat = Q_L + MLP([proj(T'_o), Q_L])."""
    fc = OccupancyForecaster(cfg)
    t_o, q = _inputs(cfg)[:2]
    mlp = fc.fusion
    expect = q + mlp[2](F.gelu(mlp[0](torch.cat([t_o @ fc.token_proj.weight.T + fc.token_proj.bias, q], -1))))
    assert torch.allclose(fc.fuse(t_o, q), expect, atol=1e-5)


def test_recursive_step_t_uses_step_t_minus_1(cfg):
    """Perturbing step k's output changes steps k+1..T and leaves steps 1..k untouched."""
    fc = OccupancyForecaster(cfg).eval()
    inputs = _inputs(cfg)
    with torch.no_grad():
        base = fc(*inputs)
    k = 2
    original = fc.step
    calls = []

    def perturbed(queries, centres, ego, t):
        calls.append(t)
        x, c, p, l = original(queries, centres, ego, t)
        if t == k:
            x = x + 0.5  # feed a different query state into step k + 1
        return x, c, p, l

    fc.step = perturbed
    with torch.no_grad():
        out = fc(*inputs)
    assert calls == list(range(1, cfg.forecast_frames + 1))  # one shared step, called once per frame in order
    for t in range(cfg.forecast_frames):
        same = torch.allclose(out.points[t], base.points[t], atol=1e-6)
        assert same == (t + 1 <= k), f"frame {t + 1}"
    # and the centres propagate: step t starts from step t-1's centres
    fc.step = original
    calls_c = []

    def moved(queries, centres, ego, t):
        calls_c.append(centres.clone())
        return original(queries, centres, ego, t)

    fc.step = moved
    with torch.no_grad():
        out2 = fc(*inputs)
    assert torch.allclose(calls_c[0], inputs[2])
    for t in range(1, cfg.forecast_frames):
        assert torch.allclose(calls_c[t], out2.centres[t - 1])


def test_time_and_ego_enter_each_step(cfg):
    """Eq. 7: the same queries/centres at different t, or with a different ego state, give different outputs."""
    fc = OccupancyForecaster(cfg).eval()
    t_o, q, p, ego_state, cmd = _inputs(cfg)
    with torch.no_grad():
        x = fc.fuse(t_o, q)
        ego = fc.ego_encoder(ego_state, cmd)
        a = fc.step(x, p, ego, 1)[2]
        b = fc.step(x, p, ego, 3)[2]
        c = fc.step(x, p, fc.ego_encoder(ego_state * 2, cmd), 1)[2]
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


def test_forecast_loss_is_eq11_sum_over_frames(cfg):
    """Eq. 11 = sum over frames of occupancy_losses on that frame's GT; frames without GT drop the item."""
    fc = OccupancyForecaster(cfg)
    out = fc(*_inputs(cfg))
    b, t, g = 2, cfg.forecast_frames, 12
    gen = torch.Generator().manual_seed(4)
    pts = torch.randn(b, t, g, 3, generator=gen) * 5
    labels = torch.randint(0, 17, (b, t, g), generator=gen)
    mask = torch.ones(b, t, g, dtype=torch.bool)
    mask[1, -1] = False  # item 1 has no GT for the last frame
    mask[0, 0, 10:] = False
    got = forecast_losses(out, pts, labels, mask, cfg)
    cd = focal = 0.0
    for step in range(t):
        items = [0, 1] if step < t - 1 else [0]
        ref = occupancy_losses(
            [out.points[step][items]],
            [out.logits[step][items]],
            pts[items, step],
            labels[items, step],
            mask[items, step],
            cfg,
            include_p0=False,
        )
        cd, focal = cd + ref["cd"], focal + ref["focal"]
    assert torch.allclose(got["cd"], cd) and torch.allclose(got["focal"], focal)
    got["cd"].backward()
    assert fc.point_head[0].weight.grad is not None
    with pytest.raises(ValueError, match="forecast_frames"):
        forecast_losses(out, pts[:, :2], labels[:, :2], mask[:, :2], cfg)


# ------------------------------------------------------------------ forecast_prior "ego_static"
def _ego_pose_np(vx, vy, yaw_rate, t, substeps=2000):
    """Ego pose after t s of constant body-frame velocity and yaw rate, by fine numerical integration (numpy)."""
    x = y = yaw = 0.0
    h = t / substeps
    for _ in range(substeps):
        mid = yaw + 0.5 * yaw_rate * h
        x += (np.cos(mid) * vx - np.sin(mid) * vy) * h
        y += (np.sin(mid) * vx + np.cos(mid) * vy) * h
        yaw += yaw_rate * h
    return x, y, yaw


def test_constant_velocity_motion_matches_integration():
    from sparseoccvla_core.forecaster import constant_velocity_motion

    ego = torch.tensor([[10.0, 0.0, 0.0, 0.0, 0.0, 10.0], [8.0, 0.5, 0.0, 0.0, 0.4, 8.0]], dtype=torch.float64)
    cos, sin, trans = constant_velocity_motion(ego, 0.5)
    assert trans[0].tolist() == pytest.approx([5.0, 0.0]) and cos[0].item() == 1.0 and sin[0].item() == 0.0
    x, y, yaw = _ego_pose_np(8.0, 0.5, 0.4, 0.5)
    assert trans[1].tolist() == pytest.approx([x, y], abs=1e-6)
    assert (cos[1].item(), sin[1].item()) == pytest.approx((np.cos(yaw), np.sin(yaw)), abs=1e-12)


def test_ego_static_prior_untrained_is_the_current_occupancy_moved_by_the_ego():
    """An untrained forecaster with forecast_prior "ego_static" returns the encoder's points (every other one of
    them here) and logits, expressed in each future ego frame of the constant-velocity ego motion; no gradient of the
    forecast reaches the encoder's points or logits."""
    cfg = SparseOccVLAConfig.tiny(
        num_queries=10, forecast_frames=3, forecast_points_per_query=4, forecast_prior="ego_static"
    )
    fc = OccupancyForecaster(cfg)
    llm, queries, centres, _, command = _inputs(cfg)
    ego = torch.tensor([[8.0, 0.5, 0.0, 0.0, 0.4, 8.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    g = torch.Generator().manual_seed(3)
    cur_pts = (centres[:, :, None] + torch.randn(2, 10, 8, 3, generator=g)).requires_grad_()
    cur_logits = torch.randn(2, 10, 8, cfg.num_classes - 1, generator=g).requires_grad_()
    out = fc(llm, queries, centres, ego, command, cur_pts, cur_logits)
    idx = [0, 2, 5, 7]  # round(linspace(0, 7, 4))
    for t in range(1, 4):
        for b in range(2):
            x, y, yaw = _ego_pose_np(float(ego[b, 0]), float(ego[b, 1]), float(ego[b, 4]), 0.5 * t)
            p = cur_pts[b, :, idx].detach().double().numpy()
            dx, dy = p[..., 0] - x, p[..., 1] - y
            want = np.stack([np.cos(yaw) * dx + np.sin(yaw) * dy, -np.sin(yaw) * dx + np.cos(yaw) * dy, p[..., 2]], -1)
            np.testing.assert_allclose(out.points[t - 1][b].detach().numpy(), want, atol=1e-4)
        assert torch.equal(out.logits[t - 1], cur_logits[:, :, idx].detach())
    sum(o.sum() for o in out.points + out.logits).backward()
    assert cur_pts.grad is None and cur_logits.grad is None
    assert fc.point_head[-1].weight.grad is not None  # the residual heads do learn
    with pytest.raises(ValueError, match="decoded points"):
        fc(llm, queries, centres, ego, command)
    with pytest.raises(ValueError, match="forecast_prior"):
        SparseOccVLAConfig.tiny(forecast_prior="constant")
