# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""The forwards that optimize_for_cpu_inference installs on OlmoAttention / OlmoMLP / Olmo2RMSNorm instances
(fused projections, joint q/k norm and RoPE, native decode attention and element-wise kernels), and the key/value
cache that grows in place. Each falls back to PyTorch operators (the same arithmetic) where a native kernel does
not apply: float32, no compiled library, shapes it does not take, autograd, torch.compile."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, DynamicLayer

from ..compat import tensor_version
from ..modules import (
    Olmo2Attention,
    Olmo2RMSNorm,
    OlmoAttention,
    OlmoMLP,
    rotate_half,
)
from .native import (
    _can_use_native_attention,
    _native_attention,
    _native_elementwise_ok,
    _native_kernel,
    _native_prefill_attention,
    _native_qk_norm_rope,
    _native_rms_norm,
    _native_silu_mul,
)

_KV_ATTR = "_olmo_hf_kv"  # set on DynamicLayer instances whose storage we manage (see _append_kv)
_KV_GROW = 16  # key/value positions allocated at a time (re-allocation, and so a full copy, every 16 steps)


def _fast_mlp_forward(self: OlmoMLP, x: torch.Tensor) -> torch.Tensor:
    """``down(silu(gate(x)) * up(x))`` with gate and up as one packed matrix."""
    gate_up = self._fast_gate_up.matmul(x)  # (batch, seq, 2 * intermediate) = [gate | up]
    if _native_elementwise_ok(gate_up) and gate_up.is_contiguous() and self.intermediate_size % 16 == 0:
        return self.down_proj(_native_silu_mul(_native_kernel(), gate_up))
    gate, up = gate_up.split(self.intermediate_size, dim=-1)
    return self.down_proj(F.silu(gate).mul_(up))  # in place: the same values, one temporary less


def _float32_weight(norm: Olmo2RMSNorm) -> torch.Tensor:
    """``norm.weight`` as float32 (exactly its values: bf16 -> fp32 is exact), cached until the weight changes.
    The native kernels read it; the PyTorch fallback multiplies by it, which gives what ``weight * hidden``
    gives."""
    weight = norm.weight
    if torch.compiler.is_compiling():  # no cache in a traced graph: the conversion is one fused cast there
        return weight.float()
    cached = norm.__dict__.get("_fast_weight_f32")
    if cached is None or cached[1] is not weight or cached[2] != tensor_version(weight):
        cached = (weight.detach().float(), weight, tensor_version(weight))
        norm.__dict__["_fast_weight_f32"] = cached
    return cached[0]


def _needs_grad(*norms: Olmo2RMSNorm) -> bool:
    """Whether autograd must see these norms' weights (the native kernels are inference-only)."""
    return torch.is_grad_enabled() and any(norm.weight.requires_grad for norm in norms)


def _fast_rms_norm_forward(self: Olmo2RMSNorm, hidden_states: torch.Tensor) -> torch.Tensor:
    """Olmo2RMSNorm in one native pass (bf16), else its own forward."""
    if (
        _native_elementwise_ok(hidden_states)
        and hidden_states.shape[-1] % 16 == 0
        and hidden_states.stride(-1) == 1
        and not _needs_grad(self)
    ):
        return _native_rms_norm(_native_kernel(), hidden_states, _float32_weight(self), self.variance_epsilon)
    return Olmo2RMSNorm.forward(self, hidden_states)


