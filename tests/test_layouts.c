/* test_layouts.c - DeepSpeed's block layouts (Fixed, BigBird,
 * BSLongformer) run through spa's --layout rule.
 *
 * The dense [H, nb, nb] layouts are built here from the documented
 * definitions (ANCHORS.md, DeepSpeed sparsity_config.py), with block 16
 * (DeepSpeed's default) and a seeded generator of the test's own for
 * BigBird's random blocks. Each is converted to compressed rows and run
 * with --local-blocks 0 --globals none --random 0 --layout, which SPEC 1.1
 * says gives exactly the layout. Checked, at the launched rank count:
 *   - the token rule: j in S(i) iff layout[h, i/B, j/B] (and j <= i under
 *     --causal);
 *   - the export (spa plan --export-layout) lists the layout's blocks:
 *     all full without --causal; with it the diagonal partial;
 *   - the distributed run against the dense reference and a one-rank run
 *     (dist_check.h). Global rows of these layouts attend every block and
 *     take the spread path. */
#include "dist_check.h"

enum { DS_BLOCK = 16 };

typedef struct ds_layout {
    int32_t H;
    int64_t nb;
    unsigned char *a; /* [H][nb][nb] */
} ds_layout;

static unsigned char *ds_at(ds_layout *l, int32_t h, int64_t r, int64_t c) { return &l->a[(h * l->nb + r) * l->nb + c]; }

static ds_layout ds_new(int32_t H, int64_t nb)
{
    ds_layout l = {H, nb, calloc((size_t)(H * nb * nb), 1)};
    return l;
}

/* torch.tril over the block matrix (unidirectional modes) */
static void ds_tril(ds_layout *l, int32_t h)
{
    for (int64_t r = 0; r < l->nb; r++)
        for (int64_t c = r + 1; c < l->nb; c++) *ds_at(l, h, r, c) = 0;
}

/* Fixed: disjoint chunks of num_local blocks (block-diagonal; unidirectional
 * keeps column <= row in a chunk); in each chunk the global block index is
 * num_local - (1 + h % patterns) * num_global; global columns from row 0
 * (bidirectional) or from the global block's row (unidirectional); a short
 * last chunk gets its global block at min(end + first, nb - num_global);
 * horizontal also sets the global rows (bidirectional only). */
static ds_layout ds_fixed(int32_t H, int64_t nb, int64_t num_local, int64_t num_global, int32_t patterns, int uni,
                          int horizontal)
{
    ds_layout l = ds_new(H, nb);
    for (int32_t h = 0; h < H; h++) {
        for (int64_t i = 0; i < nb; i += num_local) {
            int64_t end = i + num_local < nb ? i + num_local : nb;
            for (int64_t row = i; row < end; row++)
                for (int64_t col = i; col < (uni ? row + 1 : end); col++) *ds_at(&l, h, row, col) = 1;
        }
        int64_t first = num_local - (1 + h % patterns) * num_global;
        int64_t end = nb - nb % num_local;
        for (int64_t i = first; i < end; i += num_local) {
            int64_t first_row = uni ? i : 0;
            for (int64_t row = first_row; row < nb; row++)
                for (int64_t col = i; col < i + num_global && col < nb; col++) *ds_at(&l, h, row, col) = 1;
            if (horizontal)
                for (int64_t row = i; row < i + num_global && row < nb; row++)
                    for (int64_t col = 0; col < nb; col++) *ds_at(&l, h, row, col) = 1;
        }
        if (end < nb) {
            int64_t start = end + first < nb - num_global ? end + first : nb - num_global, stop = start + num_global;
            int64_t first_row = uni ? start : 0;
            for (int64_t row = first_row; row < nb; row++)
                for (int64_t col = start; col < stop; col++) *ds_at(&l, h, row, col) = 1;
            if (horizontal)
                for (int64_t row = start; row < stop; row++)
                    for (int64_t col = 0; col < nb; col++) *ds_at(&l, h, row, col) = 1;
        }
    }
    return l;
}

/* BigBird: per row num_random blocks sampled without replacement from
 * range(nb), or range(row + 1) when unidirectional, with no exclusion; a
 * sliding window of +-window/2 blocks; the first num_global rows and
 * columns; tril over everything when unidirectional. */
