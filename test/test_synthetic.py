"""Tests of the synthetic nuScenes-format world (``sparseoccvla synth``, issue 4 part B).

One tiny scene (intersection layout, 6 key frames, 352 x 198 images) is generated once per module; each test
checks one contract against an independent computation: the official devkit, re-simulation of the same seed,
projection with the written calibration, the real nuScenes calibration in ../shared/data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from sparseoccvla_core.batch import CAMERA_NAMES, OCC3D_CLASSES
from sparseoccvla_core.occ_grid import index_to_points
from sparseoccvla_core.synthetic.config import SynthConfig
from sparseoccvla_core.synthetic.generate import generate_dataset, sense_key_frame, setup_scene, simulate_scene
from sparseoccvla_core.synthetic.occupancy import PC_RANGE, VOXEL_SIZE
from sparseoccvla_core.synthetic.qa import NUSCENES_QA_ANSWERS, NUSCENES_QA_TEMPLATES, QA_NAME, QA_RANGE
from sparseoccvla_core.synthetic.traffic import CATEGORY_TO_OCC

NuScenes = pytest.importorskip("nuscenes.nuscenes").NuScenes
from pyquaternion import Quaternion  # noqa: E402  (nuscenes-devkit dependency)

TINY = dict(num_scenes=1, seed=3, num_frames=6, width=352, height=198, layouts=("intersection",))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    cfg = SynthConfig(**TINY)
    generate_dataset(cfg, out, workers=1)
    nusc = NuScenes(version=cfg.version, dataroot=str(out), verbose=False)
    return cfg, out, nusc


def _pose(nusc, sample, channel="LIDAR_TOP"):
    sd = nusc.get("sample_data", sample["data"][channel])
    ep = nusc.get("ego_pose", sd["ego_pose_token"])
    m = np.eye(4)
    m[:3, :3] = Quaternion(ep["rotation"]).rotation_matrix
    m[:3, 3] = ep["translation"]
    return m


def _samples(nusc):
    scene = nusc.scene[0]
    out, tok = [], scene["first_sample_token"]
    while tok:
        s = nusc.get("sample", tok)
        out.append(s)
        tok = s["next"]
    return out


def test_devkit_loads_tables_images_and_boxes(tiny):
    cfg, out, nusc = tiny
    assert len(nusc.scene) == 1 and len(nusc.sample) == cfg.num_frames
    samples = _samples(nusc)
    assert [s["timestamp"] for s in samples] == sorted(s["timestamp"] for s in samples)
    assert np.all(np.diff([s["timestamp"] for s in samples]) == 500_000)  # 2 Hz key frames
    valid = {c["name"] for c in nusc.category}
    assert {a["category_name"] for a in nusc.sample_annotation} <= valid
    assert "vehicle.car" in {a["category_name"] for a in nusc.sample_annotation}
    import cv2

    n_boxes = 0
    for s in samples:
        assert set(s["data"]) == set(CAMERA_NAMES) | {"LIDAR_TOP"}
        for cam in CAMERA_NAMES:
            path, boxes, K = nusc.get_sample_data(s["data"][cam])
            img = cv2.imread(path)
            assert img.shape == (cfg.height, cfg.width, 3)
            cs = nusc.get("calibrated_sensor", nusc.get("sample_data", s["data"][cam])["calibrated_sensor_token"])
            np.testing.assert_allclose(K, cs["camera_intrinsic"])
            n_boxes += len(boxes)
            for b in boxes:  # boxes come back in the camera frame: in front of it, projecting into the image
                assert b.center[2] > 0
        pts = np.fromfile(nusc.get_sample_data_path(s["data"]["LIDAR_TOP"]), np.float32).reshape(-1, 5)
        assert len(pts) > 10000 and set(np.unique(pts[:, 4])) <= set(range(32))
    assert n_boxes > 0
    # the map mask loads through the devkit and the ego drives on it
    log = nusc.get("log", nusc.scene[0]["log_token"])
    mask = nusc.get("map", log["map_token"])["mask"]
    ego = _pose(nusc, samples[0])[:3, 3]
    assert mask.is_on_mask(ego[0], ego[1])[0]


def test_intrinsics_are_real_nuscenes_calibration_scaled(tiny, nuscenes_demo_dir):
    cfg, out, nusc = tiny
    calib = json.loads((nuscenes_demo_dir / "calib.json").read_text())["samples"][0]["cameras"]
    s = _samples(nusc)[0]
    for cam in CAMERA_NAMES:
        sd = nusc.get("sample_data", s["data"][cam])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        K = np.array(calib[cam]["intrinsic"]) * np.array([[cfg.width / 1600], [cfg.height / 900], [1.0]])
        np.testing.assert_allclose(cs["camera_intrinsic"], K, rtol=1e-9)
        np.testing.assert_allclose(cs["translation"], calib[cam]["sensor2ego_translation"], atol=1e-9)
        np.testing.assert_allclose(
            Quaternion(cs["rotation"]).rotation_matrix, np.array(calib[cam]["cam2ego"])[:3, :3], atol=1e-6
        )


def test_embedded_calibration_equals_shared_calibration(nuscenes_demo_dir):
    from sparseoccvla_core.synthetic.calibration import camera_calibrations, lidar_calibration

    calib = json.loads((nuscenes_demo_dir / "calib.json").read_text())["samples"][0]
    for c in camera_calibrations():
        ref = calib["cameras"][c.channel]
        np.testing.assert_array_equal(c.intrinsics, np.array(ref["intrinsic"]))
        np.testing.assert_allclose(c.sensor2ego, np.array(ref["cam2ego"]), atol=1e-6)
    lid = lidar_calibration()
    np.testing.assert_allclose(lid.sensor2ego, np.array(calib["lidar"]["lidar2ego"]), atol=1e-6)


def test_future_waypoints_agree_with_simulated_ego_motion(tiny):
    """Waypoints a loader derives from the written ego poses equal the simulated ego trajectory."""
    cfg, out, nusc = tiny
    samples = _samples(nusc)
    states = simulate_scene(cfg, setup_scene(cfg, 0))
    for k in range(len(samples)):
        cur = _pose(nusc, samples[k])
        inv = np.linalg.inv(cur)
        for j in range(k + 1, min(k + 7, len(samples))):
            written = (inv @ _pose(nusc, samples[j]))[:2, 3]
            x, y, yaw = states[j].ego_pose
            c, s = np.cos(states[k].ego_pose[2]), np.sin(states[k].ego_pose[2])
            d = np.array([x, y]) - states[k].ego_pose[:2]
            np.testing.assert_allclose(written, [c * d[0] + s * d[1], -s * d[0] + c * d[1]], atol=1e-6)
    # plausible driving: forward motion, speeds within urban limits, no teleporting
    xy = np.array([s.ego_pose[:2] for s in states])
    step = np.linalg.norm(np.diff(xy, axis=0), axis=1)
    assert np.all(step < 15.0 * 0.5)
    assert all(0.0 <= s.ego_speed < 15.0 for s in states)


def _labels(out, scene, token):
    d = np.load(out / "gts" / scene / token / "labels.npz")
    return d["semantics"], d["mask_lidar"], d["mask_camera"]


def test_occupancy_format_and_ground_convention(tiny):
    cfg, out, nusc = tiny
    for s in _samples(nusc):
        sem, ml, mc = _labels(out, nusc.scene[0]["name"], s["token"])
        assert sem.shape == ml.shape == mc.shape == (200, 200, 16)
        assert sem.dtype == ml.dtype == mc.dtype == np.uint8
        assert sem.max() <= 17 and set(np.unique(ml)) <= {0, 1} and set(np.unique(mc)) <= {0, 1}
        # road in layer 0 under the ego (occ_grid convention), never above
        assert sem[100, 100, 0] == OCC3D_CLASSES.index("driveable_surface")
        ground = [OCC3D_CLASSES.index(c) for c in ("driveable_surface", "sidewalk", "terrain", "other_flat")]
        assert not np.isin(sem[:, :, 1:], ground).any()
        # layer 0 is ground (or an object on it) everywhere except inside buildings, which are enclosed by walls
        hole = sem[:, :, 0] == 17
        wall = np.pad(sem[:, :, 1] == OCC3D_CLASSES.index("manmade"), 1, constant_values=True)  # grid edge may cut
        enclosed = (
            np.maximum.accumulate(wall, 0)
            & np.maximum.accumulate(wall[::-1], 0)[::-1]
            & np.maximum.accumulate(wall, 1)
            & np.maximum.accumulate(wall[:, ::-1], 1)[:, ::-1]
        )[1:-1, 1:-1]
        assert np.all(enclosed[hole])
        assert 0.02 < mc.mean() < 0.5 and 0.02 < ml.mean() < 0.5


def _boxes_ego(nusc, sample):
    """Annotation boxes in the sample's ego frame as (class, center, (l, w, h), yaw)."""
    inv = np.linalg.inv(_pose(nusc, sample))
    out = []
    for tok in sample["anns"]:
        a = nusc.get("sample_annotation", tok)
        c = inv @ np.array([*a["translation"], 1.0])
        yaw = Quaternion(a["rotation"]).yaw_pitch_roll[0] - np.arctan2(inv[0, 1], inv[0, 0])  # box yaw - ego yaw
        w, l, h = a["size"]
        out.append((CATEGORY_TO_OCC[a["category_name"]], c[:3], (l, w, h), yaw, a))
    return out


