/* cli_args.c - flag parsing, pattern set-up and help text of the spa
 * command line.
 *
 * Every rank parses the same argv, so a bad flag fails identically
 * everywhere without any communication. Numbers must span their whole
 * argument (strtoll/strtod with an end check): "12x", "" and "1e3" for an
 * integer are usage errors, not silently truncated values. A flag given
 * twice is an error too, so an appended override cannot hide a typo; the
 * rule flags (--local-blocks --radius --random --stride --summary
 * --dilated) are the exception: they go to spa_config_add_rule as given,
 * and spa_config_validate allows a repeat only with disjoint @a:b ranges.
 */
#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum {
    F_INPUT, F_OUTPUT, F_N, F_HEADS, F_DIM, F_BLOCK, F_LOCAL, F_RADIUS, F_GLOBALS, F_RANDOM,
    F_SEED, F_CAUSAL, F_SCALE, F_JSON, F_THREADS, F_TEMP, F_PROGRESS, F_WARMUP, F_REPS,
    F_RANKS, F_STATS, F_IMAGE, F_NO_OVERLAP, F_HELP, F_STRIDE, F_SUMMARY, F_DILATED, F_LAYOUT,
    F_EXPORT_LAYOUT, F_SAVE_ATTENTION, F_FETCH_MIB, F_GRAD, F_BACKWARD, F_EXACT, F_COUNT
};

#define C_RUN (1u << SPA_CLI_RUN)
#define C_GEN (1u << SPA_CLI_GEN)
#define C_BENCH (1u << SPA_CLI_BENCH)
#define C_PLAN (1u << SPA_CLI_PLAN)
#define C_LAYER (1u << SPA_CLI_LAYER)
#define C_GRAD (1u << SPA_CLI_GRAD)
#define C_PATTERN (C_RUN | C_BENCH | C_PLAN | C_LAYER | C_GRAD)
#define C_ALL (C_RUN | C_GEN | C_BENCH | C_PLAN | C_LAYER | C_GRAD)

static const struct flag_def {
    const char *name;
    int value;      /* takes a value */
    unsigned cmds;  /* commands that accept it */
} flags[F_COUNT] = {
    [F_INPUT] = {"input", 1, C_RUN | C_LAYER | C_GRAD},
    [F_OUTPUT] = {"output", 1, C_RUN | C_GEN | C_LAYER | C_GRAD},
    [F_N] = {"n", 1, C_ALL},
    [F_HEADS] = {"heads", 1, C_ALL},
    [F_DIM] = {"dim", 1, C_ALL},
    [F_BLOCK] = {"block", 1, C_PATTERN},
    [F_LOCAL] = {"local-blocks", 1, C_PATTERN},
    [F_RADIUS] = {"radius", 1, C_PATTERN},
    [F_GLOBALS] = {"globals", 1, C_PATTERN},
    [F_RANDOM] = {"random", 1, C_PATTERN},
    [F_SEED] = {"seed", 1, C_ALL},
    [F_CAUSAL] = {"causal", 0, C_PATTERN},
    [F_SCALE] = {"scale", 1, C_PATTERN},
    [F_JSON] = {"json", 0, C_RUN | C_BENCH | C_PLAN | C_LAYER | C_GRAD},
    [F_THREADS] = {"threads", 1, C_ALL},
    [F_TEMP] = {"temperature", 1, C_RUN | C_GEN | C_BENCH},
    [F_PROGRESS] = {"progress", 0, C_RUN | C_BENCH},
    [F_WARMUP] = {"warmup", 1, C_BENCH},
    [F_REPS] = {"reps", 1, C_BENCH},
    [F_RANKS] = {"ranks", 1, C_PLAN},
    [F_STATS] = {"stats", 0, C_PLAN},
    [F_IMAGE] = {"image", 1, C_PLAN},
    [F_NO_OVERLAP] = {"no-overlap", 0, C_RUN | C_BENCH | C_GRAD},
    [F_HELP] = {"help", 0, C_ALL},
    [F_STRIDE] = {"stride", 1, C_PATTERN},
    [F_SUMMARY] = {"summary", 1, C_PATTERN},
    [F_DILATED] = {"dilated", 1, C_PATTERN},
    [F_LAYOUT] = {"layout", 1, C_PATTERN},
    [F_EXPORT_LAYOUT] = {"export-layout", 1, C_PLAN},
    [F_SAVE_ATTENTION] = {"save-attention", 0, C_LAYER},
    [F_FETCH_MIB] = {"fetch-mib", 1, C_PATTERN},
    [F_GRAD] = {"grad", 0, C_GEN},
    [F_BACKWARD] = {"backward", 0, C_BENCH},
    [F_EXACT] = {"exact", 0, C_RUN | C_BENCH | C_GRAD},
};

