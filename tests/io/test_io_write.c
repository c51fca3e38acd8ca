/* test_io_write.c - spa_io_write's file, read back with serial HDF5.
 *
 *   test_io_write DIR
 *
 * Every rank writes its own rows of known values; rank 0 then checks out,
 * lse, plan/random_blocks (against spa_pattern_random_blocks for every
 * head and block), plan/globals and the root attributes. Cases: [H, N, D],
 * [Bt, H, N, D] and [N, D] shapes, radius mode with causal, random 0 with
 * no globals (empty datasets), ranks that own no block. Every dataset
 * transfer must be collective. A failing write leaves an existing file byte
 * for byte as it was, and no temporary file is left behind.
 */
#include "io.h"
#include "io_check.h"

#include <dirent.h>
#include <sys/stat.h>

static int P, me, failed;

static void expect(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "rank %d: FAIL: %s (%s)\n", me, what, spa_last_error());
        failed = 1;
    }
}

static int64_t attr_int(hid_t f, const char *name)
{
    int64_t v = -12345;
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    if (a >= 0) H5Aread(a, H5T_NATIVE_INT64, &v);
    if (a >= 0) H5Aclose(a);
    return v;
}

static double attr_dbl(hid_t f, const char *name)
{
    double v = NAN;
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    if (a >= 0) H5Aread(a, H5T_NATIVE_DOUBLE, &v);
    if (a >= 0) H5Aclose(a);
    return v;
}

static int attr_is(hid_t f, const char *name, const char *want)
{
    char buf[64] = {0};
    hid_t a = H5Aopen(f, name, H5P_DEFAULT), t = H5Aget_type(a);
    int ok = a >= 0 && H5Tget_size(t) < sizeof buf && H5Aread(a, t, buf) >= 0 && !strcmp(buf, want);
    if (t >= 0) H5Tclose(t);
    if (a >= 0) H5Aclose(a);
    return ok;
}

/* Reads a whole dataset as `mtype`; returns its element count or -1. */
static int64_t get(hid_t f, const char *name, hid_t mtype, void *buf, int64_t room, int *rank,
                   hsize_t *dims)
{
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0) return -1;
    hid_t s = H5Dget_space(d);
    int64_t count = H5Sget_simple_extent_npoints(s);
    *rank = H5Sget_simple_extent_ndims(s);
    H5Sget_simple_extent_dims(s, dims, NULL);
    if (count > room || (count > 0 && H5Dread(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0))
        count = -1;
    H5Sclose(s);
    H5Dclose(d);
    return count;
}

/* Known values, integers below 2^24 so every float is exact. */
static float out_value(int64_t h, int64_t t, int64_t d) { return (float)(h * 100000 + t * 10 + d); }
static float lse_value(int64_t h, int64_t t) { return (float)(-h * 10000 - t); }

static int temp_files_left(const char *dir)
{
    DIR *dp = opendir(dir);
    struct dirent *e;
    int n = 0;
    while (dp && (e = readdir(dp)))
        if (e->d_name[0] == '.' && strstr(e->d_name, ".tmp.")) n++;
    if (dp) closedir(dp);
    return n;
}

