"""Topic names and types of a replay bag and of the node's remaps: the one place both bringups read.

Sensor topics follow the de-facto nuScenes converter (foxglove ``nuscenes2mcap``): one ``/<CAM>/image_rect_compressed``
(the original JPEG bytes) and ``/<CAM>/camera_info`` per camera, frame ids named after the camera channel, ``/odom``
(nav_msgs/Odometry, pose in ``map``, twist in ``base_link``), ``/tf`` (map -> base_link) and ``/tf_static``
(base_link -> each camera).  Ground truth for ``sparseoccvla eval-bag`` goes on ``/gt/...`` topics, stamped with the key
frame's CAM_FRONT stamp, so a recording of the node's outputs matches it stamp for stamp.

Pure data (no rclpy import): the launch file, ``sparseoccvla drive``, the converter and the recorder import it.
"""

from __future__ import annotations

from sparseoccvla_core.batch import CAMERA_NAMES  # noqa: F401  (re-exported: the six nuScenes channels, in order)

MAP_FRAME = "map"
EGO_FRAME = "base_link"
IMAGE_SUFFIX = "image_rect_compressed"

ODOM_TOPIC = "/odom"
TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"
CLOCK_TOPIC = "/clock"

GT_OCCUPANCY_TOPIC = "/gt/occupancy"  # sensor_msgs/PointCloud2 (x, y, z, class), current Occ3D voxels, ego frame
GT_TRAJECTORY_TOPIC = "/gt/trajectory"  # nav_msgs/Path, the 6 future GT waypoints in the current ego frame
GT_BOXES_TOPIC = "/gt/boxes"  # visualization_msgs/MarkerArray, GT boxes of each future key frame (see converter)
GT_COMMAND_TOPIC = "/gt/command"  # std_msgs/UInt8, driving command (0 left, 1 straight, 2 right)
# sensor_msgs/Image "16UC1" [X, Y]: bit z of pixel (x, y) = Occ3D mask_camera[x, y, z] (the official mIoU's mask)
GT_CAMERA_MASK_TOPIC = "/gt/occupancy_camera_mask"
GT_FRAME_TOPIC = "/gt/frame_info"  # std_msgs/String, JSON: scene, sample_token, frame_index, scene_length per key frame
CALIBRATION_FILENAME = "calibration.yaml"  # written by `sparseoccvla bag` inside the bag directory

NODE_NAMESPACE = "/sparseoccvla"
NODE_NAME = "driving_node"


def image_topic(cam: str, suffix: str = IMAGE_SUFFIX) -> str:
    """Bag topic of one camera's images, e.g. ``/CAM_FRONT/image_rect_compressed``."""
    return f"/{cam}/{suffix}"


def camera_info_topic(cam: str) -> str:
    """Bag topic of one camera's CameraInfo, e.g. ``/CAM_FRONT/camera_info``."""
    return f"/{cam}/camera_info"


def node_remaps(image_suffix: str = IMAGE_SUFFIX, odometry_topic: str = ODOM_TOPIC) -> list[tuple[str, str]]:
    """Remaps from the node's relative inputs (``~/input/...``) to the bag topics; used by the launch file and ``drive``."""
    remaps = [("~/input/odometry", odometry_topic), ("~/input/command", GT_COMMAND_TOPIC)]
    for cam in CAMERA_NAMES:
        remaps.append((f"~/input/{cam}/image", image_topic(cam, image_suffix)))
        remaps.append((f"~/input/{cam}/camera_info", camera_info_topic(cam)))
    return remaps


#: image_transport transport name that RViz2's Image display reads from a topic's last token (ros2/rviz
#: ``get_transport_from_topic``): a display on ``/<CAM>/image_rect/compressed`` subscribes CompressedImage there.
RVIZ_IMAGE_BASE = "image_rect"


def rviz_image_topic(cam: str) -> str:
    """Topic the RViz file names for one camera: ``/<CAM>/image_rect/compressed`` (compressed transport)."""
    return f"/{cam}/{RVIZ_IMAGE_BASE}/compressed"


def rviz_remaps(image_suffix: str = IMAGE_SUFFIX) -> list[tuple[str, str]]:
    """Remaps for the rviz2 process: its image_transport topics -> the bag's camera topics.

    nuscenes2mcap's ``image_rect_compressed`` is not image_transport's ``<base>/compressed`` naming, so RViz would
    subscribe to it as a raw Image; the RViz file uses the transport naming and the launch file remaps it here.
    """
    return [(rviz_image_topic(cam), image_topic(cam, image_suffix)) for cam in CAMERA_NAMES]
