/* microkernel.c - which instruction set the block kernel runs on.
 *
 * Clusters build on a login node and run on compute nodes with other CPUs,
 * so the kernel's inner loops (kernel_isa.inc) are compiled once per
 * instruction set, each file with its own flags, and one table is chosen
 * here, once per process, from the CPU's features: AVX-512 (16 lanes),
 * else AVX2 + FMA (8 lanes), else a 4-lane generic build (SSE2).
 * SPA_KERNEL=avx512|avx2|generic forces one (when the CPU has it), for
 * tests and benchmarks; SPA_KERNEL=blas keeps the products on OpenBLAS.
 * Results are bit-identical within one variant on any rank and thread
 * count; variants differ from one another by rounding.
 */
#include "spa_impl.h"

#include <pthread.h>
#include <string.h>

static const spa_kernels *chosen = &spa_kernels_generic;
static int chosen_blas;
static pthread_once_t chosen_once = PTHREAD_ONCE_INIT;

static void choose(void)
{
    const spa_kernels *best = &spa_kernels_generic;
    int has_avx2 = 0, has_avx512 = 0;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    /* __builtin_cpu_supports also asks the OS (XCR0) for the registers */
    has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && spa_kernels_avx2.qk;
    has_avx512 = has_avx2 && __builtin_cpu_supports("avx512f") && spa_kernels_avx512.qk;
    if (has_avx512) best = &spa_kernels_avx512;
    else if (has_avx2) best = &spa_kernels_avx2;
#endif
    chosen = best;
    const char *want = getenv("SPA_KERNEL");
    if (!want) return;
    if (strcmp(want, "blas") == 0) chosen_blas = 1;
    else if (strcmp(want, "generic") == 0) chosen = &spa_kernels_generic;
    else if (strcmp(want, "avx2") == 0 && has_avx2) chosen = &spa_kernels_avx2;
    else if (strcmp(want, "avx512") == 0 && has_avx512) chosen = &spa_kernels_avx512;
}

const spa_kernels *spa_kernels_get(int *blas)
{
    pthread_once(&chosen_once, choose);
    if (blas) *blas = chosen_blas;
    return chosen;
}

const char *spa_kernel_name(void)
{
    int blas;
    const spa_kernels *k = spa_kernels_get(&blas);
    return blas ? "blas" : k->name;
}
