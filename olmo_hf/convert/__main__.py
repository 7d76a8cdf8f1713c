# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""``python -m olmo_hf.convert SRC DST [--format F] [--to hf|olmo-core] [--tokenizer T] [--dtype D] [--validate]
[--overwrite] [--model-and-optim] [--debug]``; the parser and runner live in `olmo_hf.convert.cli`."""

import sys

from .cli import main as _cli_main


def main(argv=None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and convert; returns the exit code (0, 1, 2 or 130)."""
    prog = "olmo-hf convert" if "olmo-hf" in (sys.argv[0] or "").rsplit("/", 1)[-1] else "python -m olmo_hf.convert"
    return _cli_main(argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
