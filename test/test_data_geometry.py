"""Data geometry on hand-made poses: ego state, waypoints, command, concatenated GT (appendix A, eq. 11), anchors."""

import numpy as np
import pytest

from sparseoccvla_core.data.anchors import TrajectorySet, compute_anchors, kmeans, load_anchors, save_anchors
from sparseoccvla_core.data.occ3d import EXTENDED_RANGE_EGO, concat_gt, to_future_frame
from sparseoccvla_core.geometry.camera import invert_pose, pose_matrix, quaternion_to_matrix, transform_points
from sparseoccvla_core.geometry.ego_motion import driving_command, ego_states, future_waypoints


def _pose(x, y, yaw, z=0.0):
    return pose_matrix([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)], [x, y, z])


def test_quaternion_matches_pyquaternion():
    from pyquaternion import Quaternion

    q = np.array([0.572032, -0.001698, 0.011798, -0.820145])
    np.testing.assert_allclose(quaternion_to_matrix(q), Quaternion(q / np.linalg.norm(q)).rotation_matrix, atol=1e-12)
    m = _pose(3.0, -2.0, 0.7)
    np.testing.assert_allclose(invert_pose(m), np.linalg.inv(m), atol=1e-12)


def test_ego_state_and_waypoints_on_a_circle():
    """Constant speed v on a left circle of radius r: yaw rate v / r, chord velocity, exact waypoints."""
    v, r, dt, n = 10.0, 50.0, 0.5, 12
    w = v / r
    t = np.arange(n) * dt
    yaw0 = 0.3  # arbitrary global heading, the result must not depend on it
    cx, cy = 100.0, 200.0
    poses = np.stack([_pose(cx + r * np.sin(yaw0 + w * ti), cy - r * np.cos(yaw0 + w * ti), yaw0 + w * ti) for ti in t])
    state = ego_states(poses, (t * 1e6).astype(np.int64) + 1_532_402_927_647_951)
    chord = 2 * r * np.sin(w * dt / 2) / dt  # |backward difference| on the circle
    np.testing.assert_allclose(state[:, 5], chord, rtol=1e-5)
    np.testing.assert_allclose(state[:, 4], w, rtol=1e-5)
    # the chord points half a step back: vx = chord cos(w dt / 2), vy = -chord sin(w dt / 2) in the current frame
    np.testing.assert_allclose(state[:, 0], chord * np.cos(w * dt / 2), rtol=1e-5)
    np.testing.assert_allclose(state[1:, 1], -chord * np.sin(w * dt / 2), rtol=1e-4, atol=1e-5)
    # frame 0 has no past pose: it takes the forward chord (frame 1's world velocity) in its own axes
    np.testing.assert_allclose(state[0, 1], chord * np.sin(w * dt / 2), rtol=1e-4)
    # centripetal acceleration of the chord velocity: magnitude v_c * w, pointing left (+y) mostly
    np.testing.assert_allclose(np.hypot(state[2:, 2], state[2:, 3]), chord * 2 * np.sin(w * dt / 2) / dt, rtol=1e-4)
    assert np.all(state[:, 3] > 0)
    # waypoints: position at angle w * k dt on the circle, in the current ego frame
    wp, valid = future_waypoints(poses, 2, 6)
    k = np.arange(1, 7) * dt * w
    np.testing.assert_allclose(wp, np.stack([r * np.sin(k), r * (1 - np.cos(k))], 1), atol=1e-6)
    assert valid.all()
    assert driving_command(wp, valid) == 0  # 50 m circle at 10 m/s: y(3 s) = 8.9 m -> left
    wp_end, valid_end = future_waypoints(poses, n - 3, 6)
    assert valid_end.tolist() == [True, True, False, False, False, False] and np.all(wp_end[2:] == 0)


def test_straight_acceleration_and_commands():
    a, dt = 2.0, 0.5
    t = np.arange(8) * dt
    x = 5.0 * t + 0.5 * a * t**2
    poses = np.stack([_pose(xi, 0.0, 0.0) for xi in x])
    state = ego_states(poses, (t * 1e6).astype(np.int64))
    np.testing.assert_allclose(state[2:, 2], a, rtol=1e-6)  # second difference of a parabola is exact
    np.testing.assert_allclose(state[1:, 0], 5.0 + a * (t[1:] - dt / 2), rtol=1e-6)  # backward difference
    np.testing.assert_allclose(state[:, [1, 3, 4]], 0.0, atol=1e-9)
    wp, valid = future_waypoints(poses, 0, 6)
    assert driving_command(wp, valid) == 1
    assert driving_command(np.array([[5.0, -2.5]] * 6), np.ones(6, bool)) == 2
    assert driving_command(np.array([[5.0, 2.0]] * 6), np.ones(6, bool)) == 0  # threshold is inclusive (>= 2 m)
    # the last *valid* waypoint decides (OmniDrive get_planning_label)
    assert (
        driving_command(
            np.array([[1, 0.0], [2, 2.5], [0, 0], [0, 0], [0, 0], [0, 0]]), np.array([1, 1, 0, 0, 0, 0], bool)
        )
        == 0
    )
    with pytest.raises(ValueError, match="increasing"):
        ego_states(poses, np.zeros(8, np.int64))


