/* io.c - parallel HDF5 input and output (SPEC section 2).
 *
 * Every rank moves only its own rows, [t0, t1) of every head, in one
 * collective MPI-IO transfer per dataset: the rows of all heads form one
 * regular hyperslab, so the file selection is a single box and the memory
 * side a flat [H][rows][D] buffer. Type conversion inside HDF5 would turn a
 * transfer independent, so float64 and IEEE float16 are read in their file
 * type and converted here; only exotic float types fall back to HDF5.
 *
 * Checks that need one rank's data (the file exists, non-finite values) are
 * agreed before anyone goes on, so every rank returns the same error.
 * Outputs are written under a temporary name beside the target and renamed
 * by rank 0 once every rank has closed the file.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create */
#endif
#include "spa_impl.h"

#include "io.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <hdf5.h>

#define IO_FAIL(code, ...)                                                                         \
    do {                                                                                           \
        err = spa_set_error((code), __FILE__, __LINE__, __VA_ARGS__);                              \
        goto done;                                                                                 \
    } while (0)

/* How a dataset's file type reaches float32 memory. */
enum { KIND_F32, KIND_F64, KIND_F16, KIND_HDF5 };

/* The datasets of an input: q, k, v (spa_io_open), then what `spa grad`
 * reads beside them (spa_io_open_grad): dout, and out and lse of a forward
 * run. lse has q's shape without the last dimension. */
enum { IN_Q, IN_K, IN_V, IN_DOUT, IN_OUT, IN_LSE, IN_COUNT };
static const char *const io_names[IN_COUNT] = {"q", "k", "v", "dout", "out", "lse"};

struct spa_input_s {
    MPI_Comm comm;
    hid_t file;
    hid_t dset[IN_COUNT];
    hid_t ftype[IN_COUNT];
    int kind[IN_COUNT];
    spa_shape shape;
};

/* Values an input may hold: finite, and -inf in lse (a row with no keys). */
static int bad_value(int i, float x) { return !isfinite(x) && !(i == IN_LSE && x == -INFINITY); }

/* Elements per (head, token) of dataset i: D, or 1 for lse. */
static int64_t row_width(const spa_input in, int i) { return i == IN_LSE ? 1 : in->shape.dim; }

static int io_transfers, io_collective;

void spa_io_trace(int *transfers, int *collective)
{
    *transfers = io_transfers;
    *collective = io_collective;
}

void spa_io_trace_reset(void) { io_transfers = io_collective = 0; }

/* HDF5 prints its error stack by default; spa reports its own message. */
typedef struct quiet {
    H5E_auto2_t fn;
    void *data;
} quiet;

static void quiet_begin(quiet *q)
{
    H5Eget_auto2(H5E_DEFAULT, &q->fn, &q->data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

static void quiet_end(const quiet *q) { H5Eset_auto2(H5E_DEFAULT, q->fn, q->data); }

static void close_id(hid_t *id, herr_t (*fn)(hid_t))
{
    if (*id >= 0) fn(*id);
    *id = H5I_INVALID_HID;
}

/* "[2, 4096, 64]" */
static void fmt_dims(char *buf, size_t len, int rank, const hsize_t *dims)
{
    size_t o = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < rank && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%llu", i ? ", " : "", (unsigned long long)dims[i]);
    if (o < len) snprintf(buf + o, len - o, "]");
}

/* Stop requests (spa_io_set_stop), checked between the steps of a write. */
static const volatile sig_atomic_t *io_stop_flag;
static int io_stop_sig;

void spa_io_set_stop(const volatile sig_atomic_t *flag) { io_stop_flag = flag; }

int spa_io_stopped(void) { return io_stop_sig; }

/* Collective: the outcome of one step on every rank, then whether any
 * rank has been asked to stop. */
static spa_err step_agree(MPI_Comm comm, spa_err err)
{
    if ((err = spa_agree(comm, err)) != SPA_OK) return err;
    int mine = io_stop_flag ? (int)*io_stop_flag : 0, sig = 0;
    if (MPI_Allreduce(&mine, &sig, 1, MPI_INT, MPI_MAX, comm) != MPI_SUCCESS)
        return spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "MPI_Allreduce failed");
    if (sig == 0) return SPA_OK;
    io_stop_sig = sig;
    return spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "stopped by signal %d", sig);
}

/* Test hook: SPA_TEST_DELAY_<PHASE>=seconds holds the phase open (until a
 * stop request arrives) so a test can signal the run in the middle of it;
 * SPA_TEST_DELAY_MARK names a file created when the hold begins. */
static void test_delay(MPI_Comm comm, const char *var)
{
    const char *s = getenv(var), *mark = getenv("SPA_TEST_DELAY_MARK");
    if (!s) return;
    if (mark) { /* tells the test the phase has begun */
        FILE *f = fopen(mark, "w");
        if (f) fclose(f);
    }
    /* polled together, so a signal to one rank ends every rank's hold */
    for (long i = (long)(atof(s) * 100); i > 0; i--) {
        int mine = io_stop_flag ? (int)*io_stop_flag : 0, any = 0;
        MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, comm);
        if (any) break;
        usleep(10000);
    }
}

/* The cause of the HDF5 failure just returned: errno when the failing call
 * set it, else the system error in HDF5's stack (the sec2 driver's "error
 * message = '...'"), else MPI's error string, else the innermost message. */
typedef struct cause_walk {
    char sys[160], mpi[160], inner[160];
} cause_walk;

static herr_t cause_cb(unsigned n, const H5E_error2_t *e, void *arg)
{
    cause_walk *w = arg;
    const char *d = e->desc ? e->desc : "", *m = strstr(d, "error message = '");
    if (m && !w->sys[0]) {
        m += strlen("error message = '");
        size_t k = strcspn(m, "'");
        snprintf(w->sys, sizeof w->sys, "%.*s", (int)(k < 159 ? k : 159), m);
    }
    if (e->min_num == H5E_MPIERRSTR && !w->mpi[0]) snprintf(w->mpi, sizeof w->mpi, "%s", d);
    if (n == 0) snprintf(w->inner, sizeof w->inner, "%s", d);
    return 0;
}

static void io_cause(int saved_errno, char *buf, size_t len)
{
    cause_walk w = {{0}, {0}, {0}};
    if (saved_errno) {
        snprintf(buf, len, "%s", strerror(saved_errno));
        return;
    }
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, cause_cb, &w);
    snprintf(buf, len, "%s", w.sys[0] ? w.sys : w.mpi[0] ? w.mpi : w.inner[0] ? w.inner : "unknown cause");
}

/* Records "what: cause" as an SPA_ERR_OTHER error. Use right after the
 * failing HDF5 call, before any other (each clears HDF5's stack). */
#define IO_FAIL_CAUSE(saved_errno, ...)                                                            \
    do {                                                                                           \
        char why_[200], what_[400];                                                                \
        io_cause((saved_errno), why_, sizeof why_);                                                \
        snprintf(what_, sizeof what_, __VA_ARGS__);                                                \
        IO_FAIL(SPA_ERR_OTHER, "%s: %s", what_, why_);                                             \
    } while (0)

/* The cause of the last failed transfer (xfer), for the caller's message. */
static char io_last_cause[200];

/* ------------------------------------------------------------ transfers */

/* One collective transfer of the box where dimension `rowdim` runs over
 * [r0, r1) and every other dimension is whole. The memory side is the box
 * flattened in row-major order, which for [.., N, D] datasets is exactly
 * spa's [H][rows][D] shard. A rank with an empty box still takes part.
 * Collective over the file's communicator; the error it returns is this
 * rank's alone, so the caller agrees on it. */
static spa_err xfer(hid_t dset, hid_t memtype, int writing, int rowdim, int64_t r0, int64_t r1,
                    void *buf)
{
    spa_err err = SPA_OK;
    hid_t fspace = H5I_INVALID_HID, mspace = H5I_INVALID_HID, dxpl = H5I_INVALID_HID;
    hsize_t dims[8], start[8], count[8], nelem = 1;
    io_last_cause[0] = '\0';
    static char dummy[16]; /* HDF5 wants a buffer even for an empty selection */

    fspace = H5Dget_space(dset);
    if (fspace < 0) IO_FAIL(SPA_ERR_OTHER, "HDF5: cannot get a dataspace");
    int rank = H5Sget_simple_extent_ndims(fspace);
    if (rank < 1 || rank > 8 || rowdim >= rank) IO_FAIL(SPA_ERR_OTHER, "HDF5: unexpected rank %d", rank);
    H5Sget_simple_extent_dims(fspace, dims, NULL);
    for (int i = 0; i < rank; i++) {
        start[i] = i == rowdim ? (hsize_t)r0 : 0;
        count[i] = i == rowdim ? (hsize_t)(r1 - r0) : dims[i];
        nelem *= count[i];
    }
    if (nelem > 0) {
        if (H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL) < 0)
            IO_FAIL(SPA_ERR_OTHER, "HDF5: cannot select rows [%lld, %lld)", (long long)r0,
                    (long long)r1);
        mspace = H5Screate_simple(1, &nelem, NULL);
    } else {
        hsize_t one = 1;
        H5Sselect_none(fspace);
        mspace = H5Screate_simple(1, &one, NULL);
        if (mspace >= 0) H5Sselect_none(mspace);
        buf = dummy;
    }
    if (mspace < 0) IO_FAIL(SPA_ERR_OTHER, "HDF5: cannot create a memory dataspace");

    dxpl = H5Pcreate(H5P_DATASET_XFER);
    if (dxpl < 0 || H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE) < 0)
        IO_FAIL(SPA_ERR_OTHER, "HDF5: cannot request collective transfers");
    errno = 0;
    herr_t st = writing ? H5Dwrite(dset, memtype, mspace, fspace, dxpl, buf)
                        : H5Dread(dset, memtype, mspace, fspace, dxpl, buf);
    if (st < 0) {
        io_cause(errno, io_last_cause, sizeof io_last_cause);
        IO_FAIL(SPA_ERR_OTHER, "HDF5: %s failed: %s", writing ? "H5Dwrite" : "H5Dread", io_last_cause);
    }

    H5D_mpio_actual_io_mode_t mode = H5D_MPIO_NO_COLLECTIVE;
    H5Pget_mpio_actual_io_mode(dxpl, &mode);
    io_transfers++;
    if (mode == H5D_MPIO_CONTIGUOUS_COLLECTIVE || mode == H5D_MPIO_CHUNK_COLLECTIVE) io_collective++;
done:
    close_id(&dxpl, H5Pclose);
    close_id(&mspace, H5Sclose);
    close_id(&fspace, H5Sclose);
    return err;
}

static float half_to_float(uint16_t h)
{
    int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    float v;
    if (e == 0)
        v = ldexpf((float)m, -24); /* subnormal */
    else if (e == 31)
        v = m ? NAN : INFINITY;
    else
        v = ldexpf((float)(m | 0x400), e - 25);
    return (h & 0x8000) ? -v : v;
}

/* IEEE binary16 in host byte order: read raw and converted here, so the
 * transfer stays collective. */
static int is_host_half(hid_t t)
{
    size_t spos, epos, esize, mpos, msize;
    if (H5Tget_class(t) != H5T_FLOAT || H5Tget_size(t) != 2) return 0;
    if (H5Tget_fields(t, &spos, &epos, &esize, &mpos, &msize) < 0) return 0;
    return spos == 15 && epos == 10 && esize == 5 && mpos == 0 && msize == 10 &&
           H5Tget_ebias(t) == 15 && H5Tget_offset(t) == 0 &&
           H5Tget_order(t) == H5Tget_order(H5T_NATIVE_FLOAT);
}

/* ---------------------------------------------------------------- input */

/* Reads dataset i into dst ([H][rows][D] floats) and returns in *bad the
 * flat index within dst of its first non-finite value, or -1. */
static spa_err read_one(spa_input in, int i, int64_t t0, int64_t t1, float *dst, int64_t *bad)
{
    const spa_shape *s = &in->shape;
    int64_t len = (int64_t)s->heads * (t1 - t0) * row_width(in, i);
    int rowdim = s->rank - 2;
    spa_err err = SPA_OK;
    void *tmp = NULL;

    *bad = -1;
    switch (in->kind[i]) {
    case KIND_F32:
    case KIND_HDF5:
        if ((err = xfer(in->dset[i], H5T_NATIVE_FLOAT, 0, rowdim, t0, t1, dst)) != SPA_OK) goto unreadable;
        for (int64_t e = 0; e < len; e++)
            if (bad_value(i, dst[e])) {
                *bad = e;
                break;
            }
        break;
    case KIND_F64: {
        double *d = tmp = spa_alloc((size_t)len * sizeof(double));
        if (!tmp) IO_FAIL(SPA_ERR_OTHER, "out of memory reading '%s'", io_names[i]);
        err = xfer(in->dset[i], H5T_NATIVE_DOUBLE, 0, rowdim, t0, t1, tmp);
        if (err != SPA_OK) goto unreadable;
        for (int64_t e = 0; e < len; e++) {
            dst[e] = (float)d[e]; /* beyond float32 range becomes inf: reported below */
            if (*bad < 0 && bad_value(i, dst[e])) *bad = e;
        }
        break;
    }
    case KIND_F16: {
        uint16_t *h = tmp = spa_alloc((size_t)len * sizeof(uint16_t));
        if (!tmp) IO_FAIL(SPA_ERR_OTHER, "out of memory reading '%s'", io_names[i]);
        err = xfer(in->dset[i], in->ftype[i], 0, rowdim, t0, t1, tmp);
        if (err != SPA_OK) goto unreadable;
        for (int64_t e = 0; e < len; e++) {
            dst[e] = half_to_float(h[e]);
            if (*bad < 0 && bad_value(i, dst[e])) *bad = e;
        }
        break;
    }
    }
done:
    spa_free(tmp);
    return err;
unreadable: /* a damaged file, as far as spa can tell */
    err = spa_set_error(SPA_ERR_INPUT, __FILE__, __LINE__, "input: cannot read dataset '%s': %s",
                        io_names[i], io_last_cause[0] ? io_last_cause : spa_last_error());
    goto done;
}

/* HDF5 allocates a whole chunk to read one: a damaged or hostile file can
 * claim chunks of gigabytes. A chunk may reach 1 GiB, and past 64 MiB it may
 * not be larger than its dataset. */
