# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""An explicit, reversible fast path for CPU inference (bf16 first, fp32 too).

``optimize_for_cpu_inference(model)`` rewrites a loaded OLMo / OLMo 2 model IN PLACE for inference on CPU and
returns it; ``undo(model)`` puts back exactly the modules, Parameter objects and flags it had before::

    import torch, olmo_hf
    from olmo_hf.fast import optimize_for_cpu_inference, undo
    model = olmo_hf.Olmo2ForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    optimize_for_cpu_inference(model)          # ~2.5x faster batch-1 decoding of the 1B model on 2 Zen 4 cores
    model.generate(...)
    model.save_pretrained(out)                 # still the standard layout (dense weights, standard keys)
    undo(model)                                # back to plain nn.Linear, e.g. before training or .to("cuda")

What it does (each step can be switched off, see the keyword arguments):

1. **oneDNN-prepacked weights.** Every ``nn.Linear`` of the decoder (and ``lm_head`` unless it is tied to the
   embedding) becomes a :class:`PackedLinear` that holds its weight reordered once by
   ``torch.ops.mkldnn._reorder_linear_weight`` (the blocked layout oneDNN's bf16 kernels read fastest). The
   packed copy REPLACES the dense weight (it is not kept twice): when the dense weight lives in the mmap of a
   safetensors file, its pages are handed back to the kernel (``madvise(MADV_DONTNEED)``, only for bytes no
   other tensor can read), so the process never holds both copies. Products over more than 8 rows (prefill)
   run through oneDNN (``torch.ops.mkldnn._linear_pointwise``).
2. **A decode kernel that streams at memory bandwidth.** Decoding multiplies 1 to 8 rows (the batch) by every
   weight, which is bound by how fast the weights stream from memory; oneDNN reaches ~70% of the bandwidth
   there. A small AVX512-BF16 kernel (fp32 accumulation, written here in C, ~100 lines) reads the same packed
   bytes, on torch's own OpenMP threads, at ~95%. It is compiled on first use with the system C compiler,
   cached in ``~/.cache/olmo_hf`` (``OLMO_HF_CACHE``), and checked against oneDNN before it is trusted. Without
   AVX512-BF16, a C compiler or GNU OpenMP in torch, or with ``OLMO_HF_NATIVE=0``, oneDNN does these products.
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

Numerics. In float32 the fast path gives the same greedy tokens as the plain model and logits within 1e-5
(tests/test_fast_path.py). In bfloat16 the products accumulate (in fp32) in another order than ``F.linear``
does, so outputs may differ by a bf16 ulp and logits by a few bf16 ulps of their scale (docs/performance.md);
norms, RoPE and attention compute exactly what the plain modules compute.

What stays true: ``state_dict()`` / ``save_pretrained()`` write the standard keys and dense tensors;
``model.config``, ``generate()``, every attention implementation and every ``Cache`` class work; deepcopy and
pickling work. What is refused, with a message that says to call :func:`undo` first: gradients through a packed
layer, ``.to()`` another device or dtype, ``load_state_dict`` into a fused projection. Models that are
quantized, carry PEFT adapters, or are not on CPU are refused by :func:`optimize_for_cpu_inference`.

Why ``from_pretrained`` does not apply it: it is only right for CPU inference, and packing reads every weight
once (about 1-2 s for the 1B model, which the plain model pays instead as page faults during its first
forward). Users routinely load a model and then train it, wrap it with PEFT, quantize it or move it to a GPU; a
default that refuses any of those is worse than one explicit call. ``olmo-hf run`` / ``serve`` can apply it,
because they own the model's whole lifetime.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicCache, DynamicLayer

from .modules import (
    Olmo2Attention,
    OlmoAttention,
    OlmoMLP,
    rotate_half,
)

__all__ = [
    "optimize_for_cpu_inference",
    "undo",
    "is_optimized",
    "PackedLinear",
    "FastPathError",
]

_STATE_ATTR = "_olmo_hf_fast_state"  # set on the optimised model instance; holds what undo() needs
_KV_ATTR = "_olmo_hf_kv"  # set on DynamicLayer instances whose storage we manage (see _append_kv)
_KV_GROW = 16  # key/value positions allocated at a time (re-allocation, and so a full copy, every 16 steps)

_PACKABLE_DTYPES = (torch.bfloat16, torch.float32)


class FastPathError(RuntimeError):
    """An operation that an optimised model cannot do; :func:`undo` first."""


# ----------------------------------------------------------------------------------------------- packed linear
class _Packed:
    """One oneDNN-prepacked weight, shared by the PackedLinear(s) that read it (several for a fused matrix)."""

    __slots__ = ("tensor", "dtype", "out_features", "in_features", "native_ptr")

    def __init__(self, dense: torch.Tensor) -> None:
        self.dtype = dense.dtype
        self.out_features, self.in_features = dense.shape
        # The batch-size hint only steers oneDNN's choice of blocked layout; 1 favours decoding.
        self.tensor = torch.ops.mkldnn._reorder_linear_weight(dense.detach(), 1)
        # Address of the packed bytes for the native decode kernel, if it can read this weight's layout.
        self.native_ptr = _native_layout_ptr(self.tensor, dense) if _native_kernel() is not None else None

    def dense(self) -> torch.Tensor:
        return self.tensor.to_dense()

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W.T (+ bias)`` over the last dimension of ``x`` (inference only: no autograd)."""
        if torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)):
            raise FastPathError(
                "This model was optimised for CPU inference (olmo_hf.fast); its packed linear layers cannot be "
                "trained or differentiated. Call olmo_hf.fast.undo(model) first, or run under torch.no_grad()."
            )
        if (
            self.native_ptr is not None
            and x.dtype == torch.bfloat16
            and x.numel() <= _NATIVE_MAX_ROWS * x.shape[-1]
            and not torch.compiler.is_compiling()
        ):
            out = _native_matmul(x, self)
            return out if bias is None else out + bias
        return torch.ops.mkldnn._linear_pointwise(x, self.tensor, bias, "none", [], "")

    # copy.deepcopy / pickle (torch.save of a whole model): carry the dense weight, repack on the other side
    def __getstate__(self):
        return {"dense": self.dense()}

    def __setstate__(self, state):
        self.__init__(state["dense"])


# ----------------------------------------------------------------------------------------------- native decode kernel
# Two decode-time kernels of our own, in C (_NATIVE_SOURCE), compiled once per machine with the system C compiler
# into ~/.cache/olmo_hf (OLMO_HF_CACHE) and checked against oneDNN / sdpa before use:
# - olmo_hf_packed_gemv_bf16: x @ W^T for 1..8 rows, reading the SAME packed bytes as oneDNN (no second copy),
#   with AVX512-BF16 dot products (fp32 accumulation) on torch's own OpenMP threads. On the 2-core Zen 4
#   development machine it streams a 1B model's weights at ~31 GB/s where oneDNN's inner product reaches ~22.
# - olmo_hf_decode_attention_bf16: softmax(q k^T) v for one query position (fp32 softmax and accumulation),
#   0.04 ms per layer where sdpa's flash kernel takes 0.35 ms (batch 1; 0.4 vs 3 ms at batch 8).
# Without AVX512-BF16, a compiler or GNU OpenMP in torch, or with OLMO_HF_NATIVE=0, oneDNN and sdpa do the work
# (same results up to accumulation order).
_NATIVE_MAX_ROWS = 8
_NATIVE_SOURCE = r"""
/* olmo_hf native decode kernel: y = x @ W^T for a few rows of x (M <= 8), W bf16 in oneDNN's packed
   AB16b64a2b layout (what torch.ops.mkldnn._reorder_linear_weight produces for bf16 linear weights):
   blocks of 64 outputs x 32 inputs (4 KiB), ordered [N/64][K/32]; inside a block, input pair j (k = 2j, 2j+1)
   of output n sits at j*128 + n*2 + (k & 1). fp32 accumulation, bf16 output rounded to nearest even. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KC 16  /* K blocks (of 32) per chunk when rows are processed in two groups */

#define GROUP(MM)                                                                                    \
static inline void group_##MM(const uint16_t* x, long ldx, const uint16_t* wnb, long kb0, long kb1,   \
                              __m512 acc[MM][4]) {                                                   \
    for (long kb = kb0; kb < kb1; ++kb) {                                                            \
        const uint16_t* blk = wnb + kb * 2048;                                                       \
        const uint16_t* xk = x + kb * 32;                                                            \
        _mm_prefetch((const char*)(blk + 8 * 2048), _MM_HINT_T0);                                    \
        for (int j = 0; j < 16; ++j) {                                                               \
            const __m512bh w0 = (__m512bh)_mm512_loadu_si512((const void*)(blk + j * 128));         \
            const __m512bh w1 = (__m512bh)_mm512_loadu_si512((const void*)(blk + j * 128 + 32));    \
            const __m512bh w2 = (__m512bh)_mm512_loadu_si512((const void*)(blk + j * 128 + 64));    \
            const __m512bh w3 = (__m512bh)_mm512_loadu_si512((const void*)(blk + j * 128 + 96));    \
            for (int m = 0; m < MM; ++m) {                                                           \
                int32_t pair; memcpy(&pair, xk + m * ldx + 2 * j, 4);                                \
                const __m512bh xb = (__m512bh)_mm512_set1_epi32(pair);                               \
                acc[m][0] = _mm512_dpbf16_ps(acc[m][0], w0, xb);                                     \
                acc[m][1] = _mm512_dpbf16_ps(acc[m][1], w1, xb);                                     \
                acc[m][2] = _mm512_dpbf16_ps(acc[m][2], w2, xb);                                     \
                acc[m][3] = _mm512_dpbf16_ps(acc[m][3], w3, xb);                                     \
            }                                                                                        \
        }                                                                                            \
    }                                                                                                \
}
GROUP(1) GROUP(2) GROUP(3) GROUP(4)

