"""Input checks that every ``sparseoccvla`` command runs before it starts ROS or loads a model.

A bad input - a missing path, a directory where a file is expected, a truncated or empty MCAP / safetensors /
YAML / JSON / nuScenes table, a file of the wrong kind, an output that already exists - ends the command with one
line that names the input and says what to do, exit status 2, no traceback (``--debug`` shows it) and nothing
written.  The checks are cheap (headers, summaries, the last bytes of a table), so they run in a fraction of a
second even on a real nuScenes tree.  :func:`check_inputs` is called by :func:`sparseoccvla_core.cli.main` with the
parsed arguments of a command; the arguments are recognised by name (``--data``, ``--ckpt``, ``--bag``, ...), so a
new command gets the checks by using the usual names.

Library code (no ROS import; ``rosbags`` and ``safetensors`` read the files, as the commands themselves do).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Optional

#: Exit status of a command stopped by a bad input (as argparse uses for bad options).
EXIT_BAD_INPUT = 2
#: Exit status after Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


class InputError(ValueError):
    """A command's input is unusable; the message is the one line to print (names the input, says what to do)."""


class MissingInputError(FileNotFoundError, InputError):
    """An input path that does not exist (also a FileNotFoundError, for callers that catch that)."""


# ============================================================================ single checks
def _existing(path: Path, what: str, hint: str) -> Path:
    if not path.exists():
        raise MissingInputError(f"{what} {path} does not exist; {hint}")
    return path


def check_file(path: str | Path, what: str, hint: str) -> Path:
    """An existing, non-empty regular file."""
    p = _existing(Path(path), what, hint)
    if p.is_dir():
        raise InputError(f"{what} {p} is a directory, not a file; {hint}")
    if p.stat().st_size == 0:
        raise InputError(f"{what} {p} is empty; {hint}")
    return p


def check_dir(path: str | Path, what: str, hint: str) -> Path:
    """An existing directory."""
    p = _existing(Path(path), what, hint)
    if not p.is_dir():
        raise InputError(f"{what} {p} is a file, not a folder; {hint}")
    return p


def check_yaml(path: str | Path, what: str, hint: str) -> object:
    """A YAML file that parses; returns the document."""
    import yaml

    p = check_file(path, what, hint)
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{what} {p} is not a text file (a YAML file is expected); {hint}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise InputError(f"{what} {p} is not valid YAML{where} ({problem}); fix it or {hint}") from None


def check_json_table(path: Path, what: str, hint: str) -> None:
    """A JSON file that is not empty and not cut short (only its last bytes are read: tables can be huge)."""
    p = check_file(path, what, hint)
    size = p.stat().st_size
    with p.open("rb") as f:
        head = f.read(64).lstrip()
        f.seek(max(0, size - 64))
        tail = f.read().rstrip()
    if head[:1] not in (b"[", b"{") or tail[-1:] not in (b"]", b"}"):
        raise InputError(f"{what} {p} is truncated or not JSON; {hint}")
    if size < 4 * 1024 * 1024:  # small tables (everything but the largest nuScenes ones) are parsed for real
        try:
            json.loads(p.read_bytes())
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{what} {p} is not valid JSON ({exc}); {hint}") from None


def check_checkpoint(path: str | Path, what: str = "checkpoint") -> Path:
    """A folder written by ``save_pretrained``: ``config.yaml`` parses, ``model.safetensors`` has a whole header."""
    hint = "give a folder written by 'sparseoccvla train' / save_pretrained (config.yaml + model.safetensors)"
    p = Path(path)
    if p.is_file() and p.name in ("config.yaml", "model.safetensors"):
        p = p.parent
    p = check_dir(p, what, hint)
    check_yaml(p / "config.yaml", f"{what} config", hint)
    weights = p / "model.safetensors"
    check_file(weights, f"{what} weights", hint)
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="numpy"):
            pass
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for every malformed file
        raise InputError(
            f"{what} weights {weights} are unreadable ({exc}): the file is truncated or not safetensors; "
            "copy or export the checkpoint again"
        ) from None
    return p


def bag_folder(path: str | Path, what: str = "bag") -> Path:
    """The rosbag2 folder of ``path`` (the folder, or its ``.mcap`` / ``.db3`` storage file)."""
    p = Path(path)
    hint = "give a rosbag2 folder (metadata.yaml + .mcap), e.g. written by 'sparseoccvla bag'"
    _existing(p, what, hint)
    if p.is_file():
        if p.suffix not in (".mcap", ".db3"):
            raise InputError(f"{what} {p} is a file, not a rosbag2 bag; {hint}")
        p = p.parent
    if not (p / "metadata.yaml").is_file():
        raise InputError(f"{what} {p} is not a rosbag2 bag folder (no metadata.yaml); {hint}")
    return p


