"""Generate a synthetic nuScenes-format dataset: world -> traffic -> sensors -> labels -> QA -> tables.

Per scene (independent of every other scene, seeded by ``SeedSequence([seed, scene_index])``):

1. build the static world (:mod:`world`) and run the traffic (:mod:`traffic`) at ``sim_dt``;
2. at each 2 Hz key frame render the six cameras (:mod:`render`) and the LiDAR panorama (:mod:`lidar`), write the
   JPEGs and the ``.pcd.bin`` sweep, compute the Occ3D labels and masks (:mod:`occupancy`);
3. annotate every agent within ``ANNOTATION_RANGE`` m that the LiDAR or a camera sees (visibility bin from its
   visible pixels over its box's projected area);
4. write the OmniDrive QA files and the per-frame scenario facts (``scenario/``: signal ahead, ego behaviour) and
   return the scene's nuScenes rows and nuScenes-QA items.

The parent merges the scenes in index order and writes the tables, so output bytes do not depend on the
number of worker processes.
"""

from __future__ import annotations

import copy
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from ..batch import CAMERA_NAMES
from .calibration import camera_calibrations, lidar_calibration, yaw_to_quaternion
from .config import SynthConfig
from .lidar import LidarModel, virtual_views
from .nuscenes_writer import (
    static_tables,
    token,
    visibility_token,
    write_jpeg,
    write_json,
    write_map_mask,
    write_npz,
    write_tables,
)
from .occupancy import VoxelProjector, semantics
from .qa import QA_MIN_VISIBILITY, QA_NAME, QA_RANGE, STATUS_WORD, FrameFacts, QAObject, nuscenes_qa, omnidrive
from .render import Camera, Look, PackedScene, render
from .traffic import FrameState, TrafficSimulation, simulate
from .world import SURF_OTHER_FLAT, SURF_ROAD, SURF_SIDEWALK, StaticWorld, build_world

ANNOTATION_RANGE = 60.0  # m from the ego within which agents are annotated
SCENE_T0_US = 1_700_000_000_000_000  # first key frame of scene 0 (2023-11-14 UTC), microseconds
SCENE_SPACING_US = 100_000_000  # scenes start 100 s apart
KEY_FRAME_US = 500_000  # 2 Hz
LOCATION = "synthetic-town"


@dataclass
class SensorRig:
    """Cameras, LiDAR model and the cached voxel projections for one image size."""

    cameras: list
    lidar_views: list
    lidar: LidarModel
    camera_voxels: VoxelProjector
    lidar_voxels: VoxelProjector


@lru_cache(maxsize=2)
def sensor_rig(width: int, height: int) -> SensorRig:
    cams = [
        Camera(c.channel, c.scaled_intrinsics(width, height), c.sensor2ego, width, height)
        for c in camera_calibrations()
    ]
    lid = lidar_calibration()
    views = virtual_views(lid)
    return SensorRig(
        cams,
        views,
        LidarModel(lid, views),
        VoxelProjector([(c.K, c.cam2ego, c.width, c.height) for c in cams]),
        VoxelProjector([(v.K, v.cam2ego, v.width, v.height) for v in views]),
    )


def ego_matrix(pose: np.ndarray) -> np.ndarray:
    """[4, 4] ego2global of a flat-world pose (x, y, yaw)."""
    c, s = np.cos(pose[2]), np.sin(pose[2])
    m = np.eye(4)
    m[:2, :2] = [[c, -s], [s, c]]
    m[:2, 3] = pose[:2]
    return m


def frame_objects(world: StaticWorld, sim: TrafficSimulation) -> list:
    """Scenery (signal lamps lit per the current state) followed by the agents."""
    objs = list(world.scenery)
    for head in world.heads:
        o = copy.copy(world.scenery[head.object_index])
        o.color = o.color.copy()
        state = sim.signal_state(head.group)
        for part, name in zip(head.lamp_parts, ("red", "yellow", "green")):
            if name != state:
                o.color[part] = o.color[part] * 0.12 + 0.05
        objs[head.object_index] = o
    return objs + sim.objects()