/* The flags of spa_config_add_rule: repeatable, parsed by validate. */
static int rule_of(int id)
{
    switch (id) {
    case F_LOCAL: return SPA_RULE_LOCAL_BLOCKS;
    case F_RADIUS: return SPA_RULE_RADIUS;
    case F_RANDOM: return SPA_RULE_RANDOM;
    case F_STRIDE: return SPA_RULE_STRIDE;
    case F_SUMMARY: return SPA_RULE_SUMMARY;
    case F_DILATED: return SPA_RULE_DILATED;
    default: return -1;
    }
}

static const char *cmd_names[] = {"", "run", "gen", "bench", "plan", "layer", "grad"};

/* Integer in [lo, hi] spanning all of s. */
static spa_err parse_int(const char *flag, const char *s, int64_t lo, int64_t hi, int64_t *v)
{
    char *end = NULL;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    CLI_REQUIRE(*s != '\0' && !isspace((unsigned char)*s) && *end == '\0', SPA_ERR_USAGE,
                "--%s expects an integer, got '%s'", flag, s);
    /* an underflowing strtoll gives LLONG_MIN, caught by the first check */
    CLI_REQUIRE(x >= lo, SPA_ERR_USAGE, "--%s must be >= %lld (got '%s')", flag, (long long)lo, s);
    CLI_REQUIRE(errno != ERANGE && x <= hi, SPA_ERR_USAGE, "--%s must be <= %lld (got '%s')", flag,
                (long long)hi, s);
    *v = x;
    return SPA_OK;
}

/* Finite number > 0 spanning all of s. */
static spa_err parse_pos_real(const char *flag, const char *s, double *v)
{
    char *end = NULL;
    errno = 0;
    double x = strtod(s, &end);
    CLI_REQUIRE(*s != '\0' && !isspace((unsigned char)*s) && *end == '\0', SPA_ERR_USAGE,
                "--%s expects a number, got '%s'", flag, s);
    CLI_REQUIRE(errno != ERANGE && isfinite(x) && x > 0.0, SPA_ERR_USAGE,
                "--%s must be a finite number > 0 (got '%s')", flag, s);
    *v = x;
    return SPA_OK;
}

static spa_err parse_seed(const char *s, uint64_t *v)
{
    char *end = NULL;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    /* strtoull accepts "-1" and wraps it; a seed is a plain non-negative integer */
    CLI_REQUIRE(isdigit((unsigned char)*s) && *end == '\0', SPA_ERR_USAGE,
                "--seed expects a non-negative integer, got '%s'", s);
    CLI_REQUIRE(errno != ERANGE, SPA_ERR_USAGE, "--seed must be below 2^64 (got '%s')", s);
    *v = x;
    return SPA_OK;
}

/* The largest b of any @a:b in the rule flags (0 when none parses). */
static int64_t max_head_bound(const spa_config *cfg)
{
    int64_t mx = 0;
    for (int r = 0; r < SPA_RULE_COUNT; r++)
        for (const char *p = cfg->rule_spec[r]; p && (p = strchr(p, '@')) != NULL; p++) {
            const char *c = strchr(p, ':');
            if (!c) continue;
            long long b = strtoll(c + 1, NULL, 10);
            if (b > mx) mx = b;
        }
    return mx;
}

/* With --input, n and H come from the file, so the real validation runs
 * after it is opened, and a bad file would then hide a bad flag behind
 * exit 3. Everything about the flags that does not depend on n or H is
 * checked here first, on a copy: the heads the @ranges name, no globals. */
static spa_err prevalidate(const spa_cli_opts *o)
{
    spa_config tmp;
    CLI_CHECK(spa_config_copy(&tmp, &o->cfg));
    int64_t h = max_head_bound(&o->cfg);
    if (h > (1 << 16)) { /* too many heads to try here: the real validation decides */
        spa_config_free(&tmp);
        return SPA_OK;
    }
    if (h > tmp.heads) tmp.heads = (int32_t)h;
    tmp.n = 1 << 16;
    spa_layout_free(&tmp.layout);
    spa_err err = spa_config_set_globals(&tmp, "none");
    if (err == SPA_OK) err = spa_config_validate(&tmp);
    spa_config_free(&tmp);
    return err;
}

