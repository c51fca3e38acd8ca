/* backward.c - the backward pass of block-sparse attention on one rank's
 * memory (no MPI).
 *
 * For j in S(i), with lse and out from the forward pass and s the scale
 * (FlashAttention-2's equations):
 *   P_ij = exp(s q_i.k_j - lse_i)        Dl_i = dout_i . out_i
 *   dS_ij = P_ij (dout_i . v_j - Dl_i)
 *   dq_i = s sum_j dS_ij k_j,  dk_j = s sum_i dS_ij q_i,  dv_j = sum_i P_ij dout_i
 * Recomputing P from lse needs no running softmax, so every key chunk is
 * independent: a tile of rows against a chunk of keys gives the chunk's
 * share of dq and the tile's share of the keys' dk, dv.
 *
 * The keys of a (head, query block) are walked in the forward's canonical
 * order (kernel.c): the local range, the gathered tokens outside it, the
 * full key blocks outside both, each key once and with the forward's class
 * (0: every row attends it up to causality; 1: the local token rule
 * decides per row), in chunks of KC keys found through the same
 * spa_keysrc. Each key's dk, dv go to the spa_gradsink entry beside the
 * source entry it was found in (own shard, halo, fetched block, gathered
 * copy), so a distributed runtime can send every sink home.
 *
 * Five products per tile and chunk: S = s Q K^T, dP = dO V^T,
 * dq += s dS K, dK = s dS^T Q, dV = P^T dO. When D % 8 == 0 they run on
 * the forward's register-blocked loops (microkernel.c), on transposed
 * scores read from the keys where they lie: qk gives S^T and dP^T, pv
 * gives dq, and pv with the query rows as the summed index gives dK and
 * dV straight into the sinks, after a transpose of P and dS (the
 * transposes cost less than OpenBLAS's packing at these shapes, where it
 * ran at a quarter of the loops' rate). Otherwise, or with
 * SPA_KERNEL=blas, the chunk's keys are copied into one buffer for
 * OpenBLAS sgemm and dK, dV added to the sinks piece by piece.
 *
 * The residue keys (strided, dilated) are few per row and scattered, so
 * they are taken pair by pair (10 D flops each, none wasted) rather than
 * in B x B tiles that use one key per row. The spread rows (global rows,
 * rows of blocks that attend most of the sequence) run against a key
 * range, as in spa_kernel_global_partial, so a distributed run can give
 * each rank its own shard of their keys.
 *
 * Determinism: a kernel call sums in a fixed order; spa_backward_local
 * runs each head's query blocks in ascending order on one thread, so each
 * key's contributions are summed in the order of the query blocks and the
 * result does not depend on the thread count. In exact mode
 * (spa_bscratch_set_exact) the sinks are int64_t fixed point: each tile's
 * dK, dV (each residue pair's) is computed into a zeroed buffer, whose
 * terms depend on the tile and the key only, then rounded once and added,
 * so the sums do not depend on P either.
 */
#include "spa_impl.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

void openblas_set_num_threads(int);

enum { SPA_BKC = 512, SPA_BQT = 64, SPA_TLD = SPA_BKC + 16 };

/* One piece of a chunk: cnt consecutive keys in resident memory, and
 * where their gradients go. */
typedef struct bpiece {
    const float *k, *v;
    float *dk, *dv;
    int32_t cnt;
} bpiece;

struct spa_bscratch {
    int32_t D, rows;       /* rows = max(B, QT), rounded up to 16 */
    int fast;              /* register-blocked products (D % 8 == 0, not SPA_KERNEL=blas) */
    const spa_kernels *K;  /* their instruction set */
    float *kc, *vc;        /* [KC][D] the chunk's keys and values (OpenBLAS path) */
    float *dkc, *dvc;      /* [KC][D] their gradients from this tile (OpenBLAS path) */
    float *p, *dp;         /* [rows][KC] or [KC][ldq]: scores then P; dout.v then dS */
    float *tp, *tds;       /* [rows][TLD] P and dS row-major (fast path) */
    float *qt, *dot;       /* [D][ldq] the tile's q and dout transposed, zero-padded (fast path) */
    float *lsx, *dlx;      /* [rows] lse (+inf: the row takes no key here) and Dl, padded */
    int64_t *kj;           /* [KC] token of each key */
    unsigned char *kcls;   /* [KC] 1 = the local token rule decides per row */
    int any_cls, nk, npiece;
    bpiece *pc;            /* [KC] */
    const float **pk;      /* [KC] the pieces' keys and counts, as pvp takes them */
    int32_t *pn;
    unsigned char *skip;   /* [rows] global row or empty S(i): no block-pass key */
    float *nan_row;        /* [D] NaN: stands for a key the plan failed to bring */
    int exact, ew, bad;    /* int64_t sinks (ew = 2 floats an element); a term left out */
    double xk, xv, xq;     /* exact: the fixed-point scales of dk, dv and the spread rows' dq */
    float *xtile;          /* [rows][D] exact: a spread tile's dq terms of one unit, zeroed */
    float *rk, *rv;        /* [D] one residue pair's dk, dv terms (exact) */
    spa_patws *w;
    spa_rowctx x;
    /* the tile of the current call: rows ti0 .. ti0 + tr - 1 (block pass) */
    int64_t ti0;
    int32_t tr, ldq;
    const float *q, *dout;
    float *dq;
    /* spa_backward_local's rows of the spread path: [rows][D] x3, [rows] x2, [rows] */
    float *sq, *sdo, *sdq, *slse, *sdl;
    int64_t *sidx;
};

