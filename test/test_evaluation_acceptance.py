"""The acceptance rows of ``sparseoccvla eval`` (sparseoccvla_core/evaluation/): per-class IoU table, static-world
forecasting baseline, red-light stop rate, command match, understanding retrieval baseline and the statistics of
another training root, each against hand computations on tiny hand-built cases through ``MetricAccumulator``."""

import json
import math

import numpy as np
import pytest

from sparseoccvla_core import evaluation as E
from sparseoccvla_core import metrics as M
from sparseoccvla_core.evaluation.accumulator import move_labels

FREE = 17


def _cfg():
    from sparseoccvla_core.config import SparseOccVLAConfig

    return SparseOccVLAConfig.tiny()  # Occ3D grid 200 x 200 x 16 at 0.4 m over [-40, 40] x [-40, 40] x [-1, 5.4]


def _pose(yaw: float, x: float, y: float, z: float = 0.0) -> np.ndarray:
    m = np.eye(4)
    c, s = math.cos(yaw), math.sin(yaw)
    m[:2, :2] = [[c, -s], [s, c]]
    m[:3, 3] = [x, y, z]
    return m


def _grid(cfg, cells):
    g = np.full(cfg.grid_shape, FREE, dtype=np.uint8)
    for ijk, cls in cells.items():
        g[ijk] = cls
    return g


# ------------------------------------------------------------------------------------------ static world
def test_move_labels_pure_translation_shifts_the_grid_exactly():
    cfg = _cfg()
    rng = np.random.default_rng(0)
    grid = np.full(cfg.grid_shape, FREE, dtype=np.uint8)
    grid[rng.random(cfg.grid_shape) < 0.02] = 4
    grid[rng.random(cfg.grid_shape) < 0.01] = 11
    # the ego drives 3 voxels (1.2 m) forward and 2 voxels (0.8 m) left, heading 30 deg in a far-away global frame
    cur = _pose(math.radians(30), 1234.5, -987.25, 3.0)
    fut = cur @ _pose(0.0, 3 * 0.4, 2 * 0.4)
    moved = move_labels(grid, cur, fut, cfg.point_cloud_range, cfg.voxel_size)
    expected = np.full(cfg.grid_shape, FREE, dtype=np.uint8)
    expected[:-3, :-2] = grid[3:, 2:]  # a static voxel at index i appears at i - 3 (x), j - 2 (y); others leave
    assert np.array_equal(moved, expected)
    # no motion: identity
    assert np.array_equal(move_labels(grid, cur, cur, cfg.point_cloud_range, cfg.voxel_size), grid)


def test_move_labels_quarter_turn_rotates_indices():
    cfg = _cfg()
    nx = cfg.grid_shape[0]
    grid = _grid(cfg, {(150, 40, 2): 4, (10, 199, 0): 9, (100, 100, 7): 15})
    cur = _pose(0.3, 50.0, 60.0)
    fut = cur @ _pose(math.pi / 2, 0.0, 0.0)  # same place, turned 90 deg left: (x, y) -> (y, -x)
    moved = move_labels(grid, cur, fut, cfg.point_cloud_range, cfg.voxel_size)
    # symmetric grid: centre of index i is -(centre of nx - 1 - i), so (i, j) -> (j, nx - 1 - i)
    expected = _grid(cfg, {(40, nx - 1 - 150, 2): 4, (199, nx - 1 - 10, 0): 9, (100, nx - 1 - 100, 7): 15})
    assert np.array_equal(moved, expected)
    with pytest.raises(ValueError, match="4, 4"):
        move_labels(grid, cur[:3], fut, cfg.point_cloud_range, cfg.voxel_size)


