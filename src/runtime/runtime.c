/* runtime.c - the distributed execution of one rank's plan.
 *
 * Order of one run, chosen so the transfers overlap the work that does not
 * need them:
 *   1. allgather K, V of the gathered tokens and q of the spread rows
 *      (small, needed by every block)
 *   2. post the halo Irecv/Isend and the first batch's fetches
 *   3. compute the query blocks that need neither, then the partials of the
 *      spread rows over this shard (pure local work)
 *   4. wait for the halo; then batch by batch (cfg->fetch_bytes bounds the
 *      fetched blocks of a batch): wait for the batch's fetches, post the
 *      next batch's, compute the batch's query blocks; then the residue
 *      pass of the strided and dilated rules, rule by rule, and merge each
 *      row's residue partial into its block result
 *   5. merge the spread rows' partials by log-sum-exp and finish them
 * The MPI calls themselves live in comm.c; this file is the schedule.
 */
#include "runtime.h"

#include <math.h>
#include <omp.h>
#include <string.h>

void openblas_set_num_threads(int);

/* Tasks in the plan's order: the ready query blocks (neither halo nor
 * fetch), then batch by batch the others. */
static spa_err setup_tasks(spa_ctx ctx)
{
    const spa_commplan *pl = &ctx->plan;
    const int64_t nb_tasks = pl->batch_task_off[pl->nbatch];
    ctx->nready = pl->ntask_ready;
    ctx->ntask = ctx->nready + nb_tasks;
    ctx->task = malloc((size_t)(ctx->ntask + 1) * sizeof *ctx->task);
    const size_t nbh = (size_t)(ctx->cfg.heads * (pl->b1 - pl->b0));
    ctx->bsum = malloc((nbh + 1) * sizeof *ctx->bsum);
    ctx->bresum = malloc(nbh + 1);
    SPA_REQUIRE(ctx->task && ctx->bsum && ctx->bresum, SPA_ERR_OTHER, "out of memory");
    if (ctx->nready) memcpy(ctx->task, pl->ready_task, (size_t)ctx->nready * sizeof *ctx->task);
    if (nb_tasks) memcpy(ctx->task + ctx->nready, pl->batch_task, (size_t)nb_tasks * sizeof *ctx->task);
    const int64_t nq = pl->b1 - pl->b0;
    memset(ctx->bresum, 1, nbh);
    for (int64_t t = 0; t < ctx->ntask; t++) ctx->bresum[ctx->task[t].h * nq + ctx->task[t].c - pl->b0] = 0;
    for (int64_t r = 0; r < pl->nspread; r++) {
        const spa_spread_row *w = &pl->spread[r];
        if (w->tok >= pl->t0 && w->tok < pl->t1) ctx->bresum[w->h * nq + w->tok / ctx->cfg.block - pl->b0] = 1;
    }
    return SPA_OK;
}

/* ctx->stage_task and stage_off (runtime.h), from the plan. */
static spa_err setup_stages(spa_ctx ctx)
{
    const spa_commplan *pl = &ctx->plan;
    const int lb = pl->nbatch - 1;
    const int64_t nt = pl->batch_task_off[lb + 1] - pl->batch_task_off[lb];
    ctx->stage_task = malloc((size_t)(nt + 1) * sizeof *ctx->stage_task);
    ctx->stage_off = malloc((size_t)(ctx->P + 1) * sizeof *ctx->stage_off);
    SPA_REQUIRE(ctx->stage_task && ctx->stage_off, SPA_ERR_OTHER, "out of memory");
    return spa_commplan_stages(&ctx->cfg, pl, ctx->stage_task, ctx->stage_off);
}

/* Spread units: pieces of SPREAD_UNIT keys at absolute multiples, at most
 * SPREAD_UNIT_BYTES of extra partials. The split depends on the shard and
 * the spread rows only, never on the thread count, so neither do the sums.
 * SPA_SPREAD_UNIT=<keys>, a multiple of the kernel's 512-key chunk, sets
 * smaller pieces (the tests' small sequences have one piece otherwise). */
enum { SPREAD_UNIT = 32768 };
#define SPREAD_UNIT_BYTES ((int64_t)64 << 20)

static int64_t spread_piece(void)
{
    const char *e = getenv("SPA_SPREAD_UNIT");
    long long u = e ? atoll(e) : 0;
    return u > 0 && u % 512 == 0 ? (int64_t)u : SPREAD_UNIT;
}

