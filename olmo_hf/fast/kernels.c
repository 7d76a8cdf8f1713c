/* olmo_hf's native decode kernels, called from Python through ctypes (olmo_hf/fast/native.py compiles this file
   once per machine with _NATIVE_FLAGS and declares each entry point's signature in _NativeLib):
   - olmo_hf_packed_gemv_bf16: y = x @ W^T for 1..8 rows of x, reading W as oneDNN packed it;
   - olmo_hf_decode_attention_bf16: one decoding step of attention (one query position, no mask);
   - olmo_hf_prefill_attention_bf16: causal attention over a whole unpadded prompt (up to 4096 tokens);
   - olmo_hf_rms_norm_bf16, olmo_hf_qk_norm_rope_bf16, olmo_hf_silu_mul_bf16: the element-wise work of a layer
     (Olmo2RMSNorm; q/k norm + RoPE; SwiGLU's product), one pass each instead of 3-10 PyTorch operators that
     each write a float32 temporary. Same float32 arithmetic as the PyTorch modules, rounding for rounding
     (compiled with -ffp-contract=off: no fused multiply-adds where PyTorch rounds twice), except that sums of
     squares are added in another order (a bf16 ulp on ~1e-5 of the outputs).
   bf16 in and out, fp32 accumulation, on torch's own OpenMP threads (nthreads). Each entry point returns 0 on
   success and a negative status for arguments it does not handle. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------------ packed gemv */
/* y = x @ W^T for a few rows of x (M <= 8), W bf16 in oneDNN's packed AB16b64a2b layout (what
   torch.ops.mkldnn._reorder_linear_weight produces for bf16 linear weights): blocks of 64 outputs x 32 inputs
   (4 KiB), ordered [N/64][K/32]; inside a block, input pair j (k = 2j, 2j+1) of output n sits at
   j*128 + n*2 + (k & 1). fp32 accumulation, bf16 output rounded to nearest even. */
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

/* ------------------------------------------------------------------------------------------- decode attention */
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

/* ------------------------------------------------------------------------------------------- element-wise */
static inline __m512 load_bf16x16(const uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}

static inline void store_bf16x16(uint16_t* p, __m512 v) {  /* round to nearest even, as .to(torch.bfloat16) */
    _mm256_storeu_si256((__m256i*)p, (__m256i)_mm512_cvtneps_pbh(v));
}

static inline __m512 round_to_bf16(__m512 v) {  /* v.to(bfloat16).float() */
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v)), 16));
}

/* Olmo2RMSNorm of one row of n (multiple of 16) elements: x * rsqrt(mean(x^2) + eps), times the (fp32) weight
   before the rounding to bf16. */
static void rms_norm_row(const uint16_t* src, long n, const float* w, float eps, uint16_t* dst) {
    __m512 acc = _mm512_setzero_ps();
    for (long i = 0; i < n; i += 16) {
        const __m512 x = load_bf16x16(src + i);
        acc = _mm512_add_ps(acc, _mm512_mul_ps(x, x));
    }
    const float variance = _mm512_reduce_add_ps(acc) / (float)n;
    const __m512 r = _mm512_set1_ps(1.0f / sqrtf(variance + eps));
    for (long i = 0; i < n; i += 16)
        store_bf16x16(dst + i, _mm512_mul_ps(_mm512_mul_ps(load_bf16x16(src + i), r), _mm512_loadu_ps(w + i)));
}

/* rows of n bf16 (row r at x + r*ld) -> out (rows x n, contiguous). */
int olmo_hf_rms_norm_bf16(const uint16_t* x, long ld, long rows, long n, const float* w, float eps, uint16_t* out,
                          int nthreads) {
    if (n % 16) return -1;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (rows > 1)
    for (long r = 0; r < rows; ++r) rms_norm_row(x + r * ld, n, w, eps, out + r * n);
    return 0;
}

/* RoPE of `heads` heads of hd elements: (x1, x2) -> (x1*c1 - x2*s1, x2*c2 + x1*s2), i.e. x*cos + rotate_half(x)*sin
   with apply_rotary_pos_emb's roundings (each product, then the sum, in fp32), rounded to bf16. */
static void rope_heads(const uint16_t* src, long heads, long hd, const float* cos, const float* sin, uint16_t* dst) {
    const long half = hd / 2;
    for (long h = 0; h < heads; ++h) {
        const uint16_t* x = src + h * hd;
        uint16_t* y = dst + h * hd;
        for (long i = 0; i < half; i += 16) {
            const __m512 x1 = load_bf16x16(x + i), x2 = load_bf16x16(x + half + i);
            const __m512 minus_x2 = _mm512_sub_ps(_mm512_setzero_ps(), x2);
            store_bf16x16(y + i, _mm512_add_ps(_mm512_mul_ps(x1, _mm512_loadu_ps(cos + i)),
                                               _mm512_mul_ps(minus_x2, _mm512_loadu_ps(sin + i))));
            store_bf16x16(y + half + i, _mm512_add_ps(_mm512_mul_ps(x2, _mm512_loadu_ps(cos + half + i)),
                                                      _mm512_mul_ps(x1, _mm512_loadu_ps(sin + half + i))));
        }
    }
}