def test_static_world_baseline_scored_like_the_forecast():
    cfg = _cfg()
    acc = E.MetricAccumulator(cfg)
    cur_pred = _grid(cfg, {(100, 100, 1): 4, (120, 80, 0): 11})
    cur, fut = _pose(0.0, 0.0, 0.0), _pose(0.0, 0.8, 0.0)  # 2 voxels forward
    # the future GT: the road voxel static (moves to 118), the car drove away (its voxel is free now)
    gt = _grid(cfg, {(118, 80, 0): 11, (110, 100, 1): 4})
    moved = acc.add_static_forecast(1.0, cur_pred, cur, fut, gt)
    assert moved[98, 100, 1] == 4 and moved[118, 80, 0] == 11 and (moved != FREE).sum() == 2
    acc.add_forecast(1.0, [[0.0, 0.0, 0.0]], [4], gt)  # the model's forecast is scored separately
    res = acc.finalize("val", num_samples=1)
    static = res.baselines.forecast_static_world
    # road IoU 1 (TP 1), car IoU 0 (FP at 98, FN at 110): mIoU 50 %; geometry TP 1 of 3 -> 33.3 %
    assert static.horizons["1s"].miou == pytest.approx(50.0)
    assert static.horizons["1s"].geometry_iou == pytest.approx(100.0 / 3)
    assert static.horizons["2s"].miou is None and static.avg_miou is None and static.num_frames == 1
    with pytest.raises(ValueError, match="horizon"):
        acc.add_static_forecast(1.5, cur_pred, cur, fut, gt)
    md = E.render_markdown(res)
    assert "| Baseline: static world (current occupancy moved by GT ego motion) | 50.00 | - | - | - | - |" in md
    # without any forecast frame there is no static baseline (absent from metrics.json)
    assert "forecast_static_world" not in E.MetricAccumulator(cfg).finalize("val", 0).to_dict()["baselines"]


# ------------------------------------------------------------------------------------------ planning rows
def _straight(t, metres):
    return np.stack([np.linspace(metres / t, metres, t), np.zeros(t)], axis=1)


def test_red_light_stop_rate_against_hand_counts():
    cfg = _cfg()
    t = cfg.plan_horizon
    acc = E.MetricAccumulator(cfg)
    full = np.ones(t, bool)
    red = {"signal_ahead": "red", "signal_distance_m": 8.0}
    # 1. red, GT stops (1 m), plan stops (0.5 m)     -> counted, stopped
    # 2. red, GT stops (1.5 m), plan drives (10 m)   -> counted, not stopped
    # 3. red, GT drives through (12 m)               -> not a frame of the metric
    # 4. green, GT stops                             -> not a frame of the metric
    # 5. red but incomplete GT future                -> not a planning sample at all
    # 6. no scenario record                          -> unknown, ignored
    cases = [
        (_straight(t, 0.5), _straight(t, 1.0), full, red),
        (_straight(t, 10.0), _straight(t, 1.5), full, red),
        (_straight(t, 12.0), _straight(t, 12.0), full, red),
        (_straight(t, 0.0), _straight(t, 0.0), full, {"signal_ahead": "green"}),
        (_straight(t, 0.0), _straight(t, 0.0), np.r_[full[:-1], False], red),
        (_straight(t, 0.0), _straight(t, 0.0), full, None),
    ]
    counted = [acc.add_plan(p, g, m, [0.0, 0.0], scenario=s) for p, g, m, s in cases]
    assert counted == [True, True, True, True, False, True]
    rl = acc.finalize("val", 6).planning.red_light
    assert (rl.num_scenario_frames, rl.num_red, rl.num_frames, rl.num_stopped) == (4, 3, 2, 1)
    assert rl.stop_rate == pytest.approx(50.0) and rl.mean_plan_displacement_m == pytest.approx((0.5 + 10.0) / 2)
    assert rl.threshold_m == 2.0
    md = E.render_markdown(acc.finalize("val", 6))
    assert "| SparseOccVLA (this checkpoint) | 2 | 1 | 50.0 | 5.25 |" in md
    # scenario records but no red light where the GT stops: reported as such
    acc2 = E.MetricAccumulator(cfg)
    acc2.add_plan(_straight(t, 5.0), _straight(t, 5.0), full, [0.0, 0.0], scenario={"signal_ahead": None})
    rl2 = acc2.finalize("val", 1).planning.red_light
    assert rl2.num_frames == 0 and rl2.stop_rate is None and rl2.mean_plan_displacement_m is None
    assert "No such frames" in E.render_markdown(acc2.finalize("val", 1))
    # no scenario record at all (nuScenes): no red-light entry in metrics.json
    acc3 = E.MetricAccumulator(cfg)
    acc3.add_plan(_straight(t, 5.0), _straight(t, 5.0), full, [0.0, 0.0])
    assert "red_light" not in acc3.finalize("val", 1).to_dict()["planning"]


