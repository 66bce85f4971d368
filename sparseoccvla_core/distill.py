"""Feature-level distillation (paper sec. 3.1, eq. 3): align occupancy tokens with a frozen CLIP vision teacher.

While the encoder trains, a frozen CLIP vision encoder turns each *current-frame* image into a single-scale
patch feature map.  Every occupancy token's 3D point is projected into the current cameras and the teacher
map is read there bilinearly (mean over the views that see the point; tokens seen by no camera are left out).
Then ``L = 1 - cosine(Norm1(T_o), Norm2(T_hat))`` with independent LayerNorms, averaged over tokens.

Implementation choices where the paper is silent:

* The teacher takes each image resized to its native square input (``cfg.clip_image_size``, 336 for
  CLIP ViT-L/14-336), normalised with CLIP's mean/std; the patch grid covers the full image, so normalised
  image coordinates carry over to the patch map unchanged.  Features = the last hidden state's patch tokens.
* The tokens T_o have the LLM width (4096 in the paper) and CLIP-L has 1024: a linear projection
  ``token_proj`` maps the tokens to the teacher width before Norm1 (identity when the widths agree).
  It and the two LayerNorms belong to the distillation branch, which is not used at inference.
* ``cfg.clip_teacher_path`` = None builds a randomly initialised teacher from the ``clip_*`` fields (tiny
  preset): it exercises the mechanism only; the paper's benefit needs real CLIP weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

from .config import SparseOccVLAConfig
from .sampling import pixels_to_grid, project_points


class CLIPTeacher(nn.Module):
    """Frozen CLIP vision encoder returning a single-scale patch feature map.

    Args:
        cfg: ``clip_teacher_path`` (local Hugging Face folder of a CLIP vision or full CLIP model) or, when
            None, the ``clip_*`` shape fields for a random-init teacher; ``clip_pixel_mean/std``.

    Raises:
        FileNotFoundError: ``clip_teacher_path`` is given but does not exist.
    """

    def __init__(self, cfg: SparseOccVLAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.clip_teacher_path is not None:
            path = Path(cfg.clip_teacher_path).expanduser()
            if not path.exists():
                raise FileNotFoundError(
                    f"clip_teacher_path={cfg.clip_teacher_path!r} does not exist; give a local folder holding a "
                    "CLIP vision model (e.g. a downloaded openai/clip-vit-large-patch14-336) or set it to null for "
                    "a randomly initialised teacher of the clip_* shape"
                )
            self.model = CLIPVisionModel.from_pretrained(str(path), local_files_only=True)
        else:
            self.model = CLIPVisionModel(
                CLIPVisionConfig(
                    hidden_size=cfg.clip_hidden_size,
                    intermediate_size=cfg.clip_intermediate_size,
                    num_hidden_layers=cfg.clip_num_layers,
                    num_attention_heads=cfg.clip_num_heads,
                    image_size=cfg.clip_image_size,
                    patch_size=cfg.clip_patch_size,
                )
            )
        self.image_size = int(self.model.config.image_size)
        self.patch_size = int(self.model.config.patch_size)
        self.hidden_size = int(self.model.config.hidden_size)
        self.model.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> "CLIPTeacher":
        super().train(mode)
        self.model.eval()  # frozen teacher: never dropout / stat updates
        return self

    @torch.no_grad()
    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        """Patch feature map.

        Args:
            images01: [B*, 3, H, W] RGB in [0, 1] (any size; resized to the teacher's input).

        Returns:
            [B*, D_teacher, h, w] with h = w = image_size / patch_size.
        """
        side = (self.image_size, self.image_size)
        x = F.interpolate(images01.float(), size=side, mode="bilinear", align_corners=False)
        mean = x.new_tensor(self.cfg.clip_pixel_mean)[:, None, None]  # [3, 1, 1]
        std = x.new_tensor(self.cfg.clip_pixel_std)[:, None, None]
        x = (x - mean) / std
        x = x.to(next(self.model.parameters()).dtype)
        hidden = self.model(pixel_values=x).last_hidden_state  # [B*, 1 + h*w, D]
        side = self.image_size // self.patch_size
        patches = hidden[:, 1:]  # drop CLS: [B*, h*w, D]
        return patches.transpose(1, 2).reshape(hidden.shape[0], -1, side, side)  # [B*, D, h, w]


class DistillationLoss(nn.Module):
    """Eq. 3: ``mean_i (1 - cosine(Norm1(proj(t_i)), Norm2(t_hat_i)))`` over tokens seen by a camera.

    Args:
        token_dim: width D_t of the occupancy tokens T_o.
        cfg: teacher and geometry fields (see :class:`CLIPTeacher`, ``projection_min_depth``).
    """

    def __init__(self, token_dim: int, cfg: SparseOccVLAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.teacher = CLIPTeacher(cfg)
        d = self.teacher.hidden_size
        self.token_proj: nn.Module = nn.Identity() if token_dim == d else nn.Linear(token_dim, d)
        self.norm_student = nn.LayerNorm(d)  # Norm1
        self.norm_teacher = nn.LayerNorm(d)  # Norm2

    def sample_teacher(
        self,
        feature_map: torch.Tensor,
        points: torch.Tensor,
        intrinsics: torch.Tensor,
        cam2ego: torch.Tensor,
        image_size: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Read the teacher map at each point's projection, averaged over the views that see it.

        Args:
            feature_map: [B, V, D, h, w] teacher features of the current frame's views.
            points: [B, N, 3] current ego frame, m.
            intrinsics: [B, V, 3, 3] pixels of the (network-input) images.
            cam2ego: [B, V, 4, 4].
            image_size: (H, W) of those images.

        Returns:
            features [B, N, D] (zeros where unseen), seen [B, N] bool.
        """
        b, v, d, h, w = feature_map.shape
        n = points.shape[1]
        uv, _, valid = project_points(
            points.float(),
            intrinsics[:, None].float(),
            cam2ego[:, None].float(),
            None,
            image_size,
            self.cfg.projection_min_depth,
        )  # uv [B, 1, V, N, 2], valid [B, 1, V, N]
        uv, valid = uv[:, 0], valid[:, 0]  # [B, V, N, 2], [B, V, N]
        grid = pixels_to_grid(uv, image_size).reshape(b * v, n, 1, 2)  # [B*V, N, 1, 2]
        sampled = F.grid_sample(
            feature_map.reshape(b * v, d, h, w).float(),
            grid,
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )  # [B*V, D, N, 1]
        sampled = sampled.reshape(b, v, d, n).permute(0, 3, 1, 2)  # [B, N, V, D]
        weights = valid.permute(0, 2, 1).float()  # [B, N, V]
        count = weights.sum(-1)  # [B, N]
        feats = (sampled * weights[..., None]).sum(2) / count.clamp(min=1)[..., None]  # [B, N, D]
        return feats, count > 0

    def loss_from_features(self, tokens: torch.Tensor, teacher_feats: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """Eq. 3 on already-sampled teacher features.

        Args:
            tokens: [B, N, D_t].
            teacher_feats: [B, N, D_teacher].
            seen: [B, N] bool; unseen tokens are excluded.

        Returns:
            Scalar mean of (1 - cosine) over seen tokens (0, still attached to the graph, when none is seen).
        """
        student = self.norm_student(self.token_proj(tokens))
        teacher = self.norm_teacher(teacher_feats.to(student.dtype))
        per_token = 1.0 - F.cosine_similarity(student, teacher, dim=-1)  # [B, N]
        seen = seen.to(per_token.dtype)
        return (per_token * seen).sum() / seen.sum().clamp(min=1)

    def forward(
        self,
        tokens: torch.Tensor,
        points: torch.Tensor,
        images: torch.Tensor,
        intrinsics: torch.Tensor,
        cam2ego: torch.Tensor,
    ) -> torch.Tensor:
        """Distillation loss of eq. 3 (training only; never called by ``predict``).

        Args:
            tokens: [B, N, D_t] occupancy tokens T_o.
            points: [B, N, 3] their 3D points (current ego frame, m), e.g. the encoder's query centres.
            images: [B, V, 3, H, W] current-frame images in [0, 1].
            intrinsics: [B, V, 3, 3].
            cam2ego: [B, V, 4, 4].

        Returns:
            Scalar loss.
        """
        b, v = images.shape[:2]
        image_size = (int(images.shape[-2]), int(images.shape[-1]))
        fmap = self.teacher(images.flatten(0, 1))  # [B*V, D, h, w]
        fmap = fmap.reshape(b, v, *fmap.shape[1:])  # [B, V, D, h, w]
        feats, seen = self.sample_teacher(fmap, points.detach(), intrinsics, cam2ego, image_size)
        return self.loss_from_features(tokens, feats, seen)
