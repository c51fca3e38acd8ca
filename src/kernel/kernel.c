/* kernel.c - block-sparse attention on one rank's memory (no MPI).
 *
 * For one (head, query block) the keys of S(i) are taken in a canonical
 * order that does not depend on the rank count, each key once (S(i) is a
 * set):
 *   1. the block's local key range,
 *   2. the gathered tokens (G, summary columns) outside that range,
 *   3. the full key blocks of the random and layout rules, ascending,
 *      without the tokens of 1 and 2,
 * and consumed in chunks of KC keys by an online (flash-style) softmax. A
 * chunk is a list of pieces of resident memory (own shard, halo, gathered
 * globals, fetched blocks), never a copy. Each chunk is reduced against its
 * own row maxima and then merged into the running (max, sum, acc), so the
 * floating-point order of every row is the same on any number of ranks and
 * threads. Each key carries a class: 0 when every row of the block attends
 * it (up to causality), 1 when the token rule (radius, strided, dilated)
 * decides per row; only class-1 keys pay for the rule.
 *
 * Strided and dilated keys take a second, residue pass: the rows of one
 * residue class attend the same class keys, so rows from many blocks form
 * one dense tile against gathered class keys, instead of B x B tiles of
 * which one key per row is used. Each row's partial from that pass is
 * merged after its block pass, in a fixed order, so the sums do not depend
 * on the rank count either.
 *
 * The products run on the register-blocked kernels of microkernel.c when
 * D % 8 == 0, and on OpenBLAS sgemm otherwise (or with SPA_KERNEL=blas, so
 * the two can be compared side by side): at 64 x 512 x 64 OpenBLAS spends a
 * large share of its time packing operands.
 */
#include "spa_impl.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

enum { SPA_KC = 512, SPA_QT = 64 };

/* The end of the global rows' chunk that starts at key a: the next
 * absolute multiple of SPA_KC, or jend. */
static inline int64_t kc_end(int64_t a, int64_t jend)
{
    const int64_t e = (a / SPA_KC + 1) * SPA_KC;
    return e < jend ? e : jend;
}

struct spa_scratch {
    int32_t D, rows; /* rows = max(B, QT) */
    float *kc, *vc;  /* [KC][D] gathered keys and values */
    float *s;        /* [rows][KC] scores, then probabilities */
    int64_t *kj;     /* [KC] token index of each gathered key */
    unsigned char *kcls;  /* [KC] 1 = the token rule decides per row */
    int any_cls;          /* some key of the chunk has class 1 */
    spa_patws *w;         /* pattern workspace */
    spa_rowctx x;         /* the block's rule */
    float *m, *l;    /* [rows] running max and sum */
    float *acc;      /* [rows][D] running output */
    int acc_set;     /* acc holds the running output; 0 until the block's first chunk */
    float *cacc, *mc, *lc; /* [rows][D], [rows], [rows]: one chunk's partial */
    double *pd, *vd, *cd, *lcd; /* global rows: [QT][KC], [KC][D], [QT][D], [QT] */
    float *lo;       /* [KC] rounding error of the exp arguments */
    float *qt, *sh;  /* [D][ldq] transposed, zero-padded query rows; [ldq] shifts */
    int32_t ldq;     /* query rows of the block, rounded up to 16 */
    /* the chunk's keys as pieces of resident memory: [npiece] */
    const float **pk, **pv;
    int32_t *pn;
    int npiece;
    int far;         /* pieces [far, npiece) are full key blocks (step 3), prefetched */
    /* spa_scratch_hint: the block the thread will likely compute next,
     * its rule (x2, in w2) and the memory it reads first (its query rows,
     * then the keys and values of its full key blocks: nrx regions), which
     * this block's first chunk prefetches as it goes */
    int32_t nh;           /* -1: no hint */
    int64_t nc;
    const float *nq;
    int64_t nqlen;
    spa_patws *w2;
    spa_rowctx x2;
    int x2_ok;            /* x2 holds block (x2.h, x2.c) */
    int x2_all;           /* and the regions hold all of its full key blocks */
    int ahead;            /* this chunk's full key blocks were prefetched by the block before */
    const char *rx[SPA_PF_REGIONS];
    int64_t rxl[SPA_PF_REGIONS];
    int nrx;
    float *nan_row;  /* [D] NaN: stands for a key the plan failed to bring */
    int fast;        /* register-blocked products (D % 8 == 0, not SPA_KERNEL=blas) */
    int exact;       /* spa_scratch_set_exact: no sgemm where a tile's rows depend on P */
    const spa_kernels *K; /* their instruction set (microkernel.c) */
    int nk;          /* keys in the current chunk */
    /* residue pass, per row of the tile: its local range, and its block's
     * random blocks and layout row (the full blocks the block pass took) */
    int64_t *xlo, *xhi;
    int32_t *xrb, *xrn;   /* [rows][random_max], [rows] */
    int64_t *xl0, *xl1;   /* layout row idx[xl0 .. xl1) */
    int32_t rmax;
    /* gathered[g]: cfg->kv_tokens[g] is gathered for head gathered_h (G,
     * or one of the head's summary columns), asked once per head instead
     * of once per token per block */
    unsigned char *gathered;
    int32_t gathered_h;
};

spa_scratch *spa_scratch_create(const spa_config *cfg)
{
    spa_scratch *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    int32_t D = cfg->dim;
    s->D = D;
    s->rows = ((cfg->block > SPA_QT ? cfg->block : SPA_QT) + 15) / 16 * 16;
    /* SPA_KERNEL=blas keeps every product on OpenBLAS, for comparison */
    int blas;
    s->K = spa_kernels_get(&blas);
    s->fast = D % 8 == 0 && !blas;
    s->kc = spa_alloc((size_t)SPA_KC * D * sizeof(float));
    s->vc = spa_alloc((size_t)SPA_KC * D * sizeof(float));
    s->s = spa_alloc((size_t)s->rows * SPA_KC * sizeof(float));
    s->kj = spa_alloc((size_t)SPA_KC * sizeof(int64_t));
    s->kcls = spa_alloc(SPA_KC);
    s->rmax = cfg->random_max;
    s->xlo = spa_alloc((size_t)SPA_RESIDUE_ROWS * sizeof(int64_t));
    s->xhi = spa_alloc((size_t)SPA_RESIDUE_ROWS * sizeof(int64_t));
    s->xl0 = spa_alloc((size_t)SPA_RESIDUE_ROWS * sizeof(int64_t));
    s->xl1 = spa_alloc((size_t)SPA_RESIDUE_ROWS * sizeof(int64_t));
    s->xrn = spa_alloc((size_t)SPA_RESIDUE_ROWS * sizeof(int32_t));
    s->xrb = spa_alloc((size_t)SPA_RESIDUE_ROWS * (cfg->random_max + 1) * sizeof(int32_t));
    s->w = spa_patws_create(cfg);
    s->w2 = spa_patws_create(cfg);
    s->nh = -1;
    s->m = spa_alloc((size_t)s->rows * sizeof(float));
    s->l = spa_alloc((size_t)s->rows * sizeof(float));
    s->acc = spa_alloc((size_t)s->rows * D * sizeof(float));
    s->cacc = spa_alloc((size_t)s->rows * D * sizeof(float));
    s->mc = spa_alloc((size_t)s->rows * sizeof(float));
    s->lc = spa_alloc((size_t)s->rows * sizeof(float));
    s->pd = spa_alloc((size_t)SPA_QT * SPA_KC * sizeof(double));
    s->vd = spa_alloc((size_t)SPA_KC * D * sizeof(double));
    s->cd = spa_alloc((size_t)SPA_QT * D * sizeof(double));
    s->lcd = spa_alloc((size_t)SPA_QT * sizeof(double));
    s->lo = spa_alloc((size_t)SPA_KC * sizeof(float));
    s->qt = spa_alloc((size_t)s->rows * D * sizeof(float));
    s->sh = spa_alloc((size_t)s->rows * sizeof(float));
    s->pk = spa_alloc((size_t)SPA_KC * sizeof(float *));
    s->pv = spa_alloc((size_t)SPA_KC * sizeof(float *));
    s->pn = spa_alloc((size_t)SPA_KC * sizeof(int32_t));
    s->nan_row = spa_alloc((size_t)D * sizeof(float));
    s->gathered = spa_alloc((size_t)cfg->nkv_tokens + 1);
    s->gathered_h = -1;
    if (s->nan_row)
        for (int32_t d = 0; d < D; d++) s->nan_row[d] = NAN;
    if (!s->kc || !s->vc || !s->s || !s->kj || !s->kcls || !s->xlo || !s->xhi || !s->xl0 || !s->xl1 || !s->xrn || !s->xrb || !s->m || !s->l || !s->acc || !s->w || !s->w2 || !s->cacc ||
        !s->mc || !s->lc || !s->pd || !s->vd || !s->cd || !s->lcd || !s->lo || !s->qt ||
        !s->sh || !s->pk || !s->pv || !s->pn || !s->nan_row || !s->gathered) {
        spa_scratch_destroy(s);
        return NULL;
    }
    return s;
}

