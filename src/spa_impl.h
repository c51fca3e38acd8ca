/* spa_impl.h - private declarations shared by spa's sources.
 *
 * Error handling follows one rule: every function returns spa_err; SPA_CHECK
 * propagates it, SPA_FAIL records a message with file and line, and
 * SPA_MPI_CHECK turns an MPI error code into text. The library never exits.
 */
#ifndef SPA_IMPL_H
#define SPA_IMPL_H

#include "spa.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
/* Index of the first element >= x in sorted a[0..len). */
int64_t spa_lower_bound(const int64_t *a, int64_t len, int64_t x);
void *spa_alloc(size_t bytes);
void spa_hugepages(void *p, size_t bytes);
void spa_free(void *p);

/* Wall-clock seconds. */
double spa_now(void);

/* Vectorisable exp for softmax: x[i] = exp(x[i]), relative error < 2e-7,
 * exp(-inf) = 0. */
void spa_vexp(float *x, int64_t len);

/* ------------------------------------------------------------ pattern */

/* Query blocks of fewer blocks never take the spread path: a short
 * sequence is cheap to fetch whole. */
enum { SPA_SPREAD_MIN_BLOCKS = 32 };

/* Workspace of the pattern functions, for one thread: O(nb). */
typedef struct spa_patws {
    int32_t *kb;           /* [nb] key blocks of the last call */
    unsigned char *kfull;  /* [nb] their full flags */
    int64_t nkb;
    unsigned char *mark;   /* [nb] zero between calls */
    int32_t *rb;           /* [random_max] */
    int64_t nb;            /* kb, kfull and mark are mapped pages (spa_patws_create) */
} spa_patws;
spa_patws *spa_patws_create(const spa_config *cfg);
void spa_patws_destroy(spa_patws *w);

/* spa_pattern_key_blocks, spa_pattern_spread and spa_pattern_block_keys on
 * a workspace (no allocation). The key blocks land in w->kb, w->kfull. */
int64_t spa_pattern_key_blocks_ws(const spa_config *cfg, int32_t h, int64_t c, spa_patws *w);
int spa_pattern_spread_ws(const spa_config *cfg, int32_t h, int64_t c, spa_patws *w);
void spa_pattern_block_keys_ws(const spa_config *cfg, int32_t h, int64_t c, int64_t *counts, spa_patws *w);

/* Tokens of [a, b) gathered for head h (G and its summary columns). */
int64_t spa_pattern_gathered_in(const spa_config *cfg, int32_t h, int64_t a, int64_t b);

/* 1 when the spread path computes every row of (h, c): a spread block, or
 * a block of global rows only. The block kernel skips it, and nothing is
 * fetched for it. */
int spa_pattern_served_ws(const spa_config *cfg, int32_t h, int64_t c, spa_patws *w);

/* Tokens of the nblk >= 1 blocks from block b0 (a fetched run; the last
 * block may be partial). */
static inline int64_t spa_run_tokens(const spa_config *cfg, int64_t b0, int64_t nblk)
{
    return spa_block_end(cfg, b0 + nblk - 1) - b0 * cfg->block;
}

/* Dilated pair p of head h selects position j; selects both i and j in one segment. */
static inline int spa_dil_sel(const spa_head_rules *hr, int p, int32_t h, int64_t j)
{
    return (j % hr->dil_w[p]) % hr->dil_r[p] == (int64_t)h % hr->dil_r[p];
}
static inline int spa_dil_pair(const spa_head_rules *hr, int p, int32_t h, int64_t i, int64_t j)
{
    return i / hr->dil_w[p] == j / hr->dil_w[p] && spa_dil_sel(hr, p, h, i) && spa_dil_sel(hr, p, h, j);
}

/* The token rule of one (head, query block), built once per block. */
typedef struct spa_rowctx {
    const spa_config *cfg;
    const spa_head_rules *hr;
    int32_t h;
    int64_t c, t0, t1;     /* query rows [t0, t1) */
    int64_t j0, j1;        /* local range */
    int64_t wh;            /* block window half-width; -1 in radius mode or none */
    const int32_t *kb;     /* the full key blocks (random, layout), in the workspace */
    const unsigned char *kfull;
    int64_t nkb;
    int residue;           /* a strided or dilated rule is present */
} spa_rowctx;
/* x->kb points into w: valid until w's next use. */
void spa_rowctx_init(spa_rowctx *x, const spa_config *cfg, int32_t h, int64_t c, spa_patws *w);
int64_t spa_rowctx_find(const spa_rowctx *x, int64_t b);
/* j in S(i) for a row i of the block (global rows included). */
int spa_rowctx_attends(const spa_rowctx *x, int64_t i, int64_t j);

