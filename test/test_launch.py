"""Bringup files: the RViz config against the live ROS graph, and launch/driving.launch.py run by the real
``ros2 launch`` (the upstream launch system from ``../shared/ros2_full``, installed into the venv as test tooling),
with an AST check of the launch file as the fallback where that is absent.
"""

from __future__ import annotations

import ast
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "driving.launch.py"
RVIZ_FILE = REPO / "rviz" / "sparseoccvla.rviz"
ROS2_FULL = REPO.parent / "shared" / "ros2_full"
VENV = Path(sys.prefix)

#: RViz display class -> message type it subscribes (ros2/rviz rviz_default_plugins plugin_description.xml).
RVIZ_DISPLAY_TYPES = {
    "rviz_default_plugins/PointCloud2": "sensor_msgs/msg/PointCloud2",
    "rviz_default_plugins/Path": "nav_msgs/msg/Path",
    "rviz_default_plugins/MarkerArray": "visualization_msgs/msg/MarkerArray",
    "rviz_default_plugins/Marker": "visualization_msgs/msg/Marker",
    "rviz_default_plugins/Image": "sensor_msgs/msg/Image",
}
REQUIRED_LAUNCH_ARGS = {"bag", "checkpoint", "rate", "use_sim_time", "rviz", "record", "params_file", "namespace"}


def rviz_subscriptions(path: Path = RVIZ_FILE) -> list[tuple[str, str, str]]:
    """(display name, topic, message type) of every topic display; images follow image_transport naming
    (``<base>/compressed`` -> sensor_msgs/CompressedImage on that topic, as RViz2's Image display does)."""
    cfg = yaml.safe_load(path.read_text())
    out = []
    for d in cfg["Visualization Manager"]["Displays"]:
        if "Topic" not in d:
            continue
        topic = d["Topic"]["Value"]
        msgtype = RVIZ_DISPLAY_TYPES[d["Class"]]
        if d["Class"] == "rviz_default_plugins/Image" and topic.endswith("/compressed"):
            msgtype = "sensor_msgs/msg/CompressedImage"
        out.append((d["Name"], topic, msgtype))
    return out


# ---------------------------------------------------------------------- RViz file
def test_rviz_file_structure():
    pytest.importorskip("rclpy", reason="rclpy is not installed (run scripts/install.sh)")
    from sparseoccvla_core.batch import CAMERA_NAMES
    from sparseoccvla_ros.driving_node import PARAMETERS

    cfg = yaml.safe_load(RVIZ_FILE.read_text())
    assert cfg["Visualization Manager"]["Global Options"]["Fixed Frame"] == PARAMETERS["frame_id"].default
    subs = rviz_subscriptions()
    images = {t for _, t, m in subs if m == "sensor_msgs/msg/CompressedImage"}
    assert images == {f"/{cam}/image_rect/compressed" for cam in CAMERA_NAMES}
    kinds = {t.rsplit("/", 1)[-1] for _, t, _ in subs}
    assert {"occupancy", "forecast_cloud", "path", "markers"} <= kinds
    occupancy = next(
        d
        for d in cfg["Visualization Manager"]["Displays"]
        if d.get("Topic", {}).get("Value", "").endswith("/output/occupancy")
    )
    assert occupancy["Color Transformer"] == "RGB8"  # class colours from the cloud's rgb field
    marker_ns = set()
    for d in cfg["Visualization Manager"]["Displays"]:
        if d["Class"] == "rviz_default_plugins/MarkerArray":
            marker_ns |= {ns for ns, on in d["Namespaces"].items() if on}
    assert {"anchors", "explanation"} <= marker_ns
    # the node's markers use those namespaces (anchors scored, explanation text)
    markers_src = (REPO / "sparseoccvla_ros" / "markers.py").read_text()
    for ns in marker_ns:
        assert f'ns="{ns}"' in markers_src, ns


