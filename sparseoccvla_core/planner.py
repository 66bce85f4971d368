"""LLM-guided anchor-diffusion planner (paper sec. 3.3, eq. 8, Fig. 3).

* **Anchors**: K trajectories of ``plan_horizon`` (x, y) waypoints, K-means clusters of training trajectories
  per driving command (18 = 3 commands x 6, DiffusionDrive's nuScenes branch, docs/reference_choices.md §7.1),
  computed by ``sparseoccvla anchors`` and installed with :meth:`AnchorDiffusionPlanner.set_anchors`.  Until then
  the planner holds a deterministic *kinematic fan* (constant speed and yaw rate per command, :func:`kinematic_fan`)
  so an untrained model is well defined; it is not a substitute for data anchors.
* **Scorer**: each anchor is embedded and attends to the LLM's reasoning tokens T_r and the LLM's scene context
  (its hidden states of the global and ego tokens), plus the encoded ego state -> one logit per anchor; BCE with the
  anchor closest to the GT (mean L2 over valid waypoints) as the only positive (paper sec. 3.3).
* **Truncated diffusion** (eq. 8): anchors normalised by ``traj_norm_scale`` are noised with a scaled-linear DDIM
  schedule of ``diffusion_train_timesteps`` steps, only at small timesteps t ~ U{0..diffusion_trunc_timesteps-1}
  (DiffusionDrive, docs/reference_choices.md §7.2; noisy samples clamped to [-1, 1] as there).
* **Diffusion decoder** (Fig. 3): trajectory encoder (sine embedding of the waypoints -> MLP) -> cross-attention
  to the occupancy queries -> to the encoded ego state -> to the LLM reasoning tokens -> FFN -> timestep
  modulation (scale/shift), ``planner_num_layers`` layers; it regresses the clean trajectory x0 (DDIM
  ``prediction_type="sample"``, as DiffusionDrive): by default directly, as the paper states
  (``plan_regression="direct"``: the head's output is x0 in normalised units), or as DiffusionDrive's code does,
  an offset in metres added to the noisy input (``"residual"``).  L1 on the positive anchor only.
* **Inference**: the anchors are noised at ``diffusion_infer_start_timestep`` and denoised with exactly
  ``denoise_steps`` DDIM steps (eta = 0); the plan is the denoised trajectory of the highest-scoring anchor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import SparseOccVLAConfig
from .connector import EgoStateEncoder, PointPositionalEncoding, sine_embedding
from .geometry.ego_motion import FAN_MAX_SPEED, FAN_TURN_YAW_RATE  # noqa: F401  (re-exported: the fan's parameters)
from .geometry.ego_motion import kinematic_fan as ego_kinematic_fan

#: Scaled-linear beta schedule end points: diffusers' DDIMScheduler defaults, which DiffusionDrive instantiates
#: with ``beta_schedule="scaled_linear"`` (docs/reference_choices.md §7.2).
BETA_START: float = 1e-4
BETA_END: float = 0.02


# ---------------------------------------------------------------------------------------------------------- schedule
def scaled_linear_alphas_cumprod(num_train_timesteps: int) -> torch.Tensor:
    """Cumulative products alpha-bar of the scaled-linear schedule.

    ``beta_i = (sqrt(BETA_START) + i / (n - 1) * (sqrt(BETA_END) - sqrt(BETA_START)))^2``, ``alpha-bar_t = prod_{i<=t}
    (1 - beta_i)``.

    Returns:
        [num_train_timesteps] float64 alpha-bar.
    """
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, num_train_timesteps, dtype=torch.float64, device="cpu") ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def add_noise(
    x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Eq. 8: ``tau = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` with one timestep per batch item.

    Args:
        x0: [B, ...] clean (normalised) samples.
        noise: same shape, N(0, I).
        timesteps: [B] int64.
        alphas_cumprod: [num_train_timesteps].
    """
    # coefficients in float64 first: 1 - alpha-bar is ~1e-3 at the truncated timesteps, below bf16 resolution near 1
    a = alphas_cumprod.to(device=x0.device, dtype=torch.float64)[timesteps.to(x0.device)]  # [B]
    shape = (-1, *([1] * (x0.dim() - 1)))
    signal = a.sqrt().to(x0.dtype).view(shape)  # [B, 1, ...]
    noise_scale = (1.0 - a).sqrt().to(x0.dtype).view(shape)
    return signal * x0 + noise_scale * noise