/* The spread rows' tokens and tiles, and their partials. */
static spa_err setup_spread(spa_ctx ctx)
{
    const spa_commplan *pl = &ctx->plan;
    const int64_t row_bytes = (ctx->cfg.dim + 2) * (int64_t)sizeof(double);
    const int64_t piece = spread_piece();
    ctx->unit_base = pl->t0 / piece * piece;
    const int64_t pieces = pl->t1 > pl->t0 ? (pl->t1 - 1) / piece - pl->t0 / piece + 1 : 1;
    const int64_t cap = pl->nspread ? SPREAD_UNIT_BYTES / (pl->nspread * row_bytes) + 1 : 1;
    ctx->nunit = pieces < cap ? pieces : cap;
    const int64_t per = (pieces + ctx->nunit - 1) / ctx->nunit; /* pieces per unit */
    ctx->nunit = (pieces + per - 1) / per;
    ctx->unit_keys = per * piece;
    ctx->upart = spa_alloc((size_t)((ctx->nunit - 1) * pl->nspread * row_bytes) + 1);
    SPA_REQUIRE(ctx->upart, SPA_ERR_OTHER, "out of memory for the spread rows");
    ctx->stok = malloc((size_t)(pl->nspread + 1) * sizeof *ctx->stok);
    ctx->tile_row = malloc((size_t)(pl->nspread_tiles + 1) * sizeof *ctx->tile_row);
    ctx->part = spa_alloc((size_t)(pl->nspread * (ctx->cfg.dim + 2)) * sizeof(double));
    ctx->xmax = spa_alloc((size_t)(pl->nspread + 1) * sizeof(float));
    ctx->xacc = spa_alloc((size_t)(pl->nspread * (ctx->cfg.dim + 2) + 1) * sizeof(spa_i128));
    SPA_REQUIRE(ctx->stok && ctx->tile_row && ctx->part && ctx->xmax && ctx->xacc, SPA_ERR_OTHER,
                "out of memory for the spread rows");
    for (int64_t r = 0; r < pl->nspread; r++) {
        ctx->stok[r] = pl->spread[r].tok;
        if (r == 0 || pl->spread[r].tile != pl->spread[r - 1].tile) ctx->tile_row[pl->spread[r].tile] = r;
    }
    ctx->tile_row[pl->nspread_tiles] = pl->nspread;
    return SPA_OK;
}

/* Where the kernel finds its keys: the halos, the shard (set per run),
 * the gathered tokens and the fetched blocks, all owned by the comm layer. */
static void setup_keys(spa_ctx ctx)
{
    const spa_commplan *pl = &ctx->plan;
    const spa_comm *c = ctx->cm;
    const int64_t D = ctx->cfg.dim;
    ctx->seg[0] = (spa_keyseg){pl->ext0, pl->t0, c->hl_k, c->hl_v, c->nleft * D};
    ctx->seg[1] = (spa_keyseg){pl->t0, pl->t1, NULL, NULL, ctx->n_own * D};
    ctx->seg[2] = (spa_keyseg){pl->t1, pl->ext1, c->hr_k, c->hr_v, c->nright * D};
    ctx->src.nseg = 3;
    ctx->src.seg = ctx->seg;
    ctx->src.gk = c->gk;
    ctx->src.gv = c->gv;
    spa_comm_batch_keys(c, 0, &ctx->src);
}

/* Appends one residue task: rows [r0, r1) of rrows, of class g. */
static spa_err push_rtask(spa_ctx ctx, int64_t *cap, const spa_residue *g, int64_t r0, int64_t r1)
{
    if (ctx->nrtask == *cap) {
        *cap = *cap ? 2 * *cap : 256;
        spa_residue *gg = realloc(ctx->rgroup, (size_t)*cap * sizeof *gg);
        if (gg) ctx->rgroup = gg;
        int64_t *oo = realloc(ctx->rrow_off, (size_t)(*cap + 1) * sizeof *oo);
        if (oo) ctx->rrow_off = oo;
        SPA_REQUIRE(gg && oo, SPA_ERR_OTHER, "out of memory for the residue tasks");
    }
    ctx->rgroup[ctx->nrtask] = *g;
    ctx->rrow_off[ctx->nrtask++] = r0;
    ctx->rrow_off[ctx->nrtask] = r1;
    return SPA_OK;
}

/* The rows of class g in [a, b) that the residue pass serves (not global,
 * not in a block the spread path serves), cut into tasks of SPA_RESIDUE_ROWS. */
static spa_err class_tasks(spa_ctx ctx, const spa_residue *g, int64_t a, int64_t b, const unsigned char *served,
                           int64_t *nrows, int64_t *cap)
{
    const spa_config *cfg = &ctx->cfg;
    const int64_t B = cfg->block, b0 = ctx->plan.b0, nq = ctx->plan.b1 - b0;
    int64_t first = g->k0 + (a > g->k0 ? (a - g->k0 + g->M - 1) / g->M * g->M : 0), r0 = *nrows;
    for (int64_t i = first; i < b; i += g->M) {
        if (served[(int64_t)g->h * nq + i / B - b0] || spa_pattern_is_global(cfg, i)) continue;
        ctx->rrows[(*nrows)++] = i;
        if (*nrows - r0 == SPA_RESIDUE_ROWS) {
            SPA_CHECK(push_rtask(ctx, cap, g, r0, *nrows));
            r0 = *nrows;
        }
    }
    if (*nrows > r0) SPA_CHECK(push_rtask(ctx, cap, g, r0, *nrows));
    return SPA_OK;
}

