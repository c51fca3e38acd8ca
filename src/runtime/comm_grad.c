/* comm_grad.c - every MPI call of the backward pass that the forward does
 * not make: the gradients of the keys a rank borrowed, sent home.
 *
 * Each transfer mirrors one of comm.c's: a rank sends back exactly the
 * pieces it received (halo pieces, fetched runs, the gathered tokens), so
 * the bytes it sends backward equal the bytes it received forward. The
 * owner receives every piece into a landing place of its own, posted
 * before the first block is computed (two-sided) or exposed in a window
 * for the whole context (one-sided), and adds them only at the end, in an
 * order fixed by the plan: the sums do not depend on arrival times, and no
 * rank waits for another's compute before its buffers can be reused. The
 * landing of fetched runs is the trade-off: it holds every run other ranks
 * fetched from this one, once per batch that fetched it.
 */
#include "comm_grad.h"

#include <string.h>

enum { TAG_HALO_DK = 200, TAG_HALO_DV, TAG_RAND_DK, TAG_RAND_DV };

/* The halo sinks and the landing of what neighbours return. */
static spa_err setup_halo(spa_gcomm *g)
{
    const spa_commplan *pl = g->plan;
    const spa_comm *cm = g->cm;
    const int64_t H = g->cfg->heads, D = g->cfg->dim, ew = g->ew;
    g->hl_dk = spa_alloc((size_t)(H * cm->nleft * D * ew) * sizeof(float));
    g->hl_dv = spa_alloc((size_t)(H * cm->nleft * D * ew) * sizeof(float));
    g->hr_dk = spa_alloc((size_t)(H * cm->nright * D * ew) * sizeof(float));
    g->hr_dv = spa_alloc((size_t)(H * cm->nright * D * ew) * sizeof(float));
    g->hland_off = malloc((size_t)(pl->nsend + 1) * sizeof(int64_t));
    g->hreq = malloc((size_t)(2 * (pl->nsend + pl->nrecv) + 1) * sizeof(MPI_Request));
    g->htype = malloc((size_t)(pl->nrecv + 1) * sizeof(MPI_Datatype));
    SPA_REQUIRE(g->hl_dk && g->hl_dv && g->hr_dk && g->hr_dv && g->hland_off && g->hreq && g->htype, SPA_ERR_OTHER,
                "out of memory for the halo's gradients");
    for (int i = 0; i < pl->nrecv; i++) g->htype[i] = MPI_DATATYPE_NULL;
    for (int i = 0; g->exact && i < pl->nrecv; i++) { /* comm.c's rtype, of int64_t */
        const spa_xfer *x = &pl->recv[i];
        const int64_t len = x->t1 - x->t0, stride = x->t0 < pl->t0 ? cm->nleft : cm->nright;
        SPA_REQUIRE(len * D < INT32_MAX && stride * D < INT32_MAX, SPA_ERR_USAGE, "halo too large for one message");
        SPA_MPI_CHECK(MPI_Type_vector((int)H, (int)(len * D), (int)(stride * D), MPI_INT64_T, &g->htype[i]));
        SPA_MPI_CHECK(MPI_Type_commit(&g->htype[i]));
    }
    int64_t off = 0;
    for (int i = 0; i < pl->nsend; i++) {
        g->hland_off[i] = off;
        off += 2 * H * (pl->send[i].t1 - pl->send[i].t0) * D * ew;
        SPA_REQUIRE(H * (pl->send[i].t1 - pl->send[i].t0) * D < INT32_MAX, SPA_ERR_USAGE,
                    "halo too large for one message");
    }
    g->hland_off[pl->nsend] = off;
    g->hland = spa_alloc((size_t)off * sizeof(float));
    SPA_REQUIRE(g->hland, SPA_ERR_OTHER, "out of memory for the halo's gradients");
    for (int i = 0; i < 2 * (pl->nsend + pl->nrecv); i++) g->hreq[i] = MPI_REQUEST_NULL;
    return SPA_OK;
}

/* The gathered sinks, the spread rows' buffers and the layouts of their
 * two collectives. */
