/* comm.c - every MPI call of a run: halo, gathered tokens, fetched blocks,
 * the merge of the spread rows.
 *
 * Set-up allocates every buffer and datatype once; a run only posts,
 * waits and counts bytes. The byte counters add up what was actually
 * posted, so a test can hold them to the plan's prediction.
 *
 * Fetched blocks use one window over each rank's K and V (MPI_Win_allocate,
 * pre-touched, one lock_all epoch for the context's life) and one MPI_Get
 * per coalesced run of blocks, completed by a flush of each rank the batch
 * reads. Where the window cannot be created (osc/rdma over TCP between
 * nodes) the same runs go two-sided.
 */
#include "comm.h"

#include <string.h>

static void merge_op(void *in, void *inout, int *len, MPI_Datatype *dt)
{
    int bytes;
    MPI_Type_size(*dt, &bytes);
    int32_t D = bytes / (int)sizeof(double) - 2;
    for (int i = 0; i < *len; i++)
        spa_partial_merge((double *)inout + (int64_t)i * (D + 2), (const double *)in + (int64_t)i * (D + 2), D);
}

/* Sums of 128-bit integers (exact mode's spread rows), with wrap-around. */
static void sum128_op(void *in, void *inout, int *len, MPI_Datatype *dt)
{
    (void)dt;
    const unsigned __int128 *a = in;
    unsigned __int128 *b = inout;
    for (int i = 0; i < *len; i++) b[i] += a[i];
}

