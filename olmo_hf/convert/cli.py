# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""The ``convert`` command: ``olmo-hf convert`` and ``python -m olmo_hf.convert`` share this parser.

    add_convert_parser(subparsers)   # adds "convert" to an argparse sub-command set; sets handler=run_convert
    run_convert(args) -> int         # runs it; exit code 0 ok, 2 a problem the user can fix, 74 an I/O fault
                                     # (disk full, permission denied), 1 unexpected, 130 ^C

Errors are one line on stderr (``<prog>: error: ...``); ``--debug`` adds the traceback. The output directory
is printed on stdout. Progress and validation results are logged on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from ..cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_IOERR, EXIT_USAGE, io_fault, is_io_fault
from ..cli.parser import CONVERT_DESCRIPTION, CONVERT_EPILOG, add_convert_arguments, build_convert_parser
from ..cli.parser import add_convert_parser as _add_convert_parser
from .common import ConversionError

__all__ = ["add_convert_parser", "build_parser", "run_convert"]

EXIT_OK = 0
DESCRIPTION, EPILOG = CONVERT_DESCRIPTION, CONVERT_EPILOG

_TO = {"hf": "hf", "transformers": "hf", "olmo-core": "olmo_core", "olmo_core": "olmo_core"}


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the convert arguments (:func:`olmo_hf.cli.parser.add_convert_arguments`) to ``p`` (a sub-command parser
    or a standalone one), with ``handler=run_convert``."""
    add_convert_arguments(p)
    p.set_defaults(handler=run_convert)
    return p


def add_convert_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``convert`` on an ``ArgumentParser.add_subparsers()`` object; returns its parser.

    The parsed namespace has ``handler=run_convert``: call ``args.handler(args)`` for the exit code.
    """
    return _add_convert_parser(subparsers, handler=run_convert)


def build_parser(prog: str = "python -m olmo_hf.convert") -> argparse.ArgumentParser:
    """The standalone parser of ``python -m olmo_hf.convert``."""
    p = build_convert_parser(prog)
    p.set_defaults(handler=run_convert)
    return p


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")  # no-op if already configured
    logging.getLogger("olmo_hf.convert").setLevel(logging.DEBUG if debug else logging.INFO)


def _convert(args) -> str:
    from . import convert_checkpoint, to_olmo_core

    to = _TO.get(getattr(args, "to", None) or "hf")
    if to is None:
        raise ConversionError(f"unknown --to {args.to!r}; choose hf or olmo-core.")
    fmt = getattr(args, "format", None) or "auto"
    if to == "olmo_core":
        if getattr(args, "tokenizer", None):
            raise ConversionError("--tokenizer applies to --to hf only; an OLMo-core checkpoint names its tokenizer "
                                  "in its training config.")
        out = to_olmo_core(args.src, args.dst, format=fmt, dtype=getattr(args, "dtype", None),
                           overwrite=bool(getattr(args, "overwrite", False)),
                           validate=bool(getattr(args, "validate", False)),
                           model_and_optim=bool(getattr(args, "model_and_optim", False)))
    else:
        if getattr(args, "model_and_optim", False):
            raise ConversionError("--model-and-optim applies to --to olmo-core only.")
        if fmt in ("hf", "transformers"):
            raise ConversionError(f"--format {fmt} is the output of --to hf; pass --to olmo-core to convert a "
                                  "Transformers directory to OLMo-core.")
        out = convert_checkpoint(args.src, args.dst, format=fmt, tokenizer=getattr(args, "tokenizer", None),
                                 dtype=getattr(args, "dtype", None), overwrite=bool(getattr(args, "overwrite", False)),
                                 validate=bool(getattr(args, "validate", False)))
    return str(out)


def run_convert(args) -> int:
    """Run a parsed ``convert`` command; returns the exit code (see the module docstring)."""
    prog = getattr(args, "convert_prog", None) or "olmo-hf convert"
    debug = bool(getattr(args, "debug", False))
    _setup_logging(debug)
    try:
        out = _convert(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except (ConversionError, OSError) as e:  # a problem the user can fix: bad input, existing DST, full disk
        if debug:
            traceback.print_exc(file=sys.stderr)
        if is_io_fault(e):  # DST was left as it was and the temporary directory removed (_atomic_dir)
            print(f"{prog}: error: {io_fault(e)} (DST {args.dst} was left as it was)", file=sys.stderr, flush=True)
            return EXIT_IOERR
        message = str(e) if isinstance(e, ConversionError) else f"{type(e).__name__}: {e}"
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - one line (or a traceback with --debug) instead of a crash dump
        if debug:
            traceback.print_exc(file=sys.stderr)
        first = (str(e).strip().splitlines() or [""])[0]
        hint = "" if debug else " (run again with --debug for the traceback)"
        print(f"{prog}: error: {type(e).__name__}: {first}{hint}", file=sys.stderr, flush=True)
        return EXIT_FAILURE
    print(out, flush=True)
    return EXIT_OK


def main(argv=None, prog: str = "python -m olmo_hf.convert") -> int:
    args = build_parser(prog).parse_args(argv)
    return run_convert(args)
