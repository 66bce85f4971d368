"""What the LLM answers to nuScenes-QA-style questions, frame by frame (docs/experiments.md §8).

    .venv/bin/python scripts/qa_probe.py CKPT DATA SPLIT [--every 20] [--question Q ...]

For every ``--every``-th key frame of DATA's SPLIT, the scene is encoded once (``encode_scene`` ->
``scene_tokens`` -> ``scene_prefix``, as ``sparseoccvla eval`` does); on that one prefix each question is
answered greedily (``SparseOccVLA.answer``) and its prompt is run once more for the first token's probabilities.  Prints, per question, the answers with their counts and the probability of the first
token of " yes" / " no" at the answer position (min / max over frames): equal probabilities across questions and
frames mean the answer ignores the question's object word and the scene.
"""

from __future__ import annotations

import argparse
import collections

import torch
from torch.utils.data import DataLoader, Subset

from sparseoccvla_core import SparseOccVLA
from sparseoccvla_core.data.dataset import DrivingDataset, make_collate

QUESTIONS = (
    "Are there any cars?",
    "Are there any bicycles?",
    "Are there any pedestrians?",
    "Are there more cars than pedestrians?",
    "Is there a car to the front of the ego car?",
    "How many cars are there?",
    "What is the object closest to the ego car?",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt")
    ap.add_argument("data")
    ap.add_argument("split")
    ap.add_argument("--every", type=int, default=20, help="probe every N-th key frame (default %(default)s)")
    ap.add_argument("--question", action="append", help="question to ask (repeatable; default: seven)")
    args = ap.parse_args()
    questions = args.question or list(QUESTIONS)
    model = SparseOccVLA.from_pretrained(args.ckpt).eval()
    tok = model.tokenizer
    ds = DrivingDataset(args.data, args.split, model.cfg, tokenizer=tok)
    frames = Subset(ds, range(0, len(ds), max(1, args.every)))
    loader = DataLoader(frames, batch_size=4, collate_fn=make_collate(tok))
    first = {w: tok(f" {w}", add_special_tokens=False)["input_ids"][0] for w in ("yes", "no")}
    answers = collections.defaultdict(collections.Counter)
    probs = collections.defaultdict(list)
    prompts = {q: model.question_prompt(q) for q in questions}
    with torch.no_grad():
        for batch in loader:
            n = batch.images.shape[0]
            prefix = model.scene_prefix(model.scene_tokens(model.encode_scene(batch)), batch.ego_state, batch.command)
            for q in questions:
                answers[q].update(model.answer(prefix, [prompts[q]] * n, 8).texts)
                ids = torch.tensor([prompts[q]] * n)
                hidden = model.llm.run_text(prefix, ids, torch.ones_like(ids))
                p = torch.softmax(model.llm.lm_head(hidden[:, -1]).float(), -1)
                probs[q].append(p[:, [first["yes"], first["no"]]])
    print(f"{len(frames)} key frames of {args.data} ({args.split})")
    for q in questions:
        p = torch.cat(probs[q])
        print(
            f"{q}\n  answers {dict(answers[q])}\n  P(yes) {p[:, 0].min():.3f}-{p[:, 0].max():.3f}  "
            f"P(no) {p[:, 1].min():.3f}-{p[:, 1].max():.3f}"
        )


if __name__ == "__main__":
    main()
