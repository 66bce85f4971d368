"""Feature-level distillation (paper eq. 3): LayerNorm invariance, sampling, unseen tokens, frozen teacher."""

import numpy as np
import pytest
import torch
from perception_helpers import ring_rig

from sparseoccvla_core.config import SparseOccVLAConfig
from sparseoccvla_core.distill import CLIPTeacher, DistillationLoss


@pytest.fixture(scope="module")
def cfg():
    return SparseOccVLAConfig.tiny()


@pytest.fixture(scope="module")
def distill(cfg):
    return DistillationLoss(cfg.llm_hidden_size, cfg)


def test_invariant_to_per_token_affine_rescaling_of_teacher(distill, cfg):
    g = torch.Generator().manual_seed(0)
    b, n, d = 2, 10, distill.teacher.hidden_size
    tokens = torch.randn(b, n, cfg.llm_hidden_size, generator=g)
    feats = torch.randn(b, n, d, generator=g) * 3 + 1
    seen = torch.rand(b, n, generator=g) > 0.3
    a = torch.rand(b, n, 1, generator=g) * 5 + 0.1  # a_i > 0
    shift = torch.randn(b, n, 1, generator=g) * 10
    base = distill.loss_from_features(tokens, feats, seen)
    torch.testing.assert_close(distill.loss_from_features(tokens, a * feats + shift, seen), base, rtol=1e-5, atol=1e-5)
    # and it is the mean over seen tokens of 1 - cosine of the two LayerNormed vectors (eq. 3), by hand
    s = distill.token_proj(tokens)
    s = (s - s.mean(-1, keepdim=True)) / torch.sqrt(s.var(-1, unbiased=False, keepdim=True) + 1e-5)
    t = (feats - feats.mean(-1, keepdim=True)) / torch.sqrt(feats.var(-1, unbiased=False, keepdim=True) + 1e-5)
    cos = (s * t).sum(-1) / (s.norm(dim=-1) * t.norm(dim=-1))
    torch.testing.assert_close(base, (1 - cos)[seen].mean(), rtol=1e-5, atol=1e-6)
    # not a trivial constant: a different teacher direction changes it
    assert not torch.allclose(distill.loss_from_features(tokens, torch.randn(b, n, d, generator=g), seen), base)


def test_teacher_sampled_at_projected_pixel_mean_over_views(distill):
    """Pattern map: ch0 = u, ch1 = v (image pixels of the patch centre); overlapping views are averaged."""
    h, w = 64, 160
    side, d = 8, distill.teacher.hidden_size
    K, c2e, _ = ring_rig(1, 1, 2, (h, w), focal=40.0)
    K, c2e = K[:, 0], c2e[:, 0]
    # two cameras: view 0 looks along +x, view 1 yawed by 20 degrees (overlapping)
    yaw = np.deg2rad(20.0)
    R = torch.tensor([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]], dtype=torch.float32)
    c2e[0, 1, :3, :3] = R @ c2e[0, 0, :3, :3]
    fmap = torch.zeros(1, 2, d, side, side)
    u_c = (torch.arange(side) + 0.5) * w / side - 0.5  # patch centres in image pixels
    v_c = (torch.arange(side) + 0.5) * h / side - 0.5
    fmap[:, :, 0] = u_c[None, :]
    fmap[:, :, 1] = v_c[:, None]
    pts = torch.tensor([[[12.0, 1.0, 1.5], [10.0, -2.0, 1.0], [0.0, 0.0, 40.0]]])  # last: above every camera
    feats, seen = distill.sample_teacher(fmap, pts, K, c2e, (h, w))
    for i in range(3):
        p = np.append(pts[0, i].numpy(), 1.0)
        vals = []
        for v in range(2):
            cam = (np.linalg.inv(c2e[0, v].numpy()) @ p)[:3]
            uv = (K[0, v].numpy() @ cam)[:2] / cam[2]
            margin_u, margin_v = w / side / 2, h / side / 2
            if cam[2] > 0 and margin_u <= uv[0] <= w - 1 - margin_u and margin_v <= uv[1] <= h - 1 - margin_v:
                vals.append(uv)
        assert bool(seen[0, i]) == bool(vals)
        if vals:
            np.testing.assert_allclose(feats[0, i, :2].numpy(), np.mean(vals, 0), atol=1e-4)
    assert seen[0, 0] and not seen[0, 2]


