"""Sparse Occupancy Encoder (paper sec. 3.1, eq. 9): shapes, coarse-to-fine, spatial-aware MHSA, adaptive scaling."""

import math

import numpy as np
import pytest
import torch
from perception_helpers import ring_rig

from sparseoccvla_core.batch import CameraRig
from sparseoccvla_core.config import SparseOccVLAConfig
from sparseoccvla_core.losses import occupancy_losses
from sparseoccvla_core.occ_grid import points_to_index
from sparseoccvla_core.occupancy_encoder import (
    EncoderOutput,
    SparseOccupancyEncoder,
    SpatialAwareMHSA,
    decode_occupancy,
)


def random_inputs(cfg, b=1, v=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.image_size
    f = cfg.num_frames
    feats = [torch.randn(b, f, v, cfg.fpn_dim, h // s, w // s, generator=g) for s in (4, 8, 16, 32)]
    K, c2e, e2g = ring_rig(b, f, v, (h, w))
    return dict(
        features=feats,
        rig=CameraRig(K, c2e, (h, w)),
        ego2global=e2g,
        frame_valid=torch.ones(b, f, dtype=torch.bool),
        ego_state=torch.randn(b, 6, generator=g),
    )


@pytest.fixture(scope="module")
def cfg():
    return SparseOccVLAConfig.tiny()


def test_output_shapes_and_coarse_to_fine(cfg):
    enc = SparseOccupancyEncoder(cfg).eval()
    out = enc(**random_inputs(cfg, b=2))
    assert isinstance(out, EncoderOutput)
    n, d, c = cfg.num_queries, cfg.query_dim, cfg.num_classes - 1
    assert out.queries.shape == (2, n, d) and out.query_points.shape == (2, n, 3) and out.scale.shape == (2, 3)
    assert len(out.layer_points) == cfg.num_encoder_layers + 1 and len(out.layer_logits) == cfg.num_encoder_layers
    assert out.layer_points[0].shape == (2, n, 1, 3)
    for l, p in enumerate(cfg.points_per_layer):
        assert out.layer_points[l + 1].shape == (2, n, p, 3)
        assert out.layer_logits[l].shape == (2, n, p, c)
    # positions change at every layer (query centres move), and the final centres are the last layer's mean
    for l in range(1, len(out.layer_points)):
        prev, cur = out.layer_points[l - 1].mean(2), out.layer_points[l].mean(2)
        assert (prev - cur).norm(dim=-1).mean() > 1e-3
    torch.testing.assert_close(out.query_points, out.layer_points[-1].mean(2))
    assert all(torch.isfinite(t).all() for t in [*out.layer_points, *out.layer_logits, out.queries])


def test_points_are_detached_between_layers(cfg):
    """Loss on the last layer's points reaches no earlier layer's point head (OPUS detaches points)."""
    enc = SparseOccupancyEncoder(cfg)
    out = enc(**random_inputs(cfg))
    out.layer_points[-1].square().sum().backward()
    first_reg = enc.layers[0].reg_head[-1].weight.grad
    assert first_reg is None or torch.count_nonzero(first_reg) == 0
    assert torch.count_nonzero(enc.layers[-1].reg_head[-1].weight.grad) > 0
    # the query features still carry gradient through all layers (only geometry is cut)
    assert torch.count_nonzero(enc.layers[0].mixing.out_proj.weight.grad) > 0
    # learned sampling offsets are trained through the bilinear reads (grid gradient)
    assert torch.count_nonzero(enc.layers[-1].sampling_offset.weight.grad) > 0
    assert torch.count_nonzero(enc.layers[-1].level_weights.weight.grad) > 0


def test_adaptive_scaling_changes_initial_range_with_speed(cfg):
    enc = SparseOccupancyEncoder(cfg).eval()
    with torch.no_grad():  # make the ego MLP clearly speed-sensitive (random init is, but mildly)
        enc.adaptive_scaling.scale_head[-1].weight.mul_(20.0)
    base = torch.tensor(cfg.point_cloud_range[:3]) + enc.query_points.weight.detach() * torch.tensor(
        [80.0, 80.0, 6.4]
    )  # [N, 3] metres
    ego = torch.zeros(3, 6)
    ego[:, 0] = ego[:, 5] = torch.tensor([0.0, 8.0, 16.0])  # vx and speed
    p0, scale = enc.initial_points(ego)
    lo, hi = cfg.adaptive_scale_range
    assert ((scale >= lo) & (scale <= hi)).all()
    assert (scale[0] - scale[2]).abs().max() > 1e-2  # speed changes the factors
    # range of the initial cloud = factor x base range, scaled about the ego origin (symmetric form)
    for i in range(3):
        torch.testing.assert_close(p0[i, :, 0], base * scale[i])
        extent = p0[i, :, 0].amax(0) - p0[i, :, 0].amin(0)
        torch.testing.assert_close(extent, (base.amax(0) - base.amin(0)) * scale[i])
    assert not torch.allclose(p0[0], p0[2])
    # gradient of the P_0 Chamfer term reaches the ego MLP (adaptive scaling is learned)
    p0.sum().backward()
    assert enc.adaptive_scaling.scale_head[-1].weight.grad.abs().sum() > 0


def test_spatial_mhsa_logits_match_explicit_formula():
    torch.manual_seed(3)
    d, h, n = 16, 4, 5
    attn = SpatialAwareMHSA(d, h, dropout=0.0).eval()
    with torch.no_grad():
        attn.tau_proj.weight.normal_(0, 0.3)  # tau depends on the query
    x = torch.randn(2, n, d, dtype=torch.float64)
    p = torch.randn(2, n, 3, dtype=torch.float64) * 5
    attn = attn.double()
    logits = attn.attention_logits(x, p).detach().numpy()
    W = {
        k: (getattr(attn, k).weight.detach().numpy(), getattr(attn, k).bias.detach().numpy())
        for k in ("q_proj", "k_proj", "v_proj", "out_proj", "tau_proj")
    }
    dh = d // h
    xn, pn = x.numpy(), p.numpy()
    out_np = np.zeros((2, n, d))
    for b in range(2):
        q = xn[b] @ W["q_proj"][0].T + W["q_proj"][1]
        k = xn[b] @ W["k_proj"][0].T + W["k_proj"][1]
        v = xn[b] @ W["v_proj"][0].T + W["v_proj"][1]
        tau = np.log1p(np.exp(xn[b] @ W["tau_proj"][0].T + W["tau_proj"][1]))  # softplus, [N, H]
        heads = []
        for hh in range(h):
            sl = slice(hh * dh, (hh + 1) * dh)
            expl = np.empty((n, n))
            for i in range(n):
                for j in range(n):
                    expl[i, j] = q[i, sl] @ k[j, sl] / math.sqrt(dh) - tau[i, hh] * np.linalg.norm(pn[b, i] - pn[b, j])
            np.testing.assert_allclose(logits[b, hh], expl, rtol=1e-10, atol=1e-10)
            a = np.exp(expl - expl.max(1, keepdims=True))
            a /= a.sum(1, keepdims=True)
            heads.append(a @ v[:, sl])
        out_np[b] = np.concatenate(heads, 1) @ W["out_proj"][0].T + W["out_proj"][1]
    np.testing.assert_allclose(attn(x, p).detach().numpy(), out_np, rtol=1e-9, atol=1e-9)
    assert (attn.tau(x) >= 0).all()


def test_spatial_mhsa_is_permutation_equivariant():
    torch.manual_seed(4)
    attn = SpatialAwareMHSA(32, 4, dropout=0.0).eval()
    x, p = torch.randn(1, 7, 32), torch.randn(1, 7, 3) * 10
    perm = torch.randperm(7)
    torch.testing.assert_close(attn(x[:, perm], p[:, perm]), attn(x, p)[:, perm], rtol=1e-5, atol=1e-5)


def test_padded_past_frame_has_no_influence(cfg):
    enc = SparseOccupancyEncoder(cfg).eval()
    inputs = random_inputs(cfg)
    inputs["frame_valid"] = torch.tensor([[True, False]])
    out1 = enc(**inputs)
    inputs["features"] = [f.clone() for f in inputs["features"]]
    for f in inputs["features"]:
        f[:, 1] = torch.randn_like(f[:, 1])
    out2 = enc(**inputs)
    torch.testing.assert_close(out1.queries, out2.queries)
    inputs["frame_valid"] = torch.tensor([[True, True]])
    assert not torch.allclose(enc(**inputs).queries, out2.queries)


def test_wrong_frame_count_is_a_clear_error(cfg):
    enc = SparseOccupancyEncoder(cfg)
    inputs = random_inputs(cfg)
    inputs["features"] = [f[:, :1] for f in inputs["features"]]
    with pytest.raises(ValueError, match="num_frames"):
        enc(**inputs)


def test_decode_occupancy_matches_numpy(cfg):
    g = torch.Generator().manual_seed(5)
    pts = torch.rand(30, 6, 3, generator=g) * torch.tensor([4.0, 4.0, 2.0]) + torch.tensor([-2.0, -2.0, 0.0])
    pts[0, 0] = torch.tensor([100.0, 0.0, 1.0])  # outside the range: dropped
    logits = torch.randn(30, 6, 17, generator=g) * 3
    thr = 0.6
    out_pts, out_cls, out_scores = decode_occupancy(pts, logits, cfg, thr)
    # independent: dict voxel -> best (score, class)
    P, L = pts.reshape(-1, 3).numpy(), logits.reshape(-1, 17).numpy()
    prob = 1 / (1 + np.exp(-L.astype(np.float64)))
    ijk, inside = points_to_index(P, cfg.point_cloud_range, cfg.voxel_size)
    best = {}
    for i in range(len(P)):
        s, c = prob[i].max(), prob[i].argmax()
        if s >= thr and inside[i]:
            key = tuple(ijk[i])
            if key not in best or s > best[key][0]:
                best[key] = (s, c)
    assert len(best) == len(out_pts) > 0
    got_ijk, _ = points_to_index(out_pts.numpy(), cfg.point_cloud_range, cfg.voxel_size)
    for (key_s, c), k, s in zip([best[tuple(k)] for k in got_ijk], out_cls.tolist(), out_scores.tolist()):
        assert k == c and s == pytest.approx(key_s, rel=1e-5)
    centres = np.asarray(cfg.point_cloud_range[:3]) + (got_ijk + 0.5) * cfg.voxel_size
    np.testing.assert_allclose(out_pts.numpy(), centres, atol=1e-5)
    assert len({tuple(k) for k in got_ijk}) == len(got_ijk)  # one point per voxel


def test_paper_preset_builds_on_meta_device():
    cfg = SparseOccVLAConfig.paper()
    with torch.device("meta"):
        enc = SparseOccupancyEncoder(cfg)
    assert enc.query_embed.weight.shape == (600, 1024)
    assert [layer.out_points for layer in enc.layers] == [2, 4, 16, 32, 56, 112]
    assert enc.layers[0].self_attn.num_heads == 32


def test_encoder_learns_a_fixed_scene(cfg):
    """Sanity: 60 AdamW steps on one fixed input bring the summed layer Chamfer (eq. 10) down by > 80 %."""
    enc = SparseOccupancyEncoder(cfg)
    inputs = random_inputs(cfg)
    g = torch.Generator().manual_seed(1)
    road = torch.rand(1500, 3, generator=g) * torch.tensor([60.0, 30.0, 0.0]) + torch.tensor([-30.0, -15.0, 0.2])
    car = torch.rand(300, 3, generator=g) * torch.tensor([4.0, 2.0, 1.6]) + torch.tensor([10.0, 3.0, 0.4])
    gt = torch.cat([road, car])[None]
    labels = torch.cat([torch.full((1500,), 11), torch.full((300,), 4)])[None]
    mask = torch.ones(1, 1800, dtype=torch.bool)
    opt = torch.optim.AdamW(enc.parameters(), lr=2e-3)
    history = []
    for _ in range(60):
        out = enc(**inputs)
        terms = occupancy_losses(out.layer_points, out.layer_logits, gt, labels, mask, cfg)
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
        history.append((terms["cd"].item(), terms["focal"].item()))
    assert history[-1][0] < 0.2 * history[0][0]
    assert history[-1][1] < history[0][1]
