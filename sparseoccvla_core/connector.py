"""Connector between the sparse occupancy encoder and the LLM (paper sec. 3.1 eq. 2, sec. 3.2 eq. 4, appendix A).

Three small modules turn the encoder's output into the LLM's scene prefix ``[T_o, T_g, T_ego]``:

* :class:`OccupancyConnector` - eq. 2, ``T_o = MLP(Q_L + PE(P_L))``: occupancy queries plus a positional encoding
  of their 3D centres, mapped into the LLM's embedding space (the occupancy tokens).
* :class:`GlobalSceneQueries` - eq. 4, ``T_g = CrossAttn(T_g, T_o, T_o)``: a few learnable global scene tokens
  that read all occupancy tokens.
* :class:`EgoStateEncoder` - the ego state (velocity, acceleration, yaw rate, speed) and the driving command
  encoded into one token, as OmniDrive does (paper appendix A; docs/reference_choices.md §4.2: CAN bus + command
  -> MLP -> one extra LLM token).  The forecaster (eq. 7 "+ Ego") and the planner reuse the class at width D.

The positional encoding is the sine/cosine embedding of the point normalised to the point-cloud range followed by
an MLP, the 3D form used by the SparseBEV/OPUS family (docs/reference_choices.md §4.1); the paper only says "PE".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .batch import EGO_STATE_DIM
from .config import SparseOccVLAConfig

#: Wavelength base of the sine embeddings (the Transformer / DETR convention).
SINE_TEMPERATURE: float = 10000.0


def sine_embedding(values: torch.Tensor, num_feats: int, temperature: float = SINE_TEMPERATURE) -> torch.Tensor:
    """Sine/cosine embedding of each scalar of the last axis.

    Args:
        values: [..., A] scalars, expected roughly in [0, 1] (they are multiplied by 2*pi).
        num_feats: features per scalar (even).
        temperature: wavelength base.
    Returns:
        [..., A * num_feats]: for each scalar, ``num_feats / 2`` sines followed by as many cosines.
    """
    if num_feats % 2:
        raise ValueError(f"num_feats must be even, got {num_feats}")
    half = num_feats // 2
    exponent = torch.arange(half, device=values.device, dtype=torch.float32) / half
    freqs = temperature ** (-exponent)  # [half], from 1 down to ~1/temperature
    angles = values.float().unsqueeze(-1) * (2.0 * math.pi) * freqs  # [..., A, half]
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1)  # [..., A, num_feats]
    emb = emb.flatten(-2)  # [..., A * num_feats]
    return emb.to(values.dtype) if values.is_floating_point() else emb


def normalize_points(points: torch.Tensor, point_cloud_range: tuple[float, ...]) -> torch.Tensor:
    """Ego-frame metres -> [0, 1] inside the point-cloud range (points outside map outside [0, 1]).

    Args:
        points: [..., 3] x, y, z in metres.
        point_cloud_range: (x_min, y_min, z_min, x_max, y_max, z_max).
    Returns:
        [..., 3] normalised coordinates.
    """
    lo = points.new_tensor(point_cloud_range[:3])
    hi = points.new_tensor(point_cloud_range[3:])
    return (points - lo) / (hi - lo)


class PointPositionalEncoding(nn.Module):
    """PE(P) of eq. 2: sine embedding of the normalised (x, y, z) -> 2-layer MLP -> ``out_dim``.

    Args:
        cfg: model config (point-cloud range).
        out_dim: output width.
        num_coords: coordinates per point (3 for x, y, z; the forecaster's 4D embedding passes 4 for x, y, z, t).
    """

    def __init__(self, cfg: SparseOccVLAConfig, out_dim: int, num_coords: int = 3) -> None:
        super().__init__()
        # Split the width over the coordinates; an even number of sine features per coordinate.
        self.feats_per_coord = 2 * max(1, out_dim // (2 * num_coords))
        self.num_coords = num_coords
        self.point_cloud_range = tuple(cfg.point_cloud_range)
        self.mlp = nn.Sequential(
            nn.Linear(self.feats_per_coord * num_coords, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim)
        )

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """Encode already-normalised coordinates.

        Args:
            coords: [..., num_coords] values roughly in [0, 1] (see :func:`normalize_points`).
        Returns:
            [..., out_dim].
        """
        return self.mlp(sine_embedding(coords, self.feats_per_coord))

    def encode_points(self, points: torch.Tensor) -> torch.Tensor:
        """Encode ego-frame points in metres: [..., 3] -> [..., out_dim]."""
        return self(normalize_points(points, self.point_cloud_range))


class OccupancyConnector(nn.Module):
    """Eq. 2: ``T_o = MLP(Q_L + PE(P_L))`` - occupancy queries to occupancy tokens in the LLM embedding space.

    Args:
        cfg: model config (query_dim D, llm_hidden_size H).
    """

    def __init__(self, cfg: SparseOccVLAConfig) -> None:
        super().__init__()
        self.position_encoding = PointPositionalEncoding(cfg, cfg.query_dim)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.query_dim, cfg.llm_hidden_size),
            nn.GELU(),
            nn.Linear(cfg.llm_hidden_size, cfg.llm_hidden_size),
        )

    def forward(self, queries: torch.Tensor, query_points: torch.Tensor) -> torch.Tensor:
        """
        Args:
            queries: [B, N, D] final encoder queries Q_L.
            query_points: [B, N, 3] their centres P_L, ego metres.
        Returns:
            [B, N, H] occupancy tokens T_o.
        """
        return self.mlp(queries + self.position_encoding.encode_points(query_points))


class GlobalSceneQueries(nn.Module):
    """Eq. 4: G learnable global scene tokens cross-attend to the occupancy tokens.

    ``T_g = T_g + CrossAttn(LN(T_g), LN(T_o), LN(T_o))`` - eq. 4 in pre-norm residual form; no FFN, the LLM that
    follows does the processing.

    Args:
        cfg: model config (num_global_queries G, llm_hidden_size H, llm_num_heads).
    """

    def __init__(self, cfg: SparseOccVLAConfig) -> None:
        super().__init__()
        width = cfg.llm_hidden_size
        self.queries = nn.Parameter(torch.randn(cfg.num_global_queries, width) * width**-0.5)
        self.norm_query = nn.LayerNorm(width)
        self.norm_memory = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, cfg.llm_num_heads, batch_first=True)

    def forward(self, occupancy_tokens: torch.Tensor) -> torch.Tensor:
        """
        Args:
            occupancy_tokens: [B, N, H] T_o.
        Returns:
            [B, G, H] global scene tokens T_g.
        """
        batch = occupancy_tokens.shape[0]
        query = self.queries.unsqueeze(0).expand(batch, -1, -1)  # [B, G, H]
        memory = self.norm_memory(occupancy_tokens)
        attended, _ = self.cross_attn(self.norm_query(query), memory, memory, need_weights=False)
        return query + attended


class EgoStateEncoder(nn.Module):
    """Ego state + driving command -> one token (OmniDrive's CAN-bus token, docs/reference_choices.md §4.2).

    Input features: the :data:`~sparseoccvla_core.batch.EGO_STATE_FIELDS` vector (SI units) concatenated with the
    one-hot command.  The state goes through ``sign(x) * log(1 + |x|)`` first: speeds (~10 m/s) and yaw rates
    (~0.1 rad/s) come onto comparable ranges while magnitudes stay distinguishable (a LayerNorm over this
    heterogeneous vector would make it scale-invariant and erase the speed).

    Args:
        cfg: model config (num_commands).
        out_dim: token width (llm_hidden_size for the LLM token, query_dim for forecaster/planner).
    """

    def __init__(self, cfg: SparseOccVLAConfig, out_dim: int) -> None:
        super().__init__()
        self.num_commands = cfg.num_commands
        in_dim = EGO_STATE_DIM + cfg.num_commands
        self.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, ego_state: torch.Tensor, command: torch.Tensor) -> torch.Tensor:
        """
        Args:
            ego_state: [B, EGO_STATE_DIM] float.
            command: [B] int64 in [0, num_commands).
        Returns:
            [B, 1, out_dim] the ego token.
        """
        if ego_state.shape[-1] != EGO_STATE_DIM:
            raise ValueError(f"ego_state must have {EGO_STATE_DIM} features, got {tuple(ego_state.shape)}")
        onehot = F.one_hot(command.long(), self.num_commands).to(ego_state.dtype)
        compressed = torch.sign(ego_state) * torch.log1p(ego_state.abs())
        features = torch.cat([compressed, onehot], dim=-1)  # [B, EGO_STATE_DIM + num_commands]
        return self.mlp(features).unsqueeze(1)  # [B, 1, out_dim]