/* q/k of one attention block for B*S tokens. Token r = b*S + s: its q (nq = heads*hd) then k (nk = kv_heads*hd)
   at in + r*ld_in; optional RMSNorm of the whole q and of the whole k (weights wq / wk, fp32; NULL: no norm), then
   RoPE with the cos/sin rows at b*cs_b + s*cs_s (fp32). Output: token r's q and k heads at out + r*(nq+nk). */
int olmo_hf_qk_norm_rope_bf16(const uint16_t* in, long ld_in, long B, long S, long nq, long nk, long hd,
                              const float* wq, const float* wk, float eps, const float* cos, const float* sin,
                              long cs_b, long cs_s, uint16_t* out, int nthreads) {
    if (hd % 32 || nq % hd || nk % hd) return -1;
    const int normed = wq != NULL || wk != NULL;
    int failed = 0;
    #pragma omp parallel num_threads(nthreads) if (B * S > 1)
    {
        uint16_t* tmp = normed ? (uint16_t*)aligned_alloc(64, ((nq + nk) * 2 + 63) / 64 * 64) : NULL;
        if (normed && !tmp) {
            failed = 1;
        } else {
            #pragma omp for schedule(static)
            for (long r = 0; r < B * S; ++r) {
                const uint16_t* src = in + r * ld_in;
                if (normed) {
                    if (wq) rms_norm_row(src, nq, wq, eps, tmp); else memcpy(tmp, src, nq * 2);
                    if (wk) rms_norm_row(src + nq, nk, wk, eps, tmp + nq); else memcpy(tmp + nq, src + nq, nk * 2);
                    src = tmp;
                }
                const long cs = (r / S) * cs_b + (r % S) * cs_s;
                rope_heads(src, (nq + nk) / hd, hd, cos + cs, sin + cs, out + r * (nq + nk));
            }
            free(tmp);
        }
    }
    return failed ? -2 : 0;
}

/* exp(x) in fp32: Cephes' expf polynomial (~1 ulp, like the SLEEF exp PyTorch vectorizes with), 2^n applied with
   scalef so that large |x| overflows to inf and underflows to 0 as expf does. */
static inline __m512 exp_ps(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(89.0f)), _mm512_set1_ps(-104.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  /* x - n*ln2, ln2 in two parts */
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

/* SwiGLU's product for `rows` rows of [gate | up] (n each, n a multiple of 16; row r at gu + r*ld):
   out[r] = bf16(bf16(silu(gate)) * up), what F.silu(gate).mul_(up) computes in bf16; out is rows x n, contiguous. */
int olmo_hf_silu_mul_bf16(const uint16_t* gu, long ld, long rows, long n, uint16_t* out, int nthreads) {
    if (n % 16) return -1;
    const long chunk = 512, chunks = (n + chunk - 1) / chunk;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (rows * n > 4096)
    for (long t = 0; t < rows * chunks; ++t) {
        const long r = t / chunks, c0 = (t % chunks) * chunk, c1 = c0 + chunk < n ? c0 + chunk : n;
        const uint16_t* gate = gu + r * ld;
        const uint16_t* up = gate + n;
        for (long i = c0; i < c1; i += 16) {
            const __m512 x = load_bf16x16(gate + i);
            const __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), x));
            const __m512 silu = round_to_bf16(_mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e)));
            store_bf16x16(out + r * n + i, _mm512_mul_ps(silu, load_bf16x16(up + i)));
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- prefill attention */
/* Causal attention over a whole prompt (S queries = S keys, no mask: an unpadded prefill), for S <= 4096:
   out[b, i, h, :] = softmax_j<=i(scale * q[b, h, i] . k[b, g, j]) @ v[b, g, j], g = h / (H / G).
   Work item = (b, h, block of 16 queries). q.k^T with AVX512-BF16 dot products (fp32 accumulation): the 16 queries'
   (dim pair) values form one vector, each key's pair is broadcast. Softmax and p @ v in fp32 (v converted once per
   item). bf16 out of shape (B, S, H, D) contiguous. Strides in elements; the last dimension contiguous. */
