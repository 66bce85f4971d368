"""sparseoccvla_ros.conversions: ROS messages <-> core types, checked against independent computations.

PointCloud2 bytes are read back through a numpy structured dtype written here (and through rclpy's CDR
serialization), JPEG decoding is compared with a direct cv2 decode, the calibration YAML round-trips the real
nuScenes calibration, and Path / plan contents are compared with the input arrays.
"""

import json
import math

import cv2
import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy is not installed (run scripts/install.sh)")
pytest.importorskip("sparseoccvla_msgs.msg", reason="sparseoccvla_msgs is not built (run scripts/install.sh)")

from geometry_msgs.msg import TransformStamped  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2  # noqa: E402
from visualization_msgs.msg import Marker  # noqa: E402

from sparseoccvla_core.batch import CAMERA_NAMES, OCC3D_COLORS  # noqa: E402
from sparseoccvla_core.data.images import CorruptImageError  # noqa: E402
from sparseoccvla_core.pipeline import OccupancyFrame, PlanResult, StepResult, poses_along_path  # noqa: E402
from sparseoccvla_core.synthetic.calibration import camera_calibrations  # noqa: E402
from sparseoccvla_ros import conversions as conv  # noqa: E402
from sparseoccvla_ros import markers as mk  # noqa: E402

pytestmark = pytest.mark.ros


def _frame(rng, m, t=0.0, pose=None):
    return OccupancyFrame(
        points=rng.uniform(-40, 40, size=(m, 3)).astype(np.float32),
        classes=rng.integers(0, 17, size=m).astype(np.uint8),
        scores=rng.uniform(0, 1, size=m).astype(np.float32),
        time_s=t,
        ego_pose=np.eye(4) if pose is None else pose,
    )


def test_occupancy_cloud_bytes_round_trip():
    rng = np.random.default_rng(0)
    frame = _frame(rng, 500)
    msg = conv.occupancy_to_pointcloud2(frame, conv.make_header(1_532_402_927_612_460_000, "base_link"))
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb", "score", "class"]
    # every field 4-byte aligned (PCL / Open3D readers reject misaligned float fields) and the point padded to 4
    assert all(f.offset % 4 == 0 for f in msg.fields) and msg.point_step == 24
    assert msg.row_step == 24 * 500 and msg.width == 500 and msg.height == 1
    # independent reader: the layout written by hand, applied to the serialized-and-back message
    back = deserialize_message(serialize_message(msg), PointCloud2)
    dtype = np.dtype(
        {
            "names": ["x", "y", "z", "rgb", "s", "c"],
            "formats": ["<f4", "<f4", "<f4", "<u4", "<f4", "u1"],
            "offsets": [0, 4, 8, 12, 16, 20],
            "itemsize": 24,
        }
    )
    arr = np.frombuffer(bytes(back.data), dtype=dtype)
    np.testing.assert_array_equal(np.stack([arr["x"], arr["y"], arr["z"]], 1), frame.points)
    np.testing.assert_array_equal(arr["c"], frame.classes)
    np.testing.assert_array_equal(arr["s"], frame.scores)
    # rgb: 0x00RRGGBB of the class colour in the package palette (what RViz's RGB8 transformer reads)
    palette = np.asarray(OCC3D_COLORS, dtype=np.uint32)
    expect = (palette[frame.classes, 0] << 16) | (palette[frame.classes, 1] << 8) | palette[frame.classes, 2]
    np.testing.assert_array_equal(arr["rgb"], expect)
    np.testing.assert_array_equal(conv.unpack_rgb(conv.pointcloud2_to_array(back)["rgb"]), palette[frame.classes])
    assert back.header.stamp.sec == 1532402927 and back.header.stamp.nanosec == 612460000
    # and the module's own generic reader agrees
    generic = conv.pointcloud2_to_array(back)
    np.testing.assert_array_equal(generic["class"], frame.classes)
    np.testing.assert_array_equal(generic["score"], frame.scores)
    empty = conv.occupancy_to_pointcloud2(_frame(rng, 0), conv.make_header(0, "base_link"))
    assert empty.width == 0 and len(empty.data) == 0


