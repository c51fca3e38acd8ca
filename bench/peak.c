/* peak.c - the machine's ceilings, measured on one thread:
 *   fma     register-only FMA loop on the widest unit the CPU has
 *           (AVX-512, else AVX2 + FMA), named, 2 flops per lane; and the
 *           AVX2 one beside it when AVX-512 is there
 *   sgemm   OpenBLAS on a large square product
 *   shapes  OpenBLAS on the kernel's own shapes, [B x KC] = [B x D][D x KC]
 *           and [B x D] = [B x KC][KC x D], as spa calls them
 * Prints one JSON object. Not a test: the figures are for ratios printed
 * side by side by bench/kernel.sh. */
#include <cblas.h>
#include <spa.h>
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void openblas_set_num_threads(int);

/* 12 independent accumulators hide the FMA latency (4 cycles, 2 ports).
 * One loop per unit, each compiled for its own instruction set, so that a
 * portable build measures the widest unit the CPU has. Best of many short
 * runs: a run that shared its core, or ran before the clock ramped up,
 * only lowers the others' mean, not the best. */
#define FMA_LOOP(vec, set1, fmadd, add, lanes)                                                                     \
    vec a[12], m = set1(0.999999f), c = set1(1e-7f);                                                               \
    for (int i = 0; i < 12; i++) a[i] = set1((float)i);                                                            \
    const long iters = 100000000 / 12;                                                                             \
    double best = 0.0;                                                                                             \
    for (int rep = 0; rep < 10; rep++) {                                                                           \
        double t = spa_now();                                                                                      \
        for (long it = 0; it < iters; it++)                                                                        \
            for (int i = 0; i < 12; i++) a[i] = fmadd(a[i], m, c);                                                 \
        double dt = spa_now() - t, g = 2.0 * lanes * 12.0 * (double)iters / dt * 1e-9;                             \
        best = g > best ? g : best;                                                                                \
    }                                                                                                              \
    vec s = a[0];                                                                                                  \
    for (int i = 1; i < 12; i++) s = add(s, a[i]);                                                                 \
    float out[lanes];                                                                                              \
    memcpy(out, &s, sizeof out);                                                                                   \
    if (out[0] == 12345.0f) printf("#"); /* keep the loop alive */                                               \
    return best;

__attribute__((target("avx512f"))) static double fma_peak_avx512(void)
{
    FMA_LOOP(__m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, 16)
}

__attribute__((target("avx2,fma"))) static double fma_peak_avx2(void)
{
    FMA_LOOP(__m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, 8)
}

static double gemm_rate(int M, int N, int K, int transb, int reps)
{
    float *A = aligned_alloc(64, (size_t)M * K * 4 + 64), *B = aligned_alloc(64, (size_t)K * N * 4 + 64);
    float *C = aligned_alloc(64, (size_t)M * N * 4 + 64);
    for (long i = 0; i < (long)M * K; i++) A[i] = (float)(i % 7) * 0.1f;
    for (long i = 0; i < (long)K * N; i++) B[i] = (float)(i % 5) * 0.1f;
    double best = 0.0;
    for (int rep = 0; rep < 3; rep++) {
        double t = spa_now();
        for (int r = 0; r < reps; r++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, transb ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A, K, B,
                        transb ? K : N, 0.0f, C, N);
        double dt = spa_now() - t, g = 2.0 * M * N * (double)K * reps / dt * 1e-9;
        best = g > best ? g : best;
    }
    free(A), free(B), free(C);
    return best;
}

int main(void)
{
    openblas_set_num_threads(1);
    __builtin_cpu_init();
    const char *unit = "none";
    int bits = 0;
    double fma = 0.0, fma2 = 0.0;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) fma2 = fma_peak_avx2();
    if (fma2 > 0.0 && __builtin_cpu_supports("avx512f")) {
        fma = fma_peak_avx512(), unit = "AVX-512", bits = 512;
    } else if (fma2 > 0.0) {
        fma = fma2, unit = "AVX2+FMA", bits = 256;
    }
    double big = gemm_rate(2048, 2048, 2048, 0, 2);
    double qk = gemm_rate(64, 512, 64, 1, 4000), pv = gemm_rate(64, 64, 512, 0, 4000);
    printf("{\"unit\": \"%s\", \"vector_bits\": %d, \"fma_peak_gflops\": %.2f, \"fma_peak_avx2_gflops\": %.2f, "
           "\"kernel\": \"%s\", \"sgemm_2048_gflops\": %.2f, \"sgemm_qk_64x512x64_gflops\": %.2f, "
           "\"sgemm_pv_64x64x512_gflops\": %.2f}\n",
           unit, bits, fma, fma2, spa_kernel_name(), big, qk, pv);
    return 0;
}