spa_bscratch *spa_bscratch_create(const spa_config *cfg)
{
    spa_bscratch *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    const int32_t D = cfg->dim;
    s->D = D;
    s->rows = ((cfg->block > SPA_BQT ? cfg->block : SPA_BQT) + 15) / 16 * 16;
    int blas;
    s->K = spa_kernels_get(&blas);
    s->fast = D % 8 == 0 && !blas;
    const size_t kd = (size_t)SPA_BKC * D * sizeof(float), rk = (size_t)s->rows * SPA_BKC * sizeof(float);
    const size_t rd = (size_t)s->rows * D * sizeof(float), r1 = (size_t)s->rows * sizeof(float);
    s->kc = spa_alloc(kd), s->vc = spa_alloc(kd), s->dkc = spa_alloc(kd), s->dvc = spa_alloc(kd);
    const size_t rt = (size_t)s->rows * SPA_TLD * sizeof(float);
    s->p = spa_alloc(rk), s->dp = spa_alloc(rk), s->tp = spa_alloc(rt), s->tds = spa_alloc(rt);
    s->qt = spa_alloc(rd), s->dot = spa_alloc(rd), s->lsx = spa_alloc(r1), s->dlx = spa_alloc(r1);
    s->kj = spa_alloc((size_t)SPA_BKC * sizeof(int64_t));
    s->kcls = spa_alloc(SPA_BKC);
    s->pc = spa_alloc((size_t)SPA_BKC * sizeof(bpiece));
    s->pk = spa_alloc((size_t)SPA_BKC * sizeof(float *));
    s->pn = spa_alloc((size_t)SPA_BKC * sizeof(int32_t));
    s->skip = spa_alloc((size_t)s->rows);
    s->nan_row = spa_alloc((size_t)D * sizeof(float));
    s->rk = spa_alloc((size_t)D * sizeof(float)), s->rv = spa_alloc((size_t)D * sizeof(float));
    s->xtile = spa_alloc(rd);
    s->ew = 1;
    s->w = spa_patws_create(cfg);
    s->sq = spa_alloc(rd), s->sdo = spa_alloc(rd), s->sdq = spa_alloc(rd);
    s->slse = spa_alloc(r1), s->sdl = spa_alloc(r1);
    s->sidx = spa_alloc((size_t)s->rows * sizeof(int64_t));
    if (!s->kc || !s->vc || !s->dkc || !s->dvc || !s->p || !s->dp || !s->tp || !s->tds || !s->qt || !s->dot ||
        !s->lsx || !s->dlx || !s->kj || !s->kcls || !s->pc || !s->pk || !s->pn || !s->skip || !s->nan_row || !s->rk || !s->rv ||
        !s->xtile || !s->w || !s->sq || !s->sdo ||
        !s->sdq || !s->slse || !s->sdl || !s->sidx) {
        spa_bscratch_destroy(s);
        return NULL;
    }
    for (int32_t d = 0; d < D; d++) s->nan_row[d] = NAN;
    memset(s->dkc, 0, kd), memset(s->dvc, 0, kd); /* exact mode's term buffers start zeroed */
    memset(s->xtile, 0, rd);
    return s;
}

void spa_bscratch_destroy(spa_bscratch *s)
{
    if (!s) return;
    spa_free(s->kc), spa_free(s->vc), spa_free(s->dkc), spa_free(s->dvc);
    spa_free(s->p), spa_free(s->dp), spa_free(s->tp), spa_free(s->tds);
    spa_free(s->qt), spa_free(s->dot), spa_free(s->lsx), spa_free(s->dlx);
    spa_free(s->kj), spa_free(s->kcls), spa_free(s->pc), spa_free(s->pk), spa_free(s->pn), spa_free(s->skip), spa_free(s->nan_row);
    spa_free(s->rk), spa_free(s->rv), spa_free(s->xtile);
    spa_patws_destroy(s->w);
    spa_free(s->sq), spa_free(s->sdo), spa_free(s->sdq), spa_free(s->slse), spa_free(s->sdl), spa_free(s->sidx);
    free(s);
}

void spa_bscratch_set_exact(spa_bscratch *s, int on, double xk, double xv, double xq)
{
    s->exact = on != 0, s->ew = on ? 2 : 1, s->bad = 0;
    s->xk = xk, s->xv = xv, s->xq = xq;
}

int spa_bscratch_bad(const spa_bscratch *s) { return s->bad; }

/* Exact mode: a term buffer y[len] rounded into the sink x (int64_t), and
 * zeroed for the next tile. */
static inline void fix_into(spa_bscratch *s, float *x, float *y, int64_t len, double scale)
{
    s->bad |= s->K->fixadd((int64_t *)(void *)x, y, len, scale);
}

void spa_backward_delta(int64_t rows, int32_t D, const float *out, const float *dout, float *Dl)
{
    for (int64_t r = 0; r < rows; r++) {
        double acc = 0.0;
        for (int32_t d = 0; d < D; d++) acc += (double)dout[r * D + d] * (double)out[r * D + d];
        Dl[r] = (float)acc;
    }
}

/* Finds token t of head h as kernel.c's locate does (resident segments,
 * then the fetched blocks), with its gradients at the same place of the
 * sink. Returns the number of contiguous rows there (up to want), 0 when
 * the source lacks t. */
static int64_t find_key(const spa_config *cfg, const spa_keysrc *src, const spa_gradsink *sink, int ew, int32_t h,
                        int64_t t, int64_t want, bpiece *r)
{
    const int32_t D = cfg->dim;
    for (int i = 0; i < src->nseg; i++) {
        const spa_keyseg *g = &src->seg[i];
        if (t < g->t0 || t >= g->t1) continue;
        const int64_t off = (int64_t)h * g->hstride + (t - g->t0) * D;
        r->k = g->k + off, r->v = g->v + off;
        r->dk = sink->seg[i].dk ? sink->seg[i].dk + off * ew : NULL;
        r->dv = sink->seg[i].dv ? sink->seg[i].dv + off * ew : NULL;
        return g->t1 - t < want ? g->t1 - t : want;
    }
    if (!src->fhead_off) return 0;
    const int64_t B = cfg->block, b = t / B, lo0 = src->fhead_off[h], hi0 = src->fhead_off[h + 1];
    const int64_t lo = lo0 + spa_lower_bound(src->fblock + lo0, hi0 - lo0, b);
    if (lo >= hi0 || src->fblock[lo] != b) return 0;
    const int64_t off = (lo * B + (t - b * B)) * D, left = (b + 1) * B - t;
    r->k = src->fk + off, r->v = src->fv + off;
    r->dk = sink->fdk ? sink->fdk + off * ew : NULL;
    r->dv = sink->fdv ? sink->fdv + off * ew : NULL;
    return left < want ? left : want;
}

