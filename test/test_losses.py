"""Chamfer distance (eq. 1), focal loss, and the eq. 10 sum against brute-force numpy."""

import numpy as np
import pytest
import torch

from sparseoccvla_core import losses
from sparseoccvla_core.config import SparseOccVLAConfig
from sparseoccvla_core.losses import chamfer_distance, occupancy_losses, sigmoid_focal_loss


def brute_chamfer(pred, gt, pmask, gmask):
    """Eq. 1 by brute force: returns (sum form, mean form, p2g idx, g2p idx)."""
    P, G = pred[pmask], gt[gmask]
    pi, gi = np.flatnonzero(pmask), np.flatnonzero(gmask)
    d = ((P[:, None, :] - G[None, :, :]) ** 2).sum(-1)  # [P, G]
    p2g, g2p = d.min(1), d.min(0)
    return p2g.sum() + g2p.sum(), p2g.mean() + g2p.mean(), gi[d.argmin(1)], pi[d.argmin(0)]


def np_focal(logits, t, alpha, gamma):
    p = 1 / (1 + np.exp(-logits))
    pt = np.where(t == 1, p, 1 - p)
    at = np.where(t == 1, alpha, 1 - alpha)
    return -at * (1 - pt) ** gamma * np.log(pt)


@pytest.mark.parametrize("nn_method", ["kdtree", "gemm"])
def test_chamfer_matches_bruteforce_with_masks(nn_method):
    rng = np.random.default_rng(0)
    b, p, g = 3, 40, 55
    pred = rng.normal(size=(b, p, 3)) * 5
    gt = rng.normal(size=(b, g, 3)) * 5
    gmask = rng.random((b, g)) > 0.3
    pmask = rng.random((b, p)) > 0.2
    tp = torch.tensor(pred, requires_grad=True)
    for reduction, col in (("sum", 0), ("mean", 1)):
        res = chamfer_distance(
            tp, torch.tensor(gt), torch.tensor(gmask), torch.tensor(pmask), reduction=reduction, nn_method=nn_method
        )
        for i in range(b):
            ref = brute_chamfer(pred[i], gt[i], pmask[i], gmask[i])
            assert res.loss[i].item() == pytest.approx(ref[col], rel=1e-10)
            np.testing.assert_array_equal(res.pred_to_gt_idx[i].numpy()[pmask[i]], ref[2])
            np.testing.assert_array_equal(res.gt_to_pred_idx[i].numpy()[gmask[i]], ref[3])
            assert (res.pred_to_gt_idx[i].numpy()[~pmask[i]] == -1).all()
            assert (res.gt_to_pred_idx[i].numpy()[~gmask[i]] == -1).all()
    # gradient of the sum form: d/dp of sum_p min_g |p-g|^2 + sum_g min_p |p-g|^2
    res = chamfer_distance(
        tp, torch.tensor(gt), torch.tensor(gmask), torch.tensor(pmask), reduction="sum", nn_method=nn_method
    )
    res.loss.sum().backward()
    grad = np.zeros_like(pred)
    for i in range(b):
        _, _, p2g, g2p = brute_chamfer(pred[i], gt[i], pmask[i], gmask[i])
        for j, k in zip(np.flatnonzero(pmask[i]), p2g):
            grad[i, j] += 2 * (pred[i, j] - gt[i, k])
        for k, j in zip(np.flatnonzero(gmask[i]), g2p):
            grad[i, j] += 2 * (pred[i, j] - gt[i, k])
    np.testing.assert_allclose(tp.grad.numpy(), grad, rtol=1e-10, atol=1e-12)


def test_chamfer_chunking_bounds_memory_and_keeps_result(monkeypatch):
    rng = np.random.default_rng(1)
    pred = torch.tensor(rng.uniform(-40, 40, size=(2, 700, 3)), dtype=torch.float32)
    gt = torch.tensor(rng.uniform(-40, 40, size=(2, 900, 3)), dtype=torch.float32)
    mask = torch.ones(2, 900, dtype=torch.bool)
    full = chamfer_distance(pred, gt, mask, nn_method="gemm")
    biggest = []
    real_bmm = torch.bmm

    def spy(*args, **kwargs):
        out = real_bmm(*args, **kwargs)
        biggest.append(out.numel())
        return out

    monkeypatch.setattr(losses.torch, "bmm", spy)
    small = chamfer_distance(pred, gt, mask, max_chunk_elements=20_000, nn_method="gemm")
    assert max(biggest) <= 20_000
    torch.testing.assert_close(small.loss, full.loss)
    assert torch.equal(small.pred_to_gt_idx, full.pred_to_gt_idx)


