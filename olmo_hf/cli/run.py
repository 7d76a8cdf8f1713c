# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""``olmo-hf run``: Transformers 4.x's ``run`` command for OLMo models, with generation controls.

Every flag of 4.x ``transformers run`` keeps its meaning (``--task --input --output --model --config
--tokenizer --column --format --device --overwrite``); added are ``--revision --dtype --max-new-tokens``,
the sampling flags, ``--quantize --attn-implementation --fast/--no-fast --seed --trust-remote-code --debug``.

Differences from 4.x, on purpose: pipe mode strips each line's newline and prints each result (one JSON
object per line) as soon as it is ready instead of a Python list repr at EOF; ``--model`` defaults to a small
OLMo 2 checkpoint shipped in the package instead of a Hub download; errors are one line and exit code 2; on the
CPU the model runs through olmo_hf's CPU fast path (:mod:`olmo_hf.fast`) unless ``--no-fast``: ``run`` owns the
model from loading to exit, so nothing can later train, quantize or move it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .errors import CliError, warn
from .formats import (
    check_combination,
    iter_pipe,
    open_writer,
    parse_columns,
    read_batch,
    resolve_format,
    undecodable_lines,
)
from .loading import (
    LoadRequest,
    load_config,
    load_model_and_tokenizer,
    resolve_device,
    resolve_dtype,
    resolve_fast,
    resolve_quantization,
)
from .output_file import check_output
from .parser import DEFAULT_MAX_NEW_TOKENS, RUN_EPILOG, add_run_parser
from ..presets import end_of_turn_id
from .tasks import Task, get_task, infer_task, normalize_output

__all__ = ["add_parser", "run"]

GENERATION_FLAGS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty")
EPILOG = RUN_EPILOG


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``run`` on the top-level CLI (its arguments: :func:`olmo_hf.cli.parser.add_run_parser`)."""
    return add_run_parser(subparsers, handler=run)


def _generation_kwargs(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """Generation flags given on the command line; the rest comes from the checkpoint's generation config."""
    defaults = model.generation_config
    max_new_tokens = args.max_new_tokens or defaults.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    for flag in GENERATION_FLAGS[1:]:
        value = getattr(args, flag)
        if value is not None:
            kwargs[flag] = value
    sampling = [f"--{f.replace('_', '-')}" for f in ("temperature", "top_k", "top_p") if getattr(args, f) is not None]
    if sampling and not kwargs.get("do_sample", defaults.do_sample):
        verb = "has" if len(sampling) == 1 else "have"
        warn(f"{', '.join(sampling)} {verb} no effect without --do-sample (decoding is greedy)")
    return kwargs


def _no_generation_flags(args: argparse.Namespace, task: Task) -> dict[str, Any]:
    """For tasks that do not generate: warn about generation flags, which would be ignored."""
    given = [f"--{flag.replace('_', '-')}" for flag in GENERATION_FLAGS if getattr(args, flag) is not None]
    if given:
        warn(f"{', '.join(given)} ignored: {task.name} does not generate text")
    return {}


def _validate_numbers(args: argparse.Namespace) -> None:
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise CliError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.temperature is not None and args.temperature <= 0:
        raise CliError(f"--temperature must be positive, got {args.temperature} (use --no-do-sample for greedy)")
    if args.top_k is not None and args.top_k < 1:
        raise CliError(f"--top-k must be at least 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise CliError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.repetition_penalty is not None and args.repetition_penalty <= 0:
        raise CliError(f"--repetition-penalty must be positive, got {args.repetition_penalty}")


def _quiet_transformers(debug: bool) -> None:
    """Keep stderr for our messages: Transformers' warnings and weight-loading bars only with --debug."""
    from transformers.utils import logging as hf_logging

    if debug:
        hf_logging.set_verbosity_info()
    else:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def run(args: argparse.Namespace) -> int:
    """Execute ``olmo-hf run``; returns the exit code (errors are raised as CliError and reported by main)."""
    import olmo_hf

    olmo_hf.register()  # the CLI always runs our classes, even under OLMO_HF_NO_AUTOREGISTER=1
    _quiet_transformers(args.debug)
    _validate_numbers(args)
    if args.output:
        check_output(args.output, args.overwrite)  # before any loading or inference: a bad path costs nothing
    fmt = resolve_format(args.format, args.input)
    task: Task | None = get_task(args.task) if args.task else None
    if task is not None:  # validate flag combinations before any loading
        check_combination(fmt, args.input, parse_columns(args.column, task), task)
    device = resolve_device(args.device)
    quantization_config = resolve_quantization(args.quantize, device)
    fast = resolve_fast(args.fast, device, args.device, quantization_config)

    request = LoadRequest(args.model, args.config, args.tokenizer, args.revision, args.trust_remote_code)
    config = load_config(request)
    if task is None:
        task = infer_task(config)
        check_combination(fmt, args.input, parse_columns(args.column, task), task)
    columns = parse_columns(args.column, task)
    batch = read_batch(fmt, args.input, columns) if fmt in ("json", "csv") else None
    if task.name == "text-classification" and not any(
        a.endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or [])
    ):
        warn(f"{request.model_name} was not saved as a sequence classifier: its classification head is randomly "
             "initialised, so labels and scores are meaningless")
    if args.model is None:
        print("olmo-hf: using the embedded demo model (a tiny OLMo 2 trained on CPython's documentation); "
              "pass --model for a real one", file=sys.stderr, flush=True)

    dtype = resolve_dtype(args.dtype, device, getattr(config, "model_type", None))
    model, tokenizer = load_model_and_tokenizer(
        request, config, task, device, dtype, args.attn_implementation, quantization_config, fast, args.debug,
        verbose=args.verbose,
    )
    call_kwargs = _generation_kwargs(args, model) if task.generates else _no_generation_flags(args, task)
    if args.chat:
        call_kwargs.update(_chat_generation_kwargs(task, model, tokenizer, request.model_name))
    if args.seed is not None:
        from transformers import set_seed

        set_seed(args.seed)
    return _process(task, model, tokenizer, fmt, args, batch, columns, call_kwargs)


