"""Ego state, future waypoints and driving command from the ego poses of a scene's key frames (docs/design.md §7).

* **Ego state** (:data:`~sparseoccvla_core.batch.EGO_STATE_FIELDS`: vx, vy, ax, ay, yaw_rate, speed) by finite
  differences of the key-frame ego poses, expressed in the ego frame of the frame it belongs to.  It is a model
  *input*, so it is causal: backward differences (frame k and k-1).  At a scene's first key frame there is no
  past pose; velocity and yaw rate then take the second frame's backward difference (the only value that looks
  0.5 s ahead; documented because ego status is a known shortcut in open-loop planning,
  docs/reference_choices.md §4.3), and the acceleration of the first two frames is that of the third (it needs
  three poses).
* **Waypoints**: the next ``T`` key-frame positions (0.5 s apart in nuScenes) in the current ego frame, with a
  validity mask where the scene ends (as ``gt_planning`` + mask of OmniDrive / ``fut_valid_flag`` of VAD).
* **Driving command** from the GT future lateral offset as UniAD / VAD / SparseDrive / OmniDrive derive it:
  lateral displacement (ego y, left positive) of the last valid waypoint >= +2 m -> left, <= -2 m -> right,
  otherwise straight (docs/reference_choices.md §4.4: OmniDrive ``get_planning_label``, VAD / SparseDrive converters,
  threshold 2 m).  Encoded 0 left / 1 straight / 2 right (:data:`~sparseoccvla_core.batch.COMMANDS`).
"""

from __future__ import annotations

import numpy as np

from ..batch import EGO_STATE_DIM
from .camera import invert_pose, yaw_of

#: |lateral offset| (m) of the last valid GT waypoint above which the command is a turn (UniAD / VAD / OmniDrive).
COMMAND_LATERAL_THRESHOLD_M: float = 2.0
COMMAND_LEFT, COMMAND_STRAIGHT, COMMAND_RIGHT = 0, 1, 2
#: Kinematic fan (planner anchors before data anchors exist, and for a command the data has too few trajectories
#: of): top speed and turn yaw rate.
FAN_MAX_SPEED: float = 10.0  # m/s, a typical urban speed in nuScenes
FAN_TURN_YAW_RATE: float = 0.3  # rad/s, a moderate urban turn (about 50 degrees over 3 s)


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2.0 * np.pi) - np.pi


def ego_states(ego2global: np.ndarray, timestamps_us: np.ndarray) -> np.ndarray:
    """Ego state of every key frame of one scene.

    Args:
        ego2global: [S, 4, 4] ego poses of the scene's key frames in time order.
        timestamps_us: [S] int64 timestamps, microseconds.
    Returns:
        [S, EGO_STATE_DIM] float32 (vx, vy, ax, ay, yaw_rate, speed), each in its own frame's ego axes, SI units.
    Raises:
        ValueError: fewer than 2 frames or non-increasing timestamps.
    """
    s = ego2global.shape[0]
    out = np.zeros((s, EGO_STATE_DIM), dtype=np.float32)
    if s < 2:
        return out  # a single pose has no motion information: at rest is the only honest value
    t = np.asarray(timestamps_us, dtype=np.float64) * 1e-6
    dt = np.diff(t)  # [S-1]
    if np.any(dt <= 0):
        raise ValueError("key-frame timestamps must be strictly increasing within a scene")
    pos = ego2global[:, :3, 3]  # [S, 3] global
    vel_world = np.diff(pos, axis=0) / dt[:, None]  # [S-1, 3]: backward difference of frames 1..S-1
    vel_world = np.concatenate([vel_world[:1], vel_world], axis=0)  # [S, 3]: frame 0 borrows frame 1's value
    yaw = yaw_of(ego2global)
    yaw_rate = _wrap(np.diff(yaw)) / dt  # [S-1]
    yaw_rate = np.concatenate([yaw_rate[:1], yaw_rate])  # [S]
    acc_world = np.zeros_like(vel_world)
    if s >= 3:
        acc_world[2:] = np.diff(vel_world[1:], axis=0) / dt[1:, None]  # frames 2..S-1 (three real poses)
        acc_world[:2] = acc_world[2]
    rot_t = np.swapaxes(ego2global[:, :3, :3], 1, 2)  # [S, 3, 3] global -> ego rotation
    vel = np.einsum("sij,sj->si", rot_t, vel_world)  # [S, 3]
    acc = np.einsum("sij,sj->si", rot_t, acc_world)  # [S, 3]
    out[:, 0], out[:, 1] = vel[:, 0], vel[:, 1]
    out[:, 2], out[:, 3] = acc[:, 0], acc[:, 1]
    out[:, 4] = yaw_rate
    out[:, 5] = np.hypot(vel[:, 0], vel[:, 1])
    return out


