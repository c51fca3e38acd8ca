/* vexp.c - exp over float arrays, 8 lanes at a time.
 *
 * With libm's scalar expf the softmax costs more than the GEMMs. This is a
 * Cody-Waite range reduction and a degree-6 polynomial (relative error
 * below 2e-7 on [-87, 88]), written with GCC vector extensions of 8 lanes,
 * so it compiles to AVX2 (or pairs of SSE registers) without libm calls. Inputs below
 * -87 flush to 0, which is what a softmax wants for masked (-inf) scores.
 */
#include "spa_impl.h"

#include <string.h>

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

static inline v8f select8(v8i mask, v8f a, v8f b) { return (v8f)(((v8i)a & mask) | ((v8i)b & ~mask)); }

static inline v8f vexp8(v8f x)
{
    const v8f hi = {88.0f, 88.0f, 88.0f, 88.0f, 88.0f, 88.0f, 88.0f, 88.0f};
    const v8f lo = hi * (-87.0f / 88.0f);
    v8i under = x < lo;
    x = select8(x > hi, hi, x);
    x = select8(under, lo, x);
    /* k = round(x / ln2) by the 1.5 * 2^23 trick */
    v8f kf = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    v8f r = x - kf * 0.693359375f; /* ln2 split into hi + lo */
    r = r + kf * 2.12194440e-4f;
    v8f p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    v8i k = __builtin_convertvector(kf, v8i);
    v8i bits = (v8i)p + (k << 23); /* p * 2^k: add k to the exponent */
    return (v8f)(bits & ~under);
}

void spa_vexp(float *x, int64_t len)
{
    int64_t i = 0;
    for (; i + 8 <= len; i += 8) {
        v8f v;
        memcpy(&v, x + i, sizeof v);
        v = vexp8(v);
        memcpy(x + i, &v, sizeof v);
    }
    if (i < len) { /* tail: pad with -inf, which maps to 0 */
        v8f v;
        float tmp[8];
        for (int j = 0; j < 8; j++) tmp[j] = i + j < len ? x[i + j] : -1e30f;
        memcpy(&v, tmp, sizeof v);
        v = vexp8(v);
        memcpy(tmp, &v, sizeof v);
        for (int64_t j = 0; i + j < len; j++) x[i + j] = tmp[j];
    }
}
