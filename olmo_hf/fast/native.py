# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""The native kernels (``kernels.c``): which instruction set this CPU gets, building and loading the library,
self-tests, and the per-machine plan of which kernels run (measured against what PyTorch does in their place).
Optional throughout: where a kernel is unavailable or measured slower, PyTorch does that work."""

from __future__ import annotations

import ctypes
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..compat import attn_implementation
from ..modules import rotate_half
from .build import load_native_library
from .int8_layout import pack_int8_blocked

# kernels.c, compiled once per machine with the flags of the instruction set this CPU has (chosen from its flags,
# see choose_isa) into ~/.cache/olmo_hf (OLMO_HF_CACHE), self-tested before use, called through ctypes:
# - olmo_hf_gemv_bf16 and olmo_hf_gemv_int8 (every variant: AVX512-BF16, AVX2, AArch64 NEON): x @ W^T for 1..8 rows (decoding), reading the plain (out, in) bf16 weight
#   that nn.Linear holds: no packed copy, no dependence on the blocked layouts oneDNN picks per CPU (which differ
#   between Zen 4 and AMX Xeons). Bound by memory bandwidth; it streams the weights on torch's OpenMP threads.
# - olmo_hf_gemv_int8 / olmo_hf_gemv_int4 and their widenings to bf16 (every variant): torchao int8 / int4
#   weight-only layers (fast/quantized.py, fast/int4.py; int4 in a nibble layout of ours).
# - AVX512-BF16 only: decode / prefill attention and the element-wise kernels (RMSNorm, q/k norm + RoPE, SwiGLU).
# - int8 / int4 weight-only products and their exact widening to bf16 (olmo_hf.fast.quantized, olmo_hf.fast.int4).
# - AMX only: the prefill product (more than 8 rows) reading the bf16, int8 or int4 weight once per call, where the
#   plan measured it faster than F.linear; otherwise prefill is F.linear on the same dense weight (oneDNN's GEMM,
#   with AMX where the CPU has it), exactly what the plain model runs.
_NATIVE_MAX_ROWS = 8
_NATIVE_SOURCE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels.c")  # package data


class Isa(NamedTuple):
    """One kernels.c variant: its name, the CPUs it is for (``platform.machine()``), the flags Linux reports for
    them that it needs, and the gcc flags that enable them."""

    name: str
    machines: tuple[str, ...]
    needs: frozenset[str]
    cflags: tuple[str, ...]

    def cannot_run(self, flags: frozenset[str] | set[str], machine: str) -> str:
        """Why a ``machine`` CPU with these flags cannot run this variant ("" when it can)."""
        if machine not in self.machines:
            return f"{self.name} is for {' / '.join(self.machines)} CPUs, not {machine}"
        missing = sorted(self.needs - set(flags))
        return f"this CPU lacks {', '.join(missing)}" if missing else ""


_X86 = ("x86_64", "AMD64")
_ARM64 = ("aarch64", "arm64")
# Best first. Flag names as the Linux kernel spells them in /proc/cpuinfo (x86: arch/x86/include/asm/cpufeatures.h;
# AArch64 "Features": arch/arm64/kernel/cpuinfo.c, "asimd" = NEON); gcc options from its x86 / AArch64 manuals
# (NEON is part of the AArch64 base architecture: no flag needed).
ISAS: tuple[Isa, ...] = (
    Isa("avx512_bf16", _X86, frozenset({"avx512f", "avx512bw", "avx512vl", "avx512_bf16"}),
        ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16")),
    Isa("avx2", _X86, frozenset({"avx2", "fma", "f16c"}), ("-mavx2", "-mfma", "-mf16c")),
    Isa("neon", _ARM64, frozenset({"asimd"}), ()),
)
# -ffp-contract=off: the element-wise kernels round each product as PyTorch does (no fused multiply-adds).
_COMMON_FLAGS = ("-O3", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC")
_NATIVE_LIBS = ("-lm",)
_native = None  # None: not tried yet; False: unavailable; else a _NativeLib
_native_reason = ""  # why _native is False (for status())


def _native_mode() -> str:
    """OLMO_HF_NATIVE: "auto" (default: measure each kernel against PyTorch at first use, enable the faster),
    "force" (enable every kernel the library has, unmeasured: tests, benchmarks of the kernels themselves) or
    "off" (0 / false / no / off: no native code)."""
    value = os.environ.get("OLMO_HF_NATIVE", "auto").strip().lower()
    if value in ("0", "false", "no", "off"):
        return "off"
    return "force" if value in ("force", "all") else "auto"


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (``/proc/cpuinfo``: ``flags`` on x86, ``Features`` on ARM);
    empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def isa_reasons(flags: frozenset[str] | set[str] | None = None, machine: str | None = None) -> dict[str, str]:
    """Each kernels.c variant and why this CPU (or one with these flags) cannot run it ("" when it can)."""
    flags = cpu_flags() if flags is None else flags
    machine = machine or platform.machine()
    return {isa.name: isa.cannot_run(flags, machine) for isa in ISAS}


def choose_isa(flags: frozenset[str] | set[str], machine: str | None = None, system: str | None = None
               ) -> tuple[str | None, str]:
    """The kernels.c variant for a CPU with these flags: ("avx512_bf16" | "avx2" | "neon", "") or (None, why not)."""
    machine = machine or platform.machine()
    system = system or sys.platform
    if not system.startswith("linux"):
        return None, f"native kernels are built on Linux only (this is {system})"
    candidates = [isa for isa in ISAS if machine in isa.machines]
    if not candidates:
        return None, f"no native kernels for {machine} CPUs (x86-64 and AArch64 only); PyTorch's kernels run instead"
    for isa in candidates:
        if isa.needs <= set(flags):
            return isa.name, ""
    if machine in _ARM64:
        return None, "this CPU reports no NEON (asimd); PyTorch's kernels run instead"
    return None, "this CPU has neither AVX512-BF16 nor AVX2+FMA+F16C; PyTorch's kernels run instead"


class MatrixDesc(ctypes.Structure):
    """kernels.c ``olmo_hf_matrix``: one weight matrix of a decoder layer as the fused decoding step reads it."""

    _fields_ = [("kind", ctypes.c_int), ("amx", ctypes.c_int), ("w", ctypes.c_void_p), ("ldw", ctypes.c_long),
                ("scale", ctypes.c_void_p), ("offset", ctypes.c_void_p), ("group", ctypes.c_long),
                ("N", ctypes.c_long), ("K", ctypes.c_long)]


class LayerDesc(ctypes.Structure):
    """kernels.c ``olmo_hf_layer``: an OLMo 2 / OLMo 3 decoder layer for ``olmo_hf_decode_layer``."""

    _fields_ = [("qkv", MatrixDesc), ("o", MatrixDesc), ("gate_up", MatrixDesc), ("down", MatrixDesc),
                ("nh", ctypes.c_long), ("nkv", ctypes.c_long), ("hd", ctypes.c_long), ("hidden", ctypes.c_long),
                ("inter", ctypes.c_long), ("wq", ctypes.c_void_p), ("wk", ctypes.c_void_p), ("qk_eps", ctypes.c_float),
                ("w_attn_norm", ctypes.c_void_p), ("w_ff_norm", ctypes.c_void_p), ("eps", ctypes.c_float),
                ("scaling", ctypes.c_float)]


class _NativeLib:
    """The entry points of the compiled library (ctypes functions; they release the GIL). ``isa`` says which
    variant it is; the AVX2 and NEON variants have the matrix-vector products only (``full`` is False)."""

    def __init__(self, lib: ctypes.CDLL, isa: str) -> None:
        self.lib, self.isa = lib, isa
        self.gemv_amx = self.gemm_amx = None
        c_long, c_ptr, c_float, c_int = ctypes.c_long, ctypes.c_void_p, ctypes.c_float, ctypes.c_int
        self.gemv = lib.olmo_hf_gemv_bf16
        self.gemv.argtypes = [c_ptr, c_long, c_ptr, c_long, c_long, c_long, c_ptr, c_long, c_long, c_int]
        self.gemv.restype = c_int
        self.gemv_int8 = lib.olmo_hf_gemv_int8  # torchao int8 weight-only (olmo_hf.fast.quantized)
        self.gemv_int8.argtypes = [c_ptr, c_long, c_ptr, c_long, c_ptr, c_long, c_long, c_ptr, c_long, c_long, c_int]
        self.gemv_int8.restype = c_int
        self.int8_to_bf16 = lib.olmo_hf_int8_to_bf16
        self.int8_to_bf16.argtypes = [c_ptr, c_long, c_long, c_long, c_ptr, c_int]
        self.int8_to_bf16.restype = c_int
        self.gemv_int8_grouped = lib.olmo_hf_gemv_int8_grouped  # torchao group-wise int8 (the default "int8")
        self.gemv_int8_grouped.argtypes = [c_ptr, c_long, c_ptr, c_long, c_ptr, c_long, c_long, c_long, c_ptr, c_long,
                                           c_long, c_int]
        self.gemv_int8_grouped.restype = c_int
        self.int8_grouped_to_bf16 = lib.olmo_hf_int8_grouped_to_bf16
        self.int8_grouped_to_bf16.argtypes = [c_ptr, c_long, c_ptr, c_long, c_long, c_long, c_ptr, c_int]
        self.int8_grouped_to_bf16.restype = c_int
        # group-wise int8 in the blocked layout (olmo_hf.fast.int8_layout): the AVX512 variant on AVX512-VNNI CPUs
        self.int8_blocked = bool(lib.olmo_hf_int8_blocked_ok())
        self.gemv_int8_blocked = lib.olmo_hf_gemv_int8_blocked
        self.gemv_int8_blocked.argtypes = [c_ptr, c_long, c_ptr, c_long, c_long, c_long, c_long, c_ptr, c_long, c_long,
                                           c_int]
        self.gemv_int8_blocked.restype = c_int
        self.int8_blocked_to_bf16 = lib.olmo_hf_int8_blocked_to_bf16
        self.int8_blocked_to_bf16.argtypes = [c_ptr, c_long, c_long, c_long, c_long, c_ptr, c_int]
        self.int8_blocked_to_bf16.restype = c_int
        self.gemv_int4 = lib.olmo_hf_gemv_int4  # torchao int4 weight-only, in our nibble layout (olmo_hf.fast.int4)
        self.gemv_int4.argtypes = [c_ptr, c_long, c_ptr, c_long, c_ptr, c_ptr, c_long, c_long, c_long, c_ptr, c_long,
                                   c_long, c_int]
        self.gemv_int4.restype = c_int
        self.int4_to_bf16 = lib.olmo_hf_int4_to_bf16
        self.int4_to_bf16.argtypes = [c_ptr, c_long, c_ptr, c_ptr, c_long, c_long, c_long, c_ptr, c_int]
        self.int4_to_bf16.restype = c_int
        self.int4_set_vnni = lib.olmo_hf_int4_set_vnni  # the VNNI int4 product (x as int8) where the CPU has it
        self.int4_set_vnni.argtypes = [c_int]
        self.int4_set_vnni.restype = c_int
        self.int4_vnni = bool(self.int4_set_vnni(1))
        # int4 in the blocked layout (olmo_hf.fast.int4): the AVX512 variant on AVX512-VNNI CPUs
        self.int4_blocked = bool(lib.olmo_hf_int4_blocked_ok())
        self.gemv_int4_blocked = lib.olmo_hf_gemv_int4_blocked
        self.gemv_int4_blocked.argtypes = [c_ptr, c_long, c_ptr, c_long, c_int, c_long, c_long, c_long, c_ptr, c_long,
                                           c_long, c_int]
        self.gemv_int4_blocked.restype = c_int
        self.int4_blocked_to_bf16 = lib.olmo_hf_int4_blocked_to_bf16
        self.int4_blocked_to_bf16.argtypes = [c_ptr, c_long, c_int, c_long, c_long, c_long, c_ptr, c_int]
        self.int4_blocked_to_bf16.restype = c_int
        self.full = isa == "avx512_bf16"
        self.amx = False  # the AMX-BF16 product: set by enable_amx() where the CPU and the kernel allow it
        self.amx_note = "AMX tile product: off (needs the avx512_bf16 variant)"
        if not self.full:
            return
        try:  # absent when the compiler knew no AMX intrinsics
            self.gemv_amx = lib.olmo_hf_gemv_bf16_amx
            self.gemv_amx.argtypes = self.gemv.argtypes
            self.gemv_amx.restype = c_int
            self.gemm_amx = lib.olmo_hf_gemm_amx  # the prefill product on AMX tiles (bf16 or int8 weights)
            self.gemm_amx.argtypes = [c_ptr, c_long, c_long, c_ptr, c_long, c_int, c_ptr, c_ptr, c_long, c_long,
                                      c_long, c_ptr, c_long, c_int]
            self.gemm_amx.restype = c_int
        except AttributeError:
            self.gemv_amx = self.gemm_amx = None
        self.attention = lib.olmo_hf_decode_attention_bf16
        self.attention.argtypes = [c_ptr, c_long, c_long, c_ptr, c_long, c_long, c_long, c_ptr, c_long, c_long,
                                   c_long, c_ptr, c_long, c_long, c_long, c_long, c_long, c_float, c_int]
        self.rms_norm = lib.olmo_hf_rms_norm_bf16
        self.rms_norm.argtypes = [c_ptr, c_long, c_long, c_long, c_ptr, c_float, c_ptr, c_int]
        self.qk_norm_rope = lib.olmo_hf_qk_norm_rope_bf16
        self.qk_norm_rope.argtypes = [c_ptr, c_long, c_long, c_long, c_long, c_long, c_long, c_ptr, c_ptr, c_float,
                                      c_ptr, c_ptr, c_long, c_long, c_ptr, c_int]
        self.silu_mul = lib.olmo_hf_silu_mul_bf16
        self.silu_mul.argtypes = [c_ptr, c_long, c_long, c_long, c_ptr, c_int]
        self.decode_layer = lib.olmo_hf_decode_layer  # a whole decoder layer's decoding step (forwards.py)
        self.decode_layer.argtypes = [ctypes.POINTER(LayerDesc), c_ptr, c_long, c_ptr, c_ptr, c_long, c_ptr, c_long,
                                      c_long, c_ptr, c_long, c_long, c_long, c_ptr, c_int]
        self.prefill_attention = lib.olmo_hf_prefill_attention_bf16
        strided = [c_ptr, c_long, c_long, c_long]  # a (batch, heads, seq, head_dim) tensor: pointer and 3 strides
        self.prefill_attention.argtypes = [*strided * 3, c_ptr, c_long, c_long, c_long, c_long, c_long, c_float,
                                           c_int]
        for fn in (self.attention, self.rms_norm, self.qk_norm_rope, self.silu_mul, self.prefill_attention,
                   self.decode_layer):
            fn.restype = c_int


_native_lock = threading.Lock()


def _native_kernel() -> _NativeLib | None:
    """The compiled kernels, built (or loaded from the cache) on first use; None where unavailable."""
    global _native, _native_reason
    if _native is None:
        with _native_lock:
            if _native is None:
                try:
                    lib, reason = _build_native()
                except Exception as e:  # never let an optional kernel break inference
                    lib, reason = None, f"the native kernels failed to build or load ({e})"
                    warnings.warn(f"olmo_hf.fast: {reason}; PyTorch's kernels run instead.")
                _native, _native_reason = lib or False, reason
    return _native or None


def native_unavailable_reason() -> str:
    """Why the native kernels are not loaded ("" when they are, or have not been tried)."""
    return _native_reason


def _isa_flags(isa: str) -> list[str]:
    """The compiler flags of variant ``isa`` (common flags first)."""
    return [*_COMMON_FLAGS, *next(v.cflags for v in ISAS if v.name == isa)]


def load_variant(isa: str) -> tuple[_NativeLib | None, str]:
    """kernels.c's variant ``isa`` built (or taken from the cache) by build.py, self-tested in a subprocess and
    loaded only if that passed: (the library, "") or (None, why not)."""
    built = load_native_library(f"olmo_hf_kernels_{isa}", _NATIVE_SOURCE_FILE, flags=_isa_flags(isa),
                                libs=_NATIVE_LIBS, self_test="olmo_hf.fast.native:_self_test_library")
    return (None, built.reason) if built.library is None else (_NativeLib(built.library, isa), "")


def _build_native() -> tuple[_NativeLib | None, str]:
    if _native_mode() == "off":
        return None, "switched off (OLMO_HF_NATIVE=0)"
    isa, why = choose_isa(cpu_flags())
    if isa is None:
        return None, why
    # Our OpenMP must be torch's (GNU libgomp, shared by SONAME); a second runtime would oversubscribe the cores.
    try:
        with open("/proc/self/maps") as f:
            if "libgomp" not in f.read():
                return None, "torch does not use GNU OpenMP here (the kernels run on its libgomp threads)"
    except OSError:
        return None, "cannot read /proc/self/maps to find torch's OpenMP runtime"
    native, why = load_variant(isa)
    if native is None:
        return None, why
    why = enable_amx(native, cpu_flags())
    native.amx_note = "AMX tile product: on, available to the plan" if not why else (
        f"AMX tile product: off ({why.removeprefix('AMX: ')})")
    return native, ""


_AMX_FLAGS = frozenset({"amx_tile", "amx_bf16"})


def enable_amx(native: _NativeLib, flags: frozenset[str] | set[str]) -> str:
    """Switch on the library's AMX-BF16 product where the CPU has AMX and Linux grants this process the tile state
    (``arch_prctl(ARCH_REQ_XCOMP_PERM)``) and it computes right; "" when on, else why not."""
    if not native.full:
        return "AMX: no (needs the avx512_bf16 variant)"
    if not _AMX_FLAGS <= set(flags):
        return "AMX: this CPU has no AMX-BF16"
    if native.gemv_amx is None:
        return "AMX: the C compiler has no AMX intrinsics (gcc >= 11 or clang >= 12 needed)"
    if native.lib.olmo_hf_amx_enable() != 0:
        return "AMX: Linux did not grant the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM; Linux >= 5.16)"
    native.amx = True
    gen = torch.Generator().manual_seed(1)
    for n, k, m in ((64, 64, 1), (48, 96, 8), (40, 2048, 5), (16, 32, 3)):
        w = torch.randn(n, k, generator=gen).to(torch.bfloat16)
        x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
        out = _native_matmul(x, w, native, amx=True).float()
        if not torch.allclose(out, F.linear(x.float(), w.float()), atol=1e-2 * k**0.5, rtol=1e-2):
            native.amx = False
            return "AMX: the tile kernel failed its self-test"
    if native.gemm_amx is not None:  # the prefill product: dropped alone if it computes wrong
        w = torch.randn(40, 64, generator=gen).to(torch.bfloat16)
        x = torch.randn(37, 64, generator=gen).to(torch.bfloat16)
        if not torch.allclose(_native_gemm(x, w, None, native).float(), F.linear(x.float(), w.float()), atol=8e-2,
                              rtol=1e-2):
            native.gemm_amx = None
    return ""


def _self_test_library(path: str) -> bool:
    """build.py's self-test (run in a fresh interpreter after each build): every kernel of the library at ``path``
    against the PyTorch arithmetic it replaces."""
    lib = ctypes.CDLL(path)
    lib.olmo_hf_kernels_isa.restype = ctypes.c_char_p
    return _self_test(_NativeLib(lib, lib.olmo_hf_kernels_isa().decode())) == ""


def _self_test(native: _NativeLib) -> str:
    """Each kernel against the PyTorch arithmetic it replaces, on small shapes with tails; "" or what failed."""
    gen = torch.Generator().manual_seed(0)
    for n, k, m in ((100, 96, 1), (64, 64, 5), (130, 2048, 8), (7, 40, 3), (3, 33, 2)):
        w = torch.randn(n, k, generator=gen).to(torch.bfloat16)
        x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
        ref = F.linear(x.float(), w.float())
        out = _native_matmul(x, w, native).float()
        if not torch.allclose(out, ref, atol=1e-2 * k**0.5, rtol=1e-2):
            return f"matrix-vector product {m}x{k} @ {k}x{n}"
        q = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
        scale = torch.rand(n, generator=gen) / 64
        ref = F.linear(x.float(), q.float()) * scale
        if not torch.allclose(_native_int8_matmul(x, q, scale, native).float(), ref, atol=1e-2, rtol=1e-2):
            return f"int8 matrix-vector product {m}x{k} @ {k}x{n}"
        if not torch.equal(_native_int8_to_bf16(q, native), q.to(torch.bfloat16)):
            return f"int8 -> bf16 conversion of {n}x{k}"
        if k % 32 == 0:  # group-wise int8 (groups of 32 or 64)
            group = 64 if k % 64 == 0 else 32
            own = torch.Generator().manual_seed(n)  # gen's draws stay those of the tests below
            gscale = (torch.rand(n, k // group, generator=own) / 64).half()
            weight = int8_grouped_reference(q, gscale)
            if not torch.equal(_native_int8_grouped_to_bf16(q, gscale, native), weight):
                return f"group-wise int8 -> bf16 widening of {n}x{k}"
            out = _native_int8_grouped_matmul(x, q, gscale, native).float()
            exact = F.linear(x.float(), q.float() * gscale.float().repeat_interleave(group, dim=1))  # unrounded
            if not torch.allclose(out, exact, atol=1e-2 * k**0.5, rtol=1e-2):
                return f"group-wise int8 matrix-vector product {m}x{k} @ {k}x{n}"
            if native.int8_blocked:
                blocks = pack_int8_blocked(q, gscale, group)
                if not torch.equal(_native_int8_blocked_to_bf16(blocks, k, group, native), weight):
                    return f"blocked int8 -> bf16 widening of {n}x{k}"
                out = _native_int8_blocked_matmul(x, blocks, k, group, native).float()
                if not torch.allclose(out, exact, atol=1e-2 * k**0.5, rtol=1e-2):
                    return f"blocked int8 matrix-vector product {m}x{k} @ {k}x{n}"
    if why := _int4_self_test(native, gen):
        return why
    if not native.full:
        return ""
    for b, h, g, s_len, d in ((2, 4, 2, 37, 24), (1, 3, 3, 5, 64)):
        q = torch.randn(b, h, 1, d, generator=gen).to(torch.bfloat16)
        kv = torch.randn(2, b, g, s_len + 3, d, generator=gen).to(torch.bfloat16)[..., :s_len, :]
        ref = F.scaled_dot_product_attention(q.float(), kv[0].float().repeat_interleave(h // g, 1),
                                             kv[1].float().repeat_interleave(h // g, 1)).transpose(1, 2)
        out = _native_attention(native, q, kv[0], kv[1], d**-0.5).float()
        if not torch.allclose(out, ref, atol=2e-2, rtol=2e-2):
            return "decode attention"
    for b, h, g, s_len, d in ((2, 4, 2, 37, 32), (1, 2, 2, 1, 64)):
        q, k, v = (torch.randn(b, h if i == 0 else g, s_len, d, generator=gen).to(torch.bfloat16) for i in range(3))
        ref = F.scaled_dot_product_attention(q.float(), k.float().repeat_interleave(h // g, 1),
                                             v.float().repeat_interleave(h // g, 1), is_causal=True).transpose(1, 2)
        out = _native_prefill_attention(native, q, k, v, d**-0.5).float()
        if not torch.allclose(out, ref, atol=2e-2, rtol=2e-2):
            return "prefill attention"
    if not _elementwise_self_test(native, gen):
        return "element-wise kernels"
    return ""


def _int4_self_test(native: _NativeLib, gen: torch.Generator) -> str:
    """The int4 kernels (``olmo_hf.fast.int4``) against the float arithmetic they replace; "" or what failed."""
    from .int4 import pack_int4_blocked, pack_nibbles, widen_reference

    for n, k, g, m, asym in ((100, 128, 32, 1, False), (64, 256, 128, 5, True), (130, 2048, 64, 8, False),
                             (3, 96, 32, 2, True)):
        q = torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8)
        scale = (torch.rand(n, k // g, generator=gen) / 64).to(torch.bfloat16)
        offset = (8 + torch.randint(-3, 4, (n, k // g), generator=gen)).to(torch.int8) if asym else None
        packed = pack_nibbles(q)
        x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
        dense = widen_reference(packed, scale, offset, k, g)
        ref = F.linear(x.float(), dense.float())
        # x is rounded per group of g (to int8 on the VNNI product, int16 elsewhere): at most half a step of
        # max|x| / 127 per element, then one bf16 rounding of the result
        step = x.float().abs().view(m, -1, g).amax(-1).repeat_interleave(g, -1) / 127
        bound = ref.abs() * 2**-8 + (step / 2) @ dense.float().abs().T + 1e-5
        if not ((_native_int4_matmul(x, packed, scale, offset, k, g, native).float() - ref).abs() <= bound).all():
            return f"int4 matrix-vector product {m}x{k} @ {k}x{n} (group {g})"
        if not torch.equal(_native_int4_to_bf16(packed, scale, offset, k, g, native), dense):
            return f"int4 -> bf16 widening of {n}x{k} (group {g})"
        if native.int4_blocked:
            blocks = pack_int4_blocked(q, scale, offset, g)
            if not ((_native_int4_blocked_matmul(x, blocks, asym, k, g, native).float() - ref).abs() <= bound).all():
                return f"blocked int4 matrix-vector product {m}x{k} @ {k}x{n} (group {g})"
            if not torch.equal(_native_int4_blocked_to_bf16(blocks, asym, k, g, native), dense):
                return f"blocked int4 -> bf16 widening of {n}x{k} (group {g})"
    return ""


def _elementwise_self_test(native: _NativeLib, gen: torch.Generator) -> bool:
    """The element-wise kernels against the PyTorch arithmetic they replace (at most a bf16 ulp apart)."""
    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return torch.allclose(a.float(), b.float(), atol=1e-6, rtol=2**-7)

    def rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.float()
        return (w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps))).to(x.dtype)

    b, s_len, nh, nkv, hd = 2, 3, 4, 2, 64
    x = torch.randn(b, s_len, (nh + 2 * nkv) * hd, generator=gen).to(torch.bfloat16)
    wq, wk = torch.randn(nh * hd, generator=gen), torch.randn(nkv * hd, generator=gen)
    cos, sin = torch.randn(2, 1, s_len, hd, generator=gen)
    q, k = rms(x[..., : nh * hd], wq, 1e-6), rms(x[..., nh * hd : (nh + nkv) * hd], wk, 1e-6)
    qk = torch.cat([q, k], -1).view(b, s_len, nh + nkv, hd)
    ref = (qk * cos[:, :, None]) + (rotate_half(qk) * sin[:, :, None])
    out = _native_qk_norm_rope(native, x[..., : (nh + nkv) * hd], nh * hd, hd, wq, wk, 1e-6, cos, sin)
    if out is None or not close(out, ref.to(torch.bfloat16)):
        return False
    if not close(_native_rms_norm(native, x[..., :hd], wq[:hd], 1e-5), rms(x[..., :hd], wq[:hd], 1e-5)):
        return False
    gu = (4 * torch.randn(b, s_len, 2 * 48, generator=gen)).to(torch.bfloat16)
    return close(_native_silu_mul(native, gu), F.silu(gu[..., :48]) * gu[..., 48:])


def _rows_and_output(x: torch.Tensor, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` as (rows, k) with unit stride along k (a view where possible), and a bf16 (rows, n) output for it."""
    x2d = x.reshape(-1, k)
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    return x2d, torch.empty((x2d.shape[0], n), dtype=torch.bfloat16)


