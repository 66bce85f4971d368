"""``sparseoccvla eval-bag`` on recordings written here from the GT bag itself (no node, no model).

A synthetic scene of 15 key frames (so the forecasting protocol has frames 5..7) goes through ``sparseoccvla bag``;
"prediction" bags in the node's output layout are then written from that GT with ``rosbags``:

* perfect predictions -> mIoU 100 (both masks, every forecast horizon), L2 0;
* one class removed from the occupancy and the plan shifted by (0.3, -0.4) m -> occupancy mIoU = 100 (C - 1) / C
  for the C classes present, L2 = 0.5 m at every step (hand computed);
* missed, unmatched and duplicate outputs, the node's drop counters and input -> output latency in both clocks
  (sim time, and wall time with the camera topics recorded).

The full replay-equals-eval check through the real node is an end-to-end test elsewhere (``evaluate_bags`` is its
entry point).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest

from sparseoccvla_core.batch import CAMERA_NAMES
from sparseoccvla_core.cli import main as cli_main
from sparseoccvla_ros.replay import topics
from sparseoccvla_ros.replay.bag_writer import write_bag
from sparseoccvla_ros.replay.eval_bag import cloud_points, evaluate_bags, path_waypoints, write_bag_report
from sparseoccvla_ros.replay.typestore import deserialize, make_msg, replay_typestore, serialize, stamp_from_ns

pytest.importorskip("rosbags")

NODE = "/sparseoccvla/driving_node"
OUT = f"{NODE}/output"
FRAMES = 15


@pytest.fixture(scope="module")
def gt(tmp_path_factory):
    """(GT bag path, [per key frame: stamp, info, (points, classes), trajectory [n, 2], camera mask bits])."""
    from rosbags.rosbag2 import Reader

    from sparseoccvla_core.commands.synth import add_arguments  # noqa: F401  (skip cleanly if synth is missing)

    root = tmp_path_factory.mktemp("evalbag_world")
    assert (
        cli_main(
            [
                "synth",
                "--out",
                str(root),
                "--scenes",
                "1",
                "--seed",
                "3",
                "--frames",
                str(FRAMES),
                "--width",
                "160",
                "--height",
                "96",
                "--no-lidar",
            ]
        )
        == 0
    )
    bag = tmp_path_factory.mktemp("evalbag") / "gt"
    write_bag(root, bag, progress=False)
    ts = replay_typestore()
    frames: dict[int, dict] = {}
    with Reader(bag) as reader:
        for conn, log, raw in reader.messages():
            if not conn.topic.startswith("/gt/") or conn.topic in (topics.GT_BOXES_TOPIC, topics.GT_COMMAND_TOPIC):
                continue
            msg = deserialize(raw, conn.msgtype, ts)
            f = frames.setdefault(log, {"stamp": log})
            if conn.topic == topics.GT_FRAME_TOPIC:
                f["info"] = json.loads(msg.data)
            elif conn.topic == topics.GT_OCCUPANCY_TOPIC:
                f["occ"] = cloud_points(msg)[:2]
            elif conn.topic == topics.GT_TRAJECTORY_TOPIC:
                f["traj"] = path_waypoints(msg)
            elif conn.topic == topics.GT_CAMERA_MASK_TOPIC:
                f["mask"] = np.frombuffer(bytes(msg.data), "<u2").reshape(200, 200)
    ordered = [frames[s] for s in sorted(frames)]
    assert len(ordered) == FRAMES and all("occ" in f for f in ordered)
    return bag, ordered


# ---------------------------------------------------------------------- writing a recording of the node
def _cloud(stamp: int, pts: np.ndarray, cls: np.ndarray, frame_id: str = "base_link"):
    dtype = np.dtype(
        {
            "names": ["x", "y", "z", "class", "score"],
            "formats": ["<f4", "<f4", "<f4", "u1", "<f4"],
            "offsets": [0, 4, 8, 12, 16],
            "itemsize": 20,
        }
    )
    arr = np.zeros(len(pts), dtype)
    arr["x"], arr["y"], arr["z"], arr["class"], arr["score"] = pts[:, 0], pts[:, 1], pts[:, 2], cls, 1.0
    fields = [
        make_msg("sensor_msgs/msg/PointField", name=n, offset=o, datatype=d, count=1)
        for n, o, d in (("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("class", 12, 2), ("score", 16, 7))
    ]
    return make_msg(
        "sensor_msgs/msg/PointCloud2",
        header=make_msg("std_msgs/msg/Header", stamp=stamp_from_ns(stamp), frame_id=frame_id),
        height=1,
        width=len(arr),
        fields=fields,
        point_step=20,
        row_step=20 * len(arr),
        data=np.frombuffer(arr.tobytes(), np.uint8),
        is_dense=True,
    )


def _header(stamp: int, frame: str = "base_link"):
    return make_msg("std_msgs/msg/Header", stamp=stamp_from_ns(stamp), frame_id=frame)


def _path(stamp: int, wp: np.ndarray):
    poses = [
        make_msg(
            "geometry_msgs/msg/PoseStamped",
            header=_header(stamp),
            pose=make_msg(
                "geometry_msgs/msg/Pose", position=make_msg("geometry_msgs/msg/Point", x=float(x), y=float(y), z=0.0)
            ),
        )
        for x, y in wp
    ]
    return make_msg("nav_msgs/msg/Path", header=_header(stamp), poses=poses)


def write_recording(
    out: Path,
    frames: list[dict],
    *,
    drop_class: Optional[int] = None,
    shift=(0.0, 0.0),
    delay_s: Callable[[int], float] = lambda n: 0.1,
    skip_occupancy=(),
    unmatched: bool = False,
    duplicate: Optional[int] = None,
    wall_offset_s: Optional[float] = None,
    diagnostics: Optional[dict] = None,
) -> None:
    """A recording in the node's output layout, made from the GT frames (see module docstring)."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = replay_typestore()
    w = Writer(out, version=9, storage_plugin=StoragePlugin.MCAP)
    w.open()
    conns = {}

    def put(topic: str, msgtype: str, log_ns: int, msg) -> None:
        if topic not in conns:
            conns[topic] = w.add_connection(topic, msgtype, typestore=ts)
        w.write(conns[topic], int(log_ns), serialize(msg, msgtype, ts))

    offset = int((wall_offset_s or 0.0) * 1e9)
    events = []
    for n, f in enumerate(frames):
        s = f["stamp"]
        log = s + offset + int(round(delay_s(n) * 1e9))
        if wall_offset_s is not None:  # the camera inputs as the recorder received them, 1 ms apart
            for j, cam in enumerate(CAMERA_NAMES):
                info = make_msg("sensor_msgs/msg/CameraInfo", header=_header(s, cam))
                events.append(
                    (s + offset + j * 1_000_000, topics.camera_info_topic(cam), "sensor_msgs/msg/CameraInfo", info)
                )
        pts, cls = f["occ"]
        if drop_class is not None:
            keep = cls != drop_class
            pts, cls = pts[keep], cls[keep]
        if n not in skip_occupancy:
            events.append((log, f"{OUT}/occupancy", "sensor_msgs/msg/PointCloud2", _cloud(s, pts, cls)))
        if duplicate == n:  # a second output with the same stamp and garbage content: must be ignored
            events.append(
                (log + 1, f"{OUT}/occupancy", "sensor_msgs/msg/PointCloud2", _cloud(s, pts, np.zeros_like(cls)))
            )
        clouds, horizons = [], []
        for k in range(1, 7):
            if n + k < len(frames):
                fp, fc = frames[n + k]["occ"]
            else:
                fp, fc = np.zeros((0, 3), np.float32), np.zeros(0, np.int64)
            clouds.append(_cloud(s + k * 500_000_000, fp, fc, f"base_link_t{k}"))
            horizons.append(0.5 * k)
        fc_msg = make_msg(
            "sparseoccvla_msgs/msg/OccupancyForecast",
            header=_header(s),
            horizons=np.asarray(horizons, np.float32),
            clouds=clouds,
            future_ego_poses=[make_msg("geometry_msgs/msg/Pose") for _ in clouds],
        )
        events.append((log, f"{OUT}/forecast", "sparseoccvla_msgs/msg/OccupancyForecast", fc_msg))
        traj = f["traj"]
        wp = np.zeros((6, 2))
        wp[: len(traj)] = traj
        if len(traj):
            wp[len(traj) :] = traj[-1]
        wp = wp + np.asarray(shift)
        plan = make_msg(
            "sparseoccvla_msgs/msg/DrivingPlan",
            header=_header(s),
            path=_path(s, wp),
            waypoint_dt=0.5,
            reasoning=f"frame {n}: keep the lane",
        )
        events.append((log, f"{OUT}/plan", "sparseoccvla_msgs/msg/DrivingPlan", plan))
    if unmatched:
        s = frames[0]["stamp"] + 1
        events.append((s + offset, f"{OUT}/occupancy", "sensor_msgs/msg/PointCloud2", _cloud(s, *frames[0]["occ"])))
    if diagnostics:
        values = [make_msg("diagnostic_msgs/msg/KeyValue", key=k, value=str(v)) for k, v in diagnostics.items()]
        status = make_msg("diagnostic_msgs/msg/DiagnosticStatus", name="driving_node: inputs", values=values)
        arr = make_msg("diagnostic_msgs/msg/DiagnosticArray", header=_header(frames[-1]["stamp"]), status=[status])
        events.append(
            (frames[-1]["stamp"] + offset + 2_000_000_000, "/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", arr)
        )
    for log, topic, msgtype, msg in sorted(events, key=lambda e: e[0]):
        put(topic, msgtype, log, msg)
    w.close()


