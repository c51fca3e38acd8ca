/* fuzz_layout.c - libFuzzer harness of the layout reader (--layout).
 *
 * Input: 4 bytes of parameters, then an HDF5 file image.
 *   byte 0: block = 1 + b % 8     byte 2: n = nb * block - b % block
 *   byte 1: nb = 1 + b % 8        byte 3: heads = 1 + b % 4
 * The reader runs on the image in memory (spa_io_read_layout_image: HDF5's
 * core driver, everything spa_io_read_layout does after opening its path).
 * A layout it accepts must be well formed (heads 1 or H, nb = ceil(n /
 * block), rows sorted, unique, in [0, nb)) and pass spa_config_validate;
 * then the real entry point, spa_io_read_layout on MPI_COMM_SELF, reads the
 * same bytes from tmpfs and must return the same layout, unless HDF5's own
 * default driver cannot open the file (fuzz_hdf5_opens). Every error has a
 * code and a message; no HDF5 object stays open.
 */
#include "fuzz_common.h"

#include "io.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    fuzz_mpi_init("layout");
    /* HDF5 and MPI allocate what they keep on first use: do it here, not
     * inside the first input's leak check. */
    spa_layout lay;
    static const uint8_t none[8] = {0};
    fuzz_write_file(none, sizeof none);
    if (spa_io_read_layout(MPI_COMM_SELF, fuzz_path, 1, 1, 1, &lay) == SPA_OK) abort();
    if (spa_io_read_layout_image(none, sizeof none, 1, 1, 1, &lay) == SPA_OK) abort();
    return 0;
}

static int same_layout(const spa_layout *a, const spa_layout *b)
{
    if (a->heads != b->heads || a->nb != b->nb) return 0;
    int64_t rows = (int64_t)a->heads * a->nb;
    return memcmp(a->off, b->off, (size_t)(rows + 1) * sizeof *a->off) == 0 &&
           memcmp(a->idx, b->idx, (size_t)a->off[rows] * sizeof *a->idx) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4) return 0;
    int32_t block = 1 + data[0] % 8, heads = 1 + data[3] % 4;
    int64_t nb = 1 + data[1] % 8;
    int64_t n = nb * block - data[2] % block;

    spa_layout lay;
    spa_err e = spa_io_read_layout_image(data + 4, size - 4, block, n, heads, &lay);
    fuzz_no_open_objects("spa_io_read_layout_image");
    if (e != SPA_OK) {
        fuzz_check_error(e);
        FUZZ_ASSERT(lay.off == NULL && lay.idx == NULL, "a failed read left arrays behind");
        return 0;
    }
    FUZZ_ASSERT(lay.heads == 1 || lay.heads == heads, "layout heads %d, H %d", lay.heads, heads);
    FUZZ_ASSERT(lay.nb == nb, "layout nb %lld, expected %lld", (long long)lay.nb, (long long)nb);
    FUZZ_ASSERT(lay.off && lay.idx && lay.off[0] == 0, "bad offsets");
    for (int64_t r = 0; r < lay.heads * nb; r++) {
        FUZZ_ASSERT(lay.off[r] <= lay.off[r + 1], "row %lld: offsets decrease", (long long)r);
        for (int64_t e2 = lay.off[r]; e2 < lay.off[r + 1]; e2++) {
            FUZZ_ASSERT(lay.idx[e2] >= 0 && lay.idx[e2] < nb, "row %lld: block %d outside [0, %lld)",
                        (long long)r, lay.idx[e2], (long long)nb);
            FUZZ_ASSERT(e2 == lay.off[r] || lay.idx[e2 - 1] < lay.idx[e2],
                        "row %lld: not sorted and unique", (long long)r);
        }
    }

    /* the real entry point, on a file of the same bytes */
    fuzz_write_file(data + 4, size - 4);
    spa_layout lay2;
    e = spa_io_read_layout(MPI_COMM_SELF, fuzz_path, block, n, heads, &lay2);
    fuzz_no_open_objects("spa_io_read_layout");
    if (e != SPA_OK) {
        /* the core driver accepts some damaged files that sec2 refuses */
        fuzz_check_error(e);
        FUZZ_ASSERT(e == SPA_ERR_INPUT, "read in memory, then error %d: %s", e, spa_last_error());
        FUZZ_ASSERT(!fuzz_hdf5_opens(fuzz_path, 0),
                    "read in memory and HDF5 opens the file, but spa_io_read_layout says: %s",
                    spa_last_error());
    } else {
        FUZZ_ASSERT(same_layout(&lay, &lay2), "the file gives another layout than the image");
        spa_layout_free(&lay2);
    }

    /* the layout alone, as --local-blocks 0 --globals none --random 0 */
    spa_config cfg;
    spa_config_init(&cfg);
    cfg.n = n;
    cfg.heads = heads;
    cfg.dim = 4;
    cfg.block = block;
    cfg.local_blocks = 0;
    cfg.random = 0;
    e = spa_config_set_globals(&cfg, "none");
    if (e == SPA_OK) e = spa_config_set_layout(&cfg, &lay);
    if (e == SPA_OK) e = spa_config_validate(&cfg);
    FUZZ_ASSERT(e == SPA_OK, "an accepted layout fails validation: %s", spa_last_error());
    spa_config_free(&cfg);
    spa_layout_free(&lay);
    return 0;
}