/* The residue pass: every class of every strided and dilated rule that
 * this rank's rows belong to, in phases by rule. */
static spa_err setup_residue(spa_ctx ctx)
{
    const spa_config *cfg = &ctx->cfg;
    const spa_commplan *pl = &ctx->plan;
    const int64_t n = cfg->n, nq = pl->b1 - pl->b0, t0 = pl->t0, t1 = pl->t1, n_own = ctx->n_own;
    int nrules = 1;
    for (int32_t h = 0; h < cfg->heads; h++)
        if (cfg->hr[h].ndilated + 1 > nrules) nrules = cfg->hr[h].ndilated + 1;
    int any = 0;
    for (int32_t h = 0; h < cfg->heads; h++) any |= cfg->hr[h].stride || cfg->hr[h].ndilated;
    for (int q = 0; q <= SPA_MAX_DILATED + 1; q++) ctx->rphase[q] = 0;
    if (!any || n_own == 0) return SPA_OK;

    unsigned char *served = malloc((size_t)(cfg->heads * nq + 1));
    spa_patws *w = spa_patws_create(cfg);
    /* a row is in at most one class per rule */
    ctx->rrows = malloc((size_t)(cfg->heads * n_own * nrules + 1) * sizeof *ctx->rrows);
    ctx->rm = spa_alloc((size_t)(cfg->heads * n_own) * sizeof(float));
    ctx->rl = spa_alloc((size_t)(cfg->heads * n_own) * sizeof(float));
    ctx->racc = spa_alloc((size_t)(cfg->heads * n_own * cfg->dim) * sizeof(float));
    if (!served || !w || !ctx->rrows || !ctx->rm || !ctx->rl || !ctx->racc) {
        free(served);
        spa_patws_destroy(w);
        SPA_FAIL(SPA_ERR_OTHER, "out of memory for the residue pass");
    }
    for (int32_t h = 0; h < cfg->heads; h++)
        for (int64_t c = pl->b0; c < pl->b1; c++) served[h * nq + c - pl->b0] = (unsigned char)spa_pattern_served_ws(cfg, h, c, w);
    spa_patws_destroy(w);

    spa_err e = SPA_OK;
    int64_t cap = 0, nrows = 0;
    for (int q = 0; q < nrules && e == SPA_OK; q++) {
        ctx->rphase[q] = ctx->nrtask;
        for (int32_t h = 0; h < cfg->heads && e == SPA_OK; h++) {
            const spa_head_rules *hr = &cfg->hr[h];
            if (q == 0 && hr->stride) { /* classes j = rho (mod S), over the whole sequence */
                int64_t S = hr->stride;
                for (int64_t i = t0; i < t1 && i < t0 + S && e == SPA_OK; i++) {
                    spa_residue g = {h, 0, i % S, S, n};
                    e = class_tasks(ctx, &g, t0, t1, served, &nrows, &cap);
                }
            }
            if (q >= 1 && q - 1 < hr->ndilated) { /* one class per segment */
                int64_t sw = hr->dil_w[q - 1], r = hr->dil_r[q - 1];
                for (int64_t sg = t0 / sw; sg <= (t1 - 1) / sw && e == SPA_OK; sg++) {
                    int64_t a = sg * sw, end = a + sw < n ? a + sw : n;
                    if (a + (int64_t)h % r >= end) continue;
                    spa_residue g = {h, q, a + (int64_t)h % r, r, end};
                    e = class_tasks(ctx, &g, a > t0 ? a : t0, end < t1 ? end : t1, served, &nrows, &cap);
                }
            }
        }
    }
    for (int q = nrules; q <= SPA_MAX_DILATED + 1; q++) ctx->rphase[q] = ctx->nrtask;
    free(served);
    return e;
}