static spa_err set_flag(spa_cli_opts *o, int id, const char *val)
{
    const char *name = flags[id].name;
    int64_t x = 0;
    double d = 0;
    switch (id) {
    case F_INPUT:
        CLI_REQUIRE(*val, SPA_ERR_USAGE, "--input: empty path");
        o->input = val;
        break;
    case F_OUTPUT:
        CLI_REQUIRE(*val, SPA_ERR_USAGE, "--output: empty path");
        o->output = val;
        break;
    case F_IMAGE:
        CLI_REQUIRE(*val, SPA_ERR_USAGE, "--image: empty path");
        o->image = val;
        break;
    case F_N:
        CLI_CHECK(parse_int(name, val, 1, INT64_MAX / 4, &x));
        o->cfg.n = x;
        o->has_n = o->has_shape = 1;
        break;
    case F_HEADS:
        CLI_CHECK(parse_int(name, val, 1, INT32_MAX, &x));
        o->cfg.heads = (int32_t)x;
        o->has_shape = o->has_heads = 1;
        break;
    case F_DIM:
        CLI_CHECK(parse_int(name, val, 1, INT32_MAX, &x));
        o->cfg.dim = (int32_t)x;
        o->has_shape = o->has_dim = 1;
        break;
    case F_BLOCK:
        CLI_CHECK(parse_int(name, val, 1, INT32_MAX, &x));
        o->cfg.block = (int32_t)x;
        break;
    case F_LOCAL:
    case F_RADIUS:
    case F_RANDOM:
    case F_STRIDE:
    case F_SUMMARY:
    case F_DILATED:
        /* "--stride=" and "--stride ''" are empty values, named here;
         * everything else about the value is validate's */
        CLI_REQUIRE(*val, SPA_ERR_USAGE, "--%s: empty value", name);
        CLI_CHECK(spa_config_add_rule(&o->cfg, (spa_rule)rule_of(id), val));
        break;
    case F_LAYOUT:
        CLI_REQUIRE(*val, SPA_ERR_USAGE, "--layout: empty path");
        o->layout = val;
        break;
    case F_EXPORT_LAYOUT:
        CLI_REQUIRE(*val, SPA_ERR_USAGE, "--export-layout: empty path");
        o->export_layout = val;
        break;
    case F_GLOBALS:
        CLI_CHECK(spa_config_set_globals(&o->cfg, val));
        break;
    case F_SEED:
        CLI_CHECK(parse_seed(val, &o->cfg.seed));
        break;
    case F_CAUSAL:
        o->cfg.causal = 1;
        break;
    case F_SCALE:
        CLI_CHECK(parse_pos_real(name, val, &d));
        CLI_REQUIRE(d < 3.0e38, SPA_ERR_USAGE, "--scale is out of float range (got '%s')", val);
        o->cfg.scale = (float)d;
        break;
    case F_JSON:
        o->json = 1;
        break;
    case F_THREADS:
        CLI_CHECK(parse_int(name, val, 1, 4096, &x));
        o->threads = (int)x;
        break;
    case F_TEMP:
        CLI_CHECK(parse_pos_real(name, val, &d));
        CLI_REQUIRE(d < 3.0e38, SPA_ERR_USAGE, "--temperature is out of float range");
        o->temperature = d;
        break;
    case F_PROGRESS:
        o->progress = 1;
        break;
    case F_NO_OVERLAP:
        o->no_overlap = 1;
        break;
    case F_FETCH_MIB:
        CLI_CHECK(parse_int(name, val, 0, (int64_t)1 << 40, &x));
        o->cfg.fetch_bytes = x << 20;
        break;
    case F_WARMUP:
        CLI_CHECK(parse_int(name, val, 0, 1000000, &x));
        o->warmup = (int)x;
        break;
    case F_REPS:
        CLI_CHECK(parse_int(name, val, 1, 1000000, &x));
        o->reps = (int)x;
        break;
    case F_RANKS:
        CLI_CHECK(parse_int(name, val, 1, 1 << 20, &x));
        o->plan_ranks = (int)x;
        break;
    case F_STATS:
        o->stats = 1;
        break;
    case F_HELP:
        o->help = 1;
        break;
    case F_SAVE_ATTENTION:
        o->save_attention = 1;
        break;
    case F_GRAD:
        o->grad = 1;
        break;
    case F_BACKWARD:
        o->backward = 1;
        break;
    case F_EXACT:
        o->exact = 1;
        break;
    default:
        CLI_FAIL(SPA_ERR_OTHER, "unhandled flag %d", id);
    }
    return SPA_OK;
}

