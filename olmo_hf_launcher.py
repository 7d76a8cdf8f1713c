# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""The ``olmo-hf`` console script's entry point, outside the ``olmo_hf`` package on purpose.

Importing anything inside ``olmo_hf`` first imports the package, which imports torch and Transformers (seconds).
Before that happens, this module:

- turns a Ctrl-C during those seconds into one line and exit code 130, like a Ctrl-C anywhere else in the command
  (``olmo_hf.cli.errors``), instead of Python's traceback;
- answers ``olmo-hf --version`` without importing them at all;
- quiets two libraries' import-time log lines that say nothing about the user's command (unless ``--debug``).
"""

import logging
import sys

# Loggers whose import-time warnings every olmo-hf call printed, and why they are noise for a CLI user.
NOISY_LOGGERS = {
    "torchao": "'Failed to load ....so' for torchao's optional CUDA kernels, on every machine without them",
    "torch.utils._pytree": "torchao's register_constant() on Enum classes, deprecated in torch 2.13",
}


def main() -> int:
    argv = sys.argv[1:]
    if argv == ["--version"]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"olmo-hf {version('olmo_hf')}")
            return 0
        except PackageNotFoundError:
            pass  # not installed as a distribution: the package itself knows its version
    if "--debug" not in argv:
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from olmo_hf.cli import main as cli_main
    except KeyboardInterrupt:
        print("olmo-hf: interrupted", file=sys.stderr, flush=True)
        return 130
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
