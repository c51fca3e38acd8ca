/* cli_args.c - flag parsing and help text of the spa command line.
 *
 * Every rank parses the same argv, so a bad flag fails identically
 * everywhere without any communication. Numbers must span their whole
 * argument (strtoll/strtod with an end check): "12x", "" and "1e3" for an
 * integer are usage errors, not silently truncated values. A flag given
 * twice is an error too, so an appended override cannot hide a typo.
 */
#include "cli.h"
#include "spa_impl.h"

#include <ctype.h>
#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum {
    F_INPUT, F_OUTPUT, F_N, F_HEADS, F_DIM, F_BLOCK, F_LOCAL, F_RADIUS, F_GLOBALS, F_RANDOM,
    F_SEED, F_CAUSAL, F_SCALE, F_JSON, F_THREADS, F_TEMP, F_PROGRESS, F_WARMUP, F_REPS,
    F_RANKS, F_STATS, F_IMAGE, F_NO_OVERLAP, F_HELP, F_COUNT
};

#define C_RUN (1u << SPA_CLI_RUN)
#define C_GEN (1u << SPA_CLI_GEN)
#define C_BENCH (1u << SPA_CLI_BENCH)
#define C_PLAN (1u << SPA_CLI_PLAN)
#define C_PATTERN (C_RUN | C_BENCH | C_PLAN)
#define C_ALL (C_RUN | C_GEN | C_BENCH | C_PLAN)

static const struct flag_def {
    const char *name;
    int value;      /* takes a value */
    unsigned cmds;  /* commands that accept it */
} flags[F_COUNT] = {
    [F_INPUT] = {"input", 1, C_RUN},
    [F_OUTPUT] = {"output", 1, C_RUN | C_GEN},
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
    [F_JSON] = {"json", 0, C_RUN | C_BENCH | C_PLAN},
    [F_THREADS] = {"threads", 1, C_ALL},
    [F_TEMP] = {"temperature", 1, C_RUN | C_GEN | C_BENCH},
    [F_PROGRESS] = {"progress", 0, C_RUN | C_BENCH},
    [F_WARMUP] = {"warmup", 1, C_BENCH},
    [F_REPS] = {"reps", 1, C_BENCH},
    [F_RANKS] = {"ranks", 1, C_PLAN},
    [F_STATS] = {"stats", 0, C_PLAN},
    [F_IMAGE] = {"image", 1, C_PLAN},
    [F_NO_OVERLAP] = {"no-overlap", 0, C_RUN | C_BENCH},
    [F_HELP] = {"help", 0, C_ALL},
};

static const char *cmd_names[] = {"", "run", "gen", "bench", "plan"};

