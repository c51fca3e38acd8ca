/* test_io_roundtrip.c - inputs read back equal to what was written.
 *
 *   test_io_roundtrip DIR
 *
 * 1. spa_io_gen writes [H, N, D]; every rank reads its rows with
 *    spa_io_read under two splits (even, and everything on the last rank so
 *    the others read nothing) and must get spa_synth's values bit for bit;
 *    likewise a one-block file, which most ranks neither write nor read.
 * 2. Rank 0 writes, with serial HDF5, the same values as float64 [Bt, H, N,
 *    D] (exact), float16 [N, D] (to half precision) and big-endian float32
 *    [H, N, D] (exact, converted by HDF5); every rank reads them back.
 * Every transfer of the native-order files must be collective MPI-IO.
 */
#include "io.h"
#include "io_check.h"

enum { N = 1000, H = 3, D = 8 };
static const uint64_t SEED = 7;
static const float TEMP = 2.0f;

static int P, me, failed;

static void expect(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "rank %d: FAIL: %s (%s)\n", me, what, spa_last_error());
        failed = 1;
    }
}

/* want: [H][t1 - t0][D] synthetic values of tensor `which`, heads h0.. */
static void synth_rows(int which, int32_t h0, int32_t nh, int64_t t0, int64_t t1, float *want)
{
    for (int32_t h = 0; h < nh; h++)
        spa_synth(SEED, TEMP, which, h0 + h, t0, t1, D, want + (int64_t)h * (t1 - t0) * D);
}

/* Reads rows [t0, t1) of path, expects heads*D values per row equal to the
 * synthetic ones (tol 0: bit for bit), and `coll` collective transfers. */
static void read_and_check(const char *path, int rank, int32_t heads, int64_t t0, int64_t t1,
                           int half, int coll)
{
    spa_input in = NULL;
    spa_shape s;
    char what[256];
    int64_t len = (int64_t)heads * (t1 - t0) * D;
    float *buf[3], *want = spa_alloc((size_t)len * 4 + 4);

    snprintf(what, sizeof what, "open %s", path);
    expect(spa_io_open(MPI_COMM_WORLD, path, &in, &s) == SPA_OK, what);
    if (!in) return;
    expect(s.rank == rank && s.n == N && s.heads == heads && s.dim == D, "shape");
    for (int i = 0; i < 3; i++) buf[i] = spa_alloc((size_t)len * 4 + 4);
    spa_io_trace_reset();
    snprintf(what, sizeof what, "read %s rows [%lld, %lld)", path, (long long)t0, (long long)t1);
    expect(spa_io_read(in, t0, t1, buf[0], buf[1], buf[2]) == SPA_OK, what);
    int nt, nc;
    spa_io_trace(&nt, &nc);
    if (coll) {
        snprintf(what, sizeof what, "%s: %d of %d transfers collective", path, nc, nt);
        expect(nt == 3 && nc == 3, what);
    }
    for (int i = 0; i < 3; i++) {
        synth_rows(i, 0, heads, t0, t1, want);
        if (half)
            for (int64_t e = 0; e < len; e++) {
                /* the file holds want rounded to half: within 2^-11 of it */
                float r = io_from_half(io_to_half(want[e]));
                expect(fabsf(r - want[e]) <= 0x1p-11f * fabsf(want[e]) + 0x1p-25f, "half rounding");
                want[e] = r;
            }
        snprintf(what, sizeof what, "%s %c rank %d", path, "qkv"[i], me);
        expect(io_compare(what, buf[i], want, len, 0.0, 0.0) == 0, what);
        spa_free(buf[i]);
    }
    spa_free(want);
    spa_io_close(&in);
    expect(in == NULL, "close sets NULL");
}

