"""The loop of the three SparseOccVLA training stages (paper sec. 4.2): :func:`train_stage` and :func:`update_policy`.

Stage 1 trains the sparse occupancy encoder + connector (occupancy Chamfer / focal losses and the CLIP
distillation, eqs. 1-3); stage 2 freezes the visual encoder and trains the connector, global queries,
forecaster and planner; stage 3 trains everything except the LLM base weights, which are tuned through LoRA
(total loss eq. 12).  Each stage starts from the previous stage's output (``--init``); which parameters a stage
trains is decided by the model (``SparseOccVLA.set_stage``), and only those reach the optimizer.

Optimisation (sec. 4.2; SparseWorld where the paper is silent, see ``train_config.py``): AdamW at 2e-4,
linear warm-up then cosine decay per optimizer update, gradient clipping and accumulation, bf16 autocast on
GPU (fp32 on CPU), all through ``accelerate`` so that one process or DDP on many GPUs runs the same code::

    sparseoccvla train --stage 1 --config config/model_tiny.yaml --train-config config/train_tiny.yaml \\
        --data data/synth --out runs/stage1
    sparseoccvla train --stage 2 --train-config config/train_tiny.yaml --data data/synth --init runs/stage1 --out runs/stage2
    sparseoccvla train --stage 3 --train-config config/train_tiny.yaml --data data/synth --init runs/stage2 --out runs/stage3
    # several GPUs (DDP), unchanged arguments:
    accelerate launch --multi_gpu --num_processes 8 -m sparseoccvla_core.cli train --stage 1 ...
    torchrun --nproc_per_node 8 -m sparseoccvla_core.cli train --stage 1 ...

Output folder of a stage (``--out``)::

    checkpoints/epoch_NNN/   model (save_pretrained: safetensors + config + tokenizer), training_state.pt
                             (optimizer + scheduler state, loaded with weights_only=True), rng_state_<rank>.safetensors,
                             trainer_state.json (stage, epoch, step; written last, so a folder without it is ignored)
    model files + trainer_state.json   the stage's final model (what the next stage's --init points at)
    train_config.yaml, losses.csv (one row per optimizer update), tensorboard/ (when tensorboard is installed)

``--resume`` continues a stage at the epoch after its newest checkpoint with the identical schedule.

The loop takes any :class:`StageModel`; :func:`sparseoccvla_core.train_setup.run_stage` builds the model, data and
configs of ``sparseoccvla train`` (whose flags sparseoccvla_core/commands/train.py parses) and
:mod:`sparseoccvla_core.text_pretraining` runs the text step of a random LLM through the same loop.
"""

from __future__ import annotations

import csv
import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Protocol, Union

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .model import LOSS_NAMES, TOTAL_LOSS  # the eq.-12 terms, logged in this column order
from .train_config import STAGES, TrainConfig

if TYPE_CHECKING:  # heavy or optional imports, for annotations only
    from accelerate import Accelerator
    from tqdm.auto import tqdm


STATE_FILE: str = "trainer_state.json"
OPTIM_FILE: str = "training_state.pt"
TRAIN_CONFIG_FILE: str = "train_config.yaml"
LOSS_CSV: str = "losses.csv"
CHECKPOINT_DIR: str = "checkpoints"
STATE_FORMAT: int = 1