def test_unseen_tokens_are_excluded_and_teacher_is_frozen(distill, cfg):
    g = torch.Generator().manual_seed(1)
    h, w = cfg.image_size
    K, c2e, _ = ring_rig(1, 1, 6, (h, w))
    images = torch.rand(1, 6, 3, h, w, generator=g)
    seen_pts = torch.tensor([[[10.0, 0.5, 1.0], [-8.0, 3.0, 1.2], [3.0, 9.0, 0.5]]])
    tokens = torch.randn(1, 3, cfg.llm_hidden_size, generator=g, requires_grad=True)
    base = distill(tokens, seen_pts, images, K[:, 0], c2e[:, 0])
    # add a token above every camera with an arbitrary feature: the loss must not change
    pts2 = torch.cat([seen_pts, torch.tensor([[[0.0, 0.0, 50.0]]])], 1)
    tokens2 = torch.cat([tokens, torch.randn(1, 1, cfg.llm_hidden_size, generator=g)], 1)
    torch.testing.assert_close(distill(tokens2, pts2, images, K[:, 0], c2e[:, 0]), base)
    assert 0.0 < base.item() < 2.0
    base.backward()
    assert tokens.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in distill.teacher.parameters())
    assert all(p.requires_grad for p in distill.norm_student.parameters())
    distill.train()
    assert not distill.teacher.model.training
    # nothing seen -> 0 (still differentiable)
    zero = distill(tokens, torch.tensor([[[0.0, 0.0, 50.0]] * 3]), images, K[:, 0], c2e[:, 0])
    assert zero.item() == 0.0 and zero.requires_grad


def test_teacher_output_shape_and_missing_path(cfg, tmp_path):
    teacher = CLIPTeacher(cfg)
    out = teacher(torch.rand(2, 3, 64, 160))
    side = cfg.clip_image_size // cfg.clip_patch_size
    assert out.shape == (2, cfg.clip_hidden_size, side, side)
    bad = SparseOccVLAConfig.tiny(clip_teacher_path=str(tmp_path / "no_clip_here"))
    with pytest.raises(FileNotFoundError, match="clip_teacher_path"):
        CLIPTeacher(bad)


def test_local_teacher_checkpoint_loads(cfg, tmp_path):
    teacher = CLIPTeacher(cfg)
    teacher.model.save_pretrained(tmp_path / "clip")
    loaded = CLIPTeacher(SparseOccVLAConfig.tiny(clip_teacher_path=str(tmp_path / "clip")))
    x = torch.rand(1, 3, 64, 160)
    torch.testing.assert_close(loaded(x), teacher(x))


def test_teacher_from_full_clip_checkpoint_equals_its_vision_tower(cfg, tmp_path):
    """A local full CLIP folder (text + vision, as openai/clip-vit-large-patch14-336 ships) loads; the patch map
    is the vision tower's last hidden state on the resized, CLIP-normalised image."""
    from transformers import CLIPConfig, CLIPModel

    clip = CLIPModel(
        CLIPConfig(
            text_config=dict(
                hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99
            ),
            vision_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=64,
                patch_size=8,
            ),
            projection_dim=16,
        )
    ).eval()
    clip.save_pretrained(tmp_path / "clip_full")
    teacher = CLIPTeacher(SparseOccVLAConfig.tiny(clip_teacher_path=str(tmp_path / "clip_full")))
    x = torch.rand(2, 3, 64, 160)
    resized = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    mean, std = torch.tensor(cfg.clip_pixel_mean)[:, None, None], torch.tensor(cfg.clip_pixel_std)[:, None, None]
    normed = (resized - mean) / std
    with torch.no_grad():
        ref = clip.vision_model(pixel_values=normed).last_hidden_state[:, 1:]  # [2, 64, 32]
    got = teacher(x)  # [2, 32, 8, 8]
    torch.testing.assert_close(got.flatten(2).transpose(1, 2), ref)
