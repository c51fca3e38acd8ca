/* dist_check.h - one distributed run of a config at the launched rank
 * count, checked against the dense reference and against a one-rank run.
 * Shared by test_dist.c and test_layouts.c.
 *
 * Each rank checks its own rows; the ranks agree through an Allreduce.
 *   - out and lse within 1e-5 of the dense reference; rows with an empty
 *     S(i) exactly out = 0, lse = -inf;
 *   - rows outside the spread set (G and the rows of spread blocks, i.e.
 *     plan->spread, which every rank lists whole) bit-identical to a
 *     one-rank run, spread rows within 1e-6 relative;
 *   - the spread list the same at P ranks and at one;
 *   - measured bytes equal to the plan's, and the wanted transport.
 * With dist_exact (spa_ctx_set_exact on both contexts) the spread rows
 * too are bit-identical to one rank's, and their merge moves maxima and
 * 128-bit sums instead of double partials. */
#ifndef SPA_TEST_DIST_CHECK_H
#define SPA_TEST_DIST_CHECK_H

#include "cases.h"

static int dist_rank, dist_nranks;
static int dist_expect_fallback; /* one-sided MPI is known to fail here: want p2p */
static int dist_exact;           /* spa_ctx_set_exact */

static int dist_want_rma(int p2p) { return !p2p && !dist_expect_fallback; }

