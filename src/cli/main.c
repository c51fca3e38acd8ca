/* main.c - the spa program: initialise MPI, dispatch one command, report.
 *
 * Exit codes are spa_err values (0 ok, 1 other, 2 usage, 3 input). Every
 * command returns a code that all ranks agree on, so every rank reaches
 * MPI_Finalize and rank 0 alone prints the one "spa: error:" line. MPI
 * errors on MPI_COMM_WORLD keep the default fatal handler: when the ranks
 * can no longer talk, the launcher ends the job rather than letting it hang.
 */
#include "cli.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int provided = 0, rank = 0;
    /* the input probe of cli_probe.c: a process of its own, without MPI */
    if (argc == 3 && strcmp(argv[1], "--probe-input") == 0) return spa_cli_probe_main(argv[2]);
    spa_cli_guard_init();
    if (MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "spa: error: MPI_Init_thread failed\n");
        return SPA_ERR_OTHER;
    }
    MPI_Comm comm = MPI_COMM_WORLD;
    MPI_Comm_rank(comm, &rank);
    spa_cli_init_done(rank);
    /* after MPI_Init, so MPI's own set-up keeps the default actions */
    spa_cli_stop_install();

    spa_cli_opts o;
    /* every rank parses the same argv: a usage error is the same everywhere */
    spa_err err = spa_cli_parse(argc, argv, &o);
    if (err == SPA_OK && provided < MPI_THREAD_FUNNELED) {
        /* the same on every rank: no agreement needed */
        if (rank == 0) fprintf(stderr, "spa: error: MPI does not provide MPI_THREAD_FUNNELED\n");
        spa_config_free(&o.cfg);
        MPI_Finalize();
        return SPA_ERR_OTHER;
    }
    if (err == SPA_OK && o.version) {
        if (rank == 0) printf("spa %s\nkernel %s\n", SPA_VERSION, spa_kernel_name());
    } else if (err == SPA_OK && o.help) {
        if (rank == 0) spa_cli_help(stdout, o.cmd);
    } else if (err == SPA_OK) {
        switch (o.cmd) {
        case SPA_CLI_RUN: err = spa_cli_run(comm, &o); break;
        case SPA_CLI_GEN: err = spa_cli_gen(comm, &o); break;
        case SPA_CLI_BENCH: err = spa_cli_bench(comm, &o); break;
        case SPA_CLI_LAYER: err = spa_cli_layer(comm, &o); break;
        case SPA_CLI_GRAD: err = spa_cli_grad(comm, &o); break;
        case SPA_CLI_PLAN: {
            /* one process computes the whole report; the others wait for its code */
            spa_err local = SPA_OK;
            if (rank == 0) {
                local = spa_cli_pattern(MPI_COMM_SELF, &o);
                if (local == SPA_OK) local = spa_cli_plan(&o, stdout);
                fflush(stdout);
            }
            err = spa_agree(comm, local);
            break;
        }
        default: err = SPA_ERR_OTHER; break;
        }
    }
    int sig = err != SPA_OK ? spa_cli_stopped() : 0;
    if (sig) {
        /* agreed by every rank: all exit with 128 + sig, rank 0 says why */
        if (rank == 0)
            fprintf(stderr, "spa: error: stopped by %s (signal %d) %s; no output was written\n",
                    spa_cli_signal_name(sig), sig, spa_cli_stop_where());
        spa_config_free(&o.cfg);
        MPI_Finalize();
        return 128 + sig;
    }
    if (err != SPA_OK && rank == 0) {
        static const char *names[] = {"", " run", " gen", " bench", " plan", " layer", " grad"};
        if (err == SPA_ERR_USAGE)
            fprintf(stderr, "spa: error: %s (see 'spa%s --help')\n", spa_last_error(), names[o.cmd]);
        else
            fprintf(stderr, "spa: error: %s\n", spa_last_error());
    }
    if (err != SPA_OK) {
        /* The one message is out. What libraries print while shutting down
         * after a failure only confuses it: HDF5 1.10, for one, cannot
         * release a damaged object header that failed to open and reports
         * "infinite loop closing library" in MPI_Finalize. */
        fflush(stderr);
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) dup2(null, STDERR_FILENO), close(null);
    }
    spa_config_free(&o.cfg);
    MPI_Finalize();
    return (int)err;
}
