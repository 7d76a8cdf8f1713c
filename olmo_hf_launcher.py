# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""The ``olmo-hf`` console script's entry point, outside the ``olmo_hf`` package on purpose.

Importing anything inside ``olmo_hf`` first imports the package, which imports torch and Transformers (seconds).
Before that happens, this module:

- quiets two libraries' import-time log lines that say nothing about the user's command (unless ``--debug``);
- parses the command line with ``olmo_hf/cli/parser.py``, loaded by its file path so that the package is not
  imported: ``--version``, ``--help`` (of ``olmo-hf``, ``run`` and ``convert``), a missing command and every
  argument error (exit code 2) are answered without importing torch or Transformers;
- turns a Ctrl-C during the heavy imports into one line and exit code 130, like a Ctrl-C anywhere else in the
  command (``olmo_hf.cli.errors``), instead of Python's traceback.

A command line that parses is then handed to ``olmo_hf.cli.main``, which parses it again with the same parsers
(with their handlers attached: microseconds) and runs it. ``serve`` and ``chat`` are parsed by Transformers'
own CLI, so they go to ``olmo_hf.cli.main`` directly.
"""

import logging
import sys

# Loggers whose import-time warnings every olmo-hf call printed, and why they are noise for a CLI user.
NOISY_LOGGERS = {
    "torchao": "'Failed to load ....so' for torchao's optional CUDA kernels, on every machine without them",
    "torch.utils._pytree": "torchao's register_constant() on Enum classes, deprecated in torch 2.13",
}

# The module name the parser file is loaded under (not olmo_hf.cli.parser: that would need the package).
PARSER_MODULE = "_olmo_hf_cli_parser"


def load_parser_module():
    """``olmo_hf/cli/parser.py`` executed from its path, without importing ``olmo_hf``; None if it is not found."""
    import importlib.util
    from pathlib import Path

    if PARSER_MODULE in sys.modules:
        return sys.modules[PARSER_MODULE]
    package = importlib.util.find_spec("olmo_hf")  # locates the package without running its __init__
    if package is None or not package.submodule_search_locations:
        return None
    path = Path(next(iter(package.submodule_search_locations))) / "cli" / "parser.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(PARSER_MODULE, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[PARSER_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PARSER_MODULE]
        raise
    return module


def _version() -> str | None:
    """The installed distribution's version, without importing the package (None when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("olmo_hf")
    except PackageNotFoundError:
        return None


def main() -> int:
    """Run ``olmo-hf`` with ``sys.argv``; returns the process exit code."""
    argv = sys.argv[1:]
    if "--debug" not in argv:
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    if not (argv and argv[0] in ("serve", "chat")):  # olmo_hf.cli.parser.PASS_THROUGH: Transformers parses those
        version = _version()
        parser_module = load_parser_module() if version is not None else None
        if parser_module is not None:
            parser = parser_module.build_parser(version)
            try:
                args = parser.parse_args(argv)
            except SystemExit as done:  # --help, --version (0) and usage errors (2), all before torch
                return done.code if isinstance(done.code, int) else 0 if done.code is None else 1
            if args.command is None:
                parser.print_help(sys.stderr)
                return 2
    try:
        from olmo_hf.cli import main as cli_main
    except KeyboardInterrupt:
        print("olmo-hf: interrupted", file=sys.stderr, flush=True)
        return 130
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
