/* cli_layer.c - `spa layer`: a multi-head attention layer from an HDF5 file
 * holding x and the projection weights (PyTorch's nn.Linear convention).
 *
 * The set-up mirrors `spa run`: the output path is checked first, the file
 * is opened and checked (shapes, with exit 3 naming the dataset), then the
 * pattern is validated against n, H and D, which come from the file (H
 * from --heads or the file's attribute `heads`, D = rows of wq / H). Every
 * step is agreed on every rank, so all ranks leave together and rank 0
 * prints the one message.
 */
#include "cli.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

void spa_cli_layer_help(FILE *f)
{
    fprintf(f, "usage: spa layer --input F [--output G] [--heads H] [--save-attention]\n"
               "                 [pattern flags] [--json] [--threads T]\n\n"
               "Multi-head attention from x and weights, as PyTorch's nn.Linear (y = x W^T + b):\n"
               "  Q = x wq^T + bq, K = x wk^T + bk, V = x wv^T + bv, split into H heads of D;\n"
               "  out = sparse attention with the pattern flags; y = concat_h(out_h) wo^T + bo.\n"
               "Each rank projects its own rows with OpenBLAS sgemm.\n\n"
               "  --input F          HDF5 file: x [n, d_model], wq, wk, wv [H*D, d_model],\n"
               "                     wo [d_model, H*D], optional bq, bk, bv [H*D], bo [d_model]\n"
               "                     (float32 or float64)\n"
               "  --output G         HDF5 file for y [n, d_model] (written atomically)\n"
               "  --heads H          number of heads (default: the file's attribute 'heads');\n"
               "                     D = rows of wq / H\n"
               "  --save-attention   also write out [H, n, D] and lse [H, n]\n"
               "  --json             one JSON object on stdout (rank 0): the time split into\n"
               "                     projections and attention, GFLOP/s of each, checksum of y\n"
               "  --threads T        OpenMP and OpenBLAS threads per rank\n\n");
}

#ifndef SPA_HAVE_HDF5
spa_err spa_cli_layer(MPI_Comm comm, spa_cli_opts *o)
{
    (void)comm, (void)o;
    CLI_FAIL(SPA_ERR_USAGE, "'spa layer' reads HDF5 files: this spa was built without HDF5");
}
#else
/* Rank 0 only. */
static void layer_report(const spa_cli_opts *o, const spa_layer_shape *sh, const double *mx,
                         int64_t flops_proj, const spa_layer_stats *st, int ranks)
{
    const spa_config *cfg = &o->cfg;
    /* mx: total, proj_in, proj_out, attention, io (slowest rank each) */
    double proj = mx[1] + mx[2];
    double gp = proj > 0 ? (double)flops_proj / proj * 1e-9 : 0.0;
    double ga = mx[3] > 0 ? (double)st->attn.flops / mx[3] * 1e-9 : 0.0;
    char *flags = spa_cli_pattern_flags(cfg);
    if (o->json) {
        printf("{\"command\": \"layer\", \"version\": \"%s\", \"n\": %lld, \"heads\": %d, \"dim\": %d, "
               "\"d_model\": %lld, \"ranks\": %d, \"threads\": %d",
               SPA_VERSION, (long long)cfg->n, cfg->heads, cfg->dim, (long long)sh->d_model, ranks,
               st->attn.threads);
        printf(", \"seconds_total\": %.9g, \"seconds_proj_in\": %.9g, \"seconds_proj_out\": %.9g, "
               "\"seconds_proj\": %.9g, \"seconds_attention\": %.9g, \"seconds_io\": %.9g",
               mx[0], mx[1], mx[2], proj, mx[3], mx[4]);
        printf(", \"flops_proj\": %lld, \"gflops_proj\": %.6g, \"flops_attention\": %lld, "
               "\"gflops_attention\": %.6g",
               (long long)flops_proj, gp, (long long)st->attn.flops, ga);
        printf(", \"checksum\": %.17g, \"checksum_attention\": %.17g", st->checksum, st->attn.checksum);
        spa_cli_json_str(stdout, "pattern", flags);
        spa_cli_json_str(stdout, "input", o->input);
        spa_cli_json_str(stdout, "output", o->output);
        printf("}\n");
    } else {
        printf("spa layer: n %lld, d_model %lld, heads %d, dim %d, %d ranks x %d threads\n",
               (long long)cfg->n, (long long)sh->d_model, cfg->heads, cfg->dim, ranks, st->attn.threads);
        printf("pattern: %s\n", flags ? flags : "?");
        printf("seconds (slowest rank): total %.4f, projections %.4f (in %.4f, out %.4f), "
               "attention %.4f, io %.4f\n",
               mx[0], proj, mx[1], mx[2], mx[3], mx[4]);
        printf("projections %.4g GFLOP/s (%.4g flops), attention %.4g GFLOP/s (%.4g useful flops)\n", gp,
               (double)flops_proj, ga, (double)st->attn.flops);
        if (o->output) printf("output %s\n", o->output);
        printf("checksum %.17g\n", st->checksum);
    }
    free(flags);
    fflush(stdout);
}