/* ------------------------------------------------------------ one chunk */

/* Sets the masked scores of the chunk to -inf. Score (r, c) of row r and
 * key c sits at S[r * rs + c * cs]: rs = nk, cs = 1 row-major (OpenBLAS
 * path), rs = 1, cs = ldq transposed (fast path). */
typedef void (*mask_fn)(const spa_config *cfg, const spa_bscratch *s, float *S, int64_t rs, int64_t cs,
                        const void *arg);

/* The block pass's mask of rows ti0 + r: class-0 keys by causality alone,
 * class-1 keys (a radius rule's range) by the local rule too. */
static void mask_block(const spa_config *cfg, const spa_bscratch *s, float *S, int64_t rs, int64_t cs,
                       const void *arg)
{
    (void)arg;
    const int32_t nk = s->nk, tr = s->tr;
    const int64_t ti0 = s->ti0;
    if (!cfg->causal && !s->any_cls) return;
    for (int32_t c = 0; c < nk; c++) spa_mask_key(&s->x, cfg->causal, s->kj[c], s->kcls[c], ti0, tr, S + c * cs, rs);
}

/* Sets up the tile: rows [tr] of q, dout, lse, Dl (row-major [tr][D]),
 * dq to add to; a row with skip set or lse = -inf takes no key here. */
static void tile_begin(spa_bscratch *s, int32_t tr, const float *q, const float *dout, const float *lse,
                       const float *Dl, const unsigned char *skip, float *dq)
{
    const int32_t D = s->D, ldq = (tr + 15) / 16 * 16;
    s->tr = tr, s->ldq = ldq;
    s->q = q, s->dout = dout, s->dq = dq;
    /* lsx = +inf makes P = exp(S - lsx) = 0 on the row (and on padding) */
    for (int32_t r = 0; r < ldq; r++) {
        const int off = r >= tr || (skip && skip[r]) || lse[r] == -INFINITY;
        s->lsx[r] = off ? INFINITY : lse[r];
        s->dlx[r] = r < tr ? Dl[r] : 0.0f;
    }
    if (s->fast) {
        s->K->tpose(q, D, tr, D, ldq, s->qt);
        s->K->tpose(dout, D, tr, D, ldq, s->dot);
    }
}

/* The chunk's sink adds: x[len] += y[len] */
static inline void add_to(float *x, const float *y, int64_t len)
{
#pragma omp simd
    for (int64_t i = 0; i < len; i++) x[i] += y[i];
}

/* The backward of the tile's rows against the chunk's keys (s->pc[0 ..
 * npiece), s->nk keys), on OpenBLAS (any D).
 *   q, dout: [tr][D];  kc, vc: [nk][D] the pieces copied together
 * pass 1: S = s Q K^T, masked to -inf off S(i)
 * pass 2: P = exp(S - lse) (0 for rows without keys here)
 * pass 3: dP = dout V^T
 * pass 4: dS = P (dP - Dl)
 * pass 5: dq += s dS K
 * pass 6: dK = s dS^T Q, dV = P^T dout, added to the sinks piece by piece */
static void chunk_blas(const spa_config *cfg, spa_bscratch *s, mask_fn mask, const void *marg)
{
    const int32_t D = s->D, nk = s->nk, tr = s->tr;
    const float sc = cfg->scale;
    float *P = s->p, *dP = s->dp;
    for (int p = 0, j = 0; p < s->npiece; j += s->pc[p].cnt, p++) {
        memcpy(s->kc + (int64_t)j * D, s->pc[p].k, (size_t)s->pc[p].cnt * D * sizeof(float));
        memcpy(s->vc + (int64_t)j * D, s->pc[p].v, (size_t)s->pc[p].cnt * D * sizeof(float));
    }

    /* pass 1 (exact: passes 1, 3 and 6 in loops whose results do not depend
     * on a key's place in the chunk, as sgemm's edge blocks make them) */
    if (s->exact) spa_dots(tr, nk, D, sc, s->q, s->kc, P);
    else cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tr, nk, D, sc, s->q, D, s->kc, D, 0.0f, P, nk);
    mask(cfg, s, P, nk, 1, marg);

    /* pass 2 */
    for (int32_t r = 0; r < tr; r++) {
        float *row = P + (int64_t)r * nk;
        const float l = s->lsx[r];
        for (int32_t c = 0; c < nk; c++) row[c] -= l;
        spa_vexp(row, nk);
    }

    /* pass 3 */
    if (s->exact) spa_dots(tr, nk, D, 1.0f, s->dout, s->vc, dP);
    else cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tr, nk, D, 1.0f, s->dout, D, s->vc, D, 0.0f, dP, nk);

    /* pass 4 */
    for (int32_t r = 0; r < tr; r++) {
        const float *pr = P + (int64_t)r * nk, dl = s->dlx[r];
        float *dr = dP + (int64_t)r * nk;
#pragma omp simd
        for (int32_t c = 0; c < nk; c++) dr[c] = pr[c] * (dr[c] - dl);
    }

    /* pass 5 */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, tr, D, nk, sc, dP, nk, s->kc, D, 1.0f, s->dq, D);

    /* pass 6 */
    if (s->exact) {
        for (int32_t c = 0; c < nk; c++) {
            float *ok = s->dkc + (int64_t)c * D, *ov = s->dvc + (int64_t)c * D;
            memset(ok, 0, (size_t)D * sizeof(float)), memset(ov, 0, (size_t)D * sizeof(float));
            for (int32_t r = 0; r < tr; r++) {
                const float a = sc * dP[(int64_t)r * nk + c], b = P[(int64_t)r * nk + c];
                const float *qr = s->q + (int64_t)r * D, *dr = s->dout + (int64_t)r * D;
#pragma omp simd
                for (int32_t d = 0; d < D; d++) ok[d] += a * qr[d], ov[d] += b * dr[d];
            }
        }
    } else {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, D, tr, sc, dP, nk, s->q, D, 0.0f, s->dkc, D);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, D, tr, 1.0f, P, nk, s->dout, D, 0.0f, s->dvc, D);
    }
    for (int p = 0, j = 0; p < s->npiece; j += s->pc[p].cnt, p++) {
        const bpiece *pc = &s->pc[p];
        const int64_t len = (int64_t)pc->cnt * D;
        if (s->exact) {
            if (pc->dk) fix_into(s, pc->dk, s->dkc + (int64_t)j * D, len, s->xk);
            if (pc->dv) fix_into(s, pc->dv, s->dvc + (int64_t)j * D, len, s->xv);
            continue;
        }
        if (pc->dk) add_to(pc->dk, s->dkc + (int64_t)j * D, len);
        if (pc->dv) add_to(pc->dv, s->dvc + (int64_t)j * D, len);
    }
}

