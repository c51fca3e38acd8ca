/* cli_probe.c - an input file is walked by a child process first.
 *
 * HDF5 1.10 faults, loops or allocates without bound on some damaged
 * files, and none of that can be stopped inside the ranks: a fault kills a
 * rank, a loop hangs the job, an allocation can take the node's memory.
 * So before the ranks open an input, rank 0 runs this program again as
 * `spa --probe-input PATH` (a fresh process: no MPI, so nothing of MPI is
 * copied) under a limit of SPA_PROBE_SECONDS (default 60) seconds and
 * SPA_PROBE_MIB (default 1024) MiB more address space than it starts with.
 * The child walks every object of the file (spa_io_probe). If it crashes,
 * runs out of time or of memory, the input is damaged: exit 3 on every
 * rank, one message. If the probe cannot be started at all, the run goes
 * on unprobed: the input guard of cli_stop.c still turns a fault into
 * exit 3.
 */
#include "cli.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

enum { PROBE_TIMEOUT_EXIT = 124, PROBE_MEMORY_EXIT = 125 };

static long env_long(const char *name, long dflt)
{
    const char *s = getenv(name);
    char *end;
    long v = s ? strtol(s, &end, 10) : dflt;
    return s && (*end || v <= 0) ? dflt : v;
}

/* Bytes of address space this process maps now (0 if unknown). */
static unsigned long long mapped_bytes(void)
{
    unsigned long long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%llu", &pages) != 1) pages = 0;
        fclose(f);
    }
    return pages * (unsigned long long)sysconf(_SC_PAGESIZE);
}

static void on_alarm(int sig)
{
    (void)sig;
    _exit(PROBE_TIMEOUT_EXIT);
}

int spa_cli_probe_main(const char *path)
{
    long secs = env_long("SPA_PROBE_SECONDS", 60);
    unsigned long long extra = (unsigned long long)env_long("SPA_PROBE_MIB", 1024) << 20;
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) == 0) {
        unsigned long long want = mapped_bytes() + extra;
        if (rl.rlim_max == RLIM_INFINITY || want < rl.rlim_max) rl.rlim_cur = want;
        setrlimit(RLIMIT_AS, &rl);
    }
    signal(SIGALRM, on_alarm);
    alarm((unsigned)secs);
    return spa_io_probe(path) ? PROBE_MEMORY_EXIT : 0;
}

/* Rank 0: spawns the probe and waits for it. Returns SPA_ERR_INPUT with a
 * message when the file made it crash, hang or run out of memory. */
static spa_err probe_here(const char *what, const char *path)
{
    char self[4096];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0) return SPA_OK; /* no /proc: unprobed */
    self[len] = '\0';
    char *argv[] = {self, "--probe-input", (char *)path, NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    /* the child says nothing: stdout and stderr go to /dev/null */
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    int rc = posix_spawn(&pid, self, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) return SPA_OK;

    /* the child stops itself at its alarm; this bound only guards against
     * a child that cannot (stopped by a debugger, say) */
    long secs = env_long("SPA_PROBE_SECONDS", 60);
    double until = spa_now() + (double)secs + 30.0;
    int status = 0;
    pid_t w;
    while ((w = waitpid(pid, &status, WNOHANG)) == 0 && spa_now() < until) {
        if (spa_cli_stop_requested()) { /* the run stops at its next check */
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return SPA_OK;
        }
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
    if (w == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        CLI_FAIL(SPA_ERR_INPUT, "%s '%s': HDF5 did not finish reading its metadata in %ld s (a "
                 "damaged file?)", what, path, secs);
    }
    if (w < 0) return SPA_OK;
    if (WIFSIGNALED(status) && WTERMSIG(status) != SIGKILL)
        CLI_FAIL(SPA_ERR_INPUT, "%s '%s': the HDF5 library crashed reading it (%s; a damaged file)",
                 what, path, strsignal(WTERMSIG(status)));
    if (WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) == PROBE_MEMORY_EXIT))
        CLI_FAIL(SPA_ERR_INPUT, "%s '%s': HDF5 needs more than %ld MiB to read its metadata (a "
                 "damaged file?)", what, path, env_long("SPA_PROBE_MIB", 1024));
    if (WIFEXITED(status) && WEXITSTATUS(status) == PROBE_TIMEOUT_EXIT)
        CLI_FAIL(SPA_ERR_INPUT, "%s '%s': HDF5 did not finish reading its metadata in %ld s (a "
                 "damaged file?)", what, path, secs);
    return SPA_OK;
}

spa_err spa_cli_probe_input(MPI_Comm comm, const char *what, const char *path)
{
    int me = 0;
    MPI_Comm_rank(comm, &me);
    spa_err err = SPA_OK;
    /* a path spa cannot read gets its own message from spa_io_open */
    if (me == 0 && access(path, R_OK) == 0) err = probe_here(what, path);
    return spa_agree(comm, err);
}
