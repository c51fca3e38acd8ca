/* microkernel.c - the two products of the block kernel, register-blocked.
 *
 * OpenBLAS is built for large operands; at the kernel's shapes (64 query
 * rows, 512 keys, D = 64) packing and the C pre-scaling take a third of
 * its time. Here the scores are computed transposed, S^T = K Q^T, so that
 * both products read K and V in their natural row-major layout and the
 * softmax runs down columns with whole vectors:
 *   qk: st[j][i] = scale * sum_d k[j][d] * qt[d][i]   tile 6 keys x 16 rows
 *   pv: o[i][d] += sum_j pt[j][i] * v[j][d]           tile 6 rows x 16 dims
 * Written with 8-lane GCC vector extensions (AVX2 + FMA here). Every
 * element is summed in a fixed order, independent of where it sits in a
 * tile, so results do not depend on shapes or on the rank count.
 */
#include "spa_impl.h"

#include <string.h>

typedef float v8f __attribute__((vector_size(32)));

static inline v8f ld8(const float *p)
{
    v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void st8(float *p, v8f v) { memcpy(p, &v, sizeof v); }
static inline v8f bc8(float x) { return (v8f){x, x, x, x, x, x, x, x}; }

/* R keys x 16 rows of S^T; R <= 6 is a compile-time constant after inlining */
static inline __attribute__((always_inline)) void qk_tile(int R, int32_t D, int32_t ldq, float scale,
                                                          const float *k, const float *qt, float *st)
{
    v8f acc[6][2] = {{{0}}};
    for (int32_t d = 0; d < D; d++) {
        v8f q0 = ld8(qt + (int64_t)d * ldq), q1 = ld8(qt + (int64_t)d * ldq + 8);
        for (int r = 0; r < R; r++) {
            v8f kb = bc8(k[(int64_t)r * D + d]);
            acc[r][0] += kb * q0;
            acc[r][1] += kb * q1;
        }
    }
    for (int r = 0; r < R; r++) {
        st8(st + (int64_t)r * ldq, acc[r][0] * scale);
        st8(st + (int64_t)r * ldq + 8, acc[r][1] * scale);
    }
}

void spa_mk_qk(int64_t nk, int32_t D, int32_t ldq, float scale, const float *k, const float *qt, float *st)
{
    for (int32_t i = 0; i < ldq; i += 16) {
        int64_t j = 0;
        for (; j + 6 <= nk; j += 6) qk_tile(6, D, ldq, scale, k + j * D, qt + i, st + j * ldq + i);
        switch (nk - j) {
        case 5: qk_tile(5, D, ldq, scale, k + j * D, qt + i, st + j * ldq + i); break;
        case 4: qk_tile(4, D, ldq, scale, k + j * D, qt + i, st + j * ldq + i); break;
        case 3: qk_tile(3, D, ldq, scale, k + j * D, qt + i, st + j * ldq + i); break;
        case 2: qk_tile(2, D, ldq, scale, k + j * D, qt + i, st + j * ldq + i); break;
        case 1: qk_tile(1, D, ldq, scale, k + j * D, qt + i, st + j * ldq + i); break;
        default: break;
        }
    }
}

/* R rows x 8W dims of O */
static inline __attribute__((always_inline)) void pv_tile(int R, int W, int64_t nk, int32_t D, int32_t ldq,
                                                          const float *pt, const float *v, float *o)
{
    v8f acc[6][2] = {{{0}}};
    for (int r = 0; r < R; r++)
        for (int w = 0; w < W; w++) acc[r][w] = ld8(o + (int64_t)r * D + 8 * w);
    for (int64_t j = 0; j < nk; j++) {
        v8f v0 = ld8(v + j * D), v1 = W > 1 ? ld8(v + j * D + 8) : v0;
        const float *p = pt + j * ldq;
        for (int r = 0; r < R; r++) {
            v8f pb = bc8(p[r]);
            acc[r][0] += pb * v0;
            if (W > 1) acc[r][1] += pb * v1;
        }
    }
    for (int r = 0; r < R; r++)
        for (int w = 0; w < W; w++) st8(o + (int64_t)r * D + 8 * w, acc[r][w]);
}

static inline __attribute__((always_inline)) void pv_cols(int W, int64_t nk, int32_t D, int32_t ldq,
                                                          int32_t rows, const float *pt, const float *v, float *o)
{
    int32_t i = 0;
    for (; i + 6 <= rows; i += 6) pv_tile(6, W, nk, D, ldq, pt + i, v, o + (int64_t)i * D);
    switch (rows - i) {
    case 5: pv_tile(5, W, nk, D, ldq, pt + i, v, o + (int64_t)i * D); break;
    case 4: pv_tile(4, W, nk, D, ldq, pt + i, v, o + (int64_t)i * D); break;
    case 3: pv_tile(3, W, nk, D, ldq, pt + i, v, o + (int64_t)i * D); break;
    case 2: pv_tile(2, W, nk, D, ldq, pt + i, v, o + (int64_t)i * D); break;
    case 1: pv_tile(1, W, nk, D, ldq, pt + i, v, o + (int64_t)i * D); break;
    default: break;
    }
}

void spa_mk_pv(int64_t nk, int32_t D, int32_t ldq, int32_t rows, const float *pt, const float *v, float *o)
{
    int32_t d = 0;
    for (; d + 16 <= D; d += 16) pv_cols(2, nk, D, ldq, rows, pt, v + d, o + d);
    if (d < D) pv_cols(1, nk, D, ldq, rows, pt, v + d, o + d); /* D % 16 == 8 */
}
