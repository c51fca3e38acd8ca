/* io.h - private view into spa's parallel HDF5 input/output, for tests.
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

#endif