/* The same on transposed scores with the register-blocked products of
 * microkernel.c (D % 8 == 0), reading the pieces where they lie.
 *   qt, dot: [D][ldq];  S^T, dP^T: [nk][ldq];  P, dS: [tr][TLD] row-major
 * pass 1: S^T = s K Q^T, masked
 * pass 2: P^T = exp(S^T - lse) by column
 * pass 3: dP^T = V dout^T
 * pass 4: dS^T = s P^T (dP^T - Dl), scale folded in
 * pass 5: dq += dS K
 * pass 6: P, dS transposed; dK += dS^T Q, dV += P^T dout straight into
 *         the sinks, each key's sum continuing from the sink's value
 *         (exact: into zeroed [nk][D] buffers, then rounded into them) */
static void chunk_fast(const spa_config *cfg, spa_bscratch *s, mask_fn mask, const void *marg)
{
    const int32_t D = s->D, nk = s->nk, tr = s->tr, ldq = s->ldq;
    const float sc = cfg->scale;
    float *St = s->p, *dPt = s->dp;

    /* pass 1 */
    for (int p = 0, j = 0; p < s->npiece; j += s->pc[p].cnt, p++)
        s->K->qk(s->pc[p].cnt, D, ldq, sc, s->pc[p].k, s->qt, St + (int64_t)j * ldq, NULL, NULL);
    mask(cfg, s, St, 1, ldq, marg);

    /* pass 2 */
    for (int32_t c = 0; c < nk; c++) {
        float *row = St + (int64_t)c * ldq;
#pragma omp simd
        for (int32_t r = 0; r < ldq; r++) row[r] -= s->lsx[r];
    }
    s->K->vexp(St, (int64_t)nk * ldq);

    /* pass 3 */
    for (int p = 0, j = 0; p < s->npiece; j += s->pc[p].cnt, p++)
        s->K->qk(s->pc[p].cnt, D, ldq, 1.0f, s->pc[p].v, s->dot, dPt + (int64_t)j * ldq, NULL, NULL);

    /* pass 4 */
    for (int32_t c = 0; c < nk; c++) {
        const float *pr = St + (int64_t)c * ldq;
        float *dr = dPt + (int64_t)c * ldq;
#pragma omp simd
        for (int32_t r = 0; r < ldq; r++) dr[r] = sc * pr[r] * (dr[r] - s->dlx[r]);
    }

    /* pass 5: over all the pieces at once, the dq tile in registers (keys
     * in order: the same sums as piece by piece) */
    for (int p = 0; p < s->npiece; p++) s->pk[p] = s->pc[p].k, s->pn[p] = s->pc[p].cnt;
    s->K->pvp(s->npiece, s->pk, s->pn, D, ldq, tr, dPt, s->dq, NULL, 0);

    /* pass 6: transposes in tiles of 16 x 16 (stores contiguous, rows TLD
     * apart, not a power of two), then one product per piece with the
     * query rows as the summed index */
    for (int32_t c0 = 0; c0 < nk; c0 += 16)
        for (int32_t r0 = 0; r0 < tr; r0 += 16) {
            const int32_t c1 = c0 + 16 < nk ? c0 + 16 : nk, r1 = r0 + 16 < tr ? r0 + 16 : tr;
            for (int32_t r = r0; r < r1; r++) {
                float *tp = s->tp + (int64_t)r * SPA_TLD, *tds = s->tds + (int64_t)r * SPA_TLD;
                for (int32_t c = c0; c < c1; c++) {
                    tp[c] = St[(int64_t)c * ldq + r];
                    tds[c] = dPt[(int64_t)c * ldq + r];
                }
            }
        }
    for (int p = 0, j = 0; p < s->npiece; j += s->pc[p].cnt, p++) {
        const bpiece *pc = &s->pc[p];
        if (!s->exact) {
            if (pc->dk) s->K->pv(tr, D, SPA_TLD, pc->cnt, s->tds + j, s->q, pc->dk);
            if (pc->dv) s->K->pv(tr, D, SPA_TLD, pc->cnt, s->tp + j, s->dout, pc->dv);
            continue;
        }
        const int64_t len = (int64_t)pc->cnt * D;
        float *tk = s->dkc + (int64_t)j * D, *tv = s->dvc + (int64_t)j * D;
        if (pc->dk) { /* tk, tv are zero: fix_into leaves them so */
            s->K->pv(tr, D, SPA_TLD, pc->cnt, s->tds + j, s->q, tk);
            fix_into(s, pc->dk, tk, len, s->xk);
        }
        if (pc->dv) {
            s->K->pv(tr, D, SPA_TLD, pc->cnt, s->tp + j, s->dout, tv);
            fix_into(s, pc->dv, tv, len, s->xv);
        }
    }
}

