"""``sparseoccvla eval-bag``: score a recording of the driving node's outputs against a ground-truth bag.

    sparseoccvla eval-bag --gt bags/scene-0103 --pred runs/replay_rec --out runs/replay_eval
    sparseoccvla eval-bag --gt bags/synth --pred runs/rec --out runs/eval --node /sparseoccvla/driving_node

The GT bag is one written by ``sparseoccvla bag`` (:mod:`.bag_writer`: ``/gt/*`` topics stamped with each key
frame's CAM_FRONT stamp); the prediction bag is a recording of the node (``sparseoccvla record``) holding
``<node>/output/occupancy`` (PointCloud2 x, y, z, class, score), ``<node>/output/forecast``
(sparseoccvla_msgs/OccupancyForecast) and ``<node>/output/plan`` (sparseoccvla_msgs/DrivingPlan; ``output/path``
when no plan was recorded).  Outputs are matched to key frames by ``header.stamp`` (the node stamps every output
with its camera set's CAM_FRONT stamp) and scored by ``sparseoccvla_core.evaluation.MetricAccumulator``, the code
``sparseoccvla eval`` runs, under the same protocols:

* occupancy: Occ3D mIoU with the camera mask (``/gt/occupancy_camera_mask``) and without; predicted points are
  voxelised on the GT bag's grid, best score per voxel;
* forecasting: mIoU at 1 / 2 / 3 s on the protocol frames (frame index in [5, scene length - 8]), each horizon's
  cloud (``OccupancyForecast.horizons``) against that future key frame's own GT, no mask;
* planning: L2 and collision rate under the ST-P3 and UniAD conventions, samples with all 6 GT waypoints only,
  collision GT = the ``/gt/boxes`` CUBEs of steps 1..6.

A key frame without an output is **missed** and left out of that metric (its count is reported, never hidden);
an output whose stamp is no key frame (a sweep set, or stamps shifted by a looping player) is **unmatched**; a
second output for one stamp is a **duplicate** (the first one is scored).  A camera set whose outputs are only
partly in the recording (say its occupancy but not its forecast) is **incomplete**; incomplete sets and sets the
node published (``frames_published`` of its last ``inference`` status) but the recording lacks are reported in
``replay.completeness`` and printed as warnings, so a lossy recording is never scored silently.  **Dropped sets** are the node's own
counters from the last ``/diagnostics`` message in the recording (``sets_dropped_behind``,
``sync_messages_dropped``), when it was recorded.

**Latency** of each output = its receive time in the recording (the recorder's log time) minus the time the last
camera image of its set was published, measured in one clock:

* ``recorded-inputs`` (preferred): the recording also holds the camera topics (images or camera_info) - the last
  one's receive time in the same recording;
* ``sim-time``: otherwise, when the recording's clock is the bag's own time (``use_sim_time`` with the player's
  ``/clock``: log times fall inside the GT bag's time span) - the log time of the set's last camera image in the GT
  bag.  At ``--rate R`` a sim-time latency is R times the wall-clock one, and it is quantised by the ``/clock`` period;
* otherwise latency is not measurable and is reported as such (record the camera_info topics too).

The GT is held in memory in compact form (voxel centres + uint8 classes, a 80 KB packed camera mask: about 1 MB
per real Occ3D key frame), so a bag of a few scenes is fine; score a whole split scene bag by scene bag.

Outputs: ``metrics.json`` (the ``sparseoccvla eval`` layout + a ``replay`` entry), ``metrics.md`` (the eval tables +
a replay table), ``horizons.png``.  :func:`evaluate_bags` is the library entry point.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from sparseoccvla_core.batch import CAMERA_NAMES, FREE_CLASS

from ..pointcloud import PointCloudFormatError, cloud_to_array
from . import topics
from .bag_messages import BAG_FORMAT_VERSION, unpack_camera_mask
from .typestore import deserialize, replay_typestore, stamp_to_ns

NS_PER_S = 1_000_000_000
DEFAULT_NODE = f"{topics.NODE_NAMESPACE}/{topics.NODE_NAME}"
LATENCY_PERCENTILES = (50, 90, 95, 99)
#: |horizon - h| below which an OccupancyForecast cloud is the h-second forecast, s.
HORIZON_TOLERANCE_S = 1e-3
#: Log times this close to the GT bag's span count as the bag's own clock (sim time), ns.
SIM_TIME_MARGIN_NS = 60 * NS_PER_S


class BagEvaluationError(ValueError):
    """A bag is not what eval-bag needs (the message names the bag and what is missing)."""


# ============================================================================ message decoding
def cloud_points(msg: Any, need_score: bool = False) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """PointCloud2 -> points [M, 3] float32, classes [M] int64, scores [M] float32 (None without a score field)."""
    try:
        arr = cloud_to_array(msg)
    except PointCloudFormatError as exc:
        raise BagEvaluationError(str(exc)) from exc
    missing = [f for f in ("x", "y", "z", "class") if f not in (arr.dtype.names or ())]
    if missing or (need_score and "score" not in arr.dtype.names):
        raise BagEvaluationError(f"PointCloud2 lacks fields {missing or ['score']} (has {arr.dtype.names})")
    pts = np.stack([arr["x"], arr["y"], arr["z"]], axis=1).astype(np.float32)
    scores = arr["score"].astype(np.float32) if "score" in arr.dtype.names else None
    return pts, arr["class"].astype(np.int64), scores


def path_waypoints(msg: Any) -> np.ndarray:
    """nav_msgs/Path -> [T, 2] (x, y) of its poses."""
    return np.asarray([[p.pose.position.x, p.pose.position.y] for p in msg.poses], dtype=np.float64).reshape(-1, 2)


def _yaw(q: Any) -> float:
    return float(np.arctan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z)))


def markers_to_boxes(msg: Any, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """/gt/boxes MarkerArray -> collision GT boxes [T, A, 5] (cx, cy, length, width, yaw) and mask [T, A].

    Only ADD CUBE markers whose ``ns`` is a step 1..T count (step 0, the current key frame, is for display).
    """
    per_step: list[list[list[float]]] = [[] for _ in range(horizon)]
    for m in msg.markers:
        if m.action != 0 or m.type != 1 or not m.ns.isdigit():
            continue
        s = int(m.ns)
        if 1 <= s <= horizon:
            per_step[s - 1].append(
                [m.pose.position.x, m.pose.position.y, m.scale.x, m.scale.y, _yaw(m.pose.orientation)]
            )
    a = max((len(b) for b in per_step), default=0)
    boxes, mask = np.zeros((horizon, a, 5)), np.zeros((horizon, a), dtype=bool)
    for t, rows in enumerate(per_step):
        if rows:
            boxes[t, : len(rows)], mask[t, : len(rows)] = np.asarray(rows), True
    return boxes, mask


# ============================================================================ GT bag
@dataclass
class GTFrame:
    """Ground truth of one key frame, read from the GT bag (sparse; dense grids are built on demand)."""

    stamp_ns: int
    scene: str
    sample_token: str
    frame_index: int
    scene_length: int
    camera_stamps_ns: dict[str, int]
    camera_log_ns: dict[str, int] = field(default_factory=dict)
    occ_points: Optional[np.ndarray] = None
    occ_labels: Optional[np.ndarray] = None
    camera_mask_packed: Optional[np.ndarray] = None
    trajectory: Optional[np.ndarray] = None
    boxes: Optional[np.ndarray] = None
    box_mask: Optional[np.ndarray] = None
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))


@dataclass
class GTBag:
    """A GT bag: key frames by stamp, grid and plan settings, time span."""

    path: Path
    frames: dict[int, GTFrame]
    pc_range: tuple[float, ...]
    voxel_size: float
    grid_shape: tuple[int, int, int]
    plan_horizon: int
    plan_dt: float
    start_ns: int
    end_ns: int

    def by_scene_index(self) -> dict[tuple[str, int], GTFrame]:
        return {(f.scene, f.frame_index): f for f in self.frames.values()}


def bag_custom_data(path: Path) -> dict:
    """``custom_data`` of a bag's metadata.yaml (rosbag2 metadata version >= 6), {} when absent."""
    import yaml

    doc = yaml.safe_load((Path(path) / "metadata.yaml").read_text()) or {}
    info = doc.get("rosbag2_bagfile_information") or {}
    return dict(info.get("custom_data") or {})


