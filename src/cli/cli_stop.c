/* cli_stop.c - stopping a run on a signal (SIGTERM, SIGINT, SIGUSR1,
 * SIGXCPU): what Slurm sends at a time limit, on preemption, with
 * --signal, and what a user's Ctrl-C gives.
 *
 * The handler only records the signal. The run stops at the next safe
 * point: between phases (here) and between the steps of a write (io.c,
 * through spa_io_set_stop). Every safe point agrees across ranks, so a
 * signal that reached one rank only stops all of them, and they leave
 * together: the temporary output file is removed, the target is untouched,
 * and the exit code is 128 + the signal, as a shell reports a death by it.
 */
#include "cli.h"

#include <execinfo.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop_sig; /* first signal received, 0 none */
static int stop_agreed;                /* the signal every rank agreed on */
static const char *stop_where = "";

static void on_signal(int sig)
{
    if (!stop_sig) stop_sig = sig;
}

static const int stop_signals[] = {SIGTERM, SIGINT, SIGUSR1, SIGXCPU};

void spa_cli_stop_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART; /* I/O and MPI calls go on; the flag is polled */
    for (size_t i = 0; i < sizeof stop_signals / sizeof *stop_signals; i++)
        sigaction(stop_signals[i], &sa, NULL);
    spa_io_set_stop(&stop_sig);
}

spa_err spa_cli_stop_check(MPI_Comm comm, const char *where)
{
    int mine = stop_sig, sig = 0;
    if (MPI_Allreduce(&mine, &sig, 1, MPI_INT, MPI_MAX, comm) != MPI_SUCCESS)
        CLI_FAIL(SPA_ERR_OTHER, "MPI_Allreduce failed");
    if (!sig) return SPA_OK;
    stop_agreed = sig;
    stop_where = where;
    CLI_FAIL(SPA_ERR_OTHER, "stopped by signal %d %s", sig, where);
}

int spa_cli_stop_requested(void) { return stop_sig; }

int spa_cli_stopped(void)
{
    if (stop_agreed) return stop_agreed;
    if (spa_io_stopped()) stop_where = "while writing the output";
    return spa_io_stopped();
}

const char *spa_cli_stop_where(void) { return stop_where; }

const char *spa_cli_signal_name(int sig)
{
    switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGUSR1: return "SIGUSR1";
    case SIGXCPU: return "SIGXCPU";
    default: return "a signal";
    }
}

/* The signals of a fault, for the input guard and the start-up guard
 * below. */
static const int fault_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};
enum { FAULT_SIGNALS = sizeof fault_signals / sizeof *fault_signals };

/* Makes handler the action of every fault signal, run on an alternate
 * stack (it runs even if the stack is what broke); the previous actions go
 * to old[FAULT_SIGNALS] unless old is NULL. */
static void install_fault_handler(void (*handler)(int), struct sigaction *old)
{
    static char altstack[64 * 1024];
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0};
    sigaltstack(&ss, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_ONSTACK;
    for (int i = 0; i < FAULT_SIGNALS; i++) sigaction(fault_signals[i], &sa, old ? &old[i] : NULL);
}

/* The input guard. HDF5 1.10 can fault on some damaged files (reading a
 * corrupt local heap or chunk address), and nothing in-process can recover
 * from that. While reading an input, a fault ends the process with exit 3,
 * an input error, and one line naming the file, instead of a core dump and
 * a stack trace. Ranks other than 0 wait a moment first: if rank 0 faults
 * too, mpirun then stops them before they print, so the line comes once. */
static struct sigaction fault_old[FAULT_SIGNALS];
static char fault_msg[1200];
static size_t fault_len;
static int fault_rank, fault_armed;

static void on_fault(int sig)
{
    (void)sig;
    if (fault_rank != 0) {
        struct timespec ts = {2, 0};
        while (nanosleep(&ts, &ts) != 0 && !stop_sig) {
        }
    }
    ssize_t w = write(STDERR_FILENO, fault_msg, fault_len);
    (void)w;
    _exit(SPA_ERR_INPUT);
}

void spa_cli_guard_input(MPI_Comm comm, const char *what, const char *path)
{
    if (fault_armed) return;
    MPI_Comm_rank(comm, &fault_rank);
    int m = snprintf(fault_msg, sizeof fault_msg,
                     "spa: error: %s '%.1024s': the HDF5 library crashed reading it (a damaged "
                     "file)\n", what, path);
    fault_len = m > 0 && (size_t)m < sizeof fault_msg ? (size_t)m : strlen(fault_msg);
    install_fault_handler(on_fault, fault_old);
    fault_armed = 1;
}

