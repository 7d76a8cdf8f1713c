/* olmo_hf's native kernels for CPU inference, called from Python through ctypes. olmo_hf/fast/native.py compiles
   this ONE file once per machine, with the flags of the instruction set the CPU has (it picks them from the CPU's
   flags), and declares each entry point's signature in _NativeLib. What the file contains depends on those flags:

   - with AVX512-BF16 (-mavx512f -mavx512bw -mavx512vl -mavx512bf16): everything below;
   - with AVX2 + FMA + F16C only (-mavx2 -mfma -mf16c): the matrix-vector product (olmo_hf_gemv_bf16);
   - otherwise the file is not built and PyTorch does all the work.

   Entry points:
   - olmo_hf_kernels_isa: which variant this library is ("avx512_bf16" or "avx2");
   - olmo_hf_gemv_bf16: y = x @ W^T for 1..8 rows of x, W the PLAIN (out_features, in_features) row-major bf16
     weight that nn.Linear holds (no packed copy, no layout of oneDNN's);
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

#if !defined(__AVX512BF16__) && !(defined(__AVX2__) && defined(__FMA__))
#error "kernels.c needs -mavx512bf16 (with avx512f/bw/vl) or -mavx2 -mfma"
#endif

/* fp32 -> bf16, round to nearest even, as .to(torch.bfloat16) (NaN stays a quiet NaN). */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float bf16_to_f32(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ------------------------------------------------------------------------------------------- matrix-vector */
/* y[m, n] = sum_k x[m, k] * w[n, k] for M <= 8 rows of x: x (M, K) row stride ldx, w (N, K) row stride ldw (the
   plain nn.Linear weight), y (M, N) row stride ldy; fp32 accumulation, y rounded to bf16.
   Decoding reads every weight once per step, so this is bound by memory bandwidth: each thread streams a
   contiguous band of NR weight rows at a time (NR sequential streams the hardware prefetcher follows), and each
   weight vector loaded is used for up to 4 rows of x (rows 5-8 re-read the band from L1/L2, not from memory). */
#define NR 4

#if defined(__AVX512BF16__)
const char* olmo_hf_kernels_isa(void) { return "avx512_bf16"; }

/* out[m][r] = x[m, :] . w[r, :] for MM rows of x and NR rows of w; 32 bf16 per dot-product instruction. The loops
   over m and r are fully unrolled (GCC unroll pragmas) so that the MM x NR accumulators live in registers: left as
   loops, gcc 12 keeps the array on the stack and stores it every step (measured 2-3x slower). */
#define GEMV_STEP(MM, LOAD)                                                                                    \
    {                                                                                                          \
        __m512bh wv[NR];                                                                                       \
        _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) {                                                 \
            GEMV_PREFETCH(w + (r + NR) * ldw + k);                                                             \
            wv[r] = (__m512bh)LOAD(w + r * ldw + k);                                                           \
        }                                                                                                      \
        _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m) {                                                 \
            const __m512bh xv = (__m512bh)LOAD(x + m * ldx + k);                                               \
            _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r)                                               \
                acc[m][r] = _mm512_dpbf16_ps(acc[m][r], wv[r], xv);                                            \
        }                                                                                                      \
    }
#define LOAD_FULL(p) _mm512_loadu_si512((const void*)(p))
/* Each row of a band is a short stream (4 KiB for K = 2048: one page, where the hardware prefetcher starts cold), so
   every weight line loaded also prefetches the same position one band (NR rows) ahead: the next band starts warm.
   (Past the weight's end this touches nothing: a prefetch never faults.) */