def read_gt_bag(path: str | Path) -> GTBag:
    """Read the GT topics of a ``sparseoccvla bag`` bag.

    Raises:
        FileNotFoundError: no bag.  BagEvaluationError: not a ``sparseoccvla bag`` bag (no /gt/frame_info or an
        unsupported bag_format).
    """
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not (path / "metadata.yaml").is_file():
        raise FileNotFoundError(f"no rosbag2 bag at {path} (expected a folder with metadata.yaml)")
    ts = replay_typestore()
    custom = bag_custom_data(path)
    with Reader(path) as reader:
        fmt = custom.get("sparseoccvla.bag_format")
        if fmt is None or int(fmt) != BAG_FORMAT_VERSION:
            raise BagEvaluationError(
                f"{path} is not a GT bag of format {BAG_FORMAT_VERSION} written by 'sparseoccvla bag' "
                f"(custom_data sparseoccvla.bag_format = {fmt!r}); convert the scene with 'sparseoccvla bag'"
            )
        pc_range = tuple(json.loads(custom["sparseoccvla.occupancy_range"]))
        voxel = float(json.loads(custom["sparseoccvla.voxel_size"]))
        grid = tuple(json.loads(custom["sparseoccvla.occupancy_grid"]))
        horizon = int(json.loads(custom["sparseoccvla.plan_horizon"]))
        plan_dt = float(json.loads(custom["sparseoccvla.plan_dt"]))
        conns = {c.topic: c for c in reader.connections}
        if topics.GT_FRAME_TOPIC not in conns:
            raise BagEvaluationError(f"{path} has no {topics.GT_FRAME_TOPIC} topic")
        frames: dict[int, GTFrame] = {}
        pending: dict[tuple[str, int], Any] = {}  # (topic, stamp) -> compact GT, attached to frames below
        odom: list[tuple[int, np.ndarray]] = []
        image_topics = {topics.image_topic(c): c for c in CAMERA_NAMES}
        wanted = [
            topics.GT_FRAME_TOPIC,
            topics.GT_OCCUPANCY_TOPIC,
            topics.GT_CAMERA_MASK_TOPIC,
            topics.GT_TRAJECTORY_TOPIC,
            topics.GT_BOXES_TOPIC,
            topics.ODOM_TOPIC,
            *image_topics,
        ]
        camera_log: dict[tuple[str, int], int] = {}
        for conn, log_ns, raw in reader.messages(connections=[conns[t] for t in wanted if t in conns]):
            msg = deserialize(raw, conn.msgtype, ts)
            if conn.topic == topics.GT_FRAME_TOPIC:
                info = json.loads(msg.data)
                stamps = {k: int(v) for k, v in info["camera_stamps_ns"].items()}
                s = stamps[CAMERA_NAMES[0]]
                frames[s] = GTFrame(
                    s, info["scene"], info["sample_token"], int(info["frame_index"]), int(info["scene_length"]), stamps
                )
            elif conn.topic in image_topics:
                camera_log.setdefault((image_topics[conn.topic], stamp_to_ns(msg.header.stamp)), log_ns)
            elif conn.topic == topics.ODOM_TOPIC:
                v = msg.twist.twist.linear
                odom.append((stamp_to_ns(msg.header.stamp), np.array([v.x, v.y])))
            elif conn.topic == topics.GT_BOXES_TOPIC:  # MarkerArray has no header: logged at the stamp
                pending[(conn.topic, log_ns)] = markers_to_boxes(msg, horizon)
            elif conn.topic == topics.GT_OCCUPANCY_TOPIC:  # compact right away: labels as uint8
                pts, lab, _ = cloud_points(msg)
                pending[(conn.topic, stamp_to_ns(msg.header.stamp))] = (pts, lab.astype(np.uint8))
            elif conn.topic == topics.GT_CAMERA_MASK_TOPIC:
                raw_mask = np.asarray(msg.data, np.uint8).tobytes()
                pending[(conn.topic, stamp_to_ns(msg.header.stamp))] = np.frombuffer(raw_mask, "<u2").reshape(
                    int(msg.height), int(msg.width)
                )
            elif conn.topic == topics.GT_TRAJECTORY_TOPIC:
                pending[(conn.topic, stamp_to_ns(msg.header.stamp))] = path_waypoints(msg)
        start, end = reader.start_time, reader.end_time
    if not frames:
        raise BagEvaluationError(f"{path}: {topics.GT_FRAME_TOPIC} has no messages")
    for (topic, s), value in pending.items():
        f = frames.get(s)
        if f is None:
            continue
        if topic == topics.GT_OCCUPANCY_TOPIC:
            f.occ_points, f.occ_labels = value
        elif topic == topics.GT_CAMERA_MASK_TOPIC:
            f.camera_mask_packed = value
        elif topic == topics.GT_TRAJECTORY_TOPIC:
            f.trajectory = value
        else:
            f.boxes, f.box_mask = value
    odom_t = np.asarray([t for t, _ in odom], dtype=np.int64)
    for f in frames.values():
        f.camera_log_ns = {c: camera_log[(c, s)] for c, s in f.camera_stamps_ns.items() if (c, s) in camera_log}
        if len(odom_t):  # ego velocity of the key frame: the odometry sample nearest to its CAM_FRONT stamp
            j = int(np.argmin(np.abs(odom_t - f.stamp_ns)))
            if abs(int(odom_t[j]) - f.stamp_ns) < NS_PER_S // 4:
                f.velocity = odom[j][1]
    return GTBag(path, frames, pc_range, voxel, grid, horizon, plan_dt, int(start), int(end))  # type: ignore[arg-type]