spa_err spa_comm_dup(MPI_Comm comm, MPI_Comm *dup, int *P, int *rank)
{
    *dup = MPI_COMM_NULL;
    SPA_MPI_CHECK(MPI_Comm_dup(comm, dup));
    SPA_MPI_CHECK(MPI_Comm_set_errhandler(*dup, MPI_ERRORS_RETURN));
    SPA_MPI_CHECK(MPI_Comm_size(*dup, P));
    SPA_MPI_CHECK(MPI_Comm_rank(*dup, rank));
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

static spa_err setup_halo(spa_comm *c)
{
    const spa_commplan *pl = c->plan;
    const int64_t H = c->cfg->heads, D = c->cfg->dim;
    c->nleft = pl->t0 - pl->ext0;
    c->nright = pl->ext1 - pl->t1;
    c->hl_k = spa_alloc((size_t)(H * c->nleft * D) * sizeof(float));
    c->hl_v = spa_alloc((size_t)(H * c->nleft * D) * sizeof(float));
    c->hr_k = spa_alloc((size_t)(H * c->nright * D) * sizeof(float));
    c->hr_v = spa_alloc((size_t)(H * c->nright * D) * sizeof(float));
    c->reqs = malloc((size_t)(2 * (pl->nrecv + pl->nsend) + 1) * sizeof(MPI_Request));
    c->rtype = malloc((size_t)(pl->nrecv + 1) * sizeof(MPI_Datatype));
    c->stype = malloc((size_t)(pl->nsend + 1) * sizeof(MPI_Datatype));
    SPA_REQUIRE(c->hl_k && c->hl_v && c->hr_k && c->hr_v && c->reqs && c->rtype && c->stype, SPA_ERR_OTHER,
                "out of memory for the halo");
    for (int i = 0; i < pl->nrecv; i++) c->rtype[i] = MPI_DATATYPE_NULL;
    for (int i = 0; i < pl->nsend; i++) c->stype[i] = MPI_DATATYPE_NULL;
    for (int i = 0; i < pl->nrecv; i++) {
        const spa_xfer *x = &pl->recv[i];
        SPA_CHECK(head_type(x->t1 - x->t0, x->t0 < pl->t0 ? c->nleft : c->nright, H, D, &c->rtype[i]));
    }
    for (int i = 0; i < pl->nsend; i++)
        SPA_CHECK(head_type(pl->send[i].t1 - pl->send[i].t0, c->n_own, H, D, &c->stype[i]));
    return SPA_OK;
}

static spa_err setup_gather(spa_comm *c)
{
    const spa_config *cfg = c->cfg;
    const spa_commplan *pl = c->plan;
    const int64_t H = cfg->heads, D = cfg->dim, NK = cfg->nkv_tokens, NS = pl->nspread, P = c->P;
    c->gk = spa_alloc((size_t)(H * NK * D) * sizeof(float));
    c->gv = spa_alloc((size_t)(H * NK * D) * sizeof(float));
    c->sq = spa_alloc((size_t)(NS * D) * sizeof(float));
    c->stage = spa_alloc((size_t)(NK * 2 * H * D + NS * D) * sizeof(float));
    c->gcount = calloc((size_t)P, sizeof(int));
    c->gdispl = calloc((size_t)P, sizeof(int));
    c->kv_first = calloc((size_t)P + 1, sizeof(int64_t));
    c->spos = malloc((size_t)(NS + 1) * sizeof(int64_t));
    int64_t *scount = calloc((size_t)P, sizeof(int64_t));
    if (!(c->gk && c->gv && c->sq && c->stage && c->gcount && c->gdispl && c->kv_first && c->spos && scount)) {
        free(scount);
        SPA_FAIL(SPA_ERR_OTHER, "out of memory for the gathered tokens");
    }
    SPA_REQUIRE(NK * 2 * H * D + NS * D < INT32_MAX, SPA_ERR_USAGE,
                "too many gathered tokens and spread rows for one Allgatherv");
    /* each rank's part: its gathered tokens, then its spread rows */
    for (int64_t k = 0; k < NS; k++) scount[spa_partition_owner(cfg, (int)P, pl->spread[k].tok)]++;
    int64_t g = 0, displ = 0;
    for (int s = 0; s < P; s++) {
        int64_t b0, b1, t0, t1;
        spa_partition(cfg, (int)P, s, &b0, &b1, &t0, &t1);
        c->kv_first[s] = g;
        while (g < NK && cfg->kv_tokens[g] < t1) g++;
        c->gcount[s] = (int)((g - c->kv_first[s]) * 2 * H * D + scount[s] * D);
        c->gdispl[s] = (int)displ;
        displ += c->gcount[s];
    }
    c->kv_first[P] = NK;
    memset(scount, 0, (size_t)P * sizeof *scount);
    for (int64_t k = 0; k < NS; k++) {
        int s = spa_partition_owner(cfg, (int)P, pl->spread[k].tok);
        c->spos[k] = c->gdispl[s] + (c->kv_first[s + 1] - c->kv_first[s]) * 2 * H * D + scount[s]++ * D;
    }
    free(scount);
    SPA_MPI_CHECK(MPI_Type_contiguous((int)(D + 2), MPI_DOUBLE, &c->part_type));
    SPA_MPI_CHECK(MPI_Type_commit(&c->part_type));
    SPA_MPI_CHECK(MPI_Op_create(merge_op, 1, &c->part_op));
    SPA_MPI_CHECK(MPI_Type_contiguous(2, MPI_UINT64_T, &c->i128_type));
    SPA_MPI_CHECK(MPI_Type_commit(&c->i128_type));
    SPA_MPI_CHECK(MPI_Op_create(sum128_op, 1, &c->i128_op));
    return SPA_OK;
}

static spa_err setup_fetch(spa_comm *c)
{
    const spa_commplan *pl = c->plan;
    const int64_t H = c->cfg->heads, D = c->cfg->dim, B = c->cfg->block, NB = pl->nbatch;
    c->nbuf = NB > 1 ? 2 : 1;
    c->buf_slots = 0;
    for (int k = 0; k < NB; k++)
        if (pl->batch_slots[k] > c->buf_slots) c->buf_slots = pl->batch_slots[k];
    c->fk = spa_alloc((size_t)(c->nbuf * c->buf_slots * B * D) * sizeof(float));
    c->fv = spa_alloc((size_t)(c->nbuf * c->buf_slots * B * D) * sizeof(float));
    c->fblock = malloc((size_t)(pl->nfetch + 1) * sizeof(int64_t));
    c->batch_first = calloc((size_t)NB + 1, sizeof(int64_t));
    c->fhead_off = calloc((size_t)(NB * (H + 1)), sizeof(int64_t));
    c->run_slot = malloc((size_t)(pl->nruns + 1) * sizeof(int64_t));
    c->btarget = malloc((size_t)(pl->nruns + 1) * sizeof(int));
    c->btarget_first = calloc((size_t)NB + 1, sizeof(int));
    int *seen = malloc((size_t)c->P * sizeof(int)); /* last batch that listed each rank */
    if (!(c->fk && c->fv && c->fblock && c->batch_first && c->fhead_off && c->run_slot && c->btarget &&
          c->btarget_first && seen)) {
        free(seen);
        SPA_FAIL(SPA_ERR_OTHER, "out of memory for %lld fetched blocks", (long long)(c->nbuf * c->buf_slots));
    }
    for (int r = 0; r < c->P; r++) seen[r] = -1;
    int64_t slot = 0;
    int ntarget = 0;
    for (int k = 0; k < NB; k++) {
        int64_t *ho = c->fhead_off + k * (H + 1), first = slot;
        c->batch_first[k] = first;
        c->btarget_first[k] = ntarget;
        for (int i = pl->batch_run[k]; i < pl->batch_run[k + 1]; i++) {
            c->run_slot[i] = slot - first;
            for (int64_t b = 0; b < pl->runs[i].nblk; b++) c->fblock[slot++] = pl->runs[i].b0 + b;
            ho[pl->runs[i].h + 1] += pl->runs[i].nblk;
            if (seen[pl->runs[i].rank] != k) seen[pl->runs[i].rank] = k, c->btarget[ntarget++] = pl->runs[i].rank;
        }
        for (int64_t h = 0; h < H; h++) ho[h + 1] += ho[h];
    }
    c->batch_first[NB] = slot;
    c->btarget_first[NB] = ntarget;
    free(seen);
    return SPA_OK;
}

void spa_comm_batch_keys(const spa_comm *c, int b, spa_keysrc *src)
{
    const int64_t BD = (int64_t)c->cfg->block * c->cfg->dim;
    src->fblock = c->fblock + c->batch_first[b];
    src->fhead_off = c->fhead_off + (int64_t)b * (c->cfg->heads + 1);
    src->fk = c->fk + (b % c->nbuf) * c->buf_slots * BD;
    src->fv = c->fv + (b % c->nbuf) * c->buf_slots * BD;
}

spa_err spa_comm_create(MPI_Comm dup, const spa_config *cfg, const spa_commplan *plan, spa_comm **out)
{
    spa_comm *c = calloc(1, sizeof *c);
    *out = c;
    SPA_REQUIRE(c, SPA_ERR_OTHER, "out of memory");
    c->comm = dup;
    c->cfg = cfg;
    c->plan = plan;
    c->P = plan->P;
    c->rank = plan->rank;
    c->n_own = plan->t1 - plan->t0;
    c->win = MPI_WIN_NULL;
    const char *ga = getenv("SPA_GATHER");
    c->gather_mpi = ga && strcmp(ga, "mpi") == 0;
    c->part_type = MPI_DATATYPE_NULL;
    c->part_op = MPI_OP_NULL;
    c->i128_type = MPI_DATATYPE_NULL;
    c->i128_op = MPI_OP_NULL;
    SPA_CHECK(setup_halo(c));
    SPA_CHECK(setup_gather(c));
    return setup_fetch(c);
}

static spa_err setup_p2p(spa_comm *c)
{
    /* tell every owner which runs I need; it learns what to serve */
    const spa_commplan *pl = c->plan;
    int P = c->P;
    int *scount = calloc((size_t)P, sizeof(int)), *rcount = calloc((size_t)P, sizeof(int));
    int *sdisp = calloc((size_t)P, sizeof(int)), *rdisp = calloc((size_t)P, sizeof(int));
    int *fill = calloc((size_t)P, sizeof(int));
    int64_t *req = malloc((size_t)(pl->nruns + 1) * 3 * sizeof(int64_t));
    if (!scount || !rcount || !sdisp || !rdisp || !fill || !req) {
        free(scount), free(rcount), free(sdisp), free(rdisp), free(fill), free(req);
        SPA_FAIL(SPA_ERR_OTHER, "out of memory");
    }
    for (int i = 0; i < pl->nruns; i++) scount[pl->runs[i].rank] += 3;
    for (int s = 1; s < P; s++) sdisp[s] = sdisp[s - 1] + scount[s - 1];
    for (int i = 0; i < pl->nruns; i++) {
        const spa_run_blk *r = &pl->runs[i];
        int64_t *d = req + sdisp[r->rank] + fill[r->rank];
        d[0] = r->h, d[1] = r->b0, d[2] = r->nblk;
        fill[r->rank] += 3;
    }
    spa_err e = SPA_OK;
    int m = MPI_Alltoall(scount, 1, MPI_INT, rcount, 1, MPI_INT, c->comm);
    int total = 0;
    for (int s = 0; s < P; s++) rdisp[s] = total, total += rcount[s];
    int64_t *got = malloc((size_t)(total + 1) * sizeof(int64_t));
    if (m == MPI_SUCCESS && got)
        m = MPI_Alltoallv(req, scount, sdisp, MPI_INT64_T, got, rcount, rdisp, MPI_INT64_T, c->comm);
    if (e == SPA_OK && (m != MPI_SUCCESS || !got))
        e = spa_mpi_error(m, "MPI_Alltoallv (random-link requests)", __FILE__, __LINE__);
    c->nserve = total / 3;
    c->serve = malloc((size_t)(c->nserve + 1) * 4 * sizeof(int64_t));
    c->rreqs = malloc((size_t)(2 * (pl->nruns + c->nserve) + 1) * sizeof(MPI_Request));
    if (e == SPA_OK && (!c->serve || !c->rreqs))
        e = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory");
    for (int i = 0; c->rreqs && i < 2 * (pl->nruns + c->nserve); i++) c->rreqs[i] = MPI_REQUEST_NULL;
    if (e == SPA_OK)
        for (int s = 0, k = 0; s < P; s++)
            for (int i = 0; i < rcount[s]; i += 3, k++) {
                int64_t *d = c->serve + 4 * k, *g = got + rdisp[s] + i;
                d[0] = s, d[1] = g[0], d[2] = g[1], d[3] = g[2];
            }
    free(scount), free(rcount), free(sdisp), free(rdisp), free(fill), free(req), free(got);
    return e;
}

spa_err spa_comm_connect(spa_comm *c)
{
    const int64_t H = c->cfg->heads, D = c->cfg->dim;
    const char *tr = getenv("SPA_RANDOM_TRANSPORT");
    int want_rma = !(tr && strcmp(tr, "p2p") == 0), ok = 0;
    if (want_rma) {
        /* K then V, rounded up to whole cache lines. MPICH puts the windows
         * of a node's ranks back to back in one shared segment, so a size
         * that is not a multiple of 16 bytes misaligns the next rank's base;
         * MPICH 4.0 over UCX then takes that window's address from the UCX
         * registration, which rounds it down, and every get reads shifted
         * values. */
        MPI_Aint bytes = (MPI_Aint)((2 * H * c->n_own * D * (int64_t)sizeof(float) + 63) / 64 * 64);
        int m = MPI_Win_allocate(bytes, (int)sizeof(float), MPI_INFO_NULL, c->comm, &c->wbase, &c->win);
        ok = m == MPI_SUCCESS;
        if (ok) ok = MPI_Win_set_errhandler(c->win, MPI_ERRORS_RETURN) == MPI_SUCCESS;
    }
    int all_ok = 0;
    SPA_MPI_CHECK(MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, c->comm));
    if (!all_ok && c->win != MPI_WIN_NULL) SPA_MPI_CHECK(MPI_Win_free(&c->win));
    c->rma = all_ok;
    if (c->rma) {
        /* pre-touch, so the first gets do not fault the target's pages in */
        spa_hugepages(c->wbase, (size_t)(2 * H * c->n_own * D) * sizeof(float));
        memset(c->wbase, 0, (size_t)(2 * H * c->n_own * D) * sizeof(float));
        SPA_MPI_CHECK(MPI_Win_lock_all(MPI_MODE_NOCHECK, c->win));
        return SPA_OK;
    }
    return setup_p2p(c);
}

