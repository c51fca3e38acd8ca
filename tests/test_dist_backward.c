/* test_dist_backward.c - the distributed backward pass (spa_ctx_backward)
 * at the rank count it is launched with, over every shared case:
 *   - out, lse from spa_ctx_run, then dq, dk, dv, gathered onto rank 0 and
 *     compared with the dense double oracle spa_reference_grad: max abs
 *     error <= 1e-4 of the largest magnitude of that gradient tensor;
 *   - the bytes each rank sends back equal the plan's mirror of what it
 *     received forward (halo and fetched: the plan's bytes_halo and
 *     bytes_rma; gathered: K, V of the gathered tokens and q of the spread
 *     rows it does not own), and K, V travel as in the forward;
 *   - the wanted transport of the fetched runs;
 *   - a second pass on the same context gives the same bits (no stale
 *     state), and at 2 ranks a 2-thread context the same bits as 1 thread;
 *   - against a one-rank context: given the same out and lse (gathered),
 *     dq outside the spread rows bit-identical (dk, dv: the max difference
 *     printed); with --exact, from the one-rank context's own forward run,
 *     out, lse, dq, dk and dv all bit-identical.
 * Options: --expect-fallback (one-sided MPI is known to fail: want p2p),
 * --p2p (SPA_RANDOM_TRANSPORT=p2p), --no-overlap (spa_ctx_set_overlap(ctx,
 * 0): each transfer completes before the blocks that need it), --exact
 * (spa_ctx_set_exact: int64_t sinks, every backward byte count
 * doubles), --bytes NAME (print each rank's bytes, plan and measured, for
 * case NAME). */
#include "cases.h"

static int rank, nranks, expect_fallback, want_p2p, no_overlap, exact;
static const char *show_bytes;

static float *falloc(int64_t count) { return spa_alloc((size_t)(count + 1) * sizeof(float)); }

/* A shard [H][rows][D] of every rank onto rank 0's whole [H][n][D]
 * (D = 1 for lse). */
static void gather_whole(const spa_config *cfg, int64_t D, const float *shard, float *whole)
{
    const int64_t n = cfg->n;
    int *cnt = calloc((size_t)nranks, sizeof(int)), *dsp = calloc((size_t)nranks, sizeof(int));
    for (int r = 0; r < nranks; r++) {
        int64_t b0, b1, t0, t1;
        spa_partition(cfg, nranks, r, &b0, &b1, &t0, &t1);
        cnt[r] = (int)((t1 - t0) * D), dsp[r] = (int)(t0 * D);
    }
    for (int32_t h = 0; h < cfg->heads; h++)
        /* a rank without rows may hold no buffer; only rank 0 holds whole */
        MPI_Gatherv(cnt[rank] ? shard + (int64_t)h * cnt[rank] : shard, cnt[rank], MPI_FLOAT,
                    whole ? whole + h * n * D : NULL, cnt, dsp, MPI_FLOAT, 0, MPI_COMM_WORLD);
    free(cnt), free(dsp);
}

/* max |got - want| relative to max |want| (or floor, when larger) of one
 * [H][n][D] tensor; prints maxdiff and the worst row's first values side
 * by side on failure. */
static int compare(const char *cname, const char *tname, const spa_config *cfg, const float *got, const float *want,
                   double floor, double tol, double *relout)
{
    const int64_t n = cfg->n, D = cfg->dim, total = (int64_t)cfg->heads * n * D;
    double maxref = 0.0, maxdiff = 0.0;
    int64_t worst = 0, bad = 0;
    for (int64_t x = 0; x < total; x++) {
        double d = fabs((double)got[x] - want[x]);
        if (!isfinite(got[x])) bad++, d = INFINITY;
        if (fabs(want[x]) > maxref) maxref = fabs(want[x]);
        if (d > maxdiff) maxdiff = d, worst = x;
    }
    const double rel = maxdiff / fmax(fmax(maxref, floor), 1e-30);
    *relout = rel;
    if (bad == 0 && rel <= tol) return 1;
    const int64_t row = worst / D;
    printf("FAIL %-24s P=%d %s: maxdiff %.3e (rel %.3e, max |ref| %.3e) nonfinite %lld\n", cname, nranks, tname,
           maxdiff, rel, maxref, (long long)bad);
    printf("     worst at head %lld row %lld: got / want\n", (long long)(row / n), (long long)(row % n));
    for (int64_t d = 0; d < D && d < 6; d++) printf("       %+.7e  %+.7e\n", got[row * D + d], want[row * D + d]);
    return 0;
}

