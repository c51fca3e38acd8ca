/* cases.h - the pattern configurations the kernel and distributed tests
 * share, and helpers to build inputs and compare against the reference. */
#ifndef SPA_TEST_CASES_H
#define SPA_TEST_CASES_H

#include "spa_impl.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct test_case {
    const char *name;
    int64_t n;
    int32_t H, D, B, W;
    int64_t radius;      /* -1 = block mode */
    const char *globals; /* NULL = default */
    int32_t random;
    int causal;
    float temperature;
    /* SPEC 1.1 rules, applied with spa_config_add_rule after the scalars:
     * "key=value;key=value" with key one of local_blocks, radius, random,
     * stride, summary, dilated and value in the command line's syntax
     * ("3@0:1", "64:8", "64:4,128:8@1:3"). NULL = none. */
    const char *rules;
    int layout;          /* a CASE_LAYOUT_* generator, 0 = none */
} test_case;

/* Block layouts the tests build themselves (no file). */
enum {
    CASE_LAYOUT_NONE = 0,
    CASE_LAYOUT_SPARSE,     /* H heads: a few blocks per row, and two dense rows (spread path) */
    CASE_LAYOUT_EMPTY_ROWS, /* 1 head: every 4th row empty, the others 1 to 3 blocks */
    CASE_LAYOUT_BAND,       /* 1 head: blocks c-1, c, c+1 and column 0 (block-level Longformer) */
};

/* Together they cover: n a multiple of B and not, n < B, n = 1, B = 1;
 * W = 1, 3, 5; radius 0, 1, B-1, B, 3B+7; globals none, default, middle,
 * scattered, every token; random 0, 1, 3, more than eligible; causal on and
 * off; D = 1, 16, 64, 128; H = 1, 3; peaky attention (|s q.k| up to ~30).
 * And the rules of SPEC 1.1, alone and in unions: --local-blocks 0; stride
 * S < B, S = B, S > B and larger than a shard at 7 ranks; summary alone,
 * with globals, C = L; dilated r = 1, r > B, segments across ranks, a
 * partial last segment, several pairs; layouts with dense rows (the spread
 * path) and with empty rows; per-head ranges of every rule; causal with
 * each; rows with an empty S(i) (dilated, causal summary, causal random,
 * layouts). */