def test_forecast_time_cloud_and_message():
    rng = np.random.default_rng(1)
    waypoints = np.array([[2.0 * (i + 1), 0.3 * i * i] for i in range(6)], dtype=np.float32)
    poses = poses_along_path(waypoints, 0.5, [0.5, 1.0])
    frames = [_frame(rng, 30, 0.5, poses[0]), _frame(rng, 20, 1.0, poses[1])]
    cloud = conv.forecast_to_time_cloud(frames, conv.make_header(10**18, "base_link"))
    arr = conv.pointcloud2_to_array(cloud)
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "rgb", "score", "time", "class"] and len(arr) == 50
    assert all(f.offset % 4 == 0 for f in cloud.fields) and cloud.point_step == 28
    np.testing.assert_array_equal(conv.unpack_rgb(arr["rgb"]), np.asarray(OCC3D_COLORS)[arr["class"]])
    np.testing.assert_array_equal(arr["time"], np.r_[np.full(30, 0.5), np.full(20, 1.0)].astype(np.float32))
    # points moved into the current ego frame with the frame pose (independent: homogeneous matrix product)
    homog = np.c_[frames[1].points, np.ones(20)] @ poses[1].T
    np.testing.assert_allclose(np.stack([arr["x"], arr["y"], arr["z"]], 1)[30:], homog[:, :3], atol=1e-4)
    np.testing.assert_allclose(poses[1][:2, 3], waypoints[1], atol=1e-6)  # t = 1.0 s is the 2nd waypoint

    msg = conv.forecast_to_msg(frames, 10**18, "base_link")
    assert list(msg.horizons) == [0.5, 1.0] and len(msg.clouds) == 2
    assert msg.clouds[1].header.frame_id == "base_link_t2"
    assert conv.stamp_to_ns(msg.clouds[1].header.stamp) == 10**18 + 10**9
    assert msg.future_ego_poses[1].position.x == pytest.approx(float(waypoints[1, 0]))
    yaw = 2 * math.atan2(msg.future_ego_poses[1].orientation.z, msg.future_ego_poses[1].orientation.w)
    assert yaw == pytest.approx(math.atan2(*(waypoints[1] - waypoints[0])[::-1]), abs=1e-6)


def _jpeg(rgb, quality=90):
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def test_compressed_image_decode_equals_cv2():
    yy, xx = np.mgrid[0:96, 0:160]
    rgb = np.stack([xx * 1.5, yy * 2.5, 255 - xx], axis=-1).astype(np.uint8)  # smooth ramps: JPEG keeps them well
    data = _jpeg(rgb)
    msg = CompressedImage(format="jpeg", data=data)
    got = conv.decode_compressed_image(msg)
    expect = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(got, expect)
    assert np.abs(got.astype(int) - rgb.astype(int)).mean() < 6  # and it is the image that was encoded
    half = conv.decode_compressed_image(msg, reduction=2)
    np.testing.assert_array_equal(
        half, cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_2), cv2.COLOR_BGR2RGB)
    )
    assert half.shape == (48, 80, 3)
    assert conv.jpeg_reduction(msg, (24, 40)) == 4 and conv.jpeg_reduction(msg, (64, 160)) == 1


def test_real_nuscenes_jpeg_reduced_decode(nuscenes_demo_dir):
    path = next(nuscenes_demo_dir.glob("*__CAM_FRONT__*.jpg"))
    msg = CompressedImage(format="jpeg", data=path.read_bytes())
    r = conv.jpeg_reduction(msg, (256, 704))  # the paper input: 1600x900 covers 704x396 -> 1/2 decode is exact
    assert r == 2
    img = conv.decode_compressed_image(msg, reduction=r)
    assert img.shape == (450, 800, 3)


@pytest.mark.parametrize("bad", [b"", b"\xff\xd8\xff\xe0garbage-without-end", b"not a jpeg at all", "truncated"])
def test_corrupt_jpeg_raises(bad):
    if bad == "truncated":
        bad = _jpeg(np.full((32, 32, 3), 128, np.uint8))[:-40]
    msg = CompressedImage(format="jpeg", data=bad)
    msg.header.frame_id = "CAM_FRONT"
    with pytest.raises(CorruptImageError, match="CAM_FRONT"):
        conv.decode_compressed_image(msg)


