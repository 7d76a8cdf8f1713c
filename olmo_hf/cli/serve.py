# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""``olmo-hf serve`` and ``olmo-hf chat``: Transformers 5's own ``serve`` / ``chat`` commands, with our classes.

``import olmo_hf`` already makes the Auto classes build our models, but ``transformers serve`` does not use
them for text models: it loads ``getattr(transformers, config.architectures[0])``
(``transformers/cli/serving/model_manager.py``). So before handing over to Transformers' CLI, this module
puts our classes on the ``transformers`` module under the names serve resolves (:data:`SERVED_NAMES`):
a checkpoint naming ``Olmo2ForCausalLM`` is then served by ``olmo_hf.Olmo2ForCausalLM``. Two legacy spellings
found in published checkpoints are added (``OLMoForCausalLM``, allenai/OLMo-7B-0424-hf's typo, and
``Olmo1124ForCausalLM`` of the OLMo 2 preview); plain Transformers cannot serve those at all.

``chat`` is only an HTTP client of a running ``serve``. Its client refuses every request while
``HF_HUB_OFFLINE=1``, even to localhost; for a loopback URL we lift that (nothing leaves the machine).

Transformers' CLI is called through its Typer app (``transformers.cli.transformers.app``) rather than its
``main()``: ``main()`` only adds a PyPI check whose advice ("run hf update") is wrong for a plugin pinned to
``transformers<6``, and the app lets the usage lines say ``olmo-hf``.

``serve`` takes one flag of olmo-hf's own, ``--no-fast`` (removed before Transformers parses the rest): served on
the CPU, olmo_hf models run through the CPU fast path unless it is given (:mod:`.serve_loader`).
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import urlparse

from .errors import EXIT_INTERRUPTED

__all__ = ["SERVED_NAMES", "expose_classes", "fast_path_setting", "restore_classes", "run_transformers_command"]

SERVED_NAMES: dict[str, str] = {
    # name on the transformers module -> attribute of olmo_hf
    "OlmoConfig": "OlmoConfig",
    "Olmo2Config": "Olmo2Config",
    "OlmoModel": "OlmoModel",
    "Olmo2Model": "Olmo2Model",
    "OlmoForCausalLM": "OlmoForCausalLM",
    "Olmo2ForCausalLM": "Olmo2ForCausalLM",
    "OlmoForSequenceClassification": "OlmoForSequenceClassification",
    "Olmo2ForSequenceClassification": "Olmo2ForSequenceClassification",
    "Olmo3Config": "Olmo3Config",
    "Olmo3Model": "Olmo3Model",
    "Olmo3ForCausalLM": "Olmo3ForCausalLM",
    "Olmo3ForSequenceClassification": "Olmo3ForSequenceClassification",
    "OLMoForCausalLM": "OlmoForCausalLM",  # the -hf config typo (vllm-project/vllm #4310)
    "Olmo1124ForCausalLM": "Olmo2ForCausalLM",  # allenai/OLMo-7B-1024-preview (renamed by transformers PR #34551)
}

_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
_MISSING = object()


def expose_classes(module: Any = None) -> dict[str, Any]:
    """Put olmo_hf's classes on the ``transformers`` module (or on ``module``, another object standing for it);
    returns what was there, for :func:`restore_classes`."""
    import olmo_hf

    if module is None:
        import transformers as module

    previous = {}
    for name, ours in SERVED_NAMES.items():
        previous[name] = module.__dict__.get(name, _MISSING)
        setattr(module, name, getattr(olmo_hf, ours))
    return previous


def restore_classes(previous: dict[str, Any], module: Any = None) -> None:
    """Undo :func:`expose_classes` (names that were lazily resolved before come back on next access)."""
    if module is None:
        import transformers as module

    for name, value in previous.items():
        if value is _MISSING:
            module.__dict__.pop(name, None)
        else:
            setattr(module, name, value)


def _allow_loopback_while_offline(args: list[str]) -> None:
    """``chat MODEL [BASE_URL]``: if BASE_URL is on this machine, let the client reach it in offline mode."""
    from huggingface_hub import constants

    positional, skip_next = [], False
    for arg in args:
        if skip_next:
            skip_next = False
        elif arg.startswith("--"):
            skip_next = "=" not in arg  # every chat option takes a value (--user NAME, --system-prompt TEXT, ...)
        elif "=" not in arg:  # key=value arguments are generation flags
            positional.append(arg)
    base_url = positional[1] if len(positional) > 1 else "http://localhost:8000"
    if constants.HF_HUB_OFFLINE and (urlparse(base_url).hostname or "") in _LOOPBACK_HOSTS:
        constants.HF_HUB_OFFLINE = False