void spa_scratch_destroy(spa_scratch *s)
{
    if (!s) return;
    spa_free(s->kc);
    spa_free(s->vc);
    spa_free(s->s);
    spa_free(s->kj);
    spa_free(s->kcls);
    spa_free(s->xlo), spa_free(s->xhi), spa_free(s->xl0), spa_free(s->xl1), spa_free(s->xrn), spa_free(s->xrb);
    spa_patws_destroy(s->w);
    spa_patws_destroy(s->w2);
    spa_free(s->m);
    spa_free(s->l);
    spa_free(s->acc);
    spa_free(s->cacc);
    spa_free(s->mc);
    spa_free(s->lc);
    spa_free(s->pd);
    spa_free(s->vd);
    spa_free(s->cd);
    spa_free(s->lcd);
    spa_free(s->lo);
    spa_free(s->qt);
    spa_free(s->sh);
    spa_free(s->pk);
    spa_free(s->pv);
    spa_free(s->pn);
    spa_free(s->nan_row);
    spa_free(s->gathered);
    free(s);
}

/* Merges the chunk's partial (mc, lc, cc) into the running (m, l, acc)
 * of the block's rows. The block's first chunk (acc not set yet) clears
 * the rows it has no key for; cc may then be acc itself, which the chunk's
 * P V went to directly. */
static void merge_chunk(spa_scratch *s, int32_t rows, const float *cc)
{
    const int32_t D = s->D;
    for (int32_t r = 0; r < rows; r++) {
        float *ar = s->acc + (int64_t)r * D;
        const float *cr = cc + (int64_t)r * D;
        if (s->mc[r] == -INFINITY) { /* every key of the chunk masked */
            if (!s->acc_set) memset(ar, 0, (size_t)D * sizeof(float));
            continue;
        }
        if (s->m[r] == -INFINITY) { /* first chunk with a key */
            s->m[r] = s->mc[r];
            s->l[r] = s->lc[r];
            if (cr != ar) memcpy(ar, cr, (size_t)D * sizeof(float));
            continue;
        }
        float mnew = s->mc[r] > s->m[r] ? s->mc[r] : s->m[r];
        float fa = expf(s->m[r] - mnew), fb = expf(s->mc[r] - mnew);
        s->l[r] = s->l[r] * fa + s->lc[r] * fb;
        for (int32_t d = 0; d < D; d++) ar[d] = ar[d] * fa + cr[d] * fb;
        s->m[r] = mnew;
    }
    s->acc_set = 1;
}

/* Sets the scores of the chunk's keys that row i = ti0 + r does not attend
 * to -inf. Score (r, c) sits at S[r * rs + c * cs]: rs = nk, cs = 1 for
 * row-major scores, rs = 1, cs = ldq for transposed ones. Class-0 keys
 * need only causality; class-1 keys (a radius rule's range) ask the local
 * rule: strided and dilated keys come in the residue pass. */
static void mask_scores(const spa_config *cfg, const spa_scratch *s, int64_t ti0, int32_t rows, float *S,
                        int64_t rs, int64_t cs)
{
    if (!cfg->causal && !s->any_cls) return;
    for (int32_t c = 0; c < s->nk; c++)
        spa_mask_key(&s->x, cfg->causal, s->kj[c], s->kcls[c], ti0, rows, S + c * cs, rs);
}

/* One chunk of the online softmax for the query rows [ti0, ti0 + rows) of
 * a block, on OpenBLAS (any D).
 *   q: [rows][D];  s->kc, s->vc: [nk][D] gathered keys;  s->acc: [rows][D]
 * The chunk is first reduced on its own, against its own row maxima, to a
 * partial (mc, lc, cacc), which is then merged into the running one, so a
 * chunk's partial does not depend on what came before it.
 * pass 1: scores S = scale * q Kc^T, masked to -inf where j is not in S(i)
 * pass 2: chunk maxima, exp, chunk sums
 * pass 3: cacc = P Vc
 * pass 4: merge */
static void softmax_tail(spa_scratch *s, int32_t rows);

static void chunk_update(const spa_config *cfg, spa_scratch *s, const float *q, int64_t ti0, int32_t rows)
{
    const int32_t D = s->D, nk = s->nk;
    float *S = s->s;

    /* pass 1 */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, nk, D, cfg->scale, q, D, s->kc, D,
                0.0f, S, nk);
    mask_scores(cfg, s, ti0, rows, S, nk, 1);
    softmax_tail(s, rows);
}

void spa_gather_tokens(const spa_config *cfg, const float *k, const float *v, float *gk, float *gv)
{
    const int64_t n = cfg->n, D = cfg->dim, G = cfg->nkv_tokens;
    for (int64_t h = 0; h < cfg->heads; h++)
        for (int64_t g = 0; g < G; g++) {
            const int64_t src = (h * n + cfg->kv_tokens[g]) * D, dst = (h * G + g) * D;
            memcpy(gk + dst, k + src, (size_t)D * sizeof(float));
            memcpy(gv + dst, v + src, (size_t)D * sizeof(float));
        }
}

void spa_scratch_set_exact(spa_scratch *s, int on) { s->exact = on != 0; }

void spa_scratch_hint(spa_scratch *s, int32_t h, int64_t c, const float *q, int64_t bytes)
{
    s->nh = h;
    s->nc = c;
    s->nq = q;
    s->nqlen = bytes;
}

void spa_dots(int32_t tr, int32_t nk, int32_t D, float sc, const float *a, const float *b, float *o)
{
    for (int32_t r = 0; r < tr; r++)
        for (int32_t c = 0; c < nk; c++) {
            const float *x = a + (int64_t)r * D, *y = b + (int64_t)c * D;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int32_t d = 0; d < D; d++) acc += x[d] * y[d];
            o[(int64_t)r * nk + c] = sc * acc;
        }
}

