/* comm.c - every MPI call of a run: halo, globals, random links.
 *
 * Set-up allocates every buffer and datatype once; a run only posts,
 * waits and counts bytes. The byte counters add up what was actually
 * posted, so a test can hold them to the plan's prediction.
 *
 * Random links use one window over each rank's K and V (MPI_Win_allocate,
 * pre-touched, one lock_all epoch for the context's life) and one MPI_Get
 * per coalesced run of blocks. Where the window cannot be created (osc/rdma
 * over TCP between nodes) the same runs go two-sided.
 */
#include "runtime.h"

#include <string.h>

static void merge_op(void *in, void *inout, int *len, MPI_Datatype *dt)
{
    int bytes;
    MPI_Type_size(*dt, &bytes);
    int32_t D = bytes / (int)sizeof(double) - 2;
    for (int i = 0; i < *len; i++)
        spa_partial_merge((double *)inout + (int64_t)i * (D + 2), (const double *)in + (int64_t)i * (D + 2), D);
}

/* tokens of the run's blocks (the last block may be partial) */
static int64_t run_tokens(const spa_config *cfg, const spa_run_blk *r)
{
    int64_t a = r->b0 * cfg->block, e = (r->b0 + r->nblk) * cfg->block;
    return (e < cfg->n ? e : cfg->n) - a;
}

static spa_err setup_p2p(spa_ctx ctx)
{
    /* tell every owner which runs I need; it learns what to serve */
    const spa_commplan *pl = &ctx->plan;
    int P = ctx->P;
    int *scount = calloc((size_t)P, sizeof(int)), *rcount = calloc((size_t)P, sizeof(int));
    int *sdisp = calloc((size_t)P, sizeof(int)), *rdisp = calloc((size_t)P, sizeof(int));
    int64_t *req = malloc((size_t)(pl->nruns + 1) * 3 * sizeof(int64_t));
    if (!scount || !rcount || !sdisp || !rdisp || !req) {
        free(scount), free(rcount), free(sdisp), free(rdisp), free(req);
        SPA_FAIL(SPA_ERR_OTHER, "out of memory");
    }
    for (int i = 0; i < pl->nruns; i++) scount[pl->runs[i].rank] += 3;
    for (int s = 1; s < P; s++) sdisp[s] = sdisp[s - 1] + scount[s - 1];
    int *fill = calloc((size_t)P, sizeof(int));
    if (!fill) {
        free(scount), free(rcount), free(sdisp), free(rdisp), free(req);
        SPA_FAIL(SPA_ERR_OTHER, "out of memory");
    }
    for (int i = 0; i < pl->nruns; i++) {
        const spa_run_blk *r = &pl->runs[i];
        int64_t *d = req + sdisp[r->rank] + fill[r->rank];
        d[0] = r->h, d[1] = r->b0, d[2] = r->nblk;
        fill[r->rank] += 3;
    }
    free(fill);
    spa_err e = SPA_OK;
    int m = MPI_Alltoall(scount, 1, MPI_INT, rcount, 1, MPI_INT, ctx->comm);
    int total = 0;
    for (int s = 0; s < P; s++) rdisp[s] = total, total += rcount[s];
    int64_t *got = malloc((size_t)(total + 1) * sizeof(int64_t));
    if (m == MPI_SUCCESS && got)
        m = MPI_Alltoallv(req, scount, sdisp, MPI_INT64_T, got, rcount, rdisp, MPI_INT64_T, ctx->comm);
    if (m != MPI_SUCCESS || !got) e = spa_mpi_error(m, "MPI_Alltoallv (random-link requests)", __FILE__, __LINE__);
    ctx->nserve = total / 3;
    ctx->serve = malloc((size_t)(ctx->nserve + 1) * 4 * sizeof(int64_t));
    if (e == SPA_OK && ctx->serve)
        for (int s = 0, k = 0; s < P; s++)
            for (int i = 0; i < rcount[s]; i += 3, k++) {
                int64_t *d = ctx->serve + 4 * k, *g = got + rdisp[s] + i;
                d[0] = s, d[1] = g[0], d[2] = g[1], d[3] = g[2];
            }
    ctx->rreqs = malloc((size_t)(2 * (pl->nruns + ctx->nserve) + 1) * sizeof(MPI_Request));
    if (e == SPA_OK && (!ctx->serve || !ctx->rreqs)) e = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory");
    free(scount), free(rcount), free(sdisp), free(rdisp), free(req), free(got);
    return e;
}