def ddim_step(
    sample: torch.Tensor, x0_pred: torch.Tensor, timestep: int, prev_timestep: int, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """One deterministic DDIM update (eta = 0) from a predicted clean sample.

    ``eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)``; ``x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps``, with
    ``a_prev = 1`` when ``prev_timestep < 0`` (the last step returns x0).

    Args:
        sample: x_t, any shape.
        x0_pred: predicted clean sample, same shape.
        timestep: t.
        prev_timestep: the next (smaller) timestep, or -1.
        alphas_cumprod: [num_train_timesteps].
    """
    a_t = float(alphas_cumprod[timestep])
    a_prev = float(alphas_cumprod[prev_timestep]) if prev_timestep >= 0 else 1.0
    eps = (sample - math.sqrt(a_t) * x0_pred) / math.sqrt(1.0 - a_t)
    return math.sqrt(a_prev) * x0_pred + math.sqrt(1.0 - a_prev) * eps


def inference_timesteps(start_timestep: int, num_steps: int) -> list[int]:
    """``num_steps`` strictly decreasing timesteps from ``start_timestep`` (the last step then goes to x0).

    E.g. start 8, 2 steps -> [8, 4]; start 8, 9 steps -> [8, 7, ..., 0].
    """
    if not 0 < num_steps <= start_timestep + 1:
        raise ValueError(f"denoise_steps {num_steps} must be in [1, {start_timestep + 1}]")
    return [start_timestep - (i * (start_timestep + 1)) // num_steps for i in range(num_steps)]


def timestep_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer sinusoidal embedding of integer timesteps: [B] -> [B, dim] (angles t * 10000^(-k/(dim/2)))."""
    return sine_embedding(timesteps.float().unsqueeze(-1) / (2.0 * math.pi), dim)  # [B, dim]


def _randn(
    shape: tuple[int, ...], generator: Optional[torch.Generator], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Gaussian noise drawn on the generator's device (a CPU generator gives the same noise on every device)."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


# ---------------------------------------------------------------------------------------------------------- anchors
def kinematic_fan(cfg: SparseOccVLAConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic default anchors: :func:`~sparseoccvla_core.geometry.ego_motion.kinematic_fan` for this config
    (constant-speed, constant-yaw-rate arcs per command; ``FAN_MAX_SPEED``, ``FAN_TURN_YAW_RATE``).

    Returns:
        anchors [K, plan_horizon, 2] (x, y) m in the ego frame (CPU float32), commands [K] int64.
    """
    anchors, commands = ego_kinematic_fan(cfg.num_commands, cfg.anchors_per_command, cfg.plan_horizon, cfg.plan_dt)
    # CPU tensors explicitly: a constant, also when the model is constructed on the meta device
    return torch.from_numpy(anchors), torch.from_numpy(commands)


def positive_anchor(anchors: torch.Tensor, gt: torch.Tensor, gt_mask: torch.Tensor) -> torch.Tensor:
    """Index of the anchor closest to the GT: mean L2 over valid waypoints (DiffusionDrive).

    Rule: docs/reference_choices.md §7.4.

    Args:
        anchors: [K, T, 2].
        gt: [B, T, 2].
        gt_mask: [B, T] bool.
    Returns:
        [B] int64.
    """
    dist = (anchors[None] - gt[:, None]).norm(dim=-1)  # [B, K, T]
    m = gt_mask[:, None].to(dist.dtype)  # [B, 1, T]
    mean = (dist * m).sum(-1) / m.sum(-1).clamp(min=1.0)  # [B, K]
    return mean.argmin(dim=1)


def plan_losses(
    trajectories: torch.Tensor, scores: torch.Tensor, anchors: torch.Tensor, gt: torch.Tensor, gt_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Scorer BCE over all anchors and L1 on the positive anchor's denoised trajectory only (sec. 3.3).

    Args:
        trajectories: [B, K, T, 2] decoder outputs (clean-trajectory regression), m.
        scores: [B, K] anchor logits.
        anchors: [K, T, 2].
        gt: [B, T, 2] GT waypoints, m.
        gt_mask: [B, T] bool valid waypoints; items with none are left out of both losses.
    Returns:
        dict(plan_cls, plan_l1) scalars.
    """
    has_gt = gt_mask.any(dim=1)  # [B]
    if not bool(has_gt.any()):
        zero = trajectories.sum() * 0.0 + scores.sum() * 0.0
        return {"plan_cls": zero, "plan_l1": zero}
    positive = positive_anchor(anchors, gt, gt_mask)  # [B]
    target = F.one_hot(positive, anchors.shape[0]).to(scores.dtype)  # [B, K]
    plan_cls = F.binary_cross_entropy_with_logits(scores[has_gt], target[has_gt])
    batch_idx = torch.arange(gt.shape[0], device=gt.device)
    chosen = trajectories[batch_idx, positive]  # [B, T, 2]
    m = gt_mask.to(chosen.dtype)[..., None]  # [B, T, 1]
    plan_l1 = ((chosen - gt).abs() * m).sum() / (m.sum() * gt.shape[-1]).clamp(min=1.0)
    return {"plan_cls": plan_cls, "plan_l1": plan_l1}


# ---------------------------------------------------------------------------------------------------------- modules
@dataclass
class PlannerContext:
    """Conditioning shared by the scorer and the decoder (all at width D).

    Args:
        occupancy: [B, N, D] occupancy queries + PE of their centres.
        ego: [B, 1, D] encoded ego state.
        reasoning: [B, Lr + 1, D] projected LLM reasoning tokens T_r plus one learned "no reasoning" slot.
        reasoning_pad: [B, Lr + 1] bool key-padding mask (True = ignore).
        scene: [B, S, D] projected LLM scene context (hidden states of the global and ego tokens).
    """

    occupancy: torch.Tensor
    ego: torch.Tensor
    reasoning: torch.Tensor
    reasoning_pad: torch.Tensor
    scene: torch.Tensor


@dataclass
class PlanOutput:
    """Planner inference result.

    Args:
        plan: [B, T, 2] the chosen anchor's denoised trajectory, m.
        trajectories: [B, K, T, 2] every anchor's denoised trajectory, m.
        scores: [B, K] anchor probabilities (sigmoid of the scorer logits).
        chosen: [B] int64 index of the highest-scoring anchor.
    """

    plan: torch.Tensor
    trajectories: torch.Tensor
    scores: torch.Tensor
    chosen: torch.Tensor


class TrajectoryEncoder(nn.Module):
    """Sine embedding of every (normalised) waypoint -> MLP -> one D-vector per trajectory (DiffusionDrive)."""

    def __init__(self, cfg: SparseOccVLAConfig) -> None:
        super().__init__()
        d = cfg.query_dim
        self.feats = 2 * max(1, d // (4 * cfg.plan_horizon))  # sine features per scalar
        self.mlp = nn.Sequential(nn.Linear(self.feats * 2 * cfg.plan_horizon, d), nn.GELU(), nn.Linear(d, d))

    def forward(self, normalised: torch.Tensor) -> torch.Tensor:
        """[B, K, T, 2] in [-1, 1] -> [B, K, D]."""
        emb = sine_embedding((normalised + 1.0) * 0.5, self.feats)  # [B, K, T, 2*feats]
        return self.mlp(emb.flatten(-2))  # [B, K, T*2*feats] -> [B, K, D]


class DiffusionDecoderLayer(nn.Module):
    """Fig. 3: cross-attn to occupancy -> ego -> reasoning, FFN, then timestep modulation (scale/shift)."""

    def __init__(self, cfg: SparseOccVLAConfig) -> None:
        super().__init__()
        d, heads = cfg.query_dim, cfg.num_heads
        self.occupancy_attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm_occupancy = nn.LayerNorm(d)
        self.ego_attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm_ego = nn.LayerNorm(d)
        self.reasoning_attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm_reasoning = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(), nn.Linear(cfg.ffn_dim, d))
        self.norm_ffn = nn.LayerNorm(d)
        self.time_modulation = nn.Sequential(nn.Mish(), nn.Linear(d, 2 * d))

    def forward(self, x: torch.Tensor, ctx: PlannerContext, time_emb: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: [B, K, D] trajectory queries.
            ctx: conditioning.
            time_emb: [B, D] diffusion timestep embedding.
        Returns:
            [B, K, D].
        """
        x = self.norm_occupancy(x + self.occupancy_attn(x, ctx.occupancy, ctx.occupancy, need_weights=False)[0])
        x = self.norm_ego(x + self.ego_attn(x, ctx.ego, ctx.ego, need_weights=False)[0])
        attended = self.reasoning_attn(
            x, ctx.reasoning, ctx.reasoning, key_padding_mask=ctx.reasoning_pad, need_weights=False
        )[0]
        x = self.norm_reasoning(x + attended)
        x = self.norm_ffn(x + self.ffn(x))
        scale, shift = self.time_modulation(time_emb).unsqueeze(1).chunk(2, dim=-1)  # [B, 1, D] each
        return x * (1.0 + scale) + shift


class DiffusionDecoder(nn.Module):
    """Trajectory encoder + ``planner_num_layers`` Fig.-3 layers + a head regressing the clean trajectory."""

    def __init__(self, cfg: SparseOccVLAConfig) -> None:
        super().__init__()
        d = cfg.query_dim
        self.plan_horizon = cfg.plan_horizon
        self.trajectory_encoder = TrajectoryEncoder(cfg)
        self.time_embed = nn.Sequential(nn.Linear(d, 4 * d), nn.Mish(), nn.Linear(4 * d, d))
        self.layers = nn.ModuleList(DiffusionDecoderLayer(cfg) for _ in range(cfg.planner_num_layers))
        self.regression_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 2 * cfg.plan_horizon))
        self.residual = cfg.plan_regression == "residual"
        self.register_buffer("norm_scale", torch.tensor(cfg.traj_norm_scale, dtype=torch.float32), persistent=False)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, ctx: PlannerContext) -> torch.Tensor:
        """
        Args:
            noisy: [B, K, T, 2] noisy trajectories, normalised to [-1, 1].
            timesteps: [B] int64 diffusion timesteps.
            ctx: conditioning.
        Returns:
            [B, K, T, 2] predicted clean trajectories in metres.
        """
        batch, k = noisy.shape[:2]
        x = self.trajectory_encoder(noisy)  # [B, K, D]
        time_emb = self.time_embed(timestep_embedding(timesteps, x.shape[-1]).to(x.dtype))  # [B, D]
        for layer in self.layers:
            x = layer(x, ctx, time_emb)
        out = self.regression_head(x).view(batch, k, self.plan_horizon, 2)  # [B, K, T, 2]
        if self.residual:  # DiffusionDrive: an offset in metres on the noisy input
            return noisy * self.norm_scale + out
        return out * self.norm_scale  # the paper: the clean trajectory directly (normalised units -> metres)