static spa_err setup_gathered(spa_gcomm *g)
{
    const spa_config *cfg = g->cfg;
    const spa_commplan *pl = g->plan;
    const spa_comm *cm = g->cm;
    const int64_t H = cfg->heads, D = cfg->dim, NK = cfg->nkv_tokens, NS = pl->nspread, P = g->P;
    g->gdk = spa_alloc((size_t)(H * NK * D * g->ew) * sizeof(float));
    g->gdv = spa_alloc((size_t)(H * NK * D * g->ew) * sizeof(float));
    g->sdq = spa_alloc((size_t)(NS * D * g->ew) * sizeof(float));
    g->sdo = spa_alloc((size_t)(NS * D) * sizeof(float));
    g->slse = spa_alloc((size_t)NS * sizeof(float));
    g->sdl = spa_alloc((size_t)NS * sizeof(float));
    g->rows_stage = spa_alloc((size_t)(NS * (D + 2)) * sizeof(float));
    g->rows_count = calloc((size_t)P, sizeof(int));
    g->rows_displ = calloc((size_t)P, sizeof(int));
    g->rows_pos = malloc((size_t)(NS + 1) * sizeof(int64_t));
    g->part_stage = spa_alloc((size_t)((NK * 2 * H * D + NS * D) * g->ew) * sizeof(float));
    g->part_land = spa_alloc((size_t)(P * cm->gcount[g->rank] * g->ew) * sizeof(float));
    g->a2a = malloc((size_t)(4 * P) * sizeof(int));
    g->xsum = malloc((size_t)(D + 1) * sizeof *g->xsum);
    SPA_REQUIRE(g->gdk && g->gdv && g->sdq && g->sdo && g->slse && g->sdl && g->rows_stage && g->rows_count &&
                    g->rows_displ && g->rows_pos && g->part_stage && g->part_land && g->a2a && g->xsum,
                SPA_ERR_OTHER, "out of memory for the gathered tokens' gradients");
    SPA_REQUIRE(NS * (D + 2) < INT32_MAX && P * (int64_t)cm->gcount[g->rank] < INT32_MAX, SPA_ERR_USAGE,
                "too many gathered tokens and spread rows for one collective");
    /* each rank's spread rows in tile order, [D + 2] floats each */
    for (int64_t r = 0; r < NS; r++) g->rows_count[spa_partition_owner(cfg, (int)P, pl->spread[r].tok)] += (int)(D + 2);
    for (int s = 1; s < P; s++) g->rows_displ[s] = g->rows_displ[s - 1] + g->rows_count[s - 1];
    int *fill = calloc((size_t)P, sizeof(int));
    SPA_REQUIRE(fill, SPA_ERR_OTHER, "out of memory");
    for (int64_t r = 0; r < NS; r++) {
        const int s = spa_partition_owner(cfg, (int)P, pl->spread[r].tok);
        g->rows_pos[r] = g->rows_displ[s] + fill[s];
        fill[s] += (int)(D + 2);
    }
    free(fill);
    return SPA_OK;
}

/* The fetched sinks, beside comm.c's fetched buffers, and the owners each
 * batch returns to. */
static spa_err setup_fetched(spa_gcomm *g)
{
    const spa_commplan *pl = g->plan;
    const spa_comm *cm = g->cm;
    const int64_t B = g->cfg->block, D = g->cfg->dim, NB = pl->nbatch;
    g->fdk = spa_alloc((size_t)(cm->nbuf * cm->buf_slots * B * D * g->ew) * sizeof(float));
    g->fdv = spa_alloc((size_t)(cm->nbuf * cm->buf_slots * B * D * g->ew) * sizeof(float));
    g->run_land = malloc((size_t)(pl->nruns + 1) * sizeof(int64_t));
    g->btarget = malloc((size_t)(pl->nruns + 1) * sizeof(int));
    g->btarget_first = calloc((size_t)NB + 1, sizeof(int));
    g->freq = malloc((size_t)(2 * pl->nruns + 1) * sizeof(MPI_Request));
    int *seen = malloc((size_t)g->P * sizeof(int));
    if (!(g->fdk && g->fdv && g->run_land && g->btarget && g->btarget_first && g->freq && seen)) {
        free(seen);
        SPA_FAIL(SPA_ERR_OTHER, "out of memory for the fetched blocks' gradients");
    }
    for (int i = 0; i < 2 * pl->nruns; i++) g->freq[i] = MPI_REQUEST_NULL;
    for (int r = 0; r < g->P; r++) seen[r] = -1;
    int nt = 0;
    for (int k = 0; k < NB; k++) {
        g->btarget_first[k] = nt;
        for (int i = pl->batch_run[k]; i < pl->batch_run[k + 1]; i++)
            if (seen[pl->runs[i].rank] != k) seen[pl->runs[i].rank] = k, g->btarget[nt++] = pl->runs[i].rank;
    }
    g->btarget_first[NB] = nt;
    free(seen);
    return SPA_OK;
}

