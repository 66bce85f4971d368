"""Text-only training of a randomly initialised LLM before stage 2 (``sparseoccvla pretrain-llm``).

The paper's LLM arrives pretrained (Vicuna-7B): stage 2 aligns the scene tokens to a model that already speaks, and
stage 3 tunes it through LoRA.  A preset that builds its LLM from random weights (``llm_path: null``, e.g. the tiny
one) starts stage 2 with a model that has seen no text, so stage 2's eq.-5 loss stays at its initial value (the LLM
is frozen there) and the LLM learns language only in stage 3, from one answer per key frame.  On the default
checkpoint that left the answers to nuScenes-QA at one prior per question template, blind to the object the
question names (docs/experiments.md §8).

This step fills the role of the missing language pretraining, with the only text the project has: every
understanding pair and planning-reasoning text of the training split (:meth:`DrivingDataset.text_pairs`), encoded
as the stages encode them (the chat prompt, eq. 5 on the answer tokens and EOS), but with no scene prefix.  Only
the LLM's base weights train (embeddings, decoder, LM head; LoRA stays at zero); the rest of the stage-1 model is
copied unchanged.  Attention is causal and the LLM's positions are rotary, so a text's hidden states do not depend
on where it starts: the text-only sequences see the same relative positions as in the stages.

    sparseoccvla pretrain-llm --init runs/s1 --data data/synth --out runs/s1_text --epochs 12

The output is a stage-1 model folder (its ``trainer_state.json`` says stage 1, ``init`` the stage-1 folder), so
stage 2 takes it as ``--init``; ``text_loss.csv`` holds the per-epoch training and validation NLL.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from .model import SparseOccVLA

TEXT_LOSS_FILE = "text_loss.csv"


@dataclass(frozen=True)
class EncodedText:
    """One (prompt, answer) pair as the stages see it: token ids and eq.-5 labels (IGNORE_INDEX on the prompt)."""

    ids: list[int]
    labels: list[int]


def encode_pairs(
    tokenizer: "PreTrainedTokenizerBase", pairs: Sequence[tuple[str, str]], max_tokens: int
) -> list[EncodedText]:
    """Encode (question, answer) pairs with :func:`tokenizer.encode_qa` (same prompt, truncation and EOS)."""
    from .tokenizer import encode_qa

    out = []
    for question, answer in pairs:
        ids, labels = encode_qa(tokenizer, question, answer, max_tokens)
        out.append(EncodedText(ids, labels))
    return out


def pad_batch(texts: Sequence[EncodedText], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad to [B, Lmax]: (input_ids, attention_mask, labels) as the training collate pads a text stream."""
    from .data.dataset import _pad_text

    return _pad_text([t.ids for t in texts], [t.labels for t in texts], pad_id)