def _serving_dependencies_missing() -> list[str]:
    import importlib.util

    return [name for name in ("fastapi", "uvicorn", "openai") if importlib.util.find_spec(name) is None]


def _option_values(args: list[str], option: str) -> list[str]:
    """Every value given to ``option`` in ``args`` (``--port 8000`` or ``--port=8000``)."""
    values = []
    for index, arg in enumerate(args):
        if arg == option and index + 1 < len(args):
            values.append(args[index + 1])
        elif arg.startswith(option + "="):
            values.append(arg.split("=", 1)[1])
    return values


def _port_error(args: list[str]) -> str | None:
    """Why ``--port`` is unusable, or None: uvicorn would otherwise announce a port outside 1-65535 and listen on
    another (the value wraps around)."""
    for value in _option_values(args, "--port"):
        try:
            port = int(value)
        except ValueError:
            return f"--port {value!r} is not a number; pass a port between 1 and 65535, e.g. --port 8000"
        if not 1 <= port <= 65535:
            return f"--port {port} is outside 1-65535; pass a port in that range, e.g. --port 8000"
    return None


# Transformers' serve flags that keep the CPU fast path off (the last of a flag and its negation wins), and why.
_FAST_PATH_OFF_WITH = {
    # torch.compile over the fast path runs slower than the fast path eagerly (docs/performance.md)
    ("--compile", "--no-compile"): "--compile (serve compiles the plain model; drop --compile for the fast path)",
    # paged attention over packed sequences: a combination the fast path's tests do not cover
    ("--continuous-batching", "--no-continuous-batching"): "--continuous-batching (not tested with the fast path)",
}

SERVE_HELP_ADDENDUM = """
olmo-hf serve adds:
  --no-fast  Serve the plain model, without olmo_hf's CPU fast path (olmo_hf.fast.optimize_for_cpu_inference).
             By default it is applied right after loading, like `olmo-hf run` does, to an olmo_hf OLMo / OLMo 2 /
             OLMo 3 model on the CPU in bfloat16 or float32, not quantized, without --compile or
             --continuous-batching: ~2.9x faster bf16 decoding of a 1B model for a
             one-off ~2 s of packing; identical outputs in float32. The line `olmo-hf serve: serving MODEL with
             olmo_hf.CLASS (CPU fast path on|off: why)` says which. See docs/cli.md."""


def fast_path_setting(args: list[str]) -> tuple[list[str], str | None]:
    """``serve`` arguments without olmo-hf's own ``--no-fast``, and why the CPU fast path stays off (None: it is
    applied wherever it can be, see :mod:`.serve_loader`)."""
    rest = [a for a in args if a != "--no-fast"]
    if len(rest) < len(args):
        return rest, "--no-fast"
    for (flag, negation), why in _FAST_PATH_OFF_WITH.items():
        given = [a for a in args if a in (flag, negation)]
        if given and given[-1] == flag:
            return rest, why
    return rest, None


def run_transformers_command(command: str, args: list[str]) -> int:
    """Run ``transformers <command> <args>`` with olmo_hf's classes active; returns the exit code."""
    help_asked = any(a in ("--help", "-h") for a in args)
    fast_path_off = None
    if command == "serve":
        args, fast_path_off = fast_path_setting(args)
    if command == "serve" and not help_asked:
        port_error = _port_error(args)
        if port_error:
            print(f"olmo-hf serve: error: {port_error}", file=sys.stderr)
            return 2
        missing = _serving_dependencies_missing()
        if missing:
            print(
                f"olmo-hf serve: error: serving needs {', '.join(missing)}; install them with "
                "pip install 'olmo_hf[serve]' (fastapi, uvicorn, openai>=1.98)",
                file=sys.stderr,
            )
            return 2
    if command == "chat":
        _allow_loopback_while_offline(args)
    import olmo_hf

    olmo_hf.register()  # AutoConfig / AutoTokenizer paths of serve, even under OLMO_HF_NO_AUTOREGISTER=1
    expose_classes()
    if command == "serve":
        from . import serve_requests
        from .serve_loader import configure_fast_path, install

        install()  # and in the process that loads the model, wherever Transformers puts it
        configure_fast_path(fast_path_off)  # for the loader Transformers creates next
        serve_requests.install()  # a bad request gets a 400 with a message before it reaches the model
    from ..compat import transformers_cli_app

    app = transformers_cli_app()
    try:
        app(args=[command, *args], prog_name="olmo-hf")
    except SystemExit as e:  # click's standalone mode always ends with SystemExit
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if code == EXIT_INTERRUPTED:  # Typer turns Ctrl-C into a silent exit 130
            print(f"olmo-hf {command}: interrupted", file=sys.stderr, flush=True)
        elif code == 0 and command == "serve" and help_asked:
            print(SERVE_HELP_ADDENDUM, flush=True)
        return code
    return 0
