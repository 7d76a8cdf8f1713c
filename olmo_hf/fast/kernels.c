/* olmo_hf's native kernels for CPU inference, called from Python through ctypes. olmo_hf/fast/native.py compiles
   this ONE file once per machine, with the flags of the instruction set the CPU has (it picks them from the CPU's
   flags), and declares each entry point's signature in _NativeLib. What the file contains depends on those flags:

   - with AVX512-BF16 (-mavx512f -mavx512bw -mavx512vl -mavx512bf16): everything below;
   - with AVX2 + FMA + F16C only (-mavx2 -mfma -mf16c): the matrix-vector products (bf16, int8, int4) and the
     int8 / int4 widening;
   - on AArch64 with NEON (Advanced SIMD, every ARMv8-A CPU: Graviton, Ampere, Apple silicon under Linux): the
     same matrix-vector products as AVX2, 4 fp32 lanes wide;
   - otherwise the file is not built and PyTorch does all the work.

   Entry points:
   - olmo_hf_kernels_isa: which variant this library is ("avx512_bf16", "avx2" or "neon");
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
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__AVX512BF16__) && !(defined(__AVX2__) && defined(__FMA__)) && !(defined(__aarch64__) && defined(__ARM_NEON))
#error "kernels.c needs -mavx512bf16 (with avx512f/bw/vl), -mavx2 -mfma, or an AArch64 target (NEON)"
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

typedef uint16_t gemv_x_t; /* the micro-kernels read x as bf16 */
#define GEMV_X_AT(x, i) bf16_to_f32((x)[i])

#elif defined(__AVX2__) /* AVX2 + FMA: no bf16 dot product; weights widen to fp32 in registers, x widened once */
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

#else /* AArch64 NEON: as AVX2, with 4 fp32 lanes; a bf16 weight widens to fp32 by a 16-bit shift (exact) */
const char* olmo_hf_kernels_isa(void) { return "neon"; }

/* out[m][r] = x[m, :] . w[r, :] with x already fp32 (row stride ldx); 8 weights per row and step (one 16-byte
   load, widened as two halves); K % 8 tail done in scalar code. MM x NR accumulators + 2 NR weight halves + 2 x
   halves fit AArch64's 32 vector registers. */
#define GEMV_MICRO(MM)                                                                                        \
static inline void gemv_micro_##MM(const float* x, long ldx, const uint16_t* w, long ldw, long K,          \
                                   float out[4][NR]) {                                                     \
    float32x4_t acc[MM][NR];                                                                               \
    for (int m = 0; m < MM; ++m) for (int r = 0; r < NR; ++r) acc[m][r] = vdupq_n_f32(0.f);                \
    long k = 0;                                                                                            \
    for (; k + 8 <= K; k += 8) {                                                                           \
        float32x4_t wlo[NR], whi[NR];                                                                      \
        for (int r = 0; r < NR; ++r) {                                                                     \
            const uint16x8_t h = vld1q_u16(w + r * ldw + k);                                               \
            wlo[r] = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16));                              \
            whi[r] = vreinterpretq_f32_u32(vshll_high_n_u16(h, 16));                                       \
        }                                                                                                  \
        for (int m = 0; m < MM; ++m) {                                                                     \
            const float32x4_t xlo = vld1q_f32(x + m * ldx + k), xhi = vld1q_f32(x + m * ldx + k + 4);       \
            for (int r = 0; r < NR; ++r) acc[m][r] = vfmaq_f32(vfmaq_f32(acc[m][r], wlo[r], xlo), whi[r], xhi); \
        }                                                                                                  \
    }                                                                                                      \
    for (int m = 0; m < MM; ++m)                                                                           \
        for (int r = 0; r < NR; ++r) {                                                                     \
            float s = vaddvq_f32(acc[m][r]);                                                               \
            for (long kk = k; kk < K; ++kk) s += x[m * ldx + kk] * bf16_to_f32(w[r * ldw + kk]);          \
            out[m][r] = s;                                                                                 \
        }                                                                                                  \
}
GEMV_MICRO(1) GEMV_MICRO(2) GEMV_MICRO(3) GEMV_MICRO(4)
#endif

#if !defined(__AVX512BF16__) /* AVX2 and NEON: x is widened to fp32 once per call */
typedef float gemv_x_t;
#define GEMV_X_AT(x, i) ((x)[i])
#endif

static inline void gemv_micro(long mm, const gemv_x_t* x, long ldx, const uint16_t* w, long ldw, long K,
                              float out[4][NR]) {
    switch (mm) {
        case 1: gemv_micro_1(x, ldx, w, ldw, K, out); break;
        case 2: gemv_micro_2(x, ldx, w, ldw, K, out); break;
        case 3: gemv_micro_3(x, ldx, w, ldw, K, out); break;
        default: gemv_micro_4(x, ldx, w, ldw, K, out); break;
    }
}

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
/* r[i] <- column i of the 16 x 16 matrix of 32-bit elements whose row i was r[i] */
__attribute__((target("avx512f")))
static inline void transpose16x16_epi32(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int i = 0; i < 4; ++i) {  /* 128-bit lanes: rows i, i + 4 -> t[i] (lanes 0, 2), t[i + 4] (lanes 1, 3) */
        t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
    }
    for (int i = 0; i < 8; ++i) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
    }
}

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

/* ------------------------------------------------------------------------------- matrix product on AMX tiles */
/* y = x @ W^T for any number of rows of x (prefill products), W the plain row-major weight as nn.Linear holds it
   (OLMO_HF_W_BF16), torchao's int8 weight-only data with per-row fp32 scales (OLMO_HF_W_INT8: y =
   bf16(bf16(x @ q^T) * bf16(scale)), torchao's own roundings), or an int4 matrix in the fast path's nibble layout
   (OLMO_HF_W_INT4: widened per band exactly as torchao dequantizes, then y = bf16(x @ W^T)), or torchao's group-wise
   int8 with its fp16 group scales (OLMO_HF_W_INT8_GROUPED: widened per band to bf16(q * scale) as torchao
   dequantizes, then y = bf16(x @ W^T)). Why not F.linear: oneDNN's GEMM behind it reorders
   the plain weight into its blocked layout on every call (an unpacked weight is not cached), which on two cores
   costs more than the products themselves at 128 rows (~100-250 GFLOP/s measured, against a few TFLOP/s of tiles).
   Here the weight is read once per call, as it is:
   - x is packed once per call into the pair-interleaved layout TDPBF16PS wants for its B operand (16 rows of x per
     tile; rows padded with zeros to a multiple of 32);
   - each thread takes bands of 32 weight rows; a full bf16 band is tile-loaded straight from W (strided loads,
     prefetched a chunk ahead), anything else (an int8 or int4 band, widened exactly; the last partial band,
     zero-padded) goes through a per-thread bf16 buffer of 32 x KC that stays in L2. An int8 band is widened into
     one of two such buffers while the tiles multiply the other (the next band or k chunk, a slice after every tile
     step), so that the widening's vector instructions run while the AMX unit works: measured x0.82 -> x0.85 of the
     bf16 product streaming a 16384 x 2048 int8 matrix (2 threads, AMX Xeon, fast host; the VBMI widening below
     took it from x0.79 to x0.82), x0.81 -> x0.87 of the bf16 prefill for the 1B shape's int8 model with the older
     widening;
   - per band and 32 rows of x, 4 accumulator tiles C (16 n x 16 m, fp32) += A (16 n x 32 k) . B (32 k x 16 m);
   - each C tile is transposed in registers and written as 16 rows of y (16 bf16 each).
   Needs K % 32 == 0 (the caller falls back to F.linear otherwise). */
#define OLMO_HF_W_BF16 0
#define OLMO_HF_W_INT8 1
#define OLMO_HF_W_INT4 2  /* olmo_hf.fast.int4's nibble layout: scale = its bf16 group scales, offset its offsets */
#define OLMO_HF_W_INT8_GROUPED 3  /* torchao's group-wise int8: scale = its fp16 group scales (N, K / group) */
#define OLMO_HF_W_INT8_BLOCKED 4  /* group-wise int8 in the blocked layout (below): scale unused, scales in the rows */
#define OLMO_HF_W_INT4_BLOCKED 5  /* int4 in its blocked layout (below), symmetric: scales in the rows */
#define OLMO_HF_W_INT4_BLOCKED_ASYM 6  /* the same with offsets in the rows */
void olmo_hf_int8_blocked_widen_row(const int8_t* row, long G, long K, long k0, long k1, uint16_t* dst);
void olmo_hf_int4_blocked_widen_row(const uint8_t* row, int asym, long G, long K, long k0, long k1, uint16_t* dst);
void olmo_hf_int8_widen_row_grouped(const int8_t* src, const uint16_t* ws, long G, long k0, long k1, uint16_t* dst);
void olmo_hf_int4_widen_row(const uint8_t* src, const uint16_t* ws, const int8_t* wo, long G, long k0, long k1,
                            uint16_t* dst);  /* the int4 section below */

/* The widening of a band's chunk is done in pieces: piece p is row p / per_row, values [span * (p % per_row), ...) of
   the chunk (k0, kc) of the 32-row band at n0, into dst row r of stride ldb. Rows past the matrix (rows < 32) are
   zeros. The int8 kinds are widened a slice per tile step while the tiles multiply the band before (pipelined), in
   pieces of a block of the blocked layout (16 groups) or 512 values; the others a whole row of the chunk at a time,
   before the band's products: int4's widening measured slower interleaved with the tiles (x0.80 against x0.84 of the
   bf16 product streaming a 16384 x 2048 matrix, 2 threads, AMX Xeon), and a bf16 partial band is a copy. */
static int amx_pipelined(int kind) {
    return kind == OLMO_HF_W_INT8 || kind == OLMO_HF_W_INT8_GROUPED || kind == OLMO_HF_W_INT8_BLOCKED;
}

static long amx_widen_span(int kind, long group, long kc) {
    return kind == OLMO_HF_W_INT8_BLOCKED ? 16 * group : amx_pipelined(kind) ? 512 : kc;
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void amx_widen_piece(int kind, const void* w, long ldw, const void* scale, const int8_t* offset, long group,
                            long ng, long K, long n0, long rows, long k0, long kc, long p, long span, uint16_t* buf,
                            long ldb) {
    const long per_row = (kc + span - 1) / span, r = p / per_row, a = (p % per_row) * span;
    const long b = a + span < kc ? a + span : kc;  /* values [k0 + a, k0 + b) */
    uint16_t* dst = buf + r * ldb + a;
    if (r >= rows) { memset(dst, 0, (b - a) * 2); return; }
    const long n = n0 + r;
    switch (kind) {
    case OLMO_HF_W_BF16: memcpy(dst, (const uint16_t*)w + n * ldw + k0 + a, (b - a) * 2); return;
    case OLMO_HF_W_INT4:
        olmo_hf_int4_widen_row((const uint8_t*)w + n * ldw, (const uint16_t*)scale + n * ng,
                               offset ? offset + n * ng : NULL, group, k0 + a, k0 + b, dst);
        return;
    case OLMO_HF_W_INT4_BLOCKED: case OLMO_HF_W_INT4_BLOCKED_ASYM:
        olmo_hf_int4_blocked_widen_row((const uint8_t*)w + n * ldw, kind == OLMO_HF_W_INT4_BLOCKED_ASYM, group, K,
                                       k0 + a, k0 + b, dst);
        return;
    case OLMO_HF_W_INT8_BLOCKED: olmo_hf_int8_blocked_widen_row((const int8_t*)w + n * ldw, group, K, k0 + a, k0 + b, dst); return;
    case OLMO_HF_W_INT8_GROUPED:  /* torchao's bf16(q * scale) */
        olmo_hf_int8_widen_row_grouped((const int8_t*)w + n * ldw, (const uint16_t*)scale + n * ng, group, k0 + a,
                                       k0 + b, dst);
        return;
    default: {  /* OLMO_HF_W_INT8: q exactly as bf16, the per-row scale applied to the sums */
        const int8_t* src = (const int8_t*)w + n * ldw + k0 + a;
        for (long k = 0; k < b - a; k += 16)
            _mm256_storeu_si256((__m256i*)(dst + k), (__m256i)_mm512_cvtneps_pbh(_mm512_cvtepi32_ps(
                _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(src + k))))));
    }
    }
}

__attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")))
int olmo_hf_gemm_amx(const uint16_t* x, long ldx, long M, const void* w, long ldw, int kind, const void* scale,
                     const int8_t* offset, long group, long N, long K, uint16_t* y, long ldy, int nthreads) {
    if (M < 1 || N < 1 || K < 32 || K % 32) return -1;
    if (kind == OLMO_HF_W_INT4) {
        if (!scale || group < 32 || (group != 32 && group % 64) || K % group || ldw < (K + 63) / 64 * 32) return -1;
    } else if (kind == OLMO_HF_W_INT8_GROUPED) {
        if (!scale || group < 32 || group % 32 || K % group || ldw < K) return -1;
    } else if (kind == OLMO_HF_W_INT8_BLOCKED) {
        if (group < 32 || group > 128 || group % 32 || K % group || ldw < (2 * (K / group) + 63) / 64 * 64 + K) return -1;
    } else if (kind == OLMO_HF_W_INT4_BLOCKED || kind == OLMO_HF_W_INT4_BLOCKED_ASYM) {
        const long hdr = ((kind == OLMO_HF_W_INT4_BLOCKED_ASYM ? 3 : 2) * (K / (group ? group : 1)) + 63) / 64 * 64;
        if (group < 32 || group > 128 || (group != 32 && group % 64) || K % group || ldw < hdr + K / 2) return -1;
    } else if ((kind != OLMO_HF_W_BF16 && kind != OLMO_HF_W_INT8) || ldw < K || (kind == OLMO_HF_W_INT8 && !scale)) {
        return -1;
    }
    const long Mp = (M + 31) / 32 * 32, J = K / 2;  /* J: pairs of k */
    /* K is taken in chunks of KC so that the chunk of packed x (Mp x KC bf16) stays in L2 (512 KiB of it) while
       every band of W passes over it; partial sums wait in a per-thread fp32 (Mp, 32) buffer between chunks.
       KC is a multiple of 64 (an int4 chunk) unless K itself is shorter. */
    long KC = (512L * 1024 / 2 / Mp) / 64 * 64;
    if (KC < 64) KC = 64;
    if (KC > K) KC = K;
    const long ng = kind == OLMO_HF_W_INT4 || kind == OLMO_HF_W_INT8_GROUPED ? K / group : 0;
    const long ldb = KC + 32;  /* band buffer row stride: not a multiple of 4 KiB (rows 4 KiB apart share L1 sets) */
    /* xp: Mp / 16 tiles of (J, 16, 2) bf16: tile t, pair j, row m -> x[16 t + m, 2j], x[16 t + m, 2j + 1] */
    uint32_t* xp = (uint32_t*)aligned_alloc(64, (size_t)Mp * K * 2);
    uint16_t* bufs = (uint16_t*)aligned_alloc(64, (size_t)nthreads * (amx_pipelined(kind) ? 2 : 1) * 32 * ldb * 2);  /* two per thread where pipelined */
    float* accs = (float*)aligned_alloc(64, (size_t)nthreads * Mp * 32 * 4);
    if (!xp || !bufs || !accs) { free(xp); free(bufs); free(accs); return -2; }
    const long NB = (N + 31) / 32;
    #pragma omp parallel num_threads(nthreads)
    {
        #pragma omp for schedule(static)
        for (long t = 0; t < Mp / 16; ++t)
            for (long j0 = 0; j0 < J; j0 += 16) {  /* a 16 (rows of x) x 16 (pairs) block of 32-bit pairs */
                __m512i r[16];
                for (int m = 0; m < 16; ++m)
                    r[m] = 16 * t + m < M ? _mm512_loadu_si512((const void*)(x + (16 * t + m) * ldx + 2 * j0))
                                          : _mm512_setzero_si512();
                transpose16x16_epi32(r);
                for (int j = 0; j < 16; ++j) _mm512_store_si512((void*)(xp + (t * J + j0 + j) * 16), r[j]);
            }
        const int me = omp_get_thread_num();
        uint16_t* buf = bufs + (size_t)me * (amx_pipelined(kind) ? 2 : 1) * 32 * ldb;
        float* acc = accs + (size_t)me * Mp * 32;  /* (Mp / 32) blocks of 4 tiles of 16 x 16: the C tiles' homes */
        struct amx_tile_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.palette_id = 1;
        for (int t = 0; t < 8; ++t) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }  /* C: 0-3, A: 4-5, B: 6-7 */
        _tile_loadconfig(&cfg);
        /* The thread's bands, in static order, each as K / KC units (band, k chunk). An int8 unit is widened into
           one of two buffers while the tiles multiply the unit before it (the widening's vector instructions and the
           AMX unit then overlap instead of taking turns); any other unit not tile-loaded straight from W is widened
           into the one buffer before its products. */
        const int nt = omp_get_num_threads();
        const long nkc = (K + KC - 1) / KC, nb_lo = NB * me / nt, nb_hi = NB * (me + 1) / nt;
        const long units = (nb_hi - nb_lo) * nkc;
        const int pipelined = amx_pipelined(kind);
        for (long u = 0; u < units; ++u) {
            const long nb = nb_lo + u / nkc, k0 = (u % nkc) * KC;
            const long n0 = nb * 32, rows = N - n0 < 32 ? N - n0 : 32;
            const long kc = K - k0 < KC ? K - k0 : KC;
            /* A full bf16 band is tile-loaded straight from W (its lines prefetched one k chunk ahead during the
               first pass over x, the later passes find them in L2): a copy into the buffer cost a whole extra pass
               over W (measured 0.90x of these direct loads at 128 rows). */
            const int direct = kind == OLMO_HF_W_BF16 && rows == 32;
            uint16_t* cur = buf + (pipelined ? (u & 1) * 32 * ldb : 0);
            if (!direct && (u == 0 || !pipelined)) {  /* widened up front: the first unit, or every unpipelined one */
                const long span = amx_widen_span(kind, group, kc);
                for (long p = 0, np = 32 * ((kc + span - 1) / span); p < np; ++p)
                    amx_widen_piece(kind, w, ldw, scale, offset, group, ng, K, n0, rows, k0, kc, p, span, cur, ldb);
            }
            /* the next unit, to widen during this one's products */
            long nn0 = 0, nrows = 0, nk0 = 0, nkcc = 0, np = 0, p = 0, span = 0;
            uint16_t* nxt = buf + ((u + 1) & 1) * 32 * ldb;
            if (pipelined && u + 1 < units) {
                nn0 = (nb_lo + (u + 1) / nkc) * 32; nrows = N - nn0 < 32 ? N - nn0 : 32;
                nk0 = ((u + 1) % nkc) * KC; nkcc = K - nk0 < KC ? K - nk0 : KC;
                span = amx_widen_span(kind, group, nkcc);
                np = 32 * ((nkcc + span - 1) / span);
            }
            const long steps = (Mp / 32) * (kc / 32);
            long step = 0;
            const uint16_t* band = direct ? (const uint16_t*)w + n0 * ldw + k0 : cur;
            const long ldband = direct ? ldw : ldb;
            for (long m0 = 0; m0 < Mp; m0 += 32) {
                float* home = acc + m0 * 32;  /* 4 tiles of 16 x 16 fp32 */
                const uint32_t* b0 = xp + (m0 / 16) * J * 16 + (k0 / 2) * 16;
                const uint32_t* b1 = b0 + J * 16;
                if (k0 == 0) { _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3); }
                else {
                    _tile_loadd(0, home, 64); _tile_loadd(1, home + 256, 64);
                    _tile_loadd(2, home + 512, 64); _tile_loadd(3, home + 768, 64);
                }
                for (long k = 0; k < kc; k += 32) {
                    if (direct && m0 == 0)
                        for (int r = 0; r < 32; ++r)
                            _mm_prefetch((const char*)(band + r * ldband + k + 256), _MM_HINT_T0);
                    _tile_loadd(4, band + k, ldband * 2);
                    _tile_loadd(5, band + 16 * ldband + k, ldband * 2);
                    _tile_loadd(6, b0 + (k / 2) * 16, 64);
                    _tile_loadd(7, b1 + (k / 2) * 16, 64);
                    _tile_dpbf16ps(0, 4, 6);  /* n 0-15,  m 0-15 */
                    _tile_dpbf16ps(1, 4, 7);  /* n 0-15,  m 16-31 */
                    _tile_dpbf16ps(2, 5, 6);  /* n 16-31, m 0-15 */
                    _tile_dpbf16ps(3, 5, 7);  /* n 16-31, m 16-31 */
                    for (++step; p < np && p * steps < step * np; ++p)  /* the next unit's share for this step */
                        amx_widen_piece(kind, w, ldw, scale, offset, group, ng, K, nn0, nrows, nk0, nkcc, p, span, nxt, ldb);
                }
                _tile_stored(0, home, 64); _tile_stored(1, home + 256, 64);
                _tile_stored(2, home + 512, 64); _tile_stored(3, home + 768, 64);
            }
            for (; p < np; ++p)
                amx_widen_piece(kind, w, ldw, scale, offset, group, ng, K, nn0, nrows, nk0, nkcc, p, span, nxt, ldb);
            if (k0 + kc < K) continue;  /* the band's sums are complete after its last chunk */
            for (long m0 = 0; m0 < Mp && m0 < M; m0 += 32)
                for (int q = 0; q < 4; ++q) {  /* tile q: n from 16 * (q / 2), m from m0 + 16 * (q % 2) */
                    const long nq = 16 * (q / 2), mq = m0 + 16 * (q % 2);
                    if (nq >= rows || mq >= M) continue;
                    const float* c = acc + m0 * 32 + q * 256;  /* c[n * 16 + m] */
                    __m512i r[16];
                    for (int i = 0; i < 16; ++i) r[i] = _mm512_load_si512((const void*)(c + i * 16));
                    transpose16x16_epi32(r);  /* r[m]: the 16 n of row m */
                    const __mmask16 keep = rows - nq >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (rows - nq)) - 1);
                    __m512 s = _mm512_setzero_ps();
                    if (kind == OLMO_HF_W_INT8)  /* bf16(scale), as torchao multiplies by scale.to(bf16) */
                        s = _mm512_cvtpbh_ps(_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(keep, (const float*)scale + n0 + nq)));
                    for (int m = 0; m < 16 && mq + m < M; ++m) {
                        __m512 v = _mm512_castsi512_ps(r[m]);
                        if (kind == OLMO_HF_W_INT8) v = _mm512_mul_ps(_mm512_cvtpbh_ps(_mm512_cvtneps_pbh(v)), s);
                        _mm256_mask_storeu_epi16(y + (mq + m) * ldy + n0 + nq, keep, (__m256i)_mm512_cvtneps_pbh(v));
                    }
                }
        }
        _tile_release();
    }
    free(xp); free(bufs); free(accs);
    return 0;
}
#endif /* OLMO_HF_HAVE_AMX */

/* ------------------------------------------------------------------------------------------- decode attention */
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
    const long rep = H / G, nd = (D + 15) / 16, np = (D + 31) / 32;
    int failed = 0;
    #pragma omp parallel num_threads(nthreads) if (B * H * S * D >= 65536)
    {
        float* scores = (float*)aligned_alloc(64, sizeof(float) * (size_t)((S + 15) / 16 * 16));
        if (!scores) { failed = 1; }
        else {
            #pragma omp for schedule(static)
            for (long bh = 0; bh < B * H; ++bh) {
                const long b = bh / H, h = bh % H, g = h / rep;
                const uint16_t* qp = q + b * qsb + h * qsh;
                const uint16_t* kp = k + b * ksb + g * ksh;
                const uint16_t* vp = v + b * vsb + g * vsh;
                /* scores: q . k[s] with vdpbf16ps on the bf16 values as they are (their products are exact in
                   fp32; fp32 sums), 8 keys at a time: 8 independent accumulator chains */
                __m512bh qv[16];
                for (long c = 0; c < np; ++c) {
                    const long rem = D - 32 * c;
                    qv[c] = (__m512bh)_mm512_maskz_loadu_epi16(rem >= 32 ? ~(__mmask32)0 : (__mmask32)((1u << rem) - 1), qp + 32 * c);
                }
                long s = 0;
                for (; s + 8 <= S; s += 8) {
                    __m512 acc[8];
                    _Pragma("GCC unroll 8") for (int j = 0; j < 8; ++j) acc[j] = _mm512_setzero_ps();
                    for (long c = 0; c < np; ++c) {
                        const long rem = D - 32 * c;
                        const __mmask32 m = rem >= 32 ? ~(__mmask32)0 : (__mmask32)((1u << rem) - 1);
                        _Pragma("GCC unroll 8") for (int j = 0; j < 8; ++j)
                            acc[j] = _mm512_dpbf16_ps(acc[j], qv[c], (__m512bh)_mm512_maskz_loadu_epi16(m, kp + (s + j) * kss + 32 * c));
                    }
                    _Pragma("GCC unroll 8") for (int j = 0; j < 8; ++j) scores[s + j] = _mm512_reduce_add_ps(acc[j]) * scale;
                }
                for (; s < S; ++s) {
                    __m512 acc = _mm512_setzero_ps();
                    for (long c = 0; c < np; ++c) {
                        const long rem = D - 32 * c;
                        const __mmask32 m = rem >= 32 ? ~(__mmask32)0 : (__mmask32)((1u << rem) - 1);
                        acc = _mm512_dpbf16_ps(acc, qv[c], (__m512bh)_mm512_maskz_loadu_epi16(m, kp + s * kss + 32 * c));
                    }
                    scores[s] = _mm512_reduce_add_ps(acc) * scale;
                }
                /* softmax: vector max, exp and sum (exp_ps: ~1 ulp, as PyTorch's vectorised exp) */
                __m512 mxv = _mm512_set1_ps(-INFINITY);
                for (s = 0; s < S; s += 16) {
                    const __mmask16 m = S - s >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (S - s)) - 1);
                    mxv = _mm512_mask_max_ps(mxv, m, mxv, _mm512_maskz_loadu_ps(m, scores + s));
                }
                const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(mxv));
                __m512 sumv = _mm512_setzero_ps();
                for (s = 0; s < S; s += 16) {
                    const __mmask16 m = S - s >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (S - s)) - 1);
                    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, scores + s), mx));
                    _mm512_mask_storeu_ps(scores + s, m, e);
                    sumv = _mm512_add_ps(sumv, _mm512_maskz_mov_ps(m, e));
                }
                const float inv = 1.f / _mm512_reduce_add_ps(sumv);
                __m512 o[32];
                for (long c = 0; c < nd; ++c) o[c] = _mm512_setzero_ps();
                for (s = 0; s < S; ++s) {
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

/* x (M rows, stride ldx, bf16) -> xq (M rows of Kp int16, zero padded) and sx (M rows of nb scales, one per block
   of B elements). */
static void quantize_x_int16_blocks(const uint16_t* x, long ldx, long M, long K, long Kp, long B, long nb, int16_t* xq,
                                    float* sx) {
    for (long m = 0; m < M; ++m) {
        for (long b = 0; b < nb; ++b) {
            const long k0 = b * B, k1 = k0 + B < K ? k0 + B : K;
            float mx = 0.f;
            for (long k = k0; k < k1; ++k) { const float v = fabsf(bf16_to_f32(x[m * ldx + k])); if (v > mx) mx = v; }
            const float inv = mx > 0.f ? 32767.f / mx : 0.f;
            sx[m * nb + b] = mx / 32767.f;
            for (long k = k0; k < k1; ++k) xq[m * Kp + k] = (int16_t)lrintf(bf16_to_f32(x[m * ldx + k]) * inv);
        }
        for (long k = K; k < Kp; ++k) xq[m * Kp + k] = 0;
    }
}
#define quantize_x_int16(x, ldx, M, K, Kp, nb, xq, sx) quantize_x_int16_blocks(x, ldx, M, K, Kp, I8_QB, nb, xq, sx)

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
#elif defined(__AVX2__) /* 16 weights per step, the K % 16 tail of each block in scalar code */
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
#else /* NEON: as AVX2, 16 weights per step (widened to int16, multiplied into int32 lanes by vmlal_s16) */
#define I8_STEP 16
#define I8_MAX_MM 1
#define GEMV_I8_MICRO(MM)                                                                                     \
static inline void gemv_i8_micro_##MM(const int16_t* xq, long Kp, const float* sx, long nb, const int8_t* w,  \
                                      long ldw, long K, float out[4][NR]) {                                \
    float32x4_t acc[NR];                                                                                   \
    float tail[NR] = {0.f};                                                                                \
    for (int r = 0; r < NR; ++r) acc[r] = vdupq_n_f32(0.f);                                                \
    for (long b = 0; b < nb; ++b) {                                                                        \
        int32x4_t ia[NR];                                                                                  \
        for (int r = 0; r < NR; ++r) ia[r] = vdupq_n_s32(0);                                               \
        const long k1 = (b + 1) * I8_QB < K ? (b + 1) * I8_QB : K;                                         \
        long k = b * I8_QB;                                                                                \
        for (; k + 16 <= k1; k += 16) {                                                                    \
            const int16x8_t x0 = vld1q_s16(xq + k), x1 = vld1q_s16(xq + k + 8);                            \
            for (int r = 0; r < NR; ++r) {                                                                 \
                if (!(k & 63)) __builtin_prefetch(w + (r + NR) * ldw + k);                                 \
                const int8x16_t wv = vld1q_s8(w + r * ldw + k);                                            \
                const int16x8_t w0 = vmovl_s8(vget_low_s8(wv)), w1 = vmovl_high_s8(wv);                    \
                ia[r] = vmlal_s16(ia[r], vget_low_s16(w0), vget_low_s16(x0));                              \
                ia[r] = vmlal_high_s16(ia[r], w0, x0);                                                     \
                ia[r] = vmlal_s16(ia[r], vget_low_s16(w1), vget_low_s16(x1));                              \
                ia[r] = vmlal_high_s16(ia[r], w1, x1);                                                     \
            }                                                                                              \
        }                                                                                                  \
        for (int r = 0; r < NR; ++r) {                                                                     \
            acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(ia[r]), sx[b]);                                     \
            long t = 0;                                                                                    \
            for (long kk = k; kk < k1; ++kk) t += (long)xq[kk] * w[r * ldw + kk];                          \
            tail[r] += (float)t * sx[b];                                                                   \
        }                                                                                                  \
    }                                                                                                      \
    for (int r = 0; r < NR; ++r) out[0][r] = vaddvq_f32(acc[r]) + tail[r];                                 \
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
#elif defined(__AVX2__)
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
#elif defined(__AVX2__)
        for (; k + 8 <= K; k += 8) {  /* the fp32 bits' upper half is the bf16 value (exact: no rounding) */
            const __m256i bits = _mm256_srli_epi32(_mm256_castps_si256(i8x8_to_f32(src + k)), 16);
            const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(bits), _mm256_extracti128_si256(bits, 1));
            _mm_storeu_si128((__m128i*)(dst + k), packed);
        }
#else
        for (; k + 8 <= K; k += 8) {  /* NEON: int8 -> int32 -> fp32, whose upper 16 bits are the bf16 value */
            const int16x8_t v = vmovl_s8(vld1_s8(src + k));
            const uint32x4_t lo = vreinterpretq_u32_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(v))));
            const uint32x4_t hi = vreinterpretq_u32_f32(vcvtq_f32_s32(vmovl_high_s16(v)));
            vst1q_u16(dst + k, vcombine_u16(vshrn_n_u32(lo, 16), vshrn_n_u32(hi, 16)));
        }
#endif
        for (; k < K; ++k) dst[k] = f32_to_bf16((float)src[k]);
    }
    return 0;
}

/* -------------------------------------------------------------------------------- group-wise int8 (the default) */
/* y[m, n] = bf16(sum_g ws[n, g] * sum_{k in group g} x[m, k] * q[n, k]) for M <= 8 rows of bf16 x: q the plain
   (N, K) row-major int8 weight of torchao's tensor (no copy), ws its fp16 group scales (N, K / G) (torchao's own: one
   per G consecutive weights of a row), the weight w[n, k] = q[n, k] * ws[n, k / G] (symmetric: no zero point).
   Bits per weight 8 + 16 / G (8.5 at G = 32: llama.cpp's Q8_0, whose blocks are 32 int8 and an fp16 scale).
   Each band's scales are converted to fp32 once (vcvtph2ps), into a buffer on the thread's stack.
   As the per-row kernel: x is rounded to int16 per unit of U = min(G, 128) elements (|x| max -> 32767), weights are
   sign-extended to int16 in registers and multiplied in pairs into int32 (vpmaddwd), and each unit's int32 sums are
   converted to fp32 once and scaled by sx[unit] * ws[group] into fp32 accumulators; with G = 32 that is one
   conversion and one FMA per 32 weights (one vpmaddwd) on top of the per-row kernel's work, which stays far below
   the memory stream on these cores. Needs G % 32 == 0, K % G == 0, and G <= 128 or G % 128 == 0. */
#define I8G_UNIT(G) ((G) < I8_QB ? (G) : I8_QB)

#if defined(__AVX512BF16__)
/* wv[r] <- 32 int8 weights of row r (of NR) from k, sign-extended to int16; with pf, each row's line one band ahead
   is prefetched (the next band starts warm) */
