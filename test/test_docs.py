"""The repository stands on its own: every ``docs/<page>.md §<n>`` reference in code and docs names a page and a
numbered section that exist, and no file points at notes outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"docs/([a-z_]+\.md) §(\d+(?:\.\d+)*)")


SUFFIXES = (".py", ".md", ".yaml", ".rviz", ".sh", ".txt")
NOT_OURS = {".git", ".venv", "build", "install", "log", "outputs", "runs"}


def _tracked_text_files() -> list[Path]:
    proc = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode == 0:
        files = [ROOT / f for f in proc.stdout.split()]
    else:  # not a git checkout (an unpacked archive): every file outside the build / environment folders
        files = [f for f in ROOT.rglob("*") if not NOT_OURS & set(f.relative_to(ROOT).parts)]
    return [f for f in files if f.suffix in SUFFIXES and f.is_file()]


def _sections(page: Path) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^#+ (\d+(?:\.\d+)*)[. ]", page.read_text(), flags=re.M)}


def test_docs_references_resolve():
    sections: dict[str, set[str]] = {}
    broken = []
    for path in _tracked_text_files():
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for page, section in REFERENCE.findall(line):
                if page not in sections:
                    doc = ROOT / "docs" / page
                    sections[page] = _sections(doc) if doc.exists() else set()
                if section not in sections[page]:
                    broken.append(f"{path.relative_to(ROOT)}:{lineno}: docs/{page} §{section}")
    assert sections, "no docs/ references found at all"
    assert not broken, "references to missing docs sections:\n" + "\n".join(broken)


def test_no_references_to_notes_outside_the_repository():
    outside = re.compile(r"REFERENCE_FACTS|ROS_NOTES|DESIGN\.md")
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in _tracked_text_files()
        if path.name != "test_docs.py"
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if outside.search(line)
    ]
    assert not hits, hits