@pytest.mark.ros
def test_rviz_topics_are_published_by_the_running_nodes(tmp_path):
    """Every topic + type the RViz file names is on the live graph: the driving node's outputs (started with the
    launch file's remaps) and the player's cameras (after the launch file's rviz remaps); the occupancy cloud
    carries the rgb field RViz's RGB8 transformer reads."""
    rclpy = pytest.importorskip("rclpy")
    pytest.importorskip("sparseoccvla_msgs.msg")

    from sparseoccvla_core.config import SparseOccVLAConfig
    from sparseoccvla_core.model import SparseOccVLA
    from sparseoccvla_ros import conversions as conv
    from sparseoccvla_ros.bringup import REPO_PARAMS, node_cli_args
    from sparseoccvla_ros.driving_node import DrivingNode
    from sparseoccvla_ros.replay import topics
    from sparseoccvla_ros.replay.player import BagPlayer

    sys.path.insert(0, str(REPO / "test"))
    from test_replay_ros import _synthetic_cameras, synthetic_frames, write_nuscenes_style_bag

    ckpt = tmp_path / "ckpt"
    SparseOccVLA(SparseOccVLAConfig.tiny(max_new_tokens=4)).save_pretrained(ckpt)
    cams = {
        n: conv.CameraCalibration(n, np.array(c["cam2ego"]), n, np.array(c["K"]), (c["width"], c["height"]))
        for n, c in _synthetic_cameras().items()
    }
    calib = conv.save_calibration(tmp_path / "calibration.yaml", cams)
    bag = write_nuscenes_style_bag(tmp_path / "bag", synthetic_frames(1), _synthetic_cameras())

    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    nodes = []
    try:
        node = DrivingNode(
            context=ctx,
            namespace=topics.NODE_NAMESPACE,
            cli_args=node_cli_args(REPO_PARAMS, extra=[f"checkpoint:={ckpt}", f"calibration_file:={calib}"]),
        )
        nodes.append(node)
        player_node = rclpy.create_node("bag_player", context=ctx)
        nodes.append(player_node)
        player = BagPlayer(player_node, bag, progress=False)
        rviz_remap = dict(topics.rviz_remaps())
        published: dict[str, set[str]] = {}
        for n, ns in ((node, topics.NODE_NAMESPACE), (player_node, "/")):
            for name, types in n.get_publisher_names_and_types_by_node(n.get_name(), ns):
                published.setdefault(name, set()).update(types)
        for display, topic, msgtype in rviz_subscriptions():
            wire = rviz_remap.get(topic, topic)
            assert wire in published, f"RViz display '{display}' subscribes {wire}, which no node publishes"
            assert msgtype in published[wire], f"'{display}': {wire} carries {published[wire]}, RViz expects {msgtype}"
        # and the node subscribes exactly the camera topics the player publishes (same remaps as the launch file),
        # which it does once its model is loaded and warmed up
        wanted = {topics.image_topic(c) for c in topics.CAMERA_NAMES}
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline:
            subs = {n for n, _ in node.get_subscriber_names_and_types_by_node(node.get_name(), topics.NODE_NAMESPACE)}
            if wanted <= subs:
                break
            time.sleep(0.1)
        assert wanted <= subs, f"node subscriptions {sorted(subs)}"
        assert "rgb" in conv.OCCUPANCY_DTYPE.names  # what RViz's RGB8 colour transformer reads
        player.close()
    finally:
        for n in nodes:
            n.destroy_node()
        rclpy.shutdown(context=ctx)


# ---------------------------------------------------------------------- launch file: AST (always)
def _declared_arguments(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", "")) == "DeclareLaunchArgument"
        ):
            if node.args and isinstance(node.args[0], ast.Constant):
                names.add(node.args[0].value)
    return names


def test_launch_file_arguments_and_remaps_in_one_place():
    tree = ast.parse(LAUNCH_FILE.read_text())
    assert REQUIRED_LAUNCH_ARGS <= _declared_arguments(tree)
    calls = {
        f"{getattr(n.func.value, 'id', '')}.{n.func.attr}"
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
    }
    assert {"topics.node_remaps", "topics.rviz_remaps"} <= calls  # the remaps come from replay/topics.py
    text = LAUNCH_FILE.read_text()
    assert "image_rect_compressed" not in text and "CAM_FRONT" not in text  # no hand-written topic lists


