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


def _input_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "this input is unusable" when they escape a command: one line, exit 2."""
    import json

    errors: list[type[BaseException]] = [
        FileNotFoundError,
        FileExistsError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
        json.JSONDecodeError,
        UnicodeDecodeError,
    ]
    try:
        import yaml

        errors.append(yaml.YAMLError)
        from .data.images import CorruptImageError  # a truncated / corrupt JPEG in a dataset

        errors.append(CorruptImageError)
    except ImportError:  # pragma: no cover - dependencies
        pass
    return tuple(errors)


def main(argv: Optional[Sequence[str]] = None, console: Optional[bool] = None) -> int:
    """Run one command.

    As the console script (``console``, the default when ``argv`` is None: the command line is ``sys.argv``) the
    command's inputs are checked first (:mod:`sparseoccvla_core.cli_inputs`), before ROS starts or a model loads.
    A bad input, or an input error escaping the command, prints one line ``sparseoccvla <command>: error: ...``
    and returns 2; Ctrl-C returns 130; any other failure prints one line and returns 1.  ``--debug`` (anywhere on
    the command line, or ``SPARSEOCCVLA_DEBUG=1``) shows the traceback instead.  When a command does not finish,
    the outputs it created are removed (kept for train / pretrain-llm, whose checkpoints resume).

    Called with an ``argv`` list (embedding, tests) it runs the command alone and lets its exceptions propagate,
    as the library functions behind it raise them; ``console=True`` gives the console behaviour.
    """
    import os

    from .cli_inputs import (
        EXIT_BAD_INPUT,
        EXIT_INTERRUPTED,
        KEEP_PARTIAL,
        InputError,
        check_inputs,
        created_outputs,
        remove_partial,
    )

    argv_is_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SPARSEOCCVLA_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands():
        _top_parser().parse_args(argv[:1] or ["--help"])  # prints help or a clear 'invalid choice' error
        return 2
    command = argv[0]
    args = build_command_parser(command).parse_args(argv[1:])
    if not (console if console is not None else argv_is_sys):
        return int(args._run(args) or 0)
    prefix = f"sparseoccvla {command}: error:"
    try:
        check_inputs(command, args)
    except InputError as exc:
        if debug:
            raise
        print(f"{prefix} {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    new_outputs = created_outputs(command, args)
    code: Optional[int] = None
    try:
        code = int(args._run(args) or 0)
        return code
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
        print(f"sparseoccvla {command}: interrupted", file=sys.stderr)
        return code
    except (InputError, *_input_errors()) as exc:
        code = EXIT_BAD_INPUT
        if debug:
            raise
        print(f"{prefix} {_one_line(exc)}", file=sys.stderr)
        return code
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, the traceback only on request
        code = 1
        if debug:
            raise
        print(f"{prefix} {type(exc).__name__}: {_one_line(exc)} (run with --debug for the traceback)", file=sys.stderr)
        return code
    finally:
        if code is None or code != 0:
            for p in remove_partial(new_outputs, keep_nonempty=command in KEEP_PARTIAL):
                print(f"sparseoccvla {command}: removed the unfinished output {p}", file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    filename = getattr(exc, "filename", None)
    if filename and str(filename) not in text:
        text = f"{filename}: {text}"
    return text


if __name__ == "__main__":
    sys.exit(main())