/* Writes and checks one case; shape rank 3 or 4 (Bt = 1). */
static void one_case(const char *dir, const char *tag, int64_t n, int srank,
                     const char *flags_globals, int64_t radius, int causal, int32_t random)
{
    char path[512], what[600];
    snprintf(path, sizeof path, "%s/w_%s_p%d.h5", dir, tag, P);
    spa_config cfg;
    spa_config_init(&cfg);
    cfg.n = n;
    cfg.heads = srank == 2 ? 1 : 3;
    cfg.dim = 8;
    cfg.block = 32;
    cfg.radius = radius;
    cfg.causal = causal;
    cfg.random = random;
    cfg.seed = 11;
    spa_config_set_globals(&cfg, flags_globals);
    expect(spa_config_validate(&cfg) == SPA_OK, "validate");
    spa_shape s;
    memset(&s, 0, sizeof s);
    s.rank = srank;
    s.n = cfg.n;
    s.heads = cfg.heads;
    s.dim = cfg.dim;
    if (srank == 4) {
        int64_t d[4] = {1, cfg.heads, cfg.n, cfg.dim};
        memcpy(s.dims, d, sizeof d);
    } else if (srank == 2) {
        int64_t d[2] = {cfg.n, cfg.dim};
        memcpy(s.dims, d, sizeof d);
    } else {
        int64_t d[3] = {cfg.heads, cfg.n, cfg.dim};
        memcpy(s.dims, d, sizeof d);
    }

    int64_t b0, b1, t0, t1, rows, nb = spa_nblocks(&cfg);
    spa_partition(&cfg, P, me, &b0, &b1, &t0, &t1);
    rows = t1 - t0;
    /* out: [H][rows][D], lse: [H][rows] */
    float *out = spa_alloc((size_t)(cfg.heads * rows * cfg.dim) * 4 + 4);
    float *lse = spa_alloc((size_t)(cfg.heads * rows) * 4 + 4);
    for (int64_t h = 0; h < cfg.heads; h++)
        for (int64_t t = t0; t < t1; t++) {
            lse[h * rows + t - t0] = lse_value(h, t);
            for (int64_t d = 0; d < cfg.dim; d++)
                out[(h * rows + t - t0) * cfg.dim + d] = out_value(h, t, d);
        }
    spa_io_trace_reset();
    snprintf(what, sizeof what, "spa_io_write %s", tag);
    expect(spa_io_write(MPI_COMM_WORLD, path, &s, &cfg, t0, t1, out, lse, 2) == SPA_OK, what);
    /* out, lse and plan/random_blocks; rank 0 writes the small datasets alone */
    int nt, nc, want_nt = 2 + (random > 0);
    spa_io_trace(&nt, &nc);
    snprintf(what, sizeof what, "%s: %d transfers, %d collective, want %d", tag, nt, nc, want_nt);
    expect(nt == want_nt && nc == want_nt, what);
    spa_free(out);
    spa_free(lse);

    if (me == 0) {
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        snprintf(what, sizeof what, "open %s", path);
        expect(f >= 0, what);
        int64_t total = (int64_t)cfg.heads * cfg.n * cfg.dim;
        float *got = spa_alloc((size_t)total * 4), *want = spa_alloc((size_t)total * 4);
        int r;
        hsize_t dims[4];

        /* out and lse: the shape of q, and q's minus the last dim */
        expect(get(f, "out", H5T_NATIVE_FLOAT, got, total, &r, dims) == total && r == srank &&
                   dims[srank - 1] == (hsize_t)cfg.dim && dims[srank - 2] == (hsize_t)cfg.n,
               "out shape");
        for (int64_t e = 0; e < total; e++)
            want[e] = out_value(e / (cfg.n * cfg.dim), e / cfg.dim % cfg.n, e % cfg.dim);
        snprintf(what, sizeof what, "%s out", tag);
        expect(io_compare(what, got, want, total, 0.0, 0.0) == 0, what);
        expect(get(f, "lse", H5T_NATIVE_FLOAT, got, total, &r, dims) == cfg.heads * cfg.n &&
                   r == srank - 1 && dims[srank - 2] == (hsize_t)cfg.n,
               "lse shape");
        for (int64_t e = 0; e < cfg.heads * cfg.n; e++) want[e] = lse_value(e / cfg.n, e % cfg.n);
        snprintf(what, sizeof what, "%s lse", tag);
        expect(io_compare(what, got, want, cfg.heads * cfg.n, 0.0, 0.0) == 0, what);

        /* plan: every (h, c) row against the pattern, -1 padded */
        int64_t nr = (int64_t)cfg.heads * nb * random;
        int32_t *rb = calloc((size_t)nr + 1, 4), *row = calloc((size_t)random + 1, 4);
        int64_t got_nr = get(f, "plan/random_blocks", H5T_NATIVE_INT32, rb, nr, &r, dims);
        expect(got_nr == nr && r == 3 && dims[0] == (hsize_t)cfg.heads && dims[1] == (hsize_t)nb &&
                   dims[2] == (hsize_t)random,
               "random_blocks shape");
        int64_t wrong = 0;
        for (int32_t h = 0; got_nr == nr && h < cfg.heads; h++)
            for (int64_t c = 0; c < nb; c++) {
                int32_t m = spa_pattern_random_blocks(&cfg, h, c, row);
                for (int32_t j = 0; j < random; j++)
                    if (rb[((int64_t)h * nb + c) * random + j] != (j < m ? row[j] : -1)) {
                        if (wrong++ < 5)
                            fprintf(stderr, "  random_blocks[%d, %lld, %d] = %d, want %d\n", h,
                                    (long long)c, j, rb[((int64_t)h * nb + c) * random + j],
                                    j < m ? row[j] : -1);
                    }
            }
        expect(wrong == 0, "random_blocks values");
        int64_t *g = calloc((size_t)cfg.nglobals + 1, 8);
        expect(get(f, "plan/globals", H5T_NATIVE_INT64, g, cfg.nglobals, &r, dims) ==
                       cfg.nglobals &&
                   r == 1 && (cfg.nglobals == 0 || !memcmp(g, cfg.globals, (size_t)cfg.nglobals * 8)),
               "globals");

        expect(attr_int(f, "block") == cfg.block && attr_int(f, "random") == random &&
                   attr_int(f, "seed") == 11 && attr_int(f, "causal") == causal &&
                   attr_int(f, "n") == cfg.n && attr_int(f, "heads") == cfg.heads &&
                   attr_int(f, "dim") == cfg.dim && attr_int(f, "ranks") == P &&
                   attr_int(f, "threads") == 2 &&
                   attr_int(f, "local_size") == (radius < 0 ? cfg.local_blocks : radius) &&
                   attr_is(f, "local_mode", radius < 0 ? "blocks" : "radius") &&
                   attr_is(f, "version", SPA_VERSION) &&
                   fabs(attr_dbl(f, "scale") - 1.0 / sqrt(8.0)) < 1e-7,
               "root attributes");
        free(g);
        free(rb);
        free(row);
        spa_free(got);
        spa_free(want);
        if (f >= 0) H5Fclose(f);
        expect(temp_files_left(dir) == 0, "no temporary file left");
        remove(path);
    }
    spa_config_free(&cfg);
}

