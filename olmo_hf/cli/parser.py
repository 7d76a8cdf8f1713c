# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Every ``olmo-hf`` argument parser, built from the standard library alone: the one source of the command line.

The console script (``olmo_hf_launcher``) loads this file BY PATH, without importing the ``olmo_hf`` package
(whose ``__init__`` imports torch and Transformers, seconds): ``olmo-hf --help``, ``olmo-hf run --help``,
``--version`` and every argument error (exit code 2) are answered before torch is imported. Only a command line
that parses goes on to ``olmo_hf.cli.main``, which builds the same parsers with the handlers attached
(``olmo_hf.cli.run.run``, ``olmo_hf.convert.cli.run_convert``).

So this module imports nothing but the standard library, has no relative imports, and holds no state. The
choices that the heavy modules define (``olmo_hf.cli.tasks``, ``olmo_hf.cli.formats.FORMATS``,
``olmo_hf.cli.loading``'s dtypes) are repeated here as static tuples; tests/test_cli_startup.py checks that they
match what the code accepts.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "PROG", "PASS_THROUGH", "build_parser", "add_run_parser", "add_convert_parser", "add_convert_arguments",
    "build_convert_parser",
]

PROG = "olmo-hf"
PASS_THROUGH = ("serve", "chat")  # handed, arguments untouched, to Transformers' own CLI (olmo_hf.cli.serve)

# Static copies of what the code accepts (checked by tests/test_cli_startup.py):
TASK_CHOICES = ("text-generation", "text-classification", "sentiment-analysis")  # tasks.TASKS + tasks.ALIASES
FORMAT_CHOICES = ("infer", "json", "csv", "pipe")  # "infer" + formats.FORMATS
DTYPE_CHOICES = ("auto", "bfloat16", "bf16", "float16", "fp16", "half", "float32", "fp32", "float")  # loading._DTYPES
DEFAULT_MAX_NEW_TOKENS = 64  # run: without --max-new-tokens and without one in the checkpoint's generation config

TOP_EPILOG = """\
examples:
  echo "The with statement" | olmo-hf run --task text-generation     # embedded demo model, offline
  olmo-hf run --model allenai/OLMo-2-0425-1B --input prompts.json --column text --output out.json
  olmo-hf serve allenai/OLMo-2-0425-1B --port 8000                     # OpenAI-compatible server
  olmo-hf chat allenai/OLMo-2-0425-1B http://localhost:8000            # talk to it

`olmo-hf COMMAND --help` explains each command; docs/cli.md has every flag."""

RUN_EPILOG = """\
examples:
  # the embedded demo model (offline, a few MB), one prompt per line, one JSON result per line
  echo "The import statement" | olmo-hf run --task text-generation

  # a local checkpoint, greedy, 20 new tokens; print only the text
  printf 'def forward(self\\nimport torch\\n' | olmo-hf run --model ./my-olmo --no-do-sample \\
      --max-new-tokens 20 | jq -r .generated_text

  # a Hub model on GPU 0 in bf16, JSON in and out
  olmo-hf run --model allenai/OLMo-2-0425-1B --device 0 --input prompts.json --column prompt \\
      --output out.json --overwrite

  # CSV in, CSV out (header: generated_text), sampling with a fixed seed
  olmo-hf run --input prompts.csv --column text --do-sample --temperature 0.7 --top-p 0.9 --seed 0

  # classify tab-separated pairs with a sequence-classification checkpoint
  printf 'a premise\\ta hypothesis\\n' | olmo-hf run --task text-classification --model ./clf --column text,text_pair

formats: --format names the input format and the output uses the same one (json: a list; csv: a table;
pipe: lines). Without --format it is taken from the --input extension, or pipe without --input.
exit codes: 0 ok, 1 unexpected failure, 2 usage or input error, 74 I/O fault (disk full, permission denied),
130 interrupted (Ctrl-C); one line on stderr, --debug adds the traceback.
Full reference: docs/cli.md."""


