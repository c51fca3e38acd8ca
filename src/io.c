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
#include "spa_impl.h"

#include "io.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <string.h>
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

static const char *const io_names[3] = {"q", "k", "v"};

struct spa_input_s {
    MPI_Comm comm;
    hid_t file;
    hid_t dset[3]; /* q, k, v */
    hid_t ftype[3];
    int kind[3];
    spa_shape shape;
};

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
    herr_t st = writing ? H5Dwrite(dset, memtype, mspace, fspace, dxpl, buf)
                        : H5Dread(dset, memtype, mspace, fspace, dxpl, buf);
    if (st < 0) IO_FAIL(SPA_ERR_OTHER, "HDF5: %s failed", writing ? "H5Dwrite" : "H5Dread");

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
    int64_t len = (int64_t)s->heads * (t1 - t0) * s->dim;
    int rowdim = s->rank - 2;
    spa_err err = SPA_OK;
    void *tmp = NULL;

    *bad = -1;
    switch (in->kind[i]) {
    case KIND_F32:
    case KIND_HDF5:
        SPA_CHECK(xfer(in->dset[i], H5T_NATIVE_FLOAT, 0, rowdim, t0, t1, dst));
        for (int64_t e = 0; e < len; e++)
            if (!isfinite(dst[e])) {
                *bad = e;
                break;
            }
        break;
    case KIND_F64: {
        double *d = tmp = spa_alloc((size_t)len * sizeof(double));
        if (!tmp) IO_FAIL(SPA_ERR_OTHER, "out of memory reading '%s'", io_names[i]);
        err = xfer(in->dset[i], H5T_NATIVE_DOUBLE, 0, rowdim, t0, t1, tmp);
        if (err != SPA_OK) goto done;
        for (int64_t e = 0; e < len; e++) {
            dst[e] = (float)d[e]; /* beyond float32 range becomes inf: reported below */
            if (*bad < 0 && !isfinite(dst[e])) *bad = e;
        }
        break;
    }
    case KIND_F16: {
        uint16_t *h = tmp = spa_alloc((size_t)len * sizeof(uint16_t));
        if (!tmp) IO_FAIL(SPA_ERR_OTHER, "out of memory reading '%s'", io_names[i]);
        err = xfer(in->dset[i], in->ftype[i], 0, rowdim, t0, t1, tmp);
        if (err != SPA_OK) goto done;
        for (int64_t e = 0; e < len; e++) {
            dst[e] = half_to_float(h[e]);
            if (*bad < 0 && !isfinite(dst[e])) *bad = e;
        }
        break;
    }
    }
done:
    spa_free(tmp);
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
    return SPA_OK;
}

