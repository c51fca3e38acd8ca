/* commplan.c - who sends what to whom, a pure function of (cfg, P, rank).
 *
 * Planning is separate from executing: the runtime only posts what this
 * plan lists, and its byte counters must equal the plan's. Every rank can
 * compute every other rank's needs, so senders know what to send without a
 * handshake.
 */
#include "spa_impl.h"

#include <string.h>

/* Keys the local windows of blocks [b0, b1) need, over every head:
 * [*e0, *e1), never narrower than the shard [t0, t1). Local ranges grow
 * with the block, so the first and last blocks bound the union. */
static void extent(const spa_config *cfg, int64_t b0, int64_t b1, int64_t t0, int64_t *e0, int64_t *e1)
{
    int64_t t1 = spa_block_end(cfg, b1 - 1);
    *e0 = t0;
    *e1 = b1 > b0 ? t1 : t0;
    for (int32_t h = 0; h < cfg->heads && b1 > b0; h++) {
        int64_t a, b;
        spa_pattern_local_range(cfg, h, b0, &a, &b);
        if (b > a && a < *e0) *e0 = a;
        spa_pattern_local_range(cfg, h, b1 - 1, &a, &b);
        if (b > a && b > *e1) *e1 = b;
    }
}

/* Appends the pieces of [a, b) by owner rank. */
static spa_err split_by_owner(const spa_config *cfg, int P, int64_t a, int64_t b, spa_xfer **list,
                              int *count, int *cap)
{
    while (a < b) {
        int s = spa_partition_owner(cfg, P, a);
        int64_t sb0, sb1, st0, st1;
        spa_partition(cfg, P, s, &sb0, &sb1, &st0, &st1);
        int64_t e = st1 < b ? st1 : b;
        if (*count == *cap) {
            *cap = *cap ? 2 * *cap : 8;
            spa_xfer *grown = realloc(*list, (size_t)*cap * sizeof **list);
            SPA_REQUIRE(grown, SPA_ERR_OTHER, "out of memory");
            *list = grown;
        }
        (*list)[(*count)++] = (spa_xfer){s, a, e};
        a = e;
    }
    return SPA_OK;
}

enum { SPA_MAX_RUN = 64 }; /* blocks per MPI_Get, keeps counts far below INT_MAX */

/* Appends one spread row. */
static spa_err push_row(spa_commplan *plan, int64_t *cap, int64_t tok, int32_t h, int32_t tile)
{
    if (plan->nspread == *cap) {
        *cap = *cap ? 2 * *cap : 256;
        spa_spread_row *grown = realloc(plan->spread, (size_t)*cap * sizeof *grown);
        SPA_REQUIRE(grown, SPA_ERR_OTHER, "out of memory for the spread rows");
        plan->spread = grown;
    }
    plan->spread[plan->nspread++] = (spa_spread_row){tok, h, tile};
    if (tok >= plan->t0 && tok < plan->t1) plan->nspread_own++;
    return SPA_OK;
}

enum { SPA_SPREAD_TILE = 64 }; /* rows per tile of the spread path */

/* Spread rows of every rank, in tile order: per head, the global rows,
 * then the non-global rows of each spread block. */
static spa_err spread_rows(const spa_config *cfg, spa_commplan *plan, spa_patws *w)
{
    const int64_t B = cfg->block, n = cfg->n, nb = spa_nblocks(cfg);
    int64_t cap = 0;
    int32_t tile = 0;
    for (int32_t h = 0; h < cfg->heads; h++) {
        for (int64_t g = 0; g < cfg->nglobals; g++) {
            if (g % SPA_SPREAD_TILE == 0 && g) tile++;
            SPA_CHECK(push_row(plan, &cap, cfg->globals[g], h, tile));
        }
        if (cfg->nglobals) tile++;
        for (int64_t c = 0; c < nb; c++) {
            if (!spa_pattern_spread_ws(cfg, h, c, w)) continue;
            int64_t rows = 0;
            for (int64_t i = c * B; i < (c + 1) * B && i < n; i++) {
                if (spa_pattern_is_global(cfg, i)) continue;
                if (rows % SPA_SPREAD_TILE == 0 && rows) tile++;
                SPA_CHECK(push_row(plan, &cap, i, h, tile));
                rows++;
            }
            if (rows) tile++;
        }
    }
    plan->nspread_tiles = tile;
    return SPA_OK;
}