void spa_comm_destroy(spa_comm **pc)
{
    spa_comm *c = pc ? *pc : NULL;
    if (!c) return;
    if (c->win != MPI_WIN_NULL) {
        if (c->rma) MPI_Win_unlock_all(c->win);
        MPI_Win_free(&c->win);
    }
    if (c->part_type != MPI_DATATYPE_NULL) MPI_Type_free(&c->part_type);
    if (c->part_op != MPI_OP_NULL) MPI_Op_free(&c->part_op);
    if (c->i128_type != MPI_DATATYPE_NULL) MPI_Type_free(&c->i128_type);
    if (c->i128_op != MPI_OP_NULL) MPI_Op_free(&c->i128_op);
    for (int i = 0; c->rtype && i < c->plan->nrecv; i++)
        if (c->rtype[i] != MPI_DATATYPE_NULL) MPI_Type_free(&c->rtype[i]);
    for (int i = 0; c->stype && i < c->plan->nsend; i++)
        if (c->stype[i] != MPI_DATATYPE_NULL) MPI_Type_free(&c->stype[i]);
    spa_free(c->hl_k), spa_free(c->hl_v), spa_free(c->hr_k), spa_free(c->hr_v);
    spa_free(c->gk), spa_free(c->gv), spa_free(c->sq), spa_free(c->stage);
    spa_free(c->fk), spa_free(c->fv);
    free(c->rtype), free(c->stype), free(c->reqs), free(c->gcount), free(c->gdispl), free(c->kv_first);
    free(c->spos), free(c->fblock), free(c->batch_first), free(c->fhead_off), free(c->run_slot), free(c->serve);
    free(c->btarget), free(c->btarget_first);
    free(c->rreqs);
    if (c->comm != MPI_COMM_NULL) MPI_Comm_free(&c->comm);
    free(c);
    *pc = NULL;
}