/* Runs the chunk and empties it. */
static void run_chunk(const spa_config *cfg, spa_bscratch *s, mask_fn mask, const void *marg)
{
    if (s->nk == 0) return;
    if (s->fast) chunk_fast(cfg, s, mask, marg);
    else chunk_blas(cfg, s, mask, marg);
    s->nk = 0;
    s->npiece = 0;
    s->any_cls = 0;
}

static void flush_chunk(const spa_config *cfg, spa_bscratch *s) { run_chunk(cfg, s, mask_block, NULL); }

/* ------------------------------------------------------------ key walk */

/* Appends cnt keys (tokens t0..) of piece r to the chunk, merged with the
 * previous piece when adjacent in memory (sources and sinks both). */
static void add_keys(spa_bscratch *s, const bpiece *r, int64_t t0, int32_t cnt, int cls)
{
    const int32_t D = s->D;
    bpiece *last = s->npiece ? &s->pc[s->npiece - 1] : NULL;
    const int64_t o = last ? (int64_t)last->cnt * D : 0, os = o * s->ew;
    if (last && last->k + o == r->k && last->v + o == r->v && (last->dk ? last->dk + os == r->dk : !r->dk) &&
        (last->dv ? last->dv + os == r->dv : !r->dv)) {
        last->cnt += cnt;
    } else {
        s->pc[s->npiece] = *r;
        s->pc[s->npiece++].cnt = cnt;
    }
    for (int32_t x = 0; x < cnt; x++) s->kj[s->nk + x] = t0 + x;
    memset(s->kcls + s->nk, cls, (size_t)cnt);
    s->any_cls |= cls;
    s->nk += cnt;
}

typedef struct bjob {
    const spa_config *cfg;
    const spa_keysrc *src;
    const spa_gradsink *sink;
    spa_bscratch *s;
    int32_t h;
} bjob;

/* Appends keys [t0, t1) of head h, all of class cls, flushing when the
 * chunk is full. */
static void append_range(bjob *job, int64_t t0, int64_t t1, int cls)
{
    spa_bscratch *s = job->s;
    while (t0 < t1) {
        if (s->nk == SPA_BKC) flush_chunk(job->cfg, s);
        bpiece r;
        const int64_t want = t1 - t0 < SPA_BKC - s->nk ? t1 - t0 : SPA_BKC - s->nk;
        const int64_t got = find_key(job->cfg, job->src, job->sink, s->ew, job->h, t0, want, &r);
        if (got == 0) { /* a key the plan did not bring: poison the rows loudly */
            r = (bpiece){s->nan_row, s->nan_row, NULL, NULL, 1};
            add_keys(s, &r, t0, 1, 0);
            t0++;
            continue;
        }
        add_keys(s, &r, t0, (int32_t)got, cls);
        t0 += got;
    }
}

/* Appends [t0, t1) one key block at a time, as kernel.c's append_keys:
 * tokens gathered for the head are skipped (they come in step 2) or, with
 * keep, appended as class 0; in a class-1 range, keys of full key blocks
 * are class 0. */
static void append_keys(bjob *job, int64_t t0, int64_t t1, int cls, int keep)
{
    const spa_config *cfg = job->cfg;
    const spa_rowctx *x = &job->s->x;
    int64_t g = spa_lower_bound(cfg->kv_tokens, cfg->nkv_tokens, t0);
    while (t0 < t1) {
        while (g < cfg->nkv_tokens && cfg->kv_tokens[g] < t1 &&
               !spa_pattern_is_gathered(cfg, job->h, cfg->kv_tokens[g]))
            g++;
        int64_t e = g < cfg->nkv_tokens && cfg->kv_tokens[g] < t1 ? cfg->kv_tokens[g] : t1;
        const int64_t bend = (t0 / cfg->block + 1) * cfg->block;
        if (e > bend) e = bend;
        int c = cls;
        if (c) {
            const int64_t k = spa_rowctx_find(x, t0 / cfg->block);
            c = !(k >= 0 && x->kfull[k]);
        }
        append_range(job, t0, e, c);
        t0 = e;
        if (g < cfg->nkv_tokens && t0 == cfg->kv_tokens[g]) {
            if (keep) append_range(job, t0, t0 + 1, 0);
            t0++, g++;
        }
    }
}

/* The tile of block c's rows; the block pass leaves out global rows (the
 * spread path's) and rows with an empty S(i). */
static void set_tile(spa_bscratch *s, const spa_config *cfg, int64_t c, const float *q, const float *dout,
                     const float *lse, const float *Dl, float *dq)
{
    const int64_t B = cfg->block, ti0 = c * B;
    const int32_t tr = (int32_t)(spa_block_end(cfg, c) - ti0);
    s->ti0 = ti0;
    for (int32_t r = 0; r < tr; r++) s->skip[r] = spa_pattern_is_global(cfg, ti0 + r) || lse[r] == -INFINITY;
    tile_begin(s, tr, q, dout, lse, Dl, s->skip, dq);
}

