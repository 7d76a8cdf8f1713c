# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Building, caching and loading the fast path's native C library, robustly.

One entry point, :func:`load_native_library`. It compiles one C file into a shared library with the system C
compiler (honouring ``CC`` / ``CPPFLAGS`` / ``CFLAGS`` / ``LDFLAGS`` as setuptools does), runs a self-test of the
fresh library in a SUBPROCESS (so a broken binary crashes that process, never the caller), and only then records
it as good in a manifest next to it. Later loads are cheap (no subprocess): the manifest must exist, name the same
inputs, and hash to the library's bytes, and both the files and their directory must belong to the current user and
be writable by nobody else; anything else is rebuilt, or, when the cache belongs to another user, built again in a
directory of our own. Every failure returns ``NativeLibrary(None, None, reason)``: nothing here raises.

Why our own compiler call rather than ``torch.utils.cpp_extension``: see docs/architecture.md, "Native kernels:
how they are built".
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["NativeLibrary", "load_native_library"]

_MANIFEST_FORMAT = 1
_COMPILE_TIMEOUT_S = 600  # kernels.c at -O3 takes ~1.5 s on the 2-core development machine; a hung compiler ends
_SELF_TEST_TIMEOUT_S = 600  # a self-test imports torch (~5 s cold) and runs small checks
_SELF_TEST_RETURNED_FALSE = 3  # exit status of the self-test subprocess when the function returned False
# Environment variables that change the compiled bytes (setuptools' sysconfig.customize_compiler reads the same).
_FLAG_VARIABLES = ("CPPFLAGS", "CFLAGS", "LDFLAGS")
# The self-test subprocess: the caller's sys.path first (so a function in a test directory imports), then the call.
_SELF_TEST_CODE = """
import importlib, json, sys
sys.path[:0] = [p for p in json.loads(sys.argv[3]) if p not in sys.path]
module, _, function = sys.argv[1].partition(":")
ok = getattr(importlib.import_module(module), function)(sys.argv[2])
sys.exit(0 if ok is True else %d)
""" % _SELF_TEST_RETURNED_FALSE


@dataclass(frozen=True)
class NativeLibrary:
    """The outcome of :func:`load_native_library`."""

    library: ctypes.CDLL | None  # the loaded, self-tested library, or None
    path: str | None  # the shared library that was loaded
    reason: str  # "" when loaded; else one sentence saying why not (shown by olmo_hf.fast.status())