static inline void run_group(int mm, const uint16_t* x, long ldx, const uint16_t* wnb, long kb0, long kb1,
                             __m512 acc[4][4]) {
    switch (mm) {
        case 1: group_1(x, ldx, wnb, kb0, kb1, (__m512(*)[4])acc); break;
        case 2: group_2(x, ldx, wnb, kb0, kb1, (__m512(*)[4])acc); break;
        case 3: group_3(x, ldx, wnb, kb0, kb1, (__m512(*)[4])acc); break;
        default: group_4(x, ldx, wnb, kb0, kb1, (__m512(*)[4])acc); break;
    }
}

static inline void store_row(const __m512 a[4], uint16_t* y, long n0, long N) {
    for (int q = 0; q < 4; ++q) {
        const long n = n0 + 16 * q;
        if (n >= N) break;
        const __m256i h = (__m256i)_mm512_cvtneps_pbh(a[q]);
        if (n + 16 <= N) _mm256_storeu_si256((__m256i*)(y + n), h);
        else _mm256_mask_storeu_epi16(y + n, (__mmask16)((1u << (N - n)) - 1), h);
    }
}

/* x: M rows of K bf16 (row stride ldx, K padded to a multiple of 32 with zeros), w: packed, y: M rows (stride ldy). */
int olmo_hf_packed_gemv_bf16(const uint16_t* x, long ldx, const uint16_t* w, long N, long K, uint16_t* y,
                             long ldy, long M, int nthreads) {
    if (M < 1 || M > 8 || K % 32) return -1;
    const long NB = (N + 63) / 64, KB = K / 32;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (long nb = 0; nb < NB; ++nb) {
        const uint16_t* wnb = w + nb * KB * 2048;
        __m512 acc[4][4], acc2[4][4];
        if (M <= 4) {
            for (int m = 0; m < 4; ++m) for (int q = 0; q < 4; ++q) acc[m][q] = _mm512_setzero_ps();
            run_group((int)M, x, ldx, wnb, 0, KB, acc);
            for (int m = 0; m < M; ++m) store_row(acc[m], y + m * ldy, nb * 64, N);
        } else {
            /* two row groups over the same K chunk: the chunk is read from memory once, then from cache */
            for (int m = 0; m < 4; ++m) for (int q = 0; q < 4; ++q) acc[m][q] = acc2[m][q] = _mm512_setzero_ps();
            for (long kb0 = 0; kb0 < KB; kb0 += KC) {
                const long kb1 = kb0 + KC < KB ? kb0 + KC : KB;
                __m512 t[4][4];
                for (int m = 0; m < 4; ++m) for (int q = 0; q < 4; ++q) t[m][q] = _mm512_setzero_ps();
                run_group(4, x, ldx, wnb, kb0, kb1, t);
                for (int m = 0; m < 4; ++m) for (int q = 0; q < 4; ++q) acc[m][q] = _mm512_add_ps(acc[m][q], t[m][q]);
                for (int m = 0; m < 4; ++m) for (int q = 0; q < 4; ++q) t[m][q] = _mm512_setzero_ps();
                run_group((int)M - 4, x + 4 * ldx, ldx, wnb, kb0, kb1, t);
                for (int m = 0; m < 4; ++m) for (int q = 0; q < 4; ++q) acc2[m][q] = _mm512_add_ps(acc2[m][q], t[m][q]);
            }
            for (int m = 0; m < 4; ++m) store_row(acc[m], y + m * ldy, nb * 64, N);
            for (int m = 0; m < M - 4; ++m) store_row(acc2[m], y + (4 + m) * ldy, nb * 64, N);
        }
    }
    return 0;
}