#define I8G_LOAD_ROWS(wv, w, ldw, k, pf)                                                                      \
    _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) {                                                  \
        if (pf) _mm_prefetch((const char*)((w) + (r + NR) * (ldw) + (k)), _MM_HINT_T0);                     \
        wv[r] = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)((w) + r * (ldw) + (k))));          \
    }
#define GEMV_I8G_MICRO(MM)                                                                                    \
static inline void gemv_i8g_micro_##MM(const int16_t* xq, long Kp, const float* sx, long nu, long U,        \
                                       const int8_t* w, long ldw, const float* ws, long ng, long G,         \
                                       float out[4][NR]) {                                                  \
    __m512 acc[MM][NR];                                                                                     \
    _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m)                                                    \
        _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();               \
    for (long u = 0; u < nu; ++u) {                                                                         \
        const long k0 = u * U, g = k0 / G;                                                                  \
        __m512i ia[MM][NR];                                                                                 \
        _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m)                                                \
            _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) ia[m][r] = _mm512_setzero_si512();         \
        for (long k = k0; k < k0 + U; k += 32) {                                                            \
            __m512i wv[NR];                                                                                 \
            I8G_LOAD_ROWS(wv, w, ldw, k, !(k & 63))                                                         \
            _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m) {                                          \
                const __m512i xv = _mm512_loadu_si512((const void*)(xq + m * Kp + k));                      \
                _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r)                                        \
                    ia[m][r] = _mm512_add_epi32(ia[m][r], _mm512_madd_epi16(wv[r], xv));                    \
            }                                                                                               \
        }                                                                                                   \
        _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m) {                                              \
            const float s = sx[m * nu + u];                                                                 \
            _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r)                                            \
                acc[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[m][r]), _mm512_set1_ps(s * ws[r * ng + g]), \
                                            acc[m][r]);                                                     \
        }                                                                                                   \
    }                                                                                                       \
    _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m)                                                    \
        _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) out[m][r] = _mm512_reduce_add_ps(acc[m][r]);   \
}
GEMV_I8G_MICRO(1) GEMV_I8G_MICRO(2)
/* The default layout, G = 32 (= the x unit U): one vpmaddwd per group and row, and the group's combined scale
   cs = sx[g] * ws[r, g] (computed per band, as the general kernel computes it) broadcast from memory into the FMA.
   Half the instructions of the general kernel per weight, whose generic unit loop (and its per-group scalar
   multiply and broadcast) made it compute-bound at ~16 GB/s per core. Same arithmetic, bit for bit. */
#define GEMV_I8G32_MICRO(MM)                                                                                  \
static inline void gemv_i8g32_micro_##MM(const int16_t* xq, long Kp, const float* cs, long ng,              \
                                         const int8_t* w, long ldw, float out[4][NR]) {                     \
    __m512 acc[MM][NR];                                                                                     \
    _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m)                                                    \
        _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();               \
    for (long g = 0; g < ng; ++g) {                                                                         \
        const long k = 32 * g;                                                                              \
        __m512i wv[NR];                                                                                     \
        I8G_LOAD_ROWS(wv, w, ldw, k, !(g & 1))                                                              \
        _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m) {                                              \
            const __m512i xv = _mm512_loadu_si512((const void*)(xq + m * Kp + k));                          \
            _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r)                                            \
                acc[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_madd_epi16(wv[r], xv)),               \
                                            _mm512_set1_ps(cs[(m * NR + r) * ng + g]), acc[m][r]);          \
        }                                                                                                   \
    }                                                                                                       \
    _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m)                                                    \
        _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) out[m][r] = _mm512_reduce_add_ps(acc[m][r]);   \
}
GEMV_I8G32_MICRO(1) GEMV_I8G32_MICRO(2)
#define I8G_HAVE_G32 1
#elif defined(__AVX2__) /* 16 weights per step (U is a multiple of 32: no tails) */
static inline void gemv_i8g_micro_1(const int16_t* xq, long Kp, const float* sx, long nu, long U, const int8_t* w,
                                    long ldw, const float* ws, long ng, long G, float out[4][NR]) {
    (void)Kp;
    __m256 acc[NR];
    for (int r = 0; r < NR; ++r) acc[r] = _mm256_setzero_ps();
    for (long u = 0; u < nu; ++u) {
        const long k0 = u * U, g = k0 / G;
        __m256i ia[NR];
        for (int r = 0; r < NR; ++r) ia[r] = _mm256_setzero_si256();
        for (long k = k0; k < k0 + U; k += 16) {
            const __m256i xv = _mm256_loadu_si256((const __m256i*)(xq + k));
            for (int r = 0; r < NR; ++r) {
                if (!(k & 63)) _mm_prefetch((const char*)(w + (r + NR) * ldw + k), _MM_HINT_T0);
                const __m256i wv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(w + r * ldw + k)));
                ia[r] = _mm256_add_epi32(ia[r], _mm256_madd_epi16(wv, xv));
            }
        }
        for (int r = 0; r < NR; ++r)
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia[r]), _mm256_set1_ps(sx[u] * ws[r * ng + g]), acc[r]);
    }
    for (int r = 0; r < NR; ++r) out[0][r] = hsum256(acc[r]);
}
#else /* NEON: 16 weights per step, widened to int16 and multiplied into int32 lanes by vmlal_s16 */
static inline void gemv_i8g_micro_1(const int16_t* xq, long Kp, const float* sx, long nu, long U, const int8_t* w,
                                    long ldw, const float* ws, long ng, long G, float out[4][NR]) {
    (void)Kp;
    float32x4_t acc[NR];
    for (int r = 0; r < NR; ++r) acc[r] = vdupq_n_f32(0.f);
    for (long u = 0; u < nu; ++u) {
        const long k0 = u * U, g = k0 / G;
        int32x4_t ia[NR];
        for (int r = 0; r < NR; ++r) ia[r] = vdupq_n_s32(0);
        for (long k = k0; k < k0 + U; k += 16) {
            const int16x8_t x0 = vld1q_s16(xq + k), x1 = vld1q_s16(xq + k + 8);
            for (int r = 0; r < NR; ++r) {
                if (!(k & 63)) __builtin_prefetch(w + (r + NR) * ldw + k);
                const int8x16_t wv = vld1q_s8(w + r * ldw + k);
                const int16x8_t w0 = vmovl_s8(vget_low_s8(wv)), w1 = vmovl_high_s8(wv);
                ia[r] = vmlal_s16(ia[r], vget_low_s16(w0), vget_low_s16(x0));
                ia[r] = vmlal_high_s16(ia[r], w0, x0);
                ia[r] = vmlal_s16(ia[r], vget_low_s16(w1), vget_low_s16(x1));
                ia[r] = vmlal_high_s16(ia[r], w1, x1);
            }
        }
        for (int r = 0; r < NR; ++r) acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(ia[r]), sx[u] * ws[r * ng + g]);
    }
    for (int r = 0; r < NR; ++r) out[0][r] = vaddvq_f32(acc[r]);
}
#endif

/* fp16 (IEEE binary16 bits) -> fp32, exactly (subnormals included). */
static inline float i8g_f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) { const float f = (float)m * 0x1p-24f; return sign ? -f : f; }
    const uint32_t u = sign | (e == 31 ? 0x7f800000u | (m << 13) : ((e + 112) << 23) | (m << 13));
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* out[0 .. n) = the fp16 values h[0 .. n) as fp32 (vcvtph2ps / fcvtl where the variant has it). */
static void i8g_scales_to_f32(const uint16_t* h, long n, float* out) {
    long i = 0;
#if defined(__AVX512BF16__)
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(h + i))));
#elif defined(__AVX2__) && defined(__F16C__)
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(h + i))));
#elif defined(__aarch64__)
    for (; i + 4 <= n; i += 4) vst1q_f32(out + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h + i))));
#endif
    for (; i < n; ++i) out[i] = i8g_f16_to_f32(h[i]);
}

/* x_bf16 (M, K) row stride ldx; q (N, K) int8 row stride ldw; wh (N, K / G) fp16, contiguous; y (M, N) bf16 row
   stride ldy. */
int olmo_hf_gemv_int8_grouped(const uint16_t* x_bf16, long ldx, const int8_t* q, long ldw, const uint16_t* wh, long G,
                              long N, long K, uint16_t* y, long ldy, long M, int nthreads) {
    if (M < 1 || M > 8 || K < 1 || N < 1 || ldw < K || G < 32 || G % 32 || K % G || (G > I8_QB && G % I8_QB))
        return -1;
    const long U = I8G_UNIT(G), nu = K / U, ng = K / G;
    int16_t* xq = (int16_t*)aligned_alloc(64, sizeof(int16_t) * M * K);
    float* sx = (float*)malloc(sizeof(float) * M * nu);
    if (!xq || !sx) { free(xq); free(sx); return -2; }
    quantize_x_int16_blocks(x_bf16, ldx, M, K, K, U, nu, xq, sx);
    const long NB = (N + NR - 1) / NR;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (long nband = 0; nband < NB; ++nband) {
        const long n0 = nband * NR;
        const long base = n0 + NR <= N ? n0 : (N >= NR ? N - NR : 0);  /* as in olmo_hf_gemv_int8 */
        const long rows = N >= NR ? NR : N;
        float out[4][NR], ws[NR * ng];  /* the band's scales as fp32 */
        i8g_scales_to_f32(wh + base * ng, rows * ng, ws);
        for (long m0 = 0; m0 < M; m0 += I8_MAX_MM) {
            const long mm = M - m0 < I8_MAX_MM ? M - m0 : I8_MAX_MM;
#ifdef I8G_HAVE_G32
            if (rows == NR && G == 32) {  /* U == G: unit g is group g */
                float cs[I8_MAX_MM * NR * ng];
                for (long m = 0; m < mm; ++m)
                    for (long r = 0; r < NR; ++r)
                        for (long g = 0; g < ng; ++g) cs[(m * NR + r) * ng + g] = sx[(m0 + m) * nu + g] * ws[r * ng + g];
                if (mm == 2) gemv_i8g32_micro_2(xq + m0 * K, K, cs, ng, q + base * ldw, ldw, out);
                else gemv_i8g32_micro_1(xq + m0 * K, K, cs, ng, q + base * ldw, ldw, out);
            } else
#endif
            if (rows == NR) {
#if I8_MAX_MM > 1
                if (mm == 2) gemv_i8g_micro_2(xq + m0 * K, K, sx + m0 * nu, nu, U, q + base * ldw, ldw, ws, ng, G, out);
                else
#endif
                gemv_i8g_micro_1(xq + m0 * K, K, sx + m0 * nu, nu, U, q + base * ldw, ldw, ws, ng, G, out);
            } else { /* N < NR: one row at a time, scalar, same arithmetic */
                for (long m = 0; m < mm; ++m)
                    for (long r = 0; r < rows; ++r) {
                        float s = 0.f;
                        for (long u = 0; u < nu; ++u) {
                            long t = 0;
                            for (long k = u * U; k < (u + 1) * U; ++k) t += (long)xq[(m0 + m) * K + k] * q[r * ldw + k];
                            s += (float)t * (sx[(m0 + m) * nu + u] * ws[r * ng + u * U / G]);
                        }
                        out[m][r] = s;
                    }
            }
            for (long m = 0; m < mm; ++m)
                for (long r = n0 - base; r < rows; ++r) y[(m0 + m) * ldy + base + r] = f32_to_bf16(out[m][r]);
        }
    }
    free(xq); free(sx);
    return 0;
}

/* Values k0..k1-1 of one group-wise int8 row (src: the row, ws: its fp16 group scales) into dst[0 .. k1 - k0):
   dst = bf16(q * ws[k / G]) rounded to nearest even, torchao's own dequantization (q.to(bf16) times the fp16 scale,
   computed in fp32 where the product is exact, then .to(bf16)), so F.linear on it is bit for bit torchao's linear. k0, k1 multiples of 16 and
   G a multiple of 32 (no 16 values straddle two groups). Also the band decoder of the AMX product. */
void olmo_hf_int8_widen_row_grouped(const int8_t* src, const uint16_t* ws, long G, long k0, long k1, uint16_t* dst) {
    long k = k0;
#if defined(__AVX512BF16__)
    /* a group at a time, its scale converted once; vcvtneps2bf16 rounds to nearest even, and flushes only denormal
       inputs, which these products never are (|q| >= 1 times a float16 scale >= 2^-24, or exactly 0) */
    if (G == 32 && k0 % 32 == 0) /* the default layout: 16 scales at a time (vcvtph2ps: exact), two chunks each */
        for (; k + 512 <= k1; k += 512) {
            const __m512 s16 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(ws + k / 32)));
            for (int j = 0; j < 16; ++j) {
                const __m512 s = _mm512_permutexvar_ps(_mm512_set1_epi32(j), s16);
                const long kk = k + 32 * j;
                _mm256_storeu_si256((__m256i*)(dst + kk - k0),
                                    (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(i8x16_to_f32(src + kk), s)));
                _mm256_storeu_si256((__m256i*)(dst + kk + 16 - k0),
                                    (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(i8x16_to_f32(src + kk + 16), s)));
            }
        }
    while (k + 16 <= k1) {
        const long end = (k / G + 1) * G < k1 ? (k / G + 1) * G : k1;
        const __m512 s = _mm512_set1_ps(i8g_f16_to_f32(ws[k / G]));
        for (; k + 16 <= end; k += 16)
            _mm256_storeu_si256((__m256i*)(dst + k - k0),
                                (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(i8x16_to_f32(src + k), s)));
    }
#elif defined(__AVX2__)
    for (; k + 8 <= k1; k += 8) {
        const __m256 s = _mm256_set1_ps(i8g_f16_to_f32(ws[k / G]));
        const __m256i u = _mm256_castps_si256(_mm256_mul_ps(i8x8_to_f32(src + k), s));
        const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff),
                                            _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1)))), 16);
        _mm_storeu_si128((__m128i*)(dst + k - k0),
                         _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
    }
#else
    for (; k + 8 <= k1; k += 8) {
        const int16x8_t v = vmovl_s8(vld1_s8(src + k));
        const float32x4_t s = vdupq_n_f32(i8g_f16_to_f32(ws[k / G]));
        uint32x4_t lo = vreinterpretq_u32_f32(vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(v))), s));
        uint32x4_t hi = vreinterpretq_u32_f32(vmulq_f32(vcvtq_f32_s32(vmovl_high_s16(v)), s));
        lo = vaddq_u32(lo, vaddq_u32(vdupq_n_u32(0x7fff), vandq_u32(vshrq_n_u32(lo, 16), vdupq_n_u32(1))));
        hi = vaddq_u32(hi, vaddq_u32(vdupq_n_u32(0x7fff), vandq_u32(vshrq_n_u32(hi, 16), vdupq_n_u32(1))));
        vst1q_u16(dst + k - k0, vcombine_u16(vshrn_n_u32(lo, 16), vshrn_n_u32(hi, 16)));
    }
#endif
    for (; k < k1; ++k) dst[k - k0] = f32_to_bf16((float)src[k] * i8g_f16_to_f32(ws[k / G]));
}

/* out (N, K) bf16 contiguous = the group-wise int8 q (N, K) row stride ldq widened with its fp16 scales ws (N, K / G),
   as olmo_hf_int8_widen_row_grouped. */
int olmo_hf_int8_grouped_to_bf16(const int8_t* q, long ldq, const uint16_t* ws, long G, long N, long K, uint16_t* out,
                                 int nthreads) {
    if (N < 1 || K < 1 || ldq < K || G < 32 || G % 32 || K % G) return -1;
    const long ng = K / G;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (N * K >= (1L << 18))
    for (long n = 0; n < N; ++n) olmo_hf_int8_widen_row_grouped(q + n * ldq, ws + n * ng, G, 0, K, out + n * K);
    return 0;
}

