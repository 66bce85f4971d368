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
shared forecaster", SparseWorld fuses an ego token and decodes with per-query heads.

``cfg.forecast_prior`` (default ``"none"``: the heads above as written).  With ``"ego_static"`` every step starts
from the previous step's occupancy carried into the next ego frame: the query centres and their points (initially
the encoder's decoded points and class logits, detached) are moved by the ego motion that the current ego state
predicts over ``forecast_dt`` (constant velocity and yaw rate, :func:`constant_velocity_motion`), and the heads
add residuals - a centre shift, point offsets and class logits - whose last layers start at zero.  An untrained
forecaster then predicts a static world moved by the extrapolated ego motion, and training only has to learn
what moves on its own and where the ego deviates from constant velocity (docs/experiments.md §6).

Supervision (eq. 11): Chamfer + focal per future frame through :func:`sparseoccvla_core.losses.occupancy_losses` against the
concatenated GT transformed into that frame (``DrivingBatch.future_*``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .config import SparseOccVLAConfig
from .connector import EgoStateEncoder, PointPositionalEncoding, normalize_points
from .losses import occupancy_losses


def constant_velocity_motion(ego_state: torch.Tensor, dt: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ego motion over ``dt`` with constant velocity and yaw rate, in the ego frame at the start of the interval.

    The yaw changes by ``psi = yaw_rate * dt``; the ego moves along the chord of the arc it drives: its velocity
    ``(vx, vy) * dt`` rotated by ``psi / 2`` and shortened by ``sin(psi / 2) / (psi / 2)`` (exact for a
    constant-rate turn).

    Args:
        ego_state: [B, 6] (vx, vy, ax, ay, yaw_rate, speed) in the current ego axes, SI units.
        dt: seconds.
    Returns:
        (cos psi [B], sin psi [B], translation [B, 2] m) of the next ego frame in the current one.
    """
    psi = ego_state[:, 4] * dt
    v = ego_state[:, 0:2] * dt * torch.sinc(psi / (2 * torch.pi))[:, None]  # torch.sinc(x) = sin(pi x) / (pi x)
    c_half, s_half = torch.cos(psi / 2), torch.sin(psi / 2)
    trans = torch.stack([c_half * v[:, 0] - s_half * v[:, 1], s_half * v[:, 0] + c_half * v[:, 1]], dim=-1)
    return torch.cos(psi), torch.sin(psi), trans


def into_next_frame(
    points: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, trans: Optional[torch.Tensor]
) -> torch.Tensor:
    """Points of the current ego frame expressed in the next one: ``R(psi)^T (p_xy - t)``, z unchanged.

    Args:
        points: [B, ..., 3] m.
        cos, sin: [B] of the yaw change psi.
        trans: [B, 2] translation, or None to rotate only (offsets, directions).
    Returns:
        [B, ..., 3].
    """
    shape = (points.shape[0],) + (1,) * (points.dim() - 2)
    c, s_ = cos.view(shape), sin.view(shape)
    x, y = points[..., 0], points[..., 1]
    if trans is not None:
        x, y = x - trans[:, 0].view(shape), y - trans[:, 1].view(shape)
    return torch.stack([c * x + s_ * y, -s_ * x + c * y, points[..., 2]], dim=-1)


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
        self.prior = cfg.forecast_prior
        if self.prior != "none":  # residual heads: an untrained forecaster returns the prior exactly
            for head in (self.centre_head, self.point_head, self.class_head):
                nn.init.zeros_(head[-1].weight)
                nn.init.zeros_(head[-1].bias)

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
        x = self._advance(queries, centres, ego, t)
        new_centres = centres + self.centre_head(x)  # [B, N, 3]
        offsets = self.point_head(x).view(b, n, self.num_points, 3)  # [B, N, P_f, 3] m
        logits = self.class_head(x).view(b, n, self.num_points, self.num_classes)  # [B, N, P_f, C]
        return x, new_centres, new_centres[:, :, None] + offsets, logits

    def _advance(self, queries: torch.Tensor, centres: torch.Tensor, ego: torch.Tensor, t: int) -> torch.Tensor:
        """Eq. 7 (4-D embedding of the centres and time, plus the ego term), then the shared layer: [B, N, D]."""
        b, n = centres.shape[:2]
        time = centres.new_full((b, n, 1), t / self.cfg.forecast_frames)  # t normalised to (0, 1]
        coords = torch.cat([normalize_points(centres, self.cfg.point_cloud_range), time], dim=-1)  # [B, N, 4]
        return self.layer(queries + self.embed_4d(coords) + ego)

    def forward(
        self,
        llm_tokens: torch.Tensor,
        queries: torch.Tensor,
        query_points: torch.Tensor,
        ego_state: torch.Tensor,
        command: torch.Tensor,
        current_points: Optional[torch.Tensor] = None,
        current_logits: Optional[torch.Tensor] = None,
    ) -> ForecastOutput:
        """Forecast T future frames recursively.

        Args:
            llm_tokens: [B, N, H] LLM last hidden states at the occupancy-token positions (T'_o).
            queries: [B, N, D] encoder queries Q_L.
            query_points: [B, N, 3] their centres P_L (current ego frame), m.
            ego_state: [B, EGO_STATE_DIM].
            command: [B] int64.
            current_points: [B, N, P, 3] the encoder's decoded points (``forecast_prior`` "ego_static" only).
            current_logits: [B, N, P, C] their class logits (same).
        Returns:
            :class:`ForecastOutput` with T entries.
        """
        x = self.fuse(llm_tokens, queries)
        ego = self.ego_encoder(ego_state, command)  # [B, 1, D]
        if self.prior != "none":
            if current_points is None or current_logits is None:
                raise ValueError(f"forecast_prior {self.prior!r} needs the encoder's decoded points and logits")
            return self._forward_prior(x, query_points, ego, ego_state, current_points, current_logits)
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

    def _forward_prior(
        self,
        x: torch.Tensor,
        centres: torch.Tensor,
        ego: torch.Tensor,
        ego_state: torch.Tensor,
        current_points: torch.Tensor,
        current_logits: torch.Tensor,
    ) -> ForecastOutput:
        """``forecast_prior == "ego_static"``: residual steps on the previous step's occupancy moved by the ego."""
        b, n = centres.shape[:2]
        p = current_points.shape[2]
        idx = torch.linspace(0, p - 1, self.num_points, device=centres.device).round().long()  # P_f of the P points
        offsets = (current_points[:, :, idx] - centres[:, :, None]).detach()  # [B, N, P_f, 3]
        logits = current_logits[:, :, idx].detach()  # [B, N, P_f, C]
        cos, sin, trans = constant_velocity_motion(ego_state.to(centres.dtype), self.cfg.forecast_dt)
        centres = centres.detach()
        out = ForecastOutput(points=[], logits=[], centres=[], queries=[])
        for t in range(1, self.cfg.forecast_frames + 1):
            centres = into_next_frame(centres, cos, sin, trans)  # the last step's queries, in frame t
            offsets = into_next_frame(offsets, cos, sin, None)
            x = self._advance(x, centres, ego, t)
            new_centres = centres + self.centre_head(x)  # [B, N, 3]
            new_offsets = offsets + self.point_head(x).view(b, n, self.num_points, 3)
            step_logits = logits + self.class_head(x).view(b, n, self.num_points, self.num_classes)
            out.points.append(new_centres[:, :, None] + new_offsets)
            out.logits.append(step_logits)
            out.centres.append(new_centres)
            out.queries.append(x)
            # the next step starts from this one (detached, as the centres of the plain recursion)
            centres, offsets, logits = new_centres.detach(), new_offsets.detach(), step_logits.detach()
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
