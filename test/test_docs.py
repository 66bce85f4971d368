"""The repository stands on its own: every ``docs/<page>.md §<n>`` reference in code and docs names a page and a
numbered section that exist, every relative link of the README and the docs pages resolves (file and, for
``#anchor`` links, heading), the README stays a front door, and no file points at notes outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NUMBER = r"\d+(?:\.\d+)*"
# A page (``docs/x.md``, ``x.md``, or a markdown link ``[..](x.md)``) followed by one or more sections:
# ``§2``, ``§2.5``, ``§3, §5``, ``§2–9``, ``§3.1-3.2``, ``§7 and §9``.
REFERENCE = re.compile(
    rf"(?P<page>[\w./-]*?\w+\.md)\)? (?P<sections>§{NUMBER}(?:(?:, | and |[-–])§?{NUMBER})*)", flags=re.ASCII
)
SECTION_SIGN = re.compile(rf"§({NUMBER})")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")

SUFFIXES = (".py", ".md", ".yaml", ".rviz", ".sh", ".txt")
NOT_OURS = {".git", ".venv", "build", "install", "log", "outputs", "runs"}


def _tracked_text_files() -> list[Path]:
    """Files git tracks or would track (untracked but not ignored), else every file outside build folders."""
    proc = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode == 0:
        files = [ROOT / f for f in proc.stdout.split()]
    else:  # not a git checkout (an unpacked archive): every file outside the build / environment folders
        files = [f for f in ROOT.rglob("*") if not NOT_OURS & set(f.relative_to(ROOT).parts)]
    return [f for f in files if f.suffix in SUFFIXES and f.is_file()]


def _markdown_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _sections(page: Path) -> set[str]:
    return {m.group(1) for m in re.finditer(rf"^#+ ({NUMBER})[. ]", page.read_text(), flags=re.M)}


def _prose_lines(page: Path):
    """(line number, line) of a markdown page outside fenced code blocks."""
    fenced = False
    for lineno, line in enumerate(page.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield lineno, line


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", page.read_text(), flags=re.M)}


def test_docs_references_resolve():
    """``docs/x.md §n`` (or ``x.md §n``, ``[x.md](x.md) §n``) names a docs page and numbered sections it has."""
    sections: dict[str, set[str]] = {}
    broken = []
    for path in _tracked_text_files():
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for m in REFERENCE.finditer(line):
                page = Path(m.group("page")).name
                if page not in sections:
                    doc = DOCS / page
                    sections[page] = _sections(doc) if doc.exists() else set()
                for section in re.findall(NUMBER, m.group("sections")):
                    if section not in sections[page]:
                        broken.append(f"{path.relative_to(ROOT)}:{lineno}: docs/{page} §{section}")
    assert sections, "no docs/ references found at all"
    assert not broken, "references to missing docs sections:\n" + "\n".join(broken)


def test_bare_section_references_in_docs_pages_resolve():
    """In a docs page, a ``§n`` that names no page is a section of that page."""
    broken = []
    for page in sorted(DOCS.glob("*.md")):
        own = _sections(page)
        for lineno, line in _prose_lines(page):
            spans = [m.span() for m in REFERENCE.finditer(line)]
            for m in SECTION_SIGN.finditer(line):
                if not any(a <= m.start() < b for a, b in spans) and m.group(1) not in own:
                    broken.append(f"docs/{page.name}:{lineno}: §{m.group(1)}")
    assert not broken, "section references to missing sections of the same page:\n" + "\n".join(broken)


def test_relative_links_resolve():
    """Every relative link (and image) of README.md and docs/*.md points at an existing file, and an
    ``#anchor`` at a heading of that file."""
    broken = []
    checked = 0
    for page in _markdown_pages():
        for lineno, line in _prose_lines(page):
            for target in LINK.findall(line):
                if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                    continue
                checked += 1
                file_part, _, anchor = target.partition("#")
                dest = (page.parent / file_part).resolve() if file_part else page
                where = f"{page.relative_to(ROOT)}:{lineno}: {target}"
                if not dest.exists():
                    broken.append(f"{where} (no such file)")
                elif ROOT not in dest.parents and dest != ROOT:
                    broken.append(f"{where} (outside the repository)")
                elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                    broken.append(f"{where} (no such heading)")
    assert checked > 20, f"only {checked} relative links found"
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_reachable_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    linked = {Path(t.partition("#")[0]).name for t in LINK.findall(readme) if t.startswith("docs/")}
    unlinked = sorted(p.name for p in DOCS.glob("*.md") if p.name not in linked)
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_readme_is_a_front_door():
    """Short, with the demo and the exact test command CI runs (.ci/run), and its picture committed."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 260
    assert "bash scripts/install.sh && .venv/bin/sparseoccvla demo" in readme
    test_command = "bash scripts/install.sh && .venv/bin/python -m pytest"
    assert test_command in readme
    assert test_command in (ROOT / ".ci" / "run").read_text()
    images = [t for t in LINK.findall(readme) if t.endswith(".png")]
    assert images and all((ROOT / t).is_file() for t in images), images


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


def test_docs_cite_no_files_outside_the_repository():
    hits = [
        f"{page.relative_to(ROOT)}:{n}"
        for page in _markdown_pages()
        for n, line in enumerate(page.read_text().splitlines(), 1)
        if "../shared" in line
    ]
    assert not hits, hits
