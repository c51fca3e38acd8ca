/* test_plan.c - the pattern plan without MPI: determinism, eligibility,
 * causal eligibility, globals parsing, union semantics, FLOP counts, and
 * for the rules of SPEC 1.1 every block-level answer of the pattern
 * (counts, key blocks, exported layout, spread) against brute force over
 * spa_pattern_attends, the validation of rule values, and the per-head
 * resolution. */
#include "cases.h"

#include "expect.h"

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
static int64_t eligible(const spa_config *c, int32_t h, int64_t q)
{
    int64_t nb = spa_nblocks(c), w0, w1, e = 0;
    spa_pattern_window(c, h, q, &w0, &w1);
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
    int32_t rb[128], rb2[128];
    for (int32_t h = 0; h < c->heads; h++)
        for (int64_t q = 0; q < nb; q++) {
            int32_t m = spa_pattern_random_blocks(c, h, q, rb);
            int64_t e = eligible(c, h, q), R = c->hr[h].random, want = e < R ? e : R;
            EXPECT(m == want, "count %d != min(R=%lld, eligible=%lld) at h=%d c=%lld", m, (long long)R, (long long)e, h,
                   (long long)q);
            int32_t m2 = spa_pattern_random_blocks(c, h, q, rb2);
            EXPECT(m2 == m && memcmp(rb, rb2, (size_t)m * sizeof *rb) == 0, "not deterministic at c=%lld", (long long)q);
            int64_t w0, w1;
            spa_pattern_window(c, h, q, &w0, &w1);
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

/* ------------------------------------------------- SPEC 1.1 rules */

/* j in S(i) for head h, written again from SPEC 1 and 1.1 (not from the
 * library), to guard the oracle that the reference is built on. The random
 * draw is the library's; test_random_rules checks it. */
static int spec_attends(const spa_config *c, int32_t h, int64_t i, int64_t j)
{
    const spa_head_rules *r = &c->hr[h];
    const int64_t B = c->block, bi = i / B, bj = j / B;
    if (c->causal && j > i) return 0;
    if (spa_pattern_is_global(c, i) || spa_pattern_is_global(c, j)) return 1;
    if (r->radius >= 0 && llabs(i - j) <= r->radius) return 1;
    if (r->radius < 0 && r->local_blocks > 0 && llabs(bi - bj) <= (r->local_blocks - 1) / 2) return 1;
    if (r->stride && (i - j) % r->stride == 0) return 1;
    if (r->sum_l && j % r->sum_l >= r->sum_l - r->sum_c) return 1;
    for (int p = 0; p < r->ndilated; p++) {
        int64_t w = r->dil_w[p], d = r->dil_r[p];
        if (i / w == j / w && (i % w) % d == h % d && (j % w) % d == h % d) return 1;
    }
    if (c->layout.heads) {
        int64_t row = (c->layout.heads == 1 ? 0 : h) * c->layout.nb + bi;
        for (int64_t k = c->layout.off[row]; k < c->layout.off[row + 1]; k++)
            if (c->layout.idx[k] == bj) return 1;
    }
    int32_t rb[256];
    int32_t m = spa_pattern_random_blocks(c, h, bi, rb);
    for (int32_t t = 0; t < m; t++)
        if (rb[t] == bj) return 1;
    return 0;
}

/* Every block-level answer of the pattern for query block q of head h,
 * against brute force over spa_pattern_attends:
 *   spa_pattern_block_keys   |S(i)| with set semantics
 *   spa_pattern_key_blocks   with the local range and the gathered tokens,
 *                            covers every key of the non-global rows; full
 *                            only where every row attends the whole block
 *                            (up to causality); random and layout blocks
 *                            full; no block that no row attends
 *   spa_pattern_export_row   full / partial exactly as classified
 *   spa_pattern_spread       pure; only for blocks attending most blocks
 * att is [B][n], the other buffers [nb]. Returns 0 when a check failed. */
static int check_block(const char *name, const spa_config *c, const spa_config *copy, int32_t h, int64_t q,
                       unsigned char *att, int64_t *cnt, int32_t *kb, unsigned char *kfull, int32_t *inlist,
                       int32_t *xf, int32_t *xp)
{
    const int64_t B = c->block, n = c->n, nb = spa_nblocks(c), t0 = q * B, t1 = spa_block_end(c, q);
    const int64_t rows = t1 - t0;
    const int f0 = fails;
    int64_t counts[B > 0 ? B : 1];
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < n; j++) att[r * n + j] = (unsigned char)spa_pattern_attends(c, h, t0 + r, j);

    /* |S(i)| */
    spa_pattern_block_keys(c, h, q, counts);
    for (int64_t r = 0; r < rows; r++) {
        int64_t want = 0;
        for (int64_t j = 0; j < n; j++) want += att[r * n + j];
        EXPECT(counts[r] == want, "%s: |S(%lld)| head %d: counted %lld, brute force %lld", name, (long long)(t0 + r),
               h, (long long)counts[r], (long long)want);
    }

    /* key blocks */
    int64_t m = spa_pattern_key_blocks(c, h, q, kb, kfull), j0, j1;
    EXPECT(m >= 0 && m <= nb, "%s: key_blocks(%d, %lld) returned %lld", name, h, (long long)q, (long long)m);
    if (m < 0 || m > nb) return 0;
    for (int64_t b = 0; b < nb; b++) inlist[b] = -1;
    for (int64_t k = 0; k < m; k++) {
        EXPECT(kb[k] >= 0 && kb[k] < nb && (k == 0 || kb[k] > kb[k - 1]),
               "%s: key blocks of (%d, %lld) not ascending and unique in [0, nb) at %lld", name, h, (long long)q,
               (long long)k);
        if (kb[k] >= 0 && kb[k] < nb) inlist[kb[k]] = (int32_t)k;
    }
    spa_pattern_local_range(c, h, q, &j0, &j1);
    EXPECT(j0 >= 0 && j0 <= j1 && j1 <= n, "%s: local range [%lld, %lld)", name, (long long)j0, (long long)j1);
    if (c->hr[h].local_blocks == 0 && c->hr[h].radius < 0)
        EXPECT(j0 == j1, "%s: head %d has no local rule, but its local range is [%lld, %lld)", name, h, (long long)j0,
               (long long)j1);
    int missing = 0;
    for (int64_t r = 0; r < rows && !missing; r++) {
        if (spa_pattern_is_global(c, t0 + r)) continue;
        for (int64_t j = 0; j < n && !missing; j++) {
            if (!att[r * n + j] || (j >= j0 && j < j1) || spa_pattern_is_gathered(c, h, j) || inlist[j / B] >= 0)
                continue;
            missing = 1;
            EXPECT(0, "%s: key %lld of row %lld (head %d) is in S(i) but in no key block, not in the local range "
                      "[%lld, %lld) and not gathered",
                   name, (long long)j, (long long)(t0 + r), h, (long long)j0, (long long)j1);
        }
    }
    for (int64_t k = 0; k < m; k++) {
        const int64_t a = (int64_t)kb[k] * B, e = spa_block_end(c, kb[k]);
        int64_t hit = 0, notfull = -1;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = a; j < e; j++) {
                hit += att[r * n + j];
                if (notfull < 0 && !att[r * n + j] && !(c->causal && j > t0 + r)) notfull = r * n + j;
            }
        EXPECT(hit > 0, "%s: key block %d of (%d, %lld) holds no key any row attends", name, kb[k], h, (long long)q);
        if (kfull[k])
            EXPECT(notfull < 0, "%s: key block %d of (%d, %lld) marked full, but row %lld does not attend key %lld",
                   name, kb[k], h, (long long)q, (long long)(t0 + notfull / n), (long long)(notfull % n));
    }
    int32_t rb[256];
    int32_t nr = spa_pattern_random_blocks(c, h, q, rb);
    for (int32_t t = 0; t < nr; t++)
        EXPECT(inlist[rb[t]] >= 0 && kfull[inlist[rb[t]]], "%s: random block %d of (%d, %lld) not listed full", name,
               rb[t], h, (long long)q);
    if (c->layout.heads) {
        int64_t row = (c->layout.heads == 1 ? 0 : h) * nb + q;
        for (int64_t k = c->layout.off[row]; k < c->layout.off[row + 1]; k++) {
            int32_t b = c->layout.idx[k];
            if (c->causal && b > q) continue; /* no key of it is attended */
            EXPECT(inlist[b] >= 0 && kfull[inlist[b]], "%s: layout block %d of (%d, %lld) not listed full", name, b,
                   h, (long long)q);
        }
    }

    /* exported layout: per key block, all / some / none of the pairs */
    int64_t nf = -1, np = -1, kf = 0, kp = 0;
    EXPECT(spa_pattern_export_row(c, h, q, xf, &nf, xp, &np) == 0, "%s: export_row failed", name);
    for (int64_t b = 0; b < nb; b++) {
        const int64_t a = b * B, e = spa_block_end(c, b);
        int64_t hit = 0;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = a; j < e; j++) hit += att[r * n + j];
        cnt[b] = hit;
        int want = hit == rows * (e - a) ? 2 : hit > 0 ? 1 : 0;
        int got = kf < nf && xf[kf] == b ? 2 : kp < np && xp[kp] == b ? 1 : 0;
        if (got == 2) kf++;
        if (got == 1) kp++;
        EXPECT(got == want, "%s: export of (%d, %lld): key block %lld is %s, brute force says %s (%lld of %lld pairs)",
               name, h, (long long)q, (long long)b, got == 2 ? "full" : got ? "partial" : "absent",
               want == 2 ? "full" : want ? "partial" : "absent", (long long)hit, (long long)(rows * (e - a)));
    }
    EXPECT(kf == nf && kp == np, "%s: export of (%d, %lld): %lld full and %lld partial, %lld and %lld consumed "
                                 "(unsorted or out of range)",
           name, h, (long long)q, (long long)nf, (long long)np, (long long)kf, (long long)kp);

    /* spread: a pure function, and only for a block that attends most of
     * the sequence (some non-global row attends a key in more than half the
     * blocks, and nb >= 32) */
    int sp = spa_pattern_spread(c, h, q);
    EXPECT(sp == spa_pattern_spread(c, h, q) && sp == spa_pattern_spread(copy, h, q),
           "%s: spread(%d, %lld) not a pure function", name, h, (long long)q);
    if (sp) {
        int64_t blocks = 0, nonglobal = 0;
        for (int64_t r = 0; r < rows; r++) nonglobal += !spa_pattern_is_global(c, t0 + r);
        for (int64_t b = 0; b < nb; b++) {
            int any = 0;
            for (int64_t r = 0; r < rows && !any; r++) {
                if (spa_pattern_is_global(c, t0 + r)) continue;
                for (int64_t j = b * B; j < (b + 1) * B && j < n && !any; j++) any = att[r * n + j];
            }
            blocks += any;
        }
        EXPECT(nb >= 32 && (nonglobal == 0 || 2 * blocks > nb),
               "%s: (%d, %lld) spread, but nb = %lld and its non-global rows attend %lld blocks", name, h,
               (long long)q, (long long)nb, (long long)blocks);
    }
    return fails == f0;
}

