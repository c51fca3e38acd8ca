/* reference.c - the dense masked oracle, O(n^2), for tests only.
 *
 * It decides j in S(i) token by token from the SPEC's rules, with its own
 * code for every rule and only the random draw shared with the plan, and
 * accumulates in double. It never uses the kernel's segment
 * lists, so a bug there cannot hide in both.
 */
#include "spa_impl.h"

#include <math.h>
#include <string.h>

spa_err spa_reference(const spa_config *cfg, const float *q, const float *k, const float *v,
                      int64_t r0, int64_t r1, float *out, float *lse)
{
    const int64_t n = cfg->n, B = cfg->block, nb = spa_nblocks(cfg);
    const int32_t H = cfg->heads, D = cfg->dim, R = cfg->random_max;
    const int64_t rows = r1 - r0;
    unsigned char *isg = calloc((size_t)n, 1);
    int32_t *rb = malloc((size_t)nb * (R + 1) * sizeof *rb);
    int32_t *rcount = malloc((size_t)nb * sizeof *rcount);
    double *sc = malloc((size_t)n * sizeof *sc);
    if (!isg || !rb || !rcount || !sc) {
        free(isg), free(rb), free(rcount), free(sc);
        SPA_FAIL(SPA_ERR_OTHER, "out of memory in the reference");
    }
    for (int64_t g = 0; g < cfg->nglobals; g++) isg[cfg->globals[g]] = 1;

    for (int32_t h = 0; h < H; h++) {
        const spa_head_rules *hr = &cfg->hr[h];
        const spa_layout *lay = &cfg->layout;
        const int64_t lrow = lay->heads == 1 ? 0 : (int64_t)h * nb;
        for (int64_t c = 0; c < nb; c++) rcount[c] = spa_pattern_random_blocks(cfg, h, c, rb + c * (R + 1));
        const float *qh = q + (int64_t)h * n * D, *kh = k + (int64_t)h * n * D, *vh = v + (int64_t)h * n * D;
        for (int64_t i = r0; i < r1; i++) {
            const int64_t ci = i / B;
            double mx = -INFINITY;
            for (int64_t j = 0; j < n; j++) {
                int in = 0;
                const int64_t cj = j / B;
                if (cfg->causal && j > i) in = 0;
                else if (isg[i] || isg[j]) in = 1;
                else {
                    if (hr->local_blocks > 0) in |= llabs(ci - cj) <= (hr->local_blocks - 1) / 2;
                    if (hr->radius >= 0) in |= llabs(i - j) <= hr->radius;
                    if (hr->sum_l) in |= j % hr->sum_l >= hr->sum_l - hr->sum_c;
                    if (hr->stride) in |= llabs(i - j) % hr->stride == 0;
                    for (int p = 0; p < hr->ndilated; p++) {
                        int64_t w = hr->dil_w[p], r = hr->dil_r[p], o = h % r;
                        in |= i / w == j / w && (i - i / w * w) % r == o && (j - j / w * w) % r == o;
                    }
                    for (int64_t t = lay->heads ? lay->off[lrow + ci] : 0; lay->heads && t < lay->off[lrow + ci + 1]; t++)
                        in |= lay->idx[t] == cj;
                    for (int32_t t = 0; t < rcount[ci]; t++) in |= rb[ci * (R + 1) + t] == cj;
                }
                if (!in) {
                    sc[j] = -INFINITY;
                    continue;
                }
                double dot = 0.0;
                for (int32_t d = 0; d < D; d++) dot += (double)qh[i * D + d] * (double)kh[j * D + d];
                sc[j] = dot * (double)cfg->scale;
                if (sc[j] > mx) mx = sc[j];
            }
            double sum = 0.0, acc[D];
            memset(acc, 0, sizeof acc);
            for (int64_t j = 0; j < n; j++) {
                if (sc[j] == -INFINITY) continue;
                double p = exp(sc[j] - mx);
                sum += p;
                for (int32_t d = 0; d < D; d++) acc[d] += p * (double)vh[j * D + d];
            }
            /* an empty S(i) gives out = 0 and lse = -inf */
            for (int32_t d = 0; d < D; d++)
                out[((int64_t)h * rows + (i - r0)) * D + d] = sum > 0.0 ? (float)(acc[d] / sum) : 0.0f;
            lse[(int64_t)h * rows + (i - r0)] = sum > 0.0 ? (float)(mx + log(sum)) : -INFINITY;
        }
    }
    free(isg), free(rb), free(rcount), free(sc);
    return SPA_OK;
}