def _native_matmul(x: torch.Tensor, weight: torch.Tensor, native: _NativeLib | None = None,
                   amx: bool = False) -> torch.Tensor:
    """``x @ weight.T`` over the last dimension of ``x`` (at most ``_NATIVE_MAX_ROWS`` rows), ``weight`` a bf16
    (out, in) matrix with unit stride along ``in`` (the plain nn.Linear weight, or a row slice of one). ``amx``:
    the AMX tile kernel for the rows of W it takes (multiples of 16, K % 32 == 0), the AVX512 kernel for the rest."""
    native = native or _native
    n, k = weight.shape
    x2d, out = _rows_and_output(x, n, k)
    m = x2d.shape[0]
    threads, ldw = torch.get_num_threads(), weight.stride(0)
    n_amx = n - n % 16 if amx and native.amx and k % 32 == 0 else 0
    if n_amx and native.gemv_amx(x2d.data_ptr(), x2d.stride(0), weight.data_ptr(), ldw, n_amx, k, out.data_ptr(), n,
                                 m, threads) != 0:
        raise RuntimeError("olmo_hf native AMX matrix-vector kernel rejected its arguments")
    if n_amx < n and native.gemv(x2d.data_ptr(), x2d.stride(0), weight.data_ptr() + 2 * n_amx * ldw, ldw, n - n_amx,
                                 k, out.data_ptr() + 2 * n_amx, n, m, threads) != 0:
        raise RuntimeError("olmo_hf native matrix-vector kernel rejected its arguments")
    return out.view(*x.shape[:-1], n)


