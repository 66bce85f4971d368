"""driving_node over real rclpy (in-process, per-test Context): inputs in, every output out, AskScene, bad input.

A tiny untrained, seeded checkpoint and a calibration YAML (the embedded real nuScenes calibration) drive the
node; six real JPEGs (encoded with cv2), their CameraInfos and odometry are published with one stamp.  The test
waits (with timeouts) for occupancy / forecast / plan / path / explanation / markers / diagnostics, checks that
every header carries the input stamp and that contents agree with each other, asks a question through AskScene,
then sends a corrupt JPEG and checks for an ERROR diagnostic and that the node keeps processing.
"""

import dataclasses
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (run scripts/install.sh)")
pytest.importorskip("sparseoccvla_msgs.msg", reason="sparseoccvla_msgs is not built (run scripts/install.sh)")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from nav_msgs.msg import Path as PathMsg  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, QoSReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, PointCloud2  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from sparseoccvla_core.batch import CAMERA_NAMES  # noqa: E402
from sparseoccvla_core.config import SparseOccVLAConfig  # noqa: E402
from sparseoccvla_core.model import DEFAULT_SCORE_THRESHOLD, SparseOccVLA  # noqa: E402
from sparseoccvla_core.synthetic.calibration import camera_calibrations  # noqa: E402
from sparseoccvla_msgs.msg import DrivingPlan, OccupancyForecast  # noqa: E402
from sparseoccvla_msgs.srv import AskScene  # noqa: E402
from sparseoccvla_ros import conversions as conv  # noqa: E402
from sparseoccvla_ros.driving_node import PARAMETERS, DrivingNode  # noqa: E402

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[1]
W, H = 320, 180  # published image size (the tiny model resizes to 64 x 160)
STAMP_NS = 1_532_402_927_612_460_000


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt")
    SparseOccVLA(SparseOccVLAConfig.tiny(max_new_tokens=8)).save_pretrained(path)  # short answers: fast tests
    return path


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    cams = {
        c.channel: conv.CameraCalibration(c.channel, c.sensor2ego, c.channel, c.scaled_intrinsics(W, H), (W, H))
        for c in camera_calibrations()
    }
    return conv.save_calibration(tmp_path_factory.mktemp("calib") / "calibration.yaml", cams)