spa_err spa_ctx_create(MPI_Comm comm, const spa_config *cfg, int threads, spa_ctx *out)
{
    *out = NULL;
    spa_ctx ctx = calloc(1, sizeof *ctx);
    SPA_REQUIRE(ctx, SPA_ERR_OTHER, "out of memory");
    MPI_Comm dup = MPI_COMM_NULL;
    spa_err e = spa_comm_dup(comm, &dup, &ctx->P, &ctx->rank);
    if (e != SPA_OK) {
        free(ctx);
        return e;
    }
    ctx->overlap = 1;
    ctx->threads = threads > 0 ? threads : omp_get_max_threads();
    /* OpenBLAS runs inside our OpenMP loop over blocks: one thread each */
    openblas_set_num_threads(1);

    if ((e = spa_config_copy(&ctx->cfg, cfg)) != SPA_OK) goto fail;
    if ((e = spa_commplan_build(&ctx->cfg, ctx->P, ctx->rank, &ctx->plan)) != SPA_OK) goto fail;
    ctx->n_own = ctx->plan.t1 - ctx->plan.t0;
    e = spa_comm_create(dup, &ctx->cfg, &ctx->plan, &ctx->cm);
    dup = MPI_COMM_NULL; /* the comm layer owns it, even when it failed */
    if (e != SPA_OK) goto fail;

    ctx->scr = calloc((size_t)ctx->threads, sizeof *ctx->scr);
    if (!ctx->scr) {
        e = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory");
        goto fail;
    }
    for (int t = 0; t < ctx->threads; t++)
        if (!(ctx->scr[t] = spa_scratch_create(&ctx->cfg))) {
            e = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory for scratch");
            goto fail;
        }
    if ((e = setup_tasks(ctx)) != SPA_OK) goto fail;
    if ((e = setup_stages(ctx)) != SPA_OK) goto fail;
    if ((e = setup_spread(ctx)) != SPA_OK) goto fail;
    if ((e = setup_residue(ctx)) != SPA_OK) goto fail;
    setup_keys(ctx);

    /* useful FLOPs of this rank's rows, summed once */
    int64_t pairs = 0;
    for (int32_t h = 0; h < ctx->cfg.heads && pairs >= 0; h++) {
        int64_t p = spa_pattern_pairs(&ctx->cfg, h, ctx->plan.b0, ctx->plan.b1);
        pairs = p < 0 ? -1 : pairs + p;
    }
    if (pairs < 0) {
        e = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory counting pairs");
        goto fail;
    }

    /* Everything above was local. Agree before the first collective, so a
     * rank that failed cannot leave the others waiting inside it. */
    e = spa_agree(ctx->cm->comm, SPA_OK);
    if (e != SPA_OK) goto cleanup;
    if ((e = spa_comm_connect(ctx->cm)) != SPA_OK) goto cleanup;
    if ((e = spa_comm_sum_i64(ctx->cm, pairs, &ctx->pairs_total)) != SPA_OK) goto cleanup;
    *out = ctx;
    return SPA_OK;
fail:
    /* creation failed on this rank: let the others know, then clean up */
    spa_agree(ctx->cm ? ctx->cm->comm : comm, e);
cleanup:
    if (dup != MPI_COMM_NULL) MPI_Comm_free(&dup);
    spa_ctx_destroy(&ctx);
    return e;
}

void spa_ctx_shard(spa_ctx ctx, int64_t *t0, int64_t *t1)
{
    *t0 = ctx->plan.t0;
    *t1 = ctx->plan.t1;
}

const spa_commplan *spa_ctx_plan(spa_ctx ctx) { return &ctx->plan; }

void spa_ctx_set_progress(spa_ctx ctx, void (*fn)(double, void *), void *arg)
{
    ctx->progress = fn;
    ctx->progress_arg = arg;
}

void spa_ctx_set_overlap(spa_ctx ctx, int on) { ctx->overlap = on; }

spa_err spa_ctx_agree_exact(spa_ctx ctx)
{
    if (ctx->P == 1) return SPA_OK;
    int f[2] = {ctx->exact, -ctx->exact}, all[2];
    SPA_MPI_CHECK(MPI_Allreduce(f, all, 2, MPI_INT, MPI_MAX, ctx->cm->comm));
    SPA_REQUIRE(all[0] == -all[1], SPA_ERR_USAGE,
                "exact mode (spa_ctx_set_exact) is on for some ranks and off for others: set it alike on every rank");
    return SPA_OK;
}

void spa_ctx_set_exact(spa_ctx ctx, int on)
{
    ctx->exact = on != 0;
    for (int t = 0; t < ctx->threads; t++) spa_scratch_set_exact(ctx->scr[t], ctx->exact);
}

void spa_ctx_kv_buffers(spa_ctx ctx, float **k, float **v)
{
    /* a rank without rows has an empty window, whose base MPICH gives as
     * NULL; NULL here means two-sided, so it gets an empty buffer instead */
    static float empty[1];
    const spa_comm *c = ctx->cm;
    if (!c->rma) {
        *k = *v = NULL;
        return;
    }
    *k = c->wbase ? c->wbase : empty;
    *v = c->wbase ? c->wbase + (int64_t)ctx->cfg.heads * ctx->n_own * ctx->cfg.dim : empty;
}

void spa_ctx_destroy(spa_ctx *pctx)
{
    spa_ctx ctx = pctx ? *pctx : NULL;
    if (!ctx) return;
    spa_ctx_backward_free(ctx);
    spa_comm_destroy(&ctx->cm);
    if (ctx->scr)
        for (int t = 0; t < ctx->threads; t++) spa_scratch_destroy(ctx->scr[t]);
    free(ctx->scr);
    free(ctx->task);
    free(ctx->stage_task), free(ctx->stage_off);
    free(ctx->bsum);
    free(ctx->bresum);
    free(ctx->stok);
    free(ctx->tile_row);
    free(ctx->rgroup);
    free(ctx->rrow_off);
    free(ctx->rrows);
    spa_free(ctx->rm), spa_free(ctx->rl), spa_free(ctx->racc);
    spa_free(ctx->part), spa_free(ctx->upart), spa_free(ctx->xmax), spa_free(ctx->xacc);
    spa_commplan_free(&ctx->plan);
    spa_config_free(&ctx->cfg);
    free(ctx);
    *pctx = NULL;
}