# ============================================================================ learning-rate schedule
def lr_factor(step: int, total_steps: int, warmup_steps: int, warmup_start_ratio: float, min_lr_ratio: float) -> float:
    """Multiplier of the base learning rate before optimizer update ``step`` (0-based).

    Linear warm-up from ``warmup_start_ratio`` to 1 over ``warmup_steps`` updates (capped at half the run, so a
    short run still decays), then half-cosine decay from 1 to ``min_lr_ratio`` at ``total_steps``.

    Args:
        step: optimizer updates already done.
        total_steps: updates of the whole stage.
        warmup_steps: requested warm-up updates.
        warmup_start_ratio: factor at update 0.
        min_lr_ratio: factor at the end.
    Returns:
        The factor in [min(min_lr_ratio, warmup_start_ratio), 1].
    """
    warmup = min(warmup_steps, total_steps // 2)
    if step < warmup:
        return warmup_start_ratio + (1.0 - warmup_start_ratio) * step / warmup
    decay_steps = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, tcfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up + cosine schedule, stepped once per optimizer update (not per micro-batch)."""

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, tcfg.warmup_steps, tcfg.warmup_start_ratio, tcfg.min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ============================================================================ optimizer
def trainable_parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups of the parameters with ``requires_grad`` (the current stage's).

    Weight matrices / kernels (>= 2-D) get weight decay; biases, norm scales and other 1-D parameters do not
    (standard practice for transformers; decaying LayerNorm gains only fights the normalisation).

    Raises:
        ValueError: when the model has no trainable parameter (a stage that trains nothing).
    """
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameter for this stage (check SparseOccVLA.set_stage)")
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, tcfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters only (frozen ones never enter the optimizer state)."""
    return torch.optim.AdamW(
        trainable_parameter_groups(model, tcfg.weight_decay),
        lr=tcfg.lr,
        betas=tuple(tcfg.adam_betas),
        eps=tcfg.adam_eps,
    )


# ============================================================================ data order
class EpochShuffleSampler(Sampler[int]):
    """A fresh random order every epoch, a pure function of (seed, epoch).

    Resuming at epoch e therefore reproduces the uninterrupted run's order, and under DDP every process draws
    the same permutation before ``accelerate`` shards its batches.
    """

    def __init__(self, num_items: int, seed: int) -> None:
        self.num_items = int(num_items)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_items

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_items, generator=generator).tolist())


# ============================================================================ RNG state (no pickles)
def capture_rng_state() -> dict[str, torch.Tensor]:
    """Python / NumPy / torch (CPU and CUDA) RNG states as plain tensors (safetensors-serialisable)."""
    state: dict[str, torch.Tensor] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda_{i}"] = s
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    state["numpy_meta"] = torch.tensor([pos, has_gauss], dtype=torch.int64)
    state["numpy_gauss"] = torch.tensor([cached], dtype=torch.float64)
    version, internal, gauss = random.getstate()
    state["python_internal"] = torch.tensor(internal, dtype=torch.int64)
    state["python_meta"] = torch.tensor([version], dtype=torch.int64)
    state["python_gauss"] = torch.tensor([math.nan if gauss is None else gauss], dtype=torch.float64)
    return state


def restore_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available():
        cuda = [state[f"cuda_{i}"] for i in range(torch.cuda.device_count()) if f"cuda_{i}" in state]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    pos, has_gauss = (int(v) for v in state["numpy_meta"].tolist())
    np.random.set_state(
        ("MT19937", state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, float(state["numpy_gauss"][0]))
    )
    gauss = float(state["python_gauss"][0])
    random.setstate(
        (
            int(state["python_meta"][0]),
            tuple(int(v) for v in state["python_internal"].tolist()),
            None if math.isnan(gauss) else gauss,
        )
    )


# ============================================================================ loss log
class LossLogger:
    """Per-update losses to ``losses.csv`` (and TensorBoard when installed), main process only.

    Columns: step, epoch, lr, every named loss, the total ``loss``, ``grad_norm`` and ``seconds`` (wall time of
    the update).  A loss a stage does not compute is left empty.  On resume the file is cut back to the rows of
    the epochs the checkpoint contains, so a crashed epoch's partial rows never appear twice.
    """

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool = True) -> None:
        self.path = Path(out_dir) / LOSS_CSV
        self.enabled = enabled
        self.columns: Optional[list[str]] = None
        self._file = None
        self._writer = None
        self._tb = None
        if enabled and tensorboard:
            try:  # optional dependency
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))
            except (ImportError, ModuleNotFoundError):
                self._tb = None

    def truncate_after(self, epoch: int) -> None:
        """Drop rows of epochs > ``epoch`` (resume)."""
        if not self.enabled or not self.path.exists():
            return
        with self.path.open(newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        header, body = rows[0], rows[1:]
        col = header.index("epoch")
        kept = [r for r in body if int(r[col]) <= epoch]
        with self.path.open("w", newline="") as f:
            csv.writer(f).writerows([header] + kept)

    def log(self, row: dict[str, float], tb_every: int = 1) -> None:
        if not self.enabled:
            return
        if self.columns is None:
            if self.path.exists() and self.path.stat().st_size > 0:
                with self.path.open(newline="") as f:
                    self.columns = next(csv.reader(f))
                self._file = self.path.open("a", newline="")
                self._writer = csv.writer(self._file)
            else:
                extra = sorted(
                    k
                    for k in row
                    if k not in LOSS_NAMES and k not in ("step", "epoch", "lr", TOTAL_LOSS, "grad_norm", "seconds")
                )
                self.columns = ["step", "epoch", "lr", *LOSS_NAMES, *extra, TOTAL_LOSS, "grad_norm", "seconds"]
                self._file = self.path.open("w", newline="")
                self._writer = csv.writer(self._file)
                self._writer.writerow(self.columns)
        self._writer.writerow(["" if row.get(c) is None else _fmt(row[c]) for c in self.columns])
        self._file.flush()
        if self._tb is not None and int(row["step"]) % tb_every == 0:
            for key, value in row.items():
                if key not in ("step", "epoch") and value is not None:
                    self._tb.add_scalar(f"train/{key}", value, int(row["step"]))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _fmt(value: Union[float, int, str]) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def read_loss_csv(path: str | Path) -> list[dict[str, Union[int, float, None]]]:
    """Rows of a ``losses.csv`` as dicts of floats (empty cells -> None; step/epoch as int)."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        d: dict[str, Union[int, float, None]] = {}
        for k, v in r.items():
            if k in ("step", "epoch"):
                d[k] = int(v)
            else:
                d[k] = float(v) if v != "" else None
        out.append(d)
    return out


# ============================================================================ checkpoints + stage order
@dataclass
class StageState:
    """What ``trainer_state.json`` records about a stage run (the checkpoint's training metadata).

    Args:
        stage: the paper's training stage (1, 2 or 3) that produced the weights.
        epoch: epochs completed.
        epochs: epochs the stage is scheduled for.
        global_step: optimizer updates done.
        updates_per_epoch: optimizer updates per epoch (the schedule depends on it; resume checks it).
        complete: True once ``epoch == epochs``.
        init: the ``--init`` folder the stage started from (None for stage 1 from scratch).
    """

    stage: int
    epoch: int
    epochs: int
    global_step: int
    updates_per_epoch: int
    complete: bool
    init: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, **self.__dict__}

    @classmethod
    def read(cls, folder: str | Path) -> "StageState":
        path = Path(folder) / STATE_FILE
        data = json.loads(path.read_text())
        data.pop("format", None)
        return cls(
            **{k: data[k] for k in ("stage", "epoch", "epochs", "global_step", "updates_per_epoch", "complete")},
            init=data.get("init"),
        )

    def write(self, folder: str | Path) -> None:
        (Path(folder) / STATE_FILE).write_text(json.dumps(self.to_json(), indent=2) + "\n")


