/* cli_run.c - `spa run`, `spa gen`, `spa bench` and `spa grad`: set up the
 * inputs, call the runtime, and report on rank 0.
 *
 * Every step that may fail on one rank only (a file, an allocation, a
 * runtime call) is followed by spa_agree on every rank, so all ranks take
 * the same branch and leave together; rank 0 then prints the one message.
 * The output path is checked before any work, and spa_io_write replaces
 * the file atomically, so a failed run never touches an existing output.
 *
 * Reported figures: seconds are the slowest rank's; bytes_* are the
 * largest per-rank receive count and bytes_*_total the sum over ranks;
 * flops and checksum are already global in spa_stats.
 */
#include "cli.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* spa_stats reduced over ranks, plus what the CLI measures itself. */
typedef struct cli_report {
    spa_stats st;              /* seconds: max; bytes: max; flops, checksum: global */
    int64_t bytes_total[3];    /* halo, global, rma summed over ranks */
    int64_t peak_rss;          /* max over ranks, bytes */
    int ranks;
    int rma_all;               /* random links went over MPI_Get on every rank */
    int backward;              /* st is spa_ctx_backward's: report bytes_*_bwd */
} cli_report;

static int64_t peak_rss_bytes(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (int64_t)ru.ru_maxrss * 1024; /* Linux reports KiB */
}

/* Collective; the result is valid on rank 0. */
static void reduce_stats(MPI_Comm comm, const spa_stats *st, double seconds_io, cli_report *rep)
{
    double sec[7] = {st->seconds_total, st->seconds_compute, st->seconds_halo,
                     st->seconds_global, st->seconds_rma, seconds_io, st->seconds_wait};
    double secmax[7];
    int64_t loc[9] = {st->bytes_halo, st->bytes_global, st->bytes_rma, peak_rss_bytes(),
                      st->rma ? 0 : 1, st->batches, st->bytes_halo_bwd, st->bytes_rma_bwd,
                      st->bytes_global_bwd};
    int64_t mx[9], sum[3];
    MPI_Reduce(sec, secmax, 7, MPI_DOUBLE, MPI_MAX, 0, comm);
    MPI_Reduce(loc, mx, 9, MPI_INT64_T, MPI_MAX, 0, comm);
    MPI_Reduce(loc, sum, 3, MPI_INT64_T, MPI_SUM, 0, comm);
    MPI_Comm_size(comm, &rep->ranks);
    rep->st = *st;
    rep->st.seconds_total = secmax[0];
    rep->st.seconds_compute = secmax[1];
    rep->st.seconds_halo = secmax[2];
    rep->st.seconds_global = secmax[3];
    rep->st.seconds_rma = secmax[4];
    rep->st.seconds_io = secmax[5];
    rep->st.seconds_wait = secmax[6];
    rep->st.bytes_halo = mx[0];
    rep->st.bytes_global = mx[1];
    rep->st.bytes_rma = mx[2];
    rep->peak_rss = mx[3];
    rep->rma_all = mx[4] == 0;
    rep->st.batches = (int)mx[5];
    rep->st.bytes_halo_bwd = mx[6];
    rep->st.bytes_rma_bwd = mx[7];
    rep->st.bytes_global_bwd = mx[8];
    rep->backward = 0;
    memcpy(rep->bytes_total, sum, sizeof sum);
}

static void json_num(FILE *f, const char *key, double v)
{
    if (isfinite(v)) fprintf(f, ", \"%s\": %.17g", key, v);
    else fprintf(f, ", \"%s\": null", key);
}