spa_err spa_gcomm_create(const spa_comm *cm, int exact, spa_gcomm **out)
{
    spa_gcomm *g = calloc(1, sizeof *g);
    *out = g;
    SPA_REQUIRE(g, SPA_ERR_OTHER, "out of memory");
    g->comm = MPI_COMM_NULL;
    g->win = MPI_WIN_NULL;
    g->cm = cm;
    g->cfg = cm->cfg;
    g->plan = cm->plan;
    g->P = cm->P;
    g->rank = cm->rank;
    g->n_own = cm->n_own;
    g->exact = exact != 0;
    g->ew = exact ? 2 : 1;
    g->et = exact ? MPI_INT64_T : MPI_FLOAT;
    SPA_CHECK(setup_halo(g));
    SPA_CHECK(setup_gathered(g));
    return setup_fetched(g);
}

/* Every owner learns the runs each rank fetched from it (in the fetching
 * rank's run order) and lays out their landing by source rank; each rank
 * learns where its runs land. Collective. */
static spa_err exchange_runs(spa_gcomm *g)
{
    const spa_commplan *pl = g->plan;
    const int P = g->P;
    const int64_t D = g->cfg->dim * g->ew; /* floats of one token's gradient */
    int *scount = calloc((size_t)P, sizeof(int)), *rcount = calloc((size_t)P, sizeof(int));
    int *sdisp = calloc((size_t)P, sizeof(int)), *rdisp = calloc((size_t)P, sizeof(int));
    int *fill = calloc((size_t)P, sizeof(int));
    int64_t *req = malloc((size_t)(3 * pl->nruns + 1) * sizeof(int64_t));
    int64_t *base = calloc((size_t)P, sizeof(int64_t)), *mybase = calloc((size_t)P, sizeof(int64_t));
    int64_t *got = NULL;
    spa_err e = SPA_OK;
    if (!scount || !rcount || !sdisp || !rdisp || !fill || !req || !base || !mybase)
        e = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory");
    if ((e = spa_agree(g->comm, e)) != SPA_OK) goto done;
    for (int i = 0; i < pl->nruns; i++) scount[pl->runs[i].rank] += 3;
    for (int s = 1; s < P; s++) sdisp[s] = sdisp[s - 1] + scount[s - 1];
    for (int i = 0; i < pl->nruns; i++) { /* to each owner in run order */
        const spa_run_blk *r = &pl->runs[i];
        int64_t *d = req + sdisp[r->rank] + fill[r->rank];
        d[0] = r->h, d[1] = r->b0, d[2] = r->nblk;
        fill[r->rank] += 3;
    }
    int m = MPI_Alltoall(scount, 1, MPI_INT, rcount, 1, MPI_INT, g->comm);
    if (m != MPI_SUCCESS) {
        e = spa_mpi_error(m, "MPI_Alltoall (returned runs)", __FILE__, __LINE__);
        goto done;
    }
    int total = 0;
    for (int s = 0; s < P; s++) rdisp[s] = total, total += rcount[s];
    got = malloc((size_t)(total + 1) * sizeof(int64_t));
    g->nserve = total / 3;
    g->serve = malloc((size_t)(4 * g->nserve + 1) * sizeof(int64_t));
    g->serve_land = malloc((size_t)(g->nserve + 1) * sizeof(int64_t));
    e = got && g->serve && g->serve_land ? SPA_OK : spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory");
    if ((e = spa_agree(g->comm, e)) != SPA_OK) goto done;
    m = MPI_Alltoallv(req, scount, sdisp, MPI_INT64_T, got, rcount, rdisp, MPI_INT64_T, g->comm);
    if (m != MPI_SUCCESS) {
        e = spa_mpi_error(m, "MPI_Alltoallv (returned runs)", __FILE__, __LINE__);
        goto done;
    }
    /* landing: by source rank, then in the source's run order, [2][tokens][D] each */
    int64_t off = 0;
    for (int s = 0, k = 0; s < P; s++) {
        base[s] = off;
        for (int i = 0; i < rcount[s]; i += 3, k++) {
            const int64_t *x = got + rdisp[s] + i;
            int64_t *d = g->serve + 4 * k;
            d[0] = s, d[1] = x[0], d[2] = x[1], d[3] = x[2];
            g->serve_land[k] = off;
            off += 2 * spa_run_tokens(g->cfg, x[1], x[2]) * D;
        }
    }
    g->serve_land[g->nserve] = off;
    g->fland_floats = off;
    m = MPI_Alltoall(base, 1, MPI_INT64_T, mybase, 1, MPI_INT64_T, g->comm);
    if (m != MPI_SUCCESS) {
        e = spa_mpi_error(m, "MPI_Alltoall (landing offsets)", __FILE__, __LINE__);
        goto done;
    }
    for (int i = 0; i < pl->nruns; i++) {
        const spa_run_blk *r = &pl->runs[i];
        g->run_land[i] = mybase[r->rank];
        mybase[r->rank] += 2 * spa_run_tokens(g->cfg, r->b0, r->nblk) * D;
    }
done:
    free(scount), free(rcount), free(sdisp), free(rdisp), free(fill), free(req), free(base), free(mybase), free(got);
    return e;
}