def latest_checkpoint(out_dir: str | Path) -> Optional[Path]:
    """Newest complete per-epoch checkpoint under ``<out>/checkpoints`` (one holding ``trainer_state.json``)."""
    root = Path(out_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return None
    done = [p for p in root.glob("epoch_*") if p.is_dir() and (p / STATE_FILE).is_file()]
    if not done:
        return None
    return max(done, key=lambda p: StageState.read(p).epoch)


def check_stage_order(stage: int, init: Optional[str | Path]) -> Optional[StageState]:
    """Refuse a stage that does not start from the previous stage's output (paper sec. 4.2).

    Stage 1 may start from scratch (``init`` None), from a plain model folder (``save_pretrained`` output
    without training metadata, e.g. converted pretrained weights) or from a stage-1 checkpoint.  Stage k >= 2
    needs a checkpoint written by stage k-1.

    Returns:
        The init checkpoint's :class:`StageState`, or None when it has none.
    Raises:
        FileNotFoundError: ``init`` does not exist.
        ValueError: wrong stage order, with what to run instead.
    """
    if stage not in STAGES:
        raise ValueError(f"--stage must be one of {STAGES}, got {stage}")
    if init is None:
        if stage > 1:
            raise ValueError(
                f"stage {stage} starts from the output of stage {stage - 1}: pass --init <stage-{stage - 1} output dir> "
                f"(paper sec. 4.2: each stage loads the previous stage's weights)"
            )
        return None
    init = Path(init)
    if not init.is_dir():
        raise FileNotFoundError(f"--init {init} does not exist (give the --out folder of the previous stage)")
    if not (init / STATE_FILE).is_file():
        if stage > 1:
            raise ValueError(
                f"--init {init} has no {STATE_FILE}, so it was not produced by 'sparseoccvla train --stage {stage - 1}'; "
                f"stage {stage} must start from the stage-{stage - 1} output"
            )
        return None
    state = StageState.read(init)
    expected = stage - 1 if stage > 1 else 1
    if state.stage != expected:
        if stage == 1:
            raise ValueError(
                f"--init {init} is a stage-{state.stage} checkpoint; stage 1 starts from scratch, a model folder or a "
                f"stage-1 checkpoint"
            )
        raise ValueError(
            f"wrong stage order: --init {init} was produced by stage {state.stage}, but stage {stage} must start "
            f"from the output of stage {stage - 1}"
            + (f" (run stage {state.stage + 1} first)" if state.stage < stage - 1 else "")
        )
    return state


def check_fresh_out_dir(out_dir: Path) -> None:
    """A new run must not overwrite another run's checkpoints silently."""
    if (out_dir / STATE_FILE).exists() or latest_checkpoint(out_dir) is not None:
        raise FileExistsError(
            f"{out_dir} already holds a training run; pass --resume to continue it or choose another --out"
        )


def format_config_diff(diff: dict[str, tuple[Any, Any]], left: str, right: str) -> str:
    """One line per differing field: ``name: <left> = a, <right> = b``."""
    return "\n".join(f"  {k}: {left} = {a!r}, {right} = {b!r}" for k, (a, b) in sorted(diff.items()))


def _save_checkpoint(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: StageState,
    accelerator: "Accelerator",
) -> None:
    """Write one per-epoch checkpoint atomically: everything goes to ``<folder>.tmp``, then a rename."""
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        accelerator.unwrap_model(model).save_pretrained(tmp)
        blob = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": state.epoch,
            "global_step": state.global_step,
        }
        if getattr(accelerator, "scaler", None) is not None:  # fp16 loss scaling
            blob["grad_scaler"] = accelerator.scaler.state_dict()
        torch.save(blob, tmp / OPTIM_FILE)
    accelerator.wait_for_everyone()
    save_file(
        {k: v.contiguous() for k, v in capture_rng_state().items()},
        str(tmp / f"rng_state_{accelerator.process_index}.safetensors"),
    )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state.write(tmp)  # written last: marks the checkpoint complete
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    accelerator.wait_for_everyone()