static inline __m512 bf16x16_to_f32(const uint16_t* p, __mmask16 m) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

/* One decoding step of attention, q_len = 1, no mask:
   out[b, 0, h, :] = softmax(scale * q[b, h] . k[b, g, s]) @ v[b, g, s]
   with g = h / (H / G). bf16 q/k/v (last dim contiguous, other strides free), fp32 softmax and accumulation,
   bf16 out of shape (B, 1, H, D) contiguous. Strides are in elements. */
int olmo_hf_decode_attention_bf16(const uint16_t* q, long qsb, long qsh,
                                  const uint16_t* k, long ksb, long ksh, long kss,
                                  const uint16_t* v, long vsb, long vsh, long vss,
                                  uint16_t* out, long B, long H, long G, long S, long D, float scale, int nthreads) {
    if (D < 1 || D > 512 || S < 1 || G < 1 || H % G) return -1;
    const long rep = H / G, nd = (D + 15) / 16;
    int failed = 0;
    #pragma omp parallel num_threads(nthreads)
    {
        float* scores = (float*)malloc(sizeof(float) * S);
        if (!scores) { failed = 1; }
        else {
            #pragma omp for schedule(static)
            for (long bh = 0; bh < B * H; ++bh) {
                const long b = bh / H, h = bh % H, g = h / rep;
                const uint16_t* qp = q + b * qsb + h * qsh;
                const uint16_t* kp = k + b * ksb + g * ksh;
                const uint16_t* vp = v + b * vsb + g * vsh;
                __m512 qv[32];
                for (long c = 0; c < nd; ++c) {
                    const long rem = D - 16 * c;
                    const __mmask16 m = rem >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << rem) - 1);
                    qv[c] = bf16x16_to_f32(qp + 16 * c, m);
                }
                float mx = -INFINITY;
                for (long s = 0; s < S; ++s) {
                    const uint16_t* ks = kp + s * kss;
                    __m512 acc = _mm512_setzero_ps();
                    for (long c = 0; c < nd; ++c) {
                        const long rem = D - 16 * c;
                        const __mmask16 m = rem >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << rem) - 1);
                        acc = _mm512_fmadd_ps(qv[c], bf16x16_to_f32(ks + 16 * c, m), acc);
                    }
                    const float sc = _mm512_reduce_add_ps(acc) * scale;
                    scores[s] = sc;
                    if (sc > mx) mx = sc;
                }
                float sum = 0.f;
                for (long s = 0; s < S; ++s) { const float e = expf(scores[s] - mx); scores[s] = e; sum += e; }
                const float inv = 1.f / sum;
                __m512 o[32];
                for (long c = 0; c < nd; ++c) o[c] = _mm512_setzero_ps();
                for (long s = 0; s < S; ++s) {
                    const __m512 p = _mm512_set1_ps(scores[s] * inv);
                    const uint16_t* vs = vp + s * vss;
                    for (long c = 0; c < nd; ++c) {
                        const long rem = D - 16 * c;
                        const __mmask16 m = rem >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << rem) - 1);
                        o[c] = _mm512_fmadd_ps(p, bf16x16_to_f32(vs + 16 * c, m), o[c]);
                    }
                }
                uint16_t* op = out + (b * H + h) * D;
                for (long c = 0; c < nd; ++c) {
                    const long rem = D - 16 * c;
                    const __mmask16 m = rem >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << rem) - 1);
                    _mm256_mask_storeu_epi16(op + 16 * c, m, (__m256i)_mm512_cvtneps_pbh(o[c]));
                }
            }
            free(scores);
        }
    }
    return failed ? -2 : 0;
}
"""
_NATIVE_FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-fopenmp", "-shared", "-fPIC"]
_NATIVE_LIBS = ["-lm"]
_native = None  # None: not tried yet; False: unavailable; else a _NativeLib


class _NativeLib:
    """The two entry points of the compiled library (ctypes functions; they release the GIL)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        c_long, c_ptr = ctypes.c_long, ctypes.c_void_p
        self.gemv = lib.olmo_hf_packed_gemv_bf16
        self.gemv.argtypes = [c_ptr, c_long, c_ptr, c_long, c_long, c_ptr, c_long, c_long, ctypes.c_int]
        self.gemv.restype = ctypes.c_int
        self.attention = lib.olmo_hf_decode_attention_bf16
        self.attention.argtypes = [c_ptr, c_long, c_long, c_ptr, c_long, c_long, c_long, c_ptr, c_long, c_long,
                                   c_long, c_ptr, c_long, c_long, c_long, c_long, c_long, ctypes.c_float, ctypes.c_int]
        self.attention.restype = ctypes.c_int


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
    key = hashlib.sha256((_NATIVE_SOURCE + " ".join(_NATIVE_FLAGS + _NATIVE_LIBS) + cc).encode()).hexdigest()[:16]
    root = os.environ.get("OLMO_HF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "olmo_hf")
    directory = os.path.join(root, "native", key)
    lib_path = os.path.join(directory, "libolmo_hf_decode.so")
    if not os.path.exists(lib_path):
        os.makedirs(directory, exist_ok=True)
        # Unique temporary names, then atomic renames: concurrent processes (pytest-xdist, several servers) may
        # build at the same time, and none must ever compile or load a half-written file.
        fd, src = tempfile.mkstemp(suffix=".c", dir=directory)
        with os.fdopen(fd, "w") as f:
            f.write(_NATIVE_SOURCE)
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
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 1)
        ptr = _native_layout_ptr(packed, w)
        if ptr is None:
            return None
        ref = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "").float()
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
    return native