# ============================================================================ prediction bag
@dataclass
class PredOutput:
    """One output message matched (or not) to a key frame."""

    stamp_ns: int
    log_ns: int
    data: Any


@dataclass
class PredBag:
    """The node's recorded outputs by kind, first message per stamp, and the bookkeeping of the rest."""

    path: Path
    outputs: dict[str, dict[int, PredOutput]]
    duplicates: dict[str, int]
    camera_receive_ns: dict[tuple[str, int], int]
    diagnostics: dict[str, str]
    topics_found: dict[str, str]
    #: values of the node's last ``inference`` status (``frames_published``: camera sets the node published)
    inference: dict[str, str] = field(default_factory=dict)


OUTPUT_KINDS = ("occupancy", "forecast", "plan")


def _output_topics(node: str) -> dict[str, list[tuple[str, str]]]:
    base = f"{node.rstrip('/')}/output"
    return {
        "occupancy": [(f"{base}/occupancy", "sensor_msgs/msg/PointCloud2")],
        "forecast": [(f"{base}/forecast", "sparseoccvla_msgs/msg/OccupancyForecast")],
        "plan": [(f"{base}/plan", "sparseoccvla_msgs/msg/DrivingPlan"), (f"{base}/path", "nav_msgs/msg/Path")],
    }