#ifndef GEMV_PF
#define GEMV_PF 1
#endif
#if GEMV_PF
#define GEMV_PREFETCH(p) _mm_prefetch((const char*)(p), _MM_HINT_T0)
#else
#define GEMV_PREFETCH(p) ((void)0)
#endif
#define LOAD_TAIL(p) _mm512_maskz_loadu_epi16(tail, (p))
#define GEMV_MICRO(MM)                                                                                        \
static inline void gemv_micro_##MM(const uint16_t* x, long ldx, const uint16_t* w, long ldw, long K,       \
                                   float out[4][NR]) {                                                     \
    __m512 acc[MM][NR];                                                                                    \
    _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m)                                                   \
        _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();              \
    long k = 0;                                                                                            \
    for (; k + 32 <= K; k += 32) GEMV_STEP(MM, LOAD_FULL)                                                  \
    if (k < K) {                                                                                           \
        const __mmask32 tail = (__mmask32)((1u << (K - k)) - 1);                                           \
        GEMV_STEP(MM, LOAD_TAIL)                                                                           \
    }                                                                                                      \
    _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m)                                                   \
        _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) out[m][r] = _mm512_reduce_add_ps(acc[m][r]);  \
}
GEMV_MICRO(1) GEMV_MICRO(2) GEMV_MICRO(3) GEMV_MICRO(4)

static inline void gemv_micro(long mm, const uint16_t* x, long ldx, const uint16_t* w, long ldw, long K,
                              float out[4][NR]) {
    switch (mm) {
        case 1: gemv_micro_1(x, ldx, w, ldw, K, out); break;
        case 2: gemv_micro_2(x, ldx, w, ldw, K, out); break;
        case 3: gemv_micro_3(x, ldx, w, ldw, K, out); break;
        default: gemv_micro_4(x, ldx, w, ldw, K, out); break;
    }
}
#define GEMV_X_AT(x, i) bf16_to_f32((x)[i])

#else /* AVX2 + FMA: no bf16 dot product; weights widen to fp32 in registers, x is widened once up front */
const char* olmo_hf_kernels_isa(void) { return "avx2"; }

static inline __m256 bf16x8_to_f32(const uint16_t* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* out[m][r] = x[m, :] . w[r, :] with x already fp32 (row stride ldx); K % 8 tail done in scalar code. */
#define GEMV_MICRO(MM)                                                                                        \
static inline void gemv_micro_##MM(const float* x, long ldx, const uint16_t* w, long ldw, long K,          \
                                   float out[4][NR]) {                                                     \
    __m256 acc[MM][NR];                                                                                    \
    for (int m = 0; m < MM; ++m) for (int r = 0; r < NR; ++r) acc[m][r] = _mm256_setzero_ps();             \
    long k = 0;                                                                                            \
    for (; k + 8 <= K; k += 8) {                                                                           \
        __m256 wv[NR];                                                                                     \
        for (int r = 0; r < NR; ++r) wv[r] = bf16x8_to_f32(w + r * ldw + k);                               \
        for (int m = 0; m < MM; ++m) {                                                                     \
            const __m256 xv = _mm256_loadu_ps(x + m * ldx + k);                                            \
            for (int r = 0; r < NR; ++r) acc[m][r] = _mm256_fmadd_ps(wv[r], xv, acc[m][r]);               \
        }                                                                                                  \
    }                                                                                                      \
    for (int m = 0; m < MM; ++m)                                                                           \
        for (int r = 0; r < NR; ++r) {                                                                     \
            float s = hsum256(acc[m][r]);                                                                  \
            for (long kk = k; kk < K; ++kk) s += x[m * ldx + kk] * bf16_to_f32(w[r * ldw + kk]);          \
            out[m][r] = s;                                                                                 \
        }                                                                                                  \
}
GEMV_MICRO(1) GEMV_MICRO(2) GEMV_MICRO(3) GEMV_MICRO(4)

static inline void gemv_micro(long mm, const float* x, long ldx, const uint16_t* w, long ldw, long K,
                              float out[4][NR]) {
    switch (mm) {
        case 1: gemv_micro_1(x, ldx, w, ldw, K, out); break;
        case 2: gemv_micro_2(x, ldx, w, ldw, K, out); break;
        case 3: gemv_micro_3(x, ldx, w, ldw, K, out); break;
        default: gemv_micro_4(x, ldx, w, ldw, K, out); break;
    }
}
#define GEMV_X_AT(x, i) ((x)[i])
#endif