static int64_t slurp(const char *path, char *buf, int64_t room)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) return -1;
    int64_t n = (int64_t)fread(buf, 1, (size_t)room, fp);
    fclose(fp);
    return n;
}

/* A failing write must leave the existing target untouched. */
static void failed_write_keeps_old(const char *dir)
{
    char path[512];
    static char before[1 << 16], after[1 << 16];
    snprintf(path, sizeof path, "%s/keep_p%d.h5", dir, P);
    if (me == 0) {
        FILE *fp = fopen(path, "wb");
        fputs("previous contents\n", fp);
        fclose(fp);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    int64_t nb_before = slurp(path, before, sizeof before);

    spa_config cfg;
    spa_config_init(&cfg);
    cfg.n = 100;
    cfg.heads = 1;
    cfg.dim = 4;
    expect(spa_config_validate(&cfg) == SPA_OK, "validate");
    spa_shape s = {3, {1, 100, 4, 0}, 100, 1, 4};
    float buf[1000] = {0};
    /* rows past n on the last rank: rejected collectively before writing */
    int64_t t0 = 100 * me / P, t1 = 100 * (me + 1) / P + (me == P - 1);
    expect(spa_io_write(MPI_COMM_WORLD, path, &s, &cfg, t0, t1, buf, buf, 1) != SPA_OK,
           "a bad write fails");
    /* a missing folder fails the same way on every rank */
    char nodir[600];
    snprintf(nodir, sizeof nodir, "%s/no_such_folder/x.h5", dir);
    expect(spa_io_write(MPI_COMM_WORLD, nodir, &s, &cfg, 100 * me / P, 100 * (me + 1) / P, buf, buf,
                        1) == SPA_ERR_USAGE,
           "missing folder is a usage error");
    MPI_Barrier(MPI_COMM_WORLD);
    int64_t nb_after = slurp(path, after, sizeof after);
    expect(nb_before > 0 && nb_before == nb_after && !memcmp(before, after, (size_t)nb_after),
           "failed write left the old file as it was");
    /* and a good write replaces it */
    expect(spa_io_write(MPI_COMM_WORLD, path, &s, &cfg, 100 * me / P, 100 * (me + 1) / P, buf, buf,
                        1) == SPA_OK,
           "good write");
    if (me == 0) {
        expect(H5Fis_hdf5(path) > 0, "good write replaced the old file");
        expect(temp_files_left(dir) == 0, "no temporary file left");
        remove(path);
    }
    spa_config_free(&cfg);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    if (argc != 2) {
        if (me == 0) fprintf(stderr, "usage: test_io_write DIR\n");
        MPI_Finalize();
        return 2;
    }
    char dir[512];
    snprintf(dir, sizeof dir, "%s/write_p%d", argv[1], P);
    if (me == 0) mkdir(dir, 0755);
    MPI_Barrier(MPI_COMM_WORLD);

    one_case(dir, "blocks", 1000, 3, NULL, -1, 0, 3);
    one_case(dir, "radius_causal_rank4", 1000, 4, "0,5,500:520,999", 40, 1, 2);
    one_case(dir, "empty_plan", 1000, 3, "none", -1, 0, 0);
    one_case(dir, "rank2", 1000, 2, "999", -1, 1, 1);
    /* two blocks: from three ranks on, some own nothing and still write */
    one_case(dir, "two_blocks", 40, 3, "none", -1, 0, 1);
    failed_write_keeps_old(dir);

    int any = 0;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (me == 0) printf("%s: io write at %d ranks\n", any ? "FAILED" : "passed", P);
    MPI_Finalize();
    return any ? 1 : 0;
}