static const test_case spa_cases[] = {
    {"default", 1024, 2, 16, 64, 3, -1, NULL, 3, 0, 1.0f, NULL, 0},
    {"n_not_multiple", 1000, 2, 16, 64, 3, -1, NULL, 3, 0, 1.0f, NULL, 0},
    {"n_below_block", 50, 1, 16, 64, 3, -1, NULL, 3, 0, 1.0f, NULL, 0},
    {"n_one", 1, 1, 16, 64, 3, -1, NULL, 3, 0, 1.0f, NULL, 0},
    {"block_one", 40, 2, 8, 1, 3, -1, "5", 2, 0, 1.0f, NULL, 0},
    {"w1", 640, 1, 16, 32, 1, -1, NULL, 3, 0, 1.0f, NULL, 0},
    {"w5", 700, 1, 16, 32, 5, -1, NULL, 3, 0, 1.0f, NULL, 0},
    {"radius0", 512, 1, 16, 32, 0, 0, "none", 2, 0, 1.0f, NULL, 0},
    {"radius1", 512, 1, 16, 32, 0, 1, NULL, 2, 0, 1.0f, NULL, 0},
    {"radius_b_minus_1", 600, 1, 16, 32, 0, 31, NULL, 2, 0, 1.0f, NULL, 0},
    {"radius_b", 600, 2, 16, 32, 0, 32, "300", 2, 0, 1.0f, NULL, 0},
    {"radius_3b_plus_7", 900, 1, 16, 32, 0, 103, NULL, 2, 0, 1.0f, NULL, 0},
    {"globals_none", 800, 1, 16, 32, 3, -1, "none", 3, 0, 1.0f, NULL, 0},
    {"globals_middle", 800, 1, 16, 32, 3, -1, "400:420", 3, 0, 1.0f, NULL, 0},
    {"globals_scattered", 999, 2, 16, 32, 3, -1, "3,77,400,401,998", 3, 0, 1.0f, NULL, 0},
    {"globals_all", 200, 1, 16, 32, 3, -1, "0:200", 3, 0, 1.0f, NULL, 0},
    {"random0", 800, 1, 16, 32, 3, -1, NULL, 0, 0, 1.0f, NULL, 0},
    {"random1", 800, 1, 16, 32, 3, -1, NULL, 1, 0, 1.0f, NULL, 0},
    {"random_exceeds", 300, 2, 16, 32, 3, -1, "none", 50, 0, 1.0f, NULL, 0},
    {"causal", 1000, 2, 16, 64, 3, -1, NULL, 3, 1, 1.0f, NULL, 0},
    {"causal_radius", 700, 1, 16, 32, 0, 45, "100,650", 3, 1, 1.0f, NULL, 0},
    {"causal_random_exceeds", 500, 1, 16, 32, 3, -1, "none", 40, 1, 1.0f, NULL, 0},
    {"causal_block_one", 60, 1, 8, 1, 3, -1, "7,30", 3, 1, 1.0f, NULL, 0},
    {"d1", 500, 1, 1, 32, 3, -1, NULL, 3, 0, 1.0f, NULL, 0},
    {"d64", 800, 1, 64, 64, 3, -1, NULL, 3, 0, 1.0f, NULL, 0},
    {"d128", 600, 1, 128, 32, 3, -1, NULL, 3, 0, 1.0f, NULL, 0},
    {"h3", 500, 3, 16, 32, 3, -1, NULL, 3, 0, 1.0f, NULL, 0},
    {"peaky", 1024, 2, 64, 64, 3, -1, NULL, 3, 0, 4.0f, NULL, 0},
    {"peaky_causal_radius", 700, 1, 64, 32, 0, 40, "0,350:360", 2, 1, 4.0f, NULL, 0},
    {"odd_block", 333, 1, 16, 16, 3, -1, "0,332", 4, 0, 1.0f, NULL, 0},
    {"partial_radius", 350, 2, 16, 32, 0, 40, "160:170", 2, 0, 1.0f, NULL, 0},
    {"window_covers_all", 130, 1, 16, 64, 5, -1, "none", 3, 1, 1.0f, NULL, 0},
    {"long_local", 2000, 1, 16, 32, 0, 700, "none", 3, 0, 1.0f, NULL, 0}, /* local range > one chunk */

    /* SPEC 1.1, each rule alone (no local window, no globals, no random)... */
    {"local0_random", 800, 1, 16, 32, 3, -1, "none", 2, 0, 1.0f, "local_blocks=0", 0},
    {"local0_globals", 800, 2, 16, 32, 3, -1, NULL, 3, 0, 1.0f, "local_blocks=0", 0},
    {"stride_lt_b", 1200, 1, 16, 32, 3, -1, "none", 0, 0, 1.0f, "local_blocks=0;stride=7", 0},
    {"stride_eq_b", 900, 2, 16, 32, 3, -1, "none", 0, 0, 1.0f, "local_blocks=0;stride=32", 0},
    {"stride_gt_b", 1000, 1, 16, 32, 3, -1, "none", 0, 0, 1.0f, "local_blocks=0;stride=75", 0},
    {"stride_gt_shard", 2000, 1, 16, 32, 3, -1, "none", 0, 0, 1.0f, "local_blocks=0;stride=400", 0},
    {"summary", 1000, 1, 16, 32, 3, -1, "none", 0, 0, 1.0f, "local_blocks=0;summary=64:8", 0},
    {"dilated_r1", 800, 1, 16, 32, 3, -1, "none", 0, 0, 1.0f, "local_blocks=0;dilated=128:1", 0},
    {"dilated_r_gt_b", 2000, 3, 16, 16, 3, -1, "none", 0, 0, 1.0f, "local_blocks=0;dilated=512:20", 0},
    {"dilated_partial_seg", 1000, 2, 16, 32, 3, -1, "none", 0, 0, 1.0f, "local_blocks=0;dilated=300:7", 0},
    {"dilated_pairs", 1500, 3, 16, 32, 3, -1, "none", 0, 0, 1.0f, "local_blocks=0;dilated=64:4,256:8,1024:16", 0},
    {"layout_sparse", 640, 2, 16, 16, 3, -1, "none", 0, 0, 1.0f, "local_blocks=0", CASE_LAYOUT_SPARSE},
    {"layout_empty_rows", 600, 2, 16, 16, 3, -1, "none", 0, 0, 1.0f, "local_blocks=0", CASE_LAYOUT_EMPTY_ROWS},
    /* ... with the others and with a local window ... */
    {"stride_local", 1003, 2, 16, 32, 3, -1, "none", 1, 0, 1.0f, "stride=45", 0},
    {"summary_globals", 1000, 2, 16, 32, 3, -1, "100:110", 2, 0, 1.0f, "summary=50:3", 0},
    {"summary_local1", 777, 1, 16, 64, 3, -1, "none", 0, 0, 1.0f, "local_blocks=1;summary=64:64@0:1", 0},
    {"dilated_local", 1000, 2, 16, 32, 3, -1, NULL, 2, 0, 1.0f, "local_blocks=1;dilated=96:3,200:5", 0},
    {"layout_band_union", 1000, 2, 16, 32, 3, -1, "500", 1, 0, 1.0f, "stride=101", CASE_LAYOUT_BAND},
    {"layout_sparse_random", 800, 2, 16, 16, 3, -1, NULL, 2, 0, 1.0f, "local_blocks=1", CASE_LAYOUT_SPARSE},
    /* ... per head ... */
    {"per_head", 900, 2, 16, 32, 3, -1, "none", 0, 0, 1.0f, "local_blocks=3@0:1;stride=5@1:2", 0},
    {"per_head_mixed", 1200, 3, 16, 32, 3, -1, NULL, 2, 0, 1.0f,
     "local_blocks=3@0:1;radius=40@1:2;stride=64@2:3;random=1@0:2;summary=128:4@1:3;dilated=256:4@0:1", 0},
    {"per_head_random", 700, 3, 16, 32, 3, -1, "none", 0, 0, 1.0f, "random=0@0:1;random=4@1:2;random=9@2:3", 0},
    /* ... causal ... */
    {"causal_local0", 800, 1, 16, 32, 3, -1, "none", 2, 1, 1.0f, "local_blocks=0", 0}, /* block 0 empty */
    {"causal_stride", 1000, 2, 16, 32, 3, -1, "none", 0, 1, 1.0f, "local_blocks=0;stride=9", 0},
    {"causal_summary", 1000, 1, 16, 32, 3, -1, "none", 0, 1, 1.0f, "local_blocks=0;summary=100:7", 0},
    {"causal_dilated", 1100, 2, 16, 32, 3, -1, "none", 0, 1, 1.0f, "local_blocks=0;dilated=128:4,512:32", 0},
    /* classes of several tiles and of more keys than one chunk, causal (the tiles see prefixes) */
    {"causal_stride_chunks", 1400, 2, 16, 32, 3, -1, "none", 0, 1, 1.0f, "local_blocks=0;stride=2;dilated=1200:1", 0},
    {"causal_per_head", 1000, 3, 16, 32, 3, -1, "0:5", 2, 1, 1.0f,
     "radius=33@0:1;local_blocks=5@2:3;stride=13@1:3;summary=256:16@0:2", 0},
    {"causal_layout", 640, 2, 16, 16, 3, -1, NULL, 1, 1, 1.0f, NULL, CASE_LAYOUT_SPARSE},
    {"causal_layout_empty", 600, 1, 16, 16, 3, -1, "none", 0, 1, 1.0f, "local_blocks=0", CASE_LAYOUT_EMPTY_ROWS},
    /* ... empty rows (out = 0, lse = -inf) ... */
    {"dilated_empty_rows", 700, 2, 16, 32, 3, -1, "none", 0, 0, 1.0f, "local_blocks=0;dilated=64:4", 0},
    /* ... and unions of everything */
    {"union_all", 2000, 2, 16, 32, 3, -1, "0,1000", 2, 0, 1.0f, "radius=50;stride=97;summary=256:4", 0},
    {"union_all_causal", 2000, 2, 16, 32, 3, -1, "0,1000", 2, 1, 1.0f,
     "radius=50;stride=97;summary=256:4;dilated=512:8", 0},
    {"union_sparse", 2400, 2, 16, 16, 3, -1, "0,1200", 2, 0, 1.0f, "radius=30;stride=600;summary=512:4", 0},
    {"union_peaky", 1500, 2, 64, 32, 3, -1, "700:705", 3, 0, 4.0f,
     "local_blocks=3;stride=31;summary=128:2;dilated=300:3", CASE_LAYOUT_BAND},
};
static const int spa_ncases = (int)(sizeof spa_cases / sizeof spa_cases[0]);

