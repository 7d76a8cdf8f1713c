# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""The native decode kernels (``kernels.c``): built with the system C compiler and cached, self-tested against
oneDNN / sdpa, called through ctypes. Optional: where they are unavailable, ``_native_kernel()`` returns None."""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings

import torch
import torch.nn.functional as F

from ..compat import attn_implementation, mkldnn_data_ptr, mkldnn_linear, mkldnn_nbytes, mkldnn_pack_linear_weight
from ..modules import rotate_half

# Two decode-time kernels of our own, in C (kernels.c), compiled once per machine with the system C compiler
# into ~/.cache/olmo_hf (OLMO_HF_CACHE) and checked against oneDNN / sdpa before use:
# - olmo_hf_packed_gemv_bf16: x @ W^T for 1..8 rows, reading the SAME packed bytes as oneDNN (no second copy),
#   with AVX512-BF16 dot products (fp32 accumulation) on torch's own OpenMP threads. On the 2-core Zen 4
#   development machine it streams a 1B model's weights at ~31 GB/s where oneDNN's inner product reaches ~22.
# - olmo_hf_decode_attention_bf16: softmax(q k^T) v for one query position (fp32 softmax and accumulation),
#   0.04 ms per layer where sdpa's flash kernel takes 0.35 ms (batch 1; 0.4 vs 3 ms at batch 8).
# Without AVX512-BF16, a compiler or GNU OpenMP in torch, or with OLMO_HF_NATIVE=0, oneDNN and sdpa do the work
# (same results up to accumulation order).
_NATIVE_MAX_ROWS = 8
_NATIVE_SOURCE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels.c")  # package data
# -ffp-contract=off: the element-wise kernels round each product as PyTorch does (no fused multiply-adds).
_NATIVE_FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-ffp-contract=off", "-fopenmp",
                 "-shared", "-fPIC"]
_NATIVE_LIBS = ["-lm"]
_native = None  # None: not tried yet; False: unavailable; else a _NativeLib


class _NativeLib:
    """The entry points of the compiled library (ctypes functions; they release the GIL)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        c_long, c_ptr = ctypes.c_long, ctypes.c_void_p
        self.gemv = lib.olmo_hf_packed_gemv_bf16
        self.gemv.argtypes = [c_ptr, c_long, c_ptr, c_long, c_long, c_ptr, c_long, c_long, ctypes.c_int]
        self.gemv.restype = ctypes.c_int
        self.attention = lib.olmo_hf_decode_attention_bf16
        self.attention.argtypes = [c_ptr, c_long, c_long, c_ptr, c_long, c_long, c_long, c_ptr, c_long, c_long,
                                   c_long, c_ptr, c_long, c_long, c_long, c_long, c_long, ctypes.c_float, ctypes.c_int]
        self.attention.restype = ctypes.c_int
        c_float, c_int = ctypes.c_float, ctypes.c_int
        self.rms_norm = lib.olmo_hf_rms_norm_bf16
        self.rms_norm.argtypes = [c_ptr, c_long, c_long, c_long, c_ptr, c_float, c_ptr, c_int]
        self.qk_norm_rope = lib.olmo_hf_qk_norm_rope_bf16
        self.qk_norm_rope.argtypes = [c_ptr, c_long, c_long, c_long, c_long, c_long, c_long, c_ptr, c_ptr, c_float,
                                      c_ptr, c_ptr, c_long, c_long, c_ptr, c_int]
        self.silu_mul = lib.olmo_hf_silu_mul_bf16
        self.silu_mul.argtypes = [c_ptr, c_long, c_long, c_long, c_ptr, c_int]
        self.prefill_attention = lib.olmo_hf_prefill_attention_bf16
        strided = [c_ptr, c_long, c_long, c_long]  # a (batch, heads, seq, head_dim) tensor: pointer and 3 strides
        self.prefill_attention.argtypes = [*strided * 3, c_ptr, c_long, c_long, c_long, c_long, c_long, c_float,
                                           c_int]
        for fn in (self.rms_norm, self.qk_norm_rope, self.silu_mul, self.prefill_attention):
            fn.restype = c_int


_native_lock = threading.Lock()


