"""``sparseoccvla eval`` (sparseoccvla_core/evaluation.py): GT helpers against hand computations, the report writer,
and the command end to end on a tiny synthetic world with a tiny untrained (seed-fixed) checkpoint."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparseoccvla_core import evaluation as E
from sparseoccvla_core import metrics as M

FREE = 17


def _quat_yaw(theta):
    return [math.cos(theta / 2), 0.0, 0.0, math.sin(theta / 2)]


class _TinyNusc:
    """Just the two devkit tables ``future_agent_boxes`` reads (``get``)."""

    def __init__(self, samples, anns):
        self.tables = {"sample": samples, "sample_annotation": anns}

    def get(self, table, token):
        return self.tables[table][token]


def test_future_agent_boxes_in_current_ego_frame():
    # ego at global (100, 200) heading +90 deg: ego x = global +y, ego y = global -x
    ego2global = np.eye(4)
    ego2global[:2, :2] = [[0.0, -1.0], [1.0, 0.0]]
    ego2global[:2, 3] = [100.0, 200.0]
    anns = {
        # a car 10 m north heading north: 10 m straight ahead, relative yaw 0; nuScenes size = (w, l, h)
        "car": {
            "category_name": "vehicle.car",
            "translation": [100.0, 210.0, 1.0],
            "size": [2.0, 4.0, 1.5],
            "rotation": _quat_yaw(math.pi / 2),
        },
        # a pedestrian 5 m west heading east: 5 m to the left, relative yaw -90 deg
        "ped": {
            "category_name": "human.pedestrian.adult",
            "translation": [95.0, 200.0, 1.0],
            "size": [0.7, 0.6, 1.8],
            "rotation": _quat_yaw(0.0),
        },
        # a barrier is not an obstacle of the collision metric (vehicles + pedestrians)
        "barrier": {
            "category_name": "movable_object.barrier",
            "translation": [100.0, 205.0, 0.5],
            "size": [2.0, 0.5, 1.0],
            "rotation": _quat_yaw(0.0),
        },
    }
    samples = {"s1": {"anns": ["car", "barrier"]}, "s2": {"anns": ["car", "ped"]}}
    boxes, mask = E.future_agent_boxes(_TinyNusc(samples, anns), ["s1", "s2", None], ego2global)
    assert boxes.shape == (3, 2, 5) and mask.tolist() == [[True, False], [True, True], [False, False]]
    np.testing.assert_allclose(boxes[0, 0], [10.0, 0.0, 4.0, 2.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(boxes[1, 1], [0.0, 5.0, 0.6, 0.7, -math.pi / 2], atol=1e-9)
    # the car straight ahead sits on a straight plan at 10 m; the ego box (M.EgoBox) reaches it at step 1
    traj = np.array([[[6.0, 0.0], [12.0, 0.0], [18.0, 0.0]]])
    hits = M.collision_flags(traj, boxes[None], mask[None])
    assert hits.tolist() == [[True, True, False]]


def test_top_view_takes_highest_occupied_voxel():
    grid = np.full((2, 2, 4), FREE, dtype=np.uint8)
    grid[0, 0, 0], grid[0, 0, 2] = 11, 4  # road under a car: the car is seen from above
    grid[1, 1, 3] = 16
    top = E.top_view(grid)
    assert top.tolist() == [[4, FREE], [FREE, 16]]


def _fake_metrics():
    """A metrics dict shaped like evaluate()'s, with crafted numbers."""
    h = {"1s": 1.0, "2s": 2.0, "3s": 3.0, "avg": 2.0, "per_step": [1.0] * 6}
    occ = {"miou": 12.5, "geometry_iou": 30.0, "iou_per_class": {}, "num_frames": 3, "camera_mask": False}
    return {
        "split": "val",
        "num_samples": 3,
        "num_samples_in_split": 3,
        "config": {"num_queries": 600, "num_global_queries": 12},
        "protocol": E._protocol_text(),
        "understanding": {
            "METEOR": 0.388,
            "ROUGE_L": 0.337,
            "CIDEr": 0.796,
            "BLEU-1": 0.5,
            "BLEU-2": 0.4,
            "BLEU-3": 0.3,
            "BLEU-4": 0.2,
            "num_pairs": 7,
        },
        "occupancy": {"camera_mask": occ, "no_mask": occ},
        "forecasting": {"1s": occ, "2s": occ, "3s": occ, "avg_miou": 12.5, "avg_geometry_iou": 30.0, "num_frames": 2},
        "planning": {"num_samples": 3, "l2": {"stp3": h, "uniad": h}, "collision": {"stp3": h, "uniad": h}},
        "nuscenes_qa": {"overall": 60.8, "count": 5, "per_type": {"count": 50.0, "exist": 100.0}, "per_type_hop": {}},
        "baselines": {
            "notes": [],
            "planning_mean_trajectory": {"l2": {"stp3": h, "uniad": h}, "collision": {"stp3": h, "uniad": h}},
            "qa_majority_answer": {"answer": "no", "accuracy": {"overall": 40.0, "per_type": {"exist": 50.0}}},
        },
    }


def test_markdown_tables_state_their_protocol(tmp_path):
    md = E.render_markdown(_fake_metrics())
    assert "| SparseOccVLA (this checkpoint) | 600 | 0.388 | 0.337 | 0.796 |" in md  # Table 1 left, paper column order
    assert "| SparseOccVLA (this checkpoint) | 12.50 | 12.50 | 12.50 | 12.50 | 30.00 |" in md  # Table 1 right
    assert "| SparseOccVLA (this checkpoint) | ST-P3 (default) | 1.00 | 2.00 | 3.00 | 2.00 |" in md  # Table 2
    assert "| Baseline: majority answer `no` | 40.0 | - | 50.0 |" in md  # columns count, exist; missing value as '-'
    for section in ("Table 1 (left)", "Table 1 (right)", "Table 2", "Table 5"):
        body = md.split(section, 1)[1].split("## ", 1)[0]
        assert "Protocol:" in body, section
    assert "Java METEOR" in md and "first 5 and last 7" in md and "4.084 m x 1.85 m" in md