/* Opens dataset i and checks its type and shape. Same answer on every rank. */
static spa_err open_one(spa_input in, int i, int *rank, hsize_t *dims)
{
    const char *name = io_names[i];
    htri_t ex = H5Lexists(in->file, name, H5P_DEFAULT);
    SPA_REQUIRE(ex > 0, SPA_ERR_INPUT, "input has no dataset '%s' (q, k and v are required)", name);
    in->dset[i] = H5Dopen2(in->file, name, H5P_DEFAULT);
    SPA_REQUIRE(in->dset[i] >= 0, SPA_ERR_INPUT, "input: '%s' is not a dataset", name);

    in->ftype[i] = H5Dget_type(in->dset[i]);
    SPA_REQUIRE(in->ftype[i] >= 0, SPA_ERR_OTHER, "HDF5: cannot get the type of '%s'", name);
    SPA_REQUIRE(H5Tget_class(in->ftype[i]) == H5T_FLOAT, SPA_ERR_INPUT,
                "dataset '%s' is not floating point (spa reads float32, float64 and float16)", name);
    if (H5Tequal(in->ftype[i], H5T_NATIVE_FLOAT) > 0)
        in->kind[i] = KIND_F32;
    else if (H5Tequal(in->ftype[i], H5T_NATIVE_DOUBLE) > 0)
        in->kind[i] = KIND_F64;
    else if (is_host_half(in->ftype[i]))
        in->kind[i] = KIND_F16;
    else
        in->kind[i] = KIND_HDF5;

    hid_t space = H5Dget_space(in->dset[i]);
    SPA_REQUIRE(space >= 0, SPA_ERR_OTHER, "HDF5: cannot get the shape of '%s'", name);
    *rank = H5Sget_simple_extent_ndims(space);
    if (*rank >= 1 && *rank <= 32) H5Sget_simple_extent_dims(space, dims, NULL);
    H5Sclose(space);
    SPA_REQUIRE(*rank >= 2 && *rank <= 4, SPA_ERR_INPUT,
                "dataset '%s' has rank %d; spa needs [N, D], [H, N, D] or [Bt, H, N, D]", name,
                *rank);
    return SPA_OK;
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
    for (int i = 0; i < 3; i++) {
        close_id(&p->dset[i], H5Dclose);
        close_id(&p->ftype[i], H5Tclose);
    }
    close_id(&p->file, H5Fclose);
    quiet_end(&qt);
    free(p);
    *in = NULL;
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
        for (int i = 0; i < 3; i++) p->dset[i] = p->ftype[i] = H5I_INVALID_HID;
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

spa_err spa_io_read(spa_input in, int64_t t0, int64_t t1, float *q, float *k, float *v)
{
    spa_err err = SPA_OK;
    const spa_shape *s = &in->shape;
    float *dst[3] = {q, k, v};
    int64_t bad[3] = {-1, -1, -1}, first[3], rows = t1 - t0;
    quiet qt;

    quiet_begin(&qt);
    if (!(t0 >= 0 && t0 <= t1 && t1 <= s->n))
        err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__,
                            "spa_io_read: rows [%lld, %lld) outside [0, %lld)", (long long)t0,
                            (long long)t1, (long long)s->n);
    if ((err = spa_agree(in->comm, err)) != SPA_OK) goto done;

    for (int i = 0; i < 3 && err == SPA_OK; i++) err = read_one(in, i, t0, t1, dst[i], &bad[i]);
    if ((err = spa_agree(in->comm, err)) != SPA_OK) goto done;

    /* Local memory index (h, t - t0, d) -> global flat index (h, t, d); the
     * lowest over ranks is the first non-finite value of the dataset. */
    for (int i = 0; i < 3; i++) {
        int64_t e = bad[i];
        first[i] = INT64_MAX;
        if (e >= 0) {
            int64_t h = e / (rows * s->dim), r = e / s->dim % rows, d = e % s->dim;
            first[i] = (h * s->n + t0 + r) * s->dim + d;
        }
    }
    if (MPI_Allreduce(MPI_IN_PLACE, first, 3, MPI_INT64_T, MPI_MIN, in->comm) != MPI_SUCCESS)
        IO_FAIL(SPA_ERR_OTHER, "MPI_Allreduce failed checking values");
    for (int i = 0; i < 3; i++) {
        if (first[i] == INT64_MAX) continue;
        char txt[160];
        hsize_t idx[4];
        int64_t f = first[i];
        for (int d = s->rank - 1; d >= 0; d--) {
            idx[d] = (hsize_t)(f % s->dims[d]);
            f /= s->dims[d];
        }
        fmt_dims(txt, sizeof txt, s->rank, idx);
        IO_FAIL(SPA_ERR_INPUT, "dataset '%s' has a value that is not finite in float32 at %s",
                io_names[i], txt);
    }
done:
    quiet_end(&qt);
    return err;
}

/* --------------------------------------------------------------- output */

/* An output file under construction: `tmp` beside the target. */
typedef struct target {
    char *tmp;
    hid_t file;
    int rank;
} target;

/* Collective. Checks the target's folder, reserves a temporary name and
 * creates the HDF5 file there. On failure nothing is left behind. */
