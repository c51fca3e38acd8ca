/* io_layer.c - HDF5 files of `spa layer`: x and the projection weights in,
 * y (and optionally the attention's out and lse) out.
 *
 * x is sequence data: each rank reads only its rows, [t0, t1) x d_model,
 * in one collective MPI-IO transfer. The weights are model data, the same
 * on every rank and small next to x at long sequences, so every rank reads
 * them whole, independently, rather than reading once and broadcasting.
 * The output goes through io.c's atomic collective writer (io.h), like
 * spa_io_write's: rank 0 builds the file skeleton alone, every rank then
 * writes its rows of y (out, lse) in one collective MPI-IO write each,
 * agreeing on the outcome after each, and rank 0 renames the temporary
 * file over the target only when every rank succeeded. A failed write on
 * any rank (a full disk) stops every rank with one message naming the
 * cause, removes the temporary file and leaves the target untouched.
 */
#include "spa_impl.h"

#include "io.h"

#include <errno.h>
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

enum { L_X, L_WQ, L_WK, L_WV, L_WO, L_BQ, L_BK, L_BV, L_BO, L_COUNT };
static const char *const lnames[L_COUNT] = {"x", "wq", "wk", "wv", "wo", "bq", "bk", "bv", "bo"};

struct spa_layer_input_s {
    MPI_Comm comm;
    hid_t file;
    hid_t d[L_COUNT]; /* H5I_INVALID_HID: an absent bias */
    spa_layer_shape shape;
    const char *path;
};

static void close_id(hid_t *id, herr_t (*fn)(hid_t))
{
    if (*id >= 0) fn(*id);
    *id = H5I_INVALID_HID;
}

static void fmt_dims(char *buf, size_t len, int rank, const hsize_t *dims)
{
    size_t at = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < rank && at < len; i++)
        at += (size_t)snprintf(buf + at, len - at, "%s%llu", i ? ", " : "", (unsigned long long)dims[i]);
    if (at < len) snprintf(buf + at, len - at, "]");
}

/* One collective read of the box whose dimension `rowdim` runs over
 * [r0, r1), every other dimension whole; memory is the box in row-major
 * order. A rank with an empty box takes part with an empty selection. */
static spa_err box_read(hid_t dset, int rowdim, int64_t r0, int64_t r1, void *buf)
{
    spa_err err = SPA_OK;
    hid_t fs = H5I_INVALID_HID, ms = H5I_INVALID_HID, dxpl = H5I_INVALID_HID;
    hsize_t dims[4], start[4], count[4], nelem = 1, one = 1;
    static float dummy[4];
    if ((fs = H5Dget_space(dset)) < 0) IO_FAIL(SPA_ERR_OTHER, "HDF5: cannot get a dataspace");
    int rank = H5Sget_simple_extent_ndims(fs);
    if (rank < 1 || rank > 4) IO_FAIL(SPA_ERR_OTHER, "HDF5: unexpected rank %d", rank);
    H5Sget_simple_extent_dims(fs, dims, NULL);
    for (int i = 0; i < rank; i++) {
        start[i] = i == rowdim ? (hsize_t)r0 : 0;
        count[i] = i == rowdim ? (hsize_t)(r1 - r0) : dims[i];
        nelem *= count[i];
    }
    if (nelem > 0) {
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
        ms = H5Screate_simple(1, &nelem, NULL);
    } else {
        H5Sselect_none(fs);
        if ((ms = H5Screate_simple(1, &one, NULL)) >= 0) H5Sselect_none(ms);
        buf = dummy;
    }
    dxpl = H5Pcreate(H5P_DATASET_XFER);
    if (ms < 0 || dxpl < 0 || H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE) < 0)
        IO_FAIL(SPA_ERR_OTHER, "HDF5: cannot set up a transfer");
    if (H5Dread(dset, H5T_NATIVE_FLOAT, ms, fs, dxpl, buf) < 0) IO_FAIL(SPA_ERR_OTHER, "HDF5: H5Dread failed");
done:
    close_id(&dxpl, H5Pclose);
    close_id(&ms, H5Sclose);
    close_id(&fs, H5Sclose);
    return err;
}

/* ------------------------------------------------------------------ input */

void spa_io_layer_close(spa_layer_input *pin)
{
    spa_layer_input in = pin ? *pin : NULL;
    if (!in) return;
    for (int i = 0; i < L_COUNT; i++) close_id(&in->d[i], H5Dclose);
    close_id(&in->file, H5Fclose);
    free(in);
    *pin = NULL;
}