def _load_training_state(
    folder: Path,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    accelerator: "Accelerator",
) -> None:
    from safetensors.torch import load_file

    blob = torch.load(folder / OPTIM_FILE, map_location="cpu", weights_only=True)  # plain tensors / numbers only
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    if "grad_scaler" in blob and getattr(accelerator, "scaler", None) is not None:
        accelerator.scaler.load_state_dict(blob["grad_scaler"])
    process_index = accelerator.process_index
    rng_file = folder / f"rng_state_{process_index}.safetensors"
    if not rng_file.exists():  # resumed on more processes than saved: derive from rank 0's state
        rng_file = folder / "rng_state_0.safetensors"
    restore_rng_state(load_file(str(rng_file)))


def _prune_checkpoints(out_dir: Path, keep: int) -> None:
    root = out_dir / CHECKPOINT_DIR
    done = sorted(
        (p for p in root.glob("epoch_*") if (p / STATE_FILE).is_file()), key=lambda p: StageState.read(p).epoch
    )
    for old in done[:-keep]:
        shutil.rmtree(old)


# ============================================================================ the training loop
def resolve_mixed_precision(tcfg: TrainConfig) -> str:
    """``auto`` -> bf16 on CUDA (when supported), fp32 ("no") otherwise."""
    if tcfg.mixed_precision != "auto":
        return tcfg.mixed_precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def make_accelerator(tcfg: TrainConfig) -> "Accelerator":
    import os

    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    accelerator = Accelerator(
        gradient_accumulation_steps=tcfg.grad_accum_steps,
        mixed_precision=resolve_mixed_precision(tcfg),
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=tcfg.ddp_find_unused_parameters)],
        # without CUDA, accelerate joins a torchrun / accelerate-launch process group only when told it runs on CPU
        cpu=not torch.cuda.is_available(),
    )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != accelerator.num_processes:
        raise RuntimeError(
            f"launched as {world} processes but accelerate set up {accelerator.num_processes}; every process would "
            "train alone. Launch with 'accelerate launch' or 'torchrun' and check the distributed environment"
        )
    return accelerator