# ---------------------------------------------------------------------- tests
def test_perfect_predictions_score_perfectly(gt, tmp_path):
    bag, frames = gt
    write_recording(tmp_path / "pred", frames)
    d = evaluate_bags(bag, tmp_path / "pred").to_dict()
    assert d["occupancy"]["no_mask"]["miou"] == pytest.approx(100.0)
    assert d["occupancy"]["camera_mask"]["miou"] == pytest.approx(100.0)
    assert d["occupancy"]["camera_mask"]["num_frames"] == FRAMES
    fc = d["forecasting"]
    assert fc["num_frames"] == 3  # protocol frames 5, 6, 7 of a 15-frame scene
    for key in ("1s", "2s", "3s"):
        assert fc[key]["miou"] == pytest.approx(100.0)
    plan = d["planning"]
    full = sum(1 for f in frames if len(f["traj"]) == 6)
    assert plan["num_samples"] == full == FRAMES - 6
    for conv in ("stp3", "uniad"):
        assert plan["l2"][conv]["avg"] == pytest.approx(0.0, abs=1e-6)
        assert plan["collision"][conv]["avg"] == pytest.approx(0.0)
    rep = d["replay"]
    assert rep["missed"] == {"occupancy": 0, "forecast": 0, "plan": 0}
    assert rep["matched"]["plan"] == FRAMES and rep["unmatched_outputs"]["occupancy"] == 0
    sizes = [len(f["occ"][0]) for f in frames]  # the recording publishes each frame's GT points
    assert rep["occupancy_cloud"] == {
        "clouds": FRAMES,
        "empty": 0,
        "min_points": min(sizes),
        "median_points": pytest.approx(float(np.median(sizes))),
    }
    assert d["reasoning_examples"][0]["reasoning"] == "frame 0: keep the lane"
    lat = rep["latency"]
    assert lat["clock"] == "sim-time"
    assert lat["occupancy"]["p50"] == pytest.approx(0.1) and lat["plan"]["count"] == FRAMES


