/* enospc_shim.c - an LD_PRELOAD library that makes one rank's file writes
 * fail with ENOSPC, as a full disk would, for the disk-full test.
 *
 * Environment:
 *   SPA_ENOSPC_RANK   the rank that fails (OMPI_COMM_WORLD_RANK, PMI_RANK or
 *                     PMIX_RANK); unset: every process
 *   SPA_ENOSPC_AT     k: the k-th write (1-based) to a matching file fails
 *   SPA_ENOSPC_MATCH  only files whose path contains this string count
 *                     (default ".tmp."); pipes, sockets and other files
 *                     never fail, so MPI itself keeps working
 *   SPA_ENOSPC_STICKY 1: every later matching write fails too (a disk that
 *                     stays full); default 0: only the k-th
 *   SPA_ENOSPC_LOG    a file to which each matching call is appended
 *                     ("pid rank call count offset bytes", offset -1 when implicit), to choose k
 *   SPA_ENOSPC_TRACE  set: print a backtrace of the failing call
 * Wraps write, pwrite, pwrite64, writev and pwritev.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

static int armed = -1; /* -1 unknown, 0 off, 1 this process fails */
static long at, count;
static int sticky;
static const char *match = ".tmp.";

static int my_rank(void)
{
    const char *v[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"};
    for (int i = 0; i < 3; i++) {
        const char *s = getenv(v[i]);
        if (s) return atoi(s);
    }
    return 0;
}

static void setup(void)
{
    if (armed >= 0) return;
    const char *r = getenv("SPA_ENOSPC_RANK"), *k = getenv("SPA_ENOSPC_AT");
    const char *m = getenv("SPA_ENOSPC_MATCH"), *s = getenv("SPA_ENOSPC_STICKY");
    at = k ? atol(k) : 0;
    sticky = s && atoi(s);
    if (m && *m) match = m;
    armed = at > 0 && (!r || atoi(r) == my_rank());
}

/* Counts a write to fd; 1 when it must fail. */
static int must_fail(int fd, const char *call, long long off, size_t len)
{
    setup();
    if (!armed) return 0;
    struct stat st;
    char link[64], path[4096];
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 0;
    path[n] = 0;
    if (!strstr(path, match)) return 0;
    count++;
    const char *logf = getenv("SPA_ENOSPC_LOG");
    if (logf) {
        FILE *f = fopen(logf, "a");
        if (f) {
            fprintf(f, "%ld %d %s %ld %lld %zu\n", (long)getpid(), my_rank(), call, count, off, len);
            fclose(f);
        }
    }
    int fail = count == at || (sticky && count > at);
    if (fail && getenv("SPA_ENOSPC_TRACE")) { /* where the failing call came from */
        void *bt[32];
        backtrace_symbols_fd(bt, backtrace(bt, 32), 2);
    }
    return fail;
}

static size_t iov_bytes(const struct iovec *iov, int cnt)
{
    size_t n = 0;
    for (int i = 0; i < cnt; i++) n += iov[i].iov_len;
    return n;
}

typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*pwrite64_fn)(int, const void *, size_t, off64_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);
typedef ssize_t (*pwritev_fn)(int, const struct iovec *, int, off_t);

/* The next definition of name (libc's), looked up once. */
#define REAL(name)                                                                                 \
    static name##_fn real_##name;                                                                  \
    if (!real_##name) real_##name = (name##_fn)dlsym(RTLD_NEXT, #name)

ssize_t write(int fd, const void *buf, size_t len)
{
    REAL(write);
    int e = errno;
    if (must_fail(fd, "write", -1, len)) return errno = ENOSPC, -1;
    errno = e;
    return real_write(fd, buf, len);
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off)
{
    REAL(pwrite);
    int e = errno;
    if (must_fail(fd, "pwrite", (long long)off, len)) return errno = ENOSPC, -1;
    errno = e;
    return real_pwrite(fd, buf, len, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off64_t off)
{
    REAL(pwrite64);
    int e = errno;
    if (must_fail(fd, "pwrite64", (long long)off, len)) return errno = ENOSPC, -1;
    errno = e;
    return real_pwrite64(fd, buf, len, off);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    REAL(writev);
    int e = errno;
    if (must_fail(fd, "writev", -1, iov_bytes(iov, cnt))) return errno = ENOSPC, -1;
    errno = e;
    return real_writev(fd, iov, cnt);
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    REAL(pwritev);
    int e = errno;
    if (must_fail(fd, "pwritev", (long long)off, iov_bytes(iov, cnt))) return errno = ENOSPC, -1;
    errno = e;
    return real_pwritev(fd, iov, cnt, off);
}
