# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Original checkpoint key layouts <-> Transformers Olmo / Olmo2 keys.

One table per source layout (shared/reference/checkpoints.md §4). Each row is
``(source key regex, target key template(s), transform)``; ``{L}`` in a target is the layer index.
Every source key must match exactly one row, and nothing else is guessed: a key no row knows is an
error, not something to drop.

The reverse direction (HF -> original, used by `olmo_hf.convert.to_olmo_core`) is not a second table:
`inverse_layout` derives it from the same rows, and only a layout whose every row is a one-to-one
`copy` has one (OLMo-core; the ai2-olmo layout fuses q/k/v and up/gate).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm




class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message says why in one sentence."""


PROGRESS_MIN_TENSORS = 100  # show a progress bar only for checkpoints with at least this many tensors


@dataclass(frozen=True)
class Dims:
    """The sizes a transform needs to split fused weights, read from the HF config kwargs."""

    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int

    @classmethod
    def from_kwargs(cls, kw: dict) -> "Dims":
        heads = kw["num_attention_heads"]
        return cls(
            hidden_size=kw["hidden_size"],
            num_attention_heads=heads,
            num_key_value_heads=kw.get("num_key_value_heads") or heads,
            head_dim=kw.get("head_dim") or kw["hidden_size"] // heads,
            intermediate_size=kw["intermediate_size"],
        )


Transform = Callable[[str, torch.Tensor, Dims], tuple[torch.Tensor, ...]]


def copy(key: str, w: torch.Tensor, dims: Dims) -> tuple[torch.Tensor, ...]:
    return (w,)


def split_qkv(key: str, w: torch.Tensor, dims: Dims) -> tuple[torch.Tensor, ...]:
    """ai2-olmo's fused ``att_proj``: rows [q (heads*hd) | k (kv*hd) | v (kv*hd)]."""
    sizes = [dims.num_attention_heads * dims.head_dim] + [dims.num_key_value_heads * dims.head_dim] * 2
    if w.ndim != 2 or w.shape[0] != sum(sizes):
        raise ConversionError(
            f"{key} has shape {tuple(w.shape)} but the config implies {sum(sizes)} fused q/k/v rows "
            f"({dims.num_attention_heads} heads + 2 x {dims.num_key_value_heads} kv heads, head_dim {dims.head_dim})."
        )
    return tuple(torch.split(w, sizes, dim=0))


def chunk_up_gate(key: str, w: torch.Tensor, dims: Dims) -> tuple[torch.Tensor, ...]:
    """ai2-olmo's fused ``ff_proj``: rows [up | gate], UP FIRST (OLMo's SwiGLU: ``x, gate = x.chunk(2)``)."""
    if w.ndim != 2 or w.shape[0] != 2 * dims.intermediate_size:
        raise ConversionError(
            f"{key} has shape {tuple(w.shape)} but the config implies {2 * dims.intermediate_size} fused "
            f"up/gate rows (2 x intermediate_size {dims.intermediate_size})."
        )
    up, gate = torch.chunk(w, 2, dim=0)
    return up, gate


_LAYER = "model.layers.{L}."

# ai2-olmo (the old trainer), keys without the "transformer." prefix. The v1 LayerNorm has no
# weights, so only OLMo 2 checkpoints carry the *_norm / ln_f rows.
OLMO_TRAINER_LAYOUT: list[tuple[str, tuple[str, ...], Transform]] = [
    (r"wte\.weight", ("model.embed_tokens.weight",), copy),
    (
        r"blocks\.(\d+)\.att_proj\.weight",
        (_LAYER + "self_attn.q_proj.weight", _LAYER + "self_attn.k_proj.weight", _LAYER + "self_attn.v_proj.weight"),
        split_qkv,
    ),
    (r"blocks\.(\d+)\.attn_out\.weight", (_LAYER + "self_attn.o_proj.weight",), copy),
    (
        r"blocks\.(\d+)\.ff_proj\.weight",
        (_LAYER + "mlp.up_proj.weight", _LAYER + "mlp.gate_proj.weight"),  # UP FIRST
        chunk_up_gate,
    ),
    (r"blocks\.(\d+)\.ff_out\.weight", (_LAYER + "mlp.down_proj.weight",), copy),
    (r"blocks\.(\d+)\.q_norm\.weight", (_LAYER + "self_attn.q_norm.weight",), copy),
    (r"blocks\.(\d+)\.k_norm\.weight", (_LAYER + "self_attn.k_norm.weight",), copy),
    (r"blocks\.(\d+)\.attn_norm\.weight", (_LAYER + "post_attention_layernorm.weight",), copy),
    (r"blocks\.(\d+)\.ff_norm\.weight", (_LAYER + "post_feedforward_layernorm.weight",), copy),
    (r"ln_f\.weight", ("model.norm.weight",), copy),
    (r"ff_out\.weight", ("lm_head.weight",), copy),  # untied only; tied models have no key
]