def test_concatenated_gt_warps_static_voxels_both_ways():
    """A static voxel seen in a future frame lands at its place in the current frame, and back (appendix A)."""
    voxel = 0.4
    e_cur = _pose(1000.0, 500.0, 0.4)
    rel = _pose(4.0, 0.8, np.pi / 2)  # future ego: 4 m ahead, 0.8 m left, turned 90 deg left
    e_fut = e_cur @ rel
    # static world voxels, given in the current ego frame (voxel centres of the Occ3D grid)
    shared = np.array([[10.2, 2.2, 0.4]])  # seen by both frames
    future_only = np.array([[43.8, -0.2, 1.2]])  # beyond the current 40 m grid: only the future frame sees it
    cur_pts = np.concatenate([shared, [[-2.6, 5.0, 0.8]]]).astype(np.float32)
    cur_lab = np.array([4, 15])
    to_fut = invert_pose(e_fut) @ e_cur
    fut_pts = transform_points(to_fut, np.concatenate([shared, future_only])).astype(np.float32)
    fut_lab = np.array([16, 11])  # the shared voxel with a different label in the future frame
    g_pts, g_lab = concat_gt(
        [(cur_pts, cur_lab), (fut_pts, fut_lab)], [np.eye(4), invert_pose(e_cur) @ e_fut], EXTENDED_RANGE_EGO, voxel
    )
    assert len(g_pts) == 3  # deduplicated: the shared voxel once
    np.testing.assert_allclose(g_pts[:2], cur_pts, atol=1e-5)  # current frame first, exactly on its voxel centres
    assert g_lab.tolist() == [4, 15, 11]  # the current frame's label wins where frames overlap
    np.testing.assert_allclose(g_pts[2], future_only[0], atol=1e-5)
    # eq. 11: G in the future frame contains the future frame's own voxels at their own positions
    gt_pts, gt_lab = to_future_frame(g_pts, g_lab, to_fut, EXTENDED_RANGE_EGO)
    for p, lab in zip(fut_pts, [4, 11]):
        d = np.linalg.norm(gt_pts - p, axis=1)
        assert d.min() < 1e-4 and gt_lab[d.argmin()] == lab


def test_concat_gt_extended_range_crop():
    far = np.array([[85.0, 0.2, 0.2], [79.8, -59.8, 7.2]], dtype=np.float32)
    pts, lab = concat_gt([(far, np.array([1, 2]))], [np.eye(4)], EXTENDED_RANGE_EGO, 0.4)
    assert lab.tolist() == [2]  # x = 85 m is outside the [-80, 80) extended range


def test_kmeans_deterministic_and_exact_on_separated_clusters():
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + 0.1 * rng.standard_normal((40, 2)) for c in centres])
    a, b = kmeans(x, 3, seed=5), kmeans(x, 3, seed=5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.sort(a, axis=0), np.sort(centres, axis=0), atol=0.05)
    with pytest.raises(ValueError, match="distinct"):
        kmeans(np.ones((10, 2)), 3)


def test_anchor_statistics_and_save_load(tmp_path):
    rng = np.random.default_rng(0)
    n, t = 90, 6
    speeds = rng.uniform(2, 12, n)
    lateral = np.repeat([4.0, 0.0, -4.0], n // 3) + rng.normal(0, 0.3, n)
    steps = np.arange(1, t + 1) / t
    wp = np.stack([speeds[:, None] * steps * 3.0, lateral[:, None] * steps**2], -1)  # [N, T, 2]
    valid = np.ones((n, t), bool)
    valid[-3:, 4:] = False  # incomplete trajectories are ignored
    cmds = np.array([driving_command(w, v) for w, v in zip(wp, valid)])
    trajs = TrajectorySet(wp, valid, cmds, rng.normal(size=(n, 6)).astype(np.float32))
    result = compute_anchors(trajs, per_command=6, seed=0)
    assert result.anchors.shape == (3, 6, 6, 2) and result.anchors_flat.shape == (18, 6, 2)
    assert result.stats["counts"].tolist() == np.bincount(cmds[valid.all(1)], minlength=3).tolist()
    assert np.all(result.anchors[0, :, -1, 1] >= 2.0 - 1e-6) and np.all(result.anchors[2, :, -1, 1] <= -2.0 + 1e-6)
    np.testing.assert_allclose(result.stats["mean_trajectory"], wp[valid.all(1)].mean(0), rtol=1e-6)
    for suffix in (".npz", ".safetensors"):
        path, json_path = save_anchors(result, tmp_path / f"anchors{suffix}")
        back = load_anchors(path)
        np.testing.assert_allclose(back.anchors, result.anchors)
        assert back.anchor_commands.tolist() == [0] * 6 + [1] * 6 + [2] * 6
        assert back.info["per_command"] == 6 and json_path.is_file()
