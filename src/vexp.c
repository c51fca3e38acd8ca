/* vexp.c - exp over float arrays, written so the compiler vectorises it.
 *
 * With libm's scalar expf the softmax costs more than the GEMMs. This is a
 * branch-free Cody-Waite range reduction and a degree-6 polynomial,
 * relative error below 2e-7 on [-87, 88]; inputs below -87 flush to 0, which
 * is what a softmax wants for masked (-inf) scores.
 */
#include "spa_impl.h"

#include <string.h>

void spa_vexp(float *x, int64_t len)
{
#pragma omp simd
    for (int64_t i = 0; i < len; i++) {
        float v = x[i];
        int under = v < -87.0f;
        v = v > 88.0f ? 88.0f : v;
        v = v < -87.0f ? -87.0f : v;
        float kf = __builtin_floorf(v * 1.44269504088896341f + 0.5f);
        float r = v - kf * 0.693359375f;   /* ln2 split into hi + lo */
        r = r + kf * 2.12194440e-4f;
        float p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        p = p * r * r + r + 1.0f;
        int32_t bits = ((int32_t)kf + 127) << 23;
        float scale;
        memcpy(&scale, &bits, sizeof scale);
        x[i] = under ? 0.0f : p * scale;
    }
}
