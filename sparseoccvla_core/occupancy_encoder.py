"""Sparse Occupancy Encoder (paper sec. 3.1, fig. 2, appendix A eq. 9): images -> N sparse occupancy queries.

N learnable queries ``Q_0`` with 3D positions ``P_0`` pass through L encoding layers.  Each layer follows
SparseBEV / OPUS (OPUS order, docs/reference_choices.md §2.1):

1. position encoding of the query's current points (flattened, normalised to the point-cloud range),
2. adaptive multi-view / multi-frame / multi-scale sampling: learned 3D offsets around the query centre,
   scaled by the spread of its points, projected into every past frame through the ego poses
   (:mod:`sparseoccvla_core.sampling`), bilinear reads, level weights predicted from the query,
3. adaptive mixing (AdaMixer / SparseBEV): channel mixing then point mixing with weights generated from
   the query, per group; residual + LayerNorm,
4. spatial-aware MHSA (eq. 9): logit_ij = q_i.k_j / sqrt(d_head) - tau_{i,h} ||p_i - p_j||, tau from q_i;
   residual + LayerNorm,
5. FFN; residual + LayerNorm,
6. heads decode ``points_per_layer[l]`` points per query (offsets from the query centre) and their class
   logits; the next layer starts from these points, detached (OPUS; coarse-to-fine,
   docs/reference_choices.md §2.1).

``P_0`` comes from SparseWorld's adaptive scaling (appendix A; docs/reference_choices.md §2.5): an MLP of the ego
state gives a per-axis factor in ``cfg.adaptive_scale_range`` that stretches the initial query range.

:func:`decode_occupancy` turns the final points into one labelled point per occupied voxel
(docs/reference_choices.md §2.8, simplified).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .batch import EGO_STATE_DIM, CameraRig
from .config import SparseOccVLAConfig
from .sampling import (
    ego_to_camera_matrices,
    group_feature_volumes,
    sample_multiview_features,
    sample_points_current_frame,
)

#: prior probability of the class-logit bias at init (focal-loss practice; OPUS cls head,
#: docs/reference_choices.md §2.4).
CLS_PRIOR_PROB: float = 0.01
#: sampling-offset bias init range, in units of the query's point spread (OPUS U(-0.5, 0.5),
#: docs/reference_choices.md §2.2).
SAMPLING_OFFSET_INIT: float = 0.5
#: initial tau range per head, 1/m (OPUS bias U(0, 2), docs/reference_choices.md §2.4).
TAU_INIT_RANGE: tuple[float, float] = (0.05, 2.0)


def _range_tensors(cfg: SparseOccVLAConfig, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pc_min [3], pc_size [3]) of ``cfg.point_cloud_range`` in metres, on ``like``'s device and dtype.

    Built on the fly rather than stored as buffers, so meta-device construction and checkpoints hold no copies.
    """
    r = like.new_tensor(cfg.point_cloud_range)
    return r[:3], r[3:] - r[:3]


@dataclass
class EncoderOutput:
    """Output of :class:`SparseOccupancyEncoder`.

    Args:
        queries: [B, N, D] final query features Q_L.
        query_points: [B, N, 3] final query centres (mean of the last layer's points), current ego frame, m;
            detached - geometry is trained by the per-layer Chamfer terms only, as between layers
            (docs/reference_choices.md §2.1).
        layer_points: L + 1 tensors; [0] = P_0 [B, N, 1, 3], [l] = [B, N, points_per_layer[l-1], 3], m.
        layer_logits: L tensors [B, N, P_l, C], C = cfg.num_classes - 1 (free excluded), pre-sigmoid.
        scale: [B, 3] adaptive-scaling factors applied to the initial query range.
    """

    queries: torch.Tensor
    query_points: torch.Tensor
    layer_points: list[torch.Tensor]
    layer_logits: list[torch.Tensor]
    scale: torch.Tensor


