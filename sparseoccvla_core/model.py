"""SparseOccVLA: the full model (paper sec. 3, sec. 4.2, appendix A), assembled from one module per paper part.

Data flow (``forward`` numbers the same steps; each step is one public method, used by ``forward``, ``predict``,
the streaming pipeline and the evaluation alike):

1. ``backbone`` - ResNet + FPN features of every view of every frame (part 1).
2. ``occupancy_encoder`` - sparse occupancy queries Q_L, their points and classes (sec. 3.1, part 2).
3. Occupancy losses eq. 10: Chamfer (eq. 1) on every layer incl. P_0 + lambda_focal * focal (``losses.py``).
4. ``connector`` - occupancy tokens T_o (eq. 2); ``distillation`` against the frozen CLIP teacher (eq. 3).
5. ``global_queries`` (eq. 4) and ``ego_token`` -> scene prefix ``[T_o, T_g, T_ego]`` -> ``llm`` once, KV cached.
6. Text streams after the cached prefix: QA answers and planning reasoning, MLE loss (eq. 5).
7. ``forecaster`` - eq. 6 fusion of T'_o and Q_L, eq. 7 embeddings, recursive over T frames; loss eq. 11.
8. ``planner`` - LLM-guided anchor scoring + truncated anchor diffusion (sec. 3.3, eq. 8).
9. Total loss eq. 12: L_occ (+ distillation) + L_LM + L_fore + L_diff (plan BCE + L1).

Step API (shapes in each docstring): :meth:`SparseOccVLA.image_features` (1) -> :meth:`~SparseOccVLA.encode_features`
(2; :meth:`~SparseOccVLA.encode_scene` runs 1-2 from a batch's images) -> :meth:`~SparseOccVLA.scene_tokens` (4) ->
:meth:`~SparseOccVLA.scene_prefix` (5) -> :meth:`~SparseOccVLA.reason` / :meth:`~SparseOccVLA.answer` (6) ->
:meth:`~SparseOccVLA.forecast` (7) -> :meth:`~SparseOccVLA.plan` (8).  The planning prompt is the checkpoint's
``cfg.plan_question`` (the question the plan stream was trained with) on every inference path.

Training stages (sec. 4.2, :meth:`SparseOccVLA.set_stage`): 1 = encoder + connector with occupancy and distillation
losses; 2 = encoder frozen, connector / global queries / ego token / forecaster / planner trained with the LLM frozen
(LM, forecast and plan losses); 3 = everything except the LLM's base weights, the LLM through LoRA (all losses).

Example::

    model = SparseOccVLA(SparseOccVLAConfig.tiny())
    losses = model(batch, stage=3); losses["loss"].backward()
    out = model.predict(batch, generate_text=True, question="Is there a pedestrian ahead?")
    enc = model.encode_scene(batch)
    prefix = model.scene_prefix(model.scene_tokens(enc), batch.ego_state, batch.command)
    print(model.answer(prefix, ["How many cars are there?"] * batch.batch_size).texts)
    model.save_pretrained("ckpt"); model = SparseOccVLA.from_pretrained("ckpt")
"""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import yaml
from torch import nn
from transformers import PreTrainedTokenizerBase

from .backbone import ImageBackbone
from .batch import IGNORE_INDEX, CameraRig, DrivingBatch
from .config import SparseOccVLAConfig
from .connector import EgoStateEncoder, GlobalSceneQueries, OccupancyConnector
from .distill import DistillationLoss
from .forecaster import ForecastOutput, OccupancyForecaster, forecast_losses
from .llm import GenerationOutput, SceneLanguageModel, ScenePrefix, resolve_tokenizer
from .losses import occupancy_losses
from .occupancy_encoder import EncoderOutput, SparseOccupancyEncoder, decode_occupancy
from .planner import AnchorDiffusionPlanner, PlannerContext, PlanOutput
from .tokenizer import encode_qa, load_tokenizer