int olmo_hf_gemv_bf16(const uint16_t* x_bf16, long ldx, const uint16_t* w, long ldw, long N, long K, uint16_t* y,
                      long ldy, long M, int nthreads) {
    if (M < 1 || M > 8 || K < 1 || ldw < K) return -1;
#if defined(__AVX512BF16__)
    const uint16_t* x = x_bf16;
#else
    float* xf = (float*)malloc(sizeof(float) * M * K);  /* x widened to fp32 once */
    if (!xf) return -2;
    for (long m = 0; m < M; ++m) for (long k = 0; k < K; ++k) xf[m * K + k] = bf16_to_f32(x_bf16[m * ldx + k]);
    const float* x = xf;
    ldx = K;
#endif
    const long NB = (N + NR - 1) / NR;
    /* a parallel region costs microseconds: small products (tiny models) stay on the calling thread */
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (N * K >= (1L << 18))
    for (long nb = 0; nb < NB; ++nb) {
        const long n0 = nb * NR;
        /* the last band may hold fewer than NR rows: it re-reads (and discards) rows of the band before it */
        const long base = n0 + NR <= N ? n0 : (N >= NR ? N - NR : 0);
        const long rows = N >= NR ? NR : N;
        float out[4][NR];
        for (long m0 = 0; m0 < M; m0 += 4) {
            const long mm = M - m0 < 4 ? M - m0 : 4;
            if (rows == NR) {
                gemv_micro(mm, x + m0 * ldx, ldx, w + base * ldw, ldw, K, out);
            } else { /* N < NR: one row at a time, scalar */
                for (long m = 0; m < mm; ++m)
                    for (long r = 0; r < rows; ++r) {
                        float s = 0.f;
                        for (long k = 0; k < K; ++k) s += GEMV_X_AT(x, (m0 + m) * ldx + k) * bf16_to_f32(w[r * ldw + k]);
                        out[m][r] = s;
                    }
            }
            for (long m = 0; m < mm; ++m)
                for (long r = n0 - base; r < rows; ++r) y[(m0 + m) * ldy + base + r] = f32_to_bf16(out[m][r]);
        }
    }
#if !defined(__AVX512BF16__)
    free(xf);
#endif
    return 0;
}

#if defined(__AVX512BF16__)
/* ------------------------------------------------------------------------------- matrix-vector on AMX tiles */
/* The same product y = x @ W^T (M <= 16 rows of x, the plain row-major W) on AMX-BF16, for CPUs that have it
   (Sapphire Rapids and later Xeons). With several rows of x the AVX512 kernel above runs out of dot-product
   throughput before memory bandwidth (~70 GMAC/s on two cores); a tile multiply does 16 x 16 x 32 products at once.
   Computed transposed, so that the weight needs no packing: C (16 n x 16 m, fp32) += A (16 rows of W x 32 k, one
   strided tile load straight from the weight) . B (x's 32 k x 16 m, pairs of k interleaved as TDPBF16PS wants it:
   x is packed once per call, zero-padded to 16 rows). Needs K % 32 == 0; N % 16 rows are left to the caller
   (the AVX512 kernel). Only called after olmo_hf_amx_enable() returned 0 and the plan measured it faster. */
#if (defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11) || (defined(__clang__) && __clang_major__ >= 12)
#define OLMO_HF_HAVE_AMX 1  /* compilers that know the AMX intrinsics; older ones build the rest without them */
#include <sys/syscall.h>
#include <unistd.h>

struct amx_tile_config {  /* the 64-byte operand of LDTILECFG, palette 1 */
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

/* Ask Linux for permission to use the AMX tile state in this process (arch_prctl ARCH_REQ_XCOMP_PERM for
   XFEATURE_XTILEDATA, Linux >= 5.16); 0 on success. oneDNN asks too; asking again is harmless. */
int olmo_hf_amx_enable(void) {
    return (int)syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */);
}

/* Software prefetch distance of the AMX kernel, in weight elements along k (1 KiB). Each 16-row block is 16 streams
   that start on a new row (a new 4 KiB page for K = 2048, where the hardware prefetcher starts cold), so near the end
   of a block the prefetch runs on into the NEXT block's rows: the block after it starts with its first KiB in cache. */
#ifndef AMX_PF
#define AMX_PF 512
#endif

