/* util.c - errors, aligned memory, clocks, and the error agreement step.
 *
 * Errors are recorded in one per-process buffer: spa is driven by one thread
 * per rank outside its OpenMP regions, and nothing inside a parallel region
 * can fail.
 */
#include "spa_impl.h"

#include <stdarg.h>
#include <stdint.h>
#include <sys/mman.h>
#include <string.h>
#include <time.h>

static char spa_errbuf[1024] = "no error";

const char *spa_last_error(void) { return spa_errbuf; }

spa_err spa_set_error(spa_err code, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(spa_errbuf, sizeof spa_errbuf, fmt, ap);
    va_end(ap);
    if (code == SPA_ERR_OTHER) { /* internal errors carry their origin */
        size_t len = strlen(spa_errbuf);
        snprintf(spa_errbuf + len, sizeof spa_errbuf - len, " (%s:%d)", file, line);
    }
    return code;
}

spa_err spa_mpi_error(int mpierr, const char *what, const char *file, int line)
{
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(mpierr, text, &len) != MPI_SUCCESS) snprintf(text, sizeof text, "code %d", mpierr);
    return spa_set_error(SPA_ERR_OTHER, file, line, "MPI error in %s: %s", what, text);
}

/* Large tensors are read a row at a time at long strides (a strided
 * rule's class keys lie S rows apart): ask for huge pages, so such reads
 * do not pay a page walk each. Only the whole 2 MiB pages inside [p, p +
 * bytes) are advised, before they are first touched. */
void spa_hugepages(void *p, size_t bytes)
{
#ifdef MADV_HUGEPAGE
    const uintptr_t page = (uintptr_t)2 << 20;
    uintptr_t a = ((uintptr_t)p + page - 1) & ~(page - 1), e = ((uintptr_t)p + bytes) & ~(page - 1);
    if (e > a) (void)madvise((void *)a, e - a, MADV_HUGEPAGE);
#else
    (void)p, (void)bytes;
#endif
}

void *spa_alloc(size_t bytes)
{
    void *p = NULL;
    size_t rounded = (bytes + 63) / 64 * 64, align = rounded >= ((size_t)8 << 20) ? (size_t)2 << 20 : 64;
    if (rounded == 0) rounded = 64;
    if (posix_memalign(&p, align, rounded) != 0) return NULL;
    if (align > 64) spa_hugepages(p, rounded);
    memset(p, 0, rounded);
    return p;
}

void spa_free(void *p) { free(p); }

double spa_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

spa_err spa_agree(MPI_Comm comm, spa_err local)
{
    int rank, in[2], out[2];
    MPI_Comm_rank(comm, &rank);
    /* (code, failing rank) -> max code, min rank among the failures */
    in[0] = (int)local;
    in[1] = local != SPA_OK ? rank : 1 << 30;
    if (MPI_Allreduce(&in[0], &out[0], 1, MPI_INT, MPI_MAX, comm) != MPI_SUCCESS) return SPA_ERR_OTHER;
    if (MPI_Allreduce(&in[1], &out[1], 1, MPI_INT, MPI_MIN, comm) != MPI_SUCCESS) return SPA_ERR_OTHER;
    if (out[0] == SPA_OK) return SPA_OK;
    /* The lowest failing rank's message becomes everyone's, so rank 0 can
     * print it once. */
    if (MPI_Bcast(spa_errbuf, (int)sizeof spa_errbuf, MPI_CHAR, out[1], comm) != MPI_SUCCESS)
        return SPA_ERR_OTHER;
    spa_errbuf[sizeof spa_errbuf - 1] = '\0';
    return (spa_err)out[0];
}
