"""Image backbone + FPN (part 1): transformers ResNet, 4 levels at strides 4..32, local weights only."""

import pytest
import torch
from safetensors.torch import save_file

from sparseoccvla_core.backbone import ImageBackbone, normalize_images
from sparseoccvla_core.config import SparseOccVLAConfig


@pytest.fixture(scope="module")
def cfg():
    return SparseOccVLAConfig.tiny()


def test_levels_shapes_and_strides(cfg):
    bb = ImageBackbone(cfg).eval()
    h, w = cfg.image_size
    x = torch.randn(3, 3, h, w)
    feats = bb(x)
    assert len(feats) == cfg.num_levels == 4
    assert bb.strides == (4, 8, 16, 32)
    for f, s in zip(feats, (4, 8, 16, 32)):
        assert f.shape == (3, cfg.fpn_dim, h // s, w // s)
        assert torch.isfinite(f).all()
    # multiview helper: [B, F, V, 3, H, W] in [0, 1] -> per level [B, F, V, C, h, w], same numbers as flat
    imgs = torch.rand(1, 2, 3, 3, h, w)
    mv = bb.forward_multiview(imgs)
    flat = bb(normalize_images(imgs.flatten(0, 2), cfg))
    for a, b in zip(mv, flat):
        assert a.shape[:3] == (1, 2, 3)
        torch.testing.assert_close(a.flatten(0, 2), b)


def test_fpn_top_down_pathway_reaches_fine_levels(cfg):
    """The finest output depends on the coarsest stage (top-down pathway exists)."""
    bb = ImageBackbone(cfg).eval()
    x = torch.randn(1, 3, *cfg.image_size)
    with torch.no_grad():
        before = bb(x)
        bb.fpn.lateral_convs[-1].weight.mul_(2.0)  # change only the coarsest lateral
        after = bb(x)
    assert not torch.allclose(before[0], after[0])  # reaches stride 4 through the top-down path
    torch.testing.assert_close(before[0].shape, after[0].shape)


def test_normalize_images(cfg):
    x = torch.rand(2, 3, 4, 5)
    y = normalize_images(x, cfg)
    for c in range(3):
        torch.testing.assert_close(y[:, c], (x[:, c] - cfg.pixel_mean[c]) / cfg.pixel_std[c])
    with pytest.raises(ValueError, match="3 channels"):
        normalize_images(torch.rand(2, 4, 4, 5), cfg)


def test_missing_weights_path_is_a_clear_error(tmp_path):
    cfg = SparseOccVLAConfig.tiny(backbone_weights=str(tmp_path / "resnet_missing.safetensors"))
    with pytest.raises(FileNotFoundError, match="backbone_weights"):
        ImageBackbone(cfg)


def test_local_weights_load_with_prefix_and_mismatch_is_rejected(cfg, tmp_path):
    src = ImageBackbone(cfg).eval()
    # a Hugging Face classification checkpoint stores the ResNet under "resnet."
    state = {k: v.contiguous() for k, v in src.resnet.state_dict().items()}
    save_file({f"resnet.{k}": v for k, v in state.items()}, str(tmp_path / "r.safetensors"))
    loaded = ImageBackbone(SparseOccVLAConfig.tiny(backbone_weights=str(tmp_path / "r.safetensors"))).eval()
    for k, v in src.resnet.state_dict().items():
        torch.testing.assert_close(loaded.resnet.state_dict()[k], v)
    # a folder holding model.safetensors works too
    (tmp_path / "folder").mkdir()
    save_file(state, str(tmp_path / "folder" / "model.safetensors"))
    ImageBackbone(SparseOccVLAConfig.tiny(backbone_weights=str(tmp_path / "folder")))
    wider = SparseOccVLAConfig.tiny(
        backbone_hidden_sizes=(16, 32, 64, 256), backbone_weights=str(tmp_path / "r.safetensors")
    )
    with pytest.raises(ValueError, match="shape mismatch"):
        ImageBackbone(wider)


def test_norm_eval_keeps_batchnorm_frozen():
    cfg = SparseOccVLAConfig.tiny(backbone_norm_eval=True)
    bb = ImageBackbone(cfg).train()
    bns = [m for m in bb.resnet.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    before = bns[0].running_mean.clone()
    bb(torch.randn(2, 3, *cfg.image_size) * 3 + 1)
    torch.testing.assert_close(bns[0].running_mean, before)
    assert bb.fpn.training


def test_hf_classification_folder_loads_and_matches_its_stages(cfg, tmp_path):
    """A local Hugging Face ResNetForImageClassification folder (the layout of microsoft/resnet-50) loads; the
    backbone's stage outputs equal that model's hidden states."""
    from transformers import ResNetConfig, ResNetForImageClassification

    hf = ResNetForImageClassification(
        ResNetConfig(
            embedding_size=cfg.backbone_embedding_size,
            hidden_sizes=list(cfg.backbone_hidden_sizes),
            depths=list(cfg.backbone_depths),
            layer_type=cfg.backbone_layer_type,
            num_labels=5,
        )
    ).eval()
    hf.save_pretrained(tmp_path / "resnet_hf")
    bb = ImageBackbone(SparseOccVLAConfig.tiny(backbone_weights=str(tmp_path / "resnet_hf"))).eval()
    x = torch.randn(1, 3, *cfg.image_size)
    with torch.no_grad():
        ref = hf.resnet(x, output_hidden_states=True).hidden_states[1:]  # stages 1..4
        got = bb.resnet(pixel_values=x).feature_maps
    assert len(got) == len(ref) == 4
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)