def _warning_only_corruption(data):
    """A copy of ``data`` with one bit flipped in the entropy-coded scan that OpenCV still decodes (libjpeg only
    warns), found by a deterministic search; the test needs such a flip, not any flip."""
    rng = np.random.default_rng(7)
    for _ in range(2000):
        b = bytearray(data)
        pos = int(rng.integers(len(data) // 3, len(data) - 4))
        b[pos] ^= 1 << int(rng.integers(8))
        if cv2.imdecode(np.frombuffer(bytes(b), np.uint8), cv2.IMREAD_COLOR) is None:
            continue
        try:
            import simplejpeg

            simplejpeg.decode_jpeg(bytes(b), strict=True)
        except ValueError:
            return bytes(b)
    raise AssertionError("no warning-only bit flip found")


def test_corrupt_jpeg_that_opencv_decodes_is_rejected(nuscenes_demo_dir):
    """Bit-flipped and zeroed scan data of a real nuScenes JPEG: OpenCV returns an image, the strict decoder raises."""
    data = next(nuscenes_demo_dir.glob("*__CAM_FRONT__*.jpg")).read_bytes()
    zeroed = bytearray(data)
    zeroed[len(data) // 2 : len(data) // 2 + 4000] = bytes(4000)
    for bad in (_warning_only_corruption(data), bytes(zeroed)):
        assert cv2.imdecode(np.frombuffer(bad, np.uint8), cv2.IMREAD_REDUCED_COLOR_2) is not None  # OpenCV: "fine"
        msg = CompressedImage(format="jpeg", data=bad)
        msg.header.frame_id = "CAM_FRONT"
        for r in (1, 2):
            with pytest.raises(CorruptImageError, match="CAM_FRONT.*corrupt JPEG"):
                conv.decode_compressed_image(msg, reduction=r)
    ok = conv.decode_compressed_image(CompressedImage(format="jpeg", data=data), reduction=2)
    assert ok.shape == (450, 800, 3)


def test_raw_image_encodings_with_row_padding():
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)
    step = 7 * 3 + 3  # padded rows
    padded = np.zeros((5, step), np.uint8)
    padded[:, :21] = rgb.reshape(5, 21)
    msg = Image(height=5, width=7, encoding="rgb8", step=step, data=padded.tobytes())
    np.testing.assert_array_equal(conv.image_to_rgb(msg), rgb)
    bgr = rgb[:, :, ::-1].copy()
    msg = Image(height=5, width=7, encoding="bgr8", step=21, data=bgr.tobytes())
    np.testing.assert_array_equal(conv.image_to_rgb(msg), rgb)
    mono = rgb[:, :, 0].copy()
    got = conv.image_to_rgb(Image(height=5, width=7, encoding="mono8", step=7, data=mono.tobytes()))
    assert got.shape == (5, 7, 3) and (got == mono[:, :, None]).all()
    with pytest.raises(conv.ConversionError, match="16UC1"):
        conv.image_to_rgb(Image(height=5, width=7, encoding="16UC1", step=14, data=bytes(70)))
    with pytest.raises(conv.ConversionError, match="bytes"):
        conv.image_to_rgb(Image(height=5, width=7, encoding="rgb8", step=21, data=bytes(50)))


def test_camera_info_and_odometry():
    info = CameraInfo(height=900, width=1600)
    info.k = [1266.4, 0.0, 816.3, 0.0, 1266.4, 491.5, 0.0, 0.0, 1.0]
    k, hw = conv.camera_info_to_intrinsics(info)
    assert hw == (900, 1600) and k[0, 2] == pytest.approx(816.3) and k.shape == (3, 3)
    np.testing.assert_allclose(conv.scale_intrinsics(k, 0.5)[:2], k[:2] * 0.5)
    with pytest.raises(conv.ConversionError, match="no valid K"):
        conv.camera_info_to_intrinsics(CameraInfo())

    odom = Odometry()
    odom.header.stamp.sec, odom.header.stamp.nanosec = 5, 250_000_000
    odom.pose.pose.position.x, odom.pose.pose.position.y = 411.3, 1180.9
    odom.pose.pose.orientation.z, odom.pose.pose.orientation.w = math.sin(0.3), math.cos(0.3)
    odom.twist.twist.linear.x, odom.twist.twist.angular.z = 4.2, 0.1
    s = conv.odometry_to_sample(odom)
    assert s.stamp_ns == 5_250_000_000 and s.linear_velocity[0] == 4.2 and s.angular_velocity[2] == 0.1
    m = s.pose_matrix()
    assert math.atan2(m[1, 0], m[0, 0]) == pytest.approx(0.6) and m[0, 3] == pytest.approx(411.3)
    odom.twist.twist.linear.y = float("nan")
    with pytest.raises(conv.ConversionError, match="NaN"):
        conv.odometry_to_sample(odom)


def test_calibration_yaml_round_trip(tmp_path):
    cams = {}
    for c in camera_calibrations():
        cams[c.channel] = conv.CameraCalibration(
            name=c.channel, cam2ego=c.sensor2ego, frame_id=c.channel, intrinsics=c.intrinsics, image_wh=(1600, 900)
        )
    path = conv.save_calibration(tmp_path / "calibration.yaml", cams)
    loaded, ego = conv.load_calibration(path)
    assert ego == "base_link" and list(loaded) == list(CAMERA_NAMES)
    for name, cal in cams.items():
        np.testing.assert_allclose(loaded[name].cam2ego, cal.cam2ego, atol=1e-9)
        np.testing.assert_allclose(loaded[name].intrinsics, cal.intrinsics)
        assert loaded[name].image_wh == (1600, 900)
    # the stored quaternion is the original nuScenes one (up to sign)
    text = path.read_text()
    q0 = np.array(camera_calibrations()[0].rotation_wxyz)
    import yaml

    q = np.array(yaml.safe_load(text)["cameras"]["CAM_FRONT"]["rotation_wxyz"])
    assert min(np.abs(q - q0).max(), np.abs(q + q0).max()) < 1e-9
    bad = tmp_path / "bad.yaml"
    bad.write_text("format: sparseoccvla_calibration\nversion: 1\ncameras:\n  CAM_FRONT: {translation: [0, 0, 0]}\n")
    with pytest.raises(ValueError, match="rotation_wxyz is required"):
        conv.load_calibration(bad)
    bad.write_text("cameras: {}\n")
    with pytest.raises(ValueError, match="format"):
        conv.load_calibration(bad)
    with pytest.raises(FileNotFoundError, match="calibration_file"):
        conv.load_calibration(tmp_path / "missing.yaml")


def test_real_calibration_matches_demo_json(nuscenes_demo_dir):
    """The embedded calibration written to YAML reproduces cam2ego of the real sample's calib.json."""
    demo = json.loads((nuscenes_demo_dir / "calib.json").read_text())["samples"][0]["cameras"]
    for c in camera_calibrations():
        np.testing.assert_allclose(c.sensor2ego, np.array(demo[c.channel]["cam2ego"]), atol=1e-6)


def test_tf_static_chain_to_cam2ego():
    def tf(parent, child, xyz, yaw):
        t = TransformStamped()
        t.header.frame_id, t.child_frame_id = parent, child
        t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = xyz
        t.transform.rotation.z, t.transform.rotation.w = math.sin(yaw / 2), math.cos(yaw / 2)
        return t

    tfs = [
        tf("base_link", "cam_mount", (1.0, 0.0, 1.5), math.pi / 2),
        tf("cam_mount", "CAM_FRONT", (0.5, 0.0, 0.0), 0.0),
    ]
    got = conv.tf_to_cam2ego(tfs, "base_link", {"CAM_FRONT": "CAM_FRONT", "CAM_BACK": "CAM_BACK"})
    assert list(got) == ["CAM_FRONT"]  # CAM_BACK has no chain
    # the camera origin: 0.5 m along the mount's x, which points along base_link's +y
    np.testing.assert_allclose(got["CAM_FRONT"][:3, 3], [1.0, 0.5, 1.5], atol=1e-12)


def _result(rng):
    k, t = 6, 6
    anchors = rng.normal(size=(k, t, 2)).astype(np.float32) + np.arange(1, t + 1)[None, :, None] * [2.0, 0.0]
    plan = PlanResult(
        waypoints=anchors[2].copy(),
        anchors=anchors,
        anchor_scores=np.linspace(0, 1, k, dtype=np.float32),
        anchor_commands=np.repeat(np.arange(3), 2),
        chosen_anchor=2,
        waypoint_dt=0.5,
    )
    return StepResult(
        stamp_ns=1_532_402_927_612_460_000,
        occupancy=_frame(rng, 40),
        forecast=[],
        plan=plan,
        explanation="Keep straight; the road ahead is clear.",
        timings_s={"total": 0.1},
        sequence_reset=False,
        reset_reason="",
        history_frames=0,
    )


def test_plan_and_path_contents():
    rng = np.random.default_rng(4)
    res = _result(rng)
    plan, path = conv.plan_to_msgs(res.plan, res.explanation, res.stamp_ns, "base_link")
    assert conv.stamp_to_ns(plan.header.stamp) == res.stamp_ns and path.header.frame_id == "base_link"
    assert len(path.poses) == 6 and plan.chosen_anchor == 2 and plan.reasoning == res.explanation
    np.testing.assert_allclose(
        [[p.pose.position.x, p.pose.position.y] for p in path.poses], res.plan.waypoints, atol=1e-6
    )
    np.testing.assert_allclose(plan.anchor_scores, res.plan.anchor_scores, atol=1e-7)
    assert [a.command for a in plan.anchors] == [0, 0, 1, 1, 2, 2]
    np.testing.assert_allclose([[p.x, p.y] for p in plan.anchors[5].waypoints], res.plan.anchors[5], atol=1e-6)
    # each pose heads from the previous waypoint (origin for the first)
    prev = np.zeros(2)
    for pose, wp in zip(path.poses, res.plan.waypoints):
        yaw = 2 * math.atan2(pose.pose.orientation.z, pose.pose.orientation.w)
        d = wp - prev
        assert math.cos(yaw - math.atan2(d[1], d[0])) == pytest.approx(1.0, abs=1e-9)
        prev = wp


def test_markers_and_diagnostics():
    rng = np.random.default_rng(5)
    res = _result(rng)
    markers = mk.result_to_markers(res, "base_link", voxel_size=0.4).markers
    types = [m.type for m in markers]
    assert markers[0].action == Marker.DELETEALL
    classes = res.occupancy.classes
    assert types.count(Marker.CUBE_LIST) == len(np.unique(classes)) and types.count(Marker.TEXT_VIEW_FACING) == 1
    assert types.count(Marker.LINE_STRIP) == 6 + 1  # K anchors + the chosen path
    cubes = {m.id: m for m in markers if m.type == Marker.CUBE_LIST}
    assert sum(len(m.points) for m in cubes.values()) == 40 and cubes[int(classes[0])].scale.x == pytest.approx(0.4)
    for cls, m in cubes.items():  # each class list holds exactly that class's voxels, in its colour
        np.testing.assert_allclose([[p.x, p.y, p.z] for p in m.points], res.occupancy.points[classes == cls], atol=1e-6)
        assert m.color.g == pytest.approx(float(OCC3D_COLORS[cls][1] / 255.0))
    anchors = [m for m in markers if m.ns == "anchors"]
    assert anchors[-1].color.r > anchors[0].color.r  # higher score -> redder
    assert all(conv.stamp_to_ns(m.header.stamp) == res.stamp_ns for m in markers)
    status = conv.diagnostic_status("driving_node: input", 1, "corrupt JPEG", {"dropped": 3, "latency_s": 0.1234567})
    assert status.level == b"\x01" and [(v.key, v.value) for v in status.values] == [
        ("dropped", "3"),
        ("latency_s", "0.123457"),
    ]


def test_marker_voxel_cap_keeps_best_scores():
    rng = np.random.default_rng(6)
    res = _result(rng)
    cubes = [m for m in mk.result_to_markers(res, "base_link", 0.4, max_voxels=5).markers if m.ns == "occupancy"]
    drawn = sorted(tuple(round(v, 4) for v in (p.x, p.y, p.z)) for m in cubes for p in m.points)
    best = np.argsort(-res.occupancy.scores)[:5]
    assert drawn == sorted(tuple(round(float(v), 4) for v in p) for p in res.occupancy.points[best])
