# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""An explicit, reversible fast path for CPU inference (bf16 first, fp32 too).

``optimize_for_cpu_inference(model)`` rewrites a loaded OLMo / OLMo 2 / OLMo 3 model IN PLACE for inference on CPU and
returns it; ``undo(model)`` puts back exactly the modules, Parameter objects and flags it had before::

    import torch, olmo_hf
    from olmo_hf.fast import optimize_for_cpu_inference, undo
    model = olmo_hf.Olmo2ForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    optimize_for_cpu_inference(model)          # ~2.9x faster batch-1 decoding of the 1B model on 2 Zen 4 cores
    print(olmo_hf.fast.status(model))          # which kernels run on this CPU, which do not, and why
    model.generate(...)
    model.save_pretrained(out)                 # still the standard layout (dense weights, standard keys)
    undo(model)                                # back to plain nn.Linear, e.g. before training or .to("cuda")

What it does (each step can be switched off, see the keyword arguments):

1. **Weights in their plain layout, read by our own decode kernel.** Every ``nn.Linear`` of the decoder (and
   ``lm_head`` unless it is tied to the embedding) becomes a :class:`PackedLinear` that keeps the very weight
   tensor the ``nn.Linear`` held, in the standard ``(out_features, in_features)`` row-major layout: nothing is
   copied and nothing depends on which blocked layout oneDNN would pick on this CPU. Decoding multiplies 1 to 8
   rows (the batch) by every weight, which is bound by how fast the weights stream from memory: a matrix-vector
   kernel of ours (``kernels.c``: AVX512-BF16 dot products, or AVX2+FMA with the weights widened in registers;
   fp32 accumulation, on torch's own OpenMP threads) streams them. Everything larger (prefill) is ``F.linear`` on
   the same tensor: oneDNN's GEMM, with AMX where the CPU has it, exactly what the plain model runs.
2. **Per machine, measured: never slower.** The kernels are compiled on first use with the system C compiler for
   the instruction set this CPU has, cached in ``~/.cache/olmo_hf`` (``OLMO_HF_CACHE``) and self-tested; then
   each kernel is timed against what PyTorch runs in its place (matrix-vector against ``F.linear``, attention
   against sdpa, element-wise kernels against the PyTorch operators) and enabled only where it is faster here.
   :func:`status` (and ``olmo-hf run --verbose``) says which kernels run, which do not and why. No kernels
   without a C compiler, GNU OpenMP in torch, an x86-64 CPU with AVX2 or AVX512-BF16, or with
   ``OLMO_HF_NATIVE=0``; ``OLMO_HF_NATIVE=force`` skips the measurement and enables every kernel built.
3. **Fused projections.** q/k/v become one packed ``[q; k; v]`` matrix and gate/up one ``[gate; up]`` matrix
   (one product instead of three / two). Module names, state-dict keys and ``tp_plan`` targets are unchanged:
   ``q_proj`` etc. stay in the module tree as :class:`PackedLinear` views of the fused weight, which
   ``state_dict()`` writes back as their own dense slices.
4. **A leaner attention step.** One RMSNorm over q and k together (OLMo 2, when q and k have equal widths), one
   RoPE over q and k together (the same float32 arithmetic as :func:`olmo_hf.modules.apply_rotary_pos_emb`),
   and a key/value cache that grows in place: when the cache is a plain :class:`~transformers.DynamicCache`,
   each layer's keys and values live in a buffer with spare room at the end, so a decoding step writes one
   position instead of concatenating (copying) the whole cache of every layer. ``layer.keys`` / ``.values``
   stay what ``DynamicLayer`` promises (every cached position, in order); other caches use their own ``update``.
5. **Native element-wise kernels and attention (bf16).** RMSNorm, q/k norm + RoPE and SwiGLU's
   ``silu(gate) * up`` each run as one pass of ``kernels.c`` instead of several PyTorch operators that each
   read and write a float32 temporary, with the same float32 arithmetic; attention of
   an unpadded prompt (causal, no mask) and of a decoding step runs in native kernels with fp32 softmax.

OLMo 3's sliding-window layers. Their keys and values stay in Transformers' windowed cache layers
(``DynamicSlidingWindowLayer`` / ``StaticSlidingWindowLayer``, which stop growing at the window), through their own
``update``; only full-attention layers get the growing buffer of step 4. The native attention kernels of step 5 know
no window: a sliding layer takes them only when all its keys lie inside the window (a prompt no longer than the
window, or a decoding step over the windowed cache), where causal attention IS the windowed attention; otherwise it
runs the configured backend with Transformers' sliding-window mask. Everything else (packing, fusion, norms, RoPE)
is the same as for OLMo 2.

Numerics. In float32 the fast path gives the same greedy tokens as the plain model and logits within 1e-5
(tests/test_fast_path.py). In bfloat16 the products accumulate (in fp32) in another order than ``F.linear``
does, so outputs may differ by a bf16 ulp and logits by a few bf16 ulps of their scale (docs/performance.md);
norms and RoPE compute what the plain modules compute (a bf16 ulp apart on ~1e-5 of the values: sums of squares
add in another order), and the native attention is at least as close to the float64 result as sdpa's bf16
kernel. Float32 models take none of the native kernels.

What stays true: ``state_dict()`` / ``save_pretrained()`` write the standard keys and dense tensors;
``model.config``, ``generate()``, every attention implementation and every ``Cache`` class work; deepcopy and
pickling work. What is refused, with a message that says to call :func:`undo` first, is refused as a whole,
before any tensor, flag or module changes (``guards.py``), on the model and on every submodule: any conversion that
would replace a parameter or a packed weight (``.to()`` another dtype or device, ``.half()``, ``.cuda()``,
``.to_empty()``; a no-op ``.to()`` / ``.cpu()`` passes), a ``load_state_dict`` whose dict has a fused-projection
key, a mis-shaped tensor or (strict) a missing or unexpected key (the whole dict is checked before one tensor is
copied), ``requires_grad_(True)`` on a module holding packed layers, and gradients through a packed layer
(``model.train()`` itself passes), and ``torch.export`` (so ``torch.onnx.export(dynamo=True)`` and
ExecuTorch: the fast path's forwards and kernels are not graph operators). Models that are quantized (other than
torchao int8 weight-only, which :mod:`olmo_hf.fast.quantized` takes, and int4 weight-only, which
:mod:`olmo_hf.fast.int4` takes), carry PEFT adapters, or are not on CPU are
refused by :func:`optimize_for_cpu_inference`.

Why ``from_pretrained`` does not apply it: it is only right for CPU inference, and it costs a one-time
measurement of the kernels (~0.3 s) and the copies of the fused matrices. Users routinely load a model and then train it, wrap it with PEFT, quantize it or move it to a GPU; a
default that refuses any of those is worse than one explicit call. ``olmo-hf run`` applies it by default on the
CPU (``--no-fast`` turns it off), because it owns the model's whole lifetime.

If packing fails half-way (out of memory, an interrupt), the model is rolled back to exactly what it was and the
error propagates: the call is all or nothing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import nn

from ..modules import Olmo2RMSNorm, OlmoAttention, OlmoMLP
from ..modeling import Olmo2DecoderLayer
from .forwards import _fast_attention_forward, _fast_decoder_layer_forward, _fast_mlp_forward, _fast_rms_norm_forward
from .build import cpu_model_name
from .guards import install_guards
from .native import KernelPlan, _native_kernel, kernel_plan
from . import int4 as _int4
from . import quantized as _quantized
from .packing import FastPathError, PackedLinear, _FileMappings, _Packed, _Packer

__all__ = [
    "optimize_for_cpu_inference",
    "undo",
    "is_optimized",
    "PackedLinear",
    "FastPathError",
    "status",
    "FastPathStatus",
]

_STATE_ATTR = "_olmo_hf_fast_state"  # set on the optimised model instance; holds what undo() needs

_PACKABLE_DTYPES = (torch.bfloat16, torch.float32)


# ----------------------------------------------------------------------------------------------- model surgery
@dataclass
class _State:
    """Everything undo() restores."""

    replaced: list[tuple[nn.Module, str, nn.Linear]] = field(default_factory=list)  # (parent, name, original)
    patched: list[tuple[nn.Module, str]] = field(default_factory=list)  # instance attributes we set
    requires_grad: list[tuple[nn.Parameter, bool]] = field(default_factory=list)
    was_training: bool = False
    released_bytes: int = 0
    options: dict = field(default_factory=dict)


def _is_plain_linear(module: nn.Module) -> bool:
    w = getattr(module, "weight", None)
    return (
        type(module) is nn.Linear
        and isinstance(w, nn.Parameter)
        and type(w.data) is torch.Tensor
        and w.device.type == "cpu"
        and not w.is_meta
    )


_PEFT_MESSAGE = "This model carries PEFT adapters; merge them (merge_and_unload) before optimising."


def _check_model(model: nn.Module) -> None:
    from ..modeling import _OlmoFamilyPreTrainedModel

    # A PeftModel wrapper is no olmo_hf class itself: name the adapters, not the wrapper's type. Told apart by the
    # module its class comes from, so that peft is never imported here.
    if any(cls.__module__.partition(".")[0] == "peft" for cls in type(model).__mro__):
        raise ValueError(_PEFT_MESSAGE)
    if not isinstance(model, _OlmoFamilyPreTrainedModel):
        raise TypeError(
            f"optimize_for_cpu_inference expects an olmo_hf OLMo / OLMo 2 / OLMo 3 model, got {type(model).__name__}."
        )
    if getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_quantized", False):
        why = _quantized.unsupported_quantization(model)
        if why is not None:
            raise ValueError(f"This model is quantized in a way the CPU fast path does not take ({why}); it takes "
                             "plain bf16/fp32 weights, torchao int8 weight-only (quantization_config('int8')) and int4 "
                             "weight-only (quantization_config('int4', device='cpu')).")
    peft = any(type(m).__module__.startswith("peft") for m in model.modules())
    if getattr(model, "_hf_peft_config_loaded", False) or peft:
        raise ValueError(_PEFT_MESSAGE)
    devices = {p.device.type for p in model.parameters()}
    if devices != {"cpu"}:
        raise ValueError(f"The CPU fast path needs every parameter on CPU; found {sorted(devices)}.")


def _shared_params(model: nn.Module) -> set[int]:
    """ids of Parameters owned by more than one module (tied weights)."""
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {pid for pid, n in seen.items() if n > 1}


def _patch(state: _State, module: nn.Module, name: str, value) -> None:
    module.__dict__[name] = value
    state.patched.append((module, name))


def _install_fused_qkv(state: _State, module: nn.Module, packed: _Packed) -> None:
    _patch(state, module, "_fast_qkv", packed)


def _install_fused_mlp(state: _State, module: nn.Module, packed: _Packed) -> None:
    _patch(state, module, "_fast_gate_up", packed)
    _patch(state, module, "forward", functools.partial(_fast_mlp_forward, module))


def optimize_for_cpu_inference(
    model: nn.Module,
    *,
    pack: bool = True,
    fuse: bool = True,
    fast_attention: bool = True,
    grow_kv_cache: bool = True,
    pack_lm_head: bool = True,
    release_source_pages: bool = True,
) -> nn.Module:
    """Rewrite an olmo_hf model in place for CPU inference; returns the model. Reversible with :func:`undo`.

    Args:
        pack: replace the linear layers by PackedLinear (same weight tensors; native decode products in bf16).
        fuse: fuse q/k/v and gate/up into one packed matrix each (needs ``pack``).
        fast_attention: the leaner attention step (joint q/k norm and RoPE; fused projection when ``fuse``), and
            RMSNorms in one native pass (bf16).
        grow_kv_cache: with ``fast_attention``, grow a plain ``DynamicCache`` in place instead of concatenating.
        pack_lm_head: pack ``lm_head`` / ``score`` too (never when tied to the input embedding).
        release_source_pages: give the mmap pages of the replaced dense weights back to the OS.

    Raises:
        TypeError / ValueError: not an olmo_hf model; quantized; PEFT adapters; parameters not on CPU.
    """
    if is_optimized(model):
        return model
    _check_model(model)
    state = _State(options=dict(pack=pack, fuse=fuse, fast_attention=fast_attention, grow_kv_cache=grow_kv_cache))
    state.was_training = model.training
    model.eval()
    for p in model.parameters():
        state.requires_grad.append((p, p.requires_grad))
        p.requires_grad_(False)

    pages = _FileMappings(enabled=release_source_pages)
    shared = _shared_params(model)
    if pack or fast_attention:
        kernel_plan()  # build / load / measure the native kernels once, here, not in the packing threads

    def packable(lin: nn.Module) -> bool:
        if not (pack and _is_plain_linear(lin)) or id(lin.weight) in shared:
            return False
        return lin.weight.dtype in _PACKABLE_DTYPES

    # The state is attached first, so that a failure half-way (an exception, KeyboardInterrupt) is rolled back by
    # undo(): the caller gets its model back exactly as it was, never half rewritten.
    model.__dict__[_STATE_ATTR] = state
    try:
        packer = _Packer(state, pages, workers=min(4, torch.get_num_threads()))
        try:
            # The largest matrix first, while little else is resident: its transient copy then sets no new peak.
            if pack_lm_head:
                for name in ("lm_head", "score"):
                    head = getattr(model, name, None)
                    if head is not None and packable(head):
                        packer.submit(model, [name], head.weight.dtype)
                    elif pack and head is not None and _quantized.is_int8_weight_only(head):
                        _quantized.pack_int8(state, model, [name])  # quantization_config("int8" / "int4")'s lm_head
                    elif pack and head is not None:
                        _int4.pack_int4_group(state, model, [name], False)  # an int4-quantized head
            embedding = model.get_input_embeddings()
            if id(getattr(embedding, "weight", None)) not in shared:
                _quantized.patch_int8_embedding(functools.partial(_patch, state), embedding)
            for module in list(model.modules()):
                if isinstance(module, OlmoAttention):
                    names = ["q_proj", "k_proj", "v_proj"]
                    if pack:  # torchao int8 / int4 weight-only layers (fast/quantized.py, fast/int4.py)
                        for pack_group in (_quantized.pack_int8_group, _int4.pack_int4_group):
                            pack_group(state, module, names, fuse, functools.partial(_install_fused_qkv, state, module))
                            pack_group(state, module, ["o_proj"], False)
                    lins = [getattr(module, n) for n in names]
                    fusable = fuse and all(packable(m) for m in lins) and len({m.weight.dtype for m in lins}) == 1
                    fusable = fusable and all(m.bias is None for m in lins)
                    if fusable:
                        packer.submit(module, names, lins[0].weight.dtype,
                                      functools.partial(_install_fused_qkv, state, module))
                    else:
                        for n in names:
                            if packable(getattr(module, n)):
                                packer.submit(module, [n], getattr(module, n).weight.dtype)
                    if packable(module.o_proj):
                        packer.submit(module, ["o_proj"], module.o_proj.weight.dtype)
                    if fast_attention:
                        _patch(state, module, "forward", functools.partial(_fast_attention_forward, module))
                        _patch(state, module, "_fast_grow_kv", grow_kv_cache)
                elif isinstance(module, Olmo2DecoderLayer) and fast_attention and grow_kv_cache:
                    # a decoding step of the whole layer in one native call where it applies (forwards.py)
                    _patch(state, module, "forward", functools.partial(_fast_decoder_layer_forward, module))
                elif isinstance(module, Olmo2RMSNorm) and fast_attention:
                    _patch(state, module, "forward", functools.partial(_fast_rms_norm_forward, module))
                    _patch(state, module, "_fast_weight_f32", None)  # a float32 copy of the weight, made on first use
                elif isinstance(module, OlmoMLP):
                    if pack:
                        for pack_group in (_quantized.pack_int8_group, _int4.pack_int4_group):
                            pack_group(state, module, ["gate_proj", "up_proj"],
                                       fuse and module.config.hidden_act == "silu",
                                       functools.partial(_install_fused_mlp, state, module))
                            pack_group(state, module, ["down_proj"], False)
                    lins = [module.gate_proj, module.up_proj]
                    fusable = fuse and all(packable(m) for m in lins) and len({m.weight.dtype for m in lins}) == 1
                    fusable = fusable and all(m.bias is None for m in lins) and module.config.hidden_act == "silu"
                    if fusable:
                        packer.submit(module, ["gate_proj", "up_proj"], lins[0].weight.dtype,
                                      functools.partial(_install_fused_mlp, state, module))
                    else:
                        for n in ("gate_proj", "up_proj"):
                            if packable(getattr(module, n)):
                                packer.submit(module, [n], getattr(module, n).weight.dtype)
                    if packable(module.down_proj):
                        packer.submit(module, ["down_proj"], module.down_proj.weight.dtype)
        finally:
            packer.close()
        install_guards(model, functools.partial(_patch, state))  # refusals leave the model as it was (guards.py)
    except BaseException:
        undo(model)
        raise
    return model


def is_optimized(model: nn.Module) -> bool:
    """Whether :func:`optimize_for_cpu_inference` has been applied to ``model`` (and not undone)."""
    return _STATE_ATTR in model.__dict__


def undo(model: nn.Module) -> nn.Module:
    """Reverse :func:`optimize_for_cpu_inference`: the original modules and Parameter objects come back with
    their exact (bit-identical) values, as do ``requires_grad`` flags and train/eval mode. Returns the model."""
    state: _State | None = model.__dict__.pop(_STATE_ATTR, None)
    if state is None:
        return model
    with torch.no_grad():
        # The members of a fused group are consecutive in state.replaced: unpack each packed matrix once, and
        # only one at a time (peak memory: the model plus one dense matrix).
        current, dense = None, None
        for parent, name, original in state.replaced:
            packed_module: PackedLinear = getattr(parent, name)
            restore = getattr(packed_module, "_restore_source", None)
            if restore is not None:  # an int8 layer (olmo_hf.fast.quantized): its own record
                restore()
                setattr(parent, name, original)
                continue
            if packed_module._packed is not current:
                current, dense = packed_module._packed, None
                dense = current.dense()
            rows = packed_module._rows
            original.weight.data = dense if rows is None else dense[rows[0] : rows[1]].clone()
            setattr(parent, name, original)
        current = dense = None
        for module, name in reversed(state.patched):
            module.__dict__.pop(name, None)
        for param, flag in state.requires_grad:
            param.requires_grad_(flag)
    model.train(state.was_training)
    return model


# ----------------------------------------------------------------------------------------------- status
@dataclass(frozen=True)
class FastPathStatus:
    """What the fast path does on this machine (and for one model): each part that runs and each that does not,
    with why. ``str()`` gives the report ``olmo-hf run --verbose`` prints."""

    optimized: bool
    isa: str | None
    enabled: tuple[str, ...]
    skipped: tuple[str, ...]
    cpu: str = ""

    def __str__(self) -> str:
        head = "olmo_hf.fast: " + ("model optimised" if self.optimized else "model NOT optimised")
        head += f"; native kernels: {self.isa or 'none'}" + (f" ({self.cpu})" if self.cpu else "")
        lines = [head] + [f"  on:  {line}" for line in self.enabled] + [f"  off: {line}" for line in self.skipped]
        return "\n".join(lines)


def status(model: nn.Module | None = None) -> FastPathStatus:
    """Which parts of the fast path run on this machine (and, given a model, for that model), which do not, and
    why. Builds and measures the native kernels if that has not happened yet in this process."""
    plan: KernelPlan = kernel_plan()
    enabled, skipped = [], []
    state: _State | None = None if model is None else model.__dict__.get(_STATE_ATTR)
    dtypes = set() if model is None else {p.dtype for p in model.parameters()}
    fp32_only = model is not None and dtypes and torch.bfloat16 not in dtypes
    for note in plan.notes.values():
        on = ": on" in note
        if on and fp32_only:
            skipped.append(f"{note} -- but this model is float32 (the native kernels are bf16 only)")
        else:
            (enabled if on else skipped).append(note)
    if model is not None:
        if state is None:
            skipped.append("model: not optimised (call olmo_hf.fast.optimize_for_cpu_inference(model))")
        else:
            opts = state.options
            fused = {id(getattr(p, name)._packed) for p, name, _ in state.replaced if getattr(p, name)._rows}
            line = f"model: {len(state.replaced)} linear layers in the fast path's record"
            enabled.append(line + (f", {len(fused)} fused q/k/v and gate/up matrices" if fused else ""))
            kinds: dict[str, int] = {}
            for p, name, _ in state.replaced:
                kind = getattr(getattr(p, name), "kind", None)  # int8 / int4 layers (QuantizedPackedLinear)
                if kind is not None:
                    kinds[kind] = kinds.get(kind, 0) + 1
            for kind, count in sorted(kinds.items()):
                enabled.append(f"model: {count} {kind} weight-only layers on the {kind} kernels")
            for option, what in (("fast_attention", "leaner attention step (joint q/k norm + RoPE); OLMo 2 / 3 "
                                                    "decoding steps one native call per layer where the decode "
                                                    "attention and element-wise kernels are on"),
                                 ("grow_kv_cache", "key/value cache grown in place (plain DynamicCache)")):
                (enabled if opts.get(option) else skipped).append(what + ("" if opts.get(option) else ": switched off"))
    return FastPathStatus(optimized=state is not None, isa=plan.isa, enabled=tuple(enabled), skipped=tuple(skipped),
                          cpu=cpu_model_name())
