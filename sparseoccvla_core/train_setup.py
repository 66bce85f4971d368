"""One training stage from files (``sparseoccvla train``): resolve the configs, the checkpoint to start from, the
data, the tokenizer and the planning anchors, then run :func:`sparseoccvla_core.training.train_stage`.

:func:`run_stage` starts a stage in one of three ways: resuming ``out`` from its newest per-epoch checkpoint,
from the previous stage's folder (``init``), or from scratch (stage 1: the tokenizer is trained on the split's
text when the config names none).  The command line (sparseoccvla_core/commands/train.py) only parses flags into
its arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from .config import SparseOccVLAConfig
from .train_config import TrainConfig
from .training import (
    CHECKPOINT_DIR,
    STATE_FILE,
    TRAIN_CONFIG_FILE,
    StageState,
    check_fresh_out_dir,
    check_stage_order,
    format_config_diff,
    latest_checkpoint,
    train_stage,
)

if TYPE_CHECKING:  # heavy imports, for annotations only
    from transformers import PreTrainedTokenizerBase

    from .data.dataset import DatasetOptions, DrivingDataset
    from .model import SparseOccVLA


@dataclass(frozen=True)
class TrainOverrides:
    """Training-config values given on the command line (None = the config's own)."""

    epochs: Optional[int] = None  # of the stage being trained
    batch_size: Optional[int] = None
    grad_accum_steps: Optional[int] = None
    lr: Optional[float] = None
    seed: Optional[int] = None
    num_workers: Optional[int] = None


def load_train_config(spec: Optional[str], stage: int, overrides: TrainOverrides = TrainOverrides()) -> TrainConfig:
    """Training config from a YAML / preset name ('tiny' / 'paper', default paper), with ``overrides`` applied."""
    if spec is None or spec == "paper":
        tcfg = TrainConfig.paper()
    elif spec == "tiny" and not Path(spec).exists():
        tcfg = TrainConfig.tiny()
    else:
        tcfg = TrainConfig.from_yaml(spec)
    values = tcfg.to_dict()
    if overrides.epochs is not None:
        epochs = list(values["epochs"])
        epochs[stage - 1] = overrides.epochs
        values["epochs"] = epochs
    for field in ("batch_size", "grad_accum_steps", "lr", "seed", "num_workers"):
        if getattr(overrides, field) is not None:
            values[field] = getattr(overrides, field)
    return TrainConfig.from_dict(values)


def load_model_config(spec: str) -> SparseOccVLAConfig:
    """Model config from a YAML path or the preset names 'tiny' / 'paper'."""
    if spec in ("tiny", "paper") and not Path(spec).exists():
        return SparseOccVLAConfig.tiny() if spec == "tiny" else SparseOccVLAConfig.paper()
    if not Path(spec).is_file():
        raise FileNotFoundError(
            f"--config {spec} does not exist (give a model config YAML such as config/model_tiny.yaml)"
        )
    return SparseOccVLAConfig.from_yaml(spec)


def dataset_options(
    tcfg: TrainConfig, stage: Optional[int] = None, cfg: Optional[SparseOccVLAConfig] = None
) -> "DatasetOptions":
    """The loader options a training config implies (``DatasetOptions`` defaults otherwise).

    Stage 1 with ``cfg.occ_gt == "current"`` reads no future Occ3D frames (only the forecaster and the concatenated
    GT need them): six of the seven label files an item would read, ~80 % of its loading time on the default
    checkpoint's data.
    """
    from .data.dataset import DatasetOptions

    extra: dict[str, Any] = {
        "max_gt_points": tcfg.max_gt_points,
        "gt_keep_classes": tuple(tcfg.gt_keep_classes),
        "augment": tcfg.augment,
        "seed": tcfg.seed,
        "occ_visibility": tcfg.occ_visibility,
        "future_occupancy": not (stage == 1 and cfg is not None and cfg.occ_gt == "current"),
    }
    if tcfg.qa_sources is not None:
        extra["qa_sources"] = tuple(tcfg.qa_sources)
    return DatasetOptions(**extra)


def dataset_qa_corpus(dataset: "DrivingDataset") -> list[str]:
    """Every question, answer and driving-decision text of a :class:`DrivingDataset` split (tokenizer corpus).

    Reads the split's OmniDrive files and nuScenes-QA pairs once; duplicates are dropped, order is kept.
    """
    texts: dict[str, None] = {}
    for scene in dataset.scenes:
        for token in scene.sample_tokens:
            pairs = list(dataset.nuscenes_qa.get(token, []))
            if dataset.omnidrive.available:
                pairs += dataset.omnidrive.pairs(token)
                plan = dataset.omnidrive.plan_text(token)
                if plan:
                    texts[plan] = None
            for pair in pairs:
                texts[pair.question] = None
                texts[pair.answer] = None
    return list(texts)


def build_tokenizer(cfg: SparseOccVLAConfig, dataset: "DrivingDataset") -> "PreTrainedTokenizerBase":
    """Stage-1 tokenizer: the configured one (``tokenizer_path`` / ``llm_path``), else a byte-level BPE trained on
    the training split's QA text plus the built-in driving corpus, with ``cfg.llm_vocab_size`` entries at most."""
    from .llm import resolve_tokenizer
    from .tokenizer import default_corpus, train_tokenizer

    if cfg.tokenizer_path or cfg.llm_path:
        return resolve_tokenizer(cfg)
    corpus = dataset_qa_corpus(dataset)
    return train_tokenizer(default_corpus() + corpus, cfg.llm_vocab_size)


def install_anchors(model: "SparseOccVLA", anchors_file: Optional[str], data_root: Path, split: str, seed: int) -> str:
    """Set the planner's K-means anchors from ``anchors_file`` or, without one, from the training split."""
    from .data.anchors import collect_trajectories, compute_anchors, load_anchors

    cfg = model.cfg
    if anchors_file is not None:
        anchor_set, source = load_anchors(anchors_file), str(anchors_file)
    else:
        trajs = collect_trajectories(data_root, split, cfg.plan_horizon)
        anchor_set = compute_anchors(trajs, cfg.anchors_per_command, seed=seed, dt=cfg.plan_dt)
        source = f"K-means on {data_root} {split}"
        for name, why in anchor_set.info["fallback"].items():
            print(f"planning anchors: command {name}: {why}")
    flat = torch.as_tensor(anchor_set.anchors_flat).clone()
    commands = torch.as_tensor(anchor_set.anchor_commands)
    expect = (cfg.num_anchors, cfg.plan_horizon, 2)
    if tuple(flat.shape) != expect:
        raise ValueError(
            f"anchors from {source} have shape {tuple(flat.shape)}, the model needs {expect} "
            f"(num_anchors, plan_horizon, 2): rerun 'sparseoccvla anchors' with --per-command "
            f"{cfg.anchors_per_command} --horizon {cfg.plan_horizon}"
        )
    model.planner.set_anchors(flat, commands)
    return source


def _check_resumable(out: Path, tcfg: TrainConfig) -> Path:
    """The newest per-epoch checkpoint of ``out``, whose run had the same training settings as ``tcfg``."""
    resume_from = latest_checkpoint(out)
    if resume_from is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {out / CHECKPOINT_DIR}; start without --resume")
    diff = TrainConfig.from_yaml(out / TRAIN_CONFIG_FILE).diff(tcfg)
    if diff:
        raise ValueError(
            f"--resume with different training settings than {out / TRAIN_CONFIG_FILE}:\n"
            + format_config_diff(diff, "run", "given")
            + "\nresume with the run's settings"
        )
    return resume_from


def _model_and_data(
    start: Optional[Path], given_cfg: Optional[SparseOccVLAConfig], root: Path, stage: int, tcfg: TrainConfig
) -> tuple["SparseOccVLA", "DrivingDataset"]:
    """The model a stage starts from (the folder ``start``, or a new one of ``given_cfg``) and its training split."""
    from .data.dataset import DrivingDataset
    from .model import SparseOccVLA

    if start is not None:
        model = SparseOccVLA.from_pretrained(start, config=given_cfg)
        dataset = DrivingDataset(
            root, tcfg.train_split, model.cfg, model.tokenizer, dataset_options(tcfg, stage, model.cfg)
        )
        return model, dataset
    if given_cfg is None:
        raise ValueError("stage 1 from scratch needs --config (a model config YAML such as config/model_tiny.yaml)")
    # index the split once without text, train / load the tokenizer, then let the dataset encode text with it
    dataset = DrivingDataset(root, tcfg.train_split, given_cfg, None, dataset_options(tcfg, stage, given_cfg))
    dataset.tokenizer = build_tokenizer(given_cfg, dataset) if len(dataset) else None
    return SparseOccVLA(given_cfg, dataset.tokenizer), dataset


def run_stage(
    stage: int,
    data: str | Path,
    out: str | Path,
    *,
    config: Optional[str] = None,
    train_config: Optional[str] = None,
    init: Optional[str | Path] = None,
    resume: bool = False,
    anchors: Optional[str] = None,
    overrides: TrainOverrides = TrainOverrides(),
    progress: bool = True,
) -> StageState:
    """Train one stage from files: resolve everything, then :func:`train_stage`.

    Args:
        stage: 1, 2 or 3 (paper sec. 4.2).
        data: dataset root (nuScenes layout).
        out: output folder of this stage.
        config: model config YAML or preset name; required for stage 1 from scratch, otherwise it must agree with
            the checkpoint the stage starts from.
        train_config: training config YAML or preset name (default: paper).
        init: output folder of the previous stage (stages 2 and 3).
        resume: continue ``out`` from its newest checkpoint (nothing to do when ``out`` is complete).
        anchors: planning anchors file; without one, K-means on the training split when the model has none.
        overrides: training-config values that replace the file's.
        progress: show a tqdm bar.
    Returns:
        The stage's :class:`StageState` after training.
    """
    from accelerate.utils import set_seed

    from .data.dataset import make_collate
    from .data.layout import resolve_layout

    out = Path(out)
    tcfg = load_train_config(train_config, stage, overrides)
    layout = resolve_layout(data)  # clear errors for a missing root / version folder / table
    given_cfg = load_model_config(config) if config else None
    set_seed(tcfg.seed)

    resume_from: Optional[Path] = None
    if resume:
        if (out / STATE_FILE).is_file():
            done = StageState.read(out)
            if done.stage != stage:
                raise ValueError(f"{out} holds a finished stage-{done.stage} run, not stage {stage}")
            print(f"stage {stage} in {out} is already complete ({done.epoch}/{done.epochs} epochs); nothing to do")
            return done
        resume_from = _check_resumable(out, tcfg)
        init = StageState.read(resume_from).init
        model, dataset = _model_and_data(resume_from, given_cfg, layout.root, stage, tcfg)
    else:
        check_fresh_out_dir(out)
        check_stage_order(stage, init)
        model, dataset = _model_and_data(None if init is None else Path(init), given_cfg, layout.root, stage, tcfg)
    if len(dataset) == 0:
        raise ValueError(
            f"split {tcfg.train_split!r} of {layout.root} has no key frame (check splits.json / the version)"
        )

    if resume_from is None and (anchors is not None or not bool(model.planner.anchors_from_data)):
        source = install_anchors(model, anchors, layout.root, tcfg.train_split, tcfg.seed)
        print(f"planning anchors: {source}")
    if resume_from is None:
        out.mkdir(parents=True, exist_ok=True)
        tcfg.to_yaml(out / TRAIN_CONFIG_FILE)
    return train_stage(
        model,
        dataset,
        make_collate(model.tokenizer),
        stage,
        tcfg,
        out,
        resume_from=resume_from,
        init=init,
        progress=progress,
    )
