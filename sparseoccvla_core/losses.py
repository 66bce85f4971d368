"""Occupancy losses: Chamfer distance (paper eq. 1), focal loss on matched classes, eq. 10 / eq. 11 sums.

* :func:`chamfer_distance` - eq. 1: squared nearest-neighbour distances both ways.  The paper writes plain
  sums; the model uses ``reduction="mean"`` (each direction divided by its point count, as OPUS /
  SparseWorld average over #GT and #pred, docs/reference_choices.md §3.1) so the loss does not scale with the ~60k GT
  voxels or the 67k predicted points; ``reduction="sum"`` gives eq. 1 exactly.
  Nearest neighbours are searched under ``no_grad`` (:func:`nearest_neighbors`: a KD-tree for CPU tensors,
  chunked GEMMs on an accelerator, never a full [P, G] matrix), then the matched distances are recomputed with
  gradients: memory O(P + G) for the graph.
* :func:`sigmoid_focal_loss` - the RetinaNet focal loss on sigmoid logits.
* :func:`occupancy_losses` - eq. 10 without distillation: CD on every layer's point set (P_0 included) and
  focal loss on every decoded layer, each predicted point labelled by its nearest GT point.  Eq. 11 reuses it
  once per forecast frame with ``include_p0=False``.  The paper states only the weight lambda_focal; OPUS's
  SmoothL1 point cost and per-class focal weights are config options (``point_loss``, ``focal_class_weights``,
  docs/experiments.md §3 for the measurement behind the default checkpoint's choice); OPUS's distance-to-centre
  and GT-side weights are not applied (docs/reference_choices.md §3.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import SparseOccVLAConfig

#: elements of one [B, chunk, D] score block of the nearest-neighbour search, per device type.  On CPU a block that
#: stays in cache (4 MiB in float32) makes GEMM + argmin ~2x faster than one big block (measured by
#: benchmarks/bench_chamfer.py); on a GPU a big block (64 MiB) keeps kernel launches few.
DEFAULT_CHUNK_ELEMENTS: dict[str, int] = {"cpu": 1 << 20, "cuda": 1 << 24}
#: for device types not listed above.
FALLBACK_CHUNK_ELEMENTS: int = 1 << 22
#: squared norm that takes a masked dst point out of the nearest-neighbour search (finite: no inf inside BLAS).
MASKED_SQ_NORM: float = 1e30
#: nearest-neighbour search methods: "auto" = "kdtree" for CPU tensors, "gemm" on other devices.  "kdtree" is
#: SciPy's exact cKDTree, O((S + D) log D): on 2 CPU cores it searches a stage-1-sized problem (2 x 8192 points
#: against 2 x 2000) ~5x faster than the GEMM search, whose [chunk, D] scores and argmin were ~40 % of a tiny
#: training step (benchmarks/bench_chamfer.py).  "gemm" keeps the search on the accelerator (no host copies).
NN_METHODS: tuple[str, ...] = ("auto", "kdtree", "gemm")
#: cost of a matched point pair in :func:`chamfer_distance` (``SparseOccVLAConfig.point_loss``): "l2" = the squared
#: distance of paper eq. 1; "smooth_l1" = OPUS's point loss (SmoothL1 per coordinate, docs/reference_choices.md §3.1).
POINT_LOSSES: tuple[str, ...] = ("l2", "smooth_l1")


@dataclass
class ChamferResult:
    """Result of :func:`chamfer_distance`.

    Args:
        loss: [B] Chamfer distance per sample (0 where a sample has no valid GT or no valid prediction).
        pred_to_gt_idx: [B, P] index of each prediction's nearest valid GT point (-1: masked / no GT).
        gt_to_pred_idx: [B, G] index of each GT point's nearest valid prediction (-1: masked / no prediction).
        pred_to_gt_sqdist: [B, P] squared distance to that GT point (0 where the index is -1), m^2.
        gt_to_pred_sqdist: [B, G] squared distance to that prediction (0 where the index is -1), m^2.
    """

    loss: torch.Tensor
    pred_to_gt_idx: torch.Tensor
    gt_to_pred_idx: torch.Tensor
    pred_to_gt_sqdist: torch.Tensor
    gt_to_pred_sqdist: torch.Tensor


@torch.no_grad()
def nearest_neighbors(
    src: torch.Tensor,
    dst: torch.Tensor,
    dst_mask: Optional[torch.Tensor] = None,
    max_chunk_elements: Optional[int] = None,
    method: str = "auto",
) -> torch.Tensor:
    """Index of the nearest valid ``dst`` point for every ``src`` point (exact; ties go to either point).

    Args:
        src: [B, S, 3].
        dst: [B, D, 3].
        dst_mask: [B, D] bool (True = valid) or None.
        max_chunk_elements: "gemm" only: largest [B, chunk, D] score block held at once (None: by device type,
            :data:`DEFAULT_CHUNK_ELEMENTS`).
        method: one of :data:`NN_METHODS`.  Non-finite coordinates always take the GEMM search, whose NaN
            distances then reach the loss (and the trainer's non-finite check) instead of a KD-tree error.

    Returns:
        [B, S] int64 on ``src``'s device (arbitrary where a sample has no valid dst; callers mask that case).
    """
    if method not in NN_METHODS:
        raise ValueError(f"method must be one of {NN_METHODS}, got {method!r}")
    b, s, _ = src.shape
    d = dst.shape[1]
    if s == 0 or d == 0:
        return torch.zeros(b, s, dtype=torch.long, device=src.device)
    if method == "auto":
        method = "kdtree" if src.device.type == "cpu" else "gemm"
    if method == "kdtree" and bool(torch.isfinite(src).all()) and bool(torch.isfinite(dst).all()):
        return _nearest_kdtree(src, dst, dst_mask)
    out = torch.empty(b, s, dtype=torch.long, device=src.device)
    # argmin_j ||x - y_j||^2 = argmin_j (||y_j||^2 - 2 x.y_j) since ||x||^2 is constant per row: no sqrt, and with
    # x' = [x, 1], y'_j = [-2 y_j, ||y_j||^2] it is one batched GEMM x'.y'_j per chunk (no [B, chunk, D] copies; an
    # invalid dst point gets ||y||^2 = MASKED_SQ_NORM once).  cdist + a masked [B, chunk, D] copy took ~3/4 of a
    # tiny training step.  Coordinates are centred first: the matmul form loses precision far from the origin.
    offset = dst.mean(dim=1, keepdim=True)
    src, dst = (src - offset).float(), (dst - offset).float()
    dst_sq = (dst * dst).sum(dim=-1, keepdim=True)  # [B, D, 1]
    if dst_mask is not None:
        dst_sq = dst_sq.masked_fill(~dst_mask.to(torch.bool)[..., None], MASKED_SQ_NORM)
    dst_aug = torch.cat([-2.0 * dst, dst_sq], dim=-1).transpose(1, 2).contiguous()  # [B, 4, D]
    src_aug = torch.cat([src, torch.ones_like(src[..., :1])], dim=-1)  # [B, S, 4]
    if max_chunk_elements is None:
        max_chunk_elements = DEFAULT_CHUNK_ELEMENTS.get(src.device.type, FALLBACK_CHUNK_ELEMENTS)
    chunk = max(1, max_chunk_elements // max(1, b * d))
    for start in range(0, s, chunk):
        score = torch.bmm(src_aug[:, start : start + chunk], dst_aug)  # [B, chunk, D]
        out[:, start : start + chunk] = score.argmin(dim=-1)
    return out


def _nearest_kdtree(src: torch.Tensor, dst: torch.Tensor, dst_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """:func:`nearest_neighbors` with one SciPy cKDTree per sample (float64, as many query threads as torch)."""
    from scipy.spatial import cKDTree

    src_np = src.detach().to("cpu", torch.float64).numpy()
    dst_np = dst.detach().to("cpu", torch.float64).numpy()
    mask_np = None if dst_mask is None else dst_mask.detach().to("cpu", torch.bool).numpy()
    out = np.zeros(src_np.shape[:2], dtype=np.int64)
    workers = max(1, torch.get_num_threads())
    for i in range(src_np.shape[0]):
        valid = None if mask_np is None else np.flatnonzero(mask_np[i])
        points = dst_np[i] if valid is None else dst_np[i, valid]
        if len(points) == 0:
            continue  # no valid dst: index 0, masked by the caller
        _, idx = cKDTree(points).query(src_np[i], k=1, workers=workers)
        out[i] = idx if valid is None else valid[idx]
    return torch.from_numpy(out).to(src.device)


def _gather_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """points [B, D, 3], idx [B, S] -> [B, S, 3]."""
    return torch.gather(points, 1, idx.clamp(min=0)[..., None].expand(-1, -1, 3))


def chamfer_distance(
    pred: torch.Tensor,
    gt: torch.Tensor,
    gt_mask: torch.Tensor,
    pred_mask: Optional[torch.Tensor] = None,
    reduction: str = "mean",
    max_chunk_elements: Optional[int] = None,
    nn_method: str = "auto",
    distance: str = "l2",
    beta: float = 0.2,
    gt_weights: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> ChamferResult:
    """Chamfer distance, paper eq. 1 (squared Euclidean nearest-neighbour distances, both directions).

    With ``distance="smooth_l1"`` each matched pair costs OPUS's point loss instead: SmoothL1 (``beta``) per
    coordinate, summed over x, y, z (docs/reference_choices.md §3.1); the matching is the same.

    Args:
        pred: [B, P, 3] (or [B, N, P, 3], flattened) predicted points, m.
        gt: [B, G, 3] GT points, m.
        gt_mask: [B, G] bool, True for real GT points.
        pred_mask: [B, P] bool or None (all predictions valid).
        reduction: "mean" - each direction's sum divided by its valid point count (model default,
            docs/reference_choices.md §3.1); "sum" - eq. 1 exactly.
        max_chunk_elements: memory bound of the GEMM nearest-neighbour search.
        nn_method: nearest-neighbour search, one of :data:`NN_METHODS` (see :func:`nearest_neighbors`).
        distance: cost of a matched pair, one of :data:`POINT_LOSSES`: "l2" (squared distance, eq. 1) or
            "smooth_l1" (OPUS).
        beta: SmoothL1 transition point, m (OPUS: 0.2).
        gt_weights: None, or ``f(gt_to_pred_sqdist [B, G]) -> [B, G]`` weights of the GT -> prediction costs
            (OPUS's GT weights, :func:`opus_gt_weights`); the term stays divided by the valid GT count.

    Returns:
        :class:`ChamferResult`; ``loss`` is differentiable w.r.t. ``pred``.  The ``*_sqdist`` fields are squared
        distances whatever ``distance`` is.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if distance not in POINT_LOSSES:
        raise ValueError(f"distance must be one of {POINT_LOSSES}, got {distance!r}")
    if pred.dim() == 4:
        pred = pred.flatten(1, 2)  # [B, N, P, 3] -> [B, N*P, 3]
        if pred_mask is not None and pred_mask.dim() == 3:
            pred_mask = pred_mask.flatten(1, 2)
    if pred.dim() != 3 or gt.dim() != 3 or pred.shape[-1] != 3 or gt.shape[-1] != 3:
        raise ValueError(f"pred must be [B, P, 3] and gt [B, G, 3], got {tuple(pred.shape)} and {tuple(gt.shape)}")
    gt_mask = gt_mask.to(torch.bool)
    if pred_mask is None:
        pred_mask = torch.ones(pred.shape[:2], dtype=torch.bool, device=pred.device)
    pred_mask = pred_mask.to(torch.bool)
    gt = gt.to(pred.dtype)

    p2g = nearest_neighbors(pred.detach(), gt, gt_mask, max_chunk_elements, nn_method)  # [B, P]
    g2p = nearest_neighbors(gt, pred.detach(), pred_mask, max_chunk_elements, nn_method)  # [B, G]
    has_gt, has_pred = gt_mask.any(dim=1), pred_mask.any(dim=1)  # [B]
    p2g_valid = pred_mask & has_gt[:, None]
    g2p_valid = gt_mask & has_pred[:, None]
    # Matched distances recomputed with gradients (memory O(P + G)).
    diff_p2g = pred - _gather_points(gt, p2g)  # [B, P, 3]
    diff_g2p = _gather_points(pred, g2p) - gt  # [B, G, 3]
    d_p2g = (diff_p2g**2).sum(-1) * p2g_valid  # [B, P]
    d_g2p = (diff_g2p**2).sum(-1) * g2p_valid  # [B, G]
    if distance == "l2":
        cost_p2g, cost_g2p = d_p2g, d_g2p
    else:
        zero_p, zero_g = torch.zeros_like(diff_p2g), torch.zeros_like(diff_g2p)
        cost_p2g = F.smooth_l1_loss(diff_p2g, zero_p, reduction="none", beta=beta).sum(-1) * p2g_valid
        cost_g2p = F.smooth_l1_loss(diff_g2p, zero_g, reduction="none", beta=beta).sum(-1) * g2p_valid
    if gt_weights is not None:
        cost_g2p = cost_g2p * gt_weights(d_g2p.detach())
    sum_p2g, sum_g2p = cost_p2g.sum(1), cost_g2p.sum(1)
    if reduction == "mean":
        loss = sum_p2g / p2g_valid.sum(1).clamp(min=1) + sum_g2p / g2p_valid.sum(1).clamp(min=1)
    else:
        loss = sum_p2g + sum_g2p
    return ChamferResult(
        loss=loss,
        pred_to_gt_idx=torch.where(p2g_valid, p2g, torch.full_like(p2g, -1)),
        gt_to_pred_idx=torch.where(g2p_valid, g2p, torch.full_like(g2p, -1)),
        pred_to_gt_sqdist=d_p2g,
        gt_to_pred_sqdist=d_g2p,
    )


def opus_gt_weights(
    gt_labels: torch.Tensor, cfg: SparseOccVLAConfig
) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """OPUS's per-GT-point weights of the GT -> prediction point term, or None when the config leaves them at 1.

    A GT point whose nearest prediction is farther than ``cfg.gt_miss_distance`` weighs ``cfg.gt_miss_weight``;
    GT points of ``cfg.gt_rare_classes`` weigh at least ``cfg.gt_rare_weight``; every other point weighs 1.  (OPUS
    applies both to camera-visible voxels; with ``occ_visibility: camera`` every training GT point is one.)

    Args:
        gt_labels: [B, G] int64 Occ3D labels of the GT points.
        cfg: the four ``gt_*`` fields.

    Returns:
        ``f(gt_to_pred_sqdist [B, G]) -> weights [B, G]`` for :func:`chamfer_distance`.
    """
    if cfg.gt_miss_weight == 1.0 and not cfg.gt_rare_classes:
        return None
    rare = torch.isin(gt_labels, gt_labels.new_tensor(cfg.gt_rare_classes))
    miss_sq = cfg.gt_miss_distance**2

    def weights(sqdist: torch.Tensor) -> torch.Tensor:
        w = torch.where(sqdist > miss_sq, cfg.gt_miss_weight, 1.0).to(sqdist.dtype)
        return torch.where(rare, w.clamp(min=cfg.gt_rare_weight), w)

    return weights


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets_onehot: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al. 2017): ``-alpha_t (1 - p_t)^gamma log(p_t)`` per logit.

    Args:
        logits: [..., C] pre-sigmoid.
        targets_onehot: [..., C] in {0, 1} (float).
        alpha: weight of positives (1 - alpha for negatives); a negative value disables the weighting.
        gamma: focusing exponent.
        reduction: "none" | "sum" | "mean" (over all elements).

    Returns:
        Per-element loss for "none", else a scalar.
    """
    targets = targets_onehot.to(logits.dtype)
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")


def matched_class_focal_loss(
    logits: torch.Tensor,
    pred_to_gt_idx: torch.Tensor,
    gt_labels: torch.Tensor,
    cfg: SparseOccVLAConfig,
) -> torch.Tensor:
    """Focal loss of each predicted point against the label of its nearest GT point (docs/reference_choices.md §3.2).

    Args:
        logits: [B, P, C] flattened point logits.
        pred_to_gt_idx: [B, P] from :func:`chamfer_distance` (-1 = no target; excluded).
        gt_labels: [B, G] int64 Occ3D labels.
        cfg: num_classes, focal_alpha, focal_gamma.

    Returns:
        Scalar: focal loss summed over classes, averaged over predicted points with a target
        (OPUS averages over #pred points).
    """
    c = logits.shape[-1]
    has = pred_to_gt_idx >= 0  # [B, P]
    labels = torch.gather(gt_labels, 1, pred_to_gt_idx.clamp(min=0))  # [B, P]
    # A label outside the semantic classes (free / padding) is an all-negative target row.
    onehot = F.one_hot(labels.clamp(0, c), c + 1)[..., :c].to(logits.dtype)  # [B, P, C]
    per_logit = sigmoid_focal_loss(logits, onehot, cfg.focal_alpha, cfg.focal_gamma, reduction="none")
    if cfg.focal_class_weights is not None:  # OPUS: one weight per class logit (docs/reference_choices.md §3.2)
        per_logit = per_logit * per_logit.new_tensor(cfg.focal_class_weights)
    per_point = per_logit.sum(-1)
    return (per_point * has).sum() / has.sum().clamp(min=1)


def occupancy_losses(
    layer_points: Sequence[torch.Tensor],
    layer_logits: Sequence[torch.Tensor],
    gt_points: torch.Tensor,
    gt_labels: torch.Tensor,
    gt_mask: torch.Tensor,
    cfg: SparseOccVLAConfig,
    include_p0: bool = True,
) -> dict[str, torch.Tensor]:
    """Occupancy losses of eq. 10 (without distillation); eq. 11 per forecast frame.

    Args:
        layer_points: with ``include_p0`` L + 1 tensors (P_0 first, no logits), else L tensors; each
            [B, N, P_l, 3] or [B, P_l, 3], m.
        layer_logits: L tensors [B, N, P_l, C] or [B, P_l, C].
        gt_points: [B, G, 3].
        gt_labels: [B, G] int64.
        gt_mask: [B, G] bool.
        cfg: focal_alpha, focal_gamma, lambda_focal.
        include_p0: whether ``layer_points[0]`` is P_0 (CD only).

    Returns:
        dict with ``cd`` = ``cfg.point_loss_weight`` x the sum over point sets of the batch-mean point loss
        (``cfg.point_loss``: squared-distance CD of eq. 1, or OPUS's SmoothL1; mean reduction), ``focal`` = sum over
        decoded layers of the matched-class focal loss - both *unweighted* - and ``total`` =
        cd + cfg.lambda_focal * focal (eq. 10 / 11 weighting).
    """
    expected = len(layer_logits) + (1 if include_p0 else 0)
    if len(layer_points) != expected:
        raise ValueError(
            f"got {len(layer_points)} point sets and {len(layer_logits)} logit sets; with include_p0={include_p0} "
            f"expected {expected} point sets"
        )
    start = 1 if include_p0 else 0
    cd_total = gt_points.new_zeros(())
    focal_total = gt_points.new_zeros(())
    gt_weights = opus_gt_weights(gt_labels, cfg)
    for i, pts in enumerate(layer_points):
        flat = pts.flatten(1, -2)  # [B, N*P, 3]
        result = chamfer_distance(
            flat, gt_points, gt_mask, distance=cfg.point_loss, beta=cfg.point_loss_beta, gt_weights=gt_weights
        )
        cd_total = cd_total + cfg.point_loss_weight * result.loss.mean()
        if i >= start:
            logits = layer_logits[i - start]
            flat_logits = logits.flatten(1, -2)  # [B, N*P, C]
            focal_total = focal_total + matched_class_focal_loss(flat_logits, result.pred_to_gt_idx, gt_labels, cfg)
    return {"cd": cd_total, "focal": focal_total, "total": cd_total + cfg.lambda_focal * focal_total}
