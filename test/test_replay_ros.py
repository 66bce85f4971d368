"""Replay over real rclpy: ``sparseoccvla play`` / ``record`` / ``drive`` and the end-to-end bag path.

Bags here come from an independent minimal writer (:func:`write_nuscenes_style_bag`, rosbags directly, not the
project's converter) in foxglove nuscenes2mcap conventions: ``/CAM_*/image_rect_compressed`` (JPEG bytes),
``/CAM_*/camera_info``, ``/odom`` (map -> base_link), ``/tf`` and ``/tf_static`` (base_link -> camera).  The
end-to-end test uses the project's converter (``sparseoccvla bag``) and ``sparseoccvla eval-bag``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (run scripts/install.sh)")
pytest.importorskip("sparseoccvla_msgs.msg", reason="sparseoccvla_msgs is not built (run scripts/install.sh)")

from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy  # noqa: E402

from sparseoccvla_core.batch import CAMERA_NAMES  # noqa: E402
from sparseoccvla_ros import conversions as conv  # noqa: E402
from sparseoccvla_ros.replay.player import BagError, BagPlayer, resolve_message_class  # noqa: E402

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[1]
W, H = 320, 180
T0_NS = 1_532_402_927_612_460_000
OUTPUT_KEYS = ("occupancy", "forecast", "plan", "explanation")


def _have_tf2_msgs() -> bool:
    try:
        import tf2_msgs.msg  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------- an independent minimal bag writer
def _rot_to_wxyz(r: np.ndarray) -> tuple[float, float, float, float]:
    """Rotation matrix -> unit quaternion (w, x, y, z), Shepperd's method."""
    t = np.trace(r)
    if t > 0:
        s = 2.0 * np.sqrt(1.0 + t)
        q = (0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s)
    else:
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + r[i, i] - r[j, j] - r[k, k])
        q = [0.0] * 4
        q[0] = (r[k, j] - r[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (r[j, i] + r[i, j]) / s
        q[1 + k] = (r[k, i] + r[i, k]) / s
    q = np.array(q)
    return tuple(q / np.linalg.norm(q))


def write_nuscenes_style_bag(
    path: Path, frames: list[dict], cameras: dict[str, dict], tf_static: bool = True, omit_images: tuple[str, ...] = ()
) -> Path:
    """A rosbag2 MCAP bag in nuscenes2mcap conventions, written with rosbags' own ROS 2 type store.

    Args:
        path: bag folder to create.
        frames: per key frame ``{"stamps": {cam: ns}, "odom_ns": ns, "pose": 4x4 ego2global, "speed": m/s,
            "jpeg": {cam: bytes}}``.
        cameras: per camera ``{"K": 3x3, "cam2ego": 4x4, "width": int, "height": int}``.
        tf_static: write base_link -> camera transforms on /tf_static.
        omit_images: cameras whose images are left out of the whole bag (their CameraInfo stays).
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    T = ts.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]
    Vec, Quat = T["geometry_msgs/msg/Vector3"], T["geometry_msgs/msg/Quaternion"]
    Point, Pose = T["geometry_msgs/msg/Point"], T["geometry_msgs/msg/Pose"]

    def header(ns, frame):
        return Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id=frame)

    def transform(ns, parent, child, m):
        w, x, y, z = _rot_to_wxyz(m[:3, :3])
        return T["geometry_msgs/msg/TransformStamped"](
            header=header(ns, parent),
            child_frame_id=child,
            transform=T["geometry_msgs/msg/Transform"](
                translation=Vec(x=m[0, 3], y=m[1, 3], z=m[2, 3]), rotation=Quat(x=x, y=y, z=z, w=w)
            ),
        )

    be = None
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {}
        for cam in CAMERA_NAMES:
            conns[cam] = w.add_connection(
                f"/{cam}/image_rect_compressed", "sensor_msgs/msg/CompressedImage", typestore=ts
            )
            conns[cam + "/info"] = w.add_connection(f"/{cam}/camera_info", "sensor_msgs/msg/CameraInfo", typestore=ts)
        conns["odom"] = w.add_connection("/odom", "nav_msgs/msg/Odometry", typestore=ts)
        conns["tf"] = w.add_connection("/tf", "tf2_msgs/msg/TFMessage", typestore=ts)
        if tf_static:
            conns["tf_static"] = w.add_connection("/tf_static", "tf2_msgs/msg/TFMessage", typestore=ts)
            first = frames[0]["odom_ns"]
            msg = T["tf2_msgs/msg/TFMessage"](
                transforms=[transform(first, "base_link", cam, np.array(c["cam2ego"])) for cam, c in cameras.items()]
            )
            w.write(conns["tf_static"], first, ts.serialize_cdr(msg, "tf2_msgs/msg/TFMessage"))
        del be
        for f in frames:
            pose = np.array(f["pose"], dtype=float)
            qw, qx, qy, qz = _rot_to_wxyz(pose[:3, :3])
            odom = T["nav_msgs/msg/Odometry"](
                header=header(f["odom_ns"], "map"),
                child_frame_id="base_link",
                pose=T["geometry_msgs/msg/PoseWithCovariance"](
                    pose=Pose(
                        position=Point(x=pose[0, 3], y=pose[1, 3], z=pose[2, 3]),
                        orientation=Quat(x=qx, y=qy, z=qz, w=qw),
                    ),
                    covariance=np.zeros(36),
                ),
                twist=T["geometry_msgs/msg/TwistWithCovariance"](
                    twist=T["geometry_msgs/msg/Twist"](
                        linear=Vec(x=f["speed"], y=0.0, z=0.0), angular=Vec(x=0.0, y=0.0, z=0.0)
                    ),
                    covariance=np.zeros(36),
                ),
            )
            w.write(conns["odom"], f["odom_ns"], ts.serialize_cdr(odom, "nav_msgs/msg/Odometry"))
            tf = T["tf2_msgs/msg/TFMessage"](transforms=[transform(f["odom_ns"], "map", "base_link", pose)])
            w.write(conns["tf"], f["odom_ns"], ts.serialize_cdr(tf, "tf2_msgs/msg/TFMessage"))
            for cam in sorted(CAMERA_NAMES, key=lambda c: f["stamps"][c]):
                ns, c = f["stamps"][cam], cameras[cam]
                info = T["sensor_msgs/msg/CameraInfo"](
                    header=header(ns, cam),
                    height=c["height"],
                    width=c["width"],
                    distortion_model="",
                    d=np.zeros(0),
                    k=np.array(c["K"], dtype=float).reshape(-1),
                    r=np.eye(3).reshape(-1),
                    p=np.hstack([np.array(c["K"], dtype=float), np.zeros((3, 1))]).reshape(-1),
                    binning_x=0,
                    binning_y=0,
                    roi=T["sensor_msgs/msg/RegionOfInterest"](
                        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
                    ),
                )
                w.write(conns[cam + "/info"], ns, ts.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
                if cam in omit_images:
                    continue
                img = T["sensor_msgs/msg/CompressedImage"](
                    header=header(ns, cam), format="jpeg", data=np.frombuffer(f["jpeg"][cam], dtype=np.uint8)
                )
                w.write(conns[cam], ns, ts.serialize_cdr(img, "sensor_msgs/msg/CompressedImage"))
    return path


def _synthetic_cameras() -> dict[str, dict]:
    from sparseoccvla_core.synthetic.calibration import camera_calibrations

    return {
        c.channel: {"K": c.scaled_intrinsics(W, H), "cam2ego": c.sensor2ego, "width": W, "height": H}
        for c in camera_calibrations()
    }


def _jpeg(rng) -> bytes:
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.clip(np.stack([xx * 0.7, yy * 1.2, 255 - xx * 0.7], -1) + rng.normal(0, 10, (H, W, 3)), 0, 255)
    ok, buf = cv2.imencode(".jpg", img.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return buf.tobytes()


def synthetic_frames(n: int, period_ns: int = 500_000_000, seed: int = 0) -> list[dict]:
    """n key frames 0.5 s apart, camera stamps spread over 40 ms in a shuffled order, ego driving along +x."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        base = T0_NS + i * period_ns
        offsets = rng.permutation(6) * 8_000_000
        pose = np.eye(4)
        pose[0, 3] = 400.0 + 2.0 * i * period_ns / 1e9
        frames.append(
            {
                "stamps": {cam: base + int(o) for cam, o in zip(CAMERA_NAMES, offsets)},
                "odom_ns": base,
                "pose": pose,
                "speed": 4.0,
                "jpeg": {cam: _jpeg(rng) for cam in CAMERA_NAMES},
            }
        )
    return frames


# ---------------------------------------------------------------------- fixtures
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


@pytest.fixture(scope="module")
def small_bag(tmp_path_factory):
    return write_nuscenes_style_bag(
        tmp_path_factory.mktemp("bags") / "small", synthetic_frames(3), _synthetic_cameras()
    )


class Probe:
    """A node on a private context that subscribes to topics and stores (receive time, message)."""

    def __init__(self):
        self.context = rclpy.context.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("probe", context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        self.lock = threading.Lock()
        self.received: dict[str, list] = {}

    def subscribe(self, topic, cls, qos=None, raw=False):
        qos = qos or QoSProfile(depth=100, reliability=QoSReliabilityPolicy.BEST_EFFORT)
        self.node.create_subscription(cls, topic, lambda m, t=topic: self._store(t, m), qos, raw=raw)

    def _store(self, topic, msg):
        with self.lock:
            self.received.setdefault(topic, []).append((time.monotonic(), msg))

    def get(self, topic):
        with self.lock:
            return [m for _, m in self.received.get(topic, [])]

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        self.thread.join(timeout=5)


def wait(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# ---------------------------------------------------------------------- player
def test_resolve_message_class_and_clear_errors(tmp_path):
    from sensor_msgs.msg import CompressedImage

    assert resolve_message_class("sensor_msgs/msg/CompressedImage") is CompressedImage
    with pytest.raises(ImportError, match="not installed"):
        resolve_message_class("no_such_pkg/msg/Thing")
    context = rclpy.context.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("p", context=context)
        with pytest.raises(BagError, match="metadata.yaml"):
            BagPlayer(node, tmp_path)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_player_exact_bytes_stamps_qos_clock_and_loop(small_bag):
    """Raw CDR published unchanged (bytes equal the bag's), cameras best effort, pacing by the bag's time at
    --rate, /clock from the bag's time; --loop jump replays identical stamps, --loop shift adds one bag span."""
    from rosbags.rosbag2 import Reader
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CompressedImage

    with Reader(small_bag) as reader:
        conn = [c for c in reader.connections if c.topic == "/CAM_BACK/image_rect_compressed"]
        bag_raw = [bytes(raw) for _, _, raw in reader.messages(connections=conn)]
        bag_times = [t for _, t, _ in reader.messages(connections=conn)]
    probe = Probe()
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("bag_player", context=ctx)
    try:
        probe.subscribe("/CAM_BACK/image_rect_compressed", CompressedImage, raw=True)
        probe.subscribe("/clock", Clock)
        player = BagPlayer(node, small_bag, rate=2.0, clock_hz=50.0, progress=False, loop=True, max_passes=2)
        info = node.get_publishers_info_by_topic("/CAM_BACK/image_rect_compressed")
        assert info and info[0].qos_profile.reliability == QoSReliabilityPolicy.BEST_EFFORT
        assert player.wait_for_subscribers(20.0, settle_s=0.5, required=["/CAM_BACK/image_rect_compressed"])
        t0 = time.monotonic()
        stats = player.play()
        elapsed = time.monotonic() - t0
        assert stats.passes == 2 and not stats.interrupted
        span_s = (player.end_ns - player.start_ns) / 1e9
        assert elapsed >= 2 * span_s / 2.0 - 0.05  # paced at --rate 2 (never faster than the bag)
        assert wait(lambda: len(probe.get("/CAM_BACK/image_rect_compressed")) >= 6, 10)
        got = probe.get("/CAM_BACK/image_rect_compressed")
        assert [bytes(g) for g in got] == bag_raw * 2  # jump mode: byte-identical passes
        clocks = [conv.stamp_to_ns(c.clock) for c in probe.get("/clock")]
        assert clocks and min(clocks) >= player.start_ns and max(clocks) <= player.end_ns + player._period_ns
        assert any(b < a for a, b in zip(clocks, clocks[1:])), "time should jump back at the loop seam"
        player.close()

        shifted = BagPlayer(node, small_bag, rate=4.0, progress=False, loop=True, loop_time="shift", max_passes=2)
        probe.received.clear()
        shifted.play()
        assert wait(lambda: len(probe.get("/CAM_BACK/image_rect_compressed")) >= 6, 10)
        stamps = [
            conv.stamp_to_ns(rclpy.serialization.deserialize_message(g, CompressedImage).header.stamp)
            for g in probe.get("/CAM_BACK/image_rect_compressed")
        ]
        span = shifted.end_ns - shifted.start_ns + shifted._period_ns
        hdr = [
            conv.stamp_to_ns(rclpy.serialization.deserialize_message(r, CompressedImage).header.stamp) for r in bag_raw
        ]
        assert stamps == hdr + [s + span for s in hdr] and stamps == sorted(stamps)
        assert bag_times == hdr  # the writer logs at the header stamp
        shifted.close()
    finally:
        node.destroy_node()
        rclpy.shutdown(context=ctx)
        probe.close()


@pytest.mark.skipif(not _have_tf2_msgs(), reason="tf2_msgs is not importable (built by scripts/install.sh)")
def test_player_latches_tf_static(small_bag):
    """/tf_static is transient local: a subscriber that joins after it was published still gets it."""
    from tf2_msgs.msg import TFMessage

    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("bag_player", context=ctx)
    probe = Probe()
    try:
        player = BagPlayer(node, small_bag, rate=8.0, progress=False)
        player.play()
        latched = QoSProfile(
            depth=100, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL
        )
        probe.subscribe("/tf_static", TFMessage, latched)
        assert wait(lambda: probe.get("/tf_static"), 20), "late subscriber did not get the latched /tf_static"
        frames = {t.child_frame_id for t in probe.get("/tf_static")[0].transforms}
        assert frames == set(CAMERA_NAMES)
        player.close()
    finally:
        node.destroy_node()
        rclpy.shutdown(context=ctx)
        probe.close()


# ---------------------------------------------------------------------- recorder
def test_recorder_writes_mcap_with_custom_types(tmp_path):
    """Generic raw subscriptions -> MCAP that the mcap reader decodes (custom msgdef included); log time is the
    receive time; a topic appearing after the recorder started is picked up; the default selection skips inputs."""
    from diagnostic_msgs.msg import DiagnosticArray
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    from std_msgs.msg import String

    from sparseoccvla_msgs.msg import DrivingPlan
    from sparseoccvla_ros.replay.recorder import BagRecorder, default_topics

    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    rec_node = rclpy.create_node("bag_recorder", context=ctx)
    pub_node = rclpy.create_node("driving_node", namespace="/sparseoccvla", context=ctx)
    ex = MultiThreadedExecutor(num_threads=2, context=ctx)
    ex.add_node(rec_node)
    ex.add_node(pub_node)
    th = threading.Thread(target=ex.spin, daemon=True)
    th.start()
    out = tmp_path / "rec"
    try:
        recorder = BagRecorder(rec_node, out, default_topics("/sparseoccvla/driving_node"), poll_s=0.05)
        qos = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE)
        plan_pub = pub_node.create_publisher(DrivingPlan, "~/output/plan", qos)
        text_pub = pub_node.create_publisher(String, "~/output/explanation", qos)
        diag_pub = pub_node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        input_pub = pub_node.create_publisher(String, "~/input/command_text", qos)
        assert wait(lambda: all(p.get_subscription_count() for p in (plan_pub, text_pub, diag_pub)), 20)
        sent = []
        for k in range(3):
            plan = DrivingPlan()
            plan.header = conv.make_header(T0_NS + k * 500_000_000, "base_link")
            plan.reasoning, plan.chosen_anchor = f"reason {k}", k
            t_before = time.time_ns()
            plan_pub.publish(plan)
            text_pub.publish(String(data=f"text {k}"))
            diag_pub.publish(DiagnosticArray())
            input_pub.publish(String(data="not recorded"))
            sent.append(t_before)
            time.sleep(0.1)
        assert wait(lambda: recorder.total >= 9, 10), recorder.counts
        assert pytest.raises(FileExistsError, BagRecorder, rec_node, out, ["/x"])
        recorder.close()
    finally:
        ex.shutdown()
        rec_node.destroy_node()
        pub_node.destroy_node()
        rclpy.shutdown(context=ctx)
        th.join(timeout=5)
    mcap_files = list(out.glob("*.mcap"))
    assert len(mcap_files) == 1 and (out / "metadata.yaml").is_file()
    with open(mcap_files[0], "rb") as f:
        decoded = list(make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages())
    by_topic: dict[str, list] = {}
    for schema, channel, message, msg in decoded:
        by_topic.setdefault(channel.topic, []).append((schema.name, message.log_time, msg))
    assert set(by_topic) == {
        "/sparseoccvla/driving_node/output/plan",
        "/sparseoccvla/driving_node/output/explanation",
        "/diagnostics",
    }
    plans = by_topic["/sparseoccvla/driving_node/output/plan"]
    assert [p[0] for p in plans] == ["sparseoccvla_msgs/msg/DrivingPlan"] * 3
    assert [p[2].reasoning for p in plans] == ["reason 0", "reason 1", "reason 2"]
    assert [p[2].header.stamp.sec * 10**9 + p[2].header.stamp.nanosec for p in plans] == [
        T0_NS + k * 500_000_000 for k in range(3)
    ]
    for (_, log_time, _), t_sent in zip(plans, sent):
        assert t_sent <= log_time <= t_sent + 5 * 10**9  # receive (wall) time, not the header stamp


# ---------------------------------------------------------------------- bringup (player + node + recorder)
def _read_outputs(bag: Path) -> dict[str, list[tuple[int, int, object]]]:
    """topic -> [(log time, header stamp ns or None, message)] of a recording (rosbags reader, project typestore)."""
    from rosbags.rosbag2 import Reader

    from sparseoccvla_ros.replay.typestore import replay_typestore

    ts = replay_typestore()
    out: dict[str, list] = {}
    with Reader(bag) as reader:
        for conn, t, raw in reader.messages():
            msg = ts.deserialize_cdr(raw, conn.msgtype)
            stamp = getattr(getattr(msg, "header", None), "stamp", None)
            out.setdefault(conn.topic.rsplit("/", 1)[-1], []).append(
                (t, None if stamp is None else stamp.sec * 10**9 + stamp.nanosec, msg)
            )
    return out


def _bringup(bag, checkpoint, record, **kw):
    from sparseoccvla_ros.bringup import Bringup

    return Bringup(bag, checkpoint, record=record, progress=False, **kw)


@pytest.mark.slow
def test_drive_plays_records_every_key_frame(small_bag, checkpoint, calibration, tmp_path):
    """`sparseoccvla drive` in-process: each key frame of the bag yields occupancy, forecast, plan and explanation
    stamped with its CAM_FRONT stamp, the recording is closed, and the bringup returns 0."""
    b = _bringup(small_bag, checkpoint, tmp_path / "out", parameters=[f"calibration_file:={calibration}"])
    assert b.run() == 0
    rec = _read_outputs(tmp_path / "out")
    expected = [f["stamps"]["CAM_FRONT"] for f in synthetic_frames(3)]
    for key in ("occupancy", "forecast", "plan", "path"):
        assert [s for _, s, _ in rec.get(key, [])] == expected, key
    assert len(rec["explanation"]) == 3 and rec.get("diagnostics")


@pytest.mark.slow
def test_drive_real_keyframes_tf_static_no_yaml(nuscenes_demo_dir, checkpoint, tmp_path):
    """The real nuScenes key frame (1600x900 JPEGs, real calibration) in an independently written bag with its
    /tf_static and no calibration YAML: the node takes the extrinsics from /tf_static and publishes outputs."""
    if not _have_tf2_msgs():
        pytest.skip("tf2_msgs is not importable: /tf_static cannot be read (scripts/install.sh builds it)")
    sample = json.loads((nuscenes_demo_dir / "calib.json").read_text())["samples"][0]
    cams = sample["cameras"]
    cameras = {
        n: {
            "K": cams[n]["intrinsic"],
            "cam2ego": cams[n]["cam2ego"],
            "width": int(cams[n]["width"]),
            "height": int(cams[n]["height"]),
        }
        for n in CAMERA_NAMES
    }
    jpegs = {n: (nuscenes_demo_dir / cams[n]["img_path"]).read_bytes() for n in CAMERA_NAMES}
    stamps0 = {n: int(round(cams[n]["timestamp"] * 1e6)) * 1000 for n in CAMERA_NAMES}
    odom0 = int(round(sample["timestamp"] * 1e6)) * 1000
    frames = []
    for i in range(3):  # the one real key frame, replayed as three key frames 0.5 s apart while driving on
        pose = np.array(sample["ego2global"], dtype=float)
        pose[:3, 3] += pose[:3, 0] * 2.0 * i
        dt = i * 500_000_000
        frames.append(
            {
                "stamps": {n: s + dt for n, s in stamps0.items()},
                "odom_ns": odom0 + dt - 40_000_000,
                "pose": pose,
                "speed": 4.0,
                "jpeg": jpegs,
            }
        )
    bag = write_nuscenes_style_bag(tmp_path / "real", frames, cameras)
    b = _bringup(bag, checkpoint, tmp_path / "out", parameters=["max_odometry_gap_s:=0.3"])
    assert b.run() == 0
    rec = _read_outputs(tmp_path / "out")
    expected = [f["stamps"]["CAM_FRONT"] for f in frames]
    for key in ("occupancy", "forecast", "plan"):
        assert [s for _, s, _ in rec.get(key, [])] == expected, key


# ---------------------------------------------------------------------- end to end: synth -> bag -> play -> node -> record -> eval-bag
def _decode_cloud(msg) -> dict[str, np.ndarray]:
    """rosbags PointCloud2 -> {field: [N] array} (independent numpy decoding of the fields table)."""
    types = {
        1: np.int8,
        2: np.uint8,
        3: np.int16,
        4: np.uint16,
        5: np.int32,
        6: np.uint32,
        7: np.float32,
        8: np.float64,
    }
    dt = np.dtype(
        {
            "names": [f.name for f in msg.fields],
            "formats": [types[f.datatype] for f in msg.fields],
            "offsets": [f.offset for f in msg.fields],
            "itemsize": msg.point_step,
        }
    )
    arr = np.frombuffer(bytes(msg.data), dtype=dt, count=msg.width * msg.height)
    return {n: np.asarray(arr[n]) for n in dt.names}


class _Tables:
    """The nuScenes JSON tables of a dataset root (plain json): key frames, stamps, ego poses, Occ3D label paths."""

    def __init__(self, root: Path) -> None:
        version = next(p for p in root.iterdir() if (p / "scene.json").is_file())
        load = lambda name: json.loads((version / f"{name}.json").read_text())  # noqa: E731
        self.root = root
        t = {n: load(n) for n in ("scene", "sample", "sample_data", "ego_pose", "calibrated_sensor", "sensor")}
        sensors = {s["token"]: s["channel"] for s in t["sensor"]}
        channel = {c["token"]: sensors[c["sensor_token"]] for c in t["calibrated_sensor"]}
        poses = {p["token"]: p for p in t["ego_pose"]}
        samples = {s["token"]: s for s in t["sample"]}
        front = {
            sd["sample_token"]: sd
            for sd in t["sample_data"]
            if sd["is_key_frame"] and channel[sd["calibrated_sensor_token"]] == "CAM_FRONT"
        }
        self.frames = []  # (scene name, index, sample token, CAM_FRONT stamp ns, ego2global 4x4)
        for scene in t["scene"]:
            tok, i = scene["first_sample_token"], 0
            while tok:
                sd = front[tok]
                p = poses[sd["ego_pose_token"]]
                m = np.eye(4)
                w, x, y, z = p["rotation"]
                m[:3, :3] = np.array(
                    [
                        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
                    ]
                )
                m[:3, 3] = p["translation"]
                self.frames.append((scene["name"], i, tok, sd["timestamp"] * 1000, m))
                tok, i = samples[tok]["next"], i + 1

    def labels(self, scene: str, token: str):
        path = self.root / "gts" / scene / token / "labels.npz"
        if not path.is_file():
            return None, None
        z = np.load(path)
        return z["semantics"], z["mask_camera"].astype(bool)


@pytest.mark.slow
def test_end_to_end_synthetic_scene(tmp_path, checkpoint):
    """synth -> `sparseoccvla bag` -> drive (play -> node -> record) -> `eval-bag`: every key frame yields
    occupancy, forecast, plan and explanation with its CAM_FRONT stamp, and eval-bag's scores equal the same
    metric code fed independently (GT from the dataset's Occ3D files and ego poses, predictions decoded here)."""
    from sparseoccvla_core import metrics as M
    from sparseoccvla_core.cli import main as cli_main
    from sparseoccvla_core.config import SparseOccVLAConfig
    from sparseoccvla_core.evaluation import MetricAccumulator
    from sparseoccvla_ros.replay.eval_bag import evaluate_bags

    world, gt_bag, pred_bag = tmp_path / "world", tmp_path / "gt", tmp_path / "pred"
    assert (
        cli_main(
            [
                "synth",
                "--out",
                str(world),
                "--scenes",
                "1",
                "--frames",
                "14",
                "--width",
                "160",
                "--height",
                "96",
                "--no-lidar",
                "--seed",
                "3",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    assert cli_main(["bag", "--data", str(world), "--all", "--out", str(gt_bag), "--no-progress"]) == 0
    params = [] if _have_tf2_msgs() else [f"calibration_file:={next(gt_bag.parent.glob('*.yaml'))}"]
    b = _bringup(gt_bag, checkpoint, pred_bag, rate=0.5, parameters=params)
    assert b.run() == 0

    tables = _Tables(world)
    stamps = [f[3] for f in tables.frames]
    rec = _read_outputs(pred_bag)
    for key in ("occupancy", "forecast", "plan"):
        got = sorted(s for _, s, _ in rec.get(key, []))
        assert got == stamps, (
            key,
            sorted(set(stamps) - set(got)),
            {k: v for k, v in _diag_values(rec).items() if "bad" in k or "drop" in k},
            [s.message for _, _, a in rec["diagnostics"] for s in a.status if s.level != b"\x00"][:6],
        )
    assert len(rec["explanation"]) == len(stamps)
    for _, _, plan in rec["plan"]:
        assert plan.reasoning  # the explanation travels in the plan too

    results = evaluate_bags(gt_bag, pred_bag)
    replay = results.extra["replay"]
    assert replay["missed"] == {k: 0 for k in replay["missed"]} and replay["key_frames"] == len(stamps)
    lat = replay["latency"]  # the bringup records CameraInfo too: wall-clock latency from its receive times
    assert lat["clock"] == "recorded-inputs" and 0 < lat["plan"]["p50"] <= lat["plan"]["max"] < 30, lat
    print(f"[e2e] latency (wall) plan p50 {lat['plan']['p50']:.3f} s, p95 {lat['plan']['p95']:.3f} s")

    # the same metric code, fed from the dataset files and the recording decoded here
    cfg = SparseOccVLAConfig()
    acc = MetricAccumulator(cfg)
    by_stamp = {s: m for _, s, m in rec["occupancy"]}
    fc_by_stamp = {s: m for _, s, m in rec["forecast"]}
    plan_by_stamp = {s: m for _, s, m in rec["plan"]}
    index = {(f[0], f[1]): f for f in tables.frames}
    n = len(tables.frames)
    for scene, i, token, stamp, pose in tables.frames:
        sem, cam = tables.labels(scene, token)
        c = _decode_cloud(by_stamp[stamp])
        assert "rgb" in c  # the class colour RViz (RGB8) and Foxglove show
        pts = np.stack([c["x"], c["y"], c["z"]], -1)
        if sem is not None:
            acc.add_occupancy(pts, c["class"], sem, camera_mask=cam, pred_scores=c["score"])
        if bool(M.forecast_eval_frames(i, n)):
            fc = fc_by_stamp[stamp]
            for h, k in zip(M.FORECAST_HORIZONS_S, M.forecast_steps()):
                j = [q for q, hh in enumerate(fc.horizons) if abs(hh - h) < 1e-3]
                fut = index.get((scene, i + k))
                if not j or fut is None:
                    continue
                fsem, _ = tables.labels(scene, fut[2])
                fcl = _decode_cloud(fc.clouds[j[0]])
                acc.add_forecast(
                    h, np.stack([fcl["x"], fcl["y"], fcl["z"]], -1), fcl["class"], fsem, pred_scores=fcl["score"]
                )
        futures = [index.get((scene, i + k)) for k in range(1, cfg.plan_horizon + 1)]
        if all(f is not None for f in futures):
            gt_traj = np.array([(np.linalg.inv(pose) @ f[4])[:2, 3] for f in futures])
            wp = np.array([[p.pose.position.x, p.pose.position.y] for p in plan_by_stamp[stamp].path.poses])
            acc.add_plan(wp[: cfg.plan_horizon], gt_traj, np.ones(cfg.plan_horizon, bool), np.zeros(2))
    mine = acc.finalize(split="independent", num_samples=n, meteor=False)
    _assert_close(mine.occupancy.to_dict(), results.occupancy.to_dict(), "occupancy")
    _assert_close(mine.forecasting.to_dict(), results.forecasting.to_dict(), "forecasting")
    po, pt = mine.planning.to_dict(), results.planning.to_dict()
    assert po["num_samples"] == pt["num_samples"] > 0
    _assert_close(po["l2"], pt["l2"], "planning.l2")


def _assert_close(a, b, where: str) -> None:
    """Recursive equality of two JSON-like results within float tolerance (NaN == NaN)."""
    if isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            _assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9, nan_ok=True), where
    else:
        assert a == b, where


# ---------------------------------------------------------------------- faults: 4x replay, loop with time jumping back
def _diag_values(rec) -> dict[str, str]:
    last = {}
    for _, _, arr in rec.get("diagnostics", []):
        for s in arr.status:
            for kv in s.values:
                last[kv.key] = kv.value
    return last


@pytest.mark.slow
def test_fast_replay_counts_drops_and_keeps_latency_bounded(checkpoint, calibration, tmp_path):
    """At 4x a 16-frame bag outruns the node: every completed set is published or dropped (counted in
    /diagnostics), the newest set is always processed, latency stays bounded (no queue growth)."""
    frames = synthetic_frames(16, seed=4)
    bag = write_nuscenes_style_bag(tmp_path / "bag", frames, _synthetic_cameras())
    b = _bringup(bag, checkpoint, tmp_path / "out", rate=4.0, parameters=[f"calibration_file:={calibration}"])
    assert b.run() == 0
    rec = _read_outputs(tmp_path / "out")
    published = sorted(s for _, s, _ in rec["plan"])
    stamps = [f["stamps"]["CAM_FRONT"] for f in frames]
    values = _diag_values(rec)
    assert published and set(published) <= set(stamps)
    assert published[-1] == stamps[-1] or int(values["sync_messages_dropped"]) > 0  # the newest set is processed
    completed, dropped = int(values["sets_completed"]), int(values["sets_dropped_behind"])
    # a set that never completed lost images, in the synchronizer or before it (a DDS queue overwritten while the
    # node was busy, found from gaps in the cameras' stamps): counted, never silent
    lost = int(values["sync_messages_dropped"]) + int(values["frames_missed"])
    assert len(stamps) - completed <= lost, values
    if dropped or lost:  # drops raise the inputs level, they are not "OK"
        levels = [st.level for _, _, a in rec["diagnostics"] for st in a.status if st.name.endswith(": inputs")]
        assert max(int(x) for x in levels) >= 1, levels  # WARN or worse
    assert len(published) + dropped == completed
    latencies = [
        float(kv.value)
        for _, _, arr in rec["diagnostics"]
        for st in arr.status
        for kv in st.values
        if kv.key == "latency_s"
    ]
    finite = [x for x in latencies if np.isfinite(x)]
    # one set in the mailbox at most: the latency is one inference (+ a wait for the worker), never a queue
    assert finite and max(finite) < 20.0, finite


@pytest.mark.slow
def test_camera_missing_from_the_whole_bag_is_diagnosed(checkpoint, calibration, tmp_path):
    """A bag without one camera's images: no set completes, nothing is published, the node keeps running and its
    inputs status names the silent camera at WARN."""
    frames = synthetic_frames(4, seed=6)
    bag = write_nuscenes_style_bag(tmp_path / "bag", frames, _synthetic_cameras(), omit_images=("CAM_BACK",))
    b = _bringup(bag, checkpoint, tmp_path / "out", parameters=[f"calibration_file:={calibration}"])
    assert b.run() == 0
    rec = _read_outputs(tmp_path / "out")
    assert not rec.get("plan") and not rec.get("occupancy")
    assert int(_diag_values(rec)["sets_completed"]) == 0
    inputs = [st for _, _, a in rec["diagnostics"] for st in a.status if st.name.endswith(": inputs")]
    assert any(int(st.level) >= 1 and "CAM_BACK" in st.message for st in inputs), [st.message for st in inputs]


@pytest.mark.slow
def test_loop_with_time_jumping_back_processes_every_frame(checkpoint, calibration, tmp_path):
    """--loop with the default jump-back time: each of two passes publishes outputs for every key frame."""
    frames = synthetic_frames(4, seed=5)
    bag = write_nuscenes_style_bag(tmp_path / "bag", frames, _synthetic_cameras())
    b = _bringup(
        bag, checkpoint, tmp_path / "out", rate=0.5, loop=True, parameters=[f"calibration_file:={calibration}"]
    )
    b.player.max_passes = 2
    assert b.run() == 0
    rec = _read_outputs(tmp_path / "out")
    stamps = [f["stamps"]["CAM_FRONT"] for f in frames]
    assert [s for _, s, _ in rec["plan"]] == stamps * 2
    assert [s for _, s, _ in rec["occupancy"]] == stamps * 2
