"""DrivingDataset + collate on a hand-made nuScenes-format dataset with known geometry (test/data_fixtures.py)."""

import json
import shutil
import time

import numpy as np
import pytest
import torch
from data_fixtures import camera_calibration, car_box_world, ego_pose_at, landmarks

from sparseoccvla_core.batch import CAMERA_NAMES, EGO_STATE_DIM, FREE_CLASS, IGNORE_INDEX
from sparseoccvla_core.config import SparseOccVLAConfig
from sparseoccvla_core.data.dataset import DatasetOptions, DrivingDataset, collate, make_collate
from sparseoccvla_core.data.images import CorruptImageError
from sparseoccvla_core.data.layout import resolve_layout
from sparseoccvla_core.geometry.camera import invert_pose, project_points, transform_points

OCC_OPTS = dict(qa_choice="first")


@pytest.fixture(scope="module")
def tokenizer():
    from sparseoccvla_core.tokenizer import default_corpus, train_tokenizer

    return train_tokenizer(default_corpus(), vocab_size=400)


def _dots_visible(batch, b, marks, min_brightness=150, views=None):
    """For every landmark that the batch geometry puts well inside an image: is there a bright dot there?"""
    hits = total = 0
    _, f, v, _, h, w = batch.images.shape
    for fi in range(f):
        world_to_ego = invert_pose(batch.ego2global[b, fi].double().numpy())
        pts = transform_points(world_to_ego, marks)
        for vi in views if views is not None else range(v):
            k = batch.intrinsics[b, fi, vi].double().numpy()
            c2e = batch.cam2ego[b, fi, vi].double().numpy()
            uv, depth, inside = project_points(pts, k, c2e, (h, w), min_depth=3.0)
            ok = inside & (uv[:, 0] > 2) & (uv[:, 0] < w - 3) & (uv[:, 1] > 2) & (uv[:, 1] < h - 3)
            img = batch.images[b, fi, vi].numpy()  # [3, H, W]
            for u, vv in uv[ok]:
                x, y = int(u), int(vv)
                total += 1
                hits += img[:, y - 1 : y + 2, x - 1 : x + 2].min(0).max() * 255 >= min_brightness
    return hits, total


def test_items_and_batch_geometry(mini_nuscenes, tokenizer):
    cfg = SparseOccVLAConfig.tiny(num_frames=3)
    ds = DrivingDataset(mini_nuscenes.root, "train", cfg, tokenizer, DatasetOptions(**OCC_OPTS))
    info = mini_nuscenes.scenes["scene-a"]
    assert len(ds) == len(info["sample_tokens"])
    items = [ds[i] for i in (0, 3)]
    batch = make_collate(tokenizer)(items)
    batch.validate()
    h, w = cfg.image_size
    assert batch.images.shape == (2, 3, 6, 3, h, w) and batch.images.dtype == torch.float32
    assert 0.0 <= batch.images.min() and batch.images.max() <= 1.0
    assert batch.frame_valid.tolist() == [[True, False, False], [True, True, True]]
    assert batch.ego_state.shape == (2, EGO_STATE_DIM)
    # background is dark red in RGB order
    assert batch.images[0, 0, 0, 0, 5, 5] > batch.images[0, 0, 0, 2, 5, 5]
    # ego state of the analytic left arc: speed ~ SPEED, yaw rate SPEED / RADIUS
    from data_fixtures import RADIUS, SPEED

    np.testing.assert_allclose(batch.ego_state[:, 5].numpy(), SPEED, rtol=1e-3)
    np.testing.assert_allclose(batch.ego_state[:, 4].numpy(), SPEED / RADIUS, rtol=1e-3)
    # waypoints agree with the analytic ego poses
    t = info["times"]
    for b, i in enumerate((0, 3)):
        e_i = ego_pose_at(t[i])
        for k in range(6):
            if i + k + 1 < len(t):
                expect = transform_points(invert_pose(e_i), ego_pose_at(t[i + k + 1])[None, :3, 3])[0, :2]
                np.testing.assert_allclose(batch.gt_trajectory[b, k].numpy(), expect, atol=1e-3)
                assert batch.gt_trajectory_mask[b, k]
            else:
                assert not batch.gt_trajectory_mask[b, k]
    assert batch.command.tolist() == [0, 1]  # 3 s of the 60 m left arc: y = 4.7 m; 1.5 s left: y = 1.2 m
    # landmarks are where the batch geometry (intrinsics after crop, motion-compensated cam2ego, frame poses) says
    marks = landmarks()
    for b in range(2):
        hits, total = _dots_visible(batch, b, marks)
        assert total > 30 and hits >= 0.97 * total, (hits, total)


