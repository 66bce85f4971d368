"""Training hyper-parameters of the three SparseOccVLA stages: one typed dataclass, YAML round trip, presets.

Paper sec. 4.2: AdamW, base learning rate 2e-4, cosine decay, 36 / 6 / 12 epochs for stages 1 / 2 / 3, total
batch 16 on 8 GPUs.  The paper is silent on weight decay, warm-up, clipping and the final learning rate; those
follow SparseWorld (same first author, docs/reference_choices.md §9.1): weight decay 0.01, 500 linear warm-up
updates starting at 1/3 of the base rate, cosine down to 1e-3 of it, gradient-norm clipping at 5.

Usage::

    tcfg = TrainConfig.paper()                          # or TrainConfig.tiny(), TrainConfig.from_yaml(path)
    tcfg.to_yaml("train.yaml")
    tcfg.epochs_for(stage=2)                            # -> 6

A YAML file holds ``preset: tiny|paper`` plus overrides (``config/train_tiny.yaml``, ``config/train_paper.yaml``)
or every field; unknown keys are rejected.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from .config import PresetYamlMixin

#: The paper's training stages (sec. 4.2).
STAGES: tuple[int, ...] = (1, 2, 3)
MIXED_PRECISION_CHOICES: tuple[str, ...] = ("auto", "no", "bf16", "fp16")


@dataclass
class TrainConfig(PresetYamlMixin):
    """Optimisation settings shared by the three stages (only ``epochs`` differs per stage).

    Args:
        epochs: epochs of stage 1, 2 and 3 (paper: 36, 6, 12).
        batch_size: samples per device per micro-batch (paper: 16 in total = 2 per GPU on 8 GPUs).
        grad_accum_steps: micro-batches accumulated per optimizer update (effective batch =
            batch_size x grad_accum_steps x number of processes).
        lr: base learning rate of AdamW (paper: 2e-4).
        weight_decay: AdamW decoupled weight decay, applied to weight matrices only (not to biases, norms or
            1-D parameters); SparseWorld: 0.01.
        adam_betas: AdamW (beta1, beta2).
        adam_eps: AdamW epsilon.
        warmup_steps: optimizer updates of linear warm-up (SparseWorld: 500); capped at half the stage's updates
            so a short run still decays.
        warmup_start_ratio: learning-rate factor at update 0 of the warm-up (SparseWorld: 1/3).
        min_lr_ratio: learning-rate factor at the end of the cosine decay (SparseWorld: 1e-3).
        grad_clip: maximum global gradient L2 norm (SparseWorld: 5); 0 disables clipping (the norm is still
            logged).
        mixed_precision: "auto" (bf16 autocast on CUDA, fp32 on CPU), "no", "bf16" or "fp16" (passed to
            ``accelerate.Accelerator``).
        num_workers: DataLoader worker processes per device.
        seed: seed of the data order, model initialisation and every RNG; a run is reproducible per seed.
        keep_checkpoints: per-epoch checkpoints kept under ``<out>/checkpoints`` (older ones are deleted).
        train_split: dataset split trained on.
        ddp_find_unused_parameters: let DDP tolerate trainable parameters that a stage's losses do not reach
            (safe default; disable for speed once a stage is known to use every trainable parameter).
        log_every: update the progress bar / TensorBoard every this many optimizer updates (the CSV gets
            every update).
        qa_sources: QA sources the understanding stream samples from during training (None = the loader's
            default: every source present; see ``sparseoccvla_core.data.qa.QA_SOURCES``).
        max_gt_points: keep at most this many points of each GT occupancy set per item (None = all; a cap bounds
            the Chamfer cost on dense real labels).
        gt_keep_classes: Occ3D classes whose GT points the cap never drops (the cap subsamples the others):
            uniform subsampling leaves a car ~30 of its ~120 visible voxels, so a decoded point inside a car voxel
            finds a road point nearer than any car point and learns "road" (docs/experiments.md §10).
        augment: image augmentation in the loader (random resize / crop / colour, ``DatasetOptions``).
        occ_visibility: which labelled voxels supervise the occupancy: "none" (all, as OPUS / SparseWorld train),
            "camera" or "lidar" (Occ3D visibility masks; training with the camera mask raises the camera-masked
            mIoU, docs/reference_choices.md §3.5, at the cost of the unmasked one).
        train_llm_base: stage 3 also trains the LLM base weights (not only LoRA).  Only valid for a randomly
            initialised LLM (model ``llm_path`` None, e.g. the tiny preset used by the learning check): the paper's
            LoRA-only rule (sec. 4.2) protects a pretrained LLM, and a random one has nothing to protect.
    """

    _yaml_label: ClassVar[str] = "training config"

    epochs: tuple[int, int, int] = (36, 6, 12)
    batch_size: int = 2
    grad_accum_steps: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    warmup_steps: int = 500
    warmup_start_ratio: float = 1.0 / 3.0
    min_lr_ratio: float = 1e-3
    grad_clip: float = 5.0
    mixed_precision: str = "auto"
    num_workers: int = 4
    seed: int = 0
    keep_checkpoints: int = 1
    train_split: str = "train"
    ddp_find_unused_parameters: bool = True
    log_every: int = 1
    qa_sources: Optional[tuple[str, ...]] = None
    max_gt_points: Optional[int] = None
    gt_keep_classes: tuple[int, ...] = ()
    augment: bool = False
    occ_visibility: str = "none"
    train_llm_base: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                setattr(self, f.name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field to change."""
        if len(self.epochs) != len(STAGES) or any(int(e) < 1 for e in self.epochs):
            raise ValueError(f"epochs must give one positive epoch count per stage (3 values), got {self.epochs}")
        for name in ("batch_size", "grad_accum_steps", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two values in [0, 1), got {self.adam_betas}")
        if self.adam_eps <= 0:
            raise ValueError(f"adam_eps must be > 0, got {self.adam_eps}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 < self.warmup_start_ratio <= 1.0:
            raise ValueError(f"warmup_start_ratio must be in (0, 1], got {self.warmup_start_ratio}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 disables clipping), got {self.grad_clip}")
        if self.mixed_precision not in MIXED_PRECISION_CHOICES:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION_CHOICES}, got {self.mixed_precision!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.qa_sources is not None and not self.qa_sources:
            raise ValueError("qa_sources must name at least one source, or be null for the loader's default")
        if self.max_gt_points is not None and self.max_gt_points < 1:
            raise ValueError(f"max_gt_points must be >= 1 or null, got {self.max_gt_points}")
        if self.occ_visibility not in ("none", "camera", "lidar"):
            raise ValueError(f"occ_visibility must be 'none', 'camera' or 'lidar', got {self.occ_visibility!r}")
        if not self.train_split:
            raise ValueError("train_split must name a dataset split, e.g. 'train'")

    def epochs_for(self, stage: int) -> int:
        """Epochs of one stage (1, 2 or 3)."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage}")
        return int(self.epochs[stage - 1])

    # ------------------------------------------------------------------ presets
    @classmethod
    def paper(cls, **overrides: Any) -> "TrainConfig":
        """The paper's schedule (sec. 4.2); the defaults of this class."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> "TrainConfig":
        """Short schedule for the tiny model on a CPU (demo checkpoint, learning check)."""
        values: dict[str, Any] = dict(
            epochs=(4, 4, 4),
            batch_size=2,
            lr=2e-3,
            warmup_steps=5,
            num_workers=0,
            grad_clip=5.0,
        )
        values.update(overrides)
        return cls(**values)
