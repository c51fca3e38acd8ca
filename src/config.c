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

spa_err spa_config_validate(spa_config *cfg)
{
    SPA_REQUIRE(cfg->n >= 1, SPA_ERR_USAGE, "--n must be >= 1 (got %lld)", (long long)cfg->n);
    SPA_REQUIRE(cfg->heads >= 1, SPA_ERR_USAGE, "--heads must be >= 1 (got %d)", cfg->heads);
    SPA_REQUIRE(cfg->dim >= 1, SPA_ERR_USAGE, "--dim must be >= 1 (got %d)", cfg->dim);
    SPA_REQUIRE(cfg->block >= 1, SPA_ERR_USAGE, "--block must be >= 1 (got %d)", cfg->block);
    SPA_REQUIRE(cfg->radius >= -1, SPA_ERR_USAGE, "--radius must be >= 0");
    if (cfg->radius < 0) {
        SPA_REQUIRE(cfg->local_blocks >= 1 && cfg->local_blocks % 2 == 1, SPA_ERR_USAGE,
                    "--local-blocks must be odd and >= 1 (got %d)", cfg->local_blocks);
    }
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
        int64_t k = 0;
        for (int64_t j = 0; j < cfg->n; j++)
            if (j < cfg->block || j >= last0) cfg->globals[k++] = j;
        cfg->nglobals = k;
    }
    cfg->global_blocks = malloc((size_t)(cfg->nglobals > 0 ? cfg->nglobals : 1) * sizeof(int64_t));
    SPA_REQUIRE(cfg->global_blocks != NULL, SPA_ERR_OTHER, "out of memory");
    for (int64_t i = 0; i < cfg->nglobals; i++) {
        int64_t b = cfg->globals[i] / cfg->block;
        if (cfg->nglobal_blocks == 0 || cfg->global_blocks[cfg->nglobal_blocks - 1] != b)
            cfg->global_blocks[cfg->nglobal_blocks++] = b;
    }
    return SPA_OK;
}

spa_err spa_config_copy(spa_config *dst, const spa_config *src)
{
    *dst = *src;
    dst->globals_spec = NULL;
    dst->globals = dst->global_blocks = NULL;
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
    cfg->globals_spec = NULL;
    cfg->globals = cfg->global_blocks = NULL;
    cfg->nglobals = cfg->nglobal_blocks = 0;
}