class _Unavailable(Exception):
    """A failure with a user-facing sentence; ``cache`` says whether retrying with the same inputs is pointless."""

    def __init__(self, reason: str, cache: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cache = cache


def load_native_library(
    name: str, source_file: str, *, flags: Sequence[str], libs: Sequence[str], self_test: str
) -> NativeLibrary:
    """Build (once per cache key) and load the C file ``source_file`` as ``lib<name>.so``.

    ``flags`` are the compile and link flags (``-shared -fPIC`` included), ``libs`` go last on the command line
    (``-lm``). ``self_test`` is ``"package.module:function"``: the function takes the library's path and returns
    True when the library computes correctly; it runs in a subprocess after each build (with ``OLMO_HF_NATIVE=0``, so
    it must load the library from the path it is given), and a crash, an exception or False means the library is not
    used. ``OLMO_HF_NATIVE=0`` disables native code.

    The cache is ``$OLMO_HF_CACHE/native/<key>`` (default ``~/.cache/olmo_hf``), the key hashing the source text,
    the compiler (its command, resolved paths, sizes and modification times), the flags (the environment's
    ``CPPFLAGS`` / ``CFLAGS`` / ``LDFLAGS`` included), torch's version, the platform, the CPU model and the
    self-test.

    Never raises: every failure is ``NativeLibrary(None, None, reason)``.
    """
    if os.environ.get("OLMO_HF_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return NativeLibrary(None, None, "Native kernels are disabled by OLMO_HF_NATIVE=0.")
    try:
        return _load(name, source_file, list(flags), list(libs), self_test)
    except _Unavailable as e:
        return NativeLibrary(None, None, e.reason)
    except Exception as e:  # an optional accelerator must never break the caller
        return NativeLibrary(None, None, f"The native library {name} could not be built or loaded ({e!r}).")


def _load(name: str, source_file: str, flags: list[str], libs: list[str], self_test: str) -> NativeLibrary:
    try:
        with open(source_file, "rb") as f:
            source = f.read()
    except OSError as e:
        raise _Unavailable(f"The native source {source_file} cannot be read ({e.strerror}).") from None
    compiler = _compiler_command()
    inputs = {
        "name": name,
        "source_sha256": hashlib.sha256(source).hexdigest(),
        "compiler": compiler,
        "compiler_files": _compiler_fingerprint(compiler),
        "flags": flags,
        "libs": libs,
        "environment": {var: os.environ.get(var, "") for var in _FLAG_VARIABLES},
        "torch": _torch_version(),
        "platform": sysconfig.get_platform(),
        "cpu": cpu_model_name(),  # a self-test's verdict holds for this CPU model (a shared home may span several)
        "self_test": self_test,
    }
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]
    root = os.environ.get("OLMO_HF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "olmo_hf")
    uid = os.getuid()
    # Our own directory in the shared layout first; when another user owns it, a private copy under native-u<uid>.
    candidates = [os.path.join(root, "native", key), os.path.join(root, f"native-u{uid}", key)]
    refused = []
    for directory in candidates:
        problem = _own_directory(directory)
        if problem:
            refused.append(f"{directory} {problem}")
            continue
        library = _load_cached(directory, name, key)
        if library is not None:
            return library
        with _FileLock(os.path.join(directory, ".lock")):
            # Whoever held the lock before us may have built it meanwhile: use their result.
            library = _load_cached(directory, name, key)
            if library is not None:
                return library
            return _build(directory, name, key, inputs, source, compiler, flags, libs, self_test)
    raise _Unavailable(
        f"No native library cache directory of our own is usable ({'; '.join(refused)}); set OLMO_HF_CACHE to a "
        "directory of your own."
    )


# ---------------------------------------------------------------------------------------------------------- inputs


def _compiler_command() -> list[str]:
    """The C compiler as argv words: ``CC`` split as a shell would (``"ccache gcc"`` is two words, as in
    setuptools), else ``cc`` or ``gcc`` from PATH."""
    cc = os.environ.get("CC", "").strip()
    if cc:
        try:
            words = shlex.split(cc)
        except ValueError as e:
            raise _Unavailable(f"CC={cc!r} cannot be split into words ({e}).") from None
        if shutil.which(words[0]) is None:
            raise _Unavailable(f"The C compiler {words[0]!r} (from CC) was not found; set CC to an installed one.")
        return words
    for candidate in ("cc", "gcc"):
        if shutil.which(candidate):
            return [candidate]
    raise _Unavailable("No C compiler was found (cc or gcc on PATH); install one or set CC.")


def _compiler_fingerprint(words: list[str]) -> list[list]:
    """Resolved path, size and modification time of each word of the compiler command that is a program (so a
    compiler upgrade, which changes its ``--version`` too, changes the key) without running anything."""
    fingerprint = []
    for word in words:
        path = None if word.startswith("-") or "=" in word else shutil.which(word)
        if path is None:
            continue
        real = os.path.realpath(path)
        st = os.stat(real)
        fingerprint.append([word, real, st.st_size, st.st_mtime_ns])
    return fingerprint


def cpu_model_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo; elsewhere platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor()


def _torch_version() -> str:
    torch = sys.modules.get("torch")  # already imported by the fast path; the metadata lookup avoids importing it
    if torch is not None:
        return str(torch.__version__)
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return ""


# ----------------------------------------------------------------------------------------------------- the cache


def _is_ours(st: os.stat_result) -> bool:
    """Owned by the current user and writable by nobody else (group / others)."""
    return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _own_directory(directory: str) -> str:
    """Make sure ``directory`` exists as a real directory of ours (created 0755 if missing; write access for group /
    others removed if we own it). Returns "" when it is usable, else why not (a phrase)."""
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        st = os.lstat(directory)
    except OSError as e:
        return f"cannot be created ({e.strerror})"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != os.getuid():
        return f"belongs to another user (uid {st.st_uid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        try:
            os.chmod(directory, 0o755)  # others may have written here: what they left fails the checks below
        except OSError as e:
            return f"is writable by others and cannot be made private ({e.strerror})"
    return ""


def _read_owned(path: str) -> bytes | None:
    """The bytes of ``path`` if it is a regular file of ours that nobody else can write (not followed if a link)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not _is_ours(st):
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


def _load_cached(directory: str, name: str, key: str) -> NativeLibrary | None:
    """The library recorded in ``directory`` if its manifest vouches for it (our files, same key, self-test passed,
    same sha256); a cached failure's reason; or None (absent, truncated, tampered with: build it)."""
    raw = _read_owned(os.path.join(directory, "manifest.json"))
    if raw is None:
        return None
    try:
        manifest = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != _MANIFEST_FORMAT or manifest.get("key") != key:
        return None
    if manifest.get("self_test_passed") is not True:
        failure = manifest.get("failure")
        if isinstance(failure, str) and failure:
            return NativeLibrary(None, None, f"{failure} (remembered; delete {directory} to try again)")
        return None
    path = os.path.join(directory, f"lib{name}.so")
    data = _read_owned(path)
    if data is None or hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        return None
    try:
        return NativeLibrary(ctypes.CDLL(path), path, "")
    except OSError:
        return None  # the manifest vouched for bytes the loader rejects: rebuild


class _FileLock:
    """An exclusive ``flock`` on ``path`` (created 0644): one process builds while the others wait."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> _FileLock:
        try:
            import fcntl
        except ImportError:
            raise _Unavailable("Native kernels need POSIX file locks (fcntl), which this platform lacks.") from None
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError as e:
            if self.fd >= 0:
                os.close(self.fd)
            raise _Unavailable(f"The native library cache lock {self.path} cannot be taken ({e.strerror}).") from None
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # closing the only descriptor releases the lock


def _publish(directory: str, filename: str, data: bytes, mode: int) -> None:
    """Write ``directory/filename`` atomically (a temporary file, then os.replace): readers see the old file or the
    new one, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, os.path.join(directory, filename))
    except BaseException:
        os.unlink(tmp)
        raise


def _write_manifest(directory: str, manifest: dict) -> None:
    _publish(directory, "manifest.json", json.dumps(manifest, indent=1, sort_keys=True).encode(), 0o644)


# ----------------------------------------------------------------------------------------------------- building


def _build(
    directory: str, name: str, key: str, inputs: dict, source: bytes, compiler: list[str], flags: list[str],
    libs: list[str], self_test: str,
) -> NativeLibrary:
    """Compile, self-test in a subprocess, publish (under the caller's lock), load. A deterministic failure (the
    compiler's error, a failing self-test) is recorded in the manifest so that later calls do not repeat it."""
    manifest = {"format": _MANIFEST_FORMAT, "key": key, "inputs": inputs, "self_test_passed": False}
    work = tempfile.mkdtemp(prefix=".build-", dir=directory)
    try:
        src = os.path.join(work, os.path.basename(name) + ".c")
        with open(src, "wb") as f:
            f.write(source)  # the bytes we hashed, even if the package file changes meanwhile
        out = os.path.join(work, f"lib{name}.so")
        try:
            manifest["compiler_version"] = _compiler_version(compiler)
            _compile(compiler, flags, libs, src, out)
            _run_self_test(self_test, out, name)
        except _Unavailable as e:
            if e.cache:
                manifest["failure"] = e.reason
                _write_manifest(directory, manifest)
            raise
        with open(out, "rb") as f:
            data = f.read()
        manifest["sha256"] = hashlib.sha256(data).hexdigest()
        manifest["self_test_passed"] = True
        # The library first, then the manifest that vouches for it: a reader in between sees a hash mismatch,
        # waits for our lock and then finds both.
        _publish(directory, f"lib{name}.so", data, 0o755)
        _write_manifest(directory, manifest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    library = _load_cached(directory, name, key)
    if library is None:
        raise _Unavailable(f"The native library built in {directory} passed its self-test but cannot be loaded.")
    return library


def _compiler_version(compiler: list[str]) -> str:
    """The first line of ``<compiler> --version`` (recorded in the manifest)."""
    try:
        proc = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (proc.stdout.strip().splitlines() or [""])[0]


def _compile(compiler: list[str], flags: list[str], libs: list[str], src: str, out: str) -> None:
    """One compile-and-link step, with the environment's flags where setuptools puts them: CPPFLAGS and CFLAGS after
    ours (so they can override), LDFLAGS with the link inputs."""
    env_flags = {var: shlex.split(os.environ.get(var, "")) for var in _FLAG_VARIABLES}
    command = [*compiler, *flags, *env_flags["CPPFLAGS"], *env_flags["CFLAGS"], "-o", out, src,
               *env_flags["LDFLAGS"], *libs]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise _Unavailable(f"The C compiler {compiler[0]} did not finish within {_COMPILE_TIMEOUT_S} s.") from None
    except OSError as e:
        raise _Unavailable(f"The C compiler {compiler[0]} could not be run ({e.strerror}).") from None
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        error = next((line for line in lines if "error" in line), lines[-1] if lines else "no output")
        raise _Unavailable(f"The C compiler failed on the native kernels ({shlex.join(compiler)}: {error.strip()}).",
                           cache=proc.returncode > 0)


def _run_self_test(self_test: str, path: str, name: str) -> None:
    """Run ``self_test`` on the library at ``path`` in a fresh interpreter; _Unavailable unless it returns True."""
    command = [sys.executable, "-c", _SELF_TEST_CODE, self_test, path, json.dumps(sys.path)]
    # OLMO_HF_NATIVE=0 there: a self-test that reaches load_native_library would otherwise wait for our lock forever.
    env = {**os.environ, "OLMO_HF_NATIVE": "0"}
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=_SELF_TEST_TIMEOUT_S,
                              stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired:
        raise _Unavailable(f"The self-test of the native library {name} did not finish within "
                           f"{_SELF_TEST_TIMEOUT_S} s, so it is not used.") from None
    except OSError as e:
        raise _Unavailable(f"The self-test of the native library {name} could not be started ({e.strerror}).") from None
    code = proc.returncode
    if code == 0:
        return
    if code == _SELF_TEST_RETURNED_FALSE:
        why = "failed (the check returned False)"
    elif code < 0:
        try:
            why = f"crashed with {signal.Signals(-code).name}"
        except ValueError:
            why = f"crashed with signal {-code}"
    else:
        lines = proc.stderr.strip().splitlines()
        why = f"failed ({lines[-1].strip() if lines else f'exit status {code}'})"
    # A kill from outside (the OOM killer, Ctrl-C) says nothing about the library: not remembered.
    transient = code in (-signal.SIGKILL, -signal.SIGTERM, -signal.SIGINT)
    raise _Unavailable(f"The self-test of the native library {name} {why}, so it is not used.", cache=not transient)