/* ===================================================================================================================
   group-wise int8 in OUR blocked layout (olmo_hf.fast.quantized packs torchao's qdata and scales into it where
   olmo_hf_int8_blocked_ok() says this build and CPU run it: the AVX512 variant on a CPU with AVX512-VNNI)
   ===================================================================================================================
   Row n of the (N, K) matrix starts at w + n * ldw (ldw >= I8B_HDR(ng) + K, ng = K / G):
   - bytes [0, 2 ng): the row's ng float16 group scales (torchao's values), zero padded to I8B_HDR(ng) bytes, a
     multiple of 64 (the weights start on a cache line);
   - then its K weights, each stored as u = q ^ 0x80 = q + 128 (0..255), in blocks of 16 groups (a last block of
     h = ng % 16 groups when that is not 0): chunk c of a block (0 <= c < G / 4, 4 h bytes) holds bytes 4c .. 4c + 3
     of each of the block's groups, group g at byte 4 g. One 64-byte load is thus 4 weights of each of 16 groups:
     one 32-bit lane per group, which vpdpbusd sums into that lane.
   Decoding: each group of x (bf16) is rounded to int16 (its largest magnitude -> 32639) and split into bytes,
   x = 256 xh + xl (xl the signed low byte, xh in -127..127), so that for one group
       sum_k q[k] x[k] = 256 sum_k u[k] xh[k] + sum_k u[k] xl[k] - 128 sum_k x[k]
   : two vpdpbusd per 64 weights (unsigned weight bytes times signed x bytes), the last sum once per group of x. Each
   block's 16 exact int32 group sums are converted, times the group's sx (x's scale) and the row's float16 scale
   from its own header: one stream per row, no separate scale stream. Against the int16 product above (one
   vpmovsxbw, vpmaddwd, conversion and FMA per 32 weights, scales in a second array) this is a quarter of the
   vector instructions per weight, and it streams at ~97 % of the bf16 product's rate per byte: x1.11-1.13 of the
   int16 product from memory (32 matrices of the 1B shape, 1 and 2 threads, interleaved in one process). x's
   rounding to 15 bits + sign loses what lies more than 2^-15 below its group's largest element, far under the
   bf16 rounding of the result. G: 32, 64, 96 or 128 (a group's sum 256 * G * 255 * 127 must stay below 2^31). */
#define I8B_HDR(ng) ((2 * (ng) + 63) / 64 * 64)
#define I8B_XMAX 32639.f
#if defined(__AVX512BF16__)
extern int olmo_hf_int8_blocked_vbmi;
int olmo_hf_int8_blocked_ok(void) {  /* called once when the library loads: also settles the widening path */
    if (olmo_hf_int8_blocked_vbmi < 0) olmo_hf_int8_blocked_vbmi = __builtin_cpu_supports("avx512vbmi");
    return __builtin_cpu_supports("avx512vnni");
}

/* vpdpbusd as inline assembly: gcc 12 copies the accumulator of _mm512_dpbusd_epi32 through a second register at
   every step of the unrolled loop (measured 1.5x slower) */
__attribute__((target("avx512vnni"))) static inline __m512i i8b_dpbusd(__m512i acc, __m512i u8, __m512i s8) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8));
    return acc;
}

/* One row of x (K bf16) -> xh, xl: blocks of 16 G bytes, chunk c of block b at b * 16 G + 64 c, lane g (4 bytes)
   the bytes of group 16 b + g (zero past the last group); cx[g] = 128 * sum of the group's int16 x, sx[g] its scale
   (both zero past the last group, up to a multiple of 16). tmp: K int16 of scratch. */
static void i8b_quantize_x(const uint16_t* x, long K, long G, int8_t* xh, int8_t* xl, int32_t* cx, float* sx,
                           int16_t* tmp) {
    const long ng = K / G, nb = (ng + 15) / 16;
    for (long g = 0; g < ng; ++g) {
        __m512 mx = _mm512_setzero_ps();
        for (long k = g * G; k < (g + 1) * G; k += 16) mx = _mm512_max_ps(mx, _mm512_abs_ps(load_bf16x16(x + k)));
        const float m = _mm512_reduce_max_ps(mx);
        const __m512 inv = _mm512_set1_ps(m > 0.f ? I8B_XMAX / m : 0.f);
        __m512i sum = _mm512_setzero_si512();
        for (long k = g * G; k < (g + 1) * G; k += 16) {  /* round to nearest even, as lrintf */
            const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(load_bf16x16(x + k), inv));
            sum = _mm512_add_epi32(sum, v);
            _mm256_storeu_si256((__m256i*)(tmp + k), _mm512_cvtepi32_epi16(v));
        }
        cx[g] = 128 * _mm512_reduce_add_epi32(sum);
        sx[g] = m / I8B_XMAX;
    }
    for (long g = ng; g < 16 * nb; ++g) { cx[g] = 0; sx[g] = 0.f; }
    for (long b = 0; b < nb; ++b) {
        const long h = ng - 16 * b < 16 ? ng - 16 * b : 16;
        for (long s = 0; 64 * s < G; ++s) {  /* 64 bytes (16 lanes of 4) of every group of the block per pass */
            const long n = G - 64 * s < 64 ? G - 64 * s : 64;
            __m512i rh[16], rl[16];
            for (long g = 0; g < 16; ++g) {
                if (g >= h) { rh[g] = rl[g] = _mm512_setzero_si512(); continue; }
                const int16_t* p = tmp + (16 * b + g) * G + 64 * s;
                const __m512i a = _mm512_loadu_si512((const void*)p);  /* values 0-31 of the pass */
                const __m512i c = n > 32 ? _mm512_loadu_si512((const void*)(p + 32)) : _mm512_setzero_si512();
                const __m512i al = _mm512_srai_epi16(_mm512_slli_epi16(a, 8), 8), cl = _mm512_srai_epi16(_mm512_slli_epi16(c, 8), 8);
                const __m512i ah = _mm512_srai_epi16(_mm512_sub_epi16(a, al), 8), ch = _mm512_srai_epi16(_mm512_sub_epi16(c, cl), 8);
                rl[g] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi16_epi8(al)), _mm512_cvtepi16_epi8(cl), 1);
                rh[g] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi16_epi8(ah)), _mm512_cvtepi16_epi8(ch), 1);
            }
            transpose16x16_epi32(rh);
            transpose16x16_epi32(rl);
            for (long c = 0; c < n / 4; ++c) {
                _mm512_store_si512((void*)(xh + b * 16 * G + 64 * (16 * s + c)), rh[c]);
                _mm512_store_si512((void*)(xl + b * 16 * G + 64 * (16 * s + c)), rl[c]);
            }
        }
    }
}

/* Shared by the blocked micro-kernels (int8 here, int4 below). BLOCKED_BLOCK: block b of a row's ng groups holds h
   of them (16 but in the last block), its chunks 4h bytes (wm: the byte mask of a chunk), its lanes hm. */
#define BLOCKED_BLOCK(ng, b)                                                                                  \
    const long h = (ng) - 16 * (b) < 16 ? (ng) - 16 * (b) : 16;                                             \
    const __mmask64 wm = h == 16 ? ~0ull : (1ull << (4 * h)) - 1;                                           \
    const __mmask16 hm = (__mmask16)((1u << h) - 1);
/* acc[m][r] = 0 for MM x NR fp32 accumulators, and the next band's row heads (scales) prefetched: the rows'
   values are prefetched as the kernel goes, one band ahead */
#define BLOCKED_START(acc, MM, w, ldw, hdr)                                                                   \
    _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m)                                                    \
        _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();               \
    for (long o = 0; o < (hdr); o += 64)                                                                    \
        _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r)                                                \
            _mm_prefetch((const char*)((w) + (r + NR) * (ldw) + o), _MM_HINT_T0);
/* a[m][r] = b[m][r] = 0 (the int32 lane sums of a block) */
#define BLOCKED_ZERO2(a, b, MM)                                                                               \
    _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m)                                                    \
        _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) {                                              \
            a[m][r] = _mm512_setzero_si512();                                                               \
            b[m][r] = _mm512_setzero_si512();                                                               \
        }
/* out[m][r] = the sum of acc[m][r]'s lanes */
#define BLOCKED_FINISH(acc, MM, out)                                                                          \
    _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m)                                                    \
        _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) out[m][r] = _mm512_reduce_add_ps(acc[m][r]);

/* out[m][r] = sum over groups of sx[m, g] * scale[r, g] * (the group's int32 sum) for MM rows of x, NR rows of w */
#define GEMV_I8B_MICRO(MM)                                                                                    \
__attribute__((target("avx512vnni"))) static inline void gemv_i8b_micro_##MM(                               \
        const int8_t* xh, const int8_t* xl, long Kx, const int32_t* cx, const float* sx, long ncx, long ng, \
        long G, const int8_t* w, long ldw, float out[4][NR]) {                                              \
    const long hdr = I8B_HDR(ng), nb = (ng + 15) / 16;                                                      \
    __m512 acc[MM][NR];                                                                                     \
    BLOCKED_START(acc, MM, w, ldw, hdr)                                                                     \
    for (long b = 0; b < nb; ++b) {                                                                         \
        BLOCKED_BLOCK(ng, b)                                                                                \
        const int8_t* wb = w + hdr + 16 * G * b;                                                            \
        __m512i ah[MM][NR], al[MM][NR];                                                                     \
        BLOCKED_ZERO2(ah, al, MM)                                                                           \
        for (long c = 0; c < G / 4; ++c) {                                                                  \
            __m512i wv[NR];                                                                                 \
            _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) {                                          \
                _mm_prefetch((const char*)(wb + (r + NR) * ldw + 4 * h * c), _MM_HINT_T0);                  \
                wv[r] = _mm512_maskz_loadu_epi8(wm, wb + r * ldw + 4 * h * c);                              \
            }                                                                                               \
            _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m) {                                          \
                const __m512i vh = _mm512_load_si512((const void*)(xh + m * Kx + b * 16 * G + 64 * c));     \
                const __m512i vl = _mm512_load_si512((const void*)(xl + m * Kx + b * 16 * G + 64 * c));     \
                _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) {                                      \
                    ah[m][r] = i8b_dpbusd(ah[m][r], wv[r], vh);                                             \
                    al[m][r] = i8b_dpbusd(al[m][r], wv[r], vl);                                             \
                }                                                                                           \
            }                                                                                               \
        }                                                                                                   \
        __m512 ws[NR];  /* the rows' scales of the block's groups */                                        \
        _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r)                                                \
            ws[r] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(hm, (const uint16_t*)(w + r * ldw) + 16 * b)); \
        _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m) {                                              \
            const __m512i c = _mm512_loadu_si512((const void*)(cx + m * ncx + 16 * b));                     \
            const __m512 s = _mm512_loadu_ps(sx + m * ncx + 16 * b);                                        \
            _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) {                                          \
                const __m512i t = _mm512_sub_epi32(_mm512_add_epi32(_mm512_slli_epi32(ah[m][r], 8), al[m][r]), c); \
                acc[m][r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(t), s), ws[r], acc[m][r]);     \
            }                                                                                               \
        }                                                                                                   \
    }                                                                                                       \
    BLOCKED_FINISH(acc, MM, out)                                                                            \
}
GEMV_I8B_MICRO(1) GEMV_I8B_MICRO(2)

/* w itself, or where it has fewer rows than a band (N < NR) a zero-padded copy of them (the same arithmetic; the
   extra rows' results are discarded), whose address *copy keeps for free(); NULL when that copy fails. */
static const void* blocked_rows(const void* w, long N, long ldw, void** copy) {
    *copy = NULL;
    if (N >= NR) return w;
    *copy = aligned_alloc(64, (size_t)NR * ldw);
    if (!*copy) return NULL;
    memset(*copy, 0, (size_t)NR * ldw);
    memcpy(*copy, w, (size_t)N * ldw);
    return *copy;
}

/* x_bf16 (M, K) row stride ldx; w the blocked (N, K) matrix, row stride ldw bytes; y (M, N) bf16 row stride ldy. */
int olmo_hf_gemv_int8_blocked(const uint16_t* x_bf16, long ldx, const int8_t* w, long ldw, long G, long N, long K,
                              uint16_t* y, long ldy, long M, int nthreads) {
    if (M < 1 || M > 8 || N < 1 || G < 32 || G > 128 || G % 32 || K < G || K % G || ldw < I8B_HDR(K / G) + K ||
        !olmo_hf_int8_blocked_ok())
        return -1;
    const long ng = K / G, nb = (ng + 15) / 16, Kx = nb * 16 * G, ncx = nb * 16;
    int8_t* xh = (int8_t*)aligned_alloc(64, (size_t)M * Kx * 2);
    int8_t* xl = xh + M * Kx;
    int32_t* cx = (int32_t*)aligned_alloc(64, sizeof(int32_t) * M * ncx);
    float* sx = (float*)aligned_alloc(64, sizeof(float) * M * ncx);
    int16_t* tmp = (int16_t*)malloc(sizeof(int16_t) * K);
    void* small;
    w = (const int8_t*)blocked_rows(w, N, ldw, &small);
    if (!xh || !cx || !sx || !tmp || !w) { free(xh); free(cx); free(sx); free(tmp); free(small); return -2; }
    for (long m = 0; m < M; ++m)
        i8b_quantize_x(x_bf16 + m * ldx, K, G, xh + m * Kx, xl + m * Kx, cx + m * ncx, sx + m * ncx, tmp);
    const long NB = (N + NR - 1) / NR;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (N * K >= (1L << 18))
    for (long nband = 0; nband < NB; ++nband) {
        const long n0 = nband * NR;
        const long base = n0 + NR <= N || N < NR ? n0 : N - NR;  /* as in olmo_hf_gemv_int8 */
        const long rows = N < NR ? N : NR;
        float out[4][NR];
        for (long m0 = 0; m0 < M; m0 += 2) {
            if (M - m0 >= 2)
                gemv_i8b_micro_2(xh + m0 * Kx, xl + m0 * Kx, Kx, cx + m0 * ncx, sx + m0 * ncx, ncx, ng, G,
                                 w + base * ldw, ldw, out);
            else
                gemv_i8b_micro_1(xh + m0 * Kx, xl + m0 * Kx, Kx, cx + m0 * ncx, sx + m0 * ncx, ncx, ng, G,
                                 w + base * ldw, ldw, out);
            for (long m = 0; m < 2 && m0 + m < M; ++m)
                for (long r = n0 - base; r < rows; ++r) y[(m0 + m) * ldy + base + r] = f32_to_bf16(out[m][r]);
        }
    }
    free(xh); free(cx); free(sx); free(tmp); free(small);
    return 0;
}

/* Groups of 32 in the blocked layout, widened with AVX512-VBMI byte permutes in place of the extractions and
   conversions of the path below (CPUs without VBMI: Cooper Lake). The same two unpack stages as there bring values
   0..15 (and 16..31) of a group into one 128-bit lane; one vpermb then writes each u = q + 128 into byte 1 of a
   dword whose other bytes are those of float 32768 (0x47000000), making the float 32768 + u exactly, and
       fma(32768 + u, scale, -32896 * scale) = (u - 128) * scale = q * scale
   exactly: 32896 * scale has at most 20 significant bits and q * scale is representable, so the only rounding is the
   one to bf16 and the bits are those of the path below. Per 32 values: two vpermb, two FMAs, one vcvtne2ps2bf16 and
   one 64-byte store, against ~16 vector instructions there; measured 0.20 against 0.285 TSC ticks per value (one
   thread, 32 rows of 2048 into a buffer in L2, interleaved; AMX Xeon). */
__attribute__((target("avx512f"))) static inline __m512 bcast_mem(const float* p) {
    __m512 r;  /* vbroadcastss from memory (a load): gcc turns a broadcast of a stored vector into vpermd (port 5) */
    __asm__("vbroadcastss %1, %0" : "=v"(r) : "m"(*p));
    return r;
}

/* group g (0..15) of a block: its 32 values as bf16 (u: the block's chunks interleaved as below, u[j] lane L holding
   values 0..15 of group 4 L + j, u[4 + j] its values 16..31; sc, cc: the block's scales and -32896 times them) */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx512vbmi")))
static inline __m512i i8b_group32_vbmi(const __m512i* u, int g, const float* sc, const float* cc) {
    const __m512i magic = _mm512_set1_epi32(0x47000000);  /* float 32768 */
    /* dword d takes byte 16 L + d of u (lane L = g / 4) into its byte 1 */
    const __m512i idx = _mm512_add_epi32(_mm512_setr_epi32(0x000, 0x100, 0x200, 0x300, 0x400, 0x500, 0x600, 0x700,
                                                            0x800, 0x900, 0xa00, 0xb00, 0xc00, 0xd00, 0xe00, 0xf00),
                                         _mm512_set1_epi32((16 * (g / 4)) << 8));
    const __mmask64 byte1 = 0x2222222222222222ull;
    const __m512 s = bcast_mem(sc + g), c = bcast_mem(cc + g);
    const __m512 v0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_mask_permutexvar_epi8(magic, byte1, idx, u[g % 4])), s, c);
    const __m512 v1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_mask_permutexvar_epi8(magic, byte1, idx, u[4 + g % 4])), s, c);
    return (__m512i)_mm512_cvtne2ps_pbh(v1, v0);  /* values 0..15 in the low half */
}

/* One block of h groups of 32 starting at value gk of the row (src: its chunks; s16: its scales), values k0..k1-1
   of the row into dst[0 .. k1 - k0) as olmo_hf_int8_blocked_widen_row */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx512vbmi")))
