"""Language data -> question / answer pairs (paper sec. 3.2 eq. 5 understanding, sec. 3.3 planning reasoning).

Sources (docs/reference_choices.md §5):

* **OmniDrive-nuScenes** ``omnidrive/{desc,conv,vqa,keywords}/{train,val}/<sample_token>.json`` (§5.2):
  ``desc`` = ``{"description", "action"}``, ``conv`` / ``vqa`` = ``[{"question", "answer"}]``, ``keywords`` = a
  JSON string.  Questions for desc / action are the ones HERMES scores with (§5.3) and OmniDrive's keyword
  question.  The driving-decision ("plan") text is the desc ``action`` (else the keywords).
* **nuScenes-QA** ``NuScenes_{train,val}_questions.json`` = ``{"questions": [{sample_token, question, answer,
  template_type, num_hop}]}`` (§5.4), answers from a closed 30-word vocabulary (``answer_dict.json``).
* **DriveLM-nuScenes** challenge files (``train_sample.json`` / ``v1_1_train_nus.json`` / ``test.json``):
  ``{scene: {key_frames: {sample_token: {QA: {perception, prediction, planning, behavior: [{Q, A}]}}}}}``;
  its plan text is the ``behavior`` answer.

Prompt + answer become token ids and eq. 5 labels through :func:`sparseoccvla_core.tokenizer.encode_qa` (the
model's chat template).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..config import ACTION_QUESTION  # noqa: F401  (HERMES' action question: the config's plan_question default)

#: HERMES' description question (its GT is desc["description"]), docs/reference_choices.md §5.3.
DESCRIPTION_QUESTION = "Can you provide a summary of the current driving scenario based on the input images?"
#: OmniDrive's question for the keywords file.
KEYWORDS_QUESTION = "Please shortly describe your driving action."
#: OmniDrive's planning question; its answer is synthesised from the GT waypoints.
PLANNING_QUESTION = "Please provide the planning trajectory for the ego car without reasons."

OMNIDRIVE_KINDS: tuple[str, ...] = ("desc", "conv", "vqa", "keywords")
QA_SOURCES: tuple[str, ...] = ("desc", "conv", "vqa", "keywords", "nuscenes_qa", "drivelm", "planning")


@dataclass(frozen=True)
class QAPair:
    """One question / answer pair.

    Args:
        question: user text.
        answer: assistant text.
        source: where it came from ("desc", "conv", "vqa", "keywords", "nuscenes_qa", "drivelm/<category>",
            "planning").
    """

    question: str
    answer: str
    source: str


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None


def _qa_list(data, path: Path, source: str) -> list[QAPair]:
    if not isinstance(data, list) or not all(isinstance(d, dict) and "question" in d and "answer" in d for d in data):
        raise ValueError(f"{path}: expected a list of {{'question', 'answer'}} objects (OmniDrive {source} format)")
    return [QAPair(str(d["question"]), str(d["answer"]), source) for d in data]


class OmniDriveQA:
    """OmniDrive-nuScenes QA files of one split, read on demand (one small JSON per sample and kind).

    Args:
        root: folder holding ``{desc,conv,vqa,keywords}/<split>/``.
        split: "train" or "val".
    """

    def __init__(self, root: str | Path, split: str) -> None:
        self.root = Path(root)
        self.split = split
        self.kinds = tuple(k for k in OMNIDRIVE_KINDS if (self.root / k / split).is_dir())

    @property
    def available(self) -> bool:
        return bool(self.kinds)

    def _path(self, kind: str, token: str) -> Path:
        return self.root / kind / self.split / f"{token}.json"

    def pairs(self, token: str, kinds: tuple[str, ...] = OMNIDRIVE_KINDS) -> list[QAPair]:
        """Every QA pair of ``token`` from the requested kinds (missing files give no pairs)."""
        out: list[QAPair] = []
        for kind in kinds:
            if kind not in self.kinds:
                continue
            path = self._path(kind, token)
            if not path.is_file():
                continue
            data = _read_json(path)
            if kind == "desc":
                if not isinstance(data, dict) or "description" not in data:
                    raise ValueError(f"{path}: expected {{'description', 'action'}} (OmniDrive desc format)")
                out.append(QAPair(DESCRIPTION_QUESTION, str(data["description"]), "desc"))
            elif kind == "keywords":
                if not isinstance(data, str):
                    raise ValueError(f"{path}: expected a JSON string (OmniDrive keywords format)")
                out.append(QAPair(KEYWORDS_QUESTION, data, "keywords"))
            else:
                out.extend(_qa_list(data, path, kind))
        return out

    def plan_text(self, token: str) -> Optional[str]:
        """The driving-decision text: desc["action"], else the keywords string, else None."""
        path = self._path("desc", token)
        if "desc" in self.kinds and path.is_file():
            data = _read_json(path)
            if isinstance(data, dict) and data.get("action"):
                return str(data["action"])
        path = self._path("keywords", token)
        if "keywords" in self.kinds and path.is_file():
            data = _read_json(path)
            if isinstance(data, str) and data:
                return data
        return None


def load_nuscenes_qa(path: str | Path) -> dict[str, list[QAPair]]:
    """nuScenes-QA question file -> {sample_token: [QAPair]} (answers as strings, the exact-match form).

    Raises:
        FileNotFoundError / ValueError: missing file or not the ``{"questions": [...]}`` schema.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"nuScenes-QA file {path} not found (NuScenes_<split>_questions.json)")
    data = _read_json(path)
    questions = data.get("questions") if isinstance(data, dict) else None
    if not isinstance(questions, list):
        raise ValueError(f"{path}: expected {{'questions': [...]}} (nuScenes-QA format)")
    out: dict[str, list[QAPair]] = {}
    for i, q in enumerate(questions):
        try:
            token, question, answer = q["sample_token"], q["question"], q["answer"]
        except (KeyError, TypeError):
            raise ValueError(f"{path}: question {i} lacks sample_token / question / answer") from None
        out.setdefault(token, []).append(QAPair(str(question), str(answer), "nuscenes_qa"))
    return out