#: Default occupancy score threshold of ``predict``: SparseWorld's test threshold (docs/reference_choices.md §2.8).
DEFAULT_SCORE_THRESHOLD: float = 0.35
#: The named eq.-12 terms :meth:`SparseOccVLA.forward` returns, in this order (also the ``losses.csv`` column order
#: of ``training.py``): occupancy Chamfer + focal (eq. 10), distillation (eq. 3), LM (eq. 5), forecast Chamfer + focal
#: (eq. 11), planner anchor BCE + positive-anchor L1 (L_diff).
LOSS_NAMES: tuple[str, ...] = ("occ_cd", "occ_focal", "distill", "lm", "fore_cd", "fore_focal", "plan_cls", "plan_l1")
#: Key of the weighted eq.-12 sum in the dict :meth:`SparseOccVLA.forward` returns.
TOTAL_LOSS: str = "loss"
#: Loss terms each training stage computes (sec. 4.2): stage 1 the occupancy terms, stage 2 the LLM-side terms.
STAGE_LOSSES: dict[int, tuple[str, ...]] = {1: LOSS_NAMES[:3], 2: LOSS_NAMES[3:], 3: LOSS_NAMES}
#: Submodules trained in each stage; the LLM is special-cased (stage 3: LoRA only; never its base weights).
STAGE_MODULES: dict[int, tuple[str, ...]] = {
    1: ("backbone", "occupancy_encoder", "connector", "distillation"),
    2: ("connector", "global_queries", "ego_token", "forecaster", "planner"),
    3: (
        "backbone",
        "occupancy_encoder",
        "connector",
        "distillation",
        "global_queries",
        "ego_token",
        "forecaster",
        "planner",
    ),
}
#: Config fields that are file locations, not architecture: they may differ between a checkpoint and a given config.
PATH_FIELDS: tuple[str, ...] = ("llm_path", "tokenizer_path", "clip_teacher_path", "backbone_weights")
WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_DIR = "model.safetensors", "config.yaml", "tokenizer"


@dataclass
class PredictOutput:
    """Everything :meth:`SparseOccVLA.predict` returns (current ego frame unless stated; metres).

    Args:
        occupancy_points: per item [M, 3] occupied voxel centres.
        occupancy_classes: per item [M] int64 Occ3D classes.
        occupancy_scores: per item [M] sigmoid scores.
        forecast_points: per item, T tensors [M_t, 3] (frame t's own ego frame).
        forecast_classes: per item, T tensors [M_t].
        forecast_scores: per item, T tensors [M_t].
        plan: [B, T_plan, 2] planned waypoints (x, y); None when ``predict(plan=False)``.
        anchor_trajectories: [B, K, T_plan, 2] denoised trajectory of every anchor (None without a plan).
        anchor_scores: [B, K] anchor probabilities from the LLM-guided scorer (None without a plan).
        chosen_anchor: [B] int64 index of the selected anchor (None without a plan).
        reasoning: per item, the generated driving reasoning (its hidden states guided the planner) when
            ``generate_text`` was set, else None.
        answer: per item, the answer to ``question`` when one was asked, else None.
    """

    occupancy_points: list[torch.Tensor]
    occupancy_classes: list[torch.Tensor]
    occupancy_scores: list[torch.Tensor]
    forecast_points: list[list[torch.Tensor]]
    forecast_classes: list[list[torch.Tensor]]
    forecast_scores: list[list[torch.Tensor]]
    plan: Optional[torch.Tensor]
    anchor_trajectories: Optional[torch.Tensor]
    anchor_scores: Optional[torch.Tensor]
    chosen_anchor: Optional[torch.Tensor]
    reasoning: Optional[list[str]] = None
    answer: Optional[list[str]] = None


def loss_weights(cfg: SparseOccVLAConfig) -> dict[str, float]:
    """Eq.-12 weight of every term of :data:`LOSS_NAMES` (focal terms: ``lambda_focal``; the rest from ``cfg``)."""
    return {
        "occ_cd": 1.0,
        "occ_focal": cfg.lambda_focal,
        "distill": cfg.distill_weight,
        "lm": 1.0,
        "fore_cd": 1.0,
        "fore_focal": cfg.lambda_focal,
        "plan_cls": cfg.plan_cls_weight,
        "plan_l1": cfg.plan_reg_weight,
    }


def _building_on_meta() -> bool:
    """True inside ``with torch.device("meta")`` (shape-only construction)."""
    return torch.empty(()).device.type == "meta"


def _unique_count(params: Sequence[nn.Parameter], trainable_only: bool = False) -> int:
    seen, total = set(), 0
    for p in params:
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