int olmo_hf_prefill_attention_bf16(const uint16_t* q, long qsb, long qsh, long qss,
                                   const uint16_t* k, long ksb, long ksh, long kss,
                                   const uint16_t* v, long vsb, long vsh, long vss,
                                   uint16_t* out, long B, long H, long G, long S, long D, float scale, int nthreads) {
    if (D % 32 || D > 256 || S < 1 || S > 4096 || G < 1 || H % G) return -1;
    const long rep = H / G, QB = (S + 15) / 16, P = D / 2, nd = D / 16;
    int failed = 0;
    #pragma omp parallel num_threads(nthreads)
    {
        uint32_t* qt = (uint32_t*)aligned_alloc(64, sizeof(uint32_t) * 16 * P);
        float* sc = (float*)aligned_alloc(64, sizeof(float) * 16 * (size_t)((S + 7) / 8 * 8));
        float* vf = (float*)aligned_alloc(64, sizeof(float) * (size_t)S * D);
        if (!qt || !sc || !vf) {
            failed = 1;
        } else {
            #pragma omp for schedule(dynamic, 1)
            for (long item = 0; item < B * H * QB; ++item) {
                const long qb = QB - 1 - item % QB;  /* the longest blocks first */
                const long bh = item / QB, b = bh / H, h = bh % H, g = h / rep;
                const long i0 = qb * 16, nq = S - i0 < 16 ? S - i0 : 16, nk = i0 + nq;  /* keys 0 .. nk-1 */
                const uint16_t* qp = q + b * qsb + h * qsh;
                const uint16_t* kp = k + b * ksb + g * ksh;
                const uint16_t* vp = v + b * vsb + g * vsh;
                for (long p = 0; p < P; ++p)
                    for (long qi = 0; qi < 16; ++qi) {
                        uint32_t pair = 0;
                        if (qi < nq) memcpy(&pair, qp + (i0 + qi) * qss + 2 * p, 4);
                        qt[p * 16 + qi] = pair;
                    }
                /* scores, key-major: sc[j * 16 + qi] */
                for (long j0 = 0; j0 < nk; j0 += 8) {
                    __m512 acc[8];
                    for (int u = 0; u < 8; ++u) acc[u] = _mm512_setzero_ps();
                    const long nu = nk - j0 < 8 ? nk - j0 : 8;
                    const uint16_t* kr[8];  /* the 8 key rows (the last one repeated past the end) */
                    for (int u = 0; u < 8; ++u) kr[u] = kp + (j0 + (u < nu ? u : nu - 1)) * kss;
                    for (long p = 0; p < P; ++p) {
                        const __m512bh qv = (__m512bh)_mm512_load_si512((const void*)(qt + p * 16));
                        for (int u = 0; u < 8; ++u) {
                            int32_t pair;
                            memcpy(&pair, kr[u] + 2 * p, 4);
                            acc[u] = _mm512_dpbf16_ps(acc[u], qv, (__m512bh)_mm512_set1_epi32(pair));
                        }
                    }
                    for (int u = 0; u < nu; ++u) {
                        const long j = j0 + u;
                        __m512 s = _mm512_mul_ps(acc[u], _mm512_set1_ps(scale));
                        if (j >= i0) {  /* the diagonal block: query lane qi sees keys j <= i0 + qi */
                            const __mmask16 visible = (__mmask16)(0xffffu << (j - i0));
                            s = _mm512_mask_blend_ps(visible, _mm512_set1_ps(-INFINITY), s);
                        }
                        _mm512_store_ps(sc + j * 16, s);
                    }
                }
                /* softmax over j for each query lane (fp32): exp(s - max), and the sums */
                __m512 mx = _mm512_set1_ps(-INFINITY), sum = _mm512_setzero_ps();
                for (long j = 0; j < nk; ++j) mx = _mm512_max_ps(mx, _mm512_load_ps(sc + j * 16));
                for (long j = 0; j < nk; ++j) {
                    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_load_ps(sc + j * 16), mx));
                    _mm512_store_ps(sc + j * 16, e);
                    sum = _mm512_add_ps(sum, e);
                }
                float inv[16];
                _mm512_storeu_ps(inv, _mm512_div_ps(_mm512_set1_ps(1.0f), sum));
                /* p @ v, query by query, with v in fp32 */
                for (long j = 0; j < nk; ++j)
                    for (long c = 0; c < nd; ++c) _mm512_store_ps(vf + j * D + 16 * c, load_bf16x16(vp + j * vss + 16 * c));
                for (long qi = 0; qi < nq; ++qi) {
                    __m512 o[16];
                    for (long c = 0; c < nd; ++c) o[c] = _mm512_setzero_ps();
                    for (long j = 0; j <= i0 + qi; ++j) {
                        const __m512 pj = _mm512_set1_ps(sc[j * 16 + qi]);
                        for (long c = 0; c < nd; ++c) o[c] = _mm512_fmadd_ps(pj, _mm512_load_ps(vf + j * D + 16 * c), o[c]);
                    }
                    uint16_t* op = out + ((b * S + i0 + qi) * H + h) * D;
                    const __m512 r = _mm512_set1_ps(inv[qi]);
                    for (long c = 0; c < nd; ++c) store_bf16x16(op + 16 * c, _mm512_mul_ps(o[c], r));
                }
            }
        }
        free(qt); free(sc); free(vf);
    }
    return failed ? -2 : 0;
}
