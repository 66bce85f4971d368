"""Anchor-diffusion planner (sec. 3.3, eq. 8): schedule and DDIM by hand, anchors, losses, inference step count."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparseoccvla_core.config import SparseOccVLAConfig
from sparseoccvla_core.planner import (
    AnchorDiffusionPlanner,
    add_noise,
    ddim_step,
    inference_timesteps,
    kinematic_fan,
    plan_losses,
    positive_anchor,
    scaled_linear_alphas_cumprod,
)


@pytest.fixture
def cfg() -> SparseOccVLAConfig:
    return SparseOccVLAConfig.tiny()


def _numpy_alphas_cumprod(n: int) -> np.ndarray:
    betas = np.linspace(math.sqrt(1e-4), math.sqrt(0.02), n) ** 2  # scaled-linear, diffusers defaults
    return np.cumprod(1.0 - betas)


def _context(planner, cfg, b=2, seed=0, reasoning_len=5):
    g = torch.Generator().manual_seed(seed)
    n = cfg.num_queries
    mask = torch.ones(b, reasoning_len, dtype=torch.bool)
    mask[-1, 3:] = False
    return planner.context(
        torch.randn(b, n, cfg.query_dim, generator=g),
        torch.rand(b, n, 3, generator=g) * 20 - 10,
        torch.tensor([[5.0, 0.0, 0.0, 0.0, 0.0, 5.0]] * b),
        torch.ones(b, dtype=torch.long),
        torch.randn(b, reasoning_len, cfg.llm_hidden_size, generator=g),
        mask,
        torch.randn(b, cfg.num_global_queries + 1, cfg.llm_hidden_size, generator=g),
    )


def test_schedule_matches_numpy():
    ours = scaled_linear_alphas_cumprod(1000).numpy()
    assert np.allclose(ours, _numpy_alphas_cumprod(1000), rtol=1e-12)
    assert ours[0] > ours[39] > ours[999] > 0


def test_add_noise_is_eq8():
    acp = scaled_linear_alphas_cumprod(1000)
    x0, eps = torch.randn(2, 3, 6, 2), torch.randn(2, 3, 6, 2)
    t = torch.tensor([5, 30])
    out = add_noise(x0, eps, t, acp)
    for i in range(2):
        a = float(acp[t[i]])
        assert torch.allclose(out[i], math.sqrt(a) * x0[i] + math.sqrt(1 - a) * eps[i], atol=1e-6)


def test_ddim_step_equals_closed_form():
    """One DDIM (eta = 0) step from t = 8 to 4 computed by hand from alpha-bar."""
    acp = _numpy_alphas_cumprod(1000)
    rng = np.random.default_rng(0)
    x_t, x0 = rng.normal(size=(4, 6, 2)), rng.normal(size=(4, 6, 2)) * 0.5
    a_t, a_prev = acp[8], acp[4]
    eps = (x_t - np.sqrt(a_t) * x0) / np.sqrt(1 - a_t)
    expect = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
    got = ddim_step(torch.from_numpy(x_t), torch.from_numpy(x0), 8, 4, scaled_linear_alphas_cumprod(1000))
    assert np.allclose(got.numpy(), expect, atol=1e-12)
    # the last step (prev = -1, alpha-bar 1) returns the predicted clean sample
    last = ddim_step(torch.from_numpy(x_t), torch.from_numpy(x0), 4, -1, scaled_linear_alphas_cumprod(1000))
    assert np.allclose(last.numpy(), x0, atol=1e-12)


def test_inference_timesteps():
    assert inference_timesteps(8, 2) == [8, 4]
    assert inference_timesteps(8, 1) == [8]
    assert inference_timesteps(8, 9) == list(range(8, -1, -1))
    assert inference_timesteps(39, 4) == [39, 29, 19, 9]
    with pytest.raises(ValueError):
        inference_timesteps(8, 10)


def test_kinematic_fan_per_command(cfg):
    anchors, commands = kinematic_fan(cfg)
    k, per = cfg.num_anchors, cfg.anchors_per_command
    assert anchors.shape == (k, cfg.plan_horizon, 2)
    assert commands.tolist() == [c for c in range(cfg.num_commands) for _ in range(per)]
    left, straight, right = anchors[:per], anchors[per : 2 * per], anchors[2 * per :]
    assert (left[:, -1, 1] > 0).all() and (right[:, -1, 1] < 0).all() and (straight[..., 1] == 0).all()
    assert torch.allclose(left[..., 1], -right[..., 1], atol=1e-5)  # mirror images
    # constant speed: arc length per step = v * dt (chord ~ arc for small turns)
    step = (anchors[:, 1:] - anchors[:, :-1]).norm(dim=-1)
    assert torch.allclose(step, step[:, :1].expand_as(step), rtol=1e-4)
    assert len({round(float(s), 4) for s in step[:per, 0]}) == per  # distinct speeds


def test_positive_anchor_is_closest_by_mean_l2():
    rng = np.random.default_rng(1)
    anchors, gt = rng.normal(size=(7, 6, 2)) * 5, rng.normal(size=(3, 6, 2)) * 5
    mask = np.ones((3, 6), dtype=bool)
    mask[2, 3:] = False
    got = positive_anchor(torch.tensor(anchors), torch.tensor(gt), torch.tensor(mask))
    for b in range(3):
        d = [np.mean(np.linalg.norm(anchors[k][mask[b]] - gt[b][mask[b]], axis=-1)) for k in range(7)]
        assert got[b] == int(np.argmin(d))


def test_l1_only_on_positive_anchor_and_bce_formula():
    torch.manual_seed(0)
    k, t = 6, 6
    anchors = torch.randn(k, t, 2) * 5
    gt = anchors[[2, 4]] + 0.1  # positives 2 and 4
    mask = torch.ones(2, t, dtype=torch.bool)
    traj = torch.randn(2, k, t, 2, requires_grad=True)
    scores = torch.randn(2, k)
    losses = plan_losses(traj, scores, anchors, gt, mask)
    # manual: L1 of the positive's prediction; BCE with one positive
    expect_l1 = torch.stack([(traj[0, 2] - gt[0]).abs().mean(), (traj[1, 4] - gt[1]).abs().mean()]).mean()
    assert torch.allclose(losses["plan_l1"], expect_l1)
    target = torch.zeros(2, k)
    target[0, 2] = target[1, 4] = 1
    p = scores.sigmoid()
    expect_bce = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    assert torch.allclose(losses["plan_cls"], expect_bce, atol=1e-6)
    # changing any non-positive anchor's prediction leaves L1 unchanged; changing the positive does not
    other = traj.detach().clone()
    other[0, [0, 1, 3, 5]] += 10.0
    other[1, [0, 1, 2, 3, 5]] -= 7.0
    assert torch.equal(plan_losses(other, scores, anchors, gt, mask)["plan_l1"], losses["plan_l1"])
    other[0, 2] += 1.0
    assert not torch.allclose(plan_losses(other, scores, anchors, gt, mask)["plan_l1"], losses["plan_l1"])
    losses["plan_l1"].backward()
    grad_rows = traj.grad.abs().sum((-1, -2)) > 0
    assert grad_rows.tolist() == [[False, False, True, False, False, False], [False, False, False, False, True, False]]
    # an item without valid GT waypoints is left out
    mask2 = mask.clone()
    mask2[1] = False
    only_first = plan_losses(traj.detach(), scores, anchors, gt, mask2)
    assert torch.allclose(only_first["plan_l1"], (traj[0, 2] - gt[0]).abs().mean().detach())


@pytest.mark.parametrize("steps", [2, 3])
def test_inference_runs_exactly_denoise_steps(cfg, steps):
    cfg = SparseOccVLAConfig.tiny(denoise_steps=steps)
    torch.manual_seed(0)
    planner = AnchorDiffusionPlanner(cfg).eval()
    ctx = _context(planner, cfg)
    seen_t = []
    handle = planner.decoder.register_forward_hook(lambda m, args, out: seen_t.append(int(args[1][0])))
    out = planner.sample(ctx, generator=torch.Generator().manual_seed(0))
    handle.remove()
    assert seen_t == inference_timesteps(cfg.diffusion_infer_start_timestep, steps)
    b, k = 2, cfg.num_anchors
    assert out.scores.shape == (b, k) and out.trajectories.shape == (b, k, cfg.plan_horizon, 2)
    assert out.plan.shape == (b, cfg.plan_horizon, 2)
    assert torch.equal(out.chosen, out.scores.argmax(1))
    assert torch.equal(out.plan, out.trajectories[torch.arange(b), out.chosen])
    assert ((out.scores > 0) & (out.scores < 1)).all()
    # deterministic with a seeded generator, different noise with another seed
    again = planner.sample(ctx, generator=torch.Generator().manual_seed(0))
    other = planner.sample(ctx, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.trajectories, out.trajectories)
    assert not torch.equal(other.trajectories, out.trajectories)


def test_training_noise_is_truncated_and_losses_flow(cfg):
    torch.manual_seed(0)
    planner = AnchorDiffusionPlanner(cfg)
    ctx = _context(planner, cfg)
    seen_t = []
    handle = planner.decoder.register_forward_hook(lambda m, args, out: seen_t.extend(args[1].tolist()))
    gt = planner.anchors[[3, 10]] + 0.2
    for seed in range(20):
        losses = planner.loss(
            ctx, gt, torch.ones(2, cfg.plan_horizon, dtype=torch.bool), torch.Generator().manual_seed(seed)
        )
    handle.remove()
    assert all(0 <= t < cfg.diffusion_trunc_timesteps for t in seen_t) and len(set(seen_t)) > 5
    (losses["plan_cls"] + losses["plan_l1"]).backward()
    for name in (
        "scorer.head.0.weight",
        "decoder.regression_head.0.weight",
        "reasoning_proj.weight",
        "ego_encoder.mlp.0.weight",
    ):
        assert dict(planner.named_parameters())[name].grad.abs().sum() > 0, name


def test_reasoning_tokens_and_context_change_scores(cfg):
    torch.manual_seed(0)
    planner = AnchorDiffusionPlanner(cfg).eval()
    ctx = _context(planner, cfg, seed=0)
    ctx2 = _context(planner, cfg, seed=0)
    ctx2.reasoning[:, 1:] = ctx2.reasoning[:, 1:] + 1.0  # different reasoning tokens (slot 0 is the null token)
    with torch.no_grad():
        assert not torch.allclose(planner.score(ctx), planner.score(ctx2))
        # padded reasoning positions are ignored
        ctx3 = _context(planner, cfg, seed=0)
        ctx3.reasoning[-1, 4:] += 100.0  # item 1 pads from token 3 (slot 4 on)
        assert torch.allclose(planner.score(ctx3), planner.score(ctx), atol=1e-6)


def test_set_anchors(cfg):
    planner = AnchorDiffusionPlanner(cfg)
    assert not bool(planner.anchors_from_data)
    data = torch.randn(cfg.num_commands, cfg.anchors_per_command, cfg.plan_horizon, 2)
    planner.set_anchors(data)
    assert bool(planner.anchors_from_data)
    assert torch.equal(planner.anchors, data.flatten(0, 1))
    assert planner.anchor_commands.tolist() == [c for c in range(3) for _ in range(cfg.anchors_per_command)]
    with pytest.raises(ValueError, match="anchors must have shape"):
        planner.set_anchors(torch.zeros(5, cfg.plan_horizon, 2))
    with pytest.raises(ValueError, match="commands"):
        planner.set_anchors(data.flatten(0, 1), torch.full((cfg.num_anchors,), 7))


def test_scorer_overfits_a_fixed_batch(cfg):
    """The scorer must tell anchors apart: on a fixed batch its BCE falls far below 0.214, the BCE of a constant
    uniform score over 18 anchors with one positive (what an anchor-blind scorer is stuck at).  The anchors are the
    hard synthetic case: straight anchors that differ only in speed, plus the two turning fans."""
    torch.manual_seed(0)
    planner = AnchorDiffusionPlanner(cfg)
    fan, _ = kinematic_fan(cfg)
    straight = torch.linspace(0.6, 1.4, cfg.anchors_per_command)[:, None, None] * fan[cfg.anchors_per_command - 1]
    anchors = fan.clone()
    anchors[cfg.anchors_per_command : 2 * cfg.anchors_per_command] = straight  # [K/C, T, 2] straight, 6 speeds
    planner.set_anchors(anchors)
    b = 4
    speeds = [4.0, 6.0, 8.0, 10.0]
    with torch.no_grad():  # a fixed conditioning; only the scorer trains
        ctx = _context(planner, cfg, b=b)
        ctx.ego = planner.ego_encoder(
            torch.tensor([[s, 0.0, 0.0, 0.0, 0.0, s] for s in speeds]), torch.ones(b, dtype=torch.long)
        )
    targets = torch.tensor([1, 2, 3, 4]) + cfg.anchors_per_command  # one straight anchor per item
    gt = planner.anchors[targets] + 0.05
    mask = torch.ones(b, cfg.plan_horizon, dtype=torch.bool)
    assert torch.equal(positive_anchor(planner.anchors, gt, mask), targets)
    uniform = (
        -(math.log(1 / cfg.num_anchors) + (cfg.num_anchors - 1) * math.log(1 - 1 / cfg.num_anchors)) / cfg.num_anchors
    )
    assert abs(uniform - 0.214) < 1e-3
    opt = torch.optim.AdamW(planner.scorer.parameters(), lr=2e-3)
    for _ in range(150):
        loss = plan_losses(
            torch.zeros(b, cfg.num_anchors, cfg.plan_horizon, 2), planner.score(ctx), planner.anchors, gt, mask
        )
        opt.zero_grad()
        loss["plan_cls"].backward()
        opt.step()
    assert float(loss["plan_cls"].detach()) < 0.25 * uniform
    with torch.no_grad():
        assert torch.equal(planner.score(ctx).argmax(1), targets)


@pytest.mark.parametrize("regression", ["direct", "residual"])
def test_decoder_head_forms(regression):
    """ "direct" (paper sec. 3.3): x0 = head * traj_norm_scale, whatever the noisy input; "residual" (DiffusionDrive's
    code): x0 = noisy * traj_norm_scale + head (metres)."""
    cfg = SparseOccVLAConfig.tiny(plan_regression=regression)
    torch.manual_seed(0)
    planner = AnchorDiffusionPlanner(cfg).eval()
    ctx = _context(planner, cfg)
    head_bias = torch.linspace(-0.5, 0.5, 2 * cfg.plan_horizon)
    with torch.no_grad():  # the head outputs a known constant
        last = planner.decoder.regression_head[-1]
        last.weight.zero_()
        last.bias.copy_(head_bias)
        noisy = torch.rand(2, cfg.num_anchors, cfg.plan_horizon, 2) * 2 - 1
        out = planner.decoder(noisy, torch.tensor([3, 7]), ctx)
    head = head_bias.view(cfg.plan_horizon, 2).expand_as(out)
    scale = torch.tensor(cfg.traj_norm_scale)
    expected = head * scale if regression == "direct" else noisy * scale + head
    torch.testing.assert_close(out, expected)


def test_plan_regression_is_validated():
    with pytest.raises(ValueError, match="plan_regression"):
        SparseOccVLAConfig.tiny(plan_regression="offset")


def test_direct_decoder_denoises_where_the_residual_one_keeps_the_noise():
    """The reason "direct" is the default: on a fixed conditioning, 300 decoder updates on the positive anchor's L1
    bring the direct head's denoised trajectory (inference noise + 2 DDIM steps) to ~0.3 m of the GT, while the residual
    head is still about as far off as its noisy input (~1 m: t = 8 noise at traj_norm_scale 30 x 15 m)."""
    errors = {}
    for regression in ("direct", "residual"):
        cfg = SparseOccVLAConfig.tiny(plan_regression=regression)
        torch.manual_seed(0)
        planner = AnchorDiffusionPlanner(cfg)
        with torch.no_grad():
            ctx = _context(planner, cfg)
        gt = planner.anchors[[8, 9]] * torch.tensor([1.1, 1.0]) + torch.tensor([0.0, 0.3])  # near two anchors
        mask = torch.ones(2, cfg.plan_horizon, dtype=torch.bool)
        opt = torch.optim.AdamW(planner.decoder.parameters(), lr=2e-3)
        for step in range(300):
            loss = planner.loss(ctx, gt, mask, torch.Generator().manual_seed(step))["plan_l1"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        planner.eval()
        out = planner.sample(ctx, generator=torch.Generator().manual_seed(1000))
        positive = positive_anchor(planner.anchors, gt, mask)
        denoised = out.trajectories[torch.arange(2), positive]
        errors[regression] = float((denoised - gt).norm(dim=-1).mean())
    assert errors["direct"] < 0.5, errors
    assert errors["residual"] > 2 * errors["direct"], errors


@pytest.mark.parametrize("scale, clipped", [((60.0, 20.0), False), ((30.0, 15.0), True)])
def test_fast_trajectories_are_not_clipped(monkeypatch, scale, clipped):
    """Issue 13 A3: a 20 m/s anchor (60 m in 3 s, the fastest nuScenes ego motion) reaches the decoder unclipped
    with the default traj_norm_scale, in the noisy input of training and of every DDIM step; the old (30, 15) m
    scale clipped it to 30 m."""
    import sparseoccvla_core.planner as planner_module

    cfg = SparseOccVLAConfig.tiny(traj_norm_scale=scale, denoise_steps=2)
    assert SparseOccVLAConfig.tiny().traj_norm_scale == (60.0, 20.0)
    torch.manual_seed(0)
    planner = AnchorDiffusionPlanner(cfg).eval()
    t = torch.arange(1, cfg.plan_horizon + 1, dtype=torch.float32) * cfg.plan_dt
    fast = torch.stack([20.0 * t, 0.002 * (20.0 * t) ** 2], dim=-1)  # 20 m/s, gently curving (7 m at 60 m)
    anchors = fast[None].repeat(cfg.num_anchors, 1, 1)
    planner.set_anchors(anchors, torch.arange(cfg.num_anchors) // cfg.anchors_per_command)
    monkeypatch.setattr(planner_module, "_randn", lambda shape, gen, device, dtype: torch.zeros(shape, dtype=dtype))
    seen = []

    class PerfectDecoder(torch.nn.Module):  # returns the clean trajectory, in metres
        def forward(self, sample, timesteps, ctx):
            seen.append((sample.clone(), timesteps.clone()))
            return anchors[None].expand(sample.shape[0], -1, -1, -1)

    planner.decoder = PerfectDecoder()
    ctx = _context(planner, cfg)
    planner.sample(ctx)
    planner.loss(ctx, fast[None].repeat(2, 1, 1), torch.ones(2, cfg.plan_horizon, dtype=torch.bool))
    alphas = planner.alphas_cumprod
    for sample, steps in seen:  # zero noise: sqrt(a_t) x the normalised clean trajectory, one t per item
        metres = sample * torch.tensor(scale) / alphas[steps].sqrt().view(-1, 1, 1, 1)
        error = (metres - anchors).abs().max().item()
        assert (error > 1.0) if clipped else (error < 1e-3), (steps, error)