/* A small generator of the tests' own (splitmix64), so that the layouts
 * do not depend on the library's spa_rng. */
static inline uint64_t case_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Dense [heads][nb][nb] 0/1 layout into compressed rows (caller frees
 * with spa_layout_free). Returns 0, or -1 when out of memory. */
static inline int case_layout_from_dense(int32_t heads, int64_t nb, const unsigned char *dense, spa_layout *lay)
{
    memset(lay, 0, sizeof *lay);
    int64_t nnz = 0;
    for (int64_t x = 0; x < (int64_t)heads * nb * nb; x++) nnz += dense[x] != 0;
    lay->off = malloc((size_t)(heads * nb + 1) * sizeof *lay->off);
    lay->idx = malloc((size_t)(nnz + 1) * sizeof *lay->idx);
    if (!lay->off || !lay->idx) {
        spa_layout_free(lay);
        return -1;
    }
    int64_t k = 0;
    for (int64_t r = 0; r < (int64_t)heads * nb; r++) {
        lay->off[r] = k;
        for (int64_t b = 0; b < nb; b++)
            if (dense[r * nb + b]) lay->idx[k++] = (int32_t)b;
    }
    lay->off[heads * nb] = k;
    lay->heads = heads;
    lay->nb = nb;
    return 0;
}