def _inside(pts, center, size, yaw, margin=0.0):
    d = pts - center
    c, s = np.cos(yaw), np.sin(yaw)
    lx, ly = c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]
    return (
        (np.abs(lx) <= size[0] / 2 + margin)
        & (np.abs(ly) <= size[1] / 2 + margin)
        & (np.abs(d[:, 2]) <= size[2] / 2 + margin)
    )


def test_boxes_agree_with_occupancy(tiny):
    cfg, out, nusc = tiny
    dynamic = sorted(set(CATEGORY_TO_OCC.values()))
    checked = 0
    for s in _samples(nusc):
        sem, ml, mc = _labels(out, nusc.scene[0]["name"], s["token"])
        boxes = _boxes_ego(nusc, s)
        # 1. every observed voxel of an object class lies in an annotation box of that class
        obs = np.argwhere(np.isin(sem, dynamic) & ((ml > 0) | (mc > 0)))
        pts = index_to_points(obs, PC_RANGE, VOXEL_SIZE)
        cls = sem[tuple(obs.T)]
        covered = np.zeros(len(pts), bool)
        for k, center, size, yaw, _ in boxes:
            covered |= _inside(pts, center, size, yaw, margin=VOXEL_SIZE) & (cls == k)
        assert covered.all(), f"{(~covered).sum()} observed object voxels outside every box of their class"
        # 2. voxels whose centre is inside a box never carry another object class, and vehicles are mostly filled
        for k, center, size, yaw, a in boxes:
            lo = np.floor((center - np.linalg.norm(size) / 2 - np.array(PC_RANGE[:3])) / VOXEL_SIZE).astype(int)
            hi = np.ceil((center + np.linalg.norm(size) / 2 - np.array(PC_RANGE[:3])) / VOXEL_SIZE).astype(int)
            if np.any(lo[:2] < 0) or np.any(hi[:2] >= 200):
                continue  # box crosses the grid border
            lo[2], hi[2] = max(lo[2], 0), min(hi[2], 16)
            ijk = np.argwhere(np.ones(tuple(hi - lo), bool)) + lo
            inside = _inside(index_to_points(ijk, PC_RANGE, VOXEL_SIZE), center, size, yaw)
            labels = sem[tuple(ijk[inside].T)]
            assert not np.isin(labels, [d for d in dynamic if d != k]).any()
            if a["category_name"] in ("vehicle.car", "vehicle.truck", "vehicle.bus.rigid"):
                assert (labels == k).mean() > 0.5, a["category_name"]
                checked += 1
    assert checked > 0