spa_err spa_gcomm_connect(spa_gcomm *g)
{
    SPA_MPI_CHECK(MPI_Comm_dup(g->cm->comm, &g->comm));
    SPA_MPI_CHECK(MPI_Comm_set_errhandler(g->comm, MPI_ERRORS_RETURN));
    SPA_CHECK(exchange_runs(g));

    /* the landing window, when the forward's fetches are one-sided: K and V
     * came by MPI_Get, their gradients go back by MPI_Put */
    int ok = 0, all_ok = 0;
    if (g->cm->rma) {
        /* whole cache lines, as comm.c's window (MPICH packs a node's
         * windows back to back) */
        MPI_Aint bytes = (MPI_Aint)((g->fland_floats * (int64_t)sizeof(float) + 63) / 64 * 64);
        float *base = NULL;
        int m = MPI_Win_allocate(bytes, (int)sizeof(float), MPI_INFO_NULL, g->comm, &base, &g->win);
        ok = m == MPI_SUCCESS;
        if (ok) ok = MPI_Win_set_errhandler(g->win, MPI_ERRORS_RETURN) == MPI_SUCCESS;
        if (ok) g->fland = base;
    }
    SPA_MPI_CHECK(MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, g->comm));
    if (!all_ok && g->win != MPI_WIN_NULL) SPA_MPI_CHECK(MPI_Win_free(&g->win));
    g->rma = all_ok;
    spa_err e = SPA_OK;
    if (g->rma) {
        if (g->fland_floats) memset(g->fland, 0, (size_t)g->fland_floats * sizeof(float));
        SPA_MPI_CHECK(MPI_Win_lock_all(MPI_MODE_NOCHECK, g->win));
    } else {
        g->fland = spa_alloc((size_t)g->fland_floats * sizeof(float));
        MPI_Request *grown = realloc(g->freq, (size_t)(2 * (g->plan->nruns + g->nserve) + 1) * sizeof(MPI_Request));
        if (grown) g->freq = grown;
        if (!g->fland || !grown) e = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory for the landing");
        for (int i = 0; grown && i < 2 * (g->plan->nruns + g->nserve); i++) g->freq[i] = MPI_REQUEST_NULL;
    }
    return spa_agree(g->comm, e);
}

void spa_gcomm_destroy(spa_gcomm **pg)
{
    spa_gcomm *g = pg ? *pg : NULL;
    if (!g) return;
    if (g->win != MPI_WIN_NULL) {
        if (g->rma) MPI_Win_unlock_all(g->win);
        MPI_Win_free(&g->win); /* frees the landing with it */
    } else {
        spa_free(g->fland);
    }
    spa_free(g->hl_dk), spa_free(g->hl_dv), spa_free(g->hr_dk), spa_free(g->hr_dv), spa_free(g->hland);
    spa_free(g->gdk), spa_free(g->gdv), spa_free(g->sdq), spa_free(g->sdo), spa_free(g->slse), spa_free(g->sdl);
    spa_free(g->rows_stage), spa_free(g->part_stage), spa_free(g->part_land);
    spa_free(g->fdk), spa_free(g->fdv);
    for (int i = 0; g->htype && i < g->plan->nrecv; i++)
        if (g->htype[i] != MPI_DATATYPE_NULL) MPI_Type_free(&g->htype[i]);
    free(g->htype);
    free(g->hland_off), free(g->hreq), free(g->rows_count), free(g->rows_displ), free(g->rows_pos), free(g->a2a);
    free(g->xsum);
    free(g->run_land), free(g->btarget), free(g->btarget_first), free(g->serve), free(g->serve_land), free(g->freq);
    if (g->comm != MPI_COMM_NULL) MPI_Comm_free(&g->comm);
    free(g);
    *pg = NULL;
}