def test_command_match_overall_and_per_command():
    cfg = _cfg()
    t = cfg.plan_horizon
    acc = E.MetricAccumulator(cfg)
    full = np.ones(t, bool)
    plan = _straight(t, 6.0)
    # (GT command, chosen anchor's command): straight right twice, left planned as straight, right right
    for gt_cmd, plan_cmd in ((1, 1), (1, 1), (0, 1), (2, 2)):
        assert acc.add_plan(plan, plan, full, [0.0, 0.0], command=gt_cmd, planned_command=plan_cmd)
    assert not acc.add_plan(plan, plan, np.zeros(t, bool), [0.0, 0.0], command=0, planned_command=2)  # not counted
    acc.add_plan(plan, plan, full, [0.0, 0.0], command=1)  # no planned command: not in the match
    cm = acc.finalize("val", 6).planning.command_match
    assert cm.num_frames == 4 and cm.match_rate == pytest.approx(75.0)
    assert cm.per_command == {
        "left": {"num_frames": 1, "match_rate": 0.0},
        "straight": {"num_frames": 2, "match_rate": 100.0},
        "right": {"num_frames": 1, "match_rate": 100.0},
    }
    assert cm.confusion == [[0, 1, 0], [0, 2, 0], [0, 0, 1]]
    md = E.render_markdown(acc.finalize("val", 6))
    assert "| SparseOccVLA (this checkpoint) | 75.0 | 0.0 | 100.0 | 100.0 |" in md
    with pytest.raises(ValueError, match="commands"):
        acc.add_plan(plan, plan, full, [0.0, 0.0], command=3, planned_command=0)


# ------------------------------------------------------------------------------------------ understanding
def test_retrieval_baseline_against_caption_metrics():
    cfg = _cfg()
    stats = E.TrainingStatistics(
        None, 0, None, 0, None, 0, "train", {"describe?": "a red car ahead", "what now?": "keep lane"}, "stop", 9
    )
    acc = E.MetricAccumulator(cfg, stats)
    pairs = [
        ("a red car ahead", "a red car ahead", "describe?", "desc"),
        ("go", "keep lane and slow down", "what now?", "conv"),
        ("nothing", "a truck on the left", "never seen?", "conv"),
    ]
    for pred, ref, q, kind in pairs:
        acc.add_understanding(pred, ref, question=q, kind=kind)
    res = acc.finalize("val", 3, meteor=False)
    ret = res.baselines.understanding_retrieval
    refs = [p[1] for p in pairs]
    expected = M.caption_metrics(["a red car ahead", "keep lane", "stop"], refs, meteor=False)
    assert ret.scores.cider == pytest.approx(expected["CIDEr"]) and ret.scores.rouge_l == pytest.approx(
        expected["ROUGE_L"]
    )
    assert ret.num_fallback == 1 and ret.num_training_questions == 2 and ret.fallback_answer == "stop"
    # per kind: each kind scored on its own pairs (CIDEr's document frequencies from that kind only)
    conv = M.caption_metrics(["keep lane", "stop"], refs[1:], meteor=False)
    assert ret.scores.per_kind["conv"]["CIDEr"] == pytest.approx(conv["CIDEr"])
    assert ret.scores.per_kind["conv"]["num_pairs"] == 2 and ret.scores.per_kind["desc"]["num_pairs"] == 1
    model_desc = M.caption_metrics(["a red car ahead"], refs[:1], meteor=False)
    assert res.understanding.per_kind["desc"]["CIDEr"] == pytest.approx(model_desc["CIDEr"])
    md = E.render_markdown(res)
    assert f"| Baseline: most frequent training answer to the question | - | - | {expected['ROUGE_L']:.3f} |" in md
    assert "1 answers fell back to `stop`" in md
    ts = res.baselines.training_statistics
    assert ts.num_understanding_pairs == 9
    # a pair without its question: no retrieval baseline (it would be scored on other pairs than the model)
    acc.add_understanding("x", "y")
    assert acc.finalize("val", 3, meteor=False).baselines.understanding_retrieval is None