def test_car_voxels_project_onto_car_pixels(tiny):
    """An unoccluded GT car voxel, projected with the written calibration, lands on pixels rendered as car."""
    cfg, out, nusc = tiny
    setup = setup_scene(cfg, 0)
    frames = {}
    simulate_scene(
        cfg,
        setup,
        lambda sim, k, state: (
            frames.__setitem__(k, sense_key_frame(cfg, setup, sim, state)) if k in (0, cfg.num_frames - 1) else None
        ),
    )
    car = OCC3D_CLASSES.index("car")
    samples = _samples(nusc)
    tested = hits = 0
    for k, sensed in frames.items():
        sem, _, _ = _labels(out, nusc.scene[0]["name"], samples[k]["token"])
        np.testing.assert_array_equal(sem, sensed.semantics)  # the re-simulation reproduces the written labels
        ijk = np.argwhere(sem == car)
        pts = np.concatenate([index_to_points(ijk, PC_RANGE, VOXEL_SIZE), np.ones((len(ijk), 1))], 1)
        for cam, view in zip(CAMERA_NAMES, sensed.views):
            sd = nusc.get("sample_data", samples[k]["data"][cam])
            cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            cam2ego = np.eye(4)
            cam2ego[:3, :3] = Quaternion(cs["rotation"]).rotation_matrix
            cam2ego[:3, 3] = cs["translation"]
            pc = (np.linalg.inv(cam2ego) @ pts.T).T[:, :3]
            uv = (
                pc[:, :2] / pc[:, 2:3] @ np.diag(np.diag(cs["camera_intrinsic"])[:2])
                + np.array(cs["camera_intrinsic"])[:2, 2]
            )
            ok = (pc[:, 2] > 1.0) & (uv[:, 0] >= 0) & (uv[:, 0] < cfg.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cfg.height)
            u, v = uv[ok].astype(int).T
            unoccluded = view.depth[v, u] > pc[ok, 2] - 0.6  # nothing more than ~a voxel in front of the voxel
            tested += int(unoccluded.sum())
            hits += int((view.cls[v, u][unoccluded] == car).sum())
    assert tested > 20
    assert hits / tested > 0.9, f"only {hits}/{tested} unoccluded car voxels land on car pixels"