def _native_layout_ptr(packed: torch.Tensor, dense: torch.Tensor) -> int | None:
    """The address of ``packed``'s bytes if they are in the AB16b64a2b layout the native kernel reads (checked:
    size, and a sample of elements against ``dense``); None otherwise."""
    if dense.dtype != torch.bfloat16 or dense.dim() != 2:
        return None
    try:
        n, k = dense.shape
        n_pad, k_pad = -(-n // 64) * 64, -(-k // 32) * 32
        if torch.ops.mkldnn._nbytes(packed) != n_pad * k_pad * 2:
            return None
        ptr = int(torch.ops.mkldnn.data_ptr(packed))
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


def _can_use_native_attention(module, q, k, v, attention_mask, kwargs) -> bool:
    """Decoding steps only (one query position, no mask: what sdpa gets from an unpadded batch), bf16, sdpa."""
    return (
        _native is not None
        and _native is not False
        and q.shape[2] == 1
        and attention_mask is None
        and module.config._attn_implementation == "sdpa"
        and q.dtype == k.dtype == v.dtype == torch.bfloat16
        and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
        and q.shape[-1] <= 512
        and not kwargs.get("output_attentions")
        and not module.training
        and not torch.compiler.is_compiling()
        and not (torch.is_grad_enabled() and q.requires_grad)
    )


def _native_matmul(x: torch.Tensor, packed: _Packed) -> torch.Tensor:
    out = _native_call(_native.gemv, x.reshape(-1, x.shape[-1]), packed.native_ptr, packed.out_features,
                       packed.in_features)
    return out.view(*x.shape[:-1], packed.out_features)


class PackedLinear(nn.Module):
    """Inference-only stand-in for an ``nn.Linear`` whose weight is oneDNN-prepacked.

    When ``rows`` is given, the module is a VIEW on rows ``rows[0]:rows[1]`` of a fused packed matrix (q/k/v,
    gate/up): calling it runs the whole fused product and slices, which only code outside the fast path does (the
    fast attention and MLP call the fused matrix once). ``state_dict()`` writes ``weight`` (dense, standard layout)
    and ``bias``; the original ``nn.Linear`` is kept, emptied, so that :func:`undo` can put it back with its very
    Parameter objects. Reading ``.weight`` materialises a dense copy each time (correct, not free).
    """

    def __init__(self, source: nn.Linear, packed: _Packed, rows: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.in_features = source.in_features
        self.out_features = source.out_features
        self._packed = packed
        self._rows = rows
        # The original module, unregistered (not a child: no duplicate keys, no .to() of an emptied weight).
        self.__dict__["_source"] = source
        self.bias = source.bias  # same Parameter; registered so that state_dict() writes it as nn.Linear does

    # -- compute
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._rows is None:
            return self._packed.matmul(x, self.bias)
        out = self._packed.matmul(x)[..., self._rows[0] : self._rows[1]]
        return out if self.bias is None else out + self.bias

    @property
    def weight(self) -> torch.Tensor:
        """A dense COPY of the weight (standard ``(out_features, in_features)`` layout); not a Parameter."""
        dense = self._packed.dense()
        return dense if self._rows is None else dense[self._rows[0] : self._rows[1]].clone()

    # -- serialization: the standard nn.Linear keys
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.weight
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        key = prefix + "weight"
        if key in state_dict:
            if self._rows is not None:
                errors.append(
                    f"{key}: loading into a fused projection of a model optimised by olmo_hf.fast is not supported; "
                    "call olmo_hf.fast.undo(model) first."
                )
            else:
                value = state_dict[key]
                if tuple(value.shape) != (self.out_features, self.in_features):
                    errors.append(
                        f"size mismatch for {key}: copying a param with shape {tuple(value.shape)}, the shape in the "
                        f"current model is {(self.out_features, self.in_features)}."
                    )
                else:
                    self._packed = _Packed(value.to(self._packed.dtype))
        elif strict:
            missing_keys.append(key)
        if self.bias is not None:
            bkey = prefix + "bias"
            if bkey in state_dict:
                with torch.no_grad():
                    self.bias.copy_(state_dict[bkey])
            elif strict:
                missing_keys.append(bkey)

    # -- refuse moves that a packed weight cannot follow
    def _apply(self, fn, recurse=True):
        probe = fn(torch.empty(1, dtype=self._packed.dtype))
        if probe.dtype != self._packed.dtype or probe.device.type != "cpu":
            raise FastPathError(
                f"Cannot convert a model optimised for CPU inference (olmo_hf.fast) to {probe.device.type}/"
                f"{probe.dtype}; call olmo_hf.fast.undo(model) first."
            )
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        rows = "" if self._rows is None else f", rows={self._rows[0]}:{self._rows[1]} of a fused matrix"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"dtype={self._packed.dtype}, oneDNN-prepacked{rows}"
        )


# ----------------------------------------------------------------------------------------------- page release
_MADV_DONTNEED = 4
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _storage_use_count(t: torch.Tensor) -> int:
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


_SOLE_OWNER_COUNT = None


def _sole_owner_count() -> int:
    """The use count a storage reports when exactly one tensor holds it (the probe adds its own)."""
    global _SOLE_OWNER_COUNT
    if _SOLE_OWNER_COUNT is None:
        _SOLE_OWNER_COUNT = _storage_use_count(torch.empty(16))
    return _SOLE_OWNER_COUNT


class _FileMappings:
    """Address ranges of file-backed mappings of this process (Linux /proc/self/maps), read once."""

    def __init__(self, enabled: bool = True) -> None:
        self.ranges: list[tuple[int, int]] = []
        self.libc = None
        if not enabled or not sys.platform.startswith("linux"):
            return
        try:
            with open("/proc/self/maps") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 6 and parts[5].startswith("/") and parts[5].endswith(".safetensors"):
                        lo, hi = (int(x, 16) for x in parts[0].split("-"))
                        self.ranges.append((lo, hi))
            self.libc = ctypes.CDLL(None, use_errno=True)
            self.libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        except (OSError, AttributeError):
            self.ranges, self.libc = [], None

    def trim_heap(self) -> None:
        """Hand the heap memory freed by the temporary copies back to the OS (glibc ``malloc_trim``)."""
        if self.libc is None:
            return
        try:
            self.libc.malloc_trim(0)
        except AttributeError:  # not glibc
            pass

    def release(self, tensor: torch.Tensor) -> int:
        """Drop the resident pages that lie wholly inside ``tensor``'s bytes, if they belong to a safetensors
        mmap and no other tensor can read them. Returns the number of bytes released."""
        if self.libc is None or not self.ranges or tensor.device.type != "cpu":
            return 0
        if _storage_use_count(tensor) != _sole_owner_count():
            return 0  # another tensor (a tied weight, a view someone kept) still reads these bytes
        start = tensor.untyped_storage().data_ptr()
        end = start + tensor.untyped_storage().nbytes()
        if not any(lo <= start and end <= hi for lo, hi in self.ranges):
            return 0
        first = -(-start // _PAGE) * _PAGE
        last = end // _PAGE * _PAGE
        if last <= first:
            return 0
        if self.libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED) != 0:
            return 0
        return last - first


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


def _check_model(model: nn.Module) -> None:
    from .modeling import Olmo2PreTrainedModel, OlmoPreTrainedModel

    if not isinstance(model, (OlmoPreTrainedModel, Olmo2PreTrainedModel)):
        raise TypeError(
            f"optimize_for_cpu_inference expects an olmo_hf OLMo / OLMo 2 model, got {type(model).__name__}."
        )
    if getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_quantized", False):
        raise ValueError("This model is quantized; the CPU fast path packs plain bf16/fp32 weights only.")
    peft = any(type(m).__module__.startswith("peft") for m in model.modules())
    if getattr(model, "_hf_peft_config_loaded", False) or peft:
        raise ValueError("This model carries PEFT adapters; merge them (merge_and_unload) before optimising.")
    devices = {p.device.type for p in model.parameters()}
    if devices != {"cpu"}:
        raise ValueError(f"The CPU fast path needs every parameter on CPU; found {sorted(devices)}.")


def _shared_params(model: nn.Module) -> set[int]:
    """ids of Parameters owned by more than one module (tied weights)."""
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {pid for pid, n in seen.items() if n > 1}


class _Packer:
    """Packs groups of nn.Linears (one group = one packed matrix) and swaps in the PackedLinears.

    oneDNN's reorder runs on one core, so groups are packed by ``workers`` threads at once (the ops release the
    GIL); at most ``workers`` groups are in flight, which bounds the transient memory. Memory: each dense source
    is detached from its Parameter before the copy and its mmap pages are released right after, so the model
    never exists twice."""

    def __init__(self, state: _State, pages: _FileMappings, workers: int) -> None:
        self.state, self.pages, self.workers = state, pages, max(1, workers)
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="olmo_hf_pack") if self.workers > 1 else None
        self.pending: deque = deque()
        self.local = threading.local()

    def submit(self, parent: nn.Module, names: list[str], dtype: torch.dtype, on_done=None) -> None:
        linears = [getattr(parent, n) for n in names]
        datas = [lin.weight.detach() for lin in linears]
        for lin in linears:
            lin.weight.data = torch.empty(0, dtype=lin.weight.dtype)  # the packed copy replaces the dense one
        job = (parent, names, linears, on_done)
        if self.pool is None:
            self._install(job, self._build(datas, dtype))
            return
        self.pending.append((self.pool.submit(self._build, datas, dtype), job))
        del datas  # the worker holds the only references now (needed for the page release)
        while len(self.pending) >= self.workers:
            self._finish_one()

    def close(self) -> None:
        try:
            while self.pending:
                self._finish_one()
        finally:
            if self.pool is not None:
                self.pool.shutdown()
            self.local = None
        self.pages.trim_heap()

    def _finish_one(self) -> None:
        future, job = self.pending.popleft()
        self._install(job, future.result())

    def _build(self, datas: list, dtype: torch.dtype) -> tuple[_Packed, int]:
        released = 0
        with torch.no_grad():
            if len(datas) == 1:
                packed = _Packed(datas[0].to(dtype))
            else:
                rows_total, cols = sum(d.shape[0] for d in datas), datas[0].shape[1]
                # One scratch buffer per worker for every fused group: fresh memory costs a page fault per 4 KiB
                # on first touch, which makes a new temporary per layer slower than the copy itself.
                scratch = getattr(self.local, "scratch", None)
                if scratch is None or scratch.dtype != dtype or scratch.numel() < rows_total * cols:
                    scratch = self.local.scratch = None
                    scratch = self.local.scratch = torch.empty(rows_total * cols, dtype=dtype)
                dense = scratch[: rows_total * cols].view(rows_total, cols)
                torch.cat([d.to(dtype) for d in datas], dim=0, out=dense)
                for i in range(len(datas)):
                    released += self.pages.release(datas[i])
                    datas[i] = None
                packed = _Packed(dense)
                del dense
            for i, data in enumerate(datas):
                if data is not None:
                    released += self.pages.release(data)
                    datas[i] = None
        return packed, released

    def _install(self, job, result) -> None:
        parent, names, linears, on_done = job
        packed, released = result
        self.state.released_bytes += released
        row = 0
        for name, lin in zip(names, linears):
            rows = None if len(linears) == 1 else (row, row + lin.out_features)
            row += lin.out_features
            setattr(parent, name, PackedLinear(lin, packed, rows))
            self.state.replaced.append((parent, name, lin))
        if on_done is not None:
            on_done(packed)


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
        pack: replace the linear layers by oneDNN-prepacked ones (bf16 and fp32 weights).
        fuse: fuse q/k/v and gate/up into one packed matrix each (needs ``pack``).
        fast_attention: the leaner attention step (joint q/k norm and RoPE; fused projection when ``fuse``).
        grow_kv_cache: with ``fast_attention``, grow a plain ``DynamicCache`` in place instead of concatenating.
        pack_lm_head: pack ``lm_head`` / ``score`` too (never when tied to the input embedding).
        release_source_pages: give the mmap pages of the replaced dense weights back to the OS.

    Raises:
        TypeError / ValueError: not an olmo_hf model; quantized; PEFT adapters; parameters not on CPU.
    """
    if is_optimized(model):
        return model
    _check_model(model)
    if pack and not torch.backends.mkldnn.is_available():
        pack = False
    state = _State(options=dict(pack=pack, fuse=fuse, fast_attention=fast_attention, grow_kv_cache=grow_kv_cache))
    state.was_training = model.training
    model.eval()
    for p in model.parameters():
        state.requires_grad.append((p, p.requires_grad))
        p.requires_grad_(False)

    pages = _FileMappings(enabled=release_source_pages)
    shared = _shared_params(model)
    if pack:
        _native_kernel()  # build / load the decode kernels once, here, not in the packing threads

    def packable(lin: nn.Module) -> bool:
        if not (pack and _is_plain_linear(lin)) or id(lin.weight) in shared:
            return False
        if lin.weight.dtype not in _PACKABLE_DTYPES:
            return False
        return lin.weight.dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()

    packer = _Packer(state, pages, workers=min(4, torch.get_num_threads()))
    try:
        # The largest matrix first, while little else is resident: its transient copy then sets no new peak.
        if pack_lm_head:
            for name in ("lm_head", "score"):
                head = getattr(model, name, None)
                if head is not None and packable(head):
                    packer.submit(model, [name], head.weight.dtype)
        for module in list(model.modules()):
            if isinstance(module, OlmoAttention):
                names = ["q_proj", "k_proj", "v_proj"]
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
                    _patch(state, module, "_fast_qk_weight", None)
            elif isinstance(module, OlmoMLP):
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

    model.__dict__[_STATE_ATTR] = state
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


# ----------------------------------------------------------------------------------------------- fast forwards
def _fast_mlp_forward(self: OlmoMLP, x: torch.Tensor) -> torch.Tensor:
    """``down(silu(gate(x)) * up(x))`` with gate and up as one packed matrix."""
    gate_up = self._fast_gate_up.matmul(x)
    gate, up = gate_up.split(self.intermediate_size, dim=-1)
    return self.down_proj(F.silu(gate).mul_(up))  # in place: the same values, one temporary less


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
    """Olmo2RMSNorm's arithmetic (float32, weight applied before the cast back) over the last dimension."""
    xf = x.float()
    variance = xf.pow(2).mean(-1, keepdim=True)
    xf = xf * torch.rsqrt(variance + eps)
    return xf.mul_(weight).to(x.dtype)  # weight * xf, computed in place


