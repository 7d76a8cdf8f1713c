# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""olmo_hf: AllenAI's OLMo, OLMo 2 and OLMo 3 language models, implemented for Hugging Face Transformers 5.

``import olmo_hf`` registers our classes for the "olmo", "olmo2", "olmo3" (and "olmo_1124") model types, so the usual
Transformers API uses them::

    import olmo_hf
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained("allenai/OLMo-2-0425-1B")  # -> olmo_hf.Olmo2ForCausalLM

See ``olmo_hf.registration`` for how to opt out or restore Transformers' built-in classes.
"""

from .configuration import Olmo2Config, Olmo3Config, OlmoConfig
from .modeling import (
    Olmo2ForCausalLM,
    Olmo2ForSequenceClassification,
    Olmo2Model,
    Olmo2PreTrainedModel,
    Olmo3ForCausalLM,
    Olmo3ForSequenceClassification,
    Olmo3Model,
    Olmo3PreTrainedModel,
    OlmoForCausalLM,
    OlmoForSequenceClassification,
    OlmoModel,
    OlmoPreTrainedModel,
)
from .quantization import quantization_config, save_quantized
from .registration import _autoregister_enabled, is_registered, register, restore_builtin
from .release_guard import UnsupportedTransformersError, check_release

__version__ = "0.1.0"

__all__ = [
    "OlmoConfig",
    "Olmo2Config",
    "Olmo3Config",
    "OlmoModel",
    "OlmoForCausalLM",
    "OlmoForSequenceClassification",
    "Olmo2Model",
    "Olmo2ForCausalLM",
    "Olmo2ForSequenceClassification",
    "Olmo3Model",
    "Olmo3ForCausalLM",
    "Olmo3ForSequenceClassification",
    "OlmoPreTrainedModel",
    "Olmo2PreTrainedModel",
    "Olmo3PreTrainedModel",
    "register",
    "restore_builtin",
    "is_registered",
    "quantization_config",
    "save_quantized",
    "UnsupportedTransformersError",
]

check_release()  # on a Transformers release newer than the newest tested only (olmo_hf.release_guard)

if _autoregister_enabled():
    register()