/* Passes 2-4 of chunk_update on masked row-major scores s->s [rows][nk]. */
static void softmax_tail(spa_scratch *s, int32_t rows)
{
    const int32_t D = s->D, nk = s->nk;
    float *S = s->s, *mc = s->mc, *lc = s->lc;

    /* pass 2 */
    for (int32_t r = 0; r < rows; r++) {
        float *row = S + (int64_t)r * nk, mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (int32_t c = 0; c < nk; c++) mx = row[c] > mx ? row[c] : mx;
        mc[r] = mx;
        if (mx == -INFINITY) {
            memset(row, 0, (size_t)nk * sizeof *row);
            lc[r] = 0.0f;
            continue;
        }
        for (int32_t c = 0; c < nk; c++) row[c] -= mx;
        spa_vexp(row, nk);
        /* a fixed vector order: the same on every rank count (exact: one
         * key after another, as a residue row's nk depends on its tile) */
        float sum = 0.0f;
        if (s->exact) {
            for (int32_t c = 0; c < nk; c++) sum += row[c];
        } else {
#pragma omp simd reduction(+ : sum)
            for (int32_t c = 0; c < nk; c++) sum += row[c];
        }
        lc[r] = sum;
    }

    /* pass 3 (exact: per row, keys in order, as the tile's rows may depend
     * on P in the residue pass) */
    if (s->exact) {
        memset(s->cacc, 0, (size_t)rows * D * sizeof(float));
        for (int32_t r = 0; r < rows; r++)
            for (int32_t c = 0; c < nk; c++) {
                const float p = S[(int64_t)r * nk + c], *vr = s->vc + (int64_t)c * D;
                float *o = s->cacc + (int64_t)r * D;
#pragma omp simd
                for (int32_t d = 0; d < D; d++) o[d] += p * vr[d];
            }
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, D, nk, 1.0f, S, nk, s->vc, D, 0.0f,
                    s->cacc, D);
    }

    /* pass 4 */
    merge_chunk(s, rows, s->cacc);
}

/* The same chunk update on transposed scores, with the register-blocked
 * products of microkernel.c (D % 8 == 0).
 *   s->qt: [D][ldq] query rows;  S^T: [nk][ldq];  acc: [rows][D]
 * Column i of S^T is query row i, so the softmax statistics of all rows
 * advance together, one vector of rows per key. */
static void softmax_tail_t(spa_scratch *s, int32_t rows, int have_max, spa_pfs *pf);

static void chunk_update_t(const spa_config *cfg, spa_scratch *s, int64_t ti0, int32_t rows)
{
    const int32_t D = s->D, ldq = s->ldq;
    float *St = s->s;

    /* the keys and values of the chunk's full key blocks (step 3: random,
     * layout) come from anywhere in memory (the window's and the gathered
     * tokens' are in cache, or streamed in order). Unless the block before
     * asked for them already, pass 1 asks for them as its tiles go, with
     * half of what the hinted next block reads first (next_regions);
     * pass 3 asks for the other half. One line after another at the rate
     * of the products: a burst stalls once the line fill buffers are full. */
    spa_pfs pf;
    spa_pfs_init(&pf, s->pk, s->pv, s->pn, s->ahead ? s->npiece : s->far, s->npiece,
                 (int64_t)D * (int64_t)sizeof(float), s->rx, s->rxl, s->nrx, (int64_t)s->nk * D);
    spa_pfs_phase(&pf, pf.plines + (pf.lines - pf.plines) / 2, (int64_t)s->nk * D);
    s->nrx = 0;
    s->ahead = 0;

    /* pass 1: scores; without a mask (no causality, no token rule: the
     * default pattern) the column maxima come with them */
    const int nomask = !cfg->causal && !s->any_cls;
    if (nomask)
        for (int32_t r = 0; r < ldq; r++) s->mc[r] = -INFINITY;
    for (int p = 0, j = 0; p < s->npiece; j += s->pn[p], p++)
        s->K->qk(s->pn[p], D, ldq, cfg->scale, s->pk[p], s->qt, St + (int64_t)j * ldq, nomask ? s->mc : NULL,
                 pf.lines ? &pf : NULL);
    if (!nomask) mask_scores(cfg, s, ti0, rows, St, 1, ldq);
    spa_pfs_phase(&pf, pf.lines, (int64_t)rows * s->nk * D);
    softmax_tail_t(s, rows, nomask, pf.lines ? &pf : NULL);
}

/* Passes 2-4 of chunk_update_t on masked transposed scores s->s
 * [nk][ldq], with the values in the chunk's pieces. have_max: s->mc holds
 * the column maxima already. */
static void softmax_tail_t(spa_scratch *s, int32_t rows, int have_max, spa_pfs *pf)
{
    const int32_t D = s->D, nk = s->nk, ldq = s->ldq;
    float *St = s->s, *mc = s->mc, *lc = s->lc;

    /* pass 2: column maxima, then exp and column sums in one pass */
    if (!have_max) s->K->colmax(St, nk, ldq, mc);
    s->K->expsum(St, nk, ldq, mc, lc);

    /* pass 3: cacc = P V (the block's first chunk: acc = P V) */
    float *cc = s->acc_set ? s->cacc : s->acc;
    s->K->pvp(s->npiece, s->pv, s->pn, D, ldq, rows, St, cc, pf, 1); /* keys in order: same sums */

    /* pass 4 */
    merge_chunk(s, rows, cc);
}

/* Finds the memory of token t of head h among the resident segments, or in
 * the fetched random blocks. Returns the number of contiguous rows there
 * (up to want) and sets *k, *v. */
static int64_t locate(const spa_config *cfg, const spa_keysrc *src, int32_t h, int64_t t,
                      int64_t want, const float **k, const float **v)
{
    const int32_t D = cfg->dim;
    for (int i = 0; i < src->nseg; i++) {
        const spa_keyseg *g = &src->seg[i];
        if (t >= g->t0 && t < g->t1) {
            int64_t off = (int64_t)h * g->hstride + (t - g->t0) * D;
            *k = g->k + off;
            *v = g->v + off;
            return g->t1 - t < want ? g->t1 - t : want;
        }
    }
    int64_t B = cfg->block, b = t / B, lo = src->fhead_off[h], hi = src->fhead_off[h + 1];
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (src->fblock[mid] < b) lo = mid + 1;
        else hi = mid;
    }
    if (lo >= src->fhead_off[h + 1] || src->fblock[lo] != b) return 0;
    int64_t off = (lo * B + (t - b * B)) * D, left = (b + 1) * B - t;
    *k = src->fk + off;
    *v = src->fv + off;
    return left < want ? left : want;
}

typedef struct block_job {
    const spa_config *cfg;
    const spa_keysrc *src;
    spa_scratch *s;
    int32_t h, rows;
    int64_t ti0;
    const float *q;
} block_job;

static void flush_chunk(block_job *job)
{
    spa_scratch *s = job->s;
    if (s->nk == 0) return;
    if (s->fast) {
        chunk_update_t(job->cfg, s, job->ti0, job->rows);
    } else { /* the GEMM path wants the keys in one buffer */
        for (int p = 0, j = 0; p < s->npiece; j += s->pn[p], p++) {
            memcpy(s->kc + (int64_t)j * s->D, s->pk[p], (size_t)s->pn[p] * s->D * sizeof(float));
            memcpy(s->vc + (int64_t)j * s->D, s->pv[p], (size_t)s->pn[p] * s->D * sizeof(float));
        }
        chunk_update(job->cfg, s, job->q, job->ti0, job->rows);
    }
    s->nk = 0;
    s->npiece = 0;
    s->far = 0;
    s->any_cls = 0;
}

