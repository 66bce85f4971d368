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
stage 2 takes it as ``--init``.  The text trains through the stages' own loop (:func:`training.train_stage`: one
:func:`training.update_policy` per batch, ``losses.csv`` from the same loss logger, a checkpoint per epoch) with
the optimisation of :class:`TextSchedule`; ``text_loss.csv`` adds the per-epoch training and validation NLL.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from .batch import pad_text
from .model import TOTAL_LOSS
from .train_config import TrainConfig
from .training import LOSS_CSV, StageState, read_loss_csv, train_stage

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from .model import SparseOccVLA

TEXT_LOSS_FILE = "text_loss.csv"
#: the column of ``losses.csv`` the text loss is logged in: eq. 5, the model's own language-modelling term
TEXT_LOSS_NAME = "lm"
#: the output folder's ``trainer_state.json`` says stage 1: stage 2 takes the folder as its ``--init``
TEXT_STAGE = 1


@dataclass(frozen=True)
class TextSchedule:
    """Optimisation of the text step: the stages' AdamW and warm-up + cosine schedule, with values of its own.

    Args:
        epochs: passes over the training text.
        batch_size: texts per optimizer update.
        lr: peak learning rate (a random LLM learns text at a rate the stages' 2e-4 would take far longer for).
        warmup_steps: updates of linear warm-up (a few hundred updates in all: a short warm-up).
        warmup_start_ratio: learning-rate factor at update 0.
        min_lr_ratio: learning-rate factor at the end of the cosine decay.
        grad_clip: maximum global gradient norm.
        weight_decay: AdamW weight decay (weight matrices).
    """

    epochs: int = 12
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 50
    warmup_start_ratio: float = 0.1
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0
    weight_decay: float = 0.01

    def train_config(self, seed: int) -> TrainConfig:
        """The :class:`TrainConfig` :func:`training.train_stage` runs the text step with (fp32, no workers)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "epochs"}
        return TrainConfig(**fields, epochs=(self.epochs,) * 3, seed=seed, mixed_precision="no", num_workers=0)


@dataclass(frozen=True)
class EncodedText:
    """One (prompt, answer) pair as the stages see it: token ids and eq.-5 labels (IGNORE_INDEX on the prompt)."""

    ids: list[int]
    labels: list[int]


@dataclass
class TextBatch:
    """Right-padded text-only sequences [B, L] (:func:`sparseoccvla_core.batch.pad_text`)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device) -> "TextBatch":
        return TextBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels)))


class TextDataset(Dataset):
    """Encoded texts as a dataset; :meth:`collate` pads a list of them into a :class:`TextBatch`."""

    def __init__(self, texts: Sequence[EncodedText], pad_id: int) -> None:
        self.texts, self.pad_id = list(texts), pad_id

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> EncodedText:
        return self.texts[index]

    def collate(self, texts: Sequence[EncodedText]) -> TextBatch:
        return TextBatch(*pad_batch(texts, self.pad_id))


