"""SparseOccVLA configuration: one typed dataclass, YAML round trip, the paper and tiny presets.

Paper numbers: sec. 4.2 and appendix A of SparseOccVLA (arXiv 2601.06474).  Where the paper is silent the
value follows the public project named in the comment ([§x.y] = that section of ``docs/reference_choices.md``).

Usage::

    cfg = SparseOccVLAConfig.tiny()
    cfg.to_yaml("cfg.yaml"); cfg2 = SparseOccVLAConfig.from_yaml("cfg.yaml")
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

import yaml

#: HERMES' action question (GT desc["action"]): the default driving-decision prompt of the plan text stream
#: (``SparseOccVLAConfig.plan_question``: the dataset trains with it, every inference path asks it).
ACTION_QUESTION: str = "What action should be taken in the current driving scenario?"
#: What the planner's diffusion decoder regresses (see ``SparseOccVLAConfig.plan_regression``).
PLAN_REGRESSION_CHOICES: tuple[str, ...] = ("direct", "residual")
#: Which GT supervises the encoder's current-frame occupancy (see ``SparseOccVLAConfig.occ_gt``).
OCC_GT_CHOICES: tuple[str, ...] = ("current", "concat")
#: Cost of a matched point pair in the occupancy / forecast Chamfer terms (see ``SparseOccVLAConfig.point_loss``).
POINT_LOSS_CHOICES: tuple[str, ...] = ("l2", "smooth_l1")
#: How the forecaster places future points (see ``SparseOccVLAConfig.forecast_prior``).
FORECAST_PRIORS: tuple[str, ...] = ("none", "ego_static")
#: How eq. 5 averages the NLL of a text stream over a batch (see ``SparseOccVLAConfig.lm_mean``).
LM_MEAN_CHOICES: tuple[str, ...] = ("token", "answer")
#: OPUS-T's per-class focal weights (Occ3D classes 0..16: others, barrier, bicycle, bus, car, construction vehicle,
#: motorcycle, pedestrian, traffic cone, trailer, truck, driveable surface, other flat, sidewalk, terrain, manmade,
#: vegetation): rare and object classes 5-10x the large surfaces (docs/reference_choices.md §3.2).
OPUS_FOCAL_CLASS_WEIGHTS: tuple[float, ...] = (10, 5, 10, 5, 5, 10, 10, 5, 10, 5, 5, 1, 5, 1, 1, 2, 1)


def _tuple(x: Any) -> tuple:
    return tuple(_tuple(v) if isinstance(v, list) else v for v in x)


class PresetYamlMixin:
    """YAML round trip shared by the project's dataclass configs (model: this file; training: train_config.py).

    A YAML file holds either every field, or ``preset: <name>`` (a classmethod of the config, e.g. ``tiny``)
    plus overrides.  Unknown keys are rejected with the list of valid ones.
    """

    _yaml_label: ClassVar[str] = "config"
    _presets: ClassVar[tuple[str, ...]] = ("tiny", "paper")

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        data = dict(data)
        preset = data.pop("preset", None)
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls._yaml_label} keys {unknown}; valid keys: {sorted(known)}")
        if preset is None:
            return cls(**data)
        if preset not in cls._presets:
            raise ValueError(f"{cls._yaml_label} preset must be one of {list(cls._presets)}, got {preset!r}")
        base = getattr(cls, preset)().to_dict()
        base.update(data)
        return cls(**base)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path):
        """Load a file holding ``preset: <name>`` plus overrides, or every field."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{cls._yaml_label} file {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of {cls._yaml_label} fields")
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err

    def diff(self, other) -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ: {name: (self_value, other_value)}."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


