/* runtime.c - the distributed execution of one rank's plan.
 *
 * Order of one run, chosen so the transfers overlap the work that does not
 * need them:
 *   1. allgather q, k, v of the global tokens (small, needed by every block)
 *   2. post the halo Irecv/Isend and the random-link MPI_Gets
 *   3. compute the query blocks that need neither, then the partials of the
 *      global rows over this shard (pure local work)
 *   4. wait for the halo, flush the gets, compute the remaining blocks
 *   5. merge the global rows' partials by log-sum-exp (MPI_Allreduce)
 * The MPI calls themselves live in comm.c; this file is the schedule.
 */
#include "runtime.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

void openblas_set_num_threads(int);

static spa_err setup_tasks(spa_ctx ctx)
{
    const spa_config *cfg = &ctx->cfg;
    const spa_commplan *pl = &ctx->plan;
    const int64_t B = cfg->block, n = cfg->n, nq = pl->b1 - pl->b0;
    ctx->ntask = cfg->heads * nq;
    ctx->task = malloc((size_t)(ctx->ntask + 1) * sizeof *ctx->task);
    SPA_REQUIRE(ctx->task, SPA_ERR_OTHER, "out of memory");
    int32_t *rb = malloc((size_t)(cfg->random + 1) * sizeof *rb);
    SPA_REQUIRE(rb, SPA_ERR_OTHER, "out of memory");
    /* ready tasks first: they run while the transfers are in flight */
    int64_t nready = 0, k = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int32_t h = 0; h < cfg->heads; h++)
            for (int64_t c = pl->b0; c < pl->b1; c++) {
                int64_t j0, j1;
                spa_pattern_local_range(cfg, c, &j0, &j1);
                int ready = j0 >= pl->t0 && j1 <= pl->t1;
                int32_t m = spa_pattern_random_blocks(cfg, h, c, rb);
                for (int32_t i = 0; i < m && ready; i++) {
                    int64_t a = (int64_t)rb[i] * B, e = a + B < n ? a + B : n;
                    ready = a >= pl->t0 && e <= pl->t1;
                }
                if (ready == (pass == 0)) ctx->task[k++] = (spa_task){h, c};
                nready += pass == 0 && ready;
            }
    ctx->nready = nready;
    free(rb);
    return SPA_OK;
}

spa_err spa_ctx_create(MPI_Comm comm, const spa_config *cfg, int threads, spa_ctx *out)
{
    *out = NULL;
    spa_ctx ctx = calloc(1, sizeof *ctx);
    SPA_REQUIRE(ctx, SPA_ERR_OTHER, "out of memory");
    spa_err e = SPA_OK;
    ctx->win = MPI_WIN_NULL;
    ctx->part_type = MPI_DATATYPE_NULL;
    ctx->part_op = MPI_OP_NULL;
    MPI_Comm_dup(comm, &ctx->comm);
    MPI_Comm_size(ctx->comm, &ctx->P);
    MPI_Comm_rank(ctx->comm, &ctx->rank);
    ctx->overlap = 1;
    ctx->threads = threads > 0 ? threads : omp_get_max_threads();
    /* OpenBLAS runs inside our OpenMP loop over blocks: one thread each */
    openblas_set_num_threads(1);

    if ((e = spa_config_copy(&ctx->cfg, cfg)) != SPA_OK) goto fail;
    if ((e = spa_commplan_build(&ctx->cfg, ctx->P, ctx->rank, &ctx->plan)) != SPA_OK) goto fail;
    ctx->n_own = ctx->plan.t1 - ctx->plan.t0;

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
    if ((e = spa_comm_setup(ctx)) != SPA_OK) goto fail;

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
    e = spa_agree(ctx->comm, SPA_OK);
    if (e != SPA_OK) goto cleanup;
    if ((e = spa_comm_connect(ctx)) != SPA_OK) goto cleanup;
    MPI_Allreduce(&pairs, &ctx->pairs_total, 1, MPI_INT64_T, MPI_SUM, ctx->comm);
    *out = ctx;
    return SPA_OK;
fail:
    /* creation failed on this rank: let the others know, then clean up */
    spa_agree(ctx->comm, e);
cleanup:
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

void spa_ctx_kv_buffers(spa_ctx ctx, float **k, float **v)
{
    *k = ctx->rma ? ctx->wbase : NULL;
    *v = ctx->rma ? ctx->wbase + (int64_t)ctx->cfg.heads * ctx->n_own * ctx->cfg.dim : NULL;
}

void spa_ctx_destroy(spa_ctx *pctx)
{
    spa_ctx ctx = pctx ? *pctx : NULL;
    if (!ctx) return;
    spa_comm_teardown(ctx);
    if (ctx->scr)
        for (int t = 0; t < ctx->threads; t++) spa_scratch_destroy(ctx->scr[t]);
    free(ctx->scr);
    free(ctx->task);
    spa_commplan_free(&ctx->plan);
    spa_config_free(&ctx->cfg);
    if (ctx->comm != MPI_COMM_NULL) MPI_Comm_free(&ctx->comm);
    free(ctx);
    *pctx = NULL;
}

/* Computes tasks [t0, t1) with all threads. Thread 0 (the MPI thread under
 * MPI_THREAD_FUNNELED) also drives MPI progress and reports progress. */
static void compute_tasks(spa_ctx ctx, int64_t t0, int64_t t1, const float *q, float *out, float *lse)
{
    const spa_config *cfg = &ctx->cfg;
    const int64_t B = cfg->block, D = cfg->dim, n_own = ctx->n_own, p0 = ctx->plan.t0;
    int64_t done = 0;
#pragma omp parallel num_threads(ctx->threads)
    {
        spa_scratch *s = ctx->scr[omp_get_thread_num()];
        int master = omp_get_thread_num() == 0;
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = t0; t < t1; t++) {
            const spa_task *tk = &ctx->task[t];
            int64_t row = (int64_t)tk->h * n_own + (tk->c * B - p0);
            spa_kernel_block(cfg, &ctx->src, s, tk->h, tk->c, q + row * D, out + row * D, lse + row);
#pragma omp atomic
            done++;
            if (master) {
                spa_comm_poke(ctx);
                if (ctx->progress) {
                    double now = spa_now();
                    if (now - ctx->progress_last > 0.1) {
                        ctx->progress_last = now;
                        int64_t d;
#pragma omp atomic read
                        d = done;
                        ctx->progress((double)(ctx->tasks_done + d) / (double)(ctx->ntask + 1), ctx->progress_arg);
                    }
                }
            }
        }
    }
    ctx->tasks_done += t1 - t0;
}

