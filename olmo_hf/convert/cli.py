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
from .common import ConversionError

__all__ = ["add_convert_parser", "build_parser", "run_convert"]

EXIT_OK = 0

DESCRIPTION = """\
Convert an original OLMo checkpoint into a Transformers directory that olmo_hf's classes (and
AutoModelForCausalLM) load; or, with --to olmo-core, a Transformers OLMo / OLMo 2 model into an OLMo-core
checkpoint (config.json + model.pt) to continue training. The result is written to a temporary
directory next to DST and renamed into place: on any error or Ctrl-C DST is left as it was. DST may not
be SRC, nor contain it or lie inside it; --overwrite replaces only an earlier conversion's output.
Exit codes: 0 ok, 2 a problem with the input or DST, 74 an I/O fault (disk full, permission denied),
1 an unexpected failure, 130 interrupted."""

EPILOG = """\
formats (--format, default auto: detected from the files in SRC):
  olmo       ai2-olmo trainer step directory: config.yaml + model.pt (unsharded)   [alias: olmo_trainer, ai2-olmo]
  olmo-core  OLMo-core step directory: config.json + model_and_optim/ or model.pt  [alias: olmo_core]
  hf_olmo    legacy hf_olmo repo (allenai/OLMo-1B, OLMo-7B): config.json + weights [alias: hf-olmo]
  hf         (with --to olmo-core only) a Transformers olmo / olmo2 directory      [alias: transformers]

examples:
  olmo-hf convert ckpt/step1000-unsharded OLMo-1B-hf --tokenizer tokenizer.json
  olmo-hf convert runs/olmo2-1b/step20000 OLMo-2-1B-hf --dtype bfloat16 --validate
  olmo-hf convert OLMo-1B OLMo-1B-hf --format hf_olmo        # legacy hf_olmo repo, downloaded locally
  olmo-hf convert OLMo-2-0425-1B-hf OLMo-2-1B-core --to olmo-core --model-and-optim
  python -m olmo_hf.convert SRC DST ...                      # the same command without the olmo-hf script

--validate reloads the result and checks it bit for bit; when the source's original library (ai2-olmo,
ai2-olmo-core 3.x) is importable in this Python it also compares logits with it, else it says it skipped
that. See docs/conversion.md."""

_TO = {"hf": "hf", "transformers": "hf", "olmo-core": "olmo_core", "olmo_core": "olmo_core"}


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the convert arguments to ``p`` (a sub-command parser or a standalone one)."""
    p.add_argument("src", metavar="SRC", help="checkpoint directory to convert")
    p.add_argument("dst", metavar="DST", help="output directory; must be absent or empty unless --overwrite")
    p.add_argument("--format", default="auto", metavar="{auto,olmo,olmo-core,hf_olmo}",
                   help="format of SRC (default: auto-detect); see the list below")
    p.add_argument("--to", default="hf", choices=["hf", "olmo-core"],
                   help="hf (default): a Transformers directory; olmo-core: an OLMo-core checkpoint")
    p.add_argument("--tokenizer", metavar="PATH",
                   help="tokenizer.json file or tokenizer directory to save alongside (--to hf)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the written weights (default: the checkpoint's)")
    p.add_argument("--validate", action="store_true",
                   help="check the result before it is moved into place (see below)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    p.add_argument("--model-and-optim", action="store_true",
                   help="with --to olmo-core: also write model_and_optim/ (torch.distributed.checkpoint)")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error")
    p.set_defaults(handler=run_convert, convert_prog=p.prog)
    return p


def add_convert_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``convert`` on an ``ArgumentParser.add_subparsers()`` object; returns its parser.

    The parsed namespace has ``handler=run_convert``: call ``args.handler(args)`` for the exit code.
    """
    p = subparsers.add_parser(
        "convert",
        help="convert an original OLMo checkpoint (ai2-olmo, OLMo-core, hf_olmo) into a Transformers directory, "
             "or a Transformers model into OLMo-core (docs/conversion.md)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return configure_parser(p)


def build_parser(prog: str = "python -m olmo_hf.convert") -> argparse.ArgumentParser:
    """The standalone parser of ``python -m olmo_hf.convert``."""
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    return configure_parser(p)


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
