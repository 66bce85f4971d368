"""``sparseoccvla eval`` (sparseoccvla_core/evaluation/): GT helpers and the metric accumulator against hand
computations, the metrics.json layout of the result dataclasses, the report writer, and the command end to end on a
tiny synthetic world with a tiny untrained (seed-fixed) checkpoint."""

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


_H = {"1s": 1.0, "2s": 2.0, "3s": 3.0, "avg": 2.0, "per_step": [1.0] * 6}  # one metric under one convention
_OCC = {
    "miou": 12.5,
    "geometry_iou": 30.0,
    "iou_per_class": {"car": 25.0, "bus": None},
    "num_frames": 3,
    "camera_mask": False,
}


def _fake_results() -> E.EvalResults:
    """An EvalResults shaped like evaluate()'s, with crafted numbers, built from the dataclasses."""
    occ = E.OccupancyScores(12.5, 30.0, {"car": 25.0, "bus": None}, 3, False)
    occ_cam = E.OccupancyScores(10.0, 20.0, {"car": 20.0, "bus": None}, 3, True)

    def h() -> E.HorizonScores:
        return E.HorizonScores({"1s": 1.0, "2s": 2.0, "3s": 3.0}, 2.0, [1.0] * 6)

    def plan() -> E.PlanScores:
        return E.PlanScores(l2={"stp3": h(), "uniad": h()}, collision={"stp3": h(), "uniad": h()})

    return E.EvalResults(
        split="val",
        num_samples=3,
        num_samples_in_split=4,
        num_queries=600,
        num_global_queries=12,
        occupancy=E.CurrentOccupancy(camera_mask=occ_cam, no_mask=occ, missing_label_files=1),
        forecasting=E.ForecastResult({"1s": occ, "2s": occ, "3s": occ}, 12.5, 30.0, 2),
        planning=E.PlanningResult(num_samples=3, scores=plan()),
        understanding=E.UnderstandingResult(
            bleu=(0.5, 0.4, 0.3, 0.2),
            rouge_l=0.337,
            cider=0.796,
            meteor=0.388,
            num_pairs=7,
            meteor_backend=M.METEOR_BACKEND,
            examples=[E.TextExample("a car", "a red car")],
        ),
        nuscenes_qa=E.QAResult(60.8, 5, {"count": 50.0, "exist": 100.0}, {"count_H0": 50.0, "exist_H1": 100.0}),
        reasoning_examples=[E.ReasoningExample("tok1", "keep lane")],
        baselines=E.BaselineResults(
            notes=["a note"],
            training_statistics=E.baselines.TrainingSummary("train", 10, 5, 20),
            occupancy_most_frequent_class=E.baselines.ClassBaseline("manmade", occ_cam, occ),
            planning_mean_trajectory=E.baselines.MeanTrajectoryBaseline(plan(), [[1.0, 0.0]] * 6),
            planning_constant_velocity=plan(),
            qa_majority_answer=E.baselines.MajorityAnswerBaseline(
                "no", E.QAResult(40.0, 5, {"exist": 50.0}, {"exist_H0": 50.0})
            ),
        ),
        seconds={"setup": 1.0, "total": 2.0},
        extra={"checkpoint": "runs/stage3", "data": "data/synth"},
    )