/* The partials of spread tile t over unit u of this shard's keys: the
 * (max, sum, acc) of each of its rows, in part (u = 0) or upart. Key spans
 * aligned to absolute multiples of SPAN (itself a multiple of the kernel's
 * chunk) keep the chunks what they would be in one call, and let thread 0
 * drive MPI progress between spans. */
static void spread_unit(spa_ctx ctx, spa_scratch *s, int64_t t, int64_t u, const float *k, const float *v, int master)
{
    const spa_config *cfg = &ctx->cfg;
    const spa_commplan *pl = &ctx->plan;
    const int64_t D = cfg->dim, n_own = ctx->n_own, ld = D + 2;
    enum { SPAN = 2048 };
    const int64_t ulen = ctx->unit_keys, ubase = ctx->unit_base;
    const int64_t p0 = ubase + u * ulen > pl->t0 ? ubase + u * ulen : pl->t0;
    const int64_t p1 = ubase + (u + 1) * ulen < pl->t1 ? ubase + (u + 1) * ulen : pl->t1;
    const int64_t r0 = ctx->tile_row[t], ng = ctx->tile_row[t + 1] - r0;
    const int32_t h = pl->spread[r0].h;
    const int64_t c = spa_ctx_tile_block(ctx, r0);
    double *part = (u == 0 ? ctx->part : ctx->upart + (u - 1) * pl->nspread * ld) + r0 * ld;
    for (int64_t a = p0, e; a < p1; a = e) {
        e = (a / SPAN + 1) * SPAN < p1 ? (a / SPAN + 1) * SPAN : p1;
        const int64_t off = ((int64_t)h * n_own + (a - pl->t0)) * D;
        spa_kernel_global_partial(cfg, s, h, c, ctx->cm->sq + r0 * D, ctx->stok + r0, ng, k + off, v + off, a, e - a,
                                  part);
        if (master) spa_comm_poke(ctx->cm);
    }
}

/* part = the merge of every unit's partials, in unit order (no thread
 * count changes the sums). */
static void spread_merge_units(spa_ctx ctx)
{
    const int64_t NS = ctx->plan.nspread, ld = ctx->cfg.dim + 2;
    if (ctx->nunit < 2 || ctx->n_own == 0) return;
#pragma omp parallel for schedule(static) num_threads(ctx->threads)
    for (int64_t r = 0; r < NS; r++)
        for (int64_t u = 1; u < ctx->nunit; u++)
            spa_partial_merge(ctx->part + r * ld, ctx->upart + ((u - 1) * NS + r) * ld, (int32_t)ld - 2);
}

/* Computes tasks [t0, t1) with all threads; with k, v, the spread tiles'
 * partials over this shard first, unit by unit (spa_partial_init'ed by the
 * caller, merged by spread_merge_units): they are the largest tasks (a
 * tile of rows against a unit of keys), so the threads take them first and
 * the block tasks fill in after them, and the run does not end on one
 * thread finishing a tile. Thread 0 (the
 * MPI thread under MPI_THREAD_FUNNELED) also drives MPI progress and
 * reports progress. */
static void compute_tasks(spa_ctx ctx, const spa_task *task, int64_t t0, int64_t t1, const float *q, float *out,
                          float *lse, const float *k, const float *v)
{
    const spa_config *cfg = &ctx->cfg;
    const int64_t B = cfg->block, D = cfg->dim, n_own = ctx->n_own, p0 = ctx->plan.t0;
    const int64_t units = k && n_own > 0 ? ctx->plan.nspread_tiles * ctx->nunit : 0;
    /* Each thread takes runs of consecutive tasks (blocks of a head), so
     * that the keys and values one block's window brings in serve its
     * neighbours on the same core: up to 16 (B = 16 1.04x, B = 64 1.03x on
     * 2 threads, against runs of 1), and at least 8 runs a thread, so that
     * short ranges (a stage of the last batch) still spread over the
     * threads. */
    int64_t run = (t1 - t0) / (8 * (int64_t)ctx->threads);
    run = run < 1 ? 1 : run > 16 ? 16 : run;
#pragma omp parallel num_threads(ctx->threads)
    {
        spa_scratch *s = ctx->scr[omp_get_thread_num()];
        int master = omp_get_thread_num() == 0;
#pragma omp for schedule(dynamic, 1) nowait
        for (int64_t t = 0; t < units; t++) spread_unit(ctx, s, t / ctx->nunit, t % ctx->nunit, k, v, master);
#pragma omp for schedule(dynamic, run)
        for (int64_t t = t0; t < t1; t++) {
            const spa_task *tk = &task[t];
            int64_t row = (int64_t)tk->h * n_own + (tk->c * B - p0);
            int64_t bi = (int64_t)tk->h * (ctx->plan.b1 - ctx->plan.b0) + (tk->c - ctx->plan.b0);
            /* most likely this thread's next task: the next of its run, or
             * the first of the run after the other threads' */
            const int64_t tn = (t - t0 + 1) % run ? t + 1 : t + 1 + (int64_t)(ctx->threads - 1) * run;
            if (tn < t1) {
                const spa_task *nx = &task[tn];
                const int64_t nrow = (int64_t)nx->h * n_own + (nx->c * B - p0);
                const int64_t rows = spa_block_end(cfg, nx->c) - nx->c * B;
                spa_scratch_hint(s, nx->h, nx->c, q + nrow * D, rows * D * (int64_t)sizeof(float));
            }
            ctx->bsum[bi] = spa_kernel_block(cfg, &ctx->src, s, tk->h, tk->c, q + row * D, out + row * D, lse + row);
            if (master) {
                spa_comm_poke(ctx->cm);
                /* the tasks are handed out in order, so the master's task
                 * tells how far the loop is: no shared counter, whose
                 * locked add per task would drain the store buffer (the
                 * block's output rows) before the next block starts */
                if (ctx->progress) {
                    double now = spa_now();
                    if (now - ctx->progress_last > 0.1) {
                        ctx->progress_last = now;
                        ctx->progress((double)(ctx->tasks_done + t + 1 - t0) / (double)(ctx->ntask + 1), ctx->progress_arg);
                    }
                }
            }
        }
    }
    ctx->tasks_done += t1 - t0;
}