def _forecast_frames(msg: Any, horizons: Sequence[float]) -> dict[float, tuple[np.ndarray, np.ndarray, Any]]:
    out = {}
    hs = [float(h) for h in msg.horizons]
    for h in horizons:
        j = next((i for i, x in enumerate(hs) if abs(x - h) < HORIZON_TOLERANCE_S), None)
        if j is not None and j < len(msg.clouds):
            out[h] = cloud_points(msg.clouds[j])
    return out


def read_pred_bag(path: str | Path, node: str = DEFAULT_NODE, horizons: Sequence[float] = (1.0, 2.0, 3.0)) -> PredBag:
    """Read the node's outputs (decoded into arrays right away to keep memory small).

    Raises:
        FileNotFoundError: no bag.  BagEvaluationError: none of the node's output topics is in the bag.
    """
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not (path / "metadata.yaml").is_file():
        raise FileNotFoundError(f"no rosbag2 bag at {path} (expected a folder with metadata.yaml)")
    ts = replay_typestore()
    wanted = _output_topics(node)
    outputs: dict[str, dict[int, PredOutput]] = {k: {} for k in OUTPUT_KINDS}
    duplicates = {k: 0 for k in OUTPUT_KINDS}
    camera_receive: dict[tuple[str, int], int] = {}
    diagnostics: dict[str, str] = {}
    inference: dict[str, str] = {}
    found: dict[str, str] = {}
    with Reader(path) as reader:
        conns = {c.topic: c for c in reader.connections}
        kind_of: dict[str, str] = {}
        for kind, options in wanted.items():
            for topic, msgtype in options:
                if topic in conns and conns[topic].msgtype == msgtype:
                    kind_of[topic] = kind
                    found[kind] = topic
                    break
        if not kind_of:
            raise BagEvaluationError(
                f"{path} has none of the node's output topics {[t for o in wanted.values() for t, _ in o]} "
                f"(topics: {sorted(conns)}); pass --node if the node runs under another name"
            )
        cam_of = {}
        for cam in CAMERA_NAMES:
            for t in (topics.image_topic(cam), topics.camera_info_topic(cam)):
                if t in conns:
                    cam_of[t] = cam
        diag = [conns[t] for t in ("/diagnostics",) if t in conns]
        selected = [conns[t] for t in (*kind_of, *cam_of)] + diag
        for conn, log_ns, raw in reader.messages(connections=selected):
            msg = deserialize(raw, conn.msgtype, ts)
            if conn.topic in cam_of:
                key = (cam_of[conn.topic], stamp_to_ns(msg.header.stamp))
                camera_receive[key] = max(camera_receive.get(key, 0), int(log_ns))
                continue
            if conn.topic == "/diagnostics":
                for st in msg.status:
                    if st.name.endswith(f"{node.rstrip('/').split('/')[-1]}: inputs"):
                        diagnostics = {kv.key: kv.value for kv in st.values}
                    elif st.name.endswith(f"{node.rstrip('/').split('/')[-1]}: inference"):
                        inference = {kv.key: kv.value for kv in st.values}
                continue
            kind = kind_of[conn.topic]
            s = stamp_to_ns(msg.header.stamp)
            if s in outputs[kind]:
                duplicates[kind] += 1
                continue
            if kind == "occupancy":
                data: Any = cloud_points(msg, need_score=False)
            elif kind == "forecast":
                data = _forecast_frames(msg, horizons)
            elif conn.msgtype == "nav_msgs/msg/Path":
                data = (path_waypoints(msg), None)
            else:
                data = (path_waypoints(msg.path), msg.reasoning)
            outputs[kind][s] = PredOutput(s, int(log_ns), data)
    return PredBag(path, outputs, duplicates, camera_receive, diagnostics, found, inference)


