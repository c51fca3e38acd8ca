/* kernel_generic.c - the kernel's inner loops on 4-lane vectors for any CPU
 * (SSE2 on x86-64, whatever the target has elsewhere), compiled with the
 * build's baseline flags. */
#define SPA_ISA_NAME generic
#define SPA_ISA_LABEL "generic"
#define SPA_ISA_VL 4
#include "kernel_isa.inc"
