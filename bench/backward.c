/* backward.c - the backward pass's rate beside the forward's, in one run
 * on one rank (issue 11, item 4).
 *   spa_bench_backward [--n N] [--heads H] [--dim D] [--threads T] [--reps R]
 * Default pattern (SPEC defaults, synthetic inputs), n = 131072, H = 4,
 * D = 64, 1 thread. Useful FLOPs: forward 4 D pairs (SPEC section 3),
 * backward 10 D pairs (five products against the forward's two). Each
 * figure is the best of R runs, forward and backward taken in turn so a
 * neighbour's load hits both alike; rates by wall time and, on a loaded
 * machine the better guide at one thread, by CPU time. In the same turns,
 * the runtime's backward (spa_ctx_backward) in float and in exact mode
 * (spa_ctx_set_exact), for the cost of exact mode as a ratio of
 * their times. Prints one JSON object. Not a test. */
#include "spa_impl.h"

#include <string.h>
#include <time.h>

/* CPU seconds of the process: with one thread, what a loaded machine
 * inflates least. */
static double cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv)
{
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    spa_config cfg;
    spa_config_init(&cfg);
    int threads = 1, reps = 3;
    for (int a = 1; a + 1 < argc; a += 2) {
        if (!strcmp(argv[a], "--n")) cfg.n = atoll(argv[a + 1]);
        else if (!strcmp(argv[a], "--heads")) cfg.heads = atoi(argv[a + 1]);
        else if (!strcmp(argv[a], "--dim")) cfg.dim = atoi(argv[a + 1]);
        else if (!strcmp(argv[a], "--threads")) threads = atoi(argv[a + 1]);
        else if (!strcmp(argv[a], "--reps")) reps = atoi(argv[a + 1]);
        else {
            fprintf(stderr, "usage: %s [--n N] [--heads H] [--dim D] [--threads T] [--reps R]\n", argv[0]);
            return 2;
        }
    }
    if (spa_config_validate(&cfg) != SPA_OK) {
        fprintf(stderr, "config: %s\n", spa_last_error());
        return 2;
    }
    const int64_t n = cfg.n, H = cfg.heads, D = cfg.dim, T = H * n * D;
    float *x[9];
    for (int i = 0; i < 9; i++) x[i] = spa_alloc((size_t)T * sizeof(float));
    float *q = x[0], *k = x[1], *v = x[2], *dout = x[3], *out = x[4], *dq = x[5], *dk = x[6], *dv = x[7];
    float *lse = x[8]; /* [H][n] used */
    float *in[4] = {q, k, v, dout};
    for (int32_t h = 0; h < H; h++)
        for (int w = 0; w < 4; w++) spa_synth(cfg.seed, 1.0f, w, h, 0, n, (int32_t)D, in[w] + h * n * D);

    int64_t pairs = 0;
    for (int32_t h = 0; h < H; h++) pairs += spa_pattern_pairs(&cfg, h, 0, spa_nblocks(&cfg));
    spa_ctx ctx, cx[2]; /* cx: the runtime's backward in float and in exact mode, set up once each */
    if (spa_ctx_create(MPI_COMM_SELF, &cfg, threads, &ctx) != SPA_OK ||
        spa_ctx_create(MPI_COMM_SELF, &cfg, threads, &cx[0]) != SPA_OK ||
        spa_ctx_create(MPI_COMM_SELF, &cfg, threads, &cx[1]) != SPA_OK) {
        fprintf(stderr, "ctx: %s\n", spa_last_error());
        return 1;
    }
    spa_ctx_set_exact(cx[1], 1);
    double fwd = 1e30, bwd = 1e30, fwd_compute = 1e30, fwd_cpu = 1e30, bwd_cpu = 1e30, rt[2] = {1e30, 1e30};
    for (int r = 0; r < reps; r++) {
        spa_stats st;
        double c = cpu_now();
        if (spa_ctx_run(ctx, q, k, v, out, lse, &st) != SPA_OK) {
            fprintf(stderr, "run: %s\n", spa_last_error());
            return 1;
        }
        c = cpu_now() - c;
        if (c < fwd_cpu) fwd_cpu = c;
        if (st.seconds_total < fwd) fwd = st.seconds_total;
        if (st.seconds_compute < fwd_compute) fwd_compute = st.seconds_compute;
        double t = spa_now();
        c = cpu_now();
        if (spa_backward_local(&cfg, q, k, v, out, lse, dout, dq, dk, dv, threads) != SPA_OK) {
            fprintf(stderr, "backward: %s\n", spa_last_error());
            return 1;
        }
        t = spa_now() - t;
        c = cpu_now() - c;
        if (t < bwd) bwd = t;
        if (c < bwd_cpu) bwd_cpu = c;
        for (int e = 0; e < 2; e++) { /* the runtime's, float then exact */
            if (spa_ctx_backward(cx[e], q, k, v, out, lse, dout, dq, dk, dv, &st) != SPA_OK) {
                fprintf(stderr, "ctx backward: %s\n", spa_last_error());
                return 1;
            }
            if (r > 0 && st.seconds_total < rt[e]) rt[e] = st.seconds_total; /* run 0 allocates */
        }
    }
    spa_ctx_destroy(&ctx), spa_ctx_destroy(&cx[0]), spa_ctx_destroy(&cx[1]);
    double sum = 0.0;
    for (int64_t i = 0; i < T; i++) sum += (double)dq[i] + dk[i] + dv[i];
    const double ff = 4.0 * D * pairs, fb = 10.0 * D * pairs, gf = ff / fwd * 1e-9, gb = fb / bwd * 1e-9;
    const double cf = ff / fwd_cpu * 1e-9, cb = fb / bwd_cpu * 1e-9;
    printf("{\"n\": %lld, \"heads\": %lld, \"dim\": %lld, \"threads\": %d, \"reps\": %d, \"pairs\": %lld, "
           "\"kernel\": \"%s\", \"forward_seconds\": %.4f, \"forward_compute_seconds\": %.4f, "
           "\"forward_gflops\": %.2f, \"backward_seconds\": %.4f, \"backward_gflops\": %.2f, \"ratio\": %.3f, "
           "\"forward_cpu_gflops\": %.2f, \"backward_cpu_gflops\": %.2f, \"ratio_cpu\": %.3f, "
           "\"ctx_backward_seconds\": %.4f, \"exact_backward_seconds\": %.4f, \"exact_ratio\": %.3f, "
           "\"grad_checksum\": %.6e}\n",
           (long long)n, (long long)H, (long long)D, threads, reps, (long long)pairs, spa_kernel_name(), fwd,
           fwd_compute, gf, bwd, gb, gb / gf, cf, cb, cb / cf, rt[0], rt[1], rt[1] / rt[0], sum);
    for (int i = 0; i < 9; i++) spa_free(x[i]);
    spa_config_free(&cfg);
    MPI_Finalize();
    return 0;
}
