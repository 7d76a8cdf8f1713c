# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""The published OLMo / OLMo 2 / OLMo 3 configurations, as their config.json files state them.

Each OLMo / OLMo 2 entry is the ``config.json`` of the Hub repository named by its key (legacy ``rope_theta`` /
``rope_scaling`` keys included, as published), with the commit it was read from. The OLMo 3 / 3.1 entries could
not be read from the original config.json files; each of their numbers cites where it comes from instead (model
cards, OLMo-core, derivative configs), and the numbers that could not be confirmed say so. Use them to build a
model of a real shape without downloading anything::

    from olmo_hf.presets import preset_config
    config = preset_config("allenai/OLMo-2-0425-1B")   # an Olmo2Config
"""

from typing import Any

from .configuration import Olmo2Config, Olmo3Config, OlmoConfig

__all__ = ["PRESETS", "preset_config", "END_OF_TURN_TOKEN", "end_of_turn_id"]

# The end-of-turn token of the <|im_start|>-style chat templates of post-trained OLMo 3 (open-instruct PRs #765,
# #1455). OLMo-core's HF exporter writes it as generation eos next to <|endoftext|> (nn/hf/checkpoint.py:185;
# shared/reference/olmo3.md §4); `olmo-hf convert` and `olmo-hf run --chat` do the same.
END_OF_TURN_TOKEN = "<|im_end|>"


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The id of :data:`END_OF_TURN_TOKEN` in ``tokenizer``, or None if its vocabulary lacks it."""
    token_id = tokenizer.convert_tokens_to_ids(END_OF_TURN_TOKEN)
    return token_id if isinstance(token_id, int) and token_id != tokenizer.unk_token_id else None

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

# OLMo 3 / 3.1. Sources, by field:
# - layers / hidden / heads / kv heads / context 65536: the model cards (huggingface.co/allenai/Olmo-3-1025-7B,
#   /Olmo-3-1125-32B, /Olmo-3.1-32B-Instruct) and OLMo-core src/scripts/official/OLMo3/README.md.
# - intermediate_size: OLMo-core TransformerConfig.olmo3_7B -> olmo2_7B -> llama2_7B (11008) and olmo2_32B
#   (hidden_size_multiplier = 27648 / (8 * d_model / 3)); matches the derivative configs
#   mlx-community/Olmo-3-7B-RLZero-Code-4bit (11008) and dphnAI/32B-fp8 (27648).
# - vocab_size 100278: OLMo-core's HF export resizes the embedding to the tokenizer (nn/hf/checkpoint.py:180;
#   TokenizerConfig.dolma2().vocab_size); rasbt LLMs-from-scratch ch05/13_olmo3 loads the real weights with it.
# - sliding_window 4096, full attention on every 4th layer: OLMo-core olmo3_* presets (SlidingWindowAttentionConfig
#   pattern [4096, 4096, 4096, -1], nn/transformer/config.py:763-1030) and the derivative configs.
# - YaRN on full-attention layers only, factor 8 from 8192 positions, beta_fast 32, beta_slow 1, attention_factor
#   0.1 * ln(8) + 1: OLMo-core OLMo-3-1025-7B-long-context.py:50 (YaRNRoPEScalingConfig) and its to_hf_config()
#   (nn/rope.py:281). Whether the original files spell the type "rope_type" or "type" is NOT confirmed (both load).
# - rms_norm_eps 1e-6, rope_theta 500000: OLMo-core (layer_norm_eps=1e-6, rope_theta=500_000) and rasbt.
# - eos 100257 / pad 100277: the derivative configs and TokenizerConfig.dolma2(). bos_token_id: 100257 in the 32B
#   derivative, absent in the 7B one; NOT confirmed for the originals, so left at None here.
_OLMO3 = dict(
    _OLMO2,
    model_type="olmo3",
    rope_scaling=dict(
        rope_type="yarn", factor=8.0, original_max_position_embeddings=8192, beta_fast=32.0, beta_slow=1.0,
        attention_factor=1.2079441541679836,
    ),
    sliding_window=4096,
    vocab_size=100278,  # the dolma2 tokenizer, unpadded (see above)
    max_position_embeddings=65536,
)
_OLMO3_7B = dict(
    _OLMO3, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32,  # MHA (model card)
)
_OLMO3_32B = dict(
    _OLMO3, hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
    num_key_value_heads=8,  # GQA (model card)
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
    # OLMo 3 / 3.1: same shape across base, Think and Instruct (model cards; sources above _OLMO3).
    **{f"allenai/{name}": dict(_OLMO3_7B) for name in (
        "Olmo-3-1025-7B", "Olmo-3-7B-Think", "Olmo-3-7B-Instruct", "Olmo-3.1-7B-RL-Zero-Math",
    )},
    **{f"allenai/{name}": dict(_OLMO3_32B) for name in (
        "Olmo-3-1125-32B", "Olmo-3-32B-Think", "Olmo-3.1-32B-Think", "Olmo-3.1-32B-Instruct",
    )},
}

_CONFIG_CLASSES = {"olmo": OlmoConfig, "olmo2": Olmo2Config, "olmo3": Olmo3Config}


def preset_config(name: str, **overrides: Any) -> OlmoConfig | Olmo2Config | Olmo3Config:
    """The config of a published checkpoint (a key of :data:`PRESETS`), with optional field overrides."""
    if name not in PRESETS:
        raise KeyError(f"Unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    raw = {**PRESETS[name], **overrides}
    return _CONFIG_CLASSES[raw.pop("model_type")](**raw)
