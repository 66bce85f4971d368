"""Closed loop over real rclpy (docs/closed_loop.md §6): sim_node against a scripted planner node (NaN plan, silence),
one short episode of ``sparseoccvla closed-loop`` with a throwaway tiny checkpoint, and Ctrl-C mid-episode."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from sparseoccvla_core import SparseOccVLA, SparseOccVLAConfig

    path = tmp_path_factory.mktemp("ckpt")
    SparseOccVLA(SparseOccVLAConfig.tiny(max_new_tokens=4)).save_pretrained(path)
    return path


def test_sim_node_brakes_on_nan_and_missing_plans_and_reports_them():
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy
    from sensor_msgs.msg import CompressedImage
    from std_msgs.msg import String

    from sparseoccvla_core.batch import CAMERA_NAMES
    from sparseoccvla_core.closed_loop.scenarios import ScenarioSpec
    from sparseoccvla_msgs.msg import DrivingPlan
    from sparseoccvla_ros.closed_loop.sim_node import SimNode

    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    sim = SimNode("lockstep", plan_timeout_s=1.0, width=160, height=90, context=ctx,
                  cli_args=["--ros-args", "-r", "~/input/plan:=/fake/plan"])  # fmt: skip
    fake = rclpy.create_node("fake_planner", context=ctx)
    pub = fake.create_publisher(DrivingPlan, "/fake/plan", 10)
    frames, diags, events = [], [], []

    def on_image(msg):  # frame 2: NaN waypoints; frame 3: no answer; otherwise straight ahead at 10 m/s
        k = len(frames)
        frames.append(msg.header.stamp)
        if k == 3:
            return
        plan = DrivingPlan()
        plan.header = msg.header
        plan.waypoint_dt = 0.5
        for i in range(6):
            p = PoseStamped()
            p.pose.position.x = float("nan") if k == 2 else 5.0 * (i + 1)
            plan.path.poses.append(p)
        pub.publish(plan)

    qos = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
    for cam in CAMERA_NAMES:  # sim_node starts once every camera has a subscriber
        cb = on_image if cam == "CAM_FRONT" else (lambda msg: None)
        fake.create_subscription(CompressedImage, f"/{cam}/image_rect_compressed", cb, qos)
    fake.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diags.extend(m.status), 10)
    fake.create_subscription(String, "/sim/events", lambda m: events.append(json.loads(m.data)), 10)
    executors = []
    for n in (sim, fake):
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(n)
        threading.Thread(target=ex.spin, daemon=True).start()
        executors.append(ex)
    try:
        assert sim.wait_for_driver(10.0)
        res = sim.run_episode(ScenarioSpec(0, 2000, "straight", duration_s=3.0))
        time.sleep(0.5)
    finally:
        for ex in executors:
            ex.shutdown(timeout_sec=2.0)
        sim.destroy_node()
        fake.destroy_node()
        rclpy.try_shutdown(context=ctx)
    assert len(frames) == 6
    kinds = [(e.frame, e.kind) for e in res.events if e.kind in ("invalid_plan", "no_plan")]
    assert kinds == [(2, "invalid_plan"), (3, "no_plan")]
    assert [f.status for f in res.log.frames] == ["ok", "ok", "invalid", "missing", "ok", "ok"]
    v = res.log.ego[:, 3]
    braking = res.log.braking
    assert braking.sum() == 20 and np.all(np.diff(v)[braking[1:]] < 0)  # two key frames at -4 m/s^2
    assert res.metrics["invalid_plan_frames"] == 1 and res.metrics["no_plan_frames"] == 1
    reported = {e.get("kind") for e in events}
    assert {"invalid_plan", "no_plan", "episode_end"} <= reported
    warn = [d for d in diags if d.name.endswith("sim_node: planner") and d.level == b"\x01"]
    assert len(warn) == 2 and "no plan" in warn[1].message


def test_sim_node_real_time_applies_late_plans_and_brakes_when_they_stop():
    """Real time: the world does not wait; plans arriving 0.2 s late are applied, silence past the timeout brakes."""
    import rclpy
    from geometry_msgs.msg import PoseStamped
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import CompressedImage

    from sparseoccvla_core.batch import CAMERA_NAMES
    from sparseoccvla_core.closed_loop.scenarios import ScenarioSpec
    from sparseoccvla_msgs.msg import DrivingPlan
    from sparseoccvla_ros.closed_loop.sim_node import SimNode

    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    sim = SimNode("realtime", plan_timeout_s=1.0, width=160, height=90, context=ctx,
                  cli_args=["--ros-args", "-r", "~/input/plan:=/fake/plan"])  # fmt: skip
    fake = rclpy.create_node("fake_planner", context=ctx)
    pub = fake.create_publisher(DrivingPlan, "/fake/plan", 10)
    frames = []

    def answer(header):
        plan = DrivingPlan()
        plan.header = header
        for i in range(6):
            p = PoseStamped()
            p.pose.position.x = 5.0 * (i + 1)
            plan.path.poses.append(p)
        pub.publish(plan)

    def on_image(msg):  # frames 0..2 answered 0.2 s late, then silence
        frames.append(msg.header.stamp)
        if len(frames) <= 3:
            threading.Timer(0.2, answer, args=(msg.header,)).start()

    for cam in CAMERA_NAMES:
        fake.create_subscription(CompressedImage, f"/{cam}/image_rect_compressed",
                                 on_image if cam == "CAM_FRONT" else (lambda m: None), 10)  # fmt: skip
    executors = []
    for n in (sim, fake):
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(n)
        threading.Thread(target=ex.spin, daemon=True).start()
        executors.append(ex)
    try:
        assert sim.wait_for_driver(10.0)
        t0 = time.monotonic()
        res = sim.run_episode(ScenarioSpec(0, 2000, "straight", duration_s=3.0))
        wall = time.monotonic() - t0
    finally:
        for ex in executors:
            ex.shutdown(timeout_sec=2.0)
        sim.destroy_node()
        fake.destroy_node()
        rclpy.try_shutdown(context=ctx)
    assert wall >= 2.9  # paced by the wall clock
    assert [f.status for f in res.log.frames[:3]] == ["ok", "ok", "ok"]
    delay = res.metrics["plan_delay_s"]
    assert delay["plans"] == 3 and 0.15 <= delay["mean"] <= delay["max"] < 1.0  # answered 0.2 s (wall) late
    stale = [e for e in res.events if e.kind == "no_plan"]
    assert len(stale) == 1 and "real time" in stale[0].text and 2.0 <= stale[0].t <= 2.1
    v = res.log.ego[:, 3]
    braking = res.log.t > stale[0].t
    assert np.all(np.diff(v)[braking[1:]] < 0) and not res.log.braking[res.log.t <= 2.0].any()


def _read_bag(path: Path) -> dict:
    from rosbags.rosbag2 import Reader

    counts = {}
    with Reader(path) as reader:
        for conn, _, _ in reader.messages():
            counts[conn.topic] = counts.get(conn.topic, 0) + 1
    return counts


@pytest.mark.slow
def test_closed_loop_command_one_short_episode(tiny_checkpoint, tmp_path):
    """One short episode over real DDS, twice: every plan crosses, the recording reads back, identical metrics."""
    from sparseoccvla_core.cli import main

    docs = []
    for run in ("a", "b"):
        out = tmp_path / run
        args = ["closed-loop", "--ckpt", str(tiny_checkpoint), "--episodes", "1", "--kinds", "braking_lead",
                "--duration", "2", "--baselines", "expert", "--width", "320", "--height", "180", "--out", str(out)]  # fmt: skip
        assert main(args) == 0
        docs.append(json.loads((out / "metrics.json").read_text()))
    doc = docs[0]
    model = doc["planners"]["model"]["episodes"]["00-braking_lead"]
    assert model["metrics"]["no_plan_frames"] == 0 and model["metrics"]["invalid_plan_frames"] == 0  # 4 plans over DDS
    assert model["metrics"] == docs[1]["planners"]["model"]["episodes"]["00-braking_lead"]["metrics"]  # lockstep
    assert doc["planners"]["expert"]["episodes"]["00-braking_lead"]["metrics"]["collisions_at_fault"] == 0
    assert doc["run"]["real_time_factor"] > 0 and doc["run"]["node"]["frames_published"] == 4
    out = tmp_path / "a"
    counts = _read_bag(out / "recording")
    assert counts["/sparseoccvla/driving_node/output/plan"] == 4
    assert counts["/CAM_BACK/image_rect_compressed"] == 4 and counts["/odom"] == 4
    assert counts["/sim/events"] >= 1 and counts["/tf_static"] >= 1
    html = (out / "closed_loop.html").read_text()
    assert "images/model_00-braking_lead.png" in html and (out / "images" / "model_00-braking_lead.png").is_file()


@pytest.mark.slow
def test_ctrl_c_mid_episode_leaves_a_finalized_recording(tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sparseoccvla_core.cli", "closed-loop", "--ckpt", str(tiny_checkpoint),
           "--episodes", "1", "--kinds", "straight", "--duration", "30", "--baselines", "none",
           "--width", "320", "--height", "180", "--out", str(out)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 240
        for line in proc.stderr:
            lines.append(line)
            if "key frame 3/60" in line:
                proc.send_signal(signal.SIGINT)
                break
            assert time.monotonic() < deadline, "".join(lines[-20:])
        _, rest = proc.communicate(timeout=120)
        lines.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(lines)
    assert proc.returncode == 130, text[-3000:]
    assert "recording finalized" in text
    counts = _read_bag(out / "recording")  # readable: metadata written, MCAP closed
    assert 3 <= counts["/CAM_FRONT/image_rect_compressed"] < 60
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["run"]["interrupted"] is True
    assert doc["planners"]["model"]["episodes"]["00-straight"]["metrics"]["duration_s"] < 30


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--episodes", "0"], "--episodes must be >= 1"),
        (["--kinds", "straight,flying"], "unknown scenario kind(s) flying"),
        (["--baselines", "oracle", "--no-model"], "unknown baseline(s) oracle"),
        (["--plan-timeout", "0"], "--plan-timeout must be > 0"),
        (["--ckpt", "/nonexistent/ckpt"], "/nonexistent/ckpt is missing"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    from sparseoccvla_core.cli import main

    assert main(["closed-loop", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sparseoccvla closed-loop: error:") and message in err[0]
    assert not (tmp_path / "out").exists()
