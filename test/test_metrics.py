"""Metric tests against hand computations on crafted inputs (sparseoccvla_core/metrics.py).

Every expected number below is worked out by hand in the comment next to it, or comes from an independent
implementation (pycocoevalcap called directly, shapely polygons).
"""

import math

import numpy as np
import pytest

from sparseoccvla_core import metrics as M

FREE = 17


# ----------------------------------------------------------------------------------------------- mIoU
def _crafted_frame():
    #            idx:  0  1  2   3   4     5     6     7
    gt = np.array([4, 4, 4, 11, 11, FREE, FREE, FREE]).reshape(2, 2, 2)
    pred = np.array([4, 4, 11, 11, FREE, FREE, 4, FREE]).reshape(2, 2, 2)
    return pred, gt


def test_miou_known_confusion():
    pred, gt = _crafted_frame()
    acc = M.OccupancyMIoU()
    acc.update(pred, gt)
    # car (4): TP idx0,1 = 2; FN idx2 (-> 11); FP idx6 (free -> 4)  => 2 / 4
    # driveable (11): TP idx3 = 1; FN idx4 (-> free); FP idx2       => 1 / 3
    iou = acc.iou_per_class()
    assert iou[4] == pytest.approx(0.5)
    assert iou[11] == pytest.approx(1 / 3)
    others = [c for c in range(17) if c not in (4, 11)]
    assert np.isnan(iou[others]).all()  # never in GT nor prediction -> undefined, skipped
    assert acc.miou() == pytest.approx((0.5 + 1 / 3) / 2)
    # geometry: occupied GT idx0-4, occupied pred idx0-3,6: TP 4, FP 1 (idx6), FN 1 (idx4) => 4 / 6
    assert acc.geometry_iou() == pytest.approx(4 / 6)
    summary = acc.compute()
    assert summary["miou"] == pytest.approx(100 * (0.5 + 1 / 3) / 2)
    assert summary["iou_per_class"]["car"] == pytest.approx(50.0)
    assert summary["iou_per_class"]["others"] is None
    assert "free" not in summary["iou_per_class"]
    assert acc.confusion.sum() == 8 and acc.confusion[4, 11] == 1 and acc.confusion[FREE, 4] == 1


def test_miou_dataset_level_accumulation_and_false_positive_class():
    pred, gt = _crafted_frame()
    acc = M.OccupancyMIoU()
    acc.update(pred, gt)
    # second frame: one pedestrian (7) predicted where GT is free, one car voxel right
    acc.update(np.array([7, 4]), np.array([FREE, 4]))
    # car over both frames: TP 3, FN 1, FP 1 => 3/5;  driveable 1/3;  pedestrian predicted, no GT => 0 (official)
    assert acc.iou_per_class()[4] == pytest.approx(3 / 5)
    assert acc.iou_per_class()[7] == 0.0
    assert acc.miou() == pytest.approx((3 / 5 + 1 / 3 + 0.0) / 3)
    assert acc.num_frames == 2
    # OPUS variant: a class without GT is ignored even when predicted
    opus = M.OccupancyMIoU(ignore_classes_without_gt=True)
    opus.update(pred, gt)
    opus.update(np.array([7, 4]), np.array([FREE, 4]))
    assert np.isnan(opus.iou_per_class()[7])
    assert opus.miou() == pytest.approx((3 / 5 + 1 / 3) / 2)
    # dataset-level is not the mean of per-frame mIoUs: per frame it would be (0.5+1/3)/2 and (1+0)/2
    assert acc.miou() != pytest.approx(((0.5 + 1 / 3) / 2 + 0.5) / 2)


def test_miou_camera_mask():
    pred, gt = _crafted_frame()
    mask = np.ones_like(gt)
    mask.reshape(-1)[6] = 0  # hide the false-positive car voxel
    acc = M.OccupancyMIoU(use_camera_mask=True)
    acc.update(pred, gt, mask)
    assert acc.iou_per_class()[4] == pytest.approx(2 / 3)  # TP 2, FN 1, FP 0
    assert acc.confusion.sum() == 7
    with pytest.raises(ValueError, match="mask_camera"):
        acc.update(pred, gt)
    with pytest.raises(ValueError, match="predicted labels"):
        M.OccupancyMIoU().update(np.full((2, 2, 2), 18), gt)


