/* test_dist.c - the distributed runtime at the rank count it is launched
 * with, against the dense reference and against a one-rank run (see
 * dist_check.h for what is checked).
 *
 * The dist cases run with one-sided MPI and again with the two-sided
 * fallback; with --quick (the TCP and RMA-fallback variants) only they
 * run. They include fetched strided, dilated and layout blocks, summary
 * columns, spread rows and empty rows. Without --quick every shared case
 * runs too. With --exact (spa_ctx_set_exact) the spread rows must be
 * bit-identical to one rank's too. */
#include "dist_check.h"

static const test_case dist_cases[] = {
    {"narrow_shards_5_blocks", 160, 2, 16, 32, 3, -1, NULL, 3, 0, 1.0f, NULL, 0},
    {"radius_spans_3_ranks", 1024, 2, 16, 16, 0, 300, "none", 3, 0, 1.0f, NULL, 0},
    {"globals_middle_rank", 1024, 2, 16, 32, 3, -1, "500:520", 3, 0, 1.0f, NULL, 0},
    {"random_everywhere", 2048, 2, 16, 32, 3, -1, NULL, 12, 0, 1.0f, NULL, 0},
    {"causal", 1000, 2, 16, 32, 3, -1, NULL, 4, 1, 1.0f, NULL, 0},
    {"causal_radius", 1000, 2, 16, 16, 0, 70, "10,600", 4, 1, 1.0f, NULL, 0},
    {"partial_last_block", 1000, 3, 16, 64, 3, -1, NULL, 3, 0, 1.0f, NULL, 0},
    {"wide_window", 1200, 1, 16, 16, 9, -1, "0,1199", 5, 0, 1.0f, NULL, 0},
    /* SPEC 1.1: remote blocks of every rule, gathered summary columns */
    {"stride_fetched", 2000, 2, 16, 32, 3, -1, "none", 1, 0, 1.0f, "local_blocks=1;stride=400", 0},
    {"stride_small_fetched", 1100, 1, 16, 32, 3, -1, "none", 0, 0, 1.0f, "local_blocks=0;stride=5", 0},
    {"dilated_fetched", 1500, 2, 16, 32, 3, -1, NULL, 0, 0, 1.0f, "local_blocks=0;dilated=600:8,200:2", 0},
    {"layout_fetched_spread", 800, 2, 16, 16, 3, -1, NULL, 1, 0, 1.0f, "local_blocks=1", CASE_LAYOUT_SPARSE},
    {"layout_empty_rows", 600, 1, 16, 16, 3, -1, "none", 0, 0, 1.0f, "local_blocks=0", CASE_LAYOUT_EMPTY_ROWS},
    {"union_fetched", 2000, 2, 16, 16, 3, -1, "1000", 2, 0, 1.0f, "radius=20;stride=500;summary=400:3", 0},
    {"union_causal", 1000, 2, 16, 32, 3, -1, "0:3", 2, 1, 1.0f, "radius=20;summary=100:5;stride=77", 0},
    {"per_head_factorised", 1024, 3, 16, 32, 3, -1, "none", 0, 1, 1.0f, "local_blocks=3@0:1;stride=96@1:3", 0},
};

int main(int argc, char **argv)
{
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &dist_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &dist_nranks);
    int quick = 0;
    for (int i = 1; i < argc; i++) {
        quick |= strcmp(argv[i], "--quick") == 0;
        dist_expect_fallback |= strcmp(argv[i], "--expect-fallback") == 0;
        dist_exact |= strcmp(argv[i], "--exact") == 0;
    }
    int total = 0, fails = 0;
    int nd = (int)(sizeof dist_cases / sizeof *dist_cases);
    for (int p2p = 0; p2p < 2; p2p++)
        for (int i = 0; i < nd + (quick || p2p ? 0 : spa_ncases); i++, total++) {
            const test_case *tc = i < nd ? &dist_cases[i] : &spa_cases[i - nd];
            spa_config cfg;
            if (case_config(tc, 3, &cfg) != SPA_OK) {
                if (dist_rank == 0) printf("FAIL %s: %s\n", tc->name, spa_last_error());
                fails++;
            } else {
                fails += !dist_check(tc->name, &cfg, tc->temperature, p2p);
            }
            spa_config_free(&cfg);
        }
    if (dist_rank == 0) printf("%d passed, %d failed\n", total - fails, fails);
    MPI_Finalize();
    return fails ? 1 : 0;
}
