"""Read a demo run back from its bags into :class:`~.report.ReportFrame` s (rosbags only: no ROS install needed).

The GT bag (``sparseoccvla bag``) gives each key frame's camera JPEGs, GT occupancy, GT trajectory and the GT of
the future key frames; the recording gives the node's occupancy, forecast, plan (with every scored anchor),
explanation and ``/diagnostics``.  The GT and the node's outputs are decoded with the same functions ``eval-bag``
scores with (:func:`~sparseoccvla_ros.replay.eval_bag.read_gt_bag` / ``read_pred_bag``), so the report shows exactly
what was scored.  Stage timings are the ``time_<stage>_s`` values of the node's ``<node>: inference`` diagnostic
status (:meth:`sparseoccvla_ros.driving_node.DrivingNode.publish_diagnostics`), one sample per published key frame
(``last_stamp_ns``) that a recorded ``/diagnostics`` message saw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from sparseoccvla_core import metrics as M
from sparseoccvla_core.batch import CAMERA_NAMES

from ..replay import topics
from ..replay.eval_bag import GTBag, PredBag, read_gt_bag, read_pred_bag
from ..replay.typestore import deserialize, replay_typestore, stamp_to_ns
from .report import QuestionAnswer, ReportFrame

#: Node counters kept from the last recorded diagnostics (inputs / inference statuses).
NODE_COUNTERS = ("sets_completed", "sets_dropped_behind", "sync_messages_dropped", "frames_missed", "frames_published")


@dataclass
class RecordingExtras:
    """What eval-bag's reader does not keep: anchors, explanations, diagnostics.

    Args:
        anchors: stamp -> (anchors [K, T, 2], scores [K], chosen index).
        explanations: stamp -> text (``output/explanation``, else the plan's ``reasoning``).
        stage_times_s: stage -> seconds, one value per key frame seen in /diagnostics.
        counters: the node's counters from the last /diagnostics message.
    """

    anchors: dict[int, tuple[np.ndarray, np.ndarray, int]] = field(default_factory=dict)
    explanations: dict[int, str] = field(default_factory=dict)
    stage_times_s: dict[str, list[float]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)


def read_recording_extras(path: str | Path, node: str) -> RecordingExtras:
    """Anchors, explanations, per-stage timings and final counters of a recording (see the module docstring)."""
    from rosbags.rosbag2 import Reader

    base = f"{node.rstrip('/')}/output"
    name = node.rstrip("/").split("/")[-1]
    extras = RecordingExtras()
    per_stamp: dict[int, dict[str, float]] = {}
    ts = replay_typestore()
    with Reader(Path(path)) as reader:
        conns = {c.topic: c for c in reader.connections}
        wanted = [conns[t] for t in (f"{base}/plan", f"{base}/explanation", "/diagnostics") if t in conns]
        for conn, _, raw in reader.messages(connections=wanted):
            msg = deserialize(raw, conn.msgtype, ts)
            if conn.topic == f"{base}/plan":
                s = stamp_to_ns(msg.header.stamp)
                if msg.anchors:
                    anchors = np.asarray(
                        [[[p.x, p.y] for p in a.waypoints] for a in msg.anchors], dtype=np.float64
                    ).reshape(len(msg.anchors), -1, 2)
                    scores = np.asarray(msg.anchor_scores, dtype=np.float64)
                    extras.anchors.setdefault(s, (anchors, scores, int(msg.chosen_anchor)))
                if msg.reasoning:
                    extras.explanations.setdefault(s, msg.reasoning)
            elif conn.topic == f"{base}/explanation":
                continue  # String has no stamp: the plan's reasoning (same text, stamped) is used
            else:
                for st in msg.status:
                    values = {kv.key: kv.value for kv in st.values}
                    if st.name.endswith(f"{name}: inference"):
                        _stage_sample(values, per_stamp)
                    for key in NODE_COUNTERS:
                        if key in values and values[key].lstrip("-").isdigit():
                            extras.counters[key] = int(values[key])
    for sample in per_stamp.values():
        for stage, v in sample.items():
            extras.stage_times_s.setdefault(stage, []).append(v)
    return extras


def _stage_sample(values: dict[str, str], per_stamp: dict[int, dict[str, float]]) -> None:
    stamp = values.get("last_stamp_ns", "0")
    if not stamp.isdigit() or int(stamp) == 0 or int(stamp) in per_stamp:
        return
    sample = {}
    for key, v in values.items():
        if key.startswith("time_") and key.endswith("_s"):
            try:
                f = float(v)
            except ValueError:
                continue
            if math.isfinite(f):
                sample[key[len("time_") : -len("_s")]] = f
    if sample:
        per_stamp[int(stamp)] = sample


def read_camera_jpegs(path: str | Path, stamps: dict[int, dict[str, int]]) -> dict[int, dict[str, bytes]]:
    """JPEG bytes of the key frames' cameras from a GT bag.

    Args:
        path: GT bag folder.
        stamps: key frame CAM_FRONT stamp -> {camera: its image stamp}.
    Returns:
        key frame stamp -> {camera: JPEG bytes} (only cameras found in the bag).
    """
    from rosbags.rosbag2 import Reader

    wanted = {(cam, s): key for key, cams in stamps.items() for cam, s in cams.items()}
    out: dict[int, dict[str, bytes]] = {key: {} for key in stamps}
    ts = replay_typestore()
    image_topics = {topics.image_topic(c): c for c in CAMERA_NAMES}
    with Reader(Path(path)) as reader:
        conns = [c for c in reader.connections if c.topic in image_topics]
        for conn, _, raw in reader.messages(connections=conns):
            msg = deserialize(raw, conn.msgtype, ts)
            cam = image_topics[conn.topic]
            key = wanted.get((cam, stamp_to_ns(msg.header.stamp)))
            if key is not None and cam not in out[key]:
                out[key][cam] = bytes(msg.data)
    return out


def select_frames(total: int, max_frames: int, include: Iterable[int] = ()) -> list[int]:
    """Positions 0..total-1 to show: all when ``total <= max_frames``, else every k-th (k = ceil(total / max)),
    plus ``include`` (e.g. where questions were asked)."""
    if total <= 0:
        return []
    step = max(1, math.ceil(total / max(1, max_frames)))
    chosen = set(range(0, total, step)) | {i for i in include if 0 <= i < total}
    return sorted(chosen)


def build_frames(
    gt: GTBag,
    pred: PredBag,
    extras: RecordingExtras,
    positions: Sequence[int],
    jpegs: dict[int, dict[str, bytes]],
    questions: Sequence[QuestionAnswer] = (),
) -> list[ReportFrame]:
    """One :class:`ReportFrame` per chosen key frame (positions into the time-ordered key frames)."""
    order = sorted(gt.frames.values(), key=lambda f: (f.stamp_ns, f.frame_index))
    index = gt.by_scene_index()
    frames = []
    for pos in positions:
        f = order[pos]
        occ = pred.outputs["occupancy"].get(f.stamp_ns)
        fc = pred.outputs["forecast"].get(f.stamp_ns)
        plan = pred.outputs["plan"].get(f.stamp_ns)
        rf = ReportFrame(index=f.frame_index, scene=f.scene, stamp_ns=f.stamp_ns, jpegs=jpegs.get(f.stamp_ns, {}))
        rf.gt_points, rf.gt_labels = f.occ_points, f.occ_labels
        if occ is not None:
            rf.pred_points, rf.pred_classes, rf.pred_scores = occ.data
        if fc is not None:
            rf.forecast = {h: (v[0], v[1]) for h, v in fc.data.items()}
        for h, k in zip(M.FORECAST_HORIZONS_S, M.forecast_steps()):
            fut = index.get((f.scene, f.frame_index + k))
            rf.gt_future[h] = (
                (fut.occ_points, fut.occ_labels) if fut is not None and fut.occ_points is not None else None
            )
        if plan is not None:
            rf.plan, reasoning = plan.data
            rf.explanation = reasoning
        rf.gt_trajectory = f.trajectory
        if f.stamp_ns in extras.anchors:
            rf.anchors, rf.anchor_scores, rf.chosen_anchor = extras.anchors[f.stamp_ns]
        rf.explanation = extras.explanations.get(f.stamp_ns, rf.explanation)
        rf.questions = [q for q in questions if q.scene_stamp_ns == f.stamp_ns]
        frames.append(rf)
    return frames


def load_run(
    gt_bag: str | Path,
    recording: str | Path,
    node: str,
    max_frames: int,
    questions: Sequence[QuestionAnswer] = (),
) -> tuple[GTBag, list[ReportFrame], RecordingExtras]:
    """GT bag + recording -> (GT bag, the report's key frames, recording extras); frames where a question was
    answered are always shown."""
    gt = read_gt_bag(gt_bag)
    pred = read_pred_bag(recording, node, M.FORECAST_HORIZONS_S)
    extras = read_recording_extras(recording, node)
    order = sorted(gt.frames.values(), key=lambda f: (f.stamp_ns, f.frame_index))
    pos_of = {f.stamp_ns: i for i, f in enumerate(order)}
    asked = [pos_of[q.scene_stamp_ns] for q in questions if q.scene_stamp_ns in pos_of]
    positions = select_frames(len(order), max_frames, asked)
    chosen = {order[p].stamp_ns: order[p].camera_stamps_ns for p in positions}
    jpegs = read_camera_jpegs(gt_bag, chosen)
    return gt, build_frames(gt, pred, extras, positions, jpegs, questions), extras


def frame_of_stamp(gt: GTBag, stamp_ns: int) -> Optional[int]:
    """Key frame index of a CAM_FRONT stamp (None when it is no key frame of the bag)."""
    f = gt.frames.get(int(stamp_ns))
    return None if f is None else f.frame_index