def test_cam2ego_includes_camera_time_ego_motion(mini_nuscenes):
    """cam2ego = inv(E_ref) @ E_cam @ C: the cameras fire up to 150 ms before the lidar (reference) stamp."""
    from data_fixtures import CAMERA_LAG_US

    cfg = SparseOccVLAConfig.tiny(num_frames=1)
    ds = DrivingDataset(mini_nuscenes.root, "train", cfg, None, DatasetOptions(load_occupancy=False))
    item = ds[2]
    t = mini_nuscenes.scenes["scene-a"]["times"][2]
    calib = camera_calibration()
    for v, cam in enumerate(CAMERA_NAMES):
        expect = invert_pose(ego_pose_at(t)) @ ego_pose_at(t - CAMERA_LAG_US[cam] * 1e-6) @ calib[cam][1]
        np.testing.assert_allclose(item.cam2ego[0, v], expect, atol=1e-4)
    np.testing.assert_allclose(item.ego2global[0], ego_pose_at(t), atol=1e-4)
    assert np.linalg.norm(item.cam2ego[0, 5, :3, 3] - calib["CAM_BACK_RIGHT"][1][:3, 3]) > 1.0  # 8 m/s x 150 ms


def test_occupancy_gt_current_concat_future(mini_nuscenes):
    cfg = SparseOccVLAConfig.tiny(num_frames=1)
    ds = DrivingDataset(mini_nuscenes.root, "train", cfg, None, DatasetOptions(**OCC_OPTS))
    t = mini_nuscenes.scenes["scene-a"]["times"]
    item = ds[1]
    centre, yaw = car_box_world()
    e_cur = ego_pose_at(t[1])
    car_world_in_cur = transform_points(invert_pose(e_cur), centre[None])[0]
    car = item.occ_labels == 4
    np.testing.assert_allclose(item.occ_points[car].mean(0)[:2], car_world_in_cur[:2], atol=0.3)
    assert np.abs(item.occ_points[item.occ_labels == 11][:, 2]).max() < 1e-6  # road on the ego ground
    # concatenated GT: a superset of the current GT, extends beyond the 40 m grid with future road
    cur = {tuple(p) for p in np.round(item.occ_points, 3)}
    concat = {tuple(p) for p in np.round(item.occ_concat_points, 3)}
    assert cur <= concat and len(concat) > len(cur)
    assert item.occ_concat_points[:, 0].max() > 40.0
    assert len(concat) == len(item.occ_concat_points)  # one point per voxel
    # eq. 11 targets: G in future frame k; the future frame's own car voxels are all close to G_k's points
    assert item.future_valid.tolist() == [True] * 5 + [False]
    for k in range(5):
        own_p, own_l = item.future_eval_points[k], item.future_eval_labels[k]
        g_p = item.future_points[k]
        d = np.linalg.norm(own_p[own_l == 4][:, None] - g_p[None], axis=-1).min(1)
        assert d.max() < 0.4 * np.sqrt(3) / 2 + 0.05
        expected_own = transform_points(invert_pose(ego_pose_at(t[1 + k + 1])), centre[None])[0]
        np.testing.assert_allclose(own_p[own_l == 4].mean(0)[:2], expected_own[:2], atol=0.3)
    assert len(item.future_points[5]) == 0 and len(item.future_eval_points[5]) == 0
    batch = collate([item, ds[4]])
    batch.validate()
    assert batch.future_points.shape[:2] == (2, cfg.forecast_frames)
    assert batch.future_mask[0, 5].sum() == 0 and batch.future_mask[0, 0].sum() == len(item.future_points[0])
    assert batch.occ_labels[batch.occ_mask == 0].eq(FREE_CLASS).all()
    assert batch.future_eval_mask[1].sum(-1).tolist() == [len(p) for p in ds[4].future_eval_points]


