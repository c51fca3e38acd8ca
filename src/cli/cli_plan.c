/* cli_plan.c - `spa plan`: what a pattern costs before anything runs.
 *
 * Everything is computed per block, never per (i, j) pair, so a plan for
 * n = 10M takes seconds:
 *   - keys per query: spa_plan_key_counts (|S(i)| per row of each block);
 *   - bytes per rank: spa_plan_ranks_bytes (spa_commplan_build_like, the
 *     spread rows found once) for every rank of P;
 *   - hops (--stats) and the block mask (--image): the library's
 *     spa_plan_block_hops, spa_plan_block_mask and spa_write_png
 *     (src/plan/plan_report.c), on head 0;
 *   - --export-layout writes spa_pattern_export_row of every (h, c) through
 *     spa_io_export_layout.
 */
#include "cli.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

spa_err spa_cli_plan(const spa_cli_opts *o, FILE *out)
{
    const spa_config *cfg = &o->cfg;
    int64_t nb = spa_nblocks(cfg), n = cfg->n;
    double t_start = spa_now();
    if (o->image) CLI_CHECK(spa_cli_check_output("image", o->image, NULL));
    if (o->export_layout) CLI_CHECK(spa_cli_check_output("export-layout", o->export_layout, NULL));
    if (o->threads > 0) omp_set_num_threads(o->threads);

    /* pass 1: keys per query over every token and head */
    spa_plan_keys keys;
    CLI_CHECK(spa_plan_key_counts(cfg, &keys));
    const int64_t kmin = keys.min, kmax = keys.max, ksum = keys.pairs;
    double rows = (double)n * cfg->heads;
    double dense = cfg->causal ? (double)n * ((double)n + 1) / 2 : (double)n * (double)n;
    double density = (double)ksum / (dense * cfg->heads);
    double flops = 4.0 * cfg->dim * (double)ksum;

    /* pass 2: bytes each rank receives */
    int P = o->plan_ranks;
    spa_plan_rank *rb = NULL;
    int64_t tot[3] = {0, 0, 0}, mx[3] = {0, 0, 0};
    if (P > 0) {
        rb = calloc((size_t)P, sizeof *rb);
        CLI_REQUIRE(rb, SPA_ERR_OTHER, "out of memory for %d ranks", P);
        spa_err e = spa_plan_ranks_bytes(cfg, P, rb);
        if (e != SPA_OK) {
            free(rb);
            return e;
        }
        for (int r = 0; r < P; r++) {
            int64_t v[3] = {rb[r].bytes_halo, rb[r].bytes_global, rb[r].bytes_rma};
            for (int k = 0; k < 3; k++) {
                tot[k] += v[k];
                if (v[k] > mx[k]) mx[k] = v[k];
            }
        }
    }

    /* pass 3: hops; all blocks as roots up to 1024, else 256 evenly spaced */
    spa_plan_hops hops;
    const int64_t hop_sources = nb <= 1024 ? nb : 256;
    if (o->stats) {
        spa_err e = spa_plan_block_hops(cfg, 0, hop_sources, &hops);
        if (e != SPA_OK) {
            free(rb);
            return e;
        }
    }

    /* pass 4: the image */
    int64_t f = 1, side = 0;
    if (o->image) {
        side = spa_plan_mask_side(nb, 1024, &f);
        unsigned char *pix = malloc((size_t)(side * side));
        spa_err e = pix ? spa_plan_block_mask(cfg, 0, f, side, pix)
                        : spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory");
        if (e == SPA_OK) e = spa_write_png(o->image, pix, side);
        free(pix);
        if (e != SPA_OK) {
            free(rb);
            return e;
        }
    }

    /* pass 5: the layout in FlexAttention's form */
    if (o->export_layout) {
        spa_err e = spa_io_export_layout(o->export_layout, cfg);
        if (e != SPA_OK) {
            free(rb);
            return e;
        }
    }
    double seconds = spa_now() - t_start;

    int64_t lsize;
    const char *mode = spa_cli_local_mode(cfg, &lsize);
    char *flags = spa_cli_pattern_flags(cfg);
    if (o->json) {
        fprintf(out,
                "{\"command\": \"plan\", \"version\": \"%s\", \"n\": %lld, \"heads\": %d, "
                "\"dim\": %d, \"block\": %d, \"blocks\": %lld, \"local_mode\": \"%s\", "
                "\"local_size\": %lld, \"random\": %d, "
                "\"seed\": %llu, \"causal\": %s, \"globals\": %lld, \"global_blocks\": %lld, "
                "\"scale\": %.9g, \"keys_min\": %lld, \"keys_mean\": %.6f, \"keys_max\": %lld, "
                "\"pairs\": %lld, \"density\": %.9g, \"flops\": %.0f, \"seconds\": %.6f",
                SPA_VERSION, (long long)n, cfg->heads, cfg->dim, cfg->block, (long long)nb,
                mode, (long long)lsize, cfg->random_max, (unsigned long long)cfg->seed,
                cfg->causal ? "true" : "false", (long long)cfg->nglobals,
                (long long)cfg->nglobal_blocks, (double)cfg->scale, (long long)kmin,
                (double)ksum / rows, (long long)kmax, (long long)ksum, density, flops, seconds);
        /* the keys of run --json, when every head shares the local rule */
        if (strcmp(mode, "blocks") == 0 || strcmp(mode, "none") == 0)
            fprintf(out, ", \"local_blocks\": %lld", (long long)lsize);
        else if (strcmp(mode, "radius") == 0)
            fprintf(out, ", \"radius\": %lld", (long long)lsize);
        spa_cli_json_str(out, "pattern", flags);
        spa_cli_json_str(out, "export_layout", o->export_layout);
        if (P > 0) {
            fprintf(out, ", \"ranks\": %d, \"per_rank\": [", P);
            for (int r = 0; r < P; r++)
                fprintf(out,
                        "%s{\"rank\": %d, \"block_begin\": %lld, \"block_end\": %lld, "
                        "\"bytes_halo\": %lld, \"bytes_global\": %lld, \"bytes_rma\": %lld, "
                        "\"fetched_blocks\": %lld, \"batches\": %lld}",
                        r ? ", " : "", r, (long long)rb[r].block_begin, (long long)rb[r].block_end,
                        (long long)rb[r].bytes_halo, (long long)rb[r].bytes_global, (long long)rb[r].bytes_rma,
                        (long long)rb[r].fetched_blocks, (long long)rb[r].batches);
            fprintf(out,
                    "], \"bytes_halo\": %lld, \"bytes_global\": %lld, \"bytes_rma\": %lld, "
                    "\"bytes_halo_total\": %lld, \"bytes_global_total\": %lld, "
                    "\"bytes_rma_total\": %lld",
                    (long long)mx[0], (long long)mx[1], (long long)mx[2], (long long)tot[0],
                    (long long)tot[1], (long long)tot[2]);
        }
        if (o->stats) {
            fprintf(out,
                    ", \"hops\": {\"graph\": \"directed block graph, head 0\", \"sources\": "
                    "%lld, \"sampled\": %s, \"pairs\": %lld, \"reachable\": %lld, \"max\": %lld, "
                    "\"mean\": %.6f, \"histogram\": [",
                    (long long)hops.sources, hops.sources < nb ? "true" : "false",
                    (long long)hops.pairs, (long long)hops.reachable, (long long)hops.max,
                    hops.mean);
            for (int d = 0; d < 16; d++) fprintf(out, "%s%lld", d ? ", " : "", (long long)hops.hist[d]);
            fprintf(out, "]}");
        }
        if (o->image)
            fprintf(out, ", \"image\": {\"width\": %lld, \"height\": %lld, \"blocks_per_pixel\": %lld}",
                    (long long)side, (long long)side, (long long)f);
        fprintf(out, "}\n");
    } else {
        fprintf(out, "pattern: n %lld, heads %d, dim %d, block %d (%lld blocks), globals %lld (in %lld "
                     "blocks), %s\n  %s\n",
                (long long)n, cfg->heads, cfg->dim, cfg->block, (long long)nb,
                (long long)cfg->nglobals, (long long)cfg->nglobal_blocks,
                cfg->causal ? "causal" : "not causal", flags ? flags : "?");
        fprintf(out, "keys per query: min %lld, mean %.2f, max %lld (over %lld tokens x %d heads)\n",
                (long long)kmin, (double)ksum / rows, (long long)kmax, (long long)n, cfg->heads);
        fprintf(out, "density: %.6g of %s attention (%lld of %.6g pairs)\n", density,
                cfg->causal ? "causal dense n(n+1)/2" : "dense n*n", (long long)ksum,
                dense * cfg->heads);
        fprintf(out, "useful flops: %.6g (4 * dim * sum |S(i)|)\n", flops);
        if (P > 0) {
            fprintf(out, "bytes received per rank (P = %d):\n", P);
            fprintf(out, "%8s %12s %14s %14s %14s\n", "rank", "blocks", "halo", "global", "rma");
            for (int r = 0; r < P; r++)
                fprintf(out, "%8d %12lld %14lld %14lld %14lld\n", r, (long long)(rb[r].block_end - rb[r].block_begin),
                        (long long)rb[r].bytes_halo, (long long)rb[r].bytes_global, (long long)rb[r].bytes_rma);
            fprintf(out, "%8s %12lld %14lld %14lld %14lld\n", "total", (long long)nb,
                    (long long)tot[0], (long long)tot[1], (long long)tot[2]);
            fprintf(out, "%8s %12s %14lld %14lld %14lld\n", "max", "", (long long)mx[0],
                    (long long)mx[1], (long long)mx[2]);
        }
        if (o->stats) {
            fprintf(out, "hops (directed block graph of head 0, %s %lld source blocks):\n",
                    hops.sources < nb ? "sampled" : "all", (long long)hops.sources);
            fprintf(out, "  max %lld, mean %.4f, reachable pairs %.4f%% of %lld\n",
                    (long long)hops.max, hops.mean,
                    hops.pairs ? 100.0 * (double)hops.reachable / (double)hops.pairs : 0.0,
                    (long long)hops.pairs);
            fprintf(out, "  histogram:");
            for (int d = 1; d < 16; d++)
                if (hops.hist[d]) fprintf(out, " %d%s:%lld", d, d == 15 ? "+" : "", (long long)hops.hist[d]);
            fprintf(out, "\n");
        }
        if (o->image)
            fprintf(out, "image: %s, %lld x %lld pixels, %lld x %lld blocks per pixel\n", o->image,
                    (long long)side, (long long)side, (long long)f, (long long)f);
        if (o->export_layout) fprintf(out, "layout written: %s\n", o->export_layout);
    }
    free(flags);
    free(rb);
    return SPA_OK;
}
