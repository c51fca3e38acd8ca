/* pattern.c - who attends whom: the exact rules of SPEC section 1.
 *
 * Pure functions of the config. The random links come from a counter-based
 * hash keyed by (seed, head, query block), so every rank draws the same
 * links for any block without communicating, and the plan is the same for
 * every rank and thread count.
 */
#include "spa_impl.h"

#include <string.h>
#include <sys/mman.h>

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

int64_t spa_lower_bound(const int64_t *a, int64_t len, int64_t x)
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
    int64_t p = spa_lower_bound(cfg->globals, cfg->nglobals, j);
    return p < cfg->nglobals && cfg->globals[p] == j;
}

int spa_pattern_block_has_global(const spa_config *cfg, int64_t b)
{
    int64_t p = spa_lower_bound(cfg->global_blocks, cfg->nglobal_blocks, b);
    return p < cfg->nglobal_blocks && cfg->global_blocks[p] == b;
}

static inline int is_summary(const spa_head_rules *hr, int64_t j)
{
    return hr->sum_l && j % hr->sum_l >= hr->sum_l - hr->sum_c;
}

int spa_pattern_is_gathered(const spa_config *cfg, int32_t h, int64_t j)
{
    return is_summary(&cfg->hr[h], j) || spa_pattern_is_global(cfg, j);
}

/* Summary columns of hr in [0, x). */
static int64_t summary_below(const spa_head_rules *hr, int64_t x)
{
    if (!hr->sum_l || x <= 0) return 0;
    int64_t r = x % hr->sum_l - (hr->sum_l - hr->sum_c);
    return x / hr->sum_l * hr->sum_c + (r > 0 ? r : 0);
}

/* Gathered tokens of head h (G and its summary columns) in [a, b). */
int64_t spa_pattern_gathered_in(const spa_config *cfg, int32_t h, int64_t a, int64_t b)
{
    if (b <= a) return 0;
    const spa_head_rules *hr = &cfg->hr[h];
    int64_t g0 = spa_lower_bound(cfg->globals, cfg->nglobals, a), g1 = spa_lower_bound(cfg->globals, cfg->nglobals, b);
    int64_t cnt = g1 - g0;
    if (hr->sum_l) {
        cnt += summary_below(hr, b) - summary_below(hr, a);
        for (int64_t g = g0; g < g1; g++) cnt -= is_summary(hr, cfg->globals[g]); /* counted twice */
    }
    return cnt;
}

static inline int has_local(const spa_head_rules *hr) { return hr->radius >= 0 || hr->local_blocks > 0; }

void spa_pattern_window(const spa_config *cfg, int32_t h, int64_t c, int64_t *b0, int64_t *b1)
{
    const spa_head_rules *hr = &cfg->hr[h];
    int64_t nb = spa_nblocks(cfg), B = cfg->block;
    if (hr->radius >= 0) {
        int64_t lo = c * B - hr->radius, hi = c * B + B - 1 + hr->radius;
        if (lo < 0) lo = 0;
        if (hi > cfg->n - 1) hi = cfg->n - 1;
        *b0 = lo / B;
        *b1 = hi / B;
    } else if (hr->local_blocks > 0) {
        int64_t w = (hr->local_blocks - 1) / 2;
        *b0 = c - w > 0 ? c - w : 0;
        *b1 = c + w < nb - 1 ? c + w : nb - 1;
    } else { /* no local rule: the random rule's window is the block alone */
        *b0 = *b1 = c;
    }
}