void spa_cli_unguard_input(void)
{
    if (!fault_armed) return;
    for (int i = 0; i < FAULT_SIGNALS; i++) sigaction(fault_signals[i], &fault_old[i], NULL);
    fault_armed = 0;
}

/* The start-up guard. Open MPI 4.1 launched by srun (PMIx) over TCP can
 * crash inside MPI_Init_thread: a rank still waiting in the start-up
 * exchange receives a message from a peer that is further on, before its
 * own message handlers exist, and calls a null handler (the core shows
 * opal_progress inside ompi_mpi_init). Nothing of spa has run then: no file
 * was opened, nothing was written. Installed before MPI_Init_thread, these
 * handlers take precedence (Open MPI does not replace handlers that are
 * already there): a fault there prints one line that says so, creates the
 * file named by SPA_INIT_FAULT_FILE (jobs/spa.sbatch launches the step
 * again when it finds it) and exits 1. After MPI_Init_thread, a fault
 * prints which rank and signal and a backtrace, as Open MPI's handler
 * would have, then takes the default action (a core dump where enabled). */
static volatile sig_atomic_t in_init, crash_rank = -1;
static char init_fault_file[1024];

static void put(const char *s) { ssize_t w = write(STDERR_FILENO, s, strlen(s)); (void)w; }

static void put_int(long v)
{
    char b[24], *p = b + sizeof b;
    *--p = 0;
    int neg = v < 0;
    unsigned long u = neg ? 0UL - (unsigned long)v : (unsigned long)v;
    do *--p = (char)('0' + u % 10); while ((u /= 10) && p > b + 1);
    if (neg) *--p = '-';
    put(p);
}

static void on_crash(int sig)
{
    if (in_init) {
        put("spa: error: the MPI library crashed inside MPI_Init_thread (signal ");
        put_int(sig);
        put("), before spa read or wrote anything: an MPI start-up fault, not one of the input or the run; "
            "launching again usually succeeds (docs/slurm.md)\n");
        if (init_fault_file[0]) {
            int fd = open(init_fault_file, O_WRONLY | O_CREAT, 0644);
            if (fd >= 0) close(fd);
        }
        _exit(SPA_ERR_OTHER);
    }
    put("spa: error: rank ");
    put_int(crash_rank);
    put(" crashed with signal ");
    put_int(sig);
    put(" (");
    put(sig == SIGSEGV ? "SIGSEGV" : sig == SIGBUS ? "SIGBUS" : sig == SIGFPE ? "SIGFPE" : sig == SIGILL ? "SIGILL" : "SIGABRT");
    put("); backtrace:\n");
    void *frames[64];
    backtrace_symbols_fd(frames, backtrace(frames, 64), STDERR_FILENO);
    signal(sig, SIG_DFL);
    raise(sig);
}

void spa_cli_guard_init(void)
{
    const char *f = getenv("SPA_INIT_FAULT_FILE");
    if (f && strlen(f) < sizeof init_fault_file) strcpy(init_fault_file, f);
    void *frames[2];
    (void)backtrace(frames, 2); /* loads what backtrace needs now, not in a handler */
    install_fault_handler(on_crash, NULL);
    in_init = 1;
    /* Test hook: the first process to create the file named by
     * SPA_TEST_INIT_FAULT faults here, as if inside MPI_Init_thread. */
    const char *t = getenv("SPA_TEST_INIT_FAULT");
    if (t) {
        int fd = open(t, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd >= 0) {
            close(fd);
            raise(SIGSEGV);
        }
    }
}

void spa_cli_init_done(int rank)
{
    crash_rank = rank;
    in_init = 0;
    if (getenv("SPA_TEST_CRASH_AFTER_INIT")) raise(SIGSEGV); /* test hook */
}

/* Test hook: SPA_TEST_DELAY_COMPUTE=seconds holds the first progress report
 * of spa_ctx_run (so the middle of the compute phase) until a signal
 * arrives or the time is up, so a test can signal a run while it computes. */
static void compute_delay(double frac, void *arg)
{
    int *held = arg;
    const char *s = getenv("SPA_TEST_DELAY_COMPUTE");
    if (*held || !s || frac >= 1.0) return;
    *held = 1;
    const char *mark = getenv("SPA_TEST_DELAY_MARK");
    if (mark) { /* tells the test the phase has begun */
        FILE *f = fopen(mark, "w");
        if (f) fclose(f);
    }
    double until = spa_now() + atof(s);
    while (spa_now() < until && !stop_sig) usleep(10000);
}

void spa_cli_test_delay_compute(spa_ctx ctx)
{
    static int held;
    if (getenv("SPA_TEST_DELAY_COMPUTE")) spa_ctx_set_progress(ctx, compute_delay, &held);
}