static ds_layout ds_bigbird(int32_t H, int64_t nb, int64_t num_random, int64_t window, int64_t num_global, int uni,
                            uint64_t seed)
{
    ds_layout l = ds_new(H, nb);
    int64_t *pool = malloc((size_t)nb * sizeof *pool);
    uint64_t s = seed;
    for (int32_t h = 0; h < H; h++) {
        for (int64_t row = 0; row < nb; row++) {
            int64_t m = uni ? row + 1 : nb, take = num_random < m ? num_random : m;
            for (int64_t x = 0; x < m; x++) pool[x] = x;
            for (int64_t t = 0; t < take; t++) { /* partial Fisher-Yates */
                int64_t u = t + (int64_t)(case_rand(&s) % (uint64_t)(m - t)), tmp = pool[t];
                pool[t] = pool[u], pool[u] = tmp;
                *ds_at(&l, h, row, pool[t]) = 1;
            }
        }
        int64_t w = window / 2;
        for (int64_t row = 0; row < nb; row++)
            for (int64_t col = row - w > 0 ? row - w : 0; col < row + w + 1 && col < nb; col++) *ds_at(&l, h, row, col) = 1;
        for (int64_t g = 0; g < num_global && g < nb; g++)
            for (int64_t x = 0; x < nb; x++) *ds_at(&l, h, g, x) = *ds_at(&l, h, x, g) = 1;
        if (uni) ds_tril(&l, h);
    }
    free(pool);
    return l;
}

/* BSLongformer: a sliding window of +-window/2 blocks, and global rows and
 * columns at the given block indices (or index ranges [start, end) when
 * ends are given); tril when unidirectional. */
static ds_layout ds_longformer(int32_t H, int64_t nb, int64_t window, const int64_t *gidx, const int64_t *gend,
                               int ng, int uni)
{
    ds_layout l = ds_new(H, nb);
    for (int32_t h = 0; h < H; h++) {
        int64_t w = window / 2;
        for (int64_t row = 0; row < nb; row++)
            for (int64_t col = row - w > 0 ? row - w : 0; col < row + w + 1 && col < nb; col++) *ds_at(&l, h, row, col) = 1;
        for (int g = 0; g < ng; g++) {
            if (gidx[g] >= nb) continue;
            int64_t e = gend ? (gend[g] < nb ? gend[g] : nb) : gidx[g] + 1;
            for (int64_t b = gidx[g]; b < e; b++)
                for (int64_t x = 0; x < nb; x++) *ds_at(&l, h, b, x) = *ds_at(&l, h, x, b) = 1;
        }
        if (uni) ds_tril(&l, h);
    }
    return l;
}

static int fails_local;

/* The token rule and the export against the dense layout (rank 0 checks,
 * everyone learns the answer). */
static int check_rule(const char *name, const spa_config *cfg, ds_layout *l)
{
    int ok = 1;
    if (dist_rank == 0) {
        const int64_t n = cfg->n, B = cfg->block, nb = l->nb;
        int64_t bad = 0;
        int32_t *xf = malloc((size_t)nb * sizeof *xf), *xp = malloc((size_t)nb * sizeof *xp);
        for (int32_t h = 0; h < cfg->heads; h++) {
            int32_t lh = l->H == 1 ? 0 : h;
            for (int64_t i = 0; i < n; i++)
                for (int64_t j = 0; j < n; j++) {
                    int want = *ds_at(l, lh, i / B, j / B) && !(cfg->causal && j > i);
                    if (spa_pattern_attends(cfg, h, i, j) != want && bad++ < 3)
                        printf("FAIL %s: head %d: attends(%lld, %lld) = %d, the layout says %d\n", name, h,
                               (long long)i, (long long)j, !want, want);
                }
            for (int64_t c = 0; c < nb; c++) {
                int64_t nf = 0, np = 0, kf = 0, kp = 0;
                if (spa_pattern_export_row(cfg, h, c, xf, &nf, xp, &np) != 0) {
                    bad++;
                    continue;
                }
                for (int64_t b = 0; b < nb; b++) {
                    int set = *ds_at(l, lh, c, b) && !(cfg->causal && b > c);
                    int want = !set ? 0 : (cfg->causal && b == c) ? 1 : 2;
                    int got = kf < nf && xf[kf] == b ? 2 : kp < np && xp[kp] == b ? 1 : 0;
                    kf += got == 2, kp += got == 1;
                    if (got != want && bad++ < 3)
                        printf("FAIL %s: export of (%d, %lld): block %lld is %d, want %d (0 absent, 1 partial, 2 "
                               "full)\n",
                               name, h, (long long)c, (long long)b, got, want);
                }
                if (kf != nf || kp != np) bad++;
            }
        }
        free(xf), free(xp);
        ok = bad == 0;
    }
    MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
    return ok;
}