class StageModel(Protocol):
    """What :func:`train_stage` needs from a network (``SparseOccVLA`` implements it; tests use a toy module).

    ``set_stage(stage, train_llm_base=...)`` sets ``requires_grad`` for the stage (``train_llm_base``: also the
    LLM's base weights, :attr:`TrainConfig.train_llm_base`; a model without such weights ignores it), calling the
    model with ``(batch, stage)`` returns the named 0-d losses plus :data:`TOTAL_LOSS`, ``save_pretrained(folder)``
    writes the weights.
    """

    def set_stage(self, stage: int, train_llm_base: bool = False) -> None: ...

    def train(self, mode: bool = True) -> object: ...

    def __call__(self, batch: "MovableBatch", stage: int) -> dict[str, torch.Tensor]: ...

    def save_pretrained(self, directory: str | Path) -> object: ...


class MovableBatch(Protocol):
    """A collated batch (``DrivingBatch`` in this project) that moves itself to a device."""

    def to(self, device: torch.device) -> "MovableBatch": ...


@dataclass
class Optimization:
    """Everything one optimizer update uses, built once per stage by :func:`train_stage`.

    Args:
        accelerator: the ``accelerate.Accelerator`` (accumulation, mixed precision, DDP).
        optimizer: AdamW over the stage's trainable parameters (prepared by ``accelerator``).
        scheduler: warm-up + cosine schedule, stepped once per update.
        trainable: the optimizer's parameters (gradient clipping).
        max_norm: gradient-clipping norm (inf = no clipping, the norm is still measured).
        allow_nonfinite: fp16 loss scaling skips inf steps by design; otherwise a non-finite loss or norm raises.
    """

    accelerator: "Accelerator"
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    trainable: list[nn.Parameter]
    max_norm: float
    allow_nonfinite: bool


@dataclass
class UpdateStats:
    """What one optimizer update logs.

    Args:
        losses: mean of every named loss (and :data:`TOTAL_LOSS`) over the update's micro-batches and processes.
        grad_norm: gradient norm before clipping.
        lr: learning rate the update used.
    """

    losses: dict[str, float]
    grad_norm: float
    lr: float


class LossAccumulator:
    """Sums of the 0-d losses of the micro-batches of one optimizer update (gradient accumulation)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, out: dict[str, torch.Tensor]) -> None:
        """Add one micro-batch's losses (non-scalar entries are ignored)."""
        for name, value in out.items():
            if isinstance(value, torch.Tensor) and value.dim() == 0:
                v = value.detach().float()
                self.sums[name] = self.sums[name] + v if name in self.sums else v
        self.count += 1

    def pop_means(self, accelerator: "Accelerator") -> dict[str, float]:
        """Means over the micro-batches, averaged over processes; then start the next update from zero."""
        names = list(self.sums)
        means = accelerator.reduce(torch.stack([self.sums[n] for n in names]) / self.count, reduction="mean")
        self.sums, self.count = {}, 0
        return dict(zip(names, means.tolist()))


def update_policy(
    model: StageModel, batch: MovableBatch, stage: int, opt: Optimization, losses: LossAccumulator, where: str
) -> Optional[UpdateStats]:
    """One micro-batch: forward + backward; at an accumulation boundary also clip, check and step (one update).

    The optimizer update of LeRobot's ``update_policy``, with ``accelerate``'s gradient accumulation around it.

    Args:
        model: the prepared model.
        batch: one micro-batch on the device.
        stage: training stage passed to the model.
        opt: optimizer, scheduler and clipping settings.
        losses: the current update's loss sums (this micro-batch is added; emptied after an update).
        where: names the update in errors (stage, epoch, update index).
    Returns:
        The update's :class:`UpdateStats`, or None while gradients are still being accumulated.
    Raises:
        FloatingPointError: a non-finite loss or gradient norm (unless ``opt.allow_nonfinite``); nothing is stepped.
    """
    accelerator = opt.accelerator
    with accelerator.accumulate(model):
        out = model(batch, stage)
        accelerator.backward(out[TOTAL_LOSS])
        losses.add(out)
        if not accelerator.sync_gradients:
            return None
        grad_norm = accelerator.clip_grad_norm_(opt.trainable, opt.max_norm)
        values = losses.pop_means(accelerator)
        grad_norm_value = float(grad_norm)
        if not opt.allow_nonfinite and not (math.isfinite(grad_norm_value) and math.isfinite(values[TOTAL_LOSS])):
            bad = sorted(n for n, v in values.items() if not math.isfinite(v))
            raise FloatingPointError(
                f"{where}: non-finite {'losses ' + str(bad) if bad else 'gradient norm'} (loss values {values}); "
                "lower lr or check the batch"
            )
        lr = opt.optimizer.param_groups[0]["lr"]
        opt.optimizer.step()
        opt.scheduler.step()
        opt.optimizer.zero_grad(set_to_none=True)
        return UpdateStats(values, grad_norm_value, lr)