/* Appends cnt keys (tokens t0..) found at k, v ([cnt][D] rows) to the chunk.
 * Keys are not copied: a chunk is a list of pieces of resident memory,
 * merged when they are adjacent. */
static void add_keys(block_job *job, const float *k, const float *v, int64_t t0, int32_t cnt, int cls)
{
    spa_scratch *s = job->s;
    const int32_t D = s->D;
    int p = s->npiece - 1;
    if (p >= 0 && s->pk[p] + (int64_t)s->pn[p] * D == k && s->pv[p] + (int64_t)s->pn[p] * D == v) {
        s->pn[p] += cnt;
    } else {
        s->pk[s->npiece] = k;
        s->pv[s->npiece] = v;
        s->pn[s->npiece++] = cnt;
    }
    for (int32_t r = 0; r < cnt; r++) s->kj[s->nk + r] = t0 + r;
    memset(s->kcls + s->nk, cls, (size_t)cnt);
    s->any_cls |= cls;
    s->nk += cnt;
}

/* Appends keys [t0, t1) of head h, all of class cls, flushing when the
 * chunk is full. */
static void append_range(block_job *job, int64_t t0, int64_t t1, int cls)
{
    spa_scratch *s = job->s;
    while (t0 < t1) {
        if (s->nk == SPA_KC) flush_chunk(job);
        const float *k, *v;
        int64_t want = t1 - t0 < SPA_KC - s->nk ? t1 - t0 : SPA_KC - s->nk;
        int64_t got = locate(job->cfg, job->src, job->h, t0, want, &k, &v);
        if (got == 0) { /* a key the plan did not bring: poison the row loudly */
            add_keys(job, s->nan_row, s->nan_row, t0, 1, 0);
            t0++;
            continue;
        }
        add_keys(job, k, v, t0, (int32_t)got, cls);
        t0 += got;
    }
}

/* Appends [t0, t1) one key block at a time. Tokens gathered for the head
 * are skipped (they come in step 2) or, with keep, appended as class 0:
 * every row attends them. In a class-1 range, keys of full key blocks
 * need no token rule either. */