# ---------------------------------------------------------------------- launch file: the real ros2 launch
def _ros2_launch_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["AMENT_PREFIX_PATH"] = str(VENV)
    env.pop("PYTHONPATH", None)
    return env


@pytest.fixture(scope="module")
def colcon_install(tmp_path_factory):
    """ros2_full installed into the venv + colcon build of this repository into a temporary workspace."""
    if not ROS2_FULL.is_dir():
        pytest.skip(f"{ROS2_FULL} is absent (the real ros2 launch sources beside the checkout); AST check only")
    env = _ros2_launch_env()
    r = subprocess.run(
        ["bash", str(ROS2_FULL / "install.sh")],
        env={**env, "VENV": str(VENV)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, f"ros2_full/install.sh failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    if shutil.which("colcon", path=env["PATH"]) is None:
        pytest.skip("colcon is not installed (pip install colcon-common-extensions)")
    ws = tmp_path_factory.mktemp("ws")
    r = subprocess.run(
        [
            "colcon",
            "--log-base",
            str(ws / "log"),
            "build",
            "--build-base",
            str(ws / "build"),
            "--install-base",
            str(ws / "install"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode == 0, f"colcon build failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return ws / "install"


@pytest.mark.ros
@pytest.mark.slow
def test_ros2_launch_player_node_recorder_and_ctrl_c(colcon_install, tmp_path):
    """`ros2 launch sparseoccvla_ros driving.launch.py bag:=... record:=...` on the colcon install: the player's
    camera sets reach the node, its outputs reach the recorder, and Ctrl-C to the launch's process group stops
    every process cleanly with a finalized recording."""
    rclpy = pytest.importorskip("rclpy")
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy

    from sparseoccvla_core.config import SparseOccVLAConfig
    from sparseoccvla_core.model import SparseOccVLA
    from sparseoccvla_msgs.msg import DrivingPlan
    from sparseoccvla_ros import conversions as conv

    sys.path.insert(0, str(REPO / "test"))
    from test_replay_ros import _read_outputs, _synthetic_cameras, synthetic_frames, write_nuscenes_style_bag

    ckpt = tmp_path / "ckpt"
    SparseOccVLA(SparseOccVLAConfig.tiny(max_new_tokens=4)).save_pretrained(ckpt)
    frames = synthetic_frames(4)
    bag = write_nuscenes_style_bag(tmp_path / "bag", frames, _synthetic_cameras())  # extrinsics on /tf_static
    out = tmp_path / "outputs"
    params = colcon_install / "sparseoccvla_ros" / "share" / "sparseoccvla_ros" / "config" / "driving.yaml"
    assert params.is_file()
    cmd = (
        f"source {colcon_install}/setup.bash && export AMENT_PREFIX_PATH=$AMENT_PREFIX_PATH:{VENV} && "
        f"exec ros2 launch sparseoccvla_ros driving.launch.py checkpoint:={ckpt} bag:={bag} record:={out} "
        f"rviz:=false linger:=120 rate:=0.25"
    )  # a key frame every 2 s: this checks the plumbing, not throughput (the node keeps only the newest set when
    # it falls behind, by design, and on a loaded 2-core machine its first steps have taken ~1.5 s; `sparseoccvla
    # bench` measures the rates it sustains)
    env = _ros2_launch_env()
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    probe = rclpy.create_node("launch_probe", context=ctx)
    plans = []
    probe.create_subscription(
        DrivingPlan,
        "/sparseoccvla/driving_node/output/plan",
        lambda m: plans.append(conv.stamp_to_ns(m.header.stamp)),
        QoSProfile(depth=50, reliability=QoSReliabilityPolicy.RELIABLE),
    )
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(probe)
    th = threading.Thread(target=ex.spin, daemon=True)
    th.start()
    log = open(tmp_path / "launch.log", "w")
    proc = subprocess.Popen(
        ["bash", "-c", cmd], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )  # its own process group: Ctrl-C goes to launch + children
    try:
        expected = [f["stamps"]["CAM_FRONT"] for f in frames]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None and not set(expected) <= set(plans):
            time.sleep(0.2)
        assert set(expected) <= set(plans), f"plans {plans}; log:\n{(tmp_path / 'launch.log').read_text()[-4000:]}"
        time.sleep(1.0)  # let the recorder write the last outputs
        t_int = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=60)
        stop_s = time.monotonic() - t_int
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        ex.shutdown()
        probe.destroy_node()
        rclpy.shutdown(context=ctx)
        th.join(timeout=5)
    text = (tmp_path / "launch.log").read_text()
    assert code == 0, f"ros2 launch exited {code}:\n{text[-4000:]}"
    assert stop_s < 30, f"Ctrl-C took {stop_s:.1f} s"
    assert "Traceback" not in text, text[-4000:]
    rec = _read_outputs(out)
    # every output of every camera set, the first one included (it used to be lost to late discovery, issue 22)
    for key in ("plan", "path", "occupancy", "forecast", "forecast_cloud"):
        assert sorted({s for _, s, _ in rec.get(key, [])}) == sorted(expected), key
    assert len(rec.get("explanation", [])) >= len(expected)


@pytest.mark.ros
@pytest.mark.slow
def test_ros2_launch_sim_time_exits_when_the_bag_ends(colcon_install, tmp_path):
    """use_sim_time:=true (player /clock at 100 Hz, node and recorder on sim time): the launch shuts itself down
    `linger` s after the bag ends, with exit status 0, and the recording holds every key frame's outputs with log
    times on the bag's clock."""
    from sparseoccvla_core.config import SparseOccVLAConfig
    from sparseoccvla_core.model import SparseOccVLA

    sys.path.insert(0, str(REPO / "test"))
    from test_replay_ros import _read_outputs, _synthetic_cameras, synthetic_frames, write_nuscenes_style_bag

    ckpt = tmp_path / "ckpt"
    SparseOccVLA(SparseOccVLAConfig.tiny(max_new_tokens=4)).save_pretrained(ckpt)
    frames = synthetic_frames(4, seed=7)
    bag = write_nuscenes_style_bag(tmp_path / "bag", frames, _synthetic_cameras())
    out = tmp_path / "outputs"
    cmd = (
        f"source {colcon_install}/setup.bash && export AMENT_PREFIX_PATH=$AMENT_PREFIX_PATH:{VENV} && "
        f"exec ros2 launch sparseoccvla_ros driving.launch.py checkpoint:={ckpt} bag:={bag} record:={out} "
        f"rviz:=false use_sim_time:=true linger:=4"
    )
    with open(tmp_path / "launch.log", "w") as log:
        proc = subprocess.Popen(
            ["bash", "-c", cmd], env=_ros2_launch_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = (tmp_path / "launch.log").read_text()
    assert code == 0 and "bag finished" in text, text[-4000:]
    rec = _read_outputs(out)
    expected = [f["stamps"]["CAM_FRONT"] for f in frames]
    counts = {k: len(rec.get(k, [])) for k in ("occupancy", "forecast", "forecast_cloud", "plan", "path")}
    print(f"\n[ros2 launch, sim time, bag to the end] {len(expected)} camera sets; recorded {counts}")
    for key in ("plan", "path", "occupancy", "forecast", "forecast_cloud"):  # every output of every set, in order
        assert [s for _, s, _ in rec.get(key, [])] == expected, key
    assert len(rec.get("explanation", [])) == len(expected)
    for log_time, stamp, _ in rec["plan"]:
        assert stamp <= log_time < stamp + 10**10  # receive time on the bag's clock (sim time), not wall time
    # one time base: every message of the recording (diagnostics too) is logged on the bag's clock
    all_log_times = [t for msgs in rec.values() for t, _, _ in msgs]
    assert all(abs(t - expected[0]) < 600 * 10**9 for t in all_log_times), "a log time is not on the bag's clock"