void spa_backward_block(const spa_config *cfg, const spa_keysrc *src, const spa_gradsink *sink, spa_bscratch *s,
                        int32_t h, int64_t c, const float *q, const float *dout, const float *lse, const float *Dl,
                        float *dq)
{
    /* q, dout, dq: [rows][D] rows of block c;  lse, Dl: [rows]
     * keys: the forward's steps 1-3, KC at a time, each once */
    const int32_t D = cfg->dim;
    const int64_t B = cfg->block, n = cfg->n, ti0 = c * B;
    bjob job = {cfg, src, sink, s, h};
    spa_rowctx_init(&s->x, cfg, h, c, s->w);
    const spa_rowctx *x = &s->x;
    set_tile(s, cfg, c, q, dout, lse, Dl, dq);
    memset(dq, 0, (size_t)s->tr * D * sizeof(float));
    s->nk = 0, s->npiece = 0, s->any_cls = 0;

    /* 1. local range: the whole window for every row in block mode; the
     *    token rule decides in radius mode */
    if (x->hr->radius >= 0) append_keys(&job, x->j0, x->j1, 1, 1);
    else append_range(&job, x->j0, x->j1, 0);

    /* 2. gathered tokens outside the local range (causal: not after the last row) */
    const int64_t jmax = cfg->causal ? ti0 + s->tr : n;
    for (int64_t g = 0; g < cfg->nkv_tokens; g++) {
        const int64_t t = cfg->kv_tokens[g];
        if (t >= jmax) break;
        if ((t >= x->j0 && t < x->j1) || !spa_pattern_is_gathered(cfg, h, t)) continue;
        if (s->nk == SPA_BKC) flush_chunk(cfg, s);
        const int64_t off = ((int64_t)h * cfg->nkv_tokens + g) * D;
        const bpiece r = {src->gk + off, src->gv + off, sink->gdk ? sink->gdk + off * s->ew : NULL,
                          sink->gdv ? sink->gdv + off * s->ew : NULL, 1};
        add_keys(s, &r, t, 1, 0);
    }

    /* 3. full key blocks (random, layout), ascending, without the local range */
    for (int64_t k = 0; k < x->nkb; k++) {
        if (!x->kfull[k]) continue;
        const int64_t b0 = (int64_t)x->kb[k] * B, b1 = b0 + B < jmax ? b0 + B : jmax;
        if (b0 < x->j0) append_keys(&job, b0, b1 < x->j0 ? b1 : x->j0, 0, 0);
        if (b1 > x->j1) append_keys(&job, b0 > x->j1 ? b0 : x->j1, b1, 0, 0);
    }
    flush_chunk(cfg, s);
}

/* ------------------------------------------------------------ residue */

/* One pair (i, j) of the residue: the 10 D flops of the equations. */
static inline void residue_pair(spa_bscratch *s, float sc, const float *qi, const float *doi, float lse, float dl,
                                float *dqi, const bpiece *r)
{
    const int32_t D = s->D;
    /* both dots in 8 partial sums, summed in a fixed order: vector code
     * without letting the compiler reorder */
    const float *kj = r->k, *vj = r->v;
    float aq[8] = {0}, av[8] = {0}, qk = 0.0f, dv = 0.0f;
    int32_t d0 = 0;
    for (; d0 + 8 <= D; d0 += 8)
        for (int u = 0; u < 8; u++) {
            aq[u] += qi[d0 + u] * kj[d0 + u];
            av[u] += doi[d0 + u] * vj[d0 + u];
        }
    for (int u = 0; u < 8; u++) qk += aq[u], dv += av[u];
    for (; d0 < D; d0++) qk += qi[d0] * kj[d0], dv += doi[d0] * vj[d0];
    const float p = expf(sc * qk - lse), ds = p * (dv - dl), g = sc * ds;
#pragma omp simd
    for (int32_t d = 0; d < D; d++) dqi[d] += g * kj[d];
    if (s->exact) { /* the pair's terms, rounded into the sinks */
        for (int32_t d = 0; d < D; d++) s->rk[d] = g * qi[d], s->rv[d] = p * doi[d];
        if (r->dk) fix_into(s, r->dk, s->rk, D, s->xk);
        if (r->dv) fix_into(s, r->dv, s->rv, D, s->xv);
        return;
    }
    if (r->dk) {
        float *dkj = r->dk;
#pragma omp simd
        for (int32_t d = 0; d < D; d++) dkj[d] += g * qi[d];
    }
    if (r->dv) {
        float *dvj = r->dv;
#pragma omp simd
        for (int32_t d = 0; d < D; d++) dvj[d] += p * doi[d];
    }
}

/* Key j is the residue's for row i: not taken by the block pass (gathered,
 * the row's local rule, a full key block). */
static inline int residue_new(const spa_config *cfg, const spa_rowctx *x, int64_t i, int64_t j)
{
    if (spa_rowctx_local(x, i, j) || spa_pattern_is_gathered(cfg, x->h, j)) return 0;
    const int64_t k = x->nkb ? spa_rowctx_find(x, j / cfg->block) : -1;
    return !(k >= 0 && x->kfull[k]);
}