/* Rank 0 only. extra prints command-specific fields (JSON) or lines. */
static void print_report(const spa_cli_opts *o, const cli_report *rep, const char *cmd,
                         void (*extra)(FILE *, const spa_cli_opts *, int json, const void *),
                         const void *extra_arg)
{
    const spa_config *cfg = &o->cfg;
    const spa_stats *s = &rep->st;
    double gflops = s->seconds_total > 0 ? (double)s->flops / s->seconds_total * 1e-9 : 0.0;
    const char *transport = rep->rma_all ? "rma" : "p2p";
    FILE *f = stdout;
    int64_t lsize;
    const char *mode = spa_cli_local_mode(cfg, &lsize);
    char *flags = spa_cli_pattern_flags(cfg);
    if (o->json) {
        fprintf(f, "{\"command\": \"%s\", \"version\": \"%s\", \"kernel\": \"%s\", \"n\": %lld, \"heads\": %d, "
                   "\"dim\": %d, \"ranks\": %d, \"threads\": %d",
                cmd, SPA_VERSION, spa_kernel_name(), (long long)cfg->n, cfg->heads, cfg->dim, rep->ranks, s->threads);
        json_num(f, "seconds_total", s->seconds_total);
        json_num(f, "seconds_compute", s->seconds_compute);
        json_num(f, "seconds_halo", s->seconds_halo);
        json_num(f, "seconds_global", s->seconds_global);
        json_num(f, "seconds_rma", s->seconds_rma);
        json_num(f, "seconds_io", s->seconds_io);
        json_num(f, "seconds_wait", s->seconds_wait);
        fprintf(f, ", \"bytes_halo\": %lld, \"bytes_global\": %lld, \"bytes_rma\": %lld",
                (long long)s->bytes_halo, (long long)s->bytes_global, (long long)s->bytes_rma);
        fprintf(f, ", \"bytes_halo_total\": %lld, \"bytes_global_total\": %lld, "
                   "\"bytes_rma_total\": %lld",
                (long long)rep->bytes_total[0], (long long)rep->bytes_total[1],
                (long long)rep->bytes_total[2]);
        if (rep->backward)
            fprintf(f, ", \"bytes_halo_bwd\": %lld, \"bytes_rma_bwd\": %lld, \"bytes_global_bwd\": %lld",
                    (long long)s->bytes_halo_bwd, (long long)s->bytes_rma_bwd,
                    (long long)s->bytes_global_bwd);
        fprintf(f, ", \"exact\": %s", o->exact ? "true" : "false");
        fprintf(f, ", \"random_transport\": \"%s\", \"flops\": %lld", transport, (long long)s->flops);
        json_num(f, "gflops", gflops);
        json_num(f, "checksum", s->checksum);
        fprintf(f, ", \"peak_rss_bytes\": %lld, \"block\": %d", (long long)rep->peak_rss, cfg->block);
        fprintf(f, ", \"fetch_bytes\": %lld, \"batches\": %d", (long long)cfg->fetch_bytes, s->batches);
        if (strcmp(mode, "blocks") == 0 || strcmp(mode, "none") == 0)
            fprintf(f, ", \"local_blocks\": %lld", (long long)lsize);
        else if (strcmp(mode, "radius") == 0)
            fprintf(f, ", \"radius\": %lld", (long long)lsize);
        fprintf(f, ", \"random\": %d, \"seed\": %llu, \"causal\": %s, \"globals\": %lld",
                cfg->random_max, (unsigned long long)cfg->seed, cfg->causal ? "true" : "false",
                (long long)cfg->nglobals);
        json_num(f, "scale", (double)cfg->scale);
        spa_cli_json_str(f, "pattern", flags);
        if (extra) extra(f, o, 1, extra_arg);
        fprintf(f, "}\n");
    } else {
        fprintf(f, "spa %s: n %lld, heads %d, dim %d, %d ranks x %d threads\n", cmd,
                (long long)cfg->n, cfg->heads, cfg->dim, rep->ranks, s->threads);
        fprintf(f, "pattern: %s (%lld globals)\n", flags ? flags : "?", (long long)cfg->nglobals);
        fprintf(f, "seconds (slowest rank): total %.4f, compute %.4f, halo %.4f, global %.4f, "
                   "rma %.4f, wait %.4f, io %.4f\n",
                s->seconds_total, s->seconds_compute, s->seconds_halo, s->seconds_global,
                s->seconds_rma, s->seconds_wait, s->seconds_io);
        fprintf(f, "bytes received (largest rank / all ranks): halo %lld / %lld, global %lld / %lld, "
                   "%s %lld / %lld\n",
                (long long)s->bytes_halo, (long long)rep->bytes_total[0], (long long)s->bytes_global,
                (long long)rep->bytes_total[1], transport, (long long)s->bytes_rma,
                (long long)rep->bytes_total[2]);
        if (rep->backward)
            fprintf(f, "gradient bytes sent back (largest rank): halo %lld, global %lld, %s %lld\n",
                    (long long)s->bytes_halo_bwd, (long long)s->bytes_global_bwd, transport,
                    (long long)s->bytes_rma_bwd);
        fprintf(f, "useful flops %.6g, %.3f GFLOP/s, peak RSS %.1f MiB (largest rank)\n",
                (double)s->flops, gflops, (double)rep->peak_rss / 1048576.0);
        if (extra) extra(f, o, 0, extra_arg);
        fprintf(f, "checksum %.17g\n", s->checksum);
    }
    free(flags);
    fflush(f);
}