spa_err spa_comm_setup(spa_ctx ctx)
{
    const spa_config *cfg = &ctx->cfg;
    const spa_commplan *pl = &ctx->plan;
    const int64_t H = cfg->heads, D = cfg->dim, B = cfg->block, G = cfg->nglobals, P = ctx->P;
    MPI_Comm_set_errhandler(ctx->comm, MPI_ERRORS_RETURN);

    /* halo */
    ctx->nleft = pl->t0 - pl->ext0;
    ctx->nright = pl->ext1 - pl->t1;
    ctx->hl_k = spa_alloc((size_t)(H * ctx->nleft * D) * sizeof(float));
    ctx->hl_v = spa_alloc((size_t)(H * ctx->nleft * D) * sizeof(float));
    ctx->hr_k = spa_alloc((size_t)(H * ctx->nright * D) * sizeof(float));
    ctx->hr_v = spa_alloc((size_t)(H * ctx->nright * D) * sizeof(float));
    ctx->reqs = malloc((size_t)(2 * (pl->nrecv + pl->nsend) + 1) * sizeof(MPI_Request));
    SPA_REQUIRE(ctx->hl_k && ctx->hl_v && ctx->hr_k && ctx->hr_v && ctx->reqs, SPA_ERR_OTHER,
                "out of memory for the halo");
    ctx->seg[0] = (spa_keyseg){pl->ext0, pl->t0, ctx->hl_k, ctx->hl_v, ctx->nleft * D};
    ctx->seg[1] = (spa_keyseg){pl->t0, pl->t1, NULL, NULL, ctx->n_own * D};
    ctx->seg[2] = (spa_keyseg){pl->t1, pl->ext1, ctx->hr_k, ctx->hr_v, ctx->nright * D};
    ctx->src.nseg = 3;
    ctx->src.seg = ctx->seg;

    /* globals */
    ctx->gq = spa_alloc((size_t)(H * G * D) * sizeof(float));
    ctx->gk = spa_alloc((size_t)(H * G * D) * sizeof(float));
    ctx->gv = spa_alloc((size_t)(H * G * D) * sizeof(float));
    ctx->gstage = spa_alloc((size_t)(3 * H * G * D) * sizeof(float));
    ctx->part = spa_alloc((size_t)(H * G * (D + 2)) * sizeof(double));
    ctx->gcount = calloc((size_t)P, sizeof(int));
    ctx->gdispl = calloc((size_t)P, sizeof(int));
    SPA_REQUIRE(ctx->gq && ctx->gk && ctx->gv && ctx->gstage && ctx->part && ctx->gcount && ctx->gdispl,
                SPA_ERR_OTHER, "out of memory for the global tokens");
    SPA_REQUIRE(3 * H * G * D < INT32_MAX, SPA_ERR_USAGE, "too many global tokens for one Allgatherv");
    for (int s = 0, g = 0; s < P; s++) {
        int64_t b0, b1, t0, t1;
        spa_partition(cfg, (int)P, s, &b0, &b1, &t0, &t1);
        int cnt = 0;
        while (g < G && cfg->globals[g] < t1) g++, cnt++;
        ctx->gcount[s] = (int)(cnt * 3 * H * D);
        ctx->gdispl[s] = s ? ctx->gdispl[s - 1] + ctx->gcount[s - 1] : 0;
    }
    ctx->src.gk = ctx->gk;
    ctx->src.gv = ctx->gv;
    SPA_MPI_CHECK(MPI_Type_contiguous((int)(D + 2), MPI_DOUBLE, &ctx->part_type));
    SPA_MPI_CHECK(MPI_Type_commit(&ctx->part_type));
    SPA_MPI_CHECK(MPI_Op_create(merge_op, 1, &ctx->part_op));

    /* fetched random blocks: slots in plan order, (head, block) ascending */
    int64_t nf = pl->nfetch;
    ctx->fk = spa_alloc((size_t)(nf * B * D) * sizeof(float));
    ctx->fv = spa_alloc((size_t)(nf * B * D) * sizeof(float));
    ctx->fblock = malloc((size_t)(nf + 1) * sizeof(int64_t));
    ctx->fhead_off = calloc((size_t)(H + 1), sizeof(int64_t));
    ctx->run_slot = malloc((size_t)(pl->nruns + 1) * sizeof(int64_t));
    SPA_REQUIRE(ctx->fk && ctx->fv && ctx->fblock && ctx->fhead_off && ctx->run_slot, SPA_ERR_OTHER,
                "out of memory for %lld fetched blocks", (long long)nf);
    int64_t slot = 0;
    for (int i = 0; i < pl->nruns; i++) {
        ctx->run_slot[i] = slot;
        for (int64_t b = 0; b < pl->runs[i].nblk; b++) ctx->fblock[slot++] = pl->runs[i].b0 + b;
        ctx->fhead_off[pl->runs[i].h + 1] += pl->runs[i].nblk;
    }
    for (int64_t h = 0; h < H; h++) ctx->fhead_off[h + 1] += ctx->fhead_off[h];
    ctx->src.fblock = ctx->fblock;
    ctx->src.fhead_off = ctx->fhead_off;
    ctx->src.fk = ctx->fk;
    ctx->src.fv = ctx->fv;

    return SPA_OK;
}

