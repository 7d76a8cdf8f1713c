# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""``--output FILE`` of ``olmo-hf run``: checked before any inference, written atomically, never lost.

- :func:`check_output` runs before the model is loaded: the directory must exist and accept a new file (probed
  by creating and removing an empty temporary file, which also catches read-only file systems and, for root,
  what ``os.access`` cannot), and an existing FILE needs ``--overwrite``.
- :class:`AtomicOutput` writes into a temporary file in FILE's directory and renames it into place only when
  the run succeeded (an existing device or pipe such as ``/dev/null`` is written in place instead): a failed or
  interrupted run leaves FILE as it was and no temporary file behind. Without ``--overwrite`` the rename is a hard
  link, which fails if FILE appeared meanwhile (a concurrent run), so one run never replaces another's output by
  surprise.
- If writing or renaming fails late (disk full, permissions changed, FILE created meanwhile), the results are
  not lost: :func:`rescue` saves them in the system temporary directory (or, failing that, prints them on
  stdout) and the error names where they are.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from typing import IO

from .errors import EXIT_IOERR, EXIT_USAGE, CliError, is_io_fault

__all__ = ["AtomicOutput", "check_output", "rescue"]


def _directory(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


def check_output(path: str, overwrite: bool) -> None:
    """Refuse an ``--output`` that cannot be written, before any work is done."""
    directory = _directory(path)
    if os.path.isdir(path):
        raise CliError(f"--output {path} is a directory; pass a file name such as {os.path.join(path, 'out.json')}")
    if os.path.exists(path) and not overwrite:
        raise CliError(f"--output {path} already exists; pass --overwrite to replace it")
    if _is_special(path):
        return  # a device or pipe (/dev/null, a FIFO) is written in place, not replaced
    if not os.path.isdir(directory):
        raise CliError(f"--output {path}: the directory {directory} does not exist; create it or choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".olmo-hf-probe-", dir=directory)
    except OSError as e:
        raise CliError(f"--output {path}: cannot create files in {directory} ({os.strerror(e.errno or 0)}); "
                       "choose a writable directory", EXIT_IOERR if is_io_fault(e) else EXIT_USAGE) from e
    os.close(fd)
    os.unlink(probe)


class AtomicOutput:
    """A text file that appears at ``path`` only through :meth:`commit`; :meth:`discard` leaves no trace."""

    def __init__(self, path: str, overwrite: bool) -> None:
        self.path, self.overwrite = path, overwrite
        self.tmp: str | None = None
        if _is_special(path):  # a device or pipe: nothing to rename, and replacing /dev/null would be a disaster
            self.stream: IO[str] = open(path, "w", encoding="utf-8", newline="")
            return
        fd, self.tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=_directory(path))
        self.stream = os.fdopen(fd, "w", encoding="utf-8", newline="")

    def commit(self) -> None:
        """Flush, sync and move the file into place (raises OSError; the temporary file is then removed)."""
        if self.tmp is None:
            self.stream.close()
            return
        try:
            self.stream.flush()
            os.fsync(self.stream.fileno())
            self.stream.close()
            os.chmod(self.tmp, _mode_for(self.path))  # mkstemp makes it 0600
            if self.overwrite:
                os.replace(self.tmp, self.path)
            else:
                _link_new(self.tmp, self.path)
        finally:
            self.discard()

    def discard(self) -> None:
        """Close and remove the temporary file (a no-op after :meth:`commit`)."""
        try:
            self.stream.close()
        except OSError:
            pass  # a failed flush of a file about to be deleted
        if self.tmp is None:
            return
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def _is_special(path: str) -> bool:
    """Whether ``path`` exists and is neither a regular file nor a directory (a device, a FIFO, a socket)."""
    return os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path)


def _mode_for(path: str) -> int:
    """The permissions of the file being replaced, or those of any new file (0666 less the umask)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def _link_new(tmp: str, path: str) -> None:
    """Put ``tmp`` at ``path`` only if nothing is there (FileExistsError otherwise), atomically where possible."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # file systems without hard links: check, then rename (a tiny race instead of none)
        if os.path.exists(path):
            raise FileExistsError(path) from None
        os.replace(tmp, path)


def rescue(path: str, suffix: str, write: Callable[[IO[str]], None], error: OSError) -> CliError:
    """Save results that could not go to ``path`` elsewhere; return the CliError that says where."""
    if isinstance(error, FileExistsError):
        why, fix, code = "was created by someone else during this run", "compare them and keep one", EXIT_USAGE
    else:
        why, fix, code = f"could not be written ({os.strerror(error.errno or 0)})", "move them into place", EXIT_IOERR
    saved = None
    try:
        fd, saved = tempfile.mkstemp(prefix="olmo-hf-run-", suffix=suffix)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as stream:
            write(stream)
    except OSError:  # the temporary directory is full or read-only too: stdout is the last place left
        if saved is not None:
            os.unlink(saved)
        write(sys.stdout)
        sys.stdout.flush()
        saved = "stdout (above)"
    return CliError(f"--output {path} {why}; the results of this run were saved to {saved}: {fix}", code)