/* Opens dataset i and checks it is a float dataset of `rank` dimensions
 * equal to want[] (want[j] < 0: any size >= 1, returned in got[]). */
static spa_err open_checked(spa_layer_input in, int i, int rank, const int64_t *want, const char *what,
                            int64_t *got)
{
    spa_err err = SPA_OK;
    hid_t sp = H5I_INVALID_HID, ty = H5I_INVALID_HID;
    hsize_t dims[8];
    char have[96], expect[96];
    const char *path = in->path, *name = lnames[i];
    if ((in->d[i] = H5Dopen2(in->file, name, H5P_DEFAULT)) < 0)
        IO_FAIL(SPA_ERR_INPUT, "'%s': cannot open dataset '%s'", path, name);
    ty = H5Dget_type(in->d[i]);
    if (ty < 0 || H5Tget_class(ty) != H5T_FLOAT)
        IO_FAIL(SPA_ERR_INPUT, "'%s': dataset '%s' must be floating point (float32 or float64)", path, name);
    sp = H5Dget_space(in->d[i]);
    int r = sp < 0 ? -1 : H5Sget_simple_extent_ndims(sp);
    if (r < 0 || r > 8) IO_FAIL(SPA_ERR_INPUT, "'%s': dataset '%s' has no simple shape", path, name);
    H5Sget_simple_extent_dims(sp, dims, NULL);
    fmt_dims(have, sizeof have, r, dims);
    int ok = r == rank;
    for (int j = 0; ok && j < rank; j++) ok = dims[j] >= 1 && (want[j] < 0 || (int64_t)dims[j] == want[j]);
    if (!ok) {
        /* the sizes known so far, '*' for any */
        size_t at = (size_t)snprintf(expect, sizeof expect, "[");
        for (int j = 0; j < rank && at < sizeof expect; j++)
            at += want[j] < 0 ? (size_t)snprintf(expect + at, sizeof expect - at, "%s*", j ? ", " : "")
                              : (size_t)snprintf(expect + at, sizeof expect - at, "%s%lld", j ? ", " : "",
                                                 (long long)want[j]);
        if (at < sizeof expect) snprintf(expect + at, sizeof expect - at, "]");
        IO_FAIL(SPA_ERR_INPUT, "'%s': dataset '%s' has shape %s; expected %s, %s", path, name, have, expect, what);
    }
    for (int j = 0; got && j < rank; j++) got[j] = (int64_t)dims[j];
done:
    close_id(&sp, H5Sclose);
    close_id(&ty, H5Tclose);
    return err;
}

