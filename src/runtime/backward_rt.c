/* backward_rt.c - the distributed backward pass: the schedule of one
 * rank's share (no MPI calls; comm.c brings K and V as in a forward run,
 * comm_grad.c sends the gradients home).
 *
 * A rank computes dq of its own rows and the contributions to dk, dv of
 * every key its rows attend, with the kernels of backward.c, over the key
 * sources a forward run builds (own shard, halo, gathered tokens, fetched
 * blocks). Each source has a sink beside it: the caller's dk, dv for the
 * shard, comm_grad's buffers for the others, which go back to the keys'
 * owners. Order of one pass:
 *   1. Dl = rowsum(dout * out); the gathered K, V and the spread rows' q
 *      (comm.c), their dout, lse, Dl (comm_grad.c); every return's
 *      receive posted
 *   2. the halo and the first batch's fetches posted
 *   3. the query blocks that need neither, then the spread rows against
 *      this shard's keys (their dq partial, this shard's dk, dv)
 *   4. after the halo, batch by batch: the batch's query blocks into the
 *      batch's fetched sinks, which go home before their buffer is reused;
 *      the residue keys (strided, dilated) with the last batch, whose
 *      blocks hold them, as in the forward
 *   5. the halo sinks home, the gathered sinks and the spread rows' dq
 *      to their owners, and every return added in a fixed order
 * Threads take whole heads, and within a head the blocks in the plan's
 * order: every key's sum runs in one order whatever the thread count.
 * Parallelism is therefore at most H; the sinks of one head are shared by
 * all its blocks, and per-thread sinks would cost O(threads) times the
 * fetched and halo memory.
 *
 * Exact mode (spa_ctx_set_exact): the sinks are int64_t fixed point,
 * this rank's own keys' too (xdk, xdv, converted into dk, dv at the end),
 * with scales that one Allreduce of the inputs' maxima fixes for every
 * rank count alike (exact_scales).
 */
#include "comm_grad.h"
#include "runtime.h"

#include <omp.h>
#include <string.h>

void openblas_set_num_threads(int);

struct spa_bwd {
    spa_gcomm *g;
    spa_bscratch **scr;        /* [threads] */
    float *Dl;                 /* [H][n_own] */
    unsigned char *served;     /* [H][own blocks] the spread path computes the block */
    spa_gradseg gseg[3];       /* sinks beside ctx->seg: left halo, shard, right halo */
    int exact;                 /* built for exact mode */
    int64_t *xdk, *xdv;        /* exact: this shard's sinks, [H][n_own][D] */
};

void spa_ctx_backward_free(spa_ctx ctx)
{
    struct spa_bwd *b = ctx->bwd;
    if (!b) return;
    spa_gcomm_destroy(&b->g);
    if (b->scr)
        for (int t = 0; t < ctx->threads; t++) spa_bscratch_destroy(b->scr[t]);
    free(b->scr);
    spa_free(b->Dl);
    spa_free(b->xdk), spa_free(b->xdv);
    free(b->served);
    free(b);
    ctx->bwd = NULL;
}

/* Local allocations, then agreement, then the collective set-up of the
 * returns. */