def test_qa_answers_agree_with_world_state(tiny):
    cfg, out, nusc = tiny
    samples = _samples(nusc)
    states = simulate_scene(cfg, setup_scene(cfg, 0))
    split = json.loads((out / "splits.json").read_text())
    assert split == {"train": ["scene-0000"], "val": []}
    qs = json.loads((out / "nuscenes_qa" / "NuScenes_train_questions.json").read_text())["questions"]
    assert qs and all(q["answer"] in NUSCENES_QA_ANSWERS and q["template_type"] in NUSCENES_QA_TEMPLATES for q in qs)
    names_plural = {"bus": "buses"}
    light_checked = 0
    for k, s in enumerate(samples):
        desc = json.loads((out / "omnidrive/desc/train" / f"{s['token']}.json").read_text())
        conv = json.loads((out / "omnidrive/conv/train" / f"{s['token']}.json").read_text())
        assert isinstance(json.loads((out / "omnidrive/keywords/train" / f"{s['token']}.json").read_text()), str)
        assert set(desc) == {"description", "action"} and desc["action"]
        assert all(set(qa) == {"question", "answer"} for qa in conv)
        # traffic light colour: the answer names the simulated state of the ego's signal
        light = [qa["answer"] for qa in conv if "traffic light" in qa["question"]]
        sig = states[k].signal_ahead
        if sig is not None:
            assert light and light[0].startswith(f"The traffic light ahead is {sig[0]}")
            light_checked += 1
            if sig[0] == "red" and sig[1] < 30 and states[k].ego_speed < 0.5:
                assert "stop" in desc["action"]
        # counts: annotations within QA_RANGE m that are at least 40 % visible, recomputed from the tables
        ego = _pose(nusc, s)[:3, 3]
        counts = {}
        for tok in s["anns"]:
            a = nusc.get("sample_annotation", tok)
            if np.linalg.norm(np.array(a["translation"][:2]) - ego[:2]) <= QA_RANGE and int(a["visibility_token"]) >= 2:
                name = QA_NAME[a["category_name"]]
                counts[name] = counts.get(name, 0) + 1
        for q in (q for q in qs if q["sample_token"] == s["token"]):
            for name in QA_NAME.values():
                plural = names_plural.get(name, name + "s")
                if q["question"] == f"How many {plural} are there?":
                    assert q["answer"] == str(counts.get(name, 0))
                if q["question"] == f"Are there any {plural}?":
                    assert q["answer"] == ("yes" if counts.get(name, 0) else "no")
    assert light_checked > 0


def _hash_tree(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_independent_of_workers(tmp_path):
    cfg = SynthConfig(num_scenes=2, seed=11, num_frames=2, width=160, height=90)
    generate_dataset(cfg, tmp_path / "a", workers=1)
    generate_dataset(cfg, tmp_path / "b", workers=2)
    a, b = _hash_tree(tmp_path / "a"), _hash_tree(tmp_path / "b")
    assert len(a) > 30 and a == b
    other = SynthConfig(num_scenes=2, seed=12, num_frames=2, width=160, height=90)
    generate_dataset(other, tmp_path / "c", workers=1)
    c = _hash_tree(tmp_path / "c")
    assert a["v1.0-synth/sample.json"] != c["v1.0-synth/sample.json"]
    assert json.loads((tmp_path / "a" / "splits.json").read_text()) == {"train": ["scene-0000"], "val": ["scene-0001"]}


def test_refuses_to_overwrite_without_flag(tmp_path):
    cfg = SynthConfig(num_frames=1, width=64, height=36)
    generate_dataset(cfg, tmp_path, workers=1)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_dataset(cfg, tmp_path, workers=1)
    generate_dataset(cfg, tmp_path, workers=1, overwrite=True)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="layouts"):
        SynthConfig(layouts=("roundabout",))
    with pytest.raises(ValueError, match="num_frames"):
        SynthConfig(num_frames=0)
    assert [SynthConfig(num_scenes=10).split_of(i) for i in range(10)].count("val") == 2