/* All of check_block over every (head, query block) of a config, plus the
 * oracle against spec_attends and the gathered set. */
static void check_rules(const char *name, const spa_config *c)
{
    const int64_t n = c->n, nb = spa_nblocks(c), B = c->block;
    spa_config copy;
    EXPECT(spa_config_copy(&copy, c) == SPA_OK, "copy");
    unsigned char *att = malloc((size_t)(B * n)), *kfull = malloc((size_t)nb);
    int64_t *cnt = malloc((size_t)nb * sizeof *cnt);
    int32_t *kb = malloc((size_t)nb * sizeof *kb), *inlist = malloc((size_t)nb * sizeof *inlist);
    int32_t *xf = malloc((size_t)nb * sizeof *xf), *xp = malloc((size_t)nb * sizeof *xp);
    unsigned char *kv = calloc((size_t)n, 1);
    for (int64_t g = 0; g < c->nkv_tokens; g++) {
        EXPECT(c->kv_tokens[g] >= 0 && c->kv_tokens[g] < n && (g == 0 || c->kv_tokens[g] > c->kv_tokens[g - 1]),
               "%s: kv_tokens not ascending in [0, n)", name);
        if (c->kv_tokens[g] >= 0 && c->kv_tokens[g] < n) kv[c->kv_tokens[g]] = 1;
    }
    int oracle_bad = 0;
    for (int32_t h = 0; h < c->heads; h++) {
        const spa_head_rules *r = &c->hr[h];
        for (int64_t j = 0; j < n; j++) {
            int want = spa_pattern_is_global(c, j) || (r->sum_l && j % r->sum_l >= r->sum_l - r->sum_c);
            EXPECT(spa_pattern_is_gathered(c, h, j) == want, "%s: is_gathered(%d, %lld) != %d", name, h, (long long)j,
                   want);
            if (want) EXPECT(kv[j], "%s: gathered key %lld of head %d not in kv_tokens", name, (long long)j, h);
        }
        /* every row up to ~4M pairs per head, then a sample of rows */
        int64_t istep = n * n / 4000000 + 1;
        for (int64_t i = 0; i < n && oracle_bad < 3; i += istep)
            for (int64_t j = 0; j < n; j++)
                if (spa_pattern_attends(c, h, i, j) != spec_attends(c, h, i, j)) {
                    EXPECT(0, "%s: attends(%d, %lld, %lld) = %d, the SPEC says %d", name, h, (long long)i,
                           (long long)j, spa_pattern_attends(c, h, i, j), spec_attends(c, h, i, j));
                    if (++oracle_bad >= 3) break;
                }
    }
    for (int64_t g = 0; g < c->nkv_tokens; g++) {
        int any = 0;
        for (int32_t h = 0; h < c->heads; h++) any |= spa_pattern_is_gathered(c, h, c->kv_tokens[g]);
        EXPECT(any, "%s: kv_tokens holds %lld, which no head gathers", name, (long long)c->kv_tokens[g]);
    }
    int bad = 0;
    for (int32_t h = 0; h < c->heads; h++)
        for (int64_t q = 0; q < nb && bad < 3; q++) bad += !check_block(name, c, &copy, h, q, att, cnt, kb, kfull, inlist, xf, xp);
    free(att), free(kfull), free(cnt), free(kb), free(inlist), free(xf), free(xp), free(kv);
    spa_config_free(&copy);
}

