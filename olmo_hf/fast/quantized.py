# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""The fast path for int8 weight-only models: what ``olmo_hf.quantization.quantization_config("int8")`` returns
(torchao ``IntxWeightOnlyConfig`` int8 in groups of 32 with float16 scales; with ``group_size=None``
``Int8WeightOnlyConfig``, one float32 scale per output channel)::

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16,
                                                 quantization_config=quantization_config("int8"))
    olmo_hf.fast.optimize_for_cpu_inference(model)   # int8 linears -> Int8PackedLinear

Each such ``nn.Linear`` becomes an :class:`Int8PackedLinear` reading an :class:`_Int8Packed`: torchao's own int8
``(out_features, in_features)`` row-major data (``qdata``, not copied for a single layer; the rows of q/k/v or
gate/up concatenated for a fused matrix) and its scales (float16 per group, or float32 per row). Group-wise int8 in
groups of 32-128 is repacked instead, where the native kernels run it (AVX512-VNNI), into the blocked layout of
``olmo_hf.fast.int8_layout`` (the same values and bytes, scales inside each row). Decoding (1..8 rows) runs the
native int8 matrix-vector kernels (``kernels.c``: ``olmo_hf_gemv_int8_blocked`` / ``olmo_hf_gemv_int8_grouped`` /
``olmo_hf_gemv_int8``), which read 1.0625 (groups of 32) or 1 byte per weight instead of bf16's two; larger products
(prefill) widen the weight to bf16 as torchao dequantizes it (group-wise ``bf16(q * scale)``; per row ``bf16(q)``,
the scale after the product) into a reused buffer, or per band on AMX tiles, and multiply: torchao's own
arithmetic for these weights, on oneDNN's bf16 GEMM (AMX where the CPU has it), because PyTorch's fused
``_weight_int8pack_mm`` is ~8x slower than the bf16 GEMM at 128 rows here (docs/quantization.md).

``lm_head`` (int8 too with ``quantization_config("int8")``) becomes an Int8PackedLinear as well; its prefill product
widens the int8 matrix in slices of at most ``_WIDEN_MAX_ELEMENTS``. The int8 input embedding keeps torchao's
tensor but gets a lookup that dequantizes only the rows it reads (:func:`patch_int8_embedding`; torchao's
``F.embedding`` dequantizes the whole table on every call).