static spa_err check_chunk_size(hid_t dset, const char *where, const char *name)
{
    hsize_t cdims[32], dims[32];
    hid_t dcpl = H5Dget_create_plist(dset);
    if (dcpl >= 0 && H5Pget_layout(dcpl) != H5D_CHUNKED) {
        H5Pclose(dcpl);
        return SPA_OK;
    }
    int crank = dcpl >= 0 ? H5Pget_chunk(dcpl, 32, cdims) : -1;
    if (dcpl >= 0) H5Pclose(dcpl);
    hid_t space = H5Dget_space(dset), type = H5Dget_type(dset);
    int rank = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
    if (rank >= 1 && rank <= 32) H5Sget_simple_extent_dims(space, dims, NULL);
    size_t esize = type >= 0 ? H5Tget_size(type) : 0;
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    SPA_REQUIRE(crank >= 1 && crank <= 32 && crank == rank && esize > 0, SPA_ERR_INPUT,
                "%s: cannot read the chunk shape of dataset '%s' (damaged?)", where, name);
    double chunk = (double)esize, whole = (double)esize;
    for (int d = 0; d < crank; d++) {
        chunk *= (double)cdims[d];
        whole *= (double)dims[d];
    }
    const double mib = 1024.0 * 1024.0;
    SPA_REQUIRE(chunk <= 1024.0 * mib && (chunk <= 64.0 * mib || chunk <= whole), SPA_ERR_INPUT,
                "%s: dataset '%s' claims chunks of %.0f MiB (at most 1024 MiB, and no larger "
                "than the dataset past 64 MiB; damaged file?)",
                where, name, chunk / mib);
    return SPA_OK;
}

/* Guards what a damaged file may claim: the data of dataset i must lie
 * inside the file. Otherwise MPI-IO would be asked to read at a bogus
 * offset (and print its own complaint) or HDF5 to decode garbage. */
static spa_err check_storage(spa_input in, int i)
{
    const char *name = io_names[i];
    hsize_t eof = 0, nchunks = 0;
    hid_t dcpl = H5Dget_create_plist(in->dset[i]);
    H5D_layout_t lay = dcpl >= 0 ? H5Pget_layout(dcpl) : H5D_LAYOUT_ERROR;
    if (dcpl >= 0) H5Pclose(dcpl);
    SPA_REQUIRE(lay != H5D_LAYOUT_ERROR && H5Fget_filesize(in->file, &eof) >= 0, SPA_ERR_INPUT,
                "input: cannot read the layout of dataset '%s'", name);
    if (lay == H5D_CONTIGUOUS) {
        haddr_t a = H5Dget_offset(in->dset[i]);
        hsize_t sz = H5Dget_storage_size(in->dset[i]);
        SPA_REQUIRE(a == HADDR_UNDEF || (a <= eof && sz <= eof - a), SPA_ERR_INPUT,
                    "input: dataset '%s' lies beyond the end of the file (truncated or damaged)", name);
    } else if (lay == H5D_CHUNKED) {
        SPA_CHECK(check_chunk_size(in->dset[i], "input", name));
        /* H5Dget_chunk_info walks the index: bounded work for big files */
        spa_err err = SPA_OK;
        hid_t space = H5Dget_space(in->dset[i]);
        if (space < 0 || H5Dget_num_chunks(in->dset[i], space, &nchunks) < 0)
            err = spa_set_error(SPA_ERR_INPUT, __FILE__, __LINE__,
                                "input: cannot read the chunk index of dataset '%s'", name);
        for (hsize_t c = 0; err == SPA_OK && c < nchunks && c < 4096; c++) {
            hsize_t off[32];
            unsigned mask;
            haddr_t a;
            hsize_t sz;
            if (H5Dget_chunk_info(in->dset[i], space, c, off, &mask, &a, &sz) < 0 || a == HADDR_UNDEF ||
                a > eof || sz > eof - a)
                err = spa_set_error(SPA_ERR_INPUT, __FILE__, __LINE__,
                                    "input: chunk %llu of dataset '%s' lies beyond the end of the "
                                    "file (truncated or damaged)", (unsigned long long)c, name);
        }
        if (space >= 0) H5Sclose(space);
        return err;
    }
    return SPA_OK;
}

/* Opens dataset i (known to exist) and checks its type, its shape into
 * *rank and dims. Same answer on every rank. */
static spa_err open_typed(spa_input in, int i, int *rank, hsize_t *dims)
{
    const char *name = io_names[i];
    in->dset[i] = H5Dopen2(in->file, name, H5P_DEFAULT);
    SPA_REQUIRE(in->dset[i] >= 0, SPA_ERR_INPUT, "input: '%s' is not a dataset", name);

    in->ftype[i] = H5Dget_type(in->dset[i]);
    SPA_REQUIRE(in->ftype[i] >= 0, SPA_ERR_INPUT,
                "input: cannot read the type of dataset '%s' (damaged?)", name);
    SPA_REQUIRE(H5Tget_class(in->ftype[i]) == H5T_FLOAT, SPA_ERR_INPUT,
                "dataset '%s' is not floating point (spa reads float32, float64 and float16)", name);
    size_t tsize = H5Tget_size(in->ftype[i]);
    SPA_REQUIRE(tsize >= 2 && tsize <= 8, SPA_ERR_INPUT,
                "dataset '%s' has a floating-point type of %zu bytes (spa reads float16, float32 "
                "and float64)", name, tsize);
    if (H5Tequal(in->ftype[i], H5T_NATIVE_FLOAT) > 0)
        in->kind[i] = KIND_F32;
    else if (H5Tequal(in->ftype[i], H5T_NATIVE_DOUBLE) > 0)
        in->kind[i] = KIND_F64;
    else if (is_host_half(in->ftype[i]))
        in->kind[i] = KIND_F16;
    else
        in->kind[i] = KIND_HDF5;

    hid_t space = H5Dget_space(in->dset[i]);
    SPA_REQUIRE(space >= 0, SPA_ERR_INPUT, "input: cannot read the shape of dataset '%s' (damaged?)",
                name);
    *rank = H5Sget_simple_extent_ndims(space);
    if (*rank >= 1 && *rank <= 32) H5Sget_simple_extent_dims(space, dims, NULL);
    H5Sclose(space);
    return SPA_OK;
}

/* Opens q, k or v and checks its type and shape. Same answer on every rank. */
static spa_err open_one(spa_input in, int i, int *rank, hsize_t *dims)
{
    const char *name = io_names[i];
    htri_t ex = H5Lexists(in->file, name, H5P_DEFAULT);
    SPA_REQUIRE(ex > 0, SPA_ERR_INPUT, "input has no dataset '%s' (q, k and v are required)", name);
    SPA_CHECK(open_typed(in, i, rank, dims));
    SPA_REQUIRE(*rank >= 2 && *rank <= 4, SPA_ERR_INPUT,
                "dataset '%s' has rank %d; spa needs [N, D], [H, N, D] or [Bt, H, N, D]", name,
                *rank);
    return check_storage(in, i);
}

/* Fills the shape from q's dims after checking sizes. */
static spa_err check_shape(int rank, const hsize_t *dims, spa_shape *s)
{
    char txt[160];
    fmt_dims(txt, sizeof txt, rank, dims);
    int64_t elems = 1, heads = 1;
    for (int d = 0; d < rank; d++) {
        SPA_REQUIRE(dims[d] > 0, SPA_ERR_INPUT, "dataset 'q' has an empty dimension: shape %s", txt);
        /* 8 bytes per element: float64 is the widest type read */
        SPA_REQUIRE(dims[d] <= (hsize_t)(INT64_MAX / 8) &&
                        !__builtin_mul_overflow(elems, (int64_t)dims[d], &elems) &&
                        elems <= INT64_MAX / 8,
                    SPA_ERR_INPUT, "dataset 'q' is too large: shape %s overflows 64-bit sizes", txt);
        if (d < rank - 2) heads *= (int64_t)dims[d];
    }
    SPA_REQUIRE(heads <= INT32_MAX && dims[rank - 1] <= INT32_MAX, SPA_ERR_INPUT,
                "dataset 'q' has shape %s: heads and D must fit in 32 bits", txt);
    memset(s, 0, sizeof *s);
    s->rank = rank;
    for (int d = 0; d < rank; d++) s->dims[d] = (int64_t)dims[d];
    s->n = (int64_t)dims[rank - 2];
    s->heads = (int32_t)heads;
    s->dim = (int32_t)dims[rank - 1];
    return SPA_OK;
}

static spa_err open_datasets(spa_input in)
{
    int rank[3];
    hsize_t dims[3][32];
    for (int i = 0; i < 3; i++) SPA_CHECK(open_one(in, i, &rank[i], dims[i]));
    for (int i = 1; i < 3; i++) {
        int same = rank[i] == rank[0];
        for (int d = 0; same && d < rank[0]; d++) same = dims[i][d] == dims[0][d];
        if (!same) {
            char a[160], b[160];
            fmt_dims(a, sizeof a, rank[0], dims[0]);
            fmt_dims(b, sizeof b, rank[i], dims[i]);
            SPA_FAIL(SPA_ERR_INPUT, "datasets 'q' and '%s' differ in shape: %s and %s", io_names[i],
                     a, b);
        }
    }
    return check_shape(rank[0], dims[0], &in->shape);
}

void spa_io_close(spa_input *in)
{
    if (!in || !*in) return;
    spa_input p = *in;
    quiet qt;
    quiet_begin(&qt);
    for (int i = 0; i < IN_COUNT; i++) {
        close_id(&p->dset[i], H5Dclose);
        close_id(&p->ftype[i], H5Tclose);
    }
    close_id(&p->file, H5Fclose);
    quiet_end(&qt);
    free(p);
    *in = NULL;
}

/* Opens a file on this process alone (through fapl) and checks q, k and
 * v as spa_io_open does: their types, shapes and storage. label names the
 * file in messages. */
static spa_err check_file(const char *path, const char *label, hid_t fapl, spa_shape *shape)
{
    spa_err err = SPA_OK;
    spa_input p = calloc(1, sizeof *p);
    quiet qt;

    if (!p) return spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory");
    p->comm = MPI_COMM_SELF;
    p->file = H5I_INVALID_HID;
    for (int i = 0; i < IN_COUNT; i++) p->dset[i] = p->ftype[i] = H5I_INVALID_HID;
    quiet_begin(&qt);
    if ((p->file = H5Fopen(path, H5F_ACC_RDONLY, fapl)) < 0)
        IO_FAIL(SPA_ERR_INPUT, "%s: HDF5 cannot open it (damaged?)", label);
    if ((err = open_datasets(p)) == SPA_OK) *shape = p->shape;
done:
    spa_io_close(&p);
    quiet_end(&qt);
    return err;
}

/* Rank 0 looks at the path before HDF5 opens it in parallel, for messages
 * that say what is wrong rather than an MPI-IO error code. */
static spa_err check_input_path(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        SPA_FAIL(SPA_ERR_INPUT, "input '%s': %s", path, strerror(errno));
    SPA_REQUIRE(!S_ISDIR(st.st_mode), SPA_ERR_INPUT, "input '%s' is a folder", path);
    SPA_REQUIRE(access(path, R_OK) == 0, SPA_ERR_INPUT, "input '%s' is not readable", path);
    SPA_REQUIRE(H5Fis_hdf5(path) > 0, SPA_ERR_INPUT, "input '%s' is not an HDF5 file", path);
    /* A damaged file can point MPI-IO at offsets it rejects (and prints
     * about): open it serially first and check its datasets' metadata. */
    char label[1100];
    snprintf(label, sizeof label, "input '%.1024s'", path);
    spa_shape shape;
    return check_file(path, label, H5P_DEFAULT, &shape);
}

spa_err spa_io_open(MPI_Comm comm, const char *path, spa_input *in, spa_shape *shape)
{
    spa_err err = SPA_OK;
    spa_input p = NULL;
    hid_t fapl = H5I_INVALID_HID;
    int me;
    quiet qt;

    *in = NULL;
    SPA_MPI_CHECK(MPI_Comm_rank(comm, &me));
    quiet_begin(&qt);
    if (me == 0) err = check_input_path(path);
    if ((err = spa_agree(comm, err)) != SPA_OK) goto done;

    p = calloc(1, sizeof *p);
    if (p) {
        p->comm = comm;
        p->file = H5I_INVALID_HID;
        for (int i = 0; i < IN_COUNT; i++) p->dset[i] = p->ftype[i] = H5I_INVALID_HID;
    }
    if (!p) err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory");
    if ((err = spa_agree(comm, err)) != SPA_OK) goto done;

    fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0 || H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL) < 0)
        err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "HDF5: cannot set up MPI-IO");
    else if ((p->file = H5Fopen(path, H5F_ACC_RDONLY, fapl)) < 0)
        err = spa_set_error(SPA_ERR_INPUT, __FILE__, __LINE__, "input '%s': HDF5 cannot open it",
                            path);
    if ((err = spa_agree(comm, err)) != SPA_OK) goto done;

    err = open_datasets(p);
    if ((err = spa_agree(comm, err)) != SPA_OK) goto done;
    *shape = p->shape;
    *in = p;
    p = NULL;
done:
    close_id(&fapl, H5Pclose);
    spa_io_close(&p);
    quiet_end(&qt);
    return err;
}

/* Reads rows [t0, t1) of the datasets ids[0..nd) into dst[0..nd). The
 * first non-finite value of any of them is an input error naming it. */
static spa_err read_set(spa_input in, int64_t t0, int64_t t1, const int *ids, float *const *dst, int nd)
{
    spa_err err = SPA_OK;
    const spa_shape *s = &in->shape;
    int64_t bad[IN_COUNT], first[IN_COUNT], rows = t1 - t0;
    quiet qt;

    quiet_begin(&qt);
    if (!(t0 >= 0 && t0 <= t1 && t1 <= s->n))
        err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__,
                            "spa_io_read: rows [%lld, %lld) outside [0, %lld)", (long long)t0,
                            (long long)t1, (long long)s->n);
    if ((err = spa_agree(in->comm, err)) != SPA_OK) goto done;

    /* agreed after each dataset: a rank that failed must not skip the
     * next collective read */
    for (int i = 0; i < nd; i++) {
        err = read_one(in, ids[i], t0, t1, dst[i], &bad[i]);
        if ((err = spa_agree(in->comm, err)) != SPA_OK) goto done;
        if (ids[i] == IN_Q) test_delay(in->comm, "SPA_TEST_DELAY_READ");
    }

    /* Local memory index (h, t - t0, d) -> global flat index (h, t, d); the
     * lowest over ranks is the first non-finite value of the dataset. */
    for (int i = 0; i < nd; i++) {
        int64_t e = bad[i], w = row_width(in, ids[i]);
        first[i] = INT64_MAX;
        if (e >= 0) {
            int64_t h = e / (rows * w), r = e / w % rows, d = e % w;
            first[i] = (h * s->n + t0 + r) * w + d;
        }
    }
    if (MPI_Allreduce(MPI_IN_PLACE, first, nd, MPI_INT64_T, MPI_MIN, in->comm) != MPI_SUCCESS)
        IO_FAIL(SPA_ERR_OTHER, "MPI_Allreduce failed checking values");
    for (int i = 0; i < nd; i++) {
        if (first[i] == INT64_MAX) continue;
        char txt[160];
        hsize_t idx[4];
        int64_t f = first[i];
        int rank = ids[i] == IN_LSE ? s->rank - 1 : s->rank;
        for (int d = rank - 1; d >= 0; d--) {
            idx[d] = (hsize_t)(f % s->dims[d]);
            f /= s->dims[d];
        }
        fmt_dims(txt, sizeof txt, rank, idx);
        IO_FAIL(SPA_ERR_INPUT, "dataset '%s' has a value that is not finite in float32 at %s",
                io_names[ids[i]], txt);
    }