static spa_err target_begin(MPI_Comm comm, const char *path, target *t)
{
    spa_err err = SPA_OK;
    char *dcopy = NULL, *bcopy = NULL;
    hid_t fapl = H5I_INVALID_HID;
    long pid = (long)getpid();
    struct stat st;

    t->tmp = NULL;
    t->file = H5I_INVALID_HID;
    SPA_MPI_CHECK(MPI_Comm_rank(comm, &t->rank));
    SPA_MPI_CHECK(MPI_Bcast(&pid, 1, MPI_LONG, 0, comm));

    size_t len = strlen(path);
    dcopy = malloc(len + 1);
    bcopy = malloc(len + 1);
    t->tmp = malloc(2 * len + 64);
    const char *dir = ".";
    if (!dcopy || !bcopy || !t->tmp) {
        err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory");
    } else {
        memcpy(dcopy, path, len + 1);
        memcpy(bcopy, path, len + 1);
        dir = dirname(dcopy);
        snprintf(t->tmp, 2 * len + 64, "%s/.%s.tmp.%ld", dir, basename(bcopy), pid);
    }

    if (t->rank == 0 && err == SPA_OK) {
        int fd = -1;
        if (len == 0)
            err = spa_set_error(SPA_ERR_USAGE, __FILE__, __LINE__, "output path is empty");
        else if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
            err = spa_set_error(SPA_ERR_USAGE, __FILE__, __LINE__, "output '%s' is a folder", path);
        else if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
            err = spa_set_error(SPA_ERR_USAGE, __FILE__, __LINE__,
                                "output '%s': folder '%s' does not exist", path, dir);
        /* Creating the file is the only test of writability that holds for
         * root and on read-only mounts alike. */
        else if ((fd = open(t->tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644)) < 0)
            err = spa_set_error(SPA_ERR_USAGE, __FILE__, __LINE__,
                                "output '%s': cannot create a file in folder '%s': %s", path, dir,
                                strerror(errno));
        if (fd >= 0) close(fd);
    }
    if ((err = spa_agree(comm, err)) != SPA_OK) {
        free(t->tmp);
        t->tmp = NULL; /* nothing was created */
        goto done;
    }

    fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0 || H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL) < 0 ||
        H5Pset_coll_metadata_write(fapl, 1) < 0)
        err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "HDF5: cannot set up MPI-IO");
    else if ((t->file = H5Fcreate(t->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl)) < 0)
        err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "HDF5: cannot create '%s'", t->tmp);
    err = spa_agree(comm, err);
done:
    close_id(&fapl, H5Pclose);
    free(dcopy);
    free(bcopy);
    return err;
}

/* Collective. Closes the file; on success everywhere rank 0 renames it over
 * the target, otherwise removes it. Returns the agreed outcome. */
static spa_err target_end(MPI_Comm comm, const char *path, target *t, spa_err err)
{
    if (t->file >= 0 && H5Fclose(t->file) < 0 && err == SPA_OK)
        err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "HDF5: closing '%s' failed", t->tmp);
    t->file = H5I_INVALID_HID;
    /* Every rank has closed (and so flushed) before the rename. */
    err = spa_agree(comm, err);
    if (t->tmp && t->rank == 0) {
        if (err == SPA_OK && rename(t->tmp, path) != 0)
            err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "cannot rename '%s' to '%s': %s",
                                t->tmp, path, strerror(errno));
        if (err != SPA_OK) unlink(t->tmp);
    }
    free(t->tmp);
    t->tmp = NULL;
    return spa_agree(comm, err);
}

static hid_t new_dataset(hid_t loc, const char *name, hid_t ftype, int rank, const hsize_t *dims)
{
    hid_t space = H5Screate_simple(rank, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE), d = -1;
    /* Every element is written once; filling first would double the I/O.
     * No timestamps, so equal contents give equal files. */
    if (space >= 0 && dcpl >= 0 && H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER) >= 0 &&
        H5Pset_obj_track_times(dcpl, 0) >= 0)
        d = H5Dcreate2(loc, name, ftype, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    return d;
}

/* Attributes are metadata: every rank writes the same value. */
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

/* Collective. plan/kv_num_blocks [Hl, nb] and plan/kv_indices [Hl, nb, K]
 * (K the longest row, at least 1, padded with 0), written by rank 0. */
