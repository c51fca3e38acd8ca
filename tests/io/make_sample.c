/* make_sample.c - builds data/sample.h5 and data/expected.h5.
 *
 *   make_sample DIR
 *
 * sample.h5: q, k, v [2, 2000, 32] stored as IEEE float16 (so every run on
 * it exercises the conversion on read), the seeded synthetic values of
 * spa_synth (seed 1, temperature 2) rounded to half. n = 2000 is not a
 * multiple of the block, so the last block is partial.
 * expected.h5: out [2, 2000, 32] and lse [2, 2000] float32 from the dense
 * reference spa_reference on the float16 values widened to float32, with
 * the default pattern (block 64, local-blocks 3, random 3, seed 0, globals
 * the first and last block, scale 1/sqrt(32)).
 * Serial; runs as one process.
 */
#include "io_check.h"

enum { N = 2000, H = 2, D = 32 };

static hid_t create(const char *dir, const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) fprintf(stderr, "make_sample: cannot create %s\n", path);
    return f;
}

/* Datasets without timestamps: rerunning gives the same bytes. */
static int put(hid_t f, const char *name, hid_t ftype, hid_t mtype, int rank, const hsize_t *dims,
               const void *buf)
{
    hid_t s = H5Screate_simple(rank, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_obj_track_times(dcpl, 0);
    hid_t d = H5Dcreate2(f, name, ftype, s, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    int bad = d < 0 || H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0;
    if (d >= 0) H5Dclose(d);
    H5Pclose(dcpl);
    H5Sclose(s);
    return bad;
}

static int put_attr(hid_t f, const char *name, const char *text)
{
    hid_t t = H5Tcopy(H5T_C_S1), s = H5Screate(H5S_SCALAR);
    H5Tset_size(t, strlen(text));
    hid_t a = H5Acreate2(f, name, t, s, H5P_DEFAULT, H5P_DEFAULT);
    int bad = a < 0 || H5Awrite(a, t, text) < 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(s);
    H5Tclose(t);
    return bad;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    if (argc != 2) {
        fprintf(stderr, "usage: make_sample DIR\n");
        MPI_Finalize();
        return 2;
    }
    const int64_t len = (int64_t)H * N * D;
    /* x[3]: q, k, v as [H][N][D] floats, h16 the same as half bits */
    float *x[3] = {NULL, NULL, NULL}, *out = spa_alloc((size_t)len * 4), *lse = spa_alloc((size_t)H * N * 4);
    uint16_t *h16 = spa_alloc((size_t)len * 2);
    hid_t half = io_half_type();
    hsize_t dims[3] = {H, N, D};
    int bad = 0;

    hid_t f = create(argv[1], "sample.h5");
    bad |= f < 0;
    for (int i = 0; i < 3 && !bad; i++) {
        x[i] = spa_alloc((size_t)len * 4);
        for (int32_t h = 0; h < H; h++)
            spa_synth(1, 2.0f, i, h, 0, N, D, x[i] + (int64_t)h * N * D);
        for (int64_t e = 0; e < len; e++) {
            h16[e] = io_to_half(x[i][e]);
            x[i][e] = io_from_half(h16[e]);
        }
        bad |= put(f, i == 0 ? "q" : i == 1 ? "k" : "v", half, half, 3, dims, h16);
    }
    if (f >= 0) bad |= H5Fclose(f) < 0;

    spa_config cfg;
    spa_config_init(&cfg);
    cfg.n = N;
    cfg.heads = H;
    cfg.dim = D;
    if (!bad && (spa_config_validate(&cfg) != SPA_OK ||
                 spa_reference(&cfg, x[0], x[1], x[2], 0, N, out, lse) != SPA_OK)) {
        fprintf(stderr, "make_sample: %s\n", spa_last_error());
        bad = 1;
    }
    if (!bad) {
        f = create(argv[1], "expected.h5");
        bad |= f < 0;
        if (!bad) {
            bad |= put(f, "out", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 3, dims, out);
            bad |= put(f, "lse", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, dims, lse);
            bad |= put_attr(f, "pattern",
                            "default: block 64, local-blocks 3, random 3, seed 0, globals first "
                            "and last block, not causal, scale 1/sqrt(32)");
            bad |= put_attr(f, "input", "sample.h5: spa_synth seed 1, temperature 2, float16");
            bad |= H5Fclose(f) < 0;
        }
    }
    spa_config_free(&cfg);
    for (int i = 0; i < 3; i++) spa_free(x[i]);
    spa_free(out);
    spa_free(lse);
    spa_free(h16);
    H5Tclose(half);
    printf("%s\n", bad ? "make_sample: FAILED" : "make_sample: wrote sample.h5 and expected.h5");
    MPI_Finalize();
    return bad;
}