class Harness:
    """The node + a probe node on one private Context, spun by a SingleThreadedExecutor in a thread (as main())."""

    def __init__(self, checkpoint, calibration, image_msg=CompressedImage, **overrides):
        self.context = rclpy.context.Context()
        rclpy.init(context=self.context)
        # a generous latency budget: loaded CI machines must not turn the first (warm-up) frame into a WARN
        params = {
            "checkpoint": str(checkpoint),
            "calibration_file": str(calibration),
            "diagnostics_period_s": 0.2,
            "latency_budget_s": 60.0,
        }
        params.update(overrides)
        self.node = DrivingNode(
            context=self.context,
            namespace="/sparseoccvla",
            parameter_overrides=[Parameter(k, value=v) for k, v in params.items()],
        )
        self.probe = rclpy.create_node("probe", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.probe)
        self.closing = False
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()
        self.received = {}
        self.lock = threading.Lock()
        qos = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
        base = "/sparseoccvla/driving_node"
        for key, typ, topic in [
            ("occupancy", PointCloud2, f"{base}/output/occupancy"),
            ("forecast", OccupancyForecast, f"{base}/output/forecast"),
            ("forecast_cloud", PointCloud2, f"{base}/output/forecast_cloud"),
            ("plan", DrivingPlan, f"{base}/output/plan"),
            ("path", PathMsg, f"{base}/output/path"),
            ("explanation", String, f"{base}/output/explanation"),
            ("markers", MarkerArray, f"{base}/debug/markers"),
            ("diagnostics", DiagnosticArray, "/diagnostics"),
        ]:
            self.probe.create_subscription(typ, topic, lambda m, key=key: self._store(key, m), qos)
        self.pubs = {}
        for cam in CAMERA_NAMES:
            self.pubs[cam] = self.probe.create_publisher(image_msg, f"{base}/input/{cam}/image", qos)
            self.pubs[cam + "/info"] = self.probe.create_publisher(CameraInfo, f"{base}/input/{cam}/camera_info", qos)
        self.pubs["odometry"] = self.probe.create_publisher(Odometry, f"{base}/input/odometry", qos)
        self.client = self.probe.create_client(AskScene, f"{base}/ask_scene")

    def _spin(self):
        try:
            self.executor.spin()
        except Exception:
            if not self.closing:  # rclpy may touch a destroyed guard condition while the executor shuts down
                raise

    def _store(self, key, msg):
        with self.lock:
            self.received.setdefault(key, []).append(msg)

    def get(self, key):
        with self.lock:
            return list(self.received.get(key, []))

    def wait(self, predicate, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def close(self):
        self.closing = True
        self.executor.shutdown()
        self.node.destroy_node()
        self.probe.destroy_node()
        rclpy.shutdown(context=self.context)
        self.thread.join(timeout=10)


@pytest.fixture()
def harness(checkpoint, calibration):
    h = Harness(checkpoint, calibration)
    yield h
    h.close()


def _jpeg_bytes(rng):
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([xx * 0.7, yy * 1.2, 255 - xx * 0.7], -1)
    img = np.clip(base + rng.normal(0, 10, size=(H, W, 3)), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return buf.tobytes()


def _publish_set(h, stamp_ns, rng, corrupt=None):
    stamp = conv.ns_to_stamp(stamp_ns)
    odom = Odometry()
    odom.header.stamp, odom.header.frame_id, odom.child_frame_id = stamp, "map", "base_link"
    odom.pose.pose.position.x = 411.3 + 2.0 * (stamp_ns - STAMP_NS) / 1e9
    odom.pose.pose.orientation.w = 1.0
    odom.twist.twist.linear.x = 4.0
    h.pubs["odometry"].publish(odom)
    for c in camera_calibrations():
        info = CameraInfo(width=W, height=H)
        info.header.stamp, info.header.frame_id = stamp, c.channel
        info.k = c.scaled_intrinsics(W, H).reshape(-1).tolist()
        h.pubs[c.channel + "/info"].publish(info)
    for cam in CAMERA_NAMES:
        msg = CompressedImage(format="jpeg")
        msg.header.stamp, msg.header.frame_id = stamp, cam
        msg.data = b"\xff\xd8\xff\xe0 this is not a JPEG \xff\xd9" if cam == corrupt else _jpeg_bytes(rng)
        h.pubs[cam].publish(msg)


def _connected(h):
    pubs_ok = all(p.get_subscription_count() > 0 for p in h.pubs.values())
    return pubs_ok and h.node.pipeline is not None


def test_node_end_to_end(harness):
    h = harness
    rng = np.random.default_rng(0)
    assert h.wait(lambda: _connected(h), 60), "node never became ready / subscribed"
    _publish_set(h, STAMP_NS, rng)
    keys = ["occupancy", "forecast", "forecast_cloud", "plan", "path", "explanation", "markers"]
    assert h.wait(lambda: all(h.get(k) for k in keys), 60), f"missing outputs: {[k for k in keys if not h.get(k)]}"
    cfg = h.node.pipeline.cfg

    occ = h.get("occupancy")[0]
    assert conv.stamp_to_ns(occ.header.stamp) == STAMP_NS and occ.header.frame_id == "base_link"
    assert [f.name for f in occ.fields] == ["x", "y", "z", "rgb", "score", "class"] and occ.point_step == 24
    arr = conv.pointcloud2_to_array(occ)
    assert np.isfinite(arr["x"]).all() and ((arr["class"] >= 0) & (arr["class"] <= 16)).all()
    assert ((arr["score"] >= DEFAULT_SCORE_THRESHOLD) & (arr["score"] <= 1.0)).all()  # the node's default threshold

    fc = h.get("forecast")[0]
    assert conv.stamp_to_ns(fc.header.stamp) == STAMP_NS
    assert len(fc.clouds) == cfg.forecast_frames == len(fc.horizons) == len(fc.future_ego_poses)
    np.testing.assert_allclose(fc.horizons, [cfg.forecast_dt * (i + 1) for i in range(cfg.forecast_frames)], rtol=1e-6)
    fcloud = h.get("forecast_cloud")[0]
    assert "time" in [f.name for f in fcloud.fields] and conv.stamp_to_ns(fcloud.header.stamp) == STAMP_NS
    assert fcloud.width == sum(c.width for c in fc.clouds)

    plan = h.get("plan")[0]
    path = h.get("path")[0]
    assert conv.stamp_to_ns(plan.header.stamp) == STAMP_NS == conv.stamp_to_ns(path.header.stamp)
    assert len(path.poses) == cfg.plan_horizon == 6 and len(plan.anchors) == cfg.num_anchors
    assert len(plan.anchor_scores) == cfg.num_anchors and plan.chosen_anchor == int(np.argmax(plan.anchor_scores))
    chosen = plan.anchors[plan.chosen_anchor].waypoints
    np.testing.assert_allclose(
        [[p.pose.position.x, p.pose.position.y] for p in path.poses], [[p.x, p.y] for p in chosen], atol=1e-5
    )
    assert plan.reasoning == h.get("explanation")[0].data
    markers = h.get("markers")[0].markers
    assert all(conv.stamp_to_ns(m.header.stamp) == STAMP_NS for m in markers)

    # AskScene about that scene
    assert h.wait(h.client.service_is_ready, 10)
    future = h.client.call_async(AskScene.Request(question="Is there a pedestrian ahead?"))
    assert h.wait(future.done, 60)
    resp = future.result()
    assert resp.success, resp.error_message
    assert conv.stamp_to_ns(resp.scene_stamp) == STAMP_NS and resp.latency_s > 0
    future = h.client.call_async(AskScene.Request(question="   "))
    assert h.wait(future.done, 30)
    assert not future.result().success and "empty" in future.result().error_message

    # diagnostics report the processed frame
    def inference_ok():
        for d in h.get("diagnostics"):
            for s in d.status:
                if s.name.endswith(": inference") and s.level == b"\x00":
                    return {v.key: v.value for v in s.values}
        return None

    assert h.wait(lambda: inference_ok() is not None, 10)
    values = inference_ok()
    assert int(values["frames_published"]) >= 1 and float(values["time_backbone_s"]) > 0
    assert int(values["last_stamp_ns"]) == STAMP_NS

    # a corrupt JPEG: ERROR diagnostic, no output for that stamp, and the node keeps working
    bad_stamp, good_stamp = STAMP_NS + 500_000_000, STAMP_NS + 1_000_000_000
    _publish_set(h, bad_stamp, rng, corrupt="CAM_BACK")

    def corrupt_reported():
        return any(s.level == b"\x02" and "corrupt JPEG" in s.message for d in h.get("diagnostics") for s in d.status)

    assert h.wait(corrupt_reported, 30), "no ERROR diagnostic for the corrupt JPEG"
    _publish_set(h, good_stamp, rng)
    assert h.wait(lambda: any(conv.stamp_to_ns(m.header.stamp) == good_stamp for m in h.get("plan")), 60)
    assert all(conv.stamp_to_ns(m.header.stamp) != bad_stamp for m in h.get("occupancy"))
    assert h.node._worker.is_alive()

    # a burst faster than inference: the newest set is always processed, older ones may be dropped, and every
    # completed set is accounted for (published, rejected or dropped) - the mailbox holds one set, never a queue
    burst = [good_stamp + k * 500_000_000 for k in (1, 2, 3)]
    for stamp in burst:
        _publish_set(h, stamp, rng)
    assert h.wait(lambda: any(conv.stamp_to_ns(m.header.stamp) == burst[-1] for m in h.get("plan")), 60)
    st = h.node.stats
    assert h.wait(lambda: st.sets_completed == st.frames_published + st.sets_dropped + 1, 10)  # 1 = corrupt set
    assert st.sets_completed == 6 and st.bad_input.get("corrupt_image") == 1


def test_ask_scene_empty_generation_is_an_answer_or_a_clear_failure(harness):
    """When the LLM generates nothing (the default checkpoint does for "What should the ego car do next?"), an action
    question gets the planning explanation of the same camera set, any other question fails with a message; never
    success with an empty answer."""
    h = harness
    rng = np.random.default_rng(5)
    assert h.wait(lambda: _connected(h), 60), "node never became ready / subscribed"
    _publish_set(h, STAMP_NS, rng)
    assert h.wait(lambda: h.get("explanation") and h.get("plan"), 60)
    explanation = h.get("plan")[0].reasoning
    pipe = h.node.pipeline
    real_ask = pipe.ask

    def ask_generating_nothing(question, max_new_tokens=None):  # the real call, then an EOS-first generation
        answer = real_ask(question, max_new_tokens=max_new_tokens)
        return dataclasses.replace(answer, text="")

    pipe.ask = ask_generating_nothing
    assert h.wait(h.client.service_is_ready, 10)

    def ask(question):
        future = h.client.call_async(AskScene.Request(question=question))
        assert h.wait(future.done, 60)
        return future.result()

    resp = ask("What should the ego car do next?")
    assert resp.success and resp.answer == explanation.strip() and resp.answer, (resp.answer, resp.error_message)
    assert conv.stamp_to_ns(resp.scene_stamp) == STAMP_NS
    resp = ask("How many cars are there?")
    assert not resp.success and not resp.answer and "empty answer" in resp.error_message


def test_parameters_file_matches_declarations():
    """config/driving.yaml lists every declared parameter with the declared default (the YAML is the contract)."""
    data = yaml.safe_load((REPO / "config" / "driving.yaml").read_text())["/**"]["ros__parameters"]
    assert set(data) == set(PARAMETERS)
    for name, p in PARAMETERS.items():
        assert data[name] == p.default, name


def test_missing_extrinsics_is_a_clear_error(checkpoint, monkeypatch):
    """Without tf2_msgs (an install that did not build it) and without a calibration YAML the node refuses to start."""
    from sparseoccvla_ros import driving_node

    monkeypatch.setattr(driving_node, "TFMessage", None)
    context = rclpy.context.Context()
    rclpy.init(context=context)
    try:
        with pytest.raises(ValueError, match="calibration_file.*tf2_msgs"):
            DrivingNode(context=context, parameter_overrides=[Parameter("checkpoint", value=str(checkpoint))])
        with pytest.raises(ValueError, match="checkpoint"):
            DrivingNode(context=context)
    finally:
        rclpy.shutdown(context=context)


def test_raw_images_and_sim_time(checkpoint, calibration):
    """image_transport=raw takes sensor_msgs/Image; with use_sim_time, inputs before the first /clock are ignored."""
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    h = Harness(checkpoint, calibration, image_msg=Image, image_transport="raw", use_sim_time=True)
    try:
        raw = {cam: h.pubs[cam] for cam in CAMERA_NAMES}
        clock = h.probe.create_publisher(Clock, "/clock", 10)
        rng = np.random.default_rng(1)

        def publish(stamp_ns):
            odom = Odometry()
            odom.header.stamp = conv.ns_to_stamp(stamp_ns)
            odom.pose.pose.orientation.w = 1.0
            h.pubs["odometry"].publish(odom)
            for c in camera_calibrations():
                info = CameraInfo(width=W, height=H)
                info.header.stamp, info.header.frame_id = conv.ns_to_stamp(stamp_ns), c.channel
                info.k = c.scaled_intrinsics(W, H).reshape(-1).tolist()
                h.pubs[c.channel + "/info"].publish(info)
            for cam in CAMERA_NAMES:
                img = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
                msg = Image(height=H, width=W, encoding="rgb8", step=W * 3, data=img.tobytes())
                msg.header.stamp, msg.header.frame_id = conv.ns_to_stamp(stamp_ns), cam
                raw[cam].publish(msg)

        ready = lambda: h.node.pipeline is not None and all(p.get_subscription_count() > 0 for p in raw.values())  # noqa: E731
        assert h.wait(ready, 60)
        publish(STAMP_NS)  # no /clock yet: now() == 0 -> ignored
        assert h.wait(lambda: h.node.stats.ignored_no_clock >= 7, 10)
        time.sleep(0.3)
        assert not h.get("plan") and h.node._sync.stats.sets == 0
        assert h.wait(lambda: clock.get_subscription_count() > 0, 10)
        clock.publish(Clock(clock=conv.ns_to_stamp(STAMP_NS)))
        assert h.wait(lambda: h.node.get_clock().now().nanoseconds == STAMP_NS, 10)
        publish(STAMP_NS)
        assert h.wait(lambda: h.get("plan"), 60), "no plan from raw images under sim time"
        assert conv.stamp_to_ns(h.get("plan")[0].header.stamp) == STAMP_NS
    finally:
        h.close()


def test_real_nuscenes_keyframe(nuscenes_demo_dir, checkpoint, tmp_path):
    """The six original nuScenes JPEGs (1600x900) with their real stamps (spread over ~43 ms), calibration and
    ego pose: the synchronizer pairs them, the node decodes them at reduced size and publishes a plan stamped
    with the CAM_FRONT stamp."""
    import json

    sample = json.loads((nuscenes_demo_dir / "calib.json").read_text())["samples"][0]
    cams = sample["cameras"]
    cal = {}
    for name in CAMERA_NAMES:
        c = cams[name]
        cal[name] = conv.CameraCalibration(
            name, np.array(c["cam2ego"]), name, np.array(c["intrinsic"]), (int(c["width"]), int(c["height"]))
        )
    calib = conv.save_calibration(tmp_path / "calibration.yaml", cal)
    h = Harness(checkpoint, calib)
    try:
        assert h.wait(lambda: _connected(h), 60)
        stamps = {n: int(round(cams[n]["timestamp"] * 1e6)) * 1000 for n in CAMERA_NAMES}
        pose = np.array(sample["ego2global"])
        odom = Odometry()
        odom.header.stamp = conv.ns_to_stamp(int(round(sample["timestamp"] * 1e6)) * 1000)
        odom.pose.pose.position.x, odom.pose.pose.position.y = float(pose[0, 3]), float(pose[1, 3])
        w, x, y, z = sample["ego2global_rotation_wxyz"]
        odom.pose.pose.orientation.w, odom.pose.pose.orientation.x = w, x
        odom.pose.pose.orientation.y, odom.pose.pose.orientation.z = y, z
        h.pubs["odometry"].publish(odom)
        for name in CAMERA_NAMES:
            info = CameraInfo(width=int(cams[name]["width"]), height=int(cams[name]["height"]))
            info.header.frame_id = name
            info.k = np.array(cams[name]["intrinsic"], dtype=float).reshape(-1).tolist()
            h.pubs[name + "/info"].publish(info)
        for name in CAMERA_NAMES:
            msg = CompressedImage(format="jpeg", data=(nuscenes_demo_dir / cams[name]["img_path"]).read_bytes())
            msg.header.stamp, msg.header.frame_id = conv.ns_to_stamp(stamps[name]), name
            h.pubs[name].publish(msg)
        assert h.wait(lambda: h.get("plan"), 60), f"no plan; diagnostics: {h.node.stats.last_problem}"
        assert conv.stamp_to_ns(h.get("plan")[0].header.stamp) == stamps["CAM_FRONT"]
        assert h.node._sync.stats.sets == 1 and max(stamps.values()) - min(stamps.values()) > 40_000_000
    finally:
        h.close()
