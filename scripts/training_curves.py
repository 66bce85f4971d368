"""Training curves of a three-stage run: losses and held-out metrics against wall time, one PNG.

    .venv/bin/python scripts/training_curves.py RUN_DIR --data DATA --out curves.png [--epochs 1 4 7 ...]

``RUN_DIR`` holds the stage folders ``s1``, ``s2``, ``s3`` written by ``sparseoccvla train`` and, between
stages 1 and 2, ``s1_text`` written by ``sparseoccvla pretrain-llm`` (as ``scripts/train_default.sh`` lays them
out; its per-epoch text NLL is plotted with its own wall time).  Wall time is the sum of the per-update ``seconds`` column of each
stage's ``losses.csv`` (stages back to back, data loading included, checkpoint writing and start-up excluded).
Held-out metrics come from the per-epoch checkpoints (``<stage>/checkpoints/epoch_NNN``) evaluated with
``sparseoccvla eval``'s code on the first ``--max-samples`` key frames of DATA's val split (scenes never trained
on): occupancy mIoU (camera mask) for every stage, plan L2 (ST-P3 average) and nuScenes-QA accuracy from stage 2
on.  Evaluations are cached in ``RUN_DIR/curve_evals.json``, so re-running only plots.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

STAGES = ("s1", "s1_text", "s2", "s3")
TEXT_STEP = "s1_text"  # sparseoccvla pretrain-llm between stages 1 and 2 (its text_loss.csv: one row per epoch)
LOSS_COLUMNS = ("occ_cd", "occ_focal", "distill", "lm", "fore_cd", "fore_focal", "plan_cls", "plan_l1", "loss")


def read_losses(run: Path) -> dict[str, dict[str, list[float]]]:
    """Per stage: wall minutes since the run began (end of each update) and each loss column (NaN where empty)."""
    out, offset = {}, 0.0
    for stage in STAGES:
        if stage == TEXT_STEP:
            path = run / stage / "text_loss.csv"
            if path.is_file():
                rows = list(csv.DictReader(path.open()))
                cols = {c: [float("nan")] * len(rows) for c in LOSS_COLUMNS}
                cols["text_nll"] = [float(r["train_nll"]) for r in rows]
                cols["epoch"] = [int(r["epoch"]) for r in rows]
                out[stage] = {"minutes": [offset + float(r["wall_s"]) / 60.0 for r in rows], **cols}
                offset = out[stage]["minutes"][-1]
            continue
        path = run / stage / "losses.csv"
        if not path.is_file():
            continue
        rows = list(csv.DictReader(path.open()))
        minutes, elapsed = [], offset
        for r in rows:
            elapsed += float(r["seconds"]) / 60.0
            minutes.append(elapsed)
        cols = {c: [float(r[c]) if r.get(c) else float("nan") for r in rows] for c in LOSS_COLUMNS}
        cols["epoch"] = [int(r["epoch"]) for r in rows]
        out[stage] = {"minutes": minutes, **cols}
        offset = elapsed
    return out


def epoch_end_minutes(losses: dict, stage: str, epoch: int) -> float:
    """Wall minutes at the last update of ``epoch`` of ``stage``."""
    s = losses[stage]
    return max(m for m, e in zip(s["minutes"], s["epoch"]) if e == epoch)


def evaluate_epochs(run: Path, data: Path, epochs: dict[str, list[int]], max_samples: int) -> dict:
    """Evaluate the listed per-epoch checkpoints (cached in ``run/curve_evals.json``)."""
    from sparseoccvla_core.evaluation import EvalOptions, evaluate
    from sparseoccvla_core.model import SparseOccVLA

    cache_path = run / "curve_evals.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    for stage, wanted in epochs.items():
        for epoch in wanted:
            key = f"{stage}/{epoch}"
            ckpt = run / stage / "checkpoints" / f"epoch_{epoch:03d}"
            if key in cache or not ckpt.is_dir():
                continue
            language = stage != "s1"
            options = EvalOptions(
                split="val", max_samples=max_samples, text=False, qa=language, meteor=False,
                baselines=False, num_qualitative=0, max_questions_per_sample=4,
            )  # fmt: skip
            metrics = evaluate(SparseOccVLA.from_pretrained(ckpt), data, options).metrics.to_dict()
            qa = metrics.get("nuscenes_qa")
            cache[key] = {
                "miou": metrics["occupancy"]["camera_mask"]["miou"],
                "l2": metrics["planning"]["l2"]["stp3"]["avg"] if language else None,
                "qa": qa["overall"] if language and qa else None,
            }
            print(f"[curves] {key}: {cache[key]}", flush=True)
            cache_path.write_text(json.dumps(cache, indent=1))
    return cache


def plot(losses: dict, evals: dict, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5.2))
    ax = axes[0]
    colors = {"occ_cd": "C0", "occ_focal": "C1", "distill": "C2", "lm": "C3", "fore_cd": "C4", "fore_focal": "C5"}
    colors.update({"plan_cls": "C6", "plan_l1": "C7", "loss": "k"})
    labelled = set()
    window = 25
    for stage, s in losses.items():
        if stage == TEXT_STEP:  # one point per epoch, no smoothing
            ax.plot(s["minutes"], s["text_nll"], "o-", color="C8", lw=1.0, ms=3, label="lm, text only (per answer)")
            ax.axvline(s["minutes"][-1], color="0.6", ls=":", lw=0.8)
            ax.text(s["minutes"][0], 1.02, "text", transform=ax.get_xaxis_transform(), fontsize=9)
            continue
        for col in LOSS_COLUMNS:
            values = s[col]
            pairs = [(m, v) for m, v in zip(s["minutes"], values) if v == v]
            if not pairs:
                continue
            ms, vs = zip(*pairs)
            smooth = [
                sum(vs[max(0, i - window + 1) : i + 1]) / len(vs[max(0, i - window + 1) : i + 1])
                for i in range(len(vs))
            ]
            ax.plot(ms, smooth, color=colors[col], lw=1.6 if col == "loss" else 1.0,
                    label=None if col in labelled else ("total (eq. 12)" if col == "loss" else col))  # fmt: skip
            labelled.add(col)
        ax.axvline(s["minutes"][-1], color="0.6", ls=":", lw=0.8)
        ax.text(s["minutes"][0], 1.02, f"stage {stage[1]}", transform=ax.get_xaxis_transform(), fontsize=9)
    ax.set_yscale("log")
    ax.set_xlabel("wall time on the training machine (min)")
    ax.set_ylabel(f"training loss ({window}-update moving average)")
    ax.legend(fontsize=8, ncol=3)
    ax.grid(alpha=0.3)

    ax = axes[1]
    points = []
    for key, m in evals.items():
        stage, epoch = key.split("/")
        if stage in losses:
            points.append((epoch_end_minutes(losses, stage, int(epoch)), m))
    points.sort(key=lambda p: p[0])
    if points:
        t = [p[0] for p in points]
        ax.plot(t, [p[1]["miou"] for p in points], "o-", color="C0", label="occupancy mIoU, camera mask (%)")
        lang = [(p[0], p[1]) for p in points if p[1]["qa"] is not None]
        if lang:
            ax.plot(
                [p[0] for p in lang], [p[1]["qa"] for p in lang], "s-", color="C3", label="nuScenes-QA accuracy (%)"
            )
        ax.set_ylabel("percent")
        ax2 = ax.twinx()
        l2 = [(p[0], p[1]["l2"]) for p in points if p[1]["l2"] is not None]
        if l2:
            ax2.plot([p[0] for p in l2], [p[1] for p in l2], "^-", color="C2", label="plan L2, ST-P3 avg (m)")
        ax2.set_ylabel("metres")
        h1, l1 = ax.get_legend_handles_labels()
        h2, lab2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + lab2, fontsize=8, loc="center right")
    for s in losses.values():
        ax.axvline(s["minutes"][-1], color="0.6", ls=":", lw=0.8)
    ax.set_xlabel("wall time on the training machine (min)")
    ax.set_title("held-out metrics at the end of evaluated epochs", fontsize=10)
    ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"[curves] wrote {out}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="folder with s1/, s2/, s3/ (and s1_text/ from pretrain-llm)")
    parser.add_argument("--data", type=Path, required=True, help="dataset root of the run (its val split is scored)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--s1-epochs", type=int, nargs="*", default=[1, 4, 8])
    parser.add_argument("--s2-epochs", type=int, nargs="*", default=[2])
    parser.add_argument("--s3-epochs", type=int, nargs="*", default=[2, 4, 6])
    parser.add_argument("--max-samples", type=int, default=40, help="val key frames per evaluation")
    parser.add_argument("--title", default="SparseOccVLA default checkpoint: training on 2 CPU cores")
    args = parser.parse_args(argv)
    losses = read_losses(args.run)
    if not losses:
        parser.error(f"no <stage>/losses.csv under {args.run}")
    epochs = {"s1": args.s1_epochs, "s2": args.s2_epochs, "s3": args.s3_epochs}
    evals = evaluate_epochs(args.run, args.data, epochs, args.max_samples)
    plot(losses, evals, args.out, args.title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
