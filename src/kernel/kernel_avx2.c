/* kernel_avx2.c - the kernel's inner loops on 8-lane (256-bit) vectors with
 * FMA. CMake compiles this file with -mavx2 -mfma; microkernel.c calls it
 * only on CPUs that have them. */
#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__)
#define SPA_ISA_NAME avx2
#define SPA_ISA_LABEL "avx2"
#define SPA_ISA_VL 8
#include "kernel_isa.inc"
#else /* built without the flags (not x86-64): an empty table, never chosen */
#include "spa_impl.h"
const spa_kernels spa_kernels_avx2 = {0};
#endif
