"""Multi-view, multi-frame, multi-scale point sampling of image features (paper sec. 3.1, "feature sampling").

The Sparse Occupancy Encoder reads image evidence only at a few 3D points per query (SparseBEV / OPUS
adaptive spatio-temporal sampling, docs/reference_choices.md §2.2).  This module holds the geometry:

* :func:`ego_to_camera_matrices` composes, per frame f and view v, the 4x4 map from the **current** ego
  frame to that camera: ``inv(cam2ego[f, v]) @ inv(ego2global[f]) @ ego2global[0]``
  (current ego -> global -> ego of frame f -> camera).  Points are assumed static in the world; dynamic
  objects are not motion-compensated (OPUS does the same, docs/reference_choices.md §2.6).
* :func:`project_points` applies it and the pinhole ``K``: pixel ``(u, v)``, depth and validity
  (depth > ``min_depth`` and, when the image size is given, inside the image).
* :func:`sample_multiview_features` bilinearly samples FPN levels at the projected points.  Each point
  reads from the first camera that sees it (SparseBEV/OPUS take the arg-max of the validity mask over
  views; nuScenes camera overlaps are narrow) and mixes the levels with per-point weights predicted from
  its query (SparseBEV ``scale_weights``).  Frames marked invalid, and points no camera of a frame sees,
  contribute zeros.

Pixel convention: OpenCV, the centre of pixel ``i`` is at coordinate ``i``; the image spans
``[-0.5, W - 0.5]``.  Every FPN level covers the same extent, so a point is normalised once by the image
size and read with ``align_corners=False`` on every level (a level-``s`` cell ``j`` has its centre at
image coordinate ``j * s + (s - 1) / 2``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def ego_to_camera_matrices(cam2ego: torch.Tensor, ego2global: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Current-ego -> camera transforms of every frame and view.

    Args:
        cam2ego: [B, F, V, 4, 4] camera -> ego of its own frame.
        ego2global: [B, F, 4, 4] ego pose of each frame (index 0 = current); None = every frame is the
            current ego frame (single-frame use, e.g. distillation).

    Returns:
        [B, F, V, 4, 4] in float64 (poses hold global coordinates of ~1e3 m, float32 would lose mm).
    """
    cam2ego64 = cam2ego.double()
    ego2cam = torch.linalg.inv(cam2ego64)  # [B, F, V, 4, 4]
    if ego2global is None:
        return ego2cam
    e2g = ego2global.double()
    cur2past = torch.linalg.inv(e2g) @ e2g[:, :1]  # [B, F, 4, 4]: current ego -> ego of frame f
    return ego2cam @ cur2past[:, :, None]  # [B, F, V, 4, 4]