def text_loss(model: "SparseOccVLA", ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 5 of a text-only batch through the model's LLM, averaged as the config's ``lm_mean`` says."""
    llm = model.llm
    hidden = llm.decoder(inputs_embeds=llm.embed(ids), attention_mask=mask, use_cache=False).last_hidden_state
    return llm.lm_loss(hidden, labels, model.cfg.lm_mean)


@torch.no_grad()
def mean_answer_nll(model: "SparseOccVLA", texts: Sequence[EncodedText], batch_size: int) -> float:
    """Mean over answers of each answer's per-token NLL (nats), the model in eval mode."""
    if not texts:
        return float("nan")
    was_training = model.training
    model.eval()
    pad = model.tokenizer.pad_token_id
    total, n = 0.0, 0
    try:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            ids, mask, labels = pad_batch(chunk, pad)
            hidden = model.llm.decoder(
                inputs_embeds=model.llm.embed(ids), attention_mask=mask, use_cache=False
            ).last_hidden_state
            total += float(model.llm.lm_loss(hidden, labels, "answer")) * len(chunk)
            n += len(chunk)
    finally:
        model.train(was_training)
    return total / n


def pretrain_llm(
    model: "SparseOccVLA",
    train_texts: Sequence[EncodedText],
    val_texts: Sequence[EncodedText],
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    warmup_steps: int = 50,
    weight_decay: float = 0.01,
    log_path: Optional[Path] = None,
) -> list[dict[str, float]]:
    """Train the LLM's base weights on ``train_texts``; every other parameter (LoRA included) stays frozen.

    AdamW with the stages' schedule (:func:`training.lr_factor`: linear warm-up, half-cosine decay to 1 % of
    ``lr``), gradients clipped at norm 1, shuffled batches from a seeded RNG.  After each epoch the mean
    per-answer NLL of ``val_texts`` is measured.

    Returns:
        One row per epoch: ``epoch``, ``updates``, ``train_nll`` (mean of the epoch's batch losses), ``val_nll``,
        ``wall_s`` (seconds since the start).  Written to ``log_path`` as CSV too when given.
    Raises:
        ValueError: no training text, or a non-finite loss (names the epoch and update).
    """
    from .training import lr_factor

    if not train_texts:
        raise ValueError("no training text: the split has no understanding pair or planning text")
    params = model.llm.base_parameters()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    per_epoch = math.ceil(len(train_texts) / batch_size)
    total = per_epoch * epochs
    rng = random.Random(seed)
    pad = model.tokenizer.pad_token_id
    history: list[dict[str, float]] = []
    t0, step = time.perf_counter(), 0
    model.train()
    for epoch in range(epochs):
        order = list(range(len(train_texts)))
        rng.shuffle(order)
        losses = []
        for start in range(0, len(order), batch_size):
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_factor(step, total, warmup_steps, 0.1, 0.01)
            ids, mask, labels = pad_batch([train_texts[k] for k in order[start : start + batch_size]], pad)
            loss = text_loss(model, ids, mask, labels)
            if not torch.isfinite(loss):
                raise ValueError(f"non-finite text loss at epoch {epoch + 1} update {step + 1}: lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
        row = {
            "epoch": epoch + 1,
            "updates": step,
            "train_nll": sum(losses) / len(losses),
            "val_nll": mean_answer_nll(model, val_texts, batch_size),
            "wall_s": time.perf_counter() - t0,
        }
        history.append(row)
        print(
            f"text epoch {epoch + 1}/{epochs}: train NLL {row['train_nll']:.3f}, val NLL {row['val_nll']:.3f} "
            f"(per answer token), {row['wall_s']:.0f} s"
        )
        if log_path is not None:
            with open(log_path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(row))
                writer.writeheader()
                writer.writerows(history)
    for p in model.parameters():
        p.requires_grad_(False)
    return history


# ============================================================================ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--init", required=True, help="output folder of stage 1 (the model whose LLM is trained)")
    parser.add_argument("--data", required=True, help="dataset root (the one the stages train on)")
    parser.add_argument("--out", required=True, help="output folder (a stage-1 model folder; stage 2's --init)")
    parser.add_argument("--train-config", default=None, help="training config YAML: its train_split, qa_sources, seed")
    parser.add_argument("--epochs", type=int, default=12, help="passes over the training text (default 12)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per update (default 32)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    parser.add_argument("--val-split", default="val", help="split whose text measures the NLL each epoch ('' = none)")


def _split_texts(root: Path, split: str, model: "SparseOccVLA", options) -> list[tuple[str, str]]:
    from .data.dataset import DrivingDataset

    return DrivingDataset(root, split, model.cfg, None, options).text_pairs()


def run(args: argparse.Namespace) -> int:
    from .data.layout import resolve_layout
    from .model import SparseOccVLA
    from .train_config import TrainConfig
    from .training import STATE_FILE, StageState, check_fresh_out_dir, dataset_options

    init, out = Path(args.init), Path(args.out)
    state = StageState.read(init) if (init / STATE_FILE).is_file() else None
    if state is None or state.stage != 1:
        raise ValueError(f"--init {init} must be the output folder of 'sparseoccvla train --stage 1'")
    check_fresh_out_dir(out)
    tcfg = TrainConfig.from_yaml(args.train_config) if args.train_config else TrainConfig.tiny()
    model = SparseOccVLA.from_pretrained(init)
    if model.cfg.llm_path:
        raise ValueError(
            f"{init} loads a pretrained LLM from llm_path {model.cfg.llm_path}; text pretraining is for an LLM "
            "built from random weights (llm_path: null)"
        )
    torch.manual_seed(tcfg.seed)
    root = resolve_layout(args.data).root
    options = dataset_options(tcfg, 2, model.cfg)
    train_pairs = _split_texts(root, tcfg.train_split, model, options)
    val_pairs = _split_texts(root, args.val_split, model, options) if args.val_split else []
    tok, limit = model.tokenizer, model.cfg.max_text_tokens
    train_texts, val_texts = encode_pairs(tok, train_pairs, limit), encode_pairs(tok, val_pairs, limit)
    print(
        f"text pretraining: {len(train_texts)} training texts ({tcfg.train_split}), {len(val_texts)} validation "
        f"texts ({args.val_split or 'none'}), {args.epochs} epochs of {math.ceil(len(train_texts) / args.batch_size)} "
        f"updates"
    )
    out.mkdir(parents=True, exist_ok=True)
    history = pretrain_llm(
        model, train_texts, val_texts, args.epochs, args.batch_size, args.lr, tcfg.seed, log_path=out / TEXT_LOSS_FILE
    )
    model.save_pretrained(out)
    StageState(1, state.epoch, state.epochs, state.global_step, state.updates_per_epoch, True, str(init)).write(out)
    print(f"text pretraining: val NLL {history[0]['val_nll']:.3f} -> {history[-1]['val_nll']:.3f} -> {out}")
    return 0
