/* kernel_avx512.c - the kernel's inner loops on 16-lane (512-bit) vectors.
 * CMake compiles this file with -mavx512f -mavx2 -mfma; microkernel.c
 * calls it only on CPUs that have them. */
#if defined(__x86_64__) && defined(__AVX512F__)
#define SPA_ISA_NAME avx512
#define SPA_ISA_LABEL "avx512"
#define SPA_ISA_VL 16
#include "kernel_isa.inc"
#else /* built without the flags (not x86-64): an empty table, never chosen */
#include "spa_impl.h"
const spa_kernels spa_kernels_avx512 = {0};
#endif
