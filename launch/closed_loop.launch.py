"""Closed-loop driving on a full ROS 2 install: sim_node, the driving node, a recorder and (optionally) RViz2.

    ros2 launch sparseoccvla_ros closed_loop.launch.py [checkpoint:=/path/to/ckpt] [episodes:=6] [seed:=2000] \
        [kinds:=straight,red_light] [mode:=lockstep|realtime] [out:=outputs/cl] [record:=outputs/cl/recording] \
        [rviz:=false]

The pip-only equivalent, with the same nodes in one process and the baselines, is ``sparseoccvla closed-loop``
(docs/closed_loop.md).  Separate processes here: ``sim_node`` (renders the synthetic world, publishes the bag
topics and ``/clock``, executes the plans, writes ``<out>/closed_loop.html`` of the model's episodes), the driving
node on sim time (``config/driving.yaml``, the remaps of ``topics.node_remaps``), the recorder (``sparseoccvla
record`` on sim time: sensors, ``/gt/...``, ``/sim/events``, the node's outputs, ``/diagnostics``) and RViz2 with
``rviz/sparseoccvla.rviz`` when ``rviz:=true``.  The launch shuts down when sim_node has driven every episode;
Ctrl-C stops every process (the recorder finalizes its bag).
"""

import os
import sys
import tempfile
from pathlib import Path

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
from sparseoccvla_ros.closed_loop.command import record_selection, sim_input_remaps, write_calibration
from sparseoccvla_ros.replay import topics


def _default_checkpoint(share):
    from sparseoccvla_core.default_checkpoint import default_checkpoint, is_checkpoint

    folder = default_checkpoint(share)
    return str(folder) if is_checkpoint(folder) else ""


def _launch_setup(context):
    share = get_package_share_directory("sparseoccvla_ros")
    arg = lambda name: LaunchConfiguration(name).perform(context).strip()  # noqa: E731
    namespace = arg("namespace")
    node_path = f"/{namespace.strip('/')}/{topics.NODE_NAME}" if namespace.strip("/") else f"/{topics.NODE_NAME}"
    width, height = int(arg("width")), int(arg("height"))
    # the cameras' calibration for the node where /tf_static cannot be read (it wins per camera where it can)
    calibration = write_calibration(Path(tempfile.mkdtemp(prefix="closed_loop_")) / "calibration.yaml", width, height)
    overrides = {"use_sim_time": True, "calibration_file": str(calibration)}
    if arg("checkpoint"):
        overrides["checkpoint"] = arg("checkpoint")
    driving = Node(
        package="sparseoccvla_ros",
        executable="driving_node",
        name=topics.NODE_NAME,
        namespace=namespace,
        parameters=[arg("params_file"), overrides],
        remappings=topics.node_remaps(),
        output="screen",
        emulate_tty=True,
    )
    sim_args = ["--seed", arg("seed"), "--episodes", arg("episodes"), "--kinds", arg("kinds"), "--mode", arg("mode"),
                "--width", str(width), "--height", str(height), "--quiet"]  # fmt: skip
    for name, flag in (("duration", "--duration"), ("plan_timeout", "--plan-timeout"), ("out", "--out")):
        if arg(name):
            sim_args += [flag, arg(name)]
    sim = Node(
        package="sparseoccvla_ros",
        executable="sim_node",
        name="sim_node",
        arguments=sim_args,
        remappings=sim_input_remaps(node_path),
        output="screen",
        emulate_tty=True,
    )

    def sim_finished(event, launch_context):
        if launch_context.is_shutdown:
            return None
        reason = "episodes finished" if event.returncode == 0 else f"sim_node exited with {event.returncode}"
        return [LogInfo(msg=f"{reason}; shutting down"), EmitEvent(event=Shutdown(reason=reason))]

    actions = [driving, sim, RegisterEventHandler(OnProcessExit(target_action=sim, on_exit=sim_finished))]
    if arg("record"):
        cli = [sys.executable, "-m", "sparseoccvla_core.cli"]
        actions.append(
            ExecuteProcess(
                cmd=cli + ["record", "--out", arg("record"), "--use-sim-time", *record_selection(node_path)],
                name="recorder",
                output="screen",
                sigterm_timeout="10",
            )
        )
    actions.append(
        Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            arguments=["-d", os.path.join(share, "rviz", "sparseoccvla.rviz")],
            parameters=[{"use_sim_time": True}],
            remappings=topics.rviz_remaps(),
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
                description="driving node parameters (YAML, '/**: ros__parameters:')",
            ),
            DeclareLaunchArgument(
                "checkpoint",
                default_value=_default_checkpoint(share),
                description="checkpoint folder; default: the committed checkpoints/default when present",
            ),
            DeclareLaunchArgument("namespace", default_value="sparseoccvla"),
            DeclareLaunchArgument("seed", default_value="2000", description="episode seed"),
            DeclareLaunchArgument("episodes", default_value="6", description="episodes (episode i is kind i mod 6)"),
            DeclareLaunchArgument(
                "kinds",
                default_value="straight,red_light,braking_lead,pedestrian_crossing,parked_car,turn",
                description="scenario kinds to cycle, comma-separated",
            ),
            DeclareLaunchArgument(
                "duration", default_value="", description="time limit per episode, s (empty: per kind)"
            ),
            DeclareLaunchArgument("mode", default_value="lockstep", description="lockstep | realtime"),
            DeclareLaunchArgument("plan_timeout", default_value="", description="s (empty: 10 lockstep, 1.5 realtime)"),
            DeclareLaunchArgument("width", default_value="480", description="camera width, pixels"),
            DeclareLaunchArgument("height", default_value="270", description="camera height, pixels"),
            DeclareLaunchArgument(
                "out", default_value="", description="folder for closed_loop.html / .md (empty: none)"
            ),
            DeclareLaunchArgument("record", default_value="", description="MCAP bag folder to record (empty: none)"),
            DeclareLaunchArgument("rviz", default_value="false", description="start RViz2 with rviz/sparseoccvla.rviz"),
            OpaqueFunction(function=_launch_setup),
        ]
    )
