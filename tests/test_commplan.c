/* test_commplan.c - the communication plan for every P from 1 to 64, on
 * one process: coverage, symmetry of sends and receives, deduplication of
 * fetched blocks, the spread rows, and byte counts.
 *
 * What a rank needs is computed once per config by brute force over
 * spa_pattern_attends (independent of P): for every (head, query block,
 * key block), the smallest and largest key of the key block that a
 * non-global row of the query block attends and that is not gathered.
 * Against it, for every P and rank:
 *   - every needed key of an owned non-spread query block is resident
 *     (own shard or halo, [ext0, ext1)), gathered (cfg->kv_tokens), or in a
 *     fetched run; and a (head, block) is fetched only when some such key of
 *     it is not resident, and only once;
 *   - the spread rows are exactly the rows of G in every head plus the
 *     non-global rows of spread blocks, the same list on every rank;
 *   - bytes_halo, bytes_rma and bytes_global are the sums over the lists. */
#include "cases.h"

static int fails, checks, max_print = 30; /* SPA_TEST_VERBOSE=1 prints every failure */
#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            if (fails++ < max_print) {                                                             \
                printf("FAIL %s:%d: ", __FILE__, __LINE__);                                        \
                printf(__VA_ARGS__);                                                               \
                printf("\n");                                                                      \
            }                                                                                      \
        }                                                                                          \
    } while (0)

/* The needs of a config, a pure function of the pattern. */
typedef struct needs {
    int64_t nb;
    int64_t *lo, *hi;       /* [H][nb][nb]: needed non-gathered keys of key block b of (h, c), or -1 */
    unsigned char *att;     /* [H][nb][nb] 1: a non-global row attends a key of b; 2: only global rows do */
    unsigned char *spread;  /* [H][nb] spa_pattern_spread */
    unsigned char *kv;      /* [n] gathered */
} needs;

static int needs_build(const spa_config *cfg, needs *nd)
{
    const int64_t n = cfg->n, B = cfg->block, nb = spa_nblocks(cfg), H = cfg->heads;
    nd->nb = nb;
    nd->lo = malloc((size_t)(H * nb * nb) * sizeof *nd->lo);
    nd->hi = malloc((size_t)(H * nb * nb) * sizeof *nd->hi);
    nd->spread = malloc((size_t)(H * nb));
    nd->att = calloc((size_t)(H * nb * nb), 1);
    nd->kv = calloc((size_t)n, 1);
    if (!nd->lo || !nd->hi || !nd->spread || !nd->att || !nd->kv) return 0;
    for (int64_t g = 0; g < cfg->nkv_tokens; g++) nd->kv[cfg->kv_tokens[g]] = 1;
    for (int64_t x = 0; x < H * nb * nb; x++) nd->lo[x] = nd->hi[x] = -1;
    for (int32_t h = 0; h < H; h++)
        for (int64_t c = 0; c < nb; c++) {
            nd->spread[h * nb + c] = (unsigned char)spa_pattern_spread(cfg, h, c);
            int64_t *lo = nd->lo + (h * nb + c) * nb, *hi = nd->hi + (h * nb + c) * nb;
            unsigned char *att = nd->att + (h * nb + c) * nb;
            for (int64_t i = c * B; i < (c + 1) * B && i < n; i++) {
                if (spa_pattern_is_global(cfg, i)) {
                    for (int64_t b = 0; b < nb; b++) att[b] |= att[b] ? 0 : 2;
                    continue;
                }
                for (int64_t j = 0; j < n; j++) {
                    if (!spa_pattern_attends(cfg, h, i, j)) continue;
                    att[j / B] = 1;
                    if (nd->kv[j]) continue;
                    int64_t b = j / B;
                    if (lo[b] < 0 || j < lo[b]) lo[b] = j;
                    if (j > hi[b]) hi[b] = j;
                }
            }
        }
    return 1;
}

