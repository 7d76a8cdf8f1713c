"""Synthetic ai2-olmo trainer checkpoints (``config.yaml`` + ``model.pt``), shared by the conversion tests.

Random tensors in the original key layout (OLMo-core / ai2-olmo ``transformer.blocks.N.*``, fused ``att_proj`` and
``ff_proj``), written with torch and PyYAML only, so they need no reference venv.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

D, HEADS, LAYERS, MLP, VOCAB = 16, 4, 2, 64, 128  # MLP = fused up+gate rows

AI2_OLMO1 = dict(
    d_model=D, n_heads=HEADS, n_layers=LAYERS, mlp_hidden_size=MLP, vocab_size=100, embedding_size=VOCAB,
    activation_type="swiglu", block_type="sequential", rope=True, alibi=False, include_bias=False,
    layer_norm_type="default", layer_norm_with_affine=False, attention_layer_norm=False, layer_norm_eps=1e-5,
    weight_tying=False, max_sequence_length=64, eos_token_id=99, pad_token_id=98,
)
AI2_OLMO2 = dict(
    AI2_OLMO1, norm_after=True, layer_norm_type="rms", layer_norm_with_affine=True, attention_layer_norm=True,
    attention_layer_norm_with_affine=True, layer_norm_eps=1e-6, rope_theta=500000,
)


def ai2_olmo_state_dict(d=D, layers=LAYERS, mlp=MLP, vocab=VOCAB, olmo2=False, tied=False, std=1.0):
    """Weights of an ai2-olmo model: normal(0, std) matrices, unit norm weights (OLMo 2)."""
    g = torch.Generator().manual_seed(0)
    sd = {"transformer.wte.weight": std * torch.randn(vocab, d, generator=g)}
    for i in range(layers):
        b = f"transformer.blocks.{i}."
        sd[b + "att_proj.weight"] = std * torch.randn(3 * d, d, generator=g)
        sd[b + "attn_out.weight"] = std * torch.randn(d, d, generator=g)
        sd[b + "ff_proj.weight"] = std * torch.randn(mlp, d, generator=g)
        sd[b + "ff_out.weight"] = std * torch.randn(d, mlp // 2, generator=g)
        if olmo2:
            for norm in ("attn_norm", "ff_norm", "q_norm", "k_norm"):
                sd[b + f"{norm}.weight"] = torch.ones(d)
    if olmo2:
        sd["transformer.ln_f.weight"] = torch.ones(d)
    if not tied:
        sd["transformer.ff_out.weight"] = std * torch.randn(vocab, d, generator=g)
    return sd


def write_ai2_olmo(path: Path, model_cfg=AI2_OLMO1, state_dict=None) -> Path:
    """A trainer step directory at ``path``: ``config.yaml`` (``model: model_cfg``) and ``model.pt``."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"model": dict(model_cfg)}))
    olmo2 = bool(model_cfg.get("norm_after"))
    torch.save(state_dict if state_dict is not None else ai2_olmo_state_dict(olmo2=olmo2), path / "model.pt")
    return path