/* Parts [a, a + m) of buf, rank order modulo P: one or two pieces. */
static spa_err gather_xfer(float *buf, const int *count, const int *displ, int P, int a, int m, int peer, int send,
                           int tag, MPI_Comm comm, MPI_Request *req, int *nreq)
{
    int piece[2][2] = {{a, a + m < P ? a + m : P}, {0, a + m > P ? a + m - P : 0}};
    for (int i = 0; i < 2; i++) {
        int s0 = piece[i][0], s1 = piece[i][1];
        if (s1 <= s0) continue;
        int cnt = displ[s1 - 1] + count[s1 - 1] - displ[s0];
        if (cnt == 0) continue; /* the peer skips the same piece */
        float *p = buf + displ[s0];
        if (send) SPA_MPI_CHECK(MPI_Isend(p, cnt, MPI_FLOAT, peer, tag, comm, &req[(*nreq)++]));
        else SPA_MPI_CHECK(MPI_Irecv(p, cnt, MPI_FLOAT, peer, tag, comm, &req[(*nreq)++]));
    }
    return SPA_OK;
}

/* MPI_Allgatherv in place by Bruck's algorithm: in step d = 1, 2, 4, ...
 * rank r, which holds the parts of ranks r .. r + d - 1, sends them to
 * r - d and receives those of r + d .. r + 2d - 1 from r + d (modulo P,
 * never more than P parts). ceil(log2 P) steps whatever the sizes.
 * Why not MPI_Allgatherv: the gathered tokens and the spread rows usually
 * sit on one or a few ranks (the default globals are the first and last
 * blocks), while Open MPI's fixed decision rules choose by the average
 * part size; from 256 to 511 ranks (and for larger parts at other sizes)
 * they pick the ring or neighbour exchange, which pass rank 0's whole part
 * from rank to rank in P - 1 (or P / 2) steps. */