def test_known_errors_give_hand_computed_scores(gt, tmp_path):
    bag, frames = gt
    counts = np.zeros(18, int)
    counts_cam = np.zeros(18, int)
    from sparseoccvla_core.occ_grid import points_to_labels
    from sparseoccvla_ros.replay.bag_messages import unpack_camera_mask

    for f in frames:
        pts, cls = f["occ"]
        counts += np.bincount(cls, minlength=18)
        sem = points_to_labels(pts, cls, (-40.0, -40.0, -0.2, 40.0, 40.0, 6.2), 0.4)
        vis = unpack_camera_mask(f["mask"], 16)
        counts_cam += np.bincount(sem[vis], minlength=18)
    present = np.flatnonzero(counts[:17])
    present_cam = np.flatnonzero(counts_cam[:17])
    drop = int(present[np.argmax(counts[present])])  # the most frequent class
    assert drop in present_cam
    write_recording(tmp_path / "pred", frames, drop_class=drop, shift=(0.3, -0.4))
    d = evaluate_bags(bag, tmp_path / "pred").to_dict()
    # the dropped class has IoU 0 (all FN), every other class stays perfect (no FP, no FN)
    assert d["occupancy"]["no_mask"]["miou"] == pytest.approx(100.0 * (len(present) - 1) / len(present))
    assert d["occupancy"]["camera_mask"]["miou"] == pytest.approx(100.0 * (len(present_cam) - 1) / len(present_cam))
    for conv in ("stp3", "uniad"):
        l2 = d["planning"]["l2"][conv]
        assert l2["avg"] == pytest.approx(0.5, abs=1e-6)  # |(0.3, -0.4)| at every step
        assert l2["per_step"] == pytest.approx([0.5] * 6, abs=1e-6)


