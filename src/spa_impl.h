/* spa_impl.h - private declarations shared by spa's sources.
 *
 * Error handling follows one rule: every function returns spa_err; SPA_CHECK
 * propagates it, SPA_FAIL records a message with file and line, and
 * SPA_MPI_CHECK turns an MPI error code into text. The library never exits.
 */
#ifndef SPA_IMPL_H
#define SPA_IMPL_H

#include "spa.h"

#include <stdio.h>
#include <stdlib.h>

/* Records a printf-style message as spa_last_error() and returns code. */
spa_err spa_set_error(spa_err code, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define SPA_FAIL(code, ...) return spa_set_error((code), __FILE__, __LINE__, __VA_ARGS__)

#define SPA_CHECK(call)                                                                            \
    do {                                                                                           \
        spa_err spa_e_ = (call);                                                                   \
        if (spa_e_ != SPA_OK) return spa_e_;                                                       \
    } while (0)

/* User-input check that stays on in release builds. */
#define SPA_REQUIRE(cond, code, ...)                                                               \
    do {                                                                                           \
        if (!(cond)) SPA_FAIL((code), __VA_ARGS__);                                                \
    } while (0)

spa_err spa_mpi_error(int mpierr, const char *what, const char *file, int line);
#define SPA_MPI_CHECK(call)                                                                        \
    do {                                                                                           \
        int spa_m_ = (call);                                                                       \
        if (spa_m_ != MPI_SUCCESS) return spa_mpi_error(spa_m_, #call, __FILE__, __LINE__);        \
    } while (0)

/* Aligned allocation for SIMD and GEMM operands (64 bytes). Zeroed. */
void *spa_alloc(size_t bytes);
void spa_free(void *p);

/* Wall-clock seconds. */
double spa_now(void);

/* Vectorisable exp for softmax: x[i] = exp(x[i]), relative error < 2e-7,
 * exp(-inf) = 0. */
void spa_vexp(float *x, int64_t len);

/* ------------------------------------------------------------------ kernel */

/* Register-blocked products of the block kernel (microkernel.c).
 *   qk: st[nk][ldq] = scale * k[nk][D] . qt[D][ldq]      (ldq % 16 == 0)
 *   pv: o[rows][D] += pt[nk][ldq]^T . v[nk][D]           (D % 8 == 0) */
void spa_mk_qk(int64_t nk, int32_t D, int32_t ldq, float scale, const float *k, const float *qt, float *st);
void spa_mk_pv(int64_t nk, int32_t D, int32_t ldq, int32_t rows, const float *pt, const float *v, float *o);

/* Where one rank finds the keys and values of a token range.
 * A source is a list of disjoint token ranges, each backed by memory laid
 * out [H][len][D] with a per-source head stride. */
typedef struct spa_keyseg {
    int64_t t0, t1;     /* token range */
    const float *k, *v; /* row t0 of head 0 */
    int64_t hstride;    /* floats between heads */
} spa_keyseg;

typedef struct spa_keysrc {
    int nseg;
    spa_keyseg *seg;    /* sorted by t0, disjoint */
    /* Random blocks fetched from other ranks: fetched[h][slot] with the block
     * index of each slot; looked up by binary search per head. */
    int64_t *fblock;    /* [nfetch] block index, sorted within each head */
    int64_t *fhead_off; /* [H + 1] offsets into fblock per head */
    const float *fk, *fv; /* [nfetch][B][D] */
    /* Global tokens' keys: [H][|G|][D] */
    const float *gk, *gv;
} spa_keysrc;

/* Per-thread scratch of the kernel, allocated once. */
typedef struct spa_scratch spa_scratch;
spa_scratch *spa_scratch_create(const spa_config *cfg);
void spa_scratch_destroy(spa_scratch *s);

/* Attention of the non-global rows of query block c, head h.
 *   q: [rows][D] rows of block c;  out: [rows][D];  lse: [rows]
 * Keys come from src. Rows that are global tokens are written too but are
 * overwritten by the global-row path. Returns the number of (i, j) pairs
 * visited (for diagnostics). */
void spa_kernel_block(const spa_config *cfg, const spa_keysrc *src, spa_scratch *s, int32_t h,
                      int64_t c, const float *q, float *out, float *lse);

/* Partial attention of global queries over a key range, for the LSE merge.
 *   qg: [ng][D] global queries of head h (tokens gidx[]);
 *   k, v: [len][D] keys j0 .. j0 + len - 1
 *   part: [ng][D + 2] running (max, sum, acc[D]) in double, updated in place;
 *         start from (-inf, 0, 0).
 * Causal masking uses gidx. */
void spa_kernel_global_partial(const spa_config *cfg, spa_scratch *s, const float *qg,
                               const int64_t *gidx, int64_t ng, const float *k, const float *v,
                               int64_t j0, int64_t len, double *part);

/* Merges partial b into a: both [D + 2] (max, sum, acc[D]). */
void spa_partial_merge(double *a, const double *b, int32_t D);

#endif
