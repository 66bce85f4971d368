"""The custom interfaces of sparseoccvla_msgs make real round trips over rclpy (DDS on localhost).

Every message type goes publisher -> subscriber and AskScene goes client -> server inside one process,
with field values checked on arrival, so the build in msg/ (cmake into the venv, or colcon) is proven usable.
"""

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (run scripts/install.sh)")
msgs = pytest.importorskip("sparseoccvla_msgs.msg", reason="sparseoccvla_msgs is not built (run scripts/install.sh)")

from builtin_interfaces.msg import Time  # noqa: E402
from geometry_msgs.msg import Point, Pose, PoseStamped  # noqa: E402
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402

from sparseoccvla_msgs.msg import AnchorTrajectory, DrivingPlan, OccupancyForecast  # noqa: E402
from sparseoccvla_msgs.srv import AskScene  # noqa: E402

pytestmark = pytest.mark.ros

STAMP = Time(sec=1532402927, nanosec=612460000)


@pytest.fixture()
def node():
    context = rclpy.context.Context()
    rclpy.init(context=context)
    n = rclpy.create_node("sparseoccvla_interface_test", context=context)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(n)
    n.executor_for_test = executor
    yield n
    executor.shutdown()
    n.destroy_node()
    rclpy.shutdown(context=context)


def _spin_until(node, predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        node.executor_for_test.spin_once(timeout_sec=0.05)
    return predicate()


def _round_trip(node, msg_type, message, topic):
    qos = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
    received = []
    node.create_subscription(msg_type, topic, received.append, qos)
    pub = node.create_publisher(msg_type, topic, qos)
    assert _spin_until(node, lambda: pub.get_subscription_count() > 0), "subscriber never matched"
    pub.publish(message)
    assert _spin_until(node, lambda: len(received) > 0), f"no {msg_type.__name__} arrived on {topic}"
    return received[0]


def _cloud(points: np.ndarray, classes: np.ndarray, scores: np.ndarray, frame: str) -> PointCloud2:
    dtype = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("class", "u1"), ("score", "<f4")], align=False)
    arr = np.zeros(len(points), dtype=dtype)
    arr["x"], arr["y"], arr["z"] = points.T
    arr["class"], arr["score"] = classes, scores
    cloud = PointCloud2()
    cloud.header.frame_id = frame
    cloud.height, cloud.width = 1, len(points)
    cloud.fields = [
        PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
        PointField(name="y", offset=4, datatype=PointField.FLOAT32, count=1),
        PointField(name="z", offset=8, datatype=PointField.FLOAT32, count=1),
        PointField(name="class", offset=12, datatype=PointField.UINT8, count=1),
        PointField(name="score", offset=13, datatype=PointField.FLOAT32, count=1),
    ]
    cloud.point_step, cloud.row_step = dtype.itemsize, dtype.itemsize * len(points)
    cloud.is_dense = True
    cloud.data = arr.tobytes()
    return cloud


def test_occupancy_forecast_round_trip(node):
    rng = np.random.default_rng(0)
    pts = rng.uniform(-40, 40, size=(50, 3)).astype(np.float32)
    msg = OccupancyForecast()
    msg.header.stamp, msg.header.frame_id = STAMP, "base_link"
    msg.horizons = [0.5, 1.0]
    msg.clouds = [
        _cloud(pts, np.full(50, 4, np.uint8), np.linspace(0, 1, 50, dtype=np.float32), f"base_link_t{i}")
        for i in (1, 2)
    ]
    msg.future_ego_poses = [Pose(), Pose()]
    msg.future_ego_poses[1].position.x = 5.0
    got = _round_trip(node, OccupancyForecast, msg, "/test/forecast")
    assert got.header.stamp == STAMP and list(got.horizons) == [0.5, 1.0]
    assert [c.header.frame_id for c in got.clouds] == ["base_link_t1", "base_link_t2"]
    dtype = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("class", "u1"), ("score", "<f4")])
    arr = np.frombuffer(bytes(got.clouds[1].data), dtype=dtype)
    np.testing.assert_array_equal(np.stack([arr["x"], arr["y"], arr["z"]], 1), pts)
    assert (arr["class"] == 4).all() and got.future_ego_poses[1].position.x == 5.0
    assert OccupancyForecast.CLASS_FREE == 17


def test_driving_plan_round_trip(node):
    msg = DrivingPlan()
    msg.header.stamp, msg.header.frame_id = STAMP, "base_link"
    msg.waypoint_dt = 0.5
    for k in range(3):
        anchor = AnchorTrajectory(command=k)
        anchor.waypoints = [Point(x=2.0 * (i + 1), y=0.5 * k * i, z=0.0) for i in range(6)]
        msg.anchors.append(anchor)
    msg.anchor_scores = [0.1, 0.7, 0.2]
    msg.chosen_anchor = 1
    msg.path.header = msg.header
    for wp in msg.anchors[1].waypoints:
        pose = PoseStamped()
        pose.header = msg.header
        pose.pose.position = wp
        msg.path.poses.append(pose)
    msg.reasoning = "The light ahead is green, so keep going straight."
    got = _round_trip(node, DrivingPlan, msg, "/test/plan")
    assert got.chosen_anchor == 1 and got.reasoning == msg.reasoning
    np.testing.assert_allclose(got.anchor_scores, [0.1, 0.7, 0.2], rtol=1e-6)
    assert [a.command for a in got.anchors] == [0, 1, 2]
    assert got.anchors[2].waypoints[5].y == pytest.approx(5.0)
    assert len(got.path.poses) == 6 and got.path.poses[-1].pose.position.x == pytest.approx(12.0)
    assert AnchorTrajectory.COMMAND_RIGHT == 2


def test_ask_scene_service_round_trip(node):
    def handle(request, response):
        response.success = bool(request.question.strip())
        response.answer = f"you asked: {request.question}"
        response.scene_stamp = STAMP
        response.latency_s = 0.25
        return response

    node.create_service(AskScene, "/test/ask_scene", handle)
    client = node.create_client(AskScene, "/test/ask_scene")
    assert _spin_until(node, client.service_is_ready), "AskScene server never became ready"
    future = client.call_async(AskScene.Request(question="Is the light red?"))
    assert _spin_until(node, future.done), "AskScene call did not complete"
    response = future.result()
    assert response.success and response.answer == "you asked: Is the light red?"
    assert response.scene_stamp == STAMP and response.latency_s == pytest.approx(0.25)
    assert response.error_message == ""
