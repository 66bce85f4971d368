"""Fixtures for the data-loader tests (imported by test_data_*.py; conftest.py stays shared).

``mini_nuscenes``: a hand-made nuScenes-format dataset written with known geometry, small enough to build in
well under a second: two scenes of an ego driving a left arc, six pinhole cameras whose timestamps lag the lidar
by up to 150 ms (their ego poses differ from the frame's reference pose), camera sweeps between key frames,
images showing static world landmarks as white dots, Occ3D labels of a road and a parked car voxelised in each
frame, OmniDrive / nuScenes-QA files.  Tests check the loader against this known truth.

``synthetic_world``: the project's synthetic world (``sparseoccvla synth``), generated once per session at a
small size; skips while that command is not available.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from sparseoccvla_core.batch import CAMERA_NAMES
from sparseoccvla_core.geometry.camera import invert_pose, pose_matrix, project_points, transform_points

IMAGE_HW = (90, 160)
CAMERA_YAWS_DEG = {
    "CAM_FRONT": 0,
    "CAM_FRONT_RIGHT": -55,
    "CAM_FRONT_LEFT": 55,
    "CAM_BACK": 180,
    "CAM_BACK_LEFT": 110,
    "CAM_BACK_RIGHT": -110,
}
CAMERA_LAG_US = {cam: 30_000 * i for i, cam in enumerate(CAMERA_NAMES)}  # up to 150 ms before the lidar
SPEED, RADIUS, YAW0 = 8.0, 60.0, 0.4  # m/s, m (left arc), rad
ORIGIN = np.array([300.0, 700.0])
T0_US = 1_600_000_000_000_000
SWEEPS_BETWEEN = 2  # camera sweeps between two key frames (6 Hz cameras)
CAR_BOX_WORLD_T = 2.2  # s: the parked car stands beside the route point at this time
CAR_SIZE = (4.4, 2.0, 1.6)


def ego_pose_at(t: float) -> np.ndarray:
    """Analytic ego2global [4, 4] at time t (s): a left circle of radius RADIUS at SPEED."""
    w = SPEED / RADIUS
    heading = YAW0 + w * t
    centre = ORIGIN + RADIUS * np.array([-np.sin(YAW0), np.cos(YAW0)])
    xy = centre + RADIUS * np.array([np.sin(heading), -np.cos(heading)])
    return pose_matrix([np.cos(heading / 2), 0, 0, np.sin(heading / 2)], [xy[0], xy[1], 0.0])


def camera_calibration() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """camera -> (K [3, 3], cam2ego [4, 4])."""
    h, w = IMAGE_HW
    k = np.array([[0.6 * w, 0, w / 2], [0, 0.6 * w, h / 2], [0, 0, 1.0]])
    out = {}
    for cam, deg in CAMERA_YAWS_DEG.items():
        a = np.deg2rad(deg)
        fwd, right, down = (
            np.array([np.cos(a), np.sin(a), 0]),
            np.array([np.sin(a), -np.cos(a), 0]),
            np.array([0, 0, -1.0]),
        )
        m = np.eye(4)
        m[:3, :3] = np.stack([right, down, fwd], axis=1)
        m[:3, 3] = [1.0 + 0.5 * np.cos(a), 0.5 * np.sin(a), 1.5]
        out[cam] = (k, m)
    return out


def landmarks() -> np.ndarray:
    """Static world points [M, 3] drawn as dots: two rings of posts around the route."""
    centre = ORIGIN + RADIUS * np.array([-np.sin(YAW0), np.cos(YAW0)])
    pts = []
    for radius in (RADIUS - 9.0, RADIUS + 9.0):
        for n, ang in enumerate(np.linspace(0, 2 * np.pi, 150, endpoint=False)):
            z = (0.7, 1.5, 2.3)[n % 3]  # heights vary so a shifted projection does not land on a neighbour
            pts.append([centre[0] + radius * np.sin(ang), centre[1] - radius * np.cos(ang), z])
    return np.asarray(pts)


def car_box_world() -> tuple[np.ndarray, float]:
    """World centre [3] (bottom at z = 0) and yaw of the parked car, 4 m left of the route."""
    pose = ego_pose_at(CAR_BOX_WORLD_T)
    yaw = np.arctan2(pose[1, 0], pose[0, 0])
    left = pose[:3, 1]
    return pose[:3, 3] + 4.0 * left + np.array([0, 0, CAR_SIZE[2] / 2]), yaw


def _quat(m: np.ndarray) -> list[float]:
    from pyquaternion import Quaternion

    return list(Quaternion(matrix=m[:3, :3], atol=1e-6).elements)


def render(world_to_cam_pts: np.ndarray, k: np.ndarray) -> np.ndarray:
    h, w = IMAGE_HW
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 2] = 40  # a dark red background (BGR) so colour order is testable
    uv, depth, inside = project_points(world_to_cam_pts, k, np.eye(4), IMAGE_HW, min_depth=1.0)
    for u, v in uv[inside].astype(int):
        img[max(v - 1, 0) : v + 2, max(u - 1, 0) : u + 2] = 255
    return img


def occ3d_labels_in(ego2global: np.ndarray) -> np.ndarray:
    """Road (layer 0, within 5 m of the route circle) and the parked car, voxelised in this ego frame."""
    sem = np.full((200, 200, 16), 17, np.uint8)
    i, j, kk = np.meshgrid(np.arange(200), np.arange(200), np.arange(6), indexing="ij")
    centres = np.stack([-40 + 0.4 * (i + 0.5), -40 + 0.4 * (j + 0.5), -0.2 + 0.4 * (kk + 0.5)], -1).reshape(-1, 3)
    world = transform_points(ego2global, centres)
    circle_c = ORIGIN + RADIUS * np.array([-np.sin(YAW0), np.cos(YAW0)])
    d = np.abs(np.linalg.norm(world[:, :2] - circle_c, axis=1) - RADIUS)
    idx = np.stack([i, j, kk], -1).reshape(-1, 3)
    road = (d < 5.0) & (idx[:, 2] == 0)
    sem[tuple(idx[road].T)] = 11
    c, yaw = car_box_world()
    rel = world - c
    local = np.stack(
        [
            np.cos(yaw) * rel[:, 0] + np.sin(yaw) * rel[:, 1],
            -np.sin(yaw) * rel[:, 0] + np.cos(yaw) * rel[:, 1],
            rel[:, 2],
        ],
        1,
    )
    car = np.all(np.abs(local) < np.array(CAR_SIZE) / 2, axis=1)
    sem[tuple(idx[car].T)] = 4
    return sem


@dataclass
class MiniNuScenes:
    root: Path
    version: str
    scenes: dict[str, dict]  # name -> {"split", "times" [S] s, "sample_tokens"}


def write_mini_nuscenes(root: Path, scene_lengths=(("scene-a", "train", 7), ("scene-b", "val", 4))) -> MiniNuScenes:
    version = "v1.0-minitest"
    tables: dict[str, list] = {
        n: []
        for n in (
            "category",
            "attribute",
            "visibility",
            "instance",
            "sensor",
            "calibrated_sensor",
            "ego_pose",
            "log",
            "scene",
            "sample",
            "sample_data",
            "sample_annotation",
            "map",
        )
    }
    calib = camera_calibration()
    for cam in CAMERA_NAMES + ("LIDAR_TOP",):
        tables["sensor"].append(
            {"token": f"sensor-{cam}", "channel": cam, "modality": "lidar" if cam == "LIDAR_TOP" else "camera"}
        )
        if cam == "LIDAR_TOP":
            tables["calibrated_sensor"].append(
                {
                    "token": f"cs-{cam}",
                    "sensor_token": f"sensor-{cam}",
                    "translation": [0.94, 0.0, 1.84],
                    "rotation": [1, 0, 0, 0],
                    "camera_intrinsic": [],
                }
            )
        else:
            k, m = calib[cam]
            tables["calibrated_sensor"].append(
                {
                    "token": f"cs-{cam}",
                    "sensor_token": f"sensor-{cam}",
                    "translation": m[:3, 3].tolist(),
                    "rotation": _quat(m),
                    "camera_intrinsic": k.tolist(),
                }
            )
    tables["log"].append(
        {
            "token": "log-0",
            "logfile": "minitest",
            "vehicle": "v",
            "date_captured": "2020-01-01",
            "location": "boston-seaport",
        }
    )
    tables["map"].append(
        {"token": "map-0", "log_tokens": ["log-0"], "category": "semantic_prior", "filename": "maps/none.png"}
    )
    marks = landmarks()
    info: dict[str, dict] = {}
    t_offset = 0.0
    period = 0.5 / (SWEEPS_BETWEEN + 1)
    for name, split, n in scene_lengths:
        times = t_offset + 0.5 * np.arange(n)
        t_offset += 0.5 * n + 5.0
        s_tokens = [f"{name}-s{i}" for i in range(n)]
        tables["scene"].append(
            {
                "token": f"{name}-tok",
                "name": name,
                "description": "",
                "log_token": "log-0",
                "nbr_samples": n,
                "first_sample_token": s_tokens[0],
                "last_sample_token": s_tokens[-1],
            }
        )
        prev_cam: dict[str, str] = {c: "" for c in CAMERA_NAMES + ("LIDAR_TOP",)}
        for i, (tok, t) in enumerate(zip(s_tokens, times)):
            ts = T0_US + int(round(t * 1e6))
            tables["sample"].append(
                {
                    "token": tok,
                    "timestamp": ts,
                    "scene_token": f"{name}-tok",
                    "prev": s_tokens[i - 1] if i else "",
                    "next": s_tokens[i + 1] if i < n - 1 else "",
                }
            )
            # camera sweeps before this key frame (not before the first one), then the key frame itself
            stamps = (
                [(ts - int(round((SWEEPS_BETWEEN - j) * period * 1e6)), False) for j in range(SWEEPS_BETWEEN)]
                if i
                else []
            )
            stamps.append((ts, True))
            for cam in CAMERA_NAMES + ("LIDAR_TOP",):
                for stamp, key in stamps:
                    if cam == "LIDAR_TOP" and not key:
                        continue
                    cam_ts = stamp - CAMERA_LAG_US.get(cam, 0)
                    sd_tok = f"{tok}-{cam}-{cam_ts}"
                    pose = ego_pose_at((cam_ts - T0_US) * 1e-6)
                    tables["ego_pose"].append(
                        {
                            "token": f"ep-{sd_tok}",
                            "timestamp": cam_ts,
                            "translation": pose[:3, 3].tolist(),
                            "rotation": _quat(pose),
                        }
                    )
                    folder = "samples" if key else "sweeps"
                    if cam == "LIDAR_TOP":
                        filename = f"{folder}/{cam}/{sd_tok}.pcd.bin"
                    else:
                        filename = f"{folder}/{cam}/{sd_tok}.jpg"
                        k, c2e = calib[cam]
                        world_to_cam = invert_pose(pose @ c2e)
                        img = render(transform_points(world_to_cam, marks), k)
                        out = root / filename
                        out.parent.mkdir(parents=True, exist_ok=True)
                        cv2.imwrite(str(out), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
                    rec = {
                        "token": sd_tok,
                        "sample_token": tok,
                        "ego_pose_token": f"ep-{sd_tok}",
                        "calibrated_sensor_token": f"cs-{cam}",
                        "timestamp": cam_ts,
                        "fileformat": "jpg",
                        "is_key_frame": key,
                        "height": IMAGE_HW[0] if cam != "LIDAR_TOP" else 0,
                        "width": IMAGE_HW[1] if cam != "LIDAR_TOP" else 0,
                        "filename": filename,
                        "prev": prev_cam[cam],
                        "next": "",
                    }
                    if prev_cam[cam]:
                        next(r for r in reversed(tables["sample_data"]) if r["token"] == prev_cam[cam])["next"] = sd_tok
                    prev_cam[cam] = sd_tok
                    tables["sample_data"].append(rec)
            # Occ3D GT in the frame's reference (lidar) ego frame
            gt = root / "gts" / name / tok
            gt.mkdir(parents=True)
            ones = np.ones((200, 200, 16), np.uint8)
            np.savez_compressed(
                gt / "labels.npz", semantics=occ3d_labels_in(ego_pose_at(t)), mask_lidar=ones, mask_camera=ones
            )
        info[name] = {"split": split, "times": times, "sample_tokens": s_tokens}
    (root / version).mkdir(parents=True)
    (root / "maps").mkdir()
    cv2.imwrite(str(root / "maps" / "none.png"), np.zeros((4, 4), np.uint8))
    for table, rows in tables.items():
        (root / version / f"{table}.json").write_text(json.dumps(rows))
    splits = {"train": [], "val": []}
    for name, split, _ in scene_lengths:
        splits[split].append(name)
    (root / "splits.json").write_text(json.dumps(splits))
    # OmniDrive QA for the first train sample only; nuScenes-QA for two train samples
    first = info[scene_lengths[0][0]]["sample_tokens"][0]
    for kind, content in {
        "desc": {
            "description": "A curved road with a parked car on the left.",
            "action": "Keep turning left along the lane at a steady speed.",
        },
        "conv": [{"question": "Is there a parked car?", "answer": "Yes, on the left."}],
    }.items():
        (root / "omnidrive" / kind / "train").mkdir(parents=True)
        (root / "omnidrive" / kind / "train" / f"{first}.json").write_text(json.dumps(content))
    second = info[scene_lengths[0][0]]["sample_tokens"][1]
    (root / "nuscenes_qa").mkdir()
    (root / "nuscenes_qa" / "NuScenes_train_questions.json").write_text(
        json.dumps(
            {
                "questions": [
                    {
                        "sample_token": second,
                        "question": "How many cars are there?",
                        "answer": "1",
                        "template_type": "count",
                        "num_hop": 0,
                    }
                ]
            }
        )
    )
    return MiniNuScenes(root=root, version=version, scenes=info)


@pytest.fixture(scope="session")
def mini_nuscenes(tmp_path_factory) -> MiniNuScenes:
    return write_mini_nuscenes(tmp_path_factory.mktemp("mini_nuscenes"))


# ---------------------------------------------------------------------- the project's synthetic world
SYNTH_SCENES, SYNTH_SEED = 2, 0


@pytest.fixture(scope="session")
def synthetic_world(tmp_path_factory) -> Path:
    """A small synthetic world written by ``sparseoccvla synth`` (skips while that command does not exist)."""
    from sparseoccvla_core.cli import COMMANDS, main

    if importlib.util.find_spec("sparseoccvla_core.commands.synth") is None or "synth" not in COMMANDS:
        pytest.skip("the synthetic world generator ('sparseoccvla synth') is not available yet")

    out = tmp_path_factory.mktemp("synth")
    args = ["synth", "--out", str(out), "--scenes", str(SYNTH_SCENES), "--seed", str(SYNTH_SEED)]
    args += synth_small_flags()
    assert main(args) == 0
    return out


def synth_small_flags() -> list[str]:
    """Size-reducing flags the synth command offers (only those it has), to keep the session fixture fast."""
    from sparseoccvla_core.cli import build_command_parser

    parser = build_command_parser("synth")
    known = {a for action in parser._actions for a in action.option_strings}
    # 12 key frames: the train scene then has 6 complete 6-step trajectories, enough for 6 anchors per command
    with_value = {"--frames": "12", "--width": "160", "--height": "96"}
    switches = ("--no-lidar",)
    return [x for flag, value in with_value.items() if flag in known for x in (flag, value)] + [
        flag for flag in switches if flag in known
    ]