/* The designed dense layout rows take the spread path (a row with 38 of
 * 40 blocks), and blocks that attend little do not. */
static void test_spread_rows(void)
{
    for (int i = 0; i < spa_ncases; i++) {
        const test_case *tc = &spa_cases[i];
        if (tc->layout != CASE_LAYOUT_SPARSE || tc->causal) continue;
        spa_config c;
        EXPECT(case_config(tc, 3, &c) == SPA_OK, "%s: %s", tc->name, spa_last_error());
        EXPECT(spa_pattern_spread(&c, 0, 3), "%s: the dense layout row (0, 3) is not spread", tc->name);
        EXPECT(spa_pattern_spread(&c, c.heads - 1, spa_nblocks(&c) - 1), "%s: the dense layout row (%d, %lld) is not spread",
               tc->name, c.heads - 1, (long long)spa_nblocks(&c) - 1);
        spa_config_free(&c);
    }
    /* below 32 blocks nothing is spread, however dense */
    spa_config c = make(31 * 16, 16, 61, -1, "none", 0, 0, 0);
    for (int64_t q = 0; q < 31; q++) EXPECT(!spa_pattern_spread(&c, 0, q), "nb = 31: block %lld spread", (long long)q);
    spa_config_free(&c);
}

/* SPEC 1.1: importing the export (full and partial lists, as one layout)
 * with --local-blocks 0 --globals none --random 0 and the same --causal
 * reproduces every block-level pattern exactly. Block-level: block
 * windows, random and layout blocks, and globals that fill whole blocks;
 * every shared case of that kind is checked. */
