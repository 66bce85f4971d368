"""Text side of the model: the tiny preset's own tokenizer, the chat template, and QA encoding (eq. 5 labels).

The paper's LLM is Vicuna-7B; its tokenizer loads from a local path (``tokenizer_path``).  The tiny preset
trains a byte-level BPE tokenizer with the ``tokenizers`` library on driving QA text (by default the
project's built-in driving vocabulary; ``sparseoccvla train`` retrains it on the dataset's QA), so nothing
is downloaded and every string is encodable (byte fallback, no unknown token).  The tokenizer is saved with
every checkpoint.

Prompts follow the Vicuna v1.1 conversation format (``USER: ... ASSISTANT: ...``), which is what
Vicuna-based driving VLMs (OmniDrive, HERMES) use; a tokenizer with its own ``chat_template`` uses that.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Optional, Sequence

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .batch import IGNORE_INDEX

logger = logging.getLogger(__name__)
_warned_truncation = False  # encode_qa warns once per process when it cuts an answer

SYSTEM_PROMPT = (
    "A chat between a curious user and an autonomous driving assistant. The assistant sees the scene "
    "through sparse occupancy tokens and answers helpfully and precisely."
)
BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"

# Vicuna v1.1 layout as a Jinja chat template (used when a tokenizer has none).
VICUNA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }} "
    "{% elif m['role'] == 'user' %}USER: {{ m['content'] }} "
    "{% elif m['role'] == 'assistant' %}ASSISTANT: {{ m['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# Built-in driving vocabulary for the tiny tokenizer when no dataset text is given.
_DEFAULT_CORPUS: tuple[str, ...] = (
    "Describe the driving scene around the ego vehicle.",
    "What should the ego vehicle do next and why?",
    "Is there a traffic light ahead? What color is it? The traffic light is red. The traffic light is green.",
    "How many cars are in front of the ego vehicle? There are two cars and one truck.",
    "Are there any pedestrians crossing the road? A pedestrian is walking on the sidewalk to the left.",
    "The ego vehicle should keep going straight at a constant speed along the lane.",
    "The ego vehicle should slow down and stop before the intersection because the light is red.",
    "The ego vehicle should turn left at the intersection. The ego vehicle should turn right.",
    "Follow the car ahead and keep a safe distance. Accelerate, decelerate, maintain speed.",
    "There is a bus parked on the right side. A cyclist is riding in the bike lane.",
    "Traffic cones and a barrier block part of the lane. Buildings and trees line the street.",
    "The road curves to the left. The road is straight with lane markings and sidewalks on both sides.",
    "front, front left, front right, back, back left, back right, behind, ahead, near, far, meters",
    "car truck bus pedestrian bicycle motorcycle trailer barrier traffic cone construction vehicle",
    "driveable surface sidewalk terrain vegetation manmade building other flat free space",
    "yes no zero one two three four five six seven eight nine ten moving stopped parked waiting",
    "0 1 2 3 4 5 6 7 8 9 . , ? ! : ; ' \" ( ) - + / %",
)


def default_corpus() -> list[str]:
    """Driving-domain sentences used to train the tiny tokenizer when no dataset text is available."""
    return list(_DEFAULT_CORPUS)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (no unknown tokens) with the Vicuna chat template.

    Args:
        texts: training sentences (questions and answers).
        vocab_size: target vocabulary size including the 4 special tokens; the result may be smaller
            when the corpus is small.
    Returns:
        A ``PreTrainedTokenizerFast`` with bos/eos/pad/unk set, right padding, and ``chat_template``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = list(texts) + [SYSTEM_PROMPT, "USER: ASSISTANT:"]
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, padding_side="right"
    )
    fast.chat_template = VICUNA_TEMPLATE
    return fast


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local folder (never from a hub) and make it usable for training."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer folder {path} does not exist (give a local path; nothing is downloaded)")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = VICUNA_TEMPLATE
    tok.padding_side = "right"
    return tok


def build_prompt(tokenizer: PreTrainedTokenizerBase, question: str) -> str:
    """Chat-formatted prompt that ends where the assistant's answer starts."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_qa(
    tokenizer: PreTrainedTokenizerBase, question: str, answer: Optional[str], max_tokens: int
) -> tuple[list[int], list[int]]:
    """Token ids and MLE labels (eq. 5) for one question/answer pair.

    The prompt is masked with IGNORE_INDEX; answer tokens and the closing EOS carry labels.  When the pair is
    longer than ``max_tokens`` the answer is truncated first (its EOS is kept), then the question's start.

    Args:
        tokenizer: the model's tokenizer.
        question: user text; must be non-empty.
        answer: assistant text, or None for a generation prompt (no labels).
        max_tokens: maximum total length L.
    Returns:
        (input_ids, labels), both of length <= max_tokens.
    """
    if not question or not question.strip():
        raise ValueError("question is empty")
    prompt_ids = tokenizer(build_prompt(tokenizer, question), add_special_tokens=False)["input_ids"]
    if answer is None:
        if len(prompt_ids) > max_tokens:
            prompt_ids = prompt_ids[:1] + prompt_ids[len(prompt_ids) - max_tokens + 1 :]
        return prompt_ids, [IGNORE_INDEX] * len(prompt_ids)
    answer_ids = tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    budget = max_tokens - len(prompt_ids)
    min_answer = min(len(answer_ids), max(1, max_tokens // 4))
    if budget < min_answer:
        # keep the BOS and the end of the prompt (the question and "ASSISTANT:") so the answer stays conditioned
        keep = max_tokens - min_answer
        prompt_ids = prompt_ids[:1] + prompt_ids[len(prompt_ids) - keep + 1 :]
        budget = min_answer
    if len(answer_ids) > budget:
        _warn_truncation(len(answer_ids), budget, max_tokens, question)
        answer_ids = answer_ids[: budget - 1] + [tokenizer.eos_token_id]
    return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids


def _warn_truncation(answer_len: int, budget: int, max_tokens: int, question: str) -> None:
    """Say once per process that answers are being cut: the model then never learns (or says) their end."""
    global _warned_truncation
    if _warned_truncation:
        return
    _warned_truncation = True
    logger.warning(
        "an answer of %d tokens (with EOS) to %r was cut to %d to fit max_text_tokens = %d; the model never sees "
        "the end of such answers: raise max_text_tokens (and max_new_tokens) in the model config (warned once)",
        answer_len,
        question[:60],
        budget,
        max_tokens,
    )


def pad_sequences(sequences: Sequence[Sequence[int]], pad_value: int, length: Optional[int] = None) -> list[list[int]]:
    """Right-pad integer sequences to a common length."""
    n = length if length is not None else max((len(s) for s in sequences), default=0)
    return [list(s) + [pad_value] * (n - len(s)) for s in sequences]