static spa_err write_layout_copy(MPI_Comm comm, hid_t plan, const spa_layout *lay, int me)
{
    spa_err err = SPA_OK;
    int64_t rows = (int64_t)lay->heads * lay->nb, K = 1;
    for (int64_t r = 0; r < rows; r++)
        if (lay->off[r + 1] - lay->off[r] > K) K = lay->off[r + 1] - lay->off[r];
    int32_t *num = NULL, *idx = NULL;
    hid_t d = H5I_INVALID_HID;
    if (me == 0) {
        num = malloc((size_t)rows * sizeof *num);
        idx = calloc((size_t)(rows * K), sizeof *idx);
        if (!num || !idx) err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory");
        for (int64_t r = 0; err == SPA_OK && r < rows; r++) {
            num[r] = (int32_t)(lay->off[r + 1] - lay->off[r]);
            memcpy(idx + r * K, lay->idx + lay->off[r], (size_t)num[r] * sizeof *idx);
        }
    }
    if ((err = spa_agree(comm, err)) != SPA_OK) goto done;
    hsize_t dn[2] = {(hsize_t)lay->heads, (hsize_t)lay->nb};
    hsize_t di[3] = {(hsize_t)lay->heads, (hsize_t)lay->nb, (hsize_t)K};
    if ((d = new_dataset(plan, "kv_num_blocks", H5T_STD_I32LE, 2, dn)) < 0)
        err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "HDF5: cannot create 'plan/kv_num_blocks'");
    else
        err = xfer(d, H5T_NATIVE_INT32, 1, 0, 0, me == 0 ? lay->heads : 0, num);
    close_id(&d, H5Dclose);
    if ((err = spa_agree(comm, err)) != SPA_OK) goto done;
    if ((d = new_dataset(plan, "kv_indices", H5T_STD_I32LE, 3, di)) < 0)
        err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "HDF5: cannot create 'plan/kv_indices'");
    else
        err = xfer(d, H5T_NATIVE_INT32, 1, 0, 0, me == 0 ? lay->heads : 0, idx);
    close_id(&d, H5Dclose);
    err = spa_agree(comm, err);
done:
    free(num);
    free(idx);
    return err;
}