/* ------------------------------------------------------------- progress */

typedef struct progress {
    double t0, units; /* units: (head, query block) tasks of rank 0 */
    const char *label;
    int shown;
} progress;

static void progress_line(double frac, void *arg)
{
    progress *p = arg;
    double el = spa_now() - p->t0, rate = el > 0 ? frac * p->units / el : 0.0;
    double eta = frac > 0 ? el * (1.0 - frac) / frac : 0.0;
    fprintf(stderr, "\rspa: %s %5.1f%%  %.0f query blocks/s  ETA %.0f s   ", p->label, 100.0 * frac,
            rate, eta);
    fflush(stderr);
    p->shown = 1;
}

static void progress_end(progress *p)
{
    if (p->shown) {
        fputc('\n', stderr);
        fflush(stderr);
    }
    p->shown = 0;
}

static int want_progress(const spa_cli_opts *o, int rank)
{
    return rank == 0 && (o->progress || isatty(STDERR_FILENO));
}

/* ---------------------------------------------------------------- shards */

/* This rank's q, k, v, out, lse: [H][t1 - t0][D] each (lse [H][t1 - t0]). */
typedef struct shards {
    float *q, *k, *v, *out, *lse;
    int own_kv; /* k, v allocated here, not the context's window memory */
} shards;

static spa_err shards_alloc(spa_ctx ctx, const spa_config *cfg, int64_t rows, shards *s)
{
    size_t elems = (size_t)cfg->heads * (size_t)rows * (size_t)cfg->dim;
    size_t bytes = elems * sizeof(float);
    memset(s, 0, sizeof *s);
    /* k and v live in the context's MPI window when it has one: no copy */
    spa_ctx_kv_buffers(ctx, &s->k, &s->v);
    s->own_kv = s->k == NULL;
    s->q = spa_alloc(bytes);
    if (s->own_kv) {
        s->k = spa_alloc(bytes);
        s->v = spa_alloc(bytes);
    }
    s->out = spa_alloc(bytes);
    s->lse = spa_alloc((size_t)cfg->heads * (size_t)rows * sizeof(float));
    CLI_REQUIRE(s->q && s->k && s->v && s->out && s->lse, SPA_ERR_OTHER,
                "out of memory for the shards (5 x %.3g GB)", (double)bytes * 1e-9);
    return SPA_OK;
}

static void shards_free(shards *s)
{
    if (s->own_kv) spa_free(s->k), spa_free(s->v);
    spa_free(s->q), spa_free(s->out), spa_free(s->lse);
    memset(s, 0, sizeof *s);
}

/* This rank's dout and the gradients dq, dk, dv: [H][t1 - t0][D] each. */
typedef struct grads {
    float *dout, *dq, *dk, *dv;
} grads;

static spa_err grads_alloc(const spa_config *cfg, int64_t rows, grads *g)
{
    size_t bytes = (size_t)cfg->heads * (size_t)rows * (size_t)cfg->dim * sizeof(float);
    g->dout = spa_alloc(bytes);
    g->dq = spa_alloc(bytes);
    g->dk = spa_alloc(bytes);
    g->dv = spa_alloc(bytes);
    CLI_REQUIRE(g->dout && g->dq && g->dk && g->dv, SPA_ERR_OTHER,
                "out of memory for the gradients (4 x %.3g GB)", (double)bytes * 1e-9);
    return SPA_OK;
}