def scene_name(index: int) -> str:
    return f"scene-{index:04d}"


def _box_area(center, size, yaw, cam: Camera, global2cam: np.ndarray) -> float:
    """Pixel area of an annotation box's projection inside the image (0 when it crosses the camera plane)."""
    l, w, h = size
    sx = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * 0.5 * l
    sy = np.array([1, -1, 1, -1, 1, -1, 1, -1]) * 0.5 * w
    sz = np.array([1, 1, 1, 1, -1, -1, -1, -1]) * 0.5 * h
    c, s = np.cos(yaw), np.sin(yaw)
    pts = np.stack([center[0] + c * sx - s * sy, center[1] + s * sx + c * sy, center[2] + sz, np.ones(8)], axis=1)
    pc = (global2cam @ pts.T).T[:, :3]
    if np.any(pc[:, 2] < 0.1):
        return 0.0
    uv = (pc[:, :2] / pc[:, 2:3]) * [cam.K[0, 0], cam.K[1, 1]] + cam.K[:2, 2]
    hull = cv2.convexHull(uv.astype(np.float32))
    img = np.array([[0, 0], [cam.width, 0], [cam.width, cam.height], [0, cam.height]], np.float32)
    area, _ = cv2.intersectConvexConvex(hull, img)
    return float(area)


@dataclass
class SceneSetup:
    """A scene's static world and per-scene generators (same seeds for the writer and for tests)."""

    world: StaticWorld
    look: Look
    traffic_rng: np.random.Generator
    noise_rng: np.random.Generator
    qa_rng: np.random.Generator
    travel: float


def setup_scene(cfg: SynthConfig, index: int) -> SceneSetup:
    """Build scene ``index``'s world; the generators come from ``SeedSequence([seed, index])``."""
    world_ss, traffic_ss, look_ss, noise_ss, qa_ss = np.random.SeedSequence([cfg.seed, index]).spawn(5)
    layout = cfg.layouts[index % len(cfg.layouts)]
    travel = max(60.0, 11.0 * 0.5 * max(cfg.num_frames - 1, 1))
    world = build_world(layout, np.random.default_rng(world_ss), travel)
    return SceneSetup(
        world,
        Look.sample(np.random.default_rng(look_ss), world.frame_yaw),
        np.random.default_rng(traffic_ss),
        np.random.default_rng(noise_ss),
        np.random.default_rng(qa_ss),
        travel,
    )


def simulate_scene(cfg: SynthConfig, setup: SceneSetup, on_key_frame=None) -> list[FrameState]:
    """Run the scene's traffic; ``on_key_frame(sim, k, state)`` is called at every key frame."""
    return simulate(
        setup.world,
        setup.traffic_rng,
        cfg.num_frames,
        cfg.sim_dt,
        cfg.steps_per_key_frame,
        cfg.warmup_s,
        setup.travel,
        on_key_frame,
    )


@dataclass
class KeyFrameSensors:
    """Everything measured at one key frame."""

    objects: list
    views: list  # six camera Views in CAMERA_NAMES order
    lidar_views: list
    points: np.ndarray  # [M, 5] LiDAR sweep in the LiDAR frame
    point_instance: np.ndarray  # [M]
    semantics: np.ndarray
    mask_camera: np.ndarray
    mask_lidar: np.ndarray


