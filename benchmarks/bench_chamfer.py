"""Nearest-neighbour search of the Chamfer loss (paper eq. 1): time per call and the speed-up over plain cdist.

The loss searches nearest neighbours both ways for every point set of every encoder layer, in every training step,
so this search is the hot path of stage-1 training on CPU.  Compared here on a stage-1-sized problem:

* ``cdist``: ``torch.cdist`` + a masked [B, S, D] copy + argmin (the straightforward form, the reference);
* ``nearest_neighbors(method="gemm")`` (``sparseoccvla_core.losses``): one GEMM on augmented coordinates per
  chunk, the mask applied once per destination point, at several chunk sizes (the default is the device's entry
  of ``DEFAULT_CHUNK_ELEMENTS``); the accelerator path;
* ``nearest_neighbors(method="kdtree")``: one SciPy cKDTree per sample; what "auto" picks for CPU tensors.

"same index" is the share of queries whose index equals the reference's; the rest are float ties (the squared
distances agree to 1e-5 m^2).

    python benchmarks/bench_chamfer.py [--pred 8192] [--gt 2000] [--batch 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from sparseoccvla_core.losses import DEFAULT_CHUNK_ELEMENTS, chamfer_distance, nearest_neighbors


def _ms(fn, repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1e3


def cdist_reference(src: torch.Tensor, dst: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.cdist(src, dst).masked_fill(~mask[:, None, :], float("inf")).argmin(dim=-1)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pred", type=int, default=8192, help="predicted points per sample (default %(default)s)")
    p.add_argument("--gt", type=int, default=2000, help="GT points per sample (default %(default)s)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    pred = (torch.rand(args.batch, args.pred, 3, generator=g) - 0.5) * torch.tensor([80.0, 80.0, 6.4])
    gt = (torch.rand(args.batch, args.gt, 3, generator=g) - 0.5) * torch.tensor([80.0, 80.0, 6.4])
    mask = torch.rand(args.batch, args.gt, generator=g) > 0.1

    ref_idx = cdist_reference(pred, gt, mask)
    ref = _ms(lambda: cdist_reference(pred, gt, mask), args.repeats)
    print(f"B={args.batch} pred={args.pred} gt={args.gt}, {args.threads} threads; pred -> gt search")
    print(f"  {'cdist + masked copy + argmin':<34}{ref:8.1f} ms   1.00x")
    default = DEFAULT_CHUNK_ELEMENTS.get("cpu")
    for elems in (1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24):
        idx = nearest_neighbors(pred, gt, mask, max_chunk_elements=elems, method="gemm")
        agree = (idx == ref_idx).float().mean().item()
        ms = _ms(
            lambda elems=elems: nearest_neighbors(pred, gt, mask, max_chunk_elements=elems, method="gemm"), args.repeats
        )
        tag = "  <- GEMM default" if elems == default else ""
        print(
            f"  {'gemm, chunk 2^' + str(elems.bit_length() - 1):<34}{ms:8.1f} ms   {ref / ms:4.2f}x  (same index: {agree:.4%}){tag}"
        )
    idx = nearest_neighbors(pred, gt, mask, method="kdtree")
    agree = (idx == ref_idx).float().mean().item()
    ms = _ms(lambda: nearest_neighbors(pred, gt, mask, method="kdtree"), args.repeats)
    print(f"  {'kdtree (CPU default)':<34}{ms:8.1f} ms   {ref / ms:4.2f}x  (same index: {agree:.4%})")
    pred.requires_grad_(True)

    for method in ("gemm", "kdtree"):

        def loss_step(method: str = method) -> None:
            chamfer_distance(pred, gt, mask, nn_method=method).loss.sum().backward()

        print(f"  {'chamfer_distance fwd+bwd, ' + method:<34}{_ms(loss_step, args.repeats):8.1f} ms (both directions)")


if __name__ == "__main__":
    main()