spa_err spa_comm_connect(spa_ctx ctx)
{
    const spa_config *cfg = &ctx->cfg;
    const int64_t H = cfg->heads, D = cfg->dim;
    /* the window, or the two-sided fallback */
    const char *tr = getenv("SPA_RANDOM_TRANSPORT");
    int want_rma = !(tr && strcmp(tr, "p2p") == 0), ok = 0;
    if (want_rma) {
        MPI_Aint bytes = (MPI_Aint)(2 * H * ctx->n_own * D) * (MPI_Aint)sizeof(float);
        int m = MPI_Win_allocate(bytes, (int)sizeof(float), MPI_INFO_NULL, ctx->comm, &ctx->wbase, &ctx->win);
        ok = m == MPI_SUCCESS;
        if (ok) MPI_Win_set_errhandler(ctx->win, MPI_ERRORS_RETURN);
    }
    int all_ok = 0;
    SPA_MPI_CHECK(MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, ctx->comm));
    if (!all_ok && ok) MPI_Win_free(&ctx->win);
    ctx->rma = all_ok;
    if (ctx->rma) {
        /* pre-touch, so the first gets do not fault the target's pages in */
        memset(ctx->wbase, 0, (size_t)(2 * H * ctx->n_own * D) * sizeof(float));
        SPA_MPI_CHECK(MPI_Win_lock_all(MPI_MODE_NOCHECK, ctx->win));
    } else {
        SPA_CHECK(setup_p2p(ctx));
    }
    return SPA_OK;
}

void spa_comm_teardown(spa_ctx ctx)
{
    if (ctx->win != MPI_WIN_NULL && ctx->rma) {
        MPI_Win_unlock_all(ctx->win);
        MPI_Win_free(&ctx->win);
    }
    if (ctx->part_type != MPI_DATATYPE_NULL) MPI_Type_free(&ctx->part_type);
    if (ctx->part_op != MPI_OP_NULL) MPI_Op_free(&ctx->part_op);
    spa_free(ctx->hl_k), spa_free(ctx->hl_v), spa_free(ctx->hr_k), spa_free(ctx->hr_v);
    spa_free(ctx->gq), spa_free(ctx->gk), spa_free(ctx->gv), spa_free(ctx->gstage), spa_free(ctx->part);
    spa_free(ctx->fk), spa_free(ctx->fv);
    free(ctx->reqs), free(ctx->gcount), free(ctx->gdispl), free(ctx->fblock), free(ctx->fhead_off);
    free(ctx->run_slot), free(ctx->serve), free(ctx->rreqs);
}

spa_err spa_comm_globals(spa_ctx ctx, const float *q, const float *k, const float *v)
{
    const spa_config *cfg = &ctx->cfg;
    const spa_commplan *pl = &ctx->plan;
    const int64_t H = cfg->heads, D = cfg->dim, G = cfg->nglobals, n_own = ctx->n_own;
    double t = spa_now();
    /* stage my globals token-major, [g][tensor][h][D], so each rank's part
     * is one contiguous piece of the Allgatherv */
    const float *src[3] = {q, k, v};
    float *dst[3] = {ctx->gq, ctx->gk, ctx->gv};
    int64_t g0 = ctx->gdispl[ctx->rank] / (3 * H * D);
    for (int64_t g = g0; g < G && cfg->globals[g] < pl->t1; g++)
        for (int x = 0; x < 3; x++)
            for (int64_t h = 0; h < H; h++)
                memcpy(ctx->gstage + ((g * 3 + x) * H + h) * D, src[x] + (h * n_own + cfg->globals[g] - pl->t0) * D,
                       (size_t)D * sizeof(float));
    if (ctx->P > 1 && G > 0) {
        SPA_MPI_CHECK(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_FLOAT, ctx->gstage, ctx->gcount, ctx->gdispl, MPI_FLOAT,
                                     ctx->comm));
        ctx->st->bytes_global += (G - pl->nglobal_own) * 3 * H * D * (int64_t)sizeof(float);
    }
    for (int64_t g = 0; g < G; g++)
        for (int x = 0; x < 3; x++)
            for (int64_t h = 0; h < H; h++)
                memcpy(dst[x] + (h * G + g) * D, ctx->gstage + ((g * 3 + x) * H + h) * D, (size_t)D * sizeof(float));
    ctx->st->seconds_global += spa_now() - t;
    return SPA_OK;
}