done:
    quiet_end(&qt);
    return err;
}

spa_err spa_io_read(spa_input in, int64_t t0, int64_t t1, float *q, float *k, float *v)
{
    static const int ids[3] = {IN_Q, IN_K, IN_V};
    float *dst[3] = {q, k, v};
    return read_set(in, t0, t1, ids, dst, 3);
}

/* ------------------------------------------------------- gradient input */

/* Opens dataset i (dout, out or lse) and checks it has q's shape (lse:
 * without the last dimension). Same answer on every rank. */
static spa_err open_extra(spa_input in, int i)
{
    const char *name = io_names[i];
    const spa_shape *s = &in->shape;
    int rank = 0, want = i == IN_LSE ? s->rank - 1 : s->rank;
    hsize_t dims[32], wdims[4];
    SPA_CHECK(open_typed(in, i, &rank, dims));
    int same = rank == want;
    for (int d = 0; d < want; d++) {
        wdims[d] = (hsize_t)s->dims[d];
        same = same && dims[d] == wdims[d];
    }
    if (!same) {
        char a[160], b[160];
        if (rank >= 1 && rank <= 32) fmt_dims(a, sizeof a, rank, dims);
        else snprintf(a, sizeof a, "of rank %d", rank);
        fmt_dims(b, sizeof b, want, wdims);
        SPA_FAIL(SPA_ERR_INPUT, "dataset '%s' has shape %s; it must be %s, the shape of q%s", name, a, b,
                 i == IN_LSE ? " without its last dimension" : "");
    }
    return check_storage(in, i);
}

static spa_err open_grad(spa_input in, int *has_fwd)
{
    htri_t ex[IN_COUNT];
    for (int i = IN_DOUT; i < IN_COUNT; i++) ex[i] = H5Lexists(in->file, io_names[i], H5P_DEFAULT);
    SPA_REQUIRE(ex[IN_DOUT] > 0, SPA_ERR_INPUT,
                "input has no dataset 'dout' (spa grad needs dout, the gradient of the loss with "
                "respect to out, in the shape of q)");
    SPA_CHECK(open_extra(in, IN_DOUT));
    SPA_REQUIRE((ex[IN_OUT] > 0) == (ex[IN_LSE] > 0), SPA_ERR_INPUT,
                "input has dataset '%s' but no '%s' (give both, from one spa run, or neither)",
                io_names[ex[IN_OUT] > 0 ? IN_OUT : IN_LSE], io_names[ex[IN_OUT] > 0 ? IN_LSE : IN_OUT]);
    *has_fwd = ex[IN_OUT] > 0;
    if (*has_fwd) {
        SPA_CHECK(open_extra(in, IN_OUT));
        SPA_CHECK(open_extra(in, IN_LSE));
    }
    return SPA_OK;
}

spa_err spa_io_open_grad(spa_input in, int *has_fwd)
{
    quiet qt;
    quiet_begin(&qt);
    *has_fwd = 0;
    spa_err err = spa_agree(in->comm, open_grad(in, has_fwd));
    quiet_end(&qt);
    return err;
}

spa_err spa_io_read_grad(spa_input in, int64_t t0, int64_t t1, float *dout, float *out, float *lse)
{
    static const int ids[3] = {IN_DOUT, IN_OUT, IN_LSE};
    float *dst[3] = {dout, out, lse};
    int nd = out && lse && in->dset[IN_OUT] >= 0 && in->dset[IN_LSE] >= 0 ? 3 : 1;
    return read_set(in, t0, t1, ids, dst, nd);
}

/* --------------------------------------------------------------- output */

/* An output file is built in two phases, so that no rank can be left
 * waiting in a collective that another rank has abandoned:
 *
 *   1. rank 0 alone creates the whole file under a temporary name with
 *      HDF5's serial driver: every dataset allocated (early, never filled),
 *      the small datasets (globals, the layout copy) and the attributes
 *      written; then it closes it. A failure here is rank 0's alone.
 *   2. every rank reopens it with MPI-IO and writes its rows of the large
 *      datasets in collective transfers, agreeing on the outcome (and on a
 *      stop request) after each one; then all close it together.
 *
 * Phase 2 writes no HDF5 metadata: a raw transfer that fails (a full disk
 * on one rank) returns on every rank, so after the agreement all ranks
 * reach H5Fclose together and it has nothing to flush. Had a metadata flush
 * failed on one rank only, that rank would have left the collectives of
 * H5Fclose while the others waited in them.
 *
 * The temporary name `.<name>.tmp.<host>.<pid>` (rank 0's host and pid)
 * says who wrote it: a later successful write of the same target removes
 * the temporary files of writers on this host that no longer exist (a job
 * killed with SIGKILL cannot clean up). */

/* An output file under construction: `tmp` beside the target, opened
 * with MPI-IO for phase 2. off[i] is the file offset of dataset i (-1: no
 * raw data to write), noff the number of datasets. */
typedef struct target {
    const char *path;
    char *tmp;
    MPI_File fh;
    int rank;
    int noff;
    int64_t *off;
} target;

/* ".<base>.tmp." prefix of the target's temporary names, and its folder. */
static spa_err tmp_prefix(const char *path, char **dir, char **prefix)
{
    char *dcopy = strdup(path), *bcopy = strdup(path);
    *dir = *prefix = NULL;
    if (dcopy && bcopy) {
        *dir = strdup(dirname(dcopy));
        size_t len = strlen(bcopy) + 16;
        *prefix = malloc(len);
        if (*prefix) snprintf(*prefix, len, ".%s.tmp.", basename(bcopy));
    }
    free(dcopy);
    free(bcopy);
    if (*dir && *prefix) return SPA_OK;
    free(*dir);
    free(*prefix);
    *dir = *prefix = NULL;
    return spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory");
}

/* "<dir>/.<base>.tmp.<host>.<pid>" in a malloc'ed string, or NULL. */
static char *tmp_name(const char *path, const char *host, long pid)
{
    char *dir, *prefix, *tmp = NULL;
    if (tmp_prefix(path, &dir, &prefix) != SPA_OK) return NULL;
    size_t len = strlen(dir) + strlen(prefix) + strlen(host) + 32;
    if ((tmp = malloc(len))) snprintf(tmp, len, "%s/%s%s.%ld", dir, prefix, host, pid);
    free(dir);
    free(prefix);
    return tmp;
}

static void host_name(char *host, size_t len)
{
    if (gethostname(host, len) != 0) snprintf(host, len, "localhost");
    host[len - 1] = '\0';
    for (char *c = host; *c; c++)
        if (*c == '/') *c = '_';
}

/* A process that no longer exists, or a zombie (dead, not yet reaped: a
 * container's init may never reap it). */
static int writer_gone(long pid)
{
    char path[64], buf[512];
    if (kill((pid_t)pid, 0) != 0) return errno == ESRCH;
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f) fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* "pid (comm) state ..." */
    return p && (p[2] == 'Z' || p[2] == 'X');
}

/* Removes the target's temporary files left by writers on this host that
 * are gone (writer_gone). Names of other hosts, of live
 * processes and of any other form are left alone. Not collective. */
static void remove_stale(const char *path)
{
    char *dir, *prefix, host[256];
    if (tmp_prefix(path, &dir, &prefix) != SPA_OK) return;
    host_name(host, sizeof host);
    size_t plen = strlen(prefix), hlen = strlen(host);
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        const char *s = e->d_name;
        if (strncmp(s, prefix, plen) != 0) continue;
        s += plen; /* "<host>.<pid>" */
        if (strncmp(s, host, hlen) != 0 || s[hlen] != '.') continue;
        char *end;
        long pid = strtol(s + hlen + 1, &end, 10);
        if (*end || pid <= 0 || pid == (long)getpid()) continue;
        if (!writer_gone(pid)) continue;
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        char *full = malloc(len);
        if (full) {
            snprintf(full, len, "%s/%s", dir, e->d_name);
            unlink(full);
        }
        free(full);
    }
    if (d) closedir(d);
    free(dir);
    free(prefix);
}

/* Phase 1 on rank 0: fills the new file (datasets created and allocated,
 * small ones written, attributes) and returns in off[] the file offsets
 * of the raw datasets phase 2 writes (-1: empty, nothing to write). */
typedef spa_err (*build_fn)(hid_t file, const void *arg, int64_t *off);

/* Copies the file image in descriptor src (a memory file) to path, which
 * exists: its data extents, then its size, so the never-written raw
 * datasets stay holes. The system's own error names the cause. */
static spa_err copy_image(int src, const char *path, const char *target)
{
    spa_err err = SPA_OK;
    char *buf = malloc(1 << 20);
    int dst = open(path, O_WRONLY | O_TRUNC);
    off_t size = lseek(src, 0, SEEK_END), pos = 0;
    if (!buf) IO_FAIL(SPA_ERR_OTHER, "out of memory");
    if (dst < 0 || size < 0) IO_FAIL(SPA_ERR_OTHER, "writing '%s' failed: %s", target, strerror(errno));
    while (pos < size) {
        off_t d = lseek(src, pos, SEEK_DATA), h;
        if (d < 0 && errno == ENXIO) break; /* only a hole is left */
        if (d < 0) d = pos;                 /* no SEEK_DATA: copy everything */
        h = lseek(src, d, SEEK_HOLE);
        if (h < 0) h = size;
        for (off_t o = d; o < h;) {
            size_t len = (size_t)(h - o < (1 << 20) ? h - o : (1 << 20));
            ssize_t got = pread(src, buf, len, o);
            if (got <= 0) IO_FAIL(SPA_ERR_OTHER, "writing '%s' failed: reading its image: %s", target,
                                  got < 0 ? strerror(errno) : "short read");
            for (ssize_t w = 0; w < got;) {
                ssize_t put = pwrite(dst, buf + w, (size_t)(got - w), o + w);
                if (put < 0) IO_FAIL(SPA_ERR_OTHER, "writing '%s' failed: %s", target, strerror(errno));
                w += put;
            }
            o += got;
        }
        pos = h;
    }
    if (ftruncate(dst, size) != 0) IO_FAIL(SPA_ERR_OTHER, "writing '%s' failed: %s", target, strerror(errno));
done:
    if (dst >= 0 && close(dst) != 0 && err == SPA_OK)
        err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "writing '%s' failed: %s", target,
                            strerror(errno));
    free(buf);
    return err;
}

/* Moves a new serial HDF5 file into an anonymous memory file: its bytes
 * so far are copied there and its descriptor is pointed at it. Returns a
 * descriptor of the memory file, or -1 when that is not possible (the file
 * then stays where it is). */
static int to_memory(hid_t file)
{
    int img = -1, fd;
    void *h = NULL;
    char buf[4096];
#ifdef __linux__
    img = memfd_create("spa-output", 0);
#endif
    if (img < 0) return -1;
    if (H5Fget_vfd_handle(file, H5P_DEFAULT, &h) < 0 || !h) goto fail;
    fd = *(int *)h;
    for (off_t o = 0;;) {
        ssize_t got = pread(fd, buf, sizeof buf, o);
        if (got < 0) goto fail;
        if (got == 0) break;
        if (pwrite(img, buf, (size_t)got, o) != got) goto fail;
        o += got;
    }
    if (dup2(img, fd) < 0) goto fail;
    return img;
fail:
    close(img);
    return -1;
}

/* Rank 0's phase 1: the folder checks, then the skeleton under t->tmp.
 * HDF5 builds it in an anonymous memory file, which cannot fail to take a
 * write; spa then copies it to the temporary file itself. HDF5 1.10 does
 * not survive a failed write in H5Fflush or H5Fclose: the file can then
 * never be closed, and the library crashes when it tries again at exit. */
static spa_err target_build(target *t, build_fn build, const void *arg, int *created)
{
    spa_err err = SPA_OK;
    hid_t file = H5I_INVALID_HID;
    char *dir = NULL, *prefix = NULL;
    struct stat st;
    int fd = -1, img = -1;

    SPA_CHECK(tmp_prefix(t->path, &dir, &prefix));
    if (strlen(t->path) == 0)
        IO_FAIL(SPA_ERR_USAGE, "output path is empty");
    if (stat(t->path, &st) == 0 && S_ISDIR(st.st_mode))
        IO_FAIL(SPA_ERR_USAGE, "output '%s' is a folder", t->path);
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        IO_FAIL(SPA_ERR_USAGE, "output '%s': folder '%s' does not exist", t->path, dir);
    /* Creating the file is the only test of writability that holds for
     * root and on read-only mounts alike. */
    if ((fd = open(t->tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644)) < 0)
        IO_FAIL(SPA_ERR_USAGE, "output '%s': cannot create a file in folder '%s': %s", t->path, dir,
                strerror(errno));
    close(fd);
    *created = 1;

    errno = 0;
    if ((file = H5Fcreate(t->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT)) < 0)
        IO_FAIL_CAUSE(errno, "writing '%s' failed: cannot create its temporary file", t->path);
    img = to_memory(file);
    err = build(file, arg, t->off);
    errno = 0;
    herr_t cl = H5Fclose(file);
    file = H5I_INVALID_HID;
    if (cl < 0 && err == SPA_OK) IO_FAIL_CAUSE(errno, "writing '%s' failed", t->path);
    if (err == SPA_OK && img >= 0) err = copy_image(img, t->tmp, t->path);
done:
    if (img >= 0) close(img);
    free(dir);
    free(prefix);
    return err;
}

/* Collective. Names the temporary file, lets rank 0 build it (phase 1),
 * then opens it with MPI-IO on every rank. t->off and t->noff are set by
 * the caller. On failure nothing is left. */
