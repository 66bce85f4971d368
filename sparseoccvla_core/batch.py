"""The model's batch: one documented dataclass shared by data loading, training, the model and the pipeline.

Conventions (all SI units, right-handed):

* **Ego frame** = nuScenes ego vehicle frame: origin at the rear-axle centre on the ground, x forward,
  y left, z up.  Every 3D quantity in a batch (occupancy points, trajectories) is in the ego frame of the
  *current* key frame unless a field says otherwise.
* **Occupancy points** are Occ3D voxel centres ``pc_min + (index + 0.5) * voxel_size`` in true ego-frame
  metres, with ``pc_min`` from ``SparseOccVLAConfig.point_cloud_range`` (Occ3D's grid shifted 0.8 m up so its
  road layer sits on the ego ground; conversions in :mod:`sparseoccvla_core.occ_grid`).  Labels use the 18
  Occ3D classes, ``17 = free`` (free voxels are never listed as GT points).
* **Frames**: index 0 along ``F`` is the current key frame; indices 1..F-1 are past frames, most recent
  first.  Where a past frame does not exist (start of a sequence) the loader repeats the oldest real
  frame and marks it invalid in ``frame_valid``.
* **Cameras**: the six nuScenes cameras in :data:`CAMERA_NAMES` order along ``V``.
* **Images** are float32 RGB in [0, 1] at the config's input size; ``intrinsics`` already include the
  resize/crop applied by the loader.  Normalisation (ImageNet mean/std) happens inside the model.
* **Ego state** (:data:`EGO_STATE_FIELDS`) is measured in the current ego frame at the current stamp.
* **Driving command** follows nuScenes planning practice (UniAD / DiffusionDrive): 0 = turn left,
  1 = go straight, 2 = turn right, derived from the GT future lateral displacement in training data.
* **Text**: ``input_ids`` are the chat-templated prompt + answer (see :mod:`sparseoccvla_core.tokenizer`),
  right-padded; ``labels`` equal ``input_ids`` on answer tokens and -100 on prompt and padding.  Two text
  streams share one scene prefix: ``qa_*`` (understanding: description / conversation / VQA) and
  ``plan_*`` (the driving-decision prompt whose answer is the reasoning the planner attends to).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional, Sequence

import torch

CAMERA_NAMES: tuple[str, ...] = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)

#: Occ3D-nuScenes class names, index = label value.  17 is free space.
OCC3D_CLASSES: tuple[str, ...] = (
    "others",
    "barrier",
    "bicycle",
    "bus",
    "car",
    "construction_vehicle",
    "motorcycle",
    "pedestrian",
    "traffic_cone",
    "trailer",
    "truck",
    "driveable_surface",
    "other_flat",
    "sidewalk",
    "terrain",
    "manmade",
    "vegetation",
    "free",
)
FREE_CLASS: int = 17
NUM_SEMANTIC_CLASSES: int = 17


def occ3d_class(name: str) -> int:
    """The Occ3D label value of a class name of :data:`OCC3D_CLASSES` (KeyError-like ValueError otherwise)."""
    try:
        return OCC3D_CLASSES.index(name)
    except ValueError:
        raise ValueError(f"{name!r} is not an Occ3D class (one of {', '.join(OCC3D_CLASSES)})") from None


#: Occ3D-nuScenes class colours, RGB 0-255, index = class id (the palette commonly used to draw Occ3D-nuScenes
#: occupancy); free (17) is white.  The one palette of the repository: the evaluation plots and the ROS markers
#: both draw with it.
OCC3D_COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),  # others
    (255, 120, 50),  # barrier
    (255, 192, 203),  # bicycle
    (255, 255, 0),  # bus
    (0, 150, 245),  # car
    (0, 255, 255),  # construction_vehicle
    (200, 180, 0),  # motorcycle
    (255, 0, 0),  # pedestrian
    (255, 240, 150),  # traffic_cone
    (135, 60, 0),  # trailer
    (160, 32, 240),  # truck
    (255, 0, 255),  # driveable_surface
    (139, 137, 137),  # other_flat
    (75, 0, 75),  # sidewalk
    (150, 240, 80),  # terrain
    (230, 230, 250),  # manmade
    (0, 175, 0),  # vegetation
    (255, 255, 255),  # free
)

#: Ego-state vector layout (current ego frame, SI units).
EGO_STATE_FIELDS: tuple[str, ...] = (
    "vx",  # m/s, forward velocity
    "vy",  # m/s, lateral velocity
    "ax",  # m/s^2, forward acceleration
    "ay",  # m/s^2, lateral acceleration
    "yaw_rate",  # rad/s
    "speed",  # m/s, |v|
)
EGO_STATE_DIM: int = len(EGO_STATE_FIELDS)

COMMANDS: tuple[str, ...] = ("left", "straight", "right")
IGNORE_INDEX: int = -100


@dataclass(frozen=True)
class CameraRig:
    """The cameras of a stack of frames: what projects an ego-frame point into each view's pixels.

    Args:
        intrinsics: [B, F, V, 3, 3] pinhole K of the network-size images, pixels.
        cam2ego: [B, F, V, 4, 4] extrinsics, camera -> ego of each frame, m.
        image_hw: (H, W) of those images, pixels.
    """

    intrinsics: torch.Tensor
    cam2ego: torch.Tensor
    image_hw: tuple[int, int]


@dataclass
class DrivingBatch:
    """One batch of B key frames. Shapes use B batch, F frames, V views, G GT points, T horizon, L tokens.

    Args:
        images: [B, F, V, 3, H, W] float32 RGB in [0, 1].
        intrinsics: [B, F, V, 3, 3] pinhole K for the (resized) image, pixels.
        cam2ego: [B, F, V, 4, 4] camera -> ego of that frame (camera: x right, y down, z forward).
        ego2global: [B, F, 4, 4] float64 ego pose of each frame in the global (map) frame (global coordinates are ~1e3 m:
            float32 would lose millimetres; the sampling casts the relative poses it needs).
        frame_valid: [B, F] bool; False where a past frame was padded.
        ego_state: [B, EGO_STATE_DIM] float32, see :data:`EGO_STATE_FIELDS`.
        command: [B] int64 driving command (0 left, 1 straight, 2 right).
        occ_points: [B, G, 3] current frame GT occupied voxel centres (current ego frame), padded.
        occ_labels: [B, G] int64 Occ3D labels of ``occ_points`` (padding: FREE_CLASS).
        occ_mask: [B, G] bool, True for real points.
        occ_concat_points: [B, Gc, 3] concatenated GT: current + future frames warped into the current
            ego frame by the ego poses (paper appendix A, extended range) - supervises the encoder.
        occ_concat_labels: [B, Gc] int64.
        occ_concat_mask: [B, Gc] bool.
        future_points: [B, T, Gf, 3] the concatenated GT transformed into each future frame's ego frame
            by the GT poses (eq. 11 supervision), padded.
        future_labels: [B, T, Gf] int64.
        future_mask: [B, T, Gf] bool (all False for a future frame beyond the end of the scene).
        qa_input_ids: [B, Lq] int64 chat-templated question + answer.
        qa_attention_mask: [B, Lq] int64 (1 = real token).
        qa_labels: [B, Lq] int64, IGNORE_INDEX outside the answer.
        plan_input_ids: [B, Lp] int64 driving-decision prompt + reasoning answer.
        plan_attention_mask: [B, Lp] int64.
        plan_labels: [B, Lp] int64.
        gt_trajectory: [B, T_plan, 2] future ego (x, y) waypoints at 0.5 s steps, current ego frame, m.
        gt_trajectory_mask: [B, T_plan] bool (False beyond the end of the scene).
        sample_tokens: nuScenes sample token per item (for evaluation bookkeeping).
        scene_tokens: nuScenes scene token per item.
        frame_indices: [B] int64 index of the key frame within its scene.
        scene_lengths: [B] int64 number of key frames in the item's scene.
        timestamps: [B] int64 microseconds (nuScenes convention).
        future_eval_points: [B, T, Ge, 3] each future frame's own Occ3D GT in its own ego frame (forecast
            evaluation, docs/reference_choices.md §8.2), padded.
        future_eval_labels: [B, T, Ge] int64.
        future_eval_mask: [B, T, Ge] bool (all False for a future frame beyond the end of the scene).
    """

    images: torch.Tensor
    intrinsics: torch.Tensor
    cam2ego: torch.Tensor
    ego2global: torch.Tensor
    frame_valid: torch.Tensor
    ego_state: torch.Tensor
    command: torch.Tensor
    occ_points: Optional[torch.Tensor] = None
    occ_labels: Optional[torch.Tensor] = None
    occ_mask: Optional[torch.Tensor] = None
    occ_concat_points: Optional[torch.Tensor] = None
    occ_concat_labels: Optional[torch.Tensor] = None
    occ_concat_mask: Optional[torch.Tensor] = None
    future_points: Optional[torch.Tensor] = None
    future_labels: Optional[torch.Tensor] = None
    future_mask: Optional[torch.Tensor] = None
    qa_input_ids: Optional[torch.Tensor] = None
    qa_attention_mask: Optional[torch.Tensor] = None
    qa_labels: Optional[torch.Tensor] = None
    plan_input_ids: Optional[torch.Tensor] = None
    plan_attention_mask: Optional[torch.Tensor] = None
    plan_labels: Optional[torch.Tensor] = None
    gt_trajectory: Optional[torch.Tensor] = None
    gt_trajectory_mask: Optional[torch.Tensor] = None
    sample_tokens: list[str] = field(default_factory=list)
    scene_tokens: list[str] = field(default_factory=list)
    frame_indices: Optional[torch.Tensor] = None
    scene_lengths: Optional[torch.Tensor] = None
    timestamps: Optional[torch.Tensor] = None
    future_eval_points: Optional[torch.Tensor] = None
    future_eval_labels: Optional[torch.Tensor] = None
    future_eval_mask: Optional[torch.Tensor] = None

    @property
    def batch_size(self) -> int:
        return int(self.images.shape[0])

    @property
    def camera_rig(self) -> CameraRig:
        """The batch's cameras: ``intrinsics``, ``cam2ego`` and the (H, W) of ``images``."""
        return CameraRig(self.intrinsics, self.cam2ego, (int(self.images.shape[-2]), int(self.images.shape[-1])))

    def to(self, device: torch.device | str, dtype: Optional[torch.dtype] = None) -> "DrivingBatch":
        """Move every tensor to ``device``; floating tensors are cast to ``dtype`` when given."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                if dtype is not None and value.is_floating_point() and f.name == "images":
                    value = value.to(device=device, dtype=dtype)
                else:
                    value = value.to(device=device)
            out[f.name] = value
        return DrivingBatch(**out)

    def validate(self) -> None:
        """Check shapes and dtypes; raise ValueError with the offending field named."""
        if self.images.dim() != 6 or self.images.shape[3] != 3:
            raise ValueError(f"images must be [B, F, V, 3, H, W], got {tuple(self.images.shape)}")
        b, f, v = self.images.shape[:3]
        expect = {
            "intrinsics": (b, f, v, 3, 3),
            "cam2ego": (b, f, v, 4, 4),
            "ego2global": (b, f, 4, 4),
            "frame_valid": (b, f),
            "ego_state": (b, EGO_STATE_DIM),
            "command": (b,),
        }
        for name, shape in expect.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"{name} must have shape {shape}, got {got}")
        for name in ("images", "intrinsics", "cam2ego", "ego2global", "ego_state"):
            if not torch.isfinite(getattr(self, name)).all():
                raise ValueError(f"{name} contains NaN or Inf")
        for prefix in ("occ", "occ_concat"):
            pts = getattr(self, f"{prefix}_points")
            if pts is not None:
                labels, mask = getattr(self, f"{prefix}_labels"), getattr(self, f"{prefix}_mask")
                if pts.shape[0] != b or pts.shape[-1] != 3 or labels is None or mask is None:
                    raise ValueError(f"{prefix}_points must be [B, G, 3] with labels and mask")
                if labels.shape != pts.shape[:-1] or mask.shape != pts.shape[:-1]:
                    raise ValueError(f"{prefix}_labels/_mask must be [B, G] matching {prefix}_points")
        for prefix in ("qa", "plan"):
            ids = getattr(self, f"{prefix}_input_ids")
            if ids is not None:
                for suffix in ("attention_mask", "labels"):
                    other = getattr(self, f"{prefix}_{suffix}")
                    if other is None or other.shape != ids.shape:
                        raise ValueError(f"{prefix}_{suffix} must match {prefix}_input_ids {tuple(ids.shape)}")


def pad_text(
    ids: Sequence[list[int]], labels: Sequence[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad token sequences to [B, Lmax]: (input_ids, attention_mask, labels), as a batch's text streams are
    padded (``pad_id`` in padded positions, mask 0 there, labels :data:`IGNORE_INDEX`)."""
    n, length = len(ids), max(len(x) for x in ids)
    out_ids = torch.full((n, length), pad_id, dtype=torch.int64)
    out_mask = torch.zeros((n, length), dtype=torch.int64)
    out_lab = torch.full((n, length), IGNORE_INDEX, dtype=torch.int64)
    for k, (a, b) in enumerate(zip(ids, labels)):
        out_ids[k, : len(a)] = torch.tensor(a, dtype=torch.int64)
        out_mask[k, : len(a)] = 1
        out_lab[k, : len(b)] = torch.tensor(b, dtype=torch.int64)
    return out_ids, out_mask, out_lab
