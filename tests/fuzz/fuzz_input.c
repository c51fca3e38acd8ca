/* fuzz_input.c - libFuzzer harness of the input loader.
 *
 * The input is an HDF5 file image. spa_io_check_image runs spa_io_open's
 * checks on it in memory through HDF5's core driver. An image that passes
 * and holds at most 2^14 values per dataset is then written to tmpfs and
 * read for real, through spa_io_open and spa_io_read on MPI_COMM_SELF, in
 * two row ranges; HDF5 refuses the collective transfers spa uses on the
 * core driver, so the data path needs a file.
 * Checks: both opens agree on the shape, and on the outcome unless HDF5's
 * own drivers do (fuzz_hdf5_opens); every error has a code and a message;
 * no HDF5 object stays open; ASan and UBSan stay quiet.
 */
#include "fuzz_common.h"

#include "io.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    fuzz_mpi_init("input");
    /* One real write and read first: Open MPI loads its MPI-IO components
     * on the first file open and keeps what they allocate, which
     * LeakSanitizer would otherwise blame on the first input. */
    spa_input in = NULL;
    spa_shape s;
    float buf[3 * 8];
    if (spa_io_gen(MPI_COMM_SELF, fuzz_path, 4, 1, 2, 0, 1.0f) != SPA_OK ||
        spa_io_open(MPI_COMM_SELF, fuzz_path, &in, &s) != SPA_OK ||
        spa_io_read(in, 0, 4, buf, buf + 8, buf + 16) != SPA_OK) {
        fprintf(stderr, "fuzz_input: warm-up failed: %s\n", spa_last_error());
        abort();
    }
    spa_io_close(&in);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    spa_shape s;
    spa_err e = spa_io_check_image(data, size, &s);
    fuzz_no_open_objects("spa_io_check_image");
    if (e != SPA_OK) {
        fuzz_check_error(e);
        return 0;
    }
    FUZZ_ASSERT(s.rank >= 2 && s.rank <= 4 && s.n >= 1 && s.heads >= 1 && s.dim >= 1,
                "shape rank %d n %lld heads %d dim %d", s.rank, (long long)s.n, s.heads, s.dim);
    int64_t heads = 1;
    for (int d = 0; d < s.rank - 2; d++) heads *= s.dims[d];
    FUZZ_ASSERT(heads == s.heads && s.dims[s.rank - 2] == s.n && s.dims[s.rank - 1] == s.dim,
                "dims disagree with n, heads, dim");
    int64_t elems = (int64_t)s.heads * s.n * s.dim;
    if (elems > (1 << 14)) return 0;

    fuzz_write_file(data, size);
    spa_input in = NULL;
    spa_shape s2;
    e = spa_io_open(MPI_COMM_SELF, fuzz_path, &in, &s2);
    if (e != SPA_OK) {
        /* HDF5's drivers disagree on some damaged files: the core driver
         * takes an address that sec2 and MPI-IO refuse ("attempting I/O in
         * temporary file space"). Then spa must call the input unreadable.
         * spa_io_open runs the same checks as in memory through sec2 on
         * rank 0 first, then opens the file with MPI-IO: either those
         * checks fail through sec2 too (the drivers disagree), or they
         * pass and HDF5 itself must refuse the file with MPI-IO. */
        fuzz_check_error(e);
        FUZZ_ASSERT(e == SPA_ERR_INPUT, "passed in memory, then error %d: %s", e, spa_last_error());
        fuzz_no_open_objects("spa_io_open");
        char msg[512];
        snprintf(msg, sizeof msg, "%s", spa_last_error());
        spa_shape s3;
        spa_err e3 = spa_io_check_path(fuzz_path, &s3);
        fuzz_no_open_objects("spa_io_check_path");
        if (e3 == SPA_OK)
            FUZZ_ASSERT(!fuzz_hdf5_opens(fuzz_path, 1),
                        "passed in memory and through sec2, HDF5 opens the file with MPI-IO, but "
                        "spa_io_open says: %s", msg);
        else
            FUZZ_ASSERT(e3 == SPA_ERR_INPUT, "sec2 checks: error %d: %s", e3, spa_last_error());
        return 0;
    }
    FUZZ_ASSERT(memcmp(&s, &s2, sizeof s) == 0, "the two opens disagree on the shape");
    float *buf = malloc((size_t)(3 * elems) * sizeof *buf);
    FUZZ_ASSERT(buf, "out of memory");
    /* rows [0, h) then [h, n): a read that does not start at row 0, and
     * an empty one when n = 1 */
    int64_t h = s.n / 2;
    float *q = buf, *k = buf + elems, *v = buf + 2 * elems;
    e = spa_io_read(in, 0, h, q, k, v);
    if (e == SPA_OK) {
        int64_t off = (int64_t)s.heads * h * s.dim;
        e = spa_io_read(in, h, s.n, q + off, k + off, v + off);
    }
    if (e != SPA_OK) fuzz_check_error(e);
    spa_io_close(&in);
    FUZZ_ASSERT(in == NULL, "spa_io_close left the handle");
    fuzz_no_open_objects("spa_io_read");
    free(buf);
    return 0;
}