def test_kdtree_and_gemm_searches_agree_on_voxel_ties_and_cpu_uses_the_kdtree(monkeypatch):
    """GT points are voxel centres (many equidistant pairs): both searches must find a nearest point, the
    same squared distance for every query; on CPU "auto" must not run the GEMM search."""
    rng = np.random.default_rng(3)
    gt = torch.tensor(np.round(rng.uniform(-20, 20, size=(2, 600, 3)) / 0.4) * 0.4 + 0.2, dtype=torch.float32)
    pred = torch.tensor(np.round(rng.uniform(-20, 20, size=(2, 900, 3)) / 0.2) * 0.2, dtype=torch.float32)
    mask = torch.tensor(rng.random((2, 600)) > 0.25)
    by = {m: chamfer_distance(pred, gt, mask, nn_method=m) for m in ("kdtree", "gemm")}
    for field in ("pred_to_gt_sqdist", "gt_to_pred_sqdist"):
        torch.testing.assert_close(getattr(by["kdtree"], field), getattr(by["gemm"], field), rtol=0, atol=1e-5)
    assert mask.gather(1, by["kdtree"].pred_to_gt_idx).all()  # never a masked GT point
    calls = []
    monkeypatch.setattr(losses.torch, "bmm", lambda *a, **k: calls.append(1))
    auto = chamfer_distance(pred, gt, mask)
    assert not calls and torch.equal(auto.pred_to_gt_idx, by["kdtree"].pred_to_gt_idx)


def test_nonfinite_points_give_a_nan_loss_not_a_search_error():
    pred = torch.randn(1, 20, 3)
    pred[0, 3, 1] = float("nan")
    res = chamfer_distance(pred, torch.randn(1, 30, 3), torch.ones(1, 30, dtype=torch.bool))
    assert torch.isnan(res.loss).all()  # the trainer's non-finite check then names the loss
    with pytest.raises(ValueError, match="method"):
        losses.nearest_neighbors(pred, pred, method="faiss")


def test_chamfer_empty_gt_is_zero_and_flattens_query_points():
    pred = torch.randn(2, 4, 3, 3, requires_grad=True)  # [B, N, P, 3]
    gt = torch.randn(2, 5, 3)
    mask = torch.tensor([[True] * 5, [False] * 5])
    res = chamfer_distance(pred, gt, mask)
    assert res.pred_to_gt_idx.shape == (2, 12)
    assert res.loss[1] == 0 and (res.pred_to_gt_idx[1] == -1).all()
    res.loss.sum().backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[1].abs().sum() == 0


def test_focal_loss_equals_formula():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(6, 17)) * 3
    t = (rng.random((6, 17)) > 0.8).astype(np.float64)
    for alpha, gamma in ((0.25, 2.0), (0.5, 0.0), (0.9, 1.5)):
        ref = np_focal(logits, t, alpha, gamma)
        got = sigmoid_focal_loss(torch.tensor(logits), torch.tensor(t), alpha, gamma, reduction="none")
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10)
        for reduction, value in (("mean", ref.mean()), ("sum", ref.sum())):
            got = sigmoid_focal_loss(torch.tensor(logits), torch.tensor(t), alpha, gamma, reduction)
            assert got.item() == pytest.approx(value, rel=1e-10)