def _old_layout() -> dict:
    """The same numbers written out by hand in the metrics.json layout, as sparseoccvla eval wrote it from dicts."""
    occ_cam = {
        **_OCC,
        "miou": 10.0,
        "geometry_iou": 20.0,
        "iou_per_class": {"car": 20.0, "bus": None},
        "camera_mask": True,
    }
    plan = {"l2": {"stp3": _H, "uniad": _H}, "collision": {"stp3": _H, "uniad": _H}}
    return {
        "split": "val",
        "num_samples": 3,
        "config": {"num_queries": 600, "num_global_queries": 12},
        "protocol": E.protocol_text(),
        "units": {
            "miou": "percent",
            "iou": "percent",
            "l2": "m",
            "collision": "percent",
            "qa_accuracy": "percent",
            "text": "fraction (CIDEr not x100)",
        },
        "occupancy": {"camera_mask": occ_cam, "no_mask": _OCC, "missing_label_files": 1},
        "forecasting": {
            "1s": _OCC,
            "2s": _OCC,
            "3s": _OCC,
            "avg_miou": 12.5,
            "avg_geometry_iou": 30.0,
            "num_frames": 2,
        },
        "planning": {
            "num_samples": 3,
            "ego_box": {"length": 4.084, "width": 1.85, "center_offset": 0.5 + 0.985793, "min_move": 0.05},
            "collision_categories": ["vehicle.", "human.pedestrian."],
            **plan,
        },
        "understanding": {
            "BLEU-1": 0.5,
            "BLEU-2": 0.4,
            "BLEU-3": 0.3,
            "BLEU-4": 0.2,
            "ROUGE_L": 0.337,
            "CIDEr": 0.796,
            "METEOR": 0.388,
            "num_pairs": 7,
            "meteor_backend": M.METEOR_BACKEND,
            "METEOR_java": None,
            "meteor_java_backend": "not computed",
            "examples": [{"prediction": "a car", "reference": "a red car"}],
        },
        "nuscenes_qa": {
            "overall": 60.8,
            "count": 5,
            "per_type": {"count": 50.0, "exist": 100.0},
            "per_type_hop": {"count_H0": 50.0, "exist_H1": 100.0},
        },
        "reasoning_examples": [{"sample_token": "tok1", "reasoning": "keep lane"}],
        "baselines": {
            "notes": ["a note"],
            "training_statistics": {"split": "train", "num_trajectories": 10, "num_occ_frames": 5, "num_qa": 20},
            "occupancy_most_frequent_class": {"class": "manmade", "camera_mask": occ_cam, "no_mask": _OCC},
            "planning_mean_trajectory": {**plan, "trajectory": [[1.0, 0.0]] * 6},
            "planning_constant_velocity": plan,
            "qa_majority_answer": {
                "answer": "no",
                "accuracy": {
                    "overall": 40.0,
                    "count": 5,
                    "per_type": {"exist": 50.0},
                    "per_type_hop": {"exist_H0": 50.0},
                },
            },
        },
        "num_samples_in_split": 4,
        "seconds": {"setup": 1.0, "total": 2.0},
        "checkpoint": "runs/stage3",
        "data": "data/synth",
    }


def _key_paths(d, prefix=()):
    """Every key path of a nested dict, in order (so that the key ORDER of metrics.json is compared too)."""
    out = []
    for k, v in d.items():
        out.append(prefix + (k,))
        if isinstance(v, dict):
            out += _key_paths(v, prefix + (k,))
    return out


def test_results_serialise_to_the_metrics_json_layout():
    results = _fake_results()
    written = json.loads(json.dumps(results.to_dict()))
    expected = _old_layout()
    assert written == expected
    assert _key_paths(written) == _key_paths(expected)
    # and back: metrics.json -> dataclasses -> the same file
    assert E.EvalResults.from_dict(written) == results
    assert E.EvalResults.from_dict(written).to_dict() == written
    # an absent baseline is absent from the file (not null), an absent metric is null
    results.baselines = E.BaselineResults(notes=[])
    results.understanding, results.nuscenes_qa, results.planning.scores = None, None, None
    d = results.to_dict()
    assert d["baselines"] == {"notes": []} and d["understanding"] is None and d["nuscenes_qa"] is None
    assert d["planning"]["l2"] is None and d["planning"]["collision"] is None
    assert E.EvalResults.from_dict(json.loads(json.dumps(d))) == results
    with pytest.raises(ValueError, match="overwrite"):
        E.EvalResults(**{**vars(results), "extra": {"split": "x"}}).to_dict()


def test_markdown_tables_state_their_protocol(tmp_path):
    md = E.render_markdown(_fake_results())
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

    results = _fake_results()
    results.baselines.planning_constant_velocity = None  # plotted like the mean trajectory; one baseline here

    def zero() -> E.HorizonScores:
        return E.HorizonScores({"1s": 0.0, "2s": 0.0, "3s": 0.0}, 0.0, [0.0] * 6)

    results.planning.scores.collision = {"stp3": zero(), "uniad": zero()}  # a model that never collides
    fig = E.horizons_figure(results)
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


# ------------------------------------------------------------------------------------------ metric accumulator
def _tiny_cfg():
    from sparseoccvla_core.config import SparseOccVLAConfig

    return SparseOccVLAConfig.tiny()  # Occ3D grid 200 x 200 x 16 at 0.4 m, 6 waypoints at 0.5 s


def _centres(cfg, ijk):
    from sparseoccvla_core.occ_grid import index_to_points

    return index_to_points(np.asarray(ijk), cfg.point_cloud_range, cfg.voxel_size)