/* C (tile c) += 16 rows of W at a (row stride ldw elements) x the packed x at xp, over k in [k0, k0 + 32). */
#define AMX_STEP(c, ta, tb, a, xp, k0)                                                                         \
    {                                                                                                          \
        _tile_loadd(ta, (a) + (k0), ldw * 2);                                                                  \
        _tile_loadd(tb, (xp) + (k0) * 16, 64);                                                                 \
        _tile_dpbf16ps(c, ta, tb);                                                                             \
    }

__attribute__((target("amx-tile,amx-bf16")))
int olmo_hf_gemv_bf16_amx(const uint16_t* x, long ldx, const uint16_t* w, long ldw, long N, long K, uint16_t* y,
                          long ldy, long M, int nthreads) {
    if (M < 1 || M > 16 || K < 32 || K % 32 || ldw < K || N < 16) return -1;
    /* B layout: row j (a pair of k) holds, for m = 0..15, x[m, 2j] and x[m, 2j + 1]: (K/2, 16, 2) bf16, packed once
       per call (64 KiB for K = 2048: a few microseconds), rows m >= M zero. */
    uint32_t* xp32 = (uint32_t*)aligned_alloc(64, (size_t)K * 32);
    if (!xp32) return -2;
    if (M < 16) memset(xp32, 0, (size_t)K * 32);
    for (long m = 0; m < M; ++m) {
        const uint16_t* xm = x + m * ldx;
        for (long j = 0; j < K / 2; ++j) memcpy(xp32 + j * 16 + m, xm + 2 * j, 4);
    }
    const uint16_t* xp = (const uint16_t*)xp32;
    const long NB = N / 16;
    #pragma omp parallel num_threads(nthreads) if (N * K >= (1L << 18))
    {
        struct amx_tile_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.palette_id = 1;
        /* tmm0, tmm3: two accumulators C (even / odd 32-blocks of k: two independent dependency chains);
           tmm1, tmm4: A (16 weight rows x 32 k); tmm2, tmm5: B (packed x, 32 k x 16 rows) */
        for (int t = 0; t < 6; ++t) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }
        _tile_loadconfig(&cfg);
        float c0[16][16] __attribute__((aligned(64)));
        float c1[16][16] __attribute__((aligned(64)));
        #pragma omp for schedule(static)
        for (long nb = 0; nb < NB; ++nb) {
            const uint16_t* a = w + nb * 16 * ldw;
            const uint16_t* next = nb + 1 < NB ? a + 16 * ldw : a;  /* prefetch target past the block's end */
            _tile_zero(0);
            _tile_zero(3);
            long k = 0;
            for (; k + 64 <= K; k += 64) {
                const long p = k + AMX_PF;
                const uint16_t* pa = p < K ? a + p : next + (p - K);
                for (int r = 0; r < 16; ++r) {
                    _mm_prefetch((const char*)(pa + r * ldw), _MM_HINT_T0);
                    _mm_prefetch((const char*)(pa + r * ldw + 32), _MM_HINT_T0);
                }
                AMX_STEP(0, 1, 2, a, xp, k)
                AMX_STEP(3, 4, 5, a, xp, k + 32)
            }
            if (k < K) AMX_STEP(0, 1, 2, a, xp, k)
            _tile_stored(0, c0, 64);
            _tile_stored(3, c1, 64);
            for (long m = 0; m < M; ++m)
                for (int n = 0; n < 16; ++n) y[m * ldy + nb * 16 + n] = f32_to_bf16(c0[n][m] + c1[n][m]);
        }
        _tile_release();
    }
    free(xp32);
    return 0;
}
#endif /* OLMO_HF_HAVE_AMX */

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
    #pragma omp parallel num_threads(nthreads) if (B * H * S * D >= 65536)
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
/* Element-wise work below this many elements runs on the calling thread: a decoding step's RMSNorm (8 x 2048 at batch
   8) or q/k norm + RoPE (8 x 4096) takes microseconds, less than waking the other OpenMP thread, and on a shared
   machine a parallel region waits for a descheduled thread for a whole time slice. (PyTorch's element-wise operators
   stay on one thread below 32768 elements: at::internal::GRAIN_SIZE.) */
