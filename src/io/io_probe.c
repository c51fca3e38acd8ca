/* io_probe.c - a walk over every object of an HDF5 file, for a child
 * process to run before spa opens the file in its MPI ranks.
 *
 * HDF5 1.10 can fault, loop or allocate without bound on some damaged
 * files: a corrupt local heap, a bogus chunk or data address. In process,
 * nothing recovers from that. The spa program therefore lets a child
 * process touch what the ranks will touch (every link, object header,
 * attribute, dataset type, shape, layout and one element of each dataset)
 * under a time and memory limit. The parent reads the child's fate:
 * crashed, timed out or out of memory means a damaged input (exit 3).
 *
 * The walk reports nothing else: an ordinary HDF5 error is left for spa's
 * own checks in the ranks, which name the dataset.
 */
#include "spa_impl.h"

#include "io.h"

#include <string.h>

#include <hdf5.h>

typedef struct probe {
    int objects;    /* visited so far; the walk stops at PROBE_MAX_OBJECTS */
    int out_of_mem; /* an HDF5 error stack named a failed allocation */
} probe;

enum { PROBE_MAX_OBJECTS = 100000 };

static herr_t probe_error_frame(unsigned n, const H5E_error2_t *e, void *arg)
{
    (void)n;
    if (e->maj_num == H5E_RESOURCE) ((probe *)arg)->out_of_mem = 1;
    return 0;
}

/* After a failed call: did HDF5 fail to allocate? */
static void probe_failed(probe *p)
{
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, probe_error_frame, p);
    H5Eclear2(H5E_DEFAULT);
}

/* What spa asks of a type: its native form (H5Tget_native_type decodes
 * every member of a compound or enum type). */
static void probe_native(hid_t t, probe *p)
{
    if (t < 0) return;
    hid_t nt = H5Tget_native_type(t, H5T_DIR_ASCEND);
    if (nt < 0) probe_failed(p);
    else H5Tclose(nt);
}

static herr_t probe_attr(hid_t loc, const char *name, const H5A_info_t *info, void *arg)
{
    (void)info;
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    if (a < 0) {
        probe_failed(arg);
        return 0;
    }
    hid_t t = H5Aget_type(a), s = H5Aget_space(a);
    if (t < 0 || s < 0) probe_failed(arg);
    probe_native(t, arg);
    if (t >= 0) H5Tclose(t);
    if (s >= 0) H5Sclose(s);
    H5Aclose(a);
    return 0;
}

/* One element of dataset d (the first), through a double in memory. */
static void probe_element(hid_t d, probe *p)
{
    hid_t t = H5Dget_type(d), fs = H5Dget_space(d), dcpl = H5Dget_create_plist(d);
    if (t < 0 || fs < 0 || dcpl < 0) probe_failed(p);
    probe_native(t, p);
    H5T_class_t cls = t >= 0 ? H5Tget_class(t) : H5T_NO_CLASS;
    int rank = fs >= 0 ? H5Sget_simple_extent_ndims(fs) : -1;
    hsize_t dims[32], cdims[32];
    int ok = rank >= 0 && rank <= 32 && (cls == H5T_FLOAT || cls == H5T_INTEGER) &&
             H5Tget_size(t) <= 16;
    if (ok && rank > 0 && H5Sget_simple_extent_dims(fs, dims, NULL) < 0) ok = 0;
    for (int i = 0; ok && i < rank; i++) ok = dims[i] > 0;
    /* spa refuses chunks past 1 GiB before reading; so does the probe */
    if (ok && dcpl >= 0 && H5Pget_layout(dcpl) == H5D_CHUNKED) {
        int cr = H5Pget_chunk(dcpl, 32, cdims);
        double bytes = (double)H5Tget_size(t);
        for (int i = 0; i < cr && i < 32; i++) bytes *= (double)cdims[i];
        ok = cr == rank && bytes <= 1024.0 * 1024.0 * 1024.0;
    }
    if (ok) {
        hsize_t start[32] = {0}, one[32];
        for (int i = 0; i < 32; i++) one[i] = 1; /* also the memory space of a scalar */
        hid_t ms = H5Screate_simple(1, one, NULL);
        double x;
        if (rank > 0 && H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, one, NULL) < 0)
            probe_failed(p);
        else if (ms < 0 || H5Dread(d, H5T_NATIVE_DOUBLE, ms, fs, H5P_DEFAULT, &x) < 0)
            probe_failed(p);
        if (ms >= 0) H5Sclose(ms);
    }
    if (dcpl >= 0) H5Pclose(dcpl);
    if (fs >= 0) H5Sclose(fs);
    if (t >= 0) H5Tclose(t);
}

static herr_t probe_object(hid_t root, const char *name, const H5O_info_t *info, void *arg)
{
    probe *p = arg;
    if (++p->objects > PROBE_MAX_OBJECTS) return 1;
    hid_t o = H5Oopen(root, name, H5P_DEFAULT);
    if (o < 0) {
        probe_failed(p);
        return 0;
    }
    hsize_t idx = 0;
    if (H5Aiterate2(o, H5_INDEX_NAME, H5_ITER_NATIVE, &idx, probe_attr, p) < 0) probe_failed(p);
    if (info->type == H5O_TYPE_DATASET) probe_element(o, p);
    H5Oclose(o);
    return 0;
}

int spa_io_probe(const char *path)
{
    probe p = {0, 0};
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        probe_failed(&p);
        return p.out_of_mem;
    }
    if (H5Ovisit2(f, H5_INDEX_NAME, H5_ITER_NATIVE, probe_object, &p, H5O_INFO_BASIC) < 0)
        probe_failed(&p);
    H5Fclose(f);
    return p.out_of_mem;
}
