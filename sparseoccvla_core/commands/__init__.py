"""The core's ``sparseoccvla`` commands: one module each, a thin parse -> call of a typed library function.

Every command module provides ``add_arguments(parser)`` (its flags) and ``run(args) -> int`` (turn the parsed
flags into the library function's typed arguments, call it, print the outcome).  The work itself lives in the
library (``train_setup.run_stage``, ``text_pretraining.text_pretrain_from_stage1``, ``evaluation.evaluate_checkpoint``,
``synthetic.generate_dataset``, ...), which never sees an ``argparse.Namespace``.

:data:`COMMANDS` lists this package's commands; other packages add theirs through the ``sparseoccvla.commands``
entry-point group (``sparseoccvla_core/cli.py``), so the core never names them.
"""

from __future__ import annotations

# command -> (module implementing it, one-line help); modules are imported only when their command is chosen
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("sparseoccvla_core.commands.synth", "write a synthetic nuScenes-format driving dataset"),
    "inspect-data": (
        "sparseoccvla_core.commands.inspect_data",
        "summarise a dataset root and time loading one batch",
    ),
    "anchors": (
        "sparseoccvla_core.commands.anchors",
        "K-means planning anchors per driving command + dataset statistics",
    ),
    "info": ("sparseoccvla_core.commands.info", "parameters of the model per part and training stage (markdown)"),
    "train": ("sparseoccvla_core.commands.train", "train one of the paper's three stages (sec. 4.2)"),
    "pretrain-llm": (
        "sparseoccvla_core.commands.pretrain_llm",
        "train a random-init LLM on the training text before stage 2",
    ),
    "overfit": (
        "sparseoccvla_core.commands.overfit",
        "train stage 1 on a few key frames and score the same frames (encoder check)",
    ),
    "eval": ("sparseoccvla_core.evaluation.command", "the paper's metrics of a checkpoint on a split (Tables 1, 2, 5)"),
    "export": (
        "sparseoccvla_core.commands.export",
        "re-save a checkpoint with half-precision parameters (distribution)",
    ),
}
