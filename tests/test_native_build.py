"""olmo_hf.fast.build: how the native library is built, self-tested, cached and loaded.

Each test builds a tiny C file of its own (a few tenths of a second with gcc) into its own OLMO_HF_CACHE, with CC
set to a wrapper script that logs every compile, so that tests can count builds. A cache is damaged only after a
build in ANOTHER process: a library mapped into this one and then truncated in place would take pytest down with it
(which is the very fault these tests guard against).
"""

import hashlib
import json
import multiprocessing
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import _native_selftest as helpers
from olmo_hf.fast import build

COMPILER = shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(COMPILER is None or not sys.platform.startswith("linux"),
                                reason="needs a C compiler on Linux")

SOURCE = """\
#include <stdlib.h>
#ifndef OLMO_HF_TEST_VALUE
#define OLMO_HF_TEST_VALUE 1
#endif
int olmo_hf_add(int a, int b) { return a + b; }
int olmo_hf_value(void) { return OLMO_HF_TEST_VALUE; }
void olmo_hf_crash(void) { abort(); }
"""
OTHER_UID = 12345


@pytest.fixture
def native(tmp_path, monkeypatch):
    """A cache, a source file and a compiler wrapper of this test's own; ``.compiles()`` counts compiler runs."""
    for var in ("CC", "CPPFLAGS", "CFLAGS", "LDFLAGS", "OLMO_HF_NATIVE"):
        monkeypatch.delenv(var, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("OLMO_HF_CACHE", str(cache))
    cc_log, selftest_log = tmp_path / "cc.log", tmp_path / "selftest.log"
    wrapper = tmp_path / "cc-wrapper"
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *-shared*) echo "$*" >> {shlex.quote(str(cc_log))};; esac\n'
                       f'exec {shlex.quote(COMPILER)} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CC", str(wrapper))
    monkeypatch.setenv("OLMO_HF_TEST_SELFTEST_LOG", str(selftest_log))
    source = tmp_path / "add.c"
    source.write_text(SOURCE)

    def lines(path: Path) -> list[str]:
        return path.read_text().splitlines() if path.exists() else []

    def load(self_test: str = "_native_selftest:adds") -> build.NativeLibrary:
        return build.load_native_library("olmo_hf_test", str(source), flags=helpers.FLAGS, libs=[],
                                         self_test=self_test)

    def build_in_another_process() -> Path:
        proc = subprocess.run([sys.executable, helpers.__file__, str(source)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return Path(proc.stdout.strip())

    return SimpleNamespace(cache=cache, source=source, wrapper=wrapper, load=load,
                           build_in_another_process=build_in_another_process,
                           compiles=lambda: lines(cc_log), self_tests=lambda: lines(selftest_log))


def manifest_of(so: Path) -> dict:
    return json.loads((so.parent / "manifest.json").read_text())


def test_builds_self_tests_and_loads_a_library(native):
    lib = native.load()
    assert lib.reason == ""
    assert lib.library.olmo_hf_add(40, 2) == 42
    so = Path(lib.path)
    assert so.name == "libolmo_hf_test.so" and so.parent.parent == native.cache / "native"
    manifest = manifest_of(so)
    assert manifest["self_test_passed"] is True
    assert manifest["sha256"] == hashlib.sha256(so.read_bytes()).hexdigest()
    assert manifest["inputs"]["source_sha256"] == hashlib.sha256(SOURCE.encode()).hexdigest()
    assert len(native.compiles()) == 1 and len(native.self_tests()) == 1


def test_cached_files_are_readable_by_others_but_writable_only_by_their_owner(native):
    so = Path(native.load().path)
    assert stat.S_IMODE(so.stat().st_mode) == 0o755
    assert stat.S_IMODE((so.parent / "manifest.json").stat().st_mode) == 0o644
    assert stat.S_IMODE(so.parent.stat().st_mode) == 0o755


def test_a_second_load_runs_no_compiler_and_no_subprocess(native, monkeypatch):
    first = native.load()

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"unexpected subprocess {args}")

    monkeypatch.setattr(build.subprocess, "run", no_subprocess)
    monkeypatch.setattr(build.subprocess, "Popen", no_subprocess)
    second = native.load()
    assert second.reason == "" and second.path == first.path
    assert second.library.olmo_hf_add(1, 2) == 3
    assert len(native.compiles()) == 1


def test_a_library_built_by_another_process_is_loaded_without_rebuilding(native):
    so = native.build_in_another_process()
    lib = native.load()
    assert lib.path == str(so) and lib.library.olmo_hf_add(2, 2) == 4
    assert len(native.compiles()) == 1 and len(native.self_tests()) == 1


def test_a_truncated_library_is_rebuilt(native):
    so = native.build_in_another_process()
    with open(so, "r+b") as f:
        f.truncate(so.stat().st_size // 2)
    lib = native.load()
    assert lib.reason == "" and lib.path == str(so)
    assert lib.library.olmo_hf_add(2, 5) == 7
    assert manifest_of(so)["sha256"] == hashlib.sha256(so.read_bytes()).hexdigest()
    assert len(native.compiles()) == 2


def test_a_garbage_library_is_rebuilt(native):
    so = native.build_in_another_process()
    so.write_bytes(os.urandom(so.stat().st_size))
    lib = native.load()
    assert lib.reason == "" and lib.library.olmo_hf_add(2, 5) == 7
    assert len(native.compiles()) == 2


def test_a_library_whose_manifest_names_other_bytes_is_rebuilt(native):
    so = native.build_in_another_process()
    manifest = manifest_of(so)
    manifest["sha256"] = hashlib.sha256(b"something else").hexdigest()
    (so.parent / "manifest.json").write_text(json.dumps(manifest))
    lib = native.load()
    assert lib.reason == "" and lib.library.olmo_hf_add(3, 4) == 7
    assert manifest_of(so)["sha256"] == hashlib.sha256(so.read_bytes()).hexdigest()
    assert len(native.compiles()) == 2


def test_garbage_that_its_manifest_vouches_for_is_rebuilt_when_the_loader_rejects_it(native):
    so = native.build_in_another_process()
    garbage = os.urandom(4096)
    so.write_bytes(garbage)
    manifest = manifest_of(so)
    manifest["sha256"] = hashlib.sha256(garbage).hexdigest()
    (so.parent / "manifest.json").write_text(json.dumps(manifest))
    lib = native.load()
    assert lib.reason == "" and lib.library.olmo_hf_add(3, 4) == 7
    assert len(native.compiles()) == 2


def test_a_library_that_others_can_write_is_rebuilt(native):
    so = native.build_in_another_process()
    so.chmod(0o666)
    lib = native.load()
    assert lib.reason == "" and stat.S_IMODE(so.stat().st_mode) == 0o755
    assert len(native.compiles()) == 2


@pytest.mark.skipif(os.getuid() != 0, reason="os.chown to another user needs root")
def test_a_cache_directory_owned_by_another_user_is_not_used_and_a_private_copy_is_built(native):
    so = native.build_in_another_process()
    theirs = so.read_bytes()
    for path in (so.parent, *so.parent.iterdir()):
        os.chown(path, OTHER_UID, OTHER_UID)
    lib = native.load()
    assert lib.reason == "" and lib.library.olmo_hf_add(1, 1) == 2
    assert Path(lib.path) == native.cache / f"native-u{os.getuid()}" / so.parent.name / so.name
    assert so.stat().st_uid == OTHER_UID and so.read_bytes() == theirs  # theirs: untouched
    assert len(native.compiles()) == 2


@pytest.mark.skipif(os.getuid() != 0, reason="os.chown to another user needs root")
def test_a_library_file_owned_by_another_user_in_our_directory_is_replaced(native):
    so = native.build_in_another_process()
    os.chown(so, OTHER_UID, OTHER_UID)
    lib = native.load()
    assert lib.reason == "" and lib.path == str(so)
    assert so.stat().st_uid == os.getuid()
    assert len(native.compiles()) == 2


def test_nothing_is_loaded_when_every_cache_directory_belongs_to_another_user(native, monkeypatch):
    native.build_in_another_process()
    monkeypatch.setattr(build.os, "getuid", lambda: OTHER_UID)  # our files now look like another user's
    lib = native.load()
    assert lib.library is None and lib.path is None
    assert "belongs to another user" in lib.reason and "OLMO_HF_CACHE" in lib.reason
    assert len(native.compiles()) == 1  # nothing built into a directory that is not ours either


def test_a_crashing_self_test_leaves_the_caller_alive_and_caches_nothing_as_good(native):
    lib = native.load(self_test="_native_selftest:crashes")
    assert lib.library is None and lib.path is None
    assert "crashed with SIGABRT" in lib.reason
    directory = next((native.cache / "native").iterdir())
    assert not (directory / "libolmo_hf_test.so").exists()
    assert manifest_of(directory / "libolmo_hf_test.so")["self_test_passed"] is False


def test_a_failed_self_test_is_remembered_until_its_inputs_change(native):
    first = native.load(self_test="_native_selftest:returns_false")
    assert "the check returned False" in first.reason
    second = native.load(self_test="_native_selftest:returns_false")
    assert second.library is None
    assert "the check returned False" in second.reason and "remembered" in second.reason
    assert len(native.compiles()) == 1 and len(native.self_tests()) == 1
    assert native.load().library.olmo_hf_add(1, 2) == 3  # another self-test: another key, a fresh build


def test_a_compiler_error_is_reported_without_raising(native):
    native.source.write_text("int olmo_hf_add(int a, int b) { return a + ; }\n")
    lib = native.load()
    assert lib.library is None and "The C compiler failed" in lib.reason and "error" in lib.reason


def test_a_missing_compiler_is_reported_without_raising(native, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/olmo-hf-cc")
    lib = native.load()
    assert lib.library is None and "/nonexistent/olmo-hf-cc" in lib.reason and "CC" in lib.reason


def test_a_multi_word_cc_is_split_like_a_shell_command(native, monkeypatch):
    launcher = shutil.which("ccache") or shutil.which("env")  # "ccache gcc" where ccache exists
    monkeypatch.setenv("CC", f"{launcher} {shlex.quote(str(native.wrapper))}")
    lib = native.load()
    assert lib.reason == "" and lib.library.olmo_hf_add(20, 22) == 42
    assert len(native.compiles()) == 1
    assert manifest_of(Path(lib.path))["inputs"]["compiler"] == [launcher, str(native.wrapper)]


def test_cflags_reach_the_compiler_and_the_cache_key(native, monkeypatch):
    plain = native.load()
    assert plain.library.olmo_hf_value() == 1
    monkeypatch.setenv("CFLAGS", "-DOLMO_HF_TEST_VALUE=7 -O1")
    flagged = native.load()
    assert flagged.library.olmo_hf_value() == 7
    assert flagged.path != plain.path
    assert "-DOLMO_HF_TEST_VALUE=7 -O1" in native.compiles()[-1]


def test_ldflags_reach_the_link(native, monkeypatch):
    monkeypatch.setenv("LDFLAGS", "-Wl,-soname,libolmo_hf_ldflags_test.so")
    lib = native.load()
    assert lib.reason == "" and "-Wl,-soname,libolmo_hf_ldflags_test.so" in native.compiles()[-1]
    assert b"libolmo_hf_ldflags_test.so" in Path(lib.path).read_bytes()


def test_two_processes_building_at_once_end_with_one_good_library_both_load(native):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=helpers.load_after_barrier, args=(str(native.source), barrier, results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert outcomes[0] == outcomes[1]
    path, reason, total = outcomes[0]
    assert reason == "" and total == 5
    assert len(native.compiles()) == 1 and len(native.self_tests()) == 1
    assert sorted(p.name for p in Path(path).parent.iterdir()) == [".lock", "libolmo_hf_test.so", "manifest.json"]


def test_olmo_hf_native_0_disables_native_code(native, monkeypatch):
    monkeypatch.setenv("OLMO_HF_NATIVE", "0")
    lib = native.load()
    assert lib == build.NativeLibrary(None, None, "Native kernels are disabled by OLMO_HF_NATIVE=0.")
    assert not native.cache.exists() and native.compiles() == []