# OLMo-core (ai2-olmo-core 3.x). attention_norm / feed_forward_norm sit on the sublayer OUTPUTS in
# the reordered_norm (OLMo 2) block, which is exactly where HF Olmo2 puts these two norms.
OLMO_CORE_LAYOUT: list[tuple[str, tuple[str, ...], Transform]] = [
    (r"embeddings\.weight", ("model.embed_tokens.weight",), copy),
    (r"blocks\.(\d+)\.attention\.w_q\.weight", (_LAYER + "self_attn.q_proj.weight",), copy),
    (r"blocks\.(\d+)\.attention\.w_k\.weight", (_LAYER + "self_attn.k_proj.weight",), copy),
    (r"blocks\.(\d+)\.attention\.w_v\.weight", (_LAYER + "self_attn.v_proj.weight",), copy),
    (r"blocks\.(\d+)\.attention\.w_out\.weight", (_LAYER + "self_attn.o_proj.weight",), copy),
    (r"blocks\.(\d+)\.attention\.q_norm\.weight", (_LAYER + "self_attn.q_norm.weight",), copy),
    (r"blocks\.(\d+)\.attention\.k_norm\.weight", (_LAYER + "self_attn.k_norm.weight",), copy),
    (r"blocks\.(\d+)\.attention_norm\.weight", (_LAYER + "post_attention_layernorm.weight",), copy),
    (r"blocks\.(\d+)\.feed_forward_norm\.weight", (_LAYER + "post_feedforward_layernorm.weight",), copy),
    (r"blocks\.(\d+)\.feed_forward\.w1\.weight", (_LAYER + "mlp.gate_proj.weight",), copy),  # w2(silu(w1 x) * w3 x)
    (r"blocks\.(\d+)\.feed_forward\.w3\.weight", (_LAYER + "mlp.up_proj.weight",), copy),
    (r"blocks\.(\d+)\.feed_forward\.w2\.weight", (_LAYER + "mlp.down_proj.weight",), copy),
    (r"lm_head\.norm\.weight", ("model.norm.weight",), copy),
    (r"lm_head\.w_out\.weight", ("lm_head.weight",), copy),
]

LAYOUTS = {"olmo_trainer": OLMO_TRAINER_LAYOUT, "olmo_core": OLMO_CORE_LAYOUT}


def _compile(rows) -> list[tuple[re.Pattern, tuple[str, ...], Transform]]:
    return [(re.compile(pattern), targets, fn) for pattern, targets, fn in rows]