``state_dict()`` / ``save_pretrained`` write exactly what the unoptimised torchao model writes (``weight`` is
torchao's tensor again: the original one for a single layer in torchao's layout, one rebuilt from the rows of a
fused or blocked matrix),
and :func:`olmo_hf.fast.undo` puts the original Parameter objects back with their very values.
"""

from __future__ import annotations

import functools
import threading

import torch
import torch.nn.functional as F
from torch import nn

from ..compat import has_int8_weight_only_mm, int8_weight_only_mm
from ..quantization import int8_embedding_forward, linear_config
from . import native
from .int8_layout import BLOCKED_GROUPS, pack_int8_blocked, unpack_int8_blocked
from .native import (_can_use_native_gemm, _native_gemm, _native_int8_blocked_matmul, _native_int8_blocked_to_bf16,
                     _native_int8_grouped_matmul, _native_int8_grouped_to_bf16, _native_int8_matmul,
                     _native_int8_to_bf16, int8_grouped_reference)
from .packing import PackedLinear, refuse_gradients_and_export

__all__ = ["Int8PackedLinear", "is_int8_weight_only", "is_int8_embedding", "unsupported_quantization"]


def _int8_tensor_class():
    try:
        from torchao.quantization import Int8Tensor
    except ImportError:  # torchao missing or too old: no int8 weights to take
        return None
    return Int8Tensor


def _intx_tensor_class():
    try:
        from torchao.quantization import IntxUnpackedToInt8Tensor
    except ImportError:  # torchao missing or too old
        return None
    return IntxUnpackedToInt8Tensor


def int8_group_size(weight) -> int | None:
    """The layout of a torchao int8 weight-only ``weight`` the fast path takes: 0 for an ``Int8Tensor`` with one
    symmetric scale per row (``quantization_config("int8", group_size=None)``), G for an int8
    ``IntxUnpackedToInt8Tensor`` with one symmetric float16 scale per G consecutive values of a row (the default of
    ``quantization_config("int8")``; G a multiple of 32 dividing the row, at most 128 or a multiple of 128: what the
    kernels take); None for anything else. 2-D, on CPU, weight-only."""
    int8_cls, intx_cls = _int8_tensor_class(), _intx_tensor_class()
    if int8_cls is not None and isinstance(weight, int8_cls):
        qdata, scale = weight.qdata, weight.scale
        zero_point = getattr(weight, "zero_point", None)
        ok = (
            qdata.dim() == 2
            and qdata.dtype == torch.int8
            and qdata.device.type == "cpu"
            and list(weight.block_size) == [1, qdata.shape[1]]  # one scale per row
            and scale.numel() == qdata.shape[0]
            and (zero_point is None or not bool(zero_point.any()))  # symmetric
            and weight.act_quant_kwargs is None  # weight-only
            and getattr(weight, "act_pre_scale", None) is None
        )
        return 0 if ok else None
    if intx_cls is None or not isinstance(weight, intx_cls):
        return None
    qdata, scale, zero_point = weight.qdata, weight.scale, weight.zero_point
    block = list(weight.block_size)
    if qdata.dim() != 2 or len(block) != 2 or block[0] != 1:
        return None
    group, k = int(block[1]), qdata.shape[1]
    ok = (
        weight.target_dtype == torch.int8
        and qdata.dtype == torch.int8
        and qdata.device.type == "cpu"
        and weight.activation_quantization is None  # weight-only
        and scale.dtype == torch.float16  # the kernels' scales (bf16 ones come with bf16 quantization arithmetic)
        and group % 32 == 0 and k % group == 0 and (group <= 128 or group % 128 == 0)
        and not bool(zero_point.any())  # symmetric
    )
    return group if ok else None


def is_int8_weight_only(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.Linear`` with a torchao int8 weight-only, symmetric weight on CPU, one scale per
    row or per group (:func:`int8_group_size`): the layers the fast path takes."""
    return type(module) is nn.Linear and int8_group_size(getattr(module, "weight", None)) is not None