static spa_err target_begin(MPI_Comm comm, const char *path, target *t, build_fn build,
                            const void *arg)
{
    spa_err err = SPA_OK;
    int created = 0;
    struct {
        long pid;
        char host[256];
    } who;

    t->path = path;
    t->tmp = NULL;
    t->fh = MPI_FILE_NULL;
    for (int i = 0; i < t->noff; i++) t->off[i] = -1;
    SPA_MPI_CHECK(MPI_Comm_rank(comm, &t->rank));
    who.pid = (long)getpid();
    host_name(who.host, sizeof who.host);
    SPA_MPI_CHECK(MPI_Bcast(&who, (int)sizeof who, MPI_BYTE, 0, comm));
    if (!(t->tmp = tmp_name(path, who.host, who.pid)))
        err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory");
    if (t->rank == 0 && err == SPA_OK) err = target_build(t, build, arg, &created);
    if ((err = step_agree(comm, err)) == SPA_OK &&
        t->noff > 0 && MPI_Bcast(t->off, t->noff, MPI_INT64_T, 0, comm) != MPI_SUCCESS)
        err = spa_agree(comm, spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "MPI_Bcast failed"));
    if (err != SPA_OK) {
        if (created) unlink(t->tmp);
        free(t->tmp);
        t->tmp = NULL;
        return err;
    }

    /* phase 2: every rank opens the skeleton for its raw writes */
    int rc = MPI_File_open(comm, t->tmp, MPI_MODE_WRONLY, MPI_INFO_NULL, &t->fh);
    if (rc != MPI_SUCCESS) {
        t->fh = MPI_FILE_NULL;
        err = spa_mpi_error(rc, "MPI_File_open of the output", __FILE__, __LINE__);
    }
    return spa_agree(comm, err);
}

/* Collective. Closes the file on every rank together; on success
 * everywhere rank 0 renames it over the target (and removes stale
 * temporary files of the same target), otherwise removes it. Returns the
 * agreed outcome. err must already be agreed. */
static spa_err target_end(MPI_Comm comm, target *t, spa_err err)
{
    if (t->fh != MPI_FILE_NULL) {
        int rc = MPI_File_close(&t->fh);
        if (rc != MPI_SUCCESS && err == SPA_OK)
            err = spa_mpi_error(rc, "MPI_File_close of the output", __FILE__, __LINE__);
    }
    /* Every rank has closed (and so flushed) before the rename; a stop
     * request that came in the meantime still abandons the file. */
    err = step_agree(comm, err);
    if (t->tmp && t->rank == 0) {
        if (err == SPA_OK && rename(t->tmp, t->path) != 0)
            err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "cannot rename '%s' to '%s': %s",
                                t->tmp, t->path, strerror(errno));
        if (err != SPA_OK) unlink(t->tmp);
        else remove_stale(t->path);
    }
    free(t->tmp);
    t->tmp = NULL;
    return spa_agree(comm, err);
}

/* The cause of a failed MPI-IO call: errno when the call set it, else the
 * MPI error class's meaning. */
static void mpi_cause(int rc, int saved_errno, char *buf, size_t len)
{
    int cls = MPI_ERR_OTHER, n = 0;
    MPI_Error_class(rc, &cls);
    if (saved_errno) snprintf(buf, len, "%s", strerror(saved_errno));
    else if (cls == MPI_ERR_NO_SPACE) snprintf(buf, len, "%s", strerror(ENOSPC));
    else if (cls == MPI_ERR_QUOTA) snprintf(buf, len, "%s", strerror(EDQUOT));
    else if (MPI_Error_string(rc, buf, &n) != MPI_SUCCESS) snprintf(buf, len, "MPI error %d", rc);
}

/* errno values that only a failed write leaves */
static int write_errno(int e) { return e == ENOSPC || e == EDQUOT || e == EIO || e == EFBIG || e == EROFS; }

/* Phase 2, collective: this rank's rows [r0, r1) of a raw dataset seen as
 * [lead][nrows][width] elements of etype (esize bytes) at file offset base,
 * from buf ([lead][r1 - r0][width]): lead pieces of (r1 - r0) * width
 * elements, nrows * width apart, in one collective MPI-IO write. Returns
 * this rank's outcome; the caller agrees. */
static spa_err write_raw(MPI_Comm comm, target *t, const char *name, int64_t base, int64_t lead,
                         int64_t nrows, int64_t width, MPI_Datatype etype, int64_t esize,
                         int64_t r0, int64_t r1, const void *buf)
{
    spa_err err = SPA_OK;
    MPI_Datatype row = MPI_DATATYPE_NULL, blk = MPI_DATATYPE_NULL, ftype = MPI_DATATYPE_NULL;
    int64_t rows = r1 - r0;
    int rc;
    if (base < 0) return SPA_OK; /* an empty dataset: every rank skips it */
    if (lead > INT32_MAX || width > INT32_MAX || rows > INT32_MAX)
        err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "'%s': too many rows for one write", name);
    else if (MPI_Type_contiguous((int)width, etype, &row) != MPI_SUCCESS ||
             MPI_Type_contiguous((int)rows, row, &blk) != MPI_SUCCESS ||
             MPI_Type_create_hvector((int)lead, 1, (MPI_Aint)(nrows * width * esize), blk, &ftype) !=
                 MPI_SUCCESS ||
             MPI_Type_commit(&blk) != MPI_SUCCESS || MPI_Type_commit(&ftype) != MPI_SUCCESS)
        err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "MPI: cannot describe rows of '%s'", name);
    /* set_view and write_all are collective: every rank calls both, and a
     * rank with nothing to write passes a count of 0 */
    rc = MPI_File_set_view(t->fh, (MPI_Offset)(base + r0 * width * esize), MPI_BYTE,
                           err == SPA_OK && rows > 0 ? ftype : MPI_BYTE, "native", MPI_INFO_NULL);
    if (rc != MPI_SUCCESS && err == SPA_OK) err = spa_mpi_error(rc, "MPI_File_set_view", __FILE__, __LINE__);
    if ((err = spa_agree(comm, err)) != SPA_OK) goto done;
    MPI_Status st;
    MPI_Count done_bytes = 0, want = rows > 0 ? (MPI_Count)(lead * rows * width * esize) : 0;
    errno = 0;
    rc = MPI_File_write_all(t->fh, buf, rows > 0 ? (int)lead : 0, blk, &st);
    int e = errno;
    io_transfers++;
    io_collective++;
    /* Some MPI-IO layers report a failed write only as a short count, and
     * Open MPI's OMPIO (4.1) not at all: it prints the system error and
     * returns success, leaving the errno of the failed write behind. */
    if (rc == MPI_SUCCESS && (MPI_Get_elements_x(&st, MPI_BYTE, &done_bytes) != MPI_SUCCESS ||
                              done_bytes != want || write_errno(e))) {
        if (write_errno(e))
            err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__,
                                "writing '%s' failed: dataset '%s': %s", t->path, name, strerror(e));
        else
            err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__,
                                "writing '%s' failed: dataset '%s': %lld of %lld bytes written",
                                t->path, name, (long long)done_bytes, (long long)want);
    } else if (rc != MPI_SUCCESS) {
        char why[200];
        mpi_cause(rc, e, why, sizeof why);
        err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "writing '%s' failed: dataset '%s': %s",
                            t->path, name, why);
    }
done:
    if (ftype != MPI_DATATYPE_NULL) MPI_Type_free(&ftype);
    if (blk != MPI_DATATYPE_NULL) MPI_Type_free(&blk);
    if (row != MPI_DATATYPE_NULL) MPI_Type_free(&row);
    return err;
}

/* A dataset of the final size with its space allocated now: phase 2 then
 * writes raw data only and never changes the file's metadata. */
static hid_t new_dataset(hid_t loc, const char *name, hid_t ftype, int rank, const hsize_t *dims)
{
    hid_t space = H5Screate_simple(rank, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE), d = -1;
    /* Every element is written once; filling first would double the I/O.
     * No timestamps, so equal contents give equal files. */
    if (space >= 0 && dcpl >= 0 && H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER) >= 0 &&
        H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY) >= 0 && H5Pset_obj_track_times(dcpl, 0) >= 0)
        d = H5Dcreate2(loc, name, ftype, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    return d;
}

/* Attributes are metadata, written in phase 1. */
static int attr_num(hid_t loc, const char *name, hid_t ftype, hid_t mtype, const void *v)
{
    hid_t space = H5Screate(H5S_SCALAR), a = -1;
    int ok = 0;
    if (space >= 0) a = H5Acreate2(loc, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) ok = H5Awrite(a, mtype, v) >= 0;
    if (a >= 0) H5Aclose(a);
    if (space >= 0) H5Sclose(space);
    return ok;
}

static int attr_i64(hid_t loc, const char *name, int64_t v)
{
    return attr_num(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v);
}

static int attr_f64(hid_t loc, const char *name, double v)
{
    return attr_num(loc, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v);
}

static int attr_str(hid_t loc, const char *name, const char *v)
{
    hid_t type = H5Tcopy(H5T_C_S1);
    int ok = type >= 0 && H5Tset_size(type, strlen(v)) >= 0 && attr_num(loc, name, type, type, v);
    if (type >= 0) H5Tclose(type);
    return ok;
}

/* Root attributes holding each rule flag's values ("3@0:4 5@4:8"). */
static const char *const rule_attr[SPA_RULE_COUNT] = {"local_blocks_spec", "radius_spec", "random_spec",
                                                      "stride_spec", "summary_spec", "dilated_spec"};

/* The local rule every head shares: "blocks" (W, 0 never), "radius" (R),
 * "none" (0), or "per-head" (-1). */
static const char *local_mode(const spa_config *cfg, int64_t *size)
{
    const spa_head_rules *r0 = &cfg->hr[0];
    for (int32_t h = 1; h < cfg->heads; h++)
        if (cfg->hr[h].local_blocks != r0->local_blocks || cfg->hr[h].radius != r0->radius) {
            *size = -1;
            return "per-head";
        }
    *size = r0->radius >= 0 ? r0->radius : r0->local_blocks;
    return r0->radius >= 0 ? "radius" : r0->local_blocks > 0 ? "blocks" : "none";
}

/* Creates dataset name in loc and writes all of buf into it (phase 1,
 * serial). */
static spa_err write_whole(hid_t loc, const char *path, const char *name, hid_t ftype, hid_t mtype,
                           int rank, const hsize_t *dims, const void *buf)
{
    spa_err err = SPA_OK;
    hsize_t nelem = 1;
    for (int i = 0; i < rank; i++) nelem *= dims[i];
    errno = 0;
    hid_t d = new_dataset(loc, name, ftype, rank, dims);
    if (d < 0) IO_FAIL_CAUSE(errno, "writing '%s' failed: cannot create '%s'", path, name);
    errno = 0;
    if (nelem > 0 && H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)
        IO_FAIL_CAUSE(errno, "writing '%s' failed: dataset '%s'", path, name);
done:
    close_id(&d, H5Dclose);
    return err;
}

/* FlexAttention's padded form of compressed rows (off[rows + 1], list):
 * num[rows] counts and idx[rows][K] indices padded with 0, K the longest
 * row and at least 1. The caller frees num and idx. */
static spa_err pad_rows(int64_t rows, const int64_t *off, const int32_t *list, int32_t **num,
                        int32_t **idx, int64_t *K)
{
    *K = 1;
    for (int64_t r = 0; r < rows; r++)
        if (off[r + 1] - off[r] > *K) *K = off[r + 1] - off[r];
    *num = malloc((size_t)(rows > 0 ? rows : 1) * sizeof **num);
    *idx = calloc((size_t)(rows > 0 ? rows * *K : 1), sizeof **idx);
    if (!*num || !*idx) {
        free(*num);
        free(*idx);
        *num = *idx = NULL;
        SPA_FAIL(SPA_ERR_OTHER, "out of memory");
    }
    for (int64_t r = 0; r < rows; r++) {
        (*num)[r] = (int32_t)(off[r + 1] - off[r]);
        memcpy(*idx + r * *K, list + off[r], (size_t)(*num)[r] * sizeof **idx);
    }
    return SPA_OK;
}

/* The file offset of a contiguous dataset's data; -1 when it has none
 * (an empty dataset). */
static spa_err raw_offset(hid_t d, const char *name, hsize_t nelem, int64_t *off)
{
    haddr_t a = H5Dget_offset(d);
    *off = a == HADDR_UNDEF ? -1 : (int64_t)a;
    SPA_REQUIRE(nelem == 0 || *off >= 0, SPA_ERR_OTHER, "HDF5: dataset '%s' has no storage", name);
    return SPA_OK;
}

/* ------------------------------------------- atomic collective writer */

/* Element types: the file type of a dataset written in rows (raw bytes
 * from memory, so the native type), of one written whole (HDF5 converts),
 * the memory type, and MPI's. */
static int wtype_ok(int type, int attr)
{
    return attr ? type == SPA_WT_I64 || type == SPA_WT_U64 || type == SPA_WT_F64 || type == SPA_WT_STR
                : type == SPA_WT_F32 || type == SPA_WT_I32 || type == SPA_WT_I64;
}

static hid_t wtype_file(int type, int whole)
{
    switch (type) {
    case SPA_WT_F32: return whole ? H5T_IEEE_F32LE : H5T_NATIVE_FLOAT;
    case SPA_WT_I32: return whole ? H5T_STD_I32LE : H5T_NATIVE_INT32;
    case SPA_WT_I64: return whole ? H5T_STD_I64LE : H5T_NATIVE_INT64;
    case SPA_WT_U64: return H5T_STD_U64LE;
    default: return H5T_IEEE_F64LE;
    }
}

static hid_t wtype_mem(int type)
{
    switch (type) {
    case SPA_WT_F32: return H5T_NATIVE_FLOAT;
    case SPA_WT_I32: return H5T_NATIVE_INT32;
    case SPA_WT_I64: return H5T_NATIVE_INT64;
    case SPA_WT_U64: return H5T_NATIVE_UINT64;
    default: return H5T_NATIVE_DOUBLE;
    }
}

/* What phase 1 of a writer builds. */
typedef struct wspec {
    const char *path;
    const spa_wdset *d;
    int nd;
    const spa_wattr *a;
    int na;
} wspec;

/* The group that holds dataset `name` ("a/b/c": a/b, made as needed, with
 * no timestamps); *leaf is the last component. Phase 1, serial. */
