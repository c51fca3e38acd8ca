/* test_plan.c - the pattern plan without MPI: determinism, eligibility,
 * causal eligibility, globals parsing, union semantics, FLOP counts. */
#include "cases.h"

static int fails, checks;
#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            fails++;                                                                               \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                            \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
        }                                                                                          \
    } while (0)

static spa_config make(int64_t n, int32_t B, int32_t W, int64_t radius, const char *g, int32_t R, int causal,
                       uint64_t seed)
{
    spa_config c;
    spa_config_init(&c);
    c.n = n, c.block = B, c.local_blocks = W, c.radius = radius, c.random = R, c.causal = causal, c.seed = seed;
    c.heads = 2;
    spa_config_set_globals(&c, g);
    if (spa_config_validate(&c) != SPA_OK) printf("config: %s\n", spa_last_error());
    return c;
}

/* Eligible count straight from the definition. */
static int64_t eligible(const spa_config *c, int64_t q)
{
    int64_t nb = spa_nblocks(c), w0, w1, e = 0;
    spa_pattern_window(c, q, &w0, &w1);
    for (int64_t b = 0; b < nb; b++) {
        int in_window = b >= w0 && b <= w1;
        if (c->causal ? b >= w0 : in_window) continue;
        if (spa_pattern_block_has_global(c, b)) continue;
        e++;
    }
    return e;
}

static void test_random_rules(const spa_config *c)
{
    int64_t nb = spa_nblocks(c);
    int32_t rb[64], rb2[64];
    for (int32_t h = 0; h < c->heads; h++)
        for (int64_t q = 0; q < nb; q++) {
            int32_t m = spa_pattern_random_blocks(c, h, q, rb);
            int64_t e = eligible(c, q), want = e < c->random ? e : c->random;
            EXPECT(m == want, "count %d != min(R=%d, eligible=%lld) at h=%d c=%lld", m, c->random, (long long)e, h,
                   (long long)q);
            int32_t m2 = spa_pattern_random_blocks(c, h, q, rb2);
            EXPECT(m2 == m && memcmp(rb, rb2, (size_t)m * sizeof *rb) == 0, "not deterministic at c=%lld", (long long)q);
            int64_t w0, w1;
            spa_pattern_window(c, q, &w0, &w1);
            for (int32_t i = 0; i < m; i++) {
                EXPECT(rb[i] >= 0 && rb[i] < nb, "block %d out of range", rb[i]);
                EXPECT(!(rb[i] >= w0 && rb[i] <= w1), "block %d in window [%lld,%lld]", rb[i], (long long)w0,
                       (long long)w1);
                EXPECT(!spa_pattern_block_has_global(c, rb[i]), "block %d holds a global", rb[i]);
                if (c->causal) EXPECT(rb[i] < w0, "causal: block %d not before window %lld", rb[i], (long long)w0);
                if (i) EXPECT(rb[i] > rb[i - 1], "not sorted/distinct");
            }
        }
}

/* The draw is uniform: over many query blocks every eligible block is
 * drawn about equally often (chi-square against uniform). */
static void test_uniform(void)
{
    spa_config c = make(64 * 40, 64, 3, -1, "none", 3, 0, 11);
    int64_t counts[40] = {0}, draws = 0;
    int32_t rb[3];
    for (uint64_t s = 0; s < 400; s++) {
        c.seed = s;
        int32_t m = spa_pattern_random_blocks(&c, 0, 20, rb);
        for (int32_t i = 0; i < m; i++) counts[rb[i]]++, draws++;
    }
    double expect = (double)draws / 37.0, chi = 0.0;
    for (int b = 0; b < 40; b++) {
        if (b >= 19 && b <= 21) {
            EXPECT(counts[b] == 0, "window block %d drawn", b);
            continue;
        }
        chi += (counts[b] - expect) * (counts[b] - expect) / expect;
    }
    /* 36 degrees of freedom: p = 0.001 at 67.98 */
    EXPECT(chi < 67.98, "draw not uniform: chi2 = %.1f", chi);
    spa_config_free(&c);
}

