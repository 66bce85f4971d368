"""Where the committed default checkpoint lives (docs/training.md §2; ``scripts/train_default.sh``).

The repository commits it at ``checkpoints/default/`` beside the Python packages.  A source checkout or an editable
install (``scripts/install.sh``) finds it there; a colcon install also copies it into the ROS package's share folder
(``share/sparseoccvla_ros/checkpoints/default``, setup.py ``data_files``).  ``sparseoccvla drive``, ``demo``,
``bench`` and ``driving.launch.py`` use :func:`default_checkpoint` when no checkpoint is given.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

#: ``checkpoints/default/`` of the source tree this package was imported from.
REPO_CHECKPOINT: Path = Path(__file__).resolve().parents[1] / "checkpoints" / "default"
#: The same folder inside a colcon / pip install of the ROS package (setup.py ``data_files``).
SHARE_CHECKPOINT: Path = Path(sys.prefix) / "share" / "sparseoccvla_ros" / "checkpoints" / "default"


def is_checkpoint(folder: Path) -> bool:
    """True when ``folder`` holds a ``save_pretrained`` checkpoint (weights + config)."""
    return (folder / "model.safetensors").is_file() and (folder / "config.yaml").is_file()


def default_checkpoint(share_dir: Optional[str | Path] = None) -> Path:
    """The default checkpoint folder: the source tree's, else the installed share folder's (``share_dir`` = the
    ROS package share directory when known).  Returns the source-tree path when neither exists, so error messages
    name the place docs/training.md §2 documents."""
    candidates = [REPO_CHECKPOINT]
    if share_dir is not None:
        candidates.append(Path(share_dir) / "checkpoints" / "default")
    candidates.append(SHARE_CHECKPOINT)
    for folder in candidates:
        if is_checkpoint(folder):
            return folder
    return REPO_CHECKPOINT