def test_sweeps_history(mini_nuscenes):
    cfg = SparseOccVLAConfig.tiny(num_frames=3)
    ds = DrivingDataset(
        mini_nuscenes.root, "train", cfg, None, DatasetOptions(past="sweeps", past_stride=1, load_occupancy=False)
    )
    scene = ds.scenes[0]
    item = ds[2]
    rows = scene.history[2]
    assert item.frame_valid.tolist() == [True, True, True]
    assert all("/sweeps/" in "/" + scene.row_files[r][0] for r in rows[1:])
    # sweeps are 1/6 s apart: the past frames' poses are those of the CAM_FRONT sweeps (camera lag 0)
    times = mini_nuscenes.scenes["scene-a"]["times"]
    for f in range(len(rows)):
        np.testing.assert_allclose(item.ego2global[f], ego_pose_at(times[2] - f / 6.0), atol=1e-4)
    batch = collate([item])
    hits, total = _dots_visible(batch, 0, landmarks())
    assert total > 10 and hits >= 0.97 * total
    first = ds[0]  # the first key frame has no earlier sweeps in this dataset
    assert first.frame_valid.tolist() == [True, False, False]


def test_text_fields(mini_nuscenes, tokenizer):
    cfg = SparseOccVLAConfig.tiny(num_frames=1)
    opts = DatasetOptions(load_occupancy=False, qa_choice="first")
    ds = DrivingDataset(mini_nuscenes.root, "train", cfg, tokenizer, opts)
    a, b, c = ds[0], ds[1], ds[2]
    assert a.qa_pair.source == "desc" and a.plan_text.startswith("Keep turning left")
    assert b.qa_pair.source == "nuscenes_qa" and b.qa_pair.answer == "1" and b.plan_text is None
    assert c.qa_pair is None
    assert all(lab == IGNORE_INDEX for lab in c.qa_labels)  # prompt only: no language loss
    assert (
        tokenizer.decode([i for i, lab in zip(a.plan_ids, a.plan_labels) if lab != IGNORE_INDEX])
        .strip()
        .startswith("Keep turning left")
    )
    batch = make_collate(tokenizer)([a, b, c])
    batch.validate()
    assert batch.qa_attention_mask.sum(1).tolist() == [len(a.qa_ids), len(b.qa_ids), len(c.qa_ids)]
    assert batch.qa_input_ids[batch.qa_attention_mask == 0].eq(tokenizer.pad_token_id).all()
    strict = DrivingDataset(
        mini_nuscenes.root, "train", cfg, tokenizer, DatasetOptions(load_occupancy=False, require_text=True)
    )
    with pytest.raises(FileNotFoundError, match="plan text|QA pair"):
        strict[2]
    # random choice draws from the pool of the item
    rnd = DrivingDataset(mini_nuscenes.root, "train", cfg, tokenizer, DatasetOptions(load_occupancy=False))
    torch.manual_seed(0)
    assert {rnd[0].qa_pair.source for _ in range(12)} == {"desc", "conv"}