static spa_err bwd_create(spa_ctx ctx)
{
    const spa_config *cfg = &ctx->cfg;
    const spa_commplan *pl = &ctx->plan;
    const int64_t nq = pl->b1 - pl->b0;
    spa_err e = SPA_OK;
    struct spa_bwd *b = calloc(1, sizeof *b);
    ctx->bwd = b;
    if (b) {
        b->scr = calloc((size_t)ctx->threads, sizeof *b->scr);
        b->Dl = spa_alloc((size_t)(cfg->heads * ctx->n_own) * sizeof(float));
        b->served = malloc((size_t)(cfg->heads * nq + 1));
        b->exact = ctx->exact;
        if (b->exact) {
            b->xdk = spa_alloc((size_t)(cfg->heads * ctx->n_own * cfg->dim + 1) * sizeof(int64_t));
            b->xdv = spa_alloc((size_t)(cfg->heads * ctx->n_own * cfg->dim + 1) * sizeof(int64_t));
        }
        spa_patws *w = spa_patws_create(cfg);
        int ok = b->scr && b->Dl && b->served && w && (!b->exact || (b->xdk && b->xdv));
        for (int t = 0; ok && t < ctx->threads; t++) ok = (b->scr[t] = spa_bscratch_create(cfg)) != NULL;
        for (int32_t h = 0; ok && h < cfg->heads; h++)
            for (int64_t c = pl->b0; c < pl->b1; c++)
                b->served[h * nq + c - pl->b0] = (unsigned char)spa_pattern_served_ws(cfg, h, c, w);
        spa_patws_destroy(w);
        e = ok ? spa_gcomm_create(ctx->cm, b->exact, &b->g)
               : spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory for the backward pass");
    } else {
        e = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory for the backward pass");
    }
    /* agree before the first collective, so a rank that failed cannot
     * leave the others waiting inside it */
    e = spa_agree(ctx->cm->comm, e);
    if (e == SPA_OK) e = spa_gcomm_connect(b->g);
    if (e != SPA_OK) {
        spa_ctx_backward_free(ctx);
        return e;
    }
    b->gseg[0] = (spa_gradseg){b->g->hl_dk, b->g->hl_dv};
    b->gseg[2] = (spa_gradseg){b->g->hr_dk, b->g->hr_dv};
    return SPA_OK;
}

/* The arguments every task of one pass shares. */
typedef struct bpass {
    spa_ctx ctx;
    const float *q, *k, *v, *dout, *lse;
    float *dq, *dk, *dv;
    const spa_keysrc *src;
    const spa_gradsink *sink;
} bpass;

/* Block pass of the tasks [t0, t1) of head h, in order. */
static void head_blocks(const bpass *p, spa_bscratch *s, int32_t h, int64_t t0, int64_t t1)
{
    spa_ctx ctx = p->ctx;
    const spa_config *cfg = &ctx->cfg;
    const int64_t D = cfg->dim, B = cfg->block, n_own = ctx->n_own, p0 = ctx->plan.t0;
    const int master = omp_get_thread_num() == 0;
    for (int64_t t = t0; t < t1; t++) {
        const spa_task *tk = &ctx->task[t];
        if (tk->h != h) continue;
        const int64_t row = (int64_t)h * n_own + tk->c * B - p0;
        spa_backward_block(cfg, p->src, p->sink, s, h, tk->c, p->q + row * D, p->dout + row * D, p->lse + row,
                           ctx->bwd->Dl + row, p->dq + row * D);
        if (master) spa_comm_poke(ctx->cm), spa_gcomm_poke(ctx->bwd->g);
    }
}

/* The spread rows of head h (tiles in plan order) against this shard's
 * keys: their dq partials, and this shard's dk, dv. */
static void head_spread(const bpass *p, spa_bscratch *s, int32_t h)
{
    spa_ctx ctx = p->ctx;
    const spa_config *cfg = &ctx->cfg;
    const spa_commplan *pl = &ctx->plan;
    const spa_gcomm *g = ctx->bwd->g;
    const int64_t D = cfg->dim, n_own = ctx->n_own, off = (int64_t)h * n_own * D, ew = g->ew;
    if (n_own == 0) return;
    for (int32_t t = 0; t < pl->nspread_tiles; t++) {
        const int64_t r0 = ctx->tile_row[t], ng = ctx->tile_row[t + 1] - r0;
        if (ng == 0 || pl->spread[r0].h != h) continue;
        spa_backward_spread(cfg, s, h, spa_ctx_tile_block(ctx, r0), ctx->cm->sq + r0 * D, g->sdo + r0 * D, g->slse + r0, g->sdl + r0,
                            ctx->stok + r0, ng, p->k + off, p->v + off, pl->t0, n_own, g->sdq + r0 * D * ew,
                            p->dk + off * ew, p->dv + off * ew);
        if (omp_get_thread_num() == 0) spa_comm_poke(ctx->cm), spa_gcomm_poke(ctx->bwd->g);
    }
}

/* The residue keys of head h's own blocks, ascending (after every block
 * pass: it adds to dq). */
