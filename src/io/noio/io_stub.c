/* io_stub.c - the spa_io_* functions of a build without HDF5.
 *
 * Simulated builds (SimGrid SMPI) have no parallel HDF5, so they compute on
 * synthetic inputs only. Every call fails the same way on every rank, before
 * any collective, with SPA_ERR_USAGE: asking for a file is a request this
 * build cannot serve, not a bad file.
 */
#include "spa_impl.h"

#include "io.h"

#include <string.h>

#define SPA_NO_HDF5 "spa was built without HDF5: file input and output are unavailable " \
                    "(use the synthetic inputs: omit --input and --output)"

spa_err spa_io_open(MPI_Comm comm, const char *path, spa_input *in, spa_shape *shape)
{
    (void)comm;
    (void)path;
    (void)shape;
    if (in) *in = NULL;
    SPA_FAIL(SPA_ERR_USAGE, SPA_NO_HDF5);
}

spa_err spa_io_read(spa_input in, int64_t t0, int64_t t1, float *q, float *k, float *v)
{
    (void)in;
    (void)t0;
    (void)t1;
    (void)q;
    (void)k;
    (void)v;
    SPA_FAIL(SPA_ERR_USAGE, SPA_NO_HDF5);
}

void spa_io_close(spa_input *in)
{
    if (in) *in = NULL;
}

spa_err spa_io_write(MPI_Comm comm, const char *path, const spa_shape *shape,
                     const spa_config *cfg, int64_t t0, int64_t t1, const float *out,
                     const float *lse, int threads)
{
    (void)comm;
    (void)path;
    (void)shape;
    (void)cfg;
    (void)t0;
    (void)t1;
    (void)out;
    (void)lse;
    (void)threads;
    SPA_FAIL(SPA_ERR_USAGE, SPA_NO_HDF5);
}

spa_err spa_io_gen(MPI_Comm comm, const char *path, int64_t n, int32_t heads, int32_t dim,
                   uint64_t seed, float temperature)
{
    (void)comm;
    (void)path;
    (void)n;
    (void)heads;
    (void)dim;
    (void)seed;
    (void)temperature;
    SPA_FAIL(SPA_ERR_USAGE, SPA_NO_HDF5);
}

spa_err spa_io_read_layout(MPI_Comm comm, const char *path, int32_t block, int64_t n,
                           int32_t heads, spa_layout *out)
{
    (void)comm;
    (void)block;
    (void)n;
    (void)heads;
    if (out) memset(out, 0, sizeof *out);
    SPA_FAIL(SPA_ERR_USAGE, "--layout '%s': spa was built without HDF5", path);
}

spa_err spa_io_export_layout(const char *path, const spa_config *cfg)
{
    (void)cfg;
    SPA_FAIL(SPA_ERR_USAGE, "--export-layout '%s': spa was built without HDF5", path);
}

void spa_io_set_stop(const volatile sig_atomic_t *flag) { (void)flag; }

int spa_io_stopped(void) { return 0; }

spa_err spa_io_open_grad(spa_input in, int *has_fwd)
{
    (void)in;
    if (has_fwd) *has_fwd = 0;
    SPA_FAIL(SPA_ERR_USAGE, SPA_NO_HDF5);
}

spa_err spa_io_check_forward(spa_input in, const spa_config *cfg)
{
    (void)in;
    (void)cfg;
    SPA_FAIL(SPA_ERR_USAGE, SPA_NO_HDF5);
}

spa_err spa_io_read_grad(spa_input in, int64_t t0, int64_t t1, float *dout, float *out, float *lse)
{
    (void)in;
    (void)t0;
    (void)t1;
    (void)dout;
    (void)out;
    (void)lse;
    SPA_FAIL(SPA_ERR_USAGE, SPA_NO_HDF5);
}

spa_err spa_io_write_grad(MPI_Comm comm, const char *path, const spa_shape *shape,
                          const spa_config *cfg, int64_t t0, int64_t t1, const float *dq,
                          const float *dk, const float *dv, int threads)
{
    (void)comm;
    (void)path;
    (void)shape;
    (void)cfg;
    (void)t0;
    (void)t1;
    (void)dq;
    (void)dk;
    (void)dv;
    (void)threads;
    SPA_FAIL(SPA_ERR_USAGE, SPA_NO_HDF5);
}

spa_err spa_io_gen_grad(MPI_Comm comm, const char *path, int64_t n, int32_t heads, int32_t dim,
                        uint64_t seed, float temperature)
{
    (void)comm;
    (void)path;
    (void)n;
    (void)heads;
    (void)dim;
    (void)seed;
    (void)temperature;
    SPA_FAIL(SPA_ERR_USAGE, SPA_NO_HDF5);
}

int spa_io_probe(const char *path)
{
    (void)path;
    return 0;
}