class SparseOccVLA(nn.Module):
    """The SparseOccVLA model.

    Args:
        cfg: model configuration (``SparseOccVLAConfig.paper()`` / ``.tiny()``).
        tokenizer: the text tokenizer.  None: ``cfg.tokenizer_path``, else ``cfg.llm_path``, else the project's
            byte-level BPE trained on the built-in driving corpus.  On the ``meta`` device with no path configured
            the model is built shape-only: the LLM gets ``cfg.llm_vocab_size`` rows (Vicuna: 32000) and no tokenizer.
            The LLM's vocabulary always equals ``len(tokenizer)`` when there is one.
    """

    def __init__(self, cfg: SparseOccVLAConfig, tokenizer: Optional[PreTrainedTokenizerBase] = None) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        if tokenizer is None and not (cfg.tokenizer_path or cfg.llm_path) and _building_on_meta():
            vocab_size = cfg.llm_vocab_size
        else:
            tokenizer = tokenizer if tokenizer is not None else resolve_tokenizer(cfg)
            vocab_size = len(tokenizer)
        self.tokenizer = tokenizer
        self.backbone = ImageBackbone(cfg)
        self.occupancy_encoder = SparseOccupancyEncoder(cfg)
        self.distillation = DistillationLoss(cfg.llm_hidden_size, cfg)
        self.connector = OccupancyConnector(cfg)
        self.global_queries = GlobalSceneQueries(cfg)
        self.ego_token = EgoStateEncoder(cfg, cfg.llm_hidden_size)
        self.llm = SceneLanguageModel(cfg, vocab_size, tokenizer)
        self.forecaster = OccupancyForecaster(cfg)
        self.planner = AnchorDiffusionPlanner(cfg)
        self._plan_prompt_cache: Optional[tuple[str, list[int]]] = None  # (question, ids) of ``plan_prompt``
        self.stage = 3
        self.set_stage(3)

    # ------------------------------------------------------------------ training stages
    def set_stage(self, stage: int, train_llm_base: bool = False) -> None:
        """Set ``requires_grad`` for training stage 1, 2 or 3 (sec. 4.2) and put frozen parts in eval mode.

        The CLIP teacher is never trained; LoRA trains only in stage 3.  The LLM's base weights are frozen (the
        paper's rule, which protects a *pretrained* LLM) unless ``train_llm_base`` is set in stage 3, which is only
        allowed for a randomly initialised LLM (``cfg.llm_path is None``, e.g. the tiny preset): such an LLM has no
        language knowledge to protect and cannot learn to answer through low-rank adapters on frozen random
        weights alone.

        Args:
            stage: 1, 2 or 3.
            train_llm_base: also train the LLM base weights (stage 3, random LLM only).
        Raises:
            ValueError: a bad stage, or ``train_llm_base`` outside stage 3 or with a pretrained LLM.
        """
        if stage not in STAGE_MODULES:
            raise ValueError(f"stage must be 1, 2 or 3, got {stage!r}")
        if train_llm_base and (stage != 3 or self.cfg.llm_path is not None):
            raise ValueError(
                "train_llm_base is only for stage 3 with a randomly initialised LLM (llm_path None); a pretrained "
                "LLM is tuned through LoRA only (paper sec. 4.2)"
            )
        self.stage = stage
        self.requires_grad_(False)
        for name in STAGE_MODULES[stage]:
            getattr(self, name).requires_grad_(True)
        self.distillation.teacher.requires_grad_(False)
        if stage == 3:
            for p in self.llm.lora_parameters():
                p.requires_grad_(True)
            if train_llm_base:
                self.llm.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> "SparseOccVLA":
        """Train mode for the parts the current stage trains; frozen parts stay in eval mode (BN stats, dropout)."""
        super().train(mode)
        if mode:
            trained = set(STAGE_MODULES[self.stage]) | ({"llm"} if self.stage == 3 else set())
            for name, module in self.named_children():
                if name not in trained:
                    module.eval()
        return self

    # ------------------------------------------------------------------ the steps (paper sec. 3, in order)
    def image_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Step 1: ResNet + FPN features of every view of every frame.

        Args:
            images: [B, F, V, 3, H, W] RGB in [0, 1].
        Returns:
            Per FPN level, [B, F, V, fpn_dim, H / s, W / s] (the layout :meth:`encode_features` reads).
        """
        return self.backbone.forward_multiview(images)

    def encode_features(
        self,
        features: Sequence[torch.Tensor],
        rig: CameraRig,
        ego2global: torch.Tensor,
        frame_valid: torch.Tensor,
        ego_state: torch.Tensor,
    ) -> EncoderOutput:
        """Step 2 from backbone features: the sparse occupancy encoder (sec. 3.1).

        A stream that caches each frame's :meth:`image_features` (the pipeline) calls this directly.

        Args:
            features: per FPN level [B, F, V, C, h, w] (frame 0 = current, then past frames most recent first).
            rig: the cameras the features came from: pinhole K of the network-size images [B, F, V, 3, 3] (pixels),
                cam2ego [B, F, V, 4, 4] of each frame (m) and the images' (H, W).
            ego2global: [B, F, 4, 4] ego poses (any common frame; only relative motion is used), m.
            frame_valid: [B, F] bool, False for padded history frames.
            ego_state: [B, 6] (vx, vy, ax, ay, yaw rate, speed), SI units.
        Returns:
            :class:`EncoderOutput`: queries Q_L [B, N, D], their points, per-layer points and class logits.
        """
        return self.occupancy_encoder(features, rig, ego2global, frame_valid, ego_state)

    def encode_scene(self, batch: DrivingBatch) -> EncoderOutput:
        """Steps 1-2 from images: :meth:`image_features` of ``batch.images``, then :meth:`encode_features`.

        Args:
            batch: a batch with images [B, F, V, 3, H, W] and their geometry (GT fields are not read).
        Returns:
            :class:`EncoderOutput`.
        """
        return self.encode_features(
            self.image_features(batch.images), batch.camera_rig, batch.ego2global, batch.frame_valid, batch.ego_state
        )

    def scene_tokens(self, enc: EncoderOutput) -> torch.Tensor:
        """Step 4: the connector's occupancy tokens T_o (eq. 2).

        Args:
            enc: from :meth:`encode_features` / :meth:`encode_scene`.
        Returns:
            [B, N, H] tokens in the LLM's width.
        """
        return self.connector(enc.queries, enc.query_points)

    def prefix_embeds(self, tokens: torch.Tensor, ego_state: torch.Tensor, command: torch.Tensor) -> torch.Tensor:
        """The scene prefix ``[T_o, T_g (eq. 4), T_ego]`` as LLM input embeddings.

        Args:
            tokens: [B, N, H] occupancy tokens from :meth:`scene_tokens`.
            ego_state: [B, 6] ego state.
            command: [B] int64 driving command.
        Returns:
            [B, N + G + 1, H].
        """
        global_tokens = self.global_queries(tokens)  # [B, G, H]
        ego = self.ego_token(ego_state.to(tokens.dtype), command)  # [B, 1, H]
        return torch.cat([tokens, global_tokens, ego], dim=1)  # [B, N+G+1, H]

    def scene_prefix(self, tokens: torch.Tensor, ego_state: torch.Tensor, command: torch.Tensor) -> ScenePrefix:
        """Step 5: the scene prefix through the LLM once; its KV cache serves every later text stream.

        Args:
            tokens: [B, N, H] occupancy tokens from :meth:`scene_tokens`.
            ego_state: [B, 6] ego state.
            command: [B] int64 driving command.
        Returns:
            :class:`ScenePrefix`: the cache and the [B, N + G + 1, H] last hidden states ``[T'_o, T'_g, T'_ego]``.
        """
        return self.llm.encode_prefix(self.prefix_embeds(tokens, ego_state, command))

    def _require_tokenizer(self) -> PreTrainedTokenizerBase:
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer (shape-only build); give tokenizer_path or llm_path")
        return self.tokenizer

    def question_prompt(self, question: str, max_tokens: Optional[int] = None) -> list[int]:
        """Token ids of the chat prompt asking ``question`` (ends where the answer starts).

        Args:
            question: user text.
            max_tokens: length cap (the start of the question is cut beyond it); default ``cfg.max_text_tokens``.
        Returns:
            Token ids, at most ``max_tokens`` long.
        """
        limit = self.cfg.max_text_tokens if max_tokens is None else max_tokens
        return encode_qa(self._require_tokenizer(), question, None, limit)[0]

    @property
    def plan_prompt(self) -> list[int]:
        """Token ids of the planning prompt: ``cfg.plan_question``, the question the plan stream was trained with."""
        question = self.cfg.plan_question
        if self._plan_prompt_cache is None or self._plan_prompt_cache[0] != question:
            self._plan_prompt_cache = (question, self.question_prompt(question))
        return list(self._plan_prompt_cache[1])

    def reason(self, prefix: ScenePrefix) -> GenerationOutput:
        """Step 6 at inference: the driving reasoning, greedy, after the cached scene prefix.

        Every item is asked :attr:`plan_prompt`; the hidden states of the generated tokens are the reasoning
        tokens T_r that guide the planner (sec. 3.3).

        Args:
            prefix: from :meth:`scene_prefix` (batch B).
        Returns:
            :class:`GenerationOutput` (texts, token ids, [B, Lg, H] hidden states and [B, Lg] mask).
        """
        return self.llm.generate(prefix, [self.plan_prompt] * prefix.hidden.shape[0])

    def answer(
        self,
        prefix: ScenePrefix,
        questions: Sequence[Union[str, Sequence[int]]],
        max_new_tokens: Optional[int] = None,
    ) -> GenerationOutput:
        """Answer one question per item about the scene, reusing the prefix's KV cache (cropped back afterwards).

        Args:
            prefix: from :meth:`scene_prefix` (batch B).
            questions: B questions, each a string (encoded with :meth:`question_prompt`) or prompt token ids.
            max_new_tokens: answer length cap; default ``cfg.max_new_tokens``.
        Returns:
            :class:`GenerationOutput`.
        Raises:
            ValueError: not one question per item.
        """
        if len(questions) != prefix.hidden.shape[0]:
            raise ValueError(f"got {len(questions)} questions for {prefix.hidden.shape[0]} items")
        prompts = [self.question_prompt(q) if isinstance(q, str) else list(q) for q in questions]
        return self.llm.generate(prefix, prompts, max_new_tokens)

    def forecast(
        self, prefix: ScenePrefix, enc: EncoderOutput, ego_state: torch.Tensor, command: torch.Tensor
    ) -> ForecastOutput:
        """Step 7: T future occupancy frames from T'_o (LLM states at the occupancy positions) and Q_L (eq. 6-7).

        Args:
            prefix: from :meth:`scene_prefix`.
            enc: from :meth:`encode_features` / :meth:`encode_scene`.
            ego_state: [B, 6] ego state.
            command: [B] int64 driving command.
        Returns:
            :class:`ForecastOutput`: per future frame, [B, M, 3] points and class logits.
        """
        n = self.cfg.num_queries
        ego = ego_state.to(enc.queries.dtype)
        if self.cfg.forecast_prior == "none":
            return self.forecaster(prefix.hidden[:, :n], enc.queries, enc.query_points, ego, command)
        return self.forecaster(
            prefix.hidden[:, :n],
            enc.queries,
            enc.query_points,
            ego,
            command,
            enc.layer_points[-1],
            enc.layer_logits[-1],
        )

    def planning_context(
        self,
        prefix: ScenePrefix,
        enc: EncoderOutput,
        ego_state: torch.Tensor,
        command: torch.Tensor,
        reasoning_hidden: torch.Tensor,
        reasoning_mask: torch.Tensor,
    ) -> PlannerContext:
        """Step 8's inputs: scene queries, ego, command, the reasoning tokens T_r and the global / ego LLM states.

        Args:
            prefix: from :meth:`scene_prefix`.
            enc: from :meth:`encode_features` / :meth:`encode_scene`.
            ego_state: [B, 6] ego state.
            command: [B] int64 driving command.
            reasoning_hidden: [B, Lr, H] LLM states of the reasoning tokens (generated at inference, teacher-forced
                in training).
            reasoning_mask: [B, Lr] bool, True for real reasoning tokens.
        Returns:
            :class:`PlannerContext` for ``planner.loss`` (training) or ``planner.sample`` (:meth:`plan`).
        """
        n = self.cfg.num_queries
        ego = ego_state.to(enc.queries.dtype)
        return self.planner.context(
            enc.queries, enc.query_points, ego, command, reasoning_hidden, reasoning_mask, prefix.hidden[:, n:]
        )

    def plan(
        self,
        prefix: ScenePrefix,
        enc: EncoderOutput,
        reasoning: GenerationOutput,
        ego_state: torch.Tensor,
        command: torch.Tensor,
        generator: Optional[torch.Generator] = None,
    ) -> PlanOutput:
        """Step 8 at inference: LLM-guided anchor scoring + truncated DDIM denoising (sec. 3.3, eq. 8).

        Args:
            prefix: from :meth:`scene_prefix`.
            enc: from :meth:`encode_features` / :meth:`encode_scene`.
            reasoning: from :meth:`reason`.
            ego_state: [B, 6] ego state.
            command: [B] int64 driving command.
            generator: RNG of the diffusion noise.
        Returns:
            :class:`PlanOutput`: [B, T_plan, 2] plan, [B, K, T_plan, 2] anchors, [B, K] scores, [B] chosen index.
        """
        ctx = self.planning_context(prefix, enc, ego_state, command, reasoning.hidden, reasoning.mask)
        return self.planner.sample(ctx, generator=generator)

    def scene_inputs_embeds(self, batch: DrivingBatch, stream: str = "qa") -> torch.Tensor:
        """The full LLM input sequence ``[T_o, T_g, T_ego, text]`` as ``inputs_embeds`` (for inspection / tests).

        Args:
            batch: a batch with ``{stream}_input_ids``.
            stream: "qa" or "plan".
        Returns:
            [B, N + G + 1 + L, H].
        """
        ids = getattr(batch, f"{stream}_input_ids")
        if ids is None:
            raise ValueError(f"batch has no {stream}_input_ids")
        prefix = self.prefix_embeds(self.scene_tokens(self.encode_scene(batch)), batch.ego_state, batch.command)
        return torch.cat([prefix, self.llm.embed(ids)], dim=1)  # [B, N+G+1+L, H]

    @staticmethod
    def _require(batch: DrivingBatch, names: Sequence[str], stage: int) -> None:
        missing = [n for n in names if getattr(batch, n) is None]
        if missing:
            raise ValueError(f"stage {stage} training needs batch fields {missing}")

    # ------------------------------------------------------------------ training forward
    def forward(self, batch: DrivingBatch, stage: int) -> dict[str, torch.Tensor]:
        """Losses of one training stage.

        Args:
            batch: a :class:`DrivingBatch` with the GT the stage needs.
            stage: 1, 2 or 3 (sec. 4.2); switches ``requires_grad`` when it differs from the current stage.
        Returns:
            dict with the stage's terms (unweighted, :data:`STAGE_LOSSES`) and ``loss``, their eq.-12 sum
            (:func:`loss_weights`):
            ``occ_cd + lambda_focal*occ_focal + distill_weight*distill + lm + fore_cd + lambda_focal*fore_focal
            + plan_cls_weight*plan_cls + plan_reg_weight*plan_l1``.
        """
        if stage != self.stage:
            self.set_stage(stage)
        cfg = self.cfg
        batch.validate()
        losses: dict[str, torch.Tensor] = {}
        uses_occupancy = stage in (1, 3)
        uses_llm = stage in (2, 3)
        if uses_occupancy:
            self._require(batch, ["occ_points"], stage)
        if uses_llm:
            self._require(batch, ["plan_input_ids", "future_points", "gt_trajectory", "gt_trajectory_mask"], stage)

        # 1-2. features and sparse occupancy queries
        enc = self.encode_scene(batch)
        # 3. eq. 10 on the current frame's GT (cfg.occ_gt "current"), or on the concatenated extended-range GT
        # (appendix A, "concat") when the loader provides it
        if uses_occupancy:
            concat = cfg.occ_gt == "concat" and batch.occ_concat_points is not None
            gt_points = batch.occ_concat_points if concat else batch.occ_points
            gt_labels = batch.occ_concat_labels if concat else batch.occ_labels
            gt_mask = batch.occ_concat_mask if concat else batch.occ_mask
            occ = occupancy_losses(
                enc.layer_points, enc.layer_logits, gt_points, gt_labels, gt_mask, cfg, include_p0=True
            )
            losses["occ_cd"], losses["occ_focal"] = occ["cd"], occ["focal"]
        # 4. occupancy tokens (eq. 2) and distillation (eq. 3) on the current frame
        tokens = self.scene_tokens(enc)  # [B, N, H]
        if uses_occupancy:
            losses["distill"] = self.distillation(
                tokens, enc.query_points, batch.images[:, 0], batch.intrinsics[:, 0], batch.cam2ego[:, 0]
            )
        if uses_llm:
            # 5. scene prefix once; 6. text streams reuse its KV cache; eq. 5 over answer tokens of both streams
            prefix = self.scene_prefix(tokens, batch.ego_state, batch.command)
            # Eq. 5 is averaged per stream, then summed: pooling the tokens of both streams would let the long
            # planning-reasoning answers outweigh the short QA answers (a few tokens) by an order of magnitude.
            # Within a stream, cfg.lm_mean "answer" also weighs each item's answer equally.
            lm = prefix.hidden.sum() * 0.0
            if batch.qa_input_ids is not None:
                qa_hidden = self.llm.run_text(prefix, batch.qa_input_ids, batch.qa_attention_mask)
                lm = lm + self.llm.lm_loss(qa_hidden, batch.qa_labels, cfg.lm_mean)
            plan_hidden = self.llm.run_text(prefix, batch.plan_input_ids, batch.plan_attention_mask)
            losses["lm"] = lm + self.llm.lm_loss(plan_hidden, batch.plan_labels, cfg.lm_mean)
            # 7. forecasting from T'_o (LLM states at the occupancy positions) and Q_L
            forecast = self.forecast(prefix, enc, batch.ego_state, batch.command)
            fore = forecast_losses(forecast, batch.future_points, batch.future_labels, batch.future_mask, cfg)
            losses["fore_cd"], losses["fore_focal"] = fore["cd"], fore["focal"]
            # 8. planner guided by the reasoning tokens T_r (teacher-forced reasoning answer) and the scene states
            reasoning_mask = batch.plan_labels != IGNORE_INDEX  # [B, Lp]
            ctx = self.planning_context(prefix, enc, batch.ego_state, batch.command, plan_hidden, reasoning_mask)
            plan = self.planner.loss(ctx, batch.gt_trajectory, batch.gt_trajectory_mask.bool())
            losses["plan_cls"], losses["plan_l1"] = plan["plan_cls"], plan["plan_l1"]
        # 9. eq. 12 (the terms are summed in LOSS_NAMES order)
        assert tuple(losses) == STAGE_LOSSES[stage], (tuple(losses), stage)
        weights = loss_weights(cfg)
        losses[TOTAL_LOSS] = sum(weights[k] * v for k, v in losses.items())
        return losses

    # ------------------------------------------------------------------ inference
    def _decode_sets(
        self, points: torch.Tensor, logits: torch.Tensor, threshold: float
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        out = [decode_occupancy(points[b], logits[b], self.cfg, threshold) for b in range(points.shape[0])]
        return [o[0] for o in out], [o[1] for o in out], [o[2] for o in out]

    @torch.no_grad()
    def predict(
        self,
        batch: DrivingBatch,
        generate_text: bool = False,
        question: Union[str, Sequence[str], None] = None,
        generator: Optional[torch.Generator] = None,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        plan: bool = True,
    ) -> PredictOutput:
        """Occupancy, T forecast frames, the plan and optionally text for a batch of key frames.

        The LLM always generates the driving reasoning (greedy) for the checkpoint's planning prompt
        (:attr:`plan_prompt`): its hidden states guide the planner.  The scene prefix is encoded once; the reasoning
        and the optional question reuse its KV cache.

        Args:
            batch: inputs (GT and text fields are ignored).
            generate_text: return the decoded reasoning text.
            question: a question (one for all items, or one per item) to answer about the scene.
            generator: RNG of the diffusion noise (deterministic plans with a seeded generator).
            score_threshold: occupancy score threshold of :func:`decode_occupancy`.
            plan: generate the driving reasoning and plan.  False skips both (the reasoning's greedy generation is
                most of a step's time; occupancy and forecast do not read it): the plan fields are None and
                ``generate_text`` must be False.
        Returns:
            :class:`PredictOutput`.
        """
        if generate_text and not plan:
            raise ValueError("generate_text needs plan=True: the reasoning text is generated for the plan")
        was_training = self.training
        self.eval()
        try:
            enc = self.encode_scene(batch)
            prefix = self.scene_prefix(self.scene_tokens(enc), batch.ego_state, batch.command)
            occ_points, occ_classes, occ_scores = self._decode_sets(
                enc.layer_points[-1], enc.layer_logits[-1], score_threshold
            )

            reasoning = self.reason(prefix) if plan else None
            answer = None
            if question is not None:
                questions = [question] * batch.batch_size if isinstance(question, str) else list(question)
                answer = self.answer(prefix, questions).texts

            forecast = self.forecast(prefix, enc, batch.ego_state, batch.command)
            per_frame = [self._decode_sets(p, l, score_threshold) for p, l in zip(forecast.points, forecast.logits)]
            planned = (
                self.plan(prefix, enc, reasoning, batch.ego_state, batch.command, generator=generator)
                if reasoning is not None
                else None
            )
            b_range = range(batch.batch_size)
            return PredictOutput(
                occupancy_points=occ_points,
                occupancy_classes=occ_classes,
                occupancy_scores=occ_scores,
                forecast_points=[[f[0][b] for f in per_frame] for b in b_range],
                forecast_classes=[[f[1][b] for f in per_frame] for b in b_range],
                forecast_scores=[[f[2][b] for f in per_frame] for b in b_range],
                plan=planned.plan if planned is not None else None,
                anchor_trajectories=planned.trajectories if planned is not None else None,
                anchor_scores=planned.scores if planned is not None else None,
                chosen_anchor=planned.chosen if planned is not None else None,
                reasoning=reasoning.texts if generate_text and reasoning is not None else None,
                answer=answer,
            )
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ parameters
    def _parts(self) -> "OrderedDict[str, list[nn.Parameter]]":
        distill_head = [p for n, p in self.distillation.named_parameters() if not n.startswith("teacher.")]
        return OrderedDict(
            [
                ("backbone", list(self.backbone.parameters())),
                ("occupancy encoder", list(self.occupancy_encoder.parameters())),
                ("distillation teacher (frozen CLIP)", list(self.distillation.teacher.parameters())),
                ("distillation projection + norms", distill_head),
                ("connector + ego token", list(self.connector.parameters()) + list(self.ego_token.parameters())),
                ("global queries", list(self.global_queries.parameters())),
                ("LLM base", self.llm.base_parameters()),
                ("LoRA", self.llm.lora_parameters()),
                ("forecaster", list(self.forecaster.parameters())),
                ("planner", list(self.planner.parameters())),
            ]
        )

    def parameter_table(self, trainable_only: bool = False) -> "OrderedDict[str, int]":
        """Parameters per part (backbone, occupancy encoder, distillation teacher, connector, global queries, LLM
        base, LoRA, forecaster, planner), counted once each; ``trainable_only`` counts the current stage's."""
        return OrderedDict((k, _unique_count(v, trainable_only)) for k, v in self._parts().items())

    # ------------------------------------------------------------------ checkpoints
    def _reloaded_keys(self, keys: Sequence[str]) -> set[str]:
        """State-dict keys not written to checkpoints because the config reloads them from local paths.

        A base LLM from ``llm_path`` (all non-LoRA LLM weights except the token embeddings and LM head, whose rows
        added for a larger tokenizer exist only in this model) and a CLIP teacher from ``clip_teacher_path``.
        """
        reloaded = set()
        if self.cfg.llm_path:
            wanted = {id(self.llm.base_model.get_input_embeddings().weight), id(self.llm.lm_head.weight)}
            embeddings = {f"llm.{n}" for n, p in self.llm.named_parameters() if id(p) in wanted}
            reloaded |= {k for k in keys if k.startswith("llm.") and "lora_" not in k and k not in embeddings}
        if self.cfg.clip_teacher_path:
            reloaded |= {k for k in keys if k.startswith("distillation.teacher.")}
        return reloaded

    def save_pretrained(self, directory: Union[str, Path], dtype: Optional[torch.dtype] = None) -> Path:
        """Write ``model.safetensors``, ``config.yaml`` and ``tokenizer/`` (no pickle).

        Weights that the config reloads from local paths (a base LLM from ``llm_path``, a CLIP teacher from
        ``clip_teacher_path``) are not duplicated; the anchors are buffers of the planner and are saved.

        Args:
            directory: output folder.
            dtype: store the floating-point *parameters* in this dtype (``torch.float16`` halves the file of a
                committed checkpoint); buffers (anchors, statistics) keep theirs.  :meth:`from_pretrained` loads
                them into the model's own dtype (float32 on CPU).
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors, aliases, by_storage = {}, {}, {}
        state = self.state_dict()
        parameters = {name for name, _ in self.named_parameters(remove_duplicate=False)}
        reloaded = self._reloaded_keys(list(state))
        for key, value in state.items():
            if key in reloaded:
                continue
            ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), value.dtype)
            if ident in by_storage:  # tied weights: store once, record the alias
                aliases[key] = by_storage[ident]
                continue
            by_storage[ident] = key
            value = value.detach()
            if dtype is not None and key in parameters and value.is_floating_point():
                value = value.to(dtype)
            tensors[key] = value.contiguous().cpu()
        save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "aliases": json.dumps(aliases)})
        self.cfg.to_yaml(directory / CONFIG_FILE)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: Union[str, Path], config: Optional[SparseOccVLAConfig] = None, map_location: str = "cpu"
    ) -> "SparseOccVLA":
        """Load a checkpoint written by :meth:`save_pretrained`.

        Args:
            directory: checkpoint folder.
            config: expected configuration; architecture fields must equal the saved ones (file-location fields
                :data:`PATH_FIELDS` may differ and then the given ones are used).
            map_location: device of the loaded tensors.
        Raises:
            FileNotFoundError: a checkpoint file is missing.
            ValueError: ``config`` differs from the checkpoint's config, or the weights do not fit the model.
        """
        from safetensors import safe_open
        from safetensors.torch import load_file

        directory = Path(directory)
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} not found: not a SparseOccVLA checkpoint folder")
        saved = SparseOccVLAConfig.from_yaml(directory / CONFIG_FILE)
        written = yaml.safe_load((directory / CONFIG_FILE).read_text()) or {}
        if "preset" not in written and "plan_regression" not in written:
            # a full config written before the field existed: that checkpoint was trained with the residual head
            saved = dataclasses.replace(saved, plan_regression="residual")
        cfg = saved
        if config is not None:
            diff = {k: v for k, v in saved.diff(config).items() if k not in PATH_FIELDS}
            if diff:
                lines = "\n".join(f"  {k}: checkpoint={a!r}, given={b!r}" for k, (a, b) in diff.items())
                raise ValueError(
                    f"the given config differs from the one {directory} was trained with:\n{lines}\n"
                    "load without a config (the checkpoint's is used) or fix these fields"
                )
            cfg = config
        tokenizer_dir = directory / TOKENIZER_DIR
        tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir.is_dir() else None
        loaded = cls(cfg, tokenizer=tokenizer)
        state = load_file(str(directory / WEIGHTS_FILE), device=map_location)
        with safe_open(str(directory / WEIGHTS_FILE), framework="pt") as f:
            aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
        for key, source in aliases.items():
            state[key] = state[source]
        result = loaded.load_state_dict(state, strict=False)
        reloaded = loaded._reloaded_keys(result.missing_keys)
        missing = [k for k in result.missing_keys if k not in reloaded]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"checkpoint {directory} does not fit the model: missing {missing[:10]}, "
                f"unexpected {list(result.unexpected_keys)[:10]}"
            )
        return loaded.to(map_location)
