/* reference.c - the dense masked oracle, O(n^2), for tests only.
 *
 * It decides j in S(i) token by token from the SPEC's rules, with its own
 * code for every rule (ref_attends, the one place each rule is written
 * here) and only the random draw shared with the plan, and accumulates in
 * double. It never uses the kernel's segment lists, so a bug there cannot
 * hide in both. spa_reference gives the forward pass, spa_reference_grad
 * the backward one (FlashAttention-2's equations, in double).
 */
#include "spa_impl.h"

#include <math.h>
#include <string.h>

/* The rules of one head, set up once: its random blocks per query block. */
typedef struct ref_head {
    const spa_config *cfg;
    const spa_head_rules *hr;
    int32_t h;
    const unsigned char *isg; /* [n] 1 at the global tokens */
    int32_t *rb, *rcount;     /* [nb][R + 1], [nb] */
} ref_head;

static void ref_head_init(ref_head *x, const spa_config *cfg, int32_t h, const unsigned char *isg, int32_t *rb,
                          int32_t *rcount)
{
    const int64_t nb = spa_nblocks(cfg);
    const int32_t R = cfg->random_max;
    x->cfg = cfg;
    x->hr = &cfg->hr[h];
    x->h = h;
    x->isg = isg;
    x->rb = rb;
    x->rcount = rcount;
    for (int64_t c = 0; c < nb; c++) rcount[c] = spa_pattern_random_blocks(cfg, h, c, rb + c * (R + 1));
}

/* j in S(i), rule by rule from SPEC 1 and 1.1. */
static int ref_attends(const ref_head *x, int64_t i, int64_t j)
{
    const spa_config *cfg = x->cfg;
    const spa_head_rules *hr = x->hr;
    const spa_layout *lay = &cfg->layout;
    const int64_t B = cfg->block, nb = spa_nblocks(cfg), ci = i / B, cj = j / B;
    const int32_t R = cfg->random_max;
    if (cfg->causal && j > i) return 0;
    if (x->isg[i] || x->isg[j]) return 1;
    int in = 0;
    if (hr->local_blocks > 0) in |= llabs(ci - cj) <= (hr->local_blocks - 1) / 2;
    if (hr->radius >= 0) in |= llabs(i - j) <= hr->radius;
    if (hr->sum_l) in |= j % hr->sum_l >= hr->sum_l - hr->sum_c;
    if (hr->stride) in |= llabs(i - j) % hr->stride == 0;
    for (int p = 0; p < hr->ndilated; p++) {
        int64_t w = hr->dil_w[p], r = hr->dil_r[p], o = x->h % r;
        in |= i / w == j / w && (i - i / w * w) % r == o && (j - j / w * w) % r == o;
    }
    if (lay->heads) {
        const int64_t lrow = (lay->heads == 1 ? 0 : (int64_t)x->h * nb) + ci;
        for (int64_t t = lay->off[lrow]; t < lay->off[lrow + 1]; t++) in |= lay->idx[t] == cj;
    }
    for (int32_t t = 0; t < x->rcount[ci]; t++) in |= x->rb[ci * (R + 1) + t] == cj;
    return in;
}

/* Scratch of the oracle: the global flags and one head's random blocks. */
typedef struct ref_ws {
    unsigned char *isg;
    int32_t *rb, *rcount;
} ref_ws;

static spa_err ref_ws_create(const spa_config *cfg, ref_ws *w)
{
    const int64_t nb = spa_nblocks(cfg);
    w->isg = calloc((size_t)cfg->n, 1);
    w->rb = malloc((size_t)nb * (cfg->random_max + 1) * sizeof *w->rb);
    w->rcount = malloc((size_t)nb * sizeof *w->rcount);
    if (!w->isg || !w->rb || !w->rcount) {
        free(w->isg), free(w->rb), free(w->rcount);
        SPA_FAIL(SPA_ERR_OTHER, "out of memory in the reference");
    }
    for (int64_t g = 0; g < cfg->nglobals; g++) w->isg[cfg->globals[g]] = 1;
    return SPA_OK;
}

static void ref_ws_free(ref_ws *w) { free(w->isg), free(w->rb), free(w->rcount); }

/* Scores of row i against every key, masked: sc[j] = s q_i.k_j or -inf.
 * Returns their maximum (-inf when S(i) is empty). */
static double ref_scores(const ref_head *x, const float *qh, const float *kh, int64_t i, double *sc)
{
    const int64_t n = x->cfg->n;
    const int32_t D = x->cfg->dim;
    double mx = -INFINITY;
    for (int64_t j = 0; j < n; j++) {
        if (!ref_attends(x, i, j)) {
            sc[j] = -INFINITY;
            continue;
        }
        double dot = 0.0;
        for (int32_t d = 0; d < D; d++) dot += (double)qh[i * D + d] * (double)kh[j * D + d];
        sc[j] = dot * (double)x->cfg->scale;
        if (sc[j] > mx) mx = sc[j];
    }
    return mx;
}

