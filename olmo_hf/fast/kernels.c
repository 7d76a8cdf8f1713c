/* olmo_hf's native decode kernels, called from Python through ctypes (olmo_hf/fast/native.py compiles this file
   once per machine with _NATIVE_FLAGS and declares each entry point's signature in _NativeLib):
   - olmo_hf_packed_gemv_bf16: y = x @ W^T for 1..8 rows of x, reading W as oneDNN packed it;
   - olmo_hf_decode_attention_bf16: one decoding step of attention (one query position, no mask).
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