def test_single_class_baseline():
    gt = np.array([4, 4, 11, 11, 11, FREE])
    counts = M.class_histogram(gt)
    assert counts[11] == 3 and counts[4] == 2 and counts[FREE] == 1
    cls = M.most_frequent_class(counts + np.eye(18, dtype=np.int64)[FREE] * 100)  # free never wins
    assert cls == 11
    pred = M.single_class_prediction(gt, cls)
    np.testing.assert_array_equal(pred, [11, 11, 11, 11, 11, FREE])
    acc = M.OccupancyMIoU()
    acc.update(pred, gt)
    # car: TP 0, FN 2 -> 0;  driveable: TP 3, FP 2 -> 3/5
    assert acc.miou() == pytest.approx((0 + 3 / 5) / 2)
    assert acc.geometry_iou() == 1.0  # geometry is the GT's


# ----------------------------------------------------------------------------------------- frame rule
def test_forecast_frame_exclusion():
    keep = M.forecast_eval_frames(np.arange(40), 40)
    assert not keep[:5].any()  # first 5 frames
    assert not keep[-7:].any()  # last 7 frames
    assert keep[5:33].all() and keep.sum() == 40 - 12
    assert bool(M.forecast_eval_frames(5, 13)) and not bool(M.forecast_eval_frames(6, 13))  # 13 - 8 = 5
    assert not M.forecast_eval_frames(np.arange(12), 12).any()  # a 12-frame scene has no eligible frame
    # per-scene lengths broadcast
    np.testing.assert_array_equal(M.forecast_eval_frames([5, 5, 32], [20, 12, 40]), [True, False, True])
    assert M.forecast_steps() == [2, 4, 6]  # +2/+4/+6 key frames = 1/2/3 s
    with pytest.raises(ValueError):
        M.forecast_eval_frames(40, 40)