static void needs_free(needs *nd)
{
    free(nd->lo), free(nd->hi), free(nd->spread), free(nd->att), free(nd->kv);
}

static void check_config(const char *name, const spa_config *cfg, const needs *nd, int P, int *max_halo_ranks,
                         int64_t *nfetched_total, int64_t *staged_total)
{
    spa_commplan *pl = calloc((size_t)P, sizeof *pl);
    const int64_t B = cfg->block, n = cfg->n, nb = spa_nblocks(cfg), H = cfg->heads, D = cfg->dim;
    int64_t covered = 0, minb = nb, maxb = 0;
    for (int r = 0; r < P; r++) {
        EXPECT(spa_commplan_build(cfg, P, r, &pl[r]) == SPA_OK, "%s P=%d: build: %s", name, P, spa_last_error());
        int64_t nbr = pl[r].b1 - pl[r].b0;
        minb = nbr < minb ? nbr : minb;
        maxb = nbr > maxb ? nbr : maxb;
        EXPECT(pl[r].b0 == covered, "shards not contiguous at rank %d", r);
        covered = pl[r].b1;
        for (int64_t j = pl[r].t0; j < pl[r].t1; j += 7) EXPECT(spa_partition_owner(cfg, P, j) == r, "owner");
    }
    EXPECT(covered == nb, "shards cover %lld of %lld blocks", (long long)covered, (long long)nb);
    EXPECT(maxb - minb <= 1, "shard sizes differ by %lld blocks", (long long)(maxb - minb));

    /* the spread rows every rank lists: G in every head, and the non-global
     * rows of spread blocks */
    int64_t want_spread = 0;
    for (int32_t h = 0; h < H; h++)
        for (int64_t i = 0; i < n; i++) want_spread += spa_pattern_is_global(cfg, i) || nd->spread[h * nb + i / B];
    unsigned char *seen = malloc((size_t)(H * n));
    unsigned char *fmark = malloc((size_t)(H * nb));

    for (int r = 0; r < P; r++) {
        const spa_commplan *p = &pl[r];
        /* halo pieces tile [ext0, t0) and [t1, ext1) and come from the owners */
        int64_t want = (p->t0 - p->ext0) + (p->ext1 - p->t1), got = 0, bytes = 0;
        int ranks = 0;
        if (p->t1 > p->t0)
            EXPECT(p->ext0 <= p->t0 && p->ext1 >= p->t1, "%s P=%d rank %d: extent [%lld, %lld) misses the shard", name,
                   P, r, (long long)p->ext0, (long long)p->ext1);
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

        /* fetched runs: sorted, disjoint, from the owner, counted */
        int64_t nfetch = 0, rbytes = 0;
        memset(fmark, 0, (size_t)(H * nb));
        for (int i = 0; i < p->nruns; i++) {
            const spa_run_blk *x = &p->runs[i];
            EXPECT(x->h >= 0 && x->h < H && x->b0 >= 0 && x->nblk >= 1 && x->b0 + x->nblk <= nb,
                   "%s: run (h %d, b0 %lld, nblk %lld) out of range", name, x->h, (long long)x->b0,
                   (long long)x->nblk);
            if (!(x->h >= 0 && x->h < H && x->b0 >= 0 && x->nblk >= 1 && x->b0 + x->nblk <= nb)) continue;
            nfetch += x->nblk;
            for (int64_t b = x->b0; b < x->b0 + x->nblk; b++) {
                int64_t a = b * B, e = spa_block_end(cfg, b);
                rbytes += (e - a) * D * 4 * 2;
                EXPECT(!fmark[x->h * nb + b], "%s P=%d rank %d: (h %d, block %lld) fetched twice", name, P, r, x->h,
                       (long long)b);
                fmark[x->h * nb + b] = 1;
                EXPECT(spa_partition_owner(cfg, P, a) == x->rank && x->rank != r,
                       "%s P=%d rank %d: block %lld fetched from rank %d, owner %d", name, P, r, (long long)b,
                       x->rank, spa_partition_owner(cfg, P, a));
            }
            if (i) {
                const spa_run_blk *y = &p->runs[i - 1];
                EXPECT(y->h < x->h || (y->h == x->h && y->b0 + y->nblk <= x->b0), "runs overlap or unsorted");
            }
        }
        *nfetched_total += nfetch;
        EXPECT(nfetch == p->nfetch, "nfetch %lld, runs hold %lld", (long long)p->nfetch, (long long)nfetch);
        EXPECT(rbytes == p->bytes_rma, "bytes_rma %lld != %lld", (long long)p->bytes_rma, (long long)rbytes);

        /* every needed key of an owned non-spread block is resident,
         * gathered or fetched; a block is fetched only when needed */
        const int64_t res0 = p->ext0, res1 = p->ext1;
        int reported = 0;
        for (int32_t h = 0; h < H; h++) {
            for (int64_t b = 0; b < nb; b++) {
                int remote = 0; /* some owned non-spread block needs a key of b outside [res0, res1) */
                int64_t who = -1;
                for (int64_t c = p->b0; c < p->b1 && !remote; c++) {
                    if (nd->spread[h * nb + c]) continue;
                    int64_t lo = nd->lo[(h * nb + c) * nb + b], hi = nd->hi[(h * nb + c) * nb + b];
                    if (lo >= 0 && (lo < res0 || hi >= res1)) remote = 1, who = c;
                }
                if (remote && !fmark[h * nb + b] && reported++ < 2)
                    EXPECT(0, "%s P=%d rank %d: block %lld of head %d is needed by query block %lld outside [%lld, "
                              "%lld), but not fetched",
                           name, P, r, (long long)b, h, (long long)who, (long long)res0, (long long)res1);
                if (!remote && fmark[h * nb + b] && reported++ < 2) {
                    /* why not: the owned non-spread blocks' rows that attend a key of b */
                    int why = 0;
                    for (int64_t c = p->b0; c < p->b1; c++)
                        if (!nd->spread[h * nb + c] && nd->att[(h * nb + c) * nb + b])
                            why = why == 1 ? 1 : nd->att[(h * nb + c) * nb + b];
                    EXPECT(0, "%s P=%d rank %d: block %lld of head %d fetched, but no owned non-spread query block "
                              "needs a key of it outside [%lld, %lld) that is not gathered (%s)",
                           name, P, r, (long long)b, h, (long long)res0, (long long)res1,
                           why == 1   ? "the keys of it that non-global rows attend are resident or gathered"
                           : why == 2 ? "only global rows attend it, and they take the spread path"
                                      : "no owned row attends a key of it");
                }
            }
            for (int64_t c = p->b0; c < p->b1; c++) {
                if (nd->spread[h * nb + c]) continue;
                int64_t j0, j1;
                spa_pattern_local_range(cfg, h, c, &j0, &j1);
                EXPECT(j0 == j1 || (j0 >= p->ext0 && j1 <= p->ext1), "%s: local range of %lld outside the extent",
                       name, (long long)c);
            }
        }

        /* spread rows */
        EXPECT(p->nspread == want_spread, "%s P=%d rank %d: %lld spread rows, want %lld", name, P, r,
               (long long)p->nspread, (long long)want_spread);
        memset(seen, 0, (size_t)(H * n));
        int64_t own = 0, bad = 0;
        for (int64_t k = 0; k < p->nspread; k++) {
            const spa_spread_row *x = &p->spread[k];
            if (x->h < 0 || x->h >= H || x->tok < 0 || x->tok >= n) {
                bad++;
                continue;
            }
            int ok = (spa_pattern_is_global(cfg, x->tok) || nd->spread[x->h * nb + x->tok / B]) &&
                     !seen[x->h * n + x->tok] && x->tile >= 0 && x->tile < p->nspread_tiles;
            if (k) {
                const spa_spread_row *y = &p->spread[k - 1];
                ok &= y->tile < x->tile || (y->tile == x->tile && y->tok < x->tok && y->h == x->h);
            }
            if (!ok && bad < 2)
                printf("     %s P=%d rank %d: spread row %lld (tok %lld, h %d, tile %d) not expected, repeated or "
                       "out of order\n",
                       name, P, r, (long long)k, (long long)x->tok, x->h, x->tile);
            bad += !ok;
            seen[x->h * n + x->tok] = 1;
            own += x->tok >= p->t0 && x->tok < p->t1;
        }
        EXPECT(bad == 0, "%s P=%d rank %d: %lld bad spread rows", name, P, r, (long long)bad);
        EXPECT(own == p->nspread_own, "nspread_own %lld, want %lld", (long long)p->nspread_own, (long long)own);
        if (r > 0)
            EXPECT(p->nspread == pl[0].nspread && p->nspread_tiles == pl[0].nspread_tiles &&
                       (p->nspread == 0 || !memcmp(p->spread, pl[0].spread, (size_t)p->nspread * sizeof *p->spread)),
                   "%s P=%d: rank %d's spread rows differ from rank 0's", name, P, r);

        /* the last batch in stages (spa_commplan_stages): every query block
         * of it once, in plan order within a stage, and no stage before
         * the farthest owner (distance (owner - r) mod P) of a key its
         * full key blocks bring that is neither resident nor gathered */
        {
            const int lb = p->nbatch - 1;
            const int64_t s0 = p->batch_task_off[lb], nt = p->batch_task_off[lb + 1] - s0;
            struct spa_hc *st = malloc((size_t)(nt + 1) * sizeof *st);
            int64_t *so = malloc((size_t)(P + 1) * sizeof *so), *pos = malloc((size_t)(H * nb) * sizeof *pos);
            int32_t *kbs = malloc((size_t)nb * sizeof *kbs);
            unsigned char *fulls = malloc((size_t)nb);
            EXPECT(spa_commplan_stages(cfg, p, st, so) == SPA_OK, "%s P=%d rank %d: stages: %s", name, P, r,
                   spa_last_error());
            for (int64_t x = 0; x < H * nb; x++) pos[x] = -1;
            for (int64_t t = 0; t < nt; t++) pos[p->batch_task[s0 + t].h * nb + p->batch_task[s0 + t].c] = t;
            EXPECT(so[0] == 0 && so[P] == nt, "%s P=%d rank %d: stages hold %lld of %lld query blocks", name, P, r,
                   (long long)(so[P] - so[0]), (long long)nt);
            for (int s = 0; s < P && so[0] == 0 && so[P] == nt; s++) {
                EXPECT(so[s] <= so[s + 1], "%s P=%d rank %d: stage %d ends before it starts", name, P, r, s);
                int64_t prev = -1; /* plan position of the stage's previous query block */
                for (int64_t t = so[s]; t < so[s + 1]; t++) {
                    const int32_t h = st[t].h;
                    const int64_t c = st[t].c, x = h * nb + c;
                    EXPECT(pos[x] >= 0 && pos[x] < nt && pos[x] > prev,
                           "%s P=%d rank %d: (%d, %lld) not in the last batch, repeated or out of order in stage %d",
                           name, P, r, h, (long long)c, s);
                    if (pos[x] < 0 || pos[x] >= nt) continue;
                    prev = pos[x];
                    pos[x] = nt + pos[x]; /* seen: a second copy fails the test above */
                    int64_t m = spa_pattern_key_blocks(cfg, h, c, kbs, fulls), far = 0;
                    for (int64_t i = 0; i < m; i++) {
                        if (!fulls[i]) continue;
                        for (int64_t j = (int64_t)kbs[i] * B; j < ((int64_t)kbs[i] + 1) * B && j < n; j++)
                            if ((j < p->ext0 || j >= p->ext1) && !spa_pattern_is_gathered(cfg, h, j)) {
                                int64_t d = (spa_partition_owner(cfg, P, j) - r + P) % P;
                                far = d > far ? d : far;
                            }
                    }
                    EXPECT(far <= s, "%s P=%d rank %d: (%d, %lld) in stage %d reads rank %d's blocks", name, P, r, h,
                           (long long)c, s, (int)((r + far) % P));
                    *staged_total += s > 0;
                }
            }
            free(st), free(so), free(pos), free(kbs), free(fulls);
        }

        /* gathered tokens and bytes_global: K and V of the gathered tokens
         * not owned, q of the spread rows not owned, and one (max, sum,
         * acc[D]) double partial per spread row merged (every rank merges
         * every spread row) */
        int64_t kown = 0, gown = 0;
        for (int64_t g = 0; g < cfg->nkv_tokens; g++) kown += cfg->kv_tokens[g] >= p->t0 && cfg->kv_tokens[g] < p->t1;
        for (int64_t g = 0; g < cfg->nglobals; g++) gown += cfg->globals[g] >= p->t0 && cfg->globals[g] < p->t1;
        EXPECT(kown == p->nkv_own, "nkv_own %lld != %lld", (long long)p->nkv_own, (long long)kown);
        EXPECT(gown == p->nglobal_own, "nglobal_own");
        int64_t gb = P > 1 ? (cfg->nkv_tokens - kown) * H * D * 4 * 2 + (want_spread - own) * D * 4 +
                                 want_spread * (D + 2) * 8
                           : 0;
        EXPECT(gb == p->bytes_global, "%s P=%d rank %d: bytes_global %lld, want %lld", name, P, r,
               (long long)p->bytes_global, (long long)gb);
    }
    free(seen), free(fmark);
    for (int r = 0; r < P; r++) spa_commplan_free(&pl[r]);
    free(pl);
}

