/* attention.c - spa as a library: sparse attention on the caller's own
 * buffers, across the ranks of MPI_COMM_WORLD.
 *
 *   mpirun -n 2 ./attention [n] [heads] [dim]      (default 2048 2 32)
 *
 * Each rank fills its shard of q, k, v ([H][rows][D], rows = its tokens)
 * with spa's seeded synthetic values, so the checksum it prints equals the
 * one of `spa run --n N --heads H --dim D --json` on as many ranks. It then
 * checks its rows against the dense reference (spa_reference) and prints
 * the largest difference; the exit code is 0 only when that is small.
 * It also prints the pattern's hop counts (spa_plan_block_hops,
 * what `spa plan --stats` shows).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <spa.h>

#define CHECK(call)                                                                                \
    do {                                                                                           \
        spa_err e_ = (call);                                                                       \
        if (e_ != SPA_OK) {                                                                        \
            fprintf(stderr, "attention: %s: %s\n", #call, spa_last_error());                      \
            MPI_Abort(MPI_COMM_WORLD, (int)e_);                                                    \
        }                                                                                          \
    } while (0)

int main(int argc, char **argv)
{
    int provided, rank, P;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &P);

    /* 1. the pattern: BigBird's defaults (local window of 3 blocks, the first
     *    and last block global, 3 random blocks), on a small problem */
    spa_config cfg;
    spa_config_init(&cfg);
    cfg.n = argc > 1 ? atoll(argv[1]) : 2048;
    cfg.heads = argc > 2 ? atoi(argv[2]) : 2;
    cfg.dim = argc > 3 ? atoi(argv[3]) : 32;
    CHECK(spa_config_validate(&cfg));

    /*    how many layers until every block has heard of every other: hop
     *    counts of head 0's block graph from every block (no MPI) */
    spa_plan_hops hops;
    CHECK(spa_plan_block_hops(&cfg, 0, 0, &hops));

    /* 2. the runtime, and this rank's rows [t0, t1) */
    spa_ctx ctx = NULL;
    CHECK(spa_ctx_create(MPI_COMM_WORLD, &cfg, 0, &ctx));
    int64_t t0, t1;
    spa_ctx_shard(ctx, &t0, &t1);
    int64_t rows = t1 - t0, H = cfg.heads, D = cfg.dim;

    /* 3. our own buffers: q, k, v, out [H][rows][D], lse [H][rows] */
    size_t shard = (size_t)(H * rows * D);
    float *q = spa_alloc(shard * sizeof(float)), *k = spa_alloc(shard * sizeof(float));
    float *v = spa_alloc(shard * sizeof(float)), *out = spa_alloc(shard * sizeof(float));
    float *lse = spa_alloc((size_t)(H * rows) * sizeof(float));
    for (int32_t h = 0; h < H; h++) {
        spa_synth(cfg.seed, 1.0f, 0, h, t0, t1, cfg.dim, q + h * rows * D);
        spa_synth(cfg.seed, 1.0f, 1, h, t0, t1, cfg.dim, k + h * rows * D);
        spa_synth(cfg.seed, 1.0f, 2, h, t0, t1, cfg.dim, v + h * rows * D);
    }

    /* 4. attention */
    spa_stats st;
    CHECK(spa_ctx_run(ctx, q, k, v, out, lse, &st));

    /* 5. self-check: the dense masked reference of our rows, from whole
     *    q, k, v (small n only: it is O(n^2)) */
    size_t whole = (size_t)(H * cfg.n * D);
    float *Q = malloc(whole * sizeof(float)), *K = malloc(whole * sizeof(float));
    float *V = malloc(whole * sizeof(float)), *ref = malloc(shard * sizeof(float) + 1);
    float *rlse = malloc((size_t)(H * rows) * sizeof(float) + 1);
    for (int32_t h = 0; h < H; h++) {
        spa_synth(cfg.seed, 1.0f, 0, h, 0, cfg.n, cfg.dim, Q + h * cfg.n * D);
        spa_synth(cfg.seed, 1.0f, 1, h, 0, cfg.n, cfg.dim, K + h * cfg.n * D);
        spa_synth(cfg.seed, 1.0f, 2, h, 0, cfg.n, cfg.dim, V + h * cfg.n * D);
    }
    CHECK(spa_reference(&cfg, Q, K, V, t0, t1, ref, rlse));
    double maxdiff = 0.0;
    for (size_t i = 0; i < shard; i++) maxdiff = fmax(maxdiff, fabs((double)out[i] - ref[i]));
    MPI_Allreduce(MPI_IN_PLACE, &maxdiff, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);

    if (rank == 0) {
        printf("spa %s (header %d.%d.%d): n %lld, heads %d, dim %d, %d ranks\n", spa_version(),
               SPA_VERSION_MAJOR, SPA_VERSION_MINOR, SPA_VERSION_PATCH, (long long)cfg.n, cfg.heads,
               cfg.dim, P);
        printf("hops max %lld mean %.6f reachable %lld of %lld\n", (long long)hops.max, hops.mean,
               (long long)hops.reachable, (long long)hops.pairs);
        printf("maxdiff vs reference %.3g\n", maxdiff);
        printf("checksum %.17g\n", st.checksum);
    }

    free(Q), free(K), free(V), free(ref), free(rlse);
    spa_free(q), spa_free(k), spa_free(v), spa_free(out), spa_free(lse);
    spa_ctx_destroy(&ctx);
    spa_config_free(&cfg);
    MPI_Finalize();
    return maxdiff < 1e-4 ? 0 : 1;
}
