/* fuzz_common.h - what the libFuzzer harnesses share: MPI initialised once
 * as a singleton (parallel HDF5 needs it, even on the core driver), a
 * scratch file on tmpfs for the readers that open a path, and the checks
 * that turn a silent fault into a crash libFuzzer reports.
 */
#ifndef SPA_FUZZ_COMMON_H
#define SPA_FUZZ_COMMON_H

#include "spa.h"

#include <fcntl.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef SPA_HAVE_HDF5
#include <hdf5.h>
#endif

/* Prints the reason and aborts: libFuzzer records the input as a crash. */
#define FUZZ_ASSERT(cond, ...)                                                                     \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz: %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);       \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Sanitizer defaults for the harnesses (the environment still wins):
 * - use_tls=0: LeakSanitizer's thread scan crashes on the TLS of Open MPI's
 *   singleton (Tracer caught signal 11); what only TLS points to is the
 *   MPI, OpenMP and loader state that tests/lsan.supp names;
 * - fast_unwind_on_malloc=0: full stacks through the MPI and HDF5
 *   libraries (built without frame pointers), so those suppressions match;
 * - allocator_may_return_null=1: a size read from a corrupt file that no
 *   malloc can give returns NULL, as it does outside ASan, and the reader
 *   must cope with it. */
const char *__lsan_default_options(void);
const char *__lsan_default_options(void) { return "use_tls=0"; }
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "fast_unwind_on_malloc=0:allocator_may_return_null=1"; }

static char fuzz_path[256];

static void fuzz_finalize(void)
{
    if (fuzz_path[0]) unlink(fuzz_path);
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
}

/* Open MPI's singleton init as root needs its consent; the user's own
 * settings win. */
static void fuzz_mpi_init(const char *name)
{
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
    setenv("OMPI_MCA_btl_vader_single_copy_mechanism", "none", 0);
    int provided;
    MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(fuzz_path, sizeof fuzz_path, "%s/spa-fuzz-%s-%ld.h5", dir, name, (long)getpid());
    atexit(fuzz_finalize);
}

/* Writes data to fuzz_path. */
static inline void fuzz_write_file(const uint8_t *data, size_t size)
{
    int fd = open(fuzz_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    FUZZ_ASSERT(fd >= 0, "cannot create %s", fuzz_path);
    size_t done = 0;
    while (done < size) {
        ssize_t w = write(fd, data + done, size - done);
        FUZZ_ASSERT(w > 0, "cannot write %s", fuzz_path);
        done += (size_t)w;
    }
    close(fd);
}

#ifdef SPA_HAVE_HDF5
/* No HDF5 object may stay open once a reader returns, on any path. */
static inline void fuzz_no_open_objects(const char *where)
{
    ssize_t open_ids = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
    FUZZ_ASSERT(open_ids == 0, "%zd HDF5 objects left open after %s (%s)", open_ids, where,
                spa_last_error());
}
#endif

/* An error must come with a message. */
static inline void fuzz_check_error(spa_err e)
{
    FUZZ_ASSERT(e == SPA_ERR_OTHER || e == SPA_ERR_USAGE || e == SPA_ERR_INPUT, "bad code %d", e);
    FUZZ_ASSERT(spa_last_error()[0] != '\0', "error %d without a message", e);
}

#endif
