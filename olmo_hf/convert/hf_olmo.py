# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Legacy ``hf_olmo`` repos (allenai/OLMo-1B, OLMo-7B, OLMo-7B-Twin-2T, OLMo-1.7-7B, DataDecide).

``config.json`` holds raw ai2-olmo ``ModelConfig`` fields with ``"model_type": "hf_olmo"`` (``"olmo"`` before
allenai/OLMo PR #631), ``"architectures": ["OLMoForCausalLM"]`` and an ``auto_map``; the weights hold ai2-olmo
keys under ``model.transformer.*`` (checkpoints.md §2). The two pure functions below are what
`olmo_hf.registration` can reuse to load such a repo directly.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .common import Checkpoint, ConversionError, load_safetensors_file, load_torch_file, read_json
from .layouts import convert_state_dict
from .olmo_trainer import MODEL_CONFIG_DEFAULTS, model_config_to_hf, strip_prefix

HF_OLMO_PREFIX = "model.transformer."


def is_hf_olmo_config(raw: dict) -> bool:
    """hf_olmo configs carry ModelConfig fields (``d_model``, ``n_layers``) instead of HF ones."""
    return raw.get("model_type") in ("hf_olmo", "olmo") and "d_model" in raw and "n_layers" in raw


def hf_olmo_config_to_kwargs(raw: dict) -> tuple[str, dict]:
    """A legacy hf_olmo ``config.json`` dict -> ``("olmo" | "olmo2", Olmo/Olmo2Config kwargs)``.

    Unsupported options raise `ConversionError` with one sentence each; for the GPT-NeoX vocabulary an
    ``eos_token_id`` of 0 becomes 50279 with a warning (checkpoints.md §3).
    """
    if not is_hf_olmo_config(raw):
        raise ConversionError(
            f"not an hf_olmo config (model_type {raw.get('model_type')!r}, no d_model/n_layers fields)."
        )
    fields = {k: v for k, v in raw.items() if k in MODEL_CONFIG_DEFAULTS}
    return model_config_to_hf(fields, where="hf_olmo config.json")


def convert_hf_olmo_state_dict(sd: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """``model.transformer.*`` tensors -> Olmo/Olmo2 HF keys.

    ``config`` is the HF kwargs dict from `hf_olmo_config_to_kwargs` or a config object with the same
    attributes. The keys of a tied model contain no ``lm_head.weight``.
    """
    if not isinstance(config, dict):
        config = {
            k: getattr(config, k, None)
            for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
                      "tie_word_embeddings")
        }
    sd = strip_prefix(sd, HF_OLMO_PREFIX, "the hf_olmo weights")
    return convert_state_dict("olmo_trainer", sd, config, desc="hf_olmo -> HF")


def load_hf_olmo_weights(src: Path) -> dict[str, torch.Tensor]:
    """pytorch_model.bin / model.safetensors, or their sharded ``*.index.json`` forms."""
    src = Path(src)
    for single, index, loader in [
        ("model.safetensors", "model.safetensors.index.json", load_safetensors_file),
        ("pytorch_model.bin", "pytorch_model.bin.index.json", load_torch_file),
    ]:
        if (src / single).is_file():
            return loader(src / single)
        if (src / index).is_file():
            weight_map = read_json(src / index).get("weight_map") or {}
            sd: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                sd.update(loader(src / shard))
            return sd
    raise ConversionError(f"{src} has no pytorch_model.bin or model.safetensors (nor a sharded index).")


def read(src: Path, dtype=None) -> Checkpoint:
    src = Path(src)
    model_type, kwargs = hf_olmo_config_to_kwargs(read_json(src / "config.json"))
    sd = strip_prefix(load_hf_olmo_weights(src), HF_OLMO_PREFIX, f"the weights in {src}")
    hf_sd = convert_state_dict("olmo_trainer", sd, kwargs, dtype=dtype, desc="hf_olmo -> HF")
    return Checkpoint(model_type, kwargs, hf_sd, source=f"hf_olmo checkpoint {src}")