/* A fetch budget of a few blocks: the query blocks come in batches. Every
 * owned query block is ready or in exactly one batch; each batch lists the
 * blocks its query blocks' block pass needs (full key blocks with a key
 * neither resident nor gathered), none twice, within the budget unless one
 * query block alone exceeds it; the last batch holds the residue pass's
 * keys; the byte count is the sum over the batches. */
static void check_batches(const char *name, const spa_config *base, int P)
{
    spa_config cfg;
    if (spa_config_copy(&cfg, base) != SPA_OK) return;
    const int64_t B = cfg.block, n = cfg.n, D = cfg.dim, nb = spa_nblocks(&cfg), H = cfg.heads;
    const int64_t blk = B * D * (int64_t)sizeof(float) * 2;
    cfg.fetch_bytes = 2 * 3 * blk; /* three blocks per batch */
    int32_t *kb = malloc((size_t)nb * sizeof *kb);
    unsigned char *full = malloc((size_t)nb), *seen = malloc((size_t)(H * nb));
    int64_t *inb = malloc((size_t)(H * nb) * sizeof *inb); /* (h, b) -> 1 + batch that lists it, or 0 */
    for (int r = 0; r < P; r++) {
        spa_commplan pl;
        EXPECT(spa_commplan_build(&cfg, P, r, &pl) == SPA_OK, "%s P=%d: build: %s", name, P, spa_last_error());
        memset(seen, 0, (size_t)(H * nb));
        int64_t bytes = 0;
        for (int k = 0; k < pl.nbatch; k++) {
            memset(inb, 0, (size_t)(H * nb) * sizeof *inb);
            int64_t slots = 0;
            for (int i = pl.batch_run[k]; i < pl.batch_run[k + 1]; i++)
                for (int64_t b = pl.runs[i].b0; b < pl.runs[i].b0 + pl.runs[i].nblk; b++) {
                    int64_t *x = &inb[pl.runs[i].h * nb + b];
                    EXPECT(!*x, "%s P=%d rank %d: batch %d lists (%d, %lld) twice", name, P, r, k, pl.runs[i].h,
                           (long long)b);
                    *x = 1;
                    slots++;
                    bytes += (spa_block_end(&cfg, b) - b * B) * D * (int64_t)sizeof(float) * 2;
                }
            EXPECT(slots == pl.batch_slots[k], "%s P=%d rank %d: batch %d has %lld blocks, says %lld", name, P, r, k,
                   (long long)slots, (long long)pl.batch_slots[k]);
            const int64_t t0 = pl.batch_task_off[k], t1 = pl.batch_task_off[k + 1];
            EXPECT(slots <= 3 || t1 - t0 <= 1 || (k == pl.nbatch - 1 && t1 == t0),
                   "%s P=%d rank %d: batch %d holds %lld blocks for %lld query blocks", name, P, r, k,
                   (long long)slots, (long long)(t1 - t0));
            for (int64_t t = t0; t < t1; t++) {
                const int32_t h = pl.batch_task[t].h;
                const int64_t c = pl.batch_task[t].c;
                EXPECT(!seen[h * nb + c], "%s P=%d rank %d: (%d, %lld) in two batches", name, P, r, h, (long long)c);
                seen[h * nb + c] = 1;
                int64_t m = spa_pattern_key_blocks(&cfg, h, c, kb, full);
                for (int64_t i = 0; i < m; i++) {
                    if (!full[i]) continue;
                    int64_t a = (int64_t)kb[i] * B, e = spa_block_end(&cfg, kb[i]), missing = -1;
                    for (int64_t j = a; j < e && missing < 0; j++)
                        if ((j < pl.ext0 || j >= pl.ext1) && !spa_pattern_is_gathered(&cfg, h, j)) missing = j;
                    EXPECT(missing < 0 || inb[h * nb + kb[i]], "%s P=%d rank %d: batch %d lacks block %d of (%d, %lld)",
                           name, P, r, k, kb[i], h, (long long)c);
                }
            }
        }
        for (int64_t t = 0; t < pl.ntask_ready; t++) {
            const int32_t h = pl.ready_task[t].h;
            const int64_t c = pl.ready_task[t].c, x = h * nb + c;
            EXPECT(!seen[x], "%s P=%d rank %d: a ready query block in a batch", name, P, r);
            seen[x] = 1;
            /* ready blocks run before the halo arrives: their keys are in the shard */
            int64_t j0, j1, m = spa_pattern_key_blocks(&cfg, h, c, kb, full), far = -1;
            spa_pattern_local_range(&cfg, h, c, &j0, &j1);
            EXPECT(j1 <= j0 || (j0 >= pl.t0 && j1 <= pl.t1), "%s P=%d rank %d: ready (%d, %lld) needs the halo [%lld, %lld)",
                   name, P, r, h, (long long)c, (long long)j0, (long long)j1);
            for (int64_t i = 0; i < m; i++) {
                if (!full[i]) continue;
                for (int64_t j = (int64_t)kb[i] * B; j < ((int64_t)kb[i] + 1) * B && j < n && far < 0; j++)
                    if ((j < pl.t0 || j >= pl.t1) && !spa_pattern_is_gathered(&cfg, h, j)) far = j;
            }
            EXPECT(far < 0, "%s P=%d rank %d: ready (%d, %lld) needs key %lld outside its shard", name, P, r, h,
                   (long long)c, (long long)far);
        }
        for (int32_t h = 0; h < H; h++)
            for (int64_t c = pl.b0; c < pl.b1; c++) {
                int64_t t0 = c * B, t1 = spa_block_end(&cfg, c), g = 0;
                for (int64_t i = t0; i < t1; i++) g += spa_pattern_is_global(&cfg, i);
                int served = g == t1 - t0 || spa_pattern_spread(&cfg, h, c);
                EXPECT(seen[h * nb + c] == !served, "%s P=%d rank %d: (%d, %lld) %s", name, P, r, h, (long long)c,
                       served ? "served by the spread path, yet scheduled" : "in no batch and not ready");
            }
        EXPECT(bytes == pl.bytes_rma, "%s P=%d rank %d: batches fetch %lld bytes, plan says %lld", name, P, r,
               (long long)bytes, (long long)pl.bytes_rma);
        spa_commplan_free(&pl);
    }
    free(kb), free(full), free(seen), free(inb);
    spa_config_free(&cfg);
}

