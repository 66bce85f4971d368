"""Occupancy forecaster (paper sec. 3.2 "Forecasting", eq. 6, eq. 7; loss eq. 11 in appendix A).

1. Eq. 6, residual fusion: the occupancy tokens after the LLM, ``T'_o`` (last hidden states at the occupancy-token
   positions, projected back from the LLM width H to D), are merged with the encoder queries ``Q_L``:
   ``Q_hat_o = Q_L + MLP([T'_o, Q_L])``.
2. Eq. 7: at each future step t the queries get a 4D embedding of their centre and time, ``embed(X, Y, Z, t)``,
   and the encoded ego state: ``Q_hat_o^t = Q^(t-1) + embed(X^(t-1), Y^(t-1), Z^(t-1), t) + Ego``.
3. One **shared** forecaster layer is applied **recursively** for t = 1..T: step t consumes the queries and
   centres of step t-1 (SparseWorld's recursive head, docs/reference_choices.md §6.1; centres enter the next
   step detached, as there).  Each step moves the query centres, decodes ``forecast_points_per_query`` points
   around them and their class logits: the forecast occupancy of future frame t in that frame's ego frame.

The forecaster layer is self-attention among the queries followed by an FFN (pre-norm); the paper only says "a
shared forecaster", SparseWorld fuses an ego token and decodes with per-query heads.  Supervision (eq. 11):
Chamfer + focal per future frame through :func:`sparseoccvla_core.losses.occupancy_losses` against the
concatenated GT transformed into that frame (``DrivingBatch.future_*``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import SparseOccVLAConfig
from .connector import EgoStateEncoder, PointPositionalEncoding, normalize_points
from .losses import occupancy_losses


@dataclass
class ForecastOutput:
    """Forecast of T future frames.

    Args:
        points: T tensors [B, N, P_f, 3], frame t's points in frame t's ego frame, m.
        logits: T tensors [B, N, P_f, C] class logits (C = num_classes - 1).
        centres: T tensors [B, N, 3] query centres after step t, m.
        queries: T tensors [B, N, D] query features after step t.
    """

    points: list[torch.Tensor]
    logits: list[torch.Tensor]
    centres: list[torch.Tensor]
    queries: list[torch.Tensor]


class ForecastLayer(nn.Module):
    """The shared per-step block: pre-norm multi-head self-attention among queries + FFN."""

    def __init__(self, cfg: SparseOccVLAConfig) -> None:
        super().__init__()
        d = cfg.query_dim
        self.norm_attn = nn.LayerNorm(d)
        self.self_attn = nn.MultiheadAttention(d, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.norm_ffn = nn.LayerNorm(d)
        self.ffn = nn.Sequential(
            nn.Linear(d, cfg.ffn_dim), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.ffn_dim, d)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, D] -> [B, N, D]."""
        h = self.norm_attn(x)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        return x + self.ffn(self.norm_ffn(x))


