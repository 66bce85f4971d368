"""SparseOccVLA core: model, data, training, metrics and inference pipeline. Pure Python + torch, no ROS."""

from .batch import CAMERA_NAMES, OCC3D_CLASSES, DrivingBatch
from .config import SparseOccVLAConfig

__version__ = "0.1.0"

__all__ = ["CAMERA_NAMES", "OCC3D_CLASSES", "DrivingBatch", "SparseOccVLAConfig", "__version__"]
__all__ += ["SparseOccVLA", "PredictOutput"]


def __getattr__(name: str):
    # The model pulls in transformers / peft: import it on first use so `import sparseoccvla_core` stays fast.
    if name in ("SparseOccVLA", "PredictOutput"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