static spa_err layer_open_local(spa_layer_input in, const char *path)
{
    spa_err err = SPA_OK;
    hid_t fapl = H5I_INVALID_HID;
    struct stat sb;
    spa_layer_shape *s = &in->shape;
    int64_t xd[2], wd[2];
    if (stat(path, &sb) != 0) IO_FAIL(SPA_ERR_INPUT, "'%s': %s", path, strerror(errno));
    if (S_ISDIR(sb.st_mode)) IO_FAIL(SPA_ERR_INPUT, "'%s' is a folder", path);
    if (H5Fis_hdf5(path) <= 0) IO_FAIL(SPA_ERR_INPUT, "'%s' is not an HDF5 file", path);
    fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0 || H5Pset_fapl_mpio(fapl, in->comm, MPI_INFO_NULL) < 0)
        IO_FAIL(SPA_ERR_OTHER, "HDF5: cannot set up MPI-IO");
    if ((in->file = H5Fopen(path, H5F_ACC_RDONLY, fapl)) < 0)
        IO_FAIL(SPA_ERR_INPUT, "'%s': cannot open the HDF5 file", path);

    for (int i = 0; i < L_COUNT; i++)
        if (H5Lexists(in->file, lnames[i], H5P_DEFAULT) <= 0 && i < L_BQ)
            IO_FAIL(SPA_ERR_INPUT, "'%s': dataset '%s' is missing (a layer file holds x, wq, wk, wv, wo)",
                    path, lnames[i]);
    const int64_t any2[2] = {-1, -1};
    if ((err = open_checked(in, L_X, 2, any2, "[n, d_model]", xd)) != SPA_OK) goto done;
    s->n = xd[0];
    s->d_model = xd[1];
    /* wq fixes H*D; its columns are x's d_model */
    char what[128];
    snprintf(what, sizeof what, "[H*D, d_model] with d_model = %lld from x", (long long)s->d_model);
    const int64_t wq_want[2] = {-1, s->d_model};
    if ((err = open_checked(in, L_WQ, 2, wq_want, what, wd)) != SPA_OK) goto done;
    s->hd = wd[0];
    const int64_t w_in[2] = {s->hd, s->d_model}, w_out[2] = {s->d_model, s->hd};
    const int64_t b_in[1] = {s->hd}, b_out[1] = {s->d_model};
    snprintf(what, sizeof what, "[H*D, d_model] like wq");
    if ((err = open_checked(in, L_WK, 2, w_in, what, NULL)) != SPA_OK) goto done;
    if ((err = open_checked(in, L_WV, 2, w_in, what, NULL)) != SPA_OK) goto done;
    if ((err = open_checked(in, L_WO, 2, w_out, "[d_model, H*D]", NULL)) != SPA_OK) goto done;
    for (int i = L_BQ; i <= L_BO; i++) {
        if (H5Lexists(in->file, lnames[i], H5P_DEFAULT) <= 0) continue;
        s->has_bias[i - L_BQ] = 1;
        if ((err = open_checked(in, i, 1, i == L_BO ? b_out : b_in, i == L_BO ? "[d_model]" : "[H*D]", NULL)))
            goto done;
    }
    if (H5Aexists(in->file, "heads") > 0) {
        hid_t a = H5Aopen(in->file, "heads", H5P_DEFAULT);
        long long h = 0;
        herr_t st = a >= 0 ? H5Aread(a, H5T_NATIVE_LLONG, &h) : -1;
        if (a >= 0) H5Aclose(a);
        if (st < 0 || h < 1 || h > s->hd)
            IO_FAIL(SPA_ERR_INPUT, "'%s': attribute 'heads' must be an integer in [1, %lld]", path,
                    (long long)s->hd);
        s->heads = (int32_t)h;
    }
done:
    close_id(&fapl, H5Pclose);
    return err;
}

spa_err spa_io_layer_open(MPI_Comm comm, const char *path, spa_layer_input *pin, spa_layer_shape *shape)
{
    *pin = NULL;
    spa_layer_input in = calloc(1, sizeof *in);
    spa_err err = in ? SPA_OK : spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory");
    if (in) {
        in->comm = comm;
        in->file = H5I_INVALID_HID;
        in->path = path;
        for (int i = 0; i < L_COUNT; i++) in->d[i] = H5I_INVALID_HID;
        H5E_auto2_t fn;
        void *data;
        H5Eget_auto2(H5E_DEFAULT, &fn, &data);
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* our messages, not HDF5's stack */
        err = layer_open_local(in, path);
        H5Eset_auto2(H5E_DEFAULT, fn, data);
    }
    err = spa_agree(comm, err);
    if (err) {
        spa_io_layer_close(&in);
        return err;
    }
    *shape = in->shape;
    *pin = in;
    return SPA_OK;
}

void spa_io_layer_free_weights(spa_layer_weights *w)
{
    if (!w) return;
    spa_free((void *)w->wq), spa_free((void *)w->wk), spa_free((void *)w->wv), spa_free((void *)w->wo);
    spa_free((void *)w->bq), spa_free((void *)w->bk), spa_free((void *)w->bv), spa_free((void *)w->bo);
    memset(w, 0, sizeof *w);
}

/* Index of the first non-finite value, or -1. */
static int64_t first_bad(const float *a, int64_t len)
{
    for (int64_t i = 0; i < len; i++)
        if (!isfinite(a[i])) return i;
    return -1;
}