/* The rows i for which spa_rowctx_local(x, i, j) holds, as one interval
 * [*lo, *hi] (empty when *lo > *hi): a radius and a block window are both
 * contiguous in i for a fixed key j. */
static inline void spa_rowctx_local_span(const spa_rowctx *x, int64_t j, int64_t *lo, int64_t *hi)
{
    const spa_head_rules *hr = x->hr;
    if (hr->radius >= 0) {
        *lo = j - hr->radius, *hi = j + hr->radius;
    } else if (x->wh >= 0) {
        int64_t B = x->cfg->block, bj = j / B;
        *lo = (bj - x->wh) * B, *hi = (bj + x->wh + 1) * B - 1;
    } else {
        *lo = 1, *hi = 0;
    }
}

/* The local rule alone (radius or block window) for a row i of the block. */
static inline int spa_rowctx_local(const spa_rowctx *x, int64_t i, int64_t j)
{
    int64_t lo, hi;
    spa_rowctx_local_span(x, j, &lo, &hi);
    return lo <= i && i <= hi;
}

/* Masks key j's scores (col[r * rs], r < rows; row i = ti0 + r) to -inf
 * for the rows that do not attend it: class 1 (the local rule decides per
 * row) outside the rule's span, and under causality the rows i < j. */
static inline void spa_mask_key(const spa_rowctx *x, int causal, int64_t j, int cls, int64_t ti0, int32_t rows,
                                float *col, int64_t rs)
{
    int64_t lo = causal ? j : INT64_MIN / 2, hi = INT64_MAX / 2;
    if (cls) {
        int64_t a, b;
        spa_rowctx_local_span(x, j, &a, &b);
        lo = a > lo ? a : lo, hi = b;
    }
    const int32_t r0 = lo - ti0 <= 0 ? 0 : lo - ti0 < rows ? (int32_t)(lo - ti0) : rows;
    const int32_t r1 = hi - ti0 + 1 <= r0 ? r0 : hi - ti0 + 1 < rows ? (int32_t)(hi - ti0 + 1) : rows;
    for (int32_t r = 0; r < r0; r++) col[r * rs] = -INFINITY;
    for (int32_t r = r1; r < rows; r++) col[r * rs] = -INFINITY;
}

/* The token-level rules of a non-global row i for a key j that is neither
 * gathered nor in a full key block: local, strided, dilated. Causality is
 * the caller's. */
static inline int spa_rowctx_residue(const spa_rowctx *x, int64_t i, int64_t j)
{
    const spa_head_rules *hr = x->hr;
    if (spa_rowctx_local(x, i, j)) return 1;
    if (hr->stride && (i - j) % hr->stride == 0) return 1;
    for (int p = 0; p < hr->ndilated; p++)
        if (spa_dil_pair(hr, p, x->h, i, j)) return 1;
    return 0;
}

/* The last batch's query blocks (plan->batch_task) in stages: stage 0
 * reads no block that batch fetches; stage s >= 1 reads fetched blocks of
 * rank (rank + s) mod P and of nearer ranks only (the full key blocks of
 * its rule found in the batch's runs: its local range and gathered tokens
 * are resident). task[off[s] .. off[s + 1]) is stage s in plan order;
 * task holds the batch's count, off P + 1. Not collective, no MPI. */
spa_err spa_commplan_stages(const spa_config *cfg, const spa_commplan *plan, struct spa_hc *task, int64_t *off);

/* ------------------------------------------------------------------ kernel */