class TextOnlyLLM(nn.Module):
    """A :class:`training.StageModel` over the model's LLM alone: trains its base weights on text-only batches.

    ``set_stage`` freezes everything but the LLM's base weights (embeddings, decoder, LM head; LoRA stays at zero);
    calling it returns eq. 5 as the ``lm`` loss; ``save_pretrained`` saves the whole model.
    """

    def __init__(self, model: "SparseOccVLA") -> None:
        super().__init__()
        self.model = model

    def set_stage(self, stage: int, train_llm_base: bool = True) -> None:
        self.model.requires_grad_(False)
        for p in self.model.llm.base_parameters():
            p.requires_grad_(True)

    def forward(self, batch: TextBatch, stage: int) -> dict[str, torch.Tensor]:
        loss = text_loss(self.model, batch.input_ids, batch.attention_mask, batch.labels)
        return {TEXT_LOSS_NAME: loss, TOTAL_LOSS: loss}

    def save_pretrained(self, directory: str | Path) -> None:
        self.model.save_pretrained(directory)


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
    return pad_text([t.ids for t in texts], [t.labels for t in texts], pad_id)


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
    out_dir: str | Path,
    schedule: TextSchedule = TextSchedule(),
    *,
    seed: int = 0,
    init: Optional[str | Path] = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train the LLM's base weights on ``train_texts``; every other parameter (LoRA included) stays frozen.

    :func:`training.train_stage` runs it (:class:`TextOnlyLLM`, shuffled batches per epoch, ``losses.csv``, a
    checkpoint per epoch, the model and a stage-1 ``trainer_state.json`` naming ``init`` in ``out_dir``); after
    each epoch the mean per-answer NLL of ``val_texts`` is measured.

    Returns:
        One row per epoch: ``epoch``, ``updates``, ``train_nll`` (mean of the epoch's update losses), ``val_nll``,
        ``wall_s`` (seconds since the start).  Written to ``out_dir/text_loss.csv`` too.
    Raises:
        ValueError: no training text.
        FloatingPointError: a non-finite loss (names the epoch and update).
    """
    if not train_texts:
        raise ValueError("no training text: the split has no understanding pair or planning text")
    import time

    out_dir = Path(out_dir)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()

    def validate(state: StageState) -> None:
        rows = [r for r in read_loss_csv(out_dir / LOSS_CSV) if r["epoch"] == state.epoch]
        row = {
            "epoch": state.epoch,
            "updates": state.global_step,
            "train_nll": sum(float(r[TEXT_LOSS_NAME]) for r in rows) / max(1, len(rows)),
            "val_nll": mean_answer_nll(model, val_texts, schedule.batch_size),
            "wall_s": time.perf_counter() - t0,
        }
        history.append(row)
        print(
            f"text epoch {state.epoch}/{state.epochs}: train NLL {row['train_nll']:.3f}, val NLL "
            f"{row['val_nll']:.3f} (per answer token), {row['wall_s']:.0f} s"
        )
        with open(out_dir / TEXT_LOSS_FILE, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            writer.writeheader()
            writer.writerows(history)

    data = TextDataset(train_texts, model.tokenizer.pad_token_id)
    tcfg = schedule.train_config(seed)
    try:
        train_stage(
            TextOnlyLLM(model),
            data,
            data.collate,
            TEXT_STAGE,
            tcfg,
            out_dir,
            init=init,
            progress=progress,
            epochs=schedule.epochs,
            on_epoch_end=validate,
        )
    finally:
        model.requires_grad_(False)
    return history


def text_pretrain_from_stage1(
    init: str | Path,
    data: str | Path,
    out: str | Path,
    schedule: TextSchedule = TextSchedule(),
    *,
    train_config: Optional[str | Path] = None,
    val_split: Optional[str] = "val",
    progress: bool = True,
) -> list[dict[str, float]]:
    """``sparseoccvla pretrain-llm``: :func:`pretrain_llm` on the text of a dataset root, from a stage-1 folder.

    Args:
        init: output folder of stage 1 (its LLM must be built from random weights, ``llm_path: null``).
        data: dataset root the stages train on.
        out: output folder (new): a stage-1 model folder, stage 2's ``--init``.
        schedule: the text step's optimisation.
        train_config: training config YAML whose ``train_split``, ``qa_sources`` and ``seed`` apply (default tiny).
        val_split: split whose text measures the NLL each epoch (None or '' = none).
        progress: show a tqdm bar.
    Returns:
        :func:`pretrain_llm`'s per-epoch rows.
    Raises:
        ValueError: ``init`` is not a stage-1 folder, or its LLM is a pretrained one.
    """
    from .data.dataset import DrivingDataset
    from .data.layout import resolve_layout
    from .model import SparseOccVLA
    from .train_setup import dataset_options
    from .training import STATE_FILE, check_fresh_out_dir

    init, out = Path(init), Path(out)
    state = StageState.read(init) if (init / STATE_FILE).is_file() else None
    if state is None or state.stage != 1:
        raise ValueError(f"--init {init} must be the output folder of 'sparseoccvla train --stage 1'")
    check_fresh_out_dir(out)
    tcfg = TrainConfig.from_yaml(train_config) if train_config else TrainConfig.tiny()
    model = SparseOccVLA.from_pretrained(init)
    if model.cfg.llm_path:
        raise ValueError(
            f"{init} loads a pretrained LLM from llm_path {model.cfg.llm_path}; text pretraining is for an LLM "
            "built from random weights (llm_path: null)"
        )
    torch.manual_seed(tcfg.seed)
    root = resolve_layout(data).root
    options = dataset_options(tcfg, 2, model.cfg)

    def split_texts(split: str) -> list[EncodedText]:
        pairs = DrivingDataset(root, split, model.cfg, None, options).text_pairs()
        return encode_pairs(model.tokenizer, pairs, model.cfg.max_text_tokens)

    train_texts = split_texts(tcfg.train_split)
    val_texts = split_texts(val_split) if val_split else []
    print(
        f"text pretraining: {len(train_texts)} training texts ({tcfg.train_split}), {len(val_texts)} validation "
        f"texts ({val_split or 'none'}), {schedule.epochs} epochs of "
        f"{math.ceil(len(train_texts) / schedule.batch_size)} updates"
    )
    out.mkdir(parents=True, exist_ok=True)
    history = pretrain_llm(model, train_texts, val_texts, out, schedule, seed=tcfg.seed, init=init, progress=progress)
    print(f"text pretraining: val NLL {history[0]['val_nll']:.3f} -> {history[-1]['val_nll']:.3f} -> {out}")
    return history
