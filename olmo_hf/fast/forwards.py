# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""The forwards that optimize_for_cpu_inference installs on OlmoAttention / OlmoMLP / Olmo2RMSNorm instances
(fused projections, joint q/k norm and RoPE, native decode attention and element-wise kernels), and the key/value
cache that grows in place. Each falls back to PyTorch operators (the same arithmetic) where a native kernel does
not apply: float32, no compiled library, shapes it does not take, autograd, torch.compile."""

from __future__ import annotations

import ctypes
import weakref

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, DynamicLayer

from ..compat import attn_implementation, has_forward_hooks, tensor_version
from ..modeling import Olmo2DecoderLayer
from ..modules import (
    Olmo2Attention,
    Olmo2RMSNorm,
    OlmoAttention,
    OlmoMLP,
    rotate_half,
)
from . import native as native_module
from .native import (
    LayerDesc,
    MatrixDesc,
    _can_use_native_attention,
    _native_attention,
    _native_elementwise_ok,
    _native_kernel,
    _native_prefill_attention,
    _native_qk_norm_rope,
    _native_rms_norm,
    _native_silu_mul,
)
from .packing import _Packed

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


def _reserve_kv(layer: DynamicLayer, template: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(key buffer, value buffer, n): ``layer``'s buffers with room for ``s`` positions after its first ``n``,
    re-allocated (and the ``n`` positions copied in) when they are not ours any more or too short; ``template``
    (batch, kv_heads, *, head_dim) gives a new buffer's shape."""
    st = layer.__dict__.get(_KV_ATTR)
    keys, values = layer.keys, layer.values
    n = keys.shape[-2] if keys.numel() else 0
    if st is not None and st[2] is keys and st[3] is values and n + s <= st[0].shape[-2]:
        return st[0], st[1], n
    cap = (n + s + _KV_GROW + _KV_GROW - 1) // _KV_GROW * _KV_GROW
    kbuf = template.new_empty((*template.shape[:-2], cap, template.shape[-1]))
    vbuf = template.new_empty((*template.shape[:-2], cap, template.shape[-1]))
    if n:
        kbuf[..., :n, :].copy_(keys)
        vbuf[..., :n, :].copy_(values)
    return kbuf, vbuf, n


def _commit_kv(layer: DynamicLayer, kbuf: torch.Tensor, vbuf: torch.Tensor, end: int) -> None:
    """Make ``layer.keys`` / ``layer.values`` the first ``end`` positions of the buffers."""
    layer.keys, layer.values = kbuf[..., :end, :], vbuf[..., :end, :]
    layer.__dict__[_KV_ATTR] = (kbuf, vbuf, layer.keys, layer.values)