def sense_key_frame(cfg: SynthConfig, setup: SceneSetup, sim: TrafficSimulation, state: FrameState) -> KeyFrameSensors:
    """Render the cameras and the LiDAR, and label the occupancy, at the current simulation time."""
    rig = sensor_rig(cfg.width, cfg.height)
    world = setup.world
    ego2global = ego_matrix(state.ego_pose)
    objects = frame_objects(world, sim)
    packed = PackedScene.pack(objects)
    views = [
        render(c, ego2global, packed, world.ground, setup.look, setup.noise_rng, cfg.image_noise) for c in rig.cameras
    ]
    lidar_views = [render(v, ego2global, packed, world.ground, setup.look, None, shade=False) for v in rig.lidar_views]
    points, point_inst = rig.lidar.sweep(lidar_views, setup.noise_rng)
    sem = semantics(ego2global, world.ground, objects)
    return KeyFrameSensors(
        objects,
        views,
        lidar_views,
        points,
        point_inst,
        sem,
        rig.camera_voxels.visible([v.depth for v in views]),
        rig.lidar_voxels.visible([v.depth for v in lidar_views]),
    )


def generate_scene(cfg: SynthConfig, index: int, out: Path) -> dict:
    """Simulate, render and label one scene; write its files; return its table rows and nuScenes-QA items."""
    setup = setup_scene(cfg, index)
    world = setup.world
    rig = sensor_rig(cfg.width, cfg.height)
    name = scene_name(index)
    split = cfg.split_of(index)
    log_name = f"synth-s{cfg.seed}-{index:04d}"
    t0 = SCENE_T0_US + index * SCENE_SPACING_US
    key = (cfg.seed, index)
    frames: list[dict] = []

    def on_key_frame(sim: TrafficSimulation, k: int, state: FrameState) -> None:
        ts = t0 + k * KEY_FRAME_US
        ego2global = ego_matrix(state.ego_pose)
        sensed = sense_key_frame(cfg, setup, sim, state)
        views, points, point_inst = sensed.views, sensed.points, sensed.point_instance
        files = {}
        for cam, view in zip(rig.cameras, views):
            rel = f"samples/{cam.name}/{log_name}__{cam.name}__{ts}.jpg"
            write_jpeg(out / rel, view.rgb, cfg.jpeg_quality)
            files[cam.name] = rel
        if cfg.write_lidar:
            rel = f"samples/LIDAR_TOP/{log_name}__LIDAR_TOP__{ts}.pcd.bin"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(points.tobytes())
            files["LIDAR_TOP"] = rel
        sample_token = token(*key, "sample", k)
        write_npz(
            out / "gts" / name / sample_token / "labels.npz",
            semantics=sensed.semantics,
            mask_lidar=sensed.mask_lidar,
            mask_camera=sensed.mask_camera,
        )
        # annotations: agents in range seen by the LiDAR or a camera
        n_agents = len(state.agents)
        per_cam = np.stack(
            [np.bincount(v.instance[v.instance >= 0].ravel(), minlength=n_agents)[:n_agents] for v in views]
        )
        lidar_pts = np.bincount(point_inst[point_inst >= 0], minlength=n_agents)[:n_agents]
        anns = []
        ego_xy, ego_yaw = state.ego_pose[:2], state.ego_pose[2]
        global2cams = [np.linalg.inv(ego2global @ cam.cam2ego) for cam in rig.cameras]
        for a in state.agents:
            dist = float(np.linalg.norm(a.center[:2] - ego_xy))
            visible_px = int(per_cam[:, a.index].sum())
            if dist > ANNOTATION_RANGE or (visible_px == 0 and lidar_pts[a.index] == 0):
                continue
            area = sum(_box_area(a.center, a.size, a.yaw, cam, g2c) for cam, g2c in zip(rig.cameras, global2cams))
            fraction = min(1.0, visible_px / area) if area > 0 else 0.0
            rel = a.center[:2] - ego_xy
            c, s = np.cos(ego_yaw), np.sin(ego_yaw)
            anns.append(
                {
                    "agent": a.index,
                    "category": a.category,
                    "center": a.center,
                    "size": a.size,
                    "yaw": a.yaw,
                    "attribute": a.attribute,
                    "visibility": visibility_token(fraction),
                    "num_lidar_pts": int(lidar_pts[a.index]),
                    "camera": CAMERA_NAMES[int(np.argmax(per_cam[:, a.index]))],
                    "distance": dist,
                    "ego_xy": (float(c * rel[0] + s * rel[1]), float(-s * rel[0] + c * rel[1])),
                    "rel_heading": a.yaw - ego_yaw,
                }
            )
        class_px = sum(np.bincount(v.cls.ravel(), minlength=18) for v in views) / sum(v.cls.size for v in views)
        frames.append(
            {
                "timestamp": ts,
                "files": files,
                "pose": state.ego_pose.copy(),
                "anns": anns,
                "state": state,
                "sample_token": sample_token,
                "class_fraction": class_px,
            }
        )

    states = simulate_scene(cfg, setup, on_key_frame)
    tables = _scene_tables(cfg, index, world, frames, log_name, out)
    qa_items = _scene_qa(cfg, index, world, frames, states, split, out, setup.qa_rng)
    return {"tables": tables, "nuscenes_qa": qa_items, "name": name, "split": split}


