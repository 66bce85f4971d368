"""Per-point class evidence (``point_class_features``) and the closing read-out (``occ_closing``), docs/experiments.md §10."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from perception_helpers import ring_rig
from scipy import ndimage

from sparseoccvla_core.batch import CameraRig
from sparseoccvla_core.config import SparseOccVLAConfig
from sparseoccvla_core.occupancy_encoder import SparseOccupancyEncoder, decode_occupancy
from sparseoccvla_core.sampling import (
    ego_to_camera_matrices,
    group_feature_volumes,
    sample_multiview_features,
    sample_points_current_frame,
)


def _inputs(cfg, b=2, v=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.image_size
    f = cfg.num_frames
    feats = [torch.randn(b, f, v, cfg.fpn_dim, h // s, w // s, generator=g) for s in (4, 8, 16, 32)][: cfg.num_levels]
    K, c2e, e2g = ring_rig(b, f, v, (h, w))
    return feats, K, c2e, e2g


def test_point_sampling_equals_the_query_sampler_at_zero_offset():
    """One read per point of all channels == the grouped multi-view sampler with every group at that point."""
    cfg = SparseOccVLAConfig.tiny()
    feats, K, c2e, e2g = _inputs(cfg)
    b, m, groups = 2, 50, cfg.num_groups
    pts = torch.randn(b, m, 3, generator=torch.Generator().manual_seed(1)) * torch.tensor([12.0, 12.0, 1.0])
    volumes = group_feature_volumes(feats, groups)
    ego2cam = ego_to_camera_matrices(c2e, e2g)
    lw = torch.softmax(torch.tensor([0.3, -0.2, 0.1, 0.5][: cfg.num_levels]), 0)
    ours = sample_points_current_frame(volumes, pts, lw, ego2cam, K, cfg.image_size, cfg.projection_min_depth)
    grouped = pts[:, :, None, None].expand(b, m, groups, 1, 3)
    level_w = lw.expand(b, m, groups, 1, cfg.num_levels)
    ref = sample_multiview_features(
        volumes,
        grouped,
        level_w,
        ego2cam,
        K,
        torch.ones(b, cfg.num_frames, dtype=torch.bool),
        cfg.image_size,
        cfg.projection_min_depth,
    )  # [B, M, G, F * 1, C/G]: frame 0 is index 0 of the frame axis
    ref = ref[:, :, :, 0].reshape(b, m, -1)
    assert ours.shape == (b, m, cfg.fpn_dim)
    assert (ours.abs().sum(-1) > 0).any(), "no point seen by any camera: the test would prove nothing"
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_point_class_head_starts_as_the_query_head_and_trains():
    cfg = SparseOccVLAConfig.tiny()
    feats, K, c2e, e2g = _inputs(cfg, b=1)
    rig = CameraRig(K, c2e, cfg.image_size)
    args = (feats, rig, e2g, torch.ones(1, cfg.num_frames, dtype=torch.bool), torch.zeros(1, 6))
    torch.manual_seed(0)
    plain = SparseOccupancyEncoder(cfg).eval()
    torch.manual_seed(0)
    with_points = SparseOccupancyEncoder(replace(cfg, point_class_features=16)).eval()
    missing = with_points.load_state_dict(plain.state_dict(), strict=False)
    assert missing.unexpected_keys == [] and all(".point_" in k for k in missing.missing_keys)
    a, b = plain(*args), with_points(*args)
    for la, lb in zip(a.layer_logits, b.layer_logits):
        torch.testing.assert_close(la, lb)  # zero-initialised last layer: same logits at the start
    with_points.train()
    out = with_points(*args)
    out.layer_logits[-1][..., 4].sum().backward()
    head = with_points.layers[-1].point_cls
    assert head[-1].weight.grad is not None and head[-1].weight.grad.abs().sum() > 0
    assert with_points.layers[-1].point_level_logits.grad is not None


def _closing_reference(occ: np.ndarray) -> np.ndarray:
    """Closing as in OPUS's padding, from SciPy: dilation, then erosion with everything outside the grid occupied."""
    s = np.ones((3, 3, 3), bool)
    return ndimage.binary_erosion(ndimage.binary_dilation(occ, s), s, border_value=1)


def test_closing_fills_what_scipy_fills_with_the_best_neighbours_class():
    cfg = replace(SparseOccVLAConfig.tiny(), occ_closing=True)
    shape = tuple(cfg.grid_shape)
    rng = np.random.default_rng(0)
    occ = np.zeros(shape, bool)
    occ[50:60, 50:60, 0] = True  # a road patch with holes
    occ[rng.integers(50, 60, 30), rng.integers(50, 60, 30), 0] = False
    occ[120, 80:90:2, 3] = True  # a dotted wall: every second voxel
    occ[10, 10, 10] = True  # an isolated voxel stays alone
    occ[0, 0:6:2, 0] = True  # at the grid's border
    idx = np.argwhere(occ)
    lo = np.asarray(cfg.point_cloud_range[:3])
    pts = torch.tensor(lo + (idx + 0.5) * cfg.voxel_size, dtype=torch.float32)
    classes = torch.tensor(np.where(idx[:, 2] == 0, 11, 15))
    scores = torch.tensor(rng.uniform(0.5, 1.0, len(idx)), dtype=torch.float32)
    logits = torch.full((len(idx), cfg.num_semantic_classes), -10.0)
    logits[torch.arange(len(idx)), classes] = torch.logit(scores)
    out_pts, out_cls, out_scores = decode_occupancy(pts, logits, cfg, 0.35)
    out_idx = np.floor((out_pts.numpy() - lo) / cfg.voxel_size).astype(int)
    got = np.zeros(shape, bool)
    got[tuple(out_idx.T)] = True
    np.testing.assert_array_equal(got, _closing_reference(occ))
    assert got[10, 10, 10] and got[10, 10, 9] == 0
    # a filled voxel takes the class and score of its best-scoring decoded neighbour
    score_grid = np.zeros(shape)
    score_grid[tuple(idx.T)] = scores.numpy()
    class_grid = np.full(shape, -1)
    class_grid[tuple(idx.T)] = classes.numpy()
    for (i, j, k), c, sc in zip(out_idx, out_cls.numpy(), out_scores.numpy()):
        if occ[i, j, k]:
            continue
        sl = tuple(slice(max(a - 1, 0), a + 2) for a in (i, j, k))
        best = np.unravel_index(np.argmax(score_grid[sl]), score_grid[sl].shape)
        assert c == class_grid[sl][best]
        assert sc == pytest.approx(score_grid[sl][best], rel=1e-6)
    # off: exactly the decoded voxels
    plain, _, _ = decode_occupancy(pts, logits, replace(cfg, occ_closing=False), 0.35)
    assert len(plain) == occ.sum()