static spa_err parent_group(hid_t file, const char *path, const char *name, hid_t *grp, const char **leaf)
{
    spa_err err = SPA_OK;
    char part[256];
    hid_t gcpl = H5I_INVALID_HID;
    const char *slash;
    *grp = H5Gopen2(file, "/", H5P_DEFAULT);
    *leaf = name;
    if (*grp < 0) IO_FAIL_CAUSE(0, "writing '%s' failed: cannot open its root group", path);
    while ((slash = strchr(*leaf, '/'))) {
        size_t len = (size_t)(slash - name);
        if (len >= sizeof part) IO_FAIL(SPA_ERR_OTHER, "writing '%s' failed: name '%s' is too long", path, name);
        memcpy(part, name, len);
        part[len] = '\0';
        hid_t g = H5I_INVALID_HID;
        errno = 0;
        if (H5Lexists(file, part, H5P_DEFAULT) > 0) {
            g = H5Gopen2(file, part, H5P_DEFAULT);
        } else {
            if (gcpl < 0 && (gcpl = H5Pcreate(H5P_GROUP_CREATE)) >= 0) H5Pset_obj_track_times(gcpl, 0);
            if (gcpl >= 0) g = H5Gcreate2(file, part, H5P_DEFAULT, gcpl, H5P_DEFAULT);
        }
        if (g < 0) IO_FAIL_CAUSE(errno, "writing '%s' failed: cannot create '%s'", path, part);
        close_id(grp, H5Gclose);
        *grp = g;
        *leaf = slash + 1;
    }
done:
    close_id(&gcpl, H5Pclose);
    if (err != SPA_OK) close_id(grp, H5Gclose);
    return err;
}

static int write_attr(hid_t file, const spa_wattr *a)
{
    switch (a->type) {
    case SPA_WT_I64: return attr_i64(file, a->name, a->i);
    case SPA_WT_U64: return attr_num(file, a->name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &a->u);
    case SPA_WT_F64: return attr_f64(file, a->name, a->f);
    default: return attr_str(file, a->name, a->s ? a->s : "");
    }
}

/* Phase 1 of a writer on rank 0: every dataset in order (rows datasets
 * allocated, whole ones written), then the root attributes in order. */
static spa_err build_spec(hid_t file, const void *arg, int64_t *off)
{
    const wspec *k = arg;
    spa_err err = SPA_OK;
    hid_t grp = H5I_INVALID_HID, d = H5I_INVALID_HID;
    for (int i = 0; i < k->nd; i++) {
        const spa_wdset *x = &k->d[i];
        const char *leaf;
        hsize_t dims[8], nelem = 1;
        for (int j = 0; j < x->rank; j++) nelem *= dims[j] = (hsize_t)x->dims[j];
        if ((err = parent_group(file, k->path, x->name, &grp, &leaf)) != SPA_OK) goto done;
        if (x->whole) {
            err = write_whole(grp, k->path, leaf, wtype_file(x->type, 1), wtype_mem(x->type), x->rank,
                              dims, x->data);
        } else {
            errno = 0;
            if ((d = new_dataset(grp, leaf, wtype_file(x->type, 0), x->rank, dims)) < 0)
                IO_FAIL_CAUSE(errno, "writing '%s' failed: cannot create '%s'", k->path, x->name);
            err = raw_offset(d, x->name, nelem, &off[i]);
            close_id(&d, H5Dclose);
        }
        close_id(&grp, H5Gclose);
        if (err != SPA_OK) goto done;
    }
    errno = 0;
    int ok = 1;
    for (int i = 0; ok && i < k->na; i++) ok = write_attr(file, &k->a[i]);
    if (!ok) IO_FAIL_CAUSE(errno, "writing '%s' failed: cannot write attributes", k->path);
done:
    close_id(&d, H5Dclose);
    close_id(&grp, H5Gclose);
    return err;
}

/* A dataset written in rows: [lead][nrows][width] elements of etype. */
typedef struct wraw {
    char *name;
    int whole;
    int64_t lead, nrows, width, esize;
    MPI_Datatype etype;
} wraw;

struct spa_io_writer_s {
    MPI_Comm comm;
    target t;
    int nd;
    wraw *d;
    int64_t *off;
};

static void writer_free(spa_io_writer w)
{
    if (!w) return;
    for (int i = 0; w->d && i < w->nd; i++) free(w->d[i].name);
    free(w->d);
    free(w->off);
    free(w->t.tmp);
    free(w);
}

/* This rank's view of the specification; the same answer on every rank. */
static spa_err writer_setup(spa_io_writer w, const spa_wdset *d, int nd, const spa_wattr *a, int na)
{
    w->nd = nd;
    w->d = calloc((size_t)(nd > 0 ? nd : 1), sizeof *w->d);
    w->off = calloc((size_t)(nd > 0 ? nd : 1), sizeof *w->off);
    SPA_REQUIRE(w->d && w->off, SPA_ERR_OTHER, "out of memory");
    for (int i = 0; i < nd; i++) {
        const spa_wdset *x = &d[i];
        wraw *r = &w->d[i];
        SPA_REQUIRE(x->name && x->name[0] && x->rank >= 1 && x->rank <= 8 && wtype_ok(x->type, 0) &&
                        (x->whole || (x->rowdim >= 0 && x->rowdim < x->rank)),
                    SPA_ERR_OTHER, "spa_io_writer_begin: dataset %d is malformed", i);
        SPA_REQUIRE((r->name = strdup(x->name)), SPA_ERR_OTHER, "out of memory");
        r->whole = x->whole;
        r->lead = r->width = 1;
        for (int j = 0; j < x->rank; j++) {
            SPA_REQUIRE(x->dims[j] >= 0, SPA_ERR_OTHER, "spa_io_writer_begin: '%s' has a negative size",
                        x->name);
            if (x->whole) continue;
            if (j < x->rowdim) r->lead *= x->dims[j];
            else if (j > x->rowdim) r->width *= x->dims[j];
        }
        r->nrows = x->whole ? 0 : x->dims[x->rowdim];
        r->esize = x->type == SPA_WT_I64 ? 8 : 4;
        r->etype = x->type == SPA_WT_F32 ? MPI_FLOAT : x->type == SPA_WT_I32 ? MPI_INT32_T : MPI_INT64_T;
    }
    for (int i = 0; i < na; i++)
        SPA_REQUIRE(a[i].name && a[i].name[0] && wtype_ok(a[i].type, 1), SPA_ERR_OTHER,
                    "spa_io_writer_begin: attribute %d is malformed", i);
    return SPA_OK;
}

spa_err spa_io_writer_begin(MPI_Comm comm, const char *path, const spa_wdset *d, int nd,
                            const spa_wattr *a, int na, spa_io_writer *out)
{
    spa_err err = SPA_OK;
    spa_io_writer w = calloc(1, sizeof *w);
    quiet qt;

    *out = NULL;
    if (!w) err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory");
    else {
        w->comm = comm;
        err = writer_setup(w, d, nd, a, na);
    }
    if ((err = step_agree(comm, err)) != SPA_OK) {
        writer_free(w);
        return err;
    }
    wspec spec = {path, d, nd, a, na};
    w->t.off = w->off;
    w->t.noff = nd;
    quiet_begin(&qt);
    err = target_begin(comm, path, &w->t, build_spec, &spec);
    quiet_end(&qt);
    if (err != SPA_OK) {
        /* built but not opened everywhere: close and remove it */
        if (w->t.tmp) target_end(comm, &w->t, err);
        writer_free(w);
        return err;
    }
    *out = w;
    return SPA_OK;
}

spa_err spa_io_writer_rows(spa_io_writer w, int i, int64_t r0, int64_t r1, const void *buf)
{
    spa_err err = SPA_OK;
    if (i < 0 || i >= w->nd || w->d[i].whole || !(r0 >= 0 && r0 <= r1 && r1 <= w->d[i].nrows))
        err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__,
                            "spa_io_writer_rows: dataset %d, rows [%lld, %lld) out of range", i,
                            (long long)r0, (long long)r1);
    if ((err = spa_agree(w->comm, err)) != SPA_OK) return err;
    const wraw *r = &w->d[i];
    err = write_raw(w->comm, &w->t, r->name, w->off[i], r->lead, r->nrows, r->width, r->etype, r->esize,
                    r0, r1, buf);
    return step_agree(w->comm, err);
}

spa_err spa_io_writer_end(spa_io_writer *pw, spa_err err)
{
    spa_io_writer w = pw ? *pw : NULL;
    if (!w) return err;
    err = target_end(w->comm, &w->t, spa_agree(w->comm, err));
    writer_free(w);
    *pw = NULL;
    return err;
}

/* ----------------------------------------------------- spa_io_write, gen */

/* Each rule flag's values as given, ' '-separated ("3@0:4 5@4:8"), or
 * NULL when the flag was not given; free them with rules_free. */
static void rules_free(char **rules)
{
    for (int r = 0; r < SPA_RULE_COUNT; r++) free(rules[r]), rules[r] = NULL;
}

static spa_err rules_strings(const spa_config *cfg, char **rules)
{
    for (int r = 0; r < SPA_RULE_COUNT; r++) rules[r] = NULL;
    for (int r = 0; r < SPA_RULE_COUNT; r++) {
        if (!cfg->rule_spec[r]) continue;
        if (!(rules[r] = strdup(cfg->rule_spec[r]))) {
            rules_free(rules);
            SPA_FAIL(SPA_ERR_OTHER, "out of memory");
        }
        for (char *c = rules[r]; *c; c++)
            if (*c == ';') *c = ' ';
    }
    return SPA_OK;
}

/* The root attributes that say which pattern an output was computed with,
 * in two parts around n .. version (the order of the files spa wrote
 * before): head = block .. scale, tail = the rule flags and the layout.
 * at has room for 7 + SPA_RULE_COUNT + 1 more entries. */
static void pattern_attrs_head(const spa_config *cfg, spa_wattr *at, int *na)
{
    int64_t lsize;
    const char *mode = local_mode(cfg, &lsize);
    at[(*na)++] = (spa_wattr){"block", SPA_WT_I64, cfg->block, 0, 0.0, NULL};
    at[(*na)++] = (spa_wattr){"local_mode", SPA_WT_STR, 0, 0, 0.0, mode};
    at[(*na)++] = (spa_wattr){"local_size", SPA_WT_I64, lsize, 0, 0.0, NULL};
    at[(*na)++] = (spa_wattr){"random", SPA_WT_I64, cfg->random_max, 0, 0.0, NULL};
    at[(*na)++] = (spa_wattr){"seed", SPA_WT_U64, 0, cfg->seed, 0.0, NULL};
    at[(*na)++] = (spa_wattr){"causal", SPA_WT_I64, cfg->causal ? 1 : 0, 0, 0.0, NULL};
    at[(*na)++] = (spa_wattr){"scale", SPA_WT_F64, 0, 0, (double)cfg->scale, NULL};
}

static void pattern_attrs_tail(const spa_config *cfg, char *const *rules, spa_wattr *at, int *na)
{
    for (int r = 0; r < SPA_RULE_COUNT; r++)
        if (rules[r]) at[(*na)++] = (spa_wattr){rule_attr[r], SPA_WT_STR, 0, 0, 0.0, rules[r]};
    if (cfg->layout_name) at[(*na)++] = (spa_wattr){"layout", SPA_WT_STR, 0, 0, 0.0, cfg->layout_name};
}

/* The output of SPEC section 2 with nbig datasets of q's shape (names[i]
 * from big[i], this rank's [H][t1 - t0][D]), lse when not NULL, the plan
 * group and the root attributes: spa run's out and lse, spa grad's dq, dk
 * and dv. */
static spa_err write_result(MPI_Comm comm, const char *path, const spa_shape *shape,
                            const spa_config *cfg, int64_t t0, int64_t t1, const char *const *names,
                            const float *const *big, int nbig, const float *lse, int threads)
{
    spa_err err = SPA_OK;
    spa_io_writer w = NULL;
    int32_t *rnd = NULL, *num = NULL, *idx = NULL;
    char *rules[SPA_RULE_COUNT] = {0};
    int P, me;
    int64_t b0, b1, pt0, pt1, K = 1;

    SPA_MPI_CHECK(MPI_Comm_size(comm, &P));
    SPA_MPI_CHECK(MPI_Comm_rank(comm, &me));
    int32_t H = shape->heads, R = cfg->random_max;
    if (cfg->n != shape->n || cfg->heads != shape->heads || cfg->dim != shape->dim ||
        !(t0 >= 0 && t0 <= t1 && t1 <= shape->n))
        err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__,
                            "spa_io_write: config, shape and rows [%lld, %lld) disagree",
                            (long long)t0, (long long)t1);
    spa_partition(cfg, P, me, &b0, &b1, &pt0, &pt1);
    if (err == SPA_OK) {
        rnd = spa_alloc((size_t)H * (size_t)(b1 - b0) * (size_t)(R > 0 ? R : 1) * sizeof(int32_t));
        if (!rnd) err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory");
    }
    /* rank 0 writes the small datasets: the layout in sparse form, so the
     * file describes itself, and each rule flag as given, values in
     * command-line order */
    const spa_layout *lay = &cfg->layout;
    if (err == SPA_OK && me == 0 && lay->heads > 0)
        err = pad_rows((int64_t)lay->heads * lay->nb, lay->off, lay->idx, &num, &idx, &K);
    if (err == SPA_OK) err = rules_strings(cfg, rules);
    if ((err = step_agree(comm, err)) != SPA_OK) goto done;

    /* out [.., n, D], lse [.., n] and plan/random_blocks [H, nb, R] in rows;
     * plan/globals and the layout copy whole. Raw datasets are of the
     * native types phase 2 writes (IEEE little endian on every machine spa
     * targets). */
    spa_wdset ds[8];
    int nd = 0;
    memset(ds, 0, sizeof ds);
    for (int b = 0; b < nbig; b++) {
        ds[nd] = (spa_wdset){names[b], SPA_WT_F32, shape->rank, {0}, shape->rank - 2, 0, NULL};
        for (int i = 0; i < shape->rank; i++) ds[nd].dims[i] = shape->dims[i];
        nd++;
    }
    int ilse = lse ? nd : -1;
    if (lse) {
        ds[nd] = (spa_wdset){"lse", SPA_WT_F32, shape->rank - 1, {0}, shape->rank - 2, 0, NULL};
        for (int i = 0; i < shape->rank - 1; i++) ds[nd].dims[i] = shape->dims[i];
        nd++;
    }
    int irnd = nd;
    ds[nd++] = (spa_wdset){"plan/random_blocks", SPA_WT_I32, 3, {H, spa_nblocks(cfg), R}, 1, 0, NULL};
    ds[nd++] = (spa_wdset){"plan/globals", SPA_WT_I64, 1, {cfg->nglobals}, 0, 1, cfg->globals};
    if (lay->heads > 0) {
        ds[nd++] = (spa_wdset){"plan/kv_num_blocks", SPA_WT_I32, 2, {lay->heads, lay->nb}, 0, 1, num};
        ds[nd++] = (spa_wdset){"plan/kv_indices", SPA_WT_I32, 3, {lay->heads, lay->nb, K}, 0, 1, idx};
    }

    /* Every rank must write identical attributes; rank 0's thread count is
     * the one recorded (rank 0 writes them, in phase 1). */
    spa_wattr at[16 + SPA_RULE_COUNT];
    int na = 0;
