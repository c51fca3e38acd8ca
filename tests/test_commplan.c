/* test_commplan.c - the communication plan for every P from 1 to 64, on
 * one process: coverage, symmetry of sends and receives, deduplication of
 * random blocks, and byte counts. */
#include "cases.h"

static int fails, checks;
#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            if (fails++ < 20) {                                                                    \
                printf("FAIL %s:%d: ", __FILE__, __LINE__);                                        \
                printf(__VA_ARGS__);                                                               \
                printf("\n");                                                                      \
            }                                                                                      \
        }                                                                                          \
    } while (0)

static int fetched(const spa_commplan *p, int32_t h, int64_t b)
{
    for (int i = 0; i < p->nruns; i++)
        if (p->runs[i].h == h && b >= p->runs[i].b0 && b < p->runs[i].b0 + p->runs[i].nblk) return 1;
    return 0;
}

static void check_config(const spa_config *cfg, int P, int *max_halo_ranks)
{
    spa_commplan *pl = calloc((size_t)P, sizeof *pl);
    const int64_t B = cfg->block, n = cfg->n, nb = spa_nblocks(cfg), H = cfg->heads, D = cfg->dim;
    int64_t covered = 0, minb = nb, maxb = 0;
    for (int r = 0; r < P; r++) {
        EXPECT(spa_commplan_build(cfg, P, r, &pl[r]) == SPA_OK, "build");
        int64_t nbr = pl[r].b1 - pl[r].b0;
        minb = nbr < minb ? nbr : minb;
        maxb = nbr > maxb ? nbr : maxb;
        EXPECT(pl[r].b0 == covered, "shards not contiguous at rank %d", r);
        covered = pl[r].b1;
        for (int64_t j = pl[r].t0; j < pl[r].t1; j += 7) EXPECT(spa_partition_owner(cfg, P, j) == r, "owner");
    }
    EXPECT(covered == nb, "shards cover %lld of %lld blocks", (long long)covered, (long long)nb);
    EXPECT(maxb - minb <= 1, "shard sizes differ by %lld blocks", (long long)(maxb - minb));

    for (int r = 0; r < P; r++) {
        const spa_commplan *p = &pl[r];
        /* halo pieces tile [ext0, t0) and [t1, ext1) and come from the owners */
        int64_t want = (p->t0 - p->ext0) + (p->ext1 - p->t1), got = 0, bytes = 0;
        int ranks = 0;
        for (int i = 0; i < p->nrecv; i++) {
            const spa_xfer *x = &p->recv[i];
            got += x->t1 - x->t0;
            bytes += (x->t1 - x->t0) * H * D * 4 * 2;
            EXPECT(x->rank != r, "rank %d receives from itself", r);
            EXPECT(x->t0 >= pl[x->rank].t0 && x->t1 <= pl[x->rank].t1, "piece not owned by its sender");
            ranks += x->t0 < p->t0;
            /* symmetry: the sender lists exactly this piece for r */
            int found = 0;
            for (int k = 0; k < pl[x->rank].nsend; k++) {
                const spa_xfer *s = &pl[x->rank].send[k];
                found += s->rank == r && s->t0 == x->t0 && s->t1 == x->t1;
            }
            EXPECT(found == 1, "P=%d: rank %d expects [%lld,%lld) from %d, which sends it %d times", P, r,
                   (long long)x->t0, (long long)x->t1, x->rank, found);
        }
        if (ranks > *max_halo_ranks) *max_halo_ranks = ranks;
        EXPECT(got == want, "halo covers %lld of %lld tokens", (long long)got, (long long)want);
        EXPECT(bytes == p->bytes_halo, "bytes_halo %lld != %lld", (long long)p->bytes_halo, (long long)bytes);
        int64_t nsent = 0;
        for (int s = 0; s < P; s++)
            for (int i = 0; i < pl[s].nrecv; i++) nsent += pl[s].recv[i].rank == r;
        EXPECT(nsent == p->nsend, "rank %d sends %d pieces, %lld are expected", r, p->nsend, (long long)nsent);

        /* every key an owned block needs is resident or fetched, and
         * nothing is fetched twice or needlessly */
        int32_t rb[128];
        int64_t nfetch = 0, rbytes = 0;
        for (int i = 0; i < p->nruns; i++) {
            const spa_run_blk *x = &p->runs[i];
            nfetch += x->nblk;
            for (int64_t b = x->b0; b < x->b0 + x->nblk; b++) {
                int64_t a = b * B, e = a + B < n ? a + B : n;
                rbytes += (e - a) * D * 4 * 2;
                EXPECT(!(a >= p->ext0 && e <= p->ext1), "block %lld fetched though resident", (long long)b);
                EXPECT(spa_partition_owner(cfg, P, a) == x->rank, "run from the wrong owner");
            }
            if (i) {
                const spa_run_blk *y = &p->runs[i - 1];
                EXPECT(y->h < x->h || (y->h == x->h && y->b0 + y->nblk <= x->b0), "runs overlap or unsorted");
            }
        }
        EXPECT(nfetch == p->nfetch, "nfetch");
        EXPECT(rbytes == p->bytes_rma, "bytes_rma %lld != %lld", (long long)p->bytes_rma, (long long)rbytes);
        for (int32_t h = 0; h < H; h++)
            for (int64_t c = p->b0; c < p->b1; c++) {
                int64_t j0, j1;
                spa_pattern_local_range(cfg, c, &j0, &j1);
                EXPECT(j0 >= p->ext0 && j1 <= p->ext1, "local range of %lld outside the extent", (long long)c);
                int32_t m = spa_pattern_random_blocks(cfg, h, c, rb);
                for (int32_t i = 0; i < m; i++) {
                    int64_t a = (int64_t)rb[i] * B, e = a + B < n ? a + B : n;
                    EXPECT((a >= p->ext0 && e <= p->ext1) || fetched(p, h, rb[i]), "block %d of (%d, %lld) missing",
                           rb[i], h, (long long)c);
                }
            }
        int64_t own = 0;
        for (int64_t g = 0; g < cfg->nglobals; g++) own += cfg->globals[g] >= p->t0 && cfg->globals[g] < p->t1;
        EXPECT(own == p->nglobal_own, "nglobal_own");
        int64_t gb = P > 1 ? (cfg->nglobals - own) * H * D * 4 * 3 + cfg->nglobals * H * (D + 2) * 8 : 0;
        EXPECT(gb == p->bytes_global, "bytes_global");
    }
    for (int r = 0; r < P; r++) spa_commplan_free(&pl[r]);
    free(pl);
}

int main(void)
{
    const test_case extra[] = {
        {"radius_spans_ranks", 1024, 2, 8, 16, 0, 300, "500:510", 3, 0, 1},
        {"wide_window", 2048, 2, 8, 16, 9, -1, NULL, 8, 0, 1},
        {"causal_wide", 2048, 2, 8, 16, 0, 200, NULL, 5, 1, 1},
    };
    int max_halo_ranks = 0;
    for (int P = 1; P <= 64; P++) {
        for (int i = 0; i < spa_ncases; i++) {
            spa_config cfg;
            if (case_config(&spa_cases[i], 5, &cfg) != SPA_OK) continue;
            check_config(&cfg, P, &max_halo_ranks);
            spa_config_free(&cfg);
        }
        for (int i = 0; i < 3; i++) {
            spa_config cfg;
            case_config(&extra[i], 5, &cfg);
            check_config(&cfg, P, &max_halo_ranks);
            spa_config_free(&cfg);
        }
    }
    /* the halo must have reached past a neighbour somewhere */
    EXPECT(max_halo_ranks >= 3, "no halo spans 3 ranks (max %d)", max_halo_ranks);
    printf("%d passed, %d failed\n", checks - fails, fails);
    return fails ? 1 : 0;
}