def future_frames(num_frames: int, index: int, horizon: int, step: int = 1) -> np.ndarray:
    """Key-frame indices of the ``horizon`` future waypoints of key frame ``index``: ``index + step * t`` for
    t = 1..T, -1 past the scene's last key frame (``step`` > 1 sub-samples the key frames, e.g. at ``plan_dt``)."""
    fut = index + step * np.arange(1, horizon + 1)
    return np.where(fut < num_frames, fut, -1)


def future_waypoints(ego2global: np.ndarray, index: int, horizon: int, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The ``horizon`` future key-frame positions (:func:`future_frames`) in the ego frame of key frame ``index``.

    The one rule the dataset's GT trajectory, the anchors, the GT bag and the evaluation share.

    Args:
        ego2global: [S, 4, 4] key-frame ego poses of the scene.
        index: current key frame.
        horizon: number of waypoints T.
        step: key frames between waypoints (1: every key frame).
    Returns:
        waypoints [T, 2] float32 (x forward, y left, m; zeros where invalid), valid [T] bool.
    """
    fut = future_frames(ego2global.shape[0], index, horizon, step)
    valid = fut >= 0
    wp = np.zeros((horizon, 2), dtype=np.float32)
    if valid.any():
        global2ego = invert_pose(ego2global[index])
        pts = ego2global[fut[valid], :3, 3]  # [T', 3] global
        local = pts @ global2ego[:3, :3].T + global2ego[:3, 3]  # [T', 3] current ego frame
        wp[valid] = local[:, :2]
    return wp, valid


def driving_command(waypoints: np.ndarray, valid: np.ndarray, threshold: float = COMMAND_LATERAL_THRESHOLD_M) -> int:
    """0 left / 1 straight / 2 right from the lateral offset of the last valid waypoint (see module docstring).

    Args:
        waypoints: [T, 2] future (x, y) in the current ego frame.
        valid: [T] bool.
        threshold: lateral offset in m that makes a turn.
    Returns:
        The command; straight when no waypoint is valid.
    """
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        return COMMAND_STRAIGHT
    y = float(waypoints[idx[-1], 1])
    if y >= threshold:
        return COMMAND_LEFT
    if y <= -threshold:
        return COMMAND_RIGHT
    return COMMAND_STRAIGHT


def kinematic_fan(num_commands: int, per_command: int, horizon: int, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Constant-speed, constant-yaw-rate arcs per driving command: deterministic, distinct trajectories.

    Commands are ordered left, straight, right; yaw rates span +FAN_TURN_YAW_RATE (left, +y) to -FAN_TURN_YAW_RATE
    (right) (0 with a single command); speeds are ``FAN_MAX_SPEED * k / per_command`` for k = 1..per_command.  An arc
    of speed v and yaw rate w reaches ``(v/w sin(w t), v/w (1 - cos(w t)))`` at time t (``(v t, 0)`` when w = 0).

    Args:
        num_commands: C.
        per_command: arcs per command.
        horizon: waypoints T.
        dt: seconds between waypoints.
    Returns:
        anchors [C*per_command, T, 2] float32 (x, y) m in the ego frame, command-major; commands [C*per_command]
        int64.
    """
    yaw_rates = np.linspace(FAN_TURN_YAW_RATE, -FAN_TURN_YAW_RATE, num_commands) if num_commands > 1 else np.zeros(1)
    speeds = FAN_MAX_SPEED * np.arange(1, per_command + 1, dtype=np.float64) / per_command  # [K/C]
    times = dt * np.arange(1, horizon + 1, dtype=np.float64)  # [T]
    omega = np.repeat(yaw_rates, per_command)[:, None]  # [K, 1]
    speed = np.tile(speeds, num_commands)[:, None]  # [K, 1]
    heading = omega * times  # [K, T]
    straight = np.abs(omega) < 1e-9
    safe = np.where(straight, 1.0, omega)
    x = np.where(straight, speed * times, speed / safe * np.sin(heading))
    y = np.where(straight, 0.0, speed / safe * (1.0 - np.cos(heading)))
    commands = np.repeat(np.arange(num_commands, dtype=np.int64), per_command)
    return np.stack([x, y], axis=-1).astype(np.float32), commands
