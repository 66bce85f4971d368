"""HERMES's METEOR: NLTK ``meteor_score`` with the system WordNet 3.0 (``metrics.py``, ``wordnet.py``).

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest test/test_meteor_nltk.py -q

Expected values are computed by hand from the METEOR formula (Lavie & Agarwal 2007, NLTK's defaults alpha 0.9,
beta 3, gamma 0.5): P = m / len(hyp), R = m / len(ref), F = P R / (0.9 P + 0.1 R),
score = F (1 - 0.5 (chunks / m)^3).  Tests that need WordNet skip when ``wordnet-base`` is not installed.
"""

import gzip
import re
from pathlib import Path

import pytest

from sparseoccvla_core import metrics as M
from sparseoccvla_core import wordnet as WN

WORDNET_MISSING = WN.wordnet_unavailable_reason()
needs_wordnet = pytest.mark.skipif(
    WORDNET_MISSING is not None, reason=f"NLTK METEOR needs WordNet 3.0: {WORDNET_MISSING}"
)


def hand_meteor(m: int, hyp_len: int, ref_len: int, chunks: int) -> float:
    """METEOR of one pair from its alignment counts (independent of NLTK)."""
    if m == 0:
        return 0.0
    p, r = m / hyp_len, m / ref_len
    f = p * r / (0.9 * p + 0.1 * r)
    return f * (1 - 0.5 * (chunks / m) ** 3)


@needs_wordnet
def test_nltk_meteor_hand_values_and_wordnet_synonyms():
    wn = WN.load_wordnet()
    assert wn.get_version() == "3.0" and "car.n.01" in [s.name() for s in wn.synsets("auto")]
    # identical: 3 matches in one chunk -> 1 - 0.5 / 27 = 53/54 (< 1: the fragmentation penalty never vanishes)
    identical = M.caption_metrics(["the car stops"], ["the car stops"], java_meteor=False)
    assert identical["METEOR"] == pytest.approx(hand_meteor(3, 3, 3, 1)) == pytest.approx(53 / 54)
    assert identical["meteor_backend"] == M.METEOR_BACKEND
    # 'car' / 'auto' share the synset car.n.01 and differ in Porter stem: only the WordNet stage aligns them
    synonym = M.caption_metrics(["the car stops"], ["the auto stops"], java_meteor=False)["METEOR"]
    unrelated = M.caption_metrics(["the banana stops"], ["the auto stops"], java_meteor=False)["METEOR"]
    assert synonym == pytest.approx(53 / 54)
    assert unrelated == pytest.approx(hand_meteor(2, 3, 3, 2)) == pytest.approx(1 / 3)
    # stem stage: 'cars' / 'car'; lower-casing; different lengths: m = 3, hyp 4, ref 6, chunks 2 ("a car" "left")
    stem = M.caption_metrics(["A Cars turns left"], ["a car is on the left"], java_meteor=False)["METEOR"]
    assert stem == pytest.approx(hand_meteor(3, 4, 6, 2))
    # no shared word -> 0
    assert M.caption_metrics(["banana"], ["the auto stops"], java_meteor=False)["METEOR"] == 0.0


@needs_wordnet
def test_nltk_meteor_is_a_mean_over_pairs_and_best_over_references():
    preds = ["the car stops", "the banana stops", "banana"]
    refs = ["the car stops", "the auto stops", "the auto stops"]
    out = M.caption_metrics(preds, refs, java_meteor=False)
    expect = (53 / 54 + 1 / 3 + 0.0) / 3  # per-pair mean (HERMES), not a corpus-level alignment
    assert out["METEOR"] == pytest.approx(expect)
    assert M.nltk_meteor(preds, refs, WN.load_wordnet()) == pytest.approx(expect)
    # several references: the best one counts (NLTK meteor_score takes the max)
    multi = M.caption_metrics(["the banana stops"], [["a red light", "the auto stops"]], java_meteor=False)
    assert multi["METEOR"] == pytest.approx(1 / 3)
    assert out["METEOR_java"] is None and out["meteor_java_backend"] == "not computed"


def test_meteor_tokenizer_is_treebank_without_sentence_split():
    assert M.meteor_tokenize("The car doesn't stop.") == ["The", "car", "does", "n't", "stop", "."]
    # no Punkt: a period inside the text stays on its word (word_tokenize would split it off)
    assert M.meteor_tokenize("Stop. Then go.") == ["Stop.", "Then", "go", "."]


def test_missing_wordnet_reports_none_with_reason(monkeypatch, tmp_path):
    monkeypatch.setattr(WN, "candidate_dirs", lambda: [tmp_path / "no-wordnet"])
    assert WN.load_wordnet() is None
    reason = WN.wordnet_unavailable_reason()
    assert "no WordNet 3.0 database" in reason and "wordnet-base" in reason and "no-wordnet" in reason
    out = M.caption_metrics(["the car stops"], ["the car stops"], java_meteor=False)
    assert out["METEOR"] is None and out["meteor_backend"].startswith("not computed: no WordNet")
    assert out["ROUGE_L"] == pytest.approx(1.0)  # the other metrics are unaffected
    skipped = M.caption_metrics(["the car stops"], ["the car stops"], meteor=False)
    assert skipped["METEOR"] is None and skipped["METEOR_java"] is None and skipped["meteor_backend"] == "not computed"


def test_corpus_dir_has_lexnames_and_private_copies(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i, name in enumerate(WN.WORDNET_REQUIRED_FILES):
        (src / name).write_text(f"file {i}\n")
    assert WN.find_wordnet_dir([tmp_path / "missing", src]) == src
    corpus = WN.prepare_corpus_dir(src, cache_root=tmp_path / "cache")
    assert corpus.name == "wordnet" and corpus.parent.parent == tmp_path / "cache"
    for i, name in enumerate(WN.WORDNET_REQUIRED_FILES):
        f = corpus / name
        # NLTK refuses symlinks and multiply-linked files out of its root: plain single-link copies
        assert not f.is_symlink() and f.stat().st_nlink == 1 and f.read_text() == f"file {i}\n"
    lines = (corpus / "lexnames").read_text().splitlines()
    assert len(lines) == 45 and lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1"
    assert lines[44] == "44\tadj.ppl\t3" and all(int(ln.split("\t")[0]) == i for i, ln in enumerate(lines))
    # same source -> same directory (built once)
    assert WN.prepare_corpus_dir(src, cache_root=tmp_path / "cache") == corpus


def test_lexnames_constant_matches_the_wordnet_man_page():
    page = Path("/usr/share/man/man5/lexnames.5WN.gz")
    if not page.is_file():
        pytest.skip("lexnames(5WN) man page not installed (wordnet-base ships it)")
    rows = re.findall(r"^(\d\d)\t([a-z]+\.[A-Za-z]+)", gzip.open(page, "rt").read(), flags=re.M)
    assert [name for _, name in rows] == [name for name, _ in WN.WORDNET30_LEXNAMES]
    category = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
    assert all(cat == category[name.split(".")[0]] for name, cat in WN.WORDNET30_LEXNAMES)