def check_bag(path: str | Path, what: str = "bag") -> list[tuple[str, str, int]]:
    """Open a rosbag2 bag with ``rosbags`` (reads metadata and the MCAP summary: a truncated or empty file fails).

    Returns:
        (topic, message type, message count) per connection.
    """
    from rosbags.rosbag2 import Reader

    folder = bag_folder(path, what)
    try:
        with Reader(folder) as reader:
            conns = [(c.topic, c.msgtype, int(c.msgcount)) for c in reader.connections]
    except Exception as exc:  # noqa: BLE001 - rosbags raises several types for unreadable bags
        reason = str(exc).strip() or type(exc).__name__
        raise InputError(
            f"{what} {folder} cannot be read ({reason}): the file is truncated, empty or not a rosbag2 bag; "
            "write it again (e.g. 'sparseoccvla bag') or copy it completely"
        ) from None
    return conns


def bag_span_s(path: str | Path) -> float:
    """Seconds from the first to the last message of a readable bag."""
    from rosbags.rosbag2 import Reader

    with Reader(bag_folder(path)) as reader:
        return max(0, int(reader.end_time) - int(reader.start_time)) / 1e9


def check_camera_bag(path: str | Path, what: str = "bag") -> list[tuple[str, str, int]]:
    """A readable bag that holds camera images (``sensor_msgs`` Image / CompressedImage with messages)."""
    conns = check_bag(path, what)
    cams = [t for t, typ, n in conns if typ in ("sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/Image") and n]
    if not cams:
        have = ", ".join(f"{t} ({n} {typ.rsplit('/', 1)[-1]})" for t, typ, n in conns) or "no topics"
        raise InputError(
            f"{what} {bag_folder(path, what)} holds no camera images (its topics, with message counts: {have}); "
            "the driving node needs "
            "the six cameras' images: play a bag written by 'sparseoccvla bag' or a nuScenes MCAP"
        )
    return conns


def check_dataset(path: str | Path, what: str = "dataset root") -> Path:
    """A nuScenes-layout root: a folder with a version folder of JSON tables, none empty or cut short."""
    hint = "give a nuScenes dataroot or a synthetic world written by 'sparseoccvla synth'"
    p = check_dir(path, what, hint)
    # version folders hold the tables (scene.json, sample.json, ...); other folders with JSON files (can_bus/, QA
    # annotations) can hold thousands and are read lazily by the loaders, so they are not checked here
    versions = [
        d for d in sorted(p.iterdir()) if d.is_dir() and ((d / "scene.json").exists() or (d / "sample.json").exists())
    ]
    if not versions:
        raise InputError(f"{what} {p} has no version folder with nuScenes tables (e.g. v1.0-mini/*.json); {hint}")
    for version in versions:
        for table in sorted(version.glob("*.json")):
            check_json_table(table, "nuScenes table", "restore the dataset's tables (download or 'sparseoccvla synth')")
    if (p / "splits.json").exists():
        check_json_table(p / "splits.json", "split file", "fix it or delete it to use the official splits")
    return p


def check_new_output(path: str | Path, what: str, overwrite: bool = False, flag: Optional[str] = None) -> Path:
    """An output path that does not exist yet (or may be replaced: ``overwrite``); an empty folder is fine."""
    p = Path(path)
    if p.exists() and not overwrite:
        if p.is_dir() and not any(p.iterdir()):
            return p
        fix = f"choose a new path or pass {flag}" if flag else "choose a new path or remove it first"
        raise InputError(f"{what} {p} already exists; {fix} (nothing is overwritten)")
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{what} {p} cannot be created: {parent} is a file, not a folder")
    return p


# ============================================================================ per command
#: argument name -> (checker, what it is).  Arguments that are None / not given are skipped.
_CHECKPOINT_ARGS = {"ckpt": "checkpoint", "checkpoint": "checkpoint", "init": "--init checkpoint"}
_DATASET_ARGS = {"data": "dataset root", "train_data": "training dataset root"}
_BAG_ARGS = {"gt": "GT bag", "pred": "recording", "node_bag": "bag"}
_YAML_ARGS = {
    "params_file": "parameters file",
    "train_config": "training config",
}

#: command -> [(output argument, what, overwrite flag or None)] that must not exist unless the flag is given.
#: ``train`` and ``pretrain-llm`` are left to themselves: they refuse another run's checkpoints or continue their
#: own (``--resume``), and scripts/train_default.sh re-runs an interrupted step into the same folder.
OUTPUTS: dict[str, list[tuple[str, str, Optional[str]]]] = {
    "synth": [("out", "output dataset root", "--overwrite")],
    "anchors": [("out", "anchors file", None)],
    "eval": [("out", "output folder", None)],
    "export": [("out", "output folder", "--overwrite")],
    "bag": [("out", "output bag", "--overwrite")],
    "eval-bag": [("out", "output folder", None)],
    "calibration": [("out", "calibration file", "--overwrite")],
    "record": [("out", "recording", None)],
    "drive": [("record", "recording", None)],
    "demo": [("out", "output folder", "--overwrite")],
    "bench": [("json", "JSON report", None)],
    "closed-loop": [("out", "output folder", None)],
}