def test_occupancy_losses_eq10_by_hand():
    cfg = SparseOccVLAConfig.tiny()
    rng = np.random.default_rng(3)
    b, n, c = 2, 5, cfg.num_classes - 1
    gt = rng.uniform(-10, 10, size=(b, 30, 3))
    labels = rng.integers(0, c, size=(b, 30))
    gmask = np.ones((b, 30), bool)
    gmask[1, 20:] = False
    labels[1, 20:] = 17  # padding carries the free label
    pts = [rng.uniform(-10, 10, size=(b, n, k, 3)) for k in (1, 2, 4)]  # P_0, layer 1, layer 2
    logits = [rng.normal(size=(b, n, k, c)) for k in (2, 4)]
    out = occupancy_losses(
        [torch.tensor(x) for x in pts],
        [torch.tensor(x) for x in logits],
        torch.tensor(gt),
        torch.tensor(labels),
        torch.tensor(gmask),
        cfg,
    )
    cd_ref, focal_ref = 0.0, 0.0
    for l, p in enumerate(pts):
        per_sample = []
        for i in range(b):
            flat = p[i].reshape(-1, 3)
            _, mean_form, p2g, _ = brute_chamfer(flat, gt[i], np.ones(len(flat), bool), gmask[i])
            per_sample.append((mean_form, p2g))
        cd_ref += np.mean([m for m, _ in per_sample])
        if l >= 1:
            tot, cnt = 0.0, 0
            for i in range(b):
                lg = logits[l - 1][i].reshape(-1, c)
                onehot = np.eye(c)[labels[i][per_sample[i][1]]]
                tot += np_focal(lg, onehot, cfg.focal_alpha, cfg.focal_gamma).sum()
                cnt += len(lg)
            focal_ref += tot / cnt
    assert out["cd"].item() == pytest.approx(cd_ref, rel=1e-9)
    assert out["focal"].item() == pytest.approx(focal_ref, rel=1e-9)
    assert out["total"].item() == pytest.approx(cd_ref + cfg.lambda_focal * focal_ref, rel=1e-9)
    # eq. 11 form: no P_0
    fore = occupancy_losses(
        [torch.tensor(pts[2])],
        [torch.tensor(logits[1])],
        torch.tensor(gt),
        torch.tensor(labels),
        torch.tensor(gmask),
        cfg,
        include_p0=False,
    )
    assert fore["focal"].item() > 0
    with pytest.raises(ValueError, match="include_p0"):
        occupancy_losses(
            [torch.tensor(pts[2])],
            [torch.tensor(logits[1])],
            torch.tensor(gt),
            torch.tensor(labels),
            torch.tensor(gmask),
            cfg,
            include_p0=True,
        )


def np_smooth_l1(d: np.ndarray, beta: float) -> np.ndarray:
    a = np.abs(d)
    return np.where(a < beta, 0.5 * a**2 / beta, a - 0.5 * beta)


def test_opus_point_loss_and_class_weights_by_hand():
    """point_loss "smooth_l1" (OPUS): SmoothL1 per coordinate over the same nearest-neighbour pairs, weighted by
    point_loss_weight; focal_class_weights scale each class logit's focal term (issue 13 A2)."""
    weights = tuple(float(w) for w in np.arange(1, 18))
    cfg = SparseOccVLAConfig.tiny(
        point_loss="smooth_l1", point_loss_beta=0.3, point_loss_weight=0.5, focal_class_weights=weights
    )
    rng = np.random.default_rng(7)
    b, n, c = 2, 4, cfg.num_classes - 1
    gt = rng.uniform(-3, 3, size=(b, 25, 3))
    labels = rng.integers(0, c, size=(b, 25))
    gmask = np.ones((b, 25), bool)
    pts = [rng.uniform(-3, 3, size=(b, n, k, 3)) for k in (1, 3)]  # P_0, one decoded layer
    logits = [rng.normal(size=(b, n, 3, c))]
    out = occupancy_losses(
        [torch.tensor(x) for x in pts],
        [torch.tensor(x) for x in logits],
        torch.tensor(gt),
        torch.tensor(labels),
        torch.tensor(gmask),
        cfg,
    )
    cd_ref, focal_ref = 0.0, 0.0
    for li, p in enumerate(pts):
        per = []
        for i in range(b):
            flat = p[i].reshape(-1, 3)
            d = ((flat[:, None] - gt[i][None]) ** 2).sum(-1)
            p2g, g2p = d.argmin(1), d.argmin(0)
            cost = (
                np_smooth_l1(flat - gt[i][p2g], 0.3).sum(-1).mean()
                + np_smooth_l1(flat[g2p] - gt[i], 0.3).sum(-1).mean()
            )
            per.append(cost)
            if li == 1:
                onehot = np.eye(c)[labels[i][p2g]]
                focal = np_focal(logits[0][i].reshape(-1, c), onehot, cfg.focal_alpha, cfg.focal_gamma)
                focal_ref += (focal * np.asarray(weights)).sum() / len(flat) / b
        cd_ref += 0.5 * np.mean(per)
    assert out["cd"].item() == pytest.approx(cd_ref, rel=1e-9)
    assert out["focal"].item() == pytest.approx(focal_ref, rel=1e-9)