@dataclass
class SparseOccVLAConfig(PresetYamlMixin):
    """All model hyper-parameters.  Deployment knobs (device, topics) live in ROS parameters, not here.

    Args:
        num_views: cameras per frame (nuScenes: 6).
        num_frames: frames per sample, current + past (paper: 8).
        image_size: (H, W) network input size after resize/crop (paper: 256 x 704).
        pixel_mean: per-channel mean of RGB in [0, 1] used to normalise images (ImageNet).
        pixel_std: per-channel std (ImageNet).
        backbone_layer_type: "bottleneck" (ResNet-50) or "basic" (ResNet-18/34 style), transformers ResNet.
        backbone_depths: residual blocks per stage.
        backbone_hidden_sizes: output channels per stage.
        backbone_embedding_size: stem channels.
        backbone_weights: local path of pretrained ResNet weights (HF folder or safetensors); None = random.
        backbone_norm_eval: keep the backbone's BatchNorm layers in eval mode while training (OPUS / SparseBEV
            freeze BN statistics of a pretrained ResNet, [§2.7]); use False when training from random init.
        fpn_dim: FPN output channels, shared by all scales.
        num_levels: feature scales sampled by the encoder (paper: 4).
        point_cloud_range: (x_min, y_min, z_min, x_max, y_max, z_max) of the Occ3D grid in the ego frame, m
            (Occ3D's nominal z range shifted up by OCC3D_Z_SHIFT, see occ_grid.py).
        voxel_size: Occ3D voxel edge, m.
        num_classes: Occ3D classes including free (18); the model predicts the first num_classes - 1.
        num_queries: sparse occupancy queries N (paper: 600).
        num_encoder_layers: encoder layers L (paper: 6).
        points_per_layer: points decoded per query after each layer (paper: 2, 4, 16, 32, 56, 112).
        query_dim: query width D (paper: 1024).
        num_heads: attention heads in the encoder (paper: 32).
        num_sampling_points: sampling points per query per frame (paper: 4).
        num_groups: channel groups of multi-view sampling / adaptive mixing (SparseBEV, [§2.3]).
        mixing_out_points: output spatial points of adaptive mixing (OPUS, the encoder SparseWorld builds on: 32;
            SparseBEV uses 128) [§2.3].
        ffn_dim: hidden width of encoder FFNs.
        dropout: dropout in encoder attention / FFN.
        adaptive_scale_range: (min, max) per-axis scale of the initial query range from ego state
            (SparseWorld adaptive scaling, [§2.5]).
        point_offset_scale: metres per unit of the point-offset head output; decoded points are the query
            centre plus this times the head output (OPUS / SparseWorld scale 0.5, [§2.4]).
        projection_min_depth: camera-frame depth (m) below which a projected point counts as behind the
            camera (OPUS 1e-5, [§2.2]).
        point_class_features: each decoded point also reads the current frame's image features where it projects,
            and a small MLP of them adds to the point's class logits (0 = off: classes from the query alone, as
            OPUS).  A query's per-slot logits cannot tell which of its points lie on a car and which on the road
            under it; the point's own pixel can (docs/experiments.md §10).  The value is the MLP's hidden width.
        occ_closing: the occupancy read-out closes the decoded voxels with a 3x3x3 dilation + erosion, as OPUS pads
            its output (``decode_occupancy``; docs/reference_choices.md §2.8).
        occ_gt: GT of the encoder's occupancy loss (eq. 10): "current" (the current frame's labels; each query
            set is scored against the scene it sees now, as SparseWorld scores its current-stamp queries) or
            "concat" (current + future frames warped into the current frame, appendix A's extended-range GT;
            it pulls current-frame points toward where moving objects will be).  The forecaster is always
            supervised per future frame from the concatenated GT (appendix A).  Measurements: docs/experiments.md §2.
        point_loss: cost of a matched point pair in the Chamfer terms: "l2" (squared distance, eq. 1) or
            "smooth_l1" (OPUS: SmoothL1 per coordinate, beta ``point_loss_beta``), docs/experiments.md §3.
        point_loss_beta: SmoothL1 transition, m (OPUS: 0.2).
        point_loss_weight: weight of the Chamfer terms in eq. 10 / 11 (paper: 1; OPUS: 0.5 with SmoothL1).
        focal_class_weights: per-class weights of the focal loss (17 semantic classes) or None (paper: none;
            OPUS-T: :data:`OPUS_FOCAL_CLASS_WEIGHTS`).
        gt_miss_weight: weight, in the GT -> prediction point term, of a GT point whose nearest prediction is
            farther than ``gt_miss_distance`` (paper: 1, i.e. unweighted; OPUS: 5 - it pulls points toward the
            scene parts no prediction covers yet, such as objects above the ground), docs/experiments.md §5.
        gt_miss_distance: that distance, m (OPUS: 0.2).
        gt_rare_classes: classes whose GT points weigh at least ``gt_rare_weight`` in that term (paper: none;
            OPUS: 0 others, 2 bicycle, 5 construction vehicle, 8 traffic cone).
        gt_rare_weight: that weight (OPUS: 10).
        lambda_focal: weight of the focal loss (paper: 0.2).
        focal_alpha: focal loss alpha.
        focal_gamma: focal loss gamma.
        distill_weight: weight of the distillation loss (eq. 3).
        clip_teacher_path: local path of a CLIP vision encoder (paper: CLIP ViT-L/14-336); None = random
            tiny teacher (exercises the mechanism only).
        clip_image_size: teacher input size.
        clip_hidden_size: teacher width.
        clip_num_layers: teacher depth.
        clip_num_heads: teacher heads.
        clip_patch_size: teacher patch size.
        clip_intermediate_size: teacher MLP width.
        clip_pixel_mean: RGB mean in [0, 1] the CLIP teacher was trained with (OpenAI CLIP).
        clip_pixel_std: RGB std the CLIP teacher was trained with (OpenAI CLIP).
        num_global_queries: learnable global scene tokens T_g (eq. 4, paper: 12).
        llm_path: local path of a Hugging Face causal LM (paper: Vicuna-7B); None = build from the fields below.
        tokenizer_path: local path of its tokenizer; None = the project's tiny tokenizer (tiny preset) or llm_path.
        llm_hidden_size: LLM width (Vicuna-7B: 4096).
        llm_num_layers: LLM depth (Vicuna-7B: 32).
        llm_num_heads: LLM heads (Vicuna-7B: 32).
        llm_intermediate_size: LLM MLP width (Vicuna-7B: 11008).
        llm_vocab_size: vocabulary size when the LLM is built from config (Vicuna: 32000).
        llm_max_positions: maximum sequence length.
        lora_r: LoRA rank (paper: 128).
        lora_alpha: LoRA alpha (paper: 16).
        lora_dropout: LoRA dropout.
        lora_target_modules: LLM submodule names LoRA wraps (OmniDrive: q/k/v/o with r=128, alpha=16, dropout 0.05,
            [§5.1]; the paper names only r and alpha).
        max_text_tokens: longest prompt + answer kept by the tokenizer.
        max_new_tokens: longest generated answer / explanation.
        lm_mean: how eq. 5 averages a text stream's NLL over a batch: "token" (every answer token of the batch
            counts once, the usual causal-LM loss) or "answer" (each answer's token mean, then the mean over the
            batch's answers, so a 90-token description and a one-word nuScenes-QA answer weigh the same;
            docs/experiments.md §9).
        plan_question: the driving-decision prompt of the plan text stream: the dataset trains the reasoning as its
            answer and every inference path (``predict``, the pipeline, the ROS node, the evaluation) asks it, so a
            checkpoint records the prompt it was trained with (HERMES' action question, ``data/qa.py``; checkpoints
            written before the field existed were trained with it too).
        forecast_frames: future frames T (paper: 6 = 3 s at 2 Hz).
        forecast_dt: seconds between forecast frames.
        forecast_points_per_query: points each query decodes per forecast frame.
        forecast_prior: "none" (paper: the heads place the future points) or "ego_static" (each step is a
            residual on the previous step's occupancy moved by the constant-velocity ego motion, starting from the
            encoder's points and classes; :mod:`sparseoccvla_core.forecaster`, docs/experiments.md §6).
        num_anchors: K planning anchors (paper: 18 = 3 commands x 6).
        num_commands: driving commands the anchors are clustered per (DiffusionDrive-nuScenes, [§7.1]).
        plan_horizon: waypoints per trajectory (6 at 0.5 s).
        plan_dt: seconds between waypoints.
        planner_num_layers: diffusion decoder layers (DiffusionDrive: 2).
        diffusion_train_timesteps: DDIM schedule length (DiffusionDrive: 1000, scaled-linear).
        diffusion_trunc_timesteps: training noise t ~ U{0..trunc-1} (DiffusionDrive-nuScenes: 40).
        diffusion_infer_start_timestep: noise level added to anchors at inference (DiffusionDrive: 8).
        denoise_steps: DDIM steps at inference (paper: 2).
        traj_norm_scale: (x, y) metres mapped to [-1, 1] for diffusion: 60 m = 3 s at 20 m/s, the fastest
            nuScenes ego motion, so no real trajectory is clipped by the [-1, 1] clamps of the noisy input and of
            the DDIM x0 (checkpoints keep the value they were trained with).
        plan_regression: what the diffusion decoder's head outputs: "direct" (the clean trajectory itself, in
            normalised units; paper sec. 3.3: the decoder "regress[es] the clean trajectories directly") or
            "residual" (an offset in metres added to the noisy input, DiffusionDrive's code) [§7.5].  Why
            "direct" is the default (measurements): docs/experiments.md §1.
        plan_cls_weight: weight of the anchor-scorer BCE.
        plan_reg_weight: weight of the positive-anchor L1.
    """

    # --- input ---
    num_views: int = 6
    num_frames: int = 8
    image_size: tuple[int, int] = (256, 704)
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # --- backbone + FPN (part 1) ---
    backbone_layer_type: str = "bottleneck"
    backbone_depths: tuple[int, ...] = (3, 4, 6, 3)
    backbone_hidden_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
    backbone_embedding_size: int = 64
    backbone_weights: Optional[str] = None
    backbone_norm_eval: bool = True
    fpn_dim: int = 256
    num_levels: int = 4
    # --- occupancy grid ---
    # Occ3D grid in the nuScenes ego frame. Occ3D publishes z in [-1.0, 5.4] m, but its road sits in z-layer 0,
    # ~0.8 m below the nuScenes ego-frame ground (see sparseoccvla_core/occ_grid.py), so in ego metres the
    # 16 layers span [-0.2, 6.2]. Keeping the model in true ego metres makes camera projection exact.
    point_cloud_range: tuple[float, float, float, float, float, float] = (-40.0, -40.0, -0.2, 40.0, 40.0, 6.2)
    voxel_size: float = 0.4
    num_classes: int = 18
    # --- sparse occupancy encoder (part 2) ---
    num_queries: int = 600
    num_encoder_layers: int = 6
    points_per_layer: tuple[int, ...] = (2, 4, 16, 32, 56, 112)
    query_dim: int = 1024
    num_heads: int = 32
    num_sampling_points: int = 4
    num_groups: int = 4
    mixing_out_points: int = 32
    ffn_dim: int = 2048
    dropout: float = 0.1
    adaptive_scale_range: tuple[float, float] = (0.8, 1.5)
    point_offset_scale: float = 0.5
    projection_min_depth: float = 1e-5
    point_class_features: int = 0
    occ_closing: bool = False
    # --- losses (part 3) ---
    occ_gt: str = "current"
    point_loss: str = "l2"
    point_loss_beta: float = 0.2
    point_loss_weight: float = 1.0
    focal_class_weights: Optional[tuple[float, ...]] = None
    gt_miss_weight: float = 1.0
    gt_miss_distance: float = 0.2
    gt_rare_classes: tuple[int, ...] = ()
    gt_rare_weight: float = 10.0
    lambda_focal: float = 0.2
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    distill_weight: float = 1.0
    clip_teacher_path: Optional[str] = None
    clip_image_size: int = 336
    clip_hidden_size: int = 1024
    clip_num_layers: int = 24
    clip_num_heads: int = 16
    clip_patch_size: int = 14
    clip_intermediate_size: int = 4096
    clip_pixel_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    clip_pixel_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    # --- connector + global queries (part 4) ---
    num_global_queries: int = 12
    # --- LLM (part 5) ---
    llm_path: Optional[str] = None
    tokenizer_path: Optional[str] = None
    llm_hidden_size: int = 4096
    llm_num_layers: int = 32
    llm_num_heads: int = 32
    llm_intermediate_size: int = 11008
    llm_vocab_size: int = 32000
    llm_max_positions: int = 4096
    lora_r: int = 128
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    max_text_tokens: int = 512
    max_new_tokens: int = 64
    lm_mean: str = "token"
    plan_question: str = ACTION_QUESTION
    # --- forecaster (part 6) ---
    forecast_frames: int = 6
    forecast_dt: float = 0.5
    forecast_points_per_query: int = 112
    forecast_prior: str = "none"
    # --- planner (part 7) ---
    num_anchors: int = 18
    num_commands: int = 3
    plan_horizon: int = 6
    plan_dt: float = 0.5
    planner_num_layers: int = 2
    diffusion_train_timesteps: int = 1000
    diffusion_trunc_timesteps: int = 40
    diffusion_infer_start_timestep: int = 8
    denoise_steps: int = 2
    traj_norm_scale: tuple[float, float] = (60.0, 20.0)
    plan_regression: str = "direct"
    plan_cls_weight: float = 1.0
    plan_reg_weight: float = 1.0

    def __post_init__(self) -> None:
        # YAML gives lists; keep tuples so configs compare and hash consistently.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                setattr(self, f.name, _tuple(value))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ValueError naming the field to change when fields disagree."""
        if len(self.points_per_layer) != self.num_encoder_layers:
            raise ValueError(
                f"points_per_layer has {len(self.points_per_layer)} entries but num_encoder_layers is "
                f"{self.num_encoder_layers}: give one point count per encoder layer"
            )
        if any(p <= 0 for p in self.points_per_layer):
            raise ValueError(f"points_per_layer must be positive, got {self.points_per_layer}")
        if self.query_dim % self.num_heads:
            raise ValueError(f"query_dim {self.query_dim} must be divisible by num_heads {self.num_heads}")
        if self.query_dim % self.num_groups:
            raise ValueError(f"query_dim {self.query_dim} must be divisible by num_groups {self.num_groups}")
        if self.llm_hidden_size % self.llm_num_heads:
            raise ValueError(
                f"llm_hidden_size {self.llm_hidden_size} must be divisible by llm_num_heads {self.llm_num_heads}"
            )
        if self.clip_hidden_size % self.clip_num_heads:
            raise ValueError(
                f"clip_hidden_size {self.clip_hidden_size} must be divisible by clip_num_heads {self.clip_num_heads}"
            )
        if len(self.backbone_depths) != len(self.backbone_hidden_sizes):
            raise ValueError("backbone_depths and backbone_hidden_sizes must have the same length")
        if self.num_levels > len(self.backbone_hidden_sizes):
            raise ValueError(
                f"num_levels {self.num_levels} exceeds the {len(self.backbone_hidden_sizes)} backbone stages"
            )
        if self.backbone_layer_type not in ("basic", "bottleneck"):
            raise ValueError(f"backbone_layer_type must be 'basic' or 'bottleneck', got {self.backbone_layer_type!r}")
        if self.num_anchors % self.num_commands:
            raise ValueError(
                f"num_anchors {self.num_anchors} must be a multiple of num_commands {self.num_commands} "
                "(anchors are clustered per driving command)"
            )
        if not 0 < self.denoise_steps <= self.diffusion_infer_start_timestep + 1:
            raise ValueError(f"denoise_steps {self.denoise_steps} must be in [1, diffusion_infer_start_timestep + 1]")
        if self.plan_regression not in PLAN_REGRESSION_CHOICES:
            raise ValueError(f"plan_regression must be one of {PLAN_REGRESSION_CHOICES}, got {self.plan_regression!r}")
        if self.occ_gt not in OCC_GT_CHOICES:
            raise ValueError(f"occ_gt must be one of {OCC_GT_CHOICES}, got {self.occ_gt!r}")
        if self.lm_mean not in LM_MEAN_CHOICES:
            raise ValueError(f"lm_mean must be one of {LM_MEAN_CHOICES}, got {self.lm_mean!r}")
        if self.point_loss not in POINT_LOSS_CHOICES:
            raise ValueError(f"point_loss must be one of {POINT_LOSS_CHOICES}, got {self.point_loss!r}")
        if self.point_loss_beta <= 0 or self.point_loss_weight <= 0:
            raise ValueError("point_loss_beta and point_loss_weight must be > 0")
        if self.forecast_prior not in FORECAST_PRIORS:
            raise ValueError(f"forecast_prior must be one of {FORECAST_PRIORS}, got {self.forecast_prior!r}")
        if self.gt_miss_weight <= 0 or self.gt_miss_distance < 0 or self.gt_rare_weight <= 0:
            raise ValueError("gt_miss_weight and gt_rare_weight must be > 0 and gt_miss_distance >= 0")
        if any(not 0 <= c < self.num_classes - 1 for c in self.gt_rare_classes):
            raise ValueError(
                f"gt_rare_classes must be semantic classes 0..{self.num_classes - 2}, got {self.gt_rare_classes}"
            )
        if self.focal_class_weights is not None and len(self.focal_class_weights) != self.num_classes - 1:
            raise ValueError(
                f"focal_class_weights needs one weight per semantic class ({self.num_classes - 1}), "
                f"got {len(self.focal_class_weights)}"
            )
        if any(v <= 0 for v in self.traj_norm_scale) or len(self.traj_norm_scale) != 2:
            raise ValueError(f"traj_norm_scale must be two positive metre scales (x, y), got {self.traj_norm_scale}")
        if self.diffusion_trunc_timesteps > self.diffusion_train_timesteps:
            raise ValueError("diffusion_trunc_timesteps cannot exceed diffusion_train_timesteps")
        if self.num_frames < 1 or self.num_views < 1:
            raise ValueError("num_frames and num_views must be >= 1")
        if len(self.image_size) != 2 or any(s % 32 for s in self.image_size):
            raise ValueError(f"image_size {self.image_size} must be (H, W), each a multiple of 32")
        if len(self.point_cloud_range) != 6:
            raise ValueError("point_cloud_range must be (x_min, y_min, z_min, x_max, y_max, z_max)")
        lo, hi = self.adaptive_scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"adaptive_scale_range {self.adaptive_scale_range} must satisfy 0 < min <= max")
        if not isinstance(self.plan_question, str) or not self.plan_question.strip():
            raise ValueError(f"plan_question must be a non-empty question, got {self.plan_question!r}")
        if self.forecast_frames < 1 or self.plan_horizon < 1:
            raise ValueError("forecast_frames and plan_horizon must be >= 1")

    # ------------------------------------------------------------------ derived
    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """Voxel grid (X, Y, Z) cells of the point-cloud range (Occ3D: 200 x 200 x 16)."""
        r, s = self.point_cloud_range, self.voxel_size
        return (round((r[3] - r[0]) / s), round((r[4] - r[1]) / s), round((r[5] - r[2]) / s))

    @property
    def num_semantic_classes(self) -> int:
        """Classes the model predicts (free excluded)."""
        return self.num_classes - 1

    @property
    def anchors_per_command(self) -> int:
        return self.num_anchors // self.num_commands

    # ------------------------------------------------------------------ presets
    @classmethod
    def paper(cls, **overrides: Any) -> "SparseOccVLAConfig":
        """The paper's configuration (sec. 4.2, appendix A).  All defaults of this class are the paper's, plus OPUS's
        read-out closing (``occ_closing``; the paper does not describe its read-out, docs/experiments.md §10)."""
        return cls(**{"occ_closing": True, **overrides})

    @classmethod
    def tiny(cls, **overrides: Any) -> "SparseOccVLAConfig":
        """Same architecture scaled down: forward + backward in seconds on 2 CPU cores."""
        values: dict[str, Any] = dict(
            num_frames=2,
            image_size=(64, 160),
            backbone_layer_type="basic",
            backbone_depths=(1, 1, 1, 1),
            backbone_hidden_sizes=(16, 32, 64, 128),
            backbone_embedding_size=16,
            backbone_norm_eval=False,
            fpn_dim=32,
            num_queries=48,
            num_encoder_layers=2,
            points_per_layer=(4, 8),
            query_dim=64,
            num_heads=4,
            num_groups=4,
            mixing_out_points=16,
            ffn_dim=128,
            dropout=0.0,
            clip_image_size=64,
            clip_hidden_size=32,
            clip_num_layers=2,
            clip_num_heads=2,
            clip_patch_size=8,
            clip_intermediate_size=64,
            num_global_queries=4,
            llm_hidden_size=128,
            llm_num_layers=2,
            llm_num_heads=4,
            llm_intermediate_size=256,
            llm_vocab_size=2048,
            llm_max_positions=512,
            lora_r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
            max_text_tokens=96,
            max_new_tokens=32,
            forecast_points_per_query=8,
        )
        values.update(overrides)
        return cls(**values)