def _native_int8_matmul(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                        native: _NativeLib | None = None) -> torch.Tensor:
    """``(x @ qweight.T) * scale`` over the last dimension of bf16 ``x`` (at most ``_NATIVE_MAX_ROWS`` rows), in
    bf16: ``qweight`` an int8 (out, in) matrix with unit stride along ``in`` (torchao's ``Int8Tensor.qdata``),
    ``scale`` its float32 per-row scales, contiguous (out,)."""
    native = native or _native
    n, k = qweight.shape
    x2d, out = _rows_and_output(x, n, k)
    m = x2d.shape[0]
    if native.gemv_int8(x2d.data_ptr(), x2d.stride(0), qweight.data_ptr(), qweight.stride(0), scale.data_ptr(), n, k,
                        out.data_ptr(), n, m, torch.get_num_threads()) != 0:
        raise RuntimeError("olmo_hf native int8 matrix-vector kernel rejected its arguments")
    return out.view(*x.shape[:-1], n)


def int8_grouped_reference(qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The bf16 weight of a group-wise int8 matrix as torchao dequantizes it (``IntxUnpackedToInt8Tensor``, symmetric,
    float16 scales): ``bf16(q * scale)``, the product in float32 (exact: 8 x 11 significant bits), rounded once, as
    torchao's ``q.to(bf16) * scale`` (which promotes to float32) and then ``.to(bf16)`` compute it."""
    group = qweight.shape[1] // scale.shape[1]
    return (qweight.float() * scale.float().repeat_interleave(group, dim=1)).to(torch.bfloat16)


def _native_int8_grouped_matmul(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                                native: _NativeLib | None = None) -> torch.Tensor:
    """``x @ W.T`` for a group-wise int8 weight W = q * scale (per group of in / scale.shape[1] values of a row) over
    the last dimension of bf16 ``x`` (at most ``_NATIVE_MAX_ROWS`` rows), in bf16: ``qweight`` int8 (out, in) with
    unit stride along ``in``, ``scale`` its float16 group scales, contiguous (out, in / group)."""
    native = native or _native
    n, k = qweight.shape
    x2d, out = _rows_and_output(x, n, k)
    if native.gemv_int8_grouped(x2d.data_ptr(), x2d.stride(0), qweight.data_ptr(), qweight.stride(0), scale.data_ptr(),
                                k // scale.shape[1], n, k, out.data_ptr(), n, x2d.shape[0],
                                torch.get_num_threads()) != 0:
        raise RuntimeError("olmo_hf native group-wise int8 matrix-vector kernel rejected its arguments")
    return out.view(*x.shape[:-1], n)


def _native_int8_grouped_to_bf16(qweight: torch.Tensor, scale: torch.Tensor, native: _NativeLib | None = None,
                                 out: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`int8_grouped_reference` (bit for bit) by the native widening, into ``out`` (a contiguous bf16 tensor of
    at least ``qweight.numel()`` elements) when given."""
    native = native or _native
    n, k = qweight.shape
    out = torch.empty((n, k), dtype=torch.bfloat16) if out is None else out.view(-1)[: n * k].view(n, k)
    if native.int8_grouped_to_bf16(qweight.data_ptr(), qweight.stride(0), scale.data_ptr(), k // scale.shape[1], n, k,
                                   out.data_ptr(), torch.get_num_threads()) != 0:
        raise RuntimeError("olmo_hf native group-wise int8 -> bf16 widening rejected its arguments")
    return out


def _native_int8_blocked_matmul(x: torch.Tensor, blocks: torch.Tensor, in_features: int, group: int,
                                native: _NativeLib | None = None) -> torch.Tensor:
    """:func:`_native_int8_grouped_matmul` for a matrix in the blocked layout (``olmo_hf.fast.int8_layout``:
    ``blocks`` (out, row bytes) int8, scales inside)."""
    native = native or _native
    n, k = blocks.shape[0], in_features
    x2d, out = _rows_and_output(x, n, k)
    if native.gemv_int8_blocked(x2d.data_ptr(), x2d.stride(0), blocks.data_ptr(), blocks.stride(0), group, n, k,
                                out.data_ptr(), n, x2d.shape[0], torch.get_num_threads()) != 0:
        raise RuntimeError("olmo_hf native blocked int8 matrix-vector kernel rejected its arguments")
    return out.view(*x.shape[:-1], n)


def _native_int8_blocked_to_bf16(blocks: torch.Tensor, in_features: int, group: int,
                                 native: _NativeLib | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`_native_int8_grouped_to_bf16` (torchao's dequantization, bit for bit) for a matrix in the blocked
    layout, into ``out`` (a contiguous bf16 tensor of at least out x in elements) when given."""
    native = native or _native
    n, k = blocks.shape[0], in_features
    out = torch.empty((n, k), dtype=torch.bfloat16) if out is None else out.view(-1)[: n * k].view(n, k)
    if native.int8_blocked_to_bf16(blocks.data_ptr(), blocks.stride(0), group, n, k, out.data_ptr(),
                                   torch.get_num_threads()) != 0:
        raise RuntimeError("olmo_hf native blocked int8 -> bf16 widening rejected its arguments")
    return out


# kernels.c: the kinds of weight olmo_hf_gemm_amx reads
_W_BF16, _W_INT8, _W_INT4, _W_INT8_GROUPED, _W_INT8_BLOCKED, _W_INT4_BLOCKED, _W_INT4_BLOCKED_ASYM = range(7)


def _native_gemm(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None,
                 native: _NativeLib | None = None, *, int4: tuple[torch.Tensor | None, int, int] | None = None,
                 int4_blocked: tuple[int, int, bool] | None = None, int8_group: int = 0,
                 blocked_in_features: int = 0) -> torch.Tensor:
    """``x @ W.T`` over the last dimension of bf16 ``x`` (any number of rows: prefill) on AMX tiles, reading the
    weight once as it is: ``weight`` a bf16 (out, in) matrix; or int8 with its float32 per-row ``scale`` (torchao's
    arithmetic: ``bf16(bf16(x @ q.T) * bf16(scale))``); or, with ``int4=(offset, in_features, group)``, the
    nibble-layout int4 matrix of ``olmo_hf.fast.int4`` with its bf16 group ``scale`` (widened as torchao
    dequantizes), or with ``int4_blocked=(in_features, group, asymmetric)`` one in its blocked layout (scales and
    offsets inside); or, with ``int8_group=G``, group-wise int8 with its float16 group ``scale`` (out, in / G), widened
    as torchao dequantizes (:func:`int8_grouped_reference`); with ``blocked_in_features=in`` too, ``weight`` is that
    matrix in the blocked layout (``olmo_hf.fast.int8_layout``, scales inside). Unit stride along ``in``,
    ``in % 32 == 0``."""
    native = native or _native
    n = weight.shape[0]
    if int4_blocked is not None:
        k, group, asymmetric = int4_blocked
        kind, extra = (_W_INT4_BLOCKED_ASYM if asymmetric else _W_INT4_BLOCKED), (None, group)
    elif int4 is not None:
        offset, k, group = int4
        kind, extra = _W_INT4, (None if offset is None else offset.data_ptr(), group)
    elif int8_group:
        k = blocked_in_features or weight.shape[1]
        kind, extra = (_W_INT8_BLOCKED if blocked_in_features else _W_INT8_GROUPED), (None, int8_group)
    else:
        k = weight.shape[1]
        kind, extra = (_W_INT8 if weight.dtype == torch.int8 else _W_BF16), (None, 0)
    x2d, out = _rows_and_output(x, n, k)
    if native.gemm_amx(x2d.data_ptr(), x2d.stride(0), x2d.shape[0], weight.data_ptr(), weight.stride(0), kind,
                       None if scale is None else scale.data_ptr(), *extra, n, k, out.data_ptr(), n,
                       torch.get_num_threads()) != 0:
        raise RuntimeError("olmo_hf native AMX matrix product rejected its arguments")
    return out.view(*x.shape[:-1], n)


# The AMX product is measured (and may be enabled) at 128 rows; it is not blocked for L1, and against oneDNN it
# falls behind as rows grow (AMX Xeon, 2 threads, 4 matrices of the 1B shape: x1.14 at 128 rows, x0.98 at 256,
# x0.78 at 512), so larger products (long prompts, batched prefill) keep F.linear.
_GEMM_AMX_MAX_ROWS = 128


def _can_use_native_gemm(x: torch.Tensor, k: int) -> bool:
    """Whether a product of ``x`` (bf16, more rows than the matrix-vector kernels take, at most
    ``_GEMM_AMX_MAX_ROWS``) may run on AMX tiles."""
    return k % 32 == 0 and x.dtype == torch.bfloat16 and type(x) is torch.Tensor and x.device.type == "cpu" \
        and x.numel() <= _GEMM_AMX_MAX_ROWS * x.shape[-1] and not torch.compiler.is_compiling()


def _native_int8_to_bf16(qweight: torch.Tensor, native: _NativeLib | None = None,
                         out: torch.Tensor | None = None) -> torch.Tensor:
    """``qweight.to(torch.bfloat16)`` (exact) for an int8 (out, in) matrix with unit stride along ``in``, into
    ``out`` (a contiguous bf16 tensor of at least ``qweight.numel()`` elements) when given."""
    native = native or _native
    n, k = qweight.shape
    out = torch.empty((n, k), dtype=torch.bfloat16) if out is None else out.view(-1)[: n * k].view(n, k)
    if native.int8_to_bf16(qweight.data_ptr(), qweight.stride(0), n, k, out.data_ptr(), torch.get_num_threads()) != 0:
        raise RuntimeError("olmo_hf native int8 -> bf16 conversion rejected its arguments")
    return out


def _native_int4_matmul(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None,
                        k: int, group: int, native: _NativeLib | None = None) -> torch.Tensor:
    """``x @ W.T`` over the last dimension of bf16 ``x`` (at most ``_NATIVE_MAX_ROWS`` rows, width ``k``), in bf16,
    for an int4 weight in the fast path's nibble layout (``olmo_hf.fast.int4``): ``packed`` (out, Kp/2) uint8 with
    unit stride along its columns, ``scale`` contiguous bf16 (out, k / group), ``offset`` contiguous int8 of the
    same shape or None (symmetric, 8)."""
    native = native or _native
    n = packed.shape[0]
    x2d, out = _rows_and_output(x, n, k)
    if native.gemv_int4(x2d.data_ptr(), x2d.stride(0), packed.data_ptr(), packed.stride(0), scale.data_ptr(),
                        None if offset is None else offset.data_ptr(), n, k, group, out.data_ptr(), n, x2d.shape[0],
                        torch.get_num_threads()) != 0:
        raise RuntimeError("olmo_hf native int4 matrix-vector kernel rejected its arguments")
    return out.view(*x.shape[:-1], n)


def _native_int4_to_bf16(packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, k: int, group: int,
                         native: _NativeLib | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """The (out, k) bf16 weight of an int4 matrix in the nibble layout, dequantized as torchao does (bit for bit),
    into ``out`` (a contiguous bf16 tensor of at least out * k elements) when given."""
    native = native or _native
    n = packed.shape[0]
    out = torch.empty((n, k), dtype=torch.bfloat16) if out is None else out.view(-1)[: n * k].view(n, k)
    if native.int4_to_bf16(packed.data_ptr(), packed.stride(0), scale.data_ptr(),
                           None if offset is None else offset.data_ptr(), n, k, group, out.data_ptr(),
                           torch.get_num_threads()) != 0:
        raise RuntimeError("olmo_hf native int4 -> bf16 widening rejected its arguments")
    return out


def _native_int4_blocked_matmul(x: torch.Tensor, blocks: torch.Tensor, asymmetric: bool, k: int, group: int,
                                native: _NativeLib | None = None) -> torch.Tensor:
    """:func:`_native_int4_matmul` for an int4 matrix in the blocked layout (``olmo_hf.fast.int4``: ``blocks``
    (out, row bytes) uint8, scales and offsets inside; ``asymmetric``: whether the rows hold offsets)."""
    native = native or _native
    n = blocks.shape[0]
    x2d, out = _rows_and_output(x, n, k)
    if native.gemv_int4_blocked(x2d.data_ptr(), x2d.stride(0), blocks.data_ptr(), blocks.stride(0), int(asymmetric),
                                group, n, k, out.data_ptr(), n, x2d.shape[0], torch.get_num_threads()) != 0:
        raise RuntimeError("olmo_hf native blocked int4 matrix-vector kernel rejected its arguments")
    return out.view(*x.shape[:-1], n)


def _native_int4_blocked_to_bf16(blocks: torch.Tensor, asymmetric: bool, k: int, group: int,
                                 native: _NativeLib | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`_native_int4_to_bf16` (bit for bit) for an int4 matrix in the blocked layout."""
    native = native or _native
    n = blocks.shape[0]
    out = torch.empty((n, k), dtype=torch.bfloat16) if out is None else out.view(-1)[: n * k].view(n, k)
    if native.int4_blocked_to_bf16(blocks.data_ptr(), blocks.stride(0), int(asymmetric), group, n, k, out.data_ptr(),
                                   torch.get_num_threads()) != 0:
        raise RuntimeError("olmo_hf native blocked int4 -> bf16 widening rejected its arguments")
    return out


def _native_attention(
    native: _NativeLib, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    """softmax(scale * q k^T) v for ONE query position: q (batch, heads, 1, head_dim), k / v (batch, kv_heads, seq,
    head_dim), any strides but the last; returns (batch, 1, heads, head_dim), what the attention interface returns."""
    b, h, _, d = q.shape
    g, s_len = k.shape[1], k.shape[2]
    out = torch.empty((b, 1, h, d), dtype=torch.bfloat16)
    status = native.attention(
        q.data_ptr(), q.stride(0), q.stride(1), k.data_ptr(), k.stride(0), k.stride(1), k.stride(2),
        v.data_ptr(), v.stride(0), v.stride(1), v.stride(2), out.data_ptr(), b, h, g, s_len, d, scale,
        torch.get_num_threads(),
    )
    if status != 0:
        raise RuntimeError(f"olmo_hf native decode attention failed (status {status})")
    return out


def _native_prefill_attention(
    native: _NativeLib, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    """Causal softmax(scale * q k^T) v over a whole prompt (as many queries as keys, no padding): q (batch, heads,
    seq, head_dim), k / v (batch, kv_heads, seq, head_dim), any strides but the last; returns (batch, seq, heads,
    head_dim), what the attention interface returns."""
    b, h, s_len, d = q.shape
    out = torch.empty((b, s_len, h, d), dtype=torch.bfloat16)
    status = native.prefill_attention(
        q.data_ptr(), q.stride(0), q.stride(1), q.stride(2), k.data_ptr(), k.stride(0), k.stride(1), k.stride(2),
        v.data_ptr(), v.stride(0), v.stride(1), v.stride(2), out.data_ptr(), b, h, k.shape[1], s_len, d, scale,
        torch.get_num_threads(),
    )
    if status != 0:
        raise RuntimeError(f"olmo_hf native prefill attention failed (status {status})")
    return out


_PREFILL_ATTENTION_MAX_SEQ = 4096  # kernels.c: olmo_hf_prefill_attention_bf16


def _can_use_native_attention(module, q, k, v, attention_mask, kwargs) -> bool:
    """Unmasked steps with sdpa in bf16: a decoding step (one query position, what sdpa gets from an unpadded
    batch), or a whole unpadded prompt (as many queries as keys, causal) whose head_dim the kernel takes."""
    prefill = q.shape[2] == k.shape[2] <= _PREFILL_ATTENTION_MAX_SEQ and q.shape[-1] % 32 == 0 and q.shape[-1] <= 256
    window = getattr(module, "sliding_window", None)  # OLMo 3 sliding layers: causal == windowed only inside it
    return (
        (window is None or k.shape[2] <= window)
        and _PLAN is not None
        and (_PLAN.decode_attention if q.shape[2] == 1 else (prefill and _PLAN.prefill_attention))
        and attention_mask is None
        and attn_implementation(module.config) == "sdpa"
        and q.dtype == k.dtype == v.dtype == torch.bfloat16
        and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
        and q.shape[-1] <= 512
        and not kwargs.get("output_attentions")
        and not module.training
        and type(q) is torch.Tensor  # not a FakeTensor (torch.export / ONNX tracing): they have no data
        and not torch.compiler.is_compiling()
        and not (torch.is_grad_enabled() and q.requires_grad)
    )


def _native_rms_norm(native: _NativeLib, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Olmo2RMSNorm of bf16 ``x`` (..., n) over its last dimension (unit stride, rows evenly strided) with a float32
    ``weight`` (n,); n must be a multiple of 16."""
    n = x.shape[-1]
    rows = x.reshape(-1, n) if x.dim() != 2 else x
    out = torch.empty(x.shape, dtype=torch.bfloat16)
    if native.rms_norm(rows.data_ptr(), rows.stride(0), rows.shape[0], n, weight.data_ptr(), eps, out.data_ptr(),
                       torch.get_num_threads()) != 0:
        raise RuntimeError("olmo_hf native rms_norm rejected its arguments")
    return out


def _native_qk_norm_rope(
    native: _NativeLib, qk: torch.Tensor, q_size: int, head_dim: int, wq: torch.Tensor | None,
    wk: torch.Tensor | None, eps: float, cos: torch.Tensor, sin: torch.Tensor,
) -> torch.Tensor | None:
    """q/k norm (optional) and RoPE in one pass. ``qk``: (batch, seq, q_size + k_size) bf16, q then k, unit stride
    last; ``wq`` / ``wk``: float32 norm weights or None; ``cos`` / ``sin``: float32 (1 or batch, seq, head_dim).
    Returns (batch, seq, heads + kv_heads, head_dim) bf16, or None for shapes the kernel does not take."""
    bsz, seq, width = qk.shape
    k_size = width - q_size
    if head_dim % 32 or q_size % head_dim or k_size % head_dim or qk.stride(-1) != 1:
        return None
    if bsz > 1 and qk.stride(0) != seq * qk.stride(1):  # token rows must be evenly strided
        return None
    if cos.dtype != torch.float32 or cos.shape != sin.shape or cos.stride() != sin.stride() or cos.stride(-1) != 1:
        return None
    if cos.shape[0] not in (1, bsz) or cos.shape[1] != seq:
        return None
    cs_b = cos.stride(0) if cos.shape[0] == bsz and bsz > 1 else 0
    out = torch.empty((bsz, seq, width // head_dim, head_dim), dtype=torch.bfloat16)
    status = native.qk_norm_rope(
        qk.data_ptr(), qk.stride(1), bsz, seq, q_size, k_size, head_dim,
        None if wq is None else wq.data_ptr(), None if wk is None else wk.data_ptr(), eps,
        cos.data_ptr(), sin.data_ptr(), cs_b, cos.stride(1), out.data_ptr(), torch.get_num_threads(),
    )
    if status != 0:
        raise RuntimeError(f"olmo_hf native q/k norm + RoPE failed (status {status})")
    return out


def _native_silu_mul(native: _NativeLib, gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` in bf16 for ``gate_up`` (..., 2n) = [gate | up], contiguous, n a multiple of 16."""
    n = gate_up.shape[-1] // 2
    out = torch.empty((*gate_up.shape[:-1], n), dtype=torch.bfloat16)
    rows = gate_up.numel() // (2 * n)
    if native.silu_mul(gate_up.data_ptr(), 2 * n, rows, n, out.data_ptr(), torch.get_num_threads()) != 0:
        raise RuntimeError("olmo_hf native silu_mul rejected its arguments")
    return out


def _native_elementwise_ok(x: torch.Tensor) -> bool:
    """Whether the element-wise kernels may run on ``x``: the plan enables them, bf16 on CPU, inference."""
    return (
        _PLAN is not None
        and (_PLAN.elementwise if x.numel() <= _NATIVE_MAX_ROWS * x.shape[-1] else _PLAN.elementwise_prefill)
        and type(x) is torch.Tensor  # not a FakeTensor (torch.export / ONNX tracing): they have no data
        and x.dtype == torch.bfloat16
        and x.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and not (torch.is_grad_enabled() and x.requires_grad)
    )


# ----------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class KernelPlan:
    """Which native kernels run on this machine, and why (measured at first use, see :func:`kernel_plan`).

    ``gemv_max_rows``: products of 1..gemv_max_rows rows take the native matrix-vector kernel (0: none do);
    ``int8_gemv_max_rows``: the same for the int8 weight-only kernel (``olmo_hf.fast.quantized``, one scale per row);
    ``int8_grouped_gemv_max_rows``: the same for group-wise int8 (the default of ``quantization_config("int8")``);
    ``int8_convert``: int8 weights (per row or group-wise) are widened to bf16 for larger products by the native
    conversion kernels;
    ``int4_gemv_max_rows`` / ``int4_convert``: the same for int4 weights (``olmo_hf.fast.int4``);
    ``gemm_amx`` / ``int8_gemm_amx`` / ``int4_gemm_amx``: larger (prefill) bf16 / int8 / int4 products run on AMX
    tiles (``_native_gemm``) instead of F.linear (after widening, for int8 / int4);
    ``notes``: for each part, one line saying what was measured or why it is off."""

    isa: str | None
    gemv_max_rows: int = 0
    gemv_amx_from_rows: int = 0  # products of this many rows or more (up to gemv_max_rows) run on AMX; 0: never
    decode_attention: bool = False
    prefill_attention: bool = False
    elementwise: bool = False  # decoding steps (up to _NATIVE_MAX_ROWS tokens)
    elementwise_prefill: bool = False  # larger inputs (measured at 128 tokens)
    int8_gemv_max_rows: int = 0
    int8_grouped_gemv_max_rows: int = 0
    int8_convert: bool = False
    int4_gemv_max_rows: int = 0
    int4_convert: bool = False
    gemm_amx: bool = False  # larger (prefill) bf16 products on AMX tiles instead of F.linear
    int8_gemm_amx: bool = False  # larger int8 products on AMX tiles instead of widening + F.linear
    int4_gemm_amx: bool = False  # the same for int4
    notes: dict = field(default_factory=dict)


_PLAN: KernelPlan | None = None
_FORCED_AMX_FROM_ROWS = 2  # OLMO_HF_NATIVE=force: AMX from 2 rows (where it measured faster on a Xeon with AMX)
_plan_lock = threading.Lock()
# A part is enabled when its kernel's median time is below this fraction of PyTorch's in the same interleaved
# measurement: a margin against measurement noise on shared machines (never slower is the promise).
_ENABLE_BELOW = 0.95


# A plan measurement during which other processes kept more than this many cores busy is repeated (up to
# _PLAN_RETRIES times; the least disturbed one is kept): on a shared 2-core machine a 2-thread OpenMP kernel slows down
# badly when one of its threads is descheduled, and a disturbed measurement would switch parts on or off at random.
_PLAN_MAX_FOREIGN_LOAD = 0.5
_PLAN_RETRIES = 1  # each repeat lengthens the fast-path call on a busy machine (see docs/performance.md)


def _cpu_ticks() -> tuple[int, int] | None:
    """(clock ticks all CPUs spent busy, ticks this process spent, all threads) from Linux's /proc; None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
        return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0), int(own[11]) + int(own[12])
    except (OSError, ValueError, IndexError):
        return None


def foreign_load(start: tuple[int, int] | None, end: tuple[int, int] | None, seconds: float) -> float | None:
    """Cores that OTHER processes kept busy on average between two :func:`_cpu_ticks` readings ``seconds`` apart;
    None where unknown or too short to tell (the counters tick every 10 ms)."""
    if start is None or end is None or seconds < 0.05:
        return None
    return max(0, (end[0] - start[0]) - (end[1] - start[1])) / os.sysconf("SC_CLK_TCK") / seconds


def _median_times_once(fns, repeats: int, warmup: int) -> list[float]:
    times = [[] for _ in fns]
    for i in range(warmup + repeats):
        for j, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[j].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def _median_times(fns, repeats: int = 7, warmup: int = 2) -> list[float]:
    """Median seconds per call of each function, calls interleaved (so that a disturbance hits all alike); measured
    again while other processes kept the CPUs busy (see _PLAN_MAX_FOREIGN_LOAD)."""
    best = None
    for _ in range(1 + _PLAN_RETRIES):
        t0, start = time.perf_counter(), _cpu_ticks()
        times = _median_times_once(fns, repeats, warmup)
        load = foreign_load(start, _cpu_ticks(), time.perf_counter() - t0)
        if best is None or (load is not None and (best[1] is None or load < best[1])):
            best = (times, load)
        if load is None or load <= _PLAN_MAX_FOREIGN_LOAD:
            break
    return best[0]


class _SdpaCaller(torch.nn.Module):
    """The attributes Transformers' attention functions read from the attention block that calls them."""

    num_key_value_groups = 1
    is_causal = True


def decide_part(name: str, native_s: float, torch_s: float, baseline: str) -> tuple[bool, str]:
    """Enable a part only where it beats what PyTorch does in its place; the note gives the measured speeds."""
    ratio = torch_s / native_s if native_s > 0 else float("inf")
    on = native_s < _ENABLE_BELOW * torch_s
    verdict = "on" if on else "off (not faster here)"
    return on, f"{name}: {verdict}, measured x{ratio:.2f} of {baseline} ({native_s * 1e3:.2f} vs {torch_s * 1e3:.2f} ms)"


def _measure_plan(native: _NativeLib) -> KernelPlan:
    """Each native kernel against what the plain model runs in its place, on representative shapes."""
    gen = torch.Generator().manual_seed(0)
    notes, enabled = {}, {}
    # Matrix-vector: two 32 MiB weights (an OLMo-2-1B MLP matrix each), alternated so that neither stays cached.
    weights = [torch.randn(8192, 2048, generator=gen).to(torch.bfloat16) for _ in range(2)]
    max_rows = amx_from = 0
    for low, rows in ((1, 1), (2, 4), (5, 8)):  # each measured row count decides the products of low..rows rows
        x = torch.randn(rows, 2048, generator=gen).to(torch.bfloat16)
        kernels = [("AVX512", lambda: [_native_matmul(x, w, native) for w in weights])]
        if native.amx:
            kernels.append(("AMX", lambda: [_native_matmul(x, w, native, amx=True) for w in weights]))
        times = _median_times([fn for _, fn in kernels] + [lambda: [F.linear(x, w) for w in weights]])
        best = min(range(len(kernels)), key=lambda i: times[i])
        name = kernels[best][0]
        on, note = decide_part(f"matrix-vector, {name} ({rows} row{'s' * (rows > 1)})", times[best], times[-1],
                               "F.linear")
        if len(kernels) > 1:
            note += f"; {kernels[1 - best][0]} {times[1 - best] * 1e3:.2f} ms"
        notes[f"gemv_{rows}"] = note
        if not on:
            break
        max_rows = rows
        if name == "AMX" and not amx_from:
            amx_from = low
    del weights
    if native.full:
        # Decoding attention reads each layer's keys and values once per step: 4 caches (layers) per call, so that
        # not everything is served from L2, at a short and a longer context; on only where faster at both. Against
        # what the attention block runs in its place: Transformers' "sdpa" attention function (torch's kernel and
        # the transposes around it); at 512 keys both kernels stream at the memory's pace, and against the bare
        # torch kernel the decision was a coin toss (x1.01-1.09), which also decides the one-call layer step.
        q = torch.randn(1, 16, 1, 128, generator=gen).to(torch.bfloat16)
        sdpa, block = ALL_ATTENTION_FUNCTIONS["sdpa"], _SdpaCaller()
        decode_on, decode_notes = True, []
        for keys in (128, 512):
            caches = [torch.randn(2, 1, 16, keys, 128, generator=gen).to(torch.bfloat16) for _ in range(4)]
            nat, ref = _median_times([lambda: [_native_attention(native, q, kv[0], kv[1], 0.088) for kv in caches],
                                      lambda: [sdpa(block, q, kv[0], kv[1], None, scaling=0.088) for kv in caches]])
            on, note = decide_part(f"decode attention (16 heads x {keys} keys)", nat, ref, "sdpa")
            decode_on, decode_notes = decode_on and on, decode_notes + [note]
        enabled["decode_attention"] = decode_on
        notes["decode_attention"] = "; ".join(decode_notes)
        q, k, v = torch.randn(3, 1, 16, 128, 128, generator=gen).to(torch.bfloat16)
        nat, ref = _median_times([lambda: _native_prefill_attention(native, q, k, v, 0.088),
                                  lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.088)])
        enabled["prefill_attention"], notes["prefill_attention"] = decide_part(
            "prefill attention (16 heads x 128 tokens)", nat, ref, "sdpa")
        x = torch.randn(1, 1, 2048, generator=gen).to(torch.bfloat16)
        w = torch.randn(2048, generator=gen)

        def torch_rms_norm():  # Olmo2RMSNorm's arithmetic
            xf = x.float()
            return (w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6))).to(torch.bfloat16)

        gate_up = torch.randn(1, 1, 16384, generator=gen).to(torch.bfloat16)
        nat, ref = _median_times([lambda: (_native_rms_norm(native, x, w, 1e-6), _native_silu_mul(native, gate_up)),
                                  lambda: (torch_rms_norm(), F.silu(gate_up[..., :8192]) * gate_up[..., 8192:])],
                                 repeats=15)
        enabled["elementwise"], notes["elementwise"] = decide_part(
            "element-wise (RMSNorm + SwiGLU, one token)", nat, ref, "PyTorch operators")
        x = torch.randn(1, 128, 2048, generator=gen).to(torch.bfloat16)  # a prompt: torch's ops run threaded too
        gate_up = torch.randn(1, 128, 16384, generator=gen).to(torch.bfloat16)
        nat, ref = _median_times([lambda: (_native_rms_norm(native, x, w, 1e-6), _native_silu_mul(native, gate_up)),
                                  lambda: (torch_rms_norm(), F.silu(gate_up[..., :8192]) * gate_up[..., 8192:])])
        enabled["elementwise_prefill"], notes["elementwise_prefill"] = decide_part(
            "element-wise (RMSNorm + SwiGLU, 128 tokens)", nat, ref, "PyTorch operators")
    else:
        for part in ("decode_attention", "prefill_attention", "elementwise", "elementwise_prefill"):
            notes[part] = f"{part.replace('_', ' ')}: off (no {native.isa} variant; it needs AVX512-BF16)"
    enabled.update(_measure_int8(native, gen, notes))
    enabled.update(_measure_int4(native, gen, notes))
    enabled.update(_measure_gemm(native, gen, notes, enabled["int8_convert"], enabled["int4_convert"]))
    notes["amx"] = native.amx_note
    return KernelPlan(isa=native.isa, gemv_max_rows=max_rows, gemv_amx_from_rows=amx_from, notes=notes, **enabled)


def _measure_int8(native: _NativeLib, gen: torch.Generator, notes: dict) -> dict:
    """The int8 weight-only kernels (``olmo_hf.fast.quantized``) against what runs without them: PyTorch's fused
    ``_weight_int8pack_mm`` (what ``olmo_hf.quantization.use_cpu_int8_kernel`` runs) for 1..8 rows, and
    ``q.to(torch.bfloat16)`` for the conversion that precedes the GEMM of larger products."""
    from ..compat import has_int8_weight_only_mm, int8_weight_only_mm

    weights = [torch.randint(-127, 128, (8192, 2048), generator=gen, dtype=torch.int8) for _ in range(2)]
    scale = torch.rand(8192, generator=gen) / 64
    max_rows = 0
    for rows in (1, 4, 8):
        x = torch.randn(rows, 2048, generator=gen).to(torch.bfloat16)
        if has_int8_weight_only_mm():
            baseline, name = lambda: [int8_weight_only_mm(x, w, scale.to(torch.bfloat16)) for w in weights], \
                "torch._weight_int8pack_mm"
        else:
            baseline, name = lambda: [F.linear(x, w.to(torch.bfloat16)) * scale for w in weights], "dequantize + F.linear"
        nat, ref = _median_times([lambda: [_native_int8_matmul(x, w, scale, native) for w in weights], baseline])
        on, note = decide_part(f"int8 matrix-vector ({rows} row{'s' * (rows > 1)})", nat, ref, name)
        notes[f"int8_gemv_{rows}"] = note
        if not on:
            break
        max_rows = rows
    buffer = torch.empty(weights[0].shape, dtype=torch.bfloat16)
    nat, ref = _median_times([lambda: [_native_int8_to_bf16(w, native, buffer) for w in weights],
                              lambda: [w.to(torch.bfloat16) for w in weights]])
    convert, notes["int8_convert"] = decide_part("int8 -> bf16 widening before a GEMM", nat, ref, "Tensor.to")
    # group-wise (the default layout): no PyTorch kernel takes it, so the alternative is widening the whole matrix and
    # F.linear on every call (torchao's eager path), several times the kernel's time (8192 x 2048, 1 row: 1.5 ms
    # against ~5 ms of widening alone); not measured, so that the plan's measurement does not grow
    grouped_rows = _NATIVE_MAX_ROWS
    notes["int8_grouped_gemv"] = ("int8 group-wise matrix-vector (1-8 rows): on (unmeasured: without it every product "
                                  "widens the whole matrix, as torchao does)"
                                  + ("; groups of 32-128 in the blocked layout (vpdpbusd, AVX512-VNNI)"
                                     if native.int8_blocked else ""))
    return {"int8_gemv_max_rows": max_rows, "int8_grouped_gemv_max_rows": grouped_rows, "int8_convert": convert}


def _measure_int4(native: _NativeLib, gen: torch.Generator, notes: dict) -> dict:
    """The int4 kernels (``olmo_hf.fast.int4``) against what runs without them: the weight widened to bf16 by
    PyTorch operators, then ``F.linear`` (1 and 8 rows); PyTorch's widening for the conversion before a GEMM. On a
    2048 x 2048 matrix (group 64): the PyTorch side is slow (~20x the kernels), so a small shape decides."""
    from .int4 import pack_nibbles, widen_reference

    k, group = 2048, 64
    weight = pack_nibbles(torch.randint(-8, 8, (2048, k), generator=gen, dtype=torch.int8))
    scale = (torch.rand(2048, k // group, generator=gen) / 64).to(torch.bfloat16)
    max_rows = 0
    for low, rows in ((1, 1), (2, 8)):
        x = torch.randn(rows, k, generator=gen).to(torch.bfloat16)
        nat, ref = _median_times([lambda: _native_int4_matmul(x, weight, scale, None, k, group, native),
                                  lambda: F.linear(x, widen_reference(weight, scale, None, k, group))],
                                 repeats=3, warmup=1)
        on, note = decide_part(f"int4 matrix-vector ({rows} row{'s' * (rows > 1)})", nat, ref,
                               "PyTorch widening + F.linear")
        notes[f"int4_gemv_{rows}"] = note + (", vpdpbusd (AVX512-VNNI, x as int8)" if native.int4_vnni else "") + (
            "; groups of 32-128 in the blocked layout" if native.int4_blocked else "")
        if not on:
            break
        max_rows = rows
    buffer = torch.empty((2048, k), dtype=torch.bfloat16)
    nat, ref = _median_times([lambda: _native_int4_to_bf16(weight, scale, None, k, group, native, buffer),
                              lambda: widen_reference(weight, scale, None, k, group)], repeats=3, warmup=1)
    convert, notes["int4_convert"] = decide_part("int4 -> bf16 widening before a GEMM", nat, ref, "PyTorch operators")
    return {"int4_gemv_max_rows": max_rows, "int4_convert": convert}


def _measure_gemm(native: _NativeLib, gen: torch.Generator, notes: dict, int8_convert: bool,
                  int4_convert: bool) -> dict:
    """The AMX matrix product against what larger products run without it, at 128 rows (a prompt) on a 4096 x 2048
    weight: F.linear (oneDNN) for bf16; widening + F.linear (+ scale) for int8 and int4 (``olmo_hf.fast.quantized``,
    ``olmo_hf.fast.int4``), with the widening the plan chose."""
    from .int4 import pack_nibbles, widen_reference

    if not native.amx or native.gemm_amx is None:
        why = native.amx_note.split(": ", 1)[-1]
        notes["gemm_amx"] = f"prefill products on AMX tiles: {why}"
        return {}
    n, k, group = 4096, 2048, 64
    w = torch.randn(n, k, generator=gen).to(torch.bfloat16)
    q = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
    scale = torch.rand(n, generator=gen) / 64
    nibbles = pack_nibbles(torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8))
    scale4 = (torch.rand(n, k // group, generator=gen) / 64).to(torch.bfloat16)
    x = torch.randn(128, k, generator=gen).to(torch.bfloat16)
    buffer = torch.empty(n * k, dtype=torch.bfloat16)
    widen8 = (lambda: _native_int8_to_bf16(q, native, buffer.view(n, k))) if int8_convert else (
        lambda: q.to(torch.bfloat16))
    widen4 = (lambda: _native_int4_to_bf16(nibbles, scale4, None, k, group, native, buffer)) if int4_convert else (
        lambda: widen_reference(nibbles, scale4, None, k, group))
    times = _median_times([lambda: _native_gemm(x, w, None, native), lambda: F.linear(x, w),
                           lambda: _native_gemm(x, q, scale, native),
                           lambda: F.linear(x, widen8()) * scale.to(torch.bfloat16),
                           lambda: _native_gemm(x, nibbles, scale4, native, int4=(None, k, group)),
                           lambda: F.linear(x, widen4())])
    enabled = {}
    for i, (part, kind, baseline) in enumerate((("gemm_amx", "bf16", "F.linear"),
                                                ("int8_gemm_amx", "int8", "widening + F.linear"),
                                                ("int4_gemm_amx", "int4", "widening + F.linear"))):
        enabled[part], notes[part] = decide_part(f"prefill products on AMX tiles (128 rows, {kind})", times[2 * i],
                                                 times[2 * i + 1], baseline)
    return enabled


def kernel_plan() -> KernelPlan:
    """The plan for this process: built (and measured, unless OLMO_HF_NATIVE=force) on first use."""
    global _PLAN
    if _PLAN is None:
        with _plan_lock:
            if _PLAN is None:
                _PLAN = _make_plan()
    return _PLAN


def _make_plan() -> KernelPlan:
    native = _native_kernel()
    if native is None:
        return KernelPlan(isa=None, notes={"native": f"no native kernels: {native_unavailable_reason()}"})
    if _native_mode() == "force":
        return KernelPlan(isa=native.isa, gemv_max_rows=_NATIVE_MAX_ROWS,
                          gemv_amx_from_rows=_FORCED_AMX_FROM_ROWS if native.amx else 0, decode_attention=native.full,
                          prefill_attention=native.full, elementwise=native.full,
                          elementwise_prefill=native.full,
                          int8_gemv_max_rows=_NATIVE_MAX_ROWS, int8_grouped_gemv_max_rows=_NATIVE_MAX_ROWS,
                          int8_convert=True,
                          gemm_amx=native.amx and native.gemm_amx is not None,
                          int8_gemm_amx=native.amx and native.gemm_amx is not None,
                          int4_gemm_amx=native.amx and native.gemm_amx is not None,
                          int4_gemv_max_rows=_NATIVE_MAX_ROWS, int4_convert=True,
                          notes={"native": "every kernel built: on, unmeasured (OLMO_HF_NATIVE=force)",
                                 "amx": native.amx_note})
    try:
        with torch.no_grad():
            return _measure_plan(native)
    except Exception as e:  # a measurement that fails leaves everything to PyTorch
        return KernelPlan(isa=native.isa, notes={"native": f"off: measuring the kernels failed ({e})"})
