# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""The ``olmo-hf`` command line (console script ``olmo-hf = olmo_hf_launcher:main``, which imports ``main`` here).

Commands:

- ``run``: Transformers 4.x's ``run`` (removed in 5.x), for OLMo, with generation flags (:mod:`.run`);
- ``serve`` / ``chat``: Transformers 5's own commands, with olmo_hf's classes active (:mod:`.serve`);
- ``convert``: original OLMo checkpoints -> Transformers, parsed and run by :mod:`olmo_hf.convert.cli`.

Every command's ``--help`` ends with examples; docs/cli.md is the full reference.
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import CliError, report

__all__ = ["main", "build_parser"]

PASS_THROUGH = ("serve", "chat")  # handed, arguments untouched, to Transformers' own CLI

EPILOG = """\
examples:
  echo "The with statement" | olmo-hf run --task text-generation     # embedded demo model, offline
  olmo-hf run --model allenai/OLMo-2-0425-1B --input prompts.json --column text --output out.json
  olmo-hf serve allenai/OLMo-2-0425-1B --port 8000                     # OpenAI-compatible server
  olmo-hf chat allenai/OLMo-2-0425-1B http://localhost:8000            # talk to it

`olmo-hf COMMAND --help` explains each command; docs/cli.md has every flag."""


def _converter_parser_hook():
    """``olmo_hf.convert.cli.add_convert_parser`` when the conversion package is installed, else None."""
    try:
        from olmo_hf.convert.cli import add_convert_parser
    except ImportError:
        return None
    return add_convert_parser


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser (``run`` is parsed here; ``serve``/``chat`` are listed, and parsed by Transformers)."""
    from olmo_hf import __version__

    from . import run

    parser = argparse.ArgumentParser(
        prog="olmo-hf",
        description="OLMo and OLMo 2 with Hugging Face Transformers 5, using olmo_hf's own model classes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"olmo-hf {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    run.add_parser(commands)
    commands.add_parser("serve", help="Transformers' OpenAI-compatible server (`transformers serve`) "
                        "with olmo_hf's classes")
    commands.add_parser("chat", help="Transformers' terminal chat client (`transformers chat`) for a running server")
    add_convert_parser = _converter_parser_hook()
    if add_convert_parser is not None:
        add_convert_parser(commands)  # owned by olmo_hf.convert.cli; sets its own handler
    return parser


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