def test_horizon_bars_show_model_and_baselines_from_zero():
    import matplotlib.pyplot as plt

    metrics = _fake_metrics()
    zero = {"1s": 0.0, "2s": 0.0, "3s": 0.0, "avg": 0.0}
    metrics["planning"]["collision"] = {"stp3": zero, "uniad": zero}  # a model that never collides
    fig = E.horizons_figure(metrics)
    try:
        _, l2_ax, coll_ax = fig.axes
        for ax, model_vals in ((l2_ax, [1.0, 2.0, 3.0]), (coll_ax, [0.0, 0.0, 0.0])):
            labels = [t.get_text() for t in ax.get_legend().get_texts()]
            assert labels == ["model ST-P3", "model UniAD", "mean traj. ST-P3"]
            heights = [[bar.get_height() for bar in bars] for bars in ax.containers]
            assert heights == [model_vals, model_vals, [1.0, 2.0, 3.0]]  # the baseline's bars beside the model's
            assert ax.get_ylim()[0] == 0.0 and ax.get_ylim()[1] >= 3.0
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------------------ end to end
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_world_and_ckpt(tmp_path_factory):
    """2 synthetic scenes (1 train, 1 val) of 14 key frames at 160x96 and an untrained tiny checkpoint (seed 0)."""
    import torch

    from sparseoccvla_core.config import SparseOccVLAConfig
    from sparseoccvla_core.model import SparseOccVLA

    base = tmp_path_factory.mktemp("eval_e2e")
    data = base / "synth"
    cmd = [
        sys.executable,
        "-m",
        "sparseoccvla_core.cli",
        "synth",
        "--out",
        str(data),
        "--scenes",
        "2",
        "--seed",
        "3",
        "--frames",
        "14",
        "--width",
        "160",
        "--height",
        "96",
        "--no-lidar",
    ]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, timeout=300)
    torch.manual_seed(0)
    model = SparseOccVLA(SparseOccVLAConfig.tiny())
    ckpt = model.save_pretrained(base / "ckpt")
    return data, ckpt, base


@pytest.mark.slow
def test_eval_command_end_to_end(tiny_world_and_ckpt):
    data, ckpt, base = tiny_world_and_ckpt
    out = base / "eval"
    cmd = [
        sys.executable,
        "-m",
        "sparseoccvla_core.cli",
        "eval",
        "--ckpt",
        str(ckpt),
        "--data",
        str(data),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--batch-size",
        "2",
        "--max-samples",
        "8",
        "--max-text-samples",
        "3",
        "--max-questions-per-sample",
        "2",
        "--max-new-tokens",
        "8",
        "--num-qualitative",
        "2",
        "--no-meteor",
    ]  # METEOR: test_metrics.py
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("understanding", "occupancy", "forecasting", "planning", "nuscenes_qa", "baselines", "protocol"):
        assert key in metrics, key
    assert metrics["split"] == "val" and metrics["num_samples"] == 8 and metrics["num_samples_in_split"] == 14
    # occupancy: every evaluated frame has labels; mIoU is a percentage
    assert metrics["occupancy"]["no_mask"]["num_frames"] == 8 and metrics["occupancy"]["camera_mask"]["num_frames"] == 8
    assert 0.0 <= (metrics["occupancy"]["no_mask"]["miou"] or 0.0) <= 100.0
    # forecasting protocol: a 14-frame scene has frames 5 and 6 (= 14 - 8) only
    assert metrics["forecasting"]["num_frames"] == 2
    assert set(metrics["forecasting"]) >= {"1s", "2s", "3s", "avg_miou"}
    # planning: frames 0..7 all have 6 future waypoints (14 - 6 = 8); both conventions, finite numbers
    pl = metrics["planning"]
    assert pl["num_samples"] == 8
    for table in ("l2", "collision"):
        for conv in ("stp3", "uniad"):
            assert all(math.isfinite(pl[table][conv][k]) for k in ("1s", "2s", "3s", "avg"))
    per_step = pl["l2"]["stp3"]["per_step"]  # the two conventions aggregate the same per-step errors
    assert pl["l2"]["stp3"]["3s"] == pytest.approx(np.mean(per_step)) and pl["l2"]["uniad"]["3s"] == pytest.approx(
        per_step[5]
    )
    # understanding / QA / baselines computed
    und = metrics["understanding"]
    assert 1 <= und["num_pairs"] <= 3 * 2 and 0.0 <= und["CIDEr"] and 0.0 <= und["ROUGE_L"] <= 1.0
    assert und["METEOR"] is None and und["meteor_backend"] == "not computed"
    qa = metrics["nuscenes_qa"]
    assert 1 <= qa["count"] <= 3 * 2 and 0.0 <= qa["overall"] <= 100.0 and qa["per_type"]
    assert "qa_majority_answer" in metrics["baselines"]
    bl = metrics["baselines"]
    assert "planning_mean_trajectory" in bl and "planning_constant_velocity" in bl
    assert "occupancy_most_frequent_class" in bl
    md = (out / "metrics.md").read_text()
    assert "Table 1 (left)" in md and "Table 1 (right)" in md and "Table 2" in md and "Table 5" in md
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "horizons.png" in pngs and len([p for p in pngs if p.startswith("bev_")]) == 2
    assert all((out / p).stat().st_size > 5000 for p in pngs)
