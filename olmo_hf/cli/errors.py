# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""How the CLI reports problems: one line on stderr and an exit code, a traceback only with ``--debug``.

Exit codes: 0 success, 1 an unexpected failure (a bug, or an error from deep inside Torch/Transformers),
2 a usage error the user can fix (bad flags or inputs, a model that cannot be found, an existing --output),
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import sys
import traceback

__all__ = ["CliError", "EXIT_USAGE", "EXIT_FAILURE", "EXIT_INTERRUPTED", "report", "warn"]

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A problem the user can fix. ``str(error)`` is the complete one-line message, fix included."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def warn(message: str) -> None:
    """Print a one-line warning on stderr (never on stdout, which carries results)."""
    print(f"olmo-hf: warning: {message}", file=sys.stderr, flush=True)


def report(error: BaseException, command: str, debug: bool) -> int:
    """Print ``error`` for a user and return the process exit code."""
    if debug:
        traceback.print_exception(error, file=sys.stderr)
    if isinstance(error, KeyboardInterrupt):
        print(f"olmo-hf {command}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    if isinstance(error, CliError):
        print(f"olmo-hf {command}: error: {error}", file=sys.stderr, flush=True)
        return error.exit_code
    first_line = (str(error).strip().splitlines() or [""])[0]
    hint = "" if debug else " (run again with --debug for the traceback)"
    print(f"olmo-hf {command}: error: {type(error).__name__}: {first_line}{hint}", file=sys.stderr, flush=True)
    return EXIT_FAILURE
