"""A nuScenes scene (or the synthetic world) -> a rosbag2 MCAP bag for replay and evaluation (``sparseoccvla bag``).

    sparseoccvla bag --data /data/nuscenes --scene scene-0103 --out bags/scene-0103
    sparseoccvla bag --data data/synth --all --out bags/synth            # every scene, in time order
    sparseoccvla bag --data /data/nuscenes --scene scene-0103 --out bags/scene-0103-12hz --sweeps

Topics and types follow the de-facto nuScenes converter (foxglove ``nuscenes2mcap``; names in
:mod:`sparseoccvla_ros.replay.topics`), so the bag plays into the driving node with the remaps of the launch file:

* ``/<CAM>/image_rect_compressed`` sensor_msgs/CompressedImage: the ORIGINAL JPEG bytes of the sample_data file
  (no re-encoding), ``format: jpeg``, ``header.frame_id`` = the camera channel, stamp = the sample_data timestamp.
* ``/<CAM>/camera_info`` sensor_msgs/CameraInfo: K of ``calibrated_sensor``, ``P = [K | 0]``, no distortion
  (the images are rectified), image size of the sample_data; same stamp and frame id as the image.
* ``/odom`` nav_msgs/Odometry: pose of ``ego_pose`` in ``map`` (copied verbatim), twist in ``base_link`` by finite
  differences of the ego poses exactly as the loaders compute the model's ego state
  (:func:`sparseoccvla_core.geometry.ego_motion.ego_states`: backward differences, vx, vy and the yaw rate).
  Key-frame bags carry one sample per key frame, the key frame's reference pose (the LIDAR_TOP ego pose, or
  CAM_FRONT's without lidar: :mod:`sparseoccvla_core.data.frames`), so the node's ego pose and ego state at a key
  frame are those ``sparseoccvla eval`` feeds the model.  With ``--sweeps`` odometry comes at every CAM_FRONT
  sample_data pose (~12 Hz) as well, and the backward difference spans one sweep instead of one key frame.
* ``/tf`` tf2_msgs/TFMessage ``map -> base_link`` for every odometry sample (same stamp and pose).
* ``/tf_static`` tf2_msgs/TFMessage ``base_link -> <CAM>`` from ``calibrated_sensor`` (quaternion and translation
  copied verbatim), written before anything else of each scene, offered with the transient-local QoS profile
  recorded in the bag metadata so ``ros2 bag play`` latches it.
* Key frames (2 Hz) by default; ``--sweeps`` adds every non-key camera sample_data between the scene's first and
  last key frame (~12 Hz).

Ground truth for ``sparseoccvla eval-bag``, one message per key frame, all stamped with (and logged at) the key
frame's CAM_FRONT stamp, the stamp the node gives its outputs of that camera set:

* ``/gt/occupancy`` sensor_msgs/PointCloud2, frame ``base_link``: the current Occ3D voxels that are not free, as
  voxel centres (:func:`sparseoccvla_core.occ_grid.labels_to_points` on the model config's shifted grid), fields
  ``x, y, z`` float32 at 0, 4, 8 and ``class`` uint8 at 12, padded to a 16-byte point (every field 4-byte aligned).
* ``/gt/occupancy_camera_mask`` sensor_msgs/Image ``16UC1`` [X rows, Y columns]: bit z of pixel (x, y) is Occ3D's
  ``mask_camera[x, y, z]`` (the official current-frame protocol's mask; it covers free voxels too, so it cannot
  ride on the cloud).
* ``/gt/trajectory`` nav_msgs/Path: the GT waypoints of :func:`~sparseoccvla_core.geometry.ego_motion.future_waypoints`
  in the current ego frame (only the valid ones: fewer than 6 poses near the scene end); each pose is stamped with
  its future key frame's CAM_FRONT stamp and oriented with the GT relative heading.
* ``/gt/boxes`` visualization_msgs/MarkerArray: a DELETEALL marker, then one CUBE per vehicle / pedestrian box,
  ``ns`` = key frames ahead (``"0"`` = the current key frame, ``"1"`` .. ``"6"`` the future steps the collision
  metric uses), in the current ego frame: x, y, yaw, length (scale.x), width (scale.y) are exactly
  :func:`sparseoccvla_core.evaluation.future_agent_boxes` (the collision GT of ``sparseoccvla eval``); z and
  height are the annotation's, for display only.
* ``/gt/command`` std_msgs/UInt8: the driving command of :func:`~sparseoccvla_core.geometry.ego_motion.driving_command`.
  It has no header, so it is logged at the key frame's FIRST camera stamp: the node holds it before the camera set
  completes (it subscribes to it on ``~/input/command``).
* ``/gt/frame_info`` std_msgs/String, JSON ``{"scene", "scene_token", "sample_token", "frame_index",
  "scene_length", "timestamp_us", "camera_stamps_ns"}``: what ``eval-bag`` needs to apply the forecasting protocol.

The grid of the GT cloud, the plan horizon and the bag-format version are stored in the bag metadata's
``custom_data`` (``sparseoccvla.*`` keys).  ``calibration.yaml`` (:mod:`sparseoccvla_core.calibration_file`) is
written inside the bag folder.  Several scenes go into one bag in time order; scenes whose time spans overlap
(different vehicles recording at once) are refused, because their messages would interleave.

The bag is rosbag2 metadata version 9 by default (``--metadata-version 8`` for older readers), MCAP storage with
zstd chunk compression (``--compression none`` to switch it off), message definitions embedded, so ``rosbags``,
the ``mcap`` reader, Foxglove and ``ros2 bag info/play`` read it.

The messages: :mod:`.bag_messages`; one scene's events: :mod:`.scene_events`; the command line: :mod:`.bag_command`.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from sparseoccvla_core.batch import CAMERA_NAMES, FREE_CLASS

from . import topics
from .bag_messages import BAG_FORMAT_VERSION, bag_topics
from .scene_events import SceneConverter, SceneSummary
from .typestore import replay_typestore, serialize


@dataclass
class BagSummary:
    """Result of :func:`write_bag`.

    Args:
        path: bag folder.
        scenes: per scene summary.
        topic_counts: messages per topic.
        bytes: size of the bag folder's files.
        seconds: wall time of the conversion.
        calibration_files: the calibration YAML(s) written.
    """

    path: Path
    scenes: list[SceneSummary] = field(default_factory=list)
    topic_counts: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    seconds: float = 0.0
    calibration_files: list[Path] = field(default_factory=list)

    @property
    def key_frames(self) -> int:
        return sum(s.key_frames for s in self.scenes)

    @property
    def messages(self) -> int:
        return sum(self.topic_counts.values())


def _qos(transient_local: bool, depth: int):
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    zero = QosTime(sec=0, nsec=0)
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=depth,
        reliability=QosReliability.RELIABLE,
        durability=QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
        deadline=zero,
        lifespan=zero,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=zero,
        avoid_ros_namespace_conventions=False,
    )


def available_scenes(nusc) -> list[str]:
    """Scene names of the loaded tables, in time order of their first key frame."""
    first = {s["name"]: nusc.get("sample", s["first_sample_token"])["timestamp"] for s in nusc.scene}
    return sorted(first, key=lambda n: (first[n], n))


def names_hint(names: Sequence[str], limit: int = 40) -> str:
    """Scene names for an error message (the first ``limit`` and how many more)."""
    head = ", ".join(names[:limit])
    return head + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _check_output(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise FileExistsError(f"output bag {out} exists; choose a new --out or pass --overwrite")
    if out.is_dir() and (out / "metadata.yaml").is_file() or (out.is_dir() and not any(out.iterdir())):
        shutil.rmtree(out)
        return
    raise FileExistsError(f"--overwrite refuses to delete {out}: it is not a rosbag2 folder (no metadata.yaml)")


def write_bag(
    data: str | Path,
    out: str | Path,
    scenes: Optional[Sequence[str]] = None,
    sweeps: bool = False,
    version: Optional[str] = None,
    metadata_version: int = 9,
    compression: str = "zstd",
    overwrite: bool = False,
    progress: bool = True,
    cfg=None,
) -> BagSummary:
    """Convert scenes of a nuScenes-format dataset into one rosbag2 MCAP bag (module docstring).

    Args:
        data: dataset root (nuScenes dataroot or a synthetic world).
        out: bag folder to create (rosbag2 layout: ``out/<name>.mcap`` + ``metadata.yaml``).
        scenes: scene names; None = every scene of the tables.
        sweeps: also write the non-key camera frames (~12 Hz).
        version: nuScenes version folder (None = the only one).
        metadata_version: rosbag2 metadata version, 9 (Jazzy and newer) or 8.
        compression: "zstd" (MCAP chunk compression) or "none".
        overwrite: replace an existing bag folder.
        progress: show a tqdm progress bar.
        cfg: ``SparseOccVLAConfig`` whose grid / plan horizon the GT uses (default: the paper config's).
    Returns:
        :class:`BagSummary`.
    Raises:
        FileNotFoundError: missing dataset root / tables / images.  ValueError: unknown scene (the message lists the
        available ones), overlapping scenes, bad options.  FileExistsError: ``out`` exists.
    """
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

    from sparseoccvla_core.config import SparseOccVLAConfig
    from sparseoccvla_core.data.frames import index_split, load_nuscenes
    from sparseoccvla_core.data.layout import resolve_layout

    if metadata_version not in (8, 9):
        raise ValueError(f"metadata_version must be 8 or 9, got {metadata_version}")
    if compression not in ("zstd", "none"):
        raise ValueError(f"compression must be 'zstd' or 'none', got {compression!r}")
    cfg = cfg if cfg is not None else SparseOccVLAConfig()
    t0 = time.perf_counter()
    out = Path(out)
    _check_output(out, overwrite)
    layout = resolve_layout(data, version)
    nusc = load_nuscenes(layout)
    names_all = available_scenes(nusc)
    if scenes is None:
        names = names_all
    else:
        unknown = [n for n in scenes if n not in names_all]
        if unknown:
            raise ValueError(f"unknown scene(s) {unknown} in {layout.table_root}; available: {names_hint(names_all)}")
        names = [n for n in names_all if n in set(scenes)]  # time order
    if not names:
        raise ValueError(f"{layout.table_root} has no scenes")
    frames = index_split(layout, "bag", num_frames=1, nusc=nusc, scenes=names)
    conv = SceneConverter(nusc, layout, cfg, sweeps)

    ts = replay_typestore()
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = Writer(out, version=metadata_version, storage_plugin=StoragePlugin.MCAP)
    if compression == "zstd":
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    custom = {
        "sparseoccvla.bag_format": str(BAG_FORMAT_VERSION),
        "sparseoccvla.source": f"{layout.root} ({layout.version})",
        "sparseoccvla.scenes": json.dumps(names),
        "sparseoccvla.sweeps": json.dumps(bool(sweeps)),
        "sparseoccvla.occupancy_range": json.dumps([float(v) for v in cfg.point_cloud_range]),
        "sparseoccvla.voxel_size": json.dumps(float(cfg.voxel_size)),
        "sparseoccvla.occupancy_grid": json.dumps(list(cfg.grid_shape)),
        "sparseoccvla.plan_horizon": json.dumps(int(cfg.plan_horizon)),
        "sparseoccvla.plan_dt": json.dumps(float(cfg.plan_dt)),
        "sparseoccvla.free_class": json.dumps(int(FREE_CLASS)),
    }
    for key, value in custom.items():
        writer.set_custom_data(key, value)
    summary = BagSummary(path=out)
    calibs: list[tuple[str, dict]] = []
    writer.open()
    try:
        conns = {}
        for topic, msgtype in bag_topics().items():
            static = topic == topics.TF_STATIC_TOPIC
            conns[topic] = writer.add_connection(
                topic, msgtype, typestore=ts, offered_qos_profiles=[_qos(static, 1 if static else 10)]
            )
        counts = {t: 0 for t in conns}
        bar = _progress_bar(sum(len(s) for s in frames), progress)
        prev_end: Optional[tuple[str, int]] = None
        for scene in frames:
            events, scene_summary, calib = conv.events(scene)
            if prev_end is not None and scene_summary.start_ns <= prev_end[1]:
                raise ValueError(
                    f"scenes {prev_end[0]} and {scene.name} overlap in time; their messages would "
                    "interleave: write them to separate bags (--scene)"
                )
            prev_end = (scene.name, scene_summary.end_ns)
            for e in events:
                msg = e.build()
                writer.write(conns[e.topic], e.time_ns, serialize(msg, bag_topics()[e.topic], ts))
                counts[e.topic] += 1
                if e.topic == topics.GT_FRAME_TOPIC:
                    bar.update(1)
            summary.scenes.append(scene_summary)
            calibs.append((scene.name, calib))
        bar.close()
    except BaseException:
        writer.close()  # leave a readable (partial) bag behind, then report
        raise
    writer.close()
    summary.topic_counts = {t: c for t, c in counts.items() if c}
    summary.calibration_files = _write_calibrations(out, calibs)
    summary.bytes = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    summary.seconds = time.perf_counter() - t0
    return summary


def calibration_entries(calib: dict[str, dict]) -> dict:
    """{camera: CameraCalibration} of a converter calibration dict (see ``SceneConverter.calibration``)."""
    from sparseoccvla_core.calibration_file import CameraCalibration
    from sparseoccvla_core.geometry.camera import pose_matrix

    return {
        cam: CameraCalibration(
            name=cam,
            cam2ego=pose_matrix(c["rotation"], c["translation"]),
            frame_id=cam,
            intrinsics=c["K"],
            image_wh=(c["width"], c["height"]),
        )
        for cam, c in calib.items()
    }


def _same_calibration(a: dict[str, dict], b: dict[str, dict]) -> bool:
    return all(
        np.allclose(a[c]["translation"], b[c]["translation"])
        and np.allclose(a[c]["rotation"], b[c]["rotation"])
        and np.allclose(a[c]["K"], b[c]["K"])
        for c in CAMERA_NAMES
    )


def _write_calibrations(out: Path, calibs: list[tuple[str, dict]]) -> list[Path]:
    """calibration.yaml from the first scene; a scene with a different rig also gets calibration_<scene>.yaml."""
    from sparseoccvla_core.calibration_file import save_calibration

    written = [save_calibration(out / topics.CALIBRATION_FILENAME, calibration_entries(calibs[0][1]), topics.EGO_FRAME)]
    for name, calib in calibs[1:]:
        if not _same_calibration(calibs[0][1], calib):
            path = out / f"calibration_{name}.yaml"
            print(
                f"[bag] warning: {name} has a different camera rig than {calibs[0][0]}; {topics.CALIBRATION_FILENAME}"
                f" holds {calibs[0][0]}'s, {path.name} holds {name}'s (/tf_static carries each scene's own)",
                file=sys.stderr,
            )
            written.append(save_calibration(path, calibration_entries(calib), topics.EGO_FRAME))
    return written


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="bag", unit="key frame")
