"""Image backbone + FPN: 4-scale features per view per frame (paper sec. 3.1 "lightweight image encoder", sec. 4.2).

The paper uses ResNet-50 on 256x704 images; OPUS / SparseWorld follow it with a 4-level FPN of 256 channels
(docs/reference_choices.md §2.7).  The ResNet is ``transformers``' ``ResNetBackbone`` built from the config, so
real pretrained weights load where a user has them (``cfg.backbone_weights``: a local Hugging Face folder
or a ``.safetensors`` file; never a hub download).  The FPN is the standard one (lateral 1x1 convs, top-down
nearest upsampling + addition, 3x3 output convs) and outputs strides 4, 8, 16, 32.

Usage::

    backbone = ImageBackbone(cfg)
    feats = backbone(normalize_images(images01, cfg))          # list of [B*, fpn_dim, H/s, W/s]
    feats = backbone.forward_multiview(images01)               # list of [B, F, V, fpn_dim, H/s, W/s]
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import ResNetBackbone, ResNetConfig

from .config import SparseOccVLAConfig

#: key prefixes of common checkpoints that wrap the ResNet (HF classification model, mmdet / OPUS detectors).
_WEIGHT_PREFIXES: tuple[str, ...] = ("resnet.", "backbone.", "img_backbone.", "model.")


def normalize_images(images01: torch.Tensor, cfg: SparseOccVLAConfig) -> torch.Tensor:
    """ImageNet-normalise RGB images in [0, 1].

    Args:
        images01: [..., 3, H, W] float RGB in [0, 1].
        cfg: provides ``pixel_mean`` / ``pixel_std``.

    Returns:
        Same shape, ``(x - mean) / std`` per channel.
    """
    if images01.shape[-3] != 3:
        raise ValueError(f"images must have 3 channels at dim -3, got shape {tuple(images01.shape)}")
    mean = images01.new_tensor(cfg.pixel_mean)[:, None, None]  # [3, 1, 1]
    std = images01.new_tensor(cfg.pixel_std)[:, None, None]
    return (images01 - mean) / std


def _resnet_config(cfg: SparseOccVLAConfig) -> ResNetConfig:
    return ResNetConfig(
        num_channels=3,
        embedding_size=cfg.backbone_embedding_size,
        hidden_sizes=list(cfg.backbone_hidden_sizes),
        depths=list(cfg.backbone_depths),
        layer_type=cfg.backbone_layer_type,
        hidden_act="relu",
        out_features=[f"stage{i + 1}" for i in range(len(cfg.backbone_depths))],
    )


def load_backbone_weights(resnet: ResNetBackbone, path: str) -> None:
    """Load local pretrained ResNet weights into ``resnet`` (safetensors only; no pickle, no hub).

    Args:
        resnet: the backbone built from the config.
        path: a ``.safetensors`` file or a folder holding ``model.safetensors`` (Hugging Face layout, e.g. a
            local copy of ``microsoft/resnet-50``).  Keys may carry a ``resnet.`` / ``backbone.`` /
            ``img_backbone.`` prefix.

    Raises:
        FileNotFoundError: the path (or the safetensors file inside the folder) does not exist.
        ValueError: the file does not hold every backbone tensor with the config's shapes.
    """
    from safetensors.torch import load_file

    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"backbone_weights={path!r} does not exist; give a local .safetensors file or Hugging Face folder "
            "with model.safetensors (e.g. a downloaded microsoft/resnet-50), or set backbone_weights: null to "
            "start from random weights"
        )
    if p.is_dir():
        files = sorted(p.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"backbone_weights folder {p} holds no *.safetensors file")
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(f)))
    else:
        state = load_file(str(p))
    own = resnet.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key
        for prefix in _WEIGHT_PREFIXES:
            if name.startswith(prefix) and name[len(prefix) :] in own:
                name = name[len(prefix) :]
                break
        if name in own:
            mapped[name] = value
    missing = sorted(set(own) - set(mapped))
    if missing:
        raise ValueError(
            f"backbone_weights {p} lacks {len(missing)} of {len(own)} backbone tensors (first: {missing[:3]}); "
            "it must be a transformers ResNet checkpoint matching backbone_layer_type/depths/hidden_sizes"
        )
    bad = [k for k, v in mapped.items() if v.shape != own[k].shape]
    if bad:
        raise ValueError(
            f"backbone_weights {p}: shape mismatch for {bad[:3]} (checkpoint {tuple(mapped[bad[0]].shape)} vs "
            f"config {tuple(own[bad[0]].shape)}); check backbone_hidden_sizes / backbone_layer_type"
        )
    resnet.load_state_dict(mapped, strict=True)


class FPN(nn.Module):
    """Feature pyramid: lateral 1x1 -> top-down nearest upsample + add -> 3x3 output conv, per level."""

    def __init__(self, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, kernel_size=1) for c in in_channels)
        self.output_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1) for _ in in_channels
        )
        for conv in [*self.lateral_convs, *self.output_convs]:
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """features: fine-to-coarse list of [B, C_i, H_i, W_i] -> list of [B, out_channels, H_i, W_i]."""
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features)]
        for i in range(len(laterals) - 1, 0, -1):  # top-down pathway, coarse to fine
            upsampled = F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + upsampled
        return [conv(x) for conv, x in zip(self.output_convs, laterals)]


class ImageBackbone(nn.Module):
    """ResNet (transformers) + FPN producing ``cfg.num_levels`` feature maps at strides 4, 8, 16, 32.

    Args:
        cfg: backbone_* fields, fpn_dim, num_levels, pixel_mean/std.

    Raises:
        FileNotFoundError / ValueError: ``cfg.backbone_weights`` given but missing or incompatible.
    """

    def __init__(self, cfg: SparseOccVLAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.resnet = ResNetBackbone(_resnet_config(cfg))
        if cfg.backbone_weights is not None:
            load_backbone_weights(self.resnet, cfg.backbone_weights)
        # The FPN reads the last num_levels stages (strides 4..32 for the 4-stage ResNet).
        self.level_offset = len(cfg.backbone_hidden_sizes) - cfg.num_levels
        self.fpn = FPN(list(cfg.backbone_hidden_sizes[self.level_offset :]), cfg.fpn_dim)

    @property
    def strides(self) -> tuple[int, ...]:
        """Stride of each output level relative to the input image."""
        return tuple(4 * 2 ** (self.level_offset + i) for i in range(self.cfg.num_levels))

    def train(self, mode: bool = True) -> "ImageBackbone":
        super().train(mode)
        if mode and self.cfg.backbone_norm_eval:
            # Frozen BN statistics for a pretrained ResNet at small per-GPU batches (OPUS norm_eval,
            # docs/reference_choices.md §2.7).
            for module in self.resnet.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Multi-scale features.

        Args:
            images: [B*, 3, H, W] ImageNet-normalised (see :func:`normalize_images`); H, W multiples of 32.

        Returns:
            list of ``cfg.num_levels`` tensors [B*, fpn_dim, H / s, W / s], s = 4, 8, 16, 32.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        stages = self.resnet(pixel_values=images).feature_maps
        return self.fpn(list(stages[self.level_offset :]))

    def forward_multiview(self, images01: torch.Tensor) -> list[torch.Tensor]:
        """Normalise and encode a batch of multi-frame multi-view images.

        Args:
            images01: [B, F, V, 3, H, W] RGB in [0, 1].

        Returns:
            list over levels of [B, F, V, fpn_dim, H / s, W / s] (the encoder's input layout).
        """
        b, f, v = images01.shape[:3]
        feats = self.forward(normalize_images(images01.flatten(0, 2), self.cfg))  # [B*F*V, C, h, w] each
        return [x.reshape(b, f, v, *x.shape[1:]) for x in feats]  # [B, F, V, C, h, w]
