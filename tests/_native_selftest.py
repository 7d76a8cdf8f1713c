"""Helpers for tests/test_native_build.py: self-test functions (imported by the self-test subprocess of
olmo_hf.fast.build) and builders that run in other processes.

Nothing here imports torch or olmo_hf (that takes seconds): build.py is stdlib-only and is loaded from its file.
"""

import ctypes
import importlib.util
import os
import sys

BUILD_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "olmo_hf", "fast", "build.py")
FLAGS = ["-O2", "-shared", "-fPIC"]


def _log_run() -> None:
    log = os.environ.get("OLMO_HF_TEST_SELFTEST_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")


def adds(path: str) -> bool:
    """Passes when the library's olmo_hf_add adds."""
    _log_run()
    return ctypes.CDLL(path).olmo_hf_add(2, 3) == 5


def crashes(path: str) -> bool:
    """Calls the library's olmo_hf_crash, which aborts (SIGABRT)."""
    _log_run()
    ctypes.CDLL(path).olmo_hf_crash()
    return True


def returns_false(path: str) -> bool:
    _log_run()
    return False


def build_module():
    """olmo_hf/fast/build.py, loaded from its file without importing the olmo_hf package."""
    name = "_olmo_hf_fast_build_standalone"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BUILD_PY)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def load(source: str, self_test: str = "_native_selftest:adds"):
    return build_module().load_native_library("olmo_hf_test", source, flags=FLAGS, libs=[], self_test=self_test)


def load_after_barrier(source: str, barrier, results) -> None:
    """multiprocessing target: wait until every builder has started, then load; report (path, reason, 2 + 3)."""
    barrier.wait()
    native = load(source)
    results.put((native.path, native.reason, native.library.olmo_hf_add(2, 3) if native.library else None))


if __name__ == "__main__":  # python _native_selftest.py SOURCE: build (or load) in a process of its own
    native = load(sys.argv[1])
    print(native.path if native.library else native.reason)
    sys.exit(0 if native.library else 1)
