/* test_plan_report.c - the plan report of the public API (spa_plan_*,
 * spa_write_png) on patterns whose answers follow in closed form, through
 * spa.h and libspa alone (no command line, no private header):
 *   - local window of W blocks, w = (W - 1) / 2, no other rule: block c
 *     reaches b iff |c - b| <= w (causal: 0 <= c - b <= w), so the hop
 *     count is ceil(|c - b| / w), the mask a band of half-width w;
 *   - one global token in block 0 and W = 1: every block reaches block 0
 *     and block 0 every block, so the hops are 1 to or from block 0 and 2
 *     between any other two, the mask a GLOBAL cross plus a LOCAL diagonal;
 *   - sampled roots, downsampled masks, more threads, the errors, and the
 *     PNG's header.
 * tests/cli/test_cli_plan.c checks the same functions on every rule
 * against brute force over spa_pattern_attends.
 */
#include "spa.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "expect.h"

static int make(spa_config *cfg, int64_t n, int32_t B, int32_t W, const char *globals, int causal)
{
    spa_config_init(cfg);
    cfg->n = n, cfg->heads = 2, cfg->dim = 8, cfg->block = B;
    cfg->local_blocks = W, cfg->random = 0, cfg->causal = causal;
    if (spa_config_set_globals(cfg, globals) != SPA_OK || spa_config_validate(cfg) != SPA_OK) {
        printf("FAIL config: %s\n", spa_last_error());
        fails++;
        return 0;
    }
    return 1;
}

/* The hop figures of roots[0 .. nroots) on nb blocks with dist(s, b) from
 * the closed form fn (-1 = unreachable). */
static spa_plan_hops expected(int64_t nb, const int64_t *roots, int64_t nroots,
                              int64_t (*fn)(int64_t s, int64_t b, int64_t w), int64_t w)
{
    spa_plan_hops e;
    memset(&e, 0, sizeof e);
    e.sources = nroots;
    double sum = 0;
    for (int64_t k = 0; k < nroots; k++)
        for (int64_t b = 0; b < nb; b++) {
            if (b == roots[k]) continue;
            e.pairs++;
            int64_t d = fn(roots[k], b, w);
            if (d < 0) continue;
            e.reachable++;
            sum += (double)d;
            if (d > e.max) e.max = d;
            e.hist[d < 15 ? d : 15]++;
        }
    e.mean = e.reachable ? sum / (double)e.reachable : 0.0;
    return e;
}

static int64_t band(int64_t s, int64_t b, int64_t w)
{
    int64_t gap = s > b ? s - b : b - s;
    return (gap + w - 1) / w;
}

static int64_t band_causal(int64_t s, int64_t b, int64_t w)
{
    return b > s ? -1 : band(s, b, w); /* s attends back only */
}

static int64_t cross(int64_t s, int64_t b, int64_t w)
{
    (void)w;
    return s == 0 || b == 0 ? 1 : 2;
}

static void expect_hops(const char *what, const spa_plan_hops *got, const spa_plan_hops *want)
{
    int same_hist = memcmp(got->hist, want->hist, sizeof got->hist) == 0;
    double dm = got->mean - want->mean;
    EXPECT(got->sources == want->sources && got->pairs == want->pairs &&
               got->reachable == want->reachable && got->max == want->max && same_hist &&
               dm * dm < 1e-20,
           "%s: sources %lld pairs %lld reachable %lld max %lld mean %.12f hist[1] %lld; "
           "closed form %lld %lld %lld %lld %.12f %lld",
           what, (long long)got->sources, (long long)got->pairs, (long long)got->reachable,
           (long long)got->max, got->mean, (long long)got->hist[1], (long long)want->sources,
           (long long)want->pairs, (long long)want->reachable, (long long)want->max, want->mean,
           (long long)want->hist[1]);
}