class AnchorScorer(nn.Module):
    """Scores anchors from the LLM's reasoning tokens, its scene context and the ego state (sec. 3.3)."""

    def __init__(self, cfg: SparseOccVLAConfig) -> None:
        super().__init__()
        d, heads = cfg.query_dim, cfg.num_heads
        self.anchor_encoder = TrajectoryEncoder(cfg)
        self.reasoning_attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm_reasoning = nn.LayerNorm(d)
        self.scene_attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm_scene = nn.LayerNorm(d)
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))

    def forward(self, anchors_normalised: torch.Tensor, ctx: PlannerContext) -> torch.Tensor:
        """
        Args:
            anchors_normalised: [K, T, 2] in [-1, 1].
            ctx: conditioning (batch B).
        Returns:
            [B, K] logits.
        """
        batch = ctx.ego.shape[0]
        x = self.anchor_encoder(anchors_normalised).unsqueeze(0).expand(batch, -1, -1)  # [B, K, D]
        attended = self.reasoning_attn(
            x, ctx.reasoning, ctx.reasoning, key_padding_mask=ctx.reasoning_pad, need_weights=False
        )[0]
        x = self.norm_reasoning(x + attended)
        x = self.norm_scene(x + self.scene_attn(x, ctx.scene, ctx.scene, need_weights=False)[0])
        return self.head(x + ctx.ego).squeeze(-1)  # [B, K]


