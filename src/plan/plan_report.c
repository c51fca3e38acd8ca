/* plan_report.c - what `spa plan` shows of a pattern, block by block: the
 * keys per query (spa_plan_key_counts), what each rank receives
 * (spa_plan_rank_bytes), the block mask of a head, the hop counts of its
 * block graph, and the mask as a PNG (spa_plan_mask_side,
 * spa_plan_block_mask, spa_plan_block_hops, spa_write_png).
 *
 * Pure functions of the config, no MPI, and never per (i, j) pair, so a
 * report for n = 10M takes seconds. The key blocks of query block c in
 * head h are the union of four parts, each cheap to list:
 *   local     one contiguous range (spa_pattern_local_range);
 *   named     random, layout, strided and dilated blocks
 *             (spa_pattern_key_blocks), kept per head in compressed rows;
 *   gathered  the blocks of G and of the head's summary columns, a column
 *             every row sees (under causal: rows at or after it);
 *   global    a block holding a global row attends every block (causal: up
 *             to its own).
 * Invariants:
 *   - block c reaches block b (mask pixel set, graph edge c -> b) exactly
 *     when some token of c attends some token of b by spa_pattern_attends;
 *   - hops are a BFS on that graph, where a range of blocks is skipped in
 *     O(1) amortised by a "next unvisited" forest, so one BFS costs
 *     O(nb + named blocks) whatever the window; block-level hops are exact
 *     for block-level rules without causal and a lower bound on the
 *     token-level hops otherwise;
 *   - the results do not depend on the thread count: the hop figures are
 *     sums of integers (the distance sum in a double, exact below 2^53).
 */
#include "spa_impl.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef SPA_HAVE_PNG
#include <png.h>
#endif

int64_t spa_plan_mask_side(int64_t nb, int64_t max_side, int64_t *factor)
{
    if (max_side < 1) max_side = 1;
    int64_t f = (nb + max_side - 1) / max_side;
    if (f < 1) f = 1;
    *factor = f;
    return (nb + f - 1) / f;
}

spa_err spa_plan_key_counts(const spa_config *cfg, spa_plan_keys *out)
{
    const int64_t nb = spa_nblocks(cfg), B = cfg->block;
    int64_t kmin = INT64_MAX, kmax = 0, ksum = 0;
    int fail = 0;
#pragma omp parallel reduction(min : kmin) reduction(max : kmax) reduction(+ : ksum, fail)
    {
        /* one workspace a thread: it holds a byte per block of the
         * sequence, which a workspace per block would clear each time */
        int64_t *cnt = malloc(sizeof(int64_t) * (size_t)B);
        spa_patws *w = spa_patws_create(cfg);
        if (!cnt || !w) fail = 1;
#pragma omp for collapse(2) schedule(dynamic, 64)
        for (int32_t h = 0; h < cfg->heads; h++)
            for (int64_t c = 0; c < nb; c++) {
                if (!cnt || !w) continue;
                const int64_t rows = spa_block_end(cfg, c) - c * B;
                spa_pattern_block_keys_ws(cfg, h, c, cnt, w);
                for (int64_t r = 0; r < rows; r++) {
                    ksum += cnt[r];
                    if (cnt[r] < kmin) kmin = cnt[r];
                    if (cnt[r] > kmax) kmax = cnt[r];
                }
            }
        free(cnt);
        spa_patws_destroy(w);
    }
    *out = (spa_plan_keys){0, 0, 0};
    SPA_REQUIRE(!fail, SPA_ERR_OTHER, "out of memory for the key counts");
    *out = (spa_plan_keys){kmin, kmax, ksum};
    return SPA_OK;
}

static spa_plan_rank rank_figures(const spa_commplan *pl)
{
    return (spa_plan_rank){pl->b0, pl->b1, pl->bytes_halo, pl->bytes_global, pl->bytes_rma, pl->nfetch, pl->nbatch};
}