#define OLMO_HF_PARALLEL_MIN 65536L

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
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (rows * n >= OLMO_HF_PARALLEL_MIN)
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
    #pragma omp parallel num_threads(nthreads) if (B * S * (nq + nk) >= OLMO_HF_PARALLEL_MIN)
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
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (rows * n > 65536)
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

#endif /* __AVX512BF16__ */

/* ===================================================================================================================
   int8 weight-only matrix-vector product (olmo_hf.fast.quantized: torchao Int8WeightOnlyConfig models)
   ===================================================================================================================
   y[m, n] = bf16(scale[n] * sum_k x[m, k] * q[n, k]) for M <= 8 rows of bf16 x, q the PLAIN (out_features,
   in_features) row-major int8 weight that torchao's Int8Tensor holds (its `qdata`, no copy), scale its per-output-row
   fp32 scale. Half the bytes of the bf16 product per weight, so up to twice the speed where memory bandwidth bounds
   it -- if the arithmetic keeps up, which widening every weight to fp32 (sign-extend, convert, FMA: 16 weights per
   three instructions) does not on a busy core. So x goes the other way: each block of I8_QB elements of a row of x
   is scaled to int16 (round to nearest, |x| max -> 32767; bf16 x has 8 significant bits, so this only loses what lies
   more than 2^-16 below the block's largest element, far below the bf16 rounding of the result), the weights are
   sign-extended to int16 in registers and multiplied in pairs into int32 (vpmaddwd: 32 weights per instruction with
   AVX512, 16 with AVX2), and each block's int32 sums are converted and scaled into fp32 accumulators. No weight is
   quantized differently from torchao's; the only roundings are x's to 16 bits, fp32 sums, and the final bf16.
   Rows of 1-2 KB are short streams for the hardware prefetcher, so each row of a band also prefetches the same
   position one band (NR rows) ahead: 1.35x at one thread here (9.0 -> 12.2 GB/s, torch.sum: 12.7 GB/s). */
#define I8_QB 128 /* x quantization block (elements); int32 sums of a block cannot overflow: 128 * 32767 * 128 */

/* x (M rows, stride ldx, bf16) -> xq (M rows of Kp int16, zero padded) and sx (M rows of nb block scales). */
static void quantize_x_int16(const uint16_t* x, long ldx, long M, long K, long Kp, long nb, int16_t* xq, float* sx) {
    for (long m = 0; m < M; ++m) {
        for (long b = 0; b < nb; ++b) {
            const long k0 = b * I8_QB, k1 = k0 + I8_QB < K ? k0 + I8_QB : K;
            float mx = 0.f;
            for (long k = k0; k < k1; ++k) { const float v = fabsf(bf16_to_f32(x[m * ldx + k])); if (v > mx) mx = v; }
            const float inv = mx > 0.f ? 32767.f / mx : 0.f;
            sx[m * nb + b] = mx / 32767.f;
            for (long k = k0; k < k1; ++k) xq[m * Kp + k] = (int16_t)lrintf(bf16_to_f32(x[m * ldx + k]) * inv);
        }
        for (long k = K; k < Kp; ++k) xq[m * Kp + k] = 0;
    }
}