spa_err spa_allgatherv_bruck(float *buf, const int *count, const int *displ, int tag, MPI_Comm comm)
{
    int P, r;
    SPA_MPI_CHECK(MPI_Comm_size(comm, &P));
    SPA_MPI_CHECK(MPI_Comm_rank(comm, &r));
    MPI_Request req[4];
    for (int d = 1; d < P; d *= 2) {
        int m = d < P - d ? d : P - d, nreq = 0;
        SPA_CHECK(gather_xfer(buf, count, displ, P, (r + d) % P, m, (r + d) % P, 0, tag, comm, req, &nreq));
        SPA_CHECK(gather_xfer(buf, count, displ, P, r, m, (r - d + P) % P, 1, tag, comm, req, &nreq));
        SPA_MPI_CHECK(MPI_Waitall(nreq, req, MPI_STATUSES_IGNORE));
    }
    return SPA_OK;
}

spa_err spa_comm_gather(spa_comm *c, const float *q, const float *k, const float *v, spa_stats *st)
{
    const spa_config *cfg = c->cfg;
    const spa_commplan *pl = c->plan;
    const int64_t H = cfg->heads, D = cfg->dim, NK = cfg->nkv_tokens, NS = pl->nspread, n_own = c->n_own;
    double t = spa_now();
    /* stage my part: gathered tokens [tok][2][H][D], then spread rows */
    const float *src[2] = {k, v};
    float *my = c->stage + c->gdispl[c->rank];
    for (int64_t g = c->kv_first[c->rank]; g < c->kv_first[c->rank + 1]; g++)
        for (int x = 0; x < 2; x++)
            for (int64_t h = 0; h < H; h++)
                memcpy(my + (((g - c->kv_first[c->rank]) * 2 + x) * H + h) * D,
                       src[x] + (h * n_own + cfg->kv_tokens[g] - pl->t0) * D, (size_t)D * sizeof(float));
    for (int64_t r = 0; r < NS; r++) {
        const spa_spread_row *w = &pl->spread[r];
        if (w->tok >= pl->t0 && w->tok < pl->t1)
            memcpy(c->stage + c->spos[r], q + ((int64_t)w->h * n_own + w->tok - pl->t0) * D, (size_t)D * sizeof(float));
    }
    if (c->P > 1 && NK + NS > 0) {
        if (c->gather_mpi)
            SPA_MPI_CHECK(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_FLOAT, c->stage, c->gcount, c->gdispl, MPI_FLOAT, c->comm));
        else
            SPA_CHECK(spa_allgatherv_bruck(c->stage, c->gcount, c->gdispl, SPA_TAG_GATHER, c->comm));
        st->bytes_global += (NK - pl->nkv_own) * 2 * H * D * (int64_t)sizeof(float) +
                            (NS - pl->nspread_own) * D * (int64_t)sizeof(float);
    }
    float *dst[2] = {c->gk, c->gv};
    for (int s = 0; s < c->P; s++)
        for (int64_t g = c->kv_first[s]; g < c->kv_first[s + 1]; g++)
            for (int x = 0; x < 2; x++)
                for (int64_t h = 0; h < H; h++)
                    memcpy(dst[x] + (h * NK + g) * D, c->stage + c->gdispl[s] + (((g - c->kv_first[s]) * 2 + x) * H + h) * D,
                           (size_t)D * sizeof(float));
    for (int64_t r = 0; r < NS; r++) memcpy(c->sq + r * D, c->stage + c->spos[r], (size_t)D * sizeof(float));
    st->seconds_global += spa_now() - t;
    return SPA_OK;
}

