"""Offline WordNet 3.0 for NLTK's METEOR, read from the Debian/Ubuntu ``wordnet-base`` package.

HERMES scores METEOR with NLTK's ``meteor_score``, whose synonym stage needs NLTK's WordNet corpus reader
(``nltk.corpus.reader.wordnet.WordNetCorpusReader``).  NLTK normally downloads that corpus at run time; this
project downloads nothing at run time, so it reads the WordNet 3.0 database that the operating system ships::

    sudo apt-get install wordnet-base      # /usr/share/wordnet/{data,index}.{noun,verb,adj,adv}, *.exc

Two gaps between that package and what NLTK opens are closed here:

* ``wordnet-base`` has no ``lexnames`` file (the lexicographer file list, read by the reader's constructor).
  Its 45 entries are a fixed part of the WordNet 3.0 database format, documented in WordNet's ``lexnames(5WN)``
  man page; they are written from :data:`WORDNET30_LEXNAMES`.
* NLTK (3.10) refuses corpus roots outside ``nltk.data.path`` and files that resolve outside the root
  ("Security Violation ... escapes root"), and symlinks or hard links to ``/usr/share/wordnet`` are refused
  ("refusing multiply-linked file").  The database files are therefore copied (~28 MB, once) into a private
  directory under the user cache (``$XDG_CACHE_HOME/sparseoccvla/wordnet-<key>/wordnet``, default
  ``~/.cache``), whose parent is appended to ``nltk.data.path``.

Where the database is looked for, first hit wins: ``$WNSEARCHDIR`` (WordNet's own variable), ``$WNHOME/dict``,
``/usr/share/wordnet`` (Debian/Ubuntu), ``/usr/local/WordNet-3.0/dict`` (WordNet's default ``WNHOME``).

Use :func:`load_wordnet` (returns None when the database is missing; :func:`wordnet_unavailable_reason` says
why), e.g. ``nltk.translate.meteor_score.meteor_score(refs, hyp, wordnet=load_wordnet())``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

#: The WordNet 3.0 lexicographer files in file-number order (``lexnames(5WN)``): (name, syntactic category),
#: category 1 = noun, 2 = verb, 3 = adjective, 4 = adverb.  Line i of ``lexnames`` is "ii<TAB>name<TAB>category".
WORDNET30_LEXNAMES: tuple[tuple[str, int], ...] = (
    ("adj.all", 3),
    ("adj.pert", 3),
    ("adv.all", 4),
    ("noun.Tops", 1),
    ("noun.act", 1),
    ("noun.animal", 1),
    ("noun.artifact", 1),
    ("noun.attribute", 1),
    ("noun.body", 1),
    ("noun.cognition", 1),
    ("noun.communication", 1),
    ("noun.event", 1),
    ("noun.feeling", 1),
    ("noun.food", 1),
    ("noun.group", 1),
    ("noun.location", 1),
    ("noun.motive", 1),
    ("noun.object", 1),
    ("noun.person", 1),
    ("noun.phenomenon", 1),
    ("noun.plant", 1),
    ("noun.possession", 1),
    ("noun.process", 1),
    ("noun.quantity", 1),
    ("noun.relation", 1),
    ("noun.shape", 1),
    ("noun.state", 1),
    ("noun.substance", 1),
    ("noun.time", 1),
    ("verb.body", 2),
    ("verb.change", 2),
    ("verb.cognition", 2),
    ("verb.communication", 2),
    ("verb.competition", 2),
    ("verb.consumption", 2),
    ("verb.contact", 2),
    ("verb.creation", 2),
    ("verb.emotion", 2),
    ("verb.motion", 2),
    ("verb.perception", 2),
    ("verb.possession", 2),
    ("verb.social", 2),
    ("verb.stative", 2),
    ("verb.weather", 2),
    ("adj.ppl", 3),
)

#: Database files NLTK's reader needs for synsets / morphy (``index.sense`` is only used by ``lemma_from_key``).
WORDNET_REQUIRED_FILES: tuple[str, ...] = tuple(
    f"{kind}.{pos}" for kind in ("data", "index") for pos in ("noun", "verb", "adj", "adv")
) + tuple(f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv"))
#: Optional files copied when present (lemma counts; sense-key index).
WORDNET_OPTIONAL_FILES: tuple[str, ...] = ("cntlist.rev", "index.sense")

INSTALL_HINT = "install WordNet 3.0 (Debian/Ubuntu: sudo apt-get install wordnet-base) or set WNSEARCHDIR"


def lexnames_text() -> str:
    """The ``lexnames`` file of WordNet 3.0 (45 lines "NN<TAB>name<TAB>category")."""
    return "".join(f"{i:02d}\t{name}\t{cat}\n" for i, (name, cat) in enumerate(WORDNET30_LEXNAMES))


def candidate_dirs() -> list[Path]:
    """Directories searched for the WordNet database, in order (see the module docstring)."""
    out = []
    if os.environ.get("WNSEARCHDIR"):
        out.append(Path(os.environ["WNSEARCHDIR"]))
    if os.environ.get("WNHOME"):
        out.append(Path(os.environ["WNHOME"]) / "dict")
    out += [Path("/usr/share/wordnet"), Path("/usr/local/WordNet-3.0/dict")]
    return out


def find_wordnet_dir(candidates: Optional[Sequence[Path]] = None) -> Optional[Path]:
    """First candidate directory holding every file of :data:`WORDNET_REQUIRED_FILES`, or None."""
    for d in candidate_dirs() if candidates is None else candidates:
        if all((Path(d) / f).is_file() for f in WORDNET_REQUIRED_FILES):
            return Path(d)
    return None


def wordnet_unavailable_reason(candidates: Optional[Sequence[Path]] = None) -> Optional[str]:
    """None when WordNet loads, else one sentence saying why not (missing database, missing nltk, ...)."""
    try:
        import nltk  # noqa: F401
    except ImportError:
        return "nltk is not installed (pip install nltk)"
    dirs = candidate_dirs() if candidates is None else list(candidates)
    if find_wordnet_dir(dirs) is None:
        looked = ", ".join(str(d) for d in dirs)
        return f"no WordNet 3.0 database ({'/'.join(WORDNET_REQUIRED_FILES[:1])} ...) in {looked}: {INSTALL_HINT}"
    try:
        _load_cached(tuple(str(d) for d in dirs), None)
    except Exception as exc:  # a corrupt database or an NLTK change: report, never crash the caller
        return f"NLTK could not read the WordNet database: {type(exc).__name__}: {exc}"
    return None


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/sparseoccvla`` (default ``~/.cache/sparseoccvla``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sparseoccvla"


def prepare_corpus_dir(source: Path, cache_root: Optional[Path] = None) -> Path:
    """Build (once) the NLTK corpus directory ``<cache_root>/wordnet-<key>/wordnet`` from ``source``.

    ``key`` hashes the source path and the sizes / mtimes of its files, so an updated database gets a new
    directory (~28 MB copied once; NLTK refuses symlinks and hard links out of its root).  The directory is
    filled in a temporary sibling and renamed into place, so concurrent processes never see a half-built one.

    Args:
        source: directory with the WordNet 3.0 database files (:data:`WORDNET_REQUIRED_FILES`).
        cache_root: where to build it (default :func:`default_cache_root`; falls back to a temporary directory
            when that is not writable).

    Returns:
        the ``wordnet`` directory (its parent must be on ``nltk.data.path``).
    """
    files = [f for f in WORDNET_REQUIRED_FILES + WORDNET_OPTIONAL_FILES if (source / f).is_file()]
    h = hashlib.sha256(str(source.resolve()).encode())
    for f in files:
        st = (source / f).stat()
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns};".encode())
    h.update(lexnames_text().encode())
    roots = [Path(cache_root)] if cache_root is not None else [default_cache_root(), Path(tempfile.gettempdir())]
    last_error: Optional[OSError] = None
    for root in roots:
        final = root / f"wordnet-{h.hexdigest()[:16]}" / "wordnet"
        if (final / "lexnames").is_file():
            return final
        try:
            final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
            for f in files:  # copies: NLTK refuses symlinks and hard links that resolve outside its root
                shutil.copyfile(source / f, tmp / f)
            lexnames = source / "lexnames"  # a full WordNet install ships it; wordnet-base does not
            if lexnames.is_file():
                shutil.copyfile(lexnames, tmp / "lexnames")
            else:
                (tmp / "lexnames").write_text(lexnames_text())
            try:
                os.rename(tmp, final)
            except OSError:  # another process won the race
                shutil.rmtree(tmp, ignore_errors=True)
                if not (final / "lexnames").is_file():
                    raise
            return final
        except OSError as exc:
            last_error = exc
    raise OSError(f"cannot build the NLTK WordNet directory under {[str(r) for r in roots]}: {last_error}")


def _reader_class() -> type:
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class SystemWordNetReader(WordNetCorpusReader):
        """NLTK's reader without the cross-version synset map (only the Open Multilingual Wordnet uses it).

        The constructor maps this database's synsets onto NLTK's downloaded ``wordnet`` corpus through both
        ``index.sense`` files (``map_wn``); that map only serves OMW lookups (``lang != 'eng'``), which this
        project never makes, and it would need the downloaded corpus.  Synsets, lemmas and ``morphy`` (all
        that ``meteor_score`` uses) are unchanged.
        """

        def map_wn(self, version: str = "wordnet") -> None:
            return None

    return SystemWordNetReader


@functools.lru_cache(maxsize=4)
def _load_cached(candidates: tuple[str, ...], cache_root: Optional[str]) -> "WordNetCorpusReader":
    import nltk

    source = find_wordnet_dir([Path(c) for c in candidates])
    if source is None:
        raise FileNotFoundError(f"no WordNet 3.0 database in {list(candidates)}: {INSTALL_HINT}")
    corpus = prepare_corpus_dir(source, None if cache_root is None else Path(cache_root))
    if str(corpus.parent) not in nltk.data.path:
        nltk.data.path.append(str(corpus.parent))
    with warnings.catch_warnings():  # "multilingual functions are not available": no Open Multilingual Wordnet
        warnings.simplefilter("ignore", UserWarning)
        return _reader_class()(str(corpus), None)


def load_wordnet(
    candidates: Optional[Sequence[Path]] = None, cache_root: Optional[Path] = None
) -> Optional["WordNetCorpusReader"]:
    """NLTK's WordNet 3.0 reader over the system database, or None when it cannot be loaded.

    Loaded once per process and argument set (NLTK then reads synsets lazily).

    Args:
        candidates: database directories to search (default :func:`candidate_dirs`).
        cache_root: where the NLTK corpus directory is built (default :func:`default_cache_root`).

    Returns:
        the reader, or None (then :func:`wordnet_unavailable_reason` gives the reason).
    """
    dirs = candidate_dirs() if candidates is None else list(candidates)
    try:
        return _load_cached(tuple(str(d) for d in dirs), None if cache_root is None else str(cache_root))
    except Exception:
        return None