def test_accumulator_occupancy_against_hand_counts():
    import torch

    cfg = _tiny_cfg()
    a, b, c = (100, 100, 0), (101, 100, 0), (50, 60, 3)
    gt = np.full(cfg.grid_shape, FREE, dtype=np.uint8)
    gt[a], gt[b] = 4, 11  # a car voxel and a road voxel
    camera = np.ones(cfg.grid_shape, dtype=bool)
    camera[c] = False  # the spurious prediction at c is not seen by a camera
    # prediction: a = car (right), b = car (wrong), c = road (false positive); a second, lower-scored point in a
    # says road and must lose to the car
    points = torch.tensor(_centres(cfg, [a, b, c, a]))
    classes = torch.tensor([4, 4, 11, 11])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.1])
    stats = E.TrainingStatistics(None, 0, np.eye(18, dtype=np.int64)[15] * 5, 1, None, 0, "train")  # manmade
    acc = E.MetricAccumulator(cfg, stats)
    grid = acc.add_occupancy(points, classes, gt, camera, scores)
    assert grid[a] == 4 and grid[b] == 4 and grid[c] == 11 and (grid != FREE).sum() == 3
    res = acc.finalize("val", num_samples=1)
    no_mask, cam = res.occupancy.no_mask, res.occupancy.camera_mask
    # no mask: car TP 1, FP 1 (b) -> 50 %; road TP 0, FN 1 (b), FP 1 (c) -> 0 %; geometry 2 / 3
    assert no_mask.iou_per_class["car"] == pytest.approx(50.0) and no_mask.iou_per_class["driveable_surface"] == 0.0
    assert no_mask.miou == pytest.approx(25.0) and no_mask.geometry_iou == pytest.approx(200.0 / 3)
    assert no_mask.iou_per_class["bus"] is None  # neither in GT nor predicted: undefined, not 0
    # camera mask drops c: road TP 0, FN 1 -> 0 %, car still 50 %; geometry 2 / 2
    assert cam.miou == pytest.approx(25.0) and cam.geometry_iou == pytest.approx(100.0) and cam.camera_mask
    # baseline: all GT voxels 'manmade' -> car, road and manmade all 0 % IoU, geometry perfect
    base = res.baselines.occupancy_most_frequent_class
    assert base.class_name == "manmade" and base.no_mask.miou == 0.0 and base.no_mask.geometry_iou == 100.0
    with pytest.raises(ValueError, match="grid"):
        acc.add_occupancy(points, classes, gt[:10])
    # a frame without a camera mask enters only the no-mask mIoU
    acc.add_occupancy(points, classes, gt)
    assert acc.occupancy_all.num_frames == 2 and acc.occupancy_camera.num_frames == 1


def test_accumulator_forecast_horizons():
    cfg = _tiny_cfg()
    gt = np.full(cfg.grid_shape, FREE, dtype=np.uint8)
    gt[10, 10, 1] = 7
    acc = E.MetricAccumulator(cfg)
    assert [acc.forecast_frame(h) for h in (1.0, 2.0, 3.0)] == [2, 4, 6]  # forecast frames 0.5 s apart
    acc.add_forecast(1.0, _centres(cfg, [(10, 10, 1)]), [7], gt)  # right
    acc.add_forecast(2.0, _centres(cfg, [(10, 10, 1)]), [8], gt)  # wrong class
    res = acc.finalize("val", num_samples=1).forecasting
    assert res.horizons["1s"].miou == pytest.approx(100.0) and res.horizons["2s"].miou == 0.0
    assert res.horizons["3s"].miou is None and res.avg_miou is None and res.num_frames == 1
    with pytest.raises(ValueError, match="horizon"):
        acc.add_forecast(1.5, _centres(cfg, [(10, 10, 1)]), [7], gt)


