"""Learning check (issue 5 item 4): the tiny model, trained through the paper's stages 1 -> 2 -> 3 (sec. 4.2) on a
handful of synthetic scenes, must beat trivial baselines on a held-out synthetic scene.

Everything runs through the user-facing commands, in process::

    sparseoccvla synth --out DATA --scenes 5 --seed 0 --frames 16 --width 320 --height 180 --no-lidar --layouts intersection
    sparseoccvla train --stage 1 --config model.yaml --train-config train.yaml --data DATA --out s1
    sparseoccvla train --stage 2 --train-config train.yaml --data DATA --init s1 --out s2
    sparseoccvla train --stage 3 --train-config train.yaml --data DATA --init s2 --out s3
    sparseoccvla eval --ckpt s3 --data DATA --out ev --no-text --no-meteor

Baselines (computed by ``sparseoccvla eval`` from the training split, see ``sparseoccvla_core/evaluation/baselines.py``):

* occupancy: the most frequent training class on every GT-occupied voxel (it is handed the true geometry);
* planning: the training set's mean trajectory (the constant-velocity extrapolation is reported for reference);
* nuScenes-QA: the majority training answer.

The tiny preset is scaled for this check through override files (below): many small occupancy queries (256 queries
x [4, 32] points: a query whose points span a few metres sees one kind of ground, so points classify better than
with a few large queries, and 8192 points cover a useful share of the ~12k camera-visible occupied voxels of a
synthetic frame), GT capped at 2000 points per set (Chamfer cost), occupancy supervised on the camera-visible
voxels (what the official camera-masked mIoU scores), and the understanding stream drawn from nuScenes-QA.
Stage 1 runs 24 epochs: with 16, occupancy after stage 1 was below the baseline for seeds 0 and 1 alike, and seed 1
still failed after stage 3 (2.85 % vs 2.94 %); with 24 both seeds pass (docs/training.md §3).  The tiny
LLM is random (no ``llm_path``), so stage 3 trains its base weights too (``train_llm_base: true``; the paper's
LoRA-only rule protects a pretrained LLM, a random one has nothing to protect; with LoRA only, earlier runs answered
every question with the planning-reasoning sentence, 0 %).  Occupancy assertions use the camera-masked mIoU, for the
model and for the baseline alike (the model is trained on the camera-visible voxels).  The measured numbers are
written to ``learning_check.json`` in the test's folder and printed.
Scenes 0-3 train, scene 4 is the held-out val split (the synth command's ``val_every`` = 5).
"""

from __future__ import annotations

import json

import pytest

SYNTH_ARGS = [
    "--scenes",
    "5",
    "--seed",
    "0",
    "--frames",
    "16",
    "--width",
    "320",
    "--height",
    "180",
    "--no-lidar",
    "--layouts",
    "intersection",
]
MODEL_YAML = """\
preset: tiny
num_queries: 256
points_per_layer: [4, 32]
"""
TRAIN_YAML = """\
preset: tiny
epochs: [24, 6, 10]
batch_size: 2
lr: 2.0e-3
max_gt_points: 2000
qa_sources: [nuscenes_qa]
occ_visibility: camera
train_llm_base: true
"""


def summarise(metrics: dict) -> dict:
    """The learning-check numbers (percent for mIoU / accuracy, metres for L2) from an eval metrics.json."""
    base = metrics["baselines"]
    occ, occ_base = metrics["occupancy"], base["occupancy_most_frequent_class"]
    l2 = metrics["planning"]["l2"]
    qa = metrics["nuscenes_qa"]
    return {
        "occupancy_miou_camera_mask": occ["camera_mask"]["miou"],
        "baseline_most_frequent_class": occ_base["class"],
        "baseline_occupancy_miou_camera_mask": occ_base["camera_mask"]["miou"],
        "occupancy_miou_no_mask": occ["no_mask"]["miou"],
        "baseline_occupancy_miou_no_mask": occ_base["no_mask"]["miou"],
        "plan_l2_avg_stp3": l2["stp3"]["avg"],
        "baseline_mean_trajectory_l2_avg_stp3": base["planning_mean_trajectory"]["l2"]["stp3"]["avg"],
        "reference_constant_velocity_l2_avg_stp3": base["planning_constant_velocity"]["l2"]["stp3"]["avg"],
        "plan_l2_avg_uniad": l2["uniad"]["avg"],
        "baseline_mean_trajectory_l2_avg_uniad": base["planning_mean_trajectory"]["l2"]["uniad"]["avg"],
        "qa_accuracy": qa["overall"] if qa is not None else None,
        "baseline_majority_answer": base.get("qa_majority_answer", {}).get("answer"),
        "baseline_majority_accuracy": base.get("qa_majority_answer", {}).get("accuracy", {}).get("overall"),
        "num_val_frames": metrics["num_samples"],
        "num_plan_samples": metrics["planning"]["num_samples"],
        "forecast_miou_avg": metrics["forecasting"].get("avg_miou"),
    }


@pytest.mark.slow
@pytest.mark.timeout(
    1800
)  # ~13-15 min alone on 2 cores (docs/training.md §3); pytest.ini's 900 s hang guard is for the rest
def test_tiny_model_beats_trivial_baselines(tmp_path):
    from sparseoccvla_core.cli import main

    data, runs = tmp_path / "synth", tmp_path / "runs"
    assert main(["synth", "--out", str(data), *SYNTH_ARGS]) == 0
    splits = json.loads((data / "splits.json").read_text())
    assert splits["val"] and not set(splits["val"]) & set(splits["train"])  # held-out scenes
    (tmp_path / "model.yaml").write_text(MODEL_YAML)
    (tmp_path / "train.yaml").write_text(TRAIN_YAML)
    common = ["--train-config", str(tmp_path / "train.yaml"), "--data", str(data), "--no-progress"]
    assert (
        main(["train", "--stage", "1", "--config", str(tmp_path / "model.yaml"), *common, "--out", str(runs / "s1")])
        == 0
    )
    assert main(["train", "--stage", "2", *common, "--init", str(runs / "s1"), "--out", str(runs / "s2")]) == 0
    assert main(["train", "--stage", "3", *common, "--init", str(runs / "s2"), "--out", str(runs / "s3")]) == 0
    assert (
        main(
            [
                "eval",
                "--ckpt",
                str(runs / "s3"),
                "--data",
                str(data),
                "--out",
                str(runs / "eval"),
                "--no-text",
                "--no-meteor",
                "--num-qualitative",
                "0",
            ]
        )
        == 0
    )
    numbers = summarise(json.loads((runs / "eval" / "metrics.json").read_text()))
    (tmp_path / "learning_check.json").write_text(json.dumps(numbers, indent=2))
    print("learning check:", json.dumps(numbers, indent=2))

    assert numbers["num_plan_samples"] > 0 and numbers["qa_accuracy"] is not None
    assert numbers["occupancy_miou_camera_mask"] > numbers["baseline_occupancy_miou_camera_mask"], numbers
    assert numbers["plan_l2_avg_stp3"] < numbers["baseline_mean_trajectory_l2_avg_stp3"], numbers
    assert numbers["qa_accuracy"] > numbers["baseline_majority_accuracy"], numbers