/* The layout of generator id for cfg's n, block and heads. */
static inline int case_layout(int id, const spa_config *cfg, spa_layout *lay)
{
    const int64_t nb = spa_nblocks(cfg);
    const int32_t heads = id == CASE_LAYOUT_SPARSE ? cfg->heads : 1;
    unsigned char *d = calloc((size_t)(heads * nb * nb), 1);
    if (!d) return -1;
    uint64_t s = 0x5eed + (uint64_t)id;
    for (int32_t h = 0; h < heads; h++)
        for (int64_t c = 0; c < nb; c++) {
            unsigned char *row = d + (h * nb + c) * nb;
            switch (id) {
            case CASE_LAYOUT_SPARSE:
                if (case_rand(&s) % 2) row[c] = 1;
                for (int t = 0; t < 3; t++) row[case_rand(&s) % nb] = 1;
                /* dense rows: all but two (resp. ten) blocks */
                if ((h == 0 && c == 3 % nb) || (h == heads - 1 && c == nb - 1))
                    for (int64_t b = 0; b < nb; b++) row[b] = h == 0 ? b != 0 && b != 7 : b % 4 != 1 || b > 40;
                break;
            case CASE_LAYOUT_EMPTY_ROWS:
                if (c % 4 == 1) break;
                row[c] = c % 4 != 3;
                row[(c * 5 + 2) % nb] = 1;
                if (c % 3 == 0) row[(c + nb / 2) % nb] = 1;
                break;
            case CASE_LAYOUT_BAND:
                for (int64_t b = c - 1; b <= c + 1; b++)
                    if (b >= 0 && b < nb) row[b] = 1;
                row[0] = 1;
                break;
            default: break;
            }
        }
    int rc = case_layout_from_dense(heads, nb, d, lay);
    free(d);
    return rc;
}