static void append_keys(block_job *job, int64_t t0, int64_t t1, int cls, int keep)
{
    const spa_config *cfg = job->cfg;
    const spa_rowctx *x = &job->s->x;
    int64_t g = spa_lower_bound(cfg->kv_tokens, cfg->nkv_tokens, t0);
    while (t0 < t1) {
        while (g < cfg->nkv_tokens && cfg->kv_tokens[g] < t1 && !job->s->gathered[g]) g++;
        int64_t e = g < cfg->nkv_tokens && cfg->kv_tokens[g] < t1 ? cfg->kv_tokens[g] : t1;
        int64_t bend = (t0 / cfg->block + 1) * cfg->block;
        if (e > bend) e = bend;
        int c = cls;
        if (c) {
            int64_t k = spa_rowctx_find(x, t0 / cfg->block);
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

/* The hinted next block's rule, made now into w2 (the next call takes it
 * instead of making it again), and the memory that block reads first, as
 * regions for this block's stream: its query rows; the keys and values of
 * its local range that this block's does not hold (the block entering the
 * window); then the keys and the values of its full key blocks (random,
 * layout) up to a cap, which come from anywhere in memory. Asked for a
 * block ahead, they are in L2 when that block starts. */
static void next_regions(const spa_config *cfg, const spa_keysrc *src, spa_scratch *s)
{
    s->nrx = 0;
    if (s->nh < 0) return;
    spa_rowctx_init(&s->x2, cfg, s->nh, s->nc, s->w2);
    s->x2_ok = 1;
    s->x2_all = 1;
    const spa_rowctx *x = &s->x2;
    const int64_t B = cfg->block, rb = (int64_t)cfg->dim * (int64_t)sizeof(float);
    if (s->nqlen > 0) s->rx[s->nrx] = (const char *)s->nq, s->rxl[s->nrx++] = s->nqlen;
    int64_t a = x->j0; /* [a, x->j1): the new part of the local range */
    if (s->x.h == x->h && s->x.j0 <= a && s->x.j1 > a) a = s->x.j1;
    const float *kp, *vp;
    int64_t got = a < x->j1 ? locate(cfg, src, x->h, a, x->j1 - a, &kp, &vp) : 0;
    if (got > 0) {
        s->rx[s->nrx] = (const char *)kp, s->rxl[s->nrx++] = got * rb;
        s->rx[s->nrx] = (const char *)vp, s->rxl[s->nrx++] = got * rb;
    }
    const int nb0 = s->nrx, cap = (SPA_PF_REGIONS - nb0) / 2;
    int nb = 0;
    for (int64_t k = 0; k < x->nkb; k++) {
        if (!x->kfull[k]) continue;
        int64_t b0 = (int64_t)x->kb[k] * B, b1 = spa_block_end(cfg, x->kb[k]);
        if (b0 >= x->j0 && b1 <= x->j1) continue; /* inside the window */
        got = locate(cfg, src, x->h, b0, b1 - b0, &kp, &vp);
        if (got == 0) continue;
        if (nb == cap || got < b1 - b0) { /* the block takes them as it goes */
            s->x2_all = 0;
            break;
        }
        s->rx[nb0 + nb] = (const char *)kp, s->rxl[nb0 + nb] = got * rb;
        s->rx[nb0 + cap + nb] = (const char *)vp, s->rxl[nb0 + cap + nb] = got * rb;
        nb++;
    }
    for (int i = 0; i < nb; i++) /* the values after the keys */
        s->rx[nb0 + nb + i] = s->rx[nb0 + cap + i], s->rxl[nb0 + nb + i] = s->rxl[nb0 + cap + i];
    s->nrx = nb0 + 2 * nb;
}

double spa_kernel_block(const spa_config *cfg, const spa_keysrc *src, spa_scratch *s, int32_t h,
                        int64_t c, const float *q, float *out, float *lse)
{
    /* q, out: [rows][D] rows of block c;  lse: [rows] */
    const int32_t D = cfg->dim;
    const int64_t B = cfg->block, n = cfg->n, ti0 = c * B;
    const int32_t rows = (int32_t)(spa_block_end(cfg, c) - ti0);
    block_job job = {cfg, src, s, h, rows, ti0, q};
    if (s->x2_ok && s->x2.h == h && s->x2.c == c) { /* the hinted block: its rule is made */
        spa_patws *w = s->w;
        s->w = s->w2, s->w2 = w;
        s->x = s->x2;
        s->ahead = s->x2_all; /* for its first chunk */
    } else {
        spa_rowctx_init(&s->x, cfg, h, c, s->w);
        s->ahead = 0;
    }
    s->x2_ok = 0;
    if (s->fast) next_regions(cfg, src, s);
    s->nh = -1;
    const spa_rowctx *x = &s->x;
    if (s->gathered_h != h) {
        for (int64_t g = 0; g < cfg->nkv_tokens; g++) s->gathered[g] = (unsigned char)spa_pattern_is_gathered(cfg, h, cfg->kv_tokens[g]);
        s->gathered_h = h;
    }

    for (int32_t r = 0; r < rows; r++) {
        s->m[r] = -INFINITY;
        s->l[r] = 0.0f;
    }
    s->acc_set = 0;
    s->nk = 0;
    s->npiece = 0;
    s->far = 0;
    s->any_cls = 0;
    s->ldq = (rows + 15) / 16 * 16;
    if (s->fast)
        s->K->tpose(q, D, rows, D, s->ldq, s->qt);

    /* 1. local range: the whole window for every row in block mode; the
     *    token rule decides in radius mode */
    if (x->hr->radius >= 0) append_keys(&job, x->j0, x->j1, 1, 1);
    else append_range(&job, x->j0, x->j1, 0);

    /* 2. gathered tokens outside the local range (causal: not after the last row) */
    const int64_t jmax = cfg->causal ? ti0 + rows : n;
    for (int64_t g = 0; g < cfg->nkv_tokens; g++) {
        int64_t t = cfg->kv_tokens[g];
        if (t >= jmax) break;
        if ((t >= x->j0 && t < x->j1) || !s->gathered[g]) continue;
        if (s->nk == SPA_KC) flush_chunk(&job);
        int64_t off = ((int64_t)h * cfg->nkv_tokens + g) * D;
        add_keys(&job, src->gk + off, src->gv + off, t, 1, 0);
    }

    /* 3. full key blocks (random, layout), ascending, without the local
     *    range; the strided and dilated keys come in the residue pass */
    s->far = s->npiece;
    for (int64_t k = 0; k < x->nkb; k++) {
        if (!x->kfull[k]) continue;
        int64_t b0 = (int64_t)x->kb[k] * B, b1 = b0 + B < jmax ? b0 + B : jmax;
        if (b0 < x->j0) append_keys(&job, b0, b1 < x->j0 ? b1 : x->j0, 0, 0);
        if (b1 > x->j1) append_keys(&job, b0 > x->j1 ? b0 : x->j1, b1, 0, 0);
    }
    flush_chunk(&job);
    s->nrx = 0; /* the hint is this block's only */

    /* 4. out = acc / l (an empty S(i): acc is 0, and so is out), and the
     *    block's sum while its rows are in L1 */
    float *inv = s->lc; /* free once the last chunk is merged */
    if (!s->acc_set) memset(s->acc, 0, (size_t)rows * D * sizeof(float)); /* no chunk */
    for (int32_t r = 0; r < rows; r++) {
        const int empty = s->l[r] == 0.0f;
        inv[r] = empty ? 0.0f : 1.0f / s->l[r];
        lse[r] = empty ? -INFINITY : s->m[r] + logf(s->l[r]);
    }
    return s->K->emit(rows, D, s->acc, inv, out);
}

/* The mask of spread rows gi[0..rows) against keys a .. a + nk - 1, laid
 * out as in mask_scores. x == NULL: global rows, which attend every key
 * (up to causality); else rows of x's block. */
static void mask_rows(const spa_config *cfg, const spa_rowctx *x, const int64_t *gi, int32_t rows, int64_t a,
                      int32_t nk, float *S, int64_t rs, int64_t cs)
{
    if (!x && !cfg->causal) return;
    for (int32_t c = 0; c < nk; c++) {
        int64_t j = a + c, kb = x ? spa_rowctx_find(x, j / cfg->block) : -1;
        int every = !x || spa_pattern_is_gathered(cfg, x->h, j) || (kb >= 0 && x->kfull[kb]);
        float *col = S + c * cs;
        for (int32_t r = 0; r < rows; r++)
            if ((cfg->causal && j > gi[r]) || (!every && !spa_rowctx_residue(x, gi[r], j))) col[r * rs] = -INFINITY;
    }
}

/* Class indices [*lo, *hi) of the tokens [a, b) among the keys k0 + m * M. */
static inline void class_range(int64_t a, int64_t b, int64_t k0, int64_t M, int64_t *lo, int64_t *hi)
{
    *lo = a <= k0 ? 0 : (a - k0 + M - 1) / M;
    *hi = b <= k0 ? 0 : (b - k0 + M - 1) / M;
}

/* -inf for row r at the class keys [lo, hi) of the chunk [c0, c1). */
static inline void mask_class(float *S, int64_t rs, int64_t cs, int32_t r, int64_t lo, int64_t hi, int64_t c0,
                              int64_t c1)
{
    if (lo < c0) lo = c0;
    if (hi > c1) hi = c1;
    for (int64_t m = lo; m < hi; m++) S[(m - c0) * cs + r * rs] = -INFINITY;
}

/* -inf for row r at the class keys m in [lo, hi) of the chunk [c0, c1)
 * with k0 + m * M = target (mod mod): a progression in m of period
 * mod / gcd(M, mod), found by a short scan, then stepped. */
static void mask_progression(float *S, int64_t rs, int64_t cs, int32_t r, int64_t lo, int64_t hi, int64_t c0,
                             int64_t c1, int64_t k0, int64_t M, int64_t mod, int64_t target)
{
    if (lo < c0) lo = c0;
    if (hi > c1) hi = c1;
    int64_t a = M % mod, b = mod;
    while (b) { int64_t t = a % b; a = b; b = t; }
    const int64_t period = mod / (a ? a : mod);
    int64_t m = lo;
    while (m < hi && m < lo + period && ((k0 + m * M - target) % mod + mod) % mod != 0) m++;
    if (m >= lo + period) return; /* no solution */
    for (; m < hi; m += period) S[(m - c0) * cs + r * rs] = -INFINITY;
}

/* What the rows' block pass took: their local range and their block's full
 * blocks (random, layout). Once per tile. */
static void residue_exclusions(const spa_config *cfg, spa_scratch *s, int32_t h, const int64_t *rows, int32_t nr)
{
    const spa_head_rules *hr = &cfg->hr[h];
    const int64_t B = cfg->block, n = cfg->n, nb = spa_nblocks(cfg);
    const spa_layout *lay = &cfg->layout;
    for (int32_t r = 0; r < nr; r++) {
        const int64_t i = rows[r], c = i / B;
        int32_t *rb = s->xrb + (int64_t)r * (s->rmax + 1);
        if (hr->radius >= 0) {
            s->xlo[r] = i - hr->radius > 0 ? i - hr->radius : 0;
            s->xhi[r] = i + hr->radius + 1 < n ? i + hr->radius + 1 : n;
        } else if (hr->local_blocks > 0) {
            int64_t b0, b1;
            spa_pattern_window(cfg, h, c, &b0, &b1);
            s->xlo[r] = b0 * B;
            s->xhi[r] = spa_block_end(cfg, b1);
        } else {
            s->xlo[r] = s->xhi[r] = 0;
        }
        if (r > 0 && rows[r - 1] / B == c) {
            s->xrn[r] = s->xrn[r - 1];
            memcpy(rb, rb - (s->rmax + 1), (size_t)s->xrn[r] * sizeof *rb);
        } else {
            s->xrn[r] = spa_pattern_random_blocks(cfg, h, c, rb);
        }
        int64_t lr = (lay->heads == 1 ? 0 : (int64_t)h) * nb + c;
        s->xl0[r] = lay->heads ? lay->off[lr] : 0;
        s->xl1[r] = lay->heads ? lay->off[lr + 1] : 0;
    }
}

void spa_kernel_residue(const spa_config *cfg, const spa_keysrc *src, spa_scratch *s, const spa_residue *g,
                        const int64_t *rows, int32_t nr, const float *q, int64_t t0, int64_t n_own, float *m,
                        float *l, float *acc)
{
    /* rows: [nr] tokens, ascending, nr <= SPA_RESIDUE_ROWS;  q: [H][n_own][D]
     * m, l: [H][n_own];  acc: [H][n_own][D]
     * keys: j = k0 + idx * M for k0 <= j < k1, gathered KC at a time, once
     * for all the tiles of QT rows; a tile's rows see each chunk in the
     * same order as if they were alone, so the sums do not depend on how
     * rows are cut into tasks */
    const int32_t D = cfg->dim, h = g->h;
    const spa_head_rules *hr = &cfg->hr[h];
    const int64_t B = cfg->block, M = g->M, k0 = g->k0;
    const spa_layout *lay = &cfg->layout;
    const int64_t base = (int64_t)h * n_own - t0;
    residue_exclusions(cfg, s, h, rows, nr);

    int64_t kend = g->k1;
    if (cfg->causal && rows[nr - 1] + 1 < kend) kend = rows[nr - 1] + 1;
    const int64_t K = kend > k0 ? (kend - k0 + M - 1) / M : 0;
    for (int64_t c0 = 0; c0 < K; c0 += SPA_KC) {
        const int64_t c1 = c0 + SPA_KC < K ? c0 + SPA_KC : K;
        /* pass 1: gather the class keys; gathered tokens belong to the block pass.
         * The keys lie M rows apart: find them all, then copy them with the
         * next ones prefetched, so the misses overlap */
        const int32_t ng = (int32_t)(c1 - c0);
        for (int32_t c = 0; c < ng; c++) {
            int64_t j = k0 + (c0 + c) * M;
            const float *kp = NULL, *vp = NULL;
            s->kj[c] = j;
            /* class 1: gathered, every row's block pass took it; class 2:
             * not here, which is right only where the row masks it (a
             * row's own full block, fetched in an earlier batch) */
            s->kcls[c] = (unsigned char)spa_pattern_is_gathered(cfg, h, j);
            if (!s->kcls[c] && !locate(cfg, src, h, j, 1, &kp, &vp)) s->kcls[c] = 2;
            s->pk[c] = kp;
            s->pv[c] = vp;
        }
        enum { AHEAD = 8 };
        for (int32_t c = 0; c < ng; c++) {
            if (c + AHEAD < ng && s->pk[c + AHEAD])
                for (int32_t d = 0; d < D; d += 16) {
                    __builtin_prefetch(s->pk[c + AHEAD] + d);
                    __builtin_prefetch(s->pv[c + AHEAD] + d);
                }
            if (s->pk[c]) {
                memcpy(s->kc + (int64_t)c * D, s->pk[c], (size_t)D * sizeof(float));
                memcpy(s->vc + (int64_t)c * D, s->pv[c], (size_t)D * sizeof(float));
            } else {
                memset(s->kc + (int64_t)c * D, 0, (size_t)D * sizeof(float));
                memset(s->vc + (int64_t)c * D, 0, (size_t)D * sizeof(float));
            }
        }
        for (int32_t t = 0; t < nr; t += SPA_QT) {
            const int32_t tr = nr - t < SPA_QT ? nr - t : SPA_QT, ldq = (tr + 15) / 16 * 16;
            const int64_t *trow = rows + t;
            /* the tile's keys: a prefix of the chunk under causality */
            int64_t tend = g->k1;
            if (cfg->causal && trow[tr - 1] + 1 < tend) tend = trow[tr - 1] + 1;
            const int64_t Kt = tend > k0 ? (tend - k0 + M - 1) / M : 0;
            if (Kt <= c0) continue;
            const int64_t tc1 = c1 < Kt ? c1 : Kt;
            const int32_t nk = (int32_t)(tc1 - c0);
            /* pass 2: the tile's queries and running partials */
            s->ldq = ldq;
            for (int32_t r = 0; r < tr; r++) {
                const float *qr = q + (base + trow[r]) * D;
                if (s->fast)
                    for (int32_t d = 0; d < D; d++) s->qt[(int64_t)d * ldq + r] = qr[d];
                else
                    memcpy(s->qt + (int64_t)r * D, qr, (size_t)D * sizeof(float));
                s->m[r] = m[base + trow[r]];
                s->l[r] = l[base + trow[r]];
                memcpy(s->acc + (int64_t)r * D, acc + (base + trow[r]) * D, (size_t)D * sizeof(float));
            }
            s->acc_set = 1;
            if (s->fast)
                for (int32_t d = 0; d < D; d++)
                    for (int32_t r = tr; r < ldq; r++) s->qt[(int64_t)d * ldq + r] = 0.0f;
            /* pass 3: scores */
            int64_t rs, cs;
            if (s->fast) {
                s->K->qk(nk, D, ldq, cfg->scale, s->kc, s->qt, s->s, NULL, NULL);
                rs = 1, cs = ldq;
            } else {
                if (s->exact) spa_dots(tr, nk, D, cfg->scale, s->qt, s->kc, s->s);
                else
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tr, nk, D, cfg->scale, s->qt, D, s->kc, D,
                                0.0f, s->s, nk);
                rs = nk, cs = 1;
            }
            /* pass 4: mask what the block pass or an earlier rule took, and causality */
            for (int32_t c = 0; c < nk; c++)
                if (s->kcls[c] == 1)
                    for (int32_t r = 0; r < tr; r++) s->s[c * cs + r * rs] = -INFINITY;
            const int64_t jlo = k0 + c0 * M, jhi = k0 + (tc1 - 1) * M; /* the chunk's token span */
            for (int32_t r = 0; r < tr; r++) {
                const int64_t i = trow[r], x = t + r;
                int64_t lo, hi;
                if (cfg->causal && i < jhi) mask_class(s->s, rs, cs, r, i >= k0 ? (i - k0) / M + 1 : 0, Kt, c0, tc1);
                class_range(s->xlo[x], s->xhi[x], k0, M, &lo, &hi);
                mask_class(s->s, rs, cs, r, lo, hi, c0, tc1);
                const int32_t *rb = s->xrb + x * (s->rmax + 1);
                for (int32_t u = 0; u < s->xrn[x]; u++) {
                    class_range((int64_t)rb[u] * B, spa_block_end(cfg, rb[u]), k0, M,
                                &lo, &hi);
                    mask_class(s->s, rs, cs, r, lo, hi, c0, tc1);
                }
                for (int64_t u = s->xl0[x]; u < s->xl1[x]; u++) {
                    int64_t b = lay->idx[u];
                    if ((b + 1) * B <= jlo) continue;
                    if (b * B > jhi) break;
                    class_range(b * B, spa_block_end(cfg, b), k0, M, &lo, &hi);
                    mask_class(s->s, rs, cs, r, lo, hi, c0, tc1);
                }
                /* keys an earlier residue rule took: arithmetic progressions
                 * among the class keys */
                if (g->rule > 0 && hr->stride) /* j = i (mod S) */
                    mask_progression(s->s, rs, cs, r, 0, Kt, c0, tc1, k0, M, hr->stride, i);
                for (int p = 0; p < g->rule - 1; p++) { /* pair p selects i and j in one segment */
                    if (!spa_dil_sel(hr, p, h, i)) continue;
                    const int64_t sa = i / hr->dil_w[p] * hr->dil_w[p], rp = hr->dil_r[p];
                    class_range(sa, sa + hr->dil_w[p], k0, M, &lo, &hi);
                    mask_progression(s->s, rs, cs, r, lo, hi, c0, tc1, k0, M, rp, sa + (int64_t)h % rp);
                }
            }
            /* a key the plan did not bring, yet a row attends it: poison the row loudly */
            for (int32_t c = 0; c < nk; c++)
                if (s->kcls[c] == 2)
                    for (int32_t r = 0; r < tr; r++)
                        if (s->s[c * cs + r * rs] != -INFINITY) s->s[c * cs + r * rs] = NAN;
            /* passes 5-7: softmax of the chunk, merged into the running partials */
            s->nk = nk;
            s->npiece = 1;
            s->pk[0] = s->kc;
            s->pv[0] = s->vc;
            s->pn[0] = nk;
            if (s->fast) softmax_tail_t(s, tr, 0, NULL);
            else softmax_tail(s, tr);
            for (int32_t r = 0; r < tr; r++) {
                m[base + trow[r]] = s->m[r];
                l[base + trow[r]] = s->l[r];
                memcpy(acc + (base + trow[r]) * D, s->acc + (int64_t)r * D, (size_t)D * sizeof(float));
            }
        }
    }
    s->nk = 0;
    s->npiece = 0;
}

/* x - m rounded to float, with the rounding error in *lo (TwoSum), so that
 * exp(x - m) = exp(d) * (1 + lo) to float precision whatever m is; the
 * global rows' m depends on how their keys are split over ranks. */
static inline float shift_exact(float x, float m, float *lo)
{
    float d = x - m, bb = d - x;
    *lo = d == -INFINITY ? 0.0f : (x - (d - bb)) + (-m - bb);
    return d;
}

/* Global rows with the register-blocked products (D % 8 == 0): float
 * scores and chunk sums, merged across chunks in double. A chunk's partial
 * depends only on its keys, and chunks are aligned to absolute multiples
 * of KC, so the split over ranks changes only the few chunks a shard
 * boundary cuts.
 *   qg: [ng][D];  k, v: [len][D];  part: [ng][D + 2] double */
static void global_partial_t(const spa_config *cfg, spa_scratch *s, const spa_rowctx *x, const float *qg,
                             const int64_t *gidx, int64_t ng, const float *k, const float *v, int64_t j0, int64_t len,
                             double *part)
{
    const int32_t D = cfg->dim, ld = D + 2;
    const int nomask = !x && !cfg->causal; /* mask_rows would do nothing */
    float *St = s->s, *mc = s->mc, *lc = s->lc;
    for (int64_t g0 = 0; g0 < ng; g0 += SPA_QT) {
        const int32_t rows = (int32_t)(ng - g0 < SPA_QT ? ng - g0 : SPA_QT), ldq = (rows + 15) / 16 * 16;
        const int64_t *gi = gidx + g0;
        s->K->tpose(qg + g0 * D, D, rows, D, ldq, s->qt);
        int64_t jend = j0 + len;
        if (cfg->causal && gi[rows - 1] + 1 < jend) jend = gi[rows - 1] + 1;
        for (int64_t a = j0, e; a < jend; a = e) {
            e = kc_end(a, jend);
            const int32_t nk = (int32_t)(e - a);
            /* pass 1: scores, causal mask; without a mask (global rows,
             * not causal) the column maxima come with the scores */
            if (nomask)
                for (int32_t r = 0; r < ldq; r++) mc[r] = -INFINITY;
            /* the stream: this chunk's values during the scores, the next
             * chunk's keys during P V (both read once, from memory) */
            const float *vc = v + (a - j0) * D;
            const int64_t e2 = kc_end(e, jend);
            const char *rx[2] = {(const char *)vc, (const char *)(k + (e - j0) * D)};
            const int64_t rxl[2] = {(int64_t)nk * D * (int64_t)sizeof(float), (e2 - e) * D * (int64_t)sizeof(float)};
            spa_pfs pf;
            spa_pfs_init(&pf, NULL, NULL, NULL, 0, 0, 0, rx, rxl, e2 > e ? 2 : 1, (int64_t)nk * D);
            spa_pfs_phase(&pf, (rxl[0] + 63) / 64, (int64_t)nk * D);
            s->K->qk(nk, D, ldq, cfg->scale, k + (a - j0) * D, s->qt, St, nomask ? mc : NULL, &pf);
            /* pass 2: column maxima; exp(s - m) = exp(d) * (1 + lo) */
            if (!nomask) {
                mask_rows(cfg, x, gi, rows, a, nk, St, 1, ldq);
                s->K->colmax(St, nk, ldq, mc);
            }
            s->K->expsum_lo(St, nk, ldq, mc, lc);
            /* pass 3: chunk acc = P V */
            spa_pfs_phase(&pf, pf.lines, (int64_t)rows * nk * D);
            s->K->pvp(1, &vc, &nk, D, ldq, rows, St, s->cacc, &pf, 1);
            /* pass 4: merge into the running partials, in double */
            for (int32_t r = 0; r < rows; r++) {
                double chunk[2 + D];
                chunk[0] = mc[r];
                chunk[1] = lc[r];
                for (int32_t d = 0; d < D; d++) chunk[2 + d] = s->cacc[(int64_t)r * D + d];
                spa_partial_merge(part + (g0 + r) * ld, chunk, D);
            }
        }
    }
}

void spa_kernel_global_partial(const spa_config *cfg, spa_scratch *s, int32_t h, int64_t c, const float *qg,
                               const int64_t *gidx, int64_t ng, const float *k, const float *v, int64_t j0,
                               int64_t len, double *part)
{
    const spa_rowctx *x = NULL;
    if (c >= 0) { /* rows of a spread block: the block's rule */
        spa_rowctx_init(&s->x, cfg, h, c, s->w);
        x = &s->x;
    }
    /* Global rows sum over every key, split differently on every rank
     * count; their probabilities and sums are accumulated in double so that
     * the split changes the result only at float32 rounding of the output.
     *   qg: [ng][D];  k, v: [len][D];  part: [ng][D + 2] (max, sum, acc[D]) */
    const int32_t D = cfg->dim, ld = D + 2;
    if (s->fast) {
        global_partial_t(cfg, s, x, qg, gidx, ng, k, v, j0, len, part);
        return;
    }
    for (int64_t g0 = 0; g0 < ng; g0 += SPA_QT) {
        int32_t rows = (int32_t)(ng - g0 < SPA_QT ? ng - g0 : SPA_QT);
        const int64_t *gi = gidx + g0;
        /* causal: no key past the last query of the tile */
        int64_t jend = j0 + len;
        if (cfg->causal && gi[rows - 1] + 1 < jend) jend = gi[rows - 1] + 1;
        /* chunks aligned to absolute multiples of KC: the same keys share a
         * chunk on any rank count, except where a shard boundary cuts one */
        for (int64_t a = j0, e; a < jend; a = e) {
            e = kc_end(a, jend);
            const int32_t nk = (int32_t)(e - a);
            const float *kc = k + (a - j0) * D, *vc = v + (a - j0) * D;
            float *S = s->s;
            /* pass 1: scores, causal mask */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, nk, D, cfg->scale, qg + g0 * D, D, kc,
                        D, 0.0f, S, nk);
            mask_rows(cfg, x, gi, rows, a, nk, S, nk, 1);
            /* pass 2: chunk maxima, probabilities (float exp, double sums) */
            for (int32_t r = 0; r < rows; r++) {
                float *row = S + (int64_t)r * nk, mx = -INFINITY;
                double *pd = s->pd + (int64_t)r * nk, sum = 0.0;
#pragma omp simd reduction(max : mx)
                for (int32_t c = 0; c < nk; c++) mx = row[c] > mx ? row[c] : mx;
                s->mc[r] = mx;
                if (mx == -INFINITY) {
                    memset(pd, 0, (size_t)nk * sizeof *pd);
                    s->lcd[r] = 0.0;
                    continue;
                }
                /* exp(s - mx) = exp(d) * (1 + lo) */
                float *lo = s->lo;
                for (int32_t c = 0; c < nk; c++) row[c] = shift_exact(row[c], mx, &lo[c]);
                spa_vexp(row, nk);
                for (int32_t c = 0; c < nk; c++) sum += pd[c] = (double)row[c] * (1.0 + (double)lo[c]);
                s->lcd[r] = sum;
            }
            /* pass 3: chunk acc = P V in double */
            for (int64_t i = 0; i < (int64_t)nk * D; i++) s->vd[i] = vc[i];
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, D, nk, 1.0, s->pd, nk, s->vd, D, 0.0,
                        s->cd, D);
            /* pass 4: merge into the running partials */
            for (int32_t r = 0; r < rows; r++) {
                double chunk[2 + D];
                chunk[0] = s->mc[r];
                chunk[1] = s->lcd[r];
                memcpy(chunk + 2, s->cd + (int64_t)r * D, (size_t)D * sizeof(double));
                spa_partial_merge(part + (g0 + r) * ld, chunk, D);
            }
        }
    }
}