static void grads_free(grads *g)
{
    spa_free(g->dout), spa_free(g->dq), spa_free(g->dk), spa_free(g->dv);
    memset(g, 0, sizeof *g);
}

static void shards_synth(const spa_cli_opts *o, int64_t t0, int64_t t1, shards *s)
{
    const spa_config *cfg = &o->cfg;
    int64_t hs = (t1 - t0) * cfg->dim;
    float temp = (float)o->temperature;
    for (int32_t h = 0; h < cfg->heads; h++) {
        spa_synth(cfg->seed, temp, 0, h, t0, t1, cfg->dim, s->q + h * hs);
        spa_synth(cfg->seed, temp, 1, h, t0, t1, cfg->dim, s->k + h * hs);
        spa_synth(cfg->seed, temp, 2, h, t0, t1, cfg->dim, s->v + h * hs);
    }
}

static void apply_threads(const spa_cli_opts *o)
{
    if (o->threads > 0) omp_set_num_threads(o->threads);
}

/* ------------------------------------------------------------------- run */

static void run_extra(FILE *f, const spa_cli_opts *o, int json, const void *arg)
{
    (void)arg;
    if (json) {
        spa_cli_json_str(f, "input", o->input);
        spa_cli_json_str(f, "output", o->output);
        json_num(f, "temperature", o->input ? NAN : o->temperature);
    } else {
        if (o->input) fprintf(f, "input %s\n", o->input);
        if (o->output) fprintf(f, "output %s\n", o->output);
    }
}

/* Collective. Validates the pattern, creates the context and allocates this
 * rank's shards: the set-up run and bench share. */
static spa_err open_ctx(MPI_Comm comm, spa_cli_opts *o, spa_ctx *ctx, shards *sh, int64_t *t0, int64_t *t1)
{
    spa_err err = spa_cli_pattern(comm, o);
    if (err) return err;
    err = spa_agree(comm, spa_ctx_create(comm, &o->cfg, o->threads, ctx));
    if (err) return err;
    spa_ctx_set_overlap(*ctx, !o->no_overlap);
    spa_ctx_set_exact(*ctx, o->exact);
    spa_ctx_shard(*ctx, t0, t1);
    return spa_agree(comm, shards_alloc(*ctx, &o->cfg, *t1 - *t0, sh));
}

spa_err spa_cli_run(MPI_Comm comm, spa_cli_opts *o)
{
    int rank;
    MPI_Comm_rank(comm, &rank);
    apply_threads(o);
    spa_config *cfg = &o->cfg;
    spa_input in = NULL;
    spa_ctx ctx = NULL;
    shards sh = {0};
    spa_shape shape;
    spa_stats st;
    double t_io = 0.0, t;
    int64_t t0 = 0, t1 = 0;
    spa_err err = SPA_OK;

    if (o->output) {
        err = spa_cli_check_output("output", o->output, o->input);
        /* the layout is an input too: never replace it with the result */
        if (err == SPA_OK && o->layout) err = spa_cli_check_output("output", o->output, o->layout);
        err = spa_agree(comm, err);
        if (err) goto done;
    }
    if (o->input) {
        t = spa_now();
        err = spa_cli_probe_input(comm, "input", o->input);
        spa_cli_guard_input(comm, "input", o->input);
        if (!err) err = spa_agree(comm, spa_io_open(comm, o->input, &in, &shape));
        spa_cli_unguard_input();
        t_io += spa_now() - t;
        if (!err) err = spa_cli_stop_check(comm, "while opening the input");
        if (err) goto done;
        cfg->n = shape.n;
        cfg->heads = shape.heads;
        cfg->dim = shape.dim;
    } else {
        memset(&shape, 0, sizeof shape);
        shape.rank = 3;
        shape.dims[0] = cfg->heads;
        shape.dims[1] = cfg->n;
        shape.dims[2] = cfg->dim;
        shape.n = cfg->n;
        shape.heads = cfg->heads;
        shape.dim = cfg->dim;
    }
    err = open_ctx(comm, o, &ctx, &sh, &t0, &t1);
    if (err) goto done;
    if (in) {
        t = spa_now();
        spa_cli_guard_input(comm, "input", o->input);
        err = spa_agree(comm, spa_io_read(in, t0, t1, sh.q, sh.k, sh.v));
        spa_cli_unguard_input();
        t_io += spa_now() - t;
        if (!err) err = spa_cli_stop_check(comm, "while reading the input");
        if (err) goto done;
    } else {
        shards_synth(o, t0, t1, &sh);
    }

    progress pr = {spa_now(), (double)cfg->heads * (double)(spa_ctx_plan(ctx)->b1 - spa_ctx_plan(ctx)->b0),
                   "run", 0};
    if (want_progress(o, rank)) spa_ctx_set_progress(ctx, progress_line, &pr);
    spa_cli_test_delay_compute(ctx);
    err = spa_agree(comm, spa_ctx_run(ctx, sh.q, sh.k, sh.v, sh.out, sh.lse, &st));
    progress_end(&pr);
    if (!err) err = spa_cli_stop_check(comm, "while computing");
    if (err) goto done;

    if (o->output) {
        t = spa_now();
        err = spa_agree(comm, spa_io_write(comm, o->output, &shape, cfg, t0, t1, sh.out, sh.lse,
                                           st.threads));
        t_io += spa_now() - t;
        if (err) goto done;
    }
    cli_report rep;
    reduce_stats(comm, &st, t_io, &rep);
    if (rank == 0) print_report(o, &rep, "run", run_extra, NULL);

done:
    shards_free(&sh);
    spa_ctx_destroy(&ctx);
    spa_io_close(&in);
    return err;
}