/* Lines for the products to prefetch as they go: the keys, then the
 * values, of pieces [p0, p1) (rows of `row` bytes), then nx regions of
 * memory, spread over units of work in phases: in a phase from line base
 * to line end over nk units, about base + (end - base) j / nk lines have
 * been asked for (to L2) after j units. A chunk runs two: qk (units: keys
 * times D; it steps every 16 dims of a tile of 24 accumulators, after each
 * smaller tile), then pvp (rows times keys times D, after each tile). A
 * burst of prefetches stalls once the line fill buffers are full; spread
 * over the products, the misses overlap them. */
typedef struct spa_pfs {
    const float *const *k, *const *v;
    const int32_t *n;
    int p0, p1, p, kv; /* pieces; the current one; 0 keys, 1 values, 2 regions */
    const char *const *x; /* nx regions of xlen[i] bytes at x[i] */
    const int64_t *xlen;
    int nx, xi;        /* regions; the current one */
    int64_t off, row;  /* bytes into the current piece or region; bytes per key */
    int64_t lines, plines, issued; /* all lines, the pieces' lines, lines asked for */
    int64_t base, end, keys, nk;   /* this phase: lines base .. end over nk units */
} spa_pfs;

/* The stream over pieces [p0, p1) of k, v (n[p] rows of row bytes each),
 * then the nx regions (xlen[i] > 0 bytes at x[i]), in one phase of nk
 * units of work. */
static inline void spa_pfs_init(spa_pfs *f, const float *const *k, const float *const *v, const int32_t *n, int p0,
                                int p1, int64_t row, const char *const *x, const int64_t *xlen, int nx, int64_t nk)
{
    *f = (spa_pfs){.k = k, .v = v, .n = n, .p0 = p0, .p1 = p1, .p = p0, .kv = p0 < p1 ? 0 : 2,
                   .x = x, .xlen = xlen, .nx = nx, .row = row, .nk = nk};
    for (int p = p0; p < p1; p++) f->plines += 2 * ((n[p] * row + 63) / 64);
    f->lines = f->plines;
    for (int i = 0; i < nx; i++) f->lines += (xlen[i] + 63) / 64;
    f->end = f->lines;
}

/* From here on, lines up to end (<= lines) over nk more units of work. */
static inline void spa_pfs_phase(spa_pfs *f, int64_t end, int64_t nk)
{
    f->base = f->issued;
    f->end = end > f->base ? end : f->base;
    f->keys = 0;
    f->nk = nk;
}

/* After r more units of work: the lines due by then. */
static inline void spa_pfs_step(spa_pfs *f, int64_t r)
{
    f->keys += r;
    const int64_t due = f->keys >= f->nk ? f->end : f->base + (f->end - f->base) * f->keys / f->nk;
    for (; f->issued < due; f->issued++) {
        if (f->kv == 2) {
            __builtin_prefetch(f->x[f->xi] + f->off, 0, 2);
            f->off += 64;
            if (f->off >= f->xlen[f->xi]) f->off = 0, f->xi++;
            continue;
        }
        __builtin_prefetch((const char *)(f->kv ? f->v[f->p] : f->k[f->p]) + f->off, 0, 2);
        f->off += 64;
        if (f->off >= f->n[f->p] * f->row) {
            f->off = 0;
            if (++f->p == f->p1) f->p = f->p0, f->kv++;
        }
    }
}

/* The kernel's inner loops for one instruction set (kernel_isa.inc,
 * compiled once per set; microkernel.c picks one at start-up).
 *   qk:     st[nk][ldq] = scale * k[nk][D] . qt[D][ldq]   (ldq % 16 == 0);
 *           cmax != NULL: cmax[ldq] = max(cmax, column maxima of st)
 *   pv:     o[rows][D] += pt[nk][ldq]^T . v[nk][D]        (D % 8 == 0)
 *   vexp:   x[i] = exp(x[i]), relative error < 2e-7, exp(-inf) = 0
 *   colmax: mc[ldq] = column maxima of st[nk][ldq]
 *   expsum: st = exp(st - mc) by column (mc = -inf counts as 0), lc[ldq] =
 *           column sums in ascending key order */