enum { TAG_HALO_K = 100, TAG_HALO_V, TAG_RAND_K, TAG_RAND_V };

spa_err spa_comm_post(spa_comm *c, const float *k, const float *v, spa_stats *st)
{
    const spa_config *cfg = c->cfg;
    const spa_commplan *pl = c->plan;
    const int64_t H = cfg->heads, D = cfg->dim, B = cfg->block, n_own = c->n_own;

    /* halo */
    double t = spa_now();
    c->nreqs = 0;
    for (int i = 0; i < pl->nrecv; i++) {
        const spa_xfer *x = &pl->recv[i];
        int left = x->t0 < pl->t0;
        int64_t off = (left ? x->t0 - pl->ext0 : x->t0 - pl->t1) * D;
        SPA_MPI_CHECK(MPI_Irecv((left ? c->hl_k : c->hr_k) + off, 1, c->rtype[i], x->rank, TAG_HALO_K, c->comm,
                                &c->reqs[c->nreqs++]));
        SPA_MPI_CHECK(MPI_Irecv((left ? c->hl_v : c->hr_v) + off, 1, c->rtype[i], x->rank, TAG_HALO_V, c->comm,
                                &c->reqs[c->nreqs++]));
        st->bytes_halo += 2 * H * (x->t1 - x->t0) * D * (int64_t)sizeof(float);
    }
    for (int i = 0; i < pl->nsend; i++) {
        const spa_xfer *x = &pl->send[i];
        int64_t off = (x->t0 - pl->t0) * D;
        SPA_MPI_CHECK(MPI_Isend(k + off, 1, c->stype[i], x->rank, TAG_HALO_K, c->comm, &c->reqs[c->nreqs++]));
        SPA_MPI_CHECK(MPI_Isend(v + off, 1, c->stype[i], x->rank, TAG_HALO_V, c->comm, &c->reqs[c->nreqs++]));
    }
    st->seconds_halo += spa_now() - t;

    /* fetched blocks: expose K and V, or send what others fetch */
    t = spa_now();
    if (c->rma) {
        /* everyone's gets of the previous run are done; expose this run's K, V */
        SPA_MPI_CHECK(MPI_Barrier(c->comm));
        /* callers that filled spa_ctx_kv_buffers pass the window itself */
        if (n_own > 0 && k != c->wbase) memcpy(c->wbase, k, (size_t)(H * n_own * D) * sizeof(float));
        if (n_own > 0 && v != c->wbase + H * n_own * D)
            memcpy(c->wbase + H * n_own * D, v, (size_t)(H * n_own * D) * sizeof(float));
        SPA_MPI_CHECK(MPI_Win_sync(c->win));
        SPA_MPI_CHECK(MPI_Barrier(c->comm));
    } else {
        /* in the order the fetching rank posts its receives: matching per
         * (source, tag) is in order */
        for (int i = 0; i < c->nserve; i++) {
            const int64_t *d = c->serve + 4 * i; /* rank, h, b0, nblk */
            spa_run_blk r = {(int)d[0], (int32_t)d[1], d[2], d[3]};
            int64_t cnt = spa_run_tokens(cfg, r.b0, r.nblk) * D, off = (r.h * n_own + r.b0 * B - pl->t0) * D;
            int q = 2 * (pl->nruns + i);
            SPA_MPI_CHECK(MPI_Isend(k + off, (int)cnt, MPI_FLOAT, r.rank, TAG_RAND_K, c->comm, &c->rreqs[q]));
            SPA_MPI_CHECK(MPI_Isend(v + off, (int)cnt, MPI_FLOAT, r.rank, TAG_RAND_V, c->comm, &c->rreqs[q + 1]));
        }
    }
    st->seconds_rma += spa_now() - t;
    return SPA_OK;
}

