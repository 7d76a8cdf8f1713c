# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""The ``olmo-hf`` console script's entry point, outside the ``olmo_hf`` package on purpose.

Importing anything inside ``olmo_hf`` first imports the package, which imports torch and Transformers (seconds).
Before that happens, this module:

- parses the command line with ``olmo_hf/cli/parser.py``, loaded by its file path so that the package is not
  imported: ``--version``, ``--help`` (of ``olmo-hf``, ``run`` and ``convert``), a missing command and every
  argument error (exit code 2) are answered without importing torch or Transformers;
- quiets two libraries' import-time log lines that say nothing about the user's command (unless ``--debug``);
- turns a Ctrl-C during the heavy imports into one line and exit code 130, like a Ctrl-C anywhere else in the
  command (``olmo_hf.cli.errors``), instead of Python's traceback.

A command line that parses is then handed to ``olmo_hf.cli.main``, which parses it again with the same parsers
(with their handlers attached: microseconds) and runs it. ``serve`` and ``chat`` are parsed by Transformers'
own CLI, so they go to ``olmo_hf.cli.main`` directly.
"""

import os
import sys

# Loggers whose import-time warnings every olmo-hf call printed, and why they are noise for a CLI user.
NOISY_LOGGERS = {
    "torchao": "'Failed to load ....so' for torchao's optional CUDA kernels, on every machine without them",
    "torch.utils._pytree": "torchao's register_constant() on Enum classes, deprecated in torch 2.13",
}

# The module name the parser file is loaded under (not olmo_hf.cli.parser: that would need the package).
PARSER_MODULE = "_olmo_hf_cli_parser"


def package_dir() -> str | None:
    """The directory of the ``olmo_hf`` package, found without running its ``__init__``; None if there is none."""
    import importlib.util

    spec = importlib.util.find_spec("olmo_hf")
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(iter(spec.submodule_search_locations))


def package_version(directory: str) -> str | None:
    """``olmo_hf.__version__``, read from the line of ``__init__.py`` that assigns it (no import, no metadata: the
    version the package itself reports, in a checkout too)."""
    with open(os.path.join(directory, "__init__.py"), encoding="utf-8") as init:
        for line in init:
            if line.startswith("__version__ = "):
                return line.split("=", 1)[1].split("#", 1)[0].strip().strip("\"'")
    return None


def load_parser_module(directory: str | None = None):
    """``olmo_hf/cli/parser.py`` executed from its path, without importing ``olmo_hf``; None if it is not found."""
    import importlib.util

    if PARSER_MODULE in sys.modules:
        return sys.modules[PARSER_MODULE]
    directory = directory or package_dir()
    path = os.path.join(directory, "cli", "parser.py") if directory else None
    if path is None or not os.path.isfile(path):
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


def main() -> int:
    """Run ``olmo-hf`` with ``sys.argv``; returns the process exit code."""
    argv = sys.argv[1:]
    directory = package_dir()
    version = package_version(directory) if directory else None
    if version and argv == ["--version"]:  # what the parser's --version prints, without building the parser
        print(f"olmo-hf {version}")
        return 0
    parser_module = load_parser_module(directory) if version else None
    if parser_module is not None and not (argv and argv[0] in parser_module.PASS_THROUGH):  # Transformers parses those
        parser = parser_module.build_parser(version)
        try:
            args = parser.parse_args(argv)
        except SystemExit as done:  # --help, --version (0) and usage errors (2), all before torch
            return done.code if isinstance(done.code, int) else 0 if done.code is None else 1
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
    if "--debug" not in argv:  # before the heavy imports that log
        import logging

        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from olmo_hf.cli import main as cli_main
    except KeyboardInterrupt:
        print("olmo-hf: interrupted", file=sys.stderr, flush=True)
        return 130
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