static void test_export_roundtrip(void)
{
    int tried = 0;
    for (int i = 0; i < spa_ncases; i++) {
        const test_case *tc = &spa_cases[i];
        spa_config c;
        if (case_config(tc, 3, &c) != SPA_OK) {
            spa_config_free(&c);
            continue;
        }
        const int64_t n = c.n, B = c.block, nb = spa_nblocks(&c);
        int block_level = 1;
        for (int32_t h = 0; h < c.heads; h++)
            block_level &= c.hr[h].radius < 0 && !c.hr[h].stride && !c.hr[h].sum_l && !c.hr[h].ndilated;
        for (int64_t g = 0; g < c.nglobal_blocks && block_level; g++)
            for (int64_t j = c.global_blocks[g] * B; j < (c.global_blocks[g] + 1) * B && j < n; j++)
                block_level &= spa_pattern_is_global(&c, j);
        if (!block_level) {
            spa_config_free(&c);
            continue;
        }
        tried++;
        unsigned char *d = calloc((size_t)(c.heads * nb * nb), 1);
        int32_t *xf = malloc((size_t)nb * sizeof *xf), *xp = malloc((size_t)nb * sizeof *xp);
        for (int32_t h = 0; h < c.heads; h++)
            for (int64_t q = 0; q < nb; q++) {
                int64_t nf = 0, np = 0;
                EXPECT(spa_pattern_export_row(&c, h, q, xf, &nf, xp, &np) == 0, "export_row");
                for (int64_t k = 0; k < nf; k++) d[(h * nb + q) * nb + xf[k]] = 1;
                for (int64_t k = 0; k < np; k++) d[(h * nb + q) * nb + xp[k]] = 1;
            }
        spa_config imp;
        spa_config_init(&imp);
        imp.n = n, imp.block = c.block, imp.heads = c.heads, imp.dim = c.dim, imp.causal = c.causal;
        imp.local_blocks = 0, imp.random = 0;
        spa_config_set_globals(&imp, "none");
        spa_layout lay;
        EXPECT(case_layout_from_dense(c.heads, nb, d, &lay) == 0, "layout");
        spa_config_set_layout(&imp, &lay);
        spa_layout_free(&lay);
        EXPECT(spa_config_validate(&imp) == SPA_OK, "%s: the exported layout does not validate: %s", tc->name,
               spa_last_error());
        int64_t bad = 0, istep = n * n / 2000000 + 1;
        for (int32_t h = 0; h < c.heads; h++)
            for (int64_t a = 0; a < n; a += istep)
                for (int64_t j = 0; j < n; j++)
                    if (spa_pattern_attends(&c, h, a, j) != spa_pattern_attends(&imp, h, a, j) && bad++ < 2)
                        printf("     %s: head %d (%lld, %lld): pattern %d, imported export %d\n", tc->name, h,
                               (long long)a, (long long)j, spa_pattern_attends(&c, h, a, j),
                               spa_pattern_attends(&imp, h, a, j));
        EXPECT(bad == 0, "%s: the imported export differs from the pattern in %lld pairs", tc->name, (long long)bad);
        spa_config_free(&imp);
        free(d), free(xf), free(xp);
        spa_config_free(&c);
    }
    EXPECT(tried >= 10, "only %d block-level cases for the export round trip", tried);
}

