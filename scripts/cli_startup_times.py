#!/usr/bin/env python
# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Start-up time of the ``olmo-hf`` console script, two source trees side by side (docs/cli.md, "Start-up").

Runs the installed ``olmo-hf`` script of this Python's environment with ``PYTHONPATH`` set to each tree (a
checkout or ``git archive`` of olmo_hf: the directory holding ``olmo_hf/`` and ``olmo_hf_launcher.py``), the two
alternating run by run so that load on a shared machine hits both alike; prints the median wall and CPU
(user + sys) time of each command and the ratio old / new::

    git archive b749e09 olmo_hf olmo_hf_launcher.py | tar -x -C /tmp/old-cli
    python scripts/cli_startup_times.py /tmp/old-cli . --runs 7
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (("--version",), ("run", "--help"), ("--help",), ("convert", "--help"), ("run", "--task", "x"))


def timed(script: str, tree: str, command: tuple[str, ...]) -> tuple[float, float, int]:
    """(wall s, CPU s, exit code) of one ``olmo-hf COMMAND`` run with ``tree`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve()), "HF_HUB_OFFLINE": "1"}
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    result = subprocess.run([script, *command], capture_output=True, env=env, cwd="/")
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, result.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="source tree of the baseline")
    parser.add_argument("new", help="source tree to compare with it")
    parser.add_argument("--runs", type=int, default=5, help="runs of each command per tree (default: %(default)s)")
    args = parser.parse_args()
    script = str(Path(sys.executable).with_name("olmo-hf"))
    samples: dict[tuple[str, tuple[str, ...]], list[tuple[float, float]]] = {}
    for _ in range(args.runs):
        for command in COMMANDS:
            for name, tree in (("old", args.old), ("new", args.new)):
                wall, cpu, _code = timed(script, tree, command)
                samples.setdefault((name, command), []).append((wall, cpu))
    print(f"{'olmo-hf ...':22s} {'old wall':>9s} {'new wall':>9s} {'ratio':>6s} {'old CPU':>8s} {'new CPU':>8s} {'ratio':>6s}")
    for command in COMMANDS:
        old = [statistics.median(x) for x in zip(*samples[("old", command)])]
        new = [statistics.median(x) for x in zip(*samples[("new", command)])]
        print(f"{' '.join(command):22s} {old[0]:8.3f}s {new[0]:8.3f}s {old[0] / new[0]:5.1f}x "
              f"{old[1]:7.3f}s {new[1]:7.3f}s {old[1] / new[1]:5.1f}x")


if __name__ == "__main__":
    main()