def _train_epoch(
    model: StageModel,
    loader: DataLoader,
    stage: int,
    epoch: int,
    opt: Optimization,
    logger: LossLogger,
    global_step: int,
    log_every: int,
    bar: "tqdm",
) -> int:
    """One epoch of updates (0-based ``epoch``), one ``losses.csv`` row each; returns the new global step."""
    losses = LossAccumulator()
    t0 = time.perf_counter()
    for batch in loader:
        where = f"stage {stage} epoch {epoch + 1} update {global_step + 1}"
        update = update_policy(model, batch.to(opt.accelerator.device), stage, opt, losses, where)
        if update is None:
            continue
        global_step += 1
        row = {"step": global_step, "epoch": epoch + 1, "lr": update.lr, **update.losses}
        logger.log({**row, "grad_norm": update.grad_norm, "seconds": time.perf_counter() - t0}, log_every)
        if global_step % log_every == 0:
            bar.set_postfix(loss=f"{update.losses[TOTAL_LOSS]:.4f}", lr=f"{update.lr:.2e}")
        bar.update(1)
        t0 = time.perf_counter()
    return global_step


def _resume_position(
    resume_from: Path, stage: int, n_epochs: int, updates_per_epoch: int, opt: Optimization, logger: LossLogger
) -> tuple[int, int]:
    """Restore optimizer / scheduler / RNG from a per-epoch checkpoint; returns (epochs done, updates done).

    Raises:
        ValueError: the checkpoint is another stage's, or its schedule differs from this run's.
    """
    ckpt = StageState.read(resume_from)
    if ckpt.stage != stage:
        raise ValueError(f"{resume_from} is a stage-{ckpt.stage} checkpoint; cannot resume stage {stage} from it")
    if ckpt.updates_per_epoch != updates_per_epoch or ckpt.epochs != n_epochs:
        raise ValueError(
            f"cannot resume {resume_from} with an identical schedule: it ran {ckpt.updates_per_epoch} updates/epoch "
            f"for {ckpt.epochs} epochs, this run has {updates_per_epoch} updates/epoch for {n_epochs} epochs "
            "(dataset size, batch size, accumulation, process count or epochs changed)"
        )
    _load_training_state(resume_from, opt.optimizer, opt.scheduler, opt.accelerator)
    logger.truncate_after(ckpt.epoch)
    opt.accelerator.print(f"resuming stage {stage} at epoch {ckpt.epoch + 1}/{n_epochs} from {resume_from}")
    return ckpt.epoch, ckpt.global_step