/* [H] rows of len*D floats, stride*D apart */
static spa_err head_type(int64_t len, int64_t stride, int64_t H, int64_t D, MPI_Datatype *t)
{
    SPA_REQUIRE(len * D < INT32_MAX && stride * D < INT32_MAX, SPA_ERR_USAGE, "halo too large for one message");
    SPA_MPI_CHECK(MPI_Type_vector((int)H, (int)(len * D), (int)(stride * D), MPI_FLOAT, t));
    SPA_MPI_CHECK(MPI_Type_commit(t));
    return SPA_OK;
}

enum { TAG_HALO_K = 100, TAG_HALO_V, TAG_RAND_K, TAG_RAND_V };

spa_err spa_comm_post(spa_ctx ctx, const float *k, const float *v)
{
    const spa_config *cfg = &ctx->cfg;
    const spa_commplan *pl = &ctx->plan;
    const int64_t H = cfg->heads, D = cfg->dim, B = cfg->block, n_own = ctx->n_own;
    ctx->seg[1].k = k;
    ctx->seg[1].v = v;

    /* halo */
    double t = spa_now();
    ctx->nreqs = 0;
    for (int i = 0; i < pl->nrecv; i++) {
        const spa_xfer *x = &pl->recv[i];
        int left = x->t0 < pl->t0;
        int64_t len = x->t1 - x->t0, stride = left ? ctx->nleft : ctx->nright;
        int64_t off = (left ? x->t0 - pl->ext0 : x->t0 - pl->t1) * D;
        MPI_Datatype ty;
        SPA_CHECK(head_type(len, stride, H, D, &ty));
        SPA_MPI_CHECK(MPI_Irecv((left ? ctx->hl_k : ctx->hr_k) + off, 1, ty, x->rank, TAG_HALO_K, ctx->comm,
                                &ctx->reqs[ctx->nreqs++]));
        SPA_MPI_CHECK(MPI_Irecv((left ? ctx->hl_v : ctx->hr_v) + off, 1, ty, x->rank, TAG_HALO_V, ctx->comm,
                                &ctx->reqs[ctx->nreqs++]));
        MPI_Type_free(&ty);
        ctx->st->bytes_halo += 2 * H * len * D * (int64_t)sizeof(float);
    }
    for (int i = 0; i < pl->nsend; i++) {
        const spa_xfer *x = &pl->send[i];
        MPI_Datatype ty;
        SPA_CHECK(head_type(x->t1 - x->t0, n_own, H, D, &ty));
        int64_t off = (x->t0 - pl->t0) * D;
        SPA_MPI_CHECK(MPI_Isend(k + off, 1, ty, x->rank, TAG_HALO_K, ctx->comm, &ctx->reqs[ctx->nreqs++]));
        SPA_MPI_CHECK(MPI_Isend(v + off, 1, ty, x->rank, TAG_HALO_V, ctx->comm, &ctx->reqs[ctx->nreqs++]));
        MPI_Type_free(&ty);
    }
    ctx->st->seconds_halo += spa_now() - t;

    /* random links */
    t = spa_now();
    ctx->nrreqs = 0;
    if (ctx->rma) {
        /* everyone's gets of the previous run are done; expose this run's K, V */
        SPA_MPI_CHECK(MPI_Barrier(ctx->comm));
        /* callers that filled spa_ctx_kv_buffers pass the window itself */
        if (k != ctx->wbase) memcpy(ctx->wbase, k, (size_t)(H * n_own * D) * sizeof(float));
        if (v != ctx->wbase + H * n_own * D)
            memcpy(ctx->wbase + H * n_own * D, v, (size_t)(H * n_own * D) * sizeof(float));
        SPA_MPI_CHECK(MPI_Win_sync(ctx->win));
        SPA_MPI_CHECK(MPI_Barrier(ctx->comm));
    }
    for (int i = 0; i < pl->nruns; i++) {
        const spa_run_blk *r = &pl->runs[i];
        int64_t sb0, sb1, st0, st1;
        spa_partition(cfg, ctx->P, r->rank, &sb0, &sb1, &st0, &st1);
        int64_t s_own = st1 - st0, cnt = run_tokens(cfg, r) * D;
        float *fk = ctx->fk + ctx->run_slot[i] * B * D, *fv = ctx->fv + ctx->run_slot[i] * B * D;
        if (ctx->rma) {
            MPI_Aint disp = (MPI_Aint)((r->h * s_own + r->b0 * B - st0) * D);
            SPA_MPI_CHECK(MPI_Get(fk, (int)cnt, MPI_FLOAT, r->rank, disp, (int)cnt, MPI_FLOAT, ctx->win));
            SPA_MPI_CHECK(MPI_Get(fv, (int)cnt, MPI_FLOAT, r->rank, disp + (MPI_Aint)(H * s_own * D), (int)cnt,
                                  MPI_FLOAT, ctx->win));
        } else {
            SPA_MPI_CHECK(MPI_Irecv(fk, (int)cnt, MPI_FLOAT, r->rank, TAG_RAND_K, ctx->comm, &ctx->rreqs[ctx->nrreqs++]));
            SPA_MPI_CHECK(MPI_Irecv(fv, (int)cnt, MPI_FLOAT, r->rank, TAG_RAND_V, ctx->comm, &ctx->rreqs[ctx->nrreqs++]));
        }
        ctx->st->bytes_rma += 2 * cnt * (int64_t)sizeof(float);
    }
    if (!ctx->rma)
        for (int i = 0; i < ctx->nserve; i++) {
            const int64_t *d = ctx->serve + 4 * i; /* rank, h, b0, nblk */
            spa_run_blk r = {(int)d[0], (int32_t)d[1], d[2], d[3]};
            int64_t cnt = run_tokens(cfg, &r) * D, off = (r.h * n_own + r.b0 * B - pl->t0) * D;
            SPA_MPI_CHECK(MPI_Isend(k + off, (int)cnt, MPI_FLOAT, r.rank, TAG_RAND_K, ctx->comm, &ctx->rreqs[ctx->nrreqs++]));
            SPA_MPI_CHECK(MPI_Isend(v + off, (int)cnt, MPI_FLOAT, r.rank, TAG_RAND_V, ctx->comm, &ctx->rreqs[ctx->nrreqs++]));
        }
    ctx->st->seconds_rma += spa_now() - t;
    return SPA_OK;
}

