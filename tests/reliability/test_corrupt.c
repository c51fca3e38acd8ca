/* test_corrupt.c - corrupt and hostile input files are input errors.
 *
 *   test_corrupt WORKDIR [variants]
 *
 * Builds a small input (q float32 chunked and deflated, k float64, v
 * float32, [2, 200, 8]), then writes `variants` copies of it, each with a
 * few bytes changed (xor, 0x00 or 0xff; seeded, so every run tries the same
 * files; most changes hit the metadata, where HDF5's parsers are), and
 * opens and reads each through spa_io_open / spa_io_read / spa_io_close.
 * Each must give SPA_OK or SPA_ERR_INPUT (never another code, a crash or a
 * hang), leave no HDF5 object open (H5Fget_obj_count), and let HDF5 print
 * nothing: stderr is captured and must stay empty.
 */
#include "spa.h"

#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { H = 2, N = 200, D = 8 };

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next(void) /* xorshift64* */
{
    rng ^= rng >> 12, rng ^= rng << 25, rng ^= rng >> 27;
    return rng * 2685821657736338717ull;
}

static int make_base(const char *path, int64_t raw[3][2])
{
    static float f[H * N * D];
    static double g[H * N * D];
    for (int i = 0; i < H * N * D; i++) f[i] = (float)(i % 97) / 97.0f, g[i] = f[i];
    hsize_t dims[3] = {H, N, D}, chunk[3] = {1, 50, D};
    hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hid_t sp = H5Screate_simple(3, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, 3, chunk);
    H5Pset_shuffle(dcpl);
    H5Pset_deflate(dcpl, 1);
    hid_t d[3] = {H5Dcreate2(file, "q", H5T_IEEE_F32LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT),
                  H5Dcreate2(file, "k", H5T_IEEE_F64LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                  H5Dcreate2(file, "v", H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)};
    int ok = H5Dwrite(d[0], H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, f) >= 0 &&
             H5Dwrite(d[1], H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, g) >= 0 &&
             H5Dwrite(d[2], H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, f) >= 0;
    /* the contiguous raw data of k and v: a change there is just a value */
    for (int i = 1; i < 3; i++) {
        haddr_t a = H5Dget_offset(d[i]);
        raw[i][0] = (int64_t)a;
        raw[i][1] = (int64_t)a + (int64_t)H5Dget_storage_size(d[i]);
    }
    raw[0][0] = raw[0][1] = -1;
    for (int i = 0; i < 3; i++) H5Dclose(d[i]);
    H5Pclose(dcpl);
    H5Sclose(sp);
    return H5Fclose(file) >= 0 && ok;
}

static int in_raw(int64_t pos, int64_t raw[3][2])
{
    for (int i = 0; i < 3; i++)
        if (pos >= raw[i][0] && pos < raw[i][1]) return 1;
    return 0;
}

int main(int argc, char **argv)
{
    int provided, failed = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    if (argc < 2) {
        fprintf(stderr, "usage: test_corrupt WORKDIR [variants]\n");
        return 2;
    }
    int variants = argc > 2 ? atoi(argv[2]) : 300;
    char base[4096], path[4096], errpath[4096];
    mkdir(argv[1], 0755);
    snprintf(base, sizeof base, "%s/base.h5", argv[1]);
    snprintf(path, sizeof path, "%s/variant.h5", argv[1]);
    snprintf(errpath, sizeof errpath, "%s/stderr.txt", argv[1]);
    int64_t raw[3][2];
    if (!make_base(base, raw)) {
        fprintf(stderr, "FAIL: cannot build %s\n", base);
        return 1;
    }
    FILE *bf = fopen(base, "rb");
    fseek(bf, 0, SEEK_END);
    long size = ftell(bf);
    rewind(bf);
    unsigned char *img = malloc((size_t)size), *var = malloc((size_t)size);
    if (fread(img, 1, (size_t)size, bf) != (size_t)size) return 1;
    fclose(bf);

    /* HDF5 writes its diagnostics to stderr: capture it */
    fflush(stderr);
    int saved = dup(2), cap = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(cap, 2);

    int counts[4] = {0};
    for (int vno = 0; vno < variants; vno++) {
        memcpy(var, img, (size_t)size);
        int nflip = 1 + (int)(next() % 3);
        for (int f = 0; f < nflip; f++) {
            int64_t pos;
            do pos = (int64_t)(next() % (uint64_t)size);
            while (in_raw(pos, raw) && next() % 8); /* 7 in 8 tries avoid raw data */
            int mode = (int)(next() % 4);
            var[pos] = mode == 0 ? 0x00 : mode == 1 ? 0xff : var[pos] ^ (unsigned char)(1 + next() % 255);
        }
        /* SPA_CORRUPT_ONLY=v: try variant v alone, and keep its file */
        const char *only = getenv("SPA_CORRUPT_ONLY");
        if (only && atoi(only) != vno) continue;
        FILE *vf = fopen(path, "wb");
        fwrite(var, 1, (size_t)size, vf);
        fclose(vf);

        spa_input in = NULL;
        spa_shape shape;
        spa_err err = spa_io_open(MPI_COMM_WORLD, path, &in, &shape);
        if (err == SPA_OK) {
            /* a sane shape before allocating: spa_io_open guarantees it */
            size_t e = (size_t)shape.heads * (size_t)shape.n * (size_t)shape.dim;
            float *q = NULL, *k = NULL, *v = NULL;
            if (e <= ((size_t)1 << 26)) {
                q = malloc(e * 4), k = malloc(e * 4), v = malloc(e * 4);
                err = spa_io_read(in, 0, shape.n, q, k, v);
            }
            free(q), free(k), free(v);
        }
        spa_io_close(&in);
        ssize_t open_objs = H5Fget_obj_count((hid_t)H5F_OBJ_ALL, H5F_OBJ_ALL);
        counts[err >= 0 && err <= 3 ? err : 1]++;
        if ((err != SPA_OK && err != SPA_ERR_INPUT) || open_objs != 0) {
            fprintf(stdout, "FAIL: variant %d: code %d (%s), %zd HDF5 objects left open\n", vno, (int)err,
                    spa_last_error(), open_objs);
            failed = 1;
        }
    }
    fflush(stderr);
    dup2(saved, 2);
    struct stat st;
    if (stat(errpath, &st) == 0 && st.st_size > 0) {
        printf("FAIL: %lld bytes on stderr (HDF5 diagnostics?), see %s\n", (long long)st.st_size, errpath);
        failed = 1;
    }
    printf("%d variants of a %ld-byte file: %d read, %d input errors (exit 3), %d other (exit 1), "
           "%d usage\n", variants, size, counts[0], counts[3], counts[1], counts[2]);
    printf("%s\n", failed ? "FAILED" : "passed");
    free(img);
    free(var);
    MPI_Finalize();
    return failed;
}
