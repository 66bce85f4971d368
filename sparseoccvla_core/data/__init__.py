"""Data loading for SparseOccVLA (docs/design.md §7): nuScenes, Occ3D-nuScenes, OmniDrive / nuScenes-QA / DriveLM text.

One concept per module:

* :mod:`.layout`     - dataset root, version folder, splits (real nuScenes or the synthetic world).
* :mod:`.camera`     - pinhole geometry: poses, projection, intrinsics under resize/crop.
* :mod:`.images`     - JPEG decoding and resize/crop to ``cfg.image_size`` (intrinsics updated).
* :mod:`.ego_motion` - ego state, future waypoints and driving command from ego poses.
* :mod:`.frames`     - per key frame camera history through ``nuscenes-devkit`` (key frames or sweeps).
* :mod:`.occ3d`      - Occ3D labels -> sparse GT, concatenated GT and its per-future-frame transforms (eq. 11).
* :mod:`.qa`         - OmniDrive-nuScenes, nuScenes-QA and DriveLM question/answer pairs.
* :mod:`.dataset`    - ``DrivingDataset`` (torch Dataset) and ``collate`` -> :class:`~sparseoccvla_core.batch.DrivingBatch`.
* :mod:`.anchors`    - ``sparseoccvla anchors``: K-means planning anchors per driving command + dataset statistics.
* :mod:`.inspect_data` - ``sparseoccvla inspect-data``: what a dataset root holds, one batch's shapes, loading speed.

Submodules are imported on use (``from sparseoccvla_core.data.dataset import DrivingDataset``) so that importing
the package stays cheap.
"""