typedef struct spa_kernels {
    const char *name; /* "avx512", "avx2", "generic" */
    int lanes;
    /* pf: lines to prefetch between tiles (NULL: none) */
    void (*qk)(int64_t nk, int32_t D, int32_t ldq, float scale, const float *k, const float *qt, float *st,
               float *cmax, spa_pfs *pf);
    void (*pv)(int64_t nk, int32_t D, int32_t ldq, int32_t rows, const float *pt, const float *v, float *o);
    void (*vexp)(float *x, int64_t len);
    void (*colmax)(const float *st, int32_t nk, int32_t ldq, float *mc);
    void (*expsum)(float *st, int32_t nk, int32_t ldq, const float *mc, float *lc);
    /* expsum with the shift's rounding error: exp(st - mc) to float
     * precision whatever mc is (global rows, whose maxima depend on the
     * split of their keys over ranks) */
    void (*expsum_lo)(float *st, int32_t nk, int32_t ldq, const float *mc, float *lc);
    /* spa_fix_add with take on this instruction set (the same bits on
     * every one): x += round(y * scale), y = 0 */
    int (*fixadd)(int64_t *x, float *y, int64_t len, double scale);
    /* at [D][ldq] = a [rows][lda] transposed, rows..ldq - 1 zero
     * (D % 8 == 0, ldq % 8 == 0) */
    void (*tpose)(const float *a, int64_t lda, int32_t rows, int32_t D, int32_t ldq, float *at);
    /* pv over np pieces of keys: values v[p] ([n[p]][D] rows), keys in
     * piece order down S^T; pf as in qk, stepped after each tile; init:
     * o = P V (o need not be cleared), else o += P V */
    void (*pvp)(int np, const float *const *v, const int32_t *n, int32_t D, int32_t ldq, int32_t rows,
                const float *pt, float *o, spa_pfs *pf, int init);
    /* the sum of x[0 .. len) in 16 double lanes (lane j: x[j], x[j + 16],
     * ...), then lanes 0 .. 15: the same bits on every instruction set */
    double (*osum)(const float *x, int64_t len);
    /* out[r] = acc[r] * inv[r] (rows of D); returns osum(out, rows * D).
     * With D % 16 == 0 and out aligned to the vector, the stores bypass
     * the cache (not read back: the sum comes from the registers) */
    double (*emit)(int32_t rows, int32_t D, const float *acc, const float *inv, float *out);
} spa_kernels;
extern const spa_kernels spa_kernels_generic, spa_kernels_avx2, spa_kernels_avx512;

/* The table chosen once per process: SPA_KERNEL=avx512|avx2|generic when
 * the CPU has it, else the widest the CPU has. *blas (may be NULL) is set
 * with SPA_KERNEL=blas: the products then run on OpenBLAS. */
const spa_kernels *spa_kernels_get(int *blas);

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
    /* Gathered tokens' keys (cfg->kv_tokens): [H][nkv_tokens][D] */
    const float *gk, *gv;
} spa_keysrc;

/* gk, gv [H][nkv_tokens][D]: the gathered tokens' rows of k, v ([H][n][D],
 * the whole sequence in one process). */
void spa_gather_tokens(const spa_config *cfg, const float *k, const float *v, float *gk, float *gv);

/* Per-thread scratch of the kernel, allocated once. */
typedef struct spa_scratch spa_scratch;
spa_scratch *spa_scratch_create(const spa_config *cfg);
void spa_scratch_destroy(spa_scratch *s);
/* Exact mode (spa_ctx_set_exact) on the OpenBLAS path: the residue tiles,
 * whose rows depend on the split over ranks, take their products in loops
 * whose result for a row does not depend on the tile (sgemm's edge blocks
 * do). The register-blocked path is like that already. */
void spa_scratch_set_exact(spa_scratch *s, int on);

/* o[r][c] = sc sum_d a[r][d] b[c][d], each in one fixed order whatever
 * r's and c's places in the call (sgemm's edge blocks are not): exact
 * mode's products on the OpenBLAS path.  a: [tr][D];  b: [nk][D];
 * o: [tr][nk] row-major */
void spa_dots(int32_t tr, int32_t nk, int32_t D, float sc, const float *a, const float *b, float *o);

/* Block c of head h is the one the thread will likely compute next, and
 * its query rows are the bytes at q: the next spa_kernel_block makes that
 * block's rule ahead and prefetches what it reads first (its query rows,
 * keys and values of its random and layout blocks) as it goes. A wrong
 * guess costs the prefetches only: the rule made ahead is used by that
 * block alone. */