/* H and D from --heads or the file's attribute, and wq's rows. */
static spa_err layer_shape(spa_cli_opts *o, const spa_layer_shape *sh)
{
    CLI_REQUIRE(!o->has_dim, SPA_ERR_USAGE, "--dim comes from the --input file (rows of wq / heads); do not give it");
    if (o->has_heads) {
        CLI_REQUIRE(!sh->heads || sh->heads == o->cfg.heads, SPA_ERR_USAGE,
                    "--heads %d disagrees with the attribute heads = %d of '%s'", o->cfg.heads, sh->heads,
                    o->input);
    } else {
        CLI_REQUIRE(sh->heads > 0, SPA_ERR_USAGE,
                    "'spa layer' needs --heads (or a root attribute 'heads' in '%s')", o->input);
        o->cfg.heads = sh->heads;
    }
    CLI_REQUIRE(sh->hd % o->cfg.heads == 0 && sh->hd / o->cfg.heads <= INT32_MAX, SPA_ERR_INPUT,
                "'%s': dataset 'wq' has %lld rows (H*D), not a multiple of heads = %d", o->input,
                (long long)sh->hd, o->cfg.heads);
    o->cfg.n = sh->n;
    o->cfg.dim = (int32_t)(sh->hd / o->cfg.heads);
    return SPA_OK;
}

spa_err spa_cli_layer(MPI_Comm comm, spa_cli_opts *o)
{
    int rank, P;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &P);
    if (o->threads > 0) omp_set_num_threads(o->threads);
    spa_layer_input in = NULL;
    spa_layer_shape sh;
    spa_layer_weights w;
    spa_layer_stats st;
    spa_ctx ctx = NULL;
    float *x = NULL, *y = NULL, *out = NULL, *lse = NULL;
    double t_io = 0.0, t;
    int64_t t0 = 0, t1 = 0;
    memset(&w, 0, sizeof w);
    spa_err err = SPA_OK;

    if (o->output) {
        err = spa_cli_check_output("output", o->output, o->input);
        if (err == SPA_OK && o->layout) err = spa_cli_check_output("output", o->output, o->layout);
        if ((err = spa_agree(comm, err)) != SPA_OK) goto done;
    }
    t = spa_now();
    err = spa_cli_probe_input(comm, "input", o->input);
    spa_cli_guard_input(comm, "input", o->input);
    if (!err) err = spa_io_layer_open(comm, o->input, &in, &sh);
    spa_cli_unguard_input();
    t_io += spa_now() - t;
    if (err) goto done;
    if ((err = spa_agree(comm, layer_shape(o, &sh))) != SPA_OK) goto done;
    if ((err = spa_cli_pattern(comm, o)) != SPA_OK) goto done;
    if ((err = spa_agree(comm, spa_ctx_create(comm, &o->cfg, o->threads, &ctx))) != SPA_OK) goto done;
    spa_ctx_shard(ctx, &t0, &t1);

    size_t rows = (size_t)(t1 - t0), dm = (size_t)sh.d_model;
    size_t hrd = (size_t)o->cfg.heads * rows * (size_t)o->cfg.dim;
    x = spa_alloc(rows * dm * sizeof(float));
    y = spa_alloc(rows * dm * sizeof(float));
    if (o->save_attention) {
        out = spa_alloc(hrd * sizeof(float));
        lse = spa_alloc((size_t)o->cfg.heads * rows * sizeof(float));
    }
    err = x && y && (!o->save_attention || (out && lse))
              ? SPA_OK
              : spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory for x and y");
    if ((err = spa_agree(comm, err)) != SPA_OK) goto done;

    t = spa_now();
    spa_cli_guard_input(comm, "input", o->input);
    err = spa_io_layer_read(in, t0, t1, x, &w);
    spa_cli_unguard_input();
    t_io += spa_now() - t;
    if (err) goto done;
    if ((err = spa_agree(comm, spa_layer_run(ctx, &w, x, y, out, lse, &st))) != SPA_OK) goto done;

    if (o->output) {
        char *flags = spa_cli_pattern_flags(&o->cfg);
        t = spa_now();
        err = spa_io_layer_write(comm, o->output, &o->cfg, sh.d_model, t0, t1, y, out, lse, flags);
        t_io += spa_now() - t;
        free(flags);
        if (err) goto done;
    }
    double loc[5] = {st.seconds_total, st.seconds_proj_in, st.seconds_proj_out, st.attn.seconds_total, t_io};
    double mx[5];
    int64_t fp = 0;
    MPI_Reduce(loc, mx, 5, MPI_DOUBLE, MPI_MAX, 0, comm);
    MPI_Reduce(&st.flops_proj, &fp, 1, MPI_INT64_T, MPI_SUM, 0, comm);
    if (rank == 0) layer_report(o, &sh, mx, fp, &st, P);

done:
    spa_io_layer_free_weights(&w);
    spa_free(x), spa_free(y), spa_free(out), spa_free(lse);
    spa_ctx_destroy(&ctx);
    spa_io_layer_close(&in);
    return err;
}
#endif
