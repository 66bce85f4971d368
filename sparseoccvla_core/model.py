"""SparseOccVLA: the full model (paper sec. 3, sec. 4.2, appendix A), assembled from one module per paper part.

Data flow (``forward`` numbers the same steps):

1. ``backbone`` - ResNet + FPN features of every view of every frame (part 1).
2. ``occupancy_encoder`` - sparse occupancy queries Q_L, their points and classes (sec. 3.1, part 2).
3. Occupancy losses eq. 10: Chamfer (eq. 1) on every layer incl. P_0 + lambda_focal * focal (``losses.py``).
4. ``connector`` - occupancy tokens T_o (eq. 2); ``distillation`` against the frozen CLIP teacher (eq. 3).
5. ``global_queries`` (eq. 4) and ``ego_token`` -> scene prefix ``[T_o, T_g, T_ego]`` -> ``llm`` once, KV cached.
6. Text streams after the cached prefix: QA answers and planning reasoning, MLE loss (eq. 5).
7. ``forecaster`` - eq. 6 fusion of T'_o and Q_L, eq. 7 embeddings, recursive over T frames; loss eq. 11.
8. ``planner`` - LLM-guided anchor scoring + truncated anchor diffusion (sec. 3.3, eq. 8).
9. Total loss eq. 12: L_occ (+ distillation) + L_LM + L_fore + L_diff (plan BCE + L1).

Training stages (sec. 4.2, :meth:`SparseOccVLA.set_stage`): 1 = encoder + connector with occupancy and distillation
losses; 2 = encoder frozen, connector / global queries / ego token / forecaster / planner trained with the LLM frozen
(LM, forecast and plan losses); 3 = everything except the LLM's base weights, the LLM through LoRA (all losses).

Example::

    model = SparseOccVLA(SparseOccVLAConfig.tiny())
    losses = model(batch, stage=3); losses["loss"].backward()
    out = model.predict(batch, generate_text=True, question="Is there a pedestrian ahead?")
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
from .batch import IGNORE_INDEX, DrivingBatch
from .config import SparseOccVLAConfig
from .connector import EgoStateEncoder, GlobalSceneQueries, OccupancyConnector
from .distill import DistillationLoss
from .forecaster import ForecastOutput, OccupancyForecaster, forecast_losses
from .llm import ScenePrefix, SceneLanguageModel, resolve_tokenizer
from .losses import occupancy_losses
from .occupancy_encoder import EncoderOutput, SparseOccupancyEncoder, decode_occupancy
from .planner import AnchorDiffusionPlanner
from .tokenizer import encode_qa, load_tokenizer

#: Planning prompt used by ``predict`` when the batch carries none (one of the project's driving questions).
DEFAULT_PLAN_QUESTION: str = "What should the ego vehicle do next and why?"
#: Default occupancy score threshold of ``predict``: SparseWorld's test threshold for most classes (REFERENCE_FACTS §1.2).
DEFAULT_SCORE_THRESHOLD: float = 0.35
#: Loss terms each training stage computes (sec. 4.2).
STAGE_LOSSES: dict[int, tuple[str, ...]] = {
    1: ("occ_cd", "occ_focal", "distill"),
    2: ("lm", "fore_cd", "fore_focal", "plan_cls", "plan_l1"),
    3: ("occ_cd", "occ_focal", "distill", "lm", "fore_cd", "fore_focal", "plan_cls", "plan_l1"),
}
#: Submodules trained in each stage; the LLM is special-cased (stage 3: LoRA only; never its base weights).
STAGE_MODULES: dict[int, tuple[str, ...]] = {
    1: ("backbone", "occupancy_encoder", "connector", "distillation"),
    2: ("connector", "global_queries", "ego_token", "forecaster", "planner"),
    3: ("backbone", "occupancy_encoder", "connector", "distillation", "global_queries", "ego_token", "forecaster", "planner"),
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
        plan: [B, T_plan, 2] planned waypoints (x, y).
        anchor_trajectories: [B, K, T_plan, 2] denoised trajectory of every anchor.
        anchor_scores: [B, K] anchor probabilities from the LLM-guided scorer.
        chosen_anchor: [B] int64 index of the selected anchor.
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
    plan: torch.Tensor
    anchor_trajectories: torch.Tensor
    anchor_scores: torch.Tensor
    chosen_anchor: torch.Tensor
    reasoning: Optional[list[str]] = None
    answer: Optional[list[str]] = None


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

    # ------------------------------------------------------------------ shared steps
    def _encode(self, batch: DrivingBatch) -> EncoderOutput:
        """Steps 1-2: backbone features and the sparse occupancy encoder."""
        features = self.backbone.forward_multiview(batch.images)  # per level [B, F, V, C, h, w]
        image_size = (int(batch.images.shape[-2]), int(batch.images.shape[-1]))
        return self.occupancy_encoder(
            features, batch.intrinsics, batch.cam2ego, batch.ego2global, batch.frame_valid, batch.ego_state, image_size
        )

    def _prefix_embeds(self, tokens: torch.Tensor, batch: DrivingBatch) -> torch.Tensor:
        """``[T_o, T_g (eq. 4), T_ego]``: [B, N, H] occupancy tokens -> [B, N + G + 1, H]."""
        global_tokens = self.global_queries(tokens)  # [B, G, H]
        ego = self.ego_token(batch.ego_state.to(tokens.dtype), batch.command)  # [B, 1, H]
        return torch.cat([tokens, global_tokens, ego], dim=1)  # [B, N+G+1, H]

    def _scene_prefix(self, tokens: torch.Tensor, batch: DrivingBatch) -> ScenePrefix:
        """Step 5: the scene prefix through the LLM once (KV cached)."""
        return self.llm.encode_prefix(self._prefix_embeds(tokens, batch))

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
        enc = self._encode(batch)
        prefix = self._prefix_embeds(self.connector(enc.queries, enc.query_points), batch)
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
            dict with the stage's terms (unweighted; see :data:`STAGE_LOSSES`) and ``loss``, their eq.-12 sum:
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
        enc = self._encode(batch)
        ego_state = batch.ego_state.to(enc.queries.dtype)
        # 3. eq. 10 on the concatenated (extended-range) GT when the loader provides it (appendix A)
        if uses_occupancy:
            concat = batch.occ_concat_points is not None
            gt_points = batch.occ_concat_points if concat else batch.occ_points
            gt_labels = batch.occ_concat_labels if concat else batch.occ_labels
            gt_mask = batch.occ_concat_mask if concat else batch.occ_mask
            occ = occupancy_losses(enc.layer_points, enc.layer_logits, gt_points, gt_labels, gt_mask, cfg, include_p0=True)
            losses["occ_cd"], losses["occ_focal"] = occ["cd"], occ["focal"]
        # 4. occupancy tokens (eq. 2) and distillation (eq. 3) on the current frame
        tokens = self.connector(enc.queries, enc.query_points)  # [B, N, H]
        if uses_occupancy:
            losses["distill"] = self.distillation(
                tokens, enc.query_points, batch.images[:, 0], batch.intrinsics[:, 0], batch.cam2ego[:, 0]
            )
        if uses_llm:
            n = cfg.num_queries
            # 5. scene prefix once; 6. text streams reuse its KV cache; eq. 5 over answer tokens of both streams
            prefix = self._scene_prefix(tokens, batch)
            # Eq. 5 is averaged per stream, then summed: pooling the tokens of both streams would let the long
            # planning-reasoning answers outweigh the short QA answers (a few tokens) by an order of magnitude.
            lm = prefix.hidden.sum() * 0.0
            if batch.qa_input_ids is not None:
                qa_hidden = self.llm.run_text(prefix, batch.qa_input_ids, batch.qa_attention_mask)
                qa_nll, qa_count = self.llm.lm_loss_terms(qa_hidden, batch.qa_labels)
                lm = lm + qa_nll / max(1, qa_count)
            plan_hidden = self.llm.run_text(prefix, batch.plan_input_ids, batch.plan_attention_mask)
            plan_nll, plan_count = self.llm.lm_loss_terms(plan_hidden, batch.plan_labels)
            losses["lm"] = lm + plan_nll / max(1, plan_count)
            # 7. forecasting from T'_o (LLM states at the occupancy positions) and Q_L
            forecast = self.forecaster(prefix.hidden[:, :n], enc.queries, enc.query_points, ego_state, batch.command)
            fore = forecast_losses(forecast, batch.future_points, batch.future_labels, batch.future_mask, cfg)
            losses["fore_cd"], losses["fore_focal"] = fore["cd"], fore["focal"]
            # 8. planner guided by the reasoning tokens T_r (teacher-forced reasoning answer) and the scene states
            reasoning_mask = batch.plan_labels != IGNORE_INDEX  # [B, Lp]
            ctx = self.planner.context(
                enc.queries, enc.query_points, ego_state, batch.command, plan_hidden, reasoning_mask,
                prefix.hidden[:, n:],
            )
            plan = self.planner.loss(ctx, batch.gt_trajectory, batch.gt_trajectory_mask.bool())
            losses["plan_cls"], losses["plan_l1"] = plan["plan_cls"], plan["plan_l1"]
        # 9. eq. 12
        weights = {
            "occ_cd": 1.0, "occ_focal": cfg.lambda_focal, "distill": cfg.distill_weight, "lm": 1.0,
            "fore_cd": 1.0, "fore_focal": cfg.lambda_focal, "plan_cls": cfg.plan_cls_weight,
            "plan_l1": cfg.plan_reg_weight,
        }
        losses["loss"] = sum(weights[k] * v for k, v in losses.items())
        return losses

    # ------------------------------------------------------------------ inference
    def _plan_prompts(self, batch: DrivingBatch) -> list[list[int]]:
        """Per item, the planning prompt (the batch's plan prompt without its answer, or the default question)."""
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer (shape-only build); give tokenizer_path or llm_path")
        if batch.plan_input_ids is None:
            prompt = encode_qa(self.tokenizer, DEFAULT_PLAN_QUESTION, None, self.cfg.max_text_tokens)[0]
            return [prompt] * batch.batch_size
        prompts = []
        for ids, mask, labels in zip(batch.plan_input_ids, batch.plan_attention_mask, batch.plan_labels):
            answer = (labels != IGNORE_INDEX).nonzero()
            end = int(answer[0, 0]) if len(answer) else int(mask.sum())
            prompts.append(ids[:end][mask[:end].bool()].tolist())
        return prompts

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
    ) -> PredictOutput:
        """Occupancy, T forecast frames, the plan and optionally text for a batch of key frames.

        The LLM always generates the driving reasoning (greedy): its hidden states guide the planner.  The scene
        prefix is encoded once; the reasoning and the optional question reuse its KV cache.

        Args:
            batch: inputs (GT fields are ignored; ``plan_*`` gives the planning prompt when present).
            generate_text: return the decoded reasoning text.
            question: a question (one for all items, or one per item) to answer about the scene.
            generator: RNG of the diffusion noise (deterministic plans with a seeded generator).
            score_threshold: occupancy score threshold of :func:`decode_occupancy`.
        Returns:
            :class:`PredictOutput`.
        """
        was_training = self.training
        self.eval()
        try:
            cfg, n = self.cfg, self.cfg.num_queries
            enc = self._encode(batch)
            ego_state = batch.ego_state.to(enc.queries.dtype)
            tokens = self.connector(enc.queries, enc.query_points)
            prefix = self._scene_prefix(tokens, batch)
            occ_points, occ_classes, occ_scores = self._decode_sets(enc.layer_points[-1], enc.layer_logits[-1], score_threshold)

            reasoning = self.llm.generate(prefix, self._plan_prompts(batch))
            answer = None
            if question is not None:
                questions = [question] * batch.batch_size if isinstance(question, str) else list(question)
                if len(questions) != batch.batch_size:
                    raise ValueError(f"got {len(questions)} questions for {batch.batch_size} items")
                prompts = [encode_qa(self.tokenizer, q, None, cfg.max_text_tokens)[0] for q in questions]
                answer = self.llm.generate(prefix, prompts).texts

            forecast: ForecastOutput = self.forecaster(
                prefix.hidden[:, :n], enc.queries, enc.query_points, ego_state, batch.command
            )
            per_frame = [self._decode_sets(p, l, score_threshold) for p, l in zip(forecast.points, forecast.logits)]
            ctx = self.planner.context(
                enc.queries, enc.query_points, ego_state, batch.command, reasoning.hidden, reasoning.mask,
                prefix.hidden[:, n:],
            )
            plan = self.planner.sample(ctx, generator=generator)
            b_range = range(batch.batch_size)
            return PredictOutput(
                occupancy_points=occ_points,
                occupancy_classes=occ_classes,
                occupancy_scores=occ_scores,
                forecast_points=[[f[0][b] for f in per_frame] for b in b_range],
                forecast_classes=[[f[1][b] for f in per_frame] for b in b_range],
                forecast_scores=[[f[2][b] for f in per_frame] for b in b_range],
                plan=plan.plan,
                anchor_trajectories=plan.trajectories,
                anchor_scores=plan.scores,
                chosen_anchor=plan.chosen,
                reasoning=reasoning.texts if generate_text else None,
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

    def save_pretrained(self, directory: Union[str, Path]) -> Path:
        """Write ``model.safetensors``, ``config.yaml`` and ``tokenizer/`` (no pickle).

        Weights that the config reloads from local paths (a base LLM from ``llm_path``, a CLIP teacher from
        ``clip_teacher_path``) are not duplicated; the anchors are buffers of the planner and are saved.
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors, aliases, by_storage = {}, {}, {}
        state = self.state_dict()
        reloaded = self._reloaded_keys(list(state))
        for key, value in state.items():
            if key in reloaded:
                continue
            ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), value.dtype)
            if ident in by_storage:  # tied weights: store once, record the alias
                aliases[key] = by_storage[ident]
                continue
            by_storage[ident] = key
            tensors[key] = value.detach().contiguous().cpu()
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
        model = cls(cfg, tokenizer=tokenizer)
        state = load_file(str(directory / WEIGHTS_FILE), device=map_location)
        with safe_open(str(directory / WEIGHTS_FILE), framework="pt") as f:
            aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
        for key, source in aliases.items():
            state[key] = state[source]
        result = model.load_state_dict(state, strict=False)
        reloaded = model._reloaded_keys(result.missing_keys)
        missing = [k for k in result.missing_keys if k not in reloaded]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"checkpoint {directory} does not fit the model: missing {missing[:10]}, "
                f"unexpected {list(result.unexpected_keys)[:10]}"
            )
        return model.to(map_location)
