"""Ground truth of the evaluation read from a dataset root: Occ3D labels, future agent boxes, nuScenes-QA records.

Pure numpy plus the nuScenes devkit tables; used by the evaluation loop (``sparseoccvla_core/evaluation/loop.py``)
and by anything else that scores predictions against nuScenes-format ground truth.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from .. import metrics as M

if TYPE_CHECKING:
    from nuscenes.nuscenes import NuScenes

    from ..data.layout import DatasetLayout
    from ..data.occ3d import Occ3DLabels


class LabelCache:
    """Occ3D labels by sample token, a few frames deep: frame i's +2 future is frame i+2's current frame.

    Args:
        layout: the dataset layout (where ``labels.npz`` files are).
        capacity: label files kept in memory (least recently used dropped first).
    """

    def __init__(self, layout: "DatasetLayout", capacity: int = 16) -> None:
        self.layout, self.capacity = layout, capacity
        self._data: "OrderedDict[str, Optional[Occ3DLabels]]" = OrderedDict()
        self.missing = 0

    def get(self, scene_name: str, token: str) -> "Optional[Occ3DLabels]":
        """The frame's labels, or None when the file does not exist (counted in ``missing``)."""
        from ..data.occ3d import load_occ3d_labels

        if token in self._data:
            self._data.move_to_end(token)
            return self._data[token]
        path = self.layout.occ3d_path(scene_name, token)
        labels = load_occ3d_labels(path) if path.is_file() else None
        if labels is None:
            self.missing += 1
        self._data[token] = labels
        if len(self._data) > self.capacity:
            self._data.popitem(last=False)
        return labels


def future_agent_boxes(
    nusc: "NuScenes",
    future_tokens: Sequence[Optional[str]],
    ego2global: np.ndarray,
    categories: Sequence[str] = M.COLLISION_CATEGORY_PREFIXES,
) -> tuple[np.ndarray, np.ndarray]:
    """GT boxes of other agents at each future key frame, in the current ego frame (collision GT).

    Args:
        nusc: ``nuscenes.nuscenes.NuScenes`` (only its ``get`` is used).
        future_tokens: T sample tokens of the future key frames (None beyond the scene end).
        ego2global: [4, 4] current ego pose (the key frame's reference pose, as the GT trajectory uses).
        categories: category-name prefixes that count as obstacles (default vehicles + pedestrians, ST-P3 / VAD).

    Returns:
        boxes [T, A, 5] (cx, cy, length, width, yaw) and mask [T, A] bool.
    """
    from ..geometry.camera import invert_pose, quaternion_to_matrix

    g2e = invert_pose(np.asarray(ego2global, dtype=np.float64))
    ego_yaw = math.atan2(ego2global[1, 0], ego2global[0, 0])
    prefixes = tuple(categories)
    per_step: list[np.ndarray] = []
    for token in future_tokens:
        rows = []
        if token is not None:
            for ann_token in nusc.get("sample", token)["anns"]:
                ann = nusc.get("sample_annotation", ann_token)
                if not ann["category_name"].startswith(prefixes):
                    continue
                rot = quaternion_to_matrix(ann["rotation"])
                yaw = math.atan2(rot[1, 0], rot[0, 0]) - ego_yaw
                width, length = float(ann["size"][0]), float(ann["size"][1])  # nuScenes size = (w, l, h)
                rows.append([*ann["translation"][:2], length, width, yaw])
        if rows:
            arr = np.asarray(rows, dtype=np.float64)
            xy = arr[:, :2] @ g2e[:2, :2].T + g2e[:2, 3]  # global (x, y) -> current ego (ego z is irrelevant in BEV)
            # a 2D transform is exact here because nuScenes poses are (nearly) level: the full 3D transform of the
            # box centre differs only by the z-tilt terms, sub-centimetre over 40 m.
            per_step.append(np.column_stack([xy, arr[:, 2:4], np.arctan2(np.sin(arr[:, 4]), np.cos(arr[:, 4]))]))
        else:
            per_step.append(np.zeros((0, 5)))
    a = max((len(b) for b in per_step), default=0)
    boxes = np.zeros((len(per_step), a, 5))
    mask = np.zeros((len(per_step), a), dtype=bool)
    for t, b in enumerate(per_step):
        boxes[t, : len(b)], mask[t, : len(b)] = b, True
    return boxes, mask


def pad_agents(boxes: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample agent boxes of different counts, stacked: lists of [T, A_i, 5] / [T, A_i] -> [N, T, A, 5] / [N, T, A]."""
    n, t = len(boxes), boxes[0].shape[0] if boxes else 0
    a = max([b.shape[1] for b in boxes] + [0])
    out, out_mask = np.zeros((n, t, a, 5)), np.zeros((n, t, a), dtype=bool)
    for i, (b, m) in enumerate(zip(boxes, masks)):
        out[i, :, : b.shape[1]], out_mask[i, :, : b.shape[1]] = b, m
    return out, out_mask


@dataclass(frozen=True)
class QARecord:
    """One nuScenes-QA question.

    Args:
        question: the question text.
        answer: the GT answer.
        template_type: exist / count / object / status / comparison ("unknown" when the file has none).
        num_hop: reasoning hops (0 / 1).
    """

    question: str
    answer: str
    template_type: str = "unknown"
    num_hop: int = 0


def load_nuscenes_qa_records(path: Path) -> dict[str, list[QARecord]]:
    """nuScenes-QA file -> {sample_token: [QARecord]}.

    The file is nuScenes-QA's ``NuScenes_<split>_questions.json`` (``{"questions": [...]}``).

    Raises:
        ValueError: the file is not in that format or a question lacks its fields.
    """
    data = json.loads(Path(path).read_text())
    questions = data.get("questions") if isinstance(data, dict) else None
    if not isinstance(questions, list):
        raise ValueError(f"{path}: expected {{'questions': [...]}} (nuScenes-QA format)")
    out: dict[str, list[QARecord]] = {}
    for i, q in enumerate(questions):
        try:
            rec = QARecord(
                question=str(q["question"]),
                answer=str(q["answer"]),
                template_type=str(q.get("template_type", "unknown")),
                num_hop=int(q.get("num_hop", 0)),
            )
            out.setdefault(q["sample_token"], []).append(rec)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: question {i} lacks sample_token / question / answer") from None
    return out