# ============================================================================ scoring
def _percentiles(values: Sequence[float]) -> Optional[dict]:
    if not values:
        return None
    v = np.asarray(values, dtype=np.float64)
    out = {f"p{p}": float(np.percentile(v, p)) for p in LATENCY_PERCENTILES}
    out.update(mean=float(v.mean()), max=float(v.max()), min=float(v.min()), count=int(v.size))
    return out


def _latency(gt: GTBag, pred: PredBag) -> dict:
    """Per output kind: latency percentiles (s) and the clock they were measured in (module docstring)."""
    all_logs = [o.log_ns for outs in pred.outputs.values() for o in outs.values()]
    if pred.camera_receive_ns:
        mode = "recorded-inputs"
    elif (
        all_logs
        and gt.start_ns - SIM_TIME_MARGIN_NS <= min(all_logs)
        and max(all_logs) <= gt.end_ns + SIM_TIME_MARGIN_NS
    ):
        mode = "sim-time"
    else:
        return {
            "clock": "unavailable",
            "note": "the recording has no camera topics and its clock is not the bag's "
            "time: record the camera_info topics too, or replay with use_sim_time",
        }
    out: dict[str, Any] = {"clock": mode, "unit": "s"}
    for kind in OUTPUT_KINDS:
        values = []
        for s, o in pred.outputs[kind].items():
            f = gt.frames.get(s)
            if f is None:
                continue
            if mode == "recorded-inputs":
                inputs = [pred.camera_receive_ns.get((c, cs)) for c, cs in f.camera_stamps_ns.items()]
            else:
                inputs = [f.camera_log_ns.get(c) for c in f.camera_stamps_ns]
            if any(t is None for t in inputs):
                continue  # not every input of the set is known in this clock
            values.append((o.log_ns - max(inputs)) / NS_PER_S)  # type: ignore[type-var]
        out[kind] = _percentiles(values)
    return out


def _grid_cfg(gt: GTBag):
    """A model config carrying the GT bag's grid and plan settings (what MetricAccumulator reads)."""
    from sparseoccvla_core.config import SparseOccVLAConfig

    return SparseOccVLAConfig(
        point_cloud_range=tuple(gt.pc_range), voxel_size=gt.voxel_size, plan_horizon=gt.plan_horizon, plan_dt=gt.plan_dt
    )


