# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""The ``olmo-hf`` command line (console script ``olmo-hf = olmo_hf_launcher:main``, which imports ``main`` here).

Commands:

- ``run``: Transformers 4.x's ``run`` (removed in 5.x), for OLMo, with generation flags (:mod:`.run`);
- ``serve`` / ``chat``: Transformers 5's own commands, with olmo_hf's classes active (:mod:`.serve`);
- ``convert``: original OLMo checkpoints -> Transformers, parsed and run by :mod:`olmo_hf.convert.cli`.

Every command's ``--help`` ends with examples; docs/cli.md is the full reference. The parsers themselves are
built by :mod:`.parser`, which the console script runs before importing this package (so that ``--help`` and
argument errors answer before torch is imported).
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import CliError, report
from .parser import PASS_THROUGH, TOP_EPILOG
from .parser import build_parser as _build_parser

__all__ = ["main", "build_parser"]

EPILOG = TOP_EPILOG


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser (:func:`olmo_hf.cli.parser.build_parser`) with each command's handler attached."""
    from olmo_hf import __version__
    from olmo_hf.convert.cli import run_convert

    from .run import run

    return _build_parser(__version__, handlers={"run": run, "convert": run_convert})


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``olmo-hf``; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except KeyboardInterrupt as error:  # Ctrl-C while importing or parsing, before a command's own handler
        command = argv[0] if argv and not argv[0].startswith("-") else "command"
        return report(error, command, "--debug" in argv)


def _main(argv: list[str]) -> int:
    if argv and argv[0] in PASS_THROUGH:
        from .serve import run_transformers_command

        return run_transformers_command(argv[0], argv[1:])

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args)
    except (CliError, KeyboardInterrupt) as error:
        return report(error, args.command, getattr(args, "debug", False))
    except BrokenPipeError:  # e.g. `olmo-hf run | head -1`: the reader left, nothing more to say
        # Point stdout at devnull so that the interpreter's final flush does not fail again (Python docs, "signal").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as error:  # noqa: BLE001 - one line (or a traceback with --debug) instead of a crash dump
        return report(error, args.command, getattr(args, "debug", False))