def test_clear_errors(mini_nuscenes, tmp_path):
    cfg = SparseOccVLAConfig.tiny()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DrivingDataset(tmp_path / "nowhere", "train", cfg)
    with pytest.raises(FileNotFoundError, match="no nuScenes version folder"):
        DrivingDataset(tmp_path, "train", cfg)
    with pytest.raises(FileNotFoundError, match="version folder"):
        resolve_layout(mini_nuscenes.root, "v1.0-trainval")
    broken = tmp_path / "broken"
    shutil.copytree(mini_nuscenes.root / mini_nuscenes.version, broken / mini_nuscenes.version)
    (broken / mini_nuscenes.version / "ego_pose.json").unlink()
    with pytest.raises(FileNotFoundError, match="ego_pose.json"):
        DrivingDataset(broken, "train", cfg)
    with pytest.raises(ValueError, match="split 'test'"):
        DrivingDataset(mini_nuscenes.root, "test", cfg)
    with pytest.raises(ValueError, match="qa_sources"):
        DatasetOptions(qa_sources=("desc", "tweets"))
    with pytest.raises(ValueError, match="concat_range"):
        DrivingDataset(
            mini_nuscenes.root, "train", cfg, options=DatasetOptions(concat_range=(-80, -60, -2.0, 80, 60, 7.4))
        )
    # images / labels missing: the copy has tables only
    (broken / mini_nuscenes.version / "ego_pose.json").write_text(
        (mini_nuscenes.root / mini_nuscenes.version / "ego_pose.json").read_text()
    )
    (broken / "splits.json").write_text((mini_nuscenes.root / "splits.json").read_text())
    with pytest.raises(FileNotFoundError, match="maps/none.png"):
        DrivingDataset(broken, "train", cfg)
    shutil.copytree(mini_nuscenes.root / "maps", broken / "maps")
    ds = DrivingDataset(broken, "train", cfg, options=DatasetOptions(load_occupancy=False))
    with pytest.raises(FileNotFoundError, match="camera image"):
        ds[0]
    shutil.copytree(mini_nuscenes.root / "samples", broken / "samples")
    ds = DrivingDataset(broken, "train", SparseOccVLAConfig.tiny(num_frames=1))
    with pytest.raises(FileNotFoundError, match="Occ3D labels"):
        ds[0]


def test_corrupt_image_policy(mini_nuscenes, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(mini_nuscenes.root, root)
    cfg = SparseOccVLAConfig.tiny(num_frames=1)
    opts = dict(load_occupancy=False)
    ds = DrivingDataset(root, "train", cfg, None, DatasetOptions(**opts))
    bad = root / ds.scenes[0].row_files[1][2]
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(CorruptImageError, match="truncated"):
        ds[1]
    skip = DrivingDataset(root, "train", cfg, None, DatasetOptions(on_bad_image="skip", **opts))
    item = skip[1]
    assert item.frame_index == 2  # replaced by the next decodable key frame


def test_cache_avoids_repeated_decoding(mini_nuscenes):
    cfg = SparseOccVLAConfig.tiny(num_frames=2)
    ds = DrivingDataset(mini_nuscenes.root, "train", cfg, None, DatasetOptions(qa_choice="first"))
    for i in range(len(ds)):
        ds[i]
    n = len(ds)
    # each key frame's 6 images decoded once although each is used by two items; each labels.npz read once
    assert ds._image_cache.misses == 6 * n and ds._image_cache.hits == 6 * (n - 1)
    assert ds._occ_cache.misses == n
    start = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    warm = (time.perf_counter() - start) / n
    assert warm < 0.5


def test_augmentation_keeps_geometry(mini_nuscenes):
    cfg = SparseOccVLAConfig.tiny(num_frames=2)
    opts = DatasetOptions(load_occupancy=False, augment=True, aug_scale_range=(1.1, 1.4), aug_color_jitter=0.1)
    ds = DrivingDataset(mini_nuscenes.root, "train", cfg, None, opts)
    torch.manual_seed(3)
    batch = collate([ds[3], ds[4]])
    batch.validate()
    assert not torch.allclose(batch.intrinsics[0, 0, 0], batch.intrinsics[1, 0, 0])
    for b in range(2):
        hits, total = _dots_visible(batch, b, landmarks(), min_brightness=120)
        assert total > 10 and hits >= 0.95 * total


def test_dataloader_workers(mini_nuscenes, tokenizer):
    from torch.utils.data import DataLoader

    cfg = SparseOccVLAConfig.tiny(num_frames=2)
    ds = DrivingDataset(mini_nuscenes.root, "val", cfg, tokenizer, DatasetOptions(qa_choice="first"))
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=make_collate(tokenizer))
    batches = list(loader)
    assert [b.batch_size for b in batches] == [2, 2]
    for b in batches:
        b.validate()
    assert sum((b.sample_tokens for b in batches), []) == mini_nuscenes.scenes["scene-b"]["sample_tokens"]