enum { SPA_PF_REGIONS = 33 };
void spa_scratch_hint(spa_scratch *s, int32_t h, int64_t c, const float *q, int64_t bytes);

/* Attention of the non-global rows of query block c, head h.
 *   q: [rows][D] rows of block c;  out: [rows][D];  lse: [rows]
 * Keys come from src. Rows that are global tokens are written too but are
 * overwritten by the global-row path. Returns spa_kernels.osum of out
 * (rows * D values), the block's share of the run's checksum. */
double spa_kernel_block(const spa_config *cfg, const spa_keysrc *src, spa_scratch *s, int32_t h,
                        int64_t c, const float *q, float *out, float *lse);

/* Partial attention of spread rows over a key range, for the LSE merge.
 *   qg: [ng][D] queries of head h (tokens gidx[], ascending);
 *   k, v: [len][D] keys j0 .. j0 + len - 1
 *   part: [ng][D + 2] running (max, sum, acc[D]) in double, updated in place
 * c < 0: global rows, which attend every key; c >= 0: non-global rows of
 * spread block c, which follow its rule. Causal masking uses gidx. */
void spa_kernel_global_partial(const spa_config *cfg, spa_scratch *s, int32_t h, int64_t c, const float *qg,
                               const int64_t *gidx, int64_t ng, const float *k, const float *v, int64_t j0,
                               int64_t len, double *part);

/* Exact mode of the spread rows (spa_ctx_set_exact): the same attention,
 * summed so that the split of the keys over ranks cannot change a bit.
 * The keys are cut into units that depend on the block grid only (a key
 * block, in pieces of at most the chunk size), which shards never cut.
 * Pass 1 (mstar NULL): mloc[r] = max(mloc[r], the row's largest score over
 * these keys). Pass 2, with mstar the maxima over every key: each unit's
 * sum of exp(s - m_unit) and of those times v, rescaled by exp(m_unit -
 * mstar) in double, rounded to 128-bit fixed point (units 2^-fl and 2^-fa)
 * and added to acc[r] = (non-finite terms, sum, sum v[D]): integer sums in
 * any order give the same bits. Arguments as spa_kernel_global_partial;
 * acc: [ng][D + 2]. */
typedef __int128 spa_i128;
void spa_kernel_spread_exact(const spa_config *cfg, spa_scratch *s, int32_t h, int64_t c, const float *qg,
                             const int64_t *gidx, int64_t ng, const float *k, const float *v, int64_t j0,
                             int64_t len, const float *mstar, float *mloc, spa_i128 *acc, int fl, int fa);

/* round(t 2^F) as a 128-bit integer, ties away from zero (0 when t 2^F
 * is below 1/2 or t is subnormal); t finite, |t 2^F| below 2^126. From the
 * bits of t: t = +-m 2^(x - 1075) with the 53-bit integer m. */
static inline spa_i128 spa_fix128(double t, int F)
{
    uint64_t b;
    memcpy(&b, &t, sizeof b);
    const int x = (int)((b >> 52) & 0x7ff), sh = x - 1075 + F;
    if (x == 0 || sh < -60) return 0;
    const uint64_t m = (b & ((UINT64_C(1) << 52) - 1)) | (UINT64_C(1) << 52);
    const unsigned __int128 u = sh >= 0 ? (unsigned __int128)m << sh : (m + (UINT64_C(1) << (-sh - 1))) >> -sh;
    return (b >> 63) ? -(spa_i128)u : (spa_i128)u;
}

/* One class of a residue rule (SPEC 1.1): rule 0 is --stride, rule
 * 1 + p the p-th --dilated pair. Its keys are j = k0 + m * M, k0 <= j < k1;
 * every selected row attends all of them (up to causality). */
enum { SPA_RESIDUE_ROWS = 512 };
typedef struct spa_residue {
    int32_t h, rule;
    int64_t k0, M, k1;
} spa_residue;

/* The residue pass of rows[0..nr) (tokens of head h, ascending,
 * nr <= SPA_RESIDUE_ROWS; the kernel cuts them into tiles that share each
 * gathered chunk of class keys)
 * against the class keys of g, except the keys the rows' block pass or an
 * earlier rule takes (S(i) is a set). Rows are row - t0 of the shard:
 *   q: [H][n_own][D] the shard's queries
 *   m, l: [H][n_own] and acc: [H][n_own][D], each row's running partial,
 *   updated in place, in the order of the class's keys. */
