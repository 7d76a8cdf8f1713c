# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""What makes ``transformers serve`` load models with olmo_hf's classes, in whichever process it loads them, and
run them through olmo_hf's CPU fast path there.

Transformers 5.25 loads a served model in a spawned process (a fresh interpreter): ``expose_classes()`` done in the
server's process does not reach it, and the built-in classes would serve silently. Transformers pickles its loader
into that process; our subclass of it is pickled by reference to this module, so the model process imports olmo_hf
and re-applies the set-up before loading. Up to 5.23 the loader runs in the server's process and this is a no-op
on top of what ``olmo_hf.cli.serve`` already did.

The CPU fast path (:func:`olmo_hf.fast.optimize_for_cpu_inference`), like ``olmo-hf run`` applies it: right after
loading, in the process that loads, for an olmo_hf model on the CPU in bfloat16 or float32 that is not quantized.
The server owns the model from loading to unloading and only generates with it, which is what makes packing it
safe. Whether to try is decided in the server's process (:func:`configure_fast_path`: ``--no-fast``, and serve flags
the fast path is not tested with) and travels to the model process as an attribute of the pickled loader.
"""

from __future__ import annotations

import sys
import threading
import weakref
from typing import Any

from ..compat import serve_model_loading_class
from .serve import expose_classes

_MODULE, _NAME = serve_model_loading_class()
_ANNOUNCED: weakref.WeakSet = weakref.WeakSet()  # models already set up (up to 5.23 the loader runs per request)
_SETUP_LOCK = threading.Lock()  # concurrent first requests (up to 5.23) must not pack a model twice
_FAST_PATH_OFF: str | None = None  # why the fast path stays off for every model (configure_fast_path), or None


def configure_fast_path(off: str | None) -> None:
    """For loaders created from now on in this process: None = apply the CPU fast path wherever it can apply (the
    default); a string = keep it off, for that reason (e.g. ``"--no-fast"``), which the serving line repeats."""
    global _FAST_PATH_OFF
    _FAST_PATH_OFF = off


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def apply_fast_path(model: Any, off: str | None = None) -> str | None:
    """Apply the CPU fast path to a freshly loaded olmo_hf ``model`` where it applies; returns None when it is on,
    else why it is off. Never raises: a model the fast path refuses is served plain (the fast path is all or
    nothing, so a failure leaves the model as it was)."""
    import torch

    from olmo_hf import fast

    if fast.is_optimized(model):
        return None
    if off is not None:
        return off
    devices = sorted({str(p.device) for p in model.parameters()})
    if devices != ["cpu"]:
        return f"the model is on {', '.join(devices)}"
    if getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_quantized", False):
        return "the model is quantized"
    if model.dtype not in (torch.bfloat16, torch.float32):
        return f"{str(model.dtype).removeprefix('torch.')} weights (it packs bfloat16 and float32)"
    try:
        fast.optimize_for_cpu_inference(model)
    except Exception as error:  # noqa: BLE001 - serving the plain model beats not serving at all
        return f"{type(error).__name__}: {_first_line(error)}"
    return None


class OlmoServeLoader(getattr(_MODULE, _NAME)):
    """Transformers' serve loader, with olmo_hf's classes active where it runs and the CPU fast path applied after
    loading; says which class serves a model and whether the fast path is on."""

    def __init__(self, *args, **kwargs):
        # An instance attribute: pickled with the loader into the model process of 5.25 (a module global is not).
        # Set first: up to 5.23 the constructor itself loads FORCE_MODEL.
        self.olmo_hf_fast_path_off = _FAST_PATH_OFF
        super().__init__(*args, **kwargs)

    def load_model_and_processor(self, *args, **kwargs):
        import olmo_hf

        olmo_hf.register()
        expose_classes()
        # In a spawned model process the loader's module can hold a second `transformers` module object (seen
        # with 5.25): the class names must be on the one it resolves them from.
        expose_classes(getattr(_MODULE, "transformers", None) or sys.modules["transformers"])
        model, processor = super().load_model_and_processor(*args, **kwargs)
        if type(model).__module__.startswith("olmo_hf"):
            with _SETUP_LOCK:  # up to 5.23: once per model, though this runs once per request
                if model not in _ANNOUNCED:
                    off = apply_fast_path(model, getattr(self, "olmo_hf_fast_path_off", None))
                    _ANNOUNCED.add(model)
                    fast = "CPU fast path on; --no-fast turns it off" if off is None else f"CPU fast path off: {off}"
                    print(f"olmo-hf serve: serving {args[0] if args else 'the model'} with "
                          f"olmo_hf.{type(model).__name__} ({fast})", file=sys.stderr, flush=True)
        return model, processor


def install() -> None:
    """Make ``transformers serve`` build :class:`OlmoServeLoader` instead of its own loader (this process)."""
    setattr(_MODULE, _NAME, OlmoServeLoader)