spa_err spa_comm_fetch(spa_comm *c, int bt, spa_stats *st)
{
    const spa_config *cfg = c->cfg;
    const spa_commplan *pl = c->plan;
    const int64_t H = cfg->heads, D = cfg->dim, B = cfg->block;
    double t = spa_now();
    float *bk = c->fk + (bt % c->nbuf) * c->buf_slots * B * D, *bv = c->fv + (bt % c->nbuf) * c->buf_slots * B * D;
    for (int i = pl->batch_run[bt]; i < pl->batch_run[bt + 1]; i++) {
        const spa_run_blk *r = &pl->runs[i];
        int64_t sb0, sb1, st0, st1;
        spa_partition(cfg, c->P, r->rank, &sb0, &sb1, &st0, &st1);
        int64_t s_own = st1 - st0, cnt = spa_run_tokens(cfg, r->b0, r->nblk) * D;
        float *fk = bk + c->run_slot[i] * B * D, *fv = bv + c->run_slot[i] * B * D;
        if (c->rma) {
            MPI_Aint disp = (MPI_Aint)((r->h * s_own + r->b0 * B - st0) * D);
            SPA_MPI_CHECK(MPI_Get(fk, (int)cnt, MPI_FLOAT, r->rank, disp, (int)cnt, MPI_FLOAT, c->win));
            SPA_MPI_CHECK(MPI_Get(fv, (int)cnt, MPI_FLOAT, r->rank, disp + (MPI_Aint)(H * s_own * D), (int)cnt,
                                  MPI_FLOAT, c->win));
        } else {
            SPA_MPI_CHECK(MPI_Irecv(fk, (int)cnt, MPI_FLOAT, r->rank, TAG_RAND_K, c->comm, &c->rreqs[2 * i]));
            SPA_MPI_CHECK(MPI_Irecv(fv, (int)cnt, MPI_FLOAT, r->rank, TAG_RAND_V, c->comm, &c->rreqs[2 * i + 1]));
        }
        st->bytes_rma += 2 * cnt * (int64_t)sizeof(float);
    }
    st->seconds_rma += spa_now() - t;
    return SPA_OK;
}

#define SPA_POKE_GAP 10e-6

void spa_comm_poke(spa_comm *c)
{
    /* Drives progress for transports that need the library entered: the
     * two-sided requests, and one-sided components (osc/pt2pt, osc/ucx)
     * that serve other ranks' gets only from inside MPI calls. Errors
     * surface at spa_comm_complete. The Iprobe runs the progress engine for
     * every request, the fetched runs' too: testing a batch's thousands of
     * two-sided requests on each call cost more than the block it followed
     * (at P = 8). One rank has nothing to progress, and entering MPI more
     * often than every SPA_POKE_GAP seconds serves no get sooner than a
     * network delivers it: an Iprobe costs about 0.4 us, 8 % of a 16-row
     * block's time when it followed every block. */
    if (c->P == 1) return;
    const double now = spa_now();
    if (now - c->poke_last < SPA_POKE_GAP) return;
    c->poke_last = now;
    int flag;
    if (c->nreqs) MPI_Testall(c->nreqs, c->reqs, &flag, MPI_STATUSES_IGNORE);
    MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, c->comm, &flag, MPI_STATUS_IGNORE);
}

spa_err spa_comm_wait_halo(spa_comm *c, spa_stats *st)
{
    double t = spa_now();
    SPA_MPI_CHECK(MPI_Waitall(c->nreqs, c->reqs, MPI_STATUSES_IGNORE));
    c->nreqs = 0;
    double t2 = spa_now();
    st->seconds_halo += t2 - t;
    st->seconds_wait += t2 - t;
    return SPA_OK;
}