def add_run_parser(subparsers: Any, handler: Callable[[argparse.Namespace], int] | None = None
                   ) -> argparse.ArgumentParser:
    """Register ``run`` on the top-level CLI; ``handler`` (``olmo_hf.cli.run.run``) becomes ``args.handler``."""
    p = subparsers.add_parser(
        "run",
        help="run a pipeline (text generation) over stdin or a JSON/CSV file, like Transformers 4.x `run`",
        description="Run a text-generation (or text-classification) pipeline with olmo_hf's OLMo classes over "
        "inputs from stdin (one per line) or a JSON/CSV file. Without --model it uses a small OLMo 2 demo "
        "model shipped inside the package, so it works offline.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = p.add_argument_group("inputs and outputs (as in Transformers 4.x `run`)")
    io.add_argument("--task", choices=TASK_CHOICES, metavar="TASK",
                    help="text-generation or text-classification (alias: sentiment-analysis; default: from the checkpoint's "
                    "architectures; text-generation for a causal LM)")
    io.add_argument("--input", metavar="FILE", help="file to read inputs from (default: stdin, one input per line)")
    io.add_argument("--output", metavar="FILE", help="file to write outputs to (default: stdout)")
    io.add_argument("--column", metavar="COLS", help="JSON/CSV field holding the input; `a,b` or `text=a,text_pair=b` "
                    "for two-input tasks (with --format pipe: split lines on tabs)")
    io.add_argument("--format", choices=FORMAT_CHOICES, default="infer",
                    help="input (and output) format; infer = from the --input extension, pipe without --input "
                    "(default: %(default)s)")
    io.add_argument("--overwrite", action="store_true", help="replace --output if it exists")

    model = p.add_argument_group("model")
    model.add_argument("--model", metavar="NAME_OR_DIR",
                       help="checkpoint directory or Hub id (default: the embedded demo model, olmo_hf/demo)")
    model.add_argument("--config", metavar="NAME_OR_DIR", help="config to use instead of the model's")
    model.add_argument("--tokenizer", metavar="NAME_OR_DIR", help="tokenizer to use (default: the model's)")
    model.add_argument("--revision", metavar="REV", help="Hub branch, tag or commit of --model (and --config)")
    model.add_argument("--device", default="-1", metavar="DEVICE",
                       help="-1 = CPU, N = CUDA GPU N (as in 4.x); also cpu, cuda:N, mps, auto (default: %(default)s)")
    model.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", metavar="DTYPE",
                       help="auto (bf16 where the device supports it, else fp32), bf16, fp16 (warns for OLMo 2), "
                       "fp32 (default: %(default)s)")
    model.add_argument("--quantize", metavar="NAME",
                       help="quantize on load with olmo_hf.quantization's scheme NAME (if that module is installed)")
    model.add_argument("--attn-implementation", metavar="IMPL", help="eager, sdpa (default), flex_attention, "
                       "flash_attention_2, ...")
    model.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                       help="olmo_hf's CPU fast path (olmo_hf.fast.optimize_for_cpu_inference): fused projections "
                       "and native kernels, each enabled only where it measures faster on this CPU (--verbose "
                       "says which). Default: on when the model runs on the CPU, unquantized or --quantize int8 / "
                       "int4, and is an olmo_hf OLMo / OLMo 2 / OLMo 3 model (text generation or classification); "
                       "--fast makes it an error where it cannot apply, --no-fast turns it off. Cost: a one-off "
                       "measurement of the kernels (~0.3 s) and the copies of the fused matrices. Outputs: identical "
                       "in float32, within bf16 rounding in bf16")
    model.add_argument("--verbose", action="store_true",
                       help="print what the CPU fast path does on this machine: which native kernels run, which do "
                       "not and why, with the speeds measured against PyTorch (olmo_hf.fast.status)")
    model.add_argument("--trust-remote-code", action="store_true",
                       help="allow a checkpoint's own Python code to run (off by default)")

    gen = p.add_argument_group("generation (text-generation only)")
    gen.add_argument("--max-new-tokens", type=int, metavar="N",
                     help="tokens to generate per input (default: the checkpoint's generation config, "
                     f"else {DEFAULT_MAX_NEW_TOKENS})")
    gen.add_argument("--do-sample", action=argparse.BooleanOptionalAction, default=None,
                     help="sample instead of greedy decoding (default: the checkpoint's generation config)")
    gen.add_argument("--temperature", type=float, metavar="T", help="sampling temperature")
    gen.add_argument("--top-k", type=int, metavar="K", help="sample from the K most likely tokens")
    gen.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling probability mass")
    gen.add_argument("--repetition-penalty", type=float, metavar="R", help="penalty > 1 discourages repeats")
    gen.add_argument("--seed", type=int, help="random seed (makes sampling reproducible)")
    gen.add_argument("--chat", action="store_true",
                     help="each input is a user message: apply the checkpoint tokenizer's chat template (OLMo 2 / 3 "
                          "Instruct and Think models; a Think template opens <think> itself), also stop at the "
                          "end-of-turn token <|im_end|>, and output only the assistant's reply")

    p.add_argument("--debug", action="store_true", help="show tracebacks and Transformers' own logs")
    if handler is not None:
        p.set_defaults(handler=handler)
    return p