static void i8b_widen_block32_vbmi(const int8_t* src, long h, __m512 s16, long gk, long k0, long k1, uint16_t* dst) {
    const __mmask64 wm = h == 16 ? ~0ull : (1ull << (4 * h)) - 1;
    __m512i c[8], t[8], u[8];
    for (int i = 0; i < 8; ++i) c[i] = _mm512_maskz_loadu_epi8(wm, src + 4 * h * i);
    for (int i = 0; i < 8; i += 2) {  /* lane L: chunks i, i + 1 of groups 4 L, 4 L + 1 (lo) or 4 L + 2, 4 L + 3 (hi) */
        t[i] = _mm512_unpacklo_epi32(c[i], c[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(c[i], c[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {  /* u[i + j], lane L: chunks i .. i + 3 (values 4 i .. 4 i + 15) of group 4 L + j */
        u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    float sc[16], cc[16];  /* broadcast from memory: a load, not a shuffle on the port the permutes need */
    _mm512_storeu_ps(sc, s16);
    _mm512_storeu_ps(cc, _mm512_mul_ps(s16, _mm512_set1_ps(-32896.f)));
    if (h == 16 && gk >= k0 && gk + 512 <= k1) {  /* a whole block: no bounds to test */
        #pragma GCC unroll 16
        for (int g = 0; g < 16; ++g) _mm512_storeu_si512((void*)(dst + gk - k0 + 32 * g), i8b_group32_vbmi(u, g, sc, cc));
        return;
    }
    for (int g = 0; g < h; ++g) {
        const long k = gk + 32 * g;  /* the group's first value in the row */
        if (k + 32 <= k0 || k >= k1) continue;
        const __mmask32 keep = (k >= k0 ? 0xffffu : 0u) | (k + 16 < k1 ? 0xffff0000u : 0u);  /* halves in range */
        _mm512_mask_storeu_epi16(dst + k - k0, keep, i8b_group32_vbmi(u, g, sc, cc));
    }
}

/* Whether the widening of groups of 32 uses the VBMI path: -1 (the default) where the CPU has AVX512-VBMI; the
   tests set 0 to check the other path's bits on a CPU that has it */
int olmo_hf_int8_blocked_vbmi = -1;

/* Values k0..k1-1 of a blocked row as bf16 into dst[0 .. k1 - k0): bf16(q * scale), the product in fp32 and
   rounded to nearest even (vcvtneps2bf16), as olmo_hf_int8_widen_row_grouped computes torchao's dequantization: the
   same bits. Each block is transposed back in registers (16 x 16 words: chunk c's word g -> group g's word c) and
   widened from there. k0, k1 multiples of 16. */
void olmo_hf_int8_blocked_widen_row(const int8_t* row, long G, long K, long k0, long k1, uint16_t* dst) {
    const long ng = K / G, hdr = I8B_HDR(ng);
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    if (olmo_hf_int8_blocked_vbmi < 0) olmo_hf_int8_blocked_vbmi = __builtin_cpu_supports("avx512vbmi");
    const int vbmi = olmo_hf_int8_blocked_vbmi;
    for (long b = k0 / (16 * G); b * 16 * G < k1; ++b) {
        const long h = ng - 16 * b < 16 ? ng - 16 * b : 16;
        const __mmask64 wm = h == 16 ? ~0ull : (1ull << (4 * h)) - 1;
        const __m512 s16 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16((__mmask16)((1u << h) - 1),
                                                                    (const uint16_t*)row + 16 * b));
        const int8_t* src = row + hdr + 16 * G * b;
        if (G == 32 && vbmi) { i8b_widen_block32_vbmi(src, h, s16, 16 * G * b, k0, k1, dst); continue; }
        if (G == 32) {  /* without VBMI: 8 chunks, each group's 32 bytes one word of each (8 x 16 -> 16 x 8 words) */
            __m512i c[8], t[8], u[8];
            for (int i = 0; i < 8; ++i) c[i] = _mm512_maskz_loadu_epi8(wm, src + 4 * h * i);
            for (int i = 0; i < 8; i += 2) {  /* lane L: groups 4L .. 4L + 3 */
                t[i] = _mm512_unpacklo_epi32(c[i], c[i + 1]);      /* c_i[4L] c_i+1[4L] c_i[4L+1] c_i+1[4L+1] */
                t[i + 1] = _mm512_unpackhi_epi32(c[i], c[i + 1]);  /* the same for groups 4L + 2, 4L + 3 */
            }
            for (int i = 0; i < 8; i += 4) {  /* u[i + j], lane L: chunks i .. i + 3 of group 4L + j */
                u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
                u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
                u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
                u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
            }
            const __m512i lo = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), hi = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
            for (int j = 0; j < 4; ++j)
                for (int half = 0; half < 2; ++half) {  /* groups 4L + j for L = 2 half, 2 half + 1: a 256-bit half each */
                    const __m512i v = _mm512_xor_si512(_mm512_permutex2var_epi64(u[j], half ? hi : lo, u[4 + j]), flip);
                    for (int e = 0; e < 2; ++e) {
                        const long g = 4 * (2 * half + e) + j, k = (16 * b + g) * G;
                        if (g >= h || k + G <= k0 || k >= k1) continue;
                        const __m512 sc = _mm512_permutexvar_ps(_mm512_set1_epi32((int)g), s16);
                        for (int i = 0; i < 2; ++i) {
                            if (k + 16 * i < k0 || k + 16 * i >= k1) continue;
                            const int q = 2 * e + i;  /* the 128-bit lane: values 16 i .. of group g */
                            const __m128i part = q == 0 ? _mm512_castsi512_si128(v) : q == 1 ? _mm512_extracti32x4_epi32(v, 1)
                                                 : q == 2 ? _mm512_extracti32x4_epi32(v, 2) : _mm512_extracti32x4_epi32(v, 3);
                            const __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(part)), sc);
                            _mm256_storeu_si256((__m256i*)(dst + k + 16 * i - k0), (__m256i)_mm512_cvtneps_pbh(f));
                        }
                    }
                }
            continue;
        }
        for (long s = 0; 64 * s < G; ++s) {
            const long n = G - 64 * s < 64 ? G - 64 * s : 64;  /* bytes of each group in this pass */
            __m512i r[16];
            for (long c = 0; c < 16; ++c)
                r[c] = 4 * c < n ? _mm512_maskz_loadu_epi8(wm, src + 4 * h * (16 * s + c)) : _mm512_setzero_si512();
            transpose16x16_epi32(r);  /* r[g]: bytes 64 s .. 64 s + n of group g */
            for (long g = 0; g < h; ++g) {
                const __m512 sc = _mm512_permutexvar_ps(_mm512_set1_epi32((int)g), s16);
                const __m512i q = _mm512_xor_si512(r[g], flip);
                const long k = (16 * b + g) * G + 64 * s;  /* the first value in r[g] */
                for (long i = 0; i < n; i += 16) {
                    if (k + i < k0 || k + i >= k1) continue;
                    const __m128i part = i == 0 ? _mm512_castsi512_si128(q) : i == 16 ? _mm512_extracti32x4_epi32(q, 1)
                                         : i == 32 ? _mm512_extracti32x4_epi32(q, 2) : _mm512_extracti32x4_epi32(q, 3);
                    const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(part)), sc);
                    _mm256_storeu_si256((__m256i*)(dst + k + i - k0), (__m256i)_mm512_cvtneps_pbh(v));
                }
            }
        }
    }
}

/* out (N, K) bf16 contiguous = the blocked matrix widened as olmo_hf_int8_grouped_to_bf16 widens torchao's. */
int olmo_hf_int8_blocked_to_bf16(const int8_t* w, long ldw, long G, long N, long K, uint16_t* out, int nthreads) {
    if (N < 1 || G < 32 || G > 128 || G % 32 || K < G || K % G || ldw < I8B_HDR(K / G) + K || !olmo_hf_int8_blocked_ok())
        return -1;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (N * K >= (1L << 18))
    for (long n = 0; n < N; ++n) olmo_hf_int8_blocked_widen_row(w + n * ldw, G, K, 0, K, out + n * K);
    return 0;
}
#else /* the AVX2 and NEON variants keep torchao's layout (the products above) */
int olmo_hf_int8_blocked_ok(void) { return 0; }
int olmo_hf_gemv_int8_blocked(const uint16_t* x_bf16, long ldx, const int8_t* w, long ldw, long G, long N, long K,
                              uint16_t* y, long ldy, long M, int nthreads) {
    (void)x_bf16; (void)ldx; (void)w; (void)ldw; (void)G; (void)N; (void)K; (void)y; (void)ldy; (void)M; (void)nthreads;
    return -1;
}
int olmo_hf_int8_blocked_to_bf16(const int8_t* w, long ldw, long G, long N, long K, uint16_t* out, int nthreads) {
    (void)w; (void)ldw; (void)G; (void)N; (void)K; (void)out; (void)nthreads;
    return -1;
}
#endif

/* ===================================================================================================================
   int4 weight-only matrix-vector product and widening (olmo_hf.fast.int4: torchao IntxWeightOnlyConfig(int4) models)
   ===================================================================================================================
   The weight is OUR layout (olmo_hf/fast/int4.py packs it from torchao's one-value-per-int8-byte tensor):
   - w: (N, Kp/2) uint8, Kp = K rounded up to 64. Each row is cut into chunks of 64 elements, 32 bytes each: byte i
     of a chunk holds u = q + 8 (q the torchao int4 value, -8..7) of element i in its low nibble and of element
     i + 32 in its high nibble. (Elements past K hold u = 8, i.e. 0.) Two values per byte.
   - ws: (N, ng) bf16 group scales (torchao's own), ng = K / G, G the group size (32 or a multiple of 64), row
     stride ng; wo: (N, ng) int8 offsets o = 8 + zero_point (asymmetric), or NULL when every zero point is 0
     (symmetric: o = 8). The weight is w[n, k] = ws[n, g] * (u[n, k] - o[n, g]), g = k / G.
   Bits per weight: 4 + 16 / G (+ 8 / G with offsets).
   Decoding, y[m, n] = sum_g ws[n, g] * (sum_{k in g} x[m, k] u[n, k]) - sum_g ws[n, g] o[n, g] xsum[m, g].
   With AVX512-VNNI, x is rounded to int8 per group (gemv_int4_vnni8, below). Otherwise x is rounded to int16 per
   group (as the int8 kernel does per block: |x| max -> 32767, a rounding far below the bf16 rounding of the
   result), the nibbles are widened to int16 in registers (one vpmovzxbw gives both the low and
   the high nibble of 32 bytes) and multiplied in pairs into int32 (vpmaddwd); each group's int32 sums are scaled
   into fp32 accumulators, and the offsets are applied once per group through the group sums of x (xsum, the
   dequantized x summed over the group). Rows of x per pass over a band: up to 2 (AVX512) or 1 (AVX2). */
#define I4_CHUNK 64

/* x (M rows, stride ldx, bf16) -> xq (M rows of Kp int16, zero padded), per group of G: sx (M, ng) scales and
   xsum (M, ng) = sx * sum(xq) over the group. */
static void quantize_x_int16_groups(const uint16_t* x, long ldx, long M, long K, long Kp, long G, long ng,
                                    int16_t* xq, float* sx, float* xsum) {
    for (long m = 0; m < M; ++m) {
        for (long g = 0; g < ng; ++g) {
            const long k0 = g * G, k1 = k0 + G;
            float mx = 0.f;
            for (long k = k0; k < k1; ++k) { const float v = fabsf(bf16_to_f32(x[m * ldx + k])); if (v > mx) mx = v; }
            const float inv = mx > 0.f ? 32767.f / mx : 0.f;
            const float s = mx / 32767.f;
            long sum = 0;
            for (long k = k0; k < k1; ++k) {
                const int16_t v = (int16_t)lrintf(bf16_to_f32(x[m * ldx + k]) * inv);
                xq[m * Kp + k] = v;
                sum += v;
            }
            sx[m * ng + g] = s;
            xsum[m * ng + g] = s * (float)sum;
        }
        for (long k = K; k < Kp; ++k) xq[m * Kp + k] = 0;
    }
}

/* sum_g ws[g] * o[g] * xsum[g] over one row's ng groups (o = 8 when wo is NULL). */
static inline float int4_offset_term(const uint16_t* ws, const int8_t* wo, const float* xsum, long ng) {
#if defined(__AVX512BF16__)
    __m512 c = _mm512_setzero_ps();
    for (long g = 0; g < ng; g += 16) {
        const __mmask16 mk = ng - g >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (ng - g)) - 1);
        const __m512 o = wo ? _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mk, wo + g)))
                            : _mm512_set1_ps(8.f);
        const __m512 sc = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, ws + g)), 16));
        c = _mm512_fmadd_ps(_mm512_mul_ps(sc, o), _mm512_maskz_loadu_ps(mk, xsum + g), c);
    }
    return _mm512_reduce_add_ps(c);
#else
    float c = 0.f;
    for (long g = 0; g < ng; ++g) c += bf16_to_f32(ws[g]) * (wo ? (float)wo[g] : 8.f) * xsum[g];
    return c;
#endif
}

/* y[m, base + r] = bf16(out[m][r] - offset term) for the rows r0..rows-1 of a band (the earlier ones belong to the
   band before it) and mm rows of x (xsum: their group sums, row stride ng). */
static inline void int4_store_band(float out[4][NR], long mm, long r0, long rows, long base, const uint16_t* ws,
                                   const int8_t* wo, const float* xsum, long ng, uint16_t* y, long ldy) {
    for (long m = 0; m < mm; ++m)
        for (long r = r0; r < rows; ++r) {
            const long n = base + r;
            const float c = int4_offset_term(ws + n * ng, wo ? wo + n * ng : NULL, xsum + m * ng, ng);
            y[m * ldy + n] = f32_to_bf16(out[m][r] - c);
        }
}

#if defined(__AVX512BF16__)
#define I4_MAX_MM 2
/* out[m][r] = sum_g sx[m, g] ws[r, g] (xq[m, group g] . u[r, group g]) for MM rows of x and NR rows of w. */
#define GEMV_I4_MICRO(MM, SUFFIX, DOT, ATTR)                                                                   \
ATTR static inline void gemv_i4_micro_##MM##SUFFIX(const int16_t* xq, long Kp, const float* sx, long ng, const uint8_t* w,  \
                                      long ldw, const uint16_t* ws, long G, float out[4][NR]) {                 \
    __m512 acc[MM][NR];                                                                                      \
    const __m512i low = _mm512_set1_epi16(0x0f);                                                             \
    _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m)                                                     \
        _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();                \
    if (G >= I4_CHUNK) {                                                                                     \
        for (long g = 0; g < ng; ++g) {                                                                      \
            __m512i ia[MM][NR];                                                                              \
            _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m)                                             \
                _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) ia[m][r] = _mm512_setzero_si512();      \
            for (long k = g * G; k < (g + 1) * G; k += I4_CHUNK) {                                           \
                __m512i wl[NR], wh[NR];                                                                      \
                _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) {                                       \
                    if (!(k & 127)) _mm_prefetch((const char*)(w + (r + NR) * ldw + k / 2), _MM_HINT_T0);    \
                    const __m512i z = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)(w + r * ldw + k / 2))); \
                    wl[r] = _mm512_and_si512(z, low);                                                        \
                    wh[r] = _mm512_srli_epi16(z, 4);                                                         \
                }                                                                                            \
                _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m) {                                       \
                    const __m512i xl = _mm512_loadu_si512((const void*)(xq + m * Kp + k));                   \
                    const __m512i xh = _mm512_loadu_si512((const void*)(xq + m * Kp + k + 32));              \
                    _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r)                                     \
                        ia[m][r] = DOT(DOT(ia[m][r], wl[r], xl), wh[r], xh);                                 \
                }                                                                                            \
            }                                                                                                \
            _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m) {                                           \
                const __m512 s = _mm512_set1_ps(sx[m * ng + g]);                                             \
                _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r)                                         \
                    acc[m][r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(ia[m][r]), s),              \
                                                _mm512_set1_ps(bf16_to_f32(ws[r * ng + g])), acc[m][r]);                  \
            }                                                                                                \
        }                                                                                                    \
    } else { /* G == 32: the low nibbles of a chunk are group 2c, the high ones group 2c + 1 */                 \
        for (long k = 0; k < ng * G; k += I4_CHUNK) {                                                        \
            const long g = k / G;                                                                            \
            const int two = g + 1 < ng;                                                                      \
            __m512i wl[NR], wh[NR];                                                                          \
            _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) {                                           \
                if (!(k & 127)) _mm_prefetch((const char*)(w + (r + NR) * ldw + k / 2), _MM_HINT_T0);        \
                const __m512i z = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)(w + r * ldw + k / 2))); \
                wl[r] = _mm512_and_si512(z, low);                                                            \
                wh[r] = _mm512_srli_epi16(z, 4);                                                             \
            }                                                                                                \
            _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m) {                                           \
                const __m512i xl = _mm512_loadu_si512((const void*)(xq + m * Kp + k));                       \
                const __m512i xh = _mm512_loadu_si512((const void*)(xq + m * Kp + k + 32));                  \
                const __m512 s0 = _mm512_set1_ps(sx[m * ng + g]);                                            \
                const __m512 s1 = _mm512_set1_ps(two ? sx[m * ng + g + 1] : 0.f);                            \
                _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) {                                       \
                    acc[m][r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(DOT(_mm512_setzero_si512(), wl[r], xl)), s0), \
                                                _mm512_set1_ps(bf16_to_f32(ws[r * ng + g])), acc[m][r]);                  \
                    acc[m][r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(DOT(_mm512_setzero_si512(), wh[r], xh)), s1), \
                                                _mm512_set1_ps(two ? bf16_to_f32(ws[r * ng + g + 1]) : 0.f), acc[m][r]);  \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
    }                                                                                                        \
    _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m)                                                     \
        _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) out[m][r] = _mm512_reduce_add_ps(acc[m][r]);    \
}
/* int32 pair products (vpmaddwd + vpaddd): the variant for AVX512 CPUs without VNNI; with VNNI (every CPU with
   AVX512-BF16 so far, checked at run time all the same) the product below runs instead */