class AdaptiveScaling(nn.Module):
    """SparseWorld adaptive scaling of the initial query range from the ego state (docs/reference_choices.md §2.5).

    ego state -> MLP -> tanh -> per-axis factor mapped affinely into ``cfg.adaptive_scale_range``.

    Form chosen here (documented deviation): SparseWorld multiplies *normalised* [0, 1] coordinates, whose 0
    is the range minimum, so a factor > 1 stretches the cloud only towards +x / +y / +z.  We scale the
    initial points in ego metres about the ego origin instead: the range grows symmetrically front/back and
    left/right (the extended supervision range of appendix A is symmetric too) and the ground (z = 0) stays
    where it is while the range grows upwards.
    """

    def __init__(self, cfg: SparseOccVLAConfig) -> None:
        super().__init__()
        d = cfg.query_dim
        self.lo, self.hi = (float(v) for v in cfg.adaptive_scale_range)
        # SparseWorld: plan_head 21->256->256->256 then points_scale_branch 256->64->32->3
        # (docs/reference_choices.md §2.5).
        self.ego_encoder = nn.Sequential(
            nn.Linear(EGO_STATE_DIM, d), nn.ReLU(inplace=True), nn.Linear(d, d), nn.ReLU(inplace=True)
        )
        self.scale_head = nn.Sequential(
            nn.Linear(d, max(d // 4, 3)), nn.ReLU(inplace=True), nn.Linear(max(d // 4, 3), 3)
        )
        # Start at factor 1 for a zero ego state when 1 is inside the range.
        unit = 2.0 * (1.0 - self.lo) / (self.hi - self.lo) - 1.0 if self.hi > self.lo else 0.0
        if -1.0 < unit < 1.0:
            nn.init.constant_(self.scale_head[-1].bias, math.atanh(unit))

    def forward(self, ego_state: torch.Tensor) -> torch.Tensor:
        """ego_state [B, EGO_STATE_DIM] -> per-axis factors [B, 3] in [lo, hi]."""
        t = torch.tanh(self.scale_head(self.ego_encoder(ego_state)))
        return self.lo + (t + 1.0) * 0.5 * (self.hi - self.lo)


class PointPositionEncoding(nn.Module):
    """PE of a query's P points (flattened normalised xyz) added to the query.

    OPUS step 1, docs/reference_choices.md §2.1.
    """

    def __init__(self, num_points: int, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(3 * num_points, dim),
            nn.LayerNorm(dim),
            nn.ReLU(inplace=True),
            nn.Linear(dim, dim),
            nn.LayerNorm(dim),
            nn.ReLU(inplace=True),
        )

    def forward(self, points_norm: torch.Tensor) -> torch.Tensor:
        """points_norm [B, N, P, 3] -> [B, N, D]."""
        return self.mlp(points_norm.flatten(2))  # [B, N, 3P] -> [B, N, D]


class AdaptiveMixing(nn.Module):
    """AdaMixer-style adaptive mixing (SparseBEV / OPUS step 3, docs/reference_choices.md §2.3).

    Per group, a channel-mixing matrix [c, c] and a point-mixing matrix [P_out, P_in] are generated from the
    query and applied in turn.

    Args:
        query_dim: D.
        channels: c = feature channels per group.
        in_points: P_in = frames x sampling points.
        out_points: P_out.
        num_groups: G.
    """

    def __init__(self, query_dim: int, channels: int, in_points: int, out_points: int, num_groups: int) -> None:
        super().__init__()
        self.c, self.p_in, self.p_out, self.g = channels, in_points, out_points, num_groups
        self.channel_params = channels * channels
        self.parameter_generator = nn.Linear(query_dim, num_groups * (self.channel_params + out_points * in_points))
        nn.init.zeros_(self.parameter_generator.weight)  # AdaMixer: start from the (static) bias mixing
        self.out_proj = nn.Linear(num_groups * out_points * channels, query_dim)

    def forward(self, sampled: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """sampled [B, N, G, P_in, c], query [B, N, D] -> mixed [B, N, D]."""
        b, n = query.shape[:2]
        params = self.parameter_generator(query).reshape(b, n, self.g, -1)  # [B, N, G, c*c + Po*Pi]
        channel_mix = params[..., : self.channel_params].reshape(b, n, self.g, self.c, self.c)
        point_mix = params[..., self.channel_params :].reshape(b, n, self.g, self.p_out, self.p_in)
        x = torch.matmul(sampled, channel_mix)  # [B, N, G, P_in, c]
        x = F.relu(F.layer_norm(x, x.shape[-2:]))
        x = torch.matmul(point_mix, x)  # [B, N, G, P_out, c]
        x = F.relu(F.layer_norm(x, x.shape[-2:]))
        return self.out_proj(x.reshape(b, n, -1))  # [B, N, G*P_out*c] -> [B, N, D]


class SpatialAwareMHSA(nn.Module):
    """Spatial-aware multi-head self-attention (paper eq. 9; OPUS scale-adaptive self-attention).

    Choices: docs/reference_choices.md §2.4.

    For head h: ``logit_ij = (W_q q_i) . (W_k q_j) / sqrt(d_head) - tau_{i,h} ||p_i - p_j||_2`` with
    ``tau_{i,h} = softplus(W_tau q_i)_h >= 0`` (1/m) and p the query centres in metres (full 3D, as OPUS).
    The paper writes q_i^T q_j; the per-head projections and 1/sqrt(d_head) are the standard MHSA form.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"query_dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim, self.dropout = num_heads, dim // num_heads, dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.tau_proj = nn.Linear(dim, num_heads)
        nn.init.zeros_(self.tau_proj.weight)
        with torch.no_grad():  # softplus(bias) ~ U(TAU_INIT_RANGE): OPUS starts tau in (0, 2)
            tau0 = torch.empty(num_heads).uniform_(*TAU_INIT_RANGE)
            self.tau_proj.bias.copy_(torch.log(torch.expm1(tau0)))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, N, d]

    def tau(self, query: torch.Tensor) -> torch.Tensor:
        """query [B, N, D] -> tau [B, H, N] (non-negative, 1/m)."""
        return F.softplus(self.tau_proj(query)).transpose(1, 2)  # [B, N, H] -> [B, H, N]

    def distance_bias(self, query: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """Additive logit bias -tau_{i,h} ||p_i - p_j|| as [B, H, N, N]."""
        dist = torch.cdist(centres, centres)  # [B, N, N], m
        return -self.tau(query)[..., None] * dist[:, None]  # [B, H, N, 1] * [B, 1, N, N]

    def attention_logits(self, query: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """Explicit eq. 9 logits [B, H, N, N] (what :meth:`forward` feeds the softmax)."""
        q, k = self._heads(self.q_proj(query)), self._heads(self.k_proj(query))
        return q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + self.distance_bias(query, centres)

    def forward(self, query: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """query [B, N, D], centres [B, N, 3] (m) -> attended values [B, N, D] (before the residual)."""
        q, k, v = (self._heads(p(query)) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=self.distance_bias(query, centres).to(q.dtype),
            dropout_p=self.dropout if self.training else 0.0,
        )  # [B, H, N, d]
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))  # [B, N, H*d]


class OccupancyEncoderLayer(nn.Module):
    """One encoding layer (OPUS order, docs/reference_choices.md §2.1) + its point/class decoding heads.

    Args:
        cfg: encoder fields.
        in_points: points per query entering the layer (1 for P_0, else points_per_layer[l-1]).
        out_points: points per query this layer decodes (points_per_layer[l]).
    """

    def __init__(self, cfg: SparseOccVLAConfig, in_points: int, out_points: int) -> None:
        super().__init__()
        d, g, s = cfg.query_dim, cfg.num_groups, cfg.num_sampling_points
        self.cfg = cfg
        self.num_groups, self.num_sampling, self.num_levels = g, s, cfg.num_levels
        self.out_points, self.num_classes = out_points, cfg.num_semantic_classes
        self.position_encoder = PointPositionEncoding(in_points, d)
        self.sampling_offset = nn.Linear(d, g * s * 3)
        nn.init.zeros_(self.sampling_offset.weight)
        nn.init.uniform_(self.sampling_offset.bias, -SAMPLING_OFFSET_INIT, SAMPLING_OFFSET_INIT)
        self.level_weights = nn.Linear(d, g * s * cfg.num_levels)
        self.mixing = AdaptiveMixing(d, cfg.fpn_dim // g, cfg.num_frames * s, cfg.mixing_out_points, g)
        self.norm_mixing = nn.LayerNorm(d)
        self.self_attn = SpatialAwareMHSA(d, cfg.num_heads, cfg.dropout)
        self.norm_attn = nn.LayerNorm(d)
        self.ffn = nn.Sequential(
            nn.Linear(d, cfg.ffn_dim), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout), nn.Linear(cfg.ffn_dim, d)
        )
        self.norm_ffn = nn.LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.cls_head = nn.Sequential(
            nn.Linear(d, d),
            nn.LayerNorm(d),
            nn.ReLU(inplace=True),
            nn.Linear(d, d),
            nn.LayerNorm(d),
            nn.ReLU(inplace=True),
            nn.Linear(d, self.num_classes * out_points),
        )
        nn.init.constant_(self.cls_head[-1].bias, -math.log((1.0 - CLS_PRIOR_PROB) / CLS_PRIOR_PROB))
        # cfg.point_class_features: class evidence under each decoded point (docs/experiments.md §10); the last layer
        # starts at zero so the logits start as the query head's alone
        self.point_cls = None
        if cfg.point_class_features > 0:
            hidden = cfg.point_class_features
            self.point_level_logits = nn.Parameter(torch.zeros(cfg.num_levels))
            # first layer split into a per-point part (image features) and a per-query part added by broadcasting
            # (no [B, N, P, C + D] concatenation)
            self.point_feat_proj = nn.Linear(cfg.fpn_dim, hidden)
            self.point_query_proj = nn.Linear(d, hidden, bias=False)
            self.point_cls = nn.Sequential(
                nn.LayerNorm(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, self.num_classes)
            )
            nn.init.zeros_(self.point_cls[-1].weight)
            nn.init.zeros_(self.point_cls[-1].bias)
        self.reg_head = nn.Sequential(
            nn.Linear(d, d),
            nn.ReLU(inplace=True),
            nn.Linear(d, d),
            nn.ReLU(inplace=True),
            nn.Linear(d, 3 * out_points),
        )

    def forward(
        self,
        query: torch.Tensor,
        points: torch.Tensor,
        volumes: Sequence[torch.Tensor],
        ego2cam: torch.Tensor,
        intrinsics: torch.Tensor,
        frame_valid: torch.Tensor,
        image_size: Sequence[int],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One layer.

        Args:
            query: [B, N, D].
            points: [B, N, P_in, 3] the query's current points, m (detached by the caller).
            volumes, ego2cam, intrinsics, frame_valid, image_size: see :func:`sample_multiview_features`.

        Returns:
            query [B, N, D], new points [B, N, P_out, 3] (m), class logits [B, N, P_out, C].
        """
        b, n = query.shape[:2]
        g, s = self.num_groups, self.num_sampling
        # 1. position encoding of the current points (normalised to the point-cloud range)
        pc_min, pc_size = _range_tensors(self.cfg, points)
        query = query + self.position_encoder((points - pc_min) / pc_size)
        # 2. adaptive sampling around the centre, offsets in units of the points' spread; the spread has a
        #    floor of one voxel so single-point queries (P_0) still sample a neighbourhood (OPUS uses 0).
        centre = points.mean(dim=2)  # [B, N, 3]
        spread = (
            points.std(dim=2, unbiased=False).clamp(min=self.cfg.voxel_size)
            if points.shape[2] > 1
            else torch.full_like(centre, self.cfg.voxel_size)
        )
        offsets = self.sampling_offset(query).reshape(b, n, g, s, 3)
        samples = centre[:, :, None, None] + offsets * spread[:, :, None, None]  # [B, N, G, S, 3]
        level_w = self.level_weights(query).reshape(b, n, g, s, self.num_levels).softmax(dim=-1)
        sampled = sample_multiview_features(
            volumes, samples, level_w, ego2cam, intrinsics, frame_valid, image_size, self.cfg.projection_min_depth
        )  # [B, N, G, F*S, C/G]
        # 3. adaptive mixing
        query = self.norm_mixing(query + self.dropout(self.mixing(sampled, query)))
        # 4. spatial-aware MHSA (eq. 9)
        query = self.norm_attn(query + self.dropout(self.self_attn(query, centre)))
        # 5. FFN
        query = self.norm_ffn(query + self.dropout(self.ffn(query)))
        # 6. decode this layer's points (offsets from the centre) and classes
        logits = self.cls_head(query).reshape(b, n, self.out_points, self.num_classes)
        offsets = self.reg_head(query).reshape(b, n, self.out_points, 3)
        new_points = centre[:, :, None] + self.cfg.point_offset_scale * offsets  # [B, N, P_out, 3]
        if self.point_cls is not None:
            logits = logits + self._point_logits(query, new_points.detach(), volumes, ego2cam, intrinsics, image_size)
        return query, new_points, logits

    def _point_logits(
        self,
        query: torch.Tensor,
        points: torch.Tensor,
        volumes: Sequence[torch.Tensor],
        ego2cam: torch.Tensor,
        intrinsics: torch.Tensor,
        image_size: Sequence[int],
    ) -> torch.Tensor:
        """Class logits from the image features under each point (current frame) and its query: [B, N, P, C].

        The points are detached: their positions are trained by the Chamfer terms only.
        """
        b, n, p, _ = points.shape
        feats = sample_points_current_frame(
            volumes,
            points.reshape(b, n * p, 3),
            self.point_level_logits.softmax(dim=0),
            ego2cam,
            intrinsics,
            image_size,
            self.cfg.projection_min_depth,
        ).reshape(b, n, p, -1)  # [B, N, P, C_fpn]
        hidden = self.point_feat_proj(feats.to(query.dtype)) + self.point_query_proj(query)[:, :, None]
        return self.point_cls(hidden)


class SparseOccupancyEncoder(nn.Module):
    """N learnable queries + positions refined by L layers into sparse occupancy (paper sec. 3.1).

    Args:
        cfg: num_queries, num_encoder_layers, points_per_layer, query_dim, num_heads, num_sampling_points,
            num_groups, mixing_out_points, ffn_dim, dropout, adaptive_scale_range, point_cloud_range, ...
    """

    def __init__(self, cfg: SparseOccVLAConfig) -> None:
        super().__init__()
        if cfg.fpn_dim % cfg.num_groups:
            raise ValueError(f"fpn_dim {cfg.fpn_dim} must be divisible by num_groups {cfg.num_groups}")
        self.cfg = cfg
        self.query_embed = nn.Embedding(cfg.num_queries, cfg.query_dim)  # Q_0, random init (paper)
        self.query_points = nn.Embedding(cfg.num_queries, 3)  # P_0 in normalised [0, 1] pc-range coordinates
        nn.init.uniform_(self.query_points.weight, 0.0, 1.0)
        self.adaptive_scaling = AdaptiveScaling(cfg)
        in_points = (1, *cfg.points_per_layer[:-1])
        self.layers = nn.ModuleList(
            OccupancyEncoderLayer(cfg, p_in, p_out) for p_in, p_out in zip(in_points, cfg.points_per_layer)
        )

    def initial_points(self, ego_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """P_0 with adaptive scaling.

        Args:
            ego_state: [B, EGO_STATE_DIM].

        Returns:
            points [B, N, 1, 3] in the current ego frame (m), scale [B, 3].
        """
        scale = self.adaptive_scaling(ego_state)  # [B, 3]
        pc_min, pc_size = _range_tensors(self.cfg, self.query_points.weight)
        base = pc_min + self.query_points.weight * pc_size  # [N, 3] metres
        points = base[None] * scale[:, None]  # [B, N, 3], scaled about the ego origin (see AdaptiveScaling)
        return points[:, :, None], scale

    def forward(
        self,
        features: Sequence[torch.Tensor],
        rig: CameraRig,
        ego2global: torch.Tensor,
        frame_valid: torch.Tensor,
        ego_state: torch.Tensor,
    ) -> EncoderOutput:
        """Encode multi-view multi-frame features into sparse occupancy queries.

        Args:
            features: per level [B, F, V, C, H_s, W_s] (``ImageBackbone.forward_multiview``).
            rig: the cameras of the input images (intrinsics [B, F, V, 3, 3], cam2ego [B, F, V, 4, 4], (H, W)).
            ego2global: [B, F, 4, 4] (index 0 = current frame).
            frame_valid: [B, F] bool.
            ego_state: [B, EGO_STATE_DIM].

        Returns:
            :class:`EncoderOutput`.
        """
        cfg = self.cfg
        if len(features) != cfg.num_levels:
            raise ValueError(f"expected {cfg.num_levels} feature levels, got {len(features)}")
        b, f, v = features[0].shape[:3]
        intrinsics, cam2ego, image_size = rig.intrinsics, rig.cam2ego, rig.image_hw
        if f != cfg.num_frames:
            raise ValueError(
                f"features hold {f} frames but the encoder was built for num_frames={cfg.num_frames}; pad missing "
                "past frames and mark them in frame_valid"
            )
        if intrinsics.shape[:3] != (b, f, v) or cam2ego.shape[:3] != (b, f, v) or ego2global.shape[:2] != (b, f):
            raise ValueError("intrinsics / cam2ego / ego2global do not match the features' [B, F, V]")
        dtype = features[0].dtype
        # Geometry and feature layout once per forward, shared by all layers.
        volumes = group_feature_volumes(features, cfg.num_groups)
        ego2cam = ego_to_camera_matrices(cam2ego, ego2global).float()  # [B, F, V, 4, 4], geometry stays fp32
        frame_valid = frame_valid.to(torch.bool)

        points0, scale = self.initial_points(ego_state.to(dtype))
        query = self.query_embed.weight[None].expand(b, -1, -1).to(dtype)  # [B, N, D]
        layer_points, layer_logits = [points0], []
        points = points0
        for layer in self.layers:
            # Points enter each layer detached: geometry is supervised per layer, not through later layers
            # (docs/reference_choices.md §2.1).
            query, points, logits = layer(query, points.detach(), volumes, ego2cam, intrinsics, frame_valid, image_size)
            layer_points.append(points)
            layer_logits.append(logits)
        return EncoderOutput(
            queries=query,
            query_points=points.detach().mean(dim=2),
            layer_points=layer_points,
            layer_logits=layer_logits,
            scale=scale,
        )


@torch.no_grad()
def decode_occupancy(
    points: torch.Tensor,
    logits: torch.Tensor,
    cfg: SparseOccVLAConfig,
    score_threshold: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Occupancy read-out: sparse points -> one labelled point per occupied voxel.

    OPUS / SparseWorld read-out, simplified (docs/reference_choices.md §2.8).

    Scores are sigmoid class probabilities; a point keeps its best class when that score reaches
    ``score_threshold``; points outside ``cfg.point_cloud_range`` are dropped; points are voxelised on the
    Occ3D grid (``cfg.voxel_size``) and each voxel keeps its best-scoring point, returned at the voxel centre.
    With ``cfg.occ_closing`` the occupied set is closed with a 3x3x3 dilation + erosion as OPUS pads its output
    (:func:`_close_voxels`).  Simplifications vs OPUS: no distance-to-centre filter, no per-voxel score averaging.

    Args:
        points: [N, P, 3] (or [..., 3]) ego-frame points, m.
        logits: [N, P, C] (or [..., C]) class logits, C = cfg.num_classes - 1.
        cfg: point_cloud_range, voxel_size.
        score_threshold: minimum sigmoid score of the best class.

    Returns:
        points [M, 3] voxel centres (m), classes [M] int64 (Occ3D ids), scores [M], sorted by voxel index.
    """
    pts = points.reshape(-1, 3).float()
    scores, classes = logits.reshape(-1, logits.shape[-1]).float().sigmoid().max(dim=-1)
    lo = pts.new_tensor(cfg.point_cloud_range[:3])
    shape = torch.tensor(cfg.grid_shape, device=pts.device)
    ijk = torch.floor((pts - lo) / cfg.voxel_size).long()  # [M0, 3]
    keep = (scores >= score_threshold) & ((ijk >= 0) & (ijk < shape)).all(dim=-1)
    ijk, scores, classes = ijk[keep], scores[keep], classes[keep]
    key = (ijk[:, 0] * shape[1] + ijk[:, 1]) * shape[2] + ijk[:, 2]  # linear voxel index
    # Best score first, then a stable sort by voxel: the first entry of each voxel run is its best point.
    by_score = torch.argsort(scores, descending=True, stable=True)
    order = by_score[torch.argsort(key[by_score], stable=True)]
    key, ijk, scores, classes = key[order], ijk[order], scores[order], classes[order]
    first = torch.ones_like(key, dtype=torch.bool)
    first[1:] = key[1:] != key[:-1]
    ijk, classes, scores = ijk[first], classes[first], scores[first]
    if cfg.occ_closing:
        ijk, classes, scores = _close_voxels(ijk, classes, scores, tuple(cfg.grid_shape))
    centres = lo + (ijk.float() + 0.5) * cfg.voxel_size
    return centres, classes, scores


def _box3_columns(bits: torch.Tensor, nz: int, outside: int, op: str) -> torch.Tensor:
    """3x3x3 box dilation (``op`` "or") or erosion ("and") of a grid stored as one bit mask per (x, y) column.

    ``bits`` [X, Y] int64 holds voxel (i, j, k) as bit k; ``outside`` (0 or 1) is the value beyond the grid.  A box
    filter is separable: along z it is a shift of the bit mask, along x and y a combine of the 3 x 3 shifted columns
    - 11 element-wise operations on [X, Y] instead of a filter over X x Y x Z voxels.
    """
    full = (1 << nz) - 1
    combine = torch.bitwise_or if op == "or" else torch.bitwise_and
    fill_lo, fill_hi = (1, 1 << (nz - 1)) if outside else (0, 0)  # what shifts in at the bottom / top layer
    up = torch.bitwise_or(torch.bitwise_left_shift(bits, 1), fill_lo) & full
    down = torch.bitwise_or(torch.bitwise_right_shift(bits, 1), fill_hi)
    bits = combine(combine(bits, up), down)
    pad = F.pad(bits, (1, 1, 1, 1), value=full if outside else 0)
    x, y = bits.shape
    out = bits
    for di in range(3):
        for dj in range(3):
            if di != 1 or dj != 1:
                out = combine(out, pad[di : di + x, dj : dj + y])
    return out


#: the 27 offsets of a voxel's 3x3x3 neighbourhood (itself included).
_NEIGHBOURS = torch.stack(torch.meshgrid(*(torch.arange(-1, 2),) * 3, indexing="ij"), dim=-1).reshape(-1, 3)


def _close_voxels(
    ijk: torch.Tensor, classes: torch.Tensor, scores: torch.Tensor, shape: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OPUS's read-out padding: a 3x3x3 closing (dilation then erosion) of the occupied voxels.

    A free voxel that the closing fills takes the class and score of the best-scoring decoded voxel among its 26
    neighbours (OPUS closes each class's score grid; one score grid gives the same filled set for the best class at
    1/C of the cost).  Decoded voxels are kept as they are.  Outside the grid counts as free for the dilation and
    as occupied for the erosion (a max filter that ignores what lies beyond the grid).  The grid is held as one bit
    mask per (x, y) column (:func:`_box3_columns`).  Output sorted by voxel index.
    """
    if len(ijk) == 0:
        return ijk, classes, scores
    x, y, z = shape
    if z > 62:
        raise ValueError(f"occ_closing packs a column's {z} voxels into one int64: at most 62 layers")
    bits = torch.zeros(x * y, dtype=torch.int64, device=ijk.device)
    # voxels are unique, so summing their distinct bits is OR-ing them
    bits.index_put_(
        (ijk[:, 0] * y + ijk[:, 1],), torch.bitwise_left_shift(torch.ones_like(ijk[:, 2]), ijk[:, 2]), accumulate=True
    )
    bits = bits.reshape(x, y)
    closed = _box3_columns(_box3_columns(bits, z, 0, "or"), z, 1, "and")  # erosion of the dilation
    new = closed & ~bits
    fill_ijk = torch.cat(
        [
            torch.nn.functional.pad(((torch.bitwise_right_shift(new, k) & 1) > 0).nonzero(), (0, 1), value=k)
            for k in range(z)
        ]
    )  # [M_f, 3]
    if len(fill_ijk):
        # best decoded neighbour of each filled voxel: flat indices into a grid padded by one free voxel per side, so
        # the 27 neighbours are the voxel's index plus 27 constant strides (one add and one gather)
        py, pz = y + 2, z + 2
        strides = torch.tensor([py * pz, pz, 1], device=ijk.device)
        score_grid = torch.zeros((x + 2) * py * pz, device=ijk.device)
        class_grid = torch.zeros((x + 2) * py * pz, dtype=classes.dtype, device=ijk.device)
        decoded = ((ijk + 1) * strides).sum(dim=1)
        score_grid[decoded] = scores.float()
        class_grid[decoded] = classes
        offsets = (_NEIGHBOURS.to(ijk.device) * strides).sum(dim=1)  # [27]
        nb = ((fill_ijk + 1) * strides).sum(dim=1)[:, None] + offsets[None]  # [M_f, 27]
        best_score, best = score_grid[nb].max(dim=1)
        fill_cls = class_grid[nb.gather(1, best[:, None]).squeeze(1)]
        ijk = torch.cat([ijk, fill_ijk])
        classes = torch.cat([classes, fill_cls])
        scores = torch.cat([scores, best_score.to(scores.dtype)])
    order = torch.argsort((ijk[:, 0] * y + ijk[:, 1]) * z + ijk[:, 2])
    return ijk[order], classes[order], scores[order]