static double maxabs(const float *x, int64_t count)
{
    double m = 0.0;
    for (int64_t i = 0; i < count; i++) m = fmax(m, fabs(x[i]));
    return m;
}

/* Measured bytes against the plan's mirror, on this rank. */
static int check_bytes(const char *name, const spa_config *cfg, const spa_commplan *pl, const spa_stats *st)
{
    const int64_t NS = pl->nspread, D = cfg->dim, f = sizeof(float);
    const int64_t merge = NS * (D + 2) * (int64_t)sizeof(double); /* the forward's merge of partials */
    /* backward: what the forward received, sent back (gathered: without the
     * merge), in int64_t with --exact */
    const int64_t ew = exact ? 2 : 1, halo_bwd = ew * pl->bytes_halo, rma_bwd = ew * pl->bytes_rma;
    const int64_t global_bwd = nranks > 1 ? ew * (pl->bytes_global - merge) : 0;
    /* forward direction: K, V as in the forward, plus dout, lse, Dl of the spread rows */
    const int64_t global_fwd = nranks > 1 ? pl->bytes_global - merge + (NS - pl->nspread_own) * (D + 2) * f : 0;
    const int ok = st->bytes_halo_bwd == halo_bwd && st->bytes_rma_bwd == rma_bwd &&
                   st->bytes_global_bwd == global_bwd && st->bytes_halo == pl->bytes_halo &&
                   st->bytes_rma == pl->bytes_rma && st->bytes_global == global_fwd;
    if (!ok || (show_bytes && !strcmp(show_bytes, name)))
        printf("%s %s P=%d rank %d bytes sent back halo %lld/%lld rma %lld/%lld global %lld/%lld; "
               "received halo %lld/%lld rma %lld/%lld global %lld/%lld (measured/plan)\n",
               ok ? "bytes" : "FAIL", name, nranks, rank, (long long)st->bytes_halo_bwd, (long long)halo_bwd,
               (long long)st->bytes_rma_bwd, (long long)rma_bwd, (long long)st->bytes_global_bwd,
               (long long)global_bwd, (long long)st->bytes_halo, (long long)pl->bytes_halo, (long long)st->bytes_rma,
               (long long)pl->bytes_rma, (long long)st->bytes_global, (long long)global_fwd);
    return ok;
}

/* One shard [H][rows][D] of a whole [H][n][D] tensor. */
static void take_shard(const spa_config *cfg, const float *whole, int64_t t0, int64_t rows, float *shard)
{
    const int64_t n = cfg->n, D = cfg->dim;
    for (int32_t h = 0; h < cfg->heads; h++)
        memcpy(shard + h * rows * D, whole + (h * n + t0) * D, (size_t)(rows * D) * sizeof(float));
}

/* Forward and backward of cfg on comm with threads; grads into g[3] (shards). */
static int run_ctx(MPI_Comm comm, const spa_config *cfg, int threads, const float *sq, const float *sk,
                   const float *sv, const float *sdo, float *out, float *lse, int forward, float *g[3], spa_stats *st,
                   spa_ctx *keep)
{
    spa_ctx ctx;
    if (spa_ctx_create(comm, cfg, threads, &ctx) != SPA_OK) {
        printf("FAIL create: %s\n", spa_last_error());
        return 0;
    }
    /* --no-overlap: every transfer completes before the blocks that need it */
    if (no_overlap) spa_ctx_set_overlap(ctx, 0);
    spa_ctx_set_exact(ctx, exact);
    spa_err e = forward ? spa_ctx_run(ctx, sq, sk, sv, out, lse, NULL) : SPA_OK;
    if (e == SPA_OK) e = spa_ctx_backward(ctx, sq, sk, sv, out, lse, sdo, g[0], g[1], g[2], st);
    if (e != SPA_OK) printf("FAIL rank %d: %s\n", rank, spa_last_error());
    if (keep && e == SPA_OK) *keep = ctx;
    else spa_ctx_destroy(&ctx);
    return e == SPA_OK;
}