void spa_backward_residue(const spa_config *cfg, const spa_keysrc *src, const spa_gradsink *sink, spa_bscratch *s,
                          int32_t h, int64_t c, const float *q, const float *dout, const float *lse,
                          const float *Dl, float *dq)
{
    /* q, dout, dq: [rows][D] rows of block c;  lse, Dl: [rows]
     * row i's keys: stride j = i (mod S), then each dilated pair's
     * selected keys of i's segment, ascending, without the block pass's
     * keys and an earlier rule's */
    const spa_head_rules *hr = &cfg->hr[h];
    if (!hr->stride && !hr->ndilated) return;
    const int32_t D = cfg->dim;
    const int64_t n = cfg->n;
    const float sc = cfg->scale;
    const int64_t B = cfg->block, ti0 = c * B;
    const int32_t tr = (int32_t)(spa_block_end(cfg, c) - ti0);
    spa_rowctx_init(&s->x, cfg, h, c, s->w);
    const spa_rowctx *x = &s->x;
    for (int32_t r = 0; r < tr; r++) {
        const int64_t i = ti0 + r, lim = cfg->causal ? i + 1 : n; /* keys j < lim */
        if (lse[r] == -INFINITY || spa_pattern_is_global(cfg, i)) continue; /* empty S(i); the spread path's */
        const float *qi = q + (int64_t)r * D, *doi = dout + (int64_t)r * D;
        float *dqi = dq + (int64_t)r * D;
        int lost = 0;
        bpiece kr;
        if (hr->stride)
            for (int64_t j = i % hr->stride; j < lim; j += hr->stride) {
                if (!residue_new(cfg, x, i, j)) continue;
                if (find_key(cfg, src, sink, s->ew, h, j, 1, &kr))
                    residue_pair(s, sc, qi, doi, lse[r], Dl[r], dqi, &kr);
                else lost = 1;
            }
        for (int p = 0; p < hr->ndilated; p++) {
            if (!spa_dil_sel(hr, p, h, i)) continue;
            const int64_t sw = hr->dil_w[p], rp = hr->dil_r[p], sa = i / sw * sw, se = sa + sw < lim ? sa + sw : lim;
            for (int64_t j = sa + (int64_t)h % rp; j < se; j += rp) {
                if (!residue_new(cfg, x, i, j) || (hr->stride && (i - j) % hr->stride == 0)) continue;
                int dup = 0;
                for (int e = 0; e < p && !dup; e++) dup = spa_dil_pair(hr, e, h, i, j);
                if (dup) continue;
                if (find_key(cfg, src, sink, s->ew, h, j, 1, &kr))
                    residue_pair(s, sc, qi, doi, lse[r], Dl[r], dqi, &kr);
                else lost = 1;
            }
        }
        if (lost) /* a key the plan did not bring: poison the row loudly */
            for (int32_t d = 0; d < D; d++) dqi[d] = NAN;
    }
}

/* ------------------------------------------------------------ spread rows */

typedef struct spread_mask {
    const spa_rowctx *x; /* NULL: global rows */
    const int64_t *gi;
    int64_t a;           /* the chunk's first key */
} spread_mask;

/* The mask of spread rows gi[0..tr) against keys a .. a + nk - 1: global
 * rows attend every key (up to causality), rows of a spread block follow
 * its rule. */
static void mask_spread(const spa_config *cfg, const spa_bscratch *s, float *S, int64_t rs, int64_t cs,
                        const void *arg)
{
    const spread_mask *m = arg;
    const spa_rowctx *x = m->x;
    const int32_t nk = s->nk, tr = s->tr;
    if (!x && !cfg->causal) return;
    for (int32_t c = 0; c < nk; c++) {
        const int64_t j = m->a + c, kb = x ? spa_rowctx_find(x, j / cfg->block) : -1;
        const int every = !x || spa_pattern_is_gathered(cfg, x->h, j) || (kb >= 0 && x->kfull[kb]);
        float *col = S + c * cs;
        for (int32_t r = 0; r < tr; r++)
            if ((cfg->causal && j > m->gi[r]) || (!every && !spa_rowctx_residue(x, m->gi[r], j)))
                col[r * rs] = -INFINITY;
    }
}

void spa_backward_spread(const spa_config *cfg, spa_bscratch *s, int32_t h, int64_t c, const float *qg,
                         const float *dog, const float *lseg, const float *Dlg, const int64_t *gidx, int64_t ng,
                         const float *k, const float *v, int64_t j0, int64_t len, float *dqg, float *dk, float *dv)
{
    /* qg, dog, dqg: [ng][D];  lseg, Dlg, gidx: [ng];  k, v, dk, dv: [len][D]
     * tiles of QT rows; keys in chunks aligned to absolute multiples of KC,
     * each chunk one piece of memory with its sinks. Exact: dqg is int64_t
     * fixed point, and the chunks are units of the block grid (a key block,
     * in pieces of at most KC), which no shard boundary cuts, each unit's
     * dq terms rounded into dqg */
    const int32_t D = cfg->dim;
    spread_mask m = {NULL, NULL, 0};
    if (c >= 0) {
        spa_rowctx_init(&s->x, cfg, h, c, s->w);
        m.x = &s->x;
    }
    for (int64_t g0 = 0; g0 < ng; g0 += SPA_BQT) {
        const int32_t tr = (int32_t)(ng - g0 < SPA_BQT ? ng - g0 : SPA_BQT);
        m.gi = gidx + g0;
        int64_t jend = j0 + len; /* causal: no key past the tile's last row */
        if (cfg->causal && m.gi[tr - 1] + 1 < jend) jend = m.gi[tr - 1] + 1;
        tile_begin(s, tr, qg + g0 * D, dog + g0 * D, lseg + g0, Dlg + g0, NULL,
                   s->exact ? s->xtile : dqg + g0 * D);
        for (int64_t a = j0, e; a < jend; a = e) {
            if (s->exact) {
                const int64_t bend = (a / cfg->block + 1) * cfg->block;
                e = bend < a + SPA_BKC ? bend : a + SPA_BKC;
                if (e > jend) e = jend;
            } else {
                e = (a / SPA_BKC + 1) * SPA_BKC < jend ? (a / SPA_BKC + 1) * SPA_BKC : jend;
            }
            const int64_t off = (a - j0) * D;
            m.a = a;
            s->nk = (int32_t)(e - a);
            s->npiece = 1;
            s->pc[0] = (bpiece){k + off, v + off, dk ? dk + off * s->ew : NULL, dv ? dv + off * s->ew : NULL, s->nk};
            run_chunk(cfg, s, mask_spread, &m);
            if (s->exact) fix_into(s, dqg + g0 * D * 2, s->xtile, (int64_t)tr * D, s->xq);
        }
    }
}

/* ------------------------------------------------------------ one rank */

/* The spread path of block c's rows that take it: the global rows, and
 * with all, the block's other rows too (a spread block). Keys: the whole
 * sequence of head h. dq rows are added to. */