/* Builds a config from a rules string; returns validate's answer. */
static spa_err try_rules(int32_t H, int64_t n, const char *rules, spa_config *c)
{
    spa_config_init(c);
    c->n = n, c->heads = H, c->block = 16;
    spa_err e = case_rules(c, rules);
    if (e != SPA_OK) return e;
    return spa_config_validate(c);
}

static void test_rule_values(void)
{
    const char *bad[] = {
        "stride=1", "stride=0", "stride=-3", "stride=x", "stride=", "stride=5@1", "stride=5@2:1", "stride=5@1:1",
        "summary=8:0", "summary=8:9", "summary=8", "summary=0:0", "summary=:3", "summary=8:3@-1:2",
        "dilated=0:1", "dilated=4:5", "dilated=4:", "dilated=:2", "dilated=4:2,", "dilated=4:0",
        "local_blocks=2", "local_blocks=-1", "radius=-1", "random=-1",
        /* overlapping head ranges, a range beyond H, a bare flag repeated,
         * bare with ranged, two local rules on one head */
        "stride=5@0:2;stride=7@1:3", "dilated=8:2@0:3;dilated=16:2@2:4", "stride=5@2:5", "random=2@0:9",
        "stride=5;stride=7", "summary=8:2;summary=8:2", "stride=5;stride=7@0:1", "stride=7@0:1;stride=5",
        "local_blocks=3@0:2;radius=10@1:2", "local_blocks=3;radius=10", "radius=10;local_blocks=3@3:4",
        "local_blocks=3@0:1;local_blocks=5@0:1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        spa_config c;
        spa_err e = try_rules(4, 1000, bad[i], &c);
        EXPECT(e == SPA_ERR_USAGE, "'%s' should be a usage error (got %d)", bad[i], (int)e);
        spa_config_free(&c);
    }
    const char *good[] = {
        "local_blocks=3@0:2;radius=10@2:4", "stride=5@0:2;stride=7@2:4", "dilated=64:4,128:8@1:3", "local_blocks=0",
        "summary=8:8", "summary=1:1", "dilated=1:1", "stride=2", "random=0@0:1;random=5@1:4", "stride=5@3:4",
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        spa_config c;
        spa_err e = try_rules(4, 1000, good[i], &c);
        EXPECT(e == SPA_OK, "'%s' should be valid: %s", good[i], spa_last_error());
        spa_config_free(&c);
    }
    spa_config c;
    spa_config_init(&c);
    EXPECT(spa_config_add_rule(&c, SPA_RULE_STRIDE, "") != SPA_OK, "empty rule value accepted");
    spa_config_free(&c);

    /* layouts: index outside [0, nb), unsorted or repeated, wrong nb or heads */
    int64_t off[4] = {0, 1, 2, 3};
    int32_t idx_out[3] = {0, 3, 1}, idx_ok[3] = {0, 2, 1};
    int64_t off_dup[4] = {0, 2, 3, 4};
    int32_t idx_dup[4] = {1, 1, 0, 2}, idx_uns[4] = {2, 1, 0, 2};
    struct {
        const char *what;
        spa_layout lay;
        int32_t H;
    } lays[] = {
        {"index outside [0, nb)", {1, 3, off, idx_out}, 1},
        {"repeated index", {1, 3, off_dup, idx_dup}, 1},
        {"unsorted row", {1, 3, off_dup, idx_uns}, 1},
        {"nb != ceil(n / B)", {1, 2, off, idx_ok}, 1},
        {"2 heads for H = 3", {2, 3, off, idx_ok}, 3},
    };
    for (size_t i = 0; i < sizeof lays / sizeof *lays; i++) {
        spa_config_init(&c);
        c.n = 40, c.block = 16, c.heads = lays[i].H;
        if (lays[i].lay.heads == 2) { /* 6 rows */
            static int64_t off6[7] = {0, 1, 2, 3, 4, 5, 6};
            static int32_t idx6[6] = {0, 1, 2, 0, 1, 2};
            lays[i].lay.off = off6, lays[i].lay.idx = idx6;
        }
        EXPECT(spa_config_set_layout(&c, &lays[i].lay) == SPA_OK, "set_layout");
        spa_err e = spa_config_validate(&c);
        EXPECT(e == SPA_ERR_INPUT, "layout with %s: got %d, want an input error", lays[i].what, (int)e);
        spa_config_free(&c);
    }
    spa_config_init(&c);
    c.n = 40, c.block = 16, c.heads = 2;
    spa_layout okl = {1, 3, off, idx_ok};
    spa_config_set_layout(&c, &okl);
    EXPECT(spa_config_validate(&c) == SPA_OK, "a valid layout rejected: %s", spa_last_error());
    spa_config_free(&c);
}