spa_err spa_plan_rank_bytes(const spa_config *cfg, int P, int r, spa_plan_rank *out)
{
    memset(out, 0, sizeof *out);
    SPA_REQUIRE(P >= 1 && r >= 0 && r < P, SPA_ERR_USAGE, "rank %d is not in [0, %d)", r, P);
    spa_commplan plan;
    SPA_CHECK(spa_commplan_build(cfg, P, r, &plan));
    *out = rank_figures(&plan);
    spa_commplan_free(&plan);
    return SPA_OK;
}

spa_err spa_plan_ranks_bytes(const spa_config *cfg, int P, spa_plan_rank *out)
{
    SPA_REQUIRE(P >= 1, SPA_ERR_USAGE, "ranks %d is not >= 1", P);
    memset(out, 0, (size_t)P * sizeof *out);
    spa_commplan first, plan;
    SPA_CHECK(spa_commplan_build(cfg, P, 0, &first));
    out[0] = rank_figures(&first);
    spa_err e = SPA_OK;
    for (int r = 1; r < P && e == SPA_OK; r++) {
        e = spa_commplan_build_like(cfg, P, r, &first, &plan);
        if (e != SPA_OK) break;
        out[r] = rank_figures(&plan);
        spa_commplan_free(&plan);
    }
    spa_commplan_free(&first);
    return e;
}

/* The public entry points take any head number. */
static spa_err check_head(const spa_config *cfg, int32_t h)
{
    SPA_REQUIRE(h >= 0 && h < cfg->heads, SPA_ERR_USAGE, "head %d is not in [0, %d)", h,
                cfg->heads);
    return SPA_OK;
}

/* Key blocks [*k0, *k1] of the local rule of (h, c) (empty: k1 < k0). */
static void local_blocks(const spa_config *cfg, int32_t h, int64_t c, int64_t *k0, int64_t *k1)
{
    int64_t j0, j1;
    spa_pattern_local_range(cfg, h, c, &j0, &j1);
    *k0 = j0 / cfg->block;
    *k1 = j1 > j0 ? (j1 - 1) / cfg->block : *k0 - 1;
}

/* The block graph of one head, beside the local ranges:
 *   named: row c lists idx[off[c] .. off[c + 1]), kind[] RANDOM or OTHER;
 *          causal-filtered (no b > c);
 *   gathered columns gcol[0 .. ngcol), ascending, gkind[] GLOBAL or OTHER. */
typedef struct head_graph {
    int64_t nb;
    int64_t *off;
    int32_t *idx;
    unsigned char *kind;
    int64_t *gcol;
    unsigned char *gkind;
    int64_t ngcol;
} head_graph;