def _native_kernel() -> _NativeLib | None:
    """The compiled decode kernels, built (or loaded from the cache) on first use; None where unavailable."""
    global _native
    if _native is None:
        with _native_lock:
            if _native is None:
                try:
                    _native = _build_native() or False
                except Exception as e:  # never let an optional kernel break inference
                    warnings.warn(f"olmo_hf.fast: native decode kernels unavailable ({e}); using oneDNN and sdpa.")
                    _native = False
    return _native or None


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _build_native():
    if os.environ.get("OLMO_HF_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
        return None
    if not {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"} <= _cpu_flags():
        return None
    # Our OpenMP must be torch's (GNU libgomp, shared by SONAME); a second runtime would oversubscribe the cores.
    with open("/proc/self/maps") as f:
        if "libgomp" not in f.read():
            return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None
    with open(_NATIVE_SOURCE_FILE, encoding="utf-8") as f:
        source = f.read()
    key = hashlib.sha256((source + " ".join(_NATIVE_FLAGS + _NATIVE_LIBS) + cc).encode()).hexdigest()[:16]
    root = os.environ.get("OLMO_HF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "olmo_hf")
    directory = os.path.join(root, "native", key)
    lib_path = os.path.join(directory, "libolmo_hf_decode.so")
    if not os.path.exists(lib_path):
        os.makedirs(directory, exist_ok=True)
        # Unique temporary names, then atomic renames: concurrent processes (pytest-xdist, several servers) may
        # build at the same time, and none must ever compile or load a half-written file.
        fd, src = tempfile.mkstemp(suffix=".c", dir=directory)
        with os.fdopen(fd, "w") as f:
            f.write(source)  # the text we hashed, even if the package file changes meanwhile
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
        os.close(fd)
        try:
            proc = subprocess.run([cc, *_NATIVE_FLAGS, "-o", tmp, src, *_NATIVE_LIBS], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{cc} failed: {proc.stderr.strip()[-500:]}")
            os.replace(src, os.path.join(directory, "decode.c"))  # kept for reference
            os.replace(tmp, lib_path)
        finally:
            for path in (src, tmp):
                if os.path.exists(path):
                    os.unlink(path)
    native = _NativeLib(ctypes.CDLL(lib_path))
    # Self-tests against oneDNN / sdpa on small shapes (tails included) before trusting the library.
    gen = torch.Generator().manual_seed(0)
    for n, k, m in ((100, 96, 1), (64, 64, 5), (130, 2048, 8), (7, 40, 3)):
        w = torch.randn(n, k, generator=gen).to(torch.bfloat16)
        x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
        packed = mkldnn_pack_linear_weight(w)
        ptr = _native_layout_ptr(packed, w)
        if ptr is None:
            return None
        ref = mkldnn_linear(x, packed, None).float()
        out = _native_call(native.gemv, x, ptr, n, k).float()
        if not torch.allclose(out, ref, atol=1e-2 * k**0.5, rtol=1e-2):
            return None
    for b, h, g, s_len, d in ((2, 4, 2, 37, 24), (1, 3, 3, 5, 64)):
        q = torch.randn(b, h, 1, d, generator=gen).to(torch.bfloat16)
        kv = torch.randn(2, b, g, s_len + 3, d, generator=gen).to(torch.bfloat16)[..., :s_len, :]
        ref = F.scaled_dot_product_attention(q.float(), kv[0].float().repeat_interleave(h // g, 1),
                                             kv[1].float().repeat_interleave(h // g, 1)).transpose(1, 2)
        out = _native_attention(native, q, kv[0], kv[1], d**-0.5).float()
        if not torch.allclose(out, ref, atol=2e-2, rtol=2e-2):
            return None
    for b, h, g, s_len, d in ((2, 4, 2, 37, 32), (1, 2, 2, 1, 64)):
        q, k, v = (torch.randn(b, h if i == 0 else g, s_len, d, generator=gen).to(torch.bfloat16) for i in range(3))
        ref = F.scaled_dot_product_attention(q.float(), k.float().repeat_interleave(h // g, 1),
                                             v.float().repeat_interleave(h // g, 1), is_causal=True).transpose(1, 2)
        out = _native_prefill_attention(native, q, k, v, d**-0.5).float()
        if not torch.allclose(out, ref, atol=2e-2, rtol=2e-2):
            return None
    if not _elementwise_self_test(native, gen):
        return None
    return native


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


def _native_layout_ptr(packed: torch.Tensor, dense: torch.Tensor) -> int | None:
    """The address of ``packed``'s bytes if they are in the AB16b64a2b layout the native kernel reads (checked:
    size, and a sample of elements against ``dense``); None otherwise."""
    if dense.dtype != torch.bfloat16 or dense.dim() != 2:
        return None
    try:
        n, k = dense.shape
        n_pad, k_pad = -(-n // 64) * 64, -(-k // 32) * 32
        if mkldnn_nbytes(packed) != n_pad * k_pad * 2:
            return None
        ptr = mkldnn_data_ptr(packed)
    except (RuntimeError, AttributeError):
        return None
    bits = dense.detach().contiguous().view(torch.int16)
    probes = {(0, 0), (n - 1, k - 1), (min(63, n - 1), 1), (n // 2, k // 2), (min(70, n - 1), min(33, k - 1))}
    for i, j in probes:
        offset = ((i // 64) * (k_pad // 32) + j // 32) * 2048 + ((j % 32) // 2) * 128 + (i % 64) * 2 + (j % 2)
        if ctypes.c_int16.from_address(ptr + 2 * offset).value != int(bits[i, j]):
            return None
    return ptr


def _native_call(fn, x2d: torch.Tensor, ptr: int, n: int, k: int) -> torch.Tensor:
    m = x2d.shape[0]
    k_pad = -(-k // 32) * 32
    if k_pad != k or not x2d.is_contiguous():
        x2d = F.pad(x2d, (0, k_pad - k)).contiguous()
    out = torch.empty((m, n), dtype=torch.bfloat16)
    if fn(x2d.data_ptr(), x2d.stride(0), ptr, n, k_pad, out.data_ptr(), n, m, torch.get_num_threads()) != 0:
        raise RuntimeError("olmo_hf native decode kernel rejected its arguments")
    return out


def _native_matmul(x: torch.Tensor, ptr: int, n: int, k: int) -> torch.Tensor:
    """``x @ W^T`` over the last dimension of ``x`` (at most ``_NATIVE_MAX_ROWS`` rows), ``W`` (n, k) packed at
    ``ptr`` (see _native_layout_ptr); needs the loaded library."""
    out = _native_call(_native.gemv, x.reshape(-1, x.shape[-1]), ptr, n, k)
    return out.view(*x.shape[:-1], n)


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
        and _native is not None
        and _native is not False
        and (q.shape[2] == 1 or prefill)
        and attention_mask is None
        and attn_implementation(module.config) == "sdpa"
        and q.dtype == k.dtype == v.dtype == torch.bfloat16
        and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
        and q.shape[-1] <= 512
        and not kwargs.get("output_attentions")
        and not module.training
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
    """Whether the element-wise kernels may run on ``x``: the library is loaded, bf16 on CPU, inference."""
    return (
        _native is not None
        and _native is not False
        and x.dtype == torch.bfloat16
        and x.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and not (torch.is_grad_enabled() and x.requires_grad)
    )
