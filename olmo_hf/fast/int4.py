# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""The fast path for int4 weight-only models (torchao ``IntxWeightOnlyConfig(weight_dtype=torch.int4,
granularity=PerGroup(G))``: what ``olmo_hf.quantization.quantization_config("int4", device="cpu")`` returns)::

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16,
                                                 quantization_config=quantization_config("int4", device="cpu"))
    olmo_hf.fast.optimize_for_cpu_inference(model)   # int4 linears -> Int4PackedLinear, two values per byte

torchao keeps such a weight as an ``IntxUnpackedToInt8Tensor``: ``qdata`` (out, in) int8 holding one value in
-8..7 per byte (no smaller than int8), ``scale`` (out, in / G) and ``zero_point`` (out, in / G, int8; all zero for
the default symmetric mapping), weight = scale * (qdata - zero_point). The fast path repacks it into OUR layout
(``_Int4Packed``) and frees torchao's bytes:

- ``packed``: (out, Kp / 2) uint8, Kp = in_features rounded up to 64. Each row is cut into chunks of 64 values
  stored in 32 bytes: byte i of a chunk holds u = q + 8 (0..15) of value i in its low nibble and of value i + 32 in
  its high nibble (so one widening of 32 bytes gives both halves of a chunk, in order). Values past in_features
  hold u = 8 (zero).
- ``scale``: (out, in / G) bf16, torchao's scales (the same tensor values).
- ``offset``: (out, in / G) int8, 8 + zero_point, or None when every zero point is 0 (symmetric: 8).

Where the native kernels run and the CPU has AVX512-VNNI, groups of 32, 64 or 128 are packed into the blocked
layout instead (``_Int4Packed.blocks``: scales, offsets and values in one array, one 32-bit lane per group; see
``pack_int4_blocked``), which ``olmo_hf_gemv_int4_blocked`` reads.

