/* test_repeat.c - repeated use of the library in one process: 200
 * spa_ctx_create / spa_ctx_run / spa_ctx_destroy cycles (as a Python
 * binding or a training loop would make) must not grow the process.
 *
 *   test_repeat [cycles]
 *
 * Each cycle validates a config, creates a context, runs it on fresh
 * shards and destroys everything. Resident memory (VmRSS) and its peak
 * (VmHWM) after cycle 20 are the baseline (MPI and the allocator settle in
 * the first cycles); after the last cycle neither may
 * exceed it by more than SLACK_KIB: a leak of 12 KiB or more per cycle
 * fails. (SPA_TEST_LEAK=1 leaks the q shard, 64 KiB at 2 ranks: it fails.)
 */
#include "spa.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { SLACK_KIB = 2048, BASE_CYCLE = 20 };

/* VmRSS and VmHWM of this process, KiB. */
static void rss_kib(long *rss, long *hwm)
{
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    *rss = *hwm = -1;
    while (f && fgets(line, sizeof line, f)) {
        if (!strncmp(line, "VmRSS:", 6)) *rss = atol(line + 6);
        if (!strncmp(line, "VmHWM:", 6)) *hwm = atol(line + 6);
    }
    if (f) fclose(f);
}

/* One create / run / destroy cycle. */
static spa_err cycle(int i)
{
    spa_config cfg;
    spa_ctx ctx = NULL;
    float *q = NULL, *k = NULL, *v = NULL, *out = NULL, *lse = NULL;
    int64_t t0, t1;
    spa_config_init(&cfg);
    cfg.n = 2048;
    cfg.heads = 2;
    cfg.dim = 16;
    cfg.seed = (uint64_t)i; /* a different random plan every cycle */
    spa_err err = spa_config_validate(&cfg);
    if (err == SPA_OK) err = spa_agree(MPI_COMM_WORLD, spa_ctx_create(MPI_COMM_WORLD, &cfg, 1, &ctx));
    if (err == SPA_OK) {
        spa_ctx_shard(ctx, &t0, &t1);
        size_t e = (size_t)cfg.heads * (size_t)(t1 - t0) * (size_t)cfg.dim;
        q = spa_alloc(e * 4), k = spa_alloc(e * 4), v = spa_alloc(e * 4), out = spa_alloc(e * 4);
        lse = spa_alloc((size_t)cfg.heads * (size_t)(t1 - t0) * 4);
        for (int32_t h = 0; h < cfg.heads; h++) {
            int64_t o = (int64_t)h * (t1 - t0) * cfg.dim;
            spa_synth(cfg.seed, 1.0f, 0, h, t0, t1, cfg.dim, q + o);
            spa_synth(cfg.seed, 1.0f, 1, h, t0, t1, cfg.dim, k + o);
            spa_synth(cfg.seed, 1.0f, 2, h, t0, t1, cfg.dim, v + o);
        }
        err = spa_agree(MPI_COMM_WORLD, spa_ctx_run(ctx, q, k, v, out, lse, NULL));
    }
    spa_ctx_destroy(&ctx);
    if (!getenv("SPA_TEST_LEAK")) spa_free(q); /* SPA_TEST_LEAK: show that a leak fails */
    spa_free(k), spa_free(v), spa_free(out), spa_free(lse);
    spa_config_free(&cfg);
    return err;
}

int main(int argc, char **argv)
{
    int provided, me, failed = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    int cycles = argc > 1 ? atoi(argv[1]) : 200;
    long rss0 = 0, hwm0 = 0, rss, hwm;
    for (int i = 1; i <= cycles; i++) {
        if (cycle(i) != SPA_OK) {
            fprintf(stderr, "rank %d: FAIL: cycle %d: %s\n", me, i, spa_last_error());
            failed = 1;
            break;
        }
        rss_kib(&rss, &hwm);
        if (i == BASE_CYCLE) rss0 = rss, hwm0 = hwm;
        if (me == 0 && (i == 1 || i == BASE_CYCLE || i % 50 == 0))
            printf("cycle %3d: VmRSS %ld KiB, VmHWM %ld KiB\n", i, rss, hwm);
    }
    rss_kib(&rss, &hwm);
    if (!failed && cycles > BASE_CYCLE && (rss > rss0 + SLACK_KIB || hwm > hwm0 + SLACK_KIB)) {
        fprintf(stderr, "rank %d: FAIL: memory grew over %d cycles: VmRSS %ld -> %ld KiB, VmHWM %ld -> %ld KiB\n",
                me, cycles - BASE_CYCLE, rss0, rss, hwm0, hwm);
        failed = 1;
    } else if (me == 0) {
        printf("after cycle %d: VmRSS %+ld KiB, VmHWM %+ld KiB against cycle %d (slack %d KiB)\n",
               cycles, rss - rss0, hwm - hwm0, BASE_CYCLE, SLACK_KIB);
    }
    MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (me == 0) printf("%s\n", failed ? "FAILED" : "passed");
    MPI_Finalize();
    return failed;
}