def _scene_tables(cfg: SynthConfig, index: int, world: StaticWorld, frames: list, log_name: str, out: Path) -> dict:
    key = (cfg.seed, index)
    log_token, scene_token, map_token = token(*key, "log"), token(*key, "scene"), token(*key, "map")
    date = datetime.fromtimestamp(frames[0]["timestamp"] / 1e6, tz=timezone.utc).strftime("%Y-%m-%d")
    map_file = f"maps/{map_token}.png"
    surf = world.ground.surface
    write_map_mask(out / map_file, (surf == SURF_ROAD) | (surf == SURF_OTHER_FLAT) | (surf == SURF_SIDEWALK))
    t = {
        name: []
        for name in (
            "log",
            "map",
            "scene",
            "sample",
            "sample_data",
            "ego_pose",
            "calibrated_sensor",
            "instance",
            "sample_annotation",
        )
    }
    t["log"].append(
        {"token": log_token, "logfile": log_name, "vehicle": "synth-car", "date_captured": date, "location": LOCATION}
    )
    t["map"].append({"token": map_token, "log_tokens": [log_token], "category": "semantic_prior", "filename": map_file})
    rig = sensor_rig(cfg.width, cfg.height)
    channels = list(CAMERA_NAMES) + (["LIDAR_TOP"] if cfg.write_lidar else [])
    calib = {c.channel: c for c in camera_calibrations()}
    calib["LIDAR_TOP"] = lidar_calibration()
    for ch in channels:
        cam = next((c for c in rig.cameras if c.name == ch), None)
        t["calibrated_sensor"].append(
            {
                "token": token(*key, "calibrated_sensor", ch),
                "sensor_token": token("sensor", ch),
                "translation": [float(v) for v in calib[ch].translation],
                "rotation": [float(v) for v in calib[ch].rotation_wxyz],
                "camera_intrinsic": [] if cam is None else cam.K.tolist(),
            }
        )
    n = len(frames)
    sample_tokens = [f["sample_token"] for f in frames]
    for k, f in enumerate(frames):
        t["sample"].append(
            {
                "token": sample_tokens[k],
                "timestamp": f["timestamp"],
                "prev": sample_tokens[k - 1] if k > 0 else "",
                "next": sample_tokens[k + 1] if k < n - 1 else "",
                "scene_token": scene_token,
            }
        )
        for ch in channels:
            sd = token(*key, "sample_data", ch, k)
            ep = token(*key, "ego_pose", ch, k)
            t["ego_pose"].append(
                {
                    "token": ep,
                    "timestamp": f["timestamp"],
                    "rotation": yaw_to_quaternion(float(f["pose"][2])),
                    "translation": [float(f["pose"][0]), float(f["pose"][1]), 0.0],
                }
            )
            is_cam = ch != "LIDAR_TOP"
            t["sample_data"].append(
                {
                    "token": sd,
                    "sample_token": sample_tokens[k],
                    "ego_pose_token": ep,
                    "calibrated_sensor_token": token(*key, "calibrated_sensor", ch),
                    "timestamp": f["timestamp"],
                    "fileformat": "jpg" if is_cam else "pcd",
                    "is_key_frame": True,
                    "height": cfg.height if is_cam else 0,
                    "width": cfg.width if is_cam else 0,
                    "filename": f["files"][ch],
                    "prev": token(*key, "sample_data", ch, k - 1) if k > 0 else "",
                    "next": token(*key, "sample_data", ch, k + 1) if k < n - 1 else "",
                }
            )
    # instances and annotation chains
    by_agent: dict[int, list] = {}
    for k, f in enumerate(frames):
        for a in f["anns"]:
            by_agent.setdefault(a["agent"], []).append((k, a))
    for agent in sorted(by_agent):
        seq = by_agent[agent]
        inst = token(*key, "instance", agent)
        ann_tokens = [token(*key, "sample_annotation", agent, k) for k, _ in seq]
        t["instance"].append(
            {
                "token": inst,
                "category_token": token("category", seq[0][1]["category"]),
                "nbr_annotations": len(seq),
                "first_annotation_token": ann_tokens[0],
                "last_annotation_token": ann_tokens[-1],
            }
        )
        for i, (k, a) in enumerate(seq):
            l, w, h = a["size"]
            t["sample_annotation"].append(
                {
                    "token": ann_tokens[i],
                    "sample_token": sample_tokens[k],
                    "instance_token": inst,
                    "visibility_token": a["visibility"],
                    "attribute_tokens": [token("attribute", a["attribute"])] if a["attribute"] else [],
                    "translation": [float(v) for v in a["center"]],
                    "size": [float(w), float(l), float(h)],
                    "rotation": yaw_to_quaternion(float(a["yaw"])),
                    "prev": ann_tokens[i - 1] if i > 0 else "",
                    "next": ann_tokens[i + 1] if i < len(seq) - 1 else "",
                    "num_lidar_pts": a["num_lidar_pts"],
                    "num_radar_pts": 0,
                }
            )
    t["scene"].append(
        {
            "token": scene_token,
            "log_token": log_token,
            "nbr_samples": n,
            "first_sample_token": sample_tokens[0],
            "last_sample_token": sample_tokens[-1],
            "name": scene_name(index),
            "description": f"synthetic, {world.description}",
        }
    )
    return t