spa_err spa_gcomm_begin(spa_gcomm *g, spa_stats *st)
{
    const spa_commplan *pl = g->plan;
    const int64_t H = g->cfg->heads, D = g->cfg->dim;
    double t = spa_now();
    /* the halo's returns: one piece from each rank this one sends a halo to */
    for (int i = 0; i < pl->nsend; i++) {
        const spa_xfer *x = &pl->send[i];
        const int cnt = (int)(H * (x->t1 - x->t0) * D);
        float *land = g->hland + g->hland_off[i];
        SPA_MPI_CHECK(MPI_Irecv(land, cnt, g->et, x->rank, TAG_HALO_DK, g->comm, &g->hreq[2 * i]));
        SPA_MPI_CHECK(MPI_Irecv(land + cnt * g->ew, cnt, g->et, x->rank, TAG_HALO_DV, g->comm, &g->hreq[2 * i + 1]));
    }
    st->seconds_halo += spa_now() - t;

    t = spa_now();
    g->done_batch = 0;
    if (g->rma) {
        /* every rank is done reading its landing from the previous pass */
        SPA_MPI_CHECK(MPI_Win_sync(g->win));
        SPA_MPI_CHECK(MPI_Barrier(g->comm));
    } else {
        /* in the order each source posts its sends: matching per (source,
         * tag) is in order */
        MPI_Request *rq = g->freq + 2 * pl->nruns;
        for (int k = 0; k < g->nserve; k++) {
            const int64_t *d = g->serve + 4 * k; /* source, h, b0, nblk */
            const int cnt = (int)(spa_run_tokens(g->cfg, d[2], d[3]) * D);
            float *land = g->fland + g->serve_land[k];
            SPA_MPI_CHECK(MPI_Irecv(land, cnt, g->et, (int)d[0], TAG_RAND_DK, g->comm, &rq[2 * k]));
            SPA_MPI_CHECK(MPI_Irecv(land + cnt * g->ew, cnt, g->et, (int)d[0], TAG_RAND_DV, g->comm, &rq[2 * k + 1]));
        }
    }
    st->seconds_rma += spa_now() - t;
    return SPA_OK;
}

spa_err spa_gcomm_gather_rows(spa_gcomm *g, const float *dout, const float *lse, const float *Dl, spa_stats *st)
{
    const spa_commplan *pl = g->plan;
    const int64_t D = g->cfg->dim, NS = pl->nspread, n_own = g->n_own;
    if (NS == 0) return SPA_OK;
    double t = spa_now();
    for (int64_t r = 0; r < NS; r++) {
        const spa_spread_row *w = &pl->spread[r];
        if (w->tok < pl->t0 || w->tok >= pl->t1) continue;
        const int64_t li = (int64_t)w->h * n_own + w->tok - pl->t0;
        float *p = g->rows_stage + g->rows_pos[r];
        memcpy(p, dout + li * D, (size_t)D * sizeof(float));
        p[D] = lse[li];
        p[D + 1] = Dl[li];
    }
    if (g->P > 1) {
        if (g->cm->gather_mpi)
            SPA_MPI_CHECK(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_FLOAT, g->rows_stage, g->rows_count, g->rows_displ,
                                         MPI_FLOAT, g->comm));
        else /* as the forward's gather, and for the same reason */
            SPA_CHECK(spa_allgatherv_bruck(g->rows_stage, g->rows_count, g->rows_displ, SPA_TAG_GATHER_ROWS, g->comm));
        st->bytes_global += (NS - pl->nspread_own) * (D + 2) * (int64_t)sizeof(float);
    }
    for (int64_t r = 0; r < NS; r++) {
        const float *p = g->rows_stage + g->rows_pos[r];
        memcpy(g->sdo + r * D, p, (size_t)D * sizeof(float));
        g->slse[r] = p[D];
        g->sdl[r] = p[D + 1];
    }
    st->seconds_global += spa_now() - t;
    return SPA_OK;
}

