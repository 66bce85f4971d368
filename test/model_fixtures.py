"""Hand-built, geometrically consistent DrivingBatch for model tests (the data loader produces the same dataclass).

The scene: the ego drives straight along +x at a constant speed through a static world of labelled points (a road
plane plus a few box-shaped objects).  Six cameras around the car with nuScenes-like mounting (yaws 0, -55, 55,
180, 110, -110 degrees, 1.5 m high); past frames lie behind along -x; future occupancy is the same world seen from
the future ego poses; the GT trajectory is the straight drive.  Images are random noise in [0, 1].
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from transformers import PreTrainedTokenizerBase

from sparseoccvla_core.batch import EGO_STATE_DIM, FREE_CLASS, IGNORE_INDEX, DrivingBatch
from sparseoccvla_core.config import SparseOccVLAConfig
from sparseoccvla_core.tokenizer import default_corpus, encode_qa, pad_sequences, train_tokenizer

CAMERA_YAWS_DEG = (0.0, -55.0, 55.0, 180.0, 110.0, -110.0)
QA_PAIRS = (
    (
        "Describe the driving scene around the ego vehicle.",
        "There are two cars and one truck in front of the ego vehicle.",
    ),
    ("Are there any pedestrians crossing the road?", "A pedestrian is walking on the sidewalk to the left."),
)
PLAN_PAIRS = (
    ("What should the ego vehicle do next and why?", "The ego vehicle should keep going straight at a constant speed."),
    (
        "What should the ego vehicle do next and why?",
        "The ego vehicle should slow down and stop before the intersection.",
    ),
)


def tiny_tokenizer(cfg: SparseOccVLAConfig) -> PreTrainedTokenizerBase:
    """The tokenizer the tiny model builds by default."""
    return train_tokenizer(default_corpus(), cfg.llm_vocab_size)


def _camera_rig(cfg: SparseOccVLAConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """intrinsics [V, 3, 3], cam2ego [V, 4, 4] (camera: x right, y down, z forward)."""
    h, w = cfg.image_size
    focal = 0.5 * w / math.tan(math.radians(70.0) / 2)  # 70 degree horizontal field of view
    k = torch.tensor([[focal, 0.0, w / 2], [0.0, focal, h / 2], [0.0, 0.0, 1.0]])
    # camera axes in ego coordinates for yaw 0: z_cam = +x_ego, x_cam = -y_ego, y_cam = -z_ego
    base = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    rigs = []
    for yaw in CAMERA_YAWS_DEG[: cfg.num_views]:
        c, s = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
        rz = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        m = torch.eye(4)
        m[:3, :3] = rz @ base
        m[:3, 3] = torch.tensor([1.0 * c, 1.0 * s, 1.5])
        rigs.append(m)
    return k.expand(cfg.num_views, 3, 3).clone(), torch.stack(rigs)


def _world(cfg: SparseOccVLAConfig, gen: torch.Generator, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Static world points [count, 3] (global frame = ego frame at time 0) and labels [count]."""
    lo, hi = torch.tensor(cfg.point_cloud_range[:3]), torch.tensor(cfg.point_cloud_range[3:])
    n_road = count // 2
    road = torch.rand(n_road, 3, generator=gen) * (hi - lo) + lo
    road[:, 2] = lo[2] + cfg.voxel_size / 2
    boxes = []
    labels = [torch.full((n_road,), 11)]  # driveable_surface
    sizes = [(count - n_road) // 4] * 3
    sizes.append(count - n_road - sum(sizes))
    for i, per_box in enumerate(sizes):
        centre = torch.rand(3, generator=gen) * (hi - lo) * 0.6 + lo * 0.6
        centre[2] = lo[2] + 1.0
        boxes.append(centre + (torch.rand(per_box, 3, generator=gen) - 0.5) * torch.tensor([4.0, 2.0, 1.6]))
        labels.append(torch.full((per_box,), (4, 10, 7, 15)[i]))  # car, truck, pedestrian, manmade
    return torch.cat([road, *boxes]), torch.cat(labels).long()


def make_batch(
    cfg: SparseOccVLAConfig,
    batch_size: int = 1,
    seed: int = 0,
    tokenizer: Optional[PreTrainedTokenizerBase] = None,
    num_points: int = 96,
    speed: float = 5.0,
) -> DrivingBatch:
    """A consistent batch for ``cfg`` (all fields of :class:`DrivingBatch` that the model reads).

    Args:
        cfg: model config (shapes).
        batch_size: B.
        seed: determinism.
        tokenizer: text tokenizer (default: the tiny model's).
        num_points: GT points per item (the last item gets a few padded slots).
        speed: ego speed along +x, m/s.
    """
    gen = torch.Generator().manual_seed(seed)
    tok = tokenizer if tokenizer is not None else tiny_tokenizer(cfg)
    b, f, v, t_fore, t_plan = batch_size, cfg.num_frames, cfg.num_views, cfg.forecast_frames, cfg.plan_horizon
    h, w = cfg.image_size
    k, cam2ego = _camera_rig(cfg)
    frame_dt = cfg.forecast_dt

    ego2global = torch.eye(4, dtype=torch.float64).repeat(b, f, 1, 1)  # float64, as the dataset gives it
    ego2global[:, :, 0, 3] = -speed * frame_dt * torch.arange(f, dtype=torch.float64)  # past frames behind
    ego_state = torch.zeros(b, EGO_STATE_DIM)
    ego_state[:, 0] = speed  # vx
    ego_state[:, 5] = speed  # speed

    occ_points = torch.zeros(b, num_points, 3)
    occ_labels = torch.full((b, num_points), FREE_CLASS, dtype=torch.long)
    occ_mask = torch.zeros(b, num_points, dtype=torch.bool)
    future_points = torch.zeros(b, t_fore, num_points, 3)
    future_labels = torch.full((b, t_fore, num_points), FREE_CLASS, dtype=torch.long)
    future_mask = torch.zeros(b, t_fore, num_points, dtype=torch.bool)
    for i in range(b):
        real = num_points - (3 if i == b - 1 and b > 1 else 0)
        pts, lab = _world(cfg, gen, real)
        occ_points[i, :real], occ_labels[i, :real], occ_mask[i, :real] = pts, lab, True
        for t in range(t_fore):
            if i == b - 1 and b > 1 and t == t_fore - 1:
                continue  # the scene ends before the last future frame of the last item
            shifted = pts.clone()
            shifted[:, 0] -= speed * cfg.forecast_dt * (t + 1)  # static world seen from the future ego pose
            future_points[i, t, :real], future_labels[i, t, :real], future_mask[i, t, :real] = shifted, lab, True

    def text(pairs):
        enc = [encode_qa(tok, q, a, cfg.max_text_tokens) for q, a in (pairs[j % len(pairs)] for j in range(b))]
        ids = pad_sequences([e[0] for e in enc], tok.pad_token_id)
        labels = pad_sequences([e[1] for e in enc], IGNORE_INDEX)
        mask = pad_sequences([[1] * len(e[0]) for e in enc], 0)
        return torch.tensor(ids), torch.tensor(mask), torch.tensor(labels)

    qa_ids, qa_mask, qa_labels = text(QA_PAIRS)
    plan_ids, plan_mask, plan_labels = text(PLAN_PAIRS)
    times = cfg.plan_dt * torch.arange(1, t_plan + 1, dtype=torch.float32)
    gt_traj = torch.stack([speed * times, 0.05 * times**2], dim=-1).expand(b, -1, -1).clone()
    gt_traj_mask = torch.ones(b, t_plan, dtype=torch.bool)
    if b > 1:
        gt_traj_mask[-1, -1] = False

    return DrivingBatch(
        images=torch.rand(b, f, v, 3, h, w, generator=gen),
        intrinsics=k.expand(b, f, v, 3, 3).clone(),
        cam2ego=cam2ego.expand(b, f, v, 4, 4).clone(),
        ego2global=ego2global,
        frame_valid=torch.ones(b, f, dtype=torch.bool),
        ego_state=ego_state,
        command=torch.ones(b, dtype=torch.long),
        occ_points=occ_points,
        occ_labels=occ_labels,
        occ_mask=occ_mask,
        future_points=future_points,
        future_labels=future_labels,
        future_mask=future_mask,
        qa_input_ids=qa_ids,
        qa_attention_mask=qa_mask,
        qa_labels=qa_labels,
        plan_input_ids=plan_ids,
        plan_attention_mask=plan_mask,
        plan_labels=plan_labels,
        gt_trajectory=gt_traj,
        gt_trajectory_mask=gt_traj_mask,
        sample_tokens=[f"sample{i}" for i in range(b)],
        scene_tokens=["scene0"] * b,
        frame_indices=torch.arange(b),
        scene_lengths=torch.full((b,), 40),
        timestamps=torch.arange(b) * 500_000,
    )