class AnchorDiffusionPlanner(nn.Module):
    """The planner: anchors, scorer, truncated diffusion and its decoder (sec. 3.3).

    Args:
        cfg: model config (num_anchors, plan_horizon, diffusion_*, denoise_steps, traj_norm_scale, query_dim).
    """

    def __init__(self, cfg: SparseOccVLAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.query_dim
        anchors, commands = kinematic_fan(cfg)
        self.register_buffer("anchors", anchors)  # [K, T, 2] m
        self.register_buffer("anchor_commands", commands)  # [K]
        self.register_buffer("anchors_from_data", torch.zeros((), dtype=torch.bool))
        # The schedule stays a float64 CPU tensor (not a buffer): ``model.to(bfloat16)`` must not round alpha-bar.
        self.alphas_cumprod = scaled_linear_alphas_cumprod(cfg.diffusion_train_timesteps)
        self.register_buffer("norm_scale", torch.tensor(cfg.traj_norm_scale, dtype=torch.float32), persistent=False)
        self.occupancy_position = PointPositionalEncoding(cfg, d)
        self.ego_encoder = EgoStateEncoder(cfg, d)
        self.reasoning_proj = nn.Linear(cfg.llm_hidden_size, d)
        self.scene_proj = nn.Linear(cfg.llm_hidden_size, d)
        self.no_reasoning = nn.Parameter(torch.zeros(1, 1, d))
        self.scorer = AnchorScorer(cfg)
        self.decoder = DiffusionDecoder(cfg)

    # ------------------------------------------------------------------ anchors
    def set_anchors(self, anchors: torch.Tensor, commands: Optional[torch.Tensor] = None) -> None:
        """Install data anchors (``sparseoccvla anchors`` output).

        Args:
            anchors: [K, plan_horizon, 2] (x, y) m, ego frame, grouped per command (left, straight, right) when
                ``commands`` is None; or [num_commands, K / num_commands, plan_horizon, 2].
            commands: [K] int64 command of each anchor (optional).
        """
        expect = tuple(self.anchors.shape)
        anchors = torch.as_tensor(anchors, dtype=torch.float32)
        if anchors.dim() == 4:  # [C, K/C, T, 2] per command, command-major (``sparseoccvla anchors`` layout)
            anchors = anchors.flatten(0, 1)  # [K, T, 2]
        if tuple(anchors.shape) != expect:
            raise ValueError(
                f"anchors must have shape {expect} (num_anchors, plan_horizon, 2), got {tuple(anchors.shape)}"
            )
        if not torch.isfinite(anchors).all():
            raise ValueError("anchors contain NaN or Inf")
        if commands is None:
            commands = torch.arange(self.cfg.num_commands).repeat_interleave(self.cfg.anchors_per_command)
        commands = torch.as_tensor(commands, dtype=torch.long)
        if tuple(commands.shape) != expect[:1] or commands.min() < 0 or commands.max() >= self.cfg.num_commands:
            raise ValueError(f"commands must be [{expect[0]}] ints in [0, {self.cfg.num_commands})")
        with torch.no_grad():
            self.anchors.copy_(anchors.to(self.anchors.device))
            self.anchor_commands.copy_(commands.to(self.anchor_commands.device))
            self.anchors_from_data.fill_(True)

    def normalise(self, trajectories: torch.Tensor) -> torch.Tensor:
        """Metres -> diffusion space (divide by ``traj_norm_scale``)."""
        return trajectories / self.norm_scale

    # ------------------------------------------------------------------ conditioning
    def context(
        self,
        queries: torch.Tensor,
        query_points: torch.Tensor,
        ego_state: torch.Tensor,
        command: torch.Tensor,
        reasoning: torch.Tensor,
        reasoning_mask: torch.Tensor,
        scene_tokens: torch.Tensor,
    ) -> PlannerContext:
        """Project every condition to width D.

        Args:
            queries: [B, N, D] occupancy queries Q_L.
            query_points: [B, N, 3] their centres, m.
            ego_state: [B, EGO_STATE_DIM].
            command: [B] int64.
            reasoning: [B, Lr, H] LLM hidden states of the reasoning tokens T_r.
            reasoning_mask: [B, Lr] bool, True for real tokens.
            scene_tokens: [B, S, H] LLM hidden states of the global scene and ego tokens.
        """
        batch = queries.shape[0]
        occupancy = queries + self.occupancy_position.encode_points(query_points)  # [B, N, D]
        no_reasoning = self.no_reasoning.expand(batch, -1, -1)  # [B, 1, D]
        reasoning_all = torch.cat([no_reasoning, self.reasoning_proj(reasoning)], dim=1)  # [B, Lr+1, D]
        pad = torch.cat([reasoning_mask.new_zeros(batch, 1), ~reasoning_mask.bool()], dim=1)  # [B, Lr+1]
        return PlannerContext(
            occupancy=occupancy,
            ego=self.ego_encoder(ego_state, command),
            reasoning=reasoning_all,
            reasoning_pad=pad,
            scene=self.scene_proj(scene_tokens),
        )

    def score(self, ctx: PlannerContext) -> torch.Tensor:
        """[B, K] anchor logits."""
        return self.scorer(self.normalise(self.anchors), ctx)

    # ------------------------------------------------------------------ training
    def loss(
        self,
        ctx: PlannerContext,
        gt_trajectory: torch.Tensor,
        gt_mask: torch.Tensor,
        generator: Optional[torch.Generator] = None,
    ) -> dict[str, torch.Tensor]:
        """Noise all anchors at t ~ U{0..trunc-1} (one t per item), denoise jointly, BCE + positive-anchor L1.

        Args:
            ctx: conditioning (batch B).
            gt_trajectory: [B, T, 2] m.
            gt_mask: [B, T] bool.
            generator: optional RNG for the timesteps and noise.
        """
        batch = gt_trajectory.shape[0]
        device = gt_trajectory.device
        clean = self.normalise(self.anchors).expand(batch, -1, -1, -1)  # [B, K, T, 2]
        gen_device = generator.device if generator is not None else device
        t = torch.randint(0, self.cfg.diffusion_trunc_timesteps, (batch,), generator=generator, device=gen_device)
        t = t.to(device)
        noise = _randn(tuple(clean.shape), generator, device, clean.dtype)
        noisy = add_noise(clean, noise, t, self.alphas_cumprod).clamp(-1.0, 1.0)
        trajectories = self.decoder(noisy, t, ctx)
        return plan_losses(trajectories, self.score(ctx), self.anchors, gt_trajectory, gt_mask)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def sample(self, ctx: PlannerContext, generator: Optional[torch.Generator] = None) -> PlanOutput:
        """Noise the anchors at ``diffusion_infer_start_timestep``, run exactly ``denoise_steps`` DDIM steps.

        Each step the decoder predicts the clean trajectory x0; the DDIM update moves the sample to the next
        timestep.  The returned trajectories are the last step's x0 predictions (as DiffusionDrive returns its
        last regression), the plan is the one of the highest-scoring anchor.
        """
        batch = ctx.ego.shape[0]
        device = ctx.ego.device
        clean = self.normalise(self.anchors).expand(batch, -1, -1, -1)  # [B, K, T, 2]
        start = self.cfg.diffusion_infer_start_timestep
        noise = _randn(tuple(clean.shape), generator, device, clean.dtype)
        t_start = torch.full((batch,), start, dtype=torch.long, device=device)
        sample = add_noise(clean, noise, t_start, self.alphas_cumprod).clamp(-1.0, 1.0)
        steps = inference_timesteps(start, self.cfg.denoise_steps)
        prediction = clean
        for i, t in enumerate(steps):
            prev = steps[i + 1] if i + 1 < len(steps) else -1
            prediction = self.decoder(sample, torch.full((batch,), t, dtype=torch.long, device=device), ctx)
            x0 = self.normalise(prediction).clamp(-1.0, 1.0)
            sample = ddim_step(sample, x0, t, prev, self.alphas_cumprod)
        scores = self.score(ctx).sigmoid()  # [B, K]
        chosen = scores.argmax(dim=1)
        plan = prediction[torch.arange(batch, device=device), chosen]  # [B, T, 2]
        return PlanOutput(plan=plan, trajectories=prediction, scores=scores, chosen=chosen)