/* The residue pass, rule by rule (a barrier between rules keeps each
 * row's order fixed), then each row's residue partial merged into its
 * block result: out, lse = merge((out, lse), (m, l, acc)). */
static void residue_pass(spa_ctx ctx, const float *q, float *out, float *lse)
{
    const spa_config *cfg = &ctx->cfg;
    const int64_t D = cfg->dim, n_own = ctx->n_own, t0 = ctx->plan.t0;
    if (ctx->nrtask == 0) return;
    for (int64_t i = 0; i < cfg->heads * n_own; i++) ctx->rm[i] = -INFINITY, ctx->rl[i] = 0.0f;
    memset(ctx->racc, 0, (size_t)(cfg->heads * n_own * D) * sizeof(float));
    for (int p = 0; p <= SPA_MAX_DILATED; p++) {
        const int64_t a = ctx->rphase[p], b = ctx->rphase[p + 1];
        if (b <= a) continue;
#pragma omp parallel for schedule(dynamic, 1) num_threads(ctx->threads)
        for (int64_t t = a; t < b; t++) {
            spa_scratch *s = ctx->scr[omp_get_thread_num()];
            const int64_t r0 = ctx->rrow_off[t];
            spa_kernel_residue(cfg, &ctx->src, s, &ctx->rgroup[t], ctx->rrows + r0, (int32_t)(ctx->rrow_off[t + 1] - r0), q,
                               t0, n_own, ctx->rm, ctx->rl, ctx->racc);
            if (omp_get_thread_num() == 0) spa_comm_poke(ctx->cm);
        }
    }
#pragma omp parallel for schedule(static) num_threads(ctx->threads)
    for (int64_t i = 0; i < cfg->heads * n_own; i++) {
        if (ctx->rl[i] == 0.0f) continue; /* no residue key */
        float *o = out + i * D, *ra = ctx->racc + i * D, lb = lse[i], mr = ctx->rm[i];
        float mx = lb > mr ? lb : mr, wb = lb == -INFINITY ? 0.0f : expf(lb - mx), wr = expf(mr - mx);
        float den = wb + ctx->rl[i] * wr, inv = 1.0f / den;
        for (int64_t d = 0; d < D; d++) o[d] = (o[d] * wb + ra[d] * wr) * inv;
        lse[i] = mx + logf(den);
    }
}

/* This rank's share of the run's checksum: the sum of out block by block
 * (head, then query block, ascending), each block's rows summed by
 * spa_kernels.osum, so that it depends on out alone. The block tasks
 * returned their sums while the rows were in L1 (a separate pass over out
 * cost 4 % of a run at B = 16, and ran on one thread); blocks written
 * after their task (spread rows, the residue merge) are summed again. */
static double out_checksum(spa_ctx ctx, const float *out)
{
    const spa_commplan *pl = &ctx->plan;
    const int64_t B = ctx->cfg.block, D = ctx->cfg.dim, n_own = ctx->n_own, nq = pl->b1 - pl->b0;
    const spa_kernels *K = spa_kernels_get(NULL);
    const int residue = ctx->nrtask > 0 && ctx->rl;
#pragma omp parallel for schedule(dynamic, 16) num_threads(ctx->threads)
    for (int64_t bi = 0; bi < ctx->cfg.heads * nq; bi++) {
        const int64_t h = bi / nq, r0 = (bi % nq + pl->b0) * B - pl->t0;
        const int64_t r1 = r0 + B < n_own ? r0 + B : n_own, row = h * n_own + r0;
        int dirty = ctx->bresum[bi];
        for (int64_t i = row; residue && !dirty && i < row + r1 - r0; i++) dirty = ctx->rl[i] != 0.0f;
        if (dirty) ctx->bsum[bi] = K->osum(out + row * D, (r1 - r0) * D);
    }
    double sum = 0.0;
    for (int64_t bi = 0; bi < ctx->cfg.heads * nq; bi++) sum += ctx->bsum[bi];
    return sum;
}

