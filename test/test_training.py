"""Training infrastructure (sparseoccvla_core/training.py, train_config.py): schedule, optimizer groups, stage
order, checkpoint / resume identity, CSV log, clear errors.  Tier 1: a real tiny torch module stands in for
the network so each test takes well under a second; test_training_cli_* run the real tiny SparseOccVLA.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from sparseoccvla_core.train_config import TrainConfig
from sparseoccvla_core.training import (
    LOSS_NAMES,
    EpochShuffleSampler,
    StageState,
    capture_rng_state,
    check_fresh_out_dir,
    check_stage_order,
    latest_checkpoint,
    lr_factor,
    read_loss_csv,
    restore_rng_state,
    train_stage,
    trainable_parameter_groups,
)

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- a real tiny network
class ToyBatch:
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def to(self, device):
        return ToyBatch(self.x.to(device), self.y.to(device))


class ToyDataset(torch.utils.data.Dataset):
    """Regression y = A x; optionally raises after ``fail_after`` reads (a crash mid-run)."""

    def __init__(self, n: int = 6, fail_after: int | None = None) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.randn(4, 3, generator=g)
        self.fail_after = fail_after
        self.reads = 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise RuntimeError("simulated crash")
        return self.x[i], self.y[i]


def toy_collate(items):
    return ToyBatch(torch.stack([a for a, _ in items]), torch.stack([b for _, b in items]))


class ToyModel(nn.Module):
    """Encoder + head with the SparseOccVLA training contract (set_stage / forward(batch, stage) / save_pretrained).

    Stage 1 trains the encoder, stage 2 freezes it and trains the head, stage 3 trains both (mirrors sec. 4.2).
    Dropout makes the run depend on the torch RNG, so resume must restore it.
    """

    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Dropout(dropout))
        self.head = nn.Linear(8, 3)
        self.nan = False

    def set_stage(self, stage: int, train_llm_base: bool = False) -> None:  # no LLM: train_llm_base is ignored
        for p in self.encoder.parameters():
            p.requires_grad_(stage in (1, 3))
        for p in self.head.parameters():
            p.requires_grad_(stage in (2, 3))

    def forward(self, batch: ToyBatch, stage: int) -> dict:
        pred = self.head(self.encoder(batch.x))
        err = pred - batch.y
        out = {"occ_cd": err.abs().mean(), "plan_l1": (err**2).mean()}
        out["loss"] = out["occ_cd"] + out["plan_l1"]
        if self.nan:
            out["loss"] = out["loss"] * float("nan")
        return out

    def save_pretrained(self, folder) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(Path(folder) / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, folder) -> "ToyModel":
        m = cls()
        m.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))
        return m


def _tcfg(**kw) -> TrainConfig:
    values = dict(epochs=(2, 2, 2), batch_size=2, lr=1e-2, warmup_steps=2, num_workers=0, keep_checkpoints=3)
    values.update(kw)
    return TrainConfig(**values)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- config
def test_train_config_yaml_round_trip_and_presets(tmp_path):
    cfg = TrainConfig.paper()
    assert (cfg.epochs, cfg.lr, cfg.adam_betas) == ((36, 6, 12), 2e-4, (0.9, 0.999))  # paper sec. 4.2
    cfg.to_yaml(tmp_path / "t.yaml")
    assert TrainConfig.from_yaml(tmp_path / "t.yaml") == cfg
    tiny = TrainConfig.from_yaml(REPO / "config" / "train_tiny.yaml")
    assert tiny == TrainConfig.tiny()
    assert TrainConfig.from_yaml(REPO / "config" / "train_paper.yaml") == TrainConfig.paper()
    assert tiny.epochs_for(2) == tiny.epochs[1]
    (tmp_path / "bad.yaml").write_text("preset: tiny\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_yaml(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=(1, 2))
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match="grad_accum_steps"):
        TrainConfig(grad_accum_steps=0)


# ----------------------------------------------------------------------------- schedule + optimizer
def test_lr_factor_warmup_then_cosine():
    total, warm, r0, rmin = 20, 4, 1 / 3, 1e-3
    assert lr_factor(0, total, warm, r0, rmin) == pytest.approx(r0)
    assert lr_factor(2, total, warm, r0, rmin) == pytest.approx(r0 + (1 - r0) * 0.5)
    assert lr_factor(4, total, warm, r0, rmin) == pytest.approx(1.0)
    assert lr_factor(12, total, warm, r0, rmin) == pytest.approx(rmin + (1 - rmin) * 0.5)  # cosine mid-point
    assert lr_factor(20, total, warm, r0, rmin) == pytest.approx(rmin)
    factors = [lr_factor(s, total, warm, r0, rmin) for s in range(warm, total + 1)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))  # monotone decay after warm-up
    # warm-up longer than the run is capped at half the run, so the run still ends at min_lr_ratio
    assert lr_factor(0, 10, 500, r0, rmin) == pytest.approx(r0)
    assert lr_factor(5, 10, 500, r0, rmin) == pytest.approx(1.0)
    assert lr_factor(10, 10, 500, r0, rmin) == pytest.approx(rmin)


def test_optimizer_groups_hold_only_trainable_params_and_no_decay_for_1d():
    model = ToyModel()
    model.set_stage(2)
    groups = trainable_parameter_groups(model, 0.01)
    ids = {id(p) for g in groups for p in g["params"]}
    assert ids == {id(p) for p in model.head.parameters()}
    decay = next(g for g in groups if g["weight_decay"] > 0)["params"]
    assert [tuple(p.shape) for p in decay] == [(3, 8)]
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        trainable_parameter_groups(model, 0.01)


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    s = EpochShuffleSampler(10, seed=3)
    s.set_epoch(1)
    a = list(s)
    s.set_epoch(0)
    s.set_epoch(1)
    assert list(s) == a and sorted(a) == list(range(10))
    s.set_epoch(2)
    assert list(s) != a


def test_rng_state_round_trip():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    state = capture_rng_state()
    expect = (random.random(), random.gauss(0, 1), np.random.rand(3), torch.rand(3))
    torch.rand(5), np.random.rand(2), random.random()
    restore_rng_state(state)
    got = (random.random(), random.gauss(0, 1), np.random.rand(3), torch.rand(3))
    assert got[0] == expect[0] and got[1] == expect[1]
    assert np.array_equal(got[2], expect[2]) and torch.equal(got[3], expect[3])


# ----------------------------------------------------------------------------- the loop
def test_stage_trains_only_its_parameters_and_logs_every_update(tmp_path):
    model = ToyModel()
    before = _weights(model)
    tcfg = _tcfg(grad_accum_steps=2, batch_size=1, warmup_steps=1)
    state = train_stage(model, ToyDataset(5), toy_collate, 2, tcfg, tmp_path, progress=False)
    after = _weights(model)
    # stage 2: encoder frozen (bit-identical), head trained
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder"))
    assert not torch.equal(before["head.weight"], after["head.weight"])
    # 5 micro-batches, accumulation 2 -> 3 updates per epoch (the last one partial)
    assert (state.updates_per_epoch, state.global_step, state.complete) == (3, 6, True)
    rows = read_loss_csv(tmp_path / "losses.csv")
    header = (tmp_path / "losses.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["step", "epoch", "lr"] and header[3 : 3 + len(LOSS_NAMES)] == list(LOSS_NAMES)
    assert header[-3:] == ["loss", "grad_norm", "seconds"]
    assert [r["step"] for r in rows] == list(range(1, 7)) and [r["epoch"] for r in rows] == [1, 1, 1, 2, 2, 2]
    expect_lr = [tcfg.lr * lr_factor(s, 6, 1, tcfg.warmup_start_ratio, tcfg.min_lr_ratio) for s in range(6)]
    assert [r["lr"] for r in rows] == pytest.approx(expect_lr, rel=1e-5)
    for r in rows:  # losses not computed by the model stay empty; the total is their sum
        assert r["distill"] is None and r["lm"] is None
        assert r["loss"] == pytest.approx(r["occ_cd"] + r["plan_l1"], rel=1e-5)
        assert r["grad_norm"] > 0 and r["seconds"] >= 0
    # checkpoint layout: one per epoch + the final model and metadata at the top
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_001", "epoch_002"]
    for folder in (tmp_path, tmp_path / "checkpoints" / "epoch_002"):
        assert (folder / "model.safetensors").is_file()
        meta = json.loads((folder / "trainer_state.json").read_text())
        assert (meta["stage"], meta["epoch"], meta["complete"]) == (2, 2, True)
    blob = torch.load(tmp_path / "checkpoints" / "epoch_001" / "training_state.pt", weights_only=True)
    assert set(blob) >= {"optimizer", "scheduler"} and blob["scheduler"]["last_epoch"] == 3
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(saved[k], after[k]) for k in saved)


def test_gradient_accumulation_matches_the_large_batch(tmp_path):
    def one_update(batch_size, accum, out):
        torch.manual_seed(0)
        model = ToyModel(dropout=0.0)
        tcfg = _tcfg(batch_size=batch_size, grad_accum_steps=accum, epochs=(1, 1, 1), weight_decay=0.0)
        train_stage(model, ToyDataset(2), toy_collate, 3, tcfg, out, progress=False)
        return _weights(model)

    a = one_update(2, 1, tmp_path / "a")
    b = one_update(1, 2, tmp_path / "b")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_resume_after_crash_gives_identical_weights_and_log(tmp_path):
    tcfg = _tcfg(epochs=(2, 2, 2), batch_size=2)
    torch.manual_seed(0)
    ref = ToyModel()
    train_stage(ref, ToyDataset(6), toy_collate, 1, tcfg, tmp_path / "ref", progress=False)

    torch.manual_seed(0)
    crashed = ToyModel()
    with pytest.raises(RuntimeError, match="simulated crash"):  # dies in the middle of epoch 2
        train_stage(crashed, ToyDataset(6, fail_after=6 + 3), toy_collate, 1, tcfg, tmp_path / "run", progress=False)
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt is not None and ckpt.name == "epoch_001"
    assert not (tmp_path / "run" / "trainer_state.json").exists()
    torch.manual_seed(123)  # whatever happened in between, the checkpoint's RNG state takes over
    resumed = ToyModel.from_pretrained(ckpt)
    state = train_stage(
        resumed, ToyDataset(6), toy_collate, 1, tcfg, tmp_path / "run", resume_from=ckpt, progress=False
    )
    assert state.complete and state.epoch == 2
    a, b = _weights(ref), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = read_loss_csv(tmp_path / "ref" / "losses.csv"), read_loss_csv(tmp_path / "run" / "losses.csv")
    assert [(r["step"], r["epoch"], r["lr"], r["loss"]) for r in ra] == [
        (r["step"], r["epoch"], r["lr"], r["loss"]) for r in rb
    ]


def test_resume_refuses_a_changed_schedule(tmp_path):
    model = ToyModel()
    train_stage(model, ToyDataset(6), toy_collate, 1, _tcfg(epochs=(1, 1, 1)), tmp_path, progress=False)
    ckpt = latest_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="identical schedule"):
        train_stage(
            ToyModel.from_pretrained(ckpt),
            ToyDataset(8),
            toy_collate,
            1,
            _tcfg(epochs=(2, 1, 1)),
            tmp_path,
            resume_from=ckpt,
            progress=False,
        )
    with pytest.raises(ValueError, match="stage-1 checkpoint"):
        train_stage(
            ToyModel.from_pretrained(ckpt),
            ToyDataset(6),
            toy_collate,
            2,
            _tcfg(),
            tmp_path,
            resume_from=ckpt,
            progress=False,
        )


def test_nonfinite_loss_and_empty_split_raise(tmp_path):
    model = ToyModel()
    model.nan = True
    with pytest.raises(FloatingPointError, match="non-finite"):
        train_stage(model, ToyDataset(4), toy_collate, 1, _tcfg(), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="empty"):
        train_stage(ToyModel(), ToyDataset(0), toy_collate, 1, _tcfg(), tmp_path / "b", progress=False)


# ----------------------------------------------------------------------------- stage order + folders
def _fake_stage_output(folder: Path, stage: int) -> Path:
    folder.mkdir(parents=True)
    StageState(stage, 1, 1, 3, 3, True).write(folder)
    return folder


def test_stage_order_is_enforced(tmp_path):
    s1 = _fake_stage_output(tmp_path / "s1", 1)
    s2 = _fake_stage_output(tmp_path / "s2", 2)
    s3 = _fake_stage_output(tmp_path / "s3", 3)
    plain = tmp_path / "plain"
    plain.mkdir()
    assert check_stage_order(1, None) is None
    assert check_stage_order(1, plain) is None
    assert check_stage_order(1, s1).stage == 1
    assert check_stage_order(2, s1).stage == 1
    assert check_stage_order(3, s2).stage == 2
    with pytest.raises(ValueError, match="pass --init"):
        check_stage_order(2, None)
    with pytest.raises(ValueError, match="run stage 2 first"):
        check_stage_order(3, s1)
    with pytest.raises(ValueError, match="produced by stage 3"):
        check_stage_order(2, s3)
    with pytest.raises(ValueError, match="not produced by"):
        check_stage_order(2, plain)
    with pytest.raises(ValueError, match="stage-2 checkpoint"):
        check_stage_order(1, s2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_stage_order(2, tmp_path / "missing")
    with pytest.raises(FileExistsError, match="--resume"):
        check_fresh_out_dir(s1)
    check_fresh_out_dir(tmp_path / "new")


def test_cli_errors_missing_dataset_and_stage_order(tmp_path):
    from sparseoccvla_core.cli import main

    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(
            [
                "train",
                "--stage",
                "1",
                "--config",
                "tiny",
                "--data",
                str(tmp_path / "nope"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
    (tmp_path / "data" / "samples").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="version folder"):
        main(
            [
                "train",
                "--stage",
                "1",
                "--config",
                "tiny",
                "--data",
                str(tmp_path / "data"),
                "--out",
                str(tmp_path / "o"),
            ]
        )


def test_train_command_is_registered():
    from sparseoccvla_core.cli import COMMANDS, build_command_parser

    assert COMMANDS["train"][0] == "sparseoccvla_core.commands.train"
    args = build_command_parser("train").parse_args(
        ["--stage", "2", "--data", "d", "--init", "i", "--out", "o", "--resume"]
    )
    assert (args.stage, args.data, args.init, args.out, args.resume) == (2, "d", "i", "o", True)
    with pytest.raises(SystemExit):
        build_command_parser("train").parse_args(["--stage", "4", "--data", "d", "--out", "o"])


# ----------------------------------------------------------------------------- the real tiny model through the CLI
@pytest.fixture(scope="module")
def mini_world(tmp_path_factory):
    """A 5-key-frame train scene + anchors file (test/data_fixtures.py's hand-made nuScenes-format dataset)."""
    from data_fixtures import write_mini_nuscenes

    from sparseoccvla_core.config import SparseOccVLAConfig
    from sparseoccvla_core.data.anchors import AnchorSet, save_anchors

    root = tmp_path_factory.mktemp("mini")
    write_mini_nuscenes(root / "data", scene_lengths=(("scene-a", "train", 5), ("scene-b", "val", 2)))
    cfg = SparseOccVLAConfig.tiny()
    # the fixture's ego drives one arc, so its trajectories are all alike: give K-means-shaped anchors explicitly
    steps = torch.arange(1, cfg.plan_horizon + 1, dtype=torch.float32)
    speeds = torch.linspace(0.5, 10.0, cfg.anchors_per_command)
    anchors = torch.zeros(cfg.num_commands, cfg.anchors_per_command, cfg.plan_horizon, 2)
    for c, lateral in enumerate((0.3, 0.0, -0.3)):
        anchors[c, :, :, 0] = speeds[:, None] * 0.5 * steps
        anchors[c, :, :, 1] = lateral * steps**2
    save_anchors(AnchorSet(anchors.numpy(), {}, {}), root / "anchors.npz")
    (root / "train.yaml").write_text("preset: tiny\nepochs: [1, 1, 1]\nbatch_size: 2\nkeep_checkpoints: 2\n")
    return root


def _cli(*argv: str) -> int:
    from sparseoccvla_core.cli import main

    return main(["train", *argv, "--no-progress"])


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_training_cli_three_stages_train_what_the_paper_says(mini_world):
    from sparseoccvla_core.model import SparseOccVLA
    from sparseoccvla_core.tokenizer import default_corpus, train_tokenizer

    w = mini_world
    common = ["--train-config", str(w / "train.yaml"), "--data", str(w / "data")]
    assert (
        _cli("--stage", "1", "--config", "tiny", *common, "--anchors", str(w / "anchors.npz"), "--out", str(w / "s1"))
        == 0
    )
    assert _cli("--stage", "2", *common, "--init", str(w / "s1"), "--out", str(w / "s2")) == 0
    assert _cli("--stage", "3", *common, "--init", str(w / "s2"), "--out", str(w / "s3")) == 0
    s1, s2, s3 = _tensors(w / "s1"), _tensors(w / "s2"), _tensors(w / "s3")
    for out, stage in ((w / "s1", 1), (w / "s2", 2), (w / "s3", 3)):
        meta = StageState.read(out)
        assert (meta.stage, meta.complete, meta.epoch) == (stage, True, 1)
        assert read_loss_csv(out / "losses.csv")  # one row per update
    # anchors set at stage 1 and carried by every later checkpoint
    anchors = torch.as_tensor(np.load(w / "anchors.npz")["anchors_flat"])
    for s in (s1, s2, s3):
        assert torch.equal(s["planner.anchors"], anchors)
    # stage 2: the visual encoder is frozen, the planner trains
    for k in s1:
        if k.startswith(("backbone.", "occupancy_encoder.")):
            assert torch.equal(s1[k], s2[k]), k
    assert any(not torch.equal(s1[k], s2[k]) for k in s1 if k.startswith("planner."))
    # stage 3: LLM base weights never change, LoRA does
    llm_base = [k for k in s2 if k.startswith("llm.") and "lora_" not in k]
    assert llm_base and all(torch.equal(s2[k], s3[k]) for k in llm_base)
    assert all(torch.equal(s1[k], s3[k]) for k in llm_base)
    assert any(not torch.equal(s2[k], s3[k]) for k in s2 if "lora_B" in k)
    # the tokenizer was trained on the dataset's QA text at stage 1 and reused afterwards
    model = SparseOccVLA.from_pretrained(w / "s3")
    word = " steady"  # only in the fixture's OmniDrive answer, not in the built-in corpus
    builtin = train_tokenizer(default_corpus(), model.cfg.llm_vocab_size)
    assert len(model.tokenizer(word, add_special_tokens=False)["input_ids"]) < len(
        builtin(word, add_special_tokens=False)["input_ids"]
    )
    assert model.tokenizer.get_vocab() == SparseOccVLA.from_pretrained(w / "s1").tokenizer.get_vocab()


@pytest.mark.slow
def test_training_cli_errors_and_resume_identity(mini_world):
    w = mini_world
    common = ["--train-config", str(w / "train.yaml"), "--data", str(w / "data"), "--anchors", str(w / "anchors.npz")]
    # uninterrupted 2-epoch stage 1 vs. the same run stopped after epoch 1 and resumed
    assert _cli("--stage", "1", "--config", "tiny", *common, "--epochs", "2", "--out", str(w / "full")) == 0
    assert _cli("--stage", "1", "--config", "tiny", *common, "--epochs", "2", "--out", str(w / "cut")) == 0
    import shutil

    shutil.rmtree(w / "cut" / "checkpoints" / "epoch_002")  # as if the process died right after epoch 1
    (w / "cut" / "trainer_state.json").unlink()
    (w / "cut" / "model.safetensors").unlink()
    with pytest.raises(FileExistsError, match="--resume"):
        _cli("--stage", "1", "--config", "tiny", *common, "--epochs", "2", "--out", str(w / "cut"))
    with pytest.raises(ValueError, match="epochs"):  # a changed schedule is listed, not silently used
        _cli("--stage", "1", "--config", "tiny", *common, "--epochs", "3", "--out", str(w / "cut"), "--resume")
    assert _cli("--stage", "1", "--config", "tiny", *common, "--epochs", "2", "--out", str(w / "cut"), "--resume") == 0
    full, cut = _tensors(w / "full"), _tensors(w / "cut")
    assert full.keys() == cut.keys() and all(torch.equal(full[k], cut[k]) for k in full)
    rows_full, rows_cut = read_loss_csv(w / "full" / "losses.csv"), read_loss_csv(w / "cut" / "losses.csv")
    assert [(r["step"], r["lr"], r["loss"]) for r in rows_full] == [(r["step"], r["lr"], r["loss"]) for r in rows_cut]
    # wrong stage order and a mismatched checkpoint config are refused with the reason
    with pytest.raises(ValueError, match="run stage 2 first"):
        _cli("--stage", "3", *common, "--init", str(w / "full"), "--out", str(w / "bad"))
    with pytest.raises(ValueError, match="pass --init"):
        _cli("--stage", "2", *common, "--out", str(w / "bad"))
    (w / "other.yaml").write_text("preset: tiny\nnum_queries: 32\n")
    with pytest.raises(ValueError, match="num_queries"):
        _cli(
            "--stage",
            "2",
            *common,
            "--config",
            str(w / "other.yaml"),
            "--init",
            str(w / "full"),
            "--out",
            str(w / "bad"),
        )
    # an empty split
    (w / "empty.yaml").write_text("preset: tiny\ntrain_split: val\n")
    (w / "data" / "splits.json").write_text(json.dumps({"train": ["scene-a"], "val": []}))
    try:
        with pytest.raises(ValueError, match="split 'val'"):
            _cli(
                "--stage",
                "1",
                "--config",
                "tiny",
                "--train-config",
                str(w / "empty.yaml"),
                "--data",
                str(w / "data"),
                "--out",
                str(w / "bad"),
            )
    finally:
        (w / "data" / "splits.json").write_text(json.dumps({"train": ["scene-a"], "val": ["scene-b"]}))


_DDP_WORKER = """
import sys
import torch
sys.path.insert(0, {testdir!r})
from test_training import ToyDataset, ToyModel, toy_collate
from sparseoccvla_core.train_config import TrainConfig
from sparseoccvla_core.training import train_stage

torch.manual_seed(0)
model = ToyModel(dropout=0.0)
tcfg = TrainConfig(epochs=(2, 2, 2), batch_size=int(sys.argv[2]), lr=1e-2, warmup_steps=1, num_workers=0, weight_decay=0.0)
train_stage(model, ToyDataset(8), toy_collate, 3, tcfg, sys.argv[1], progress=False)
"""


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_with_the_total_batch(tmp_path):
    """torchrun + accelerate (gloo on CPU): 2 processes x batch 1 must train like 1 process x batch 2."""
    import os
    import socket
    import subprocess
    import sys

    worker = tmp_path / "worker.py"
    worker.write_text(_DDP_WORKER.format(testdir=str(Path(__file__).parent)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            str(worker),
            str(tmp_path / "ddp"),
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run(
        [sys.executable, str(worker), str(tmp_path / "one"), "2"], env=env, capture_output=True, text=True, timeout=300
    )
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = _tensors(tmp_path / "ddp"), _tensors(tmp_path / "one")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    rows_a, rows_b = read_loss_csv(tmp_path / "ddp" / "losses.csv"), read_loss_csv(tmp_path / "one" / "losses.csv")
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b] == list(range(1, 9))
    assert [r["lr"] for r in rows_a] == pytest.approx([r["lr"] for r in rows_b])
    assert [r["loss"] for r in rows_a] == pytest.approx([r["loss"] for r in rows_b], rel=1e-5)  # reduced over ranks


def test_fallback_commands_get_distinct_kinematic_anchors():
    """A command with too few trajectories of its own (here: none) gets its kinematic arcs from compute_anchors, so
    no anchor duplicates another one and the positive anchor (closest to the GT) is unique; the other commands are
    still K-means of their own trajectories."""
    from sparseoccvla_core.config import SparseOccVLAConfig
    from sparseoccvla_core.data.anchors import TrajectorySet, compute_anchors
    from sparseoccvla_core.planner import kinematic_fan

    cfg = SparseOccVLAConfig.tiny()
    per, horizon = cfg.anchors_per_command, cfg.plan_horizon
    rng = np.random.default_rng(0)
    speeds = rng.uniform(2.0, 12.0, 40)  # straight trajectories only, as in a small synthetic split
    t = cfg.plan_dt * np.arange(1, horizon + 1)
    waypoints = np.stack([speeds[:, None] * t, np.zeros((40, horizon))], -1)  # [N, T, 2]
    trajs = TrajectorySet(
        waypoints=waypoints,
        valid=np.ones((40, horizon), bool),
        commands=np.ones(40, np.int64),
        ego_state=np.zeros((40, 6)),
    )
    result = compute_anchors(trajs, per, dt=cfg.plan_dt)
    assert set(result.info["fallback"]) == {"left", "right"}
    out = torch.as_tensor(result.anchors_flat)
    fan, fan_commands = kinematic_fan(cfg)
    assert torch.equal(out[:per], fan[fan_commands == 0]) and torch.equal(out[2 * per :], fan[fan_commands == 2])
    straight = out[per : 2 * per]
    assert torch.allclose(straight[..., 1], torch.zeros(per, horizon))  # clustered from the straight data
    assert 2.0 * t[-1] < float(straight[:, -1, 0].min()) and float(straight[:, -1, 0].max()) < 12.0 * t[-1]
    dist = torch.cdist(out.flatten(1), out.flatten(1)) + torch.eye(3 * per) * 1e6
    assert float(dist.min()) > 0.5