def test_traffic_is_collision_free(tiny):
    """Vehicle boxes never overlap each other, and no annotated box overlaps the ego."""
    from shapely.geometry import Polygon

    cfg, out, nusc = tiny

    def footprint(center, l, w, yaw):
        c, s = np.cos(yaw), np.sin(yaw)
        return Polygon(
            [
                (center[0] + c * dx - s * dy, center[1] + s * dx + c * dy)
                for dx, dy in ((l / 2, w / 2), (-l / 2, w / 2), (-l / 2, -w / 2), (l / 2, -w / 2))
            ]
        )

    for s in _samples(nusc):
        boxes = [(b[0], footprint(b[1], b[2][0], b[2][1], b[3])) for b in _boxes_ego(nusc, s)]
        ego = footprint((1.4, 0.0), 4.1, 1.8, 0.0)  # the ego's body around the rear axle
        vehicles = [
            p
            for k, p in boxes
            if k
            in (CATEGORY_TO_OCC["vehicle.car"], CATEGORY_TO_OCC["vehicle.truck"], CATEGORY_TO_OCC["vehicle.bus.rigid"])
        ]
        assert not any(p.intersects(ego) for _, p in boxes)
        for i in range(len(vehicles)):
            for j in range(i + 1, len(vehicles)):
                assert vehicles[i].intersection(vehicles[j]).area < 1e-3


def test_signal_lamps_show_the_signal_state():
    """Rendered signal heads facing the camera light exactly the lamp of their group's current state."""
    seen: list = []
    for seed in range(6):  # a few straight-road scenes until the ego's signal has been in view
        cfg = SynthConfig(num_scenes=1, seed=seed, num_frames=6, width=352, height=198, layouts=("straight",))
        _lamps_in_view(cfg, seen)
        if len(seen) >= 3:
            break
    assert seen, "no signal head in view"
    assert all(lit == state for lit, state in seen), seen


def _lamps_in_view(cfg: SynthConfig, seen: list) -> None:
    """Append (lit lamp colour, signal state) for every camera-facing, unoccluded head in CAM_FRONT (2x size)."""
    from sparseoccvla_core.synthetic.generate import ego_matrix, frame_objects, sensor_rig
    from sparseoccvla_core.synthetic.render import Camera, PackedScene, render

    setup = setup_scene(cfg, 0)
    front = sensor_rig(cfg.width, cfg.height).cameras[0]
    big = Camera(front.name, front.K * np.array([[2.0], [2.0], [1.0]]), front.cam2ego, 2 * cfg.width, 2 * cfg.height)

    def check(sim, k, state):
        objects = frame_objects(setup.world, sim)
        view = render(big, ego_matrix(state.ego_pose), PackedScene.pack(objects), setup.world.ground, setup.look, None)
        ego2cam = np.linalg.inv(ego_matrix(state.ego_pose) @ big.cam2ego)
        cam_xy = (ego_matrix(state.ego_pose) @ big.cam2ego)[:2, 3]
        for head in setup.world.heads:
            obj = objects[head.object_index]
            lamps = obj.center[list(head.lamp_parts)]  # red, yellow, green
            facing = np.array([np.cos(obj.yaw[head.lamp_parts[0]]), np.sin(obj.yaw[head.lamp_parts[0]])])
            to_cam = cam_xy - lamps[0, :2]
            if facing @ to_cam < 0.7 * np.linalg.norm(to_cam):
                continue  # the lamps face away from (or across) this camera
            pc = (ego2cam @ np.c_[lamps, np.ones(3)].T).T[:, :3]
            if np.any(pc[:, 2] < 1.0):
                continue
            uv = (pc[:, :2] / pc[:, 2:3] * [big.K[0, 0], big.K[1, 1]] + big.K[:2, 2]).astype(int)
            if not np.all((uv >= 0) & (uv < [big.width, big.height])):
                continue
            rgb = view.rgb[uv[:, 1], uv[:, 0]].astype(int)
            if np.abs(view.depth[uv[:, 1], uv[:, 0]] - pc[:, 2]).max() > 0.5:
                continue  # lamp hidden or seen from behind (then the dark head hides it)
            brightness = rgb.sum(1)
            assert brightness.max() - np.sort(brightness)[1] > 100, rgb  # exactly one lamp is lit
            lit = int(np.argmax(brightness))
            seen.append((("red", "yellow", "green")[lit], sim.signal_state(head.group)))

    simulate_scene(cfg, setup, check)