def train_stage(
    model: StageModel,
    dataset: Dataset,
    collate_fn: Callable[[list], MovableBatch],
    stage: int,
    tcfg: TrainConfig,
    out_dir: str | Path,
    *,
    resume_from: Optional[str | Path] = None,
    init: Optional[str | Path] = None,
    accelerator: Optional["Accelerator"] = None,
    progress: bool = True,
    epochs: Optional[int] = None,
    on_epoch_end: Optional[Callable[[StageState], None]] = None,
) -> StageState:
    """Train one stage; checkpoint every epoch; export the final model to ``out_dir``.

    The model must already hold the right weights (fresh, ``--init`` or the resume checkpoint) and follow
    :class:`StageModel`.  Batches are moved to the device with ``batch.to(device)``; each optimizer update is one
    :func:`update_policy` per micro-batch.

    Args:
        model: the network (not yet wrapped by accelerate).
        dataset: training items; ``collate_fn`` turns a list of them into a batch.
        collate_fn: list of items -> batch object with ``.to(device)``.
        stage: 1, 2 or 3 (sets the trainable parameters through ``model.set_stage``).
        tcfg: optimisation settings.
        out_dir: the stage's output folder.
        resume_from: a per-epoch checkpoint whose optimizer / scheduler / RNG state to continue from (the model
            weights must already be loaded from it).
        init: recorded in the metadata (the folder the stage started from).
        accelerator: an ``accelerate.Accelerator``; built from ``tcfg`` when None.
        progress: show a tqdm bar (main process only).
        epochs: epochs of the stage; default ``tcfg.epochs_for(stage)``.
        on_epoch_end: called with the new :class:`StageState` after each epoch's checkpoint (e.g. a validation).
    Returns:
        The final :class:`StageState` (complete).
    Raises:
        ValueError: empty dataset, or a resume checkpoint whose schedule differs.
        FloatingPointError: a non-finite loss / gradient norm (names the loss terms).
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    n_epochs = int(epochs if epochs is not None else tcfg.epochs_for(stage))
    if len(dataset) == 0:
        raise ValueError(f"the training split is empty: no sample to train stage {stage} on")
    accelerator = accelerator or make_accelerator(tcfg)
    main = accelerator.is_main_process
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)

    # 1. stage -> trainable parameters -> optimizer (only trainable parameters enter it)
    # train_llm_base applies to stage 3 only (and a random LLM: the model refuses a pretrained one)
    model.set_stage(stage, train_llm_base=tcfg.train_llm_base and stage == 3)
    optimizer = build_optimizer(model, tcfg)
    sampler = EpochShuffleSampler(len(dataset), tcfg.seed)
    loader = DataLoader(
        dataset,
        batch_size=tcfg.batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=tcfg.num_workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=False,
        persistent_workers=tcfg.num_workers > 0,
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    # batches are DrivingBatch objects: moved to the device here, not by accelerate's generic walker
    loader = accelerator.prepare_data_loader(loader, device_placement=False)
    updates_per_epoch = math.ceil(len(loader) / tcfg.grad_accum_steps)
    opt = Optimization(
        accelerator=accelerator,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, tcfg, updates_per_epoch * n_epochs),
        trainable=[p for group in optimizer.param_groups for p in group["params"]],
        max_norm=tcfg.grad_clip if tcfg.grad_clip > 0 else float("inf"),
        allow_nonfinite=resolve_mixed_precision(tcfg) == "fp16",  # fp16 loss scaling skips inf steps by design
    )

    # 2. resume: optimizer / scheduler / RNG exactly as at the end of the checkpoint's epoch
    start_epoch, global_step = 0, 0
    logger = LossLogger(out_dir, enabled=main)
    if resume_from is not None:
        resume_from = Path(resume_from)
        start_epoch, global_step = _resume_position(resume_from, stage, n_epochs, updates_per_epoch, opt, logger)

    init_name = None if init is None else str(init)
    state = StageState(stage, start_epoch, n_epochs, global_step, updates_per_epoch, start_epoch >= n_epochs, init_name)
    show_bar = progress and accelerator.is_local_main_process
    try:
        for epoch in range(start_epoch, n_epochs):
            model.train()
            loader.set_epoch(epoch)
            desc = f"stage {stage} epoch {epoch + 1}/{n_epochs}"
            bar = tqdm(total=updates_per_epoch, desc=desc, disable=not show_bar, leave=False)
            global_step = _train_epoch(model, loader, stage, epoch, opt, logger, global_step, tcfg.log_every, bar)
            bar.close()
            # 3. checkpoint every epoch
            done = epoch + 1 == n_epochs
            state = StageState(stage, epoch + 1, n_epochs, global_step, updates_per_epoch, done, init_name)
            folder = out_dir / CHECKPOINT_DIR / f"epoch_{epoch + 1:03d}"
            _save_checkpoint(folder, model, optimizer, opt.scheduler, state, accelerator)
            if main:
                _prune_checkpoints(out_dir, tcfg.keep_checkpoints)
            if on_epoch_end is not None:
                on_epoch_end(state)
        # 4. the stage's result at the top of --out: what the next stage's --init points at
        if main:
            accelerator.unwrap_model(model).save_pretrained(out_dir)
            state.write(out_dir)
        accelerator.wait_for_everyone()
    finally:
        logger.close()
    return state