#define I4_MADD(acc, w, x) _mm512_add_epi32((acc), _mm512_madd_epi16((w), (x)))
GEMV_I4_MICRO(1, , I4_MADD, ) GEMV_I4_MICRO(2, , I4_MADD, )

/* ---- The VNNI int4 product (AVX512-VNNI): x rounded to int8 per group, vpdpbusd on the nibbles as they lie.
   Four instructions widen nothing: a 64-byte load of a row (two chunks, 128 values) gives its 64 low nibbles with one
   vpandq and its 64 high ones with a shift and a vpandq, each multiplied by 64 int8 values of x and summed four at a
   time into int32 (u8 x s8, vpdpbusd); x is stored in the matching order (x8_pos). A step's int32 lanes 0-7 belong
   to the first chunk, 8-15 to the second, so the combined scales ws[r, g] * sx[g] of 16 groups (one vector per row,
   made once per 16 groups) are put in place with one vpermps per step. Per 64 bytes of weight and row of x: 3 + 5
   vector instructions against ~24 for the int16 variant, which kept the product compute-bound (~7.7 GB/s a core)
   where this one runs at the memory's pace. x's rounding (|x| max of a group -> 127, as llama.cpp's Q8 activations)
   adds ~0.2 % relative error to a product, far below the int4 weights' own. */
#define I4V8_STEP 128 /* values per 64-byte step of a row */

/* Where value k of x lies in the int8 buffer: per 128 values, [0..31 | 64..95] (met by the low nibbles of a 64-byte
   step) then [32..63 | 96..127] (the high nibbles). */
static inline long x8_pos(long k) {
    static const int quarter[4] = {0, 64, 32, 96};
    return (k / I4V8_STEP) * I4V8_STEP + quarter[(k % I4V8_STEP) / 32] + k % 32;
}

/* x (M rows, bf16) -> xq (M rows of Kq int8 in x8_pos order, zero padded), sx (M, ng) scales, xsum (M, ng) =
   sx * sum(xq) over each group. G >= 32 and a multiple of 32 here, so each 16-value piece lies in one group and
   one contiguous run of x8_pos. */
static void quantize_x_int8_groups(const uint16_t* x, long ldx, long M, long K, long Kq, long G, long ng, int8_t* xq,
                                   float* sx, float* xsum) {
    for (long m = 0; m < M; ++m) {
        const uint16_t* xr = x + m * ldx;
        int8_t* q = xq + m * Kq;
        memset(q, 0, (size_t)Kq);
        for (long g = 0; g < ng; ++g) {
            const long k0 = g * G;
            __m512 mx = _mm512_setzero_ps();
            for (long k = k0; k < k0 + G; k += 16)
                mx = _mm512_max_ps(mx, _mm512_abs_ps(bf16x16_to_f32(xr + k, (__mmask16)0xffff)));
            const float amax = _mm512_reduce_max_ps(mx);
            const __m512 inv = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
            __m512i sum = _mm512_setzero_si512();
            for (long k = k0; k < k0 + G; k += 16) {
                const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(bf16x16_to_f32(xr + k, (__mmask16)0xffff), inv));
                sum = _mm512_add_epi32(sum, v);
                _mm_storeu_si128((__m128i*)(q + x8_pos(k)), _mm512_cvtsepi32_epi8(v));
            }
            sx[m * ng + g] = amax / 127.f;
            xsum[m * ng + g] = amax / 127.f * (float)_mm512_reduce_add_epi32(sum);
        }
    }
}

/* out[m][r] = sum_g sx[m, g] ws[r, g] (xq[m, group g] . u[r, group g]) for MM rows of x and NR rows of w. */
#define GEMV_I4V8_MICRO(MM)                                                                                    \
__attribute__((target("avx512vnni"))) static inline void gemv_i4v8_micro_##MM(                               \
        const int8_t* xq, long Kq, const float* sx, long ng, const uint8_t* w, long ldw, const uint16_t* ws,   \
        long G, long Kp, float out[4][NR]) {                                                                   \
    const __m512i low = _mm512_set1_epi8(0x0f);                                                              \
    const long nsteps = (Kp + I4V8_STEP - 1) / I4V8_STEP, block = 16 * G; /* a block: 16 groups */           \
    __m512 acc[MM][NR];                                                                                      \
    _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m)                                                     \
        _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();                \
    for (long b0 = 0; b0 < ng; b0 += 16) {                                                                   \
        const __mmask16 gm = ng - b0 >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (ng - b0)) - 1);          \
        __m512 cs[MM][NR]; /* ws[r, b0 + j] * sx[m, b0 + j], j < 16 */                                       \
        _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m) {                                               \
            const __m512 s = _mm512_maskz_loadu_ps(gm, sx + m * ng + b0);                                    \
            _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r)                                             \
                cs[m][r] = _mm512_mul_ps(s, bf16x16_to_f32(ws + r * ng + b0, gm));                           \
        }                                                                                                    \
        const long s0 = b0 * G / I4V8_STEP, s1 = (b0 * G + block) / I4V8_STEP < nsteps ? (b0 * G + block) / I4V8_STEP : nsteps; \
        for (long s = s0; s < s1; ++s) {                                                                     \
            const long e = s * I4V8_STEP - b0 * G; /* the step's first value, within the block */            \
            const __mmask64 bytes = 2 * s + 1 < Kp / 64 ? ~(__mmask64)0 : (__mmask64)0xffffffffu;             \
            __m512i wl[NR], wh[NR];                                                                          \
            _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) {                                           \
                _mm_prefetch((const char*)(w + (r + NR) * ldw + 64 * s), _MM_HINT_T0);                        \
                const __m512i z = _mm512_maskz_loadu_epi8(bytes, w + r * ldw + 64 * s);                       \
                wl[r] = _mm512_and_si512(z, low);                                                            \
                wh[r] = _mm512_and_si512(_mm512_srli_epi16(z, 4), low);                                      \
            }                                                                                                \
            if (G >= 64) { /* low and high nibbles of a chunk: one group; lanes 0-7 chunk 2s, 8-15 chunk 2s+1 */ \
                const __m512i idx = _mm512_mask_blend_epi32((__mmask16)0xff00, _mm512_set1_epi32((int)(e / G)),  \
                                                            _mm512_set1_epi32((int)((e + 64) / G)));          \
                _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m) {                                       \
                    const __m512i xl = _mm512_loadu_si512((const void*)(xq + m * Kq + s * I4V8_STEP));         \
                    const __m512i xh = _mm512_loadu_si512((const void*)(xq + m * Kq + s * I4V8_STEP + 64));    \
                    _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) {                                   \
                        const __m512i t = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wl[r], xl), wh[r], xh); \
                        acc[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_permutexvar_ps(idx, cs[m][r]), acc[m][r]); \
                    }                                                                                        \
                }                                                                                            \
            } else { /* G == 32: low nibbles of chunk c are group 2c, high ones 2c + 1 */                     \
                const long g0 = e / 32;                                                                      \
                const __m512i il = _mm512_mask_blend_epi32((__mmask16)0xff00, _mm512_set1_epi32((int)g0),    \
                                                           _mm512_set1_epi32((int)g0 + 2));                  \
                const __m512i ih = _mm512_add_epi32(il, _mm512_set1_epi32(1));                               \
                _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m) {                                       \
                    const __m512i xl = _mm512_loadu_si512((const void*)(xq + m * Kq + s * I4V8_STEP));         \
                    const __m512i xh = _mm512_loadu_si512((const void*)(xq + m * Kq + s * I4V8_STEP + 64));    \
                    _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) {                                   \
                        const __m512i tl = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wl[r], xl);           \
                        const __m512i th = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wh[r], xh);           \
                        acc[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tl), _mm512_permutexvar_ps(il, cs[m][r]), acc[m][r]); \
                        acc[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(th), _mm512_permutexvar_ps(ih, cs[m][r]), acc[m][r]); \
                    }                                                                                        \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
    }                                                                                                        \
    _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m)                                                     \
        _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) out[m][r] = _mm512_reduce_add_ps(acc[m][r]);    \
}
GEMV_I4V8_MICRO(1) GEMV_I4V8_MICRO(2)

/* One row of x (int8, x8_pos order) against one row of w, scalar, the same arithmetic (for N < NR). */
static float gemv_i4v8_row_scalar(const int8_t* xq, const float* sx, long ng, const uint8_t* w, const uint16_t* ws,
                                  long G) {
    float s = 0.f;
    for (long g = 0; g < ng; ++g) {
        long t = 0;
        for (long k = g * G; k < (g + 1) * G; ++k) {
            const uint8_t b = w[(k / I4_CHUNK) * 32 + (k % 32)];
            t += (long)xq[x8_pos(k)] * ((k % I4_CHUNK) < 32 ? (b & 0x0f) : (b >> 4));
        }
        s += (float)t * (sx[g] * bf16_to_f32(ws[g]));
    }
    return s;
}

/* olmo_hf_gemv_int4's arguments, on the VNNI int8 kernel above. */
static int gemv_int4_vnni8(const uint16_t* x_bf16, long ldx, const uint8_t* w, long ldw, const uint16_t* ws,
                           const int8_t* wo, long N, long K, long G, uint16_t* y, long ldy, long M, int nthreads) {
    const long Kp = (K + I4_CHUNK - 1) / I4_CHUNK * I4_CHUNK, ng = K / G;
    const long Kq = (Kp + I4V8_STEP - 1) / I4V8_STEP * I4V8_STEP;
    int8_t* xq = (int8_t*)aligned_alloc(64, (size_t)(M * Kq));
    float* sx = (float*)malloc(sizeof(float) * (M * ng * 2 + 16));
    if (!xq || !sx) { free(xq); free(sx); return -2; }
    float* xsum = sx + M * ng;
    quantize_x_int8_groups(x_bf16, ldx, M, K, Kq, G, ng, xq, sx, xsum);
    const long NB = (N + NR - 1) / NR;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (N * K >= (1L << 18))
    for (long nband = 0; nband < NB; ++nband) {
        const long n0 = nband * NR;
        const long base = n0 + NR <= N ? n0 : (N >= NR ? N - NR : 0); /* see olmo_hf_gemv_int4 */
        const long rows = N >= NR ? NR : N;
        float out[4][NR];
        for (long m0 = 0; m0 < M; m0 += 2) {
            const long mm = M - m0 < 2 ? M - m0 : 2;
            if (rows == NR && mm == 2)
                gemv_i4v8_micro_2(xq + m0 * Kq, Kq, sx + m0 * ng, ng, w + base * ldw, ldw, ws + base * ng, G, Kp, out);
            else if (rows == NR)
                gemv_i4v8_micro_1(xq + m0 * Kq, Kq, sx + m0 * ng, ng, w + base * ldw, ldw, ws + base * ng, G, Kp, out);
            else
                for (long m = 0; m < mm; ++m)
                    for (long r = 0; r < rows; ++r)
                        out[m][r] = gemv_i4v8_row_scalar(xq + (m0 + m) * Kq, sx + (m0 + m) * ng, ng, w + (base + r) * ldw,
                                                         ws + (base + r) * ng, G);
            int4_store_band(out, mm, n0 - base, rows, base, ws, wo, xsum + m0 * ng, ng, y + m0 * ldy, ldy);
        }
    }
    free(xq); free(sx);
    return 0;
}
#elif defined(__AVX2__) /* one row of x per pass, 16 bytes (32 weights) per step */
#define I4_MAX_MM 1
static inline void gemv_i4_micro_1(const int16_t* xq, long Kp, const float* sx, long ng, const uint8_t* w, long ldw,
                                   const uint16_t* ws, long G, float out[4][NR]) {
    (void)Kp;
    __m256 acc[NR];
    const __m256i low = _mm256_set1_epi16(0x0f);
    for (int r = 0; r < NR; ++r) acc[r] = _mm256_setzero_ps();
    /* per 64-element chunk: int32 sums of the low half (elements 0..31) and of the high half (32..63) */
    const long step_g = G >= I4_CHUNK ? G : I4_CHUNK;  /* elements per pass: a group, or a chunk of two groups */
    for (long k0 = 0; k0 < ng * G; k0 += step_g) {
        __m256i il[NR], ih[NR];
        for (int r = 0; r < NR; ++r) il[r] = ih[r] = _mm256_setzero_si256();
        for (long k = k0; k < k0 + step_g; k += I4_CHUNK) {
            for (int h = 0; h < 2; ++h) {
                const __m256i xl = _mm256_loadu_si256((const __m256i*)(xq + k + 16 * h));
                const __m256i xh = _mm256_loadu_si256((const __m256i*)(xq + k + 32 + 16 * h));
                for (int r = 0; r < NR; ++r) {
                    if (!(k & 127) && !h) _mm_prefetch((const char*)(w + (r + NR) * ldw + k / 2), _MM_HINT_T0);
                    const __m256i z = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(w + r * ldw + k / 2 + 16 * h)));
                    il[r] = _mm256_add_epi32(il[r], _mm256_madd_epi16(_mm256_and_si256(z, low), xl));
                    ih[r] = _mm256_add_epi32(ih[r], _mm256_madd_epi16(_mm256_srli_epi16(z, 4), xh));
                }
            }
        }
        const long g = k0 / G;
        for (int r = 0; r < NR; ++r) {
            if (G >= I4_CHUNK) {
                acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(il[r], ih[r])),
                                                       _mm256_set1_ps(sx[g])), _mm256_set1_ps(bf16_to_f32(ws[r * ng + g])), acc[r]);
            } else {
                acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(il[r]), _mm256_set1_ps(sx[g])),
                                         _mm256_set1_ps(bf16_to_f32(ws[r * ng + g])), acc[r]);
                if (g + 1 < ng)
                    acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(ih[r]), _mm256_set1_ps(sx[g + 1])),
                                             _mm256_set1_ps(bf16_to_f32(ws[r * ng + g + 1])), acc[r]);
            }
        }
    }
    for (int r = 0; r < NR; ++r) out[0][r] = hsum256(acc[r]);
}
#else /* NEON: as AVX2, 16 bytes (32 weights) per step, nibbles widened to int16 and multiplied by vmlal_s16 */
#define I4_MAX_MM 1
#define I4_NEON_DOT(acc, wv, xv) vmlal_high_s16(vmlal_s16((acc), vget_low_s16(wv), vget_low_s16(xv)), (wv), (xv))
static inline void gemv_i4_micro_1(const int16_t* xq, long Kp, const float* sx, long ng, const uint8_t* w, long ldw,
                                   const uint16_t* ws, long G, float out[4][NR]) {
    (void)Kp;
    float32x4_t acc[NR];
    for (int r = 0; r < NR; ++r) acc[r] = vdupq_n_f32(0.f);
    const long step_g = G >= I4_CHUNK ? G : I4_CHUNK;  /* elements per pass: a group, or a chunk of two groups */
    for (long k0 = 0; k0 < ng * G; k0 += step_g) {
        int32x4_t il[NR], ih[NR];  /* int32 sums of the low halves (elements 0..31 of a chunk), high halves (32..63) */
        for (int r = 0; r < NR; ++r) il[r] = ih[r] = vdupq_n_s32(0);
        for (long k = k0; k < k0 + step_g; k += I4_CHUNK) {
            for (int h = 0; h < 2; ++h) {
                const int16x8_t xl0 = vld1q_s16(xq + k + 16 * h), xl1 = vld1q_s16(xq + k + 16 * h + 8);
                const int16x8_t xh0 = vld1q_s16(xq + k + 32 + 16 * h), xh1 = vld1q_s16(xq + k + 32 + 16 * h + 8);
                for (int r = 0; r < NR; ++r) {
                    if (!(k & 127) && !h) __builtin_prefetch(w + (r + NR) * ldw + k / 2);
                    const uint8x16_t b = vld1q_u8(w + r * ldw + k / 2 + 16 * h);
                    const uint8x16_t lo = vandq_u8(b, vdupq_n_u8(0x0f)), hi = vshrq_n_u8(b, 4);
                    il[r] = I4_NEON_DOT(il[r], vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(lo))), xl0);
                    il[r] = I4_NEON_DOT(il[r], vreinterpretq_s16_u16(vmovl_high_u8(lo)), xl1);
                    ih[r] = I4_NEON_DOT(ih[r], vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(hi))), xh0);
                    ih[r] = I4_NEON_DOT(ih[r], vreinterpretq_s16_u16(vmovl_high_u8(hi)), xh1);
                }
            }
        }
        const long g = k0 / G;
        for (int r = 0; r < NR; ++r) {
            if (G >= I4_CHUNK) {
                acc[r] = vfmaq_n_f32(acc[r], vmulq_n_f32(vcvtq_f32_s32(vaddq_s32(il[r], ih[r])), sx[g]),
                                     bf16_to_f32(ws[r * ng + g]));
            } else {
                acc[r] = vfmaq_n_f32(acc[r], vmulq_n_f32(vcvtq_f32_s32(il[r]), sx[g]), bf16_to_f32(ws[r * ng + g]));
                if (g + 1 < ng)
                    acc[r] = vfmaq_n_f32(acc[r], vmulq_n_f32(vcvtq_f32_s32(ih[r]), sx[g + 1]),
                                         bf16_to_f32(ws[r * ng + g + 1]));
            }
        }
    }
    for (int r = 0; r < NR; ++r) out[0][r] = vaddvq_f32(acc[r]);
}
#endif