def _chat_generation_kwargs(task: Task, model: Any, tokenizer: Any, model_name: str) -> dict[str, Any]:
    """``--chat``: the checkpoint's eos ids plus the end-of-turn token, if its vocabulary has one."""
    if not task.generates:
        raise CliError(f"--chat needs --task text-generation, not {task.name}")
    if not getattr(tokenizer, "chat_template", None):
        raise CliError(f"--chat: the tokenizer of {model_name} has no chat template (a base model?); drop --chat, "
                       "or pass --tokenizer with a chat template (an Instruct or Think checkpoint)")
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    end_of_turn = end_of_turn_id(tokenizer)
    if end_of_turn is not None and end_of_turn not in eos:
        eos.append(end_of_turn)
    return {"eos_token_id": eos} if eos else {}


def _as_chat(item: Any) -> Any:
    """One input as the one-message conversation the text-generation pipeline renders with the chat template."""
    return [{"role": "user", "content": item}] if isinstance(item, str) else item


def _reply_only(results: list[dict]) -> list[dict]:
    """The pipeline answers a conversation with the whole conversation; keep the assistant's reply."""
    return [{**r, "generated_text": r["generated_text"][-1]["content"]} if isinstance(r.get("generated_text"), list)
            else r for r in results]


def _process(task: Task, model: Any, tokenizer: Any, fmt: str, args: argparse.Namespace,
             batch: list | None, columns: Any, call_kwargs: dict[str, Any]) -> int:
    """Run the pipeline over the inputs, writing each result as soon as it is ready."""
    import contextlib

    import torch
    from tqdm import tqdm
    from transformers import pipeline

    pipe = pipeline(task.name, model=model, tokenizer=tokenizer)  # runs on model.device; inputs are moved there
    skipped: list[int] = []  # pipe lines that are not valid UTF-8: skipped with a warning, reported at the end
    source = f"--input {args.input}" if args.input else "stdin"
    with contextlib.ExitStack() as stack:
        if batch is not None:
            inputs = tqdm(batch, desc="olmo-hf run", unit="input", file=sys.stderr, dynamic_ncols=True)
        elif args.input:
            stream = stack.enter_context(open(args.input, encoding="utf-8", errors="surrogateescape"))
            inputs = iter_pipe(stream, columns, source, skipped)
        else:
            if sys.stdin.isatty():
                print("olmo-hf: reading inputs from stdin, one per line (Ctrl-D to finish)",
                      file=sys.stderr, flush=True)
            inputs = iter_pipe(sys.stdin, columns, source, skipped)

        writer = None  # opened at the first result, so that a run without any input leaves no file behind
        success = False
        try:
            with torch.inference_mode():
                for item in inputs:
                    if args.chat:
                        results = _reply_only(normalize_output(task, pipe(_as_chat(item), **call_kwargs)))
                    else:
                        results = normalize_output(task, pipe(item, **call_kwargs))
                    writer = writer or open_writer(fmt, args.output, task, args.overwrite)
                    writer.write(results)
            success = True
        finally:
            if writer is not None:
                writer.close(success)
    if skipped:
        raise undecodable_lines(source, skipped)
    if writer is None:
        raise CliError(f"no input: {source} had no non-blank lines")
    return 0