CONVERT_DESCRIPTION = """\
Convert an original OLMo checkpoint into a Transformers directory that olmo_hf's classes (and
AutoModelForCausalLM) load; or, with --to olmo-core, a Transformers OLMo / OLMo 2 model into an OLMo-core
checkpoint (config.json + model.pt) to continue training. The result is written to a temporary
directory next to DST and renamed into place: on any error or Ctrl-C DST is left as it was. DST may not
be SRC, nor contain it or lie inside it; --overwrite replaces only an earlier conversion's output.
Exit codes: 0 ok, 2 a problem with the input or DST, 74 an I/O fault (disk full, permission denied),
1 an unexpected failure, 130 interrupted."""

CONVERT_EPILOG = """\
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


def add_convert_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the convert arguments to ``p`` (a sub-command parser or a standalone one); ``args.convert_prog`` is
    its ``prog``, for messages."""
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
    p.set_defaults(convert_prog=p.prog)
    return p


def add_convert_parser(subparsers: Any, handler: Callable[[argparse.Namespace], int] | None = None
                       ) -> argparse.ArgumentParser:
    """Register ``convert`` on an ``ArgumentParser.add_subparsers()`` object; returns its parser. ``handler``
    (``olmo_hf.convert.cli.run_convert``) becomes ``args.handler``."""
    p = subparsers.add_parser(
        "convert",
        help="convert an original OLMo checkpoint (ai2-olmo, OLMo-core, hf_olmo) into a Transformers directory, "
             "or a Transformers model into OLMo-core (docs/conversion.md)",
        description=CONVERT_DESCRIPTION,
        epilog=CONVERT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_convert_arguments(p)
    if handler is not None:
        p.set_defaults(handler=handler)
    return p


def build_convert_parser(prog: str = "python -m olmo_hf.convert") -> argparse.ArgumentParser:
    """The standalone parser of ``python -m olmo_hf.convert``."""
    p = argparse.ArgumentParser(prog=prog, description=CONVERT_DESCRIPTION, epilog=CONVERT_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_convert_arguments(p)


def build_parser(version: str, handlers: Mapping[str, Callable[[argparse.Namespace], int]] | None = None
                 ) -> argparse.ArgumentParser:
    """The top-level ``olmo-hf`` parser: ``run`` and ``convert`` are parsed here; ``serve`` / ``chat`` are listed,
    and parsed by Transformers. ``handlers`` maps a command to the function that runs it (``args.handler``)."""
    handlers = handlers or {}
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="OLMo and OLMo 2 with Hugging Face Transformers 5, using olmo_hf's own model classes.",
        epilog=TOP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {version}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    add_run_parser(commands, handlers.get("run"))
    commands.add_parser("serve", help="Transformers' OpenAI-compatible server (`transformers serve`) "
                        "with olmo_hf's classes")
    commands.add_parser("chat", help="Transformers' terminal chat client (`transformers chat`) for a running server")
    add_convert_parser(commands, handlers.get("convert"))
    return parser
