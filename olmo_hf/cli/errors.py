# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""How the CLI reports problems: one line on stderr and an exit code, a traceback only with ``--debug``.

Exit codes: 0 success, 1 an unexpected failure (a bug, or an error from deep inside Torch/Transformers),
2 a usage error the user can fix (bad flags or inputs, a model that cannot be found, an existing --output),
74 an I/O fault while reading or writing a file (disk full, permission denied, read-only file system; the
message names the file, and nothing half-written is left behind), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import errno
import os
import sys
import traceback

__all__ = [
    "CliError", "EXIT_USAGE", "EXIT_FAILURE", "EXIT_IOERR", "EXIT_INTERRUPTED", "io_fault", "is_io_fault", "report",
    "warn",
]

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_IOERR = 74  # EX_IOERR of BSD sysexits.h: an error while doing I/O on some file
EXIT_INTERRUPTED = 130

# errno values that mean "the file system refused", not "the input is wrong".
_IO_FAULTS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EACCES", "EPERM", "EROFS", "EIO", "EFBIG", "ETXTBSY")
    if hasattr(errno, name)
)


class CliError(Exception):
    """A problem the user can fix. ``str(error)`` is the complete one-line message, fix included."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def is_io_fault(error: BaseException) -> bool:
    """Whether ``error`` is a file-system fault (disk full, permission denied, read-only, I/O error)."""
    return isinstance(error, OSError) and error.errno in _IO_FAULTS


def io_fault(error: OSError, what: str | None = None) -> CliError:
    """A one-line :class:`CliError` with :data:`EXIT_IOERR` for a file-system fault, naming the file."""
    name = what or error.filename or "a file"
    reason = os.strerror(error.errno) if error.errno else str(error)
    return CliError(f"I/O error on {name} ({reason}); free some space or fix its permissions, then run again",
                    EXIT_IOERR)


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
    if is_io_fault(error):
        return report(io_fault(error), command, debug=False)
    first_line = (str(error).strip().splitlines() or [""])[0]
    hint = "" if debug else " (run again with --debug for the traceback)"
    print(f"olmo-hf {command}: error: {type(error).__name__}: {first_line}{hint}", file=sys.stderr, flush=True)
    return EXIT_FAILURE
