/* cli.h - the spa command line: flag parsing and the commands. The block
 * mask, hop counts and PNG of `spa plan` are the library's (spa_plan_*,
 * spa_write_png in spa.h).
 *
 * main.c only initialises MPI, dispatches and reports the error; the
 * commands live in cli_*.c (the spa_cli_lib target) so that tests can call
 * them directly. The command line is a client of the library: it
 * includes the public spa.h only.
 */
#ifndef SPA_CLI_H
#define SPA_CLI_H

#include "spa.h"

#include <stdio.h>

/* The library's error idiom, for the command line: record a message as
 * spa_last_error() and return its code. */
#define CLI_FAIL(code, ...) return spa_set_error((code), __FILE__, __LINE__, __VA_ARGS__)
#define CLI_CHECK(call)                                                                            \
    do {                                                                                           \
        spa_err cli_e_ = (call);                                                                   \
        if (cli_e_ != SPA_OK) return cli_e_;                                                       \
    } while (0)
#define CLI_REQUIRE(cond, code, ...)                                                               \
    do {                                                                                           \
        if (!(cond)) CLI_FAIL((code), __VA_ARGS__);                                                \
    } while (0)

typedef enum spa_cli_cmd {
    SPA_CLI_NONE = 0,
    SPA_CLI_RUN,
    SPA_CLI_GEN,
    SPA_CLI_BENCH,
    SPA_CLI_PLAN,
    SPA_CLI_LAYER,         /* cli_layer.c */
    SPA_CLI_GRAD           /* cli_run.c: the backward pass on a file */
} spa_cli_cmd;

typedef struct spa_cli_opts {
    spa_cli_cmd cmd;
    spa_config cfg;        /* pattern flags and n, heads, dim */
    const char *input, *output, *image;
    const char *layout;    /* --layout file, read by spa_cli_pattern */
    const char *export_layout; /* plan --export-layout */
    int json, progress, stats, help, version, no_overlap;
    int exact;             /* run, bench, grad: spa_ctx_set_exact */
    int threads;           /* 0 = OpenMP default */
    double temperature;    /* scale of the synthetic q and k */
    int warmup, reps;      /* bench */
    int plan_ranks;        /* plan --ranks; 0 = no per-rank table */
    int has_n, has_shape;  /* --n given; any of --n --heads --dim given */
    int has_heads, has_dim, save_attention; /* layer: --heads, --dim, --save-attention */
    int grad;              /* gen --grad: also write dout */
    int backward;          /* bench --backward: time spa_ctx_backward */
} spa_cli_opts;

/* Parses argv into o (o->cfg is initialised here; free it with
 * spa_config_free). SPA_ERR_USAGE with a message on bad flags. Does not
 * validate the config: n may still come from an input file. */
spa_err spa_cli_parse(int argc, char **argv, spa_cli_opts *o);

/* Collective over comm. Validates o->cfg (n, heads and dim final) and,
 * with --layout, reads the layout file and validates again with it. Every
 * rank returns the same code: SPA_ERR_USAGE for bad pattern flags,
 * SPA_ERR_INPUT for a bad layout file. */
spa_err spa_cli_pattern(MPI_Comm comm, spa_cli_opts *o);

/* The pattern as the flags that give it, e.g. "--block 64 --local-blocks
 * 3@0:4 --stride 362@4:8 --random 3 --seed 0 --globals none --causal".
 * cfg validated. Returns a malloc'ed string (NULL when out of memory). */
char *spa_cli_pattern_flags(const spa_config *cfg);

/* The local rule shared by every head: "blocks" (*size = W), "radius"
 * (*size = R), "none", or "per-head" when heads differ (*size = -1). */
const char *spa_cli_local_mode(const spa_config *cfg, int64_t *size);

/* Writes `, "key": "s"` with JSON escapes, or `, "key": null`. */
void spa_cli_json_str(FILE *f, const char *key, const char *s);

/* Help text of one command (SPA_CLI_NONE: the overview). */
void spa_cli_help(FILE *f, spa_cli_cmd cmd);

/* Checks an output path before any work: not a folder, its folder exists
 * and is writable, and it is not the input file. SPA_ERR_USAGE otherwise.
 * what names the flag in the message. */
spa_err spa_cli_check_output(const char *what, const char *path, const char *input);

/* The commands. Collective over comm; every rank returns the same code and
 * rank 0 prints the result. */
spa_err spa_cli_run(MPI_Comm comm, spa_cli_opts *o);
spa_err spa_cli_gen(MPI_Comm comm, spa_cli_opts *o);
spa_err spa_cli_bench(MPI_Comm comm, spa_cli_opts *o);
/* spa grad: dq, dk, dv of an input holding q, k, v, dout [, out, lse]. */
spa_err spa_cli_grad(MPI_Comm comm, spa_cli_opts *o);
spa_err spa_cli_layer(MPI_Comm comm, spa_cli_opts *o);
/* The help of `spa layer` before the pattern flags' (cli_layer.c). */
void spa_cli_layer_help(FILE *f);
/* Not collective: one process computes the whole report. cfg validated. */
spa_err spa_cli_plan(const spa_cli_opts *o, FILE *out);

/* ------------------------------------------------------- stop requests */

/* Installs the handlers of SIGTERM, SIGINT, SIGUSR1 and SIGXCPU (they record
 * the signal) and hands the flag to spa_io_set_stop. Not collective. */
void spa_cli_stop_install(void);

/* Collective: SPA_OK unless some rank has received one of those signals;
 * then every rank gets SPA_ERR_OTHER and spa_cli_stopped() the signal.
 * where ("after reading the input") goes into the final message. */
spa_err spa_cli_stop_check(MPI_Comm comm, const char *where);

/* The signal that stopped the command (agreed by every rank, here or in a
 * write), or 0; where it stopped; the signal's name. */
int spa_cli_stopped(void);
const char *spa_cli_stop_where(void);
const char *spa_cli_signal_name(int sig);

/* Before MPI_Init_thread: a fault inside it exits 1 with one line saying
 * so, and creates the file SPA_INIT_FAULT_FILE names (jobs/spa.sbatch then
 * launches again). spa_cli_init_done after it: a later fault prints the
 * rank, the signal and a backtrace, then takes the default action. */
void spa_cli_guard_init(void);
void spa_cli_init_done(int rank);

/* While the file at path (what: "input" or "layout", for the message) is
 * read: a fault inside HDF5 (some damaged files crash it) exits 3 with one
 * line naming the file. Unguard after. */
void spa_cli_guard_input(MPI_Comm comm, const char *what, const char *path);
void spa_cli_unguard_input(void);
/* A stop signal has reached this rank (not yet agreed). */
int spa_cli_stop_requested(void);

/* cli_probe.c. Collective: rank 0 walks the file at path (what: "input" or
 * "layout", for messages) in a child
 * process (`spa --probe-input PATH`) under a time and memory limit; a
 * child that crashed, hung or ran out of memory makes SPA_ERR_INPUT with
 * one message, on every rank. */
spa_err spa_cli_probe_input(MPI_Comm comm, const char *what, const char *path);
/* The child's side, called by main before MPI_Init; returns its exit code. */
int spa_cli_probe_main(const char *path);

/* Test hook (SPA_TEST_DELAY_COMPUTE): holds the compute phase open. */
void spa_cli_test_delay_compute(spa_ctx ctx);

#endif
