/* io_check.h - helpers shared by the I/O test programs: serial HDF5 writers
 * for inputs of any float type and rank, float16 rounding, and a comparison
 * that explains itself (maxdiff and the first values side by side). */
#ifndef SPA_IO_CHECK_H
#define SPA_IO_CHECK_H

#include "spa_impl.h"

#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* IEEE binary16, built the way h5py builds its float16 type. */
static inline hid_t io_half_type(void)
{
    hid_t t = H5Tcopy(H5T_IEEE_F32LE);
    H5Tset_fields(t, 15, 10, 5, 0, 10);
    H5Tset_size(t, 2);
    H5Tset_ebias(t, 15);
    return t;
}

/* float32 -> binary16 bits, round to nearest even; |x| >= 65520 -> inf. */
static inline uint16_t io_to_half(float x)
{
    uint16_t sign = signbit(x) ? 0x8000 : 0;
    float a = fabsf(x);
    if (isnan(x)) return 0x7e00;
    if (a >= 65520.0f) return sign | 0x7c00;
    if (a < 0x1p-14f) return sign | (uint16_t)nearbyintf(a * 0x1p24f); /* subnormal */
    int e;
    float fr = frexpf(a, &e); /* a = fr * 2^e, fr in [0.5, 1) */
    uint32_t m = (uint32_t)nearbyintf((2.0f * fr - 1.0f) * 1024.0f);
    return sign | (uint16_t)(((uint32_t)(e + 14) << 10) + m); /* m = 1024 carries */
}

static inline float io_from_half(uint16_t h)
{
    int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    float v = e == 0 ? ldexpf((float)m, -24)
              : e == 31 ? (m ? NAN : INFINITY)
                        : ldexpf((float)(1024 + m), e - 25);
    return (h & 0x8000) ? -v : v;
}

/* Writes dataset `name` of shape dims[rank] and file type ftype from
 * buf (memory type mtype). Serial HDF5; returns 0 on success. */
static inline int io_put(hid_t file, const char *name, hid_t ftype, hid_t mtype, int rank,
                         const hsize_t *dims, const void *buf)
{
    hid_t s = H5Screate_simple(rank, dims, NULL);
    hid_t d = H5Dcreate2(file, name, ftype, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int bad = d < 0 || H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0;
    if (d >= 0) H5Dclose(d);
    H5Sclose(s);
    return bad;
}

/* Compares got and want elementwise: |got - want| <= tol * (|want| + floor).
 * Prints maxdiff and, on failure, the first mismatches side by side.
 * Returns the number of mismatches. */
static inline int64_t io_compare(const char *what, const float *got, const float *want, int64_t len,
                                 double tol, double floor)
{
    double maxdiff = 0.0;
    int64_t bad = 0, shown = 0;
    for (int64_t i = 0; i < len; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        if (!(d <= maxdiff)) maxdiff = d; /* NaN counts */
        if (!(d <= tol * (fabs((double)want[i]) + floor))) {
            if (shown++ < 5)
                fprintf(stderr, "  %s[%lld]: got %.9g want %.9g\n", what, (long long)i,
                        (double)got[i], (double)want[i]);
            bad++;
        }
    }
    if (bad) fprintf(stderr, "%s: %lld of %lld differ, maxdiff %.3g\n", what, (long long)bad,
                     (long long)len, maxdiff);
    return bad;
}

#endif
