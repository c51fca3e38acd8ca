/* io.h - private view into spa's parallel HDF5 input/output: counters and
 * checks for tests, and the atomic collective writer that io.c and
 * io_layer.c share.
 *
 * Every dataset transfer of spa_io_read, spa_io_write and spa_io_gen asks
 * HDF5 afterwards how it really moved the data (H5Pget_mpio_actual_io_mode).
 * A transfer that HDF5 quietly turned independent still gives the right
 * bytes, so only a counter can show it; the tests read these counters.
 */
#ifndef SPA_IO_H
#define SPA_IO_H

/* Dataset transfers on this rank since the last reset, and how many of them
 * HDF5 performed as collective MPI-IO. Not collective. */
void spa_io_trace(int *transfers, int *collective);
void spa_io_trace_reset(void);

/* For tests/fuzz: spa_io_open's checks of q, k and v (types, ranks, shapes,
 * sizes) on an in-memory file image through HDF5's core driver, on this
 * process alone. HDF5 refuses collective transfers on the core driver, so
 * the harness reads the data through spa_io_read on a tmpfs copy.
 * Not collective. */
#include "spa.h"
#include <stddef.h>
spa_err spa_io_check_image(const void *image, size_t len, spa_shape *shape);

/* For tests/fuzz: the same checks on the file at path through HDF5's sec2
 * driver, as rank 0 of spa_io_open runs them before the MPI-IO open.
 * Not collective. */
spa_err spa_io_check_path(const char *path, spa_shape *shape);

/* For tests/fuzz: spa_io_read_layout's reader (everything after it opens
 * the path) on an in-memory file image through the core driver, on this
 * process alone. Messages name the file "(image)". Not collective. */
spa_err spa_io_read_layout_image(const void *image, size_t len, int32_t block, int64_t n, int32_t heads,
                                 spa_layout *out);

/* ------------------------------------------- atomic collective writer
 *
 * How spa_io_write, spa_io_gen and spa_io_layer_write make an output file,
 * so that no rank is left waiting in a collective another rank abandoned
 * and a failure never leaves a half-written file under the target's name:
 *
 *   spa_io_writer_begin   rank 0 alone builds the whole file (every
 *                         dataset allocated, the small ones and the root
 *                         attributes written) in memory and copies it to
 *                         `.<name>.tmp.<host>.<pid>` beside the target;
 *                         then every rank opens it with MPI-IO.
 *   spa_io_writer_rows    every rank writes its rows of one dataset in one
 *                         collective MPI-IO write (raw data only, never
 *                         HDF5 metadata); the outcome and any stop request
 *                         (spa_io_set_stop) are agreed afterwards.
 *   spa_io_writer_end     every rank closes; on success everywhere rank 0
 *                         renames the file over the target (and removes
 *                         stale temporary files of dead writers), else
 *                         removes it and the target is untouched.
 *
 * Every call is collective and returns the same outcome on every rank; a
 * failure's message names its cause ("No space left on device"). */

/* Element types: datasets F32, I32 or I64; attributes I64, U64, F64, STR. */
enum { SPA_WT_F32, SPA_WT_I32, SPA_WT_I64, SPA_WT_U64, SPA_WT_F64, SPA_WT_STR };

/* A dataset, created in list order. "plan/x" makes group plan as needed.
 * whole = 0: written in rows with spa_io_writer_rows, split along
 * dimension rowdim (a rank's buffer is [..before rowdim][its rows][..after]
 * in row-major order). whole = 1: small, written in phase 1 from rank 0's
 * data (other ranks' data is not read; rowdim is ignored). */
typedef struct spa_wdset {
    const char *name;
    int type;
    int rank; /* 1 to 8 */
    int64_t dims[8];
    int rowdim;
    int whole;
    const void *data;
} spa_wdset;

/* A root attribute (rank 0's value is written): i for I64, u for U64, f
 * for F64, s for STR. */
typedef struct spa_wattr {
    const char *name;
    int type;
    int64_t i;
    uint64_t u;
    double f;
    const char *s;
} spa_wattr;

typedef struct spa_io_writer_s *spa_io_writer;

/* Collective: the same list on every rank. Checks the target's folder,
 * builds the temporary file, opens it on every rank. On failure *w is
 * NULL and nothing is left on disk. */
spa_err spa_io_writer_begin(MPI_Comm comm, const char *path, const spa_wdset *d, int nd,
                            const spa_wattr *a, int na, spa_io_writer *w);

/* Collective: this rank's rows [r0, r1) of dataset i (whole = 0) from buf;
 * every rank calls it for the same i, ranks with no rows too. Returns the
 * agreed outcome (SPA_ERR_OTHER "stopped by signal N" on a stop request).
 * After a failure, call spa_io_writer_end and nothing else. */
spa_err spa_io_writer_rows(spa_io_writer w, int i, int64_t r0, int64_t r1, const void *buf);

/* Collective: err is this rank's outcome so far. SPA_OK everywhere: the
 * file replaces the target; otherwise it is removed. Frees *w and sets it
 * to NULL (NULL accepted: returns err). Returns the agreed outcome. */
spa_err spa_io_writer_end(spa_io_writer *w, spa_err err);

#endif