/* Integer in [lo, hi] spanning all of s. */
static spa_err parse_int(const char *flag, const char *s, int64_t lo, int64_t hi, int64_t *v)
{
    char *end = NULL;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    SPA_REQUIRE(*s != '\0' && !isspace((unsigned char)*s) && *end == '\0', SPA_ERR_USAGE,
                "--%s expects an integer, got '%s'", flag, s);
    /* an underflowing strtoll gives LLONG_MIN, caught by the first check */
    SPA_REQUIRE(x >= lo, SPA_ERR_USAGE, "--%s must be >= %lld (got '%s')", flag, (long long)lo, s);
    SPA_REQUIRE(errno != ERANGE && x <= hi, SPA_ERR_USAGE, "--%s must be <= %lld (got '%s')", flag,
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
    SPA_REQUIRE(*s != '\0' && !isspace((unsigned char)*s) && *end == '\0', SPA_ERR_USAGE,
                "--%s expects a number, got '%s'", flag, s);
    SPA_REQUIRE(errno != ERANGE && isfinite(x) && x > 0.0, SPA_ERR_USAGE,
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
    SPA_REQUIRE(isdigit((unsigned char)*s) && *end == '\0', SPA_ERR_USAGE,
                "--seed expects a non-negative integer, got '%s'", s);
    SPA_REQUIRE(errno != ERANGE, SPA_ERR_USAGE, "--seed must be below 2^64 (got '%s')", s);
    *v = x;
    return SPA_OK;
}

static spa_err set_flag(spa_cli_opts *o, int id, const char *val)
{
    const char *name = flags[id].name;
    int64_t x = 0;
    double d = 0;
    switch (id) {
    case F_INPUT:
        SPA_REQUIRE(*val, SPA_ERR_USAGE, "--input: empty path");
        o->input = val;
        break;
    case F_OUTPUT:
        SPA_REQUIRE(*val, SPA_ERR_USAGE, "--output: empty path");
        o->output = val;
        break;
    case F_IMAGE:
        SPA_REQUIRE(*val, SPA_ERR_USAGE, "--image: empty path");
        o->image = val;
        break;
    case F_N:
        SPA_CHECK(parse_int(name, val, 1, INT64_MAX / 4, &x));
        o->cfg.n = x;
        o->has_n = o->has_shape = 1;
        break;
    case F_HEADS:
        SPA_CHECK(parse_int(name, val, 1, INT32_MAX, &x));
        o->cfg.heads = (int32_t)x;
        o->has_shape = 1;
        break;
    case F_DIM:
        SPA_CHECK(parse_int(name, val, 1, INT32_MAX, &x));
        o->cfg.dim = (int32_t)x;
        o->has_shape = 1;
        break;
    case F_BLOCK:
        SPA_CHECK(parse_int(name, val, 1, INT32_MAX, &x));
        o->cfg.block = (int32_t)x;
        break;
    case F_LOCAL:
        SPA_CHECK(parse_int(name, val, 1, INT32_MAX, &x));
        o->cfg.local_blocks = (int32_t)x;
        break;
    case F_RADIUS:
        SPA_CHECK(parse_int(name, val, 0, INT64_MAX / 4, &x));
        o->cfg.radius = x;
        break;
    case F_GLOBALS:
        SPA_CHECK(spa_config_set_globals(&o->cfg, val));
        break;
    case F_RANDOM:
        SPA_CHECK(parse_int(name, val, 0, INT32_MAX, &x));
        o->cfg.random = (int32_t)x;
        break;
    case F_SEED:
        SPA_CHECK(parse_seed(val, &o->cfg.seed));
        break;
    case F_CAUSAL:
        o->cfg.causal = 1;
        break;
    case F_SCALE:
        SPA_CHECK(parse_pos_real(name, val, &d));
        SPA_REQUIRE(d < 3.0e38, SPA_ERR_USAGE, "--scale is out of float range (got '%s')", val);
        o->cfg.scale = (float)d;
        break;
    case F_JSON:
        o->json = 1;
        break;
    case F_THREADS:
        SPA_CHECK(parse_int(name, val, 1, 4096, &x));
        o->threads = (int)x;
        break;
    case F_TEMP:
        SPA_CHECK(parse_pos_real(name, val, &d));
        SPA_REQUIRE(d < 3.0e38, SPA_ERR_USAGE, "--temperature is out of float range");
        o->temperature = d;
        break;
    case F_PROGRESS:
        o->progress = 1;
        break;
    case F_NO_OVERLAP:
        o->no_overlap = 1;
        break;
    case F_WARMUP:
        SPA_CHECK(parse_int(name, val, 0, 1000000, &x));
        o->warmup = (int)x;
        break;
    case F_REPS:
        SPA_CHECK(parse_int(name, val, 1, 1000000, &x));
        o->reps = (int)x;
        break;
    case F_RANKS:
        SPA_CHECK(parse_int(name, val, 1, 1 << 20, &x));
        o->plan_ranks = (int)x;
        break;
    case F_STATS:
        o->stats = 1;
        break;
    case F_HELP:
        o->help = 1;
        break;
    default:
        SPA_FAIL(SPA_ERR_OTHER, "unhandled flag %d", id);
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

    SPA_REQUIRE(argc >= 2, SPA_ERR_USAGE, "no command given");
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        o->help = 1;
        SPA_REQUIRE(argc == 2, SPA_ERR_USAGE, "--help takes no further arguments");
        return SPA_OK;
    }
    if (strcmp(cmd, "--version") == 0) {
        o->version = 1;
        SPA_REQUIRE(argc == 2, SPA_ERR_USAGE, "--version takes no further arguments");
        return SPA_OK;
    }
    for (int c = SPA_CLI_RUN; c <= SPA_CLI_PLAN; c++)
        if (strcmp(cmd, cmd_names[c]) == 0) o->cmd = (spa_cli_cmd)c;
    SPA_REQUIRE(o->cmd != SPA_CLI_NONE, SPA_ERR_USAGE,
                "unknown command '%s' (expected run, gen, bench or plan)", cmd);

    unsigned seen = 0;
    for (int a = 2; a < argc; a++) {
        const char *arg = argv[a];
        SPA_REQUIRE(strncmp(arg, "--", 2) == 0 && arg[2] != '\0', SPA_ERR_USAGE,
                    "unexpected argument '%s'", arg);
        /* --flag value, or --flag=value */
        const char *eq = strchr(arg + 2, '=');
        size_t len = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
        int id = -1;
        for (int f = 0; f < F_COUNT; f++)
            if (strlen(flags[f].name) == len && strncmp(flags[f].name, arg + 2, len) == 0) id = f;
        SPA_REQUIRE(id >= 0, SPA_ERR_USAGE, "unknown flag '%.*s'", (int)(len + 2), arg);
        SPA_REQUIRE(flags[id].cmds & (1u << o->cmd), SPA_ERR_USAGE,
                    "'spa %s' does not take --%s", cmd_names[o->cmd], flags[id].name);
        SPA_REQUIRE(!(seen & (1u << id)), SPA_ERR_USAGE, "--%s is given twice", flags[id].name);
        seen |= 1u << id;
        const char *val = NULL;
        if (flags[id].value) {
            if (eq) {
                val = eq + 1;
            } else {
                /* a following flag is a missing value, not a value; "-5" is a value */
                SPA_REQUIRE(a + 1 < argc && strncmp(argv[a + 1], "--", 2) != 0, SPA_ERR_USAGE,
                            "--%s needs a value", flags[id].name);
                val = argv[++a];
            }
        } else {
            SPA_REQUIRE(!eq, SPA_ERR_USAGE, "--%s takes no value", flags[id].name);
        }
        SPA_CHECK(set_flag(o, id, val));
    }
    if (o->help) return SPA_OK;

    SPA_REQUIRE(!((seen & (1u << F_LOCAL)) && (seen & (1u << F_RADIUS))), SPA_ERR_USAGE,
                "--local-blocks and --radius exclude each other");
    if (o->cmd == SPA_CLI_RUN)
        SPA_REQUIRE(!(o->input && o->has_shape), SPA_ERR_USAGE,
                    "--n, --heads and --dim come from the --input file; do not give them");
    if (o->cmd == SPA_CLI_GEN) {
        SPA_REQUIRE(o->output, SPA_ERR_USAGE, "'spa gen' needs --output");
        SPA_REQUIRE(o->has_n, SPA_ERR_USAGE, "'spa gen' needs --n");
    }
    if (o->cmd == SPA_CLI_PLAN) {
        SPA_REQUIRE(o->has_n, SPA_ERR_USAGE, "'spa plan' needs --n");
#ifndef SPA_HAVE_PNG
        SPA_REQUIRE(!o->image, SPA_ERR_USAGE, "--image: this spa was built without libpng");
#endif
    }
    return SPA_OK;
}

spa_err spa_cli_check_output(const char *what, const char *path, const char *input)
{
    struct stat st, in;
    if (stat(path, &st) == 0) {
        SPA_REQUIRE(!S_ISDIR(st.st_mode), SPA_ERR_USAGE, "--%s '%s' is a folder", what, path);
        /* same (device, inode): also catches two spellings of one file */
        if (input && stat(input, &in) == 0)
            SPA_REQUIRE(!(st.st_dev == in.st_dev && st.st_ino == in.st_ino), SPA_ERR_USAGE,
                        "--%s '%s' is the input file; choose another name", what, path);
    }
    size_t len = strlen(path);
    char *copy = malloc(len + 1);
    SPA_REQUIRE(copy, SPA_ERR_OTHER, "out of memory");
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
        "Pattern flags:\n"
        "  --block B          block size (default 64)\n"
        "  --local-blocks W   odd local window in blocks (default 3)\n"
        "  --radius R         token window |i - j| <= R instead of --local-blocks\n"
        "  --globals SPEC     global tokens: '0,250,7:12' (a:b half-open) or 'none'\n"
        "                     (default: the first and the last block)\n"
        "  --random R         random key blocks per query block and head (default 3)\n"
        "  --seed S           seed of the random links and synthetic inputs (default 0)\n"
        "  --causal           keep only keys j <= i\n"
        "  --scale X          softmax scale (default 1/sqrt(dim))\n";
    switch (cmd) {
    case SPA_CLI_RUN:
        fprintf(f,
                "usage: spa run [--input F] [--output F] [pattern flags]\n"
                "               [--n N --heads H --dim D] [--json] [--threads T]\n"
                "               [--temperature X] [--progress] [--no-overlap]\n\n"
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
                "  --no-overlap       complete every transfer before computing (for timing)\n\n"
                "%s",
                pattern);
        break;
    case SPA_CLI_GEN:
        fprintf(f, "usage: spa gen --output F --n N [--heads H] [--dim D] [--seed S]\n"
                   "               [--temperature X] [--threads T]\n\n"
                   "Writes a seeded synthetic input file (q, k, v as [H, N, D] float32):\n"
                   "the same values 'spa run --seed S' computes on without --input.\n");
        break;
    case SPA_CLI_BENCH:
        fprintf(f,
                "usage: spa bench [pattern flags] [--n N --heads H --dim D] [--json]\n"
                "                 [--threads T] [--temperature X] [--warmup W] [--reps R]\n"
                "                 [--progress] [--no-overlap]\n\n"
                "Runs W warm-up passes (default 1) and R timed passes (default 5) on\n"
                "synthetic inputs in memory, and reports the median timed pass (by\n"
                "seconds_total of the slowest rank) in the format of 'spa run'.\n"
                "--no-overlap completes every transfer before computing, so that\n"
                "seconds_wait shows the whole communication time (bench/scaling.sh\n"
                "compares the two to measure how much the overlap hides).\n\n%s",
                pattern);
        break;
    case SPA_CLI_PLAN:
        fprintf(f,
                "usage: spa plan [pattern flags] --n N [--heads H] [--dim D] [--ranks P]\n"
                "                [--stats] [--image F.png] [--json] [--threads T]\n\n"
                "Describes the pattern without computing attention, on one process:\n"
                "keys per query (min, mean, max), density, useful FLOPs.\n"
                "  --ranks P          bytes each of P ranks would receive (halo, global, rma)\n"
                "  --stats            hop counts on the directed block graph of head 0\n"
                "  --image F.png      block mask of head 0, at most 1024 x 1024 pixels\n"
                "                     (row = query block, column = key block; orange =\n"
                "                     global, blue = local, red = random, white = none)\n"
                "  --json             one JSON object on stdout\n\n%s",
                pattern);
        break;
    default:
        fprintf(f, "usage: spa <command> [flags]\n\n"
                   "Sparse parallel attention: local window + global tokens + random links,\n"
                   "across MPI ranks (mpirun -n P spa ...; plain 'spa' runs as one rank).\n\n"
                   "Commands:\n"
                   "  run     compute attention on synthetic or HDF5 inputs\n"
                   "  gen     write a synthetic HDF5 input file\n"
                   "  bench   time repeated in-memory runs\n"
                   "  plan    describe a pattern: key counts, bytes per rank, hops, image\n\n"
                   "  spa <command> --help   flags of one command\n"
                   "  spa --version          print the version\n\n"
                   "Exit codes: 0 success, 2 usage error, 3 input error, 1 other error.\n");
    }
}