def test_anchors_command_on_small_split(mini_nuscenes, tmp_path, capsys):
    from data_fixtures import RADIUS, SPEED

    from sparseoccvla_core.cli import main
    from sparseoccvla_core.data.anchors import load_anchors

    # the ego drives a perfect circle at constant speed: every key frame sees the same future trajectory
    with pytest.raises(ValueError, match="only 1 distinct complete 6-step"):
        main(["anchors", "--data", str(mini_nuscenes.root), "--out", str(tmp_path / "a.npz")])
    assert (
        main(
            [
                "anchors",
                "--data",
                str(mini_nuscenes.root),
                "--out",
                str(tmp_path / "a.npz"),
                "--per-command",
                "1",
                "--horizon",
                "3",
            ]
        )
        == 0
    )
    result = load_anchors(tmp_path / "a.npz")
    assert result.anchors.shape == (3, 1, 3, 2)
    assert result.stats["counts"].tolist() == [0, 4, 0]  # 7 key frames -> 4 complete 3-step trajectories
    assert set(result.info["fallback"]) == {"left", "right"}
    ang = SPEED / RADIUS * 0.5 * np.arange(1, 4)
    expect = np.stack([RADIUS * np.sin(ang), RADIUS * (1 - np.cos(ang))], 1)
    np.testing.assert_allclose(result.anchors[1, 0], expect, atol=1e-3)  # straight: the circle itself
    # left / right have no trajectories of their own: the kinematic arc of that command (v = 10 m/s, w = +-0.3 rad/s)
    t = 0.5 * np.arange(1, 4)
    for c, w in ((0, 0.3), (2, -0.3)):
        arc = np.stack([10.0 / w * np.sin(w * t), 10.0 / w * (1 - np.cos(w * t))], 1)
        np.testing.assert_allclose(result.anchors[c, 0], arc, atol=1e-4)
    np.testing.assert_allclose(result.stats["ego_state_mean"][5], SPEED, rtol=1e-3)
    assert "3 anchors" in capsys.readouterr().out
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["per_command"] == 1 and len(doc["anchors_flat"]) == 3


def test_inspect_data_command(mini_nuscenes, capsys):
    from sparseoccvla_core.cli import main

    assert main(["inspect-data", "--data", str(mini_nuscenes.root), "--items", "2"]) == 0
    out = capsys.readouterr().out
    assert "key_frames: 7" in out and "with_occ3d: 7" in out and "with_omnidrive: 1" in out
    assert "items/s" in out and "future_eval_points" in out


def test_stage_1_reads_only_the_current_frame_labels(mini_nuscenes, monkeypatch):
    """future_occupancy False (training stage 1 with occ_gt "current"): the item's current GT is the full
    loader's, no future label file is read, and collate builds a batch without concatenated / future GT."""
    from sparseoccvla_core import train_setup
    from sparseoccvla_core.data import dataset as dataset_module
    from sparseoccvla_core.train_config import TrainConfig

    cfg = SparseOccVLAConfig.tiny(num_frames=1)
    full = DrivingDataset(mini_nuscenes.root, "train", cfg, None, DatasetOptions(**OCC_OPTS))
    opts = DatasetOptions(**OCC_OPTS, future_occupancy=False)
    current_only = DrivingDataset(mini_nuscenes.root, "train", cfg, None, opts)
    reads = []
    real = dataset_module.load_occ3d_labels
    monkeypatch.setattr(dataset_module, "load_occ3d_labels", lambda path: reads.append(path) or real(path))
    item = current_only[1]
    assert len(reads) == 1
    ref = full[1]
    assert len(reads) > 1 and ref.occ_concat_points is not None
    np.testing.assert_array_equal(item.occ_points, ref.occ_points)
    np.testing.assert_array_equal(item.occ_labels, ref.occ_labels)
    assert item.occ_concat_points is None and item.future_points is None
    batch = collate([current_only[0], item])
    batch.validate()
    assert batch.occ_points is not None and batch.occ_concat_points is None and batch.future_points is None
    tcfg = TrainConfig.tiny()
    assert not train_setup.dataset_options(tcfg, 1, cfg).future_occupancy
    assert train_setup.dataset_options(tcfg, 2, cfg).future_occupancy
    assert train_setup.dataset_options(tcfg, 1, SparseOccVLAConfig.tiny(occ_gt="concat")).future_occupancy
