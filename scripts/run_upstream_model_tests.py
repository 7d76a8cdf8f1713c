#!/usr/bin/env python
# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Run Hugging Face Transformers' own OLMo / OLMo 2 / OLMo 3 model tests against the built-in classes and against olmo_hf's.

The upstream tests (``tests/models/olmo/test_modeling_olmo.py``, ``tests/models/olmo2/test_modeling_olmo2.py``, built on
``ModelTesterMixin`` / ``GenerationTesterMixin`` / ``PipelineTesterMixin``) are third-party code and are not part of this
repository: point ``--tests-dir`` at a transformers checkout, or at any folder laid out like one (``tests/...``), whose
test files match the installed transformers version.

``--impl builtin`` runs them as they are; ``--impl olmo_hf`` runs them with ``scripts/upstream_swap_plugin.py`` loaded,
which swaps olmo_hf's classes in for Transformers' before collection; ``--impl both`` (the default) runs both and
compares the outcome of every test id::

    python scripts/run_upstream_model_tests.py --tests-dir /path/to/transformers --report upstream.md

With ``--impl both`` the exit status is 1 when olmo_hf passes fewer tests than the built-in classes, or when any test
passes with the built-in classes but not with olmo_hf; 2 when a run could not produce results (collection error,
interrupted run); 0 otherwise. With a single ``--impl`` it is pytest's own exit status.