spa_err spa_cli_parse(int argc, char **argv, spa_cli_opts *o)
{
    memset(o, 0, sizeof *o);
    spa_config_init(&o->cfg);
    o->temperature = 1.0;
    o->warmup = 1;
    o->reps = 5;

    CLI_REQUIRE(argc >= 2, SPA_ERR_USAGE, "no command given");
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        o->help = 1;
        CLI_REQUIRE(argc == 2, SPA_ERR_USAGE, "--help takes no further arguments");
        return SPA_OK;
    }
    if (strcmp(cmd, "--version") == 0) {
        o->version = 1;
        CLI_REQUIRE(argc == 2, SPA_ERR_USAGE, "--version takes no further arguments");
        return SPA_OK;
    }
    for (int c = SPA_CLI_RUN; c <= SPA_CLI_GRAD; c++)
        if (strcmp(cmd, cmd_names[c]) == 0) o->cmd = (spa_cli_cmd)c;
    CLI_REQUIRE(o->cmd != SPA_CLI_NONE, SPA_ERR_USAGE,
                "unknown command '%s' (expected run, gen, bench, plan, layer or grad)", cmd);

    uint64_t seen = 0;
    for (int a = 2; a < argc; a++) {
        const char *arg = argv[a];
        CLI_REQUIRE(strncmp(arg, "--", 2) == 0 && arg[2] != '\0', SPA_ERR_USAGE,
                    "unexpected argument '%s'", arg);
        /* --flag value, or --flag=value */
        const char *eq = strchr(arg + 2, '=');
        size_t len = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
        int id = -1;
        for (int f = 0; f < F_COUNT; f++)
            if (strlen(flags[f].name) == len && strncmp(flags[f].name, arg + 2, len) == 0) id = f;
        CLI_REQUIRE(id >= 0, SPA_ERR_USAGE, "unknown flag '%.*s'", (int)(len + 2), arg);
        CLI_REQUIRE(flags[id].cmds & (1u << o->cmd), SPA_ERR_USAGE,
                    "'spa %s' does not take --%s", cmd_names[o->cmd], flags[id].name);
        CLI_REQUIRE(!(seen & (UINT64_C(1) << id)) || rule_of(id) >= 0, SPA_ERR_USAGE,
                    "--%s is given twice", flags[id].name);
        seen |= UINT64_C(1) << id;
        const char *val = NULL;
        if (flags[id].value) {
            if (eq) {
                val = eq + 1;
            } else {
                /* a following flag is a missing value, not a value; "-5" is a value */
                CLI_REQUIRE(a + 1 < argc && strncmp(argv[a + 1], "--", 2) != 0, SPA_ERR_USAGE,
                            "--%s needs a value", flags[id].name);
                val = argv[++a];
            }
        } else {
            CLI_REQUIRE(!eq, SPA_ERR_USAGE, "--%s takes no value", flags[id].name);
        }
        CLI_CHECK(set_flag(o, id, val));
    }
    if (o->help) return SPA_OK;

    if (o->cmd == SPA_CLI_RUN)
        CLI_REQUIRE(!(o->input && o->has_shape), SPA_ERR_USAGE,
                    "--n, --heads and --dim come from the --input file; do not give them");
    if (o->cmd == SPA_CLI_GRAD) {
        CLI_REQUIRE(o->input, SPA_ERR_USAGE, "'spa grad' needs --input (q, k, v and dout)");
        CLI_REQUIRE(!o->has_shape, SPA_ERR_USAGE,
                    "--n, --heads and --dim come from the --input file; do not give them");
    }
    if (o->cmd == SPA_CLI_GEN) {
        CLI_REQUIRE(o->output, SPA_ERR_USAGE, "'spa gen' needs --output");
        CLI_REQUIRE(o->has_n, SPA_ERR_USAGE, "'spa gen' needs --n");
    }
    if (o->cmd == SPA_CLI_PLAN) {
        CLI_REQUIRE(o->has_n, SPA_ERR_USAGE, "'spa plan' needs --n");
#ifndef SPA_HAVE_PNG
        CLI_REQUIRE(!o->image, SPA_ERR_USAGE, "--image: this spa was built without libpng");
#endif
    }
    if (o->cmd == SPA_CLI_LAYER) {
        CLI_REQUIRE(o->input, SPA_ERR_USAGE, "'spa layer' needs --input");
        CLI_REQUIRE(!o->has_n, SPA_ERR_USAGE, "--n comes from the --input file (x); do not give it");
    }
    if (o->cmd != SPA_CLI_GEN && o->input) CLI_CHECK(prevalidate(o));
    return SPA_OK;
}