class OccupancyForecaster(nn.Module):
    """Eq. 6 fusion + eq. 7 embeddings + one shared layer applied recursively over T future frames.

    Args:
        cfg: query_dim, llm_hidden_size, forecast_frames, forecast_points_per_query, num_classes, num_heads, ffn_dim.
    """

    def __init__(self, cfg: SparseOccVLAConfig) -> None:
        super().__init__()
        d = cfg.query_dim
        self.cfg = cfg
        self.num_points = cfg.forecast_points_per_query
        self.num_classes = cfg.num_semantic_classes
        self.token_proj = nn.Linear(cfg.llm_hidden_size, d)  # T'_o: LLM width H -> D
        self.fusion = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, d))  # eq. 6
        self.embed_4d = PointPositionalEncoding(cfg, d, num_coords=4)  # eq. 7 embed(X, Y, Z, t)
        self.ego_encoder = EgoStateEncoder(cfg, d)  # eq. 7 "+ Ego"
        self.layer = ForecastLayer(cfg)  # shared over the T steps
        self.centre_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 3))
        self.point_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 3 * self.num_points))
        self.class_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, self.num_classes * self.num_points))

    def fuse(self, llm_tokens: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Eq. 6: ``Q_hat_o = Q_L + MLP([proj(T'_o), Q_L])``.

        Args:
            llm_tokens: [B, N, H] T'_o.
            queries: [B, N, D] Q_L.
        Returns:
            [B, N, D].
        """
        return queries + self.fusion(torch.cat([self.token_proj(llm_tokens), queries], dim=-1))  # [B, N, 2D] -> D

    def step(
        self, queries: torch.Tensor, centres: torch.Tensor, ego: torch.Tensor, t: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One recursive step (eq. 7 then the shared layer and the heads).

        Args:
            queries: [B, N, D] queries of step t-1.
            centres: [B, N, 3] centres of step t-1, m.
            ego: [B, 1, D] encoded ego state.
            t: future step, 1..T.
        Returns:
            queries [B, N, D], centres [B, N, 3], points [B, N, P_f, 3], logits [B, N, P_f, C] of step t.
        """
        b, n = centres.shape[:2]
        time = centres.new_full((b, n, 1), t / self.cfg.forecast_frames)  # t normalised to (0, 1]
        coords = torch.cat([normalize_points(centres, self.cfg.point_cloud_range), time], dim=-1)  # [B, N, 4]
        x = self.layer(queries + self.embed_4d(coords) + ego)  # eq. 7, then the shared forecaster
        new_centres = centres + self.centre_head(x)  # [B, N, 3]
        offsets = self.point_head(x).view(b, n, self.num_points, 3)  # [B, N, P_f, 3] m
        logits = self.class_head(x).view(b, n, self.num_points, self.num_classes)  # [B, N, P_f, C]
        return x, new_centres, new_centres[:, :, None] + offsets, logits

    def forward(
        self,
        llm_tokens: torch.Tensor,
        queries: torch.Tensor,
        query_points: torch.Tensor,
        ego_state: torch.Tensor,
        command: torch.Tensor,
    ) -> ForecastOutput:
        """Forecast T future frames recursively.

        Args:
            llm_tokens: [B, N, H] LLM last hidden states at the occupancy-token positions (T'_o).
            queries: [B, N, D] encoder queries Q_L.
            query_points: [B, N, 3] their centres P_L (current ego frame), m.
            ego_state: [B, EGO_STATE_DIM].
            command: [B] int64.
        Returns:
            :class:`ForecastOutput` with T entries.
        """
        x = self.fuse(llm_tokens, queries)
        ego = self.ego_encoder(ego_state, command)  # [B, 1, D]
        centres = query_points
        out = ForecastOutput(points=[], logits=[], centres=[], queries=[])
        for t in range(1, self.cfg.forecast_frames + 1):
            # Centres enter each step detached (iterative refinement, SparseWorld); features stay attached.
            x, centres, points, logits = self.step(x, centres.detach(), ego, t)
            out.points.append(points)
            out.logits.append(logits)
            out.centres.append(centres)
            out.queries.append(x)
        return out


def forecast_losses(
    forecast: ForecastOutput,
    future_points: torch.Tensor,
    future_labels: torch.Tensor,
    future_mask: torch.Tensor,
    cfg: SparseOccVLAConfig,
) -> dict[str, torch.Tensor]:
    """Eq. 11: sum over future frames of Chamfer + focal (unweighted; the model applies lambda_focal).

    Frames with no GT for an item (beyond the end of its scene) leave that item out of that frame's loss.

    Args:
        forecast: :class:`ForecastOutput` of T frames.
        future_points: [B, T', Gf, 3] with T' >= T.
        future_labels: [B, T', Gf] int64.
        future_mask: [B, T', Gf] bool.
        cfg: model config.
    Returns:
        dict(cd, focal) scalars.
    """
    horizon = len(forecast.points)
    if future_points.dim() != 4 or future_points.shape[1] < horizon:
        raise ValueError(
            f"future_points must be [B, T, G, 3] with T >= forecast_frames={horizon}, got {tuple(future_points.shape)}"
        )
    cd = forecast.points[0].sum() * 0.0
    focal = cd
    for t in range(horizon):
        has = future_mask[:, t].any(dim=1)  # [B]
        if not bool(has.any()):
            continue
        terms = occupancy_losses(
            [forecast.points[t][has]],
            [forecast.logits[t][has]],
            future_points[has, t],
            future_labels[has, t],
            future_mask[has, t],
            cfg,
            include_p0=False,
        )
        cd = cd + terms["cd"]
        focal = focal + terms["focal"]
    return {"cd": cd, "focal": focal}