static void head_residue(const bpass *p, spa_bscratch *s, int32_t h)
{
    spa_ctx ctx = p->ctx;
    const spa_config *cfg = &ctx->cfg;
    const spa_commplan *pl = &ctx->plan;
    const int64_t D = cfg->dim, B = cfg->block, n_own = ctx->n_own, nq = pl->b1 - pl->b0;
    if (!cfg->hr[h].stride && !cfg->hr[h].ndilated) return;
    for (int64_t c = pl->b0; c < pl->b1; c++) {
        if (ctx->bwd->served[h * nq + c - pl->b0]) continue;
        const int64_t row = (int64_t)h * n_own + c * B - pl->t0;
        spa_backward_residue(cfg, p->src, p->sink, s, h, c, p->q + row * D, p->dout + row * D, p->lse + row,
                             ctx->bwd->Dl + row, p->dq + row * D);
        if (omp_get_thread_num() == 0) spa_comm_poke(ctx->cm), spa_gcomm_poke(ctx->bwd->g);
    }
}

/* One phase over every head, in parallel: the block pass of tasks
 * [t0, t1), then with spread the spread rows, with residue the residue. */
static void run_phase(const bpass *p, int64_t t0, int64_t t1, int spread, int residue)
{
    spa_ctx ctx = p->ctx;
#pragma omp parallel for schedule(dynamic, 1) num_threads(ctx->threads)
    for (int32_t h = 0; h < ctx->cfg.heads; h++) {
        spa_bscratch *s = ctx->bwd->scr[omp_get_thread_num()];
        head_blocks(p, s, h, t0, t1);
        if (spread) head_spread(p, s, h);
        if (residue) head_residue(p, s, h);
    }
}

/* Exact mode's scales: 2^F with the largest F that keeps every sum of
 * terms below 2^61 in magnitude. Bounds, with P_ij <= 1 (lse from the same
 * forward, slack 2 for its rounding) and |dS_ij| <= P_ij (|dout_i| |v_j| +
 * |Dl_i|) <= P_ij c:
 *   |dk_jd| <= s 2 n c max|q|   (at most n rows attend a key)
 *   |dv_jd| <= 2 n max|dout|
 *   |dq_id| <= s 2 c max|k|     (sum_j P_ij <= 1)
 * The maxima are over every rank (one Allreduce), so the scales depend on
 * the inputs and n, never on P. Collective. */
static double fix_scale(double bound)
{
    int e = 0;
    if (!(bound > 0.0) || !isfinite(bound)) return 1.0; /* all terms 0, or every term is flagged */
    frexp(bound, &e);                                    /* bound < 2^e */
    const int F = 61 - e;
    return ldexp(1.0, F < -900 ? -900 : F > 900 ? 900 : F);
}

static spa_err exact_scales(spa_ctx ctx, const float *q, const float *k, const float *v, const float *dout,
                            const float *Dl, double *xq, double *xk, double *xv)
{
    const spa_config *cfg = &ctx->cfg;
    const int64_t rows = cfg->heads * ctx->n_own, D = cfg->dim;
    /* max |q|, |k|, |dout|, |Dl|, |dout_i|, |v_j| */
    double m[6] = {0, 0, 0, 0, 0, 0}, all[6];
    float mq = 0.0f, mk = 0.0f, mo = 0.0f;
    for (int64_t r = 0; r < rows; r++) {
        double nd = 0.0, nv = 0.0;
#pragma omp simd reduction(max : mq, mk, mo) reduction(+ : nd, nv)
        for (int64_t d = 0; d < D; d++) {
            const int64_t x = r * D + d;
            const float a = fabsf(q[x]), b = fabsf(k[x]), c = fabsf(dout[x]);
            mq = a > mq ? a : mq, mk = b > mk ? b : mk, mo = c > mo ? c : mo;
            nd += (double)dout[x] * dout[x], nv += (double)v[x] * v[x];
        }
        m[3] = fmax(m[3], fabs(Dl[r])), m[4] = fmax(m[4], sqrt(nd)), m[5] = fmax(m[5], sqrt(nv));
    }
    m[0] = mq, m[1] = mk, m[2] = mo;
    /* NaN inputs are left out of the maxima: their terms are NaN, which
     * spa_fix_add flags */
    SPA_MPI_CHECK(MPI_Allreduce(m, all, 6, MPI_DOUBLE, MPI_MAX, ctx->cm->comm));
    const double n = (double)cfg->n, s = fabs(cfg->scale), c = all[4] * all[5] + all[3];
    *xk = fix_scale(s * 2.0 * n * c * all[0]);
    *xv = fix_scale(2.0 * n * all[2]);
    *xq = fix_scale(s * 2.0 * c * all[1]);
    return SPA_OK;
}