spa_err spa_reference(const spa_config *cfg, const float *q, const float *k, const float *v,
                      int64_t r0, int64_t r1, float *out, float *lse)
{
    const int64_t n = cfg->n;
    const int32_t H = cfg->heads, D = cfg->dim;
    const int64_t rows = r1 - r0;
    ref_ws w;
    SPA_CHECK(ref_ws_create(cfg, &w));
    double *sc = malloc((size_t)(n + 1) * sizeof *sc);
    if (!sc) {
        ref_ws_free(&w);
        SPA_FAIL(SPA_ERR_OTHER, "out of memory in the reference");
    }

    for (int32_t h = 0; h < H; h++) {
        ref_head x;
        ref_head_init(&x, cfg, h, w.isg, w.rb, w.rcount);
        const float *qh = q + (int64_t)h * n * D, *kh = k + (int64_t)h * n * D, *vh = v + (int64_t)h * n * D;
        for (int64_t i = r0; i < r1; i++) {
            double mx = ref_scores(&x, qh, kh, i, sc);
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
    ref_ws_free(&w);
    free(sc);
    return SPA_OK;
}

spa_err spa_reference_grad(const spa_config *cfg, const float *q, const float *k, const float *v,
                           const float *dout, float *dq, float *dk, float *dv)
{
    /* q, k, v, dout, dq, dk, dv: [H][n][D]. Per row i, in double:
     *   P_ij = softmax_j(s q_i.k_j) over S(i);  Dl_i = dout_i . out_i
     *   dS_ij = P_ij (dout_i . v_j - Dl_i)
     *   dq_i = s sum_j dS_ij k_j;  dk_j += s dS_ij q_i;  dv_j += P_ij dout_i */
    const int64_t n = cfg->n;
    const int32_t H = cfg->heads, D = cfg->dim;
    const double s = cfg->scale;
    ref_ws w;
    SPA_CHECK(ref_ws_create(cfg, &w));
    double *sc = malloc((size_t)(n + 1) * sizeof *sc);
    double *gk = calloc((size_t)(n * D + 1), sizeof *gk), *gv = calloc((size_t)(n * D + 1), sizeof *gv);
    if (!sc || !gk || !gv) {
        ref_ws_free(&w);
        free(sc), free(gk), free(gv);
        SPA_FAIL(SPA_ERR_OTHER, "out of memory in the reference");
    }

    for (int32_t h = 0; h < H; h++) {
        ref_head x;
        ref_head_init(&x, cfg, h, w.isg, w.rb, w.rcount);
        const int64_t off = (int64_t)h * n * D;
        const float *qh = q + off, *kh = k + off, *vh = v + off, *doh = dout + off;
        memset(gk, 0, (size_t)(n * D) * sizeof *gk);
        memset(gv, 0, (size_t)(n * D) * sizeof *gv);
        for (int64_t i = 0; i < n; i++) {
            const float *qi = qh + i * D, *doi = doh + i * D;
            double mx = ref_scores(&x, qh, kh, i, sc), sum = 0.0, out[D], gq[D], dl = 0.0;
            memset(out, 0, sizeof out);
            memset(gq, 0, sizeof gq);
            /* pass 1: probabilities (in sc) and out_i */
            for (int64_t j = 0; j < n; j++) {
                if (sc[j] == -INFINITY) continue;
                sum += sc[j] = exp(sc[j] - mx);
            }
            for (int64_t j = 0; j < n && sum > 0.0; j++) {
                if (sc[j] == -INFINITY) continue;
                sc[j] /= sum;
                for (int32_t d = 0; d < D; d++) out[d] += sc[j] * (double)vh[j * D + d];
            }
            for (int32_t d = 0; d < D; d++) dl += (double)doi[d] * out[d];
            /* pass 2: dS and the three gradients; an empty S(i) adds nothing */
            for (int64_t j = 0; j < n && sum > 0.0; j++) {
                if (sc[j] == -INFINITY) continue;
                double dp = 0.0;
                for (int32_t d = 0; d < D; d++) dp += (double)doi[d] * (double)vh[j * D + d];
                double ds = sc[j] * (dp - dl);
                for (int32_t d = 0; d < D; d++) {
                    gq[d] += s * ds * (double)kh[j * D + d];
                    gk[j * D + d] += s * ds * (double)qi[d];
                    gv[j * D + d] += sc[j] * (double)doi[d];
                }
            }
            for (int32_t d = 0; d < D; d++) dq[off + i * D + d] = (float)gq[d];
        }
        for (int64_t t = 0; t < n * D; t++) dk[off + t] = (float)gk[t], dv[off + t] = (float)gv[t];
    }
    ref_ws_free(&w);
    free(sc), free(gk), free(gv);
    return SPA_OK;
}
