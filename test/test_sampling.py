"""Multi-view multi-frame sampling (paper sec. 3.1) vs independent numpy projection, real nuScenes calibration."""

import json

import numpy as np
import pytest
import torch

from sparseoccvla_core.batch import CAMERA_NAMES
from sparseoccvla_core.sampling import (
    ego_to_camera_matrices,
    group_feature_volumes,
    project_points,
    sample_multiview_features,
)

STRIDES = (4, 8, 16, 32)
# The demo JPEGs are 1600x900; the network input must be a multiple of 32, so the bottom 4 rows are cropped
# (K is unchanged by a bottom crop).
IMAGE_HW = (896, 1600)


@pytest.fixture(scope="module")
def calib(nuscenes_demo_dir):
    data = json.loads((nuscenes_demo_dir / "calib.json").read_text())
    sample = data["samples"][0]
    cams = sample["cameras"]
    K = np.stack([np.asarray(cams[c]["intrinsic"], dtype=np.float64) for c in CAMERA_NAMES])  # [V, 3, 3]
    c2e = np.stack([np.asarray(cams[c]["cam2ego"], dtype=np.float64) for c in CAMERA_NAMES])  # [V, 4, 4]
    e2g = np.asarray(sample["ego2global"], dtype=np.float64)
    assert all((cams[c]["height"], cams[c]["width"]) == (900, 1600) for c in CAMERA_NAMES)
    return K, c2e, e2g


def _pattern_features(num_frames, num_views, channels_extra=0):
    """Per level [1, F, V, 4, H_s, W_s]: ch0 = u, ch1 = v (cell centre, image pixels), ch2 = view, ch3 = frame."""
    h, w = IMAGE_HW
    feats = []
    for s in STRIDES:
        hs, ws = h // s, w // s
        u = torch.arange(ws, dtype=torch.float64) * s + (s - 1) / 2
        v = torch.arange(hs, dtype=torch.float64) * s + (s - 1) / 2
        f = torch.zeros(1, num_frames, num_views, 4, hs, ws, dtype=torch.float64)
        f[:, :, :, 0] = u[None, :]
        f[:, :, :, 1] = v[:, None]
        f[:, :, :, 2] = torch.arange(num_views, dtype=torch.float64)[:, None, None]
        f[:, :, :, 3] = torch.arange(num_frames, dtype=torch.float64)[:, None, None, None]
        feats.append(f)
    return feats


def _numpy_project(points_world, e2g, K, c2e):
    """World points [P, 3] -> (uv [V, P, 2], depth [V, P]) in the cameras of the ego pose e2g (numpy, float64)."""
    hom = np.concatenate([points_world, np.ones((len(points_world), 1))], 1).T  # [4, P]
    ego = np.linalg.inv(e2g) @ hom
    uvs, depths = [], []
    for v in range(len(K)):
        cam = (np.linalg.inv(c2e[v]) @ ego)[:3]
        pix = K[v] @ cam
        uvs.append((pix[:2] / pix[2]).T)
        depths.append(cam[2])
    return np.stack(uvs), np.stack(depths)


def _in_image(uv, depth, margin=-0.5):
    """[V, P] bool: in front of the camera and inside the image shrunk by ``margin`` pixels (-0.5 = full extent)."""
    h, w = IMAGE_HW
    return (
        (depth > 1e-5)
        & (uv[..., 0] >= margin)
        & (uv[..., 0] <= w - 1 - margin)
        & (uv[..., 1] >= margin)
        & (uv[..., 1] <= h - 1 - margin)
    )


def _expected_view(uv, depth, i):
    """First camera that sees point i (what SparseBEV / OPUS sample); it must be away from the border, where
    bilinear reads of the coarsest level (stride 32) would mix in zero padding."""
    view = int(np.argmax(_in_image(uv, depth)[:, i]))
    assert _in_image(uv, depth, margin=16)[view, i]
    return view


def _sample(feats, points_ego, K, c2e, e2g, frame_valid, level_weights=None):
    """Run sample_multiview_features with one group and S = P points for one query."""
    n_levels = len(feats)
    pts = torch.as_tensor(points_ego, dtype=torch.float64)[None, None, None]  # [1, 1, 1, P, 3]
    p = pts.shape[3]
    if level_weights is None:
        level_weights = torch.full((1, 1, 1, p, n_levels), 1.0 / n_levels, dtype=torch.float64)
    e2c = ego_to_camera_matrices(torch.tensor(np.asarray(c2e)), torch.tensor(np.asarray(e2g)))
    out = sample_multiview_features(
        group_feature_volumes(feats, 1),
        pts,
        level_weights,
        e2c,
        torch.tensor(np.asarray(K)),
        torch.tensor(frame_valid),
        IMAGE_HW,
        1e-5,
    )  # [1, 1, 1, F*P, 4]
    return out.reshape(-1, 4).numpy()  # [F*P, 4], frame-major