spa_err spa_ctx_backward(spa_ctx ctx, const float *q, const float *k, const float *v, const float *out,
                         const float *lse, const float *dout, float *dq, float *dk, float *dv, spa_stats *st)
{
    const spa_config *cfg = &ctx->cfg;
    const spa_commplan *pl = &ctx->plan;
    const int64_t H = cfg->heads, D = cfg->dim, B = cfg->block, n_own = ctx->n_own, nq = pl->b1 - pl->b0;
    SPA_CHECK(spa_ctx_agree_exact(ctx));
    if (ctx->bwd && ctx->bwd->exact != ctx->exact) spa_ctx_backward_free(ctx); /* every rank alike */
    if (!ctx->bwd) SPA_CHECK(bwd_create(ctx));
    struct spa_bwd *bw = ctx->bwd;
    spa_gcomm *g = bw->g;
    const int64_t ew = g->ew;
    spa_stats z;
    memset(&z, 0, sizeof z);
    double t_start = spa_now(), t;
    openblas_set_num_threads(1); /* OpenBLAS runs inside our loop over heads */

    /* the key sources of a forward run, and the sinks beside them */
    spa_keyseg seg[3] = {ctx->seg[0], ctx->seg[1], ctx->seg[2]};
    seg[1].k = k, seg[1].v = v;
    spa_keysrc src = ctx->src;
    src.seg = seg;
    float *sdk = bw->exact ? (float *)(void *)bw->xdk : dk, *sdv = bw->exact ? (float *)(void *)bw->xdv : dv;
    spa_gradseg gseg[3] = {bw->gseg[0], {sdk, sdv}, bw->gseg[2]};
    spa_gradsink sink = {gseg, NULL, NULL, g->gdk, g->gdv};
    const bpass p = {ctx, q, k, v, dout, lse, dq, sdk, sdv, &src, &sink};

    /* 1 */
    t = spa_now();
    spa_backward_delta(H * n_own, (int32_t)D, out, dout, bw->Dl);
    memset(sdk, 0, (size_t)(H * n_own * D * ew) * sizeof(float));
    memset(sdv, 0, (size_t)(H * n_own * D * ew) * sizeof(float));
    memset(g->hl_dk, 0, (size_t)(H * ctx->cm->nleft * D * ew) * sizeof(float));
    memset(g->hl_dv, 0, (size_t)(H * ctx->cm->nleft * D * ew) * sizeof(float));
    memset(g->hr_dk, 0, (size_t)(H * ctx->cm->nright * D * ew) * sizeof(float));
    memset(g->hr_dv, 0, (size_t)(H * ctx->cm->nright * D * ew) * sizeof(float));
    memset(g->gdk, 0, (size_t)(H * cfg->nkv_tokens * D * ew) * sizeof(float));
    memset(g->gdv, 0, (size_t)(H * cfg->nkv_tokens * D * ew) * sizeof(float));
    memset(g->sdq, 0, (size_t)(pl->nspread * D * ew) * sizeof(float));
    /* rows the spread path computes whole: their dq is its alone */
    for (int32_t h = 0; h < H; h++)
        for (int64_t c = pl->b0; c < pl->b1; c++)
            if (bw->served[h * nq + c - pl->b0]) {
                const int64_t r0 = c * B - pl->t0, r1 = (c + 1) * B < pl->t1 ? (c + 1) * B - pl->t0 : n_own;
                memset(dq + ((int64_t)h * n_own + r0) * D, 0, (size_t)((r1 - r0) * D) * sizeof(float));
            }
    double xq = 0.0, xk = 0.0, xv = 0.0;
    z.seconds_compute += spa_now() - t;
    if (bw->exact) {
        t = spa_now();
        SPA_CHECK(exact_scales(ctx, q, k, v, dout, bw->Dl, &xq, &xk, &xv));
        z.seconds_global += spa_now() - t;
    }
    for (int x = 0; x < ctx->threads; x++) spa_bscratch_set_exact(bw->scr[x], bw->exact, xk, xv, xq);
    g->xq = xq;
    SPA_CHECK(spa_gcomm_begin(g, &z));
    SPA_CHECK(spa_comm_gather(ctx->cm, q, k, v, &z));
    SPA_CHECK(spa_gcomm_gather_rows(g, dout, lse, bw->Dl, &z));

    /* 2 */
    SPA_CHECK(spa_comm_post(ctx->cm, k, v, &z));
    SPA_CHECK(spa_comm_fetch(ctx->cm, 0, &z));
    if (!ctx->overlap) {
        SPA_CHECK(spa_comm_wait_halo(ctx->cm, &z));
        SPA_CHECK(spa_comm_wait_batch(ctx->cm, 0, &z));
    }

    /* 3: no fetched block yet, so no fetched sink */
    t = spa_now();
    run_phase(&p, 0, ctx->nready, 1, 0);
    z.seconds_compute += spa_now() - t;

    /* 4 */
    if (ctx->overlap) SPA_CHECK(spa_comm_wait_halo(ctx->cm, &z));
    for (int b = 0; b < pl->nbatch; b++) {
        if (ctx->overlap || b > 0) SPA_CHECK(spa_comm_wait_batch(ctx->cm, b, &z));
        if (b + 1 < pl->nbatch) {
            SPA_CHECK(spa_comm_fetch(ctx->cm, b + 1, &z));
            if (!ctx->overlap) SPA_CHECK(spa_comm_wait_batch(ctx->cm, b + 1, &z));
        }
        spa_comm_batch_keys(ctx->cm, b, &src);
        SPA_CHECK(spa_gcomm_batch_sinks(g, b, &sink, &z));
        t = spa_now();
        const int last = b + 1 == pl->nbatch;
        run_phase(&p, ctx->nready + pl->batch_task_off[b], ctx->nready + pl->batch_task_off[b + 1], 0, last);
        z.seconds_compute += spa_now() - t;
        SPA_CHECK(spa_gcomm_batch_return(g, b, &z));
    }

    /* 5 */
    SPA_CHECK(spa_gcomm_return_halo(g, &z));
    SPA_CHECK(spa_gcomm_return_gathered(g, &z));
    SPA_CHECK(spa_comm_finish(ctx->cm, &z));
    SPA_CHECK(spa_gcomm_finish(g, dq, sdk, sdv, &z));
    if (bw->exact) { /* the fixed point into dk, dv; NaN everywhere if a term was left out */
        int bad = 0, any = 0;
        for (int x = 0; x < ctx->threads; x++) bad |= spa_bscratch_bad(bw->scr[x]);
        SPA_MPI_CHECK(MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, ctx->cm->comm));
        const double ik = 1.0 / xk, iv = 1.0 / xv;
        for (int64_t i = 0; i < H * n_own * D; i++) {
            dk[i] = any ? NAN : (float)((double)bw->xdk[i] * ik);
            dv[i] = any ? NAN : (float)((double)bw->xdv[i] * iv);
        }
    }

    double sum = 0.0;
    for (int64_t i = 0; i < H * n_own * D; i++) sum += (double)dq[i] + (double)dk[i] + (double)dv[i];
    SPA_CHECK(spa_comm_sum_f64(ctx->cm, sum, &z.checksum));
    z.seconds_total = spa_now() - t_start;
    z.flops = 10 * D * ctx->pairs_total;
    z.rma = ctx->cm->rma && g->rma;
    z.batches = pl->nbatch;
    z.threads = ctx->threads;
    if (st) *st = z;
    return SPA_OK;
}
