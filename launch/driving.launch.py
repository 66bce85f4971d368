"""Bring up SparseOccVLA on a full ROS 2 install: bag player, driving node, recorder and RViz2.

    ros2 launch sparseoccvla_ros driving.launch.py bag:=/path/to/bag [checkpoint:=/path/to/ckpt] \
        [rate:=1.0] [use_sim_time:=true] [record:=/path/to/out_bag] [rviz:=true] [loop:=false]

Without ``bag`` only the node (+ RViz2) starts, for live sensors.  The player is ``sparseoccvla play`` (raw CDR,
exact stamps, ``/clock`` at 100 Hz when ``use_sim_time:=true``), the recorder ``sparseoccvla record`` (the node's
outputs + /diagnostics to MCAP).  Every remap comes from ``sparseoccvla_ros.replay.topics`` (``node_remaps`` for
the node, ``rviz_remaps`` for RViz2's compressed camera images), the same list the pip-only bringup
``sparseoccvla drive --bag BAG --checkpoint CKPT`` uses, and the node reads the same ``config/driving.yaml``.
When the bag ends (and ``loop:=false``) the player stays up ``linger`` more seconds for the last outputs to be
recorded, then the launch shuts down; Ctrl-C stops every process (the recorder finalizes its bag).
"""

import os
import sys

from ament_index_python.packages import get_package_share_directory
from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    ExecuteProcess,
    LogInfo,
    OpaqueFunction,
    RegisterEventHandler,
)
from launch.conditions import IfCondition
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from sparseoccvla_ros.replay import topics


def _default_checkpoint(share):
    from sparseoccvla_core.default_checkpoint import default_checkpoint, is_checkpoint

    folder = default_checkpoint(share)
    return str(folder) if is_checkpoint(folder) else ""


def _flag(context, name):
    return LaunchConfiguration(name).perform(context).strip().lower() in ("true", "1", "yes")


def _launch_setup(context):
    share = get_package_share_directory("sparseoccvla_ros")
    arg = lambda name: LaunchConfiguration(name).perform(context).strip()  # noqa: E731
    suffix = arg("image_topic_suffix")
    remappings = topics.node_remaps(suffix, arg("odometry_topic"))
    sim_time = _flag(context, "use_sim_time")
    overrides = {"use_sim_time": sim_time}
    if arg("checkpoint"):
        overrides["checkpoint"] = arg("checkpoint")
    namespace = arg("namespace")
    driving = Node(
        package="sparseoccvla_ros",
        executable="driving_node",
        name=topics.NODE_NAME,
        namespace=namespace,
        parameters=[arg("params_file"), overrides],
        remappings=remappings,
        output="screen",
        emulate_tty=True,
    )
    actions = [driving]
    cli = [sys.executable, "-m", "sparseoccvla_core.cli"]  # the interpreter running this launch has the package
    if arg("record"):
        node_path = f"/{namespace.strip('/')}/{topics.NODE_NAME}" if namespace.strip("/") else f"/{topics.NODE_NAME}"
        actions.append(
            ExecuteProcess(
                cmd=cli
                + ["record", "--out", arg("record"), "--node", node_path]
                + (["--use-sim-time"] if sim_time else []),
                name="recorder",
                output="screen",
                sigterm_timeout="10",
            )
        )
    if arg("bag"):
        play = cli + ["play", arg("bag"), "--rate", arg("rate"), "--quiet"]
        play += ["--clock", "100"] if sim_time else []
        play += ["--loop"] if _flag(context, "loop") else []
        play += ["--delay", arg("play_delay")] if arg("play_delay") else []
        if arg("record"):  # the recorder subscribes the node's outputs: play once it has (no output is lost)
            play += ["--wait-for-subscriber", f"{node_path}/output/plan"]
        if not _flag(context, "loop"):
            # the player itself lingers after the bag (interruptible by Ctrl-C), so the launch can shut down the
            # moment it exits; a launch-side timer started by the player's exit would outlive a Ctrl-C that races it
            play += ["--linger", arg("linger")]
        player = ExecuteProcess(cmd=play, name="player", output="screen")
        actions.append(player)
        if not _flag(context, "loop"):

            def bag_finished(event, launch_context):
                if launch_context.is_shutdown:
                    return None  # Ctrl-C: launch is already stopping
                reason = "bag finished" if event.returncode == 0 else f"player exited with {event.returncode}"
                return [LogInfo(msg=f"{reason}; shutting down"), EmitEvent(event=Shutdown(reason=reason))]

            actions.append(RegisterEventHandler(OnProcessExit(target_action=player, on_exit=bag_finished)))
    actions.append(
        Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            arguments=["-d", os.path.join(share, "rviz", "sparseoccvla.rviz")],
            parameters=[{"use_sim_time": sim_time}],
            remappings=topics.rviz_remaps(suffix),
            condition=IfCondition(LaunchConfiguration("rviz")),
            output="log",
        )
    )
    return actions


def generate_launch_description():
    share = get_package_share_directory("sparseoccvla_ros")
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "params_file",
                default_value=os.path.join(share, "config", "driving.yaml"),
                description="node parameters (YAML, '/**: ros__parameters:')",
            ),
            DeclareLaunchArgument(
                "checkpoint",
                default_value=_default_checkpoint(share),
                description="checkpoint folder (save_pretrained); default: the committed checkpoints/default when "
                "present; empty = the value in params_file",
            ),
            DeclareLaunchArgument("namespace", default_value="sparseoccvla"),
            DeclareLaunchArgument(
                "use_sim_time", default_value="false", description="true when replaying a bag with /clock"
            ),
            DeclareLaunchArgument("rviz", default_value="true", description="start RViz2 with rviz/sparseoccvla.rviz"),
            DeclareLaunchArgument(
                "image_topic_suffix", default_value=topics.IMAGE_SUFFIX, description="camera topics are /<CAM>/<suffix>"
            ),
            DeclareLaunchArgument("odometry_topic", default_value=topics.ODOM_TOPIC),
            DeclareLaunchArgument("bag", default_value="", description="rosbag2 folder to play; empty = live sensors"),
            DeclareLaunchArgument("rate", default_value="1.0", description="playback speed factor"),
            DeclareLaunchArgument("loop", default_value="false", description="replay the bag until Ctrl-C"),
            DeclareLaunchArgument(
                "play_delay",
                default_value="",
                description="seconds the player waits; empty = until the node subscribes its inputs",
            ),
            DeclareLaunchArgument(
                "record",
                default_value="",
                description="bag folder for the node's outputs + /diagnostics; empty = no recording",
            ),
            DeclareLaunchArgument(
                "linger", default_value="5.0", description="seconds between the end of the bag and the shutdown"
            ),
            OpaqueFunction(function=_launch_setup),
        ]
    )