static void graph_free(head_graph *g)
{
    free(g->off), free(g->idx), free(g->kind), free(g->gcol), free(g->gkind);
    memset(g, 0, sizeof *g);
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static spa_err graph_build(const spa_config *cfg, int32_t h, head_graph *g)
{
    int64_t nb = spa_nblocks(cfg), cap = 0, len = 0;
    memset(g, 0, sizeof *g);
    g->nb = nb;
    spa_patws *w = spa_patws_create(cfg); /* one for every block, not one each */
    int32_t *rnd = malloc(sizeof(int32_t) * (size_t)(cfg->random_max > 0 ? cfg->random_max : 1));
    g->off = malloc(sizeof(int64_t) * (size_t)(nb + 1));
    g->gcol = malloc(sizeof(int64_t) * (size_t)(cfg->nkv_tokens > 0 ? cfg->nkv_tokens : 1));
    g->gkind = malloc((size_t)(cfg->nkv_tokens > 0 ? cfg->nkv_tokens : 1));
    int ok = w && rnd && g->off && g->gcol && g->gkind;
    for (int64_t c = 0; ok && c < nb; c++) {
        g->off[c] = len;
        const int64_t m = spa_pattern_key_blocks_ws(cfg, h, c, w);
        const int32_t *kb = w->kb;
        int32_t r = spa_pattern_random_blocks(cfg, h, c, rnd);
        qsort(rnd, (size_t)r, sizeof *rnd, cmp_i32);
        if (len + m > cap) {
            int64_t ncap = 2 * (len + m) + 64;
            int32_t *ni = realloc(g->idx, sizeof(int32_t) * (size_t)ncap);
            if (ni) g->idx = ni;
            unsigned char *nk = realloc(g->kind, (size_t)ncap);
            if (nk) g->kind = nk;
            ok = ni && nk;
            if (!ok) break;
            cap = ncap;
        }
        for (int64_t k = 0; k < m; k++) {
            if (cfg->causal && kb[k] > c) continue; /* no pair j <= i */
            g->idx[len] = kb[k];
            g->kind[len++] = bsearch(&kb[k], rnd, (size_t)r, sizeof *rnd, cmp_i32)
                                 ? SPA_PLAN_PIX_RANDOM : SPA_PLAN_PIX_OTHER;
        }
    }
    if (ok) {
        g->off[nb] = len;
        for (int64_t t = 0; t < cfg->nkv_tokens; t++) {
            int64_t j = cfg->kv_tokens[t], b = j / cfg->block;
            if (!spa_pattern_is_gathered(cfg, h, j)) continue;
            unsigned char kind = spa_pattern_is_global(cfg, j) ? SPA_PLAN_PIX_GLOBAL : SPA_PLAN_PIX_OTHER;
            if (g->ngcol > 0 && g->gcol[g->ngcol - 1] == b) {
                g->gkind[g->ngcol - 1] |= kind;
            } else {
                g->gcol[g->ngcol] = b;
                g->gkind[g->ngcol++] = kind;
            }
        }
    }
    spa_patws_destroy(w), free(rnd);
    if (!ok) {
        graph_free(g);
        SPA_FAIL(SPA_ERR_OTHER, "out of memory for the block graph of head %d", h);
    }
    return SPA_OK;
}

spa_err spa_plan_block_mask(const spa_config *cfg, int32_t h, int64_t f, int64_t side,
                           unsigned char *pix)
{
    int64_t nb = spa_nblocks(cfg);
    SPA_CHECK(check_head(cfg, h));
    SPA_REQUIRE(f >= 1 && side == (nb + f - 1) / f, SPA_ERR_OTHER, "bad mask geometry");
    head_graph g;
    SPA_CHECK(graph_build(cfg, h, &g));
    memset(pix, 0, (size_t)(side * side));
    /* 1. the gathered columns by image column.
     * gmin[x]: smallest gathered block in column x (nb = none), gk[x] the
     * kinds there; rowall[y]: last column reached by a global row in image
     * row y (-1 = none) */
    int64_t *gmin = malloc(sizeof(int64_t) * (size_t)side);
    unsigned char *gk = calloc((size_t)side, 1);
    int64_t *rowall = malloc(sizeof(int64_t) * (size_t)side);
    if (!gk || !gmin || !rowall) {
        free(gk), free(gmin), free(rowall);
        graph_free(&g);
        SPA_FAIL(SPA_ERR_OTHER, "out of memory for the block mask");
    }
    for (int64_t x = 0; x < side; x++) gmin[x] = nb, rowall[x] = -1;
    for (int64_t k = g.ngcol - 1; k >= 0; k--) {
        gmin[g.gcol[k] / f] = g.gcol[k];
        gk[g.gcol[k] / f] |= g.gkind[k];
    }

    /* 2. each query block's local range and named blocks, and how far its
     *    global rows reach */
    for (int64_t c = 0; c < nb; c++) {
        unsigned char *row = pix + (c / f) * side;
        int64_t k0, k1;
        local_blocks(cfg, h, c, &k0, &k1);
        for (int64_t x = k0 >= 0 ? k0 / f : 0; k1 >= k0 && x <= k1 / f; x++)
            row[x] |= SPA_PLAN_PIX_LOCAL;
        for (int64_t k = g.off[c]; k < g.off[c + 1]; k++) row[g.idx[k] / f] |= g.kind[k];
        if (spa_pattern_block_has_global(cfg, c)) {
            /* a global row attends every key (causal: up to itself, block c) */
            int64_t last = (cfg->causal ? c : nb - 1) / f;
            if (last > rowall[c / f]) rowall[c / f] = last;
        }
    }
    /* 3. per image row, the gathered columns and the global rows' reach */
    for (int64_t y = 0; y < side; y++) {
        /* every row sees the gathered columns (causal: blocks <= its own) */
        int64_t cmax = (y + 1) * f - 1 < nb - 1 ? (y + 1) * f - 1 : nb - 1;
        unsigned char *row = pix + y * side;
        for (int64_t x = 0; x < side; x++)
            if (gmin[x] < nb && (!cfg->causal || gmin[x] <= cmax)) row[x] |= gk[x];
        for (int64_t x = 0; x <= rowall[y]; x++) row[x] |= SPA_PLAN_PIX_GLOBAL;
    }
    free(gk), free(gmin), free(rowall);
    graph_free(&g);
    return SPA_OK;
}

/* "Next unvisited block >= x" with path halving; nxt has nb + 1 entries. */
static int64_t next_free(int64_t *nxt, int64_t x)
{
    while (nxt[x] != x) {
        nxt[x] = nxt[nxt[x]];
        x = nxt[x];
    }
    return x;
}

typedef struct bfs_work {
    int64_t *dist, *nxt, *queue;
} bfs_work;

static void bfs_visit(bfs_work *w, int64_t b, int64_t d, int64_t *tail)
{
    w->dist[b] = d;
    w->nxt[b] = b + 1;
    w->queue[(*tail)++] = b;
}

static void bfs_range(bfs_work *w, int64_t lo, int64_t hi, int64_t d, int64_t *tail)
{
    if (lo < 0) lo = 0;
    for (int64_t b = next_free(w->nxt, lo); b <= hi; b = next_free(w->nxt, b))
        bfs_visit(w, b, d, tail);
}

/* Distances from query block s along c -> b (c attends some key of b). */
static void bfs(const spa_config *cfg, int32_t h, const head_graph *g, int64_t s, bfs_work *w)
{
    int64_t nb = g->nb, head = 0, tail = 0, gdone = 0;
    for (int64_t b = 0; b <= nb; b++) w->nxt[b] = b;
    for (int64_t b = 0; b < nb; b++) w->dist[b] = -1;
    bfs_visit(w, s, 0, &tail);
    while (head < tail) {
        int64_t c = w->queue[head++], d = w->dist[c] + 1, k0, k1;
        local_blocks(cfg, h, c, &k0, &k1);
        bfs_range(w, k0, k1, d, &tail);
        for (int64_t k = g->off[c]; k < g->off[c + 1]; k++)
            if (w->dist[g->idx[k]] < 0) bfs_visit(w, g->idx[k], d, &tail);
        /* gathered columns: sorted, and causal reach is the prefix <= c, so
         * each is pushed once over the whole BFS */
        for (; gdone < g->ngcol; gdone++) {
            int64_t b = g->gcol[gdone];
            if (cfg->causal && b > c) break;
            if (w->dist[b] < 0) bfs_visit(w, b, d, &tail);
        }
        if (spa_pattern_block_has_global(cfg, c)) bfs_range(w, 0, cfg->causal ? c : nb - 1, d, &tail);
    }
}

spa_err spa_plan_block_hops(const spa_config *cfg, int32_t h, int64_t sources, spa_plan_hops *out)
{
    int64_t nb = spa_nblocks(cfg);
    memset(out, 0, sizeof *out);
    SPA_CHECK(check_head(cfg, h));
    if (sources < 1 || sources > nb) sources = nb;
    /* 1. the block graph of head h */
    head_graph g;
    SPA_CHECK(graph_build(cfg, h, &g));
    /* 2. one BFS per root, in parallel; integer sums, so the same for any
     *    thread count */
    int64_t hmax = 0, pairs = 0, reach = 0, hist[16] = {0};
    double sum = 0;
    spa_err err = SPA_OK;
#pragma omp parallel reduction(max : hmax) reduction(+ : pairs, reach, sum)
    {
        bfs_work w;
        w.dist = malloc(sizeof(int64_t) * (size_t)nb);
        w.nxt = malloc(sizeof(int64_t) * (size_t)(nb + 1));
        w.queue = malloc(sizeof(int64_t) * (size_t)nb);
        int ok = w.dist && w.nxt && w.queue;
        int64_t lhist[16] = {0};
#pragma omp for schedule(dynamic, 1)
        for (int64_t k = 0; k < sources; k++) {
            if (!ok) continue;
            /* evenly spaced roots, centred in their stride */
            int64_t s = sources == nb ? k : (2 * k + 1) * nb / (2 * sources);
            bfs(cfg, h, &g, s, &w);
            for (int64_t b = 0; b < nb; b++) {
                if (b == s) continue;
                pairs++;
                int64_t d = w.dist[b];
                if (d < 0) continue;
                reach++;
                sum += (double)d;
                if (d > hmax) hmax = d;
                lhist[d < 15 ? d : 15]++;
            }
        }
#pragma omp critical
        {
            if (!ok) err = SPA_ERR_OTHER;
            for (int d = 0; d < 16; d++) hist[d] += lhist[d];
        }
        free(w.dist), free(w.nxt), free(w.queue);
    }
    graph_free(&g);
    SPA_REQUIRE(err == SPA_OK, SPA_ERR_OTHER, "out of memory for the hop counts");
    /* 3. the figures */
    out->sources = sources;
    out->pairs = pairs;
    out->reachable = reach;
    out->max = hmax;
    out->mean = reach > 0 ? sum / (double)reach : 0.0;
    memcpy(out->hist, hist, sizeof hist);
    return SPA_OK;
}

#ifdef SPA_HAVE_PNG
/* Writes with libpng; on a libpng error jumps back and reports it. */
static int png_write_file(FILE *fp, const unsigned char *pix, int64_t side, unsigned char *rgb)
{
    /* one colour per pixel, by priority: global, local, random, other */
    static const unsigned char white[3] = {255, 255, 255}, global[3] = {255, 127, 14},
                               local[3] = {31, 119, 180}, random[3] = {214, 39, 40},
                               other[3] = {44, 160, 44};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    if (!png) return 0;
    png_infop info = png_create_info_struct(png);
    if (!info || setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        return 0;
    }
    png_init_io(png, fp);
    png_set_IHDR(png, info, (png_uint_32)side, (png_uint_32)side, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int64_t y = 0; y < side; y++) {
        for (int64_t x = 0; x < side; x++)
        {
            unsigned p = pix[y * side + x];
            const unsigned char *c = p & SPA_PLAN_PIX_GLOBAL ? global
                                     : p & SPA_PLAN_PIX_LOCAL ? local
                                     : p & SPA_PLAN_PIX_RANDOM ? random
                                     : p & SPA_PLAN_PIX_OTHER ? other : white;
            memcpy(rgb + 3 * x, c, 3);
        }
        png_write_row(png, rgb);
    }
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return 1;
}
#endif

spa_err spa_write_png(const char *path, const unsigned char *pix, int64_t side)
{
#ifdef SPA_HAVE_PNG
    size_t len = strlen(path) + 32;
    char *tmp = malloc(len);
    unsigned char *rgb = malloc((size_t)(3 * side));
    if (!tmp || !rgb) {
        free(tmp), free(rgb);
        SPA_FAIL(SPA_ERR_OTHER, "out of memory for the image");
    }
    snprintf(tmp, len, "%s.tmp%ld", path, (long)getpid());
    FILE *fp = fopen(tmp, "wb");
    int ok = fp != NULL && png_write_file(fp, pix, side, rgb);
    if (fp && fclose(fp) != 0) ok = 0;
    if (ok && rename(tmp, path) != 0) ok = 0;
    if (!ok) remove(tmp);
    free(tmp), free(rgb);
    SPA_REQUIRE(ok, SPA_ERR_OTHER, "cannot write the image '%s'", path);
    return SPA_OK;
#else
    (void)pix, (void)side;
    SPA_FAIL(SPA_ERR_USAGE, "--image '%s': this spa was built without libpng", path);
#endif
}
