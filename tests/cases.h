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
} test_case;

/* Together they cover: n a multiple of B and not, n < B, n = 1, B = 1;
 * W = 1, 3, 5; radius 0, 1, B-1, B, 3B+7; globals none, default, middle,
 * scattered, every token; random 0, 1, 3, more than eligible; causal on and
 * off; D = 1, 16, 64, 128; H = 1, 3; peaky attention (|s q.k| up to ~30). */
static const test_case spa_cases[] = {
    {"default", 1024, 2, 16, 64, 3, -1, NULL, 3, 0, 1.0f},
    {"n_not_multiple", 1000, 2, 16, 64, 3, -1, NULL, 3, 0, 1.0f},
    {"n_below_block", 50, 1, 16, 64, 3, -1, NULL, 3, 0, 1.0f},
    {"n_one", 1, 1, 16, 64, 3, -1, NULL, 3, 0, 1.0f},
    {"block_one", 40, 2, 8, 1, 3, -1, "5", 2, 0, 1.0f},
    {"w1", 640, 1, 16, 32, 1, -1, NULL, 3, 0, 1.0f},
    {"w5", 700, 1, 16, 32, 5, -1, NULL, 3, 0, 1.0f},
    {"radius0", 512, 1, 16, 32, 0, 0, "none", 2, 0, 1.0f},
    {"radius1", 512, 1, 16, 32, 0, 1, NULL, 2, 0, 1.0f},
    {"radius_b_minus_1", 600, 1, 16, 32, 0, 31, NULL, 2, 0, 1.0f},
    {"radius_b", 600, 2, 16, 32, 0, 32, "300", 2, 0, 1.0f},
    {"radius_3b_plus_7", 900, 1, 16, 32, 0, 103, NULL, 2, 0, 1.0f},
    {"globals_none", 800, 1, 16, 32, 3, -1, "none", 3, 0, 1.0f},
    {"globals_middle", 800, 1, 16, 32, 3, -1, "400:420", 3, 0, 1.0f},
    {"globals_scattered", 999, 2, 16, 32, 3, -1, "3,77,400,401,998", 3, 0, 1.0f},
    {"globals_all", 200, 1, 16, 32, 3, -1, "0:200", 3, 0, 1.0f},
    {"random0", 800, 1, 16, 32, 3, -1, NULL, 0, 0, 1.0f},
    {"random1", 800, 1, 16, 32, 3, -1, NULL, 1, 0, 1.0f},
    {"random_exceeds", 300, 2, 16, 32, 3, -1, "none", 50, 0, 1.0f},
    {"causal", 1000, 2, 16, 64, 3, -1, NULL, 3, 1, 1.0f},
    {"causal_radius", 700, 1, 16, 32, 0, 45, "100,650", 3, 1, 1.0f},
    {"causal_random_exceeds", 500, 1, 16, 32, 3, -1, "none", 40, 1, 1.0f},
    {"causal_block_one", 60, 1, 8, 1, 3, -1, "7,30", 3, 1, 1.0f},
    {"d1", 500, 1, 1, 32, 3, -1, NULL, 3, 0, 1.0f},
    {"d64", 800, 1, 64, 64, 3, -1, NULL, 3, 0, 1.0f},
    {"d128", 600, 1, 128, 32, 3, -1, NULL, 3, 0, 1.0f},
    {"h3", 500, 3, 16, 32, 3, -1, NULL, 3, 0, 1.0f},
    {"peaky", 1024, 2, 64, 64, 3, -1, NULL, 3, 0, 4.0f},
    {"peaky_causal_radius", 700, 1, 64, 32, 0, 40, "0,350:360", 2, 1, 4.0f},
    {"odd_block", 333, 1, 16, 16, 3, -1, "0,332", 4, 0, 1.0f},
    {"partial_radius", 350, 2, 16, 32, 0, 40, "160:170", 2, 0, 1.0f},
    {"window_covers_all", 130, 1, 16, 64, 5, -1, "none", 3, 1, 1.0f},
    {"long_local", 2000, 1, 16, 32, 0, 700, "none", 3, 0, 1.0f}, /* local range > one chunk */
};
static const int spa_ncases = (int)(sizeof spa_cases / sizeof spa_cases[0]);

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
    SPA_CHECK(spa_config_set_globals(cfg, tc->globals));
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
 * Error of out is relative to the reference's largest magnitude. Prints
 * maxdiff and the first values side by side on failure. Returns 1 if ok. */
static inline int case_compare(const char *name, const spa_config *cfg, int64_t r0, int64_t rows,
                               const float *out, const float *lse, const float *rout, const float *rlse,
                               double tol)
{
    double maxref = 0.0, maxdiff = 0.0, maxl = 0.0;
    int64_t worst = 0, nan = 0;
    const int64_t D = cfg->dim, total = (int64_t)cfg->heads * rows;
    for (int64_t i = 0; i < total * D; i++) {
        double d = fabs((double)out[i] - rout[i]);
        if (!isfinite(out[i])) nan++;
        if (fabs(rout[i]) > maxref) maxref = fabs(rout[i]);
        if (d > maxdiff) maxdiff = d, worst = i;
    }
    for (int64_t i = 0; i < total; i++) {
        double d = fabs((double)lse[i] - rlse[i]) / fmax(1.0, fabs(rlse[i]));
        if (!isfinite(lse[i])) nan++;
        if (d > maxl) maxl = d;
    }
    double rel = maxdiff / fmax(maxref, 1e-30);
    int ok = nan == 0 && rel <= tol && maxl <= tol;
    if (!ok && total > 0) {
        int64_t row = worst / D;
        printf("FAIL %-24s rows [%lld, %lld): maxdiff %.3e (rel %.3e) lse %.3e nonfinite %lld\n", name,
               (long long)r0, (long long)(r0 + rows), maxdiff, rel, maxl, (long long)nan);
        printf("     worst at head %lld row %lld: got / want\n", (long long)(row / rows), (long long)(r0 + row % rows));
        for (int64_t d = 0; d < D && d < 6; d++)
            printf("       %+.7f  %+.7f\n", out[row * D + d], rout[row * D + d]);
    }
    return ok;
}

#endif