static void run(const char *name, int32_t H, int causal, ds_layout l, float temperature)
{
    spa_config cfg;
    spa_config_init(&cfg);
    cfg.n = l.nb * DS_BLOCK, cfg.heads = H, cfg.dim = 16, cfg.block = DS_BLOCK, cfg.causal = causal, cfg.seed = 9;
    cfg.local_blocks = 0, cfg.random = 0;
    spa_config_set_globals(&cfg, "none");
    spa_layout lay;
    int ok = case_layout_from_dense(l.H, l.nb, l.a, &lay) == 0 && spa_config_set_layout(&cfg, &lay) == SPA_OK &&
             spa_config_validate(&cfg) == SPA_OK;
    spa_layout_free(&lay);
    if (!ok) {
        if (dist_rank == 0) printf("FAIL %s: config: %s\n", name, spa_last_error());
        fails_local++;
    } else {
        int r = check_rule(name, &cfg, &l);
        r &= dist_check(name, &cfg, temperature, 0);
        fails_local += !r;
    }
    spa_config_free(&cfg);
    free(l.a);
}

int main(int argc, char **argv)
{
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &dist_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &dist_nranks);
    int total = 0;

    /* Fixed, DeepSpeed's defaults (4 local, 1 global, bidirectional) */
    run("ds_fixed_bidir", 2, 0, ds_fixed(2, 64, 4, 1, 1, 0, 0), 1.0f), total++;
    /* horizontal global attention: global rows attend every block (spread) */
    run("ds_fixed_horizontal", 2, 0, ds_fixed(2, 64, 4, 1, 1, 0, 1), 1.0f), total++;
    /* unidirectional, a different global pattern per head, block-level and
     * with token causality */
    run("ds_fixed_unidir_3pat", 3, 0, ds_fixed(3, 64, 4, 1, 3, 1, 0), 1.0f), total++;
    run("ds_fixed_unidir_causal", 3, 1, ds_fixed(3, 64, 4, 1, 3, 1, 0), 1.0f), total++;
    /* 8 local, 2 global, 4 patterns; 50 blocks leave a short last chunk */
    run("ds_fixed_short_chunk", 3, 0, ds_fixed(3, 50, 8, 2, 4, 0, 1), 2.0f), total++;
    run("ds_fixed_short_chunk_uni", 3, 1, ds_fixed(3, 50, 8, 2, 4, 1, 0), 1.0f), total++;
    /* BigBird: DeepSpeed's defaults are 1 random, window 3, 1 global */
    run("ds_bigbird_defaults", 2, 0, ds_bigbird(2, 48, 1, 3, 1, 0, 0xb16b1d), 1.0f), total++;
    run("ds_bigbird_r3_w5_g2", 3, 0, ds_bigbird(3, 40, 3, 5, 2, 0, 0xb16b1e), 1.0f), total++;
    run("ds_bigbird_unidir", 2, 1, ds_bigbird(2, 48, 2, 3, 1, 1, 0xb16b1f), 1.0f), total++;
    /* BSLongformer: window 3 (the default), globals at block 0 and 20; index
     * ranges; one layout head for every head; unidirectional */
    const int64_t g1[] = {0, 20}, g2[] = {5, 30}, e2[] = {7, 33};
    run("ds_longformer", 2, 0, ds_longformer(2, 40, 3, g1, NULL, 2, 0), 1.0f), total++;
    run("ds_longformer_ranges", 2, 0, ds_longformer(2, 36, 5, g2, e2, 2, 0), 1.0f), total++;
    run("ds_longformer_one_head", 3, 0, ds_longformer(1, 40, 3, g1, NULL, 2, 0), 1.0f), total++;
    run("ds_longformer_unidir", 2, 1, ds_longformer(2, 40, 3, g1, NULL, 2, 1), 1.0f), total++;

    if (dist_rank == 0) printf("%d passed, %d failed\n", total - fails_local, fails_local);
    MPI_Finalize();
    return fails_local ? 1 : 0;
}