def _fast_attention_forward(
    self: OlmoAttention,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor | None,
    past_key_values=None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same contract and arithmetic as ``OlmoAttention.forward`` / ``Olmo2Attention.forward``."""
    bsz, seq = hidden_states.shape[:-1]
    nh, nkv, hd = self.config.num_attention_heads, self.config.num_key_value_heads, self.head_dim
    q_size, kv_size = nh * hd, nkv * hd

    fused = self.__dict__.get("_fast_qkv")
    if fused is not None:
        qkv = fused.matmul(hidden_states)
        clip = getattr(self.config, "clip_qkv", None)
        if clip is not None:
            qkv = qkv.clamp(-clip, clip)
        if isinstance(self, Olmo2Attention):
            if nh == nkv and self.q_norm.variance_epsilon == self.k_norm.variance_epsilon:
                qk = qkv[..., : 2 * q_size].view(bsz, seq, 2, q_size)
                weight = self.__dict__.get("_fast_qk_weight")
                versions = (self.q_norm.weight._version, self.k_norm.weight._version)
                if weight is None or weight[1] != versions:  # rebuilt if either norm weight was modified
                    weight = (torch.stack([self.q_norm.weight, self.k_norm.weight]), versions)
                    self.__dict__["_fast_qk_weight"] = weight
                weight = weight[0]
                qk = _rms_norm_rows(qk, weight, self.q_norm.variance_epsilon)
                qk = qk.view(bsz, seq, 2 * nh, hd)
            else:
                q = self.q_norm(qkv[..., :q_size])
                k = self.k_norm(qkv[..., q_size : q_size + kv_size])
                qk = torch.cat([q, k], dim=-1).view(bsz, seq, nh + nkv, hd)
        else:
            qk = qkv[..., : q_size + kv_size].view(bsz, seq, nh + nkv, hd)
        v = qkv[..., q_size + kv_size :].view(bsz, seq, nkv, hd)
    else:
        q, k, v = self.project_qkv(hidden_states)
        qk = torch.cat([q, k], dim=-1).view(bsz, seq, nh + nkv, hd)
        v = v.view(bsz, seq, nkv, hd)

    # RoPE on q and k at once: exactly apply_rotary_pos_emb's float32 arithmetic, cast back to the input dtype.
    cos, sin = position_embeddings  # (batch, seq, head_dim) float32
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # (batch, seq, 1, head_dim)
    rotated = qk * cos
    rotated += rotate_half(qk) * sin  # in place: one float32 temporary less, the same values
    qk = rotated.to(hidden_states.dtype)
    del rotated
    q = qk[:, :, :nh].transpose(1, 2)  # (batch, heads, seq, head_dim)
    k = qk[:, :, nh:].transpose(1, 2)  # (batch, kv_heads, seq, head_dim)
    v = v.transpose(1, 2)

    if past_key_values is not None:
        if self.__dict__.get("_fast_grow_kv") and _can_grow(past_key_values, self.layer_idx):
            k, v = _append_kv(past_key_values.layers[self.layer_idx], k, v)
        else:
            k, v = past_key_values.update(k, v, self.layer_idx)

    if _can_use_native_attention(self, q, k, v, attention_mask, kwargs):
        # One decoding step: sdpa's flash kernel spends ~0.3 ms (batch 1) to 3 ms (batch 8) per layer on what
        # the native kernel does in 0.04 / 0.4 ms (same math, fp32 softmax and accumulation).
        attn_output, attn_weights = _native_attention(_native, q, k, v, self.scaling), None
    else:
        attn_output, attn_weights = self.attend(q, k, v, attention_mask, **kwargs)
    attn_output = attn_output.reshape(bsz, seq, -1)
    return self.o_proj(attn_output), attn_weights
