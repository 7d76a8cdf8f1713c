# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""The ``olmo-hf`` console script's entry point, outside the ``olmo_hf`` package on purpose.

Importing anything inside ``olmo_hf`` first imports the package, which imports torch and Transformers (seconds).
A Ctrl-C in those seconds would otherwise print Python's traceback; here it is one line and exit code 130, like a
Ctrl-C anywhere else in the command (``olmo_hf.cli.errors``).
"""

import sys


def main() -> int:
    try:
        from olmo_hf.cli import main as cli_main
    except KeyboardInterrupt:
        print("olmo-hf: interrupted", file=sys.stderr, flush=True)
        return 130
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
