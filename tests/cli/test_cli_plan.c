/* test_cli_plan.c - the analyses behind `spa plan` against brute force.
 *
 * For small patterns of every kind (block and radius windows, causal,
 * several global sets, partial last block, the strided, summary, dilated
 * and layout rules, per-head @a:b ranges, no local window), the per-block
 * shortcuts behind `spa plan` (spa_pattern_block_keys and the library's
 * spa_plan_* report) must equal what spa_pattern_attends says pair by pair,
 * in every head:
 *   - key counts |S(i)| per row;
 *   - the block mask, at full size and downsampled;
 *   - hop counts, against Floyd-Warshall on the brute-force block graph;
 *   - spa_plan_key_counts (the least, the most, the sum over every head);
 *   - spa_plan_rank_bytes and spa_plan_ranks_bytes against spa_commplan_build
 *     at P = 1 .. 7, and spa_commplan_build_like (spread rows borrowed from
 *     a plan for another P and rank) against it.
 */
#include "spa.h"   /* the public API only: links libspa, not spa_cli_lib */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct tcase {
    const char *name;
    int64_t n;
    int32_t block, local, random;
    int64_t radius;
    int causal;
    const char *globals; /* NULL = default */
    const char *rules;   /* "flag value ..." pairs for spa_config_add_rule, or NULL */
    int layout;          /* 1: a seeded random block layout with one head, 2: with H */
} tcase;

static const tcase cases[] = {
    {"bigbird", 700, 16, 3, 3, -1, 0, NULL, NULL, 0},
    {"bigbird-causal", 700, 16, 3, 3, -1, 1, NULL, NULL, 0},
    {"wide-window", 500, 16, 7, 2, -1, 0, "none", NULL, 0},
    {"radius", 613, 16, 3, 3, 21, 0, "0,17,300:310", NULL, 0},
    {"radius-causal", 613, 16, 3, 3, 40, 1, "5,600", NULL, 0},
    {"radius-small", 400, 32, 3, 4, 5, 0, "none", NULL, 0},
    {"local-only", 320, 16, 3, 0, -1, 0, "none", NULL, 0},
    {"scattered-globals", 450, 8, 5, 6, -1, 1, "1,2,3,64,72,100,101,128,136,144,449", NULL, 0},
    {"random-saturates", 200, 16, 1, 40, -1, 0, "0:3", NULL, 0},
    {"one-block", 10, 16, 3, 3, -1, 0, NULL, NULL, 0},
    {"strided", 400, 16, 3, 2, -1, 0, "none", "local-blocks 0 stride 7", 0},
    {"strided-causal", 400, 16, 3, 2, -1, 1, "3", "radius 9 stride 37", 0},
    {"summary", 333, 16, 3, 1, -1, 0, "none", "local-blocks 1 summary 24:5", 0},
    {"summary-causal", 333, 8, 3, 1, -1, 1, "none", "local-blocks 0 summary 40:40@1:2", 0},
    {"dilated", 512, 16, 3, 0, -1, 0, "none", "local-blocks 0 dilated 32:4,128:8", 0},
    {"dilated-causal", 300, 16, 3, 2, -1, 1, "299", "local-blocks 1@0:1 dilated 64:2,16:1@1:2", 0},
    {"per-head", 480, 16, 3, 3, -1, 0, "0:5",
     "local-blocks 3@0:1 radius 20@1:2 stride 50@1:2 random 0@0:1 random 5@1:2", 0},
    {"no-rules", 200, 16, 3, 0, -1, 0, "none", "local-blocks 0", 0},
    {"layout-one-head", 300, 16, 3, 0, -1, 0, "none", "local-blocks 0", 1},
    {"layout-causal", 300, 16, 3, 1, -1, 1, "7", "local-blocks 1", 2},
};

/* A seeded layout: about a quarter of the block pairs, lay_heads heads. */
static int add_layout(spa_config *cfg, int32_t lay_heads)
{
    int64_t nb = spa_nblocks(cfg), rows = (int64_t)lay_heads * nb, k = 0;
    spa_layout lay = {lay_heads, nb, malloc(sizeof(int64_t) * (size_t)(rows + 1)),
                      malloc(sizeof(int32_t) * (size_t)(rows * nb + 1))};
    for (int64_t r = 0; r < rows; r++) {
        lay.off[r] = k;
        for (int64_t b = 0; b < nb; b++)
            if (spa_rng(11, (uint64_t)r, (uint64_t)b, 0) % 4 == 0) lay.idx[k++] = (int32_t)b;
    }
    lay.off[rows] = k;
    int ok = spa_config_set_layout(cfg, &lay) == SPA_OK;
    spa_layout_free(&lay);
    return ok;
}

