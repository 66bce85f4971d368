"""One planning prompt: the checkpoint's ``cfg.plan_question`` is what the dataset trains the plan stream with and
what every inference path asks (``SparseOccVLA.predict``, ``SparseOccVLAPipeline.step``, the evaluation's planning).

The prompts actually fed to the LLM are recorded by wrapping ``model.llm.generate`` (every greedy decoding goes
through it); the expected token ids are built independently from the question text with the chat template
(``tokenizer.encode_qa``).  A non-default question is used so that a path reading a constant instead of the
checkpoint's config fails.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from model_fixtures import PLAN_PAIRS, make_batch

from sparseoccvla_core.batch import IGNORE_INDEX
from sparseoccvla_core.config import ACTION_QUESTION, SparseOccVLAConfig
from sparseoccvla_core.model import SparseOccVLA
from sparseoccvla_core.pipeline import PipelineOptions, SparseOccVLAPipeline
from sparseoccvla_core.tokenizer import encode_qa

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Which manoeuvre fits this scene best?"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("plan_prompt_ckpt")
    SparseOccVLA(SparseOccVLAConfig.tiny(max_new_tokens=4, plan_question=QUESTION)).save_pretrained(path)
    return path


def _record_prompts(model: SparseOccVLA, monkeypatch) -> list[list[list[int]]]:
    """Every call of ``model.llm.generate`` appends the prompts it was given (token ids per item)."""
    calls: list[list[list[int]]] = []
    original = model.llm.generate

    def generate(prefix, prompts, max_new_tokens=None):
        calls.append([list(p) for p in prompts])
        return original(prefix, prompts, max_new_tokens)

    monkeypatch.setattr(model.llm, "generate", generate)
    return calls


def _prompt(model: SparseOccVLA, question: str) -> list[int]:
    return encode_qa(model.tokenizer, question, None, model.cfg.max_text_tokens)[0]


def test_checkpoint_records_the_plan_question(tmp_path):
    assert SparseOccVLAConfig.tiny().plan_question == SparseOccVLAConfig.paper().plan_question == ACTION_QUESTION
    model = SparseOccVLA(SparseOccVLAConfig.tiny(num_queries=8, points_per_layer=(2, 4), plan_question=QUESTION))
    model.save_pretrained(tmp_path / "ckpt")
    written = yaml.safe_load((tmp_path / "ckpt" / "config.yaml").read_text())
    assert written["plan_question"] == QUESTION
    assert SparseOccVLA.from_pretrained(tmp_path / "ckpt").cfg.plan_question == QUESTION
    # a checkpoint written before the field existed was trained with the action question: it loads with it
    del written["plan_question"]
    (tmp_path / "ckpt" / "config.yaml").write_text(yaml.safe_dump(written))
    assert SparseOccVLA.from_pretrained(tmp_path / "ckpt").cfg.plan_question == ACTION_QUESTION
    with pytest.raises(ValueError, match="plan_question"):
        SparseOccVLAConfig.tiny(plan_question="  ")


def test_predict_asks_the_checkpoint_plan_question(checkpoint, monkeypatch):
    model = SparseOccVLA.from_pretrained(checkpoint)
    # the batch's own plan stream asks another question: inference must not take it from there
    batch = make_batch(model.cfg, 2, seed=0, tokenizer=model.tokenizer)
    assert PLAN_PAIRS[0][0] != QUESTION
    calls = _record_prompts(model, monkeypatch)
    model.predict(
        batch, generate_text=True, question="Is there a car ahead?", generator=torch.Generator().manual_seed(0)
    )
    assert calls[0] == [_prompt(model, QUESTION)] * 2  # the reasoning that guides the planner
    assert calls[1] == [_prompt(model, "Is there a car ahead?")] * 2  # the user's question, after it
    assert model.plan_prompt == _prompt(model, QUESTION)


def test_pipeline_step_asks_the_checkpoint_plan_question(checkpoint, monkeypatch):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_pipeline import _frame

    pipe = SparseOccVLAPipeline.from_pretrained(checkpoint, PipelineOptions(score_threshold=0.0))
    assert not hasattr(pipe.options, "plan_question")  # no second, run-time planning prompt
    calls = _record_prompts(pipe.model, monkeypatch)
    rng = np.random.default_rng(0)
    pipe.step(_frame(pipe.cfg, 0, rng))
    pipe.step(_frame(pipe.cfg, 1, rng))
    assert calls == [[_prompt(pipe.model, QUESTION)]] * 2
    pipe.ask("Is the road clear?")
    assert calls[-1] == [_prompt(pipe.model, "Is the road clear?")]


@pytest.mark.slow
def test_dataset_trains_and_evaluation_plans_with_the_checkpoint_question(checkpoint, tmp_path, monkeypatch):
    """The loader's plan stream starts with the prompt of ``cfg.plan_question``; ``evaluate`` plans with it too."""
    from sparseoccvla_core.data.dataset import DrivingDataset
    from sparseoccvla_core.evaluation import EvalOptions, evaluate

    data = tmp_path / "synth"
    cmd = [
        sys.executable,
        "-m",
        "sparseoccvla_core.cli",
        "synth",
        "--out",
        str(data),
        "--scenes",
        "2",
        "--seed",
        "3",
        "--frames",
        "8",
        "--width",
        "160",
        "--height",
        "96",
        "--no-lidar",
    ]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, timeout=300)
    model = SparseOccVLA.from_pretrained(checkpoint)
    expected = _prompt(model, QUESTION)

    item = DrivingDataset(data, "val", model.cfg, model.tokenizer)[0]
    plan_ids, plan_labels = list(item.plan_ids), list(item.plan_labels)
    assert plan_ids[: len(expected)] == expected and all(v == IGNORE_INDEX for v in plan_labels[: len(expected)])

    calls = _record_prompts(model, monkeypatch)
    options = EvalOptions(
        device="cpu",
        batch_size=2,
        max_samples=3,
        text=False,
        qa=False,
        meteor=False,
        baselines=False,
        num_qualitative=0,
        max_new_tokens=4,
    )
    evaluate(model, data, options)
    assert len(calls) == 2  # batches of 2 + 1 key frames, one reasoning each, no question asked
    assert calls == [[expected] * 2, [expected]]