/* Tokens of [a, e) outside the resident [x0, x1) and not gathered for h. */
static int64_t outside_ungathered(const spa_config *cfg, int32_t h, int64_t a, int64_t e, int64_t x0, int64_t x1)
{
    int64_t cnt = 0;
    if (a < x0) {
        int64_t b = e < x0 ? e : x0;
        cnt += (b - a) - spa_pattern_gathered_in(cfg, h, a, b);
    }
    if (e > x1) {
        int64_t b = a > x1 ? a : x1;
        cnt += (e - b) - spa_pattern_gathered_in(cfg, h, b, e);
    }
    return cnt;
}

typedef struct hbk {
    int32_t h, batch;
    int64_t b;
} hbk;

static int cmp_hbk(const void *x, const void *y)
{
    const hbk *a = x, *b = y;
    if (a->batch != b->batch) return (a->batch > b->batch) - (a->batch < b->batch);
    if (a->h != b->h) return (a->h > b->h) - (a->h < b->h);
    return (a->b > b->b) - (a->b < b->b);
}

typedef struct list {
    void *p;
    int64_t n, cap;
    size_t size;
} list;

static void *list_push(list *l)
{
    if (l->n == l->cap) {
        int64_t cap = l->cap ? 2 * l->cap : 256;
        void *grown = realloc(l->p, (size_t)cap * l->size);
        if (!grown) return NULL;
        l->p = grown;
        l->cap = cap;
    }
    return (char *)l->p + (size_t)l->n++ * l->size;
}

/* The blocks of (h, c) to fetch for its block pass: full key blocks (random,
 * layout) with a key neither resident nor gathered. *own: every such key
 * is in the shard itself (none in the halo). */
static int64_t block_needs(const spa_config *cfg, const spa_commplan *plan, int32_t h, int64_t c, spa_patws *w,
                           int32_t *need, int *own)
{
    const int64_t B = cfg->block;
    spa_rowctx x;
    spa_rowctx_init(&x, cfg, h, c, w);
    int64_t m = 0;
    *own = 1;
    for (int64_t k = 0; k < x.nkb; k++) {
        int64_t a = (int64_t)x.kb[k] * B, e = spa_block_end(cfg, x.kb[k]);
        if (outside_ungathered(cfg, h, a, e, plan->ext0, plan->ext1)) need[m++] = x.kb[k];
        if (outside_ungathered(cfg, h, a, e, plan->t0, plan->t1)) *own = 0;
    }
    return m;
}

/* Remote key blocks of this rank's non-served query blocks that the halo
 * does not bring, in batches that fit cfg->fetch_bytes (one batch, each
 * block once, when everything fits), coalesced into runs. */