/* Adds one unit's (mc, lc, cacc) of row r to its fixed-point sums. */
static void unit_add(spa_i128 *acc, int32_t D, float mc, double lc, const double *ca, float mstar, int fl, int fa)
{
    if (mc == -INFINITY) return; /* no key of the row here */
    const double w = exp((double)mc - (double)mstar);
    int bad = !isfinite(lc) || !isfinite(w) || !(w <= 1.0);
    for (int32_t d = 0; d < D && !bad; d++) bad = !isfinite(ca[d]);
    if (bad) {
        acc[0] += 1;
        return;
    }
    acc[1] += spa_fix128(lc * w, fl);
    for (int32_t d = 0; d < D; d++) acc[2 + d] += spa_fix128(ca[d] * w, fa);
}

void spa_kernel_spread_exact(const spa_config *cfg, spa_scratch *s, int32_t h, int64_t c, const float *qg,
                             const int64_t *gidx, int64_t ng, const float *k, const float *v, int64_t j0,
                             int64_t len, const float *mstar, float *mloc, spa_i128 *acc, int fl, int fa)
{
    /* qg: [ng][D];  k, v: [len][D];  mstar, mloc: [ng];  acc: [ng][D + 2]
     * per tile of QT rows, per unit [a, e) of the block grid:
     * pass 1: scores (the register-blocked qk when fast, else one dot per
     *         pair), masked; unit maxima mc
     * pass 2: mloc, or P = exp(S - mc) and the unit's lc, cacc, then
     *         unit_add */
    const spa_rowctx *x = NULL;
    if (c >= 0) {
        spa_rowctx_init(&s->x, cfg, h, c, s->w);
        x = &s->x;
    }
    const int32_t D = cfg->dim;
    const int64_t B = cfg->block;
    double *ca = s->cd; /* [QT][D] */
    for (int64_t g0 = 0; g0 < ng; g0 += SPA_QT) {
        const int32_t rows = (int32_t)(ng - g0 < SPA_QT ? ng - g0 : SPA_QT), ldq = (rows + 15) / 16 * 16;
        const int64_t *gi = gidx + g0;
        if (s->fast)
            s->K->tpose(qg + g0 * D, D, rows, D, ldq, s->qt);
        int64_t jend = j0 + len;
        if (cfg->causal && gi[rows - 1] + 1 < jend) jend = gi[rows - 1] + 1;
        for (int64_t a = j0, e; a < jend; a = e) {
            const int64_t bend = (a / B + 1) * B; /* the unit: the rest of a's block, at most KC keys */
            e = bend < a + SPA_KC ? bend : a + SPA_KC;
            if (e > jend) e = jend;
            const int32_t nk = (int32_t)(e - a);
            const float *kc = k + (a - j0) * D, *vc = v + (a - j0) * D;
            float *S = s->s, *mc = s->mc, *lc = s->lc;
            /* pass 1: S^T [nk][ldq] (fast) or S [rows][nk] */
            const int64_t rs = s->fast ? 1 : nk, cs = s->fast ? ldq : 1;
            if (s->fast) {
                s->K->qk(nk, D, ldq, cfg->scale, kc, s->qt, S, NULL, NULL);
            } else {
                spa_dots(rows, nk, D, cfg->scale, qg + g0 * D, kc, S);
            }
            mask_rows(cfg, x, gi, rows, a, nk, S, rs, cs);
            for (int32_t r = 0; r < rows; r++) {
                float m = -INFINITY;
                for (int32_t j = 0; j < nk; j++) m = S[r * rs + j * cs] > m ? S[r * rs + j * cs] : m;
                mc[r] = m;
            }
            /* pass 2 */
            if (!mstar) {
                for (int32_t r = 0; r < rows; r++) mloc[g0 + r] = mc[r] > mloc[g0 + r] ? mc[r] : mloc[g0 + r];
                continue;
            }
            if (s->fast) {
                s->K->expsum_lo(S, nk, ldq, mc, lc);
                memset(s->cacc, 0, (size_t)rows * D * sizeof(float));
                s->K->pv(nk, D, ldq, rows, S, vc, s->cacc);
                for (int64_t i = 0; i < (int64_t)rows * D; i++) ca[i] = s->cacc[i];
                for (int32_t r = 0; r < rows; r++)
                    unit_add(acc + (g0 + r) * (D + 2), D, mc[r], lc[r], ca + (int64_t)r * D, mstar[g0 + r], fl, fa);
                continue;
            }
            for (int32_t r = 0; r < rows; r++) {
                double l = 0.0, *cr = ca + (int64_t)r * D;
                memset(cr, 0, (size_t)D * sizeof(double));
                if (mc[r] != -INFINITY)
                    for (int32_t j = 0; j < nk; j++) {
                        const double p = exp((double)S[(int64_t)r * nk + j] - (double)mc[r]);
                        l += p;
                        for (int32_t d = 0; d < D; d++) cr[d] += p * vc[(int64_t)j * D + d];
                    }
                unit_add(acc + (g0 + r) * (D + 2), D, mc[r], l, cr, mstar[g0 + r], fl, fa);
            }
        }
    }
}