def test_accumulator_planning_and_language_against_hand_values():
    cfg = _tiny_cfg()
    t = cfg.plan_horizon
    gt = np.stack([np.arange(1, t + 1) * 1.0, np.zeros(t)], axis=1)  # 1 m per 0.5 s straight ahead = 2 m/s
    plan = gt + np.array([0.0, 1.0])  # 1 m to the left at every step
    boxes, mask = np.zeros((t, 1, 5)), np.zeros((t, 1), dtype=bool)
    boxes[3, 0], mask[3, 0] = (
        [4.0 + 1.486, 2.5, 4.0, 2.0, 0.0],
        True,
    )  # y in [1.5, 3.5]: hit by the plan at step 4, not the GT
    mean_traj = gt * 0.5
    stats = E.TrainingStatistics(mean_traj, 3, None, 0, "no", 4, "train")
    acc = E.MetricAccumulator(cfg, stats)
    assert acc.add_plan(plan, gt, np.ones(t, bool), [2.0, 0.0], boxes, mask)
    assert not acc.add_plan(plan, gt, np.r_[np.ones(t - 1, bool), False], [2.0, 0.0])  # incomplete GT future
    with pytest.raises(ValueError, match="agent_mask"):
        acc.add_plan(plan, gt, np.ones(t, bool), [2.0, 0.0], boxes)
    for pred, ans, kind in (("No.", "no", "exist"), ("yes", "no", "exist"), ("2", "2", "count")):
        acc.add_qa(pred, ans, kind, 0)
    acc.add_understanding("a red car ahead", "a red car ahead")
    acc.add_understanding("nothing", "a truck on the left")
    res = acc.finalize("val", num_samples=2, meteor=False)
    pl = res.planning
    assert pl.num_samples == 1
    l2 = pl.scores.l2
    assert l2["stp3"].value("1s") == pytest.approx(1.0) and l2["uniad"].value("3s") == pytest.approx(1.0)
    col = pl.scores.collision
    # collision at step 4 only: ST-P3 3 s = mean over 6 steps = 100/6 %, 2 s = mean over 4 = 25 %, UniAD 2 s = 100 %
    assert col["stp3"].value("3s") == pytest.approx(100.0 / 6) and col["stp3"].value("2s") == pytest.approx(25.0)
    assert col["uniad"].value("2s") == pytest.approx(100.0) and col["uniad"].value("1s") == 0.0
    # baselines on the same sample: constant velocity 2 m/s = the GT exactly; mean trajectory = half of it
    cv = res.baselines.planning_constant_velocity
    assert cv.l2["stp3"].value("avg") == pytest.approx(0.0) and cv.collision["stp3"].value("avg") == 0.0
    mt = res.baselines.planning_mean_trajectory
    assert mt.scores.l2["uniad"].value("3s") == pytest.approx(3.0) and mt.trajectory == mean_traj.tolist()
    # QA: 2 of 3 right after normalisation; the majority answer 'no' gets 2 of 3 too
    qa = res.nuscenes_qa
    assert qa.overall == pytest.approx(200 / 3) and qa.per_type == {"exist": 50.0, "count": 100.0}
    maj = res.baselines.qa_majority_answer
    assert maj.answer == "no" and maj.accuracy.overall == pytest.approx(200 / 3)
    und = res.understanding
    assert und.num_pairs == 2 and und.meteor is None and und.examples[0].reference == "a red car ahead"
    assert und.bleu == tuple(
        M.caption_metrics(["a red car ahead", "nothing"], ["a red car ahead", "a truck on the left"], meteor=False)[
            f"BLEU-{n}"
        ]
        for n in range(1, 5)
    )


def test_write_report_from_accumulated_results(tmp_path):
    acc = E.MetricAccumulator(_tiny_cfg())
    res = acc.finalize("bag", num_samples=0)  # nothing scored: every metric undefined, still a valid report
    res.extra["bag"] = "drive.mcap"
    files = E.write_report(res, tmp_path)
    assert [f.name for f in files] == ["metrics.json", "metrics.md", "horizons.png"]
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["bag"] == "drive.mcap" and written["planning"]["l2"] is None and written["understanding"] is None
    assert E.EvalResults.from_dict(written) == res
    assert "Split `bag`: 0 of 0 key frames" in (tmp_path / "metrics.md").read_text()
    with pytest.raises(ValueError, match="pc_range"):
        E.write_report(res, tmp_path, qualitative=[object()])


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
    # the file reads back into the result dataclasses and serialises to the same JSON
    assert E.EvalResults.from_dict(metrics).to_dict() == metrics
    # acceptance rows: static-world forecast on the same 2 frames, command match and red-light facts on the 8
    # planning samples (the synthetic world writes a scenario record per key frame), retrieval baseline on the
    # same understanding pairs, per-class IoU table
    assert bl["forecast_static_world"]["num_frames"] == 2 and set(bl["forecast_static_world"]) >= {"1s", "3s"}
    assert pl["command_match"]["num_frames"] == 8 and np.sum(pl["command_match"]["confusion"]) == 8
    assert sum(v["num_frames"] for v in pl["command_match"]["per_command"].values()) == 8
    assert pl["red_light"]["num_scenario_frames"] == 8
    assert bl["understanding_retrieval"]["num_pairs"] == und["num_pairs"]
    assert "Current-frame occupancy per class" in md and "Baseline: static world" in md


