# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""The ai2-olmo checkpoint format, shared by load-time legacy loading (`olmo_hf.legacy`) and conversion
(`olmo_hf.convert`): what ai2-olmo's ``ModelConfig`` fields mean in Transformers' terms, and how ``hf_olmo``
repos (allenai/OLMo-1B, OLMo-7B, OLMo-1.7-7B, DataDecide) store them.

- the original trainer writes ``config.yaml`` (a ``model:`` section holding a ``ModelConfig``) + ``model.pt`` with
  ``transformer.*`` keys;
- ``hf_olmo`` repos store the same ``ModelConfig`` fields in ``config.json`` (``"model_type": "hf_olmo"``, or
  ``"olmo"`` before allenai/OLMo PR #631) and the same weights under ``model.transformer.*``
  (shared/reference/checkpoints.md §2).

The weight-key table itself is ``olmo_hf.layouts.OLMO_TRAINER_LAYOUT``. Nothing here imports the model classes or
the conversion package.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from .layouts import ConversionError, convert_state_dict

logger = logging.getLogger("olmo_hf.convert")

__all__ = [
    "ConversionError",
    "MODEL_CONFIG_DEFAULTS",
    "HF_OLMO_PREFIX",
    "model_config_to_hf",
    "strip_prefix",
    "is_hf_olmo_config",
    "hf_olmo_config_to_kwargs",
    "convert_hf_olmo_state_dict",
    "load_hf_olmo_weights",
    "load_torch_file",
    "load_safetensors_file",
    "read_json",
    "rope_parameters",
]


# ------------------------------------------------------------------------------------------------ files
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
    """A JSON object from ``path``; a missing, truncated or corrupt file is one ConversionError naming it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConversionError(f"{path} does not exist.") from e
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path} is not valid JSON, it may be truncated ({e}).") from e
    except UnicodeDecodeError as e:
        raise ConversionError(f"{path} is not UTF-8 text, it may be corrupt (byte {e.start}).") from e
    if not isinstance(data, dict):
        raise ConversionError(f"{path} holds a JSON {type(data).__name__}, not an object; it may be corrupt.")
    return data


def rope_parameters(theta: float) -> dict:
    return {"rope_type": "default", "rope_theta": float(theta)}


# ------------------------------------------------------------------------------------------- ModelConfig
# ai2-olmo 0.6.0 `olmo.config.ModelConfig` defaults: a field absent from a config means this value.
MODEL_CONFIG_DEFAULTS: dict[str, Any] = {
    "d_model": 768,
    "n_heads": 12,
    "n_kv_heads": None,
    "clip_qkv": None,
    "n_layers": 12,
    "mlp_ratio": 4,
    "mlp_hidden_size": None,
    "activation_type": "swiglu",
    "block_type": "sequential",
    "block_group_size": 1,
    "alibi": False,
    "rope": False,
    "rope_full_precision": True,
    "rope_theta": 10_000,
    "multi_query_attention": None,
    "attention_layer_norm": False,
    "embedding_layer_norm": False,
    "layer_norm_type": "default",
    "layer_norm_with_affine": True,
    "layer_norm_eps": 1e-05,
    "attention_layer_norm_with_affine": True,
    "max_sequence_length": 1024,
    "include_bias": True,
    "bias_for_layer_norm": None,
    "scale_logits": False,
    "vocab_size": 50257,
    "embedding_size": 50304,
    "weight_tying": True,
    "eos_token_id": 50256,
    "pad_token_id": 50256,
    "init_std": 0.02,
    "norm_after": False,
}

GPT_NEOX_OLMO_VOCAB = 50280  # allenai_gpt-neox-olmo-dolma-v1_5 / ...-pii-special (checkpoints.md §3)
GPT_NEOX_OLMO_EOS = 50279


ENUM_FIELDS = ("activation_type", "block_type", "layer_norm_type", "init_fn")


def _enum_value(key: str, v):
    """Configs hold enum values ("swiglu"); tolerate a str(enum) such as "ActivationType.swiglu" too."""
    return v.rsplit(".", 1)[-1] if key in ENUM_FIELDS and isinstance(v, str) else v


def effective_n_kv_heads(c: dict) -> int:
    """``n_kv_heads``, else 1 with ``multi_query_attention``, else ``n_heads`` (hf_olmo's rule)."""
    if c.get("n_kv_heads") is not None:
        if c.get("multi_query_attention") and c["n_kv_heads"] != 1:
            raise ConversionError("multi_query_attention and n_kv_heads disagree in the config.")
        return int(c["n_kv_heads"])
    return 1 if c.get("multi_query_attention") else int(c["n_heads"])


def model_config_to_hf(raw: dict, *, where: str = "the model config") -> tuple[str, dict]:
    """An ai2-olmo ``ModelConfig`` dict -> ``("olmo" | "olmo2", HF config kwargs)``.

    Rejects, one sentence each, what Transformers' Olmo / Olmo2 cannot express
    (shared/reference/checkpoints.md §2). Every HF field that matters is written explicitly.
    """
    c = {**MODEL_CONFIG_DEFAULTS, **{k: _enum_value(k, v) for k, v in raw.items()}}

    def reject(msg: str):
        raise ConversionError(f"{where}: {msg}")

    if c["activation_type"] != "swiglu":
        reject(f"activation_type {c['activation_type']!r} is not supported; OLMo and OLMo 2 use a SwiGLU MLP.")
    if c["alibi"]:
        reject("alibi is not supported; OLMo and OLMo 2 use rotary position embeddings.")
    if not c["rope"]:
        reject("rope: false is not supported; OLMo and OLMo 2 use rotary position embeddings.")
    if c["block_type"] != "sequential":
        reject(f"block_type {c['block_type']!r} is not supported; only 'sequential' blocks map to Transformers.")
    if (c["block_group_size"] or 1) > 1:
        reject("block_group_size > 1 is not supported; its transformer.block_groups.* keys have no HF layout.")
    if c["include_bias"]:
        reject("include_bias: true is not supported; the Transformers classes have no linear-layer biases.")
    if c["embedding_layer_norm"]:
        reject("embedding_layer_norm is not supported; Transformers' Olmo has no norm after the embedding.")
    if c["scale_logits"]:
        reject("scale_logits is not supported; Transformers' Olmo does not scale the logits.")
    ln_bias = c["bias_for_layer_norm"] if c["bias_for_layer_norm"] is not None else c["include_bias"]
    eps = 1e-5 if c["layer_norm_eps"] is None else float(c["layer_norm_eps"])

    olmo2 = bool(c["norm_after"])
    if olmo2:
        if c["layer_norm_type"] != "rms" or not c["layer_norm_with_affine"]:
            reject("an OLMo 2 (norm_after) model needs layer_norm_type 'rms' with layer_norm_with_affine: true.")
        if not c["attention_layer_norm"] or not c["attention_layer_norm_with_affine"]:
            reject("an OLMo 2 (norm_after) model needs attention_layer_norm (qk-norm) with affine weights.")
        if ln_bias:
            reject("layer-norm biases are not supported; Transformers' Olmo2 RMSNorm has a weight only.")
        if c["clip_qkv"] is not None:
            reject("clip_qkv is not supported for OLMo 2; Transformers' Olmo2 uses qk-norm instead of clipping.")
    else:
        if c["layer_norm_type"] not in ("default", "low_precision"):
            # low_precision computes the same LayerNorm in the autocast dtype; HF uses fp32, as in fp32 training.
            reject(f"layer_norm_type {c['layer_norm_type']!r} is not supported for OLMo v1 (pre-norm); use 'default'.")
        if c["layer_norm_with_affine"]:
            reject("an affine LayerNorm is not supported for OLMo v1; Transformers' Olmo LayerNorm has no weights.")
        if c["attention_layer_norm"]:
            reject("qk-norm (attention_layer_norm) is not supported for OLMo v1 (norm_after: false).")
        if not math.isclose(eps, 1e-5):
            reject(f"layer_norm_eps {eps} is not supported for OLMo v1; Transformers' Olmo hard-codes 1e-5.")

    d, heads = int(c["d_model"]), int(c["n_heads"])
    if d % heads:
        reject(f"d_model {d} is not a multiple of n_heads {heads}.")
    mlp_hidden = int(c["mlp_hidden_size"] or c["mlp_ratio"] * d)  # fused up+gate rows
    if mlp_hidden % 2:
        reject(f"the MLP hidden size {mlp_hidden} is odd; it must hold equal up and gate halves.")
    vocab = int(c["embedding_size"] or c["vocab_size"])  # the padded row count
    eos, pad = c["eos_token_id"], c["pad_token_id"]
    if eos == 0 and c["vocab_size"] == GPT_NEOX_OLMO_VOCAB:
        logger.warning(
            "%s: eos_token_id 0 is the GPT-NeoX pii-special tokenizer's id; writing %d (<|endoftext|> in "
            "allenai_gpt-neox-olmo-dolma-v1_5), as AllenAI's own converters do.", where, GPT_NEOX_OLMO_EOS
        )
        eos = GPT_NEOX_OLMO_EOS

    kwargs = dict(
        vocab_size=vocab,
        hidden_size=d,
        intermediate_size=mlp_hidden // 2,
        num_hidden_layers=int(c["n_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=effective_n_kv_heads(c),
        hidden_act="silu",
        max_position_embeddings=int(c["max_sequence_length"]),
        initializer_range=float(c["init_std"] or 0.02),
        use_cache=True,
        pad_token_id=pad,
        bos_token_id=None,  # no OLMo / OLMo 2 trainer checkpoint uses a BOS token
        eos_token_id=eos,
        tie_word_embeddings=bool(c["weight_tying"]),
        rope_parameters=rope_parameters(c["rope_theta"]),
        attention_bias=False,
        attention_dropout=0.0,
    )
    if olmo2:
        kwargs["rms_norm_eps"] = eps
        return "olmo2", kwargs
    kwargs["clip_qkv"] = None if c["clip_qkv"] is None else float(c["clip_qkv"])
    return "olmo", kwargs


def strip_prefix(state_dict: dict, prefix: str, what: str) -> dict:
    """Drop ``prefix`` from every key; all keys must have it.

    An unsharded or re-saved checkpoint may carry a wrapper in front (``model.``, ``_fsdp_wrapped_module.``);
    as in hf_olmo's own converter, one common prefix ending in ``prefix`` is accepted too.
    """
    if not state_dict:
        raise ConversionError(f"{what} holds no tensors.")
    found = {k[: k.find(prefix) + len(prefix)] if prefix in k else None for k in state_dict}
    if len(found) == 1 and None not in found:
        prefix = found.pop()
    bad = [k for k in state_dict if not k.startswith(prefix)]
    if bad:
        raise ConversionError(f"{what} has key {bad[0]!r} outside the expected {prefix!r} prefix.")
    return {k[len(prefix) :]: v for k, v in state_dict.items()}


# ------------------------------------------------------------------------------------------- hf_olmo repos
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