/* Applies a "key=value;..." rules string with spa_config_add_rule. */
static inline spa_err case_rules(spa_config *cfg, const char *rules)
{
    static const char *const keys[SPA_RULE_COUNT] = {"local_blocks", "radius", "random",
                                                     "stride", "summary", "dilated"};
    char buf[512];
    for (const char *p = rules; p && *p;) {
        const char *e = strchr(p, ';'), *eq = strchr(p, '=');
        if (!e) e = p + strlen(p);
        SPA_REQUIRE(eq && eq < e && (size_t)(e - eq) < sizeof buf, SPA_ERR_USAGE, "test rules: bad '%.*s'",
                    (int)(e - p), p);
        int r = 0;
        while (r < SPA_RULE_COUNT && !(strlen(keys[r]) == (size_t)(eq - p) && !strncmp(keys[r], p, (size_t)(eq - p))))
            r++;
        SPA_REQUIRE(r < SPA_RULE_COUNT, SPA_ERR_USAGE, "test rules: unknown rule '%.*s'", (int)(eq - p), p);
        memcpy(buf, eq + 1, (size_t)(e - eq - 1));
        buf[e - eq - 1] = '\0';
        SPA_CHECK(spa_config_add_rule(cfg, (spa_rule)r, buf));
        p = *e ? e + 1 : e;
    }
    return SPA_OK;
}

/* Sets up and validates the config of a case (cfg must be freed even on
 * error). */
static inline spa_err case_config(const test_case *tc, uint64_t seed, spa_config *cfg)
{
    spa_config_init(cfg);
    cfg->n = tc->n;
    cfg->heads = tc->H;
    cfg->dim = tc->D;
    cfg->block = tc->B;
    cfg->local_blocks = tc->W;
    cfg->radius = tc->radius;
    cfg->random = tc->random;
    cfg->causal = tc->causal;
    cfg->seed = seed;
    /* SPA_TEST_FETCH_BYTES: a fetch budget, to run every case in batches */
    const char *fb = getenv("SPA_TEST_FETCH_BYTES");
    if (fb) cfg->fetch_bytes = strtoll(fb, NULL, 10);
    SPA_CHECK(spa_config_set_globals(cfg, tc->globals));
    SPA_CHECK(case_rules(cfg, tc->rules));
    if (tc->layout) {
        spa_layout lay;
        SPA_REQUIRE(case_layout(tc->layout, cfg, &lay) == 0, SPA_ERR_OTHER, "out of memory for a test layout");
        spa_err e = spa_config_set_layout(cfg, &lay);
        spa_layout_free(&lay);
        SPA_CHECK(e);
    }
    return spa_config_validate(cfg);
}

/* Whole tensors [H][n][D] of q, k, v for rows [t0, t1) (all rows: 0, n). */
static inline void case_inputs(const spa_config *cfg, float temperature, int64_t t0, int64_t t1, float *q,
                               float *k, float *v)
{
    int64_t len = t1 - t0;
    float *dst[3] = {q, k, v};
    for (int x = 0; x < 3; x++)
        for (int32_t h = 0; h < cfg->heads; h++)
            spa_synth(cfg->seed + 17, temperature, x, h, t0, t1, cfg->dim, dst[x] + (int64_t)h * len * cfg->dim);
}

/* Compares out/lse ([H][rows][D], [H][rows]) with the reference.
 * Error of out is relative to the reference's largest magnitude. A row
 * the reference leaves empty (lse = -inf) must be exactly out = 0,
 * lse = -inf. Prints maxdiff and the first values side by side on
 * failure. Returns 1 if ok. */