def _append_kv(layer: DynamicLayer, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``DynamicLayer.update`` without re-copying the whole cache every step.

    Keys and values live in buffers with ``_KV_GROW`` spare positions; ``layer.keys`` / ``layer.values`` are
    views of their first ``seq`` positions, exactly the tensors ``DynamicLayer.update`` would hold. Positions
    already returned are never written again, so a view handed out earlier stays valid. If anything replaced
    ``layer.keys`` since our last update (crop, reorder, batch selection, reset), the buffer is rebuilt from it.
    """
    if not layer.is_initialized:
        layer.lazy_initialization(k, v)
    s = k.shape[-2]
    kbuf, vbuf, n = _reserve_kv(layer, k, s)
    kbuf[..., n : n + s, :].copy_(k)
    vbuf[..., n : n + s, :].copy_(v)
    _commit_kv(layer, kbuf, vbuf, n + s)
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


# ------------------------------------------------------------------------------------- one call per decoder layer
def _matrix_desc(packed, rows: int, plan, native) -> MatrixDesc | None:
    """kernels.c's view of a packed matrix for a product of ``rows`` rows: what its own ``matmul`` would run (the
    bf16, int4 or int8 matrix-vector kernel), or None where that would be anything else (the module path runs
    then)."""
    if packed is None or packed.dtype != torch.bfloat16:
        return None
    tensor = getattr(packed, "tensor", None)
    if tensor is not None and type(packed) is _Packed:  # bf16, plain rows (as _Packed.matmul with _native_matmul)
        if rows > plan.gemv_max_rows or tensor.stride(-1) != 1:
            return None
        amx = int(0 < plan.gemv_amx_from_rows <= rows and native.amx)
        return MatrixDesc(0, amx, tensor.data_ptr(), tensor.stride(0), None, None, 0, *tensor.shape)
    if hasattr(packed, "asymmetric") and packed.blocks is not None:  # int4, blocked (_native_int4_blocked_matmul)
        if not 0 < rows <= plan.int4_gemv_max_rows:
            return None
        return MatrixDesc(6 if packed.asymmetric else 5, 0, packed.blocks.data_ptr(), packed.blocks.stride(0), None,
                          None, packed.group, packed.out_features, packed.in_features)
    nibbles = getattr(packed, "packed", None)
    if nibbles is not None and hasattr(packed, "group"):  # int4 (_Int4Packed.matmul with _native_int4_matmul)
        if not 0 < rows <= plan.int4_gemv_max_rows:
            return None
        offset = None if packed.offset is None else packed.offset.data_ptr()
        return MatrixDesc(2, 0, nibbles.data_ptr(), nibbles.stride(0), packed.scale.data_ptr(), offset, packed.group,
                          packed.out_features, packed.in_features)
    blocks = getattr(packed, "blocks", None)
    if blocks is not None:  # group-wise int8 in the blocked layout (_Int8Packed.matmul with _native_int8_blocked_matmul)
        if not 0 < rows <= plan.int8_grouped_gemv_max_rows:
            return None
        return MatrixDesc(4, 0, blocks.data_ptr(), blocks.stride(0), None, None, packed.group, packed.out_features,
                          packed.in_features)
    qdata = getattr(packed, "qdata", None)
    if qdata is not None:  # int8 (_Int8Packed.matmul): group-wise, or one scale per row
        group = getattr(packed, "group", 0)
        if not 0 < rows <= (plan.int8_grouped_gemv_max_rows if group else plan.int8_gemv_max_rows):
            return None
        return MatrixDesc(3 if group else 1, 0, qdata.data_ptr(), qdata.stride(0), packed.scale.data_ptr(), None,
                          group, *qdata.shape)
    return None


# layer -> ((rows, plan), LayerDesc or None). Outside the module (a weak key): a deepcopy of the model must not
# carry descriptors that point at the original's weights.
_LAYER_DESCS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _layer_desc(layer: Olmo2DecoderLayer, rows: int, plan, native) -> LayerDesc | None:
    """The layer's LayerDesc for ``rows`` rows under ``plan`` (built once per layer, row count and plan), or None
    when one of its four products would not run a native matrix-vector kernel."""
    key = (rows, plan)
    cached = _LAYER_DESCS.get(layer)
    if cached is not None and cached[0][0] == rows and cached[0][1] is plan:
        return cached[1]
    attn, mlp = layer.self_attn, layer.mlp
    single = [getattr(m, "_packed", None) if getattr(m, "_rows", 0) is None and m.bias is None else None
              for m in (attn.o_proj, mlp.down_proj)]
    mats = [_matrix_desc(p, rows, plan, native)
            for p in (attn.__dict__.get("_fast_qkv"), single[0], mlp.__dict__.get("_fast_gate_up"), single[1])]
    desc = None
    cfg = attn.config
    shapes_ok = (  # what the element-wise and attention kernels take (their Python wrappers fall back otherwise)
        attn.head_dim % 32 == 0 and attn.head_dim <= 512 and mlp.intermediate_size % 16 == 0
        and cfg.hidden_size % 16 == 0 and cfg.num_attention_heads % cfg.num_key_value_heads == 0
    )
    if shapes_ok and all(m is not None for m in mats) and attn.q_norm.variance_epsilon == attn.k_norm.variance_epsilon:
        desc = LayerDesc(*mats, cfg.num_attention_heads, cfg.num_key_value_heads, attn.head_dim, mats[1].N,
                         mlp.intermediate_size, None, None, attn.q_norm.variance_epsilon, None, None,
                         layer.post_attention_layernorm.variance_epsilon, attn.scaling)
    _LAYER_DESCS[layer] = (key, desc)
    return desc


def _hooked(layer: Olmo2DecoderLayer) -> bool:
    """Whether hooks watch a module the one-call step would not call (then the per-module path runs)."""
    attn, mlp = layer.self_attn, layer.mlp
    return has_forward_hooks((attn, attn.o_proj, attn.q_norm, attn.k_norm, mlp, mlp.down_proj,
                              layer.post_attention_layernorm, layer.post_feedforward_layernorm))


def _fused_decode_step(layer: Olmo2DecoderLayer, x: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """One decoding step of the layer in one native call (kernels.c ``olmo_hf_decode_layer``: the same kernels as
    the per-module forwards, in the same order), or None where the per-module path must run: anything but 1..8
    unpadded sequences at one new position each, with sdpa, the native decode attention and element-wise kernels
    on, a plain DynamicCache, bf16 / int8 / int4 products on the matrix-vector kernels, and no hooks."""
    plan = native_module._PLAN
    if args or plan is None or not (plan.decode_attention and plan.elementwise):
        return None
    if kwargs.get("attention_mask") is not None or kwargs.get("output_attentions"):
        return None
    if (type(x) is not torch.Tensor or x.dtype != torch.bfloat16 or x.dim() != 3 or x.shape[1] != 1
            or not 0 < x.shape[0] <= native_module._NATIVE_MAX_ROWS or not x.is_contiguous()
            or x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad)
            or torch.compiler.is_compiling()):
        return None
    attn = layer.self_attn
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is None or not attn.__dict__.get("_fast_grow_kv") or not _can_grow(cache, attn.layer_idx):
        return None
    if attn.training or attn_implementation(attn.config) != "sdpa" or getattr(attn.config, "clip_qkv", None) is not None:
        return None
    cache_layer = cache.layers[attn.layer_idx]
    keys = cache_layer.keys if cache_layer.is_initialized else None
    if keys is None or keys.numel() == 0 or keys.shape[0] != x.shape[0] or keys.dtype != torch.bfloat16:
        return None
    window = getattr(attn, "sliding_window", None)
    if window is not None and keys.shape[-2] + 1 > window:
        return None
    cos, sin = kwargs.get("position_embeddings") or (None, None)
    bsz = x.shape[0]
    if (cos is None or cos.dtype != torch.float32 or cos.shape != sin.shape or cos.stride() != sin.stride()
            or cos.shape[0] not in (1, bsz) or cos.shape[1] != 1 or cos.shape[-1] != attn.head_dim
            or cos.stride(-1) != 1 or _hooked(layer) or _needs_grad(attn.q_norm, attn.k_norm)):
        return None
    native = _native_kernel()
    desc = _layer_desc(layer, bsz, plan, native)
    if desc is None:
        return None
    desc.wq = _float32_weight(attn.q_norm).data_ptr()
    desc.wk = _float32_weight(attn.k_norm).data_ptr()
    desc.w_attn_norm = _float32_weight(layer.post_attention_layernorm).data_ptr()
    desc.w_ff_norm = _float32_weight(layer.post_feedforward_layernorm).data_ptr()
    kbuf, vbuf, n = _reserve_kv(cache_layer, keys, 1)
    out = torch.empty_like(x)
    status = native.decode_layer(
        ctypes.byref(desc), x.data_ptr(), bsz, cos.data_ptr(), sin.data_ptr(),
        cos.stride(0) if cos.shape[0] == bsz and bsz > 1 else 0, kbuf.data_ptr(), kbuf.stride(0), kbuf.stride(1),
        vbuf.data_ptr(), vbuf.stride(0), vbuf.stride(1), n, out.data_ptr(), torch.get_num_threads())
    if status != 0:
        raise RuntimeError(f"olmo_hf native decoder-layer step failed (status {status})")
    _commit_kv(cache_layer, kbuf, vbuf, n + 1)
    return out


def _fast_decoder_layer_forward(self: Olmo2DecoderLayer, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Olmo2DecoderLayer.forward (OLMo 3's too): a decoding step in one native call where it applies
    (:func:`_fused_decode_step`), the per-module forwards otherwise."""
    out = _fused_decode_step(self, hidden_states, args, kwargs)
    return out if out is not None else type(self).forward(self, hidden_states, *args, **kwargs)