spa_err spa_cli_pattern(MPI_Comm comm, spa_cli_opts *o)
{
    spa_err err = spa_agree(comm, spa_config_validate(&o->cfg));
    if (err || !o->layout) return err;
    spa_layout lay;
    memset(&lay, 0, sizeof lay);
    err = spa_cli_probe_input(comm, "layout", o->layout);
    spa_cli_guard_input(comm, "layout", o->layout);
    if (!err) err = spa_io_read_layout(comm, o->layout, o->cfg.block, o->cfg.n, o->cfg.heads, &lay);
    spa_cli_unguard_input();
    if (err == SPA_OK) err = spa_config_set_layout(&o->cfg, &lay);
    spa_layout_free(&lay);
    if (err == SPA_OK) {
        free(o->cfg.layout_name);
        o->cfg.layout_name = strdup(o->layout);
        if (!o->cfg.layout_name) err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "out of memory");
    }
    /* validate again: the layout joins the pattern (kv tokens, checks) */
    if (err == SPA_OK) err = spa_config_validate(&o->cfg);
    return spa_agree(comm, err);
}

const char *spa_cli_local_mode(const spa_config *cfg, int64_t *size)
{
    const spa_head_rules *r0 = &cfg->hr[0];
    for (int32_t h = 1; h < cfg->heads; h++)
        if (cfg->hr[h].local_blocks != r0->local_blocks || cfg->hr[h].radius != r0->radius) {
            *size = -1;
            return "per-head";
        }
    if (r0->radius >= 0) {
        *size = r0->radius;
        return "radius";
    }
    *size = r0->local_blocks;
    return r0->local_blocks > 0 ? "blocks" : "none";
}

/* A growing string; on out of memory it stays NULL and appends nothing. */
typedef struct strbuf {
    char *s;
    size_t len, cap;
    int fail;
} strbuf;

static void sb_add(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_add(strbuf *b, const char *fmt, ...)
{
    if (b->fail) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (k < 0) {
            b->fail = 1;
            return;
        }
        if (b->s && b->len + (size_t)k < b->cap) {
            b->len += (size_t)k;
            return;
        }
        size_t cap = 2 * (b->len + (size_t)k + 64);
        char *t = realloc(b->s, cap);
        if (!t) {
            b->fail = 1;
            return;
        }
        b->s = t;
        b->cap = cap;
    }
}

static const char *const rule_flags[SPA_RULE_COUNT] = {"local-blocks", "radius", "random",
                                                       "stride", "summary", "dilated"};

char *spa_cli_pattern_flags(const spa_config *cfg)
{
    strbuf b = {NULL, 0, 0, 0};
    sb_add(&b, "--block %d", cfg->block);
    const char *spec_local = cfg->rule_spec[SPA_RULE_LOCAL_BLOCKS], *spec_rad = cfg->rule_spec[SPA_RULE_RADIUS];
    if (!spec_local && !spec_rad) { /* the scalars: defaults or the API's short form */
        if (cfg->radius >= 0) sb_add(&b, " --radius %lld", (long long)cfg->radius);
        else sb_add(&b, " --local-blocks %d", cfg->local_blocks);
    }
    for (int r = 0; r < SPA_RULE_COUNT; r++) {
        if (r == SPA_RULE_RANDOM && !cfg->rule_spec[r]) sb_add(&b, " --random %d", cfg->random);
        /* one flag per value: values are joined by ';' in rule_spec */
        for (const char *p = cfg->rule_spec[r]; p;) {
            const char *e = strchr(p, ';');
            int len = e ? (int)(e - p) : (int)strlen(p);
            sb_add(&b, " --%s %.*s", rule_flags[r], len, p);
            p = e ? e + 1 : NULL;
        }
    }
    sb_add(&b, " --seed %llu", (unsigned long long)cfg->seed);
    if (cfg->globals_spec) sb_add(&b, " --globals %s", cfg->globals_spec);
    if (cfg->causal) sb_add(&b, " --causal");
    if (cfg->layout_name) sb_add(&b, " --layout %s", cfg->layout_name);
    if (b.fail) {
        free(b.s);
        return NULL;
    }
    return b.s;
}

