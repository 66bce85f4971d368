"""The unified LLM (paper sec. 3.2): any Hugging Face causal LM, LoRA through ``peft``, the scene prefix as a KV cache.

Inputs are ``inputs_embeds`` = ``[T_o, T_g, T_ego, text]`` (occupancy tokens, global scene tokens, the ego token,
then the embedded text), with plain causal attention over all tokens (the paper: "we employ causal attention over
all tokens").  Understanding is trained with the MLE loss of eq. 5 on answer tokens.

Because the scene tokens come first and attention is causal, their hidden states do not depend on the text.  The
scene prefix is therefore run through the LLM **once** per frame; its KV cache then serves every text stream of the
frame (the QA answer, the planning reasoning, user questions through ``ask()``; docs/design.md §5).  After each
stream the cache is cropped back to the prefix.  The last hidden states of the prefix give ``T'_o`` for the
forecaster (eq. 6).
The cache is a transformers ``DynamicCache`` passed through the decoder's ``cache`` argument (``past_key_values``
on transformers releases from before that rename, which now warn about the old name on every call).

The LLM is loaded from ``cfg.llm_path`` (local files only, never a hub) or, when no path is given, built as a
``LlamaForCausalLM`` from ``cfg.llm_*`` - the paper preset then has Vicuna-7B's shapes.  LoRA (r, alpha, dropout,
target modules from the config; OmniDrive uses r=128 / alpha=16, docs/reference_choices.md §5.1) is always
attached; its ``B`` matrices start at zero, so the wrapped model equals the base model until stage 3 trains it.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .batch import IGNORE_INDEX
from .config import SparseOccVLAConfig
from .tokenizer import default_corpus, load_tokenizer, train_tokenizer


def resolve_tokenizer(cfg: SparseOccVLAConfig) -> PreTrainedTokenizerBase:
    """The tokenizer a config implies: ``tokenizer_path``, else ``llm_path``, else the project's trained BPE.

    Raises:
        FileNotFoundError: a configured path does not exist (nothing is downloaded).
    """
    if cfg.tokenizer_path:
        return load_tokenizer(cfg.tokenizer_path)
    if cfg.llm_path:
        return load_tokenizer(cfg.llm_path)
    return train_tokenizer(default_corpus(), cfg.llm_vocab_size)


def build_causal_lm(
    cfg: SparseOccVLAConfig, vocab_size: int, tokenizer: Optional[PreTrainedTokenizerBase]
) -> PreTrainedModel:
    """The base causal LM: local ``cfg.llm_path`` weights, or a Llama built from ``cfg.llm_*``.

    Args:
        cfg: model config.
        vocab_size: embedding rows; the embeddings are resized when a loaded model differs.
        tokenizer: sets bos/eos/pad ids of a config-built model (optional).
    Raises:
        FileNotFoundError: ``cfg.llm_path`` is set but is not a local folder.
    """
    if cfg.llm_path:
        path = Path(cfg.llm_path)
        if not path.is_dir():
            raise FileNotFoundError(
                f"llm_path {path} is not a local folder; give the path of a Hugging Face causal LM "
                "(e.g. a Vicuna-7B download) or set llm_path: null to build the LLM from the llm_* fields"
            )
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
        if model.get_input_embeddings().num_embeddings != vocab_size:
            model.resize_token_embeddings(vocab_size)
        return model
    special = {}
    if tokenizer is not None:
        special = dict(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.llm_hidden_size,
        num_hidden_layers=cfg.llm_num_layers,
        num_attention_heads=cfg.llm_num_heads,
        num_key_value_heads=cfg.llm_num_heads,
        intermediate_size=cfg.llm_intermediate_size,
        max_position_embeddings=cfg.llm_max_positions,
        tie_word_embeddings=False,  # Vicuna / Llama-2 untie input and output embeddings
        **special,
    )
    return LlamaForCausalLM(config)


def cache_keyword(decoder: nn.Module) -> str:
    """Name of the decoder's KV-cache argument: ``cache`` (current transformers) or ``past_key_values`` (older)."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def _crop_cache(cache: DynamicCache, length: int) -> None:
    """Drop every cached position after ``length`` (back to the scene prefix)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


@dataclass
class ScenePrefix:
    """The scene prefix after one LLM pass.

    Args:
        cache: KV cache of the prefix (cropped back to ``length`` after each text stream).
        hidden: [B, P, H] last hidden states of the prefix tokens ([T'_o, T'_g, T'_ego]).
        length: P, prefix tokens.
    """

    cache: DynamicCache
    hidden: torch.Tensor
    length: int


@dataclass
class GenerationOutput:
    """Greedy generation result.

    Args:
        token_ids: per item, the generated ids up to and including EOS.
        hidden: [B, Lg, H] last hidden states of the generated tokens (each fed back as input).
        mask: [B, Lg] bool, True for real generated tokens.
        texts: decoded strings (special tokens removed).
    """

    token_ids: list[list[int]]
    hidden: torch.Tensor
    mask: torch.Tensor
    texts: list[str]


class SceneLanguageModel(nn.Module):
    """The causal LM with LoRA, driven by ``inputs_embeds`` (paper sec. 3.2).

    Args:
        cfg: model config (llm_*, lora_*, max_new_tokens).
        vocab_size: vocabulary rows (= ``len(tokenizer)``).
        tokenizer: the model's tokenizer (for generation and special ids); None for a shape-only model.
    """

    def __init__(
        self, cfg: SparseOccVLAConfig, vocab_size: int, tokenizer: Optional[PreTrainedTokenizerBase] = None
    ) -> None:
        super().__init__()
        from peft import LoraConfig, get_peft_model  # imported here: peft import is slow and only needed once

        self.cfg = cfg
        self.tokenizer = tokenizer
        base = build_causal_lm(cfg, vocab_size, tokenizer)
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_target_modules),
            bias="none",
        )
        with warnings.catch_warnings():  # peft queries a transformers attribute deprecated in 5.x; harmless
            warnings.simplefilter("ignore", FutureWarning)
            self.model = get_peft_model(base, lora)
        self.hidden_size = base.config.hidden_size
        self._cache_keyword = cache_keyword(self.decoder)

    def _run_decoder(self, cache: DynamicCache, **inputs: torch.Tensor) -> torch.Tensor:
        """The decoder with ``cache`` as its KV cache (extended in place); returns [B, L, H] last hidden states."""
        return self.decoder(**inputs, **{self._cache_keyword: cache}, use_cache=True).last_hidden_state

    # ------------------------------------------------------------------ pieces of the wrapped model
    @property
    def base_model(self) -> PreTrainedModel:
        """The causal LM with the LoRA layers injected in place."""
        return self.model.get_base_model()

    @property
    def decoder(self) -> nn.Module:
        """The transformer without the LM head (hidden states out)."""
        return self.base_model.get_decoder()

    @property
    def lm_head(self) -> nn.Module:
        return self.base_model.get_output_embeddings()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, L] -> embeddings [B, L, H]."""
        return self.base_model.get_input_embeddings()(input_ids)

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if "lora_" in n]

    def base_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if "lora_" not in n]

    # ------------------------------------------------------------------ scene prefix + text streams
    def encode_prefix(self, prefix_embeds: torch.Tensor) -> ScenePrefix:
        """Run the scene tokens once and keep their KV cache.

        Args:
            prefix_embeds: [B, P, H] ``[T_o, T_g, T_ego]``.
        Returns:
            :class:`ScenePrefix` with the cache and [B, P, H] last hidden states.
        """
        cache = DynamicCache()
        hidden = self._run_decoder(cache, inputs_embeds=prefix_embeds)
        return ScenePrefix(cache=cache, hidden=hidden, length=prefix_embeds.shape[1])

    def run_text(self, prefix: ScenePrefix, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Teacher-forced text stream after the cached prefix; the cache is cropped back afterwards.

        Args:
            prefix: from :meth:`encode_prefix`.
            input_ids: [B, L] right-padded text.
            attention_mask: [B, L] 1 for real tokens.
        Returns:
            [B, L] -> [B, L, H] last hidden states of the text positions.
        """
        batch, length = input_ids.shape
        full_mask = torch.cat([attention_mask.new_ones(batch, prefix.length), attention_mask], dim=1)  # [B, P+L]
        positions = torch.arange(prefix.length, prefix.length + length, device=input_ids.device).expand(batch, -1)
        hidden = self._run_decoder(
            prefix.cache, inputs_embeds=self.embed(input_ids), attention_mask=full_mask, position_ids=positions
        )
        _crop_cache(prefix.cache, prefix.length)
        return hidden

    def lm_loss_terms(self, text_hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Eq. 5 (summed) over labelled tokens; the LM head runs only where a label exists.

        Args:
            text_hidden: [B, L, H] hidden states of a text stream (from :meth:`run_text`).
            labels: [B, L] token ids on answer tokens, IGNORE_INDEX elsewhere (unshifted, like ``input_ids``).
        Returns:
            (sum of token negative log-likelihoods, number of labelled tokens).
        """
        # hidden state at position j predicts the token at j + 1; the first text token (BOS) is never a label.
        targets = labels[:, 1:]  # [B, L-1]
        keep = targets != IGNORE_INDEX
        count = int(keep.sum())
        if count == 0:
            return text_hidden.sum() * 0.0, 0
        logits = self.lm_head(text_hidden[:, :-1][keep])  # [M, vocab]
        return F.cross_entropy(logits.float(), targets[keep], reduction="sum"), count

    def lm_loss(self, text_hidden: torch.Tensor, labels: torch.Tensor, mean: str = "token") -> torch.Tensor:
        """Eq. 5 of a text stream, averaged over the batch's answer tokens (``mean="token"``) or per answer, then
        over the answers that have a label (``mean="answer"``).  Zero (with a graph) when nothing is labelled.

        Args:
            text_hidden: [B, L, H] hidden states of a text stream (from :meth:`run_text`).
            labels: [B, L] as in :meth:`lm_loss_terms`.
            mean: "token" or "answer" (``SparseOccVLAConfig.lm_mean``).
        """
        if mean == "token":
            nll, count = self.lm_loss_terms(text_hidden, labels)
            return nll / max(1, count)
        if mean != "answer":
            raise ValueError(f"mean must be 'token' or 'answer', got {mean!r}")
        targets = labels[:, 1:]  # [B, L-1]
        keep = targets != IGNORE_INDEX
        per_row = keep.sum(dim=1)  # [B]
        if int(per_row.sum()) == 0:
            return text_hidden.sum() * 0.0
        logits = self.lm_head(text_hidden[:, :-1][keep])  # [M, vocab]
        nll = F.cross_entropy(logits.float(), targets[keep], reduction="none")  # [M]
        rows = keep.nonzero()[:, 0]  # [M] row of each labelled token
        row_sum = nll.new_zeros(labels.shape[0]).index_add(0, rows, nll)  # [B]
        answered = per_row > 0
        return (row_sum[answered] / per_row[answered].to(nll.dtype)).mean()

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self, prefix: ScenePrefix, prompts: Sequence[Sequence[int]], max_new_tokens: Optional[int] = None
    ) -> GenerationOutput:
        """Greedy decoding after the cached scene prefix; one batched pass for prompts of different lengths.

        Prompts of different lengths are left-padded inside the text segment (padding masked, position ids counted
        over real tokens only) so that they all end at the same position and every item's answer starts together.
        The cache is cropped back to the prefix at the end, ready for the next question.

        Args:
            prefix: from :meth:`encode_prefix` (batch B).
            prompts: B token-id lists (chat-formatted, ending where the answer starts).
            max_new_tokens: cap; default ``cfg.max_new_tokens``.
        Returns:
            :class:`GenerationOutput`; hidden states of generated tokens as the planner's reasoning tokens T_r.
        """
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer (shape-only build); give tokenizer_path or llm_path")
        max_new = self.cfg.max_new_tokens if max_new_tokens is None else max_new_tokens
        if max_new < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new}")
        batch = prefix.hidden.shape[0]
        if len(prompts) != batch:
            raise ValueError(f"got {len(prompts)} prompts for a scene batch of {batch}")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt")
        device = prefix.hidden.device
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        width = max(len(p) for p in prompts)
        ids = torch.full((batch, width), pad, dtype=torch.long, device=device)
        text_mask = torch.zeros(batch, width, dtype=torch.long, device=device)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.as_tensor(list(p), device=device)
            text_mask[i, width - len(p) :] = 1
        mask = torch.cat([text_mask.new_ones(batch, prefix.length), text_mask], dim=1)  # [B, P+W]
        positions = prefix.length + (text_mask.cumsum(1) - 1).clamp(min=0)  # [B, W], pads reuse a real position
        out = self._run_decoder(
            prefix.cache, inputs_embeds=self.embed(ids), attention_mask=mask, position_ids=positions
        )
        next_pos = positions[:, -1:] + 1  # [B, 1]
        token = self.lm_head(out[:, -1]).argmax(-1)  # [B]
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        tokens, valid, hidden = [], [], []
        for _ in range(max_new):
            tokens.append(token)
            valid.append(~done)
            done = done | (token == eos)
            mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
            # feed the generated token: its hidden state is what the planner reads (as in teacher-forced training)
            step = self._run_decoder(
                prefix.cache, inputs_embeds=self.embed(token[:, None]), attention_mask=mask, position_ids=next_pos
            )
            hidden.append(step[:, 0])
            if bool(done.all()):
                break
            next_pos = next_pos + 1
            token = self.lm_head(step[:, -1]).argmax(-1)
        _crop_cache(prefix.cache, prefix.length)
        token_mat = torch.stack(tokens, 1)  # [B, Lg]
        valid_mat = torch.stack(valid, 1)  # [B, Lg]
        token_ids = [token_mat[i][valid_mat[i]].tolist() for i in range(batch)]
        texts = self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)
        return GenerationOutput(
            token_ids=token_ids, hidden=torch.stack(hidden, 1), mask=valid_mat, texts=[t.strip() for t in texts]
        )