def frame_facts(world: StaticWorld, frames: list, states: list, k: int) -> FrameFacts:
    """QA facts of key frame ``k`` (objects from the frame's annotations, see :mod:`qa`)."""
    f, state = frames[k], states[k]
    objs = []
    leader = None
    for a in sorted(f["anns"], key=lambda a: a["distance"]):
        qa_obj = QAObject(
            QA_NAME[a["category"]],
            STATUS_WORD.get(a["attribute"]) if a["attribute"] else None,
            a["ego_xy"],
            a["distance"],
            a["camera"],
            a["rel_heading"],
        )
        if a["agent"] == state.ego_leader[0]:
            leader = qa_obj
        if a["distance"] <= QA_RANGE and int(a["visibility"]) >= QA_MIN_VISIBILITY:
            objs.append(qa_obj)
    horizon = min(k + 6, len(states) - 1)
    turn_ahead = any(s.in_turn for s in states[k : horizon + 1])
    frac = f["class_fraction"]
    scenery = [word for word, cls, share in (("buildings", 15, 0.03), ("trees", 16, 0.01)) if frac[cls] >= share]
    return FrameFacts(
        world.description,
        objs,
        state.signal_ahead,
        state.ego_behavior,
        state.ego_maneuver,
        turn_ahead,
        state.ego_speed,
        leader,
        states[horizon].ego_speed,
        scenery,
    )


