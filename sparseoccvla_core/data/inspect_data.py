"""What a dataset root holds (``sparseoccvla inspect-data``, sparseoccvla_core/commands/inspect_data.py).

The command prints the version, scenes and key frames of the split, how many key frames have Occ3D labels, OmniDrive
files and nuScenes-QA questions, the driving-command histogram, the shapes of one collated batch and the
loading speed (items / s, cold and warm cache).  Use it to check a freshly downloaded nuScenes + Occ3D +
OmniDrive tree before training.
"""

from __future__ import annotations

import numpy as np

from ..batch import COMMANDS
from ..geometry.ego_motion import driving_command, future_waypoints
from .dataset import DrivingDataset


def summarize(ds: DrivingDataset) -> dict:
    """Counts of a dataset's key frames and their labels / text (no image is decoded)."""
    occ = omni = nqa = 0
    cmds = np.zeros(len(COMMANDS), dtype=np.int64)
    for scene in ds.scenes:
        for i, token in enumerate(scene.sample_tokens):
            occ += ds.layout.occ3d_path(scene.name, token).is_file()
            omni += bool(ds.omnidrive.available and ds.omnidrive.pairs(token))
            nqa += token in ds.nuscenes_qa
            wp, valid = future_waypoints(scene.ego2global, i, ds.cfg.plan_horizon)
            cmds[driving_command(wp, valid)] += 1
    return {
        "version": ds.layout.version,
        "split": ds.split,
        "scenes": len(ds.scenes),
        "key_frames": len(ds),
        "with_occ3d": int(occ),
        "with_omnidrive": int(omni),
        "with_nuscenes_qa": int(nqa),
        "commands": dict(zip(COMMANDS, cmds.tolist())),
    }