/* Completes the returns of batches [done_batch, upto): their sinks may be
 * reused. */
static spa_err complete_batches(spa_gcomm *g, int upto)
{
    const spa_commplan *pl = g->plan;
    for (int b = g->done_batch; b < upto; b++) {
        if (g->rma) /* per owner, not flush_all (see comm.c's wait for batches) */
            for (int i = g->btarget_first[b]; i < g->btarget_first[b + 1]; i++)
                SPA_MPI_CHECK(MPI_Win_flush(g->btarget[i], g->win));
        else
            SPA_MPI_CHECK(MPI_Waitall(2 * (pl->batch_run[b + 1] - pl->batch_run[b]), g->freq + 2 * pl->batch_run[b],
                                      MPI_STATUSES_IGNORE));
    }
    if (upto > g->done_batch) g->done_batch = upto;
    return SPA_OK;
}

spa_err spa_gcomm_batch_sinks(spa_gcomm *g, int b, spa_gradsink *sink, spa_stats *st)
{
    const spa_comm *cm = g->cm;
    const int64_t BD = (int64_t)g->cfg->block * g->cfg->dim * g->ew, off = (b % cm->nbuf) * cm->buf_slots * BD;
    double t = spa_now();
    /* the batch that used this buffer before */
    if (b >= cm->nbuf) SPA_CHECK(complete_batches(g, b - cm->nbuf + 1));
    double t2 = spa_now();
    st->seconds_rma += t2 - t;
    st->seconds_wait += t2 - t;
    memset(g->fdk + off, 0, (size_t)(g->plan->batch_slots[b] * BD) * sizeof(float));
    memset(g->fdv + off, 0, (size_t)(g->plan->batch_slots[b] * BD) * sizeof(float));
    sink->fdk = g->fdk + off;
    sink->fdv = g->fdv + off;
    return SPA_OK;
}

spa_err spa_gcomm_batch_return(spa_gcomm *g, int b, spa_stats *st)
{
    const spa_config *cfg = g->cfg;
    const spa_commplan *pl = g->plan;
    const spa_comm *cm = g->cm;
    const int64_t BD = (int64_t)cfg->block * cfg->dim * g->ew, off = (b % cm->nbuf) * cm->buf_slots * BD;
    double t = spa_now();
    for (int i = pl->batch_run[b]; i < pl->batch_run[b + 1]; i++) {
        const spa_run_blk *r = &pl->runs[i];
        const int64_t cnt = spa_run_tokens(cfg, r->b0, r->nblk) * cfg->dim;
        const float *dk = g->fdk + off + cm->run_slot[i] * BD, *dv = g->fdv + off + cm->run_slot[i] * BD;
        if (g->rma) {
            SPA_MPI_CHECK(MPI_Put(dk, (int)cnt, g->et, r->rank, (MPI_Aint)g->run_land[i], (int)cnt, g->et, g->win));
            SPA_MPI_CHECK(MPI_Put(dv, (int)cnt, g->et, r->rank, (MPI_Aint)(g->run_land[i] + cnt * g->ew), (int)cnt,
                                  g->et, g->win));
        } else {
            SPA_MPI_CHECK(MPI_Isend(dk, (int)cnt, g->et, r->rank, TAG_RAND_DK, g->comm, &g->freq[2 * i]));
            SPA_MPI_CHECK(MPI_Isend(dv, (int)cnt, g->et, r->rank, TAG_RAND_DV, g->comm, &g->freq[2 * i + 1]));
        }
        st->bytes_rma_bwd += 2 * cnt * g->ew * (int64_t)sizeof(float);
    }
    st->seconds_rma += spa_now() - t;
    return SPA_OK;
}