/* Local window only: hops against ceil(|c - b| / w), all and sampled roots. */
static void check_band(int64_t n, int32_t B, int32_t W, int causal)
{
    spa_config cfg;
    if (!make(&cfg, n, B, W, "none", causal)) return;
    int64_t nb = spa_nblocks(&cfg), w = (W - 1) / 2;
    int64_t (*fn)(int64_t, int64_t, int64_t) = causal ? band_causal : band;
    char what[96];
    int64_t *roots = malloc(sizeof(int64_t) * (size_t)nb);
    for (int32_t h = 0; h < cfg.heads; h++) {
        for (int64_t k = 0; k < nb; k++) roots[k] = k;
        spa_plan_hops got, want = expected(nb, roots, nb, fn, w);
        snprintf(what, sizeof what, "band nb %lld W %d causal %d head %d", (long long)nb, W, causal, h);
        EXPECT(spa_plan_block_hops(&cfg, h, 0, &got) == SPA_OK, "%s: %s", what, spa_last_error());
        expect_hops(what, &got, &want);
        /* every pair reachable without causal, half of them with it */
        EXPECT(want.reachable == (causal ? nb * (nb - 1) / 2 : nb * (nb - 1)), "%s: pairs", what);
        /* 5 roots, the documented (2k + 1) nb / 10 */
        for (int64_t k = 0; k < 5; k++) roots[k] = (2 * k + 1) * nb / 10;
        want = expected(nb, roots, 5, fn, w);
        snprintf(what, sizeof what, "band nb %lld W %d causal %d head %d, 5 roots", (long long)nb, W,
                 causal, h);
        EXPECT(spa_plan_block_hops(&cfg, h, 5, &got) == SPA_OK, "%s: %s", what, spa_last_error());
        expect_hops(what, &got, &want);
    }
    free(roots);

    /* the mask: a band of LOCAL pixels, at every downsampling */
    for (int64_t maxside = nb; maxside >= 1; maxside = maxside > 4 ? maxside / 2 : maxside - 1) {
        int64_t f, side = spa_plan_mask_side(nb, maxside, &f);
        EXPECT(f == (nb + maxside - 1) / maxside && side == (nb + f - 1) / f && side <= maxside,
               "mask side of %lld blocks at most %lld: f %lld side %lld", (long long)nb,
               (long long)maxside, (long long)f, (long long)side);
        unsigned char *pix = malloc((size_t)(side * side));
        EXPECT(spa_plan_block_mask(&cfg, 1, f, side, pix) == SPA_OK, "mask: %s", spa_last_error());
        int64_t bad = 0;
        for (int64_t y = 0; y < side; y++)
            for (int64_t x = 0; x < side; x++) {
                /* some c in row y, b in column x with 0 <= c - b <= w (both
                 * ways without causal): the nearest pair decides */
                int64_t c0 = y * f, c1 = (y + 1) * f - 1 < nb - 1 ? (y + 1) * f - 1 : nb - 1;
                int64_t b0 = x * f, b1 = (x + 1) * f - 1 < nb - 1 ? (x + 1) * f - 1 : nb - 1;
                int64_t back = b0 > c1 ? -1 : (c0 - b1 > 0 ? c0 - b1 : 0); /* min c - b >= 0 */
                int64_t fwd = c0 > b1 ? -1 : (b0 - c1 > 0 ? b0 - c1 : 0);  /* min b - c >= 0 */
                int on = (back >= 0 && back <= w) || (!causal && fwd >= 0 && fwd <= w);
                unsigned char want = on ? SPA_PLAN_PIX_LOCAL : 0;
                if (pix[y * side + x] != want && bad++ < 3)
                    printf("FAIL band mask W %d causal %d f %lld pixel (%lld, %lld): %d, want %d\n", W,
                           causal, (long long)f, (long long)y, (long long)x, pix[y * side + x], want);
            }
        EXPECT(bad == 0, "band mask W %d causal %d f %lld: %lld pixels differ", W, causal, (long long)f,
               (long long)bad);
        free(pix);
    }
    spa_config_free(&cfg);
}