spa_err spa_io_write(MPI_Comm comm, const char *path, const spa_shape *shape,
                     const spa_config *cfg, int64_t t0, int64_t t1, const float *out,
                     const float *lse, int threads)
{
    spa_err err = SPA_OK;
    target t = {NULL, H5I_INVALID_HID, 0};
    hid_t d = H5I_INVALID_HID, plan = H5I_INVALID_HID;
    int32_t *rnd = NULL;
    int P, me;
    int64_t b0, b1, pt0, pt1;
    quiet qt;

    SPA_MPI_CHECK(MPI_Comm_size(comm, &P));
    SPA_MPI_CHECK(MPI_Comm_rank(comm, &me));
    quiet_begin(&qt);
    int32_t H = shape->heads, R = cfg->random_max;
    int64_t nb = spa_nblocks(cfg);
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
    if ((err = spa_agree(comm, err)) != SPA_OK) goto done;
    if ((err = target_begin(comm, path, &t)) != SPA_OK) goto done;

    /* rnd: [H][b1 - b0][R], -1 past the drawn count */
    for (int32_t h = 0; h < H; h++)
        for (int64_t c = b0; c < b1; c++) {
            int32_t *row = rnd + ((int64_t)h * (b1 - b0) + (c - b0)) * R;
            int32_t m = spa_pattern_random_blocks(cfg, h, c, row);
            for (int32_t j = m; j < R; j++) row[j] = -1;
        }

    hsize_t dims[4], ldims[4];
    for (int i = 0; i < shape->rank; i++) dims[i] = ldims[i] = (hsize_t)shape->dims[i];
    hsize_t rdims[3] = {(hsize_t)H, (hsize_t)nb, (hsize_t)R}, gdims[1] = {(hsize_t)cfg->nglobals};

    if ((d = new_dataset(t.file, "out", H5T_IEEE_F32LE, shape->rank, dims)) < 0)
        err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "HDF5: cannot create 'out'");
    else
        err = xfer(d, H5T_NATIVE_FLOAT, 1, shape->rank - 2, t0, t1, (void *)out);
    close_id(&d, H5Dclose);
    if ((err = spa_agree(comm, err)) != SPA_OK) goto done;

    if ((d = new_dataset(t.file, "lse", H5T_IEEE_F32LE, shape->rank - 1, ldims)) < 0)
        err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "HDF5: cannot create 'lse'");
    else
        err = xfer(d, H5T_NATIVE_FLOAT, 1, shape->rank - 2, t0, t1, (void *)lse);
    close_id(&d, H5Dclose);
    if ((err = spa_agree(comm, err)) != SPA_OK) goto done;

    hid_t gcpl = H5Pcreate(H5P_GROUP_CREATE);
    if (gcpl >= 0 && H5Pset_obj_track_times(gcpl, 0) >= 0)
        plan = H5Gcreate2(t.file, "plan", H5P_DEFAULT, gcpl, H5P_DEFAULT);
    close_id(&gcpl, H5Pclose);
    if (plan < 0 || (d = new_dataset(plan, "random_blocks", H5T_STD_I32LE, 3, rdims)) < 0)
        err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "HDF5: cannot create 'plan'");
    else if (R > 0) /* same R on every rank: all skip or none */
        err = xfer(d, H5T_NATIVE_INT32, 1, 1, b0, b1, rnd);
    close_id(&d, H5Dclose);
    if ((err = spa_agree(comm, err)) != SPA_OK) goto done;

    /* globals: rank 0 writes all of them, the others an empty selection */
    if ((d = new_dataset(plan, "globals", H5T_STD_I64LE, 1, gdims)) < 0)
        err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "HDF5: cannot create 'globals'");
    else if (cfg->nglobals > 0)
        err = xfer(d, H5T_NATIVE_INT64, 1, 0, 0, me == 0 ? cfg->nglobals : 0, cfg->globals);
    close_id(&d, H5Dclose);
    if ((err = spa_agree(comm, err)) != SPA_OK) goto done;

    /* The layout in sparse form, so the file describes itself: rank 0
     * writes it, the others take part with empty selections. */
    if (cfg->layout.heads > 0) {
        if ((err = write_layout_copy(comm, plan, &cfg->layout, me)) != SPA_OK) goto done;
    }

    /* Every rank must write identical attributes; rank 0's thread count is
     * the one recorded. */
    if (MPI_Bcast(&threads, 1, MPI_INT, 0, comm) != MPI_SUCCESS)
        IO_FAIL(SPA_ERR_OTHER, "MPI_Bcast failed");
    int64_t lsize;
    const char *mode = local_mode(cfg, &lsize);
    int ok = attr_i64(t.file, "block", cfg->block) && attr_str(t.file, "local_mode", mode) &&
             attr_i64(t.file, "local_size", lsize) && attr_i64(t.file, "random", cfg->random_max) &&
             attr_num(t.file, "seed", H5T_STD_U64LE, H5T_NATIVE_UINT64, &cfg->seed) &&
             attr_i64(t.file, "causal", cfg->causal ? 1 : 0) &&
             attr_f64(t.file, "scale", (double)cfg->scale) && attr_i64(t.file, "n", cfg->n) &&
             attr_i64(t.file, "heads", cfg->heads) && attr_i64(t.file, "dim", cfg->dim) &&
             attr_i64(t.file, "ranks", P) && attr_i64(t.file, "threads", threads) &&
             attr_str(t.file, "version", SPA_VERSION);
    /* each rule flag as given, values in command-line order */
    for (int r = 0; ok && r < SPA_RULE_COUNT; r++)
        if (cfg->rule_spec[r]) {
            char *v = strdup(cfg->rule_spec[r]);
            for (char *c = v; c && *c; c++)
                if (*c == ';') *c = ' ';
            ok = v && attr_str(t.file, rule_attr[r], v);
            free(v);
        }
    if (ok && cfg->layout_name) ok = attr_str(t.file, "layout", cfg->layout_name);
    if (!ok) err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "HDF5: cannot write attributes");
done:
    close_id(&d, H5Dclose);
    close_id(&plan, H5Gclose);
    if (t.tmp) err = target_end(comm, path, &t, err);
    spa_free(rnd);
    quiet_end(&qt);
    return err;
}

