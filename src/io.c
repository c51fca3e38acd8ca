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
    int32_t H = shape->heads, R = cfg->random;
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

    /* Every rank must write identical attributes; rank 0's thread count is
     * the one recorded. */
    if (MPI_Bcast(&threads, 1, MPI_INT, 0, comm) != MPI_SUCCESS)
        IO_FAIL(SPA_ERR_OTHER, "MPI_Bcast failed");
    int block_mode = cfg->radius < 0;
    int ok = attr_i64(t.file, "block", cfg->block) &&
             attr_str(t.file, "local_mode", block_mode ? "blocks" : "radius") &&
             attr_i64(t.file, "local_size", block_mode ? cfg->local_blocks : cfg->radius) &&
             attr_i64(t.file, "random", cfg->random) &&
             attr_num(t.file, "seed", H5T_STD_U64LE, H5T_NATIVE_UINT64, &cfg->seed) &&
             attr_i64(t.file, "causal", cfg->causal ? 1 : 0) &&
             attr_f64(t.file, "scale", (double)cfg->scale) && attr_i64(t.file, "n", cfg->n) &&
             attr_i64(t.file, "heads", cfg->heads) && attr_i64(t.file, "dim", cfg->dim) &&
             attr_i64(t.file, "ranks", P) && attr_i64(t.file, "threads", threads) &&
             attr_str(t.file, "version", SPA_VERSION);
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