static void test_globals_parse(void)
{
    int64_t *g, cnt;
    EXPECT(spa_parse_globals("5,1,3:6,1", 10, &g, &cnt) == SPA_OK && cnt == 4 && g[0] == 1 && g[1] == 3 &&
               g[2] == 4 && g[3] == 5,
           "ranges and duplicates");
    free(g);
    EXPECT(spa_parse_globals("none", 10, &g, &cnt) == SPA_OK && cnt == 0, "none");
    free(g);
    EXPECT(spa_parse_globals("0:64,131008:131072", 131072, &g, &cnt) == SPA_OK && cnt == 128 && g[64] == 131008,
           "BigBird ITC ranges");
    free(g);
    const char *bad[] = {"1:", "a", "5:3", "", ",", "1,,2", "-1", "3:3", "10", "0:11", "1.5", ":4"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        spa_err e = spa_parse_globals(bad[i], 10, &g, &cnt);
        EXPECT(e == SPA_ERR_USAGE, "'%s' should be a usage error", bad[i]);
        if (e == SPA_OK) free(g);
    }
    spa_config c = make(1000, 64, 3, -1, NULL, 3, 0, 0);
    EXPECT(c.nglobals == 64 + (1000 - 960), "default globals: first and last block (%lld)", (long long)c.nglobals);
    spa_config_free(&c);
    spa_config bad_cfg;
    spa_config_init(&bad_cfg);
    bad_cfg.n = 100;
    spa_config_set_globals(&bad_cfg, "100");
    EXPECT(spa_config_validate(&bad_cfg) == SPA_ERR_USAGE, "global index >= n");
    spa_config_free(&bad_cfg);
    spa_config_init(&bad_cfg);
    bad_cfg.local_blocks = 4;
    EXPECT(spa_config_validate(&bad_cfg) == SPA_ERR_USAGE, "even --local-blocks");
    bad_cfg.local_blocks = 3, bad_cfg.block = 0;
    EXPECT(spa_config_validate(&bad_cfg) == SPA_ERR_USAGE, "block 0");
    bad_cfg.block = 64, bad_cfg.random = -1;
    EXPECT(spa_config_validate(&bad_cfg) == SPA_ERR_USAGE, "negative random");
    spa_config_free(&bad_cfg);
}

/* |S(i)| by brute force from spa_pattern_attends against the counted
 * pairs; with union semantics a key selected by two rules counts once. */
static void test_pairs(const spa_config *c)
{
    int64_t brute = 0;
    for (int64_t i = 0; i < c->n; i++)
        for (int64_t j = 0; j < c->n; j++) brute += spa_pattern_attends(c, 1, i, j);
    int64_t counted = spa_pattern_pairs(c, 1, 0, spa_nblocks(c));
    EXPECT(brute == counted, "pairs: brute %lld != counted %lld", (long long)brute, (long long)counted);
}

static void test_union(void)
{
    /* token 10 is global and in every local window near it: it counts once */
    spa_config c = make(64, 8, 3, -1, "10", 0, 0, 0);
    int64_t want = 0;
    for (int64_t i = 0; i < 64; i++) {
        if (i == 10) {
            want += 64;
            continue;
        }
        int64_t ci = i / 8, lo = (ci - 1 < 0 ? 0 : ci - 1) * 8, hi = (ci + 2 > 8 ? 8 : ci + 2) * 8;
        want += hi - lo + !(10 >= lo && 10 < hi);
    }
    EXPECT(spa_pattern_pairs(&c, 0, 0, 8) == want, "union: %lld != %lld", (long long)spa_pattern_pairs(&c, 0, 0, 8),
           (long long)want);
    spa_config_free(&c);
}

int main(void)
{
    const struct {
        int64_t n;
        int32_t B, W;
        int64_t radius;
        const char *g;
        int32_t R;
        int causal;
    } pats[] = {
        {1000, 16, 3, -1, NULL, 3, 0},  {1000, 16, 5, -1, "0,500:520,999", 4, 0}, {1000, 16, 1, -1, "none", 60, 0},
        {1000, 16, 3, -1, NULL, 3, 1},  {1000, 16, 3, 40, "300", 3, 0},          {1000, 16, 3, 40, "300", 3, 1},
        {333, 7, 3, 0, "none", 5, 0},   {200, 1, 3, -1, "5,77", 4, 1},           {50, 64, 3, -1, NULL, 3, 0},
        {640, 64, 3, 200, "none", 100, 1},
    };
    for (size_t p = 0; p < sizeof pats / sizeof *pats; p++) {
        spa_config c = make(pats[p].n, pats[p].B, pats[p].W, pats[p].radius, pats[p].g, pats[p].R, pats[p].causal, 3);
        test_random_rules(&c);
        if (c.n <= 1000) test_pairs(&c);
        spa_config_free(&c);
    }
    /* different seeds give different plans */
    spa_config a = make(64 * 100, 64, 3, -1, NULL, 3, 0, 1), b = make(64 * 100, 64, 3, -1, NULL, 3, 0, 2);
    int differ = 0;
    int32_t ra[3], rbb[3];
    for (int64_t q = 0; q < 100; q++) {
        spa_pattern_random_blocks(&a, 0, q, ra);
        spa_pattern_random_blocks(&b, 0, q, rbb);
        differ |= memcmp(ra, rbb, sizeof ra) != 0;
    }
    EXPECT(differ, "seed does not change the plan");
    spa_config_free(&a), spa_config_free(&b);
    test_uniform();
    test_globals_parse();
    test_union();
    printf("%d passed, %d failed\n", checks - fails, fails);
    return fails ? 1 : 0;
}