static inline int case_compare(const char *name, const spa_config *cfg, int64_t r0, int64_t rows,
                               const float *out, const float *lse, const float *rout, const float *rlse,
                               double tol)
{
    double maxref = 0.0, maxdiff = 0.0, maxl = 0.0;
    int64_t worst = 0, nan = 0, empty_bad = 0, first_empty_bad = -1;
    const int64_t D = cfg->dim, total = (int64_t)cfg->heads * rows;
    for (int64_t r = 0; r < total; r++) {
        if (rlse[r] == -INFINITY) { /* empty S(i) */
            int bad = lse[r] != -INFINITY;
            for (int64_t d = 0; d < D; d++) bad |= out[r * D + d] != 0.0f || rout[r * D + d] != 0.0f;
            if (bad && first_empty_bad < 0) first_empty_bad = r;
            empty_bad += bad;
            continue;
        }
        for (int64_t i = r * D; i < (r + 1) * D; i++) {
            double d = fabs((double)out[i] - rout[i]);
            if (!isfinite(out[i])) nan++;
            if (fabs(rout[i]) > maxref) maxref = fabs(rout[i]);
            if (d > maxdiff) maxdiff = d, worst = i;
        }
        double d = fabs((double)lse[r] - rlse[r]) / fmax(1.0, fabs(rlse[r]));
        if (!isfinite(lse[r])) nan++;
        if (d > maxl) maxl = d;
    }
    double rel = maxdiff / fmax(maxref, 1e-30);
    int ok = nan == 0 && empty_bad == 0 && rel <= tol && maxl <= tol;
    if (!ok && total > 0) {
        int64_t row = worst / D;
        printf("FAIL %-24s rows [%lld, %lld): maxdiff %.3e (rel %.3e) lse %.3e nonfinite %lld bad empty rows %lld\n",
               name, (long long)r0, (long long)(r0 + rows), maxdiff, rel, maxl, (long long)nan, (long long)empty_bad);
        printf("     worst at head %lld row %lld: got / want (lse %+.7g / %+.7g)\n", (long long)(row / rows),
               (long long)(r0 + row % rows), lse[row], rlse[row]);
        for (int64_t d = 0; d < D && d < 6; d++)
            printf("       %+.7f  %+.7f\n", out[row * D + d], rout[row * D + d]);
        if (first_empty_bad >= 0)
            printf("     empty row: head %lld row %lld: lse %g (want -inf), out[0] %g, reference out[0] %g\n",
                   (long long)(first_empty_bad / rows), (long long)(r0 + first_empty_bad % rows),
                   lse[first_empty_bad], out[first_empty_bad * D], rout[first_empty_bad * D]);
    }
    return ok;
}

/* The rows with an empty S(i), straight from spa_pattern_attends, must be
 * out = 0 and lse = -inf exactly, and the others have a finite lse; so a
 * reference that got emptiness wrong cannot hide it. Counts the empty rows
 * into *nempty. Returns 1 if ok. */
static inline int case_check_empty(const char *name, const spa_config *cfg, int64_t r0, int64_t rows,
                                   const float *out, const float *lse, int64_t *nempty)
{
    const int64_t D = cfg->dim, n = cfg->n;
    int64_t bad = 0;
    for (int32_t h = 0; h < cfg->heads; h++)
        for (int64_t i = r0; i < r0 + rows; i++) {
            int empty = 1;
            for (int64_t j = i; j >= 0 && empty; j--) empty = !spa_pattern_attends(cfg, h, i, j);
            for (int64_t j = i + 1; j < n && empty; j++) empty = !spa_pattern_attends(cfg, h, i, j);
            const int64_t r = (int64_t)h * rows + (i - r0);
            int ok = empty ? lse[r] == -INFINITY : isfinite(lse[r]);
            for (int64_t d = 0; d < D && empty; d++) ok &= out[r * D + d] == 0.0f;
            *nempty += empty;
            if (!ok && bad++ < 3)
                printf("FAIL %-24s head %d row %lld: S(i) %s, but lse %g out[0] %g\n", name, h, (long long)i,
                       empty ? "empty" : "not empty", lse[r], out[r * D]);
        }
    return bad == 0;
}

#endif
