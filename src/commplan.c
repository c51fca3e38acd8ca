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
    int64_t t1 = b1 * cfg->block < cfg->n ? b1 * cfg->block : cfg->n;
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

typedef struct hb {
    int32_t h;
    int64_t b;
} hb;

static int cmp_hb(const void *x, const void *y)
{
    const hb *a = x, *b = y;
    if (a->h != b->h) return (a->h > b->h) - (a->h < b->h);
    return (a->b > b->b) - (a->b < b->b);
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

/* Remote key blocks of this rank's non-spread query blocks that the halo
 * does not bring: distinct (head, block) pairs, coalesced into runs. */
static spa_err fetch_runs(const spa_config *cfg, spa_commplan *plan, spa_patws *w)
{
    const int64_t B = cfg->block, n = cfg->n, D = cfg->dim;
    int64_t npair = 0, cap = 0;
    hb *pairs = NULL;
    for (int32_t h = 0; h < cfg->heads; h++)
        for (int64_t c = plan->b0; c < plan->b1; c++) {
            if (spa_pattern_served_ws(cfg, h, c, w)) continue;
            int64_t m = spa_pattern_key_blocks_ws(cfg, h, c, w);
            for (int64_t i = 0; i < m; i++) {
                int64_t a = (int64_t)w->kb[i] * B, e = a + B < n ? a + B : n;
                /* every token of it resident after the halo, or gathered */
                if (!outside_ungathered(cfg, h, a, e, plan->ext0, plan->ext1)) continue;
                if (npair == cap) {
                    cap = cap ? 2 * cap : 256;
                    hb *grown = realloc(pairs, (size_t)cap * sizeof *grown);
                    if (!grown) {
                        free(pairs);
                        SPA_FAIL(SPA_ERR_OTHER, "out of memory");
                    }
                    pairs = grown;
                }
                pairs[npair++] = (hb){h, w->kb[i]};
            }
        }
    if (npair) qsort(pairs, (size_t)npair, sizeof *pairs, cmp_hb);
    int64_t u = 0;
    for (int64_t i = 0; i < npair; i++)
        if (u == 0 || cmp_hb(&pairs[u - 1], &pairs[i]) != 0) pairs[u++] = pairs[i];
    plan->nfetch = u;
    int rcap = 0;
    for (int64_t i = 0; i < u; i++) {
        int64_t a = pairs[i].b * B, e = a + B < n ? a + B : n;
        plan->bytes_rma += (e - a) * D * (int64_t)sizeof(float) * 2;
        int owner = spa_partition_owner(cfg, plan->P, a);
        spa_run_blk *last = plan->nruns ? &plan->runs[plan->nruns - 1] : NULL;
        if (last && last->h == pairs[i].h && last->rank == owner && last->b0 + last->nblk == pairs[i].b &&
            last->nblk < SPA_MAX_RUN) {
            last->nblk++;
            continue;
        }
        if (plan->nruns == rcap) {
            rcap = rcap ? 2 * rcap : 64;
            spa_run_blk *grown = realloc(plan->runs, (size_t)rcap * sizeof *grown);
            if (!grown) {
                free(pairs);
                SPA_FAIL(SPA_ERR_OTHER, "out of memory");
            }
            plan->runs = grown;
        }
        plan->runs[plan->nruns++] = (spa_run_blk){owner, pairs[i].h, pairs[i].b, 1};
    }
    free(pairs);
    return SPA_OK;
}

spa_err spa_commplan_build(const spa_config *cfg, int P, int r, spa_commplan *plan)
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
    spa_err e = spread_rows(cfg, plan, w);
    if (e == SPA_OK) e = fetch_runs(cfg, plan, w);
    spa_patws_destroy(w);
    SPA_CHECK(e);

    if (P > 1)
        plan->bytes_global = (cfg->nkv_tokens - plan->nkv_own) * H * D * (int64_t)sizeof(float) * 2 +
                             (plan->nspread - plan->nspread_own) * D * (int64_t)sizeof(float) +
                             plan->nspread * (D + 2) * (int64_t)sizeof(double);
    return SPA_OK;
}

void spa_commplan_free(spa_commplan *plan)
{
    if (!plan) return;
    free(plan->recv);
    free(plan->send);
    free(plan->runs);
    free(plan->spread);
    plan->recv = plan->send = NULL;
    plan->runs = NULL;
    plan->spread = NULL;
    plan->nspread = 0;
    plan->nrecv = plan->nsend = plan->nruns = 0;
}
