"""Where a driving dataset lives on disk: the root, its nuScenes version folder, the label / QA folders, splits.

The layout (the same for real nuScenes and for the synthetic world, see docs/data.md §1)::

    DIR/<version>/{scene,sample,sample_data,...}.json     nuScenes tables (nuscenes-devkit loads them)
    DIR/samples/CAM_*/*.jpg, DIR/sweeps/CAM_*/*.jpg       camera images (paths as in sample_data.filename)
    DIR/gts/<scene_name>/<sample_token>/labels.npz        Occ3D-nuScenes GT
    DIR/omnidrive/{desc,conv,vqa,keywords}/{train,val}/<sample_token>.json   OmniDrive-nuScenes QA
    DIR/nuscenes_qa/NuScenes_{train,val}_questions.json   nuScenes-QA
    DIR/splits.json                                       {"train": [...], "val": [...]} scene names (optional)

Real nuScenes has no ``splits.json``: its official splits come from ``nuscenes.utils.splits`` for the version
(``v1.0-trainval`` -> train / val, ``v1.0-mini`` -> mini_train / mini_val, ``v1.0-test`` -> test).  Each of
the label / QA folders may also live elsewhere (``occ3d_root=...`` etc.) because users download them separately.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

#: Tables nuscenes-devkit's ``NuScenes`` loads; each must exist as ``<version>/<name>.json``.
NUSCENES_TABLES: tuple[str, ...] = (
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

#: Split names a user may ask for, mapped per version to the name ``nuscenes.utils.splits`` uses.
_OFFICIAL_SPLITS: dict[str, dict[str, str]] = {
    "v1.0-trainval": {"train": "train", "val": "val"},
    "v1.0-mini": {"train": "mini_train", "val": "mini_val", "mini_train": "mini_train", "mini_val": "mini_val"},
    "v1.0-test": {"test": "test"},
}


@dataclass(frozen=True)
class DatasetLayout:
    """Resolved paths of one dataset.

    Args:
        root: dataset root (the devkit's ``dataroot``).
        version: nuScenes version folder name, e.g. ``v1.0-trainval`` or ``v1.0-synth``.
        occ3d_root: folder holding ``<scene_name>/<sample_token>/labels.npz`` (default ``root/gts``).
        omnidrive_root: folder holding ``{desc,conv,vqa,keywords}/{train,val}`` (default ``root/omnidrive``).
        nuscenes_qa_root: folder holding ``NuScenes_{split}_questions.json`` (default ``root/nuscenes_qa``).
    """

    root: Path
    version: str
    occ3d_root: Path
    omnidrive_root: Path
    nuscenes_qa_root: Path

    @property
    def table_root(self) -> Path:
        return self.root / self.version

    @property
    def splits_file(self) -> Path:
        return self.root / "splits.json"

    def occ3d_path(self, scene_name: str, sample_token: str) -> Path:
        """``gts/<scene_name>/<sample_token>/labels.npz``."""
        return self.occ3d_root / scene_name / sample_token / "labels.npz"


def detect_version(root: Path) -> str:
    """The single nuScenes version folder under ``root`` (a folder holding ``scene.json``).

    Raises:
        FileNotFoundError: no version folder; ValueError: several (then pass ``version=``).
    """
    candidates = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "scene.json").is_file())
    if not candidates:
        raise FileNotFoundError(
            f"no nuScenes version folder (a folder with scene.json, e.g. {root}/v1.0-trainval) under {root}; "
            "point --data at the nuScenes dataroot"
        )
    if len(candidates) > 1:
        raise ValueError(f"several nuScenes versions under {root}: {candidates}; pass version= explicitly")
    return candidates[0]


def resolve_layout(
    root: str | Path,
    version: Optional[str] = None,
    occ3d_root: Optional[str | Path] = None,
    omnidrive_root: Optional[str | Path] = None,
    nuscenes_qa_root: Optional[str | Path] = None,
) -> DatasetLayout:
    """Check a dataset root and its version tables and return the resolved paths.

    Args:
        root: dataset root.
        version: version folder; None = the only one present.
        occ3d_root, omnidrive_root, nuscenes_qa_root: optional overrides of the default sub-folders.
    Returns:
        The :class:`DatasetLayout`.
    Raises:
        FileNotFoundError: the root, the version folder or one of the nuScenes tables is missing (the message
            names the path to fix).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist (give the nuScenes dataroot or a synthetic world)")
    version = version or detect_version(root)
    table_root = root / version
    if not table_root.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "scene.json").is_file())
        raise FileNotFoundError(f"nuScenes version folder {table_root} not found; versions present: {present}")
    missing = [name for name in NUSCENES_TABLES if not (table_root / f"{name}.json").is_file()]
    if missing:
        raise FileNotFoundError(
            f"nuScenes tables missing in {table_root}: {', '.join(n + '.json' for n in missing)} "
            "(download the metadata of this version, or regenerate the synthetic world)"
        )
    maps = json.loads((table_root / "map.json").read_text())
    missing_maps = [m.get("filename", "") for m in maps if not (root / m.get("filename", "")).is_file()]
    if missing_maps:
        raise FileNotFoundError(
            f"map files of {table_root / 'map.json'} missing under {root}: {missing_maps[:3]} "
            "(nuscenes-devkit needs them: download the nuScenes map expansion / 'maps' folder)"
        )
    return DatasetLayout(
        root=root,
        version=version,
        occ3d_root=Path(occ3d_root) if occ3d_root else root / "gts",
        omnidrive_root=Path(omnidrive_root) if omnidrive_root else root / "omnidrive",
        nuscenes_qa_root=Path(nuscenes_qa_root) if nuscenes_qa_root else root / "nuscenes_qa",
    )


def split_scene_names(layout: DatasetLayout, split: str) -> list[str]:
    """Scene names of ``split``: from ``splits.json`` when the root has one, else nuScenes' official splits.

    Raises:
        ValueError: unknown split for this dataset (the message lists the valid ones).
    """
    if layout.splits_file.is_file():
        splits = json.loads(layout.splits_file.read_text())
        if split not in splits:
            raise ValueError(f"split {split!r} not in {layout.splits_file}; available: {sorted(splits)}")
        return list(splits[split])
    from nuscenes.utils.splits import create_splits_scenes

    names = _OFFICIAL_SPLITS.get(layout.version)
    if names is None or split not in names:
        valid = sorted(names) if names else []
        raise ValueError(
            f"split {split!r} is not defined for nuScenes version {layout.version!r} (valid: {valid}); "
            f"a custom dataset needs {layout.splits_file}"
        )
    return list(create_splits_scenes(verbose=False)[names[split]])


def qa_split_name(split: str) -> str:
    """OmniDrive / nuScenes-QA files exist for ``train`` and ``val``; nuScenes-mini splits map onto them."""
    return {"mini_train": "train", "mini_val": "val"}.get(split, split)
