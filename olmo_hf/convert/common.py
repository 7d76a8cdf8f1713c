# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Pieces shared by the per-format readers: the error type, the one import of our model classes,
checkpoint file loading and the `Checkpoint` every reader returns."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("olmo_hf.convert")


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message says why in one sentence."""


@dataclass
class Checkpoint:
    """What a reader hands to `convert_checkpoint`: HF config kwargs and an HF-keyed state dict."""

    model_type: str  # "olmo" or "olmo2"
    config_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    source: str  # a short description for messages, e.g. "ai2-olmo checkpoint /ckpt/step1000"


def model_classes(model_type: str):
    """(config class, causal-LM class) for "olmo" / "olmo2": the ONE place naming the model classes."""
    from olmo_hf import Olmo2Config, Olmo2ForCausalLM, OlmoConfig, OlmoForCausalLM

    return {"olmo": (OlmoConfig, OlmoForCausalLM), "olmo2": (Olmo2Config, Olmo2ForCausalLM)}[model_type]


def load_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """torch.load a state-dict file (tensors only), turning truncation or corruption into one clear error."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path} does not exist.")
    try:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):  # the legacy (non-zip) format cannot be memory-mapped
                raise
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise ConversionError(
            f"{path} could not be read as a PyTorch checkpoint; it may be truncated or corrupt "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})."
        ) from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConversionError(f"{path} does not hold a flat state dict of tensors.")
    return sd


def load_safetensors_file(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001
        raise ConversionError(f"{path} could not be read as safetensors; it may be truncated or corrupt ({e}).") from e


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise ConversionError(f"{path} does not exist.") from e
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path} is not valid JSON ({e}).") from e


def rope_parameters(theta: float) -> dict:
    return {"rope_type": "default", "rope_theta": float(theta)}
