/* vexp.c - exp over float arrays for the softmax, on the instruction set
 * microkernel.c chose. With libm's scalar expf the softmax costs more than
 * the products; the vector version (kernel_isa.inc) is a Cody-Waite range
 * reduction and a degree-6 polynomial, relative error below 2e-7 on
 * [-87, 88], and flushes inputs below -87 (masked, -inf scores) to 0.
 */
#include "spa_impl.h"

void spa_vexp(float *x, int64_t len) { spa_kernels_get(NULL)->vexp(x, len); }