#if defined(__AVX512BF16__)
#define I8_STEP 32
#define I8_MAX_MM 2 /* rows of x per pass over a band (registers: MM*NR int32 + MM*NR fp32 accumulators) */
/* out[m][r] = sum_b sx[m, b] * (xq[m, block b] . q[r, block b]) for MM rows of x and NR rows of q. */
#define GEMV_I8_MICRO(MM)                                                                                     \
static inline void gemv_i8_micro_##MM(const int16_t* xq, long Kp, const float* sx, long nb, const int8_t* w,  \
                                      long ldw, long K, float out[4][NR]) {                                \
    __m512 acc[MM][NR];                                                                                    \
    for (int m = 0; m < MM; ++m) for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();             \
    for (long b = 0; b < nb; ++b) {                                                                        \
        __m512i ia[MM][NR];                                                                                \
        for (int m = 0; m < MM; ++m) for (int r = 0; r < NR; ++r) ia[m][r] = _mm512_setzero_si512();       \
        const long k1 = (b + 1) * I8_QB < K ? (b + 1) * I8_QB : K;                                         \
        for (long k = b * I8_QB; k < k1; k += I8_STEP) {                                                   \
            const __mmask32 mk = k1 - k >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << (k1 - k)) - 1); \
            __m512i wv[NR];                                                                                \
            for (int r = 0; r < NR; ++r) {                                                                 \
                if (!(k & 63)) _mm_prefetch((const char*)(w + (r + NR) * ldw + k), _MM_HINT_T0);           \
                wv[r] = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mk, w + r * ldw + k));                \
            }                                                                                              \
            for (int m = 0; m < MM; ++m) {                                                                 \
                const __m512i xv = _mm512_loadu_si512((const void*)(xq + m * Kp + k));                     \
                for (int r = 0; r < NR; ++r) ia[m][r] = _mm512_add_epi32(ia[m][r], _mm512_madd_epi16(wv[r], xv)); \
            }                                                                                              \
        }                                                                                                  \
        for (int m = 0; m < MM; ++m) {                                                                     \
            const __m512 s = _mm512_set1_ps(sx[m * nb + b]);                                               \
            for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[m][r]), s, acc[m][r]); \
        }                                                                                                  \
    }                                                                                                      \
    for (int m = 0; m < MM; ++m) for (int r = 0; r < NR; ++r) out[m][r] = _mm512_reduce_add_ps(acc[m][r]); \
}
GEMV_I8_MICRO(1) GEMV_I8_MICRO(2)
#else /* AVX2: 16 weights per step, the K % 16 tail of each block in scalar code */
#define I8_STEP 16
#define I8_MAX_MM 1
#define GEMV_I8_MICRO(MM)                                                                                     \
static inline void gemv_i8_micro_##MM(const int16_t* xq, long Kp, const float* sx, long nb, const int8_t* w,  \
                                      long ldw, long K, float out[4][NR]) {                                \
    __m256 acc[NR];                                                                                        \
    float tail[NR] = {0.f};                                                                                \
    for (int r = 0; r < NR; ++r) acc[r] = _mm256_setzero_ps();                                             \
    for (long b = 0; b < nb; ++b) {                                                                        \
        __m256i ia[NR];                                                                                    \
        for (int r = 0; r < NR; ++r) ia[r] = _mm256_setzero_si256();                                       \
        const long k1 = (b + 1) * I8_QB < K ? (b + 1) * I8_QB : K;                                         \
        long k = b * I8_QB;                                                                                \
        for (; k + 16 <= k1; k += 16) {                                                                    \
            const __m256i xv = _mm256_loadu_si256((const __m256i*)(xq + k));                               \
            for (int r = 0; r < NR; ++r) {                                                                 \
                if (!(k & 63)) _mm_prefetch((const char*)(w + (r + NR) * ldw + k), _MM_HINT_T0);           \
                const __m256i wv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(w + r * ldw + k))); \
                ia[r] = _mm256_add_epi32(ia[r], _mm256_madd_epi16(wv, xv));                                \
            }                                                                                              \
        }                                                                                                  \
        const __m256 s = _mm256_set1_ps(sx[b]);                                                            \
        for (int r = 0; r < NR; ++r) {                                                                     \
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia[r]), s, acc[r]);                                \
            long t = 0;                                                                                    \
            for (long kk = k; kk < k1; ++kk) t += (long)xq[kk] * w[r * ldw + kk];                          \
            tail[r] += (float)t * sx[b];                                                                   \
        }                                                                                                  \
    }                                                                                                      \
    for (int r = 0; r < NR; ++r) out[0][r] = hsum256(acc[r]) + tail[r];                                    \
}
GEMV_I8_MICRO(1)
#endif

