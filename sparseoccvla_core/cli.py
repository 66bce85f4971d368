"""The research command line: ``sparseoccvla <command> [options]``.

The core's commands are listed in :data:`sparseoccvla_core.commands.COMMANDS`; another installed package adds its
own through the ``sparseoccvla.commands`` entry-point group (an entry point names a dict of the same shape, e.g.
``sparseoccvla_ros``'s in setup.py), so this module never names another package.  A command's module is imported
only when the command is chosen, so ``sparseoccvla --help`` is instant.  Each command module provides
``add_arguments(parser)`` and ``run(args)``.

    sparseoccvla --help
    sparseoccvla synth --out data/synth --scenes 4 --seed 0
    sparseoccvla <command> --help
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from importlib.metadata import entry_points
from typing import Optional, Sequence

from .commands import COMMANDS as CORE_COMMANDS

ENTRY_POINT_GROUP = "sparseoccvla.commands"


def registered_commands() -> dict[str, tuple[str, str]]:
    """command -> (module implementing it, one-line help): the core's, then each entry point's, in order.

    Raises:
        ValueError: two registries name the same command.
    """
    found = dict(CORE_COMMANDS)
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        for name, spec in entry.load().items():
            if name in found and found[name] != spec:
                raise ValueError(f"command {name!r} of entry point {entry.value} is registered twice")
            found[name] = spec
    return found


@functools.cache
def commands() -> dict[str, tuple[str, str]]:
    """Every command this installation knows (:func:`registered_commands`, read once)."""
    return registered_commands()


def __getattr__(name: str) -> dict[str, tuple[str, str]]:
    """``cli.COMMANDS`` is :func:`commands`: importing this module reads no entry point (imports no other package)."""
    if name == "COMMANDS":
        return commands()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<13} {help_}" for name, (_, help_) in commands().items())
    parser = argparse.ArgumentParser(
        prog="sparseoccvla",
        description="SparseOccVLA research tools (data, training, evaluation, replay).",
        epilog=f"commands:\n{lines}\n\nRun 'sparseoccvla <command> --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=sorted(commands()), metavar="command", help="one of the commands below")
    return parser


def build_command_parser(command: str) -> argparse.ArgumentParser:
    """Parser of one command (imports its module)."""
    module_name, help_ = commands()[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"sparseoccvla {command}", description=help_)
    module.add_arguments(parser)
    parser.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands():
        _top_parser().parse_args(argv[:1] or ["--help"])  # prints help or a clear 'invalid choice' error
        return 2
    args = build_command_parser(argv[0]).parse_args(argv[1:])
    result = args._run(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
