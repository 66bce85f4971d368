"""Text-only pretraining of a random LLM before stage 2 (``sparseoccvla pretrain-llm``) and eq. 5's answer mean."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from model_fixtures import tiny_tokenizer
from safetensors.torch import load_file

from sparseoccvla_core.batch import IGNORE_INDEX
from sparseoccvla_core.config import SparseOccVLAConfig
from sparseoccvla_core.data.dataset import DatasetOptions, DrivingDataset
from sparseoccvla_core.data.layout import qa_split_name, resolve_layout
from sparseoccvla_core.evaluation.ground_truth import load_nuscenes_qa_records
from sparseoccvla_core.llm import SceneLanguageModel
from sparseoccvla_core.model import SparseOccVLA
from sparseoccvla_core.text_pretraining import TEXT_LOSS_FILE, encode_pairs, mean_answer_nll, pretrain_llm
from sparseoccvla_core.training import StageState, check_stage_order


@pytest.fixture(scope="module")
def cfg() -> SparseOccVLAConfig:
    return SparseOccVLAConfig.tiny()


@pytest.fixture(scope="module")
def tokenizer(cfg):
    return tiny_tokenizer(cfg)


def test_lm_loss_answer_mean_weighs_each_answer_once(cfg, tokenizer):
    """'answer': mean over answers of each answer's token mean; 'token': one mean over all labelled tokens."""
    torch.manual_seed(0)
    lm = SceneLanguageModel(cfg, len(tokenizer), tokenizer).eval()
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 7, cfg.llm_hidden_size, generator=gen)
    labels = torch.full((3, 7), IGNORE_INDEX)
    labels[0, 2:7] = torch.randint(0, len(tokenizer), (5,), generator=gen)  # a 5-token answer
    labels[1, 5] = 11  # a 1-token answer
    # row 2 has no label: it is left out of both means
    logits = lm.lm_head(hidden)
    per_token = {
        b: [F.cross_entropy(logits[b, j - 1], labels[b, j]).item() for j in range(1, 7) if labels[b, j] != IGNORE_INDEX]
        for b in range(2)
    }
    answer_mean = (sum(per_token[0]) / 5 + per_token[1][0]) / 2
    token_mean = (sum(per_token[0]) + per_token[1][0]) / 6
    assert lm.lm_loss(hidden, labels, "answer").item() == pytest.approx(answer_mean, rel=1e-5)
    assert lm.lm_loss(hidden, labels, "token").item() == pytest.approx(token_mean, rel=1e-5)
    empty = torch.full((3, 7), IGNORE_INDEX)
    assert lm.lm_loss(hidden, empty, "answer").item() == 0.0
    with pytest.raises(ValueError, match="'token' or 'answer'"):
        lm.lm_loss(hidden, labels, "sum")
    with pytest.raises(ValueError, match="lm_mean"):
        dataclasses.replace(cfg, lm_mean="sentence")


def test_text_pairs_are_the_split_question_files_and_plan_texts(synthetic_world, cfg):
    """With nuScenes-QA as the only source, the split's text is its question file's pairs plus one plan text per
    frame; with every source, each item's sampled pair is one of the split's pairs."""
    layout = resolve_layout(synthetic_world)
    only_qa = DrivingDataset(synthetic_world, "train", cfg, None, DatasetOptions(qa_sources=("nuscenes_qa",)))
    pairs = only_qa.text_pairs()
    tokens = {t for scene in only_qa.scenes for t in scene.sample_tokens}
    records = load_nuscenes_qa_records(layout.nuscenes_qa_root / f"NuScenes_{qa_split_name('train')}_questions.json")
    expected = [(r.question, r.answer) for t, recs in records.items() if t in tokens for r in recs]
    plans = [p for p in pairs if p[0] == cfg.plan_question]
    assert len(plans) == len(only_qa) and all(p[1] for p in plans)
    assert sorted(p for p in pairs if p[0] != cfg.plan_question) == sorted(expected) and expected

    every = DrivingDataset(synthetic_world, "train", cfg, None, DatasetOptions(load_occupancy=False))
    all_pairs = set(every.text_pairs())
    assert set(pairs) <= all_pairs and len(all_pairs) > len(set(pairs))  # OmniDrive texts come in too
    for i in range(0, len(every), 3):
        item = every[i]
        assert (item.qa_pair.question, item.qa_pair.answer) in all_pairs
        assert (cfg.plan_question, item.plan_text) in all_pairs


def _stage1_folder(cfg: SparseOccVLAConfig, tokenizer, out: Path) -> SparseOccVLA:
    """A stage-1 output folder (untrained weights): what 'sparseoccvla train --stage 1' leaves behind."""
    torch.manual_seed(0)
    model = SparseOccVLA(cfg, tokenizer=tokenizer)
    model.save_pretrained(out)
    StageState(1, 1, 1, 10, 10, True, None).write(out)
    return model


def test_pretrain_llm_trains_only_the_llm_base_and_lowers_held_out_nll(synthetic_world, cfg, tokenizer, tmp_path):
    from sparseoccvla_core.cli import main

    _stage1_folder(cfg, tokenizer, tmp_path / "s1")
    args = ["pretrain-llm", "--init", str(tmp_path / "s1"), "--data", str(synthetic_world)]
    assert main([*args, "--out", str(tmp_path / "text"), "--epochs", "3", "--batch-size", "16"]) == 0
    before, after = (
        load_file(str(tmp_path / "s1" / "model.safetensors")),
        load_file(str(tmp_path / "text" / "model.safetensors")),
    )
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    llm_base = {k for k in before if k.startswith("llm.") and "lora_" not in k}
    assert changed and changed <= llm_base  # only the LLM's base weights move; LoRA and the rest are copied
    assert any("embed_tokens" in k for k in changed) and any("layers.0." in k for k in changed)
    # the output is a stage-1 folder whose init is the stage-1 run: stage 2 accepts it
    state = StageState.read(tmp_path / "text")
    assert state.stage == 1 and state.complete and state.init == str(tmp_path / "s1")
    assert check_stage_order(2, tmp_path / "text").stage == 1
    with open(tmp_path / "text" / TEXT_LOSS_FILE) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    # held-out (val split) NLL per answer token, measured independently on the two models
    model0, model1 = SparseOccVLA.from_pretrained(tmp_path / "s1"), SparseOccVLA.from_pretrained(tmp_path / "text")
    val = DrivingDataset(synthetic_world, "val", model0.cfg, None, DatasetOptions(load_occupancy=False)).text_pairs()
    texts = encode_pairs(model0.tokenizer, val, model0.cfg.max_text_tokens)
    nll0, nll1 = mean_answer_nll(model0, texts, 32), mean_answer_nll(model1, texts, 32)
    assert nll1 < 0.5 * nll0, (nll0, nll1)
    assert float(rows[-1]["val_nll"]) == pytest.approx(nll1, rel=1e-4)

    # errors: not a stage-1 folder; an output that exists
    StageState(2, 1, 1, 10, 10, True, None).write(tmp_path / "s1")
    with pytest.raises(ValueError, match="stage 1"):
        main([*args, "--out", str(tmp_path / "again")])


def test_pretrain_llm_refuses_empty_text(cfg, tokenizer, tmp_path):
    torch.manual_seed(0)
    model = SparseOccVLA(cfg, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="no training text"):
        pretrain_llm(model, [], [], tmp_path / "text")