/* One global token in block 0, W = 1: hops 1 through block 0, else 2. */
static void check_cross(int64_t n, int32_t B)
{
    spa_config cfg;
    if (!make(&cfg, n, B, 1, "0", 0)) return;
    int64_t nb = spa_nblocks(&cfg);
    int64_t *roots = malloc(sizeof(int64_t) * (size_t)nb);
    for (int64_t k = 0; k < nb; k++) roots[k] = k;
    spa_plan_hops got, want = expected(nb, roots, nb, cross, 1);
    EXPECT(want.hist[1] == 2 * (nb - 1) && want.hist[2] == (nb - 1) * (nb - 2) && want.max == 2,
           "cross: closed form");
    EXPECT(spa_plan_block_hops(&cfg, 0, nb, &got) == SPA_OK, "cross: %s", spa_last_error());
    expect_hops("cross", &got, &want);
    /* the same on 3 threads */
    int threads = omp_get_max_threads();
    omp_set_num_threads(3);
    EXPECT(spa_plan_block_hops(&cfg, 1, nb + 5, &got) == SPA_OK, "cross: %s", spa_last_error());
    omp_set_num_threads(threads);
    expect_hops("cross, 3 threads", &got, &want);

    unsigned char *pix = malloc((size_t)(nb * nb));
    EXPECT(spa_plan_block_mask(&cfg, 0, 1, nb, pix) == SPA_OK, "cross mask: %s", spa_last_error());
    int64_t bad = 0;
    for (int64_t c = 0; c < nb; c++)
        for (int64_t b = 0; b < nb; b++) {
            unsigned char want_px = (c == 0 || b == 0 ? SPA_PLAN_PIX_GLOBAL : 0) |
                                    (c == b ? SPA_PLAN_PIX_LOCAL : 0);
            if (pix[c * nb + b] != want_px && bad++ < 3)
                printf("FAIL cross mask (%lld, %lld): %d, want %d\n", (long long)c, (long long)b,
                       pix[c * nb + b], want_px);
        }
    EXPECT(bad == 0, "cross mask: %lld pixels differ", (long long)bad);

    /* errors: a head outside [0, H), a side that is not ceil(nb / f) */
    EXPECT(spa_plan_block_hops(&cfg, 2, 0, &got) == SPA_ERR_USAGE && got.sources == 0,
           "hops of head 2 of 2");
    EXPECT(spa_plan_block_hops(&cfg, -1, 0, &got) == SPA_ERR_USAGE, "hops of head -1");
    EXPECT(spa_plan_block_mask(&cfg, 2, 1, nb, pix) == SPA_ERR_USAGE, "mask of head 2 of 2");
    EXPECT(spa_plan_block_mask(&cfg, 0, 1, nb - 1, pix) == SPA_ERR_OTHER &&
               strstr(spa_last_error(), "bad mask geometry"),
           "mask side nb - 1: %s", spa_last_error());
    EXPECT(spa_plan_block_mask(&cfg, 0, 0, nb, pix) == SPA_ERR_OTHER, "mask factor 0");
    int64_t f;
    EXPECT(spa_plan_mask_side(nb, 0, &f) == 1 && f == nb, "max side 0 counts as 1");

    /* the PNG: signature, IHDR (side x side, 8-bit RGB), no temporary left */
    char dir[] = "/tmp/spa_plan_report_XXXXXX", path[256], missing[256];
    EXPECT(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(path, sizeof path, "%s/mask.png", dir);
    snprintf(missing, sizeof missing, "%s/no_such/mask.png", dir);
    spa_err e = spa_write_png(path, pix, nb);
    if (e == SPA_ERR_USAGE) {
        EXPECT(strstr(spa_last_error(), "without libpng") != NULL, "no libpng: %s", spa_last_error());
        printf("spa_write_png: built without libpng, skipped\n");
    } else {
        EXPECT(e == SPA_OK, "spa_write_png: %s", spa_last_error());
        unsigned char head[26] = {0};
        FILE *fp = fopen(path, "rb");
        size_t got_bytes = fp ? fread(head, 1, sizeof head, fp) : 0;
        if (fp) fclose(fp);
        uint32_t wid = (uint32_t)head[16] << 24 | (uint32_t)head[17] << 16 | (uint32_t)head[18] << 8 | head[19];
        uint32_t hei = (uint32_t)head[20] << 24 | (uint32_t)head[21] << 16 | (uint32_t)head[22] << 8 | head[23];
        EXPECT(got_bytes == sizeof head && memcmp(head, "\x89PNG\r\n\x1a\n", 8) == 0 &&
                   memcmp(head + 12, "IHDR", 4) == 0 && wid == (uint32_t)nb && hei == (uint32_t)nb &&
                   head[24] == 8 && head[25] == 2,
               "PNG header: %zu bytes, %u x %u, depth %d, colour type %d", got_bytes, wid, hei,
               head[24], head[25]);
        EXPECT(spa_write_png(missing, pix, nb) == SPA_ERR_OTHER &&
                   strstr(spa_last_error(), "cannot write the image"),
               "PNG into a missing folder: %s", spa_last_error());
        remove(path);
    }
    EXPECT(rmdir(dir) == 0, "the folder holds a leftover file");
    free(pix);
    free(roots);
    spa_config_free(&cfg);
}

int main(void)
{
    check_band(1000, 16, 5, 0);   /* 63 blocks, the last partial */
    check_band(1000, 16, 5, 1);
    check_band(640, 8, 3, 0);     /* w = 1: hops = |c - b| */
    check_band(640, 8, 7, 1);
    check_band(100, 16, 41, 0);   /* the window covers everything */
    check_cross(700, 16);
    check_cross(33, 16);          /* 3 blocks */
    printf("%d checks, %d failed\n", checks, fails);
    return fails ? 1 : 0;
}
