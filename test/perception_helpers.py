"""Camera rig helper shared by the perception tests (encoder, distillation): no fixtures, plain functions."""

import math

import torch


def ring_rig(b: int, f: int, v: int, image_hw: tuple[int, int], focal: float = 60.0):
    """V cameras looking outwards around the car (yaw 2*pi*k/V), 1.5 m high, past frames 2 m behind each.

    Returns:
        intrinsics [B, F, V, 3, 3], cam2ego [B, F, V, 4, 4] (camera: x right, y down, z forward),
        ego2global [B, F, 4, 4].
    """
    h, w = image_hw
    K = torch.tensor([[focal, 0, w / 2 - 0.5], [0, focal, h / 2 - 0.5], [0, 0, 1.0]]).expand(b, f, v, 3, 3).clone()
    c2e = torch.zeros(b, f, v, 4, 4)
    for k in range(v):
        yaw = 2 * math.pi * k / v
        fwd = torch.tensor([math.cos(yaw), math.sin(yaw), 0.0])
        right = torch.tensor([math.sin(yaw), -math.cos(yaw), 0.0])
        down = torch.tensor([0.0, 0.0, -1.0])
        c2e[:, :, k, :3, :3] = torch.stack([right, down, fwd], 1)
        c2e[:, :, k, :3, 3] = torch.tensor([1.0, 0.0, 1.5])
        c2e[:, :, k, 3, 3] = 1.0
    e2g = torch.eye(4).expand(b, f, 4, 4).clone()
    e2g[:, :, 0, 3] = -2.0 * torch.arange(f, dtype=torch.float32)
    return K, c2e, e2g