/* Serial writer for rank 0: q, k, v of the given file type and shape. */
static int write_typed(const char *path, hid_t ftype, int rank, const hsize_t *dims, int32_t heads)
{
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) return 1;
    int64_t len = (int64_t)heads * N * D;
    float *x = spa_alloc((size_t)len * 4);
    double *x64 = spa_alloc((size_t)len * 8);
    uint16_t *x16 = spa_alloc((size_t)len * 2);
    hid_t half = io_half_type();
    int bad = 0;
    for (int i = 0; i < 3; i++) {
        synth_rows(i, 0, heads, 0, N, x);
        const void *src = x;
        hid_t mtype = H5T_NATIVE_FLOAT;
        if (H5Tget_size(ftype) == 8) {
            for (int64_t e = 0; e < len; e++) x64[e] = x[e];
            src = x64;
            mtype = H5T_NATIVE_DOUBLE;
        } else if (H5Tget_size(ftype) == 2) {
            for (int64_t e = 0; e < len; e++) x16[e] = io_to_half(x[e]);
            src = x16;
            mtype = half;
        }
        bad |= io_put(f, i == 0 ? "q" : i == 1 ? "k" : "v", ftype, mtype, rank, dims, src);
    }
    H5Tclose(half);
    spa_free(x);
    spa_free(x64);
    spa_free(x16);
    return H5Fclose(f) < 0 || bad;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    if (argc != 2) {
        if (me == 0) fprintf(stderr, "usage: test_io_roundtrip DIR\n");
        MPI_Finalize();
        return 2;
    }
    char gen[512], f64[512], f16[512], be32[512];
    snprintf(gen, sizeof gen, "%s/gen_p%d.h5", argv[1], P);
    snprintf(f64, sizeof f64, "%s/f64_p%d.h5", argv[1], P);
    snprintf(f16, sizeof f16, "%s/f16_p%d.h5", argv[1], P);
    snprintf(be32, sizeof be32, "%s/be32_p%d.h5", argv[1], P);

    /* 1. gen, then two splits */
    spa_io_trace_reset();
    expect(spa_io_gen(MPI_COMM_WORLD, gen, N, H, D, SEED, TEMP) == SPA_OK, "spa_io_gen");
    int nt, nc;
    spa_io_trace(&nt, &nc);
    expect(nt == 3 && nc == 3, "spa_io_gen: 3 collective transfers");
    int64_t even0 = (int64_t)N * me / P, even1 = (int64_t)N * (me + 1) / P;
    read_and_check(gen, 3, H, even0, even1, 0, 1);
    read_and_check(gen, 3, H, me == P - 1 ? 0 : N, N, 0, 1);

    /* one block only: every rank but the first writes and reads nothing */
    char tiny[512];
    snprintf(tiny, sizeof tiny, "%s/tiny_p%d.h5", argv[1], P);
    expect(spa_io_gen(MPI_COMM_WORLD, tiny, 40, 2, D, SEED, TEMP) == SPA_OK, "gen of one block");
    spa_input in = NULL;
    spa_shape ts;
    float tq[2 * 40 * D], tk[2 * 40 * D], tv[2 * 40 * D], tw[2 * 40 * D];
    int64_t r0 = me == 0 ? 0 : 40, rows = 40 - r0;
    expect(spa_io_open(MPI_COMM_WORLD, tiny, &in, &ts) == SPA_OK && ts.n == 40 && ts.heads == 2,
           "open one block");
    if (in) {
        expect(spa_io_read(in, r0, 40, tq, tk, tv) == SPA_OK, "read one block");
        const float *got[3] = {tq, tk, tv};
        for (int i = 0; i < 3; i++) {
            synth_rows(i, 0, 2, r0, 40, tw);
            expect(io_compare("one block", got[i], tw, 2 * rows * D, 0.0, 0.0) == 0, "one block");
        }
        spa_io_close(&in);
    }

    /* 2. other types and ranks */
    int bad = 0;
    if (me == 0) {
        hsize_t d4[4] = {1, H, N, D}, d2[2] = {N, D}, d3[3] = {H, N, D};
        hid_t half = io_half_type();
        bad |= write_typed(f64, H5T_IEEE_F64LE, 4, d4, H);
        bad |= write_typed(f16, half, 2, d2, 1);
        bad |= write_typed(be32, H5T_IEEE_F32BE, 3, d3, H);
        H5Tclose(half);
    }
    MPI_Bcast(&bad, 1, MPI_INT, 0, MPI_COMM_WORLD);
    expect(!bad, "writing the typed inputs");
    if (!bad) {
        read_and_check(f64, 4, H, even0, even1, 0, 1);
        read_and_check(f16, 2, 1, even0, even1, 1, 1);
        /* HDF5 converts byte order itself, which may make it independent */
        read_and_check(be32, 3, H, even0, even1, 0, 0);
        spa_io_trace(&nt, &nc);
        if (me == 0)
            printf("big-endian float32, converted by HDF5: %d of %d transfers collective\n", nc,
                   nt);
    }

    int any = 0;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (me == 0) {
        remove(gen);
        remove(tiny);
        remove(f64);
        remove(f16);
        remove(be32);
        printf("%s: io round trip at %d ranks\n", any ? "FAILED" : "passed", P);
    }
    MPI_Finalize();
    return any ? 1 : 0;
}