static void spread_block(const spa_config *cfg, spa_bscratch *s, int32_t h, int64_t c, int all, const float *q,
                         const float *k, const float *v, const float *dout, const float *lse, const float *Dl,
                         float *dq, float *dk, float *dv)
{
    const int32_t D = cfg->dim;
    const int64_t B = cfg->block, n = cfg->n, hoff = (int64_t)h * n;
    const int64_t t0 = c * B, t1 = spa_block_end(cfg, c);
    for (int pass = all ? 0 : 1; pass < 2; pass++) { /* 0: the block's rule rows, 1: global rows */
        int64_t ng = 0;
        for (int64_t i = t0; i < t1; i++) {
            if (spa_pattern_is_global(cfg, i) != pass) continue;
            s->sidx[ng] = i;
            memcpy(s->sq + ng * D, q + (hoff + i) * D, (size_t)D * sizeof(float));
            memcpy(s->sdo + ng * D, dout + (hoff + i) * D, (size_t)D * sizeof(float));
            s->slse[ng] = lse[hoff + i];
            s->sdl[ng++] = Dl[hoff + i];
        }
        if (!ng) continue;
        memset(s->sdq, 0, (size_t)(ng * D) * sizeof(float));
        spa_backward_spread(cfg, s, h, pass ? -1 : c, s->sq, s->sdo, s->slse, s->sdl, s->sidx, ng, k + hoff * D,
                            v + hoff * D, 0, n, s->sdq, dk + hoff * D, dv + hoff * D);
        for (int64_t r = 0; r < ng; r++)
            for (int32_t d = 0; d < D; d++) dq[(hoff + s->sidx[r]) * D + d] += s->sdq[r * D + d];
    }
}

spa_err spa_backward_local(const spa_config *cfg, const float *q, const float *k, const float *v, const float *out,
                           const float *lse, const float *dout, float *dq, float *dk, float *dv, int threads)
{
    /* q, k, v, out, dout, dq, dk, dv: [H][n][D];  lse: [H][n]
     * pass 1: Dl = rowsum(dout * out); the gathered tokens' K, V copied
     *         ([H][NK][D]) as the runtime gathers them
     * pass 2: per head (in parallel), per query block ascending: the block
     *         pass and the residue, or the spread path for a spread block;
     *         then the block's global rows by the spread path
     * pass 3: the gathered sinks added home */
    const int32_t H = cfg->heads, D = cfg->dim;
    const int64_t n = cfg->n, NK = cfg->nkv_tokens, nb = spa_nblocks(cfg);
    if (threads <= 0) threads = omp_get_max_threads();
    const size_t gbytes = (size_t)(H * NK * D + 1) * sizeof(float);
    float *Dl = spa_alloc((size_t)(H * n + 1) * sizeof(float));
    float *gk = spa_alloc(gbytes), *gv = spa_alloc(gbytes), *gdk = spa_alloc(gbytes), *gdv = spa_alloc(gbytes);
    int64_t *fhead = calloc((size_t)H + 1, sizeof *fhead);
    spa_bscratch **scr = calloc((size_t)threads, sizeof *scr);
    int ok = Dl && gk && gv && gdk && gdv && fhead && scr;
    for (int t = 0; ok && t < threads; t++) ok = (scr[t] = spa_bscratch_create(cfg)) != NULL;
    if (!ok) {
        if (scr)
            for (int t = 0; t < threads; t++) spa_bscratch_destroy(scr[t]);
        free(scr), free(fhead);
        spa_free(Dl), spa_free(gk), spa_free(gv), spa_free(gdk), spa_free(gdv);
        SPA_FAIL(SPA_ERR_OTHER, "out of memory for the backward pass");
    }

    /* pass 1 */
    spa_backward_delta((int64_t)H * n, D, out, dout, Dl);
    spa_gather_tokens(cfg, k, v, gk, gv);
    memset(dk, 0, (size_t)(H * n * D) * sizeof(float));
    memset(dv, 0, (size_t)(H * n * D) * sizeof(float));
    spa_keyseg seg = {0, n, k, v, n * D};
    spa_gradseg gseg = {dk, dv};
    const spa_keysrc src = {1, &seg, NULL, fhead, NULL, NULL, gk, gv};
    const spa_gradsink sink = {&gseg, NULL, NULL, gdk, gdv};

    /* pass 2: OpenBLAS runs inside our loop over heads, one thread each */
    openblas_set_num_threads(1);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int32_t h = 0; h < H; h++) {
        spa_bscratch *s = scr[omp_get_thread_num()];
        const int64_t hoff = (int64_t)h * n;
        for (int64_t c = 0; c < nb; c++) {
            const int64_t row = hoff + c * cfg->block;
            const int served = spa_pattern_served_ws(cfg, h, c, s->w);
            if (!served) {
                const float *qr = q + row * D, *dor = dout + row * D;
                spa_backward_block(cfg, &src, &sink, s, h, c, qr, dor, lse + row, Dl + row, dq + row * D);
                spa_backward_residue(cfg, &src, &sink, s, h, c, qr, dor, lse + row, Dl + row, dq + row * D);
            } else {
                const int64_t rows = spa_block_end(cfg, c) - c * cfg->block;
                memset(dq + row * D, 0, (size_t)(rows * D) * sizeof(float));
            }
            spread_block(cfg, s, h, c, served, q, k, v, dout, lse, Dl, dq, dk, dv);
        }
        /* pass 3 */
        for (int64_t g = 0; g < NK; g++) {
            float *dst = dk + (hoff + cfg->kv_tokens[g]) * D, *dsv = dv + (hoff + cfg->kv_tokens[g]) * D;
            const float *a = gdk + ((int64_t)h * NK + g) * D, *b = gdv + ((int64_t)h * NK + g) * D;
            for (int32_t d = 0; d < D; d++) dst[d] += a[d], dsv[d] += b[d];
        }
    }

    for (int t = 0; t < threads; t++) spa_bscratch_destroy(scr[t]);
    free(scr), free(fhead);
    spa_free(Dl), spa_free(gk), spa_free(gv), spa_free(gdk), spa_free(gdv);
    return SPA_OK;
}
