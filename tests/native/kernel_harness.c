/* A command-line driver of olmo_hf/fast/kernels.c for tests that run a kernel variant under emulation (qemu-user:
   the AArch64 NEON variant, or the AVX2 variant on an emulated CPU without AVX-512), where Python and torch are not
   available. Built together with kernels.c; tests/test_kernels_emulated.py writes the inputs and checks the outputs.

   kernel_harness isa
       prints the variant's name (olmo_hf_kernels_isa).
   kernel_harness bf16 M N K LDX LDW IN OUT      IN: x (M x LDX bf16), w (N x LDW bf16)        OUT: y (M x N bf16)
   kernel_harness int8 M N K LDX LDW IN OUT      IN: x (M x LDX bf16), q (N x LDW int8), scale (N fp32)
                                                 OUT: y (M x N bf16)
   kernel_harness int8_to_bf16 N K LDW IN OUT   IN: q (N x LDW int8)                           OUT: (N x K bf16)
   kernel_harness int4 M N K G OFFSETS IN OUT     IN: x (M x K bf16), w (N x Kp/2 uint8, olmo_hf.fast.int4's nibble
                                                 layout), ws (N x K/G bf16), then wo (N x K/G int8) if OFFSETS is 1
                                                 OUT: y (M x N bf16), then the widened weight (N x K bf16)
   kernel_harness int8_grouped M N K G IN OUT     IN: x (M x K bf16), q (N x K int8), ws (N x K/G fp16)
                                                 OUT: y (M x N bf16), then the widened weight (N x K bf16)
   Exit status: 0, or 1 on bad arguments/files, or the kernel's own negative status negated. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char* olmo_hf_kernels_isa(void);
int olmo_hf_gemv_bf16(const uint16_t*, long, const uint16_t*, long, long, long, uint16_t*, long, long, int);
int olmo_hf_gemv_int8(const uint16_t*, long, const int8_t*, long, const float*, long, long, uint16_t*, long, long,
                      int);
int olmo_hf_int8_to_bf16(const int8_t*, long, long, long, uint16_t*, int);
int olmo_hf_gemv_int8_grouped(const uint16_t*, long, const int8_t*, long, const uint16_t*, long, long, long,
                              uint16_t*, long, long, int);
int olmo_hf_int8_grouped_to_bf16(const int8_t*, long, const uint16_t*, long, long, long, uint16_t*, int);
int olmo_hf_gemv_int4(const uint16_t*, long, const uint8_t*, long, const uint16_t*, const int8_t*, long, long, long,
                      uint16_t*, long, long, int);
int olmo_hf_int4_to_bf16(const uint8_t*, long, const uint16_t*, const int8_t*, long, long, long, uint16_t*, int);

static void* read_all(const char* path, size_t size) {
    FILE* f = fopen(path, "rb");
    void* buf = malloc(size ? size : 1);
    if (!f || !buf || fread(buf, 1, size, f) != size) { fprintf(stderr, "cannot read %zu bytes of %s\n", size, path); exit(1); }
    fclose(f);
    return buf;
}

static void write_all(const char* path, const void* buf, size_t size) {
    FILE* f = fopen(path, "wb");
    if (!f || fwrite(buf, 1, size, f) != size) { fprintf(stderr, "cannot write %s\n", path); exit(1); }
    fclose(f);
}

int main(int argc, char** argv) {
    const int threads = 2;  /* exercise the OpenMP split as the library does */
    if (argc == 2 && !strcmp(argv[1], "isa")) { puts(olmo_hf_kernels_isa()); return 0; }
    if (argc == 9 && (!strcmp(argv[1], "bf16") || !strcmp(argv[1], "int8"))) {
        const long M = atol(argv[2]), N = atol(argv[3]), K = atol(argv[4]), ldx = atol(argv[5]), ldw = atol(argv[6]);
        const int is_int8 = !strcmp(argv[1], "int8");
        const size_t xb = M * ldx * 2, wb = N * ldw * (is_int8 ? 1 : 2), sb = is_int8 ? N * 4 : 0;
        char* in = read_all(argv[7], xb + wb + sb);
        uint16_t* y = calloc(M * N, 2);
        const int rc = is_int8 ? olmo_hf_gemv_int8((uint16_t*)in, ldx, (int8_t*)(in + xb), ldw, (float*)(in + xb + wb),
                                                   N, K, y, N, M, threads)
                               : olmo_hf_gemv_bf16((uint16_t*)in, ldx, (uint16_t*)(in + xb), ldw, N, K, y, N, M, threads);
        if (rc) return -rc;
        write_all(argv[8], y, M * N * 2);
        return 0;
    }
    if (argc == 7 && !strcmp(argv[1], "int8_to_bf16")) {
        const long N = atol(argv[2]), K = atol(argv[3]), ldw = atol(argv[4]);
        int8_t* q = read_all(argv[5], N * ldw);
        uint16_t* out = calloc(N * K, 2);
        const int rc = olmo_hf_int8_to_bf16(q, ldw, N, K, out, threads);
        if (rc) return -rc;
        write_all(argv[6], out, N * K * 2);
        return 0;
    }
    if (argc == 9 && !strcmp(argv[1], "int4")) {
        const long M = atol(argv[2]), N = atol(argv[3]), K = atol(argv[4]), G = atol(argv[5]);
        const int offsets = atoi(argv[6]);
        const long Kp = (K + 63) / 64 * 64, ng = K / G;
        const size_t xb = M * K * 2, wb = N * Kp / 2, sb = N * ng * 2, ob = offsets ? N * ng : 0;
        char* in = read_all(argv[7], xb + wb + sb + ob);
        const uint8_t* w = (const uint8_t*)(in + xb);
        const uint16_t* ws = (const uint16_t*)(in + xb + wb);
        const int8_t* wo = offsets ? (const int8_t*)(in + xb + wb + sb) : NULL;
        uint16_t* out = calloc(M * N + N * K, 2);
        int rc = olmo_hf_gemv_int4((uint16_t*)in, K, w, Kp / 2, ws, wo, N, K, G, out, N, M, threads);
        if (!rc) rc = olmo_hf_int4_to_bf16(w, Kp / 2, ws, wo, N, K, G, out + M * N, threads);
        if (rc) return -rc;
        write_all(argv[8], out, (M * N + N * K) * 2);
        return 0;
    }
    if (argc == 8 && !strcmp(argv[1], "int8_grouped")) {
        const long M = atol(argv[2]), N = atol(argv[3]), K = atol(argv[4]), G = atol(argv[5]);
        const size_t xb = M * K * 2, wb = N * K, sb = N * (K / G) * 2;
        char* in = read_all(argv[6], xb + wb + sb);
        const int8_t* q = (const int8_t*)(in + xb);
        const uint16_t* ws = (const uint16_t*)(in + xb + wb);
        uint16_t* out = calloc(M * N + N * K, 2);
        int rc = olmo_hf_gemv_int8_grouped((uint16_t*)in, K, q, K, ws, G, N, K, out, N, M, threads);
        if (!rc) rc = olmo_hf_int8_grouped_to_bf16(q, K, ws, G, N, K, out + M * N, threads);
        if (rc) return -rc;
        write_all(argv[7], out, (M * N + N * K) * 2);
        return 0;
    }
    fprintf(stderr, "usage: see the comment at the top of kernel_harness.c\n");
    return 1;
}