# ------------------------------------------------------------------------------------------------- L2
def _l2_case():
    gt = np.zeros((2, 6, 2))
    e0 = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    e1 = np.array([0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    pred = gt.copy()
    pred[0, :, 0] = e0  # error along x
    pred[1, :, 0], pred[1, :, 1] = 0.6 * e1, 0.8 * e1  # |(0.6e, 0.8e)| = e
    return pred, gt  # per-step mean error: 0.2 0.3 0.4 0.5 0.6 0.7


def test_l2_stp3_and_uniad_conventions():
    pred, gt = _l2_case()
    stp3 = M.l2_errors(pred, gt)
    assert stp3["1s"] == pytest.approx((0.2 + 0.3) / 2)  # 0.25
    assert stp3["2s"] == pytest.approx((0.2 + 0.3 + 0.4 + 0.5) / 4)  # 0.35
    assert stp3["3s"] == pytest.approx(2.7 / 6)  # 0.45
    assert stp3["avg"] == pytest.approx((0.25 + 0.35 + 0.45) / 3)
    np.testing.assert_allclose(stp3["per_step"], [0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    uniad = M.l2_errors(pred, gt, convention="uniad")
    assert (uniad["1s"], uniad["2s"], uniad["3s"]) == pytest.approx((0.3, 0.5, 0.7))
    assert uniad["avg"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="convention"):
        M.l2_errors(pred, gt, convention="vad")


def test_l2_mask():
    pred, gt = _l2_case()
    mask = np.ones((2, 6), bool)
    mask[1, 5] = False  # sample 1 has no 3 s waypoint: step 6 averages sample 0 only (0.6)
    uniad = M.l2_errors(pred, gt, mask, convention="uniad")
    assert uniad["3s"] == pytest.approx(0.6)
    stp3 = M.l2_errors(pred, gt, mask)
    assert stp3["3s"] == pytest.approx((0.2 + 0.3 + 0.4 + 0.5 + 0.6 + 0.6) / 6)
    with pytest.raises(ValueError, match="N, T, 2"):
        M.l2_errors(pred[:, :, :1], gt[:, :, :1])


# ------------------------------------------------------------------------------------------ collision
# Ego box in these tests: 4.084 m x 1.85 m (ST-P3), centre 1.485793 m ahead of the rear axle, so at a
# waypoint (x, 0) heading +x it spans x in [x - 0.556207, x + 3.527793], y in [-0.925, 0.925].
EGO = M.EgoBox(length=4.084, width=1.85, center_offset=1.485793)
STRAIGHT = np.array([[[2.0 * k, 0.0] for k in range(1, 7)]])  # [1, 6, 2], 4 m/s along x


def _agents(*boxes_per_step):
    """[1, 6, A, 5] boxes and mask from {step_index: [(cx, cy, l, w, yaw), ...]}."""
    spec = dict(boxes_per_step)
    a = max([len(v) for v in spec.values()] + [1])
    boxes, mask = np.zeros((1, 6, a, 5)), np.zeros((1, 6, a), bool)
    for t, bs in spec.items():
        for j, b in enumerate(bs):
            boxes[0, t, j], mask[0, t, j] = b, True
    return boxes, mask


def test_collision_box_on_path_vs_beside_it():
    far_gt = np.array([[[0.0, -20.0 - k] for k in range(6)]])  # a GT path far from every agent
    car_on_path = (8.0, 0.0, 4.0, 2.0, 0.0)  # x in [6, 10]
    # steps (0-based) 2 and 3: ego x-ranges [5.44, 9.53] and [7.44, 11.53] overlap [6, 10]
    boxes, mask = _agents((2, [car_on_path]), (3, [car_on_path]))
    flags = M.collision_flags(STRAIGHT, boxes, mask, EGO)
    np.testing.assert_array_equal(flags[0], [False, False, True, True, False, False])
    stp3 = M.collision_rate(STRAIGHT, far_gt, boxes, mask, ego=EGO)
    np.testing.assert_allclose(stp3["per_step"], [0, 0, 100, 100, 0, 0])
    assert stp3["1s"] == 0.0
    assert stp3["2s"] == pytest.approx(50.0)  # mean of 0, 0, 100, 100
    assert stp3["3s"] == pytest.approx(200 / 6)
    assert stp3["avg"] == pytest.approx((0 + 50 + 200 / 6) / 3)
    uniad = M.collision_rate(STRAIGHT, far_gt, boxes, mask, convention="uniad", ego=EGO)
    assert (uniad["1s"], uniad["2s"], uniad["3s"]) == pytest.approx((0.0, 100.0, 0.0))

    # the same car 3 m to the side (y in [2, 4], ego y in [-0.925, 0.925]): no collision
    beside = (8.0, 3.0, 4.0, 2.0, 0.0)
    boxes, mask = _agents((2, [beside]), (3, [beside]))
    assert not M.collision_flags(STRAIGHT, boxes, mask, EGO).any()
    assert M.collision_rate(STRAIGHT, far_gt, boxes, mask, ego=EGO)["avg"] == 0.0
    # padding boxes (mask False) never collide even when they sit on the path
    boxes, mask = _agents((2, [car_on_path]))
    assert not M.collision_flags(STRAIGHT, boxes, np.zeros_like(mask), EGO).any()


def test_collision_uses_ego_length_and_offset():
    front = 2.0 + 1.485793 + 4.084 / 2  # front bumper at step 0: 5.527793 m
    hit, _ = _agents((0, [(front + 1.0 - 0.05, 0.0, 2.0, 1.0, 0.0)]))  # rear edge 5 cm inside the bumper
    miss, mask = _agents((0, [(front + 1.0 + 0.05, 0.0, 2.0, 1.0, 0.0)]))  # 5 cm in front of it
    assert M.collision_flags(STRAIGHT, hit, mask, EGO)[0, 0]
    assert not M.collision_flags(STRAIGHT, miss, mask, EGO)[0, 0]
    rear = 2.0 + 1.485793 - 4.084 / 2  # rear bumper at step 0: 1.443793 m
    behind, _ = _agents((0, [(rear - 0.5 - 0.05, 0.0, 1.0, 1.0, 0.0)]))
    assert not M.collision_flags(STRAIGHT, behind, mask, EGO)[0, 0]


def test_collision_yaw_follows_path():
    left = np.array([[[0.0, 2.0 * k] for k in range(1, 7)]])  # driving along +y: heading 90 deg
    yaw = M.path_headings(left)
    np.testing.assert_allclose(yaw, np.pi / 2)
    # step 0: rotated box spans y in [1.44, 5.53], x in [-0.925, 0.925]; an unrotated box would span
    # x in [-0.556, 3.528], y in [1.075, 2.925]
    on_rotated, mask = _agents((0, [(0.0, 5.0, 1.0, 1.0, 0.0)]))  # y in [4.5, 5.5]: only the rotated box
    assert M.collision_flags(left, on_rotated, mask, EGO)[0, 0]
    on_unrotated, _ = _agents((0, [(2.5, 2.0, 1.0, 1.0, 0.0)]))  # x in [2, 3]: only the unrotated box
    assert not M.collision_flags(left, on_unrotated, mask, EGO)[0, 0]
    # a standing ego keeps the current heading (0)
    assert np.all(M.path_headings(np.zeros((1, 6, 2))) == 0.0)


def test_collision_gt_collision_steps_not_counted():
    car = (8.0, 0.0, 4.0, 2.0, 0.0)
    boxes, mask = _agents((2, [car]))
    # GT drives the same path: it hits the car at step 2 as well -> that step is not counted
    res = M.collision_rate(STRAIGHT, STRAIGHT.copy(), boxes, mask, ego=EGO)
    assert res["avg"] == 0.0
    # two samples, one counted collision at step 2: rate 50 % at that step (denominator = samples)
    pred2 = np.concatenate([STRAIGHT, STRAIGHT])
    gt2 = np.concatenate([STRAIGHT, np.array([[[0.0, -20.0 - k] for k in range(6)]])])
    b2, m2 = np.concatenate([boxes, boxes]), np.concatenate([mask, mask])
    res = M.collision_rate(pred2, gt2, b2, m2, ego=EGO, convention="uniad")
    np.testing.assert_allclose(res["per_step"], [0, 0, 50, 0, 0, 0])


def test_boxes_overlap_matches_shapely():
    from shapely.geometry import Polygon

    rng = np.random.default_rng(0)
    a = np.column_stack([rng.uniform(-3, 3, (400, 2)), rng.uniform(0.5, 4, (400, 2)), rng.uniform(-np.pi, np.pi, 400)])
    b = np.column_stack([rng.uniform(-3, 3, (400, 2)), rng.uniform(0.5, 4, (400, 2)), rng.uniform(-np.pi, np.pi, 400)])

    def poly(x):
        cx, cy, l, w, yaw = x
        c, s = math.cos(yaw), math.sin(yaw)
        corners = [(l / 2, w / 2), (-l / 2, w / 2), (-l / 2, -w / 2), (l / 2, -w / 2)]
        return Polygon([(cx + c * u - s * v, cy + s * u + c * v) for u, v in corners])

    expect = np.array([poly(x).intersects(poly(y)) for x, y in zip(a, b)])
    got = M.boxes_overlap(a, b)
    assert 0.2 < expect.mean() < 0.9  # both outcomes are exercised
    np.testing.assert_array_equal(got, expect)


# ------------------------------------------------------------------------------------ plan baselines
def test_trajectory_baselines():
    trajs = np.array([[[1.0, 0.0], [2.0, 0.0]], [[3.0, 1.0], [9.0, 9.0]]])
    mask = np.array([[True, True], [True, False]])
    np.testing.assert_allclose(M.mean_trajectory(trajs, mask), [[2.0, 0.5], [2.0, 0.0]])
    cv = M.constant_velocity_trajectory(np.array([[4.0, 0.5]]), horizon=6, dt=0.5)
    np.testing.assert_allclose(cv[0, :, 0], [2, 4, 6, 8, 10, 12])
    np.testing.assert_allclose(cv[0, :, 1], [0.25, 0.5, 0.75, 1.0, 1.25, 1.5])


# --------------------------------------------------------------------------------------------- text
PREDS = ["the car stops at the light", "a pedestrian is crossing the road", "turn left at the intersection"]
REFS = [
    "the car is stopped at the red light",
    "a pedestrian is walking across the road ahead",
    "the ego vehicle should turn left at the next intersection",
]


def test_caption_metrics_match_pycocoevalcap_and_hand_numbers():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    out = M.caption_metrics(PREDS, REFS, meteor=False)
    gts = {i: [r] for i, r in enumerate(REFS)}
    res = {i: [p] for i, p in enumerate(PREDS)}
    assert out["CIDEr"] == pytest.approx(Cider().compute_score(gts, res)[0], rel=1e-12)
    assert out["ROUGE_L"] == pytest.approx(Rouge().compute_score(gts, res)[0], rel=1e-12)
    bleu = Bleu(4).compute_score(gts, res, verbose=0)[0]
    assert [out[f"BLEU-{n}"] for n in range(1, 5)] == pytest.approx(bleu, rel=1e-12)
    assert out["num_pairs"] == 3 and out["METEOR"] is None

    # hand ROUGE-L of pair 0: LCS(the car at the light) = 5, P = 5/6, R = 5/8, beta = 1.2
    p, r = 5 / 6, 5 / 8
    f = (1 + 1.2**2) * p * r / (r + 1.2**2 * p)
    single = M.caption_metrics(PREDS[:1], REFS[:1], meteor=False)
    assert single["ROUGE_L"] == pytest.approx(f)
    # hand BLEU-1 of pair 0: 5 of 6 unigrams match, brevity penalty exp(1 - 8/6)
    assert single["BLEU-1"] == pytest.approx(5 / 6 * math.exp(1 - 8 / 6), rel=1e-6)
    # CIDEr's IDF comes from the corpus: one pair has IDF 0 for every n-gram (coco-caption #9)
    assert single["CIDEr"] == 0.0
    # identical strings beat the paraphrases
    perfect = M.caption_metrics(REFS, REFS, meteor=False)
    assert perfect["CIDEr"] > out["CIDEr"] and perfect["ROUGE_L"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        M.caption_metrics(PREDS, REFS[:2], meteor=False)


@pytest.mark.slow
@pytest.mark.skipif(not M.java_available(), reason="pycocoevalcap's Java METEOR needs a java runtime")
def test_meteor_matches_pycocoevalcap_java():
    from pycocoevalcap.meteor.meteor import Meteor

    preds = PREDS + ["line one\nline two ||| x"]  # newline / separator must not desynchronise the JVM
    refs = REFS + ["line one line two x"]
    out = M.caption_metrics(preds, refs, java_meteor=True)
    ref_scorer = Meteor()
    try:
        expect, _ = ref_scorer.compute_score(
            {i: [r] for i, r in enumerate(refs)},
            {i: [" ".join(p.replace("|||", " ").split())] for i, p in enumerate(preds)},
        )
    finally:
        ref_scorer.meteor_p.stdin.close()
        ref_scorer.meteor_p.kill()
        ref_scorer.meteor_p.wait()
    assert out["METEOR_java"] == pytest.approx(expect, rel=1e-9)
    assert 0.0 < out["METEOR_java"] < 1.0
    assert out["meteor_java_backend"] == M.JAVA_METEOR_BACKEND


# ----------------------------------------------------------------------------------------------- QA
def test_qa_accuracy_per_template_type():
    preds = ["Yes.", "no", "2", "3", "car", " Truck ", "moving", "yes"]
    answers = ["yes", "yes", "2", "2", "car", "truck", "parked", "yes"]
    types = ["exist", "exist", "count", "count", "object", "object", "status", "comparison"]
    hops = [0, 1, 0, 1, 0, 0, 1, 1]
    out = M.qa_accuracy(preds, answers, types, hops)
    # correct: 1 0 1 0 1 1 0 1 -> 5/8
    assert out["overall"] == pytest.approx(62.5) and out["count"] == 8
    assert out["per_type"] == pytest.approx(
        {"exist": 50.0, "count": 50.0, "object": 100.0, "status": 0.0, "comparison": 100.0}
    )
    assert out["per_type_hop"]["exist_H0"] == 100.0 and out["per_type_hop"]["exist_H1"] == 0.0
    strict = M.qa_accuracy(preds, answers, types, normalize=False)
    assert strict["overall"] == pytest.approx(100 * 3 / 8)  # "Yes.", " Truck " no longer match
    assert M.majority_answer(["no", "Yes", "yes", "2", "no"]) == "no"  # tie yes/no -> alphabetical
    assert M.qa_accuracy(["no"] * 4, ["no", "yes", "no", "1"])["overall"] == 50.0