static spa_err fetch_runs(const spa_config *cfg, spa_commplan *plan, spa_patws *w)
{
    const int64_t B = cfg->block, D = cfg->dim, nb = spa_nblocks(cfg), H = cfg->heads;
    const int64_t blk = B * D * (int64_t)sizeof(float) * 2;
    const int64_t slots_max = cfg->fetch_bytes > 0 ? (cfg->fetch_bytes / 2 / blk > 0 ? cfg->fetch_bytes / 2 / blk : 1)
                                                   : INT64_MAX;
    int32_t *stamp = calloc((size_t)(H * nb), sizeof *stamp); /* 1 + the batch that lists (h, b) */
    int32_t *need = malloc((size_t)nb * sizeof *need);
    list pairs = {NULL, 0, 0, sizeof(hbk)}, tasks = {NULL, 0, 0, sizeof(struct spa_hc)},
         ready = {NULL, 0, 0, sizeof(struct spa_hc)}, tneed = {NULL, 0, 0, sizeof(int64_t)},
         needs = {NULL, 0, 0, sizeof(int32_t)};
    spa_err e = SPA_OK;
#define PUSH(l, T, v)                                                                                              \
    do {                                                                                                           \
        T *slot_ = list_push(&(l));                                                                                \
        if (!slot_) {                                                                                              \
            e = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory planning the fetches");           \
            goto done;                                                                                             \
        }                                                                                                          \
        *slot_ = (v);                                                                                              \
    } while (0)
    if (!stamp || !need) {
        e = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory planning the fetches");
        goto done;
    }
    /* 1. each query block's needs, and whether it is ready (no halo, no fetch) */
    int any_residue = 0;
    for (int32_t h = 0; h < H; h++) any_residue |= cfg->hr[h].stride || cfg->hr[h].ndilated;
    int64_t distinct = 0;
    int own;
    for (int32_t h = 0; h < H; h++)
        for (int64_t c = plan->b0; c < plan->b1; c++) {
            if (spa_pattern_served_ws(cfg, h, c, w)) continue;
            int64_t m = block_needs(cfg, plan, h, c, w, need, &own), j0, j1;
            spa_pattern_local_range(cfg, h, c, &j0, &j1);
            struct spa_hc t = {h, c};
            /* ready: it runs before the halo arrives, so every key it needs
             * is in the shard itself */
            if (own && (j1 <= j0 || (j0 >= plan->t0 && j1 <= plan->t1))) {
                PUSH(ready, struct spa_hc, t);
                continue;
            }
            PUSH(tasks, struct spa_hc, t);
            PUSH(tneed, int64_t, needs.n);
            for (int64_t i = 0; i < m; i++) {
                PUSH(needs, int32_t, need[i]);
                if (!stamp[h * nb + need[i]]) stamp[h * nb + need[i]] = 1, distinct++;
            }
        }
    PUSH(tneed, int64_t, needs.n);
    /* the residue pass's keys: strided and dilated candidates */
    list rneeds = {NULL, 0, 0, sizeof(hbk)};
    for (int32_t h = 0; h < H && any_residue; h++)
        for (int64_t c = plan->b0; c < plan->b1; c++) {
            if (spa_pattern_served_ws(cfg, h, c, w)) continue;
            int64_t m = spa_pattern_key_blocks_ws(cfg, h, c, w);
            for (int64_t i = 0; i < m; i++) {
                int64_t a = (int64_t)w->kb[i] * B, end = spa_block_end(cfg, w->kb[i]);
                if (w->kfull[i] || !outside_ungathered(cfg, h, a, end, plan->ext0, plan->ext1)) continue;
                hbk p = {h, 0, w->kb[i]};
                hbk *slot = list_push(&rneeds);
                if (!slot) {
                    free(rneeds.p);
                    e = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory planning the fetches");
                    goto done;
                }
                *slot = p;
                if (!stamp[h * nb + p.b]) stamp[h * nb + p.b] = 1, distinct++;
            }
        }
    memset(stamp, 0, (size_t)(H * nb) * sizeof *stamp);

    /* 2. batches: one when every distinct block fits, else greedy over the
     *    query blocks in (head, block) order, then the residue pass's keys */
    const struct spa_hc *tk = tasks.p;
    const int64_t *tn = tneed.p;
    const int32_t *nd = needs.p;
    int32_t batch = 0;
    int64_t slots = 0, in_batch = 0;
    const int one = distinct <= slots_max;
    plan->batch_task = tasks.p;
    plan->ready_task = ready.p;
    plan->ntask_ready = ready.n;
    tasks.p = ready.p = NULL;
    int64_t *task_off = malloc((size_t)(tasks.n + rneeds.n + 3) * sizeof *task_off);
    int64_t *bslots = malloc((size_t)(tasks.n + 3) * sizeof *bslots);
    if (!task_off || !bslots) {
        free(task_off), free(bslots), free(rneeds.p);
        e = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory planning the fetches");
        goto done;
    }
    plan->batch_task_off = task_off;
    plan->batch_slots = bslots;
    task_off[0] = 0;
    for (int64_t t = 0; t < tasks.n; t++) {
        int64_t fresh = 0;
        for (int64_t i = tn[t]; i < tn[t + 1]; i++) fresh += stamp[tk[t].h * nb + nd[i]] != batch + 1;
        if (!one && in_batch && slots + fresh > slots_max) { /* close the batch */
            bslots[batch] = slots;
            task_off[++batch] = t;
            slots = in_batch = 0;
        }
        for (int64_t i = tn[t]; i < tn[t + 1]; i++) {
            int32_t *st = &stamp[tk[t].h * nb + nd[i]];
            if (*st == batch + 1) continue;
            *st = batch + 1;
            slots++;
            PUSH(pairs, hbk, ((hbk){tk[t].h, batch, nd[i]}));
        }
        in_batch++;
    }
    if (any_residue && !one && (in_batch || batch > 0)) { /* the residue pass gets a batch of its own */
        bslots[batch] = slots;
        task_off[++batch] = tasks.n;
        slots = 0;
    }
    for (int64_t r = 0; r < rneeds.n; r++) {
        hbk p = ((hbk *)rneeds.p)[r];
        int32_t *st = &stamp[p.h * nb + p.b];
        if (*st == batch + 1) continue;
        *st = batch + 1;
        slots++;
        p.batch = batch;
        PUSH(pairs, hbk, p);
    }
    free(rneeds.p);
    bslots[batch] = slots;
    task_off[batch + 1] = tasks.n;
    plan->nbatch = batch + 1;

    /* 3. runs: per batch, per head, contiguous blocks of one owner */
    hbk *pp = pairs.p;
    if (pairs.n) qsort(pp, (size_t)pairs.n, sizeof *pp, cmp_hbk);
    plan->nfetch = pairs.n;
    plan->batch_run = calloc((size_t)plan->nbatch + 1, sizeof *plan->batch_run);
    if (!plan->batch_run) {
        e = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory planning the fetches");
        goto done;
    }
    int rcap = 0;
    for (int64_t i = 0; i < pairs.n; i++) {
        int64_t a = pp[i].b * B, end = spa_block_end(cfg, pp[i].b);
        plan->bytes_rma += (end - a) * D * (int64_t)sizeof(float) * 2;
        int owner = spa_partition_owner(cfg, plan->P, a);
        spa_run_blk *last = plan->nruns ? &plan->runs[plan->nruns - 1] : NULL;
        if (last && i > 0 && pp[i - 1].batch == pp[i].batch && last->h == pp[i].h && last->rank == owner &&
            last->b0 + last->nblk == pp[i].b && last->nblk < SPA_MAX_RUN) {
            last->nblk++;
            continue;
        }
        if (plan->nruns == rcap) {
            rcap = rcap ? 2 * rcap : 64;
            spa_run_blk *grown = realloc(plan->runs, (size_t)rcap * sizeof *grown);
            if (!grown) {
                e = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory planning the fetches");
                goto done;
            }
            plan->runs = grown;
        }
        plan->runs[plan->nruns++] = (spa_run_blk){owner, pp[i].h, pp[i].b, 1};
        plan->batch_run[pp[i].batch + 1] = plan->nruns;
    }
    for (int k = 1; k <= plan->nbatch; k++)
        if (plan->batch_run[k] < plan->batch_run[k - 1]) plan->batch_run[k] = plan->batch_run[k - 1];
done:
#undef PUSH
    free(stamp), free(need), free(pairs.p), free(tasks.p), free(ready.p), free(tneed.p), free(needs.p);
    return e;
}

/* The spread rows of like (a plan of the same cfg, any P and rank), with
 * this rank's own rows counted. */
static spa_err spread_rows_like(const spa_commplan *like, spa_commplan *plan)
{
    plan->spread = malloc((size_t)(like->nspread + 1) * sizeof *plan->spread);
    SPA_REQUIRE(plan->spread, SPA_ERR_OTHER, "out of memory for the spread rows");
    if (like->nspread) memcpy(plan->spread, like->spread, (size_t)like->nspread * sizeof *plan->spread);
    plan->nspread = like->nspread;
    plan->nspread_tiles = like->nspread_tiles;
    for (int64_t i = 0; i < plan->nspread; i++)
        plan->nspread_own += plan->spread[i].tok >= plan->t0 && plan->spread[i].tok < plan->t1;
    return SPA_OK;
}

static spa_err build(const spa_config *cfg, int P, int r, const spa_commplan *like, spa_commplan *plan);

spa_err spa_commplan_build(const spa_config *cfg, int P, int r, spa_commplan *plan)
{
    return build(cfg, P, r, NULL, plan);
}

spa_err spa_commplan_build_like(const spa_config *cfg, int P, int r, const spa_commplan *like, spa_commplan *plan)
{
    return build(cfg, P, r, like, plan);
}

static spa_err build(const spa_config *cfg, int P, int r, const spa_commplan *like, spa_commplan *plan)
{
    memset(plan, 0, sizeof *plan);
    plan->P = P;
    plan->rank = r;
    spa_partition(cfg, P, r, &plan->b0, &plan->b1, &plan->t0, &plan->t1);
    extent(cfg, plan->b0, plan->b1, plan->t0, &plan->ext0, &plan->ext1);
    const int64_t H = cfg->heads, D = cfg->dim;
    const int64_t row_bytes = H * D * (int64_t)sizeof(float) * 2; /* K and V, all heads */

    /* halo: what I receive, then what every other rank needs from me */
    int cap = 0;
    SPA_CHECK(split_by_owner(cfg, P, plan->ext0, plan->t0, &plan->recv, &plan->nrecv, &cap));
    SPA_CHECK(split_by_owner(cfg, P, plan->t1, plan->ext1, &plan->recv, &plan->nrecv, &cap));
    for (int i = 0; i < plan->nrecv; i++)
        plan->bytes_halo += (plan->recv[i].t1 - plan->recv[i].t0) * row_bytes;
    cap = 0;
    for (int s = 0; s < P && plan->t1 > plan->t0; s++) {
        if (s == r) continue;
        int64_t sb0, sb1, st0, st1, e0, e1;
        spa_partition(cfg, P, s, &sb0, &sb1, &st0, &st1);
        extent(cfg, sb0, sb1, st0, &e0, &e1);
        int64_t a = e0 > plan->t0 ? e0 : plan->t0, b = e1 < plan->t1 ? e1 : plan->t1;
        if (a >= b) continue;
        if (plan->nsend == cap) {
            cap = cap ? 2 * cap : 8;
            spa_xfer *grown = realloc(plan->send, (size_t)cap * sizeof *grown);
            SPA_REQUIRE(grown, SPA_ERR_OTHER, "out of memory");
            plan->send = grown;
        }
        plan->send[plan->nsend++] = (spa_xfer){s, a, b};
    }

    /* gathered: K and V of every gathered token not owned here */
    for (int64_t g = 0; g < cfg->nkv_tokens; g++)
        plan->nkv_own += cfg->kv_tokens[g] >= plan->t0 && cfg->kv_tokens[g] < plan->t1;
    for (int64_t g = 0; g < cfg->nglobals; g++)
        plan->nglobal_own += cfg->globals[g] >= plan->t0 && cfg->globals[g] < plan->t1;

    spa_patws *w = spa_patws_create(cfg);
    SPA_REQUIRE(w, SPA_ERR_OTHER, "out of memory");
    spa_err e = like ? spread_rows_like(like, plan) : spread_rows(cfg, plan, w);
    if (e == SPA_OK) e = fetch_runs(cfg, plan, w);
    spa_patws_destroy(w);
    SPA_CHECK(e);

    if (P > 1)
        plan->bytes_global = (cfg->nkv_tokens - plan->nkv_own) * H * D * (int64_t)sizeof(float) * 2 +
                             (plan->nspread - plan->nspread_own) * D * (int64_t)sizeof(float) +
                             plan->nspread * (D + 2) * (int64_t)sizeof(double);
    return SPA_OK;
}

spa_err spa_commplan_stages(const spa_config *cfg, const spa_commplan *plan, struct spa_hc *task, int64_t *off)
{
    const int P = plan->P, lb = plan->nbatch - 1;
    const int64_t t0 = plan->batch_task_off[lb], nt = plan->batch_task_off[lb + 1] - t0;
    const int nrun = plan->batch_run[lb + 1] - plan->batch_run[lb];
    const spa_run_blk *run = nrun ? plan->runs + plan->batch_run[lb] : NULL;
    int *stage = malloc((size_t)(nt + 1) * sizeof *stage);
    int64_t *fill = malloc((size_t)P * sizeof *fill);
    spa_patws *w = spa_patws_create(cfg);
    spa_err e = SPA_OK;
    if (!stage || !fill || !w) {
        e = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory");
        goto done;
    }
    memset(off, 0, (size_t)(P + 1) * sizeof *off);
    for (int64_t t = 0; t < nt; t++) {
        const struct spa_hc *tk = &plan->batch_task[t0 + t];
        spa_rowctx x; /* the full key blocks as the kernel's block pass takes them */
        spa_rowctx_init(&x, cfg, tk->h, tk->c, w);
        int far = 0;
        for (int64_t i = 0; i < x.nkb; i++) {
            if (!x.kfull[i]) continue;
            const int64_t b = x.kb[i];
            int a = 0, z = nrun; /* past the last run of head h that starts at or before b */
            while (a < z) {
                const int mid = a + (z - a) / 2;
                if (run[mid].h < tk->h || (run[mid].h == tk->h && run[mid].b0 <= b)) a = mid + 1;
                else z = mid;
            }
            if (a > 0 && run[a - 1].h == tk->h && b < run[a - 1].b0 + run[a - 1].nblk) {
                const int d = (run[a - 1].rank - plan->rank + P) % P;
                far = d > far ? d : far;
            }
        }
        stage[t] = far;
        off[far + 1]++;
    }
    for (int s = 0; s < P; s++) off[s + 1] += off[s];
    memcpy(fill, off, (size_t)P * sizeof *fill);
    for (int64_t t = 0; t < nt; t++) task[fill[stage[t]]++] = plan->batch_task[t0 + t];
done:
    free(stage), free(fill);
    spa_patws_destroy(w);
    return e;
}

void spa_commplan_free(spa_commplan *plan)
{
    if (!plan) return;
    free(plan->recv);
    free(plan->send);
    free(plan->runs);
    free(plan->spread);
    free(plan->batch_run), free(plan->batch_slots), free(plan->batch_task_off), free(plan->batch_task);
    free(plan->ready_task);
    plan->batch_run = NULL, plan->batch_slots = NULL, plan->batch_task_off = NULL, plan->batch_task = NULL;
    plan->ready_task = NULL;
    plan->recv = plan->send = NULL;
    plan->runs = NULL;
    plan->spread = NULL;
    plan->nspread = 0;
    plan->nrecv = plan->nsend = plan->nruns = 0;
}
