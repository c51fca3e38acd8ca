/* commplan.c - who sends what to whom, a pure function of (cfg, P, rank).
 *
 * Planning is separate from executing: the runtime only posts what this
 * plan lists, and its byte counters must equal the plan's. Every rank can
 * compute every other rank's needs, so senders know what to send without a
 * handshake.
 */
#include "spa_impl.h"

#include <string.h>

/* Keys the local windows of blocks [b0, b1) need: [*e0, *e1). */
static void extent(const spa_config *cfg, int64_t b0, int64_t b1, int64_t t0, int64_t *e0, int64_t *e1)
{
    if (b1 <= b0) {
        *e0 = *e1 = t0;
        return;
    }
    int64_t a, b;
    spa_pattern_local_range(cfg, b0, e0, &b);
    spa_pattern_local_range(cfg, b1 - 1, &a, e1);
    /* causal windows may end at the shard's end; never shrink below it */
    int64_t t1 = b1 * cfg->block < cfg->n ? b1 * cfg->block : cfg->n;
    if (*e1 < t1) *e1 = t1;
    if (*e0 > t0) *e0 = t0;
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

spa_err spa_commplan_build(const spa_config *cfg, int P, int r, spa_commplan *plan)
{
    memset(plan, 0, sizeof *plan);
    plan->P = P;
    plan->rank = r;
    spa_partition(cfg, P, r, &plan->b0, &plan->b1, &plan->t0, &plan->t1);
    extent(cfg, plan->b0, plan->b1, plan->t0, &plan->ext0, &plan->ext1);
    const int64_t B = cfg->block, n = cfg->n, H = cfg->heads, D = cfg->dim;
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

    /* globals: q, k and v of every global token not owned here, plus this
     * rank's partials (max, sum, acc[D]) for every global row and head */
    for (int64_t g = 0; g < cfg->nglobals; g++)
        plan->nglobal_own += cfg->globals[g] >= plan->t0 && cfg->globals[g] < plan->t1;
    if (P > 1)
        plan->bytes_global = (cfg->nglobals - plan->nglobal_own) * H * D * (int64_t)sizeof(float) * 3 +
                             cfg->nglobals * H * (D + 2) * (int64_t)sizeof(double);

    /* random links: distinct (head, block) pairs not resident after the halo */
    int64_t nq = plan->b1 - plan->b0, npair = 0;
    hb *pairs = malloc((size_t)(H * nq * cfg->random + 1) * sizeof *pairs);
    int32_t *rb = malloc((size_t)(cfg->random + 1) * sizeof *rb);
    if (!pairs || !rb) {
        free(pairs), free(rb);
        SPA_FAIL(SPA_ERR_OTHER, "out of memory");
    }
    for (int32_t h = 0; h < H; h++)
        for (int64_t c = plan->b0; c < plan->b1; c++) {
            int32_t m = spa_pattern_random_blocks(cfg, h, c, rb);
            for (int32_t i = 0; i < m; i++) {
                int64_t a = (int64_t)rb[i] * B, e = a + B < n ? a + B : n;
                if (a >= plan->ext0 && e <= plan->ext1) continue;
                pairs[npair++] = (hb){h, rb[i]};
            }
        }
    qsort(pairs, (size_t)npair, sizeof *pairs, cmp_hb);
    int64_t u = 0;
    for (int64_t i = 0; i < npair; i++)
        if (u == 0 || cmp_hb(&pairs[u - 1], &pairs[i]) != 0) pairs[u++] = pairs[i];
    plan->nfetch = u;
    cap = 0;
    for (int64_t i = 0; i < u; i++) {
        int64_t a = pairs[i].b * B, e = a + B < n ? a + B : n;
        plan->bytes_rma += (e - a) * D * (int64_t)sizeof(float) * 2;
        int owner = spa_partition_owner(cfg, P, a);
        spa_run_blk *last = plan->nruns ? &plan->runs[plan->nruns - 1] : NULL;
        if (last && last->h == pairs[i].h && last->rank == owner && last->b0 + last->nblk == pairs[i].b &&
            last->nblk < SPA_MAX_RUN) {
            last->nblk++;
            continue;
        }
        if (plan->nruns == cap) {
            cap = cap ? 2 * cap : 64;
            spa_run_blk *grown = realloc(plan->runs, (size_t)cap * sizeof *grown);
            if (!grown) {
                free(pairs), free(rb);
                SPA_FAIL(SPA_ERR_OTHER, "out of memory");
            }
            plan->runs = grown;
        }
        plan->runs[plan->nruns++] = (spa_run_blk){owner, pairs[i].h, pairs[i].b, 1};
    }
    free(pairs);
    free(rb);
    return SPA_OK;
}

void spa_commplan_free(spa_commplan *plan)
{
    if (!plan) return;
    free(plan->recv);
    free(plan->send);
    free(plan->runs);
    plan->recv = plan->send = NULL;
    plan->runs = NULL;
    plan->nrecv = plan->nsend = plan->nruns = 0;
}