void spa_partial_init(double *part, int64_t count, int32_t D)
{
    for (int64_t i = 0; i < count; i++) {
        double *p = part + i * (D + 2);
        p[0] = -INFINITY;
        memset(p + 1, 0, (size_t)(D + 1) * sizeof *p);
    }
}

void spa_partial_finish(const double *p, int32_t D, float *out, float *lse)
{
    if (p[1] == 0.0) { /* S(i) is empty */
        memset(out, 0, (size_t)D * sizeof *out);
        *lse = -INFINITY;
        return;
    }
    for (int32_t d = 0; d < D; d++) out[d] = (float)(p[2 + d] / p[1]);
    *lse = (float)(p[0] + log(p[1]));
}

void spa_partial_merge(double *a, const double *b, int32_t D)
{
    if (b[0] == -INFINITY) return;
    if (a[0] == -INFINITY) {
        memcpy(a, b, (size_t)(D + 2) * sizeof *a);
        return;
    }
    double m = a[0] > b[0] ? a[0] : b[0], fa = exp(a[0] - m), fb = exp(b[0] - m);
    a[1] = a[1] * fa + b[1] * fb;
    for (int32_t d = 0; d < D; d++) a[2 + d] = a[2 + d] * fa + b[2 + d] * fb;
    a[0] = m;
}