spa_err spa_io_layer_read(spa_layer_input in, int64_t t0, int64_t t1, float *x, spa_layer_weights *w)
{
    const spa_layer_shape *s = &in->shape;
    const int64_t dm = s->d_model, hd = s->hd;
    spa_err err = SPA_OK;
    memset(w, 0, sizeof *w);
    w->d_model = dm;

    /* x: this rank's rows, collectively */
    err = box_read(in->d[L_X], 0, t0, t1, x);
    int64_t bad = err ? -1 : first_bad(x, (t1 - t0) * dm);
    if (bad >= 0)
        err = spa_set_error(SPA_ERR_INPUT, __FILE__, __LINE__, "'%s': dataset 'x' holds a non-finite value at [%lld, %lld]",
                            in->path, (long long)(t0 + bad / dm), (long long)(bad % dm));
    if ((err = spa_agree(in->comm, err)) != SPA_OK) return err;

    /* the weights: whole, on every rank */
    const int64_t len[L_COUNT] = {0, hd * dm, hd * dm, hd * dm, dm * hd, hd, hd, hd, dm};
    float *arr[L_COUNT] = {0};
    for (int i = L_WQ; i < L_COUNT && err == SPA_OK; i++) {
        if (in->d[i] < 0) continue;
        if (!(arr[i] = spa_alloc((size_t)len[i] * sizeof(float)))) {
            err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory for '%s'", lnames[i]);
            break;
        }
        if (H5Dread(in->d[i], H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, arr[i]) < 0) {
            err = spa_set_error(SPA_ERR_INPUT, __FILE__, __LINE__, "'%s': cannot read dataset '%s'", in->path, lnames[i]);
            break;
        }
        if ((bad = first_bad(arr[i], len[i])) >= 0)
            err = spa_set_error(SPA_ERR_INPUT, __FILE__, __LINE__, "'%s': dataset '%s' holds a non-finite value at flat index %lld",
                                in->path, lnames[i], (long long)bad);
    }
    w->wq = arr[L_WQ], w->wk = arr[L_WK], w->wv = arr[L_WV], w->wo = arr[L_WO];
    w->bq = arr[L_BQ], w->bk = arr[L_BK], w->bv = arr[L_BV], w->bo = arr[L_BO];
    if ((err = spa_agree(in->comm, err)) != SPA_OK) spa_io_layer_free_weights(w);
    return err;
}

/* ----------------------------------------------------------------- output */

spa_err spa_io_layer_write(MPI_Comm comm, const char *path, const spa_config *cfg, int64_t d_model,
                           int64_t t0, int64_t t1, const float *y, const float *out,
                           const float *lse, const char *pattern)
{
    spa_err err = SPA_OK;
    spa_io_writer w = NULL;
    int P = 1;
    SPA_MPI_CHECK(MPI_Comm_size(comm, &P));
    const int64_t n = cfg->n, H = cfg->heads, D = cfg->dim;
    const int attention = out && lse;

    /* y [n, d_model] in rows of tokens; out [H, n, D] and lse [H, n] split
     * along n, as the attention leaves them ([H][rows][D], [H][rows]) */
    const spa_wdset ds[3] = {{"y", SPA_WT_F32, 2, {n, d_model}, 0, 0, NULL},
                             {"out", SPA_WT_F32, 3, {H, n, D}, 1, 0, NULL},
                             {"lse", SPA_WT_F32, 2, {H, n}, 1, 0, NULL}};
    spa_wattr at[12] = {{"n", SPA_WT_I64, n, 0, 0.0, NULL},
                        {"heads", SPA_WT_I64, H, 0, 0.0, NULL},
                        {"dim", SPA_WT_I64, D, 0, 0.0, NULL},
                        {"d_model", SPA_WT_I64, d_model, 0, 0.0, NULL},
                        {"block", SPA_WT_I64, cfg->block, 0, 0.0, NULL},
                        {"random", SPA_WT_I64, cfg->random_max, 0, 0.0, NULL},
                        {"causal", SPA_WT_I64, cfg->causal ? 1 : 0, 0, 0.0, NULL},
                        {"ranks", SPA_WT_I64, P, 0, 0.0, NULL},
                        {"version", SPA_WT_STR, 0, 0, 0.0, SPA_VERSION},
                        {"seed", SPA_WT_U64, 0, cfg->seed, 0.0, NULL},
                        {"scale", SPA_WT_F64, 0, 0, (double)cfg->scale, NULL},
                        {"pattern", SPA_WT_STR, 0, 0, 0.0, pattern}};
    if ((err = spa_io_writer_begin(comm, path, ds, attention ? 3 : 1, at, pattern ? 12 : 11, &w)) != SPA_OK)
        return err;
    err = spa_io_writer_rows(w, 0, t0, t1, y);
    if (err == SPA_OK && attention) err = spa_io_writer_rows(w, 1, t0, t1, out);
    if (err == SPA_OK && attention) err = spa_io_writer_rows(w, 2, t0, t1, lse);
    return spa_io_writer_end(&w, err);
}