Everything after ``--`` is passed to pytest, e.g. ``-- -k generate``.
"""

import argparse
import collections
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path


SCRIPTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = SCRIPTS_DIR.parent
PLUGIN = "upstream_swap_plugin"
DEFAULT_TEST_PATHS = ("tests/models/olmo", "tests/models/olmo2", "tests/models/olmo3")
OUTCOMES = ("passed", "failed", "error", "skipped")
IMPLS = ("builtin", "olmo_hf")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tests-dir", required=True, type=Path, help="transformers checkout / upstream test tree")
    parser.add_argument("--impl", choices=(*IMPLS, "both"), default="both", help="which classes to test")
    parser.add_argument("--report", type=Path, help="also write the comparison as markdown to this file")
    parser.add_argument(
        "--test-path",
        action="append",
        dest="test_paths",
        help=f"test file or folder, relative to --tests-dir (repeatable; default: {' '.join(DEFAULT_TEST_PATHS)})",
    )
    parser.add_argument("-n", "--workers", default="2", help="pytest-xdist workers ('0' disables xdist; default 2)")
    parser.add_argument("--timeout", type=int, default=900, help="per-test timeout in seconds if pytest-timeout is installed")
    parser.add_argument("--python", default=sys.executable, help="interpreter that has transformers and pytest")
    parser.add_argument("--junit-dir", type=Path, help="keep the junit XML files here (default: a temporary folder)")
    parser.add_argument("--online", action="store_true", help="do not set HF_HUB_OFFLINE=1")
    parser.add_argument(
        "--no-run",
        action="store_true",
        help="do not run pytest: compare the <impl>.xml files already in --junit-dir (re-render a report)",
    )
    parser.add_argument(
        "--provider",
        default="olmo_hf",
        help="module whose classes the olmo_hf run swaps in (default olmo_hf; 'transformers' is a no-op stand-in "
        "that checks the mechanism itself)",
    )
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="extra pytest arguments, after --")
    args = parser.parse_args(argv)
    if args.pytest_args and args.pytest_args[0] == "--":
        args.pytest_args = args.pytest_args[1:]
    args.test_paths = args.test_paths or list(DEFAULT_TEST_PATHS)
    if args.no_run and args.junit_dir is None:
        parser.error("--no-run needs --junit-dir")
    return args


def _has_module(python, name):
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({name!r}) is None)"
    return subprocess.run([python, "-c", probe], capture_output=True).returncode == 0


def build_command(args, impl, junit_path):
    cmd = [args.python, "-m", "pytest", *args.test_paths, "-p", "no:cacheprovider", "-q", "-rfE"]
    cmd += [f"--junitxml={junit_path}", "-o", "junit_family=xunit1"]
    if args.workers not in ("0", "") and _has_module(args.python, "xdist"):
        cmd += ["-n", args.workers]
    if args.timeout and _has_module(args.python, "pytest_timeout"):
        cmd += [f"--timeout={args.timeout}"]
    if impl == "olmo_hf":
        cmd += ["-p", PLUGIN]
    return cmd + list(args.pytest_args)


def build_env(args, impl):
    env = dict(os.environ)
    if not args.online:
        env["HF_HUB_OFFLINE"] = "1"
    pythonpath = [str(SCRIPTS_DIR), str(REPO_ROOT)] if impl == "olmo_hf" else []
    if env.get("PYTHONPATH"):
        pythonpath.append(env["PYTHONPATH"])
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    if impl == "olmo_hf":
        env["UPSTREAM_SWAP_PROVIDER"] = args.provider
    else:
        # Nothing should import olmo_hf in the built-in run; if something does, it must not take over the Auto classes.
        env["OLMO_HF_NO_AUTOREGISTER"] = "1"
        env.pop("UPSTREAM_SWAP_PROVIDER", None)
    return env


def _test_id(classname, name):
    """``tests/models/olmo/test_modeling_olmo.py::OlmoModelTest::test_x`` from a junit <testcase>.

    The classname ("tests.models.olmo.test_modeling_olmo.OlmoModelTest") is used rather than the ``file`` attribute,
    which names the file that *defines* the test function (tests/test_modeling_common.py for inherited tests).
    """
    parts = classname.split(".") if classname else []
    module_end = max((i for i, part in enumerate(parts) if part.startswith("test_")), default=len(parts) - 1)
    path = "/".join(parts[: module_end + 1]) + ".py"
    return "::".join([path, *parts[module_end + 1 :], name])


def _message(element):
    text = (element.get("message") or "").strip()
    if not text:
        text = (element.text or "").strip()
    return text


def parse_junit(path):
    """``{test_id: (outcome, message)}``; subtest reports of one test are folded into that test."""
    results = {}
    severity = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = _test_id(case.get("classname", ""), case.get("name", ""))
        outcome, message = "passed", ""
        for tag, kind in (("error", "error"), ("failure", "failed"), ("skipped", "skipped")):
            element = case.find(tag)
            if element is not None:
                outcome, message = kind, _message(element)
                break
        previous = results.get(test_id)
        if previous is None or severity[outcome] > severity[previous[0]]:
            results[test_id] = (outcome, message)
    return results


def run_impl(args, impl, junit_dir):
    junit_path = junit_dir / f"{impl}.xml"
    if args.no_run:
        results = parse_junit(junit_path) if junit_path.exists() else {}
        print(f"=== [{impl}] {len(results)} tests read from {junit_path}", flush=True)
        return {"returncode": None, "results": results, "command": None, "source": str(junit_path), "seconds": 0}
    if junit_path.exists():
        junit_path.unlink()
    cmd = build_command(args, impl, junit_path)
    print(f"\n=== [{impl}] {shlex.join(cmd)}\n    (cwd={args.tests_dir})", flush=True)
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=args.tests_dir, env=build_env(args, impl))
    elapsed = time.monotonic() - start
    results = parse_junit(junit_path) if junit_path.exists() else {}
    print(f"=== [{impl}] pytest exit status {proc.returncode}, {len(results)} tests, {elapsed:.0f}s", flush=True)
    return {"returncode": proc.returncode, "results": results, "command": cmd, "seconds": elapsed}


def counts(results):
    counter = collections.Counter(outcome for outcome, _ in results.values())
    return {outcome: counter.get(outcome, 0) for outcome in OUTCOMES}


def compare(runs):
    builtin, ours = runs["builtin"]["results"], runs["olmo_hf"]["results"]
    differing = []
    for test_id in sorted(set(builtin) | set(ours)):
        a = builtin.get(test_id, ("missing", ""))
        b = ours.get(test_id, ("missing", ""))
        if a[0] != b[0]:
            differing.append((test_id, a, b))
    return differing


def _short(message, limit=300):
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


def format_table(runs):
    impls = [impl for impl in IMPLS if impl in runs]
    lines = ["| outcome | " + " | ".join(impls) + " |", "|---|" + "---|" * len(impls)]
    per_impl = {impl: counts(runs[impl]["results"]) for impl in impls}
    for outcome in OUTCOMES:
        lines.append(f"| {outcome} | " + " | ".join(str(per_impl[impl][outcome]) for impl in impls) + " |")
    lines.append("| total | " + " | ".join(str(len(runs[impl]["results"])) for impl in impls) + " |")
    exits = [runs[impl]["returncode"] for impl in impls]
    lines.append("| pytest exit | " + " | ".join("n/a" if rc is None else str(rc) for rc in exits) + " |")
    return lines


def verdict(runs, differing):
    """(exit status, list of reasons)."""
    reasons = []
    for impl, run in runs.items():
        if run["returncode"] not in (None, 0, 1) or not run["results"]:
            reasons.append(f"the {impl} run did not complete (pytest exit {run['returncode']}, {len(run['results'])} results)")
    if reasons:
        return 2, reasons
    if len(runs) < 2:
        return next(iter(runs.values()))["returncode"] or 0, reasons
    builtin_passed = counts(runs["builtin"]["results"])["passed"]
    ours_passed = counts(runs["olmo_hf"]["results"])["passed"]
    if ours_passed < builtin_passed:
        reasons.append(f"olmo_hf passes {ours_passed} tests, the built-in classes {builtin_passed}")
    regressions = [test_id for test_id, a, b in differing if a[0] == "passed"]
    if regressions:
        reasons.append(f"{len(regressions)} tests pass with the built-in classes but not with olmo_hf")
    return (1 if reasons else 0), reasons


def render_markdown(args, runs, differing, status, reasons):
    lines = ["# Upstream Transformers model tests: built-in classes vs olmo_hf", ""]
    lines.append(f"- tests dir: `{args.tests_dir}`; test paths: `{' '.join(args.test_paths)}`")
    for impl, run in runs.items():
        if run["command"] is None:
            lines.append(f"- {impl}: results read from `{run['source']}` (not re-run)")
        else:
            lines.append(f"- {impl}: `{shlex.join(run['command'])}` ({run['seconds']:.0f}s)")
    lines += ["", "## Counts", "", *format_table(runs), ""]
    if len(runs) == 2:
        lines += ["## Tests whose outcome differs", ""]
        if differing:
            lines += ["| test | builtin | olmo_hf | olmo_hf message |", "|---|---|---|---|"]
            for test_id, a, b in differing:
                message = _short(b[1] or a[1]).replace("|", "\\|")
                lines.append(f"| `{test_id}` | {a[0]} | {b[0]} | {message} |")
        else:
            lines.append("None.")
        lines.append("")
    lines += ["## Verdict", "", f"exit status {status}" + (": " + "; ".join(reasons) if reasons else ": OK"), ""]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.tests_dir = args.tests_dir.resolve()
    if not (args.tests_dir / "tests").is_dir():
        sys.exit(f"--tests-dir {args.tests_dir} has no tests/ folder")
    impls = IMPLS if args.impl == "both" else (args.impl,)

    temp_dir = None
    if args.junit_dir is None:
        temp_dir = tempfile.mkdtemp(prefix="upstream-junit-")
        junit_dir = Path(temp_dir)
    else:
        junit_dir = args.junit_dir.resolve()
        junit_dir.mkdir(parents=True, exist_ok=True)
    try:
        runs = {impl: run_impl(args, impl, junit_dir) for impl in impls}
    finally:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)

    differing = compare(runs) if len(runs) == 2 else []
    status, reasons = verdict(runs, differing)

    print("\n" + "\n".join(format_table(runs)))
    if len(runs) == 2:
        print(f"\n{len(differing)} tests differ:")
        for test_id, a, b in differing:
            print(f"  {test_id}: builtin={a[0]} olmo_hf={b[0]}")
            if b[0] in ("failed", "error") and b[1]:
                print(f"      {_short(b[1], 400)}")
    print(f"\nexit status {status}" + (": " + "; ".join(reasons) if reasons else ""))
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(render_markdown(args, runs, differing, status, reasons), encoding="utf-8")
        print(f"report written to {args.report}")
    return status


if __name__ == "__main__":
    sys.exit(main())