static int check_case(const test_case *tc)
{
    spa_config cfg;
    if (case_config(tc, 7, &cfg) != SPA_OK) {
        if (rank == 0) printf("FAIL %s: config: %s\n", tc->name, spa_last_error());
        spa_config_free(&cfg);
        return 0;
    }
    static const char *const names[3] = {"dq", "dk", "dv"};
    const int64_t n = cfg.n, H = cfg.heads, D = cfg.dim, T = H * n * D;
    float *q = falloc(T), *k = falloc(T), *v = falloc(T), *dout = falloc(T);
    case_inputs(&cfg, tc->temperature, 0, n, q, k, v);
    for (int32_t h = 0; h < H; h++) spa_synth(cfg.seed + 23, 1.0f, 3, h, 0, n, (int32_t)D, dout + h * n * D);
    int64_t b0, b1, t0, t1;
    spa_partition(&cfg, nranks, rank, &b0, &b1, &t0, &t1);
    const int64_t rows = t1 - t0, S = H * rows * D;
    float *sq = falloc(S), *sk = falloc(S), *sv = falloc(S), *sdo = falloc(S), *out = falloc(S), *lse = falloc(H * rows);
    take_shard(&cfg, q, t0, rows, sq), take_shard(&cfg, k, t0, rows, sk), take_shard(&cfg, v, t0, rows, sv);
    take_shard(&cfg, dout, t0, rows, sdo);
    float *g1[3] = {falloc(S), falloc(S), falloc(S)}, *g2[3] = {falloc(S), falloc(S), falloc(S)};

    /* forward, then the backward twice on one context */
    spa_stats st, st2;
    memset(&st, 0, sizeof st);
    spa_ctx ctx = NULL;
    int ok = run_ctx(MPI_COMM_WORLD, &cfg, 1, sq, sk, sv, sdo, out, lse, 1, g1, &st, &ctx);
    if (ok && spa_ctx_backward(ctx, sq, sk, sv, out, lse, sdo, g2[0], g2[1], g2[2], &st2) != SPA_OK) {
        printf("FAIL %s rank %d: second pass: %s\n", tc->name, rank, spa_last_error());
        ok = 0;
    }
    for (int x = 0; x < 3 && ok; x++)
        if (memcmp(g1[x], g2[x], (size_t)S * sizeof(float))) {
            printf("FAIL %s rank %d: %s differs between two passes on one context\n", tc->name, rank, names[x]);
            ok = 0;
        }
    if (ok) {
        ok &= check_bytes(tc->name, &cfg, spa_ctx_plan(ctx), &st);
        const int want_rma = !want_p2p && !expect_fallback;
        if (st.rma != want_rma) {
            printf("FAIL %s rank %d: transport %s, wanted %s\n", tc->name, rank, st.rma ? "rma" : "p2p",
                   want_rma ? "rma" : "p2p");
            ok = 0;
        }
    }
    spa_ctx_destroy(&ctx);

    /* 2 threads: the same bits (at 2 ranks) */
    if (nranks == 2) {
        ok &= run_ctx(MPI_COMM_WORLD, &cfg, 2, sq, sk, sv, sdo, out, lse, 0, g2, NULL, NULL);
        for (int x = 0; x < 3 && ok; x++)
            if (memcmp(g1[x], g2[x], (size_t)S * sizeof(float))) {
                printf("FAIL %s rank %d: %s differs between 1 and 2 threads\n", tc->name, rank, names[x]);
                ok = 0;
            }
    }

    /* onto rank 0: against the oracle, and against one rank */
    float *w[3] = {NULL, NULL, NULL}, *ref[3] = {NULL, NULL, NULL}, *one[3] = {NULL, NULL, NULL};
    if (rank == 0)
        for (int x = 0; x < 3; x++) w[x] = falloc(T), ref[x] = falloc(T), one[x] = falloc(T);
    for (int x = 0; x < 3; x++) gather_whole(&cfg, D, g1[x], w[x]);
    float *o1 = rank == 0 ? falloc(T) : NULL, *l1 = rank == 0 ? falloc(H * n) : NULL;
    gather_whole(&cfg, D, out, o1);
    gather_whole(&cfg, 1, lse, l1);
    double rel[3] = {0, 0, 0}, cross[3] = {0, 0, 0}, crel[3] = {0, 0, 0};
    if (rank == 0) {
        if (spa_reference_grad(&cfg, q, k, v, dout, ref[0], ref[1], ref[2]) != SPA_OK) {
            printf("FAIL %s: oracle: %s\n", tc->name, spa_last_error());
            ok = 0;
        }
        /* a tensor that vanishes is measured against a thousandth of the largest of all three */
        double floor = 0.0;
        for (int x = 0; x < 3; x++) floor = fmax(floor, 1e-3 * maxabs(ref[x], T));
        for (int x = 0; x < 3 && ok; x++) ok &= compare(tc->name, names[x], &cfg, w[x], ref[x], floor, 1e-4, &rel[x]);
        /* one rank, from this run's out and lse, or (exact) from its own */
        spa_ctx c1 = NULL;
        float *o2 = falloc(T), *l2 = falloc(H * n);
        if (!exact) memcpy(o2, o1, (size_t)T * sizeof(float)), memcpy(l2, l1, (size_t)(H * n) * sizeof(float));
        if (run_ctx(MPI_COMM_SELF, &cfg, 1, q, k, v, dout, o2, l2, exact, one, NULL, &c1)) {
            if (exact &&
                (memcmp(o1, o2, (size_t)T * sizeof(float)) || memcmp(l1, l2, (size_t)(H * n) * sizeof(float)))) {
                int64_t first = -1;
                for (int64_t i = 0; i < H * n && first < 0; i++)
                    if (memcmp(o1 + i * D, o2 + i * D, (size_t)D * sizeof(float)) ||
                        memcmp(l1 + i, l2 + i, sizeof(float)))
                        first = i;
                printf("FAIL %s P=%d: exact forward's out or lse differs from one rank's (first: head %lld row %lld, "
                       "lse %.9g / %.9g)\n",
                       tc->name, nranks, (long long)(first / n), (long long)(first % n), l1[first], l2[first]);
                ok = 0;
            }
            for (int x = 0; x < 3; x++)
                for (int64_t i = 0; i < T; i++) cross[x] = fmax(cross[x], fabs((double)w[x][i] - one[x][i]));
            /* dq outside the spread rows: the same bits */
            const spa_commplan *pl1 = spa_ctx_plan(c1);
            unsigned char *spread = calloc((size_t)(H * n), 1);
            for (int64_t r = 0; r < pl1->nspread; r++) spread[pl1->spread[r].h * n + pl1->spread[r].tok] = 1;
            int64_t ndiff = 0, first = -1;
            for (int64_t i = 0; i < H * n; i++)
                if ((!spread[i] || exact) && memcmp(w[0] + i * D, one[0] + i * D, (size_t)D * sizeof(float)))
                    ndiff++, first = first < 0 ? i : first;
            if (ndiff) {
                printf("FAIL %s P=%d: dq of %lld rows%s differs from one rank's (first: head %lld row %lld)\n",
                       tc->name, nranks, (long long)ndiff, exact ? "" : " outside the spread rows",
                       (long long)(first / n), (long long)(first % n));
                ok = 0;
            }
            free(spread);
            for (int x = 1; x < 3 && exact; x++)
                if (memcmp(w[x], one[x], (size_t)T * sizeof(float))) {
                    printf("FAIL %s P=%d: exact %s differs from one rank's (max |diff| %.3e)\n", tc->name, nranks,
                           names[x], cross[x]);
                    ok = 0;
                }
            spa_ctx_destroy(&c1);
        } else {
            ok = 0;
        }
        spa_free(o2), spa_free(l2);
        for (int x = 0; x < 3; x++) crel[x] = cross[x] / fmax(maxabs(ref[x], T), 1e-30);
    }

    int all, batches;
    int64_t sent[3] = {st.bytes_halo_bwd, st.bytes_rma_bwd, st.bytes_global_bwd}, sent_all[3];
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(&st.batches, &batches, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(sent, sent_all, 3, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf("%s %-24s P=%d %s batches %d, sent back halo %lld rma %lld global %lld; rel err dq %.1e dk %.1e dv "
               "%.1e; vs P=1 max |diff| dq %.1e dk %.1e dv %.1e (rel %.1e %.1e %.1e)%s\n",
               all ? "ok  " : "FAIL", tc->name, nranks, st.rma ? "rma" : "p2p", batches, (long long)sent_all[0],
               (long long)sent_all[1], (long long)sent_all[2], rel[0], rel[1], rel[2], cross[0], cross[1], cross[2],
               crel[0], crel[1], crel[2], exact ? " exact" : "");
    spa_free(q), spa_free(k), spa_free(v), spa_free(dout), spa_free(sq), spa_free(sk), spa_free(sv), spa_free(sdo);
    spa_free(out), spa_free(lse), spa_free(o1), spa_free(l1);
    for (int x = 0; x < 3; x++) spa_free(g1[x]), spa_free(g2[x]), spa_free(w[x]), spa_free(ref[x]), spa_free(one[x]);
    spa_config_free(&cfg);
    return all;
}

/* Exact mode on rank 0 only: spa_ctx_run and spa_ctx_backward fail with a
 * usage error on every rank (their collectives differ by mode: no hang). */
static int check_mixed_exact(void)
{
    spa_config cfg;
    int ok = case_config(&spa_cases[0], 7, &cfg) == SPA_OK;
    spa_ctx ctx = NULL;
    ok = ok && spa_ctx_create(MPI_COMM_WORLD, &cfg, 1, &ctx) == SPA_OK;
    if (ok) {
        spa_ctx_set_exact(ctx, rank == 0);
        int64_t t0, t1;
        spa_ctx_shard(ctx, &t0, &t1);
        const int64_t S = cfg.heads * (t1 - t0) * cfg.dim;
        float *b = falloc(8 * S);
        spa_err e1 = spa_ctx_run(ctx, b, b + S, b + 2 * S, b + 3 * S, b + 4 * S, NULL);
        spa_err e2 = spa_ctx_backward(ctx, b, b + S, b + 2 * S, b + 3 * S, b + 4 * S, b + 5 * S, b + 5 * S,
                                      b + 6 * S, b + 7 * S, NULL);
        if (e1 != SPA_ERR_USAGE || e2 != SPA_ERR_USAGE || !strstr(spa_last_error(), "exact mode")) {
            printf("FAIL rank %d: exact on rank 0 only: run %d, backward %d (want %d), '%s'\n", rank, e1, e2,
                   SPA_ERR_USAGE, spa_last_error());
            ok = 0;
        }
        spa_free(b);
    }
    spa_ctx_destroy(&ctx);
    spa_config_free(&cfg);
    int all;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (rank == 0) printf("%s exact mode on rank 0 only: a usage error on every rank\n", all ? "ok  " : "FAIL");
    return all;
}

int main(int argc, char **argv)
{
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    for (int i = 1; i < argc; i++) {
        expect_fallback |= !strcmp(argv[i], "--expect-fallback");
        want_p2p |= !strcmp(argv[i], "--p2p");
        no_overlap |= !strcmp(argv[i], "--no-overlap");
        exact |= !strcmp(argv[i], "--exact");
        if (!strcmp(argv[i], "--bytes") && i + 1 < argc) show_bytes = argv[++i];
    }
    if (want_p2p) setenv("SPA_RANDOM_TRANSPORT", "p2p", 1);
    int fails = 0;
    if (exact && nranks > 1) fails += !check_mixed_exact();
    for (int i = 0; i < spa_ncases; i++) fails += !check_case(&spa_cases[i]);
    if (rank == 0) printf("%d passed, %d failed\n", spa_ncases - fails, fails);
    MPI_Finalize();
    return fails ? 1 : 0;
}