static int setup(const tcase *t, spa_config *cfg)
{
    spa_config_init(cfg);
    cfg->n = t->n;
    cfg->heads = 2;
    cfg->dim = 8;
    cfg->block = t->block;
    cfg->local_blocks = t->local;
    cfg->radius = t->radius;
    cfg->random = t->random;
    cfg->seed = 7;
    cfg->causal = t->causal;
    if (t->globals && spa_config_set_globals(cfg, t->globals) != SPA_OK) return 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", t->rules ? t->rules : "");
    static const char *const names[SPA_RULE_COUNT] = {"local-blocks", "radius", "random",
                                                      "stride", "summary", "dilated"};
    for (char *save = NULL, *f = strtok_r(buf, " ", &save); f; f = strtok_r(NULL, " ", &save)) {
        char *v = strtok_r(NULL, " ", &save);
        int r = 0;
        while (r < SPA_RULE_COUNT && strcmp(names[r], f) != 0) r++;
        if (!v || r == SPA_RULE_COUNT || spa_config_add_rule(cfg, (spa_rule)r, v) != SPA_OK) {
            fprintf(stderr, "%s: bad rule '%s %s'\n", t->name, f, v ? v : "");
            return 0;
        }
    }
    if (t->layout && !add_layout(cfg, t->layout == 1 ? 1 : cfg->heads)) return 0;
    if (spa_config_validate(cfg) != SPA_OK) {
        fprintf(stderr, "%s: validate: %s\n", t->name, spa_last_error());
        return 0;
    }
    return 1;
}

static int check_keys(const tcase *t, const spa_config *cfg)
{
    int64_t n = cfg->n, B = cfg->block, nb = spa_nblocks(cfg), bad = 0;
    int64_t bmin = INT64_MAX, bmax = 0, bsum = 0; /* brute force over every head */
    int32_t *rnd = malloc(sizeof(int32_t) * (size_t)(cfg->random + 1));
    int64_t *cnt = malloc(sizeof(int64_t) * (size_t)B);
    for (int32_t h = 0; h < cfg->heads; h++) {
        int64_t total = 0;
        for (int64_t c = 0; c < nb; c++) {
            spa_pattern_block_keys(cfg, h, c, cnt);
            for (int64_t i = c * B; i < n && i < (c + 1) * B; i++) {
                int64_t want = 0;
                for (int64_t j = 0; j < n; j++) want += spa_pattern_attends(cfg, h, i, j);
                total += cnt[i - c * B];
                bsum += want;
                if (want < bmin) bmin = want;
                if (want > bmax) bmax = want;
                if (want != cnt[i - c * B] && bad++ < 5)
                    fprintf(stderr, "%s: h %d row %lld: keys %lld, brute force %lld\n", t->name, h,
                            (long long)i, (long long)cnt[i - c * B], (long long)want);
            }
        }
        int64_t lib = spa_pattern_pairs(cfg, h, 0, nb);
        if (lib != total && bad++ < 5)
            fprintf(stderr, "%s: h %d: sum of keys %lld, spa_pattern_pairs %lld\n", t->name, h,
                    (long long)total, (long long)lib);
    }
    spa_plan_keys k;
    if (spa_plan_key_counts(cfg, &k) != SPA_OK || k.min != bmin || k.max != bmax || k.pairs != bsum) {
        fprintf(stderr, "%s: spa_plan_key_counts min %lld max %lld pairs %lld, brute force %lld %lld %lld\n",
                t->name, (long long)k.min, (long long)k.max, (long long)k.pairs, (long long)bmin,
                (long long)bmax, (long long)bsum);
        bad++;
    }
    free(rnd), free(cnt);
    return bad == 0;
}

/* spa_plan_rank_bytes carries spa_commplan_build's figures for every rank
 * of P = 1 .. 7, and refuses a rank outside [0, P). */
