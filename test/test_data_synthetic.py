"""End to end on the project's synthetic world: the real-data loaders read it unchanged (issue 4, part A)."""

import time

import numpy as np
import pytest

from sparseoccvla_core.batch import OCC3D_CLASSES
from sparseoccvla_core.config import SparseOccVLAConfig
from sparseoccvla_core.data.dataset import DatasetOptions, DrivingDataset, make_collate
from sparseoccvla_core.geometry.camera import invert_pose, transform_points

# generating the world (2 scenes x 12 key frames at 160x96) takes ~10 s on 2 cores, once per session
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tokenizer():
    from sparseoccvla_core.tokenizer import default_corpus, train_tokenizer

    return train_tokenizer(default_corpus(), vocab_size=400)


def test_synthetic_items_and_batch(synthetic_world, tokenizer):
    cfg = SparseOccVLAConfig.tiny()
    ds = DrivingDataset(synthetic_world, "train", cfg, tokenizer, DatasetOptions(qa_choice="first"))
    assert len(ds) > 0
    start = time.perf_counter()
    items = [ds[i] for i in range(min(4, len(ds)))]
    rate = len(items) / (time.perf_counter() - start)
    print(f"synthetic tiny-config items/s (cold cache): {rate:.1f}")
    batch = make_collate(tokenizer)(items)
    batch.validate()
    h, w = cfg.image_size
    assert batch.images.shape[1:] == (cfg.num_frames, 6, 3, h, w)
    assert batch.occ_points.shape[0] == len(items) and batch.occ_mask.any(1).all()
    road = batch.occ_points[batch.occ_mask & (batch.occ_labels == OCC3D_CLASSES.index("driveable_surface"))]
    assert road.shape[0] > 0 and road[:, 2].abs().max() < 0.21  # road in the ego-ground layer
    assert batch.future_points.shape[1] == cfg.forecast_frames
    assert batch.qa_input_ids is not None and batch.plan_input_ids is not None
    assert (batch.plan_labels != -100).any(1).all()  # synthetic QA provides the driving-decision text


def test_synthetic_waypoints_agree_with_devkit_poses(synthetic_world):
    from nuscenes.nuscenes import NuScenes

    cfg = SparseOccVLAConfig.tiny(num_frames=1)
    ds = DrivingDataset(synthetic_world, "train", cfg, None, DatasetOptions(load_occupancy=False))
    nusc = NuScenes(version=ds.layout.version, dataroot=str(synthetic_world), verbose=False)

    def pose(sample_token):
        sample = nusc.get("sample", sample_token)
        sd = nusc.get("sample_data", sample["data"].get("LIDAR_TOP", sample["data"]["CAM_FRONT"]))
        rec = nusc.get("ego_pose", sd["ego_pose_token"])
        from pyquaternion import Quaternion

        m = np.eye(4)
        m[:3, :3] = Quaternion(rec["rotation"]).rotation_matrix
        m[:3, 3] = rec["translation"]
        return m

    item = ds[0]
    tokens = ds.scenes[0].sample_tokens
    for k in range(cfg.plan_horizon):
        if k + 1 < len(tokens):
            expect = transform_points(invert_pose(pose(tokens[0])), pose(tokens[k + 1])[None, :3, 3])[0, :2]
            np.testing.assert_allclose(item.gt_trajectory[k], expect, atol=1e-3)


def test_synthetic_anchors_command(synthetic_world, tmp_path):
    from sparseoccvla_core.cli import main
    from sparseoccvla_core.data.anchors import load_anchors

    assert main(["anchors", "--data", str(synthetic_world), "--out", str(tmp_path / "anchors.safetensors")]) == 0
    result = load_anchors(tmp_path / "anchors.safetensors")
    assert result.anchors_flat.shape == (18, 6, 2)
    assert result.anchor_commands.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert np.isfinite(result.anchors).all() and result.stats["counts"].sum() > 0