/* Exact mode's spread rows (spa_kernel_spread_exact), in place of the
 * partials and their merge: maxima over this shard, their MPI_MAX (with
 * max |v|), the fixed-point sums over this shard, their integer sum, then
 * out and lse of the rows this rank owns. Collective. */
static spa_err exact_spread(spa_ctx ctx, const float *k, const float *v, float *out, float *lse, spa_stats *z)
{
    const spa_config *cfg = &ctx->cfg;
    const spa_commplan *pl = &ctx->plan;
    const int64_t D = cfg->dim, n_own = ctx->n_own, NS = pl->nspread, tiles = pl->nspread_tiles;
    const int64_t p0 = pl->t0;
    if (NS == 0) return SPA_OK;
    double t = spa_now();
    for (int64_t r = 0; r < NS; r++) ctx->xmax[r] = -INFINITY;
    float vmax = 0.0f;
#pragma omp parallel for reduction(max : vmax) num_threads(ctx->threads)
    for (int64_t i = 0; i < cfg->heads * n_own * D; i++) vmax = fabsf(v[i]) > vmax ? fabsf(v[i]) : vmax;
    ctx->xmax[NS] = vmax;
    memset(ctx->xacc, 0, (size_t)(NS * (D + 2)) * sizeof(spa_i128));
    /* fixed point: every unit's sum is at most its key count, so n in all;
     * |sum p v| <= n max |v| (2^-2 headroom below 2^126) */
    for (int pass = 0; pass < 2; pass++) {
        int fl = 0, fa = 0;
        if (pass == 1) {
            int e;
            frexp((double)cfg->n, &e);
            fl = 124 - e;
            frexp((double)cfg->n * (ctx->xmax[NS] > 0.0f ? ctx->xmax[NS] : 1.0f), &e);
            fa = 124 - e;
            if (!isfinite(ctx->xmax[NS])) fa = 0; /* every term with v is not finite: flagged */
        }
        if (n_own > 0) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(ctx->threads)
            for (int64_t tl = 0; tl < tiles; tl++) {
                const int64_t r0 = ctx->tile_row[tl], ng = ctx->tile_row[tl + 1] - r0;
                const int32_t h = pl->spread[r0].h;
                const int64_t c = spa_ctx_tile_block(ctx, r0), off = (int64_t)h * n_own * D;
                spa_kernel_spread_exact(cfg, ctx->scr[omp_get_thread_num()], h, c, ctx->cm->sq + r0 * D, ctx->stok + r0,
                                        ng, k + off, v + off, p0, n_own, pass ? ctx->xmax + r0 : NULL,
                                        ctx->xmax + r0, ctx->xacc + r0 * (D + 2), fl, fa);
                if (omp_get_thread_num() == 0) spa_comm_poke(ctx->cm);
            }
        }
        z->seconds_compute += spa_now() - t;
        SPA_CHECK(spa_comm_merge_exact(ctx->cm, pass ? NULL : ctx->xmax, ctx->xacc, z));
        t = spa_now();
        if (pass == 0) continue;
        const double il = ldexp(1.0, -fl), ia = ldexp(1.0, -fa);
        for (int64_t r = 0; r < NS; r++) {
            const spa_spread_row *w = &pl->spread[r];
            if (w->tok < pl->t0 || w->tok >= pl->t1) continue;
            const int64_t row = (int64_t)w->h * n_own + (w->tok - pl->t0);
            const spa_i128 *a = ctx->xacc + r * (D + 2);
            float *o = out + row * D;
            const double l = (double)a[1] * il;
            if (a[0] != 0) { /* a term was not finite */
                for (int64_t d = 0; d < D; d++) o[d] = NAN;
                lse[row] = NAN;
            } else if (ctx->xmax[r] == -INFINITY || !(l > 0.0)) { /* S(i) is empty */
                memset(o, 0, (size_t)D * sizeof(float));
                lse[row] = -INFINITY;
            } else {
                for (int64_t d = 0; d < D; d++) o[d] = (float)((double)a[2 + d] * ia / l);
                lse[row] = (float)((double)ctx->xmax[r] + log(l));
            }
        }
        z->seconds_compute += spa_now() - t;
    }
    return SPA_OK;
}