def test_retrieval_answers_read_from_omnidrive_training_files(tmp_path):
    from sparseoccvla_core.data.layout import DatasetLayout
    from sparseoccvla_core.data.qa import DESCRIPTION_QUESTION
    from sparseoccvla_core.evaluation.baselines import retrieval_answers

    omni = tmp_path / "omnidrive"
    for kind in ("desc", "conv"):
        (omni / kind / "train").mkdir(parents=True)
    descriptions = {"t1": "Sunny road.", "t2": "Rainy road.", "t3": "Sunny road.", "t4": "Rainy road."}
    for tok, text in descriptions.items():
        (omni / "desc" / "train" / f"{tok}.json").write_text(json.dumps({"description": text, "action": "go"}))
    conv = {"t1": [("Any car?", "No."), ("Speed?", "Slow.")], "t2": [("Any car?", "Yes.")], "t3": [("Any car?", "No.")]}
    for tok, qa in conv.items():
        (omni / "conv" / "train" / f"{tok}.json").write_text(json.dumps([{"question": q, "answer": a} for q, a in qa]))
    layout = DatasetLayout(tmp_path, "v1.0-synth", tmp_path / "gts", omni, tmp_path / "nuscenes_qa")
    table, fallback, n = retrieval_answers(layout, "train", ["t1", "t2", "t3", "t4", "t5"])
    # description: a 2-2 tie -> alphabetically first; "Any car?": No. twice, Yes. once
    assert table == {DESCRIPTION_QUESTION: "Rainy road.", "Any car?": "No.", "Speed?": "Slow."}
    assert n == 4 + 4 and fallback == "No."  # overall: No. 2, Rainy 2, Sunny 2 -> alphabetical 'No.'
    stats = E.TrainingStatistics(None, 0, None, 0, None, 0, "train", table, fallback, n)
    assert stats.retrieval_answer("Speed?") == "Slow." and stats.retrieval_answer("unknown") == "No."
    assert retrieval_answers(layout, "val", ["t1"]) == (None, None, 0)  # no val files


# ------------------------------------------------------------------------------------------ report and json
def test_per_class_table_and_new_keys_round_trip():
    cfg = _cfg()
    acc = E.MetricAccumulator(cfg)
    a, b = (100, 100, 0), (101, 100, 0)
    gt = _grid(cfg, {a: 4, b: 11})
    from sparseoccvla_core.occ_grid import index_to_points

    pts = index_to_points(np.asarray([a, b]), cfg.point_cloud_range, cfg.voxel_size)
    acc.add_occupancy(pts, [4, 4], gt, np.ones(cfg.grid_shape, bool))
    res = acc.finalize("val", 1)
    md = E.render_markdown(res)
    body = md.split("## Current-frame occupancy per class (IoU %)", 1)[1].split("## ", 1)[0]
    assert "| car | 50.00 | 50.00 |" in body and "| driveable_surface | 0.00 | 0.00 |" in body
    assert "| bus | - | - |" in body and "| **mIoU** | 25.00 | 25.00 |" in body and "Protocol:" in body
    assert body.count("\n| ") == 1 + 17 + 1  # header, 17 classes, mIoU (the separator starts "|-")
    # every new entry is written and read back
    t = cfg.plan_horizon
    acc.add_plan(
        _straight(t, 1.0), _straight(t, 1.0), np.ones(t, bool), [0, 0], None, None, 1, 1, {"signal_ahead": "red"}
    )
    acc.add_static_forecast(2.0, gt, np.eye(4), np.eye(4), gt)
    d = json.loads(json.dumps(acc.finalize("val", 1).to_dict()))
    assert d["planning"]["red_light"]["num_stopped"] == 1 and d["planning"]["command_match"]["match_rate"] == 100.0
    assert d["baselines"]["forecast_static_world"]["2s"]["miou"] == pytest.approx(100.0)
    for key in (
        "occupancy_per_class",
        "forecast_static_world",
        "red_light",
        "command_match",
        "understanding_retrieval",
    ):
        assert key in d["protocol"]
    assert E.EvalResults.from_dict(d).to_dict() == d
