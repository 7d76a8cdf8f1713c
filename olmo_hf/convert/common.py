# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Pieces shared by the per-format readers: the one import of our model classes and the `Checkpoint` every
reader returns. The error type and the checkpoint file loaders live in `olmo_hf.ai2_olmo_format` (load-time legacy
loading uses them too) and are re-exported here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..ai2_olmo_format import (  # noqa: F401 - shared with olmo_hf.legacy; re-exported for the readers
    ConversionError,
    load_safetensors_file,
    load_torch_file,
    read_json,
    rope_parameters,
)

from ..ai2_olmo_format import logger  # noqa: E402,F401 - one logger for conversion messages


@dataclass
class Checkpoint:
    """What a reader hands to `convert_checkpoint`: HF config kwargs and an HF-keyed state dict."""

    model_type: str  # "olmo" or "olmo2"
    config_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    source: str  # a short description for messages, e.g. "ai2-olmo checkpoint /ckpt/step1000"


def model_classes(model_type: str):
    """(config class, causal-LM class) for "olmo" / "olmo2" / "olmo3": the ONE place naming the model classes."""
    from olmo_hf import Olmo2Config, Olmo2ForCausalLM, Olmo3Config, Olmo3ForCausalLM, OlmoConfig, OlmoForCausalLM

    return {
        "olmo": (OlmoConfig, OlmoForCausalLM),
        "olmo2": (Olmo2Config, Olmo2ForCausalLM),
        "olmo3": (Olmo3Config, Olmo3ForCausalLM),
    }[model_type]


