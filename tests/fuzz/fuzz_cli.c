/* fuzz_cli.c - libFuzzer harness of the flag parser, --globals and the
 * per-head rule values.
 *
 * Byte 0 picks the mode; the rest is split at NUL bytes into strings.
 * - mode 0, argv: "spa" + the strings through spa_cli_parse; when it
 *   accepts them (n <= 2^22, H <= 256, so memory stays bounded),
 *   spa_config_validate; when that accepts them too, the pattern's own
 *   flags (spa_cli_pattern_flags) must parse and validate again and give
 *   back the same flags.
 * - mode 1, --globals: bytes 1-2 give n (1 .. 65536); the first string
 *   through spa_parse_globals, whose result must be sorted, unique and in
 *   [0, n).
 * - mode 2, rule values: byte 1 gives H (1 .. 16); each string is one
 *   spa_config_add_rule value of the rule its first byte names, then
 *   spa_config_validate, whose per-head rules must be in range.
 * Every error has a code and a message; ASan, UBSan and LeakSanitizer
 * stay quiet.
 */
#include "fuzz_common.h"

#include "cli.h"

enum { MAX_ARGS = 48 };

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    fuzz_mpi_init("cli");
    return 0;
}

/* Splits buf (NUL-terminated copy of the input, len bytes) at NULs. */
static int split(char *buf, size_t len, char **out, int max)
{
    int k = 0;
    size_t i = 0;
    while (i <= len && k < max) {
        out[k++] = buf + i;
        i += strlen(buf + i) + 1;
    }
    return k;
}

/* "--a b --c" -> argv after argv[0..1] (split in place at spaces). */
static int split_spaces(char *s, char **out, int max)
{
    int k = 0;
    for (char *t = strtok(s, " "); t && k < max; t = strtok(NULL, " ")) out[k++] = t;
    return k;
}

static void fuzz_argv(char **args, int nargs)
{
    char *argv[MAX_ARGS + 2];
    argv[0] = "spa";
    for (int i = 0; i < nargs; i++) argv[i + 1] = args[i];
    spa_cli_opts o;
    spa_err e = spa_cli_parse(nargs + 1, argv, &o);
    if (e != SPA_OK) {
        fuzz_check_error(e);
        FUZZ_ASSERT(e == SPA_ERR_USAGE, "spa_cli_parse returned %d: %s", e, spa_last_error());
        spa_config_free(&o.cfg);
        return;
    }
    if (o.help || o.version || o.cfg.n > (1 << 22) || o.cfg.heads > 256) {
        spa_config_free(&o.cfg);
        return;
    }
    e = spa_config_validate(&o.cfg);
    if (e != SPA_OK) {
        fuzz_check_error(e);
        FUZZ_ASSERT(e == SPA_ERR_USAGE, "validate returned %d: %s", e, spa_last_error());
        spa_config_free(&o.cfg);
        return;
    }
    FUZZ_ASSERT(o.cfg.hr != NULL && o.cfg.nglobals >= 0, "validate left no per-head rules");
    for (int64_t g = 0; g < o.cfg.nglobals; g++)
        FUZZ_ASSERT(o.cfg.globals[g] >= 0 && o.cfg.globals[g] < o.cfg.n &&
                        (g == 0 || o.cfg.globals[g - 1] < o.cfg.globals[g]),
                    "globals not sorted, unique, in [0, n)");

    /* round trip: the flags that give the pattern give it again */
    char *flags = spa_cli_pattern_flags(&o.cfg);
    FUZZ_ASSERT(flags, "spa_cli_pattern_flags failed");
    char *copy = strdup(flags), nbuf[32], hbuf[32];
    FUZZ_ASSERT(copy, "out of memory");
    char *argv2[4 * MAX_ARGS + 8];
    int k = 0;
    argv2[k++] = "spa";
    argv2[k++] = "plan";
    snprintf(nbuf, sizeof nbuf, "--n=%lld", (long long)o.cfg.n);
    snprintf(hbuf, sizeof hbuf, "--heads=%d", o.cfg.heads);
    argv2[k++] = nbuf;
    argv2[k++] = hbuf;
    k += split_spaces(copy, argv2 + k, 4 * MAX_ARGS);
    spa_cli_opts o2;
    e = spa_cli_parse(k, argv2, &o2);
    FUZZ_ASSERT(e == SPA_OK, "the pattern's own flags '%s' do not parse: %s", flags, spa_last_error());
    e = spa_config_validate(&o2.cfg);
    FUZZ_ASSERT(e == SPA_OK, "the pattern's own flags '%s' do not validate: %s", flags,
                spa_last_error());
    char *flags2 = spa_cli_pattern_flags(&o2.cfg);
    FUZZ_ASSERT(flags2 && strcmp(flags, flags2) == 0, "flags '%s' give back '%s'", flags,
                flags2 ? flags2 : "(null)");
    FUZZ_ASSERT(o2.cfg.nglobals == o.cfg.nglobals &&
                    (o.cfg.nglobals == 0 ||
                     memcmp(o.cfg.globals, o2.cfg.globals,
                            (size_t)o.cfg.nglobals * sizeof *o.cfg.globals) == 0),
                "flags '%s' give another global set", flags);
    free(flags2);
    free(flags);
    free(copy);
    spa_config_free(&o2.cfg);
    spa_config_free(&o.cfg);
}