int main(void)
{
    const test_case extra[] = {
        {"radius_spans_ranks", 1024, 2, 8, 16, 0, 300, "500:510", 3, 0, 1, NULL, 0},
        {"wide_window", 2048, 2, 8, 16, 9, -1, NULL, 8, 0, 1, NULL, 0},
        {"causal_wide", 2048, 2, 8, 16, 0, 200, NULL, 5, 1, 1, NULL, 0},
        /* strided keys one shard away, with a halo of radius 40 */
        {"stride_in_halo", 1024, 1, 8, 16, 0, 40, "none", 0, 0, 1, "stride=300", 0},
        /* summary columns and globals in blocks that are also fetched */
        {"summary_fetched", 1024, 2, 8, 16, 3, -1, "200,800", 2, 0, 1, "summary=128:3;dilated=256:16", 0},
    };
    const int nextra = (int)(sizeof extra / sizeof *extra);
    if (getenv("SPA_TEST_VERBOSE")) max_print = 1 << 30;
    int max_halo_ranks = 0;
    for (int i = 0; i < spa_ncases + nextra; i++) {
        const test_case *tc = i < spa_ncases ? &spa_cases[i] : &extra[i - spa_ncases];
        spa_config cfg;
        if (case_config(tc, 5, &cfg) != SPA_OK) {
            EXPECT(0, "%s: %s", tc->name, spa_last_error());
            spa_config_free(&cfg);
            continue;
        }
        needs nd;
        EXPECT(needs_build(&cfg, &nd), "out of memory");
        int f0 = fails;
        int64_t fetched = 0, staged = 0;
        for (int P = 1; P <= 64; P++) check_config(tc->name, &cfg, &nd, P, &max_halo_ranks, &fetched, &staged);
        /* fetched blocks of full key blocks put query blocks past stage 0 */
        if (!strcmp(tc->name, "default")) EXPECT(staged > 0, "%s: every query block in stage 0", tc->name);
        const int batched_ranks[] = {2, 3, 7};
        for (int i = 0; i < 3; i++) check_batches(tc->name, &cfg, batched_ranks[i]);
        if (fails > f0) printf("     in case %s\n", tc->name);
        /* a case with strided, dilated or layout blocks fetches at some P,
         * unless every query block is spread (a strided rule with S much
         * smaller than n/nb touches every block) */
        if ((tc->rules && (strstr(tc->rules, "stride") || strstr(tc->rules, "dilated"))) || tc->layout) {
            int64_t nonspread = 0, nb = spa_nblocks(&cfg);
            for (int64_t x = 0; x < cfg.heads * nb; x++) nonspread += !nd.spread[x];
            printf("%-24s fetched %lld blocks over P = 1..64; %lld of %lld query blocks not spread\n", tc->name,
                   (long long)fetched, (long long)nonspread, (long long)(cfg.heads * nb));
            EXPECT(fetched > 0 || nonspread == 0, "%s: nothing fetched at any P", tc->name);
        }
        needs_free(&nd);
        spa_config_free(&cfg);
    }
    /* the halo must have reached past a neighbour somewhere */
    EXPECT(max_halo_ranks >= 3, "no halo spans 3 ranks (max %d)", max_halo_ranks);
    printf("%d passed, %d failed\n", checks - fails, fails);
    return fails ? 1 : 0;
}