spa_err spa_gcomm_return_halo(spa_gcomm *g, spa_stats *st)
{
    const spa_commplan *pl = g->plan;
    const spa_comm *cm = g->cm;
    const int64_t H = g->cfg->heads, D = g->cfg->dim;
    double t = spa_now();
    /* each received piece back to its owner, in the layout it came in */
    MPI_Request *rq = g->hreq + 2 * pl->nsend;
    for (int i = 0; i < pl->nrecv; i++) {
        const spa_xfer *x = &pl->recv[i];
        const int left = x->t0 < pl->t0;
        const int64_t off = (left ? x->t0 - pl->ext0 : x->t0 - pl->t1) * D * g->ew;
        const MPI_Datatype ty = g->exact ? g->htype[i] : cm->rtype[i];
        SPA_MPI_CHECK(
            MPI_Isend((left ? g->hl_dk : g->hr_dk) + off, 1, ty, x->rank, TAG_HALO_DK, g->comm, &rq[2 * i]));
        SPA_MPI_CHECK(
            MPI_Isend((left ? g->hl_dv : g->hr_dv) + off, 1, ty, x->rank, TAG_HALO_DV, g->comm, &rq[2 * i + 1]));
        st->bytes_halo_bwd += 2 * H * (x->t1 - x->t0) * D * g->ew * (int64_t)sizeof(float);
    }
    st->seconds_halo += spa_now() - t;
    return SPA_OK;
}

spa_err spa_gcomm_return_gathered(spa_gcomm *g, spa_stats *st)
{
    const spa_config *cfg = g->cfg;
    const spa_commplan *pl = g->plan;
    const spa_comm *cm = g->cm;
    const int64_t H = cfg->heads, D = cfg->dim, NK = cfg->nkv_tokens, NS = pl->nspread;
    const int P = g->P, me = g->rank;
    if (NK + NS == 0) return SPA_OK;
    double t = spa_now();
    /* the forward's Allgatherv layout: rank s's part is its gathered
     * tokens [tok][2][H][D], then its spread rows [row][D] */
    const float *sink[2] = {g->gdk, g->gdv};
    const int64_t ew = g->ew;
    for (int s = 0; s < P; s++)
        for (int64_t k = cm->kv_first[s]; k < cm->kv_first[s + 1]; k++)
            for (int x = 0; x < 2; x++)
                for (int64_t h = 0; h < H; h++)
                    memcpy(g->part_stage + (cm->gdispl[s] + (((k - cm->kv_first[s]) * 2 + x) * H + h) * D) * ew,
                           sink[x] + (h * NK + k) * D * ew, (size_t)(D * ew) * sizeof(float));
    for (int64_t r = 0; r < NS; r++)
        memcpy(g->part_stage + cm->spos[r] * ew, g->sdq + r * D * ew, (size_t)(D * ew) * sizeof(float));
    if (P > 1) {
        int *scount = g->a2a, *rcount = g->a2a + P, *rdispl = g->a2a + 2 * P;
        for (int s = 0; s < P; s++) {
            scount[s] = s == me ? 0 : cm->gcount[s];
            rcount[s] = s == me ? 0 : cm->gcount[me];
            rdispl[s] = s * cm->gcount[me];
            st->bytes_global_bwd += scount[s] * ew * (int64_t)sizeof(float);
        }
        SPA_MPI_CHECK(MPI_Alltoallv(g->part_stage, scount, cm->gdispl, g->et, g->part_land, rcount, rdispl, g->et,
                                    g->comm));
    }
    st->seconds_global += spa_now() - t;
    return SPA_OK;
}

void spa_gcomm_poke(spa_gcomm *g)
{
    int flag;
    MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, g->comm, &flag, MPI_STATUS_IGNORE);
}

/* x[len] += y[len]: float, or (exact) int64_t fixed point with
 * wrap-around (spa_fix_add's), which every order sums to the same bits */
static inline void add_to(int exact, float *x, const float *y, int64_t len)
{
    if (!exact) {
        for (int64_t i = 0; i < len; i++) x[i] += y[i];
        return;
    }
    int64_t *a = (int64_t *)(void *)x;
    const int64_t *b = (const int64_t *)(const void *)y;
    for (int64_t i = 0; i < len; i++) a[i] = (int64_t)((uint64_t)a[i] + (uint64_t)b[i]);
}