def test_project_points_matches_numpy(calib):
    K, c2e, e2g = calib
    rng = np.random.default_rng(0)
    pts = rng.uniform([-30, -30, -1], [30, 30, 4], size=(50, 3))
    uv, depth, valid = project_points(
        torch.as_tensor(pts)[None],
        torch.as_tensor(K)[None, None],
        torch.as_tensor(c2e)[None, None],
        torch.as_tensor(e2g)[None, None],
        IMAGE_HW,
    )
    world = (e2g @ np.concatenate([pts, np.ones((50, 1))], 1).T).T[:, :3]
    uv_np, depth_np = _numpy_project(world, e2g, K, c2e)
    np.testing.assert_allclose(depth[0, 0].numpy(), depth_np, atol=1e-6)
    front = depth_np > 1e-5
    np.testing.assert_allclose(uv[0, 0].numpy()[front], uv_np[front], atol=1e-5)
    inside = (
        front & (uv_np[..., 0] >= -0.5) & (uv_np[..., 0] <= 1599.5) & (uv_np[..., 1] >= -0.5) & (uv_np[..., 1] <= 895.5)
    )
    np.testing.assert_array_equal(valid[0, 0].numpy(), inside)
    assert inside.any() and (~inside).any()


def test_point_in_front_of_each_camera_samples_its_pixel(calib):
    """A 3D point built from a chosen pixel of each camera samples exactly (u, v, view) at every level."""
    K, c2e, e2g = calib
    rng = np.random.default_rng(1)
    # one point per camera: a pixel in the central region at a random depth, lifted to the ego frame
    points = []
    for v in range(6):
        u0, v0 = rng.uniform(400, 1200), rng.uniform(250, 650)
        z = rng.uniform(5, 30)
        cam = np.linalg.inv(K[v]) @ np.array([u0, v0, 1.0]) * z
        points.append((c2e[v] @ np.append(cam, 1.0))[:3])
    points = np.stack(points)
    world = (e2g @ np.concatenate([points, np.ones((6, 1))], 1).T).T[:, :3]
    uv_np, depth_np = _numpy_project(world, e2g, K, c2e)
    feats = _pattern_features(1, 6)
    weights = torch.softmax(torch.randn(1, 1, 1, 6, 4, dtype=torch.float64), -1)  # any convex level mix
    out = _sample(feats, points, K[None, None], c2e[None, None], e2g[None, None], np.ones((1, 1), bool), weights)
    for i in range(6):
        view = _expected_view(uv_np, depth_np, i)  # the camera it was built from, or an earlier overlapping one
        np.testing.assert_allclose(out[i, :2], uv_np[view, i], atol=1e-6)
        assert out[i, 2] == pytest.approx(view)
    # the point built from camera v is seen by camera v (it may also be seen by an earlier, overlapping camera)
    assert all(_in_image(uv_np, depth_np)[v, v] for v in range(6))


def test_past_frame_is_warped_by_ego_poses(calib):
    """A static world point sampled in a past frame reads the pixel where that frame's camera saw it."""
    K, c2e, e2g_cur = calib
    # past pose: 4 m behind along the current heading, 1.5 m to the right, yawed by 6 degrees, 0.1 m lower
    yaw = np.deg2rad(6.0)
    delta = np.eye(4)
    delta[:3, :3] = [[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]]
    delta[:3, 3] = [-4.0, -1.5, -0.1]
    e2g_past = e2g_cur @ delta
    rng = np.random.default_rng(2)
    points = np.stack([rng.uniform([8, -3, 0], [25, 3, 2]) for _ in range(8)])  # ahead of the car, current ego frame
    world = (e2g_cur @ np.concatenate([points, np.ones((8, 1))], 1).T).T[:, :3]
    uv_cur, d_cur = _numpy_project(world, e2g_cur, K, c2e)
    uv_past, d_past = _numpy_project(world, e2g_past, K, c2e)
    ok_cur, ok_past = _in_image(uv_cur, d_cur), _in_image(uv_past, d_past)
    assert ok_cur.any(0).all() and ok_past.any(0).all()
    assert np.abs(uv_cur[0] - uv_past[0])[ok_cur[0] & ok_past[0]].max() > 20  # the warp really moves pixels
    feats = _pattern_features(2, 6)
    e2g = np.stack([e2g_cur, e2g_past])[None]
    out = _sample(
        feats,
        points,
        np.broadcast_to(K, (1, 2, 6, 3, 3)),
        np.broadcast_to(c2e, (1, 2, 6, 4, 4)),
        e2g,
        np.ones((1, 2), bool),
    )  # [F*P, 4]
    for f, (uv_np, d_np) in enumerate([(uv_cur, d_cur), (uv_past, d_past)]):
        for i in range(8):
            view = _expected_view(uv_np, d_np, i)
            row = out[f * 8 + i]
            np.testing.assert_allclose(row[:2], uv_np[view, i], atol=1e-6)
            assert row[2] == pytest.approx(view) and row[3] == pytest.approx(f)


def test_invalid_frames_and_unseen_points_give_zeros(calib):
    K, c2e, e2g = calib
    points = np.array([[12.0, 0.0, 1.0], [0.0, 0.0, 60.0]])  # seen by CAM_FRONT; straight up (no camera)
    feats = _pattern_features(2, 6)
    e2g2 = np.stack([e2g, e2g])[None]
    Kb, c2eb = np.broadcast_to(K, (1, 2, 6, 3, 3)), np.broadcast_to(c2e, (1, 2, 6, 4, 4))
    out = _sample(feats, points, Kb, c2eb, e2g2, np.array([[True, False]]))  # [F*P, 4]
    assert np.abs(out[0]).sum() > 0 and out[0, 2] == pytest.approx(0)  # current frame, CAM_FRONT
    np.testing.assert_array_equal(out[1], 0.0)  # unseen point
    np.testing.assert_array_equal(out[2:], 0.0)  # padded past frame contributes nothing