#if defined(__AVX512BF16__)
/* Whether the int4 product is the VNNI one (x as int8, vpdpbusd: gemv_int4_vnni8): -1 until olmo_hf_int4_set_vnni
   is called (then 0 / 1). The Python side sets it from the CPU's flags (avx512_vnni), and to 0 to measure the other
   variant. */
static int olmo_hf_int4_vnni = -1;
#endif
int olmo_hf_int4_set_vnni(int on) {
#if defined(__AVX512BF16__)
    olmo_hf_int4_vnni = on && __builtin_cpu_supports("avx512vnni");
    return olmo_hf_int4_vnni;
#else
    (void)on;
    return 0;
#endif
}

/* One row of x against one row of w, scalar, same arithmetic (for N < NR). */
static float gemv_i4_row_scalar(const int16_t* xq, const float* sx, long ng, const uint8_t* w, const uint16_t* ws,
                                long G) {
    float s = 0.f;
    for (long g = 0; g < ng; ++g) {
        long t = 0;
        for (long k = g * G; k < (g + 1) * G; ++k) {
            const uint8_t b = w[(k / I4_CHUNK) * 32 + (k % 32)];
            const int u = (k % I4_CHUNK) < 32 ? (b & 0x0f) : (b >> 4);
            t += (long)xq[k] * u;
        }
        s += (float)t * sx[g] * bf16_to_f32(ws[g]);
    }
    return s;
}

/* x_bf16 (M, K) row stride ldx; w (N, Kp/2) uint8 row stride ldw; ws (N, ng) bf16, wo (N, ng) int8 or NULL;
   G the group size (32 or a multiple of 64, dividing K); y (M, N) bf16 row stride ldy. */
int olmo_hf_gemv_int4(const uint16_t* x_bf16, long ldx, const uint8_t* w, long ldw, const uint16_t* ws, const int8_t* wo,
                      long N, long K, long G, uint16_t* y, long ldy, long M, int nthreads) {
    const long Kp = (K + I4_CHUNK - 1) / I4_CHUNK * I4_CHUNK;
    if (M < 1 || M > 8 || K < 1 || N < 1 || G < 32 || (G != 32 && G % I4_CHUNK) || K % G || ldw < Kp / 2)
        return -1;
    const long ng = K / G;
#if defined(__AVX512BF16__)
    if (olmo_hf_int4_vnni == 1) return gemv_int4_vnni8(x_bf16, ldx, w, ldw, ws, wo, N, K, G, y, ldy, M, nthreads);
#endif
    int16_t* xq = (int16_t*)aligned_alloc(64, sizeof(int16_t) * M * Kp);
    float* sx = (float*)malloc(sizeof(float) * M * ng * 2);
    if (!xq || !sx) { free(xq); free(sx); return -2; }
    float* xsum = sx + M * ng;
    quantize_x_int16_groups(x_bf16, ldx, M, K, Kp, G, ng, xq, sx, xsum);
    const long NB = (N + NR - 1) / NR;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (N * K >= (1L << 18))
    for (long nband = 0; nband < NB; ++nband) {
        const long n0 = nband * NR;
        /* the last band may hold fewer than NR rows: it re-reads (and discards) rows of the band before it */
        const long base = n0 + NR <= N ? n0 : (N >= NR ? N - NR : 0);
        const long rows = N >= NR ? NR : N;
        float out[4][NR];
        for (long m0 = 0; m0 < M; m0 += I4_MAX_MM) {
            const long mm = M - m0 < I4_MAX_MM ? M - m0 : I4_MAX_MM;
            if (rows == NR) {
#if defined(__AVX512BF16__)
                if (mm == 2) gemv_i4_micro_2(xq + m0 * Kp, Kp, sx + m0 * ng, ng, w + base * ldw, ldw, ws + base * ng, G, out); else
#endif
                gemv_i4_micro_1(xq + m0 * Kp, Kp, sx + m0 * ng, ng, w + base * ldw, ldw, ws + base * ng, G, out);
            } else {
                for (long m = 0; m < mm; ++m)
                    for (long r = 0; r < rows; ++r)
                        out[m][r] = gemv_i4_row_scalar(xq + (m0 + m) * Kp, sx + (m0 + m) * ng, ng, w + (base + r) * ldw,
                                                       ws + (base + r) * ng, G);
            }
            int4_store_band(out, mm, n0 - base, rows, base, ws, wo, xsum + m0 * ng, ng, y + m0 * ldy, ldy);
        }
    }
    free(xq); free(sx);
    return 0;
}

/* Widening for prefill: out (N, K) bf16 contiguous, out[n, k] = bf16((u[n, k] - o[n, g]) * ws[n, g]), rounded to
   nearest even: torchao's own dequantization (bf16(q) - bf16(zero_point), exact; times the bf16 scale, one
   rounding), so F.linear on it is bit for bit what torchao's linear computes. */
#if defined(__AVX512BF16__)
static inline __m256i f32x16_to_bf16_rne(__m512 v) {  /* no NaN here: finite products of finite values */
    const __m512i u = _mm512_castps_si512(v);
    const __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                                          _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}
#endif

/* Values k0..k1-1 of one row (src: its nibbles, ws / wo: its group scales / offsets) into dst[0 .. k1-k0); k0 a
   multiple of I4_CHUNK. Also the band decoder of the AMX prefill product (olmo_hf_gemm_amx). */
void olmo_hf_int4_widen_row(const uint8_t* src, const uint16_t* ws, const int8_t* wo, long G, long k0, long k1,
                            uint16_t* dst) {
    long k = k0;
#if defined(__AVX512BF16__)
    /* a chunk at a time: 32 bytes -> the 32 low nibbles (values k..k+31) and the 32 high ones (k+32..k+63);
       each group's 16 possible bf16 values are computed once (the same arithmetic, so the same bits) and
       looked up with one vpermw per 32 values */
    long lut_g = -1;
    __m512i lut = _mm512_setzero_si512();
    for (; k + I4_CHUNK <= k1; k += I4_CHUNK) {
        const __m256i bytes = _mm256_loadu_si256((const __m256i*)(src + k / 2));
        const __m512i idx = _mm512_cvtepu8_epi16(bytes);  /* lane i: byte i (value i low, value i + 32 high) */
        const __m512i nib[2] = {_mm512_and_si512(idx, _mm512_set1_epi16(0x0f)), _mm512_srli_epi16(idx, 4)};
        for (int h = 0; h < 2; ++h) {
            const long g = (k + 32 * h) / G;
            if (g != lut_g) {
                const __m512 u = _mm512_cvtepi32_ps(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
                const __m512 o = _mm512_set1_ps(wo ? (float)wo[g] : 8.f);
                const __m256i v = f32x16_to_bf16_rne(_mm512_mul_ps(_mm512_sub_ps(u, o), _mm512_set1_ps(bf16_to_f32(ws[g]))));
                lut = _mm512_inserti64x4(_mm512_castsi256_si512(v), v, 1);
                lut_g = g;
            }
            _mm512_storeu_si512((void*)(dst + k - k0 + 32 * h), _mm512_permutexvar_epi16(nib[h], lut));
        }
    }
#endif
    for (; k < k1; ++k) {
        const long g = k / G;
        const uint8_t b = src[(k / I4_CHUNK) * 32 + (k % 32)];
        const int u = (k % I4_CHUNK) < 32 ? (b & 0x0f) : (b >> 4);
        dst[k - k0] = f32_to_bf16(((float)u - (wo ? (float)wo[g] : 8.f)) * bf16_to_f32(ws[g]));
    }
}

int olmo_hf_int4_to_bf16(const uint8_t* w, long ldw, const uint16_t* ws, const int8_t* wo, long N, long K, long G,
                         uint16_t* out, int nthreads) {
    const long Kp = (K + I4_CHUNK - 1) / I4_CHUNK * I4_CHUNK;
    if (N < 1 || K < 1 || G < 32 || (G != 32 && G % I4_CHUNK) || K % G || ldw < Kp / 2) return -1;
    const long ng = K / G;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (N * K >= (1L << 18))
    for (long n = 0; n < N; ++n)
        olmo_hf_int4_widen_row(w + n * ldw, ws + n * ng, wo ? wo + n * ng : NULL, G, 0, K, out + n * K);
    return 0;
}

/* ===================================================================================================================
   int4 in OUR blocked layout (olmo_hf.fast.int4 packs torchao's data into it where olmo_hf_int4_blocked_ok() says
   this build and CPU run it: the AVX512 variant on a CPU with AVX512-VNNI)
   ===================================================================================================================
   Row n of the (N, K) matrix starts at w + n * ldw (ldw >= I4B_HDR(ng, asym) + K / 2, ng = K / G):
   - its ng bf16 group scales, then (asymmetric matrices only) its ng int8 offsets (8 + zero point), zero padded
     to a multiple of 64 bytes;
   - then its K values u = q + 8 (0..15), two per byte, in blocks of 16 groups (a last block of h = ng % 16 groups
     when that is not 0): chunk c of a block (0 <= c < G / 8, 4 h bytes) holds values 8c .. 8c + 7 of each of the
     block's groups, group g at bytes 4g .. 4g + 3: value 8c + j in the low nibble of byte j, 8c + 4 + j in its high
     nibble. One 64-byte load is 8 values of each of 16 groups; its low and its high nibbles each give one 32-bit
     lane per group, which vpdpbusd sums into that lane.
   Decoding: x rounded to int8 per group (as the VNNI nibble product above), laid out the same way (a "low" and a
   "high" array of 4 values per group per chunk); per 64 bytes of weights two vpdpbusd and three logic ops, and the
   16 int32 group sums of a block converted and scaled once, the scales read from the row's own header. The
   offsets are applied per row through x's group sums (int4_offset_term), as in the nibble products. */
#define I4B_HDR(ng, asym) (((asym) ? 3 * (ng) : 2 * (ng)) + 63) / 64 * 64
#if defined(__AVX512BF16__)
int olmo_hf_int4_blocked_ok(void) { return __builtin_cpu_supports("avx512vnni"); }

/* One row of x (K bf16) -> xlo, xhi (blocks of 8 G bytes, chunk c of block b at b * 8 G + 64 c, lane g the 4 int8
   values that meet the low / high nibbles of the weights' chunk c of group 16 b + g; zero past the last group);
   sx[g], xsum[g] = sx * sum of the group's int8 values (zero past the last group, up to a multiple of 16). */
static void i4b_quantize_x(const uint16_t* x, long K, long G, int8_t* xlo, int8_t* xhi, float* sx, float* xsum,
                           int8_t* tmp) {
    const long ng = K / G, nb = (ng + 15) / 16;
    for (long g = 0; g < ng; ++g) {
        __m512 mx = _mm512_setzero_ps();
        for (long k = g * G; k < (g + 1) * G; k += 16) mx = _mm512_max_ps(mx, _mm512_abs_ps(load_bf16x16(x + k)));
        const float amax = _mm512_reduce_max_ps(mx);
        const __m512 inv = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
        __m512i sum = _mm512_setzero_si512();
        for (long k = g * G; k < (g + 1) * G; k += 16) {
            const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(load_bf16x16(x + k), inv));
            sum = _mm512_add_epi32(sum, v);
            _mm_storeu_si128((__m128i*)(tmp + k), _mm512_cvtsepi32_epi8(v));
        }
        sx[g] = amax / 127.f;
        xsum[g] = amax / 127.f * (float)_mm512_reduce_add_epi32(sum);
    }
    for (long g = ng; g < 16 * nb; ++g) sx[g] = xsum[g] = 0.f;
    for (long b = 0; b < nb; ++b) {
        const long h = ng - 16 * b < 16 ? ng - 16 * b : 16;
        for (long s = 0; 64 * s < G; ++s) {  /* 16 words (64 values) of every group of the block per pass */
            const long n = G - 64 * s < 64 ? G - 64 * s : 64;
            const __mmask64 vm = n == 64 ? ~0ull : (1ull << n) - 1;
            __m512i r[16];
            for (long g = 0; g < 16; ++g)
                r[g] = g < h ? _mm512_maskz_loadu_epi8(vm, tmp + (16 * b + g) * G + 64 * s) : _mm512_setzero_si512();
            transpose16x16_epi32(r);  /* r[i]: word i of the pass (values 64 s + 4 i ..) of every group */
            for (long i = 0; i < n / 4; ++i) {
                const long d = 16 * s + i;  /* word d of a group: chunk d / 2, low (even d) or high nibbles */
                _mm512_store_si512((void*)((d & 1 ? xhi : xlo) + b * 8 * G + 64 * (d / 2)), r[i]);
            }
        }
    }
}

#define GEMV_I4B_MICRO(MM)                                                                                    \
__attribute__((target("avx512vnni"))) static inline void gemv_i4b_micro_##MM(                               \
        const int8_t* xlo, const int8_t* xhi, long Kx, const float* sx, long ncx, long ng, long G, long hdr, \
        const uint8_t* w, long ldw, float out[4][NR]) {                                                      \
    const long nb = (ng + 15) / 16;                                                                         \
    const __m512i low = _mm512_set1_epi8(0x0f);                                                             \
    __m512 acc[MM][NR];                                                                                     \
    BLOCKED_START(acc, MM, w, ldw, hdr)                                                                     \
    for (long b = 0; b < nb; ++b) {                                                                         \
        BLOCKED_BLOCK(ng, b)                                                                                \
        const uint8_t* wb = w + hdr + 8 * G * b;                                                            \
        __m512i al[MM][NR], ah[MM][NR];                                                                     \
        BLOCKED_ZERO2(al, ah, MM)                                                                           \
        for (long c = 0; c < G / 8; ++c) {                                                                  \
            __m512i wl[NR], wh[NR];                                                                         \
            _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) {                                          \
                _mm_prefetch((const char*)(wb + (r + NR) * ldw + 4 * h * c), _MM_HINT_T0);                  \
                const __m512i z = _mm512_maskz_loadu_epi8(wm, wb + r * ldw + 4 * h * c);                    \
                wl[r] = _mm512_and_si512(z, low);                                                           \
                wh[r] = _mm512_and_si512(_mm512_srli_epi16(z, 4), low);                                     \
            }                                                                                               \
            _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m) {                                          \
                const __m512i vl = _mm512_load_si512((const void*)(xlo + m * Kx + 8 * G * b + 64 * c));     \
                const __m512i vh = _mm512_load_si512((const void*)(xhi + m * Kx + 8 * G * b + 64 * c));     \
                _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r) {                                      \
                    al[m][r] = i8b_dpbusd(al[m][r], wl[r], vl);                                             \
                    ah[m][r] = i8b_dpbusd(ah[m][r], wh[r], vh);                                             \
                }                                                                                           \
            }                                                                                               \
        }                                                                                                   \
        __m512 ws[NR];  /* the rows' bf16 scales of the block's groups */                                   \
        _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r)                                                \
            ws[r] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(                           \
                _mm256_maskz_loadu_epi16(hm, (const uint16_t*)(w + r * ldw) + 16 * b)), 16));              \
        _Pragma("GCC unroll 4") for (int m = 0; m < MM; ++m) {                                              \
            const __m512 s = _mm512_loadu_ps(sx + m * ncx + 16 * b);                                        \
            _Pragma("GCC unroll 4") for (int r = 0; r < NR; ++r)                                            \
                acc[m][r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(al[m][r], ah[m][r])), s), \
                                            ws[r], acc[m][r]);                                              \
        }                                                                                                   \
    }                                                                                                       \
    BLOCKED_FINISH(acc, MM, out)                                                                            \
}
GEMV_I4B_MICRO(1) GEMV_I4B_MICRO(2)