void spa_kernel_residue(const spa_config *cfg, const spa_keysrc *src, spa_scratch *s, const spa_residue *g,
                        const int64_t *rows, int32_t nr, const float *q, int64_t t0, int64_t n_own, float *m,
                        float *l, float *acc);

/* The partial (max, sum, acc[D]) of one row, [D + 2] doubles: start at
 * (-inf, 0, 0), merge by log-sum-exp, finish into out [D] and lse (an
 * empty S(i) gives out = 0, lse = -inf). */
void spa_partial_init(double *part, int64_t count, int32_t D);
void spa_partial_merge(double *a, const double *b, int32_t D);
void spa_partial_finish(const double *p, int32_t D, float *out, float *lse);

/* ---------------------------------------------------------------- backward */

/* Where the gradients of a spa_keysrc's keys go: one sink beside each
 * source, laid out as it is, so that a key found in the source at some
 * offset has its dk, dv at the same offset of its sink. The backward
 * kernels add into the sinks (+=); the caller zeroes them and, in a
 * distributed run, sends the halo, fetched and gathered sinks home.
 * A NULL sink discards what would go there. */
typedef struct spa_gradseg {
    float *dk, *dv;      /* parallel to spa_keyseg k, v: row t0 of head 0, the segment's hstride */
} spa_gradseg;

typedef struct spa_gradsink {
    spa_gradseg *seg;    /* [src->nseg] */
    float *fdk, *fdv;    /* [nfetch][B][D], parallel to src->fk, fv */
    float *gdk, *gdv;    /* [H][nkv_tokens][D], parallel to src->gk, gv */
} spa_gradsink;

/* Per-thread scratch of the backward kernels, allocated once. */
typedef struct spa_bscratch spa_bscratch;
spa_bscratch *spa_bscratch_create(const spa_config *cfg);
void spa_bscratch_destroy(spa_bscratch *s);

/* Exact mode (spa_ctx_set_exact): every sink holds int64_t fixed point
 * instead of float (the sink's float pointers then address int64_t
 * storage, element e at float offset 2 e): dk in units of 1 / xk, dv of
 * 1 / xv, spa_backward_spread's dqg of 1 / xq, powers of two that depend
 * on the inputs' maxima and n only, never on P. Each tile's contribution
 * is computed in float into a zeroed buffer, rounded once to fixed point
 * and added; integer sums do not depend on their order, so the results do
 * not depend on how the rows were split between ranks, threads and
 * batches. on = 0 goes back to float sinks. Clears the flag
 * spa_bscratch_bad reads. */
void spa_bscratch_set_exact(spa_bscratch *s, int on, double xk, double xv, double xq);
/* Nonzero when some term since spa_bscratch_set_exact was not finite or
 * too large for the fixed point (the term was left out). */
int spa_bscratch_bad(const spa_bscratch *s);

/* x[i] += round(y[i] * scale) for i < len, summed with wrap-around (no
 * overflow is undefined); a term that is not finite or not below 2^62 in
 * magnitude is left out, and the result is then nonzero. Rounds to
 * nearest, ties to even, without a conversion instruction, so that it
 * vectorizes (kernel_isa.inc compiles it per instruction set as
 * spa_kernels.fixadd): with M = 1.5 * 2^52, the bits of h + M less those
 * of M are round(h) for |h| < 2^51; t is split as hr 2^32 + lo with hr =
 * round(t / 2^32) and lo = t - hr 2^32, which is exact and below 2^31.
 * y[i] is set to 0 once read (the kernels' term buffers start the next
 * tile zeroed, without a pass of their own). */
