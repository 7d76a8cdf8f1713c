# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""The published OLMo / OLMo 2 configurations, as their config.json files state them.

Each entry is the ``config.json`` of the Hub repository named by its key (legacy ``rope_theta`` /
``rope_scaling`` keys included, as published), with the commit it was read from. Use them to build a
model of a real shape without downloading anything::

    from olmo_hf.presets import preset_config
    config = preset_config("allenai/OLMo-2-0425-1B")   # an Olmo2Config
"""

from typing import Any

from .configuration import Olmo2Config, OlmoConfig

__all__ = ["PRESETS", "preset_config"]

_OLMO_V1 = dict(
    model_type="olmo",
    attention_bias=False,
    attention_dropout=0.0,
    hidden_act="silu",
    initializer_range=0.02,
    rope_scaling=None,
    rope_theta=10000.0,
    use_cache=True,
    vocab_size=50304,  # 50280 GPT-NeoX-OLMo tokens padded to a multiple of 128
    eos_token_id=50279,
    pad_token_id=1,
)
_OLMO2 = dict(
    model_type="olmo2",
    attention_bias=False,
    attention_dropout=0.0,
    hidden_act="silu",
    initializer_range=0.02,
    rms_norm_eps=1e-06,
    rope_scaling=None,
    rope_theta=500000,
    use_cache=True,
    vocab_size=100352,  # 100278 dolma2 tokens padded to a multiple of 128
    eos_token_id=100257,
    pad_token_id=100277,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
)

PRESETS: dict[str, dict[str, Any]] = {
    # https://huggingface.co/allenai/OLMo-1B-hf/blob/main/config.json (refs/pr/6, 8e99543)
    "allenai/OLMo-1B-hf": dict(
        _OLMO_V1, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=16,
        num_key_value_heads=16, max_position_embeddings=2048, tie_word_embeddings=True, clip_qkv=None,
    ),
    # https://huggingface.co/allenai/OLMo-7B-hf/blob/main/config.json
    "allenai/OLMo-7B-hf": dict(
        _OLMO_V1, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, max_position_embeddings=2048, tie_word_embeddings=False, clip_qkv=None,
    ),
    # https://huggingface.co/allenai/OLMo-7B-0424-hf/blob/main/config.json (OLMo 1.7: clip_qkv 8.0)
    "allenai/OLMo-7B-0424-hf": dict(
        _OLMO_V1, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, max_position_embeddings=4096, tie_word_embeddings=False, clip_qkv=8.0,
    ),
    # https://huggingface.co/allenai/OLMo-2-0425-1B/blob/main/config.json
    "allenai/OLMo-2-0425-1B": dict(
        _OLMO2, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=16,
        num_key_value_heads=16,
    ),
    # https://huggingface.co/allenai/OLMo-2-1124-7B/blob/main/config.json
    "allenai/OLMo-2-1124-7B": dict(
        _OLMO2, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32,
    ),
    # https://huggingface.co/allenai/OLMo-2-1124-13B/blob/main/config.json (b7add06)
    "allenai/OLMo-2-1124-13B": dict(
        _OLMO2, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
        num_key_value_heads=40,
    ),
    # https://huggingface.co/allenai/OLMo-2-0325-32B/blob/main/config.json (03ce88b): the only GQA OLMo 2, with bos
    "allenai/OLMo-2-0325-32B": dict(
        _OLMO2, hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
        num_key_value_heads=8, bos_token_id=100257,
    ),
}


def preset_config(name: str, **overrides: Any) -> OlmoConfig | Olmo2Config:
    """The config of a published checkpoint (a key of :data:`PRESETS`), with optional field overrides."""
    if name not in PRESETS:
        raise KeyError(f"Unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    raw = {**PRESETS[name], **overrides}
    config_class = OlmoConfig if raw.pop("model_type") == "olmo" else Olmo2Config
    return config_class(**raw)