#define AT_I(nm, v) at[na++] = (spa_wattr){(nm), SPA_WT_I64, (v), 0, 0.0, NULL}
#define AT_S(nm, v) at[na++] = (spa_wattr){(nm), SPA_WT_STR, 0, 0, 0.0, (v)}
    pattern_attrs_head(cfg, at, &na);
    AT_I("n", cfg->n);
    AT_I("heads", cfg->heads);
    AT_I("dim", cfg->dim);
    AT_I("ranks", P);
    AT_I("threads", threads);
    AT_S("version", SPA_VERSION);
    pattern_attrs_tail(cfg, rules, at, &na);
#undef AT_I
#undef AT_S
    if ((err = spa_io_writer_begin(comm, path, ds, nd, at, na, &w)) != SPA_OK) goto done;

    /* rnd: [H][b1 - b0][R], -1 past the drawn count */
    for (int32_t h = 0; h < H; h++)
        for (int64_t c = b0; c < b1; c++) {
            int32_t *row = rnd + ((int64_t)h * (b1 - b0) + (c - b0)) * R;
            int32_t m = spa_pattern_random_blocks(cfg, h, c, row);
            for (int32_t j = m; j < R; j++) row[j] = -1;
        }
    for (int b = 0; b < nbig; b++) {
        if ((err = spa_io_writer_rows(w, b, t0, t1, big[b])) != SPA_OK) goto done;
        if (b == 0) test_delay(comm, "SPA_TEST_DELAY_WRITE");
    }
    if (lse && (err = spa_io_writer_rows(w, ilse, t0, t1, lse)) != SPA_OK) goto done;
    err = spa_io_writer_rows(w, irnd, b0, b1, rnd);
done:
    err = spa_io_writer_end(&w, err);
    rules_free(rules);
    free(num);
    free(idx);
    spa_free(rnd);
    return err;
}

spa_err spa_io_write(MPI_Comm comm, const char *path, const spa_shape *shape,
                     const spa_config *cfg, int64_t t0, int64_t t1, const float *out,
                     const float *lse, int threads)
{
    static const char *const names[1] = {"out"};
    const float *big[1] = {out};
    return write_result(comm, path, shape, cfg, t0, t1, names, big, 1, lse, threads);
}

spa_err spa_io_write_grad(MPI_Comm comm, const char *path, const spa_shape *shape,
                          const spa_config *cfg, int64_t t0, int64_t t1, const float *dq,
                          const float *dk, const float *dv, int threads)
{
    static const char *const names[3] = {"dq", "dk", "dv"};
    const float *big[3] = {dq, dk, dv};
    return write_result(comm, path, shape, cfg, t0, t1, names, big, 3, NULL, threads);
}

/* A root attribute of the input as text ("" when absent: *found = 0), in
 * the form the comparison and the message use. */
static void attr_text(hid_t file, const spa_wattr *want, char *buf, size_t len, int *found)
{
    buf[0] = '\0';
    *found = H5Aexists(file, want->name) > 0;
    if (!*found) return;
    hid_t a = H5Aopen(file, want->name, H5P_DEFAULT), t = a >= 0 ? H5Aget_type(a) : -1;
    if (t >= 0 && H5Tget_class(t) == H5T_STRING) {
        if (H5Tis_variable_str(t) > 0) {
            char *v = NULL;
            hid_t m = H5Tcopy(H5T_C_S1);
            H5Tset_size(m, H5T_VARIABLE);
            if (H5Aread(a, m, &v) >= 0 && v) snprintf(buf, len, "%s", v);
            if (v) H5free_memory(v);
            H5Tclose(m);
        } else {
            size_t sz = H5Tget_size(t);
            char *v = calloc(sz + 1, 1);
            if (v && H5Aread(a, t, v) >= 0) snprintf(buf, len, "%s", v);
            free(v);
        }
    } else if (t >= 0 && H5Tget_class(t) == H5T_INTEGER && want->type != SPA_WT_F64) {
        int64_t i = 0;
        uint64_t u = 0;
        if (want->type == SPA_WT_U64 && H5Aread(a, H5T_NATIVE_UINT64, &u) >= 0)
            snprintf(buf, len, "%llu", (unsigned long long)u);
        else if (want->type != SPA_WT_U64 && H5Aread(a, H5T_NATIVE_INT64, &i) >= 0)
            snprintf(buf, len, "%lld", (long long)i);
    } else if (t >= 0 && (H5Tget_class(t) == H5T_FLOAT || H5Tget_class(t) == H5T_INTEGER)) {
        double f = 0;
        if (H5Aread(a, H5T_NATIVE_DOUBLE, &f) >= 0) snprintf(buf, len, "%.9g", f);
    }
    if (t >= 0) H5Tclose(t);
    if (a >= 0) H5Aclose(a);
}

static void wattr_text(const spa_wattr *a, char *buf, size_t len)
{
    switch (a->type) {
    case SPA_WT_I64: snprintf(buf, len, "%lld", (long long)a->i); break;
    case SPA_WT_U64: snprintf(buf, len, "%llu", (unsigned long long)a->u); break;
    case SPA_WT_F64: snprintf(buf, len, "%.9g", a->f); break;
    default: snprintf(buf, len, "%s", a->s ? a->s : ""); break;
    }
}

static spa_err check_forward(spa_input in, const spa_config *cfg)
{
    char *rules[SPA_RULE_COUNT];
    SPA_CHECK(rules_strings(cfg, rules));
    spa_wattr at[8 + SPA_RULE_COUNT];
    int na = 0;
    pattern_attrs_head(cfg, at, &na);
    int ntail = na;
    pattern_attrs_tail(cfg, rules, at, &na);
    /* every attribute the pattern records, and none it does not: a rule
     * flag or layout of another run shows as an attribute too many */
    static const char *const extra[SPA_RULE_COUNT + 1] = {"local_blocks_spec", "radius_spec",
                                                          "random_spec", "stride_spec",
                                                          "summary_spec", "dilated_spec", "layout"};
    spa_err err = SPA_OK;
    for (int e = 0; e < SPA_RULE_COUNT + 1 && err == SPA_OK; e++) {
        int listed = 0;
        for (int i = ntail; i < na; i++) listed |= strcmp(at[i].name, extra[e]) == 0;
        if (!listed && H5Aexists(in->file, extra[e]) > 0)
            err = spa_set_error(SPA_ERR_INPUT, __FILE__, __LINE__,
                                "input: datasets 'out' and 'lse' are from another pattern: the file "
                                "records '%s' and these flags do not set it (drop out and lse to "
                                "recompute them, or give the flags of that run)", extra[e]);
    }
    for (int i = 0; i < na && err == SPA_OK; i++) {
        char got[256], want[256];
        int found;
        attr_text(in->file, &at[i], got, sizeof got, &found);
        wattr_text(&at[i], want, sizeof want);
        if (!found)
            err = spa_set_error(SPA_ERR_INPUT, __FILE__, __LINE__,
                                "input: datasets 'out' and 'lse' do not say which pattern they are "
                                "from: the file has no attribute '%s' (spa run records it; drop out "
                                "and lse to recompute them)", at[i].name);
        else if (strcmp(got, want) != 0)
            err = spa_set_error(SPA_ERR_INPUT, __FILE__, __LINE__,
                                "input: datasets 'out' and 'lse' are from another pattern: attribute "
                                "'%s' is %s in the file and %s for these flags (drop out and lse to "
                                "recompute them, or give the flags of that run)", at[i].name, got, want);
    }
    rules_free(rules);
    return err;
}

spa_err spa_io_check_forward(spa_input in, const spa_config *cfg)
{
    quiet qt;
    quiet_begin(&qt);
    spa_err err = spa_agree(in->comm, check_forward(in, cfg));
    quiet_end(&qt);
    return err;
}

static spa_err gen_file(MPI_Comm comm, const char *path, int64_t n, int32_t heads, int32_t dim,
                        uint64_t seed, float temperature, int ntensors)
{
    spa_err err = SPA_OK;
    spa_io_writer w = NULL;
    float *buf = NULL;
    int P, me;
    int64_t b0, b1, t0, t1, bytes;

    SPA_REQUIRE(n > 0 && heads > 0 && dim > 0, SPA_ERR_USAGE,
                "gen: n, heads and dim must be positive");
    SPA_REQUIRE(!__builtin_mul_overflow(n, (int64_t)heads, &bytes) &&
                    !__builtin_mul_overflow(bytes, (int64_t)dim * 4, &bytes),
                SPA_ERR_USAGE, "gen: n * heads * dim overflows 64-bit sizes");
    SPA_MPI_CHECK(MPI_Comm_size(comm, &P));
    SPA_MPI_CHECK(MPI_Comm_rank(comm, &me));

    /* Default-block shards: the split only decides who writes which rows,
     * never the values. */
    spa_config part;
    memset(&part, 0, sizeof part);
    part.n = n;
    part.block = 64;
    spa_partition(&part, P, me, &b0, &b1, &t0, &t1);
    int64_t rows = t1 - t0;
    buf = spa_alloc((size_t)heads * (size_t)rows * (size_t)dim * sizeof(float));
    if (!buf) err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory");
    if ((err = step_agree(comm, err)) != SPA_OK) goto done;

    spa_wdset ds[4];
    for (int which = 0; which < ntensors; which++)
        ds[which] = (spa_wdset){io_names[which], SPA_WT_F32, 3, {heads, n, dim}, 1, 0, NULL};
    spa_wattr at[3] = {{"seed", SPA_WT_U64, 0, seed, 0.0, NULL},
                       {"temperature", SPA_WT_F64, 0, 0, (double)temperature, NULL},
                       {"version", SPA_WT_STR, 0, 0, 0.0, SPA_VERSION}};
    if ((err = spa_io_writer_begin(comm, path, ds, ntensors, at, 3, &w)) != SPA_OK) goto done;

    /* which: 0 q, 1 k, 2 v, 3 dout (io_names and spa_synth agree) */
    for (int which = 0; which < ntensors && err == SPA_OK; which++) {
        /* buf: [H][rows][D] */
        for (int32_t h = 0; h < heads; h++)
            spa_synth(seed, temperature, which, h, t0, t1, dim, buf + (int64_t)h * rows * dim);
        err = spa_io_writer_rows(w, which, t0, t1, buf);
    }
done:
    err = spa_io_writer_end(&w, err);
    spa_free(buf);
    return err;
}

spa_err spa_io_gen(MPI_Comm comm, const char *path, int64_t n, int32_t heads, int32_t dim,
                   uint64_t seed, float temperature)
{
    return gen_file(comm, path, n, heads, dim, seed, temperature, 3);
}

spa_err spa_io_gen_grad(MPI_Comm comm, const char *path, int64_t n, int32_t heads, int32_t dim,
                        uint64_t seed, float temperature)
{
    return gen_file(comm, path, n, heads, dim, seed, temperature, 4);
}

/* ---------------------------------------------------------------- layout */

/* Reading a block layout (SPEC 1.1). Rank 0 reads the small file with
 * HDF5's default driver and broadcasts the rows; the outcome is agreed
 * first, so every rank fails with rank 0's message. Values are read in
 * slabs of rows, so a dense [H, nb, nb] layout never sits in memory whole. */

typedef struct lay_file {
    const char *path;
    hid_t file;
    int64_t n, nb;
    int32_t block;
    int32_t heads; /* of the input */
} lay_file;

/* An integer (or enum, as h5py stores bool) dataset opened for reading:
 * its native memory type, element size and signedness. */
typedef struct lay_dset {
    const char *name;
    hid_t d, mtype;
    size_t size;
    int sign;
    int rank;
    hsize_t dims[8];
    hsize_t cols; /* columns of the last dimension to read; 0: all */
} lay_dset;

static void lay_dset_close(lay_dset *x)
{
    close_id(&x->mtype, H5Tclose);
    close_id(&x->d, H5Dclose);
}

static int lay_has(const lay_file *lf, const char *name)
{
    return H5Lexists(lf->file, name, H5P_DEFAULT) > 0;
}

static spa_err lay_open(const lay_file *lf, const char *name, lay_dset *x)
{
    hid_t ftype = H5I_INVALID_HID, space = H5I_INVALID_HID, base = H5I_INVALID_HID;
    spa_err err = SPA_OK;
    x->name = name;
    x->d = x->mtype = H5I_INVALID_HID;
    x->cols = 0;
    x->d = H5Dopen2(lf->file, name, H5P_DEFAULT);
    if (x->d < 0) IO_FAIL(SPA_ERR_INPUT, "layout '%s': '%s' is not a dataset", lf->path, name);
    char where[1100];
    snprintf(where, sizeof where, "layout '%.1024s'", lf->path);
    if ((err = check_chunk_size(x->d, where, name)) != SPA_OK) goto done;
    ftype = H5Dget_type(x->d);
    H5T_class_t cls = ftype >= 0 ? H5Tget_class(ftype) : H5T_NO_CLASS;
    if (cls != H5T_INTEGER && cls != H5T_ENUM)
        IO_FAIL(SPA_ERR_INPUT, "layout '%s': dataset '%s' is not of an integer or boolean type",
                lf->path, name);
    /* HDF5 converts through buffers of the file type's size */
    if (H5Tget_size(ftype) > 8)
        IO_FAIL(SPA_ERR_INPUT, "layout '%s': dataset '%s' has %zu-byte integers in the file", lf->path,
                name, H5Tget_size(ftype));
    /* an enum (h5py's bool) is read as its own native enum: the raw integer
     * values of its base type, which HDF5 would not convert to int64 */
    x->mtype = H5Tget_native_type(ftype, H5T_DIR_ASCEND);
    base = cls == H5T_ENUM ? H5Tget_super(ftype) : H5Tcopy(ftype);
    if (x->mtype < 0 || base < 0)
        IO_FAIL(SPA_ERR_INPUT, "layout '%s': cannot read the type of dataset '%s' (damaged?)",
                lf->path, name);
    x->size = H5Tget_size(x->mtype);
    x->sign = H5Tget_sign(base) == H5T_SGN_2;
    if (x->size != 1 && x->size != 2 && x->size != 4 && x->size != 8)
        IO_FAIL(SPA_ERR_INPUT, "layout '%s': dataset '%s' has %zu-byte integers", lf->path, name,
                x->size);
    space = H5Dget_space(x->d);
    x->rank = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
    if (x->rank < 0 || x->rank > 8)
        IO_FAIL(SPA_ERR_INPUT, "layout '%s': dataset '%s' has rank %d", lf->path, name, x->rank);
    H5Sget_simple_extent_dims(space, x->dims, NULL);
done:
    close_id(&base, H5Tclose);
    close_id(&space, H5Sclose);
    close_id(&ftype, H5Tclose);
    if (err != SPA_OK) lay_dset_close(x);
    return err;
}