def evaluate_bags(gt_bag: str | Path, pred_bag: str | Path, node: str = DEFAULT_NODE, cfg=None):
    """Score a recording against a GT bag with the metric code of ``sparseoccvla eval`` (module docstring).

    Args:
        gt_bag: bag folder written by ``sparseoccvla bag``.
        pred_bag: recording of the node's outputs.
        node: the node's fully qualified name (its outputs are under ``<node>/output``).
        cfg: config whose grid / plan settings the accumulator uses (default: the paper config with the GT bag's
            grid and plan settings; pass the model's config so metrics.json's "config" token counts are the model's).
    Returns:
        ``sparseoccvla_core.evaluation.EvalResults``; ``results.extra["replay"]`` holds matching, missed /
        unmatched / duplicate counts, the node's drop counters and latency percentiles.
    Raises:
        FileNotFoundError / BagEvaluationError: a bag is missing or lacks what is needed.
    """
    from sparseoccvla_core import metrics as M
    from sparseoccvla_core.evaluation import MetricAccumulator
    from sparseoccvla_core.occ_grid import points_to_labels

    gt = read_gt_bag(gt_bag)
    pred = read_pred_bag(pred_bag, node, M.FORECAST_HORIZONS_S)
    cfg = cfg if cfg is not None else _grid_cfg(gt)
    if not np.allclose(cfg.point_cloud_range, gt.pc_range) or abs(cfg.voxel_size - gt.voxel_size) > 1e-9:
        raise BagEvaluationError(
            f"the config's grid {tuple(cfg.point_cloud_range)} / {cfg.voxel_size} m differs from the GT bag's "
            f"{gt.pc_range} / {gt.voxel_size} m (custom_data of {gt.path}): rewrite the bag with that config"
        )
    acc = MetricAccumulator(cfg)
    index = gt.by_scene_index()
    steps = M.forecast_steps()

    def dense(f: GTFrame) -> Optional[np.ndarray]:
        if f.occ_points is None:
            return None
        return points_to_labels(f.occ_points, f.occ_labels, gt.pc_range, gt.voxel_size, free_class=FREE_CLASS)

    order = sorted(gt.frames.values(), key=lambda f: (f.stamp_ns, f.frame_index))
    counts = {k: {"matched": 0, "missed": 0} for k in OUTPUT_KINDS}
    scored = {"occupancy": 0, "forecast_frames": 0, "plan": 0}
    missing_labels = 0
    cloud_sizes: list[int] = []  # points of every recorded occupancy cloud (the node's score_threshold applied)
    for f in order:
        occ = pred.outputs["occupancy"].get(f.stamp_ns)
        if occ is not None:
            cloud_sizes.append(len(occ.data[0]))
        fc = pred.outputs["forecast"].get(f.stamp_ns)
        plan = pred.outputs["plan"].get(f.stamp_ns)
        for kind, o in (("occupancy", occ), ("forecast", fc), ("plan", plan)):
            counts[kind]["matched" if o is not None else "missed"] += 1
        sem = dense(f)
        if sem is None:
            missing_labels += 1
        if occ is not None and sem is not None:
            pts, cls, scores = occ.data
            mask = (
                unpack_camera_mask(f.camera_mask_packed, gt.grid_shape[2]) if f.camera_mask_packed is not None else None
            )
            acc.add_occupancy(pts, cls, sem, camera_mask=mask, pred_scores=scores)
            scored["occupancy"] += 1
        if fc is not None and bool(M.forecast_eval_frames(f.frame_index, f.scene_length)):
            used = False
            for h, k in zip(M.FORECAST_HORIZONS_S, steps):
                fut = index.get((f.scene, f.frame_index + k))
                fut_sem = dense(fut) if fut is not None else None
                if h not in fc.data or fut_sem is None:
                    continue
                pts, cls, scores = fc.data[h]
                acc.add_forecast(h, pts, cls, fut_sem, pred_scores=scores)
                used = True
            scored["forecast_frames"] += int(used)
        if plan is not None and f.trajectory is not None:
            wp, reasoning = plan.data
            t = gt.plan_horizon
            gt_traj, gt_mask = np.zeros((t, 2)), np.zeros(t, dtype=bool)
            n = min(t, len(f.trajectory))
            gt_traj[:n], gt_mask[:n] = f.trajectory[:n], True
            if len(wp) < t:
                raise BagEvaluationError(f"plan at stamp {f.stamp_ns} has {len(wp)} waypoints, the GT has {t}")
            scored["plan"] += int(acc.add_plan(wp[:t], gt_traj, gt_mask, f.velocity, f.boxes, f.box_mask))
            if reasoning:
                acc.add_reasoning(f.sample_token, reasoning)
    n_matched = sum(1 for f in order if any(pred.outputs[k].get(f.stamp_ns) is not None for k in OUTPUT_KINDS))
    completeness = output_completeness(pred)
    unmatched = {k: sum(1 for s in pred.outputs[k] if s not in gt.frames) for k in OUTPUT_KINDS}
    notes = [
        f"scored from bags: GT {gt.path}, prediction {pred.path}; a key frame without an output is left out of "
        "that metric (see replay.missed)"
    ]
    results = acc.finalize(
        split="bag",
        num_samples=n_matched,
        num_samples_in_split=len(order),
        meteor=False,
        missing_label_files=missing_labels,
        notes=notes,
    )
    dropped = {
        k: pred.diagnostics[k]
        for k in ("sets_dropped_behind", "sync_messages_dropped", "sets_completed")
        if k in pred.diagnostics
    }
    results.extra["replay"] = {
        "gt_bag": str(gt.path),
        "pred_bag": str(pred.path),
        "node": node,
        "key_frames": len(order),
        "output_topics": pred.topics_found,
        "matched": {k: v["matched"] for k, v in counts.items()},
        "missed": {k: v["missed"] for k, v in counts.items()},
        "unmatched_outputs": unmatched,
        "duplicate_outputs": dict(pred.duplicates),
        "scored": scored,
        "node_drop_counters": dropped or None,
        "completeness": completeness,
        "latency": _latency(gt, pred),
        "occupancy_cloud": {
            "clouds": len(cloud_sizes),
            "empty": sum(1 for n in cloud_sizes if n == 0),
            "min_points": min(cloud_sizes) if cloud_sizes else None,
            "median_points": float(np.median(cloud_sizes)) if cloud_sizes else None,
        },
    }
    return results