def _scene_qa(cfg, index, world, frames, states, split, out: Path, rng) -> list:
    items = []
    for k, f in enumerate(frames):
        facts = frame_facts(world, frames, states, k)
        od = omnidrive(facts)
        tok = f["sample_token"]
        for kind in ("desc", "conv", "vqa", "keywords"):
            write_json(out / "omnidrive" / kind / split / f"{tok}.json", od[kind])
        write_json(out / SCENARIO_DIR / split / f"{tok}.json", scenario_record(states[k]))
        items.extend(nuscenes_qa(facts, tok, rng))
    return items


def _run_scene(args) -> dict:
    cfg, index, out = args
    return generate_scene(cfg, index, Path(out))


#: Per-key-frame scenario facts the simulator knows and nuScenes has no table for (signal ahead, ego behaviour):
#: ``<root>/scenario/<split>/<sample_token>.json``, read by the evaluation's red-light metric.
SCENARIO_DIR = "scenario"
OUTPUTS = ("samples", "gts", "omnidrive", "nuscenes_qa", "maps", "scenario", "splits.json")


def scenario_record(state) -> dict:
    """JSON facts of one key frame: the next signal on the ego route (state, stop-line distance m) and ego behaviour."""
    signal = state.signal_ahead
    return {
        "signal_ahead": signal[0] if signal else None,
        "signal_distance_m": round(float(signal[1]), 3) if signal else None,
        "ego_behavior": state.ego_behavior,
        "ego_maneuver": state.ego_maneuver,
        "ego_speed_mps": round(float(state.ego_speed), 4),
    }


def generate_dataset(
    cfg: SynthConfig, out: str | Path, workers: int = 1, overwrite: bool = False, progress=None
) -> dict:
    """Write ``cfg.num_scenes`` scenes under ``out`` (see the module docstring).

    Args:
        cfg: what to generate.
        out: dataset root (the devkit ``dataroot``).
        workers: processes; the bytes written do not depend on it.
        overwrite: remove this generator's previous outputs in ``out`` first (otherwise refuse to mix).
        progress: optional callable ``f(done, total, scene_name)``.
    Returns:
        {"scenes": names, "train": [...], "val": [...], "key_frames": int}.
    """
    out = Path(out)
    version_dir = out / cfg.version
    if version_dir.exists() or any((out / p).exists() for p in OUTPUTS):
        if not overwrite:
            raise FileExistsError(f"{out} already holds a dataset; pass overwrite=True (--overwrite) or another --out")
        for p in OUTPUTS + (cfg.version,):
            target = out / p
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(cfg, i, str(out)) for i in range(cfg.num_scenes)]
    results = []
    if workers <= 1 or cfg.num_scenes == 1:
        for job in jobs:
            results.append(_run_scene(job))
            if progress:
                progress(len(results), cfg.num_scenes, results[-1]["name"])
    else:
        with ProcessPoolExecutor(max_workers=min(workers, cfg.num_scenes)) as pool:
            for res in pool.map(_run_scene, jobs):
                results.append(res)
                if progress:
                    progress(len(results), cfg.num_scenes, res["name"])
    tables = static_tables()
    for res in results:  # scene order, whatever the worker count
        for name, rows in res["tables"].items():
            tables.setdefault(name, []).extend(rows)
    if not cfg.write_lidar:
        tables["sensor"] = [s for s in tables["sensor"] if s["channel"] != "LIDAR_TOP"]
    write_tables(version_dir, tables)
    splits = {
        "train": [r["name"] for r in results if r["split"] == "train"],
        "val": [r["name"] for r in results if r["split"] == "val"],
    }
    write_json(out / "splits.json", splits)
    for split in ("train", "val"):
        qs = [q for r in results if r["split"] == split for q in r["nuscenes_qa"]]
        write_json(out / "nuscenes_qa" / f"NuScenes_{split}_questions.json", {"questions": qs})
    return {"scenes": [r["name"] for r in results], **splits, "key_frames": cfg.num_scenes * cfg.num_frames}


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))
