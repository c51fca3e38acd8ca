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
 *   libraries (built without frame pointers), so those suppressions match
 *   (with frame-pointer stacks, what the libraries allocate through libc's
 *   strdup and vasprintf, or in unloaded MCA plugins, ends in libc or an
 *   unknown module and reads as a leak). This unwinding is most of an
 *   execution's time: every malloc pays for it, per frame;
 * - malloc_context_size=15: so stop at 15 frames, not 30. A library's
 *   allocation reaches a frame of that library within a few; a shorter
 *   stack can only match fewer suppressions, never hide a report;
 * - allocator_may_return_null=1: a size read from a corrupt file that no
 *   malloc can give returns NULL, as it does outside ASan, and the reader
 *   must cope with it. */
const char *__lsan_default_options(void);
const char *__lsan_default_options(void) { return "use_tls=0"; }
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "fast_unwind_on_malloc=0:malloc_context_size=15:allocator_may_return_null=1";
}

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
    /* Open MPI's own handlers for SIGABRT, SIGBUS, SIGFPE and SIGSEGV
     * would take those signals before libFuzzer (which keeps a handler it
     * finds installed): a failed check would then end the process without
     * saving its input, and run.sh would judge the run by a log with no
     * stack of the failed check */
    setenv("OMPI_MCA_opal_signal", "", 0);
    /* a singleton that never spawns needs no daemon (1 s less per start) */
    setenv("OMPI_MCA_ess_singleton_isolated", "1", 0);
    int provided;
    MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
#ifdef SPA_HAVE_HDF5
    /* HDF5 recycles its structures through free lists; with the default
     * limits a file's metadata cache (half a megabyte, per open) goes back to
     * malloc each time. Larger lists keep it: fewer mallocs (each unwound,
     * above) and no fresh pages per input. */
    H5set_free_list_limits(16 << 20, 4 << 20, 16 << 20, 4 << 20, 16 << 20, 4 << 20);
#endif
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

/* Whether HDF5 itself opens path read-only with the drivers spa uses on
 * it: sec2 (a layout; an input's serial pre-check), then, with mpio, MPI-IO
 * on MPI_COMM_SELF (an input). */
static inline int fuzz_hdf5_opens(const char *path, int mpio)
{
    H5E_auto2_t fn;
    void *fn_data;
    H5Eget_auto2(H5E_DEFAULT, &fn, &fn_data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT), fapl = H5I_INVALID_HID;
    int ok = f >= 0;
    if (ok) H5Fclose(f);
    if (ok && mpio) {
        ok = 0;
        fapl = H5Pcreate(H5P_FILE_ACCESS);
        if (fapl >= 0 && H5Pset_fapl_mpio(fapl, MPI_COMM_SELF, MPI_INFO_NULL) >= 0 &&
            (f = H5Fopen(path, H5F_ACC_RDONLY, fapl)) >= 0) {
            H5Fclose(f);
            ok = 1;
        }
        if (fapl >= 0) H5Pclose(fapl);
    }
    H5Eset_auto2(H5E_DEFAULT, fn, fn_data);
    return ok;
}
#endif

/* An error must come with a message. */
static inline void fuzz_check_error(spa_err e)
{
    FUZZ_ASSERT(e == SPA_ERR_OTHER || e == SPA_ERR_USAGE || e == SPA_ERR_INPUT, "bad code %d", e);
    FUZZ_ASSERT(spa_last_error()[0] != '\0', "error %d without a message", e);
}

#endif