/* ------------------------------------------------------------------ grad */

typedef struct grad_info {
    int stored;            /* out and lse came from the input */
    double seconds_forward; /* recomputing them (slowest rank); 0 when stored */
} grad_info;

static void grad_extra(FILE *f, const spa_cli_opts *o, int json, const void *arg)
{
    const grad_info *g = arg;
    run_extra(f, o, json, NULL);
    if (json) {
        fprintf(f, ", \"forward\": \"%s\"", g->stored ? "stored" : "recomputed");
        json_num(f, "seconds_forward", g->seconds_forward);
    } else {
        if (g->stored) fprintf(f, "out, lse: read from the input\n");
        else fprintf(f, "out, lse: recomputed in %.4f s (not in seconds_total)\n", g->seconds_forward);
    }
}

spa_err spa_cli_grad(MPI_Comm comm, spa_cli_opts *o)
{
    int rank;
    MPI_Comm_rank(comm, &rank);
    apply_threads(o);
    spa_config *cfg = &o->cfg;
    spa_input in = NULL;
    spa_ctx ctx = NULL;
    shards sh = {0};
    grads gr = {0};
    spa_shape shape;
    spa_stats st;
    grad_info gi = {0, 0.0};
    double t_io = 0.0, t;
    int64_t t0 = 0, t1 = 0;
    spa_err err = SPA_OK;

    if (o->output) {
        err = spa_cli_check_output("output", o->output, o->input);
        if (err == SPA_OK && o->layout) err = spa_cli_check_output("output", o->output, o->layout);
        err = spa_agree(comm, err);
        if (err) goto done;
    }
    t = spa_now();
    err = spa_cli_probe_input(comm, "input", o->input);
    spa_cli_guard_input(comm, "input", o->input);
    if (!err) err = spa_agree(comm, spa_io_open(comm, o->input, &in, &shape));
    if (!err) err = spa_io_open_grad(in, &gi.stored);
    spa_cli_unguard_input();
    t_io += spa_now() - t;
    if (!err) err = spa_cli_stop_check(comm, "while opening the input");
    if (err) goto done;
    cfg->n = shape.n;
    cfg->heads = shape.heads;
    cfg->dim = shape.dim;
    err = open_ctx(comm, o, &ctx, &sh, &t0, &t1);
    /* out and lse are used only when they are this pattern's */
    spa_cli_guard_input(comm, "input", o->input);
    if (!err && gi.stored) err = spa_io_check_forward(in, cfg);
    spa_cli_unguard_input();
    if (!err) err = spa_agree(comm, grads_alloc(cfg, t1 - t0, &gr));
    if (err) goto done;
    t = spa_now();
    spa_cli_guard_input(comm, "input", o->input);
    err = spa_agree(comm, spa_io_read(in, t0, t1, sh.q, sh.k, sh.v));
    if (!err) err = spa_io_read_grad(in, t0, t1, gr.dout, gi.stored ? sh.out : NULL, gi.stored ? sh.lse : NULL);
    spa_cli_unguard_input();
    t_io += spa_now() - t;
    if (!err) err = spa_cli_stop_check(comm, "while reading the input");
    if (err) goto done;

    if (!gi.stored) {
        t = spa_now();
        err = spa_agree(comm, spa_ctx_run(ctx, sh.q, sh.k, sh.v, sh.out, sh.lse, NULL));
        double el = spa_now() - t;
        MPI_Allreduce(&el, &gi.seconds_forward, 1, MPI_DOUBLE, MPI_MAX, comm);
        if (!err) err = spa_cli_stop_check(comm, "while computing out and lse");
        if (err) goto done;
    }
    spa_cli_test_delay_compute(ctx);
    err = spa_agree(comm, spa_ctx_backward(ctx, sh.q, sh.k, sh.v, sh.out, sh.lse, gr.dout, gr.dq,
                                           gr.dk, gr.dv, &st));
    if (!err) err = spa_cli_stop_check(comm, "while computing the gradients");
    if (err) goto done;

    if (o->output) {
        t = spa_now();
        err = spa_agree(comm, spa_io_write_grad(comm, o->output, &shape, cfg, t0, t1, gr.dq, gr.dk,
                                                gr.dv, st.threads));
        t_io += spa_now() - t;
        if (err) goto done;
    }
    cli_report rep;
    reduce_stats(comm, &st, t_io, &rep);
    rep.backward = 1;
    if (rank == 0) print_report(o, &rep, "grad", grad_extra, &gi);

done:
    grads_free(&gr);
    shards_free(&sh);
    spa_ctx_destroy(&ctx);
    spa_io_close(&in);
    return err;
}