The weight is ``scale[n, g] * (u[n, k] - offset[n, g])``. Cost per weight (bits): 4 + 16 / G for the scales
(+ 8 / G for the offsets when asymmetric): 4.5 at G = 32, 4.25 at G = 64 (4.375 asymmetric, the default of
``quantization_config("int4", device="cpu")``), 4.125 at G = 128, against llama.cpp's Q4_0: 4.5 (group 32, fp16
scales). Decoding (1..8 rows) runs ``olmo_hf_gemv_int4`` (``kernels.c``): where the CPU has AVX512-VNNI, x
rounded to int8 per group and the nibbles multiplied as they lie (vpdpbusd, as llama.cpp multiplies Q4_0 by Q8
activations); elsewhere x rounded to int16 and the nibbles widened to int16 in registers; fp32 accumulation.
Larger products (prefill) widen the weight to bf16 into a reused per-thread buffer with torchao's own arithmetic
(``bf16((u - offset) * scale)``: bit for bit what torchao's ``dequantize`` gives) and run ``F.linear`` on it, so
prefill logits are those of the unoptimised torchao model. q/k/v and gate/up are fused into one matrix each, like
the bf16 and int8 paths.

``state_dict()`` / ``save_pretrained`` write what the unoptimised torchao model writes (``weight`` is an
``IntxUnpackedToInt8Tensor`` rebuilt from the nibbles: the same values, dtypes and metadata), and
:func:`olmo_hf.fast.undo` gives the original tensors their data back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import native
from .native import (_can_use_native_gemm, _native_gemm, _native_int4_blocked_matmul, _native_int4_blocked_to_bf16,
                     _native_int4_matmul, _native_int4_to_bf16)
from .packing import refuse_gradients_and_export
from .quantized import QuantizedPackedLinear, _scratch, native_plan_for, pack_quantized_group

__all__ = ["Int4PackedLinear", "is_int4_weight_only", "pack_nibbles", "unpack_nibbles", "widen_reference"]

_CHUNK = 64  # values per 32-byte chunk of the nibble layout (kernels.c: I4_CHUNK)


def _intx_tensor_class():
    try:
        from torchao.quantization import IntxUnpackedToInt8Tensor
    except ImportError:  # torchao missing or too old: no int4 weights to take
        return None
    return IntxUnpackedToInt8Tensor


def _group_size(weight) -> int | None:
    block = list(getattr(weight, "block_size", ()))
    if len(block) != 2 or block[0] != 1:
        return None
    return int(block[1])


def is_int4_weight_only(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.Linear`` with a torchao int4 weight-only, per-group ``IntxUnpackedToInt8Tensor``
    weight on CPU (bf16 model and scales, group size 32 or a multiple of 64, int8 zero points): the layers the
    fast path takes."""
    cls = _intx_tensor_class()
    weight = getattr(module, "weight", None)
    if cls is None or type(module) is not nn.Linear or not isinstance(weight, cls):
        return False
    qdata, scale, zero_point = weight.qdata, weight.scale, weight.zero_point
    group = _group_size(weight)
    return (
        weight.target_dtype == torch.int4
        and qdata.dim() == 2
        and qdata.dtype == torch.int8
        and qdata.device.type == "cpu"
        and group is not None
        and (group == 32 or group % _CHUNK == 0)
        and qdata.shape[1] % group == 0
        and weight.activation_quantization is None  # weight-only
        and zero_point.dtype == torch.int8
        and scale.dtype == torch.bfloat16  # bf16 models: the scales are kept as they are
        and weight.dtype == torch.bfloat16
    )


# ----------------------------------------------------------------------------------------------- the layout
def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """int4 values ``q`` (out, in) int8 in -8..7 -> the nibble layout (out, Kp / 2) uint8 (see the module doc)."""
    n, k = q.shape
    kp = -(-k // _CHUNK) * _CHUNK
    u = torch.full((n, kp), 8, dtype=torch.uint8)
    u[:, :k] = q + 8  # -8..7 -> 0..15
    u = u.view(n, kp // _CHUNK, 2, _CHUNK // 2)
    return torch.bitwise_or(u[:, :, 0], u[:, :, 1] << 4).view(n, kp // 2)


def unpack_nibbles(packed: torch.Tensor, k: int) -> torch.Tensor:
    """The int4 values (out, k) int8 in -8..7 of a nibble-layout matrix (the inverse of :func:`pack_nibbles`)."""
    n = packed.shape[0]
    p = packed.reshape(n, -1, 1, _CHUNK // 2)
    u = torch.cat([p & 15, p >> 4], dim=2).view(n, -1)[:, :k]
    return u.to(torch.int8) - 8


def widen_reference(packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, k: int, group: int,
                    dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """The dequantized (out, k) weight in PyTorch operators: ``((u - offset) * scale).to(dtype)`` in float32, which
    is torchao's arithmetic (q - zero_point is exact in bf16; the product of a small integer and a bf16 scale is
    exact in float32, so the one rounding is the same)."""
    n = packed.shape[0]
    u = (unpack_nibbles(packed, k) + 8).view(n, k // group, group).float()
    u -= 8.0 if offset is None else offset.float()[..., None]
    return (u * scale.float()[..., None]).to(dtype).view(n, k)


# The blocked layout (kernels.c: olmo_hf_gemv_int4_blocked, where the CPU has AVX512-VNNI): per row, its bf16 scales,
# then (asymmetric) its int8 offsets, padded to 64 bytes; then its values u = q + 8 in blocks of 16 groups: chunk c
# of a block holds, for each group g, values 8c..8c+3 in the low nibbles and 8c+4..8c+7 in the high nibbles of
# bytes 4g..4g+3 (one 32-bit lane per group); padded to 64 bytes. The same bytes per weight as the nibble layout
# with its scales and offsets beside it (plus the padding to a line at the end of each row's header and values).
BLOCKED_GROUPS = (32, 64, 128)


def blocked_header_bytes(groups: int, asymmetric: bool) -> int:
    return ((3 if asymmetric else 2) * groups + 63) // 64 * 64


def blocked_row_bytes(k: int, group: int, asymmetric: bool) -> int:
    return blocked_header_bytes(k // group, asymmetric) + (k // 2 + 63) // 64 * 64


def pack_int4_blocked(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, group: int) -> torch.Tensor:
    """int4 values ``q`` (out, in) int8 in -8..7, their bf16 ``scale`` and int8 ``offset`` (or None: 8) per group
    -> the blocked layout, (out, blocked_row_bytes) uint8."""
    n, k = q.shape
    ng = k // group
    hdr = blocked_header_bytes(ng, offset is not None)
    out = torch.zeros(n, blocked_row_bytes(k, group, offset is not None), dtype=torch.uint8)
    out[:, : 2 * ng] = scale.contiguous().view(torch.uint8)
    if offset is not None:
        out[:, 2 * ng: 3 * ng] = offset.contiguous().view(torch.uint8)
    u = (q + 8).to(torch.uint8).view(n, ng, group // 8, 2, 4)  # (row, group, chunk, low / high half, byte)
    words = (u[:, :, :, 0] | (u[:, :, :, 1] << 4)).contiguous().view(torch.int32).view(n, ng, group // 8)
    full, h = ng // 16 * 16, ng % 16
    body = out[:, hdr: hdr + k // 2].view(torch.int32)  # (n, k / 8) words
    if full:  # (row, block, group in block, chunk) -> (row, block, chunk, group in block)
        body[:, : full * group // 8] = words[:, :full].view(n, -1, 16, group // 8).transpose(2, 3).reshape(n, -1)
    if h:
        body[:, full * group // 8:] = words[:, full:].transpose(1, 2).reshape(n, -1)
    return out


def unpack_int4_blocked(blocks: torch.Tensor, k: int, group: int, asymmetric: bool
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The blocked layout -> (q (out, k) int8 in -8..7, scale bf16, offset int8 or None): the inverse of
    :func:`pack_int4_blocked`."""
    n, ng = blocks.shape[0], k // group
    hdr = blocked_header_bytes(ng, asymmetric)
    scale = blocks[:, : 2 * ng].contiguous().view(torch.bfloat16)
    offset = blocks[:, 2 * ng: 3 * ng].contiguous().view(torch.int8) if asymmetric else None
    body = blocks[:, hdr: hdr + k // 2].contiguous().view(torch.int32)
    full, h = ng // 16 * 16, ng % 16
    words = torch.empty(n, ng, group // 8, dtype=torch.int32)
    if full:
        words[:, :full] = body[:, : full * group // 8].view(n, -1, group // 8, 16).transpose(2, 3).reshape(n, full, -1)
    if h:
        words[:, full:] = body[:, full * group // 8:].view(n, group // 8, h).transpose(1, 2)
    b = words.view(torch.uint8).view(n, ng, group // 8, 1, 4)
    u = torch.cat([b & 15, b >> 4], dim=3).view(n, k)
    return u.to(torch.int8) - 8, scale, offset


# ----------------------------------------------------------------------------------------------- packed weight
class _Int4Packed:
    """One int4 weight-only matrix of the fast path, shared by the Int4PackedLinear(s) that read it: in the nibble
    layout (see the module doc: ``packed``, ``scale``, ``offset``), or, where the native kernels take it
    (:func:`blocked_layout_for`), in the blocked layout (``blocks``, scales and offsets inside, ``asymmetric``: whether
    it has offsets; ``packed``, ``scale`` and ``offset`` are None then). ``members`` keeps, for each member, what
    rebuilds its torchao tensor: (flatten metadata, rows, scale dtype, zero_point dtype)."""

    __slots__ = ("packed", "scale", "offset", "blocks", "asymmetric", "group", "dtype", "out_features", "in_features",
                 "members", "__weakref__")

    def __init__(self, packed: torch.Tensor | None, scale: torch.Tensor | None, offset: torch.Tensor | None,
                 in_features: int, group: int, dtype: torch.dtype, members: list,
                 blocks: torch.Tensor | None = None, asymmetric: bool = False) -> None:
        self.packed = None if packed is None else packed.contiguous()  # (out_features, Kp / 2) uint8
        self.scale = None if scale is None else scale.contiguous()  # (out_features, in_features / group) bf16
        self.offset = None if offset is None else offset.contiguous()  # same shape, int8 (8 + zero point); None: 8
        self.blocks = blocks  # (out_features, blocked row bytes) uint8, or None
        self.asymmetric = asymmetric if blocks is not None else offset is not None
        self.in_features, self.group, self.dtype = in_features, group, dtype
        self.out_features = (packed if blocks is None else blocks).shape[0]
        self.members = members

    def values(self, lo: int = 0, hi: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Rows lo..hi as (int4 values (rows, in) int8 in -8..7, bf16 scales, int8 offsets or None)."""
        hi = self.out_features if hi is None else hi
        if self.blocks is not None:
            return unpack_int4_blocked(self.blocks[lo:hi], self.in_features, self.group, self.asymmetric)
        offset = None if self.offset is None else self.offset[lo:hi]
        return unpack_nibbles(self.packed[lo:hi], self.in_features), self.scale[lo:hi], offset

    def member_weight(self, index: int):
        """Member ``index``'s torchao ``IntxUnpackedToInt8Tensor``, rebuilt from its rows."""
        meta, (lo, hi), scale_dtype, zp_dtype = self.members[index]
        q, scale, offset = self.values(lo, hi)
        inner = {
            "qdata": q,
            "scale": scale.to(scale_dtype),
            "zero_point": (torch.zeros(scale.shape, dtype=zp_dtype) if offset is None else (offset - 8).to(zp_dtype)),
        }
        return _intx_tensor_class().__tensor_unflatten__(inner, meta, None, None)

    def restore_member(self, weight, index: int) -> None:
        """Give member ``index``'s original tensor ``weight`` (emptied when packing) its data back."""
        rebuilt = self.member_weight(index)
        weight.qdata, weight.scale, weight.zero_point = rebuilt.qdata, rebuilt.scale, rebuilt.zero_point

    def nbytes(self) -> int:
        """Resident bytes of the packed weight (nibbles, scales, offsets)."""
        if self.blocks is not None:
            return self.blocks.numel()
        extra = 0 if self.offset is None else self.offset.numel()
        return self.packed.numel() + self.scale.numel() * 2 + extra

    def dense(self) -> torch.Tensor:
        """The weight in the model's dtype, dequantized as torchao does."""
        q, scale, offset = self.values()
        return widen_reference(pack_nibbles(q), scale, offset, self.in_features, self.group, self.dtype)

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ dequantized(W).T (+ bias)`` over the last dimension of ``x`` (inference only: no autograd)."""
        refuse_gradients_and_export(x, bias)
        plan = native_plan_for(x) if self.dtype == torch.bfloat16 else None
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        blocks, k, group = self.blocks, self.in_features, self.group
        if plan is not None and 0 < rows <= plan.int4_gemv_max_rows:
            out = (_native_int4_matmul(x, self.packed, self.scale, self.offset, k, group) if blocks is None
                   else _native_int4_blocked_matmul(x, blocks, self.asymmetric, k, group))
            return out if bias is None else out + bias
        if plan is not None and plan.int4_gemm_amx and _can_use_native_gemm(x, k):
            out = (_native_gemm(x, self.packed, self.scale, int4=(self.offset, k, group)) if blocks is None
                   else _native_gemm(x, blocks, None, int4_blocked=(k, group, self.asymmetric)))
            return out if bias is None else out + bias  # prefill on AMX tiles, widening per band in L2
        if plan is not None and plan.int4_convert:  # torchao's arithmetic, the widening native
            buffer = _scratch(self.out_features * k)
            weight = (_native_int4_to_bf16(self.packed, self.scale, self.offset, k, group, out=buffer)
                      if blocks is None else _native_int4_blocked_to_bf16(blocks, self.asymmetric, k, group, out=buffer))
            return F.linear(x, weight, bias)
        return F.linear(x, self.dense(), bias)

    def __getstate__(self):  # copy.deepcopy / pickle
        return {name: getattr(self, name) for name in ("packed", "scale", "offset", "in_features", "group", "dtype",
                                                       "members", "blocks", "asymmetric")}

    def __setstate__(self, state):
        self.__init__(state["packed"], state["scale"], state["offset"], state["in_features"], state["group"],
                      state["dtype"], state["members"], state.get("blocks"), state.get("asymmetric", False))


def blocked_layout_for(group: int) -> bool:
    """Whether int4 in groups of ``group`` is packed into the blocked layout: where this process's kernel plan runs
    the native int4 product and the library has the blocked kernel (the AVX512 variant on a CPU with AVX512-VNNI),
    for groups of 32, 64 or 128."""
    if group not in BLOCKED_GROUPS:
        return False
    plan = native.kernel_plan()
    lib = native._native_kernel() if plan.isa else None
    return bool(lib is not None and lib.int4_blocked and plan.int4_gemv_max_rows)


class Int4PackedLinear(QuantizedPackedLinear):
    """:class:`QuantizedPackedLinear` over an int4 weight-only matrix in the nibble layout (``_Int4Packed``);
    ``weight`` is a torchao ``IntxUnpackedToInt8Tensor`` rebuilt from its rows."""

    kind = "int4"


# ----------------------------------------------------------------------------------------------- packing
def pack_int4(state, parent: nn.Module, names: list[str], on_done=None) -> None:
    """Replace ``parent``'s int4 linears ``names`` by Int4PackedLinears over one nibble matrix (fused when several),
    recording each original in ``state.replaced`` (consecutively, as undo() expects). torchao's one-value-per-byte
    data of every member is released (undo and state_dict rebuild it from the nibbles)."""
    linears = [getattr(parent, n) for n in names]
    weights = [lin.weight for lin in linears]
    with torch.no_grad():
        asymmetric = any(bool(w.zero_point.any()) for w in weights)
        group, k = _group_size(weights[0]), weights[0].qdata.shape[1]
        scale = torch.cat([w.scale for w in weights])  # bf16
        offset = torch.cat([8 + w.zero_point for w in weights]) if asymmetric else None  # int8: 0..15
        members, row = [], 0
        for w in weights:
            _, meta = w.__tensor_flatten__()
            members.append((meta, (row, row + w.qdata.shape[0]), w.scale.dtype, w.zero_point.dtype))
            row += w.qdata.shape[0]
        if blocked_layout_for(group):
            q = torch.cat([w.qdata for w in weights]) if len(weights) > 1 else weights[0].qdata
            matrix = _Int4Packed(None, None, None, k, group, weights[0].dtype, members,
                                 blocks=pack_int4_blocked(q, scale, offset, group), asymmetric=asymmetric)
        else:
            packed = torch.cat([pack_nibbles(w.qdata) for w in weights]) if len(weights) > 1 else pack_nibbles(
                weights[0].qdata)
            matrix = _Int4Packed(packed, scale, offset, k, group, weights[0].dtype, members)
        for w in weights:  # the nibbles replace torchao's bytes (restore_member gives them back)
            w.qdata = torch.empty((0, w.qdata.shape[1]), dtype=torch.int8)
            w.scale = torch.empty((0, w.scale.shape[1]), dtype=w.scale.dtype)
            w.zero_point = torch.empty((0, w.zero_point.shape[1]), dtype=w.zero_point.dtype)
    fused = len(linears) > 1
    for i, (name, lin) in enumerate(zip(names, linears)):
        setattr(parent, name, Int4PackedLinear(lin, matrix, members[i][1] if fused else None, i))
        state.replaced.append((parent, name, lin))
    if on_done is not None:
        on_done(matrix)


def _same_groups(parent: nn.Module, names: list[str]) -> bool:
    return len({_group_size(getattr(parent, n).weight) for n in names}) == 1


def pack_int4_group(state, parent: nn.Module, names: list[str], fuse: bool, on_fused=None) -> None:
    """Pack those of ``parent``'s linears ``names`` that are int4 weight-only: as one fused matrix when ``fuse``
    and all of them are (same input width and group size, no bias; ``on_fused`` installs it), else one by one."""
    if fuse and len(names) > 1 and all(is_int4_weight_only(getattr(parent, n)) for n in names):
        fuse = _same_groups(parent, names)
    pack_quantized_group(state, parent, names, fuse, on_fused, is_int4_weight_only, pack_int4)
