"""Nothing is lost between the driving node and a recorder (issue 22, part A), over real rclpy and DDS.

The node's outputs are reliable, transient local, keep last ``output_history_depth`` (docs/ros_conventions.md §4).
With depth 1 a message a subscriber had not acknowledged yet was replaced by the next camera set's before DDS re-sent
it, and a recorder that matched after the first outputs never got them.  These tests replay bags at 2x and 4x in a
loop while another process burns a CPU, record with ``sparseoccvla record`` in its own process (as the launch file
runs it), and check by stamp that every output of every published set was recorded; and that a recorder that joins
after the outputs were published still receives them.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from test_replay_ros import (  # noqa: E402
    H,
    W,
    _read_outputs,
    _synthetic_cameras,
    synthetic_frames,
    write_nuscenes_style_bag,
)

from sparseoccvla_ros import conversions as conv  # noqa: E402

pytestmark = pytest.mark.ros

#: The outputs every processed camera set yields (explanation has no header: counted, not matched by stamp).
STAMPED_OUTPUTS = ("occupancy", "forecast", "forecast_cloud", "plan", "path")
CLI = [sys.executable, "-m", "sparseoccvla_core.cli"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from sparseoccvla_core.config import SparseOccVLAConfig
    from sparseoccvla_core.model import SparseOccVLA

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt")
    SparseOccVLA(SparseOccVLAConfig.tiny(max_new_tokens=8)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    cams = {
        name: conv.CameraCalibration(name, np.array(c["cam2ego"]), name, np.array(c["K"]), (W, H))
        for name, c in _synthetic_cameras().items()
    }
    return conv.save_calibration(tmp_path_factory.mktemp("calib") / "calibration.yaml", cams)


class CpuBurner:
    """A bounded busy loop in another process (the 'machine under load'); killed on exit, ends by itself anyway."""

    def __init__(self, seconds: float = 60.0) -> None:
        code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
        self.proc = subprocess.Popen([sys.executable, "-S", "-c", code])

    def __enter__(self) -> "CpuBurner":
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


def _spy_published(node) -> list[int]:
    """Stamps of every camera set the node publishes (wraps its publish step; the messages still go out)."""
    stamps: list[int] = []
    original = node._publish_result

    def publish(pipe, result):
        original(pipe, result)
        stamps.append(result.stamp_ns)

    node._publish_result = publish
    return stamps


def _wait_subscribed(node, timeout_s: float = 60.0) -> None:
    """Until an outside subscriber (the recorder process) matched every output publisher of the node."""
    pubs = [node._pub_occupancy, node._pub_forecast, node._pub_forecast_cloud, node._pub_plan, node._pub_path]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(p.get_subscription_count() > 0 for p in pubs):
            return
        time.sleep(0.05)
    raise AssertionError("the recorder process never subscribed to the node's outputs")


def _stop_recorder(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == 0, err
    return err


@pytest.mark.slow
@pytest.mark.parametrize("rate", [2.0, 4.0])
def test_looped_replay_under_load_records_every_published_output(rate, checkpoint, calibration, tmp_path):
    """N camera sets published -> N of each output recorded, by stamp, at 2x and 4x, two loop passes, with a CPU
    burner beside the node and the recorder in its own process (what ros2 launch runs)."""
    from sparseoccvla_ros.bringup import Bringup

    frames = synthetic_frames(8, seed=11)
    bag = write_nuscenes_style_bag(tmp_path / "bag", frames, _synthetic_cameras())
    out = tmp_path / "rec"
    recorder = subprocess.Popen([*CLI, "record", "--out", str(out)], stderr=subprocess.PIPE, text=True)
    b = None
    err = ""
    try:
        b = Bringup(
            bag, checkpoint, rate=rate, loop=True, progress=False, parameters=[f"calibration_file:={calibration}"]
        )
        b.player.max_passes = 2
        published = _spy_published(b.node)
        _wait_subscribed(b.node)
        with CpuBurner():
            assert b.run() == 0
        time.sleep(1.0)  # reliable re-sends still in flight reach the recorder before it is stopped
    finally:
        try:
            if b is not None:
                b.close()
        finally:
            err = _stop_recorder(recorder)
    rec = _read_outputs(out)
    assert published, "the node published nothing"
    counts = {k: len(rec.get(k, [])) for k in (*STAMPED_OUTPUTS, "explanation")}
    print(f"\n[{rate}x looped, under load] published {len(published)} sets; recorded {counts}\n{err.strip()}")
    for key in STAMPED_OUTPUTS:
        assert sorted(s for _, s, _ in rec.get(key, [])) == sorted(published), key
    assert counts["explanation"] == len(published)


def test_recorder_that_joins_late_still_gets_the_outputs(checkpoint, calibration, tmp_path):
    """The first-message race: a recorder that subscribes only after the node published its outputs still receives
    them (transient local history of the node; the recorder asks for transient local because the node offers it)."""
    from sparseoccvla_ros.bringup import Bringup
    from sparseoccvla_ros.replay.recorder import BagRecorder, default_topics

    frames = synthetic_frames(3, seed=12)
    bag = write_nuscenes_style_bag(tmp_path / "bag", frames, _synthetic_cameras())
    b = Bringup(bag, checkpoint, rate=2.0, progress=False, parameters=[f"calibration_file:={calibration}"])
    try:
        published = _spy_published(b.node)
        assert b.wait_ready()
        b.play()
        b.wait_outputs_done()
        assert len(published) == 3
        # now a recorder on its own context (its own DDS participant) appears
        ctx = rclpy.context.Context()
        rclpy.init(context=ctx)
        try:
            node = rclpy.create_node("late_recorder", context=ctx)
            rec = BagRecorder(node, tmp_path / "late", default_topics())
            from rclpy.executors import SingleThreadedExecutor

            ex = SingleThreadedExecutor(context=ctx)
            ex.add_node(node)
            spin = threading.Thread(target=ex.spin, daemon=True)
            spin.start()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and rec.count_under("/output/") < 3 * len(STAMPED_OUTPUTS):
                time.sleep(0.05)
            time.sleep(0.3)
            rec.close()
            ex.shutdown()
            node.destroy_node()
        finally:
            rclpy.try_shutdown(context=ctx)
    finally:
        b.close()
    got = _read_outputs(tmp_path / "late")
    for key in STAMPED_OUTPUTS:
        assert sorted(s for _, s, _ in got.get(key, [])) == sorted(published), key


def test_sim_time_recorder_uses_one_time_base(tmp_path):
    """Under use_sim_time, a message that arrives before the first /clock is logged at the first /clock time, not at
    wall time: every log time of the bag is on the bag's clock."""
    from builtin_interfaces.msg import Time
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
    from rosbags.rosbag2 import Reader
    from rosgraph_msgs.msg import Clock
    from std_msgs.msg import String

    from sparseoccvla_ros.replay.recorder import BagRecorder

    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    try:
        rnode = rclpy.create_node(
            "sim_recorder", context=ctx, parameter_overrides=[Parameter("use_sim_time", value=True)]
        )
        pnode = rclpy.create_node("sim_publisher", context=ctx)
        qos = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.VOLATILE)
        pub = pnode.create_publisher(String, "/sim_test/output/text", qos)
        clock_pub = pnode.create_publisher(Clock, "/clock", 10)
        rec = BagRecorder(rnode, tmp_path / "sim", ["/sim_test/output/"], poll_s=0.05)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(rnode)
        spin = threading.Thread(target=ex.spin, daemon=True)
        spin.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and pub.get_subscription_count() == 0:
            time.sleep(0.05)
        pub.publish(String(data="before the clock"))
        while time.monotonic() < deadline and rec.total < 1:
            time.sleep(0.02)
        assert rec.total == 1
        bag_ns = 1_532_402_927_000_000_000  # a nuScenes-era time, years from the wall clock
        for _ in range(20):  # /clock is best effort in rclpy: send it a few times
            clock_pub.publish(Clock(clock=Time(sec=bag_ns // 10**9, nanosec=bag_ns % 10**9)))
            time.sleep(0.02)
        pub.publish(String(data="after the clock"))
        while time.monotonic() < deadline and rec.total < 2:
            time.sleep(0.02)
        time.sleep(0.2)
        rec.close()
        ex.shutdown()
    finally:
        rclpy.try_shutdown(context=ctx)
    with Reader(tmp_path / "sim") as reader:
        log_times = [t for _, t, _ in reader.messages()]
    assert len(log_times) == 2
    assert all(abs(t - bag_ns) < 60 * 10**9 for t in log_times), log_times


def test_eval_bag_reports_incomplete_sets(tmp_path):
    """eval-bag's completeness check: a set whose forecast is missing is reported, and so are sets the node published
    (its last inference status) that the recording lacks."""
    from sparseoccvla_ros.replay.eval_bag import PredBag, PredOutput, completeness_warnings, output_completeness

    outputs = {
        "occupancy": {1: PredOutput(1, 0, None), 2: PredOutput(2, 0, None), 3: PredOutput(3, 0, None)},
        "forecast": {1: PredOutput(1, 0, None), 3: PredOutput(3, 0, None)},
        "plan": {1: PredOutput(1, 0, None), 2: PredOutput(2, 0, None), 3: PredOutput(3, 0, None)},
    }
    pred = PredBag(
        Path(tmp_path),
        outputs,
        {"occupancy": 0, "forecast": 0, "plan": 0},
        {},
        {},
        {"occupancy": "o", "forecast": "f", "plan": "p"},
        {"frames_published": "4"},
    )
    comp = output_completeness(pred)
    assert comp["incomplete_sets"] == 1 and comp["incomplete_stamps"] == [2]
    assert comp["missing_by_kind"] == {"occupancy": 0, "forecast": 1, "plan": 0}
    assert comp["frames_published"] == 4 and comp["not_recorded"] == 1
    lines = completeness_warnings(comp)
    assert len(lines) == 2 and "forecast 1" in lines[0] and "never reached the recorder" in lines[1]
    whole = PredBag(
        Path(tmp_path),
        {k: dict(outputs["plan"]) for k in outputs},
        pred.duplicates,
        {},
        {},
        pred.topics_found,
        {"frames_published": "3"},
    )
    assert completeness_warnings(output_completeness(whole)) == []