/* ------------------------------------------------------------------- gen */

spa_err spa_cli_gen(MPI_Comm comm, spa_cli_opts *o)
{
    int rank;
    MPI_Comm_rank(comm, &rank);
    apply_threads(o);
    spa_err err = spa_agree(comm, spa_cli_check_output("output", o->output, NULL));
    if (err) return err;
    /* n, heads and dim must be sane before sizing a file by them */
    spa_config chk;
    spa_config_init(&chk);
    chk.n = o->cfg.n;
    chk.heads = o->cfg.heads;
    chk.dim = o->cfg.dim;
    err = spa_config_set_globals(&chk, "none");
    if (err == SPA_OK) err = spa_config_validate(&chk);
    spa_config_free(&chk);
    err = spa_agree(comm, err);
    if (err) return err;
    double t = spa_now();
    err = spa_agree(comm, (o->grad ? spa_io_gen_grad : spa_io_gen)(comm, o->output, o->cfg.n, o->cfg.heads,
                                                                   o->cfg.dim, o->cfg.seed,
                                                                   (float)o->temperature));
    t = spa_now() - t;
    if (err) return err;
    if (rank == 0) {
        double bytes = (o->grad ? 4.0 : 3.0) * (double)o->cfg.n * o->cfg.heads * o->cfg.dim * 4.0;
        printf("spa gen: wrote %s: %s [%d, %lld, %d] float32 (%.3g GB), seed %llu, "
               "temperature %g, %.3f s\n",
               o->output, o->grad ? "q, k, v, dout" : "q, k, v", o->cfg.heads, (long long)o->cfg.n, o->cfg.dim, bytes * 1e-9,
               (unsigned long long)o->cfg.seed, o->temperature, t);
        fflush(stdout);
    }
    return SPA_OK;
}

/* ----------------------------------------------------------------- bench */

typedef struct bench_info {
    int warmup, reps;
    double tmin, tmax;
} bench_info;

