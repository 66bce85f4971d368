"""``sparseoccvla demo`` end to end over real rclpy: a tiny synthetic scene -> bag -> player -> driving_node ->
recorder with AskScene questions during the replay -> eval-bag -> report.html / report.md.

The checkpoint is a throwaway tiny model written into the test's temporary folder (never committed); its answers
are noise, but every stage runs for real and the checks are on what the run wrote, read back independently.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="rclpy is not installed (run scripts/install.sh)")
pytest.importorskip("sparseoccvla_msgs.msg", reason="sparseoccvla_msgs is not built (run scripts/install.sh)")

from test_report import html_references  # noqa: E402

from sparseoccvla_ros.demo.report import SECTIONS  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]

FRAMES = 14  # >= 13: the forecasting protocol scores frames 5 .. len - 8
NODE = "/sparseoccvla/driving_node"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from sparseoccvla_core.config import SparseOccVLAConfig
    from sparseoccvla_core.model import SparseOccVLA

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt")
    SparseOccVLA(SparseOccVLAConfig.tiny(max_new_tokens=8)).save_pretrained(path)
    return path


def _recorded_stamps(bag: Path) -> dict[str, set[int]]:
    """Output stamps per topic, read with the mcap reader (independent of the project's rosbags code)."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    out: dict[str, set[int]] = {}
    (mcap,) = bag.glob("*.mcap")
    with mcap.open("rb") as fh:
        reader = make_reader(fh, decoder_factories=[DecoderFactory()])
        for _, channel, _, msg in reader.iter_decoded_messages(topics=[f"{NODE}/output/plan", "/gt/frame_info"]):
            if channel.topic == "/gt/frame_info":
                out.setdefault(channel.topic, set()).add(json.loads(msg.data)["camera_stamps_ns"]["CAM_FRONT"])
            else:
                out.setdefault(channel.topic, set()).add(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)
    return out


def test_demo_end_to_end(checkpoint, tmp_path, capsys):
    from sparseoccvla_core.cli import main as cli_main

    out = tmp_path / "run"
    args = ["demo", "--ckpt", str(checkpoint), "--out", str(out), "--frames", str(FRAMES), "--seed", "1000"]
    args += ["--width", "160", "--height", "96", "--rate", "0.5", "--report-frames", "4", "--timeout", "120"]
    assert cli_main(args) == 0
    err = capsys.readouterr().err
    for stage in ("scene:", "bag:", "replay:", "ask:", "eval:", "report:", "done:"):
        assert stage in err, f"no progress line for {stage}"
    assert "key frames done" in err

    # the bag and the recording
    gt_stamps = _recorded_stamps(out / "bag")["/gt/frame_info"]
    assert len(gt_stamps) == FRAMES
    plan_stamps = _recorded_stamps(out / "recording").get(f"{NODE}/output/plan", set())
    assert plan_stamps and plan_stamps <= gt_stamps  # every output is stamped with a key frame's stamp

    # eval-bag's metrics of the recording
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    replay = metrics["replay"]
    assert replay["key_frames"] == FRAMES
    assert replay["matched"]["plan"] == len(plan_stamps)
    assert replay["matched"]["plan"] + replay["missed"]["plan"] == FRAMES
    assert metrics["occupancy"]["no_mask"]["num_frames"] == replay["matched"]["occupancy"] > 0
    assert metrics["planning"]["num_samples"] > 0 and metrics["planning"]["l2"]["stp3"]["avg"] is not None
    assert replay["latency"]["clock"] == "recorded-inputs" and replay["latency"]["plan"]["count"] > 0

    # the questions: asked through AskScene during the replay, each answered about a key frame of the bag
    answers = json.loads((out / "questions.json").read_text())
    assert len(answers) == 9  # 3 default questions x 3 trigger key frames
    for a in answers:
        assert a["success"], a
        assert a["answer"] and a["latency_s"] > 0 and a["round_trip_s"] >= a["latency_s"]
        assert a["scene_stamp_ns"] in gt_stamps and a["scene_frame"] is not None
    triggered = {a["trigger_frame"] for a in answers} - {None}
    assert triggered <= {4, 7, 10}  # round((j + 1) * 14 / 4) for j = 0, 1, 2

    # the report
    html_path = out / "report.html"
    refs = html_references(html_path)
    for section in SECTIONS:
        assert section in refs.ids
    for src in refs.images:
        assert (out / src).is_file(), src
    page = html_path.read_text()
    for a in answers:
        assert a["question"] in page
    assert "recording.mcap" in page and f"{metrics['planning']['l2']['stp3']['avg']:.2f}" in page
    shown = [i for i in refs.ids if i.startswith("frame-")]
    assert len(shown) >= 4  # every k-th key frame + the frames the answers are about
    for a in answers:
        assert f"frame-{a['scene_frame']}" in shown
    assert (out / "report.md").is_file() and (out / "images" / "timing.png").is_file()