#: Commands whose partial output is worth keeping after Ctrl-C or a failure (resumable checkpoints; closed-loop
#: finalizes its recording and metrics of the episodes run); for the others an output this run created is removed
#: when the command does not finish.  An output holding no file at all is removed in every case.
KEEP_PARTIAL = frozenset({"train", "pretrain-llm", "closed-loop"})


def _bag_checker(command: str) -> Callable[[str | Path, str], object]:
    # drive feeds the driving node: a bag without camera images can do nothing (play warns, see _warn_no_cameras)
    return check_camera_bag if command == "drive" else check_bag


def check_calibration_file(path: str | Path) -> None:
    """The calibration YAML the node would load, loaded now: syntax, schema and values (file, camera, field)."""
    from .calibration_file import load_calibration

    check_file(path, "calibration file", "write it with 'sparseoccvla calibration' (the bag converter writes one)")
    try:
        load_calibration(path)
    except (ValueError, FileNotFoundError) as exc:
        raise InputError(" ".join(str(exc).split())) from None


def check_inputs(command: str, args: argparse.Namespace) -> None:
    """Run every check that applies to the parsed arguments of ``command`` (module docstring).

    Raises:
        InputError: the first bad input found.
    """
    values = vars(args)
    for name, what in _CHECKPOINT_ARGS.items():
        if values.get(name):
            check_checkpoint(values[name], what)
    for name, what in _DATASET_ARGS.items():
        if values.get(name):
            check_dataset(values[name], what)
    if values.get("bag") and not (command == "demo" and values.get("data")):
        _bag_checker(command)(values["bag"], "bag")
        start = values.get("start")
        if command in ("play", "drive") and isinstance(start, (int, float)) and start > 0:
            span = bag_span_s(values["bag"])
            if start > span:
                raise InputError(f"--start {start:g} s is past the end of bag {values['bag']} ({span:.2f} s long)")
    for name, what in _BAG_ARGS.items():
        if values.get(name):
            check_bag(values[name], what)
    for name, what in _YAML_ARGS.items():
        if values.get(name):
            check_yaml(values[name], what, f"give the {what} as a YAML file")
    if values.get("calibration_file"):
        check_calibration_file(values["calibration_file"])
    config = values.get("config")
    if config and (Path(config).suffix in (".yaml", ".yml") or Path(config).exists() or "/" in str(config)):
        check_yaml(config, "model config", "give a model config YAML such as config/model_tiny.yaml")
    anchors = values.get("anchors")
    if anchors:
        check_file(anchors, "anchors file", "write one with 'sparseoccvla anchors'")
    for name, what, flag in OUTPUTS.get(command, []):
        if values.get(name):
            check_new_output(values[name], what, bool(flag and values.get(flag.lstrip("-").replace("-", "_"))), flag)
    if command == "anchors" and values.get("out") and Path(values["out"]).suffix != ".json":
        check_new_output(Path(values["out"]).with_suffix(".json"), "anchors summary")


def created_outputs(command: str, args: argparse.Namespace) -> list[Path]:
    """The output paths of ``command`` that do not exist yet (so a failed run can remove what it created)."""
    values = vars(args)
    names = [name for name, _, _ in OUTPUTS.get(command, [])]
    if command in ("train", "pretrain-llm"):
        names.append("out")
    out = []
    for name in names:
        v = values.get(name)
        if v and not Path(v).exists():
            out.append(Path(v))
    return out


def remove_partial(paths: list[Path], keep_nonempty: bool) -> list[Path]:
    """Remove outputs a run created but did not finish (``keep_nonempty``: only those holding no file)."""
    import shutil

    removed = []
    for p in paths:
        if not p.exists():
            continue
        if keep_nonempty and (p.is_file() or any(q.is_file() for q in p.rglob("*"))):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
        if p.suffix == ".npz" or p.suffix == ".safetensors":  # anchors writes <out>.json beside its file
            side = p.with_suffix(".json")
            if side.exists():
                side.unlink()
    return removed


__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_INTERRUPTED",
    "InputError",
    "check_bag",
    "check_camera_bag",
    "check_checkpoint",
    "check_dataset",
    "check_dir",
    "check_file",
    "check_inputs",
    "check_new_output",
    "check_yaml",
    "created_outputs",
    "remove_partial",
]