def _map_keys(table, state_dict, dims: Dims, dtype, desc: str, what: str) -> dict[str, torch.Tensor]:
    """Apply a compiled table to every key of ``state_dict``; a key no row matches is an error."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    keys = list(state_dict)
    for key in tqdm(keys, desc=desc, unit="tensor", disable=True if len(keys) < PROGRESS_MIN_TENSORS else None):
        w = state_dict[key]
        for regex, targets, fn in table:
            m = regex.fullmatch(key)
            if m is None:
                continue
            pieces = fn(key, w, dims)
            for target, piece in zip(targets, pieces):
                name = target.format(L=m.group(1)) if "{L}" in target else target
                out[name] = piece.to(dtype) if dtype is not None else piece
            break
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise ConversionError(f"{what} has {len(unknown)} key(s) that olmo_hf cannot map: {shown}.")
    return out


def convert_state_dict(
    layout: str,
    state_dict: dict[str, torch.Tensor],
    config_kwargs: dict,
    *,
    dtype: torch.dtype | None = None,
    desc: str = "converting",
) -> dict[str, torch.Tensor]:
    """Map a prefix-free original state dict to HF keys with the named layout table.

    Raises `ConversionError` for a key no row of the table knows, for a fused weight whose size
    disagrees with the config, and for a tied model whose separate output weight differs from the
    embedding. Missing keys and other shape mismatches are left to ``load_state_dict(strict=True)``.
    """
    dims = Dims.from_kwargs(config_kwargs)
    out = _map_keys(_compile(LAYOUTS[layout]), state_dict, dims, dtype, desc, "the checkpoint")
    if config_kwargs.get("tie_word_embeddings"):
        lm_head = out.pop("lm_head.weight", None)  # OLMo-core stores the shared tensor under both names
        embed = out.get("model.embed_tokens.weight")
        if lm_head is not None and embed is not None and not torch.equal(lm_head, embed):
            raise ConversionError(
                "the config ties the input and output embeddings but the checkpoint's output weight differs "
                "from its embedding."
            )
    return out


# ---------------------------------------------------------------------------------------------------
# HF -> original, derived from the tables above

_LAYER_GROUP = r"(\d+)"


def _source_template(pattern: str) -> str:
    r"""The key a row's source regex matches, ``{L}`` for its layer group: ``blocks\.(\d+)\.x`` -> ``blocks.{L}.x``."""
    template = pattern.replace(_LAYER_GROUP, "{L}").replace(r"\.", ".")
    if re.search(r"[\\()\[\]*+?|^$]", template):
        raise ValueError(f"layout row {pattern!r} is not a plain key pattern; it has no inverse.")
    return template


def _target_regex(template: str) -> str:
    r"""``model.layers.{L}.x`` -> ``model\.layers\.(\d+)\.x``."""
    if not re.fullmatch(r"[A-Za-z0-9_.]*(\{L\}[A-Za-z0-9_.]*)?", template):
        raise ValueError(f"target template {template!r} is not a plain key; it has no inverse.")
    return template.replace(".", r"\.").replace("{L}", _LAYER_GROUP)


def inverse_layout(layout: str) -> list[tuple[str, tuple[str, ...], Transform]]:
    """The HF -> original table of ``layout``, row for row (same order, same keys).

    Only layouts whose rows all `copy` one tensor to one key are invertible; for the others (the ai2-olmo
    layout fuses q/k/v and up/gate) this raises `ConversionError`.
    """
    rows = []
    for pattern, targets, fn in LAYOUTS[layout]:
        if fn is not copy or len(targets) != 1:
            raise ConversionError(
                f"the {layout} layout fuses weights ({pattern} -> {', '.join(targets)}); olmo_hf writes no "
                "checkpoints in that layout."
            )
        rows.append((_target_regex(targets[0]), (_source_template(pattern),), copy))
    return rows


def convert_state_dict_to_original(
    layout: str,
    state_dict: dict[str, torch.Tensor],
    config_kwargs: dict,
    *,
    dtype: torch.dtype | None = None,
    desc: str = "converting",
) -> dict[str, torch.Tensor]:
    """Map an HF (Olmo / Olmo2) state dict to the keys of ``layout`` with `inverse_layout`.

    For a tied model ``lm_head.weight`` is dropped (it must equal the embedding); the caller decides
    whether its format stores the shared tensor under a second name. A key no row knows is an error.
    """
    sd = dict(state_dict)
    if config_kwargs.get("tie_word_embeddings"):
        lm_head, embed = sd.pop("lm_head.weight", None), sd.get("model.embed_tokens.weight")
        if lm_head is not None and embed is not None and not torch.equal(lm_head, embed):
            raise ConversionError(
                "the config ties the input and output embeddings but lm_head.weight differs from them."
            )
    return _map_keys(
        _compile(inverse_layout(layout)), sd, Dims.from_kwargs(config_kwargs), dtype, desc, "the Transformers model"
    )