def output_completeness(pred: PredBag) -> dict:
    """Did every camera set the node published reach the recording whole?

    A set is **incomplete** when the recording holds some of its outputs (by stamp) but not all of the kinds the
    recording has; **sets_recorded** counts distinct stamps with any output (a looped bag repeats stamps, so this
    is a lower bound there); **frames_published** is the node's own counter from its last recorded ``inference``
    status, and **not_recorded** is its excess over the recorded sets (never negative). Nothing here is scored: it
    says whether the scores cover what the node produced.
    """
    kinds = [k for k in OUTPUT_KINDS if k in pred.topics_found]
    stamps = {k: set(pred.outputs[k]) for k in kinds}
    union = set().union(*stamps.values()) if stamps else set()
    incomplete = sorted(s for s in union if any(s not in stamps[k] for k in kinds))
    missing = {k: sum(1 for s in incomplete if s not in stamps[k]) for k in kinds}
    published = pred.inference.get("frames_published")
    published_n = int(published) if published is not None and str(published).isdigit() else None
    recorded_n = max((len(pred.outputs[k]) + pred.duplicates.get(k, 0) for k in kinds), default=0)
    return {
        "kinds": kinds,
        "sets_recorded": len(union),
        "messages_recorded": {k: len(pred.outputs[k]) + pred.duplicates.get(k, 0) for k in kinds},
        "incomplete_sets": len(incomplete),
        "incomplete_stamps": incomplete[:20],
        "missing_by_kind": missing,
        "frames_published": published_n,
        "not_recorded": None if published_n is None else max(0, published_n - recorded_n),
    }


def completeness_warnings(completeness: dict) -> list[str]:
    """One line per problem :func:`output_completeness` found (empty when the recording is whole)."""
    lines = []
    if completeness["incomplete_sets"]:
        missing = ", ".join(f"{k} {n}" for k, n in completeness["missing_by_kind"].items() if n)
        lines.append(
            f"{completeness['incomplete_sets']} camera sets have incomplete outputs in the recording (missing: "
            f"{missing}; first stamps {completeness['incomplete_stamps'][:5]}): their metrics cover only what arrived"
        )
    if completeness["not_recorded"]:
        lines.append(
            f"the node published {completeness['frames_published']} camera sets but the recording holds at most "
            f"{completeness['frames_published'] - completeness['not_recorded']}: "
            f"{completeness['not_recorded']} never reached the recorder"
        )
    return lines