void spa_comm_poke(spa_ctx ctx)
{
    /* Drives progress for transports that need the library entered: the
     * two-sided requests, and one-sided components (osc/pt2pt, osc/ucx)
     * that serve other ranks' gets only from inside MPI calls. */
    int flag;
    if (ctx->nreqs) MPI_Testall(ctx->nreqs, ctx->reqs, &flag, MPI_STATUSES_IGNORE);
    if (ctx->nrreqs) MPI_Testall(ctx->nrreqs, ctx->rreqs, &flag, MPI_STATUSES_IGNORE);
    if (ctx->rma) MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, ctx->comm, &flag, MPI_STATUS_IGNORE);
}

spa_err spa_comm_complete(spa_ctx ctx)
{
    double t = spa_now();
    SPA_MPI_CHECK(MPI_Waitall(ctx->nreqs, ctx->reqs, MPI_STATUSES_IGNORE));
    ctx->nreqs = 0;
    double t2 = spa_now();
    ctx->st->seconds_halo += t2 - t;
    if (ctx->rma) SPA_MPI_CHECK(MPI_Win_flush_all(ctx->win));
    else SPA_MPI_CHECK(MPI_Waitall(ctx->nrreqs, ctx->rreqs, MPI_STATUSES_IGNORE));
    ctx->nrreqs = 0;
    double t3 = spa_now();
    ctx->st->seconds_rma += t3 - t2;
    ctx->st->seconds_wait += t3 - t;
    return SPA_OK;
}

spa_err spa_comm_merge_globals(spa_ctx ctx)
{
    const spa_config *cfg = &ctx->cfg;
    const int64_t H = cfg->heads, D = cfg->dim, G = cfg->nglobals;
    if (ctx->P == 1 || G == 0) return SPA_OK;
    double t = spa_now();
    SPA_REQUIRE(H * G < INT32_MAX, SPA_ERR_USAGE, "too many global rows for one reduction");
    SPA_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, ctx->part, (int)(H * G), ctx->part_type, ctx->part_op, ctx->comm));
    ctx->st->bytes_global += H * G * (D + 2) * (int64_t)sizeof(double);
    /* not counted in seconds_wait: this is the one synchronising step, and
     * its time is mostly waiting for the slowest rank's compute */
    ctx->st->seconds_global += spa_now() - t;
    return SPA_OK;
}
