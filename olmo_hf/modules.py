# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Building blocks shared by OLMo, OLMo 2 and OLMo 3: norms, rotary embeddings, SwiGLU MLP, attention.

Numerics follow the original implementations exactly (checkpoints.md §5 in the team notes):
- OLMo's LayerNorm has no parameters and runs in float32 (ai2-olmo ``layer_norm_with_affine: false``).
- OLMo 2's RMSNorm runs in float32 and multiplies by its weight *before* casting back
  (transformers #38117 / PR #38131, matching OLMo-core).
- RoPE cos/sin are float32 and the rotation is cast back to the query dtype (OLMo-core ``rope.full_precision``).

Class names end in ``LayerNorm`` / ``RMSNorm`` / ``RotaryEmbedding`` on purpose: ``PreTrainedModel._init_weights``
recognises modules by those names.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs

from .compat import attn_implementation, cache_argument
from .configuration import Olmo2Config, Olmo3Config, OlmoConfig

OLMO_LAYER_NORM_EPS = 1e-5  # hard-coded in OLMo v1 (ai2-olmo LayerNorm default; no eps field in -hf configs)


class OlmoLayerNorm(nn.Module):
    """LayerNorm with no learnable weight or bias, computed in float32 (OLMo v1)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.normalized_shape = (hidden_size,)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(hidden_states.float(), self.normalized_shape, None, None, eps=OLMO_LAYER_NORM_EPS)
        return out.to(hidden_states.dtype)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={OLMO_LAYER_NORM_EPS}, elementwise_affine=False"


class Olmo2RMSNorm(nn.Module):
    """RMSNorm with a weight, computed in float32, weight applied before the cast back (OLMo 2).

    Deliberately not ``@use_kernel_forward_from_hub("RMSNorm")``: the Hub's RMSNorm kernels (Liger) implement
    Llama's RMSNorm, which casts before multiplying by the weight. Transformers 5.25 removed the decorator from its
    own OLMo classes for that reason (``modular_olmo2.py``, "main diff with Llama").
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.float()
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return (self.weight * hidden_states).to(input_dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class OlmoMLP(nn.Module):
    """SwiGLU feed-forward: ``down(act(gate(x)) * up(x))``.

    Original checkpoints fuse ``up`` and ``gate`` into one ``ff_proj`` (up first); that is split at load time
    by ``olmo_hf.convert``, never here.
    """

    def __init__(self, config: OlmoConfig | Olmo2Config) -> None:
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        self.intermediate_size = config.intermediate_size
        self.gate_proj = nn.Linear(self.hidden_size, self.intermediate_size, bias=False)
        self.up_proj = nn.Linear(self.hidden_size, self.intermediate_size, bias=False)
        self.down_proj = nn.Linear(self.intermediate_size, self.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (batch, seq, hidden) -> (batch, seq, intermediate) -> (batch, seq, hidden)
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class OlmoRotaryEmbedding(nn.Module):
    """Rotary position embedding; every scaled rope type of Transformers (linear, dynamic, yarn, llama3, ...)
    comes from ``ROPE_INIT_FUNCTIONS``. Returns float32 ``cos, sin`` of shape (batch, seq, head_dim)."""

    inv_freq: torch.Tensor  # (head_dim / 2,)

    def __init__(self, config: OlmoConfig | Olmo2Config) -> None:
        super().__init__()
        self.config = config
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.rope_type = config.rope_parameters["rope_type"]
        rope_init_fn: Callable = self.compute_default_rope_parameters
        if self.rope_type != "default":
            rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = rope_init_fn(config)
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)
        self.original_inv_freq = nn.Buffer(inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(
        config: OlmoConfig | Olmo2Config, device=None, layer_type: str | None = None, **kwargs
    ) -> tuple[torch.Tensor, float]:
        """Plain RoPE: ``inv_freq[i] = theta ** (-2i / head_dim)``; no attention scaling. ``layer_type`` picks the
        entry of a ``rope_parameters`` nested by layer type (OLMo 3)."""
        params = config.rope_parameters if layer_type is None else config.rope_parameters[layer_type]
        base = params["rope_theta"]
        dim = config.head_dim or config.hidden_size // config.num_attention_heads
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        return inv_freq.to(device), 1.0

    @torch.no_grad()
    @dynamic_rope_update  # recomputes inv_freq for the "dynamic" / "longrope" types
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_cos_sin(x, position_ids, self.inv_freq, self.attention_scaling)


def rope_cos_sin(
    x: torch.Tensor, position_ids: torch.Tensor, inv_freq: torch.Tensor, attention_scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 ``cos, sin`` (batch, seq, head_dim) of positions (batch, seq) for ``inv_freq`` (head_dim / 2,)."""
    freqs = position_ids[..., None].float() * inv_freq.to(device=x.device, dtype=torch.float32)  # (batch, seq, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (batch, seq, head_dim)
    return emb.cos() * attention_scaling, emb.sin() * attention_scaling


class Olmo3RotaryEmbedding(nn.Module):
    """Identical to [`OlmoRotaryEmbedding`] except that it holds one RoPE per layer type (``config.layer_types``),
    each from its own entry of the nested ``config.rope_parameters``: OLMo 3 scales (YaRN) the full-attention layers
    only. ``forward`` takes the layer type. Buffers are named as in Transformers' built-in class
    (``{layer_type}_inv_freq``, non-persistent) so that ``dynamic_rope_update`` finds them per layer type."""

    compute_default_rope_parameters = staticmethod(OlmoRotaryEmbedding.compute_default_rope_parameters)

    def __init__(self, config: Olmo3Config) -> None:
        super().__init__()
        self.config = config
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.layer_types = sorted(set(config.layer_types))
        self.rope_type = {lt: config.rope_parameters[lt]["rope_type"] for lt in self.layer_types}
        for layer_type in self.layer_types:
            inv_freq, scaling = self.compute_inv_freq(layer_type)  # (head_dim / 2,)
            setattr(self, f"{layer_type}_inv_freq", nn.Buffer(inv_freq, persistent=False))
            setattr(self, f"{layer_type}_original_inv_freq", nn.Buffer(inv_freq.clone(), persistent=False))
            setattr(self, f"{layer_type}_attention_scaling", scaling)

    def compute_inv_freq(self, layer_type: str) -> tuple[torch.Tensor, float]:
        """(inv_freq, attention scaling) of one layer type, from ``ROPE_INIT_FUNCTIONS`` for scaled types."""
        rope_type = self.rope_type[layer_type]
        init_fn = self.compute_default_rope_parameters if rope_type == "default" else ROPE_INIT_FUNCTIONS[rope_type]
        return init_fn(self.config, None, layer_type=layer_type)

    @torch.no_grad()
    @dynamic_rope_update
    def forward(
        self, x: torch.Tensor, position_ids: torch.Tensor, layer_type: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = getattr(self, f"{layer_type}_inv_freq")
        return rope_cos_sin(x, position_ids, inv_freq, getattr(self, f"{layer_type}_attention_scaling"))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the last dimension (the "half" RoPE layout of GPT-NeoX and OLMo)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q (batch, heads, seq, head_dim) and k (batch, kv_heads, seq, head_dim) by float32 cos/sin
    (batch, seq, head_dim); the result keeps q's and k's dtypes.

    Not a Hub kernel (no ``use_kernel_forward_from_hub("rotary_pos_emb")``), as in Transformers 5.25's OLMo classes:
    here q and k are rotated by float32 cos/sin and cast back once, and no Hub kernel has been shown to do the same."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)  # (batch, 1, seq, head_dim)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed.to(q.dtype), k_embed.to(k.dtype)


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(batch, kv_heads, seq, head_dim) -> (batch, kv_heads * n_rep, seq, head_dim) for grouped-query attention."""
    batch, num_kv_heads, seq_len, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None].expand(batch, num_kv_heads, n_rep, seq_len, head_dim)
    return hidden_states.reshape(batch, num_kv_heads * n_rep, seq_len, head_dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention in plain PyTorch; the only backend that can return attention weights."""
    key = repeat_kv(key, module.num_key_value_groups)  # (batch, heads, kv_seq, head_dim)
    value = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling  # (batch, heads, seq, kv_seq)
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value)  # (batch, heads, seq, head_dim)
    return attn_output.transpose(1, 2).contiguous(), attn_weights  # (batch, seq, heads, head_dim)


class OlmoAttention(nn.Module):
    """Causal multi-head / grouped-query self-attention with RoPE and optional ``clip_qkv`` (OLMo v1).

    The kernel is chosen by ``config._attn_implementation`` through Transformers' attention interface
    (eager, sdpa, flex_attention, flash_attention_*, paged, hub kernels).
    """

    def __init__(self, config: OlmoConfig | Olmo2Config, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        q_size = config.num_attention_heads * self.head_dim
        kv_size = config.num_key_value_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, q_size, bias=config.attention_bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_size, bias=config.attention_bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_size, bias=config.attention_bias)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=config.attention_bias)

    def project_qkv(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(batch, seq, hidden) -> q (batch, seq, heads*head_dim), k and v (batch, seq, kv_heads*head_dim)."""
        q, k, v = self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)
        clip = getattr(self.config, "clip_qkv", None)
        if clip is not None:  # OLMo 1.7: clamp right after the projections, before RoPE
            q, k, v = q.clamp(-clip, clip), k.clamp(-clip, clip), v.clamp(-clip, clip)
        return q, k, v

    @cache_argument
    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]  # (batch, seq)
        hidden_shape = (*input_shape, -1, self.head_dim)

        q, k, v = self.project_qkv(hidden_states)
        q = q.view(hidden_shape).transpose(1, 2)  # (batch, heads, seq, head_dim)
        k = k.view(hidden_shape).transpose(1, 2)  # (batch, kv_heads, seq, head_dim)
        v = v.view(hidden_shape).transpose(1, 2)  # (batch, kv_heads, seq, head_dim)

        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (batch, kv_heads, kv_seq, head_dim)

        attn_output, attn_weights = self.attend(q, k, v, attention_mask, **kwargs)
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()  # (batch, seq, heads*head_dim)
        return self.o_proj(attn_output), attn_weights

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The configured attention kernel: (batch, heads, seq, head_dim) q and (batch, kv_heads, kv_seq, head_dim)
        k, v -> ((batch, seq, heads, head_dim) output, weights or None)."""
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            attn_implementation(self.config), eager_attention_forward
        )
        return attention_interface(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )


class Olmo2Attention(OlmoAttention):
    """Identical to [`OlmoAttention`] except:
    - queries and keys go through RMSNorms over the FULL projection width (all heads at once, before the
      reshape into heads; OLMo-core ``use_head_qk_norm: false``). ``k_norm`` is sized by the kv heads, which
      matters for GQA models such as OLMo-2-0325-32B (llama.cpp #12376);
    - no ``clip_qkv``.
    """

    def __init__(self, config: Olmo2Config, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.q_norm = Olmo2RMSNorm(config.num_attention_heads * self.head_dim, config.rms_norm_eps)
        self.k_norm = Olmo2RMSNorm(config.num_key_value_heads * self.head_dim, config.rms_norm_eps)

    def project_qkv(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q = self.q_norm(self.q_proj(hidden_states))
        k = self.k_norm(self.k_proj(hidden_states))
        return q, k, self.v_proj(hidden_states)


class Olmo3Attention(Olmo2Attention):
    """Identical to [`Olmo2Attention`] except: a layer of type ``"sliding_attention"`` attends to the last
    ``config.sliding_window`` keys, the query included (the window is passed to every attention backend, which
    flash attention turns into ``W - 1``; eager and sdpa get it through the sliding-window mask)."""

    def __init__(self, config: Olmo3Config, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.attention_type = config.layer_types[layer_idx]
        self.sliding_window = config.sliding_window if self.attention_type == "sliding_attention" else None

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # q (batch, heads, seq, head_dim), k / v (batch, kv_heads, kv_seq, head_dim): the window goes to the kernel
        return super().attend(q, k, v, attention_mask, sliding_window=self.sliding_window, **kwargs)