static void fuzz_globals(const uint8_t *data, size_t size, const char *spec)
{
    int64_t n = 1 + (size > 2 ? (int64_t)data[1] << 8 | data[2] : 0);
    int64_t *g = NULL, count = -1;
    spa_err e = spa_parse_globals(spec, n, &g, &count);
    if (e != SPA_OK) {
        fuzz_check_error(e);
        FUZZ_ASSERT(e == SPA_ERR_USAGE, "spa_parse_globals returned %d: %s", e, spa_last_error());
        free(g);
        return;
    }
    FUZZ_ASSERT(count >= 0 && count <= n, "%lld globals for n = %lld", (long long)count, (long long)n);
    for (int64_t i = 0; i < count; i++)
        FUZZ_ASSERT(g[i] >= 0 && g[i] < n && (i == 0 || g[i - 1] < g[i]),
                    "'%s': globals not sorted, unique, in [0, %lld)", spec, (long long)n);
    free(g);
}

static void fuzz_rules(const uint8_t *data, size_t size, char **vals, int nvals)
{
    spa_config cfg;
    spa_config_init(&cfg);
    cfg.n = 4096;
    cfg.block = 16;
    cfg.dim = 4;
    cfg.heads = 1 + (size > 1 ? data[1] % 16 : 0);
    spa_err e = SPA_OK;
    for (int i = 0; i < nvals && e == SPA_OK; i++) {
        if (!vals[i][0]) continue;
        spa_rule r = (spa_rule)((unsigned char)vals[i][0] % SPA_RULE_COUNT);
        e = spa_config_add_rule(&cfg, r, vals[i] + 1);
    }
    if (e == SPA_OK) e = spa_config_validate(&cfg);
    if (e != SPA_OK) {
        fuzz_check_error(e);
        FUZZ_ASSERT(e == SPA_ERR_USAGE, "rules: code %d: %s", e, spa_last_error());
    } else {
        for (int32_t h = 0; h < cfg.heads; h++) {
            const spa_head_rules *r = &cfg.hr[h];
            FUZZ_ASSERT(r->local_blocks == 0 || (r->local_blocks >= 1 && r->local_blocks % 2 == 1),
                        "head %d: local_blocks %d", h, r->local_blocks);
            FUZZ_ASSERT(r->local_blocks == 0 || r->radius < 0, "head %d: two local rules", h);
            FUZZ_ASSERT(r->random >= 0 && r->random <= cfg.random_max, "head %d: random %d", h,
                        r->random);
            FUZZ_ASSERT(r->stride == 0 || r->stride >= 2, "head %d: stride %lld", h,
                        (long long)r->stride);
            FUZZ_ASSERT((r->sum_l == 0 && r->sum_c == 0) || (r->sum_c >= 1 && r->sum_c <= r->sum_l),
                        "head %d: summary %lld:%lld", h, (long long)r->sum_l, (long long)r->sum_c);
            FUZZ_ASSERT(r->ndilated >= 0 && r->ndilated <= SPA_MAX_DILATED, "head %d: %d dilated",
                        h, r->ndilated);
            for (int d = 0; d < r->ndilated; d++)
                FUZZ_ASSERT(r->dil_r[d] >= 1 && r->dil_r[d] <= r->dil_w[d], "head %d: dilated %lld:%lld",
                            h, (long long)r->dil_w[d], (long long)r->dil_r[d]);
        }
    }
    spa_config_free(&cfg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 4096) return 0;
    int mode = data[0] % 3;
    size_t skip = mode == 0 ? 1 : mode == 1 ? 3 : 2;
    if (size < skip) return 0;
    char *buf = malloc(size - skip + 1);
    FUZZ_ASSERT(buf, "out of memory");
    memcpy(buf, data + skip, size - skip);
    buf[size - skip] = '\0';
    char *args[MAX_ARGS];
    int nargs = split(buf, size - skip, args, MAX_ARGS);
    if (mode == 0) fuzz_argv(args, nargs);
    else if (mode == 1) fuzz_globals(data, size, args[0]);
    else fuzz_rules(data, size, args, nargs);
    free(buf);
    return 0;
}