/* x_bf16 (M, K) row stride ldx; w the blocked (N, K) int4 matrix, row stride ldw bytes, asym: whether its rows hold
   offsets; y (M, N) bf16 row stride ldy. */
int olmo_hf_gemv_int4_blocked(const uint16_t* x_bf16, long ldx, const uint8_t* w, long ldw, int asym, long G, long N,
                              long K, uint16_t* y, long ldy, long M, int nthreads) {
    if (M < 1 || M > 8 || N < 1 || G < 32 || G > 128 || G % 32 || K < G || K % G ||
        ldw < I4B_HDR(K / G, asym) + K / 2 || !olmo_hf_int4_blocked_ok())
        return -1;
    const long ng = K / G, nb = (ng + 15) / 16, Kx = nb * 8 * G, ncx = nb * 16, hdr = I4B_HDR(ng, asym);
    int8_t* xlo = (int8_t*)aligned_alloc(64, (size_t)M * Kx * 2);
    int8_t* xhi = xlo + M * Kx;
    float* sx = (float*)aligned_alloc(64, sizeof(float) * M * ncx * 2);
    float* xsum = sx + M * ncx;
    int8_t* tmp = (int8_t*)malloc(K);
    void* small;
    const uint8_t* rows_at = (const uint8_t*)blocked_rows(w, N, ldw, &small);  /* w stays the rows' heads */
    if (!xlo || !sx || !tmp || !rows_at) { free(xlo); free(sx); free(tmp); free(small); return -2; }
    for (long m = 0; m < M; ++m)
        i4b_quantize_x(x_bf16 + m * ldx, K, G, xlo + m * Kx, xhi + m * Kx, sx + m * ncx, xsum + m * ncx, tmp);
    const long NB = (N + NR - 1) / NR;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (N * K >= (1L << 18))
    for (long nband = 0; nband < NB; ++nband) {
        const long n0 = nband * NR;
        const long base = n0 + NR <= N || N < NR ? n0 : N - NR;  /* as in olmo_hf_gemv_int8 */
        const long rows = N < NR ? N : NR;
        float out[4][NR];
        for (long m0 = 0; m0 < M; m0 += 2) {
            if (M - m0 >= 2)
                gemv_i4b_micro_2(xlo + m0 * Kx, xhi + m0 * Kx, Kx, sx + m0 * ncx, ncx, ng, G, hdr, rows_at + base * ldw,
                                 ldw, out);
            else
                gemv_i4b_micro_1(xlo + m0 * Kx, xhi + m0 * Kx, Kx, sx + m0 * ncx, ncx, ng, G, hdr, rows_at + base * ldw,
                                 ldw, out);
            for (long m = 0; m < 2 && m0 + m < M; ++m)
                for (long r = n0 - base; r < rows; ++r) {
                    const uint8_t* row = w + (base + r) * ldw;
                    const float c = int4_offset_term((const uint16_t*)row, asym ? (const int8_t*)row + 2 * ng : NULL,
                                                     xsum + (m0 + m) * ncx, ng);
                    y[(m0 + m) * ldy + base + r] = f32_to_bf16(out[m][r] - c);
                }
        }
    }
    free(xlo); free(sx); free(tmp); free(small);
    return 0;
}

/* Values k0..k1-1 of a blocked int4 row as bf16 into dst[0 .. k1 - k0), as olmo_hf_int4_widen_row widens the nibble
   layout (the same bits): each block transposed back in registers (chunk c's word g -> group g's word c), its low
   and high nibbles put in value order, and each group's 16 possible bf16 values bf16((u - offset) * scale)
   looked up with one vpermw per 32 values. k0, k1 multiples of 32. */
void olmo_hf_int4_blocked_widen_row(const uint8_t* row, int asym, long G, long K, long k0, long k1, uint16_t* dst) {
    const long ng = K / G, hdr = I4B_HDR(ng, asym);
    const uint16_t* ws = (const uint16_t*)row;
    const int8_t* wo = asym ? (const int8_t*)row + 2 * ng : NULL;
    const __m512i low = _mm512_set1_epi8(0x0f);
    const __m512i even = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i odd = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    const __m512 u16 = _mm512_cvtepi32_ps(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    for (long b = k0 / (16 * G); b * 16 * G < k1; ++b) {
        const long h = ng - 16 * b < 16 ? ng - 16 * b : 16;
        const __mmask64 wm = h == 16 ? ~0ull : (1ull << (4 * h)) - 1;
        const uint8_t* src = row + hdr + 8 * G * b;
        __m512i r[16];
        for (long c = 0; c < 16; ++c) r[c] = c < G / 8 ? _mm512_maskz_loadu_epi8(wm, src + 4 * h * c) : _mm512_setzero_si512();
        transpose16x16_epi32(r);  /* r[g]: word c = chunk c of group g */
        for (long g = 0; g < h; ++g) {
            const long gg = 16 * b + g, k = gg * G;
            if (k + G <= k0 || k >= k1) continue;
            const __m256i v = f32x16_to_bf16_rne(_mm512_mul_ps(_mm512_sub_ps(u16, _mm512_set1_ps(wo ? (float)wo[gg] : 8.f)),
                                                               _mm512_set1_ps(bf16_to_f32(ws[gg]))));
            const __m512i lut = _mm512_inserti64x4(_mm512_castsi256_si512(v), v, 1);
            const __m512i lo = _mm512_and_si512(r[g], low), hi = _mm512_and_si512(_mm512_srli_epi16(r[g], 4), low);
            const __m512i vals[2] = {_mm512_permutex2var_epi32(lo, even, hi), _mm512_permutex2var_epi32(lo, odd, hi)};
            for (long i = 0; i < G; i += 32) {  /* values i .. i + 31 of the group: bytes i % 64 .. of vals[i / 64] */
                if (k + i < k0 || k + i >= k1) continue;
                const __m256i bytes = (i % 64) ? _mm512_extracti64x4_epi64(vals[i / 64], 1) : _mm512_castsi512_si256(vals[i / 64]);
                _mm512_storeu_si512((void*)(dst + k + i - k0), _mm512_permutexvar_epi16(_mm512_cvtepu8_epi16(bytes), lut));
            }
        }
    }
}

int olmo_hf_int4_blocked_to_bf16(const uint8_t* w, long ldw, int asym, long G, long N, long K, uint16_t* out,
                                 int nthreads) {
    if (N < 1 || G < 32 || G > 128 || G % 32 || K < G || K % G || ldw < I4B_HDR(K / G, asym) + K / 2 ||
        !olmo_hf_int4_blocked_ok())
        return -1;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (N * K >= (1L << 18))
    for (long n = 0; n < N; ++n) olmo_hf_int4_blocked_widen_row(w + n * ldw, asym, G, K, 0, K, out + n * K);
    return 0;
}
#else /* the AVX2 and NEON variants keep the nibble layout */
int olmo_hf_int4_blocked_ok(void) { return 0; }
int olmo_hf_gemv_int4_blocked(const uint16_t* x_bf16, long ldx, const uint8_t* w, long ldw, int asym, long G, long N,
                              long K, uint16_t* y, long ldy, long M, int nthreads) {
    (void)x_bf16; (void)ldx; (void)w; (void)ldw; (void)asym; (void)G; (void)N; (void)K; (void)y; (void)ldy; (void)M;
    (void)nthreads;
    return -1;
}
int olmo_hf_int4_blocked_to_bf16(const uint8_t* w, long ldw, int asym, long G, long N, long K, uint16_t* out,
                                 int nthreads) {
    (void)w; (void)ldw; (void)asym; (void)G; (void)N; (void)K; (void)out; (void)nthreads;
    return -1;
}
#endif

#if defined(__AVX512BF16__)
/* ===================================================================================================================
   One decoding step of an OLMo 2 / OLMo 3 decoder layer in one call (olmo_hf.fast.forwards._fast_decoder_layer_forward)
   ===================================================================================================================
   The same kernels, in the same order, as the fast path's per-module forwards (so the same bits), without the ~10
   Python-level calls per layer between them (~0.3 ms per layer of interpreter work on a 2-core Xeon: a tenth of an
   int4 decoding step of the 1B shape):
     qkv = x @ Wqkv^T; q, k = RoPE(norm_q(q), norm_k(k)); K[pos] = k; V[pos] = v; a = attention(q, K[..pos], V[..pos]);
     h = x + norm_attn(a @ Wo^T); out = h + norm_ff(down(silu(gate(h)) * up(h)))
   for B rows of x (a batch, one position each, all at the same position pos of the key/value buffers). */
typedef struct {
    int kind;          /* 0: bf16 (plain rows), 1: int8 with a float32 scale per row, 2: int4 nibble layout
                          (olmo_hf.fast.int4), 3: int8 with a float16 scale per group of `group`, 4: the same
                          in the blocked layout (scales in the rows), 5 / 6: int4 in its blocked layout,
                          symmetric / with offsets */
    int amx;           /* bf16: the rows in multiples of 16 on the AMX matrix-vector kernel (as _native_matmul) */
    const void* w;
    long ldw;
    const void* scale; /* int8: float32 per row; int4: bf16 per group; grouped int8: float16 per group */
    const int8_t* offset;
    long group, N, K;
} olmo_hf_matrix;

typedef struct {
    olmo_hf_matrix qkv, o, gate_up, down;
    long nh, nkv, hd, hidden, inter;
    const float* wq;   /* q/k norm weights (float32), eps */
    const float* wk;
    float qk_eps;
    const float* w_attn_norm;  /* post-attention and post-feed-forward norms (float32), eps */
    const float* w_ff_norm;
    float eps, scaling;
} olmo_hf_layer;

static int layer_matmul(const olmo_hf_matrix* W, const uint16_t* x, long ldx, long M, uint16_t* y, long ldy, int nt) {
    if (W->kind == 1)
        return olmo_hf_gemv_int8(x, ldx, (const int8_t*)W->w, W->ldw, (const float*)W->scale, W->N, W->K, y, ldy, M,
                                 nt);
    if (W->kind == 2)
        return olmo_hf_gemv_int4(x, ldx, (const uint8_t*)W->w, W->ldw, (const uint16_t*)W->scale, W->offset, W->N,
                                 W->K, W->group, y, ldy, M, nt);
    if (W->kind == 3)
        return olmo_hf_gemv_int8_grouped(x, ldx, (const int8_t*)W->w, W->ldw, (const uint16_t*)W->scale, W->group,
                                         W->N, W->K, y, ldy, M, nt);
    if (W->kind == 4)
        return olmo_hf_gemv_int8_blocked(x, ldx, (const int8_t*)W->w, W->ldw, W->group, W->N, W->K, y, ldy, M, nt);
    if (W->kind == 5 || W->kind == 6)
        return olmo_hf_gemv_int4_blocked(x, ldx, (const uint8_t*)W->w, W->ldw, W->kind == 6, W->group, W->N, W->K, y,
                                         ldy, M, nt);
    if (W->kind != 0) return -1;
    const uint16_t* w = (const uint16_t*)W->w;
    long n_amx = 0;
#ifdef OLMO_HF_HAVE_AMX
    if (W->amx && W->K % 32 == 0) n_amx = W->N - W->N % 16;
    if (n_amx && olmo_hf_gemv_bf16_amx(x, ldx, w, W->ldw, n_amx, W->K, y, ldy, M, nt) != 0) return -1;
#endif
    if (n_amx < W->N && olmo_hf_gemv_bf16(x, ldx, w + n_amx * W->ldw, W->ldw, W->N - n_amx, W->K, y + n_amx, ldy, M, nt) != 0)
        return -1;
    return 0;
}

/* bf16 out = bf16(a + b), elementwise (torch's bf16 add: fp32 sum, one rounding) */
static void add_bf16(const uint16_t* a, const uint16_t* b, long n, uint16_t* out) {
    long i = 0;
    for (; i + 16 <= n; i += 16)
        store_bf16x16(out + i, _mm512_add_ps(load_bf16x16(a + i), load_bf16x16(b + i)));
    for (; i < n; ++i) out[i] = f32_to_bf16(bf16_to_f32(a[i]) + bf16_to_f32(b[i]));
}

/* x, out: (B, hidden) contiguous; cos / sin: float32 (head_dim) per row, row b at cos + b * cs_b; K / V buffers:
   (B, nkv, capacity, hd) with strides ksb / ksh (vsb / vsh), unit stride along hd, row stride hd along positions;
   pos: the position the new key and value go to (keys 0..pos are attended). */
int olmo_hf_decode_layer(const olmo_hf_layer* L, const uint16_t* x, long B, const float* cos, const float* sin,
                         long cs_b, uint16_t* kbuf, long ksb, long ksh, uint16_t* vbuf, long vsb, long vsh, long pos,
                         uint16_t* out, int nthreads) {
    const long hd = L->hd, nq = L->nh * hd, nk = L->nkv * hd, width = nq + 2 * nk, H = L->hidden, I = L->inter;
    if (B < 1 || B > 8 || L->qkv.N != width || L->o.K != nq || L->o.N != H || L->gate_up.N != 2 * I || L->down.K != I ||
        L->down.N != H || H % 16 || I % 16 || hd % 32 || hd > 512)
        return -1;
    /* scratch, one block: qkv (B, width), qk (B, nh + nkv, hd), a (B, nq), o (B, H), h (B, H), gu (B, 2I),
       act (B, I), d (B, H), normed (B, H) */
    const long total = B * (width + (nq + nk) + nq + 4 * H + 3 * I);
    uint16_t* s = (uint16_t*)aligned_alloc(64, ((size_t)total * 2 + 63) / 64 * 64);
    if (!s) return -2;
    uint16_t *qkv = s, *qk = qkv + B * width, *a = qk + B * (nq + nk), *o = a + B * nq, *h = o + B * H;
    uint16_t *gu = h + B * H, *act = gu + B * 2 * I, *d = act + B * I, *nrm = d + B * H;
    int status = -3;
    if (layer_matmul(&L->qkv, x, H, B, qkv, width, nthreads)) goto done;
    if (olmo_hf_qk_norm_rope_bf16(qkv, width, B, 1, nq, nk, hd, L->wq, L->wk, L->qk_eps, cos, sin, cs_b, hd, qk,
                                  nthreads))
        goto done;
    for (long b = 0; b < B; ++b)
        for (long g = 0; g < L->nkv; ++g) {
            memcpy(kbuf + b * ksb + g * ksh + pos * hd, qk + b * (nq + nk) + nq + g * hd, hd * 2);
            memcpy(vbuf + b * vsb + g * vsh + pos * hd, qkv + b * width + nq + nk + g * hd, hd * 2);
        }
    if (olmo_hf_decode_attention_bf16(qk, nq + nk, hd, kbuf, ksb, ksh, hd, vbuf, vsb, vsh, hd, a, B, L->nh, L->nkv,
                                      pos + 1, hd, L->scaling, nthreads))
        goto done;
    if (layer_matmul(&L->o, a, nq, B, o, H, nthreads)) goto done;
    if (olmo_hf_rms_norm_bf16(o, H, B, H, L->w_attn_norm, L->eps, nrm, nthreads)) goto done;
    add_bf16(x, nrm, B * H, h);
    if (layer_matmul(&L->gate_up, h, H, B, gu, 2 * I, nthreads)) goto done;
    if (olmo_hf_silu_mul_bf16(gu, 2 * I, B, I, act, nthreads)) goto done;
    if (layer_matmul(&L->down, act, I, B, d, H, nthreads)) goto done;
    if (olmo_hf_rms_norm_bf16(d, H, B, H, L->w_ff_norm, L->eps, nrm, nthreads)) goto done;
    add_bf16(h, nrm, B * H, out);
    status = 0;
done:
    free(s);
    return status;
}
#endif