spa_err spa_io_gen(MPI_Comm comm, const char *path, int64_t n, int32_t heads, int32_t dim,
                   uint64_t seed, float temperature)
{
    spa_err err = SPA_OK;
    target t = {NULL, H5I_INVALID_HID, 0};
    hid_t d = H5I_INVALID_HID;
    float *buf = NULL;
    int P, me;
    int64_t b0, b1, t0, t1, bytes;
    quiet qt;

    SPA_REQUIRE(n > 0 && heads > 0 && dim > 0, SPA_ERR_USAGE,
                "gen: n, heads and dim must be positive");
    SPA_REQUIRE(!__builtin_mul_overflow(n, (int64_t)heads, &bytes) &&
                    !__builtin_mul_overflow(bytes, (int64_t)dim * 4, &bytes),
                SPA_ERR_USAGE, "gen: n * heads * dim overflows 64-bit sizes");
    SPA_MPI_CHECK(MPI_Comm_size(comm, &P));
    SPA_MPI_CHECK(MPI_Comm_rank(comm, &me));
    quiet_begin(&qt);

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
    if ((err = spa_agree(comm, err)) != SPA_OK) goto done;
    if ((err = target_begin(comm, path, &t)) != SPA_OK) goto done;

    hsize_t dims[3] = {(hsize_t)heads, (hsize_t)n, (hsize_t)dim};
    for (int which = 0; which < 3; which++) {
        /* buf: [H][rows][D] */
        for (int32_t h = 0; h < heads; h++)
            spa_synth(seed, temperature, which, h, t0, t1, dim, buf + (int64_t)h * rows * dim);
        if ((d = new_dataset(t.file, io_names[which], H5T_IEEE_F32LE, 3, dims)) < 0)
            err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "HDF5: cannot create '%s'",
                                io_names[which]);
        else
            err = xfer(d, H5T_NATIVE_FLOAT, 1, 1, t0, t1, buf);
        close_id(&d, H5Dclose);
        if ((err = spa_agree(comm, err)) != SPA_OK) goto done;
    }
    int ok = attr_num(t.file, "seed", H5T_STD_U64LE, H5T_NATIVE_UINT64, &seed) &&
             attr_f64(t.file, "temperature", (double)temperature) &&
             attr_str(t.file, "version", SPA_VERSION);
    if (!ok) err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "HDF5: cannot write attributes");