# ============================================================================ report
def replay_markdown(replay: dict) -> str:
    """The replay section of metrics.md: matching counts and latency percentiles."""
    lines = [
        "",
        "## Replay (eval-bag)",
        "",
        f"GT bag `{replay['gt_bag']}`, recording `{replay['pred_bag']}`, {replay['key_frames']} key frames.",
        "",
        "| output | matched | missed | unmatched | duplicates |",
        "|---|---:|---:|---:|---:|",
    ]
    for k in OUTPUT_KINDS:
        lines.append(
            f"| {k} | {replay['matched'][k]} | {replay['missed'][k]} | {replay['unmatched_outputs'][k]} | "
            f"{replay['duplicate_outputs'][k]} |"
        )
    cloud = replay.get("occupancy_cloud")
    if cloud and cloud["clouds"]:
        lines += [
            "",
            f"Occupancy clouds: {cloud['clouds']} recorded, {cloud['empty']} empty, points per cloud min "
            f"{cloud['min_points']}, median {cloud['median_points']:.0f} (after the node's score threshold).",
        ]
    comp = replay.get("completeness")
    if comp:
        warnings = completeness_warnings(comp)
        lines += [
            "",
            f"Completeness: {comp['sets_recorded']} camera sets recorded, {comp['incomplete_sets']} incomplete; "
            f"node published {comp['frames_published'] if comp['frames_published'] is not None else 'unknown'}.",
        ] + [f"**Warning:** {w}." for w in warnings]
    drops = replay.get("node_drop_counters")
    lines += [
        "",
        "Node counters (last /diagnostics): "
        + (", ".join(f"{k} = {v}" for k, v in drops.items()) if drops else "not recorded"),
    ]
    lat = replay["latency"]
    lines += [
        "",
        f"Latency, input -> output (clock: {lat['clock']})" + (f": {lat['note']}" if "note" in lat else ""),
        "",
    ]
    if lat["clock"] != "unavailable":
        cols = [f"p{p}" for p in LATENCY_PERCENTILES] + ["mean", "max", "count"]
        lines += ["| output | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for k in OUTPUT_KINDS:
            v = lat.get(k)
            cells = [("-" if v is None else (f"{v[c]:.3f}" if c != "count" else str(v[c]))) for c in cols]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_bag_report(results, out_dir: str | Path) -> list[Path]:
    """metrics.json, metrics.md (+ the replay section) and horizons.png in ``out_dir``."""
    from sparseoccvla_core.evaluation import write_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = list(write_report(results, out))
    md = out / "metrics.md"
    if md.is_file():
        md.write_text(md.read_text() + replay_markdown(results.extra["replay"]))
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, help="GT bag written by 'sparseoccvla bag'")
    parser.add_argument("--pred", required=True, help="recording of the node's outputs ('sparseoccvla record')")
    parser.add_argument("--out", required=True, help="folder for metrics.json / metrics.md / horizons.png")
    parser.add_argument(
        "--node", default=DEFAULT_NODE, help="the node's name; outputs under <node>/output (default %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        results = evaluate_bags(args.gt, args.pred, node=args.node)
    except (FileNotFoundError, BagEvaluationError) as err:
        print(f"sparseoccvla eval-bag: error: {err}", file=sys.stderr)
        return 2
    paths = write_bag_report(results, args.out)
    d = results.to_dict()
    rep = d.get("replay", results.extra["replay"])
    for line in completeness_warnings(results.extra["replay"]["completeness"]):
        print(f"sparseoccvla eval-bag: warning: {line}", file=sys.stderr)
    occ = (d.get("occupancy") or {}).get("no_mask") or {}
    l2 = (((d.get("planning") or {}).get("l2") or {}).get("stp3") or {}).get("avg")
    print(
        f"[eval-bag] {rep['key_frames']} key frames, missed {rep['missed']}, occupancy mIoU (no mask) "
        f"{occ.get('miou')}, L2 avg (ST-P3) {l2}; wrote {', '.join(str(p) for p in paths)}"
    )
    return 0