def project_points(
    points: torch.Tensor,
    intrinsics: torch.Tensor,
    cam2ego: torch.Tensor,
    ego2global: Optional[torch.Tensor] = None,
    image_size: Optional[Sequence[int]] = None,
    min_depth: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project current-ego-frame points into every camera of every frame.

    Args:
        points: [B, P, 3] points in the current ego frame, m.
        intrinsics: [B, F, V, 3, 3] pinhole K of each (resized) image, pixels.
        cam2ego: [B, F, V, 4, 4] camera -> ego of that frame.
        ego2global: [B, F, 4, 4] ego poses (index 0 = current); None = all frames share the current ego frame.
        image_size: (H, W) of the images ``intrinsics`` refer to; when given, ``valid`` also requires the
            pixel to fall inside the image.
        min_depth: camera-frame depth (m) a point must exceed to count as in front of the camera.

    Returns:
        uv: [B, F, V, P, 2] pixel coordinates (u right, v down), garbage where not valid.
        depth: [B, F, V, P] camera-frame z, m.
        valid: [B, F, V, P] bool.
    """
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must be [B, P, 3], got {tuple(points.shape)}")
    if intrinsics.shape[-2:] != (3, 3) or cam2ego.shape[-2:] != (4, 4):
        raise ValueError("intrinsics must be [B, F, V, 3, 3] and cam2ego [B, F, V, 4, 4]")
    dtype = points.dtype
    ego2cam = ego_to_camera_matrices(cam2ego, ego2global).to(dtype)  # [B, F, V, 4, 4]
    rot, trans = ego2cam[..., :3, :3], ego2cam[..., :3, 3]
    # [B, F, V, P, 3] = R @ p + t for every frame and view
    cam = torch.einsum("bfvij,bpj->bfvpi", rot, points) + trans[..., None, :]
    depth = cam[..., 2]  # [B, F, V, P]
    pix = torch.einsum("bfvij,bfvpj->bfvpi", intrinsics.to(dtype), cam)  # [B, F, V, P, 3]
    uv = pix[..., :2] / depth.clamp(min=min_depth)[..., None]  # [B, F, V, P, 2]
    valid = depth > min_depth
    if image_size is not None:
        h, w = image_size
        u, v = uv[..., 0], uv[..., 1]
        valid = valid & (u >= -0.5) & (u <= w - 0.5) & (v >= -0.5) & (v <= h - 0.5)
    return uv, depth, valid


def pixels_to_grid(uv: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
    """Pixel coordinates -> ``grid_sample`` coordinates in [-1, 1] (``align_corners=False``) for any level."""
    h, w = image_size
    scale = uv.new_tensor([2.0 / w, 2.0 / h])
    return (uv + 0.5) * scale - 1.0


def group_feature_volumes(features: Sequence[torch.Tensor], num_groups: int) -> list[torch.Tensor]:
    """Rearrange FPN levels once per forward into the layout :func:`sample_multiview_features` reads.

    Args:
        features: per level [B, F, V, C, H_s, W_s].
        num_groups: channel groups G (each sampling group reads its own C / G channels).

    Returns:
        per level [B * F * G, C / G, V, H_s, W_s]: views stacked as the depth axis of a 3D volume, so one
        trilinear ``grid_sample`` with an integer view coordinate reads exactly one camera (OPUS trick,
        docs/reference_choices.md §2.2).
    """
    out = []
    for feat in features:
        b, f, v, c, h, w = feat.shape
        if c % num_groups:
            raise ValueError(f"feature channels {c} must be divisible by num_groups {num_groups}")
        vol = feat.reshape(b, f, v, num_groups, c // num_groups, h, w)  # [B, F, V, G, C/G, H, W]
        vol = vol.permute(0, 1, 3, 4, 2, 5, 6)  # [B, F, G, C/G, V, H, W]
        out.append(vol.reshape(b * f * num_groups, c // num_groups, v, h, w))
    return out


def sample_multiview_features(
    volumes: Sequence[torch.Tensor],
    points: torch.Tensor,
    level_weights: torch.Tensor,
    ego2cam: torch.Tensor,
    intrinsics: torch.Tensor,
    frame_valid: torch.Tensor,
    image_size: Sequence[int],
    min_depth: float,
) -> torch.Tensor:
    """Bilinear multi-view, multi-frame, multi-scale sampling at 3D points (SparseBEV / OPUS).

    Sampling rules: docs/reference_choices.md §2.2.

    Args:
        volumes: per level [B * F * G, C / G, V, H_s, W_s] from :func:`group_feature_volumes`.
        points: [B, N, G, S, 3] sampling points in the current ego frame, m (S per group).
        level_weights: [B, N, G, S, L] non-negative weights over the L levels (softmax from the query).
        ego2cam: [B, F, V, 4, 4] from :func:`ego_to_camera_matrices` (any float dtype).
        intrinsics: [B, F, V, 3, 3].
        frame_valid: [B, F] bool; invalid frames contribute zeros.
        image_size: (H, W) of the input images.
        min_depth: depth threshold, m.

    Returns:
        [B, N, G, F * S, C / G] sampled features (frames and points flattened as the mixing "points").
    """
    b, n, g, s, _ = points.shape
    f, v = ego2cam.shape[1], ego2cam.shape[2]
    # Geometry in float32 at least (bf16 would move a point 40 m away by ~0.15 m); features keep their dtype.
    dtype = torch.promote_types(points.dtype, torch.float32)
    flat = points.reshape(b, n * g * s, 3).to(dtype)  # [B, M, 3], M = N * G * S
    m = n * g * s
    # 1. project every point into every camera of every frame
    e2c = ego2cam.to(dtype)
    cam = torch.einsum("bfvij,bmj->bfvmi", e2c[..., :3, :3], flat) + e2c[..., None, :3, 3]  # [B, F, V, M, 3]
    depth = cam[..., 2]
    pix = torch.einsum("bfvij,bfvmj->bfvmi", intrinsics.to(dtype), cam)  # [B, F, V, M, 3]
    uv = pix[..., :2] / depth.clamp(min=min_depth)[..., None]  # [B, F, V, M, 2]
    grid_uv = pixels_to_grid(uv, image_size)
    valid = (depth > min_depth) & (grid_uv.abs() <= 1.0).all(-1)  # [B, F, V, M]
    # 2. first camera that sees the point (arg-max over views of the validity mask, docs/reference_choices.md §2.2)
    view = valid.to(torch.uint8).argmax(dim=2)  # [B, F, M]
    seen = valid.any(dim=2) & frame_valid[:, :, None]  # [B, F, M]
    chosen = torch.gather(grid_uv, 2, view[:, :, None, :, None].expand(b, f, 1, m, 2)).squeeze(2)  # [B, F, M, 2]
    view_coord = (view.to(dtype) + 0.5) * (2.0 / v) - 1.0  # [B, F, M] centre of the view's slice
    grid = torch.cat([chosen, view_coord[..., None]], dim=-1)  # [B, F, M, 3] (x=u, y=v, z=view)
    grid = grid.reshape(b, f, n, g, s, 3).permute(0, 1, 3, 2, 4, 5)  # [B, F, G, N, S, 3]
    grid = grid.reshape(b * f * g, n * s, 1, 1, 3).to(volumes[0].dtype)  # [B*F*G, N*S, 1, 1, 3]
    # 3. bilinear read on each level (trilinear with an exact view coordinate = bilinear in that view)
    lw = level_weights.permute(0, 2, 1, 3, 4)  # [B, G, N, S, L]
    out = None
    for lvl, vol in enumerate(volumes):
        sampled = F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        cg = sampled.shape[1]
        sampled = sampled.reshape(b, f, g, cg, n, s)  # [B, F, G, C/G, N, S]
        term = sampled * lw[:, None, :, None, :, :, lvl].to(sampled.dtype)  # broadcast over F and channels
        out = term if out is None else out + term
    assert out is not None
    # 4. zero frames that are padding and points no camera of the frame sees
    keep = seen.reshape(b, f, n, g, s).permute(0, 1, 3, 2, 4)  # [B, F, G, N, S]
    out = out * keep[:, :, :, None].to(out.dtype)  # [B, F, G, C/G, N, S]
    out = out.permute(0, 4, 2, 1, 5, 3)  # [B, N, G, F, S, C/G]
    return out.reshape(b, n, g, f * s, out.shape[-1])  # [B, N, G, F*S, C/G]


def sample_points_current_frame(
    volumes: Sequence[torch.Tensor],
    points: torch.Tensor,
    level_weights: torch.Tensor,
    ego2cam: torch.Tensor,
    intrinsics: torch.Tensor,
    image_size: Sequence[int],
    min_depth: float,
) -> torch.Tensor:
    """All feature channels of the current frame (frame 0) at each 3D point: one bilinear read per point and level.

    The per-point counterpart of :func:`sample_multiview_features` (same projection, view choice and pixel
    convention), for reading the evidence under every decoded point rather than around a query.

    Args:
        volumes: per level [B * F * G, C / G, V, H_s, W_s] from :func:`group_feature_volumes`.
        points: [B, M, 3] current ego frame, m.
        level_weights: [L] non-negative weights of the levels (summing to 1).
        ego2cam: [B, F, V, 4, 4]; intrinsics: [B, F, V, 3, 3] (only frame 0 is read).
        image_size: (H, W) of the input images.
        min_depth: depth threshold, m.

    Returns:
        [B, M, C] features (zeros where no camera sees the point).
    """
    b, m, _ = points.shape
    f, v = ego2cam.shape[1], ego2cam.shape[2]
    dtype = torch.promote_types(points.dtype, torch.float32)
    pts = points.to(dtype)
    e2c = ego2cam[:, 0].to(dtype)  # [B, V, 4, 4]
    cam = torch.einsum("bvij,bmj->bvmi", e2c[..., :3, :3], pts) + e2c[:, :, None, :3, 3]  # [B, V, M, 3]
    depth = cam[..., 2]
    pix = torch.einsum("bvij,bvmj->bvmi", intrinsics[:, 0].to(dtype), cam)
    uv = pix[..., :2] / depth.clamp(min=min_depth)[..., None]
    grid_uv = pixels_to_grid(uv, image_size)  # [B, V, M, 2]
    valid = (depth > min_depth) & (grid_uv.abs() <= 1.0).all(-1)  # [B, V, M]
    view = valid.to(torch.uint8).argmax(dim=1)  # [B, M]
    seen = valid.any(dim=1)  # [B, M]
    chosen = torch.gather(grid_uv, 1, view[:, None, :, None].expand(b, 1, m, 2)).squeeze(1)  # [B, M, 2]
    view_coord = (view.to(dtype) + 0.5) * (2.0 / v) - 1.0
    grid = torch.cat([chosen, view_coord[..., None]], dim=-1).reshape(b, m, 1, 1, 3)
    out = None
    for lvl, vol in enumerate(volumes):
        bfg, cg, vv, h, w = vol.shape
        g = bfg // (b * f)
        current = vol.reshape(b, f, g * cg, vv, h, w)[:, 0]  # [B, C, V, H, W] (groups are adjacent channels)
        sampled = F.grid_sample(
            current, grid.to(current.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
        )
        term = sampled.reshape(b, g * cg, m) * level_weights[lvl].to(sampled.dtype)
        out = term if out is None else out + term
    assert out is not None
    return (out * seen[:, None].to(out.dtype)).transpose(1, 2)  # [B, M, C]
