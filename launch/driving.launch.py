"""Bring up SparseOccVLA on a full ROS 2 install: the driving node (+ RViz2).

    ros2 launch sparseoccvla_ros driving.launch.py checkpoint:=/path/to/ckpt [rviz:=true] [use_sim_time:=true]

Inputs are remapped to the de-facto nuScenes bag topics (/CAM_*/image_rect_compressed, /CAM_*/camera_info,
/odom); override them with the *_topic arguments or edit config/driving.yaml.  On a pip-only machine (no
`launch`), run the same node with the same YAML: `driving_node --ros-args --params-file config/driving.yaml`.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")


def _launch_setup(context):
    share = get_package_share_directory("sparseoccvla_ros")
    suffix = LaunchConfiguration("image_topic_suffix").perform(context)
    remappings = [("~/input/odometry", LaunchConfiguration("odometry_topic").perform(context))]
    for cam in CAMERAS:
        remappings.append((f"~/input/{cam}/image", f"/{cam}/{suffix}"))
        remappings.append((f"~/input/{cam}/camera_info", f"/{cam}/camera_info"))
    overrides = {"use_sim_time": LaunchConfiguration("use_sim_time").perform(context).lower() == "true"}
    checkpoint = LaunchConfiguration("checkpoint").perform(context)
    if checkpoint:
        overrides["checkpoint"] = checkpoint
    driving = Node(
        package="sparseoccvla_ros",
        executable="driving_node",
        name="driving_node",
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), overrides],
        remappings=remappings,
        output="screen",
        emulate_tty=True,
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", os.path.join(share, "rviz", "sparseoccvla.rviz")],
        parameters=[{"use_sim_time": overrides["use_sim_time"]}],
        condition=IfCondition(LaunchConfiguration("rviz")),
        output="log",
    )
    return [driving, rviz]


def generate_launch_description():
    share = get_package_share_directory("sparseoccvla_ros")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "driving.yaml"),
                              description="node parameters (YAML, '/**: ros__parameters:')"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="checkpoint folder (save_pretrained); empty = the value in params_file"),
        DeclareLaunchArgument("namespace", default_value="sparseoccvla"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="true when replaying a bag with /clock"),
        DeclareLaunchArgument("rviz", default_value="true", description="start RViz2 with rviz/sparseoccvla.rviz"),
        DeclareLaunchArgument("image_topic_suffix", default_value="image_rect_compressed",
                              description="camera topics are /<CAM>/<suffix>"),
        DeclareLaunchArgument("odometry_topic", default_value="/odom"),
        OpaqueFunction(function=_launch_setup),
    ])