/* Checks x's shape against want[0 .. rank) (-1: any); want[0] = heads is
 * 1 or H. expect names the shape in the message. */
static spa_err lay_shape(const lay_file *lf, const lay_dset *x, int rank, const int64_t *want,
                         const char *expect)
{
    char txt[160];
    fmt_dims(txt, sizeof txt, x->rank, x->dims);
    int ok = x->rank == rank;
    for (int i = 1; ok && i < rank; i++) ok = want[i] < 0 || (int64_t)x->dims[i] == want[i];
    SPA_REQUIRE(ok, SPA_ERR_INPUT,
                "layout '%s': dataset '%s' has shape %s; expected %s with nb = ceil(n / block) = "
                "ceil(%lld / %d) = %lld",
                lf->path, x->name, txt, expect, (long long)lf->n, lf->block, (long long)lf->nb);
    SPA_REQUIRE(x->dims[0] == 1 || (int64_t)x->dims[0] == lf->heads, SPA_ERR_INPUT,
                "layout '%s': dataset '%s' has shape %s: its first dimension must be 1 or the %d "
                "heads", lf->path, x->name, txt, lf->heads);
    return SPA_OK;
}

/* Reads rows [r0, r1) of dimension 1 of head h (a [.., nb, ..] dataset)
 * as int64: dst gets (r1 - r0) * (product of the dims after 1) values. */
