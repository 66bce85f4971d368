"""nuScenes tables (v1.0 schema) and byte-deterministic file writers for the synthetic world.

The tables are the ones ``nuscenes.nuscenes.NuScenes`` loads: category, attribute, visibility, instance, sensor,
calibrated_sensor, ego_pose, log, scene, sample, sample_data, sample_annotation, map.  Category names and
lidarseg indices are the real nuScenes ones; attributes and visibility levels too.  Tokens are 32-hex MD5
digests of a readable key, so the same seed writes the same tokens.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import cv2
import numpy as np

from ..batch import CAMERA_NAMES

#: nuScenes(-lidarseg) categories: (index, name, description).
CATEGORIES: tuple[tuple[int, str, str], ...] = (
    (0, "noise", "Any lidar return that does not correspond to a physical object."),
    (1, "animal", "All animals."),
    (2, "human.pedestrian.adult", "Adult subcategory."),
    (3, "human.pedestrian.child", "Child subcategory."),
    (4, "human.pedestrian.construction_worker", "Construction worker."),
    (5, "human.pedestrian.personal_mobility", "A small electric or self-propelled vehicle."),
    (6, "human.pedestrian.police_officer", "Police officer."),
    (7, "human.pedestrian.stroller", "Strollers."),
    (8, "human.pedestrian.wheelchair", "Wheelchairs."),
    (9, "movable_object.barrier", "Temporary road barrier placed in the scene in order to redirect traffic."),
    (10, "movable_object.debris", "Movable object that is left on the driveable surface."),
    (11, "movable_object.pushable_pullable", "Objects that a pedestrian may push or pull."),
    (12, "movable_object.trafficcone", "All types of traffic cone."),
    (13, "static_object.bicycle_rack", "Area or device intended to park or secure the bicycles in a row."),
    (14, "vehicle.bicycle", "Human or electric powered 2-wheeled vehicle designed to travel at lower speeds."),
    (15, "vehicle.bus.bendy", "Bendy bus subcategory."),
    (16, "vehicle.bus.rigid", "Rigid bus subcategory."),
    (17, "vehicle.car", "Vehicle designed primarily for personal use."),
    (18, "vehicle.construction", "Vehicles primarily designed for construction."),
    (19, "vehicle.emergency.ambulance", "All types of ambulances."),
    (20, "vehicle.emergency.police", "All types of police vehicles."),
    (21, "vehicle.motorcycle", "Gasoline or electric powered 2-wheeled vehicle designed to move rapidly."),
    (22, "vehicle.trailer", "Any vehicle trailer."),
    (23, "vehicle.truck", "Vehicles primarily designed to haul cargo."),
    (24, "flat.driveable_surface", "All paved or unpaved surfaces that a car can drive on."),
    (25, "flat.other", "All other forms of horizontal ground-level structures."),
    (26, "flat.sidewalk", "Sidewalk, pedestrian walkways, bike paths, etc."),
    (27, "flat.terrain", "Natural horizontal surfaces such as ground level horizontal vegetation."),
    (28, "static.manmade", "Includes man-made structures but not limited to: buildings, walls, poles."),
    (29, "static.other", "Points in the background that are not distinguishable."),
    (30, "static.vegetation", "Any vegetation in the frame that is higher than the ground."),
    (31, "vehicle.ego", "The vehicle on which the cameras, radar and lidar are mounted."),
)
ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("vehicle.moving", "Vehicle is moving."),
    ("vehicle.stopped", "Vehicle, with a driver/rider in/on it, is currently stationary but has an intent to move."),
    ("vehicle.parked", "Vehicle is stationary (usually for longer duration) with no immediate intent to move."),
    ("cycle.with_rider", "There is a rider on the bicycle or motorcycle."),
    ("cycle.without_rider", "There is NO rider on the bicycle or motorcycle."),
    ("pedestrian.sitting_lying_down", "The human is sitting or lying down."),
    ("pedestrian.standing", "The human is standing."),
    ("pedestrian.moving", "The human is moving."),
)
VISIBILITY: tuple[tuple[str, str, str], ...] = (
    ("1", "v0-40", "visibility of whole object is between 0 and 40%"),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%"),
)
SENSORS: tuple[tuple[str, str], ...] = tuple((c, "camera") for c in CAMERA_NAMES) + (("LIDAR_TOP", "lidar"),)


def token(*key) -> str:
    """Deterministic 32-hex token of a key."""
    return hashlib.md5("/".join(str(k) for k in key).encode()).hexdigest()


def static_tables() -> dict[str, list[dict]]:
    """The tables that do not depend on the scenes."""
    return {
        "category": [
            {"token": token("category", n), "name": n, "description": d, "index": i} for i, n, d in CATEGORIES
        ],
        "attribute": [{"token": token("attribute", n), "name": n, "description": d} for n, d in ATTRIBUTES],
        "visibility": [{"token": t, "level": lvl, "description": d} for t, lvl, d in VISIBILITY],
        "sensor": [{"token": token("sensor", c), "channel": c, "modality": m} for c, m in SENSORS],
    }


def visibility_token(fraction: float) -> str:
    """nuScenes visibility bin of a visible fraction in [0, 1]."""
    return "1" if fraction < 0.4 else "2" if fraction < 0.6 else "3" if fraction < 0.8 else "4"


def write_tables(table_root: Path, tables: dict[str, list[dict]]) -> None:
    table_root.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        with open(table_root / f"{name}.json", "w") as f:
            json.dump(rows, f, indent=1)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` equivalent with fixed zip timestamps, so equal arrays give equal bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def write_jpeg(path: Path, rgb: np.ndarray, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {path}")
    path.write_bytes(buf.tobytes())


def write_map_mask(path: Path, foreground: np.ndarray) -> None:
    """Devkit map mask PNG (255 = driveable surface or sidewalk); row 0 is the map's largest y (devkit convention)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.where(foreground[::-1], 255, 0).astype(np.uint8)
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    path.write_bytes(buf.tobytes())
