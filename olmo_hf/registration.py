# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Claiming the "olmo" / "olmo2" / "olmo3" model types in Transformers' Auto classes.

``import olmo_hf`` calls :func:`register`, so that ``AutoConfig``, ``AutoModel``, ``AutoModelForCausalLM`` and
``AutoModelForSequenceClassification`` (and with them ``pipeline()``) build OUR classes for every checkpoint
whose config.json says ``"model_type": "olmo"``, ``"olmo2"``, ``"olmo3"``, the pre-release ``"olmo_1124"`` or the legacy
``"hf_olmo"`` of ai2-olmo (loaded without ai2-olmo, see ``olmo_hf.legacy``).

This deliberately takes over model types that Transformers also implements (two packages claiming one model type
silently is what broke hf_olmo, allenai/OLMo PR #631). It is reversible:

- ``olmo_hf.restore_builtin()`` puts Transformers' own classes back for the rest of the process;
- ``OLMO_HF_NO_AUTOREGISTER=1`` in the environment makes ``import olmo_hf`` register nothing; call
  ``olmo_hf.register()`` yourself when you want our classes.

Our classes never leave a trace in saved checkpoints: config.json keeps the plain model type and
architecture names, so a directory we save loads in plain Transformers (into its built-in classes).
"""

import os

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from .compat import auto_config_extra_content, auto_model_extra_content
from .configuration import Olmo2Config, Olmo3Config, OlmoConfig
from .legacy import HfOlmoConfig
from .modeling import (
    Olmo2ForCausalLM,
    Olmo2ForSequenceClassification,
    Olmo2Model,
    Olmo3ForCausalLM,
    Olmo3ForSequenceClassification,
    Olmo3Model,
    OlmoForCausalLM,
    OlmoForSequenceClassification,
    OlmoModel,
)

__all__ = ["register", "restore_builtin", "is_registered", "MODEL_TYPE_ALIASES"]

# Stale model types found in published checkpoints, read as the type they were renamed to.
MODEL_TYPE_ALIASES = {
    "olmo_1124": Olmo2Config,  # allenai/OLMo-7B-1024-preview; renamed "olmo2" by transformers PR #34551
    "hf_olmo": HfOlmoConfig,  # allenai/OLMo-1B, OLMo-7B, ... (ai2-olmo's hf_olmo); translated to ours on load
}

_CONFIGS = {"olmo": OlmoConfig, "olmo2": Olmo2Config, "olmo3": Olmo3Config}
_MODELS = {
    AutoModel: {OlmoConfig: OlmoModel, Olmo2Config: Olmo2Model, Olmo3Config: Olmo3Model},
    AutoModelForCausalLM: {OlmoConfig: OlmoForCausalLM, Olmo2Config: Olmo2ForCausalLM, Olmo3Config: Olmo3ForCausalLM},
    AutoModelForSequenceClassification: {
        OlmoConfig: OlmoForSequenceClassification,
        Olmo2Config: Olmo2ForSequenceClassification,
        Olmo3Config: Olmo3ForSequenceClassification,
    },
}


def register() -> None:
    """Make Transformers' Auto classes (and so ``pipeline()``) use olmo_hf's classes. Idempotent."""
    for model_type, config_class in _CONFIGS.items():
        AutoConfig.register(model_type, config_class, exist_ok=True)
    for alias, config_class in MODEL_TYPE_ALIASES.items():
        # Bypasses AutoConfig.register's check that the class's own model_type equals the key: an alias
        # loads into the real class and is saved back under the current name.
        auto_config_extra_content()[alias] = config_class
    for auto_class, mapping in _MODELS.items():
        for config_class, model_class in mapping.items():
            auto_class.register(config_class, model_class, exist_ok=True)


def restore_builtin() -> None:
    """Undo :func:`register`: the Auto classes build Transformers' built-in OLMo classes again."""
    for key in [*_CONFIGS, *MODEL_TYPE_ALIASES]:
        auto_config_extra_content().pop(key, None)
    for auto_class, mapping in _MODELS.items():
        for config_class in mapping:
            auto_model_extra_content(auto_class).pop(config_class, None)


def is_registered() -> bool:
    """Whether ``AutoConfig`` currently resolves "olmo2" to olmo_hf's config class."""
    return auto_config_extra_content().get("olmo2") is Olmo2Config


def _autoregister_enabled() -> bool:
    return os.environ.get("OLMO_HF_NO_AUTOREGISTER", "").strip().lower() not in {"1", "true", "yes"}