spa_err spa_gcomm_finish(spa_gcomm *g, float *dq, float *dk, float *dv, spa_stats *st)
{
    const spa_config *cfg = g->cfg;
    const spa_commplan *pl = g->plan;
    const spa_comm *cm = g->cm;
    const int64_t H = cfg->heads, D = cfg->dim, B = cfg->block, NK = cfg->nkv_tokens, NS = pl->nspread;
    const int64_t n_own = g->n_own, t0 = pl->t0, ew = g->ew;
    const int me = g->rank, ex = g->exact;

    /* 1. every return has landed */
    double t = spa_now();
    SPA_MPI_CHECK(MPI_Waitall(2 * (pl->nsend + pl->nrecv), g->hreq, MPI_STATUSES_IGNORE));
    double t2 = spa_now();
    st->seconds_halo += t2 - t;
    SPA_CHECK(complete_batches(g, pl->nbatch));
    if (g->rma) {
        /* every origin has flushed its puts: they are in place */
        SPA_MPI_CHECK(MPI_Barrier(g->comm));
        SPA_MPI_CHECK(MPI_Win_sync(g->win));
    } else {
        SPA_MPI_CHECK(MPI_Waitall(2 * g->nserve, g->freq + 2 * pl->nruns, MPI_STATUSES_IGNORE));
    }
    double t3 = spa_now();
    st->seconds_rma += t3 - t2;
    st->seconds_wait += t3 - t;

    /* 2. the halo's returns, by source rank (plan->send is sorted by rank) */
    float *dst[2] = {dk, dv};
    for (int i = 0; i < pl->nsend; i++) {
        const spa_xfer *x = &pl->send[i];
        const int64_t len = x->t1 - x->t0;
        for (int c = 0; c < 2; c++)
            for (int64_t h = 0; h < H; h++)
                add_to(ex, dst[c] + (h * n_own + x->t0 - t0) * D * ew,
                       g->hland + g->hland_off[i] + ((c * H + h) * len) * D * ew, len * D);
    }

    /* 3. the fetched runs' returns, by source rank, then the source's run order */
    for (int k = 0; k < g->nserve; k++) {
        const int64_t *d = g->serve + 4 * k; /* source, h, b0, nblk */
        const int64_t cnt = spa_run_tokens(cfg, d[2], d[3]) * D, row = d[1] * n_own + d[2] * B - t0;
        add_to(ex, dk + row * D * ew, g->fland + g->serve_land[k], cnt);
        add_to(ex, dv + row * D * ew, g->fland + g->serve_land[k] + cnt * ew, cnt);
    }

    /* 4. the gathered tokens and spread rows, by source rank, this rank's
     *    own partial at its place */
    if (NK + NS == 0) return SPA_OK;
    const int64_t kf = cm->kv_first[me], kl = cm->kv_first[me + 1];
    for (int s = 0; s < g->P; s++) {
        const float *part = s == me ? g->part_stage + cm->gdispl[me] * ew
                                    : g->part_land + (int64_t)s * cm->gcount[me] * ew;
        for (int64_t k = kf; k < kl; k++)
            for (int c = 0; c < 2; c++)
                for (int64_t h = 0; h < H; h++)
                    add_to(ex, dst[c] + (h * n_own + cfg->kv_tokens[k] - t0) * D * ew,
                           part + (((k - kf) * 2 + c) * H + h) * D * ew, D);
        if (ex) continue; /* the spread rows' dq below, summed over every source first */
        for (int64_t r = 0; r < NS; r++) {
            const spa_spread_row *w = &pl->spread[r];
            if (w->tok < t0 || w->tok >= pl->t1) continue;
            add_to(0, dq + ((int64_t)w->h * n_own + w->tok - t0) * D, part + cm->spos[r] - cm->gdispl[me], D);
        }
    }
    if (!ex) return SPA_OK;
    /* exact: each spread row's partials summed in fixed point, then added
     * to its dq once (the block pass left 0 there, or nothing for a spread
     * block's rows) */
    int64_t *sum = g->xsum;
    const double inv = 1.0 / g->xq;
    for (int64_t r = 0; r < NS; r++) {
        const spa_spread_row *w = &pl->spread[r];
        if (w->tok < t0 || w->tok >= pl->t1) continue;
        memset(sum, 0, (size_t)D * sizeof *sum);
        for (int s = 0; s < g->P; s++) {
            const float *part = s == me ? g->part_stage + cm->gdispl[me] * ew
                                        : g->part_land + (int64_t)s * cm->gcount[me] * ew;
            add_to(1, (float *)(void *)sum, part + (cm->spos[r] - cm->gdispl[me]) * ew, D);
        }
        float *o = dq + ((int64_t)w->h * n_own + w->tok - t0) * D;
        for (int64_t d = 0; d < D; d++) o[d] += (float)((double)sum[d] * inv);
    }
    return SPA_OK;
}
