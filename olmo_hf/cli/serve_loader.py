# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""What makes ``transformers serve`` load models with olmo_hf's classes, in whichever process it loads them.

Transformers 5.25 loads a served model in a spawned process (a fresh interpreter): ``expose_classes()`` done in the
server's process does not reach it, and the built-in classes would serve silently. Transformers pickles its loader
into that process; our subclass of it is pickled by reference to this module, so the model process imports olmo_hf
and re-applies the set-up before loading. Up to 5.23 the loader runs in the server's process and this is a no-op
on top of what ``olmo_hf.cli.serve`` already did.
"""

from __future__ import annotations

import sys
import weakref

from ..compat import serve_model_loading_class
from .serve import expose_classes

_MODULE, _NAME = serve_model_loading_class()
_ANNOUNCED: weakref.WeakSet = weakref.WeakSet()


class OlmoServeLoader(getattr(_MODULE, _NAME)):
    """Transformers' serve loader, with olmo_hf's classes active where it runs; says which class serves a model."""

    def load_model_and_processor(self, *args, **kwargs):
        import olmo_hf

        olmo_hf.register()
        expose_classes()
        # In a spawned model process the loader's module can hold a second `transformers` module object (seen
        # with 5.25): the class names must be on the one it resolves them from.
        expose_classes(getattr(_MODULE, "transformers", None) or sys.modules["transformers"])
        model, processor = super().load_model_and_processor(*args, **kwargs)
        if type(model).__module__.startswith("olmo_hf") and model not in _ANNOUNCED:  # up to 5.23: once per request
            _ANNOUNCED.add(model)
            print(f"olmo-hf serve: serving {args[0] if args else 'the model'} with olmo_hf.{type(model).__name__}",
                  file=sys.stderr, flush=True)
        return model, processor


def install() -> None:
    """Make ``transformers serve`` build :class:`OlmoServeLoader` instead of its own loader (this process)."""
    setattr(_MODULE, _NAME, OlmoServeLoader)
