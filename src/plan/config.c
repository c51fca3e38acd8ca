/* config.c - the pattern parameters, their validation, and the globals list.
 *
 * Validation runs on every rank with the same flags, before any collective,
 * so every rank fails the same way without communicating.
 */
#include "spa_impl.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <string.h>

void spa_config_init(spa_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->n = 131072;
    cfg->heads = 4;
    cfg->dim = 64;
    cfg->block = 64;
    cfg->local_blocks = 3;
    cfg->radius = -1;
    cfg->random = 3;
    cfg->seed = 0;
    cfg->causal = 0;
    cfg->scale = 0.0f;
    cfg->fetch_bytes = SPA_FETCH_BYTES_DEFAULT;
}

spa_err spa_config_set_globals(spa_config *cfg, const char *spec)
{
    free(cfg->globals_spec);
    cfg->globals_spec = NULL;
    if (spec == NULL) return SPA_OK;
    cfg->globals_spec = strdup(spec);
    SPA_REQUIRE(cfg->globals_spec != NULL, SPA_ERR_OTHER, "out of memory");
    return SPA_OK;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Parses one non-negative decimal integer that spans [s, e). */
static int parse_index(const char *s, const char *e, int64_t *v)
{
    if (s == e) return 0;
    int64_t x = 0;
    for (const char *p = s; p < e; p++) {
        if (!isdigit((unsigned char)*p)) return 0;
        if (x > (INT64_MAX - 9) / 10) return 0;
        x = 10 * x + (*p - '0');
    }
    *v = x;
    return 1;
}

spa_err spa_parse_globals(const char *spec, int64_t n, int64_t **out, int64_t *count)
{
    *out = NULL;
    *count = 0;
    SPA_REQUIRE(spec != NULL && *spec != '\0', SPA_ERR_USAGE, "--globals: empty list");
    if (strcmp(spec, "none") == 0) return SPA_OK;

    /* Pass 1 validates and counts, pass 2 fills: a range a:b expands to b-a
     * indices, all within [0, n), so the total is bounded by the sum. */
    int64_t total = 0;
    for (int pass = 0; pass < 2; pass++) {
        int64_t k = 0;
        const char *p = spec;
        for (;;) {
            const char *e = strchr(p, ',');
            if (!e) e = p + strlen(p);
            const char *colon = memchr(p, ':', (size_t)(e - p));
            int64_t a, b;
            if (colon) {
                SPA_REQUIRE(parse_index(p, colon, &a) && parse_index(colon + 1, e, &b), SPA_ERR_USAGE,
                            "--globals: malformed range '%.*s' (expected a:b)", (int)(e - p), p);
                SPA_REQUIRE(a < b, SPA_ERR_USAGE, "--globals: empty or reversed range '%.*s'",
                            (int)(e - p), p);
            } else {
                SPA_REQUIRE(parse_index(p, e, &a), SPA_ERR_USAGE,
                            "--globals: malformed index '%.*s'", (int)(e - p), p);
                b = a + 1;
            }
            SPA_REQUIRE(b <= n, SPA_ERR_USAGE, "--globals: index %lld is outside [0, %lld)",
                        (long long)(b - 1), (long long)n);
            if (pass == 0) total += b - a;
            else
                for (int64_t j = a; j < b; j++) (*out)[k++] = j;
            if (*e == '\0') break;
            p = e + 1;
        }
        if (pass == 0) {
            *out = malloc((size_t)(total > 0 ? total : 1) * sizeof **out);
            SPA_REQUIRE(*out != NULL, SPA_ERR_OTHER, "out of memory");
        }
    }
    qsort(*out, (size_t)total, sizeof **out, cmp_i64);
    int64_t u = 0;
    for (int64_t i = 0; i < total; i++)
        if (u == 0 || (*out)[u - 1] != (*out)[i]) (*out)[u++] = (*out)[i];
    *count = u;
    return SPA_OK;
}

static const char *const rule_flag[SPA_RULE_COUNT] = {"--local-blocks", "--radius", "--random",
                                                      "--stride", "--summary", "--dilated"};

spa_err spa_config_add_rule(spa_config *cfg, spa_rule rule, const char *value)
{
    SPA_REQUIRE(rule >= 0 && rule < SPA_RULE_COUNT, SPA_ERR_USAGE, "unknown rule %d", (int)rule);
    SPA_REQUIRE(value && *value && !strchr(value, ';'), SPA_ERR_USAGE, "%s: empty or malformed value",
                rule_flag[rule]);
    char *old = cfg->rule_spec[rule];
    size_t a = old ? strlen(old) + 1 : 0, b = strlen(value);
    char *s = malloc(a + b + 1);
    SPA_REQUIRE(s, SPA_ERR_OTHER, "out of memory");
    if (old) memcpy(s, old, a - 1), s[a - 1] = ';';
    memcpy(s + a, value, b + 1);
    free(old);
    cfg->rule_spec[rule] = s;
    return SPA_OK;
}

/* Parses a decimal integer that spans [s, e) exactly, with an optional
 * leading '-' (so that "-3" is reported as out of range, not malformed). */
static int parse_int(const char *s, const char *e, int64_t *v)
{
    int neg = s < e && *s == '-';
    int64_t x;
    if (!parse_index(s + neg, e, &x)) return 0;
    *v = neg ? -x : x;
    return 1;
}

/* One value of a rule (the text before any @), into hr. */
static spa_err parse_rule_value(spa_rule rule, const char *s, const char *e, spa_head_rules *hr)
{
    const char *flag = rule_flag[rule];
    int64_t x = 0, y = 0;
    const char *colon = memchr(s, ':', (size_t)(e - s));
    switch (rule) {
    case SPA_RULE_LOCAL_BLOCKS:
        SPA_REQUIRE(parse_int(s, e, &x), SPA_ERR_USAGE, "%s: '%.*s' is not an integer", flag, (int)(e - s), s);
        SPA_REQUIRE(x == 0 || (x >= 1 && x % 2 == 1 && x < INT32_MAX), SPA_ERR_USAGE,
                    "%s must be odd and >= 1, or 0 (got %.*s)", flag, (int)(e - s), s);
        hr->local_blocks = (int32_t)x;
        break;
    case SPA_RULE_RADIUS:
        SPA_REQUIRE(parse_int(s, e, &x), SPA_ERR_USAGE, "%s: '%.*s' is not an integer", flag, (int)(e - s), s);
        SPA_REQUIRE(x >= 0, SPA_ERR_USAGE, "%s must be >= 0 (got %.*s)", flag, (int)(e - s), s);
        hr->radius = x;
        break;
    case SPA_RULE_RANDOM:
        SPA_REQUIRE(parse_int(s, e, &x), SPA_ERR_USAGE, "%s: '%.*s' is not an integer", flag, (int)(e - s), s);
        SPA_REQUIRE(x >= 0 && x < (1 << 20), SPA_ERR_USAGE, "%s must be in [0, 2^20) (got %.*s)", flag,
                    (int)(e - s), s);
        hr->random = (int32_t)x;
        break;
    case SPA_RULE_STRIDE:
        SPA_REQUIRE(parse_int(s, e, &x), SPA_ERR_USAGE, "%s: '%.*s' is not an integer", flag, (int)(e - s), s);
        SPA_REQUIRE(x >= 2, SPA_ERR_USAGE, "%s must be >= 2 (got %.*s)", flag, (int)(e - s), s);
        hr->stride = x;
        break;
    case SPA_RULE_SUMMARY:
        SPA_REQUIRE(colon && parse_int(s, colon, &x) && parse_int(colon + 1, e, &y), SPA_ERR_USAGE,
                    "%s: '%.*s' is not L:C", flag, (int)(e - s), s);
        SPA_REQUIRE(x >= 1 && y >= 1 && y <= x, SPA_ERR_USAGE, "%s L:C needs 1 <= C <= L (got %.*s)", flag,
                    (int)(e - s), s);
        hr->sum_l = x, hr->sum_c = y;
        break;
    case SPA_RULE_DILATED:
        hr->ndilated = 0;
        for (const char *p = s; p < e;) {
            const char *q = memchr(p, ',', (size_t)(e - p));
            if (!q) q = e;
            const char *c = memchr(p, ':', (size_t)(q - p));
            SPA_REQUIRE(c && parse_int(p, c, &x) && parse_int(c + 1, q, &y), SPA_ERR_USAGE,
                        "%s: '%.*s' is not w:r", flag, (int)(q - p), p);
            SPA_REQUIRE(x >= 1 && y >= 1 && y <= x, SPA_ERR_USAGE, "%s w:r needs w >= 1 and 1 <= r <= w (got %.*s)",
                        flag, (int)(q - p), p);
            SPA_REQUIRE(hr->ndilated < SPA_MAX_DILATED, SPA_ERR_USAGE, "%s: at most %d pairs", flag,
                        SPA_MAX_DILATED);
            hr->dil_w[hr->ndilated] = x, hr->dil_r[hr->ndilated++] = y;
            if (q == e) break;
            p = q + 1;
            SPA_REQUIRE(p < e, SPA_ERR_USAGE, "%s: empty pair after ','", flag);
        }
        SPA_REQUIRE(hr->ndilated > 0, SPA_ERR_USAGE, "%s: empty list", flag);
        break;
    default:
        break;
    }
    return SPA_OK;
}

/* Applies every value of one rule's spec to the heads it names. covered[h]
 * records which heads a value of this flag (or of the other local flag)
 * already set. */
static spa_err apply_rule(spa_config *cfg, spa_rule rule, unsigned char *covered)
{
    const char *spec = cfg->rule_spec[rule], *flag = rule_flag[rule];
    int values = 0, bare = 0;
    for (const char *p = spec;;) {
        const char *e = strchr(p, ';');
        if (!e) e = p + strlen(p);
        const char *at = memchr(p, '@', (size_t)(e - p));
        int64_t a = 0, b = cfg->heads;
        if (at) {
            const char *c = memchr(at + 1, ':', (size_t)(e - at - 1));
            SPA_REQUIRE(c && parse_int(at + 1, c, &a) && parse_int(c + 1, e, &b), SPA_ERR_USAGE,
                        "%s: head range '%.*s' is not @a:b", flag, (int)(e - at), at);
            SPA_REQUIRE(a >= 0 && a < b, SPA_ERR_USAGE, "%s: empty or reversed head range '%.*s'", flag,
                        (int)(e - at), at);
            SPA_REQUIRE(b <= cfg->heads, SPA_ERR_USAGE, "%s: head range '%.*s' goes beyond the %d heads", flag,
                        (int)(e - at), at, cfg->heads);
        } else {
            bare++;
        }
        values++;
        SPA_REQUIRE(!(bare && values > 1), SPA_ERR_USAGE,
                    "%s is given more than once; repeat it only with disjoint @a:b head ranges", flag);
        spa_head_rules v;
        memset(&v, 0, sizeof v);
        SPA_CHECK(parse_rule_value(rule, p, at ? at : e, &v));
        for (int64_t h = a; h < b; h++) {
            spa_head_rules *hr = &cfg->hr[h];
            if (covered[h]) {
                if (rule == SPA_RULE_LOCAL_BLOCKS || rule == SPA_RULE_RADIUS)
                    SPA_FAIL(SPA_ERR_USAGE, "head %lld has two local rules (--local-blocks and --radius give at "
                                            "most one per head)", (long long)h);
                SPA_FAIL(SPA_ERR_USAGE, "%s: head %lld is in two head ranges", flag, (long long)h);
            }
            covered[h] = 1;
            switch (rule) {
            case SPA_RULE_LOCAL_BLOCKS: hr->local_blocks = v.local_blocks, hr->radius = -1; break;
            case SPA_RULE_RADIUS: hr->radius = v.radius, hr->local_blocks = 0; break;
            case SPA_RULE_RANDOM: hr->random = v.random; break;
            case SPA_RULE_STRIDE: hr->stride = v.stride; break;
            case SPA_RULE_SUMMARY: hr->sum_l = v.sum_l, hr->sum_c = v.sum_c; break;
            case SPA_RULE_DILATED:
                hr->ndilated = v.ndilated;
                memcpy(hr->dil_w, v.dil_w, sizeof v.dil_w);
                memcpy(hr->dil_r, v.dil_r, sizeof v.dil_r);
                break;
            default: break;
            }
        }
        if (*e == '\0') break;
        p = e + 1;
    }
    return SPA_OK;
}

/* Resolves cfg->hr[h] for every head from the scalars and the rule specs. */
static spa_err resolve_rules(spa_config *cfg)
{
    free(cfg->hr);
    cfg->hr = calloc((size_t)cfg->heads, sizeof *cfg->hr);
    unsigned char *covered = calloc((size_t)cfg->heads, 1);
    if (!cfg->hr || !covered) {
        free(covered);
        SPA_FAIL(SPA_ERR_OTHER, "out of memory");
    }
    int local_given = cfg->rule_spec[SPA_RULE_LOCAL_BLOCKS] || cfg->rule_spec[SPA_RULE_RADIUS];
    for (int32_t h = 0; h < cfg->heads; h++) {
        spa_head_rules *hr = &cfg->hr[h];
        hr->radius = -1;
        if (!local_given) { /* the scalars: the API's short form and the defaults */
            hr->radius = cfg->radius;
            hr->local_blocks = cfg->radius >= 0 ? 0 : cfg->local_blocks;
        }
        hr->random = cfg->random;
    }
    spa_err e = SPA_OK;
    for (int r = 0; r < SPA_RULE_COUNT && e == SPA_OK; r++) {
        if (!cfg->rule_spec[r]) continue;
        /* the two local flags share one coverage: a head has one local rule */
        if (r != SPA_RULE_RADIUS) memset(covered, 0, (size_t)cfg->heads);
        if (r == SPA_RULE_RANDOM)
            for (int32_t h = 0; h < cfg->heads; h++) cfg->hr[h].random = 0;
        e = apply_rule(cfg, (spa_rule)r, covered);
    }
    free(covered);
    SPA_CHECK(e);
    cfg->random_max = 0;
    for (int32_t h = 0; h < cfg->heads; h++)
        if (cfg->hr[h].random > cfg->random_max) cfg->random_max = cfg->hr[h].random;
    return SPA_OK;
}

static spa_err check_layout(const spa_config *cfg)
{
    const spa_layout *l = &cfg->layout;
    if (l->heads == 0) return SPA_OK;
    int64_t nb = spa_nblocks(cfg);
    SPA_REQUIRE(l->heads == 1 || l->heads == cfg->heads, SPA_ERR_INPUT,
                "layout: %d heads, but the input has %d (a layout has 1 or H heads)", l->heads, cfg->heads);
    SPA_REQUIRE(l->nb == nb, SPA_ERR_INPUT, "layout: %lld blocks per row, but n = %lld and --block %d give %lld",
                (long long)l->nb, (long long)cfg->n, cfg->block, (long long)nb);
    for (int64_t r = 0; r < l->heads * nb; r++)
        for (int64_t k = l->off[r]; k < l->off[r + 1]; k++) {
            SPA_REQUIRE(l->idx[k] >= 0 && l->idx[k] < nb, SPA_ERR_INPUT, "layout: key block %d outside [0, %lld)",
                        l->idx[k], (long long)nb);
            SPA_REQUIRE(k == l->off[r] || l->idx[k] > l->idx[k - 1], SPA_ERR_INPUT,
                        "layout: row %lld is not sorted and unique", (long long)r);
        }
    return SPA_OK;
}

/* Tokens whose K and V are gathered: G and every head's summary columns. */
static spa_err gather_tokens(spa_config *cfg)
{
    free(cfg->kv_tokens);
    cfg->kv_tokens = NULL;
    cfg->nkv_tokens = 0;
    int64_t total = cfg->nglobals;
    for (int32_t h = 0; h < cfg->heads; h++) {
        const spa_head_rules *hr = &cfg->hr[h];
        int dup = 0;
        for (int32_t g = 0; g < h && !dup; g++) dup = cfg->hr[g].sum_l == hr->sum_l && cfg->hr[g].sum_c == hr->sum_c;
        if (hr->sum_l && !dup) total += (cfg->n / hr->sum_l + 1) * hr->sum_c;
    }
    cfg->kv_tokens = malloc((size_t)(total + 1) * sizeof *cfg->kv_tokens);
    SPA_REQUIRE(cfg->kv_tokens, SPA_ERR_OTHER, "out of memory for %lld gathered tokens", (long long)total);
    int64_t k = 0;
    if (cfg->nglobals) memcpy(cfg->kv_tokens, cfg->globals, (size_t)cfg->nglobals * sizeof(int64_t));
    k = cfg->nglobals;
    for (int32_t h = 0; h < cfg->heads; h++) {
        const spa_head_rules *hr = &cfg->hr[h];
        int dup = 0;
        for (int32_t g = 0; g < h && !dup; g++) dup = cfg->hr[g].sum_l == hr->sum_l && cfg->hr[g].sum_c == hr->sum_c;
        if (!hr->sum_l || dup) continue;
        for (int64_t j0 = 0; j0 < cfg->n; j0 += hr->sum_l)
            for (int64_t j = j0 + hr->sum_l - hr->sum_c; j < j0 + hr->sum_l && j < cfg->n; j++) cfg->kv_tokens[k++] = j;
    }
    qsort(cfg->kv_tokens, (size_t)k, sizeof(int64_t), cmp_i64);
    int64_t u = 0;
    for (int64_t i = 0; i < k; i++)
        if (u == 0 || cfg->kv_tokens[u - 1] != cfg->kv_tokens[i]) cfg->kv_tokens[u++] = cfg->kv_tokens[i];
    cfg->nkv_tokens = u;
    return SPA_OK;
}

spa_err spa_config_set_layout(spa_config *cfg, const spa_layout *lay)
{
    spa_layout_free(&cfg->layout);
    if (!lay || lay->heads == 0) return SPA_OK;
    int64_t rows = (int64_t)lay->heads * lay->nb, nnz = lay->off[rows];
    spa_layout *l = &cfg->layout;
    l->off = malloc((size_t)(rows + 1) * sizeof *l->off);
    l->idx = malloc((size_t)(nnz + 1) * sizeof *l->idx);
    if (!l->off || !l->idx) {
        spa_layout_free(l);
        SPA_FAIL(SPA_ERR_OTHER, "out of memory for the layout");
    }
    memcpy(l->off, lay->off, (size_t)(rows + 1) * sizeof *l->off);
    if (nnz) memcpy(l->idx, lay->idx, (size_t)nnz * sizeof *l->idx);
    l->heads = lay->heads;
    l->nb = lay->nb;
    return SPA_OK;
}

void spa_layout_free(spa_layout *lay)
{
    if (!lay) return;
    free(lay->off);
    free(lay->idx);
    memset(lay, 0, sizeof *lay);
}

spa_err spa_config_validate(spa_config *cfg)
{
    SPA_REQUIRE(cfg->n >= 1, SPA_ERR_USAGE, "--n must be >= 1 (got %lld)", (long long)cfg->n);
    SPA_REQUIRE(cfg->heads >= 1, SPA_ERR_USAGE, "--heads must be >= 1 (got %d)", cfg->heads);
    SPA_REQUIRE(cfg->dim >= 1, SPA_ERR_USAGE, "--dim must be >= 1 (got %d)", cfg->dim);
    SPA_REQUIRE(cfg->block >= 1, SPA_ERR_USAGE, "--block must be >= 1 (got %d)", cfg->block);
    SPA_REQUIRE(cfg->radius >= -1, SPA_ERR_USAGE, "--radius must be >= 0");
    if (cfg->radius < 0) {
        SPA_REQUIRE(cfg->local_blocks == 0 || (cfg->local_blocks >= 1 && cfg->local_blocks % 2 == 1),
                    SPA_ERR_USAGE, "--local-blocks must be odd and >= 1, or 0 (got %d)", cfg->local_blocks);
    }
    SPA_REQUIRE(cfg->fetch_bytes >= 0, SPA_ERR_USAGE, "--fetch-mib must be >= 0");
    SPA_REQUIRE(cfg->random >= 0, SPA_ERR_USAGE, "--random must be >= 0 (got %d)", cfg->random);
    SPA_REQUIRE(isfinite(cfg->scale) && cfg->scale >= 0.0f, SPA_ERR_USAGE,
                "--scale must be finite and > 0");
    /* Byte counts of [H][n][D] float tensors must fit in int64. */
    SPA_REQUIRE((double)cfg->n * cfg->heads * cfg->dim * 4.0 < 9.0e18, SPA_ERR_USAGE,
                "n * heads * dim is too large");
    if (cfg->scale == 0.0f) cfg->scale = 1.0f / sqrtf((float)cfg->dim);

    free(cfg->globals);
    free(cfg->global_blocks);
    cfg->globals = cfg->global_blocks = NULL;
    cfg->nglobals = cfg->nglobal_blocks = 0;
    if (cfg->globals_spec) {
        SPA_CHECK(spa_parse_globals(cfg->globals_spec, cfg->n, &cfg->globals, &cfg->nglobals));
    } else { /* BigBird ITC: the first and the last block */
        int64_t nb = spa_nblocks(cfg), last0 = (nb - 1) * cfg->block;
        int64_t cnt = (nb == 1) ? cfg->n : (int64_t)cfg->block + (cfg->n - last0);
        cfg->globals = malloc((size_t)cnt * sizeof *cfg->globals);
        SPA_REQUIRE(cfg->globals != NULL, SPA_ERR_OTHER, "out of memory");
        int64_t k = 0, first = cfg->block < cfg->n ? cfg->block : cfg->n;
        for (int64_t j = 0; j < first; j++) cfg->globals[k++] = j; /* O(B), not O(n): every rank does this */
        for (int64_t j = last0 > first ? last0 : first; j < cfg->n; j++) cfg->globals[k++] = j;
        cfg->nglobals = k;
    }
    cfg->global_blocks = malloc((size_t)(cfg->nglobals > 0 ? cfg->nglobals : 1) * sizeof(int64_t));
    SPA_REQUIRE(cfg->global_blocks != NULL, SPA_ERR_OTHER, "out of memory");
    for (int64_t i = 0; i < cfg->nglobals; i++) {
        int64_t b = cfg->globals[i] / cfg->block;
        if (cfg->nglobal_blocks == 0 || cfg->global_blocks[cfg->nglobal_blocks - 1] != b)
            cfg->global_blocks[cfg->nglobal_blocks++] = b;
    }
    SPA_CHECK(resolve_rules(cfg));
    SPA_CHECK(check_layout(cfg));
    return gather_tokens(cfg);
}

spa_err spa_config_copy(spa_config *dst, const spa_config *src)
{
    *dst = *src;
    dst->globals_spec = NULL;
    dst->globals = dst->global_blocks = NULL;
    dst->hr = NULL;
    dst->kv_tokens = NULL;
    dst->layout_name = NULL;
    memset(dst->rule_spec, 0, sizeof dst->rule_spec);
    memset(&dst->layout, 0, sizeof dst->layout);
    for (int r = 0; r < SPA_RULE_COUNT; r++)
        if (src->rule_spec[r]) {
            dst->rule_spec[r] = strdup(src->rule_spec[r]);
            SPA_REQUIRE(dst->rule_spec[r], SPA_ERR_OTHER, "out of memory");
        }
    if (src->layout_name) {
        dst->layout_name = strdup(src->layout_name);
        SPA_REQUIRE(dst->layout_name, SPA_ERR_OTHER, "out of memory");
    }
    SPA_CHECK(spa_config_set_layout(dst, &src->layout));
    if (src->hr) {
        dst->hr = malloc((size_t)src->heads * sizeof *dst->hr);
        SPA_REQUIRE(dst->hr, SPA_ERR_OTHER, "out of memory");
        memcpy(dst->hr, src->hr, (size_t)src->heads * sizeof *dst->hr);
    }
    if (src->kv_tokens) {
        dst->kv_tokens = malloc((size_t)(src->nkv_tokens + 1) * sizeof(int64_t));
        SPA_REQUIRE(dst->kv_tokens, SPA_ERR_OTHER, "out of memory");
        memcpy(dst->kv_tokens, src->kv_tokens, (size_t)src->nkv_tokens * sizeof(int64_t));
    }
    if (src->globals_spec) {
        dst->globals_spec = strdup(src->globals_spec);
        SPA_REQUIRE(dst->globals_spec, SPA_ERR_OTHER, "out of memory");
    }
    if (src->globals) {
        size_t g = (size_t)(src->nglobals > 0 ? src->nglobals : 1) * sizeof(int64_t);
        size_t gb = (size_t)(src->nglobal_blocks > 0 ? src->nglobal_blocks : 1) * sizeof(int64_t);
        dst->globals = malloc(g);
        dst->global_blocks = malloc(gb);
        SPA_REQUIRE(dst->globals && dst->global_blocks, SPA_ERR_OTHER, "out of memory");
        memcpy(dst->globals, src->globals, g);
        memcpy(dst->global_blocks, src->global_blocks, gb);
    }
    return SPA_OK;
}

void spa_config_free(spa_config *cfg)
{
    if (!cfg) return;
    free(cfg->globals_spec);
    free(cfg->globals);
    free(cfg->global_blocks);
    free(cfg->hr);
    free(cfg->kv_tokens);
    free(cfg->layout_name);
    for (int r = 0; r < SPA_RULE_COUNT; r++) free(cfg->rule_spec[r]), cfg->rule_spec[r] = NULL;
    spa_layout_free(&cfg->layout);
    cfg->hr = NULL;
    cfg->kv_tokens = NULL;
    cfg->layout_name = NULL;
    cfg->nkv_tokens = 0;
    cfg->globals_spec = NULL;
    cfg->globals = cfg->global_blocks = NULL;
    cfg->nglobals = cfg->nglobal_blocks = 0;
}