/* cfg is validated; temperature scales q and k (1 = near-uniform). */
static int dist_check(const char *name, const spa_config *cfg, float temperature, int p2p)
{
    if (p2p) setenv("SPA_RANDOM_TRANSPORT", "p2p", 1);
    else unsetenv("SPA_RANDOM_TRANSPORT");
    const int64_t n = cfg->n, H = cfg->heads, D = cfg->dim;
    const int rank = dist_rank;
    int ok = 1;

    /* whole inputs (small n), then this rank's shard of them */
    float *q = spa_alloc((size_t)(H * n * D) * 4), *k = spa_alloc((size_t)(H * n * D) * 4);
    float *v = spa_alloc((size_t)(H * n * D) * 4);
    case_inputs(cfg, temperature, 0, n, q, k, v);

    spa_ctx ctx = NULL;
    spa_err ce = spa_ctx_create(MPI_COMM_WORLD, cfg, 1, &ctx);
    if (ce != SPA_OK) {
        if (rank == 0) printf("FAIL %s: create: %s\n", name, spa_last_error());
        spa_free(q), spa_free(k), spa_free(v);
        return 0;
    }
    spa_ctx_set_exact(ctx, dist_exact);
    int64_t t0, t1;
    spa_ctx_shard(ctx, &t0, &t1);
    int64_t rows = t1 - t0;
    float *sq = spa_alloc((size_t)(H * rows * D + 1) * 4), *sk = spa_alloc((size_t)(H * rows * D + 1) * 4);
    float *sv = spa_alloc((size_t)(H * rows * D + 1) * 4);
    for (int64_t h = 0; h < H; h++) {
        memcpy(sq + h * rows * D, q + (h * n + t0) * D, (size_t)(rows * D) * 4);
        memcpy(sk + h * rows * D, k + (h * n + t0) * D, (size_t)(rows * D) * 4);
        memcpy(sv + h * rows * D, v + (h * n + t0) * D, (size_t)(rows * D) * 4);
    }
    /* with one-sided MPI, K and V go straight into the window (no copy) */
    float *wk, *wv, *rk = sk, *rv = sv;
    spa_ctx_kv_buffers(ctx, &wk, &wv);
    if ((wk != NULL) != (dist_want_rma(p2p))) {
        printf("FAIL %s rank %d: window buffers %s\n", name, rank, wk ? "present" : "missing");
        ok = 0;
    }
    if (wk) {
        memcpy(wk, sk, (size_t)(H * rows * D) * 4);
        memcpy(wv, sv, (size_t)(H * rows * D) * 4);
        rk = wk, rv = wv;
    }
    float *out = spa_alloc((size_t)(H * rows * D + 1) * 4), *lse = spa_alloc((size_t)(H * rows + 1) * 4);
    spa_stats st;
    memset(&st, 0, sizeof st);
    /* two runs on one context: the second must not see stale state */
    for (int rep = 0; rep < 2; rep++) {
        spa_err e = spa_ctx_run(ctx, sq, rk, rv, out, lse, &st);
        if (e != SPA_OK) {
            printf("FAIL %s rank %d: run: %s\n", name, rank, spa_last_error());
            ok = 0;
        }
    }
    /* the checksum is the sum of the final out (the runtime sums each
     * block as its task ends, and again the rows written after it: spread
     * rows, the residue merge) */
    double sums[2] = {0.0, 0.0}, gsums[2];
    for (int64_t i = 0; i < H * rows * D; i++) sums[0] += out[i], sums[1] += fabs((double)out[i]);
    MPI_Allreduce(sums, gsums, 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    if (!(fabs(st.checksum - gsums[0]) <= 1e-10 * gsums[1] + 1e-300)) {
        printf("FAIL %s rank %d: checksum %.17g, sum of out %.17g\n", name, rank, st.checksum, gsums[0]);
        ok = 0;
    }
    const spa_commplan *pl = spa_ctx_plan(ctx);
    /* the plan counts the merge of double partials (P > 1); exact mode's is
     * the maxima (and max |v|) as float, then 128-bit sums */
    const int64_t NS = pl->nspread, merged = dist_nranks > 1 && NS > 0;
    const int64_t want_global = pl->bytes_global - (dist_exact && merged ? NS * (D + 2) * 8 : 0) +
                                (dist_exact && merged ? (NS + 1) * 4 + NS * (D + 2) * 16 : 0);
    if (st.bytes_halo != pl->bytes_halo || st.bytes_rma != pl->bytes_rma || st.bytes_global != want_global) {
        printf("FAIL %s rank %d: bytes halo %lld/%lld rma %lld/%lld global %lld/%lld (measured/plan)\n", name, rank,
               (long long)st.bytes_halo, (long long)pl->bytes_halo, (long long)st.bytes_rma, (long long)pl->bytes_rma,
               (long long)st.bytes_global, (long long)want_global);
        ok = 0;
    }
    int want_rma = dist_want_rma(p2p);
    if (st.rma != want_rma) {
        printf("FAIL %s rank %d: transport %s, wanted %s\n", name, rank, st.rma ? "rma" : "p2p",
               want_rma ? "rma" : "p2p");
        ok = 0;
    }

    /* against the dense reference, and the empty rows from the rules */
    float *rout = spa_alloc((size_t)(H * rows * D + 1) * 4), *rlse = spa_alloc((size_t)(H * rows + 1) * 4);
    if (spa_reference(cfg, q, k, v, t0, t1, rout, rlse) != SPA_OK) {
        printf("FAIL %s: reference: %s\n", name, spa_last_error());
        ok = 0;
    }
    ok &= case_compare(name, cfg, t0, rows, out, lse, rout, rlse, 1e-5);
    int64_t nempty = 0;
    ok &= case_check_empty(name, cfg, t0, rows, out, lse, &nempty);

    /* against one rank: bit for bit outside the spread rows */
    spa_ctx one = NULL;
    float *oout = spa_alloc((size_t)(H * n * D) * 4), *olse = spa_alloc((size_t)(H * n) * 4);
    unsigned char *spread = calloc((size_t)(H * n), 1);
    for (int64_t s = 0; s < pl->nspread; s++)
        if (pl->spread[s].h >= 0 && pl->spread[s].h < H && pl->spread[s].tok >= 0 && pl->spread[s].tok < n)
            spread[pl->spread[s].h * n + pl->spread[s].tok] = 1;
    if (spa_ctx_create(MPI_COMM_SELF, cfg, 1, &one) == SPA_OK) spa_ctx_set_exact(one, dist_exact);
    if (!one || spa_ctx_run(one, q, k, v, oout, olse, NULL) != SPA_OK) {
        printf("FAIL %s: one-rank run: %s\n", name, spa_last_error());
        ok = 0;
    } else {
        const spa_commplan *p1 = spa_ctx_plan(one);
        if (p1->nspread != pl->nspread ||
            (pl->nspread && memcmp(p1->spread, pl->spread, (size_t)pl->nspread * sizeof *pl->spread))) {
            printf("FAIL %s rank %d: spread rows at one rank (%lld) differ from P ranks (%lld)\n", name, rank,
                   (long long)p1->nspread, (long long)pl->nspread);
            ok = 0;
        }
    }
    spa_ctx_destroy(&one);
    int64_t bitdiff = 0, gbad = 0, first = -1;
    double gworst = 0.0;
    /* Spread rows sum over every key, split differently per rank count.
     * Their probabilities and sums are in double, but each score is a float32
     * GEMM result whose rounding (an ulp of the logit) moves the output by
     * about that much; logits grow with temperature^2, and so does the bound. */
    double gtol = 1e-6 * fmax(1.0, (double)temperature * temperature);
    for (int64_t h = 0; h < H; h++)
        for (int64_t i = t0; i < t1; i++) {
            const float *a = out + (h * rows + i - t0) * D, *b = oout + (h * n + i) * D;
            if (!spread[h * n + i] || dist_exact) {
                int d = memcmp(a, b, (size_t)D * 4) != 0 || memcmp(&lse[h * rows + i - t0], &olse[h * n + i], 4) != 0;
                if (d && first < 0) first = h * n + i;
                bitdiff += d;
            } else {
                for (int64_t d = 0; d < D; d++) {
                    double e = fabs((double)a[d] - b[d]) / fmax(1.0, fabs(b[d]));
                    gbad += !(e <= gtol);
                    gworst = e > gworst ? e : gworst;
                }
            }
        }
    if (bitdiff || gbad) {
        printf("FAIL %s rank %d: %lld rows differ from one rank in bits, %lld spread values beyond %.0e (worst %.2e)\n",
               name, rank, (long long)bitdiff, (long long)gbad, gtol, gworst);
        if (first >= 0) {
            int64_t h = first / n, i = first % n;
            printf("     first: head %lld row %lld: lse %+.9g / %+.9g, out[0] %+.9g / %+.9g (P ranks / one)\n",
                   (long long)h, (long long)i, lse[h * rows + i - t0], olse[first], out[(h * rows + i - t0) * D],
                   oout[first * D]);
        }
        ok = 0;
    }
    const int64_t nspread = pl->nspread, nfetch = pl->nfetch;
    spa_ctx_destroy(&ctx);
    spa_free(q), spa_free(k), spa_free(v), spa_free(sq), spa_free(sk), spa_free(sv), spa_free(out), spa_free(lse);
    spa_free(rout), spa_free(rlse), spa_free(oout), spa_free(olse);
    free(spread);

    int all;
    int64_t empties, fetches;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(&nempty, &empties, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(&nfetch, &fetches, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf("%s %-26s P=%d %s  spread rows %lld, empty rows %lld, fetched blocks %lld%s\n", all ? "ok  " : "FAIL",
               name, dist_nranks, p2p ? "p2p" : "rma", (long long)nspread, (long long)empties, (long long)fetches,
               dist_exact ? " (exact)" : "");
    return all;
}

#endif