def test_point_loss_options_are_validated():
    with pytest.raises(ValueError, match="point_loss"):
        SparseOccVLAConfig.tiny(point_loss="l1")
    with pytest.raises(ValueError, match="focal_class_weights"):
        SparseOccVLAConfig.tiny(focal_class_weights=(1.0, 2.0))
    with pytest.raises(ValueError, match="occ_gt"):
        SparseOccVLAConfig.tiny(occ_gt="future")


def test_opus_gt_weights_by_hand():
    """gt_miss_weight / gt_rare_classes (OPUS): a GT point farther than gt_miss_distance from its nearest prediction
    weighs gt_miss_weight in the GT -> prediction term, rare-class GT points at least gt_rare_weight; the term is
    still divided by the GT count, and the prediction -> GT term is unchanged."""
    cfg = SparseOccVLAConfig.tiny(
        point_loss="smooth_l1", gt_miss_weight=5.0, gt_miss_distance=0.5, gt_rare_classes=(2, 8), gt_rare_weight=10.0
    )
    rng = np.random.default_rng(11)
    b, c = 2, cfg.num_classes - 1
    gt = rng.uniform(-3, 3, size=(b, 30, 3))
    labels = rng.integers(0, c, size=(b, 30))
    labels[:, :4] = 2  # some rare points for sure
    gmask = np.ones((b, 30), bool)
    gmask[1, -5:] = False
    pts = [rng.uniform(-3, 3, size=(b, 6, 4, 3))]
    logits = [rng.normal(size=(b, 6, 4, c))]
    args = ([torch.tensor(x) for x in pts], [torch.tensor(x) for x in logits], torch.tensor(gt))
    out = occupancy_losses(*args, torch.tensor(labels), torch.tensor(gmask), cfg, include_p0=False)
    ref = []
    n_miss = 0
    for i in range(b):
        flat, g, lab = pts[0][i].reshape(-1, 3), gt[i][gmask[i]], labels[i][gmask[i]]
        d = ((flat[:, None] - g[None]) ** 2).sum(-1)
        p2g, g2p = d.argmin(1), d.argmin(0)
        w = np.where(d.min(0) > 0.5**2, 5.0, 1.0)
        n_miss += int((w == 5.0).sum())
        w = np.where(np.isin(lab, (2, 8)), np.maximum(w, 10.0), w)
        ref.append(
            np_smooth_l1(flat - g[p2g], cfg.point_loss_beta).sum(-1).mean()
            + (w * np_smooth_l1(flat[g2p] - g, cfg.point_loss_beta).sum(-1)).sum() / len(g)
        )
    assert 0 < n_miss < gmask.sum()  # both weights occur
    assert out["cd"].item() == pytest.approx(cfg.point_loss_weight * np.mean(ref), rel=1e-9)
    plain = occupancy_losses(
        *args,
        torch.tensor(labels),
        torch.tensor(gmask),
        SparseOccVLAConfig.tiny(point_loss="smooth_l1"),
        include_p0=False,
    )
    assert plain["cd"].item() < out["cd"].item()
    with pytest.raises(ValueError, match="gt_rare_classes"):
        SparseOccVLAConfig.tiny(gt_rare_classes=(17,))
    with pytest.raises(ValueError, match="gt_miss_weight"):
        SparseOccVLAConfig.tiny(gt_miss_weight=0.0)