static int check_ranks(const tcase *t, const spa_config *cfg)
{
    int bad = 0;
    spa_commplan other; /* spread rows from another P and rank: they depend on neither */
    if (spa_commplan_build(cfg, 5, 4, &other) != SPA_OK) {
        fprintf(stderr, "%s: %s\n", t->name, spa_last_error());
        return 0;
    }
    for (int P = 1; P <= 7; P++) {
        int64_t next = 0; /* the ranks' blocks tile [0, nb) in order */
        spa_plan_rank all[7];
        if (spa_plan_ranks_bytes(cfg, P, all) != SPA_OK) {
            fprintf(stderr, "%s: P %d: %s\n", t->name, P, spa_last_error());
            spa_commplan_free(&other);
            return 0;
        }
        for (int r = 0; r < P; r++) {
            spa_plan_rank got;
            spa_commplan pl, like;
            if (spa_plan_rank_bytes(cfg, P, r, &got) != SPA_OK || spa_commplan_build(cfg, P, r, &pl) != SPA_OK ||
                spa_commplan_build_like(cfg, P, r, &other, &like) != SPA_OK) {
                fprintf(stderr, "%s: P %d rank %d: %s\n", t->name, P, r, spa_last_error());
                spa_commplan_free(&other);
                return 0;
            }
            const spa_plan_rank want = {pl.b0, pl.b1, pl.bytes_halo, pl.bytes_global, pl.bytes_rma, pl.nfetch,
                                        pl.nbatch};
            if ((memcmp(&got, &want, sizeof got) != 0 || memcmp(&all[r], &want, sizeof got) != 0 ||
                 got.block_begin != next) &&
                bad++ < 5)
                fprintf(stderr, "%s: P %d rank %d: spa_plan_rank(s)_bytes differ from the plan\n", t->name, P, r);
            /* the plan with borrowed spread rows is the plan */
            int same = like.nspread == pl.nspread && like.nspread_tiles == pl.nspread_tiles &&
                       like.nspread_own == pl.nspread_own && like.nruns == pl.nruns && like.nbatch == pl.nbatch &&
                       like.bytes_halo == pl.bytes_halo && like.bytes_global == pl.bytes_global &&
                       like.bytes_rma == pl.bytes_rma && like.ntask_ready == pl.ntask_ready;
            for (int64_t i = 0; same && i < pl.nspread; i++)
                same = like.spread[i].tok == pl.spread[i].tok && like.spread[i].h == pl.spread[i].h &&
                       like.spread[i].tile == pl.spread[i].tile;
            if (!same && bad++ < 5)
                fprintf(stderr, "%s: P %d rank %d: spa_commplan_build_like differs from spa_commplan_build\n",
                        t->name, P, r);
            next = got.block_end;
            spa_commplan_free(&pl);
            spa_commplan_free(&like);
        }
        if (next != spa_nblocks(cfg) && bad++ < 5) fprintf(stderr, "%s: P %d: blocks end at %lld\n", t->name, P, (long long)next);
    }
    spa_commplan_free(&other);
    spa_plan_rank x;
    if (spa_plan_ranks_bytes(cfg, 0, &x) != SPA_ERR_USAGE || spa_plan_rank_bytes(cfg, 3, 3, &x) != SPA_ERR_USAGE || spa_plan_rank_bytes(cfg, 3, -1, &x) != SPA_ERR_USAGE ||
        spa_plan_rank_bytes(cfg, 0, 0, &x) != SPA_ERR_USAGE) {
        fprintf(stderr, "%s: a rank outside [0, P) was not refused\n", t->name);
        bad++;
    }
    return bad == 0;
}

/* adj[c * nb + b] = 1 when some i in block c attends some j in block b. */
static unsigned char *brute_adjacency(const spa_config *cfg, int32_t h)
{
    int64_t n = cfg->n, B = cfg->block, nb = spa_nblocks(cfg);
    unsigned char *adj = calloc((size_t)(nb * nb), 1);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++)
            if (spa_pattern_attends(cfg, h, i, j)) adj[(i / B) * nb + j / B] = 1;
    return adj;
}

static int check_mask(const tcase *t, const spa_config *cfg, int32_t h, const unsigned char *adj)
{
    int64_t nb = spa_nblocks(cfg), bad = 0;
    for (int64_t maxside = nb; maxside >= 1; maxside = maxside > 4 ? maxside / 3 : maxside - 1) {
        int64_t f, side = spa_plan_mask_side(nb, maxside, &f);
        unsigned char *pix = malloc((size_t)(side * side));
        unsigned char *want = calloc((size_t)(side * side), 1);
        if (spa_plan_block_mask(cfg, h, f, side, pix) != SPA_OK) {
            fprintf(stderr, "%s: mask: %s\n", t->name, spa_last_error());
            return 0;
        }
        for (int64_t c = 0; c < nb; c++)
            for (int64_t b = 0; b < nb; b++)
                if (adj[c * nb + b]) want[(c / f) * side + b / f] = 1;
        for (int64_t p = 0; p < side * side; p++)
            if ((pix[p] != 0) != want[p] && bad++ < 5)
                fprintf(stderr, "%s: head %d mask f=%lld pixel (%lld, %lld): got %d, brute force %d\n",
                        t->name, h, (long long)f, (long long)(p / side), (long long)(p % side), pix[p],
                        want[p]);
        free(pix), free(want);
    }
    return bad == 0;
}