void spa_cli_json_str(FILE *f, const char *key, const char *s)
{
    if (!s) {
        fprintf(f, ", \"%s\": null", key);
        return;
    }
    fprintf(f, ", \"%s\": \"", key);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

spa_err spa_cli_check_output(const char *what, const char *path, const char *input)
{
    struct stat st, in;
    if (stat(path, &st) == 0) {
        CLI_REQUIRE(!S_ISDIR(st.st_mode), SPA_ERR_USAGE, "--%s '%s' is a folder", what, path);
        /* same (device, inode): also catches two spellings of one file */
        if (input && stat(input, &in) == 0)
            CLI_REQUIRE(!(st.st_dev == in.st_dev && st.st_ino == in.st_ino), SPA_ERR_USAGE,
                        "--%s '%s' is the input file; choose another name", what, path);
    }
    size_t len = strlen(path);
    char *copy = malloc(len + 1);
    CLI_REQUIRE(copy, SPA_ERR_OTHER, "out of memory");
    memcpy(copy, path, len + 1);
    char *dir = dirname(copy);
    int isdir = stat(dir, &st) == 0 && S_ISDIR(st.st_mode);
    int writable = isdir && access(dir, W_OK | X_OK) == 0;
    spa_err err = SPA_OK;
    if (!isdir)
        err = spa_set_error(SPA_ERR_USAGE, __FILE__, __LINE__,
                            "--%s '%s': folder '%s' does not exist", what, path, dir);
    else if (!writable)
        err = spa_set_error(SPA_ERR_USAGE, __FILE__, __LINE__,
                            "--%s '%s': folder '%s' is not writable", what, path, dir);
    free(copy);
    return err;
}

void spa_cli_help(FILE *f, spa_cli_cmd cmd)
{
    static const char *pattern =
        "Pattern flags (token i attends the set S(i), the union of every rule; a key\n"
        "counts once; blocks are [c*B, (c+1)*B), the last one may be partial):\n"
        "  --block B          block size (default 64)\n"
        "  --local-blocks W   W odd: i attends every token whose block is within\n"
        "                     (W-1)/2 of its own; 0: no local window (default 3)\n"
        "  --radius R         instead: i attends every j with |i - j| <= R\n"
        "  --globals SPEC     global tokens: '0,250,7:12' (a:b half-open) or 'none';\n"
        "                     everyone attends them and they attend everyone\n"
        "                     (default: the first and the last block)\n"
        "  --random R         per head and query block, R distinct key blocks drawn\n"
        "                     from the blocks outside the head's local window (its own\n"
        "                     block alone when it has none) that hold no global token;\n"
        "                     all of them when fewer are eligible; with --causal\n"
        "                     only blocks that end before that window (default 3)\n"
        "  --stride S         S >= 2: i attends every j with (i - j) mod S == 0\n"
        "  --summary L:C      1 <= C <= L: i attends every j with j mod L >= L - C,\n"
        "                     the last C tokens of every L-token chunk (seen by all,\n"
        "                     but they do not attend all)\n"
        "  --dilated w:r,...  1 <= r <= w: segments [s*w, (s+1)*w); in head h the\n"
        "                     positions p with (p - s*w) mod r == h mod r are selected;\n"
        "                     i attends j when one pair selects both in one segment\n"
        "  --layout F         block layout from an HDF5 file: query block c attends\n"
        "                     every token of each key block the layout marks. Dense:\n"
        "                     'layout' [H or 1, nb, nb], integer or bool, 0/1. Sparse\n"
        "                     (FlexAttention): int32 'kv_num_blocks' [H or 1, nb] and\n"
        "                     'kv_indices' [H or 1, nb, K], optionally with\n"
        "                     'full_kv_num_blocks'/'full_kv_indices' (row = union).\n"
        "                     nb = ceil(n/B); an attribute 'block' must equal --block\n"
        "  --seed S           seed of the random links and synthetic inputs (default 0)\n"
        "  --causal           keep only keys j <= i, in every rule\n"
        "  --scale X          softmax scale (default 1/sqrt(dim))\n"
        "  --fetch-mib M      memory for fetched remote blocks per rank, MiB (default\n"
        "                     512; 0 = no limit). Beyond it a rank works in batches\n"
        "                     of query blocks whose blocks fit half of it, fetching\n"
        "                     each batch while the previous one computes; a block\n"
        "                     two batches need is fetched twice. Results do not change\n"
        "\n"
        "Per head: the value of --local-blocks, --radius, --random, --stride, --summary\n"
        "and --dilated may end in @a:b, applying the rule to heads [a, b) only, e.g.\n"
        "'--local-blocks 3@0:4 --stride 362@4:8'. Such a flag may be repeated with\n"
        "disjoint ranges; without @ it applies to every head and may appear once. A\n"
        "head has at most one local rule; once a local flag is given, heads it does\n"
        "not cover have no local window (with none given, all heads get 3 blocks).\n"
        "A token whose S(i) is empty gets out = 0 and lse = -inf.\n";
    switch (cmd) {
    case SPA_CLI_RUN:
        fprintf(f,
                "usage: spa run [--input F] [--output F] [pattern flags]\n"
                "               [--n N --heads H --dim D] [--json] [--threads T]\n"
                "               [--temperature X] [--progress] [--no-overlap] [--exact]\n\n"
                "Computes sparse attention over MPI ranks. Without --input the inputs are\n"
                "synthetic and seeded (--seed, --temperature); n, heads and dim default to\n"
                "131072, 4 and 64. With --input they come from the HDF5 file.\n\n"
                "  --input F          HDF5 file with q, k, v ([N,D], [H,N,D] or [Bt,H,N,D])\n"
                "  --output F         HDF5 file for out, lse and the plan (written atomically)\n"
                "  --n, --heads, --dim  shape of the synthetic inputs\n"
                "  --json             one JSON object on stdout (rank 0)\n"
                "  --threads T        OpenMP threads per rank (>= 1)\n"
                "  --temperature X    scale of synthetic q and k (default 1)\n"
                "  --progress         progress line on stderr even when it is not a terminal\n"
                "  --no-overlap       complete every transfer before computing (for timing)\n"
                "  --exact            global rows (and rows of blocks that attend most of the\n"
                "                     sequence) summed in 128-bit fixed point after a first\n"
                "                     pass for their maxima: out and lse bit-identical for\n"
                "                     every rank count (other rows always are)\n\n"
                "%s",
                pattern);
        break;
    case SPA_CLI_GEN:
        fprintf(f, "usage: spa gen --output F --n N [--heads H] [--dim D] [--seed S]\n"
                   "               [--temperature X] [--threads T] [--grad]\n\n"
                   "Writes a seeded synthetic input file (q, k, v as [H, N, D] float32):\n"
                   "the same values 'spa run --seed S' computes on without --input.\n"
                   "  --grad             also write dout [H, N, D] (uniform in [-1, 1)), the\n"
                   "                     input of 'spa grad'\n");
        break;
    case SPA_CLI_BENCH:
        fprintf(f,
                "usage: spa bench [pattern flags] [--n N --heads H --dim D] [--json]\n"
                "                 [--threads T] [--temperature X] [--warmup W] [--reps R]\n"
                "                 [--progress] [--no-overlap] [--backward] [--exact]\n\n"
                "Runs W warm-up passes (default 1) and R timed passes (default 5) on\n"
                "synthetic inputs in memory, and reports the median timed pass (by\n"
                "seconds_total of the slowest rank) in the format of 'spa run'.\n"
                "--no-overlap completes every transfer before computing, so that\n"
                "seconds_wait shows the whole communication time (bench/scaling.sh\n"
                "compares the two to measure how much the overlap hides).\n"
                "--backward times the backward pass instead: one untimed forward run\n"
                "gives out and lse, then W + R backward passes on a synthetic dout;\n"
                "flops = 10 * D * sum |S(i)|, and the JSON adds bytes_halo_bwd,\n"
                "bytes_rma_bwd and bytes_global_bwd (gradient bytes sent back).\n"
                "--exact times exact mode (see 'spa run --help' and 'spa grad --help').\n\n%s",
                pattern);
        break;
    case SPA_CLI_PLAN:
        fprintf(f,
                "usage: spa plan [pattern flags] --n N [--heads H] [--dim D] [--ranks P]\n"
                "                [--stats] [--image F.png] [--export-layout F] [--json]\n"
                "                [--threads T]\n\n"
                "Describes the pattern without computing attention, on one process:\n"
                "keys per query (min, mean, max), density, useful FLOPs.\n"
                "  --ranks P          bytes each of P ranks would receive (halo, global, rma)\n"
                "  --stats            hop counts on the directed block graph of head 0\n"
                "  --image F.png      block mask of head 0, at most 1024 x 1024 pixels\n"
                "                     (row = query block, column = key block; orange =\n"
                "                     global, blue = local, red = random, green = strided,\n"
                "                     summary, dilated or layout, white = none)\n"
                "  --export-layout F  write the block layout of every head in FlexAttention's\n"
                "                     form (HDF5, int32): full_kv_num_blocks [H, nb] and\n"
                "                     full_kv_indices [H, nb, K] list the blocks in which\n"
                "                     every token pair is attended, kv_num_blocks and\n"
                "                     kv_indices the partial ones; attribute 'block'. Read\n"
                "                     back with --local-blocks 0 --globals none --random 0\n"
                "                     --layout F (and the same --causal)\n"
                "  --json             one JSON object on stdout\n\n%s",
                pattern);
        break;
    case SPA_CLI_LAYER:
        spa_cli_layer_help(f);
        fputs(pattern, f);
        break;
    case SPA_CLI_GRAD:
        fprintf(f,
                "usage: spa grad --input F [--output G] [pattern flags] [--json]\n"
                "                [--threads T] [--no-overlap] [--exact]\n\n"
                "The backward pass: for a loss L with dL/dout = dout, the gradients of q,\n"
                "k and v of the sparse attention 'spa run' computes with the same flags:\n"
                "  P_ij  = exp(s q_i.k_j - lse_i)             for j in S(i)\n"
                "  Dl_i  = sum_d dout[i,d] out[i,d]\n"
                "  dv_j  = sum_{i: j in S(i)} P_ij dout_i\n"
                "  dS_ij = P_ij (dout_i.v_j - Dl_i)\n"
                "  dq_i  = s sum_j dS_ij k_j,   dk_j = s sum_i dS_ij q_i\n\n"
                "  --input F   HDF5: q, k, v and dout, all of one shape ([N,D], [H,N,D] or\n"
                "              [Bt,H,N,D]); optionally out (q's shape) and lse (q's without\n"
                "              the last dim) from 'spa run' with the same pattern flags:\n"
                "              then they are used (the root attributes spa run writes -\n"
                "              block, local_mode, local_size, random, seed, causal, scale\n"
                "              and the rule flags - must match these flags), else they are\n"
                "              recomputed ('spa gen --grad' writes such an input)\n"
                "  --output G  HDF5: dq, dk, dv (float32, the shape of q), group plan\n"
                "              (random_blocks, globals) and the root attributes of 'spa\n"
                "              run'; written atomically, an existing G survives a failure\n"
                "  --json      the fields of 'spa run' plus bytes_halo_bwd, bytes_rma_bwd,\n"
                "              bytes_global_bwd (gradient bytes sent back, largest rank),\n"
                "              forward (\"stored\" or \"recomputed\"), seconds_forward;\n"
                "              flops = 10 * D * sum |S(i)|, seconds_* of the backward pass\n"
                "  --exact     sum every key's dk, dv in 64-bit fixed point (and a recomputed\n"
                "              forward as 'spa run --exact'): dk and dv bit-identical for\n"
                "              every rank and thread count, given out and lse from an\n"
                "              exact forward; gradient messages twice the bytes. Without\n"
                "              it, dk and dv agree across rank counts to float rounding,\n"
                "              dq outside the global rows bit for bit\n\n"
                "Input errors (exit 3): dout missing or of another shape than q; out or\n"
                "lse alone, misshapen, or from another pattern or seed.\n\n%s",
                pattern);
        break;
    default:
        fprintf(f, "usage: spa <command> [flags]\n\n"
                   "Sparse parallel attention: local window + global tokens + random links,\n"
                   "strided, summary, dilated and layout rules, per head if wished,\n"
                   "across MPI ranks (mpirun -n P spa ...; plain 'spa' runs as one rank).\n\n"
                   "Commands:\n"
                   "  run     compute attention on synthetic or HDF5 inputs\n"
                   "  gen     write a synthetic HDF5 input file\n"
                   "  bench   time repeated in-memory runs\n"
                   "  plan    describe a pattern: key counts, bytes per rank, hops, image\n"
                   "  layer   a multi-head attention layer from x and weights (HDF5)\n"
                   "  grad    the backward pass: dq, dk, dv from q, k, v, dout (HDF5):\n"
                   "          P_ij = exp(s q_i.k_j - lse_i), Dl_i = dout_i.out_i,\n"
                   "          dv_j = sum_i P_ij dout_i, dS_ij = P_ij (dout_i.v_j - Dl_i),\n"
                   "          dq_i = s sum_j dS_ij k_j, dk_j = s sum_i dS_ij q_i\n"
                   "          (input q, k, v, dout [, out, lse]; output dq, dk, dv, plan/)\n\n"
                   "  spa <command> --help   flags of one command\n"
                   "  spa --version          print the version\n\n"
                   "Exit codes: 0 success, 2 usage error, 3 input error, 1 other error.\n");
    }
}