def _append_kv(layer: DynamicLayer, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``DynamicLayer.update`` without re-copying the whole cache every step.

    Keys and values live in buffers with ``_KV_GROW`` spare positions; ``layer.keys`` / ``layer.values`` are
    views of their first ``seq`` positions, exactly the tensors ``DynamicLayer.update`` would hold. Positions
    already returned are never written again, so a view handed out earlier stays valid. If anything replaced
    ``layer.keys`` since our last update (crop, reorder, batch selection, reset), the buffer is rebuilt from it.
    """
    if not layer.is_initialized:
        layer.lazy_initialization(k, v)
    st = layer.__dict__.get(_KV_ATTR)
    keys, values = layer.keys, layer.values
    n, s = (keys.shape[-2] if keys.numel() else 0), k.shape[-2]
    if st is None or st[2] is not keys or st[3] is not values or n + s > st[0].shape[-2]:
        cap = (n + s + _KV_GROW + _KV_GROW - 1) // _KV_GROW * _KV_GROW
        kbuf = k.new_empty((*k.shape[:-2], cap, k.shape[-1]))
        vbuf = v.new_empty((*v.shape[:-2], cap, v.shape[-1]))
        if n:
            kbuf[..., :n, :].copy_(keys)
            vbuf[..., :n, :].copy_(values)
    else:
        kbuf, vbuf = st[0], st[1]
    kbuf[..., n : n + s, :].copy_(k)
    vbuf[..., n : n + s, :].copy_(v)
    layer.keys, layer.values = kbuf[..., : n + s, :], vbuf[..., : n + s, :]
    layer.__dict__[_KV_ATTR] = (kbuf, vbuf, layer.keys, layer.values)
    return layer.keys, layer.values


def _can_grow(cache, layer_idx: int) -> bool:
    if type(cache) is not DynamicCache or cache.offloading:
        return False
    if layer_idx >= len(cache.layers):
        return False
    return type(cache.layers[layer_idx]) is DynamicLayer


def _rms_norm_rows(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Olmo2RMSNorm's arithmetic (float32, weight applied before the cast back) over the last dimension; ``weight``
    float32."""
    xf = x.float()
    variance = xf.pow(2).mean(-1, keepdim=True)
    xf = xf * torch.rsqrt(variance + eps)
    return xf.mul_(weight).to(x.dtype)  # weight * xf, computed in place


def _normed_rotated_qk(
    self: OlmoAttention, qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, normed: bool
) -> torch.Tensor:
    """q and k, (batch, seq, q_size + k_size) straight from the projection, through the q/k norms (OLMo 2, unless
    ``normed``: already done) and RoPE: (batch, seq, heads + kv_heads, head_dim), in qk's dtype."""
    bsz, seq, _ = qk.shape
    nh, nkv, hd = self.config.num_attention_heads, self.config.num_key_value_heads, self.head_dim
    q_size = nh * hd
    needs_norm = isinstance(self, Olmo2Attention) and not normed
    same_eps = not needs_norm or self.q_norm.variance_epsilon == self.k_norm.variance_epsilon
    if _native_elementwise_ok(qk) and same_eps and not (needs_norm and _needs_grad(self.q_norm, self.k_norm)):
        wq, wk, eps = None, None, 0.0
        if needs_norm:
            wq, wk, eps = _float32_weight(self.q_norm), _float32_weight(self.k_norm), self.q_norm.variance_epsilon
        out = _native_qk_norm_rope(_native_kernel(), qk, q_size, hd, wq, wk, eps, cos, sin)
        if out is not None:
            return out
    if needs_norm:
        if nh == nkv and same_eps:  # one norm over q and k together
            weight = torch.stack([_float32_weight(self.q_norm), _float32_weight(self.k_norm)])
            qk = _rms_norm_rows(qk.reshape(bsz, seq, 2, q_size), weight, self.q_norm.variance_epsilon)
        else:
            qk = torch.cat([self.q_norm(qk[..., :q_size]), self.k_norm(qk[..., q_size:])], dim=-1)
    qk = qk.reshape(bsz, seq, nh + nkv, hd)
    # RoPE on q and k at once: exactly apply_rotary_pos_emb's float32 arithmetic, cast back to the input dtype.
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # (batch, seq, 1, head_dim)
    rotated = qk * cos
    rotated += rotate_half(qk) * sin  # in place: one float32 temporary less, the same values
    return rotated.to(qk.dtype)


def _fast_attention_forward(
    self: OlmoAttention,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor | None,
    cache=None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same contract and arithmetic as ``OlmoAttention.forward`` / ``Olmo2Attention.forward``."""
    bsz, seq = hidden_states.shape[:-1]
    nh, nkv, hd = self.config.num_attention_heads, self.config.num_key_value_heads, self.head_dim
    q_size, kv_size = nh * hd, nkv * hd

    fused = self.__dict__.get("_fast_qkv")
    if fused is not None:
        qkv = fused.matmul(hidden_states)  # (batch, seq, q_size + 2 * kv_size)
        clip = getattr(self.config, "clip_qkv", None)
        if clip is not None:
            qkv = qkv.clamp(-clip, clip)
        qk, v, normed = qkv[..., : q_size + kv_size], qkv[..., q_size + kv_size :], False
    else:
        q, k, v = self.project_qkv(hidden_states)  # q/k norms (OLMo 2) and clip_qkv (OLMo 1.7) included
        qk, normed = torch.cat([q, k], dim=-1), True

    qk = _normed_rotated_qk(self, qk, *position_embeddings, normed=normed)  # (batch, seq, heads + kv_heads, hd)
    q = qk[:, :, :nh].transpose(1, 2)  # (batch, heads, seq, head_dim)
    k = qk[:, :, nh:].transpose(1, 2)  # (batch, kv_heads, seq, head_dim)
    v = v.reshape(bsz, seq, nkv, hd).transpose(1, 2)  # (batch, kv_heads, seq, head_dim)

    if cache is not None:
        if self.__dict__.get("_fast_grow_kv") and _can_grow(cache, self.layer_idx):
            k, v = _append_kv(cache.layers[self.layer_idx], k, v)
        else:
            k, v = cache.update(k, v, self.layer_idx)

    if _can_use_native_attention(self, q, k, v, attention_mask, kwargs):
        # One decoding step: sdpa's flash kernel spends ~0.3 ms (batch 1) to 3 ms (batch 8) per layer on what
        # the native kernel does in 0.04 / 0.4 ms (same math, fp32 softmax and accumulation); a 128-token prompt:
        # 1.1 ms against ~0.2 ms. The check above holds only once the library is loaded, so _native_kernel() just
        # returns it.
        kernel = _native_attention if q.shape[2] == 1 else _native_prefill_attention
        attn_output, attn_weights = kernel(_native_kernel(), q, k, v, self.scaling), None
    else:
        attn_output, attn_weights = self.attend(q, k, v, attention_mask, **kwargs)
    attn_output = attn_output.reshape(bsz, seq, -1)
    return self.o_proj(attn_output), attn_weights
