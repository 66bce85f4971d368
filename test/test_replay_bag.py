"""``sparseoccvla bag`` and ``sparseoccvla calibration`` against the nuScenes tables they convert.

Two inputs: the hand-made ``mini_nuscenes`` (cameras lag the lidar by up to 150 ms, camera sweeps between key
frames, so reference poses, sweeps and stamps are all distinguishable) and the project's synthetic world (real
annotations, so the GT boxes are non-trivial).  Every expectation is recomputed here from the JSON tables and files
on disk (json + numpy, not the converter's code path), and the bag is read back with ``rosbags`` AND with the
``mcap`` reader (+ ``mcap_ros2`` decoding when installed).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from sparseoccvla_core.batch import CAMERA_NAMES
from sparseoccvla_core.cli import main as cli_main
from sparseoccvla_ros.replay import topics
from sparseoccvla_ros.replay.bag_messages import bag_topics, unpack_camera_mask
from sparseoccvla_ros.replay.bag_writer import write_bag
from sparseoccvla_ros.replay.typestore import deserialize, replay_typestore, serialize, stamp_to_ns

pytest.importorskip("rosbags")


# ---------------------------------------------------------------------- independent views of the dataset
class Tables:
    """The nuScenes JSON tables of a dataset root, indexed by token (plain json, no devkit)."""

    def __init__(self, root: Path) -> None:
        version = next(p for p in root.iterdir() if (p / "scene.json").is_file())
        self.root = root
        load = lambda name: json.loads((version / f"{name}.json").read_text())  # noqa: E731
        self.tables = {
            n: load(n)
            for n in (
                "scene",
                "sample",
                "sample_data",
                "ego_pose",
                "calibrated_sensor",
                "sensor",
                "sample_annotation",
                "category",
                "instance",
            )
        }
        self.by_token = {n: {r["token"]: r for r in rows} for n, rows in self.tables.items()}
        sensor_of_cs = {
            cs["token"]: self.by_token["sensor"][cs["sensor_token"]]["channel"]
            for cs in self.tables["calibrated_sensor"]
        }
        self.channel = {sd["token"]: sensor_of_cs[sd["calibrated_sensor_token"]] for sd in self.tables["sample_data"]}

    def samples(self, scene_name: str) -> list[dict]:
        scene = next(s for s in self.tables["scene"] if s["name"] == scene_name)
        out, tok = [], scene["first_sample_token"]
        while tok:
            out.append(self.by_token["sample"][tok])
            tok = out[-1]["next"]
        return out

    def key_sd(self, sample: dict, channel: str) -> dict:
        return next(
            sd
            for sd in self.tables["sample_data"]
            if sd["sample_token"] == sample["token"] and sd["is_key_frame"] and self.channel[sd["token"]] == channel
        )

    def ref_pose(self, sample: dict) -> dict:
        """Reference ego pose of a key frame: LIDAR_TOP's when the key frame has lidar, else CAM_FRONT's."""
        lidar = [
            sd
            for sd in self.tables["sample_data"]
            if sd["sample_token"] == sample["token"] and sd["is_key_frame"] and self.channel[sd["token"]] == "LIDAR_TOP"
        ]
        sd = lidar[0] if lidar else self.key_sd(sample, "CAM_FRONT")
        return self.by_token["ego_pose"][sd["ego_pose_token"]]


def quat_matrix(w, x, y, z) -> np.ndarray:
    n = math.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def read_bag(path: Path) -> dict[str, list[tuple[int, object]]]:
    """topic -> [(log time ns, decoded message)] through rosbags."""
    from rosbags.rosbag2 import Reader

    ts = replay_typestore()
    out: dict[str, list] = {}
    with Reader(path) as reader:
        for conn, log_ns, raw in reader.messages():
            out.setdefault(conn.topic, []).append((log_ns, deserialize(raw, conn.msgtype, ts)))
    return out


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def mini_bag(mini_nuscenes, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("bags") / "mini"
    summary = write_bag(mini_nuscenes.root, out, scenes=None, progress=False)
    return mini_nuscenes, out, summary, read_bag(out)


@pytest.fixture(scope="module")
def mini_sweeps_bag(mini_nuscenes, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("bags") / "mini_sweeps"
    summary = write_bag(
        mini_nuscenes.root, out, scenes=["scene-a"], sweeps=True, progress=False, compression="none", metadata_version=8
    )
    return mini_nuscenes, out, summary, read_bag(out)


@pytest.fixture(scope="module")
def synth_bag(synthetic_world, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("bags") / "synth"
    assert cli_main(["bag", "--data", str(synthetic_world), "--all", "--out", str(out), "--no-progress"]) == 0
    return synthetic_world, out, read_bag(out)


# ---------------------------------------------------------------------- topics, types, counts, metadata
def test_topics_types_counts_and_metadata(mini_bag):
    mini, path, summary, msgs = mini_bag
    tables = Tables(mini.root)
    n_kf = sum(len(tables.samples(s["name"])) for s in tables.tables["scene"])
    assert summary.key_frames == n_kf == 11
    for cam in CAMERA_NAMES:
        assert len(msgs[topics.image_topic(cam)]) == n_kf
        assert len(msgs[topics.camera_info_topic(cam)]) == n_kf
    for t in (
        topics.ODOM_TOPIC,
        topics.TF_TOPIC,
        topics.GT_TRAJECTORY_TOPIC,
        topics.GT_BOXES_TOPIC,
        topics.GT_COMMAND_TOPIC,
        topics.GT_FRAME_TOPIC,
        topics.GT_OCCUPANCY_TOPIC,
        topics.GT_CAMERA_MASK_TOPIC,
    ):
        assert len(msgs[t]) == n_kf, t
    assert len(msgs[topics.TF_STATIC_TOPIC]) == 2  # once per scene
    from rosbags.rosbag2 import Reader

    with Reader(path) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        assert {t: types[t] for t in msgs} == {t: bag_topics()[t] for t in msgs}
        static = next(c for c in reader.connections if c.topic == topics.TF_STATIC_TOPIC)
        qos = static.ext.offered_qos_profiles[0]
        assert qos.durability.name == "TRANSIENT_LOCAL" and qos.reliability.name == "RELIABLE"
    meta = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 9 and meta["storage_identifier"] == "mcap"
    assert json.loads(meta["custom_data"]["sparseoccvla.scenes"]) == ["scene-a", "scene-b"]
    static_meta = next(t for t in meta["topics_with_message_count"] if t["topic_metadata"]["name"] == "/tf_static")
    assert static_meta["topic_metadata"]["offered_qos_profiles"][0]["durability"] == "transient_local"
    # every message's log time is non-decreasing in file order per topic (the player publishes in log order)
    for t, items in msgs.items():
        assert all(a[0] <= b[0] for a, b in zip(items, items[1:])), t


def test_mcap_reader_reads_the_bag(mini_bag):
    mini, path, _, msgs = mini_bag
    from mcap.reader import make_reader

    mcap_file = next(path.glob("*.mcap"))
    counts: Counter = Counter()
    schemas = {}
    with open(mcap_file, "rb") as f:
        reader = make_reader(f)
        for schema, channel, _ in reader.iter_messages():
            counts[channel.topic] += 1
            schemas[channel.topic] = (schema.name, schema.encoding, channel.message_encoding)
    assert counts == Counter({t: len(v) for t, v in msgs.items()})
    assert schemas[topics.image_topic("CAM_FRONT")] == ("sensor_msgs/msg/CompressedImage", "ros2msg", "cdr")
    try:
        from mcap_ros2.decoder import DecoderFactory
    except ImportError:
        pytest.skip("mcap_ros2 not installed: decoded check skipped")
    tables = Tables(mini.root)
    first = tables.samples("scene-a")[0]
    sd = tables.key_sd(first, "CAM_FRONT")
    with open(mcap_file, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        for _, _, _, ros in reader.iter_decoded_messages(topics=[topics.image_topic("CAM_FRONT")]):
            assert ros.format == "jpeg" and ros.header.frame_id == "CAM_FRONT"
            assert bytes(ros.data) == (mini.root / sd["filename"]).read_bytes()
            assert ros.header.stamp.sec * 10**9 + ros.header.stamp.nanosec == sd["timestamp"] * 1000
            break


# ---------------------------------------------------------------------- sensors
def test_images_are_the_original_jpegs_with_nuscenes_stamps(mini_bag):
    mini, _, _, msgs = mini_bag
    tables = Tables(mini.root)
    for cam in CAMERA_NAMES:
        expected = sorted(
            (sd["timestamp"] * 1000, sd["filename"])
            for sd in tables.tables["sample_data"]
            if sd["is_key_frame"] and tables.channel[sd["token"]] == cam
        )
        got = msgs[topics.image_topic(cam)]
        assert [stamp_to_ns(m.header.stamp) for _, m in got] == [e[0] for e in expected]
        assert [log for log, _ in got] == [e[0] for e in expected]  # logged at the stamp
        for (_, m), (_, fname) in zip(got, expected):
            assert m.format == "jpeg" and m.header.frame_id == cam
            assert bytes(m.data) == (mini.root / fname).read_bytes()


def test_camera_info_matches_calibrated_sensor(mini_bag):
    mini, _, _, msgs = mini_bag
    tables = Tables(mini.root)
    for cam in CAMERA_NAMES:
        cs = next(
            c
            for c in tables.tables["calibrated_sensor"]
            if tables.by_token["sensor"][c["sensor_token"]]["channel"] == cam
        )
        k = np.asarray(cs["camera_intrinsic"])
        for _, m in msgs[topics.camera_info_topic(cam)]:
            assert m.header.frame_id == cam
            np.testing.assert_array_equal(np.asarray(m.k).reshape(3, 3), k)
            np.testing.assert_array_equal(np.asarray(m.p).reshape(3, 4)[:, :3], k)
            assert np.all(np.asarray(m.p).reshape(3, 4)[:, 3] == 0) and (m.height, m.width) == (90, 160)


def test_tf_static_equals_calibrated_sensor(mini_bag):
    mini, _, _, msgs = mini_bag
    tables = Tables(mini.root)
    log, msg = msgs[topics.TF_STATIC_TOPIC][0]
    first_stamp = min(items[0][0] for items in msgs.values())
    assert log == first_stamp  # written before anything else
    by_child = {t.child_frame_id: t for t in msg.transforms}
    assert sorted(by_child) == sorted(CAMERA_NAMES)
    for cam, t in by_child.items():
        cs = next(
            c
            for c in tables.tables["calibrated_sensor"]
            if tables.by_token["sensor"][c["sensor_token"]]["channel"] == cam
        )
        assert t.header.frame_id == "base_link"
        tr, q = t.transform.translation, t.transform.rotation
        assert [tr.x, tr.y, tr.z] == cs["translation"]
        assert [q.w, q.x, q.y, q.z] == cs["rotation"]


def test_odometry_and_tf_are_the_reference_ego_poses(mini_bag):
    mini, _, _, msgs = mini_bag
    tables = Tables(mini.root)
    odom = msgs[topics.ODOM_TOPIC]
    tf = msgs[topics.TF_TOPIC]
    expected = []
    for scene in ("scene-a", "scene-b"):
        poses = [tables.ref_pose(s) for s in tables.samples(scene)]
        # independent backward differences in the ego frame (frame 0 borrows frame 1's)
        for k, p in enumerate(poses):
            a, b = (poses[k - 1], p) if k else (poses[0], poses[1])
            dt = (b["timestamp"] - a["timestamp"]) * 1e-6
            v_world = (np.asarray(b["translation"]) - np.asarray(a["translation"])) / dt
            v_ego = quat_matrix(*p["rotation"]).T @ v_world
            yaw = lambda r: math.atan2(2 * (r[0] * r[3] + r[1] * r[2]), 1 - 2 * (r[2] ** 2 + r[3] ** 2))  # noqa: E731
            dyaw = (yaw(b["rotation"]) - yaw(a["rotation"]) + math.pi) % (2 * math.pi) - math.pi
            expected.append((p, v_ego, dyaw / dt))
    assert len(odom) == len(tf) == len(expected)
    for (log, m), (_, t), (p, v, w) in zip(odom, tf, expected):
        assert stamp_to_ns(m.header.stamp) == log == p["timestamp"] * 1000
        assert (m.header.frame_id, m.child_frame_id) == ("map", "base_link")
        pos, q = m.pose.pose.position, m.pose.pose.orientation
        assert [pos.x, pos.y, pos.z] == p["translation"] and [q.w, q.x, q.y, q.z] == p["rotation"]
        lin = m.twist.twist.linear
        np.testing.assert_allclose([lin.x, lin.y], v[:2], rtol=1e-4, atol=1e-4)  # float32 ego state
        assert m.twist.twist.angular.z == pytest.approx(w, rel=1e-4, abs=1e-5)
        tr = t.transforms[0]
        assert (tr.header.frame_id, tr.child_frame_id) == ("map", "base_link")
        assert [tr.transform.translation.x, tr.transform.translation.y] == p["translation"][:2]
    # the lidar reference differs from CAM_FRONT's pose only in stamp here; the CAM_BACK_RIGHT pose must not be used
    sample = tables.samples("scene-a")[1]
    assert (
        tables.ref_pose(sample)["timestamp"]
        != tables.by_token["ego_pose"][tables.key_sd(sample, "CAM_BACK_RIGHT")["ego_pose_token"]]["timestamp"]
    )


def test_sweeps_add_every_camera_frame(mini_sweeps_bag):
    mini, path, summary, msgs = mini_sweeps_bag
    tables = Tables(mini.root)
    samples = tables.samples("scene-a")
    first_t, last_t = samples[0]["timestamp"], samples[-1]["timestamp"]
    for cam in CAMERA_NAMES:
        lo, hi = tables.key_sd(samples[0], cam)["timestamp"], tables.key_sd(samples[-1], cam)["timestamp"]
        expected = sorted(
            sd["timestamp"] * 1000
            for sd in tables.tables["sample_data"]
            if tables.channel[sd["token"]] == cam and lo <= sd["timestamp"] <= hi
        )
        got = [stamp_to_ns(m.header.stamp) for _, m in msgs[topics.image_topic(cam)]]
        assert got == expected and len(got) > len(samples)
    # odometry: the key-frame reference poses + every CAM_FRONT pose, unique stamps, increasing
    odom = [stamp_to_ns(m.header.stamp) for _, m in msgs[topics.ODOM_TOPIC]]
    assert odom == sorted(set(odom)) and odom[0] == first_t * 1000 and odom[-1] >= last_t * 1000
    assert len(msgs[topics.GT_FRAME_TOPIC]) == len(samples)  # GT stays per key frame
    meta = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 8 and json.loads(meta["custom_data"]["sparseoccvla.sweeps"]) is True


# ---------------------------------------------------------------------- ground truth
def test_gt_trajectory_and_command_equal_the_dataset(synth_bag):
    from sparseoccvla_core.config import SparseOccVLAConfig
    from sparseoccvla_core.data.dataset import DatasetOptions, DrivingDataset

    root, _, msgs = synth_bag
    paths = {log: m for log, m in msgs[topics.GT_TRAJECTORY_TOPIC]}
    commands = [m.data for _, m in msgs[topics.GT_COMMAND_TOPIC]]
    infos = [json.loads(m.data) for _, m in msgs[topics.GT_FRAME_TOPIC]]
    order = {i["sample_token"]: n for n, i in enumerate(infos)}
    splits = json.loads((root / "splits.json").read_text())
    checked = 0
    for split in splits:
        ds = DrivingDataset(
            root,
            split,
            SparseOccVLAConfig.tiny(),
            tokenizer=None,
            options=DatasetOptions(load_occupancy=False, qa_choice="first"),
        )
        for g in range(len(ds)):
            item = ds[g]
            n = order[item.sample_token]
            stamp = infos[n]["camera_stamps_ns"]["CAM_FRONT"]
            assert item.timestamp * 1000 == stamp  # synthetic cameras fire at the key-frame time
            path = paths[stamp]
            assert stamp_to_ns(path.header.stamp) == stamp and path.header.frame_id == "base_link"
            valid = int(item.gt_trajectory_mask.sum())
            assert len(path.poses) == valid
            got = np.asarray([[p.pose.position.x, p.pose.position.y] for p in path.poses]).reshape(-1, 2)
            np.testing.assert_array_equal(got, item.gt_trajectory[:valid].astype(np.float64))
            assert commands[n] == item.command
            checked += 1
    assert checked == len(infos)


def test_gt_occupancy_and_camera_mask_roundtrip(mini_bag):
    from sparseoccvla_core.config import SparseOccVLAConfig
    from sparseoccvla_core.occ_grid import points_to_labels

    mini, _, _, msgs = mini_bag
    cfg = SparseOccVLAConfig()
    infos = {log: json.loads(m.data) for log, m in msgs[topics.GT_FRAME_TOPIC]}
    masks = {stamp_to_ns(m.header.stamp): m for _, m in msgs[topics.GT_CAMERA_MASK_TOPIC]}
    for log, cloud in msgs[topics.GT_OCCUPANCY_TOPIC]:
        s = stamp_to_ns(cloud.header.stamp)
        assert s == log and cloud.point_step == 16 and cloud.header.frame_id == "base_link"
        assert [(f.name, f.offset, f.datatype) for f in cloud.fields] == [
            ("x", 0, 7),
            ("y", 4, 7),
            ("z", 8, 7),
            ("class", 12, 2),
        ]
        arr = np.frombuffer(
            bytes(cloud.data),
            dtype=np.dtype(
                {
                    "names": ["x", "y", "z", "c"],
                    "formats": ["<f4", "<f4", "<f4", "u1"],
                    "offsets": [0, 4, 8, 12],
                    "itemsize": 16,
                }
            ),
        )
        info = infos[s]
        with np.load(mini.root / "gts" / info["scene"] / info["sample_token"] / "labels.npz") as npz:
            sem, cam_mask = npz["semantics"], npz["mask_camera"].astype(bool)
        pts = np.stack([arr["x"], arr["y"], arr["z"]], 1)
        grid = points_to_labels(pts, arr["c"], cfg.point_cloud_range, cfg.voxel_size)
        np.testing.assert_array_equal(grid, sem)
        assert len(arr) == int((sem != 17).sum())
        # voxel centre convention (occ_grid.py): centre of voxel i = range_min + 0.4 (i + 0.5), z range from -0.2 m
        i = np.argwhere(sem != 17)[0]
        centre = [-40 + 0.4 * (i[0] + 0.5), -40 + 0.4 * (i[1] + 0.5), -0.2 + 0.4 * (i[2] + 0.5)]
        hit = np.all(np.abs(pts - centre) < 1e-4, axis=1)
        assert hit.sum() == 1 and arr["c"][hit][0] == sem[tuple(i)]
        m = masks[s]
        assert m.encoding == "16UC1" and (m.height, m.width) == (200, 200)
        packed = np.frombuffer(bytes(m.data), dtype="<u2").reshape(200, 200)
        np.testing.assert_array_equal(unpack_camera_mask(packed, 16), cam_mask)


def test_camera_mask_packing_is_bitwise():
    from sparseoccvla_ros.replay.bag_messages import pack_camera_mask

    rng = np.random.default_rng(0)
    mask = rng.random((5, 4, 16)) > 0.5
    packed = pack_camera_mask(mask)
    assert packed.dtype == np.uint16
    assert int(packed[2, 3]) == sum(1 << z for z in range(16) if mask[2, 3, z])
    np.testing.assert_array_equal(unpack_camera_mask(packed, 16), mask)
    with pytest.raises(ValueError):
        pack_camera_mask(np.zeros((2, 2, 17), bool))


def test_gt_boxes_are_the_collision_gt(synth_bag):
    """x, y, yaw, length, width of each CUBE = the annotation in the current ego frame, computed here by hand."""
    root, _, msgs = synth_bag
    tables = Tables(root)
    cat_of_instance = {
        i["token"]: tables.by_token["category"][i["category_token"]]["name"] for i in tables.tables["instance"]
    }
    infos = {log: json.loads(m.data) for log, m in msgs[topics.GT_FRAME_TOPIC]}
    total = 0
    for log, arr in msgs[topics.GT_BOXES_TOPIC]:
        info = infos[log]
        samples = tables.samples(info["scene"])
        cur = samples[info["frame_index"]]
        ego = tables.ref_pose(cur)
        r_cur = quat_matrix(*ego["rotation"])
        ego_yaw = math.atan2(r_cur[1, 0], r_cur[0, 0])
        assert arr.markers[0].action == 3  # DELETEALL first
        cubes = [m for m in arr.markers if m.action == 0]
        for step in range(0, 7):
            j = info["frame_index"] + step
            got = [m for m in cubes if m.ns == str(step)]
            if j >= len(samples):
                assert not got
                continue
            anns = (
                [tables.by_token["sample_annotation"][a] for a in samples[j]["anns"]]
                if "anns" in samples[j]
                else [a for a in tables.tables["sample_annotation"] if a["sample_token"] == samples[j]["token"]]
            )
            anns = [
                a for a in anns if cat_of_instance[a["instance_token"]].startswith(("vehicle.", "human.pedestrian."))
            ]
            assert len(got) == len(anns)
            for m in got:
                a = anns[m.id]
                d = np.asarray(a["translation"][:2]) - np.asarray(ego["translation"][:2])
                local = r_cur[:2, :2].T @ d  # 2D transform (level poses), as the collision GT
                rot = quat_matrix(*a["rotation"])
                yaw = math.atan2(rot[1, 0], rot[0, 0]) - ego_yaw
                q = m.pose.orientation
                m_yaw = math.atan2(2 * (q.w * q.z + q.x * q.y), 1 - 2 * (q.y**2 + q.z**2))
                np.testing.assert_allclose([m.pose.position.x, m.pose.position.y], local, atol=1e-6)
                assert (m.scale.x, m.scale.y, m.scale.z) == pytest.approx((a["size"][1], a["size"][0], a["size"][2]))
                assert math.cos(m_yaw - yaw) == pytest.approx(1.0, abs=1e-9)
                total += 1
    assert total > 0


# ---------------------------------------------------------------------- calibration
def _assert_calibration_matches(cal_path: Path, root: Path) -> None:
    from sparseoccvla_core.calibration_file import load_calibration

    tables = Tables(root)
    cams, ego = load_calibration(cal_path)
    assert ego == "base_link" and sorted(cams) == sorted(CAMERA_NAMES)
    first = tables.samples(
        sorted(tables.tables["scene"], key=lambda s: tables.by_token["sample"][s["first_sample_token"]]["timestamp"])[
            0
        ]["name"]
    )[0]
    for cam, c in cams.items():
        sd = tables.key_sd(first, cam)
        cs = tables.by_token["calibrated_sensor"][sd["calibrated_sensor_token"]]
        np.testing.assert_allclose(c.cam2ego[:3, :3], quat_matrix(*cs["rotation"]), atol=1e-12)
        np.testing.assert_allclose(c.cam2ego[:3, 3], cs["translation"], atol=1e-12)
        np.testing.assert_allclose(c.intrinsics, cs["camera_intrinsic"], atol=1e-12)
        assert c.image_wh == (sd["width"], sd["height"]) and c.frame_id == cam


def test_calibration_yaml_beside_bag_and_calibration_command(synth_bag, tmp_path):
    root, bag, _ = synth_bag
    _assert_calibration_matches(bag / "calibration.yaml", root)
    from_bag, from_data = tmp_path / "bag.yaml", tmp_path / "data.yaml"
    assert cli_main(["calibration", "--bag", str(bag), "--out", str(from_bag)]) == 0
    assert cli_main(["calibration", "--data", str(root), "--out", str(from_data)]) == 0
    _assert_calibration_matches(from_bag, root)
    _assert_calibration_matches(from_data, root)
    assert cli_main(["calibration", "--data", str(root), "--out", str(from_data)]) == 2  # exists
    assert cli_main(["calibration", "--data", str(root), "--scene", "nope", "--out", str(tmp_path / "x.yaml")]) == 2


def test_calibration_from_bag_composes_tf_chains(tmp_path):
    from sparseoccvla_ros.replay.calibration_cmd import chain_to_frame

    a = np.eye(4)
    a[:3, 3] = [1.0, 0, 0]
    b = np.eye(4)
    b[:3, :3] = quat_matrix(math.cos(0.25), 0, 0, math.sin(0.25))
    tree = {"rig": ("base_link", a), "cam": ("rig", b)}
    np.testing.assert_allclose(chain_to_frame(tree, "cam", "base_link"), a @ b)
    assert chain_to_frame(tree, "other", "base_link") is None
    assert chain_to_frame({"x": ("y", a), "y": ("x", a)}, "x", "base_link") is None  # loop


# ---------------------------------------------------------------------- errors
def test_clear_errors(mini_nuscenes, tmp_path, capsys):  # noqa: F811
    assert cli_main(["bag", "--data", str(tmp_path / "missing"), "--all", "--out", str(tmp_path / "b")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert (
        cli_main(["bag", "--data", str(mini_nuscenes.root), "--scene", "scene-zzz", "--out", str(tmp_path / "b")]) == 2
    )
    err = capsys.readouterr().err
    assert "scene-zzz" in err and "scene-a" in err and "scene-b" in err
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "notes.txt").write_text("mine")
    assert cli_main(["bag", "--data", str(mini_nuscenes.root), "--all", "--out", str(tmp_path / "exists")]) == 2
    assert "exists" in capsys.readouterr().err
    assert (
        cli_main(["bag", "--data", str(mini_nuscenes.root), "--all", "--out", str(tmp_path / "exists"), "--overwrite"])
        == 2
    )  # not a bag: never deleted
    assert (tmp_path / "exists" / "notes.txt").is_file()


def test_overlapping_scenes_are_refused(mini_nuscenes, tmp_path):  # noqa: F811
    """Two scenes recorded at the same time would interleave in one bag: refused with the fix named."""
    import shutil

    root = tmp_path / "overlap"
    shutil.copytree(mini_nuscenes.root, root)
    version = root / mini_nuscenes.version
    for name in ("sample", "sample_data", "ego_pose"):
        rows = json.loads((version / f"{name}.json").read_text())
        for r in rows:
            if "scene-b" in r["token"]:
                r["timestamp"] -= 5_500_000  # scene-b now starts 150 ms before scene-a's last key frame
        (version / f"{name}.json").write_text(json.dumps(rows))
    with pytest.raises(ValueError, match="overlap"):
        write_bag(root, tmp_path / "bag", progress=False)


# ---------------------------------------------------------------------- type store
def test_typestore_has_the_custom_messages_from_their_msg_text(tmp_path):
    from sparseoccvla_ros.replay.typestore import (
        CUSTOM_MESSAGES,
        build_typestore,
        find_msg_dir,
        make_msg,
        newest_ros2_store,
    )

    ts = replay_typestore()
    assert replay_typestore() is ts  # cached
    assert newest_ros2_store().name.startswith("ROS2_")
    for name in CUSTOM_MESSAGES:
        assert f"sparseoccvla_msgs/msg/{name}" in ts.types
    # field names, order and constants come from the repository's .msg files
    _, fields = ts.fielddefs["sparseoccvla_msgs/msg/DrivingPlan"]
    assert [f[0] for f in fields] == [
        "header",
        "path",
        "waypoint_dt",
        "anchors",
        "anchor_scores",
        "chosen_anchor",
        "reasoning",
    ]
    consts = ts.fielddefs["sparseoccvla_msgs/msg/AnchorTrajectory"][0]
    assert ("COMMAND_RIGHT", "uint8", 2) in consts
    # a CDR round trip of a nested custom message
    anchor = make_msg(
        "sparseoccvla_msgs/msg/AnchorTrajectory",
        command=2,
        waypoints=[make_msg("geometry_msgs/msg/Point", x=1.5, y=-2.0, z=0.0)],
    )
    plan = make_msg(
        "sparseoccvla_msgs/msg/DrivingPlan",
        waypoint_dt=0.5,
        anchors=[anchor],
        anchor_scores=np.asarray([0.25], np.float32),
        chosen_anchor=0,
        reasoning="turn right",
    )
    back = deserialize(serialize(plan, "sparseoccvla_msgs/msg/DrivingPlan"), "sparseoccvla_msgs/msg/DrivingPlan")
    assert back.reasoning == "turn right" and back.anchors[0].waypoints[0].y == -2.0 and back.anchor_scores[0] == 0.25
    with pytest.raises(TypeError, match="no field"):
        make_msg("std_msgs/msg/UInt8", value=1)
    with pytest.raises(KeyError, match="not in the replay type store"):
        make_msg("nope_msgs/msg/Nothing")
    # the search order falls back to the repository's msg/ folder, and a miss names every folder tried
    repo_msgs = Path(__file__).resolve().parents[1] / "msg" / "msg"
    assert find_msg_dir([tmp_path / "absent", repo_msgs]) == repo_msgs
    with pytest.raises(FileNotFoundError, match="absent"):
        find_msg_dir([tmp_path / "absent"])
    assert "sparseoccvla_msgs/msg/OccupancyForecast" in build_typestore(repo_msgs).types
