"""SparseOccVLA core: model, data, training, metrics and inference pipeline. Pure Python + torch, no ROS."""

from .batch import CAMERA_NAMES, OCC3D_CLASSES, DrivingBatch
from .config import SparseOccVLAConfig

__version__ = "0.1.0"

__all__ = ["CAMERA_NAMES", "OCC3D_CLASSES", "DrivingBatch", "SparseOccVLAConfig", "__version__"]