static inline int spa_fix_add(int64_t *x, float *y, int64_t len, double scale)
{
    const double M = 0x1.8p52;
    const int64_t MB = 0x4338000000000000; /* the bits of M */
    int bad = 0;
#pragma omp simd reduction(| : bad)
    for (int64_t i = 0; i < len; i++) {
        double t = (double)y[i] * scale;
        y[i] = 0.0f;
        const int ok = fabs(t) < 0x1p62; /* false for NaN */
        bad |= !ok;
        t = ok ? t : 0.0;
        const double hm = t * 0x1p-32 + M, hr = hm - M, lo = t - hr * 0x1p32, lm = lo + M;
        int64_t hb, lb;
        memcpy(&hb, &hm, sizeof hb);
        memcpy(&lb, &lm, sizeof lb);
        const uint64_t r = ((uint64_t)(hb - MB) << 32) + (uint64_t)(lb - MB);
        x[i] = (int64_t)((uint64_t)x[i] + r);
    }
    return bad;
}

/* Dl[r] = sum_d dout[r][d] * out[r][d] (FlashAttention-2's D), in double,
 * rounded once.  out, dout: [rows][D];  Dl: [rows] */
void spa_backward_delta(int64_t rows, int32_t D, const float *out, const float *dout, float *Dl);

/* Backward of the block pass of query block c, head h: the keys of the
 * forward's steps 1-3 (local range, gathered tokens, full key blocks), in
 * the forward's canonical order.
 *   q, dout: [rows][D] rows of block c;  lse, Dl: [rows] from the forward
 *   dq: [rows][D], written: this pass's share of dq (0 for global rows
 *       and rows with an empty S(i))
 * Adds every attended key's dk, dv to the sink beside the source the key
 * was found in (sink parallels src). */
void spa_backward_block(const spa_config *cfg, const spa_keysrc *src, const spa_gradsink *sink, spa_bscratch *s,
                        int32_t h, int64_t c, const float *q, const float *dout, const float *lse, const float *Dl,
                        float *dq);

/* Backward of the residue keys (strided, dilated) of the non-global rows
 * of block c, head h: each row's keys that the block pass did not take,
 * rule by rule (stride, then the dilated pairs in order), ascending, each
 * once. Arguments as spa_backward_block; dq is added to. A key the source
 * lacks makes its row's dq NaN. */
void spa_backward_residue(const spa_config *cfg, const spa_keysrc *src, const spa_gradsink *sink, spa_bscratch *s,
                          int32_t h, int64_t c, const float *q, const float *dout, const float *lse,
                          const float *Dl, float *dq);

/* Backward of spread rows (the rows spa_kernel_global_partial serves)
 * against the key range j0 .. j0 + len - 1 of head h.
 *   qg, dog: [ng][D] rows gidx[] (ascending);  lseg, Dlg: [ng]
 *   k, v: [len][D];  dk, dv: [len][D] their gradients, added to
 *   dqg: [ng][D], added to (the share of these keys)
 * c < 0: global rows (every key); c >= 0: non-global rows of spread
 * block c, under its rule. Key chunks are aligned to absolute multiples
 * of the chunk size, as in the forward. */
void spa_backward_spread(const spa_config *cfg, spa_bscratch *s, int32_t h, int64_t c, const float *qg,
                         const float *dog, const float *lseg, const float *Dlg, const int64_t *gidx, int64_t ng,
                         const float *k, const float *v, int64_t j0, int64_t len, float *dqg, float *dk, float *dv);

/* The whole backward on one rank, every key resident (the keysrc of a
 * P = 1 run: the sequence as one segment, the gathered tokens copied).
 *   q, k, v, out, dout, dq, dk, dv: [H][n][D];  lse: [H][n]
 * Heads in parallel on threads (<= 0: OpenMP's default); within a head the
 * query blocks in ascending order, so every key's contributions are summed
 * in the order of the query blocks and the result does not depend on the
 * thread count. Not collective. */
spa_err spa_backward_local(const spa_config *cfg, const float *q, const float *k, const float *v, const float *out,
                           const float *lse, const float *dout, float *dq, float *dk, float *dv, int threads);

/* The dense backward oracle, O(n^2), for tests only: out and lse computed
 * in double from the same rules as spa_reference (reference.c), then
 * FlashAttention-2's equations in double.
 *   q, k, v, dout, dq, dk, dv: [H][n][D] whole tensors */
spa_err spa_reference_grad(const spa_config *cfg, const float *q, const float *k, const float *v,
                           const float *dout, float *dq, float *dk, float *dv);

#endif