def load_nuscenes_qa_answers(path: str | Path) -> list[str]:
    """nuScenes-QA ``answer_dict.json`` (``[ans2ix, ix2ans]``) -> the answer vocabulary in index order."""
    data = _read_json(Path(path))
    if not (isinstance(data, list) and len(data) == 2 and isinstance(data[0], dict)):
        raise ValueError(f"{path}: expected [ans2ix, ix2ans] (nuScenes-QA answer_dict format)")
    ans2ix = data[0]
    vocab = sorted(ans2ix, key=lambda a: int(ans2ix[a]))
    if [int(ans2ix[a]) for a in vocab] != list(range(len(vocab))):
        raise ValueError(f"{path}: answer indices are not 0..{len(vocab) - 1}")
    return vocab


@dataclass
class DriveLMFrame:
    """One DriveLM key frame.

    Args:
        scene_token: nuScenes scene token.
        sample_token: nuScenes sample token.
        pairs: every QA pair, source "drivelm/<category>".
        plan_text: the ``behavior`` answer (the ego's decision), or None.
        image_paths: camera name -> relative image path as written in the file.
    """

    scene_token: str
    sample_token: str
    pairs: list[QAPair]
    plan_text: Optional[str]
    image_paths: dict[str, str]


def load_drivelm(path: str | Path) -> dict[str, DriveLMFrame]:
    """DriveLM-nuScenes challenge JSON (train or test format) -> {sample_token: DriveLMFrame}."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected {{scene_token: {{key_frames: ...}}}} (DriveLM format)")
    out: dict[str, DriveLMFrame] = {}
    for scene_token, scene in data.items():
        frames = scene.get("key_frames") if isinstance(scene, dict) else None
        if not isinstance(frames, dict):
            raise ValueError(f"{path}: scene {scene_token} has no key_frames mapping")
        for token, frame in frames.items():
            qa = frame.get("QA", {})
            pairs, plan = [], None
            for category, items in qa.items():
                for item in items:
                    if "Q" not in item or "A" not in item:
                        raise ValueError(f"{path}: a {category} item of {token} lacks Q / A")
                    pairs.append(QAPair(str(item["Q"]), str(item["A"]), f"drivelm/{category}"))
                    if category == "behavior" and plan is None:
                        plan = str(item["A"])
            out[token] = DriveLMFrame(scene_token, token, pairs, plan, dict(frame.get("image_paths", {})))
    return out


def planning_answer(waypoints: np.ndarray) -> str:
    """OmniDrive's planning answer for GT waypoints [T, 2]: "Here is the planning trajectory [PT, (x, y), ...]."

    Numbers are signed with 2 decimals; a value that rounds to magnitude <= 0.01 is written 0.0 (OmniDrive's
    formatting, docs/reference_choices.md §5.2).
    """

    def fmt(v: float) -> str:
        r = round(float(v), 2)
        return "0.0" if abs(r) <= 0.01 else f"{r:+.2f}"

    points = ", ".join(f"({fmt(x)}, {fmt(y)})" for x, y in np.asarray(waypoints)[:, :2])
    return f"Here is the planning trajectory [PT, {points}]."


def load_omnidrive_planning_anchors(path: str | Path) -> np.ndarray:
    """OmniDrive ``planning_anchor_infos.pkl``: a plain numpy pickle of anchors [K, T, 3] (x, y, yaw), ego frame.

    Only open pickles you trust (pickle can run code); this file ships with OmniDrive's ``data_gen``.
    """
    with open(path, "rb") as f:
        anchors = np.asarray(pickle.load(f))
    if anchors.ndim != 3 or anchors.shape[-1] != 3:
        raise ValueError(f"{path}: expected anchors [K, T, 3], got {anchors.shape}")
    return anchors