/* x_bf16 (M, K) row stride ldx; q (N, K) int8 row stride ldw; scale (N,) fp32; y (M, N) bf16 row stride ldy. */
int olmo_hf_gemv_int8(const uint16_t* x_bf16, long ldx, const int8_t* q, long ldw, const float* scale, long N, long K,
                      uint16_t* y, long ldy, long M, int nthreads) {
    if (M < 1 || M > 8 || K < 1 || N < 1 || ldw < K) return -1;
    const long Kp = (K + 31) / 32 * 32, nb = (K + I8_QB - 1) / I8_QB;
    int16_t* xq = (int16_t*)aligned_alloc(64, sizeof(int16_t) * M * Kp);
    float* sx = (float*)malloc(sizeof(float) * M * nb);
    if (!xq || !sx) { free(xq); free(sx); return -2; }
    quantize_x_int16(x_bf16, ldx, M, K, Kp, nb, xq, sx);
    const long NB = (N + NR - 1) / NR;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (long nband = 0; nband < NB; ++nband) {
        const long n0 = nband * NR;
        /* the last band may hold fewer than NR rows: it re-reads (and discards) rows of the band before it */
        const long base = n0 + NR <= N ? n0 : (N >= NR ? N - NR : 0);
        const long rows = N >= NR ? NR : N;
        float out[4][NR];
        for (long m0 = 0; m0 < M; m0 += I8_MAX_MM) {
            const long mm = M - m0 < I8_MAX_MM ? M - m0 : I8_MAX_MM;
            if (rows == NR) {
#if I8_MAX_MM > 1
                if (mm == 2) gemv_i8_micro_2(xq + m0 * Kp, Kp, sx + m0 * nb, nb, q + base * ldw, ldw, K, out); else
#endif
                gemv_i8_micro_1(xq + m0 * Kp, Kp, sx + m0 * nb, nb, q + base * ldw, ldw, K, out);
            } else { /* N < NR: one row at a time, scalar, same arithmetic */
                for (long m = 0; m < mm; ++m)
                    for (long r = 0; r < rows; ++r) {
                        float s = 0.f;
                        for (long b = 0; b < nb; ++b) {
                            long t = 0;
                            for (long k = b * I8_QB; k < (b + 1) * I8_QB && k < K; ++k)
                                t += (long)xq[(m0 + m) * Kp + k] * q[r * ldw + k];
                            s += (float)t * sx[(m0 + m) * nb + b];
                        }
                        out[m][r] = s;
                    }
            }
            for (long m = 0; m < mm; ++m)
                for (long r = n0 - base; r < rows; ++r)
                    y[(m0 + m) * ldy + base + r] = f32_to_bf16(out[m][r] * scale[base + r]);
        }
    }
    free(xq); free(sx);
    return 0;
}

/* int8 -> bf16, exactly (every int8 value is a bf16 value), for prefill: out (N, K) contiguous = q (N, K) row stride
   ldq. The product over many rows then runs in PyTorch's bf16 GEMM (oneDNN, AMX where the CPU has it) on this
   copy, which is torchao's own arithmetic for per-row int8 weights (x @ bf16(q)^T, then the scale), with the
   conversion in one vectorised pass instead of PyTorch's element-wise cast. */
#if defined(__AVX512BF16__)
static inline __m512 i8x16_to_f32(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
}
#else
static inline __m256 i8x8_to_f32(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}
#endif

int olmo_hf_int8_to_bf16(const int8_t* q, long ldq, long N, long K, uint16_t* out, int nthreads) {
    if (N < 1 || K < 1 || ldq < K) return -1;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (long n = 0; n < N; ++n) {
        const int8_t* src = q + n * ldq;
        uint16_t* dst = out + n * K;
        long k = 0;
#if defined(__AVX512BF16__)
        for (; k + 16 <= K; k += 16)
            _mm256_storeu_si256((__m256i*)(dst + k), (__m256i)_mm512_cvtneps_pbh(i8x16_to_f32(src + k)));
#else
        for (; k + 8 <= K; k += 8) {  /* the fp32 bits' upper half is the bf16 value (exact: no rounding) */
            const __m256i bits = _mm256_srli_epi32(_mm256_castps_si256(i8x8_to_f32(src + k)), 16);
            const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(bits), _mm256_extracti128_si256(bits, 1));
            _mm_storeu_si128((__m128i*)(dst + k), packed);
        }
#endif
        for (; k < K; ++k) dst[k] = f32_to_bf16((float)src[k]);
    }
    return 0;
}
