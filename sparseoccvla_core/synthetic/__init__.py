"""Synthetic nuScenes-format driving world (docs/design.md §7): ``sparseoccvla synth``.

Modules, one concept each: ``config`` (SynthConfig), ``calibration`` (embedded real nuScenes calibration),
``paths`` (lane polylines), ``primitives`` (boxes / ellipsoids), ``world`` (layouts and scenery), ``traffic``
(agents, signals, ego driver), ``render`` (camera ray caster), ``lidar`` (LIDAR_TOP model), ``occupancy`` (Occ3D
labels and masks), ``qa`` (OmniDrive / nuScenes-QA), ``nuscenes_writer`` (tables and files), ``generate``
(orchestration), ``cli`` (the command).
"""

from .config import SynthConfig

__all__ = ["SynthConfig", "generate_dataset"]


def generate_dataset(*args, **kwargs):
    """See :func:`sparseoccvla_core.synthetic.generate.generate_dataset` (imported lazily: heavy deps)."""
    from .generate import generate_dataset as _generate

    return _generate(*args, **kwargs)
