/* pattern.c - who attends whom: the exact rules of SPEC section 1.
 *
 * Pure functions of the config. The random links come from a counter-based
 * hash keyed by (seed, head, query block), so every rank draws the same
 * links for any block without communicating, and the plan is the same for
 * every rank and thread count.
 */
#include "spa_impl.h"

static inline uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t spa_rng(uint64_t seed, uint64_t head, uint64_t block, uint64_t counter)
{
    return mix64(mix64(mix64(mix64(seed) ^ head) ^ block) ^ counter);
}

/* Index of the first element >= x in sorted a[0..len). */
static int64_t lower_bound(const int64_t *a, int64_t len, int64_t x)
{
    int64_t lo = 0, hi = len;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (a[mid] < x) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

int spa_pattern_is_global(const spa_config *cfg, int64_t j)
{
    int64_t p = lower_bound(cfg->globals, cfg->nglobals, j);
    return p < cfg->nglobals && cfg->globals[p] == j;
}

int spa_pattern_block_has_global(const spa_config *cfg, int64_t b)
{
    int64_t p = lower_bound(cfg->global_blocks, cfg->nglobal_blocks, b);
    return p < cfg->nglobal_blocks && cfg->global_blocks[p] == b;
}

void spa_pattern_window(const spa_config *cfg, int64_t c, int64_t *b0, int64_t *b1)
{
    int64_t nb = spa_nblocks(cfg), B = cfg->block;
    if (cfg->radius < 0) {
        int64_t w = (cfg->local_blocks - 1) / 2;
        *b0 = c - w > 0 ? c - w : 0;
        *b1 = c + w < nb - 1 ? c + w : nb - 1;
    } else {
        int64_t lo = c * B - cfg->radius, hi = c * B + B - 1 + cfg->radius;
        if (lo < 0) lo = 0;
        if (hi > cfg->n - 1) hi = cfg->n - 1;
        *b0 = lo / B;
        *b1 = hi / B;
    }
}

void spa_pattern_local_range(const spa_config *cfg, int64_t c, int64_t *j0, int64_t *j1)
{
    int64_t B = cfg->block, n = cfg->n, end = (c + 1) * B < n ? (c + 1) * B : n;
    if (cfg->radius < 0) {
        int64_t b0, b1;
        spa_pattern_window(cfg, c, &b0, &b1);
        *j0 = b0 * B;
        *j1 = (b1 + 1) * B < n ? (b1 + 1) * B : n;
    } else {
        *j0 = c * B - cfg->radius > 0 ? c * B - cfg->radius : 0;
        *j1 = end + cfg->radius < n ? end + cfg->radius : n;
    }
    if (cfg->causal && *j1 > end) *j1 = end;
}

/* Maps k, an index into the eligible blocks in ascending order, to a block.
 * Excluded are the window [w0, w1] and the blocks holding globals. */
static int64_t kth_eligible(const spa_config *cfg, int64_t k, int64_t w0, int64_t w1)
{
    const int64_t *gb = cfg->global_blocks;
    int64_t ngb = cfg->nglobal_blocks, gi = 0, b = k;
    int range_done = 0;
    for (;;) {
        while (gi < ngb && gb[gi] >= w0 && gb[gi] <= w1) gi++; /* inside the window */
        int64_t g = gi < ngb ? gb[gi] : INT64_MAX;
        if (!range_done && w0 <= g) {
            if (w0 > b) break;
            b += w1 - w0 + 1;
            range_done = 1;
            continue;
        }
        if (g > b) break;
        b++;
        gi++;
    }
    return b;
}

/* Uniform integer in [0, bound] from the stream of (seed, h, c), by
 * Lemire's multiply-and-reject, so there is no modulo bias. */
static uint64_t draw_upto(const spa_config *cfg, int32_t h, int64_t c, uint64_t *ctr, uint64_t bound)
{
    uint64_t range = bound + 1;
    for (;;) {
        uint64_t x = spa_rng(cfg->seed, (uint64_t)h, (uint64_t)c, (*ctr)++);
        __uint128_t m = (__uint128_t)x * range;
        uint64_t lo = (uint64_t)m;
        if (lo >= range || lo >= (-range) % range) return (uint64_t)(m >> 64);
    }
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

int32_t spa_pattern_random_blocks(const spa_config *cfg, int32_t h, int64_t c, int32_t *blocks)
{
    int64_t nb = spa_nblocks(cfg), w0, w1;
    spa_pattern_window(cfg, c, &w0, &w1);
    if (cfg->causal) w1 = nb - 1; /* only blocks that end before the window begins */
    /* eligible = all blocks - excluded range - global blocks outside it */
    int64_t lo = 0, hi = cfg->nglobal_blocks;
    int64_t in_range = 0;
    for (int64_t i = lo; i < hi; i++)
        if (cfg->global_blocks[i] >= w0 && cfg->global_blocks[i] <= w1) in_range++;
    int64_t E = nb - (w1 - w0 + 1) - (cfg->nglobal_blocks - in_range);
    if (E <= 0 || cfg->random == 0) return 0;

    int32_t m = 0, R = cfg->random;
    if (E <= R) {
        for (int64_t k = 0; k < E; k++) blocks[m++] = (int32_t)kth_eligible(cfg, k, w0, w1);
        return m;
    }
    /* Floyd's algorithm: a uniform R-subset of [0, E) in exactly R steps. */
    uint64_t ctr = 0;
    int64_t pick[R > 0 ? R : 1];
    for (int64_t j = E - R; j < E; j++) {
        int64_t t = (int64_t)draw_upto(cfg, h, c, &ctr, (uint64_t)j), dup = 0;
        for (int32_t q = 0; q < m; q++) dup |= pick[q] == t;
        pick[m++] = dup ? j : t;
    }
    for (int32_t q = 0; q < m; q++) blocks[q] = (int32_t)kth_eligible(cfg, pick[q], w0, w1);
    qsort(blocks, (size_t)m, sizeof *blocks, cmp_i32);
    return m;
}

int spa_pattern_attends(const spa_config *cfg, int32_t h, int64_t i, int64_t j)
{
    if (cfg->causal && j > i) return 0;
    if (spa_pattern_is_global(cfg, i) || spa_pattern_is_global(cfg, j)) return 1;
    int64_t B = cfg->block, ci = i / B, cj = j / B;
    if (cfg->radius < 0) {
        int64_t w = (cfg->local_blocks - 1) / 2, d = ci > cj ? ci - cj : cj - ci;
        if (d <= w) return 1;
    } else if ((i > j ? i - j : j - i) <= cfg->radius) {
        return 1;
    }
    int32_t rb[cfg->random > 0 ? cfg->random : 1];
    int32_t m = spa_pattern_random_blocks(cfg, h, ci, rb);
    for (int32_t q = 0; q < m; q++)
        if (rb[q] == cj) return 1;
    return 0;
}

/* Globals in [a, b). */
static int64_t globals_in(const spa_config *cfg, int64_t a, int64_t b)
{
    if (b <= a) return 0;
    return lower_bound(cfg->globals, cfg->nglobals, b) - lower_bound(cfg->globals, cfg->nglobals, a);
}

void spa_pattern_block_keys(const spa_config *cfg, int32_t h, int64_t c, int64_t *counts)
{
    const int64_t n = cfg->n, B = cfg->block, t0 = c * B, t1 = t0 + B < n ? t0 + B : n;
    int32_t rb[cfg->random > 0 ? cfg->random : 1];
    int32_t m = spa_pattern_random_blocks(cfg, h, c, rb);
    int64_t w0, w1;
    spa_pattern_window(cfg, c, &w0, &w1);
    for (int64_t i = t0; i < t1; i++) {
        int64_t lim = cfg->causal ? i + 1 : n; /* keys j < lim */
        if (spa_pattern_is_global(cfg, i)) {
            counts[i - t0] = lim;
            continue;
        }
        int64_t a, b; /* local keys [a, b) */
        if (cfg->radius < 0) {
            a = w0 * B;
            b = (w1 + 1) * B < n ? (w1 + 1) * B : n;
        } else {
            a = i - cfg->radius > 0 ? i - cfg->radius : 0;
            b = i + cfg->radius + 1 < n ? i + cfg->radius + 1 : n;
        }
        if (b > lim) b = lim;
        if (b < a) b = a;
        /* globals outside [a, b), then the drawn blocks minus what [a, b)
         * and the globals already count: a key counts once */
        int64_t keys = (b - a) + globals_in(cfg, 0, lim) - globals_in(cfg, a, b);
        for (int32_t q = 0; q < m; q++) {
            int64_t r0 = (int64_t)rb[q] * B, r1 = r0 + B < n ? r0 + B : n;
            if (r1 > lim) r1 = lim;
            if (r1 <= r0) continue;
            int64_t o0 = r0 > a ? r0 : a, o1 = r1 < b ? r1 : b;
            if (o1 < o0) o1 = o0;
            keys += (r1 - r0) - (o1 - o0) - (globals_in(cfg, r0, r1) - globals_in(cfg, o0, o1));
        }
        counts[i - t0] = keys;
    }
}

int64_t spa_pattern_pairs(const spa_config *cfg, int32_t h, int64_t c0, int64_t c1)
{
    int64_t total = 0, *counts = malloc((size_t)cfg->block * sizeof *counts);
    if (!counts) return -1;
    for (int64_t c = c0; c < c1; c++) {
        spa_pattern_block_keys(cfg, h, c, counts);
        int64_t rows = (c + 1) * cfg->block < cfg->n ? cfg->block : cfg->n - c * cfg->block;
        for (int64_t r = 0; r < rows; r++) total += counts[r];
    }
    free(counts);
    return total;
}