def is_int8_embedding(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.Embedding`` with a torchao int8 symmetric weight on CPU, per row (per token) or
    per group (:func:`int8_group_size`; ``quantization_config("int8")`` quantizes the input embedding so)."""
    return type(module) is nn.Embedding and int8_group_size(getattr(module, "weight", None)) is not None


def unsupported_quantization(model: nn.Module) -> str | None:
    """Why the fast path cannot take this quantized model, or None when it can: it takes models whose only
    quantized layers are torchao int8 weight-only per-channel linears (and an int8 per-row input embedding) or int4
    weight-only per-group linears (``olmo_hf.fast.int4``)."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        config = getattr(quantizer, "quantization_config", None)
        method = getattr(getattr(config, "quant_method", None), "value", getattr(config, "quant_method", None))
        quant_type = type(linear_config(config)).__name__
        if method != "torchao" or quant_type not in ("Int8WeightOnlyConfig", "IntxWeightOnlyConfig"):
            return f"quantization method {method or type(quantizer).__name__!r} {quant_type if method else ''}".strip()
    from .int4 import is_int4_weight_only  # int4.py builds on this module

    for name, module in model.named_modules():
        if is_int8_weight_only(module) or is_int4_weight_only(module) or is_int8_embedding(module):
            continue
        kind = type(module).__name__
        if kind in ("Linear4bit", "Linear8bitLt") or type(module).__module__.startswith("bitsandbytes"):
            return f"{name} is a bitsandbytes {kind}"
        for pname, p in module.named_parameters(recurse=False):
            if type(p) not in (nn.Parameter, torch.Tensor) or hasattr(type(p), "__tensor_flatten__"):
                return (f"{name}.{pname} is a {type(p).__name__} (only torchao int8 weight-only weights, per channel "
                        "or per group of 32-128 with float16 scales, and int4 weight-only per-group weights)")
    return None


# ----------------------------------------------------------------------------------------------- packed weight
# The largest int8 block widened to bf16 at once for a larger product (a 64 MiB bf16 buffer per thread): every
# decoder matrix of the 1B model (gate/up fused: 16384 x 2048) in one piece, lm_head (100278 x 2048) in slices.
_WIDEN_MAX_ELEMENTS = 32 * 2**20
def native_plan_for(x: torch.Tensor):
    """The kernel plan when the native kernels may run on ``x`` (bf16, a real CPU tensor, not being compiled);
    None otherwise. Shared by the int8 and int4 products."""
    plan = native._PLAN
    usable = (
        plan is not None
        and x.dtype == torch.bfloat16
        and type(x) is torch.Tensor  # not a FakeTensor (torch.compile / torch.export / ONNX tracing)
        and x.device.type == "cpu"
        and not torch.compiler.is_compiling()
    )
    return plan if usable else None


_SCRATCH = threading.local()  # per thread: a bf16 buffer the int8 weights of larger products are widened into


def _scratch(numel: int) -> torch.Tensor:
    buffer = getattr(_SCRATCH, "buffer", None)
    if buffer is None or buffer.numel() < numel:
        buffer = _SCRATCH.buffer = torch.empty(numel, dtype=torch.bfloat16)
    return buffer


class _Int8Packed:
    """One int8 weight-only matrix of the fast path (``_Packed``'s counterpart), shared by the Int8PackedLinear(s)
    that read it: ``qdata`` (out_features, in_features) int8, row-major; ``group`` 0 and ``scale`` (out_features,)
    float32 (one scale per row: torchao ``Int8Tensor``), or ``group`` G and ``scale`` (out_features, in_features / G)
    float16 (group-wise: torchao ``IntxUnpackedToInt8Tensor``); ``dtype`` the model's compute dtype (the torchao
    tensor's logical dtype). With ``blocked`` (group-wise, where the native kernels take it: see
    :func:`blocked_layout_for`), the matrix is held in the blocked layout instead (``blocks``, scales inside:
    ``olmo_hf.fast.int8_layout``) and ``qdata`` / ``scale`` are None; :meth:`plain` gives torchao's back.
    ``members`` keeps, for each member, what rebuilds its torchao tensor: (the tensor itself, or None when it is
    rebuilt from this matrix, its class, flatten metadata, rows, scale shape and zero-point dtype)."""

    __slots__ = ("qdata", "scale", "blocks", "group", "dtype", "out_features", "in_features", "members",
                 "__weakref__")

    def __init__(self, qdata: torch.Tensor, scale: torch.Tensor, group: int, dtype: torch.dtype,
                 members: list, blocked: bool = False) -> None:
        self.out_features, self.in_features = qdata.shape
        self.group = group
        shape = (-1,) if not group else (self.out_features, self.in_features // group)
        # (out, in) int8 and (out,) float32, or (out, in / group) float16
        self.qdata = qdata if qdata.is_contiguous() else qdata.contiguous()
        self.scale = (scale.half() if group else scale.float()).reshape(shape).contiguous()
        self.blocks = None
        if blocked:  # (out, row bytes) int8: torchao's values, laid out for the blocked kernel
            self.blocks = pack_int8_blocked(self.qdata, self.scale, group)
            self.qdata = self.scale = None
        self.dtype = dtype
        self.members = members

    def plain(self, lo: int = 0, hi: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows lo..hi as torchao holds them: (qdata, scale); views of this matrix, or unpacked copies when it is
        blocked."""
        hi = self.out_features if hi is None else hi
        if self.blocks is None:
            return self.qdata[lo:hi], self.scale[lo:hi]
        return unpack_int8_blocked(self.blocks[lo:hi], self.in_features, self.group)

    def nbytes(self) -> int:
        """Resident bytes of the matrix (int8 data and scales, or the blocked array)."""
        if self.blocks is not None:
            return self.blocks.numel()
        return self.qdata.numel() + self.scale.numel() * self.scale.element_size()

    def member_weight(self, index: int):
        """Member ``index``'s torchao tensor (the original when this matrix is its data; rebuilt from its rows
        otherwise: the same values)."""
        original, cls, meta, (lo, hi), scale_shape, zp_dtype = self.members[index]
        if original is not None:
            return original
        qdata, scale = self.plain(lo, hi)
        inner = {"qdata": qdata.clone() if self.blocks is None else qdata,
                 "scale": scale.reshape(scale_shape).clone()}
        if zp_dtype is not None:
            inner["zero_point"] = torch.zeros(scale_shape, dtype=zp_dtype)
        return cls.__tensor_unflatten__(inner, meta, None, None)

    def dense(self) -> torch.Tensor:
        """The weight as the model's dtype, dequantized (what torchao's ``dequantize`` gives)."""
        qdata, scale = self.plain()
        if self.group:
            return int8_grouped_reference(qdata, scale).to(self.dtype)
        return (qdata.float() * scale[:, None]).to(self.dtype)

    def _widened(self, lo: int, hi: int) -> torch.Tensor:
        """Rows lo..hi of the weight as bf16 in the per-thread buffer: bf16(q) per row (the scale comes after the
        product), or torchao's bf16(q * scale) group-wise."""
        buffer = _scratch((hi - lo) * self.in_features)
        if self.blocks is not None:
            return _native_int8_blocked_to_bf16(self.blocks[lo:hi], self.in_features, self.group, None, buffer)
        part = self.qdata[lo:hi]
        if self.group:
            return _native_int8_grouped_to_bf16(part, self.scale[lo:hi], None, buffer)
        return _native_int8_to_bf16(part, None, buffer)

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ dequantized(W).T (+ bias)`` over the last dimension of ``x`` (inference only: no autograd)."""
        refuse_gradients_and_export(x, bias)
        plan = native_plan_for(x)
        usable = plan is not None
        few_rows = x.numel() <= native._NATIVE_MAX_ROWS * x.shape[-1]
        if self.group:
            return self._grouped_matmul(x, bias, plan)
        if usable and plan.int8_gemv_max_rows and x.numel() <= plan.int8_gemv_max_rows * x.shape[-1]:
            out = _native_int8_matmul(x, self.qdata, self.scale)
        elif few_rows and x.device.type == "cpu" and has_int8_weight_only_mm() and type(x) is torch.Tensor:
            # decoding where the native kernel is off: PyTorch's fused kernel (use_cpu_int8_kernel's)
            x2d = x.reshape(-1, x.shape[-1]).contiguous()
            out = int8_weight_only_mm(x2d, self.qdata, self.scale.to(x.dtype)).view(*x.shape[:-1], -1)
        elif usable and plan.int8_gemm_amx and _can_use_native_gemm(x, self.in_features):
            out = _native_gemm(x, self.qdata, self.scale)  # prefill on AMX tiles, widening per band in L2
        elif usable and plan.int8_convert:
            # torchao's arithmetic (x @ bf16(q)^T, rounded, then times the bf16 scale) with q widened natively
            out = self._sliced_linear(x)
            out = out * self.scale.to(x.dtype)
        else:
            out = F.linear(x, self.qdata.to(x.dtype)) * self.scale.to(x.dtype)
        return out if bias is None else out + bias

    def _grouped_matmul(self, x: torch.Tensor, bias: torch.Tensor | None, plan) -> torch.Tensor:
        """Group-wise int8: the native matrix-vector kernel for decoding; for larger products torchao's arithmetic,
        ``F.linear(x, bf16(q * scale))``, on AMX tiles widening per band, or after a native widening."""
        blocks = self.blocks
        if plan is not None and x.numel() <= plan.int8_grouped_gemv_max_rows * x.shape[-1]:
            out = (_native_int8_grouped_matmul(x, self.qdata, self.scale) if blocks is None
                   else _native_int8_blocked_matmul(x, blocks, self.in_features, self.group))
        elif plan is not None and plan.int8_gemm_amx and _can_use_native_gemm(x, self.in_features):
            out = (_native_gemm(x, self.qdata, self.scale, int8_group=self.group) if blocks is None
                   else _native_gemm(x, blocks, None, int8_group=self.group, blocked_in_features=self.in_features))
        elif plan is not None and plan.int8_convert:
            out = self._sliced_linear(x)
        else:
            out = F.linear(x, self.dense().to(x.dtype))
        return out if bias is None else out + bias

    def _sliced_linear(self, x: torch.Tensor) -> torch.Tensor:
        """``F.linear(x, widened W)`` with W widened natively at most ``_WIDEN_MAX_ELEMENTS`` at a time (lm_head: a
        100 k vocabulary would need a 400 MB buffer)."""
        step = max(1, _WIDEN_MAX_ELEMENTS // self.in_features)
        if step >= self.out_features:
            return F.linear(x, self._widened(0, self.out_features))
        out = x.new_empty(*x.shape[:-1], self.out_features)
        for lo in range(0, self.out_features, step):
            hi = min(lo + step, self.out_features)
            out[..., lo:hi] = F.linear(x, self._widened(lo, hi))
        return out

    def restore_member(self, weight, index: int) -> None:
        """Give member ``index``'s original torchao tensor ``weight`` its rows back (a fused member's data was
        emptied when packing; a single layer's never was)."""
        original, _, _, (lo, hi), scale_shape, zp_dtype = self.members[index]
        if original is None:
            qdata, scale = self.plain(lo, hi)
            weight.qdata = qdata.clone() if self.blocks is None else qdata
            weight.scale = scale.reshape(scale_shape).clone().to(weight.scale.dtype)
            if zp_dtype is not None and weight.zero_point.numel() == 0:  # emptied when packing: all zeros
                weight.zero_point = torch.zeros(scale_shape, dtype=zp_dtype)

    def __getstate__(self):  # copy.deepcopy / pickle: carry the int8 data (torchao's), scales and the metadata
        qdata, scale = self.plain()
        return {"qdata": qdata, "scale": scale, "group": self.group, "dtype": self.dtype, "members": self.members,
                "blocked": self.blocks is not None}

    def __setstate__(self, state):
        self.__init__(state["qdata"], state["scale"], state["group"], state["dtype"], state["members"],
                      state.get("blocked", False))


class QuantizedPackedLinear(PackedLinear):
    """:class:`PackedLinear` over a quantized weight-only matrix (``_Int8Packed``, or ``olmo_hf.fast.int4``'s
    ``_Int4Packed``). ``weight`` is the torchao tensor of the unoptimised model (``packed.member_weight``: the
    original, or one rebuilt from the packed data), so ``state_dict()`` and ``save_pretrained`` write torchao's keys
    and values; :func:`olmo_hf.fast.undo` gives the original tensor back its data (``packed.restore_member``)."""

    kind = "quantized"  # for messages and repr: "int8", "int4"

    def __init__(self, source: nn.Linear, packed, rows: tuple[int, int] | None, index: int) -> None:
        super().__init__(source, packed, rows)
        self._member = index

    @property
    def weight(self):
        return self._packed.member_weight(self._member)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        if any(key.startswith(prefix + "weight") for key in state_dict):
            errors.append(f"{prefix}weight: loading into an {self.kind} layer of a model optimised by olmo_hf.fast is "
                          "not supported; call olmo_hf.fast.undo(model) first.")
        elif strict:
            missing_keys.append(prefix + "weight")

    def _restore_source(self) -> None:
        """Give the original module's torchao tensor back its data (emptied when packing)."""
        self._packed.restore_member(self._source.weight, self._member)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", {self.kind} weight-only"


class Int8PackedLinear(QuantizedPackedLinear):
    """:class:`QuantizedPackedLinear` over an int8 weight-only matrix (:class:`_Int8Packed`): a single layer in
    torchao's layout keeps its very torchao tensor; a member of a fused or blocked matrix rebuilds its own from its
    rows."""

    kind = "int8"


# ----------------------------------------------------------------------------------------------- packing
def _member(weight, rows: tuple[int, int], copied: bool) -> tuple:
    _, meta = weight.__tensor_flatten__()
    zero_point = getattr(weight, "zero_point", None)
    return (None if copied else weight, type(weight), meta, rows, tuple(weight.scale.shape),
            None if zero_point is None else zero_point.dtype)


def blocked_layout_for(group: int) -> bool:
    """Whether group-wise int8 in groups of ``group`` is packed into the blocked layout (``olmo_hf.fast.int8_layout``):
    where this process's kernel plan runs the native group-wise product and the library has the blocked kernel
    (the AVX512 variant on a CPU with AVX512-VNNI), for groups of 32-128."""
    if group not in BLOCKED_GROUPS:
        return False
    plan = native.kernel_plan()
    lib = native._native_kernel() if plan.isa else None
    return bool(lib is not None and lib.int8_blocked and plan.int8_grouped_gemv_max_rows)


def pack_int8(state, parent: nn.Module, names: list[str], on_done=None) -> None:
    """Replace ``parent``'s int8 linears ``names`` by Int8PackedLinears over one matrix (fused when several),
    recording each original in ``state.replaced`` (consecutively, as undo() expects)."""
    linears = [getattr(parent, n) for n in names]
    weights = [lin.weight for lin in linears]
    group = int8_group_size(weights[0])
    blocked = bool(group) and blocked_layout_for(group)
    fused = len(linears) > 1
    copied = fused or blocked  # the packed matrix is a copy (a blocked one even for one layer): the sources are emptied
    with torch.no_grad():
        if fused:
            qdata = torch.cat([w.qdata for w in weights], dim=0)  # (sum of out_features, in_features)
            # (sum of out_features,) or (sum of out_features, in_features / group)
            scale = torch.cat([w.scale.reshape(w.qdata.shape[0], -1) for w in weights])
        else:
            qdata, scale = weights[0].qdata, weights[0].scale
        members, row = [], 0
        for w in weights:
            members.append(_member(w, (row, row + w.qdata.shape[0]), copied))
            row += w.qdata.shape[0]
        packed = _Int8Packed(qdata, scale, group, weights[0].dtype, members, blocked)
        if copied:  # the copy replaces the members' data (undo gives it back, see _restore_source)
            for w in weights:  # (shapes consistent for torchao's checks: no rows, the same columns)
                w.qdata = w.qdata[:0].clone()
                w.scale = w.scale[:0].clone()
                if getattr(w, "zero_point", None) is not None and w.zero_point.dim() == w.scale.dim():
                    w.zero_point = w.zero_point[:0].clone()
    for i, (name, lin) in enumerate(zip(names, linears)):
        setattr(parent, name, Int8PackedLinear(lin, packed, members[i][3] if fused else None, i))
        state.replaced.append((parent, name, lin))
    if on_done is not None:
        on_done(packed)


def pack_quantized_group(state, parent: nn.Module, names: list[str], fuse: bool, on_fused, accepts, pack) -> None:
    """Pack those of ``parent``'s linears ``names`` that ``accepts`` (a predicate on the module) with ``pack(state,
    parent, names, on_done)``: as one fused matrix when ``fuse`` and all of them are accepted (same input width and
    weight dtype, no bias; ``on_fused`` installs it), else one by one. Shared by the int8 and int4 paths."""
    linears = [getattr(parent, n) for n in names]
    taken = [accepts(lin) for lin in linears]
    fusable = (fuse and len(names) > 1 and all(taken) and len({lin.in_features for lin in linears}) == 1
               and len({lin.weight.dtype for lin in linears}) == 1 and all(lin.bias is None for lin in linears))
    if fusable:
        pack(state, parent, names, on_fused)
        return
    for name, ok in zip(names, taken):
        if ok:
            pack(state, parent, [name])


def pack_int8_group(state, parent: nn.Module, names: list[str], fuse: bool, on_fused=None) -> None:
    """Pack those of ``parent``'s linears ``names`` that are int8 weight-only: as one fused matrix when ``fuse``
    and all of them are (same input width and layout, no bias; ``on_fused`` installs it), else one by one."""
    if fuse and all(is_int8_weight_only(getattr(parent, n)) for n in names):
        fuse = len({int8_group_size(getattr(parent, n).weight) for n in names}) == 1
    pack_quantized_group(state, parent, names, fuse, on_fused, is_int8_weight_only, pack_int8)


# ----------------------------------------------------------------------------------------------- embedding
def patch_int8_embedding(patch, module: nn.Module) -> bool:
    """Give an int8 per-row embedding (:func:`is_int8_embedding`) a lookup that dequantizes only the rows it
    reads; ``patch(module, name, value)`` records the instance attribute for undo(). Returns whether it did."""
    if not is_int8_embedding(module):
        return False
    patch(module, "forward", functools.partial(int8_embedding_forward, module))
    return True