/* No local flag: every head has the default window (or the scalars');
 * once a local flag is given, the heads it does not cover have none. */
static void test_head_resolution(void)
{
    spa_config c;
    EXPECT(try_rules(3, 1000, "stride=5;summary=64:4@1:2", &c) == SPA_OK, "%s", spa_last_error());
    for (int32_t h = 0; h < 3; h++) {
        EXPECT(c.hr[h].local_blocks == 3 && c.hr[h].radius == -1, "no local flag: head %d has W=%d radius %lld", h,
               c.hr[h].local_blocks, (long long)c.hr[h].radius);
        EXPECT(c.hr[h].stride == 5 && c.hr[h].random == 3, "head %d: stride %lld random %d", h,
               (long long)c.hr[h].stride, c.hr[h].random);
        EXPECT((c.hr[h].sum_l == 64 && c.hr[h].sum_c == 4) == (h == 1), "summary on head %d", h);
    }
    spa_config_free(&c);
    spa_config_init(&c);
    c.n = 1000, c.heads = 2, c.radius = 20;
    EXPECT(spa_config_validate(&c) == SPA_OK && c.hr[0].radius == 20 && c.hr[1].radius == 20 &&
               c.hr[0].local_blocks == 0,
           "the scalar radius applies to every head");
    spa_config_free(&c);

    EXPECT(try_rules(3, 1000, "local_blocks=5@0:1;random=4@1:2;dilated=64:4,128:8@1:3", &c) == SPA_OK, "%s",
           spa_last_error());
    EXPECT(c.hr[0].local_blocks == 5 && c.hr[0].radius == -1, "head 0: W=5");
    for (int32_t h = 1; h < 3; h++)
        EXPECT(c.hr[h].local_blocks == 0 && c.hr[h].radius == -1, "head %d not covered by --local-blocks: W=%d "
                                                                  "radius %lld, want none",
               h, c.hr[h].local_blocks, (long long)c.hr[h].radius);
    EXPECT(c.hr[0].random == 0 && c.hr[1].random == 4 && c.hr[2].random == 0 && c.random_max == 4,
           "per-head random: %d %d %d max %d", c.hr[0].random, c.hr[1].random, c.hr[2].random, c.random_max);
    EXPECT(c.hr[0].ndilated == 0 && c.hr[1].ndilated == 2 && c.hr[2].ndilated == 2 && c.hr[1].dil_w[0] == 64 &&
               c.hr[1].dil_r[0] == 4 && c.hr[2].dil_w[1] == 128 && c.hr[2].dil_r[1] == 8,
           "dilated pairs per head");
    /* head 2 has no rule at all (default globals are first and last block) */
    int64_t bad = 0;
    for (int64_t i = 16; i < 992; i += 7)
        for (int64_t j = 16; j < 992; j++) bad += spa_pattern_attends(&c, 2, i, j) && (i / 128) != (j / 128);
    EXPECT(bad == 0, "head 2 without a local rule attends %lld keys outside its 128-token dilated segments", (long long)bad);
    spa_config_free(&c);

    EXPECT(try_rules(3, 1000, "radius=7@1:2", &c) == SPA_OK, "%s", spa_last_error());
    EXPECT(c.hr[1].radius == 7 && c.hr[0].radius == -1 && c.hr[0].local_blocks == 0 && c.hr[2].local_blocks == 0,
           "--radius 7@1:2: heads 0 and 2 have no local rule");
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

    /* SPEC 1.1 */
    test_rule_values();
    test_head_resolution();
    test_spread_rows();
    test_export_roundtrip();
    for (int i = 0; i < spa_ncases; i++) {
        const test_case *tc = &spa_cases[i];
        spa_config c;
        if (case_config(tc, 3, &c) != SPA_OK) {
            EXPECT(0, "%s: %s", tc->name, spa_last_error());
            spa_config_free(&c);
            continue;
        }
        int f0 = fails;
        test_random_rules(&c);
        check_rules(tc->name, &c);
        if (fails > f0) printf("     in case %s\n", tc->name);
        spa_config_free(&c);
    }
    printf("%d passed, %d failed\n", checks - fails, fails);
    return fails ? 1 : 0;
}