def test_missed_unmatched_duplicates_and_node_counters(gt, tmp_path):
    bag, frames = gt
    write_recording(
        tmp_path / "pred",
        frames,
        skip_occupancy={2, 9},
        unmatched=True,
        duplicate=3,
        diagnostics={"sets_dropped_behind": 3, "sync_messages_dropped": 1, "sets_completed": 15},
    )
    results = evaluate_bags(bag, tmp_path / "pred")
    d = results.to_dict()
    rep = d["replay"]
    assert rep["missed"] == {"occupancy": 2, "forecast": 0, "plan": 0}
    assert rep["unmatched_outputs"]["occupancy"] == 1 and rep["duplicate_outputs"]["occupancy"] == 1
    assert rep["scored"]["occupancy"] == FRAMES - 2
    assert rep["node_drop_counters"] == {
        "sets_dropped_behind": "3",
        "sync_messages_dropped": "1",
        "sets_completed": "15",
    }
    assert d["occupancy"]["no_mask"]["num_frames"] == FRAMES - 2
    assert d["occupancy"]["no_mask"]["miou"] == pytest.approx(100.0)  # the garbage duplicate was not scored
    files = write_bag_report(results, tmp_path / "report")
    md = (tmp_path / "report" / "metrics.md").read_text()
    assert "## Replay (eval-bag)" in md and "| occupancy | 13 | 2 | 1 | 1 |" in md
    # completeness (issue 22): two sets lack their occupancy, the unmatched occupancy has no forecast / plan
    comp = rep["completeness"]
    assert comp["incomplete_sets"] == 3 and comp["missing_by_kind"] == {"occupancy": 2, "forecast": 1, "plan": 1}
    assert comp["frames_published"] is None and comp["not_recorded"] is None  # no inference status recorded
    assert "**Warning:** 3 camera sets have incomplete outputs" in md
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["replay"]["missed"]["occupancy"] == 2
    assert {p.name for p in files} >= {"metrics.json", "metrics.md"}


def test_latency_in_wall_time_uses_the_recorded_inputs(gt, tmp_path):
    bag, frames = gt
    delays = [0.05 + 0.02 * n for n in range(FRAMES)]
    # camera inputs received 0..5 ms after the wall offset, outputs `delay` after the wall offset
    write_recording(tmp_path / "pred", frames, delay_s=lambda n: delays[n], wall_offset_s=5000.0)
    lat = evaluate_bags(bag, tmp_path / "pred").to_dict()["replay"]["latency"]
    assert lat["clock"] == "recorded-inputs"
    expected = np.asarray(delays) - 0.005  # measured from the LAST camera of the set
    for p in (50, 90, 95, 99):
        assert lat["occupancy"][f"p{p}"] == pytest.approx(float(np.percentile(expected, p)), abs=1e-9)
    assert lat["plan"]["max"] == pytest.approx(float(expected.max()), abs=1e-9)


def test_latency_unavailable_without_a_common_clock(gt, tmp_path):
    bag, frames = gt
    write_recording(tmp_path / "pred", frames, delay_s=lambda n: 1e6)  # wall clock, no inputs recorded
    lat = evaluate_bags(bag, tmp_path / "pred").to_dict()["replay"]["latency"]
    assert lat["clock"] == "unavailable" and "camera_info" in lat["note"]


def test_cli_and_clear_errors(gt, tmp_path, capsys):
    bag, frames = gt
    write_recording(tmp_path / "pred", frames)
    assert cli_main(["eval-bag", "--gt", str(bag), "--pred", str(tmp_path / "pred"), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "metrics.json").is_file() and "Replay" in (tmp_path / "o" / "metrics.md").read_text()
    # the recording given as GT: not a GT bag
    assert cli_main(["eval-bag", "--gt", str(tmp_path / "pred"), "--pred", str(bag), "--out", str(tmp_path / "x")]) == 2
    assert "not a GT bag" in capsys.readouterr().err
    # a GT bag holds no node outputs
    assert cli_main(["eval-bag", "--gt", str(bag), "--pred", str(bag), "--out", str(tmp_path / "x")]) == 2
    assert "--node" in capsys.readouterr().err
    assert cli_main(["eval-bag", "--gt", str(tmp_path / "nope"), "--pred", str(bag), "--out", str(tmp_path / "x")]) == 2
    assert "no rosbag2 bag" in capsys.readouterr().err


def test_model_config_is_used_and_must_match_the_bag_grid(gt, tmp_path):
    import dataclasses

    from sparseoccvla_core.config import SparseOccVLAConfig
    from sparseoccvla_ros.replay.eval_bag import BagEvaluationError

    bag, frames = gt
    write_recording(tmp_path / "pred", frames)
    tiny = SparseOccVLAConfig.tiny()
    d = evaluate_bags(bag, tmp_path / "pred", cfg=tiny).to_dict()
    assert d["config"]["num_queries"] == tiny.num_queries and d["occupancy"]["no_mask"]["miou"] == pytest.approx(100)
    nominal = dataclasses.replace(tiny, point_cloud_range=(-40.0, -40.0, -1.0, 40.0, 40.0, 5.4))  # unshifted grid
    with pytest.raises(BagEvaluationError, match="differs from the GT bag"):
        evaluate_bags(bag, tmp_path / "pred", cfg=nominal)