static int check_hops(const tcase *t, const spa_config *cfg, int32_t h, const unsigned char *adj)
{
    int64_t nb = spa_nblocks(cfg);
    const int64_t inf = 1 << 30;
    int64_t *d = malloc(sizeof(int64_t) * (size_t)(nb * nb));
    for (int64_t c = 0; c < nb; c++)
        for (int64_t b = 0; b < nb; b++) d[c * nb + b] = c == b ? 0 : adj[c * nb + b] ? 1 : inf;
    for (int64_t k = 0; k < nb; k++)
        for (int64_t c = 0; c < nb; c++)
            for (int64_t b = 0; b < nb; b++)
                if (d[c * nb + k] + d[k * nb + b] < d[c * nb + b]) d[c * nb + b] = d[c * nb + k] + d[k * nb + b];
    int64_t pairs = 0, reach = 0, max = 0;
    double sum = 0;
    for (int64_t c = 0; c < nb; c++)
        for (int64_t b = 0; b < nb; b++) {
            if (b == c) continue;
            pairs++;
            if (d[c * nb + b] >= inf) continue;
            reach++;
            sum += (double)d[c * nb + b];
            if (d[c * nb + b] > max) max = d[c * nb + b];
        }
    free(d);
    double mean = reach ? sum / (double)reach : 0.0;
    spa_plan_hops r;
    if (spa_plan_block_hops(cfg, h, nb, &r) != SPA_OK) {
        fprintf(stderr, "%s: hops: %s\n", t->name, spa_last_error());
        return 0;
    }
    int64_t hsum = 0;
    for (int k = 0; k < 16; k++) hsum += r.hist[k];
    int ok = r.pairs == pairs && r.reachable == reach && r.max == max && hsum == reach &&
             (r.mean - mean) * (r.mean - mean) < 1e-18;
    if (!ok)
        fprintf(stderr,
                "%s: head %d hops: got pairs %lld reachable %lld max %lld mean %.9f (histogram %lld); "
                "Floyd-Warshall %lld %lld %lld %.9f\n",
                t->name, h, (long long)r.pairs, (long long)r.reachable, (long long)r.max, r.mean,
                (long long)hsum, (long long)pairs, (long long)reach, (long long)max, mean);
    /* sampled roots are a subset: never more pairs, never a larger max */
    if (nb > 3) {
        spa_plan_hops s;
        if (spa_plan_block_hops(cfg, h, 3, &s) != SPA_OK || s.sources != 3 ||
            s.pairs != 3 * (nb - 1) || s.max > max) {
            fprintf(stderr, "%s: sampled hops: sources %lld pairs %lld max %lld (all: max %lld)\n",
                    t->name, (long long)s.sources, (long long)s.pairs, (long long)s.max,
                    (long long)max);
            ok = 0;
        }
    }
    return ok;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int failed = 0;
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const tcase *t = &cases[k];
        spa_config cfg;
        int ok = setup(t, &cfg);
        if (ok) {
            int ok_keys = check_keys(t, &cfg), ok_mask = 1, ok_hops = 1;
            for (int32_t h = 0; h < cfg.heads; h++) {
                unsigned char *adj = brute_adjacency(&cfg, h);
                ok_mask &= check_mask(t, &cfg, h, adj);
                ok_hops &= check_hops(t, &cfg, h, adj);
                free(adj);
            }
            const int ok_ranks = check_ranks(t, &cfg);
            ok = ok_keys && ok_mask && ok_hops && ok_ranks;
            printf("%-18s n %4lld blocks %3lld: keys %s, mask %s, hops %s, ranks %s\n", t->name,
                   (long long)cfg.n, (long long)spa_nblocks(&cfg), ok_keys ? "ok" : "FAIL",
                   ok_mask ? "ok" : "FAIL", ok_hops ? "ok" : "FAIL", ok_ranks ? "ok" : "FAIL");
        }
        failed += !ok;
        spa_config_free(&cfg);
    }
    printf("%s\n", failed ? "FAILED" : "all passed");
    MPI_Finalize();
    return failed ? 1 : 0;
}