static void bench_extra(FILE *f, const spa_cli_opts *o, int json, const void *arg)
{
    const bench_info *b = arg;
    if (json) {
        fprintf(f, ", \"warmup\": %d, \"reps\": %d, \"statistic\": \"median\"", b->warmup, b->reps);
        fprintf(f, ", \"pass\": \"%s\"", o->backward ? "backward" : "forward");
        json_num(f, "seconds_total_min", b->tmin);
        json_num(f, "seconds_total_max", b->tmax);
        json_num(f, "temperature", o->temperature);
    } else {
        fprintf(f, "median of %d timed %s after %d warm-up; seconds_total min %.4f, max %.4f\n",
                b->reps, o->backward ? "backward passes (forward once, untimed)" : "runs", b->warmup,
                b->tmin, b->tmax);
    }
}

static int cmp_total(const void *a, const void *b)
{
    double x = ((const cli_report *)a)->st.seconds_total, y = ((const cli_report *)b)->st.seconds_total;
    return (x > y) - (x < y);
}

spa_err spa_cli_bench(MPI_Comm comm, spa_cli_opts *o)
{
    int rank;
    MPI_Comm_rank(comm, &rank);
    apply_threads(o);
    spa_config *cfg = &o->cfg;
    spa_ctx ctx = NULL;
    shards sh = {0};
    grads gr = {0};
    cli_report *reps = NULL;
    int64_t t0 = 0, t1 = 0;
    spa_err err = open_ctx(comm, o, &ctx, &sh, &t0, &t1);
    if (err) goto done;
    reps = calloc((size_t)o->reps, sizeof *reps);
    err = spa_agree(comm, reps ? SPA_OK : spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory"));
    if (!err && o->backward) err = spa_agree(comm, grads_alloc(cfg, t1 - t0, &gr));
    if (err) goto done;
    shards_synth(o, t0, t1, &sh);
    if (o->backward) {
        /* the backward pass needs out and lse: one forward run, untimed */
        int64_t hs = (t1 - t0) * cfg->dim;
        for (int32_t h = 0; h < cfg->heads; h++)
            spa_synth(cfg->seed, (float)o->temperature, 3, h, t0, t1, cfg->dim, gr.dout + h * hs);
        err = spa_agree(comm, spa_ctx_run(ctx, sh.q, sh.k, sh.v, sh.out, sh.lse, NULL));
        if (!err) err = spa_cli_stop_check(comm, "while benchmarking");
        if (err) goto done;
    }

    int show = want_progress(o, rank);
    double units = (double)cfg->heads * (double)(spa_ctx_plan(ctx)->b1 - spa_ctx_plan(ctx)->b0);
    char label[64];
    for (int it = 0; it < o->warmup + o->reps; it++) {
        int timed = it >= o->warmup;
        if (timed) snprintf(label, sizeof label, "run %d/%d", it - o->warmup + 1, o->reps);
        else snprintf(label, sizeof label, "warm-up %d/%d", it + 1, o->warmup);
        progress pr = {spa_now(), units, label, 0};
        if (show) spa_ctx_set_progress(ctx, progress_line, &pr);
        spa_stats st;
        if (o->backward)
            err = spa_agree(comm, spa_ctx_backward(ctx, sh.q, sh.k, sh.v, sh.out, sh.lse, gr.dout, gr.dq,
                                                   gr.dk, gr.dv, &st));
        else
            err = spa_agree(comm, spa_ctx_run(ctx, sh.q, sh.k, sh.v, sh.out, sh.lse, &st));
        progress_end(&pr);
        spa_ctx_set_progress(ctx, NULL, NULL);
        if (!err) err = spa_cli_stop_check(comm, "while benchmarking");
        if (err) goto done;
        if (timed) {
            reduce_stats(comm, &st, 0.0, &reps[it - o->warmup]);
            reps[it - o->warmup].backward = o->backward;
        }
    }
    if (rank == 0) {
        qsort(reps, (size_t)o->reps, sizeof *reps, cmp_total);
        /* the lower median: an actual run, so its fields are consistent */
        bench_info bi = {o->warmup, o->reps, reps[0].st.seconds_total,
                         reps[o->reps - 1].st.seconds_total};
        print_report(o, &reps[(o->reps - 1) / 2], "bench", bench_extra, &bi);
    }

done:
    free(reps);
    grads_free(&gr);
    shards_free(&sh);
    spa_ctx_destroy(&ctx);
    return err;
}