@pytest.mark.slow
def test_eval_all_splits_with_statistics_from_another_root(tiny_world_and_ckpt):
    data, ckpt, base = tiny_world_and_ckpt
    out = base / "eval_all"
    cmd = [sys.executable, "-m", "sparseoccvla_core.cli", "eval", "--ckpt", str(ckpt), "--data", str(data)]
    cmd += ["--out", str(out), "--device", "cpu", "--split", "all", "--train-data", str(data), "--no-text", "--no-qa"]
    cmd += ["--max-samples", "16", "--batch-size", "4", "--num-qualitative", "0", "--no-meteor"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    # both 14-frame scenes: the train scene's 14 frames first, then 2 of the val scene
    assert metrics["split"] == "all" and metrics["num_samples"] == 16 and metrics["num_samples_in_split"] == 28
    assert metrics["splits"] == {"train": 14, "val": 2} and metrics["train_data"] == str(data)
    assert metrics["baselines"]["training_statistics"]["root"] == str(data)
    assert metrics["occupancy"]["no_mask"]["num_frames"] == 16


def test_qa_question_prior_baseline_answers_each_question_with_its_training_answer():
    """Per question text, the most frequent training answer; an unseen question gets the overall majority."""
    stats = E.TrainingStatistics(
        None, 0, None, 0, "no", 5, "train", qa_question_answers={"Are there any cars?": "yes", "How many cars?": "2"}
    )
    acc = E.MetricAccumulator(_tiny_cfg(), stats)
    rows = (  # (prediction, answer, type, question)
        ("no", "yes", "exist", "Are there any cars?"),  # prior "yes": right
        ("no", "no", "exist", "Are there any cars?"),  # prior "yes": wrong
        ("2", "3", "count", "How many cars?"),  # prior "2": wrong
        ("no", "no", "exist", "Are there any trucks?"),  # unseen: majority "no", right
    )
    for pred, ans, kind, question in rows:
        acc.add_qa(pred, ans, kind, 0, question=question)
    res = acc.finalize("val", num_samples=1, meteor=False)
    prior = res.baselines.qa_question_prior
    assert prior.accuracy.overall == pytest.approx(50.0) and prior.accuracy.per_type == {
        "exist": pytest.approx(200 / 3),
        "count": 0.0,
    }
    assert (prior.num_fallback, prior.num_training_questions) == (1, 2)
    assert res.baselines.qa_majority_answer.accuracy.overall == pytest.approx(50.0)  # "no" on all four
    again = E.EvalResults.from_dict(json.loads(json.dumps(res.to_dict())))
    assert again.baselines.qa_question_prior == prior
    assert "most frequent training answer to the same question (no scene) | 50.0 |" in E.render_markdown(res)
    # without question texts the baseline is not computed (it would answer blind)
    acc2 = E.MetricAccumulator(_tiny_cfg(), stats)
    acc2.add_qa("no", "no", "exist", 0)
    assert acc2.finalize("val", num_samples=1, meteor=False).baselines.qa_question_prior is None


@pytest.mark.slow
def test_eval_without_plan_generates_nothing_and_scores_occupancy(tiny_world_and_ckpt, monkeypatch):
    """``--no-plan --no-text --no-qa`` (a stage-1 checkpoint's check): no reasoning is generated, occupancy and
    forecast are scored, the planning table is absent and the qualitative frame still plots."""
    from sparseoccvla_core.evaluation.loop import EvalOptions, evaluate
    from sparseoccvla_core.evaluation.report import write_report
    from sparseoccvla_core.model import SparseOccVLA

    data, ckpt, base = tiny_world_and_ckpt
    model = SparseOccVLA.from_pretrained(ckpt)

    def no_generation(*args, **kwargs):
        raise AssertionError("the reasoning was generated although plan=False")

    monkeypatch.setattr(model, "reason", no_generation)
    opts = EvalOptions(
        plan=False, text=False, qa=False, meteor=False, max_samples=8, batch_size=2, num_qualitative=1, device="cpu"
    )
    report = evaluate(model, data, opts)
    metrics = report.metrics.to_dict()
    assert metrics["occupancy"]["camera_mask"]["num_frames"] == 8
    assert metrics["forecasting"]["num_frames"] == 2
    assert metrics["planning"]["num_samples"] == 0 and metrics["planning"]["l2"] is None
    assert len(report.qualitative) == 1 and len(report.qualitative[0].plan) == 0
    write_report(report.metrics, base / "eval_no_plan", report.qualitative, model.cfg.point_cloud_range)
    assert any(p.name.startswith("bev_") for p in (base / "eval_no_plan").glob("*.png"))