done:
    close_id(&d, H5Dclose);
    if (t.tmp) err = target_end(comm, path, &t, err);
    spa_free(buf);
    quiet_end(&qt);
    return err;
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
    x->d = H5Dopen2(lf->file, name, H5P_DEFAULT);
    if (x->d < 0) IO_FAIL(SPA_ERR_INPUT, "layout '%s': '%s' is not a dataset", lf->path, name);
    ftype = H5Dget_type(x->d);
    H5T_class_t cls = ftype >= 0 ? H5Tget_class(ftype) : H5T_NO_CLASS;
    if (cls != H5T_INTEGER && cls != H5T_ENUM)
        IO_FAIL(SPA_ERR_INPUT, "layout '%s': dataset '%s' is not of an integer or boolean type",
                lf->path, name);
    /* an enum (h5py's bool) is read as its own native enum: the raw integer
     * values of its base type, which HDF5 would not convert to int64 */
    x->mtype = H5Tget_native_type(ftype, H5T_DIR_ASCEND);
    base = cls == H5T_ENUM ? H5Tget_super(ftype) : H5Tcopy(ftype);
    if (x->mtype < 0 || base < 0) IO_FAIL(SPA_ERR_OTHER, "HDF5: cannot read the type of '%s'", name);
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
        count[i] = i == 0 ? 1 : i == 1 ? (hsize_t)(r1 - r0) : x->dims[i];
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
    p->slab = slab_rows(p->K);
    p->nval = malloc((size_t)p->slab * sizeof *p->nval);
    p->ival = malloc((size_t)(p->slab * (p->K > 0 ? p->K : 1)) * sizeof *p->ival);
    p->raw = malloc((size_t)(p->slab * (p->K > 0 ? p->K : 1)) * 8);
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
    *m = 0;
    for (int64_t k = 0; k < cnt; k++) {
        int64_t b = p->ival[r * p->K + k];
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
static spa_err lay_read_file(const char *path, int32_t block, int64_t n, int32_t heads, spa_layout *out)
{
    spa_err err = SPA_OK;
    struct stat st;
    hid_t attr = H5I_INVALID_HID, atype = H5I_INVALID_HID;
    lay_file lf = {path, H5I_INVALID_HID, n, (n + block - 1) / block, block, heads};

    if (stat(path, &st) != 0) SPA_FAIL(SPA_ERR_INPUT, "layout '%s': %s", path, strerror(errno));
    SPA_REQUIRE(!S_ISDIR(st.st_mode), SPA_ERR_INPUT, "layout '%s' is a folder", path);
    SPA_REQUIRE(access(path, R_OK) == 0, SPA_ERR_INPUT, "layout '%s' is not readable", path);
    SPA_REQUIRE(H5Fis_hdf5(path) > 0, SPA_ERR_INPUT, "layout '%s' is not an HDF5 file", path);
    lf.file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    SPA_REQUIRE(lf.file >= 0, SPA_ERR_INPUT, "layout '%s': HDF5 cannot open it", path);

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
    if (err != SPA_OK) spa_layout_free(out);
    return err;
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
    int64_t K = 1, rows = (int64_t)H * nb;
    for (int64_t r = 0; r < rows; r++)
        if (off[r + 1] - off[r] > K) K = off[r + 1] - off[r];
    int32_t *num = malloc((size_t)rows * sizeof *num);
    int32_t *idx = calloc((size_t)(rows * K), sizeof *idx);
    spa_err err = SPA_OK;
    hid_t d1 = H5I_INVALID_HID, d2 = H5I_INVALID_HID;
    hsize_t dn[2] = {(hsize_t)H, (hsize_t)nb}, di[3] = {(hsize_t)H, (hsize_t)nb, (hsize_t)K};
    if (!num || !idx) IO_FAIL(SPA_ERR_OTHER, "out of memory for the layout export");
    for (int64_t r = 0; r < rows; r++) {
        num[r] = (int32_t)(off[r + 1] - off[r]);
        memcpy(idx + r * K, list + off[r], (size_t)num[r] * sizeof *idx);
    }
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
    size_t len = strlen(path);
    char *dcopy = strdup(path), *bcopy = strdup(path);
    tmp = malloc(2 * len + 64);
    int named = dcopy && bcopy && tmp;
    if (named)
        snprintf(tmp, 2 * len + 64, "%s/.%s.tmp.%ld", dirname(dcopy), basename(bcopy), (long)getpid());
    free(dcopy);
    free(bcopy);
    if (!named) {
        free(tmp);
        tmp = NULL;
        IO_FAIL(SPA_ERR_OTHER, "out of memory");
    }
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

spa_err spa_io_check_image(const void *image, size_t len, spa_shape *shape)
{
    spa_err err = SPA_OK;
    hid_t fapl = H5I_INVALID_HID;
    spa_input p = calloc(1, sizeof *p);
    quiet qt;

    if (!p) return spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory");
    p->comm = MPI_COMM_SELF;
    p->file = H5I_INVALID_HID;
    for (int i = 0; i < 3; i++) p->dset[i] = p->ftype[i] = H5I_INVALID_HID;
    quiet_begin(&qt);
    fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0 || H5Pset_fapl_core(fapl, 1 << 16, 0) < 0 ||
        H5Pset_file_image(fapl, (void *)image, len) < 0)
        IO_FAIL(SPA_ERR_OTHER, "HDF5: cannot set up the core driver");
    if ((p->file = H5Fopen("spa-image", H5F_ACC_RDONLY, fapl)) < 0)
        IO_FAIL(SPA_ERR_INPUT, "input image: HDF5 cannot open it");
    if ((err = open_datasets(p)) == SPA_OK) *shape = p->shape;
done:
    close_id(&fapl, H5Pclose);
    spa_io_close(&p);
    quiet_end(&qt);
    return err;
}