spa_err spa_comm_wait_batch(spa_comm *c, int bt, spa_stats *st)
{
    const spa_commplan *pl = c->plan;
    double t = spa_now();
    /* One batch is in flight at a time: flushing the ranks it reads
     * completes it. Not MPI_Win_flush_all: MPICH 4.0 over UCX implements it
     * with a UCX worker flush, which returns while gets to a busy rank still
     * wait on a full shared-memory queue, and their blocks land after the
     * kernel has read the buffer. A flush per rank waits for that queue. */
    if (c->rma)
        for (int i = c->btarget_first[bt]; i < c->btarget_first[bt + 1]; i++)
            SPA_MPI_CHECK(MPI_Win_flush(c->btarget[i], c->win));
    else
        SPA_MPI_CHECK(MPI_Waitall(2 * (pl->batch_run[bt + 1] - pl->batch_run[bt]), c->rreqs + 2 * pl->batch_run[bt],
                                  MPI_STATUSES_IGNORE));
    double t2 = spa_now();
    st->seconds_rma += t2 - t;
    st->seconds_wait += t2 - t;
    return SPA_OK;
}

spa_err spa_comm_wait_rank(spa_comm *c, int b, int r, spa_stats *st)
{
    int reads = 0;
    for (int i = c->btarget_first[b]; i < c->btarget_first[b + 1]; i++) reads |= c->btarget[i] == r;
    if (!c->rma || !reads) return SPA_OK;
    double t = spa_now();
    SPA_MPI_CHECK(MPI_Win_flush(r, c->win));
    double t2 = spa_now();
    st->seconds_rma += t2 - t;
    st->seconds_wait += t2 - t;
    return SPA_OK;
}

spa_err spa_comm_finish(spa_comm *c, spa_stats *st)
{
    const spa_commplan *pl = c->plan;
    if (c->rma || !c->nserve) return SPA_OK;
    double t = spa_now();
    SPA_MPI_CHECK(MPI_Waitall(2 * c->nserve, c->rreqs + 2 * pl->nruns, MPI_STATUSES_IGNORE));
    double t2 = spa_now();
    st->seconds_rma += t2 - t;
    st->seconds_wait += t2 - t; /* blocked on the runs this rank sends */
    return SPA_OK;
}

spa_err spa_comm_merge(spa_comm *c, double *part, spa_stats *st)
{
    const int64_t NS = c->plan->nspread, D = c->cfg->dim;
    if (c->P == 1 || NS == 0) return SPA_OK;
    double t = spa_now();
    SPA_REQUIRE(NS < INT32_MAX, SPA_ERR_USAGE, "too many spread rows for one reduction");
    SPA_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, part, (int)NS, c->part_type, c->part_op, c->comm));
    st->bytes_global += NS * (D + 2) * (int64_t)sizeof(double);
    /* not counted in seconds_wait: this is the one synchronising step, and
     * its time is mostly waiting for the slowest rank's compute */
    st->seconds_global += spa_now() - t;
    return SPA_OK;
}

spa_err spa_comm_merge_exact(spa_comm *c, float *mx, spa_i128 *acc, spa_stats *st)
{
    const int64_t NS = c->plan->nspread, D = c->cfg->dim;
    if (c->P == 1 || NS == 0) return SPA_OK;
    double t = spa_now();
    SPA_REQUIRE(NS * (D + 2) < INT32_MAX, SPA_ERR_USAGE, "too many spread rows for one reduction");
    if (mx) {
        SPA_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, mx, (int)(NS + 1), MPI_FLOAT, MPI_MAX, c->comm));
        st->bytes_global += (NS + 1) * (int64_t)sizeof(float);
    } else {
        SPA_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, acc, (int)(NS * (D + 2)), c->i128_type, c->i128_op, c->comm));
        st->bytes_global += NS * (D + 2) * (int64_t)sizeof(spa_i128);
    }
    st->seconds_global += spa_now() - t;
    return SPA_OK;
}

spa_err spa_comm_sum_i64(spa_comm *c, int64_t local, int64_t *total)
{
    SPA_MPI_CHECK(MPI_Allreduce(&local, total, 1, MPI_INT64_T, MPI_SUM, c->comm));
    return SPA_OK;
}

spa_err spa_comm_sum_f64(spa_comm *c, double local, double *total)
{
    SPA_MPI_CHECK(MPI_Allreduce(&local, total, 1, MPI_DOUBLE, MPI_SUM, c->comm));
    return SPA_OK;
}