static spa_err lay_read(const lay_dset *x, int64_t h, int64_t r0, int64_t r1, void *raw, int64_t *dst)
{
    hsize_t start[8] = {0}, count[8];
    hsize_t nelem = 1;
    for (int i = 0; i < x->rank; i++) {
        start[i] = i == 0 ? (hsize_t)h : i == 1 ? (hsize_t)r0 : 0;
        count[i] = i == 0 ? 1 : i == 1 ? (hsize_t)(r1 - r0) : i == x->rank - 1 && x->cols ? x->cols : x->dims[i];
        nelem *= count[i];
    }
    if (nelem == 0) return SPA_OK;
    spa_err err = SPA_OK;
    hid_t fs = H5Dget_space(x->d), ms = H5Screate_simple(1, &nelem, NULL);
    if (fs < 0 || ms < 0 || H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
        H5Dread(x->d, x->mtype, ms, fs, H5P_DEFAULT, raw) < 0)
        err = spa_set_error(SPA_ERR_INPUT, __FILE__, __LINE__, "layout: cannot read dataset '%s'",
                            x->name);
    if (ms >= 0) H5Sclose(ms);
    if (fs >= 0) H5Sclose(fs);
    SPA_CHECK(err);
    for (hsize_t e = 0; e < nelem; e++) {
        const unsigned char *p = (const unsigned char *)raw + e * x->size;
        int64_t v;
        /* each width and signedness on its own: no mixed-sign ?: promotion */
        if (x->size == 1) {
            if (x->sign) v = *(const int8_t *)p;
            else v = *(const uint8_t *)p;
        } else if (x->size == 2) {
            if (x->sign) v = *(const int16_t *)p;
            else v = *(const uint16_t *)p;
        } else if (x->size == 4) {
            if (x->sign) v = *(const int32_t *)p;
            else v = *(const uint32_t *)p;
        } else {
            uint64_t u = *(const uint64_t *)p;
            /* unsigned values past INT64_MAX are invalid anyway: report them as -1 */
            v = x->sign ? (int64_t)u : u > INT64_MAX ? -1 : (int64_t)u;
        }
        dst[e] = v;
    }
    return SPA_OK;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Growing compressed rows. */
typedef struct lay_rows {
    spa_layout *out;
    int64_t cap;
} lay_rows;

static spa_err rows_push(lay_rows *r, int64_t at, int32_t b)
{
    if (at >= r->cap) {
        int64_t cap = 2 * r->cap + 1024;
        int32_t *idx = realloc(r->out->idx, (size_t)cap * sizeof *idx);
        SPA_REQUIRE(idx, SPA_ERR_OTHER, "out of memory for the layout");
        r->out->idx = idx;
        r->cap = cap;
    }
    r->out->idx[at] = b;
    return SPA_OK;
}

/* Rows per slab: about 2^20 values at a time. */
static int64_t slab_rows(int64_t per_row)
{
    int64_t r = ((int64_t)1 << 20) / (per_row > 0 ? per_row : 1);
    return r > 0 ? r : 1;
}

static spa_err lay_dense(const lay_file *lf, spa_layout *out)
{
    spa_err err = SPA_OK;
    lay_dset x;
    int64_t nb = lf->nb, *val = NULL;
    void *raw = NULL;
    lay_rows rows = {out, 0};
    SPA_CHECK(lay_open(lf, "layout", &x));
    int64_t want[3] = {-1, nb, nb};
    if ((err = lay_shape(lf, &x, 3, want, "[H or 1, nb, nb]")) != SPA_OK) goto done;
    int64_t H = (int64_t)x.dims[0], slab = slab_rows(nb);
    out->heads = (int32_t)H;
    out->nb = nb;
    out->off = malloc((size_t)(H * nb + 1) * sizeof *out->off);
    val = malloc((size_t)(slab * nb) * sizeof *val);
    raw = malloc((size_t)(slab * nb) * 8);
    if (!out->off || !val || !raw) IO_FAIL(SPA_ERR_OTHER, "out of memory for the layout");
    int64_t nnz = 0;
    for (int64_t h = 0; h < H; h++)
        for (int64_t r0 = 0; r0 < nb; r0 += slab) {
            int64_t r1 = r0 + slab < nb ? r0 + slab : nb;
            if ((err = lay_read(&x, h, r0, r1, raw, val)) != SPA_OK) goto done;
            for (int64_t c = r0; c < r1; c++) {
                out->off[h * nb + c] = nnz;
                for (int64_t b = 0; b < nb; b++) {
                    int64_t v = val[(c - r0) * nb + b];
                    if (v != 0 && v != 1)
                        IO_FAIL(SPA_ERR_INPUT,
                                "layout '%s': dataset 'layout' has the value %lld at [%lld, %lld, "
                                "%lld]; values must be 0 or 1",
                                lf->path, (long long)v, (long long)h, (long long)c, (long long)b);
                    if (v && (err = rows_push(&rows, nnz++, (int32_t)b)) != SPA_OK) goto done;
                }
            }
        }
    out->off[H * nb] = nnz;
done:
    free(val);
    free(raw);
    lay_dset_close(&x);
    return err;
}

/* One sparse pair: num [Hs, nb], idx [Hs, nb, K]. Appends row (h, c)'s
 * entries, checked, to list[] (room for K) and returns how many. */
typedef struct lay_pair {
    lay_dset num, idx;
    int64_t K, slab;
    int64_t Kr;                 /* columns read: min(K, nb + 1); a row lists at most nb unique blocks */
    int64_t *nval, *ival;
    void *raw;
    int64_t h_loaded, r_loaded; /* slab in nval/ival: head, first row; -1 none */
} lay_pair;

static void pair_close(lay_pair *p)
{
    lay_dset_close(&p->num);
    lay_dset_close(&p->idx);
    free(p->nval), free(p->ival), free(p->raw);
    p->nval = p->ival = NULL;
    p->raw = NULL;
}

static spa_err pair_open(const lay_file *lf, const char *num, const char *idx, lay_pair *p)
{
    memset(p, 0, sizeof *p);
    p->num.d = p->num.mtype = p->idx.d = p->idx.mtype = H5I_INVALID_HID;
    p->h_loaded = -1;
    SPA_REQUIRE(lay_has(lf, idx), SPA_ERR_INPUT, "layout '%s': dataset '%s' is missing (it comes with '%s')",
                lf->path, idx, num);
    SPA_CHECK(lay_open(lf, num, &p->num));
    SPA_CHECK(lay_open(lf, idx, &p->idx));
    int64_t w2[2] = {-1, lf->nb}, w3[3] = {-1, lf->nb, -1};
    SPA_CHECK(lay_shape(lf, &p->num, 2, w2, "[H or 1, nb]"));
    SPA_CHECK(lay_shape(lf, &p->idx, 3, w3, "[H or 1, nb, K]"));
    char a[160], b[160];
    fmt_dims(a, sizeof a, p->num.rank, p->num.dims);
    fmt_dims(b, sizeof b, p->idx.rank, p->idx.dims);
    SPA_REQUIRE(p->num.dims[0] == p->idx.dims[0], SPA_ERR_INPUT,
                "layout '%s': datasets '%s' %s and '%s' %s differ in heads", lf->path, num, a, idx, b);
    p->K = (int64_t)p->idx.dims[2];
    /* K comes from the file: read no more columns than a valid row can use,
     * so a hostile K cannot make the reader allocate without bound */
    p->Kr = p->K < lf->nb + 1 ? p->K : lf->nb + 1;
    p->idx.cols = (hsize_t)p->Kr;
    p->slab = slab_rows(p->Kr);
    p->nval = malloc((size_t)p->slab * sizeof *p->nval);
    p->ival = malloc((size_t)(p->slab * (p->Kr > 0 ? p->Kr : 1)) * sizeof *p->ival);
    p->raw = malloc((size_t)(p->slab * (p->Kr > 0 ? p->Kr : 1)) * 8);
    SPA_REQUIRE(p->nval && p->ival && p->raw, SPA_ERR_OTHER, "out of memory for the layout");
    return SPA_OK;
}

static spa_err pair_row(const lay_file *lf, lay_pair *p, int64_t h, int64_t c, unsigned char *seen,
                        int32_t *list, int64_t *m)
{
    int64_t hs = p->num.dims[0] == 1 ? 0 : h;
    if (p->h_loaded != hs || c < p->r_loaded || c >= p->r_loaded + p->slab) {
        int64_t r1 = c + p->slab < lf->nb ? c + p->slab : lf->nb;
        SPA_CHECK(lay_read(&p->num, hs, c, r1, p->raw, p->nval));
        SPA_CHECK(lay_read(&p->idx, hs, c, r1, p->raw, p->ival));
        p->h_loaded = hs;
        p->r_loaded = c;
    }
    int64_t r = c - p->r_loaded, cnt = p->nval[r];
    SPA_REQUIRE(cnt >= 0 && cnt <= p->K, SPA_ERR_INPUT,
                "layout '%s': dataset '%s' has %lld at [%lld, %lld]; it must be in [0, K = %lld]",
                lf->path, p->num.name, (long long)cnt, (long long)hs, (long long)c, (long long)p->K);
    SPA_REQUIRE(cnt <= lf->nb, SPA_ERR_INPUT,
                "layout '%s': dataset '%s' has %lld at [%lld, %lld], more than the nb = %lld key blocks "
                "(an index would repeat)",
                lf->path, p->num.name, (long long)cnt, (long long)hs, (long long)c, (long long)lf->nb);
    *m = 0;
    for (int64_t k = 0; k < cnt; k++) {
        int64_t b = p->ival[r * p->Kr + k];
        SPA_REQUIRE(b >= 0 && b < lf->nb, SPA_ERR_INPUT,
                    "layout '%s': dataset '%s' has %lld at [%lld, %lld, %lld], outside [0, nb = %lld)",
                    lf->path, p->idx.name, (long long)b, (long long)hs, (long long)c, (long long)k,
                    (long long)lf->nb);
        SPA_REQUIRE(!(seen[b] & 1), SPA_ERR_INPUT,
                    "layout '%s': dataset '%s' repeats key block %lld in row [%lld, %lld]", lf->path,
                    p->idx.name, (long long)b, (long long)hs, (long long)c);
        seen[b] |= 1;
        list[(*m)++] = (int32_t)b;
    }
    return SPA_OK;
}

static spa_err lay_sparse(const lay_file *lf, spa_layout *out)
{
    spa_err err = SPA_OK;
    lay_pair part, full;
    int has_full = lay_has(lf, "full_kv_num_blocks");
    int64_t nb = lf->nb;
    unsigned char *seen = calloc((size_t)nb, 1);
    int32_t *list = NULL;
    lay_rows rows = {out, 0};
    memset(&full, 0, sizeof full);
    full.num.d = full.num.mtype = full.idx.d = full.idx.mtype = H5I_INVALID_HID;
    if ((err = pair_open(lf, "kv_num_blocks", "kv_indices", &part)) != SPA_OK) goto done;
    if (!has_full && lay_has(lf, "full_kv_indices"))
        IO_FAIL(SPA_ERR_INPUT, "layout '%s': dataset 'full_kv_num_blocks' is missing (it comes with "
                "'full_kv_indices')", lf->path);
    if (has_full && (err = pair_open(lf, "full_kv_num_blocks", "full_kv_indices", &full)) != SPA_OK)
        goto done;
    if (has_full && full.num.dims[0] != part.num.dims[0])
        IO_FAIL(SPA_ERR_INPUT, "layout '%s': datasets 'full_kv_num_blocks' and 'kv_num_blocks' differ "
                "in heads (%llu and %llu)", lf->path, (unsigned long long)full.num.dims[0],
                (unsigned long long)part.num.dims[0]);
    int64_t H = (int64_t)part.num.dims[0];
    out->heads = (int32_t)H;
    out->nb = nb;
    out->off = malloc((size_t)(H * nb + 1) * sizeof *out->off);
    list = malloc((size_t)(2 * nb + 1) * sizeof *list);
    if (!seen || !out->off || !list) IO_FAIL(SPA_ERR_OTHER, "out of memory for the layout");
    int64_t nnz = 0;
    for (int64_t h = 0; h < H; h++)
        for (int64_t c = 0; c < nb; c++) {
            int64_t m1 = 0, m2 = 0;
            out->off[h * nb + c] = nnz;
            /* seen[] catches a repeat within one list; the two lists may share blocks */
            if ((err = pair_row(lf, &part, h, c, seen, list, &m1)) != SPA_OK) goto done;
            for (int64_t k = 0; k < m1; k++) seen[list[k]] = 0;
            if (has_full && (err = pair_row(lf, &full, h, c, seen, list + m1, &m2)) != SPA_OK) goto done;
            for (int64_t k = m1; k < m1 + m2; k++) seen[list[k]] = 0;
            /* the row: the union, ascending */
            qsort(list, (size_t)(m1 + m2), sizeof *list, cmp_i32);
            for (int64_t k = 0; k < m1 + m2; k++)
                if ((k == 0 || list[k] != list[k - 1]) && (err = rows_push(&rows, nnz++, list[k])) != SPA_OK)
                    goto done;
        }
    out->off[H * nb] = nnz;
done:
    free(seen);
    free(list);
    pair_close(&part);
    pair_close(&full);
    return err;
}

/* Rank 0's part: the whole file into *out. */
/* Reads the layout of the open file lf->file, named lf->path in messages,
 * and closes it. */
static spa_err lay_read_open(lay_file *plf, spa_layout *out)
{
    spa_err err = SPA_OK;
    hid_t attr = H5I_INVALID_HID, atype = H5I_INVALID_HID;
    lay_file lf = *plf;
    const char *path = lf.path;
    int32_t block = lf.block;

    if (H5Aexists(lf.file, "block") > 0) {
        int64_t b = 0;
        attr = H5Aopen(lf.file, "block", H5P_DEFAULT);
        atype = attr >= 0 ? H5Aget_type(attr) : H5I_INVALID_HID;
        hid_t sp = attr >= 0 ? H5Aget_space(attr) : H5I_INVALID_HID;
        hssize_t npts = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
        if (sp >= 0) H5Sclose(sp);
        if (atype < 0 || H5Tget_class(atype) != H5T_INTEGER || npts != 1 ||
            H5Aread(attr, H5T_NATIVE_INT64, &b) < 0)
            IO_FAIL(SPA_ERR_INPUT, "layout '%s': attribute 'block' is not one integer", path);
        if (b != block)
            IO_FAIL(SPA_ERR_INPUT, "layout '%s': attribute 'block' is %lld, but --block is %d", path,
                    (long long)b, block);
    }
    int dense = lay_has(&lf, "layout");
    int sparse = lay_has(&lf, "kv_num_blocks");
    if (dense && sparse)
        IO_FAIL(SPA_ERR_INPUT, "layout '%s' holds both a dataset 'layout' and 'kv_num_blocks': keep one "
                "form", path);
    if (dense) err = lay_dense(&lf, out);
    else if (sparse) err = lay_sparse(&lf, out);
    else if (lay_has(&lf, "kv_indices") || lay_has(&lf, "full_kv_num_blocks"))
        IO_FAIL(SPA_ERR_INPUT, "layout '%s': dataset 'kv_num_blocks' is missing", path);
    else
        IO_FAIL(SPA_ERR_INPUT, "layout '%s' has no dataset 'layout' (dense form) or 'kv_num_blocks' "
                "and 'kv_indices' (sparse form)", path);
    if (err == SPA_OK && !out->idx && !(out->idx = malloc(sizeof *out->idx)))
        err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory");
done:
    close_id(&atype, H5Tclose);
    close_id(&attr, H5Aclose);
    close_id(&lf.file, H5Fclose);
    plf->file = H5I_INVALID_HID;
    if (err != SPA_OK) spa_layout_free(out);
    return err;
}

static spa_err lay_read_file(const char *path, int32_t block, int64_t n, int32_t heads, spa_layout *out)
{
    struct stat st;
    lay_file lf = {path, H5I_INVALID_HID, n, (n + block - 1) / block, block, heads};

    if (stat(path, &st) != 0) SPA_FAIL(SPA_ERR_INPUT, "layout '%s': %s", path, strerror(errno));
    SPA_REQUIRE(!S_ISDIR(st.st_mode), SPA_ERR_INPUT, "layout '%s' is a folder", path);
    SPA_REQUIRE(access(path, R_OK) == 0, SPA_ERR_INPUT, "layout '%s' is not readable", path);
    SPA_REQUIRE(H5Fis_hdf5(path) > 0, SPA_ERR_INPUT, "layout '%s' is not an HDF5 file", path);
    lf.file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    SPA_REQUIRE(lf.file >= 0, SPA_ERR_INPUT, "layout '%s': HDF5 cannot open it", path);
    return lay_read_open(&lf, out);
}

/* MPI_Bcast of count elements of type in pieces of at most 2^30. */
static int bcast_big(void *buf, int64_t count, size_t size, MPI_Datatype type, MPI_Comm comm)
{
    const int64_t piece = (int64_t)1 << 30;
    for (int64_t o = 0; o < count; o += piece) {
        int64_t k = count - o < piece ? count - o : piece;
        if (MPI_Bcast((char *)buf + (size_t)o * size, (int)k, type, 0, comm) != MPI_SUCCESS) return 0;
    }
    return 1;
}

spa_err spa_io_read_layout(MPI_Comm comm, const char *path, int32_t block, int64_t n,
                           int32_t heads, spa_layout *out)
{
    spa_err err = SPA_OK;
    int me;
    quiet qt;
    memset(out, 0, sizeof *out);
    SPA_MPI_CHECK(MPI_Comm_rank(comm, &me));
    SPA_REQUIRE(block >= 1 && n >= 1, SPA_ERR_OTHER, "spa_io_read_layout: bad n or block");
    quiet_begin(&qt);
    if (me == 0) err = lay_read_file(path, block, n, heads, out);
    if ((err = spa_agree(comm, err)) != SPA_OK) goto done;

    int64_t hdr[3] = {out->heads, out->nb, me == 0 ? out->off[(int64_t)out->heads * out->nb] : 0};
    if (MPI_Bcast(hdr, 3, MPI_INT64_T, 0, comm) != MPI_SUCCESS) IO_FAIL(SPA_ERR_OTHER, "MPI_Bcast failed");
    if (me != 0) {
        out->heads = (int32_t)hdr[0];
        out->nb = hdr[1];
        out->off = malloc((size_t)(hdr[0] * hdr[1] + 1) * sizeof *out->off);
        out->idx = malloc((size_t)(hdr[2] + 1) * sizeof *out->idx);
        if (!out->off || !out->idx) err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory");
    }
    if ((err = spa_agree(comm, err)) != SPA_OK) goto done;
    if (!bcast_big(out->off, hdr[0] * hdr[1] + 1, sizeof *out->off, MPI_INT64_T, comm) ||
        !bcast_big(out->idx, hdr[2], sizeof *out->idx, MPI_INT32_T, comm))
        IO_FAIL(SPA_ERR_OTHER, "MPI_Bcast of the layout failed");
done:
    if (err != SPA_OK) spa_layout_free(out);
    quiet_end(&qt);
    return err;
}

/* ---------------------------------------------------------- layout export */

/* One FlexAttention pair, [H][nb] counts and [H][nb][K] indices padded
 * with 0 (FlexAttention's own padding), from compressed rows. */
static spa_err write_pair(hid_t file, const char *num_name, const char *idx_name, int32_t H, int64_t nb,
                          const int64_t *off, const int32_t *list)
{
    int64_t K = 1;
    int32_t *num = NULL, *idx = NULL;
    spa_err err = SPA_OK;
    hid_t d1 = H5I_INVALID_HID, d2 = H5I_INVALID_HID;
    if (pad_rows((int64_t)H * nb, off, list, &num, &idx, &K) != SPA_OK)
        IO_FAIL(SPA_ERR_OTHER, "out of memory for the layout export");
    hsize_t dn[2] = {(hsize_t)H, (hsize_t)nb}, di[3] = {(hsize_t)H, (hsize_t)nb, (hsize_t)K};
    d1 = new_dataset(file, num_name, H5T_STD_I32LE, 2, dn);
    d2 = new_dataset(file, idx_name, H5T_STD_I32LE, 3, di);
    if (d1 < 0 || d2 < 0 || H5Dwrite(d1, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, num) < 0 ||
        H5Dwrite(d2, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, idx) < 0)
        IO_FAIL(SPA_ERR_OTHER, "HDF5: cannot write '%s' and '%s'", num_name, idx_name);
done:
    close_id(&d1, H5Dclose);
    close_id(&d2, H5Dclose);
    free(num);
    free(idx);
    return err;
}

spa_err spa_io_export_layout(const char *path, const spa_config *cfg)
{
    spa_err err = SPA_OK;
    int32_t H = cfg->heads;
    int64_t nb = spa_nblocks(cfg), rows = (int64_t)H * nb;
    int64_t *foff = malloc((size_t)(rows + 1) * sizeof *foff), *poff = malloc((size_t)(rows + 1) * sizeof *poff);
    int32_t *full = malloc((size_t)nb * sizeof *full), *part = malloc((size_t)nb * sizeof *part);
    int32_t *flist = NULL, *plist = NULL;
    int64_t fcap = 0, pcap = 0, nf_all = 0, np_all = 0;
    char *tmp = NULL;
    hid_t file = H5I_INVALID_HID;
    quiet qt;

    quiet_begin(&qt);
    if (!foff || !poff || !full || !part) IO_FAIL(SPA_ERR_OTHER, "out of memory for the layout export");
    for (int32_t h = 0; h < H; h++)
        for (int64_t c = 0; c < nb; c++) {
            int64_t nf = 0, np = 0, r = (int64_t)h * nb + c;
            if (spa_pattern_export_row(cfg, h, c, full, &nf, part, &np) != 0)
                IO_FAIL(SPA_ERR_OTHER, "out of memory for the layout export");
            foff[r] = nf_all;
            poff[r] = np_all;
            if (nf_all + nf > fcap || np_all + np > pcap) {
                fcap = 2 * (nf_all + nf) + 1024;
                pcap = 2 * (np_all + np) + 1024;
                int32_t *a = realloc(flist, (size_t)fcap * sizeof *a);
                if (a) flist = a;
                int32_t *b = realloc(plist, (size_t)pcap * sizeof *b);
                if (b) plist = b;
                if (!a || !b) IO_FAIL(SPA_ERR_OTHER, "out of memory for the layout export");
            }
            memcpy(flist + nf_all, full, (size_t)nf * sizeof *full);
            memcpy(plist + np_all, part, (size_t)np * sizeof *part);
            nf_all += nf;
            np_all += np;
        }
    foff[rows] = nf_all;
    poff[rows] = np_all;
    if (!flist) flist = malloc(sizeof *flist);
    if (!plist) plist = malloc(sizeof *plist);
    if (!flist || !plist) IO_FAIL(SPA_ERR_OTHER, "out of memory for the layout export");

    /* beside the target under a temporary name, renamed when complete */
    char host[256];
    host_name(host, sizeof host);
    if (!(tmp = tmp_name(path, host, (long)getpid()))) IO_FAIL(SPA_ERR_OTHER, "out of memory");
    file = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (file < 0) {
        free(tmp);
        tmp = NULL; /* nothing to remove */
        IO_FAIL(SPA_ERR_USAGE, "--export-layout '%s': cannot create a file beside it", path);
    }
    if ((err = write_pair(file, "full_kv_num_blocks", "full_kv_indices", H, nb, foff, flist)) != SPA_OK ||
        (err = write_pair(file, "kv_num_blocks", "kv_indices", H, nb, poff, plist)) != SPA_OK)
        goto done;
    if (!(attr_i64(file, "block", cfg->block) && attr_i64(file, "n", cfg->n) &&
          attr_i64(file, "heads", cfg->heads) && attr_i64(file, "causal", cfg->causal ? 1 : 0) &&
          attr_str(file, "version", SPA_VERSION)))
        IO_FAIL(SPA_ERR_OTHER, "HDF5: cannot write the attributes of '%s'", tmp);
    herr_t cl = H5Fclose(file);
    file = H5I_INVALID_HID;
    if (cl < 0) IO_FAIL(SPA_ERR_OTHER, "HDF5: closing '%s' failed", tmp);
    if (rename(tmp, path) != 0)
        IO_FAIL(SPA_ERR_OTHER, "cannot rename '%s' to '%s': %s", tmp, path, strerror(errno));
    free(tmp);
    tmp = NULL;
    remove_stale(path);
done:
    close_id(&file, H5Fclose);
    if (tmp) unlink(tmp);
    free(tmp);
    free(foff), free(poff), free(full), free(part), free(flist), free(plist);
    quiet_end(&qt);
    return err;
}

/* ------------------------------------------------ fuzzing entry point */
/* For tests/fuzz only; nothing else calls it. */

/* A file access list for an in-memory image: the core driver, no backing
 * store. */
static hid_t image_fapl(const void *image, size_t len)
{
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl >= 0 && (H5Pset_fapl_core(fapl, 1 << 16, 0) < 0 || H5Pset_file_image(fapl, (void *)image, len) < 0))
        close_id(&fapl, H5Pclose);
    return fapl;
}

spa_err spa_io_check_path(const char *path, spa_shape *shape)
{
    return check_file(path, "input", H5P_DEFAULT, shape);
}

spa_err spa_io_check_image(const void *image, size_t len, spa_shape *shape)
{
    hid_t fapl = image_fapl(image, len);
    if (fapl < 0) return spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "HDF5: cannot set up the core driver");
    spa_err err = check_file("spa-image", "input image", fapl, shape);
    H5Pclose(fapl);
    return err;
}

spa_err spa_io_read_layout_image(const void *image, size_t len, int32_t block, int64_t n, int32_t heads,
                                 spa_layout *out)
{
    spa_err err = SPA_OK;
    quiet qt;
    memset(out, 0, sizeof *out);
    SPA_REQUIRE(block >= 1 && n >= 1, SPA_ERR_OTHER, "spa_io_read_layout_image: bad n or block");
    lay_file lf = {"(image)", H5I_INVALID_HID, n, (n + block - 1) / block, block, heads};
    quiet_begin(&qt);
    hid_t fapl = image_fapl(image, len);
    if (fapl < 0) IO_FAIL(SPA_ERR_OTHER, "HDF5: cannot set up the core driver");
    lf.file = H5Fopen("spa-layout-image", H5F_ACC_RDONLY, fapl);
    close_id(&fapl, H5Pclose);
    if (lf.file < 0) IO_FAIL(SPA_ERR_INPUT, "layout '%s': HDF5 cannot open it", lf.path);
    err = lay_read_open(&lf, out);
done:
    quiet_end(&qt);
    return err;
}