void spa_pattern_local_range(const spa_config *cfg, int32_t h, int64_t c, int64_t *j0, int64_t *j1)
{
    const spa_head_rules *hr = &cfg->hr[h];
    int64_t B = cfg->block, n = cfg->n, end = spa_block_end(cfg, c);
    if (hr->radius >= 0) {
        *j0 = c * B - hr->radius > 0 ? c * B - hr->radius : 0;
        *j1 = end + hr->radius < n ? end + hr->radius : n;
    } else if (hr->local_blocks > 0) {
        int64_t b0, b1;
        spa_pattern_window(cfg, h, c, &b0, &b1);
        *j0 = b0 * B;
        *j1 = spa_block_end(cfg, b1);
    } else {
        *j0 = *j1 = c * B;
        return;
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

/* Ascending order: insertion sort for the few blocks of a typical row
 * (qsort's call per comparison cost a quarter of `spa plan`'s time), qsort
 * beyond. The same order either way. */
static void sort_i32(int32_t *a, int64_t n)
{
    if (n > 32) {
        qsort(a, (size_t)n, sizeof *a, cmp_i32);
        return;
    }
    for (int64_t i = 1; i < n; i++) {
        const int32_t x = a[i];
        int64_t j = i;
        for (; j > 0 && a[j - 1] > x; j--) a[j] = a[j - 1];
        a[j] = x;
    }
}

int32_t spa_pattern_random_blocks(const spa_config *cfg, int32_t h, int64_t c, int32_t *blocks)
{
    int64_t nb = spa_nblocks(cfg), w0, w1;
    spa_pattern_window(cfg, h, c, &w0, &w1);
    if (cfg->causal) w1 = nb - 1; /* only blocks that end before the window begins */
    /* eligible = all blocks - excluded range - global blocks outside it */
    int64_t in_range = 0;
    for (int64_t i = 0; i < cfg->nglobal_blocks; i++)
        if (cfg->global_blocks[i] >= w0 && cfg->global_blocks[i] <= w1) in_range++;
    int64_t E = nb - (w1 - w0 + 1) - (cfg->nglobal_blocks - in_range);
    int32_t m = 0, R = cfg->hr[h].random;
    if (E <= 0 || R == 0) return 0;
    if (E <= R) {
        for (int64_t k = 0; k < E; k++) blocks[m++] = (int32_t)kth_eligible(cfg, k, w0, w1);
        return m;
    }
    /* Floyd's algorithm: a uniform R-subset of [0, E) in exactly R steps. */
    uint64_t ctr = 0;
    int64_t pick[R];
    for (int64_t j = E - R; j < E; j++) {
        int64_t t = (int64_t)draw_upto(cfg, h, c, &ctr, (uint64_t)j), dup = 0;
        for (int32_t q = 0; q < m; q++) dup |= pick[q] == t;
        pick[m++] = dup ? j : t;
    }
    for (int32_t q = 0; q < m; q++) blocks[q] = (int32_t)kth_eligible(cfg, pick[q], w0, w1);
    sort_i32(blocks, m);
    return m;
}

/* The layout row of (h, c): idx[*k0 .. *k1). */
static void layout_row(const spa_config *cfg, int32_t h, int64_t c, int64_t *k0, int64_t *k1)
{
    const spa_layout *l = &cfg->layout;
    if (l->heads == 0) {
        *k0 = *k1 = 0;
        return;
    }
    int64_t r = (l->heads == 1 ? 0 : (int64_t)h) * l->nb + c;
    *k0 = l->off[r];
    *k1 = l->off[r + 1];
}

#define dil_sel spa_dil_sel
#define dil_pair spa_dil_pair

int spa_pattern_attends(const spa_config *cfg, int32_t h, int64_t i, int64_t j)
{
    /* Straight from SPEC 1 and 1.1, rule by rule; the oracle of the tests. */
    const spa_head_rules *hr = &cfg->hr[h];
    const int64_t B = cfg->block, ci = i / B, cj = j / B;
    if (cfg->causal && j > i) return 0;
    if (spa_pattern_is_global(cfg, i) || spa_pattern_is_global(cfg, j)) return 1;
    if (hr->local_blocks > 0 && (ci > cj ? ci - cj : cj - ci) <= (hr->local_blocks - 1) / 2) return 1;
    if (hr->radius >= 0 && (i > j ? i - j : j - i) <= hr->radius) return 1;
    if (is_summary(hr, j)) return 1;
    if (hr->stride && (i - j) % hr->stride == 0) return 1;
    for (int p = 0; p < hr->ndilated; p++)
        if (dil_pair(hr, p, h, i, j)) return 1;
    int64_t k0, k1;
    layout_row(cfg, h, ci, &k0, &k1);
    for (int64_t k = k0; k < k1; k++)
        if (cfg->layout.idx[k] == cj) return 1;
    int32_t rb[hr->random > 0 ? hr->random : 1];
    int32_t m = spa_pattern_random_blocks(cfg, h, ci, rb);
    for (int32_t q = 0; q < m; q++)
        if (rb[q] == cj) return 1;
    return 0;
}

/* ------------------------------------------------------- key blocks */

/* A workspace's arrays have a slot per block of the whole sequence, of
 * which one call touches the blocks of one row (mark) or its first few
 * slots (kb, kfull). They are mapped, zero pages that cost no memory until
 * touched: malloc and calloc may hand out pages touched before, or clear
 * them all. A kernel thread holds two workspaces for the whole run, and
 * the simulator (docs/smpi.md) one set per simulated rank. */
static void *ws_map(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void ws_unmap(void *p, size_t bytes)
{
    if (p) munmap(p, bytes);
}

spa_patws *spa_patws_create(const spa_config *cfg)
{
    spa_patws *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    const int64_t nb = spa_nblocks(cfg) > 0 ? spa_nblocks(cfg) : 1;
    w->nb = nb;
    w->kb = ws_map((size_t)nb * sizeof *w->kb);
    w->kfull = ws_map((size_t)nb);
    w->mark = ws_map((size_t)nb); /* zero */
    w->rb = malloc((size_t)(cfg->random_max + 1) * sizeof *w->rb);
    if (!w->kb || !w->kfull || !w->mark || !w->rb) {
        spa_patws_destroy(w);
        return NULL;
    }
    return w;
}

void spa_patws_destroy(spa_patws *w)
{
    if (!w) return;
    ws_unmap(w->kb, (size_t)w->nb * sizeof *w->kb);
    ws_unmap(w->kfull, (size_t)w->nb);
    ws_unmap(w->mark, (size_t)w->nb);
    free(w->rb);
    free(w);
}

/* Marks block b with flag (1 partial, 2 full), listing it the first time. */
static inline void mark_block(spa_patws *w, int64_t b, unsigned char flag)
{
    if (!w->mark[b]) w->kb[w->nkb++] = (int32_t)b;
    w->mark[b] |= flag;
}

/* Blocks of the tokens [lo, hi] (inclusive, clipped to the sequence) that
 * hold a token not gathered for head h: the others bring nothing. */
static void mark_tokens(spa_patws *w, const spa_config *cfg, int32_t h, int64_t lo, int64_t hi)
{
    const int64_t B = cfg->block;
    if (lo < 0) lo = 0;
    if (hi > cfg->n - 1) hi = cfg->n - 1;
    for (int64_t b = lo / B; lo <= hi && b <= hi / B; b++) {
        int64_t a = b * B > lo ? b * B : lo, e = (b + 1) * B < hi + 1 ? (b + 1) * B : hi + 1;
        if (!w->mark[b] && spa_pattern_gathered_in(cfg, h, a, e) < e - a) mark_block(w, b, 1);
    }
}

/* Strided keys of the rows [u0, u1): j = i - kS. */
static void mark_strided(spa_patws *w, const spa_config *cfg, int32_t h, int64_t u0, int64_t u1)
{
    const int64_t S = cfg->hr[h].stride, n = cfg->n, last = cfg->causal ? u1 - 1 : n - 1;
    if (u1 - u0 >= S) {
        mark_tokens(w, cfg, h, 0, last);
        return;
    }
    int64_t kmin = cfg->causal ? 0 : -((n - 1 - u0) / S) - 1, kmax = (u1 - 1) / S + 1;
    for (int64_t k = kmax; k >= kmin; k--) {
        int64_t lo = u0 - k * S, hi = u1 - 1 - k * S;
        if (hi > last) hi = last;
        if (hi >= 0 && lo <= hi) mark_tokens(w, cfg, h, lo, hi);
    }
}

/* Dilated pair p: the selected keys of every segment that holds a selected
 * non-global row of [t0, t1). */
static void mark_dilated(spa_patws *w, const spa_config *cfg, int32_t h, int p, int64_t t0, int64_t t1)
{
    const spa_head_rules *hr = &cfg->hr[h];
    const int64_t B = cfg->block, n = cfg->n, sw = hr->dil_w[p], r = hr->dil_r[p], off = (int64_t)h % r;
    for (int64_t sg = t0 / sw; sg <= (t1 - 1) / sw; sg++) {
        int64_t a = sg * sw, e = a + sw < n ? a + sw : n, imax = -1;
        for (int64_t i = (t0 > a ? t0 : a); i < t1 && i < e; i++)
            if (spa_dil_sel(hr, p, h, i) && !spa_pattern_is_global(cfg, i)) imax = i;
        if (imax < 0) continue;
        int64_t hi = cfg->causal ? imax : e - 1;
        for (int64_t j = a + off; j <= hi; j += r) { /* selected keys */
            if (w->mark[j / B]) { /* listed: go on at the next block's first selected key */
                int64_t next = (j / B + 1) * B;
                j = a + off + (next - a - off + r - 1) / r * r - r;
                continue;
            }
            if (!spa_pattern_is_gathered(cfg, h, j)) mark_block(w, j / B, 1);
        }
    }
}

/* The key blocks of (h, c); with full_only, the random and layout blocks
 * alone (what the block pass and the token rule need). */
static int64_t key_blocks(const spa_config *cfg, int32_t h, int64_t c, spa_patws *w, int full_only)
{
    const spa_head_rules *hr = &cfg->hr[h];
    const int64_t B = cfg->block, t0 = c * B, t1 = spa_block_end(cfg, c);
    w->nkb = 0;
    /* full blocks: random and layout */
    int32_t m = spa_pattern_random_blocks(cfg, h, c, w->rb);
    for (int32_t q = 0; q < m; q++) mark_block(w, w->rb[q], 2);
    int64_t k0, k1;
    layout_row(cfg, h, c, &k0, &k1);
    for (int64_t k = k0; k < k1; k++)
        if (!cfg->causal || cfg->layout.idx[k] <= c) mark_block(w, cfg->layout.idx[k], 2);
    /* strided: over the runs of non-global rows (global rows take the
     * spread path and need no key brought) */
    if (hr->stride && !full_only) {
        int64_t g = spa_lower_bound(cfg->globals, cfg->nglobals, t0), u0 = t0;
        for (;;) {
            int64_t u1 = g < cfg->nglobals && cfg->globals[g] < t1 ? cfg->globals[g] : t1;
            if (u1 > u0) mark_strided(w, cfg, h, u0, u1);
            if (u1 == t1) break;
            u0 = u1 + 1, g++;
        }
    }
    for (int p = 0; p < hr->ndilated && !full_only; p++) mark_dilated(w, cfg, h, p, t0, t1);
    sort_i32(w->kb, w->nkb);
    for (int64_t k = 0; k < w->nkb; k++) {
        w->kfull[k] = w->mark[w->kb[k]] >= 2;
        w->mark[w->kb[k]] = 0;
    }
    return w->nkb;
}

int64_t spa_pattern_key_blocks_ws(const spa_config *cfg, int32_t h, int64_t c, spa_patws *w)
{
    return key_blocks(cfg, h, c, w, 0);
}

int64_t spa_pattern_key_blocks(const spa_config *cfg, int32_t h, int64_t c, int32_t *blocks, unsigned char *full)
{
    spa_patws *w = spa_patws_create(cfg);
    if (!w) return -1;
    int64_t m = spa_pattern_key_blocks_ws(cfg, h, c, w);
    memcpy(blocks, w->kb, (size_t)m * sizeof *blocks);
    memcpy(full, w->kfull, (size_t)m);
    spa_patws_destroy(w);
    return m;
}

int spa_pattern_spread_ws(const spa_config *cfg, int32_t h, int64_t c, spa_patws *w)
{
    const int64_t nb = spa_nblocks(cfg);
    if (nb < SPA_SPREAD_MIN_BLOCKS) return 0;
    int64_t m = spa_pattern_key_blocks_ws(cfg, h, c, w), w0 = 0, w1 = -1, cnt = 0;
    if (has_local(&cfg->hr[h])) spa_pattern_window(cfg, h, c, &w0, &w1);
    if (cfg->causal && w1 > c) w1 = c; /* no key after the block is attended */
    for (int64_t k = 0; k < m; k++) cnt += w->kb[k] < w0 || w->kb[k] > w1;
    cnt += w1 - w0 + 1;
    return 2 * cnt > nb;
}

int spa_pattern_served_ws(const spa_config *cfg, int32_t h, int64_t c, spa_patws *w)
{
    const int64_t B = cfg->block, t0 = c * B, t1 = spa_block_end(cfg, c);
    int64_t g0 = spa_lower_bound(cfg->globals, cfg->nglobals, t0), g1 = spa_lower_bound(cfg->globals, cfg->nglobals, t1);
    return g1 - g0 == t1 - t0 || spa_pattern_spread_ws(cfg, h, c, w);
}

int spa_pattern_spread(const spa_config *cfg, int32_t h, int64_t c)
{
    spa_patws *w = spa_patws_create(cfg);
    if (!w) return 0;
    int r = spa_pattern_spread_ws(cfg, h, c, w);
    spa_patws_destroy(w);
    return r;
}

/* ------------------------------------------------------- the row rule */

void spa_rowctx_init(spa_rowctx *x, const spa_config *cfg, int32_t h, int64_t c, spa_patws *w)
{
    const int64_t B = cfg->block;
    x->cfg = cfg;
    x->hr = &cfg->hr[h];
    x->h = h;
    x->c = c;
    x->t0 = c * B;
    x->t1 = spa_block_end(cfg, c);
    spa_pattern_local_range(cfg, h, c, &x->j0, &x->j1);
    x->nkb = key_blocks(cfg, h, c, w, 1);
    x->kb = w->kb;
    x->kfull = w->kfull;
    x->wh = x->hr->local_blocks > 0 && x->hr->radius < 0 ? (x->hr->local_blocks - 1) / 2 : -1;
    x->residue = x->hr->stride || x->hr->ndilated;
}

/* Index of block b in the key blocks, or -1. */
int64_t spa_rowctx_find(const spa_rowctx *x, int64_t b)
{
    int64_t lo = 0, hi = x->nkb;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (x->kb[mid] < b) lo = mid + 1;
        else hi = mid;
    }
    return lo < x->nkb && x->kb[lo] == b ? lo : -1;
}

int spa_rowctx_attends(const spa_rowctx *x, int64_t i, int64_t j)
{
    const spa_config *cfg = x->cfg;
    if (cfg->causal && j > i) return 0;
    if (spa_pattern_is_global(cfg, i) || spa_pattern_is_gathered(cfg, x->h, j)) return 1;
    int64_t k = spa_rowctx_find(x, j / cfg->block);
    if (k >= 0 && x->kfull[k]) return 1;
    return spa_rowctx_residue(x, i, j);
}

/* ------------------------------------------------------- counts */

void spa_pattern_block_keys(const spa_config *cfg, int32_t h, int64_t c, int64_t *counts)
{
    spa_patws *w = spa_patws_create(cfg);
    if (!w) {
        memset(counts, 0, (size_t)cfg->block * sizeof *counts);
        return;
    }
    spa_pattern_block_keys_ws(cfg, h, c, counts, w);
    spa_patws_destroy(w);
}

/* First index >= k whose key block is >= b, and first global >= j. */
static inline int64_t walk_kb(const spa_rowctx *x, int64_t k, int64_t b)
{
    while (k < x->nkb && x->kb[k] < b) k++;
    return k;
}
static inline int64_t walk_g(const spa_config *cfg, int64_t g, int64_t j)
{
    while (g < cfg->nglobals && cfg->globals[g] < j) g++;
    return g;
}

void spa_pattern_block_keys_ws(const spa_config *cfg, int32_t h, int64_t c, int64_t *counts, spa_patws *w)
{
    spa_rowctx x;
    spa_rowctx_init(&x, cfg, h, c, w);
    const spa_head_rules *hr = x.hr;
    const int64_t n = cfg->n, B = cfg->block;
    for (int64_t i = x.t0; i < x.t1; i++) {
        int64_t lim = cfg->causal ? i + 1 : n; /* keys j < lim */
        if (spa_pattern_is_global(cfg, i)) {
            counts[i - x.t0] = lim;
            continue;
        }
        /* 1. local keys [a, b) */
        int64_t a = 0, b = 0;
        if (hr->radius >= 0) {
            a = i - hr->radius > 0 ? i - hr->radius : 0;
            b = i + hr->radius + 1 < n ? i + hr->radius + 1 : n;
        } else if (hr->local_blocks > 0) {
            a = x.j0, b = x.j1;
        }
        if (b > lim) b = lim;
        if (b < a) b = a;
        /* 2. gathered keys outside [a, b) */
        int64_t keys = (b - a) + spa_pattern_gathered_in(cfg, h, 0, lim) - spa_pattern_gathered_in(cfg, h, a, b);
        /* 3. full blocks, minus [a, b) and the gathered keys */
        for (int64_t k = 0; k < x.nkb; k++) {
            if (!x.kfull[k]) continue;
            int64_t r0 = (int64_t)x.kb[k] * B, r1 = spa_block_end(cfg, x.kb[k]);
            if (r1 > lim) r1 = lim;
            if (r1 <= r0) continue;
            int64_t o0 = r0 > a ? r0 : a, o1 = r1 < b ? r1 : b;
            if (o1 < o0) o1 = o0;
            keys += (r1 - r0) - (o1 - o0) - (spa_pattern_gathered_in(cfg, h, r0, r1) - spa_pattern_gathered_in(cfg, h, o0, o1));
        }
        /* 4. strided and dilated keys that none of the above holds; the
         *    keys come in ascending order, so the full blocks and the
         *    globals are walked, not searched */
        if (x.residue) {
            int64_t kp = 0, gp = 0;
#define SPA_NEW_KEY(j)                                                                                             \
    (!((j) >= a && (j) < b) && !is_summary(hr, (j)) &&                                                            \
     !((kp = walk_kb(&x, kp, (j) / B)) < x.nkb && x.kb[kp] == (j) / B && x.kfull[kp]) &&                           \
     !((gp = walk_g(cfg, gp, (j))) < cfg->nglobals && cfg->globals[gp] == (j)))
            if (hr->stride)
                for (int64_t j = i % hr->stride; j < lim; j += hr->stride) keys += SPA_NEW_KEY(j);
            for (int p = 0; p < hr->ndilated; p++) {
                const int64_t sw = hr->dil_w[p], r = hr->dil_r[p];
                if (!dil_sel(hr, p, h, i)) continue;
                int64_t sa = i / sw * sw, se = sa + sw < lim ? sa + sw : lim;
                kp = gp = 0;
                for (int64_t j = sa + (int64_t)h % r; j < se; j += r) {
                    if (!SPA_NEW_KEY(j) || (hr->stride && (i - j) % hr->stride == 0)) continue;
                    int dup = 0;
                    for (int q = 0; q < p && !dup; q++) dup = dil_pair(hr, q, h, i, j);
                    keys += !dup;
                }
            }
#undef SPA_NEW_KEY
        }
        counts[i - x.t0] = keys;
    }
}

int64_t spa_pattern_pairs(const spa_config *cfg, int32_t h, int64_t c0, int64_t c1)
{
    int64_t total = 0, *counts = malloc((size_t)cfg->block * sizeof *counts);
    spa_patws *w = spa_patws_create(cfg);
    if (!counts || !w) {
        free(counts);
        spa_patws_destroy(w);
        return -1;
    }
    for (int64_t c = c0; c < c1; c++) {
        spa_pattern_block_keys_ws(cfg, h, c, counts, w);
        int64_t rows = spa_block_end(cfg, c) - c * cfg->block;
        for (int64_t r = 0; r < rows; r++) total += counts[r];
    }
    free(counts);
    spa_patws_destroy(w);
    return total;
}

/* ------------------------------------------------------- export */

int spa_pattern_export_row(const spa_config *cfg, int32_t h, int64_t c, int32_t *full, int64_t *nfull,
                           int32_t *part, int64_t *npart)
{
    const int64_t B = cfg->block, nb = spa_nblocks(cfg);
    spa_patws *w = spa_patws_create(cfg);
    unsigned char *cand = calloc((size_t)nb, 1);
    if (!w || !cand) {
        spa_patws_destroy(w);
        free(cand);
        return -1;
    }
    spa_rowctx x;
    spa_rowctx_init(&x, cfg, h, c, w);
    *nfull = *npart = 0;
    /* candidate key blocks: everything when a row is global, else the
     * window, the key blocks and the blocks of gathered keys */
    int any_global = 0;
    for (int64_t i = x.t0; i < x.t1 && !any_global; i++) any_global = spa_pattern_is_global(cfg, i);
    if (any_global) {
        memset(cand, 1, (size_t)nb);
    } else {
        if (x.j1 > x.j0)
            for (int64_t b = x.j0 / B; b <= (x.j1 - 1) / B; b++) cand[b] = 1;
        spa_patws *all = spa_patws_create(cfg); /* every key block, not only the full ones */
        if (!all) {
            spa_patws_destroy(w);
            free(cand);
            return -1;
        }
        int64_t m = spa_pattern_key_blocks_ws(cfg, h, c, all);
        for (int64_t k = 0; k < m; k++) cand[all->kb[k]] = 1;
        spa_patws_destroy(all);
        for (int64_t g = 0; g < cfg->nkv_tokens; g++)
            if (spa_pattern_is_gathered(cfg, h, cfg->kv_tokens[g])) cand[cfg->kv_tokens[g] / B] = 1;
    }
    for (int64_t b = 0; b < nb; b++) {
        if (!cand[b]) continue;
        int64_t r0 = b * B, r1 = spa_block_end(cfg, b), hit = 0;
        for (int64_t i = x.t0; i < x.t1; i++)
            for (int64_t j = r0; j < r1; j++) hit += spa_rowctx_attends(&x, i, j);
        if (hit == (x.t1 - x.t0) * (r1 - r0)) full[(*nfull)++] = (int32_t)b;
        else if (hit) part[(*npart)++] = (int32_t)b;
    }
    spa_patws_destroy(w);
    free(cand);
    return 0;
}