/* Partials of every global row over this shard: part[h][g] = (max, sum, acc). */
static void global_partials(spa_ctx ctx, const float *k, const float *v)
{
    const spa_config *cfg = &ctx->cfg;
    const int64_t G = cfg->nglobals, D = cfg->dim, n_own = ctx->n_own, ld = D + 2;
    const int64_t tiles = (G + 63) / 64;
    for (int64_t i = 0; i < cfg->heads * G; i++) {
        ctx->part[i * ld] = -INFINITY;
        ctx->part[i * ld + 1] = 0.0f;
        memset(&ctx->part[i * ld + 2], 0, (size_t)D * sizeof(double));
    }
    if (n_own == 0 || G == 0) return;
    /* Key spans aligned to absolute multiples of SPAN (itself a multiple of
     * the kernel's chunk) keep the chunks what they would be in one call,
     * and let thread 0 drive MPI progress between spans. */
    enum { SPAN = 8192 };
    const int64_t p0 = ctx->plan.t0, p1 = ctx->plan.t1;
#pragma omp parallel for schedule(dynamic, 1) num_threads(ctx->threads) collapse(2)
    for (int32_t h = 0; h < cfg->heads; h++)
        for (int64_t t = 0; t < tiles; t++) {
            int64_t g0 = t * 64, ng = G - g0 < 64 ? G - g0 : 64;
            spa_scratch *s = ctx->scr[omp_get_thread_num()];
            for (int64_t a = p0, e; a < p1; a = e) {
                e = (a / SPAN + 1) * SPAN < p1 ? (a / SPAN + 1) * SPAN : p1;
                const int64_t off = ((int64_t)h * n_own + (a - p0)) * D;
                spa_kernel_global_partial(cfg, s, ctx->gq + ((int64_t)h * G + g0) * D, cfg->globals + g0, ng,
                                          k + off, v + off, a, e - a, ctx->part + ((int64_t)h * G + g0) * ld);
                if (omp_get_thread_num() == 0) spa_comm_poke(ctx);
            }
        }
}

spa_err spa_ctx_run(spa_ctx ctx, const float *q, const float *k, const float *v, float *out, float *lse,
                    spa_stats *st)
{
    const spa_config *cfg = &ctx->cfg;
    const int64_t D = cfg->dim, n_own = ctx->n_own, G = cfg->nglobals;
    spa_stats z;
    memset(&z, 0, sizeof z);
    ctx->st = &z;
    ctx->tasks_done = 0;
    ctx->progress_last = 0.0;
    double t_start = spa_now(), t;

    SPA_CHECK(spa_comm_globals(ctx, q, k, v));   /* 1 */
    SPA_CHECK(spa_comm_post(ctx, k, v));         /* 2 */
    if (!ctx->overlap) SPA_CHECK(spa_comm_complete(ctx));

    t = spa_now();                               /* 3 */
    compute_tasks(ctx, 0, ctx->nready, q, out, lse);
    global_partials(ctx, k, v);
    z.seconds_compute += spa_now() - t;

    if (ctx->overlap) SPA_CHECK(spa_comm_complete(ctx)); /* 4 */
    t = spa_now();
    compute_tasks(ctx, ctx->nready, ctx->ntask, q, out, lse);
    z.seconds_compute += spa_now() - t;

    SPA_CHECK(spa_comm_merge_globals(ctx));     /* 5 */
    const spa_commplan *pl = &ctx->plan;
    for (int32_t h = 0; h < cfg->heads; h++)
        for (int64_t g = 0; g < G; g++) {
            int64_t tok = cfg->globals[g];
            if (tok < pl->t0 || tok >= pl->t1) continue;
            const double *p = ctx->part + ((int64_t)h * G + g) * (D + 2);
            int64_t row = (int64_t)h * n_own + (tok - pl->t0);
            for (int64_t d = 0; d < D; d++) out[row * D + d] = (float)(p[2 + d] / p[1]);
            lse[row] = (float)(p[0] + log(p[1]));
        }

    double sum = 0.0;
    for (int64_t i = 0; i < cfg->heads * n_own * D; i++) sum += out[i];
    MPI_Allreduce(&sum, &z.checksum, 1, MPI_DOUBLE, MPI_SUM, ctx->comm);
    if (ctx->progress) ctx->progress(1.0, ctx->progress_arg);
    z.seconds_total = spa_now() - t_start;
    z.flops = 4 * D * ctx->pairs_total;
    z.rma = ctx->rma;
    z.threads = ctx->threads;
    ctx->st = NULL;
    if (st) *st = z;
    return SPA_OK;
}
