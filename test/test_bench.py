"""``sparseoccvla bench`` (sparseoccvla_core/bench.py, sparseoccvla_ros/replay/bench_node.py): structure and
internal consistency of its JSON on a tiny checkpoint with minimal repeats.  Never asserts a speed: every ratio is
checked against the absolute times of the same JSON, not against a target."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sparseoccvla_core.bench import RecomputeAllFrames, ratio_entry, summarize
from sparseoccvla_core.cli import main as cli_main
from sparseoccvla_core.config import SparseOccVLAConfig
from sparseoccvla_core.model import SparseOccVLA
from sparseoccvla_core.pipeline import STAGES

TINY_LLM = ["--prefill-width", "64", "--prefill-heads", "4", "--prefill-mlp", "128", "--prefill-layers", "1"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    torch.manual_seed(0)
    SparseOccVLA(SparseOccVLAConfig.tiny(max_new_tokens=4)).save_pretrained(path)
    return path


def test_summarize_against_numpy():
    values = [0.5, 0.1, 0.3, 0.2, 0.4]
    s = summarize(values)
    assert s == {"median_s": 0.3, "p95_s": pytest.approx(0.48), "min_s": 0.1, "n": 5}
    with pytest.raises(ValueError):
        summarize([])
    r = ratio_entry("a", summarize([2.0]), "b", summarize([0.5]), target=3.0)
    assert r["ratio"] == 4.0 and r["meets_target"] is True
    assert ratio_entry("a", summarize([1.0]), "b", summarize([0.5]))["meets_target"] is None


def test_recompute_wrapper_encodes_the_window_and_returns_the_current_frame():
    torch.manual_seed(0)
    model = SparseOccVLA(SparseOccVLAConfig.tiny()).eval()
    wrapper = RecomputeAllFrames(model.image_features, 3)
    h, w = model.cfg.image_size
    frames = [torch.rand(1, 1, model.cfg.num_views, 3, h, w) for _ in range(4)]
    with torch.inference_mode():
        for i, images in enumerate(frames):
            got = wrapper(images)
            alone = model.image_features(images)  # the streaming path: the new frame only
            for a, b in zip(got, alone):
                assert a.shape == b.shape
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
            assert wrapper.frames_encoded == 3 * (i + 1)  # all F frames every call
        assert len(wrapper._past) == 2


def _ratio_entries(report: dict) -> list[tuple[dict, dict, dict]]:
    """(entry, baseline stats, ours stats) with the stats looked up independently in the same JSON."""
    r = report["ratios"]
    out = []
    pre = r["prefill"]
    for name, entry in pre["ratios"].items():
        base, ours = name.split("_vs_")
        out.append((entry, pre["prefill"][base], pre["prefill"][ours]))
    st = r["streaming"]
    out.append((st["ratios"]["backbone"], st["recompute"]["backbone"], st["cached"]["backbone"]))
    out.append((st["ratios"]["step"], st["recompute"]["step"], st["cached"]["step"]))
    pb = st["paper_backbone"]
    out.append((st["ratios"]["backbone_paper"], pb["recompute"], pb["cached"]))
    out.append((r["ask"]["ratios"]["ask"], r["ask"]["reencode"], r["ask"]["cached"]))
    return out


def _check_stats(stats: dict, n: int) -> None:
    assert stats["n"] == n
    assert 0 < stats["min_s"] <= stats["median_s"] <= stats["p95_s"]


def test_bench_json_structure_and_ratio_consistency(checkpoint, tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "--ckpt", str(checkpoint), "--threads", "1", "2", "--repeats", "2", "--warmup", "1"]
    args += ["--stream-frames", "3", "--prefill-repeats", "2", "--ask-tokens", "3", "--no-node", "--no-cuda"]
    args += ["--stream-paper-repeats", "2", "--stream-paper-image-size", "64", "96"]
    assert cli_main(args + TINY_LLM + ["--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())

    m = report["machine"]
    assert {"cpu", "cores", "torch", "date", "torch_default_threads"} <= set(m) and m["torch"] == torch.__version__
    cfg = SparseOccVLAConfig.tiny(max_new_tokens=4)
    assert report["model"]["scene_prefix_tokens"] == cfg.num_queries + cfg.num_global_queries + 1

    assert [s["threads"] for s in report["stages"]] == [1, 2]
    for s in report["stages"]:
        assert list(s["stages"]) == list(STAGES)
        for stats in s["stages"].values():
            _check_stats(stats, 2)
        _check_stats(s["step"], 2)
        # the step's wall time covers every stage it reports
        assert s["step"]["min_s"] >= min(v["min_s"] for v in s["stages"].values())
        assert s["llm_split"]["prefix_tokens"] == report["model"]["scene_prefix_tokens"]
        assert 1 <= s["llm_split"]["reasoning_tokens"] <= 4

    pre = report["ratios"]["prefill"]
    paper = SparseOccVLAConfig.paper()
    assert pre["lengths"] == {
        "scene_prefix": cfg.num_queries + cfg.num_global_queries + 1,
        "scene_prefix_paper": paper.num_queries + paper.num_global_queries + 1,
        "omnidrive_qformer": 513,
        "hermes_bev": 2500,
    }
    assert "1 of 32 layers" in pre["llm"]  # the reduced depth is said
    entries = _ratio_entries(report)
    assert len(entries) == 4 + 3 + 1
    for entry, base, ours in entries:
        _check_stats(base, 2)
        assert entry["baseline"]["median_s"] == base["median_s"] and entry["ours"]["median_s"] == ours["median_s"]
        assert entry["baseline"]["p95_s"] == base["p95_s"] and entry["ours"]["p95_s"] == ours["p95_s"]
        assert math.isclose(entry["ratio"], base["median_s"] / ours["median_s"], rel_tol=1e-12)
        if entry["target"] is not None:
            assert entry["meets_target"] == (entry["ratio"] >= entry["target"])
        assert f"{entry['ratio']:.2f}x" in printed
    st = report["ratios"]["streaming"]
    assert st["num_frames"] == 3 and st["outputs_match"] is True
    pb = st["paper_backbone"]
    assert pb["image_size"] == [64, 96] and pb["num_frames"] == 3 and "depths 3-4-6-3" in pb["backbone"]
    ask = report["ratios"]["ask"]
    assert ask["same_answers"] is True and ask["max_new_tokens"] == 3
    assert report["node"] == {"skipped": "--no-node"}
    assert "skipped" in report["cuda"]
    assert "| **step (end to end)** |" in printed


def test_bench_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    rc = cli_main(["bench", "--ckpt", str(tmp_path / "nope"), "--no-node", "--json", str(tmp_path / "x.json")])
    assert rc == 2
    assert "not a SparseOccVLA checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.ros
@pytest.mark.slow
def test_node_section_latency_drops_and_rss(checkpoint, tmp_path):
    pytest.importorskip("rclpy")
    from sparseoccvla_ros.replay.bench_node import node_section

    node = node_section(
        checkpoint, tmp_path, rates=[4.0], soak_minutes=0.2, frames=4, image_wh=(160, 96), threads=1, sample_s=1.0
    )
    assert node["key_frames"] == 4
    (run,) = node["rates"]
    assert "error" not in run, run.get("error")
    assert run["rate"] == 4.0 and run["plans"] + run["missed_plans"] == 4
    assert run["offered_key_frames_per_s"] == pytest.approx(8.0, rel=1e-3)  # 2 Hz key frames at 4x
    lat = run["plan_latency"]
    assert run["latency_clock"] == "recorded-inputs" and 0 < lat["p50"] <= lat["p95"] <= lat["max"]
    assert run["dropped_sets"] is not None and run["dropped_sets"] >= 0
    soak = node["soak"]
    assert "error" not in soak, soak.get("error")
    samples = np.array([r for _, r in soak["samples"]], dtype=np.float64)
    assert len(samples) >= 2 and samples.min() > 0
    assert soak["rss_max_mib"] == pytest.approx(samples.max() / 2**20)
    assert soak["rss_end_mib"] == pytest.approx(samples[-1] / 2**20)