spa_err spa_ctx_run(spa_ctx ctx, const float *q, const float *k, const float *v, float *out, float *lse,
                    spa_stats *st)
{
    const spa_config *cfg = &ctx->cfg;
    const spa_commplan *pl = &ctx->plan;
    const int64_t D = cfg->dim, n_own = ctx->n_own;
    spa_stats z;
    memset(&z, 0, sizeof z);
    ctx->tasks_done = 0;
    ctx->progress_last = 0.0;
    ctx->seg[1].k = k;
    ctx->seg[1].v = v;
    SPA_CHECK(spa_ctx_agree_exact(ctx)); /* the spread rows' collectives differ by mode */
    double t_start = spa_now(), t;

    SPA_CHECK(spa_comm_gather(ctx->cm, q, k, v, &z)); /* 1 */
    SPA_CHECK(spa_comm_post(ctx->cm, k, v, &z));      /* 2 */
    SPA_CHECK(spa_comm_fetch(ctx->cm, 0, &z));
    if (!ctx->overlap) {
        SPA_CHECK(spa_comm_wait_halo(ctx->cm, &z));
        SPA_CHECK(spa_comm_wait_batch(ctx->cm, 0, &z));
    }

    t = spa_now(); /* 3 */
    if (!ctx->exact) { /* exact mode: exact_spread */
        spa_partial_init(ctx->part, pl->nspread, (int32_t)D);
        spa_partial_init(ctx->upart, (ctx->nunit - 1) * pl->nspread, (int32_t)D);
    }
    compute_tasks(ctx, ctx->task, 0, ctx->nready, q, out, lse, ctx->exact ? NULL : k, v);
    z.seconds_compute += spa_now() - t;

    /* 4: batch b computes while batch b + 1's fetches are in flight */
    if (ctx->overlap) SPA_CHECK(spa_comm_wait_halo(ctx->cm, &z));
    for (int b = 0; b < pl->nbatch; b++) {
        const int last = b + 1 == pl->nbatch, staged = last && ctx->cm->rma;
        /* the last batch, no other in flight: rank after rank, each stage
         * once the ranks it reads are complete */
        if ((ctx->overlap || b > 0) && !staged) SPA_CHECK(spa_comm_wait_batch(ctx->cm, b, &z));
        if (!last) {
            SPA_CHECK(spa_comm_fetch(ctx->cm, b + 1, &z));
            if (!ctx->overlap) SPA_CHECK(spa_comm_wait_batch(ctx->cm, b + 1, &z));
        }
        spa_comm_batch_keys(ctx->cm, b, &ctx->src);
        if (!last) {
            t = spa_now();
            compute_tasks(ctx, ctx->task, ctx->nready + pl->batch_task_off[b], ctx->nready + pl->batch_task_off[b + 1],
                          q, out, lse, NULL, NULL);
            z.seconds_compute += spa_now() - t;
            continue;
        }
        int done = staged && (ctx->overlap || b > 0) ? 0 : ctx->P - 1; /* ranks (rank + 1 .. + done) complete */
        for (int s = 0; s <= ctx->P; s++) {
            if (s < ctx->P && ctx->stage_off[s] == ctx->stage_off[s + 1]) continue;
            /* before stage s, the ranks it reads; after the last, the rest
             * (the residue pass reads this batch too) */
            for (; done < (s < ctx->P ? s : ctx->P - 1); done++)
                SPA_CHECK(spa_comm_wait_rank(ctx->cm, b, (ctx->rank + done + 1) % ctx->P, &z));
            if (s == ctx->P) break;
            t = spa_now();
            compute_tasks(ctx, ctx->stage_task, ctx->stage_off[s], ctx->stage_off[s + 1], q, out, lse, NULL, NULL);
            z.seconds_compute += spa_now() - t;
        }
    }
    t = spa_now(); /* the residue pass's keys are in the last batch */
    residue_pass(ctx, q, out, lse);
    if (!ctx->exact) spread_merge_units(ctx);
    z.seconds_compute += spa_now() - t;
    SPA_CHECK(spa_comm_finish(ctx->cm, &z));

    if (ctx->exact) { /* 5 */
        SPA_CHECK(exact_spread(ctx, k, v, out, lse, &z));
    } else {
        SPA_CHECK(spa_comm_merge(ctx->cm, ctx->part, &z));
        for (int64_t r = 0; r < pl->nspread; r++) {
            const spa_spread_row *w = &pl->spread[r];
            if (w->tok < pl->t0 || w->tok >= pl->t1) continue;
            int64_t row = (int64_t)w->h * n_own + (w->tok - pl->t0);
            spa_partial_finish(ctx->part + r * (D + 2), (int32_t)D, out + row * D, lse + row);
        }
    }

    SPA_CHECK(spa_comm_sum_f64(ctx->cm, out_checksum(ctx, out), &z.checksum));
    if (ctx->progress) ctx->progress(1.0, ctx->progress_arg);
    z.seconds_total = spa_now() - t_start;
    z.flops = 4 * D * ctx->pairs_total;
    z.rma = ctx->cm->rma;
    z.batches = pl->nbatch;
    z.threads = ctx->threads;
    if (st) *st = z;
    return SPA_OK;
}
