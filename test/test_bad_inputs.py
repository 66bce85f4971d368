"""Every bad input gets one clear line (issue 22, part C): a sweep of every ``sparseoccvla`` command and the node.

Each case feeds a command a missing path, a directory where a file is expected, a truncated or empty file of a kind
it reads (MCAP, safetensors, YAML, JSON / nuScenes table, JPEG), a file of the wrong kind, or an output that already
exists, through the console behaviour of ``sparseoccvla_core.cli.main`` (what the ``sparseoccvla`` script runs).
Each must return a non-zero status (2 for bad input) with exactly one ``error:`` line that names the input, print
no traceback, and leave nothing written.  The checks come before ROS or a model starts, so no case loads a model.
A few cases run real processes: ``drive`` with a missing bag (it used to abort with 134 after ROS had started),
the node with a broken calibration file, and Ctrl-C in the middle of ``synth``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from data_fixtures import mini_nuscenes, synthetic_world  # noqa: F401
from test_replay_ros import H, W, _synthetic_cameras, synthetic_frames, write_nuscenes_style_bag

from sparseoccvla_core.cli import commands, main

REPO = Path(__file__).resolve().parents[1]
SPARSEOCCVLA = [sys.executable, "-m", "sparseoccvla_core.cli"]


# ---------------------------------------------------------------------- the bad inputs, built once
@pytest.fixture(scope="module")
def inputs(tmp_path_factory, mini_nuscenes):  # noqa: F811
    """name -> path of every good and bad input the sweep uses."""
    import torch

    from sparseoccvla_core.config import SparseOccVLAConfig
    from sparseoccvla_core.model import SparseOccVLA
    from sparseoccvla_ros import conversions as conv

    root = tmp_path_factory.mktemp("inputs")
    p: dict[str, Path] = {"missing": root / "no_such_thing", "dir": root / "a_folder"}
    p["dir"].mkdir()
    (p["dir"] / "notes.txt").write_text("not a bag, not a checkpoint")

    # checkpoints: good, truncated / empty / wrong-kind weights, broken config.yaml
    torch.manual_seed(0)
    p["ckpt"] = root / "ckpt"
    SparseOccVLA(SparseOccVLAConfig.tiny(max_new_tokens=4)).save_pretrained(p["ckpt"])
    weights = (p["ckpt"] / "model.safetensors").read_bytes()
    for name, mutate in {
        "ckpt_truncated": lambda d: (d / "model.safetensors").write_bytes(weights[: len(weights) // 2]),
        "ckpt_empty": lambda d: (d / "model.safetensors").write_bytes(b""),
        "ckpt_wrong_kind": lambda d: (d / "model.safetensors").write_text("format: not safetensors\n" * 20),
        "ckpt_bad_yaml": lambda d: (d / "config.yaml").write_text("num_queries: [48,\n  bad: {\n"),
    }.items():
        shutil.copytree(p["ckpt"], root / name)
        mutate(root / name)
        p[name] = root / name

    # bags: good, truncated / empty / wrong-kind MCAP, no camera topics
    p["bag"] = write_nuscenes_style_bag(root / "bag", synthetic_frames(2), _synthetic_cameras())
    mcap = next(p["bag"].glob("*.mcap"))
    data = mcap.read_bytes()
    for name, content in {
        "bag_truncated": data[: len(data) // 2],
        "bag_empty": b"",
        "bag_wrong_kind": b"\xff\xd8\xff\xe0" + bytes(2000),
    }.items():
        shutil.copytree(p["bag"], root / name)
        (root / name / mcap.name).write_bytes(content)
        p[name] = root / name
    p["bag_no_cameras"] = write_nuscenes_style_bag(
        root / "bag_no_cameras", synthetic_frames(2), _synthetic_cameras(), omit_images=tuple(_synthetic_cameras())
    )

    # YAML: syntax error, empty, a JPEG named .yaml, a calibration whose value is not a number
    p["yaml_syntax"] = root / "broken.yaml"
    p["yaml_syntax"].write_text("/**:\n  ros__parameters:\n    device: [cpu\n")
    p["yaml_empty"] = root / "empty.yaml"
    p["yaml_empty"].write_text("")
    p["yaml_binary"] = root / "image.yaml"
    p["yaml_binary"].write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\xff\xfe" + bytes(range(256)))
    cams = {
        n: conv.CameraCalibration(n, np.array(c["cam2ego"]), n, np.array(c["K"]), (W, H))
        for n, c in _synthetic_cameras().items()
    }
    p["calibration"] = conv.save_calibration(root / "calibration.yaml", cams)
    doc = yaml.safe_load(p["calibration"].read_text())
    doc["cameras"]["CAM_FRONT"]["translation"][1] = "hello"
    p["calibration_value"] = root / "calibration_value.yaml"
    p["calibration_value"].write_text(yaml.safe_dump(doc))
    p["calibration_syntax"] = root / "calibration_syntax.yaml"
    p["calibration_syntax"].write_text(p["calibration"].read_text().replace("cameras:", "cameras: [", 1))

    # datasets: good (a copy of the mini nuScenes tree), a truncated table, an empty table
    p["data"] = mini_nuscenes.root
    for name, mutate in {
        "data_truncated_table": lambda t: t.write_bytes(t.read_bytes()[: t.stat().st_size // 2]),
        "data_empty_table": lambda t: t.write_bytes(b""),
        "data_truncated_splits": lambda t: (t.parents[1] / "splits.json").write_text('{"train": ["scene-a"'),
    }.items():
        shutil.copytree(mini_nuscenes.root, root / name)
        mutate(root / name / mini_nuscenes.version / "sample.json")
        p[name] = root / name

    # outputs that exist (not empty)
    p["out_exists"] = root / "out_exists"
    p["out_exists"].mkdir()
    (p["out_exists"] / "mine.txt").write_text("keep me")
    p["file_exists"] = root / "exists.npz"
    p["file_exists"].write_bytes(b"keep me")
    p["fresh"] = root / "fresh"  # a new output path: must still not exist after every case
    return p


# (id, command line with {name} placeholders, text the error line must contain)
CASES = [
    # drive: the bag is checked before ROS starts (it used to abort with 134), the model before it loads
    ("drive-missing-bag", "drive --bag {missing}", "does not exist"),
    ("drive-dir-not-bag", "drive --bag {dir}", "not a rosbag2 bag folder"),
    ("drive-truncated-mcap", "drive --bag {bag_truncated} --record {fresh}", "cannot be read"),
    ("drive-empty-mcap", "drive --bag {bag_empty}", "cannot be read"),
    ("drive-wrong-kind-mcap", "drive --bag {bag_wrong_kind}", "cannot be read"),
    ("drive-no-camera-topics", "drive --bag {bag_no_cameras} --checkpoint {ckpt}", "holds no camera images"),
    ("drive-truncated-weights", "drive --bag {bag} --checkpoint {ckpt_truncated}", "truncated or not safetensors"),
    (
        "drive-calibration-syntax",
        "drive --bag {bag} --checkpoint {ckpt} --calibration-file {calibration_syntax}",
        "not valid YAML at line",
    ),
    (
        "drive-calibration-value",
        "drive --bag {bag} --checkpoint {ckpt} --calibration-file {calibration_value}",
        "cameras.CAM_FRONT.translation must hold numbers",
    ),
    ("drive-params-dir", "drive --bag {bag} --checkpoint {ckpt} --params-file {dir}", "is a directory, not a file"),
    ("drive-params-syntax", "drive --bag {bag} --checkpoint {ckpt} --params-file {yaml_syntax}", "not valid YAML"),
    ("drive-start-past-end", "drive --bag {bag} --checkpoint {ckpt} --start 1000 --record {fresh}", "past the end"),
    ("drive-record-exists", "drive --bag {bag} --checkpoint {ckpt} --record {out_exists}", "already exists"),
    # play / record
    ("play-missing", "play {missing}", "does not exist"),
    ("play-truncated-mcap", "play {bag_truncated}", "cannot be read"),
    ("play-wrong-kind-file", "play {yaml_syntax}", "is a file, not a rosbag2 bag"),
    ("record-out-exists", "record --out {out_exists}", "already exists"),
    # calibration
    ("calibration-truncated-mcap", "calibration --bag {bag_truncated} --out {fresh}", "cannot be read"),
    ("calibration-empty-table", "calibration --data {data_empty_table} --out {fresh}", "is empty"),
    ("calibration-out-exists", "calibration --bag {bag} --out {file_exists}", "--overwrite"),
    # bag / eval-bag
    ("bag-truncated-table", "bag --data {data_truncated_table} --all --out {fresh}", "truncated or not JSON"),
    ("bag-data-is-file", "bag --data {yaml_empty} --all --out {fresh}", "is a file, not a folder"),
    ("bag-out-exists", "bag --data {data} --all --out {out_exists}", "--overwrite"),
    ("eval-bag-truncated-gt", "eval-bag --gt {bag_truncated} --pred {bag} --out {fresh}", "cannot be read"),
    ("eval-bag-out-exists", "eval-bag --gt {bag} --pred {bag} --out {out_exists}", "already exists"),
    # model commands: checkpoints, datasets, configs
    ("eval-missing-ckpt", "eval --ckpt {missing} --data {data} --out {fresh}", "does not exist"),
    ("eval-ckpt-bad-config", "eval --ckpt {ckpt_bad_yaml} --data {data} --out {fresh}", "not valid YAML"),
    ("eval-truncated-table", "eval --ckpt {ckpt} --data {data_truncated_table} --out {fresh}", "truncated or not JSON"),
    ("eval-out-exists", "eval --ckpt {ckpt} --data {data} --out {out_exists}", "already exists"),
    ("export-empty-weights", "export --ckpt {ckpt_empty} --out {fresh}", "is empty"),
    ("export-wrong-kind-weights", "export --ckpt {ckpt_wrong_kind} --out {fresh}", "not safetensors"),
    ("export-out-exists", "export --ckpt {ckpt} --out {out_exists}", "--overwrite"),
    ("train-config-syntax", "train --stage 1 --config {yaml_syntax} --data {data} --out {fresh}", "not valid YAML"),
    ("train-config-binary", "train --stage 1 --config {yaml_binary} --data {data} --out {fresh}", "not a text file"),
    ("train-data-empty-table", "train --stage 1 --config tiny --data {data_empty_table} --out {fresh}", "is empty"),
    (
        "train-anchors-missing",
        "train --stage 1 --config tiny --data {data} --anchors {missing} --out {fresh}",
        "does not exist",
    ),
    ("train-init-dir", "train --stage 2 --data {data} --init {dir} --out {fresh}", "config"),
    (
        "pretrain-llm-truncated-init",
        "pretrain-llm --init {ckpt_truncated} --data {data} --out {fresh}",
        "truncated or not safetensors",
    ),
    ("anchors-truncated-table", "anchors --data {data_truncated_table} --out {fresh}.npz", "truncated or not JSON"),
    ("anchors-out-exists", "anchors --data {data} --out {file_exists}", "already exists"),
    ("synth-out-exists", "synth --out {out_exists}", "--overwrite"),
    ("inspect-data-missing", "inspect-data --data {missing}", "does not exist"),
    ("info-config-syntax", "info --config {yaml_syntax}", "not valid YAML"),
    ("info-config-empty", "info --config {yaml_empty}", "is empty"),
    (
        "train-anchors-dir",
        "train --stage 1 --config tiny --data {data} --anchors {dir} --out {fresh}",
        "is a directory, not a file",
    ),
    (
        "drive-calibration-dir",
        "drive --bag {bag} --checkpoint {ckpt} --calibration-file {dir}",
        "is a directory, not a file",
    ),
    ("eval-data-truncated-splits", "eval --ckpt {ckpt} --data {data_truncated_splits} --out {fresh}", "split file"),
    ("demo-truncated-ckpt", "demo --ckpt {ckpt_truncated} --out {fresh}", "truncated or not safetensors"),
    ("demo-truncated-bag", "demo --ckpt {ckpt} --bag {bag_truncated} --out {fresh}", "cannot be read"),
    ("demo-out-exists", "demo --ckpt {ckpt} --out {out_exists}", "--overwrite"),
    ("bench-empty-weights", "bench --ckpt {ckpt_empty} --no-node --json {fresh}.json", "is empty"),
    ("closed-loop-missing-ckpt", "closed-loop --ckpt {missing} --out {fresh}", "does not exist"),
]


def _argv(template: str, inputs: dict[str, Path]) -> list[str]:
    return [part.format(**{k: str(v) for k, v in inputs.items()}) for part in template.split()]


@pytest.mark.parametrize("case, template, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line(case, template, expected, inputs, capsys):
    """Exit 2, exactly one error line naming the input and containing ``expected``, no traceback, nothing written."""
    argv = _argv(template, inputs)
    if argv[0] not in commands():
        pytest.skip(f"command {argv[0]} is not in this installation")
    before = {p: sorted(x.name for x in p.iterdir()) for p in (inputs["out_exists"],)}
    t0 = time.monotonic()
    code = main(argv, console=True)
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    print(f"{case}: exit {code}: {lines}")
    assert code == 2, err
    assert len(lines) == 1, err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err
    assert elapsed < 30, f"{case} took {elapsed:.1f} s: the input check must come before anything heavy"
    # the input named: one of the paths of the command line is in the message
    paths = [a for a in argv[1:] if "/" in a]
    assert any(Path(a).name in lines[0] for a in paths), lines[0]
    # nothing written, nothing overwritten
    assert not inputs["fresh"].exists() and not Path(f"{inputs['fresh']}.npz").exists()
    assert not Path(f"{inputs['fresh']}.json").exists()
    assert {p: sorted(x.name for x in p.iterdir()) for p in before} == before
    assert inputs["file_exists"].read_bytes() == b"keep me"


def test_debug_shows_the_traceback(inputs):
    """--debug (anywhere on the command line) raises instead of printing one line."""
    from sparseoccvla_core.cli_inputs import InputError

    with pytest.raises(InputError, match="cannot be read"):
        main(["drive", "--bag", str(inputs["bag_truncated"]), "--debug"], console=True)


def test_truncated_jpeg_in_a_dataset_is_one_line(synthetic_world, tmp_path, capsys):  # noqa: F811
    """A truncated camera JPEG met while loading: one line naming the file, exit 2 (the image decoder's error)."""
    data = tmp_path / "world"
    shutil.copytree(synthetic_world, data)
    for jpg in (data / "samples" / "CAM_FRONT").glob("*.jpg"):
        jpg.write_bytes(jpg.read_bytes()[:300])
    code = main(["inspect-data", "--data", str(data), "--items", "1"], console=True)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "CAM_FRONT" in lines[0] and ".jpg" in lines[0], lines[0]


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def test_drive_with_a_missing_bag_exits_2_before_ros(tmp_path):
    """The real console command: one line, exit 2 (it used to start ROS first and abort with 134)."""
    proc = _run([*SPARSEOCCVLA, "drive", "--bag", str(tmp_path / "nonexistent"), "--record", str(tmp_path / "rec")])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr, proc.stderr
    assert "terminate called" not in proc.stderr and not (tmp_path / "rec").exists()


def test_play_warns_about_a_bag_without_camera_images(inputs):
    """play still plays such a bag (its other topics may be useful) but says that a driving node gets nothing."""
    proc = _run([*SPARSEOCCVLA, "play", str(inputs["bag_no_cameras"]), "--delay", "0", "--quiet", "--rate", "4"])
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "no camera image topics" in warnings[0] and "/odom" in warnings[0], proc.stderr


def test_driving_node_with_a_broken_calibration_file_is_one_line(inputs):
    """The node itself: a calibration YAML with a syntax error -> one line naming file and line, exit 2."""
    proc = _run(
        [
            sys.executable,
            "-m",
            "sparseoccvla_ros.driving_node",
            "--ros-args",
            "-p",
            f"checkpoint:={inputs['ckpt']}",
            "-p",
            f"calibration_file:={inputs['calibration_syntax']}",
        ]
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "error:" in line]
    assert len(lines) == 1 and "calibration_syntax.yaml" in lines[0] and "line" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_driving_node_with_a_truncated_checkpoint_is_one_line(inputs):
    """The node itself: a checkpoint whose weights are cut short -> one line naming the file, exit 2 (it used to stay
    up with only a model ERROR diagnostic, doing nothing)."""
    proc = _run(
        [
            sys.executable,
            "-m",
            "sparseoccvla_ros.driving_node",
            "--ros-args",
            "-p",
            f"checkpoint:={inputs['ckpt_truncated']}",
            "-p",
            f"calibration_file:={inputs['calibration']}",
        ]
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("driving_node: error:")]
    assert len(lines) == 1 and "model.safetensors" in lines[0] and "truncated" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_ctrl_c_midway_removes_the_unfinished_output(tmp_path):
    """Ctrl-C while ``synth`` writes: exit 130, one line, and the half-written dataset is removed."""
    out = tmp_path / "world"
    cmd = [*SPARSEOCCVLA, "synth", "--out", str(out), "--scenes", "4", "--frames", "40"]
    cmd += ["--width", "160", "--height", "96", "--workers", "1"]
    # A runner started in the background (nohup, `cmd &`) ignores SIGINT and its children inherit that: give the
    # command the default disposition, as a terminal's Ctrl-C finds it.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 90
    while not (out / "samples").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "synth ended before it could be interrupted"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    assert not out.exists()
