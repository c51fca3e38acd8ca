/* spa.h - public API of spa, sparse parallel attention.
 *
 * Hybrid sparse attention (local window + global tokens + random block links)
 * over a sequence split into contiguous block-aligned shards across MPI ranks.
 *
 * Layers, bottom up:
 *   spa_config_*     the pattern parameters and their validation (no MPI)
 *   spa_pattern_*    who attends whom: S(i) for any token, any block (no MPI)
 *   spa_partition_*  which rank owns which blocks (no MPI)
 *   spa_commplan_*   what each rank receives from whom, and its byte counts (no MPI)
 *   spa_kernel_*     block-sparse attention on one rank's memory (no MPI)
 *   spa_reference_*  the dense masked O(n^2) oracle, for tests only (no MPI)
 *   spa_ctx_*        the distributed runtime (collective over a communicator)
 *   spa_io_*         parallel HDF5 input and output (collective)
 *
 * Tensors are row-major. A "shard" tensor is [H][n_own][D] floats: the rows
 * [tok_lo, tok_hi) of every head, head-major.
 *
 * Every function returns an spa_err; spa_last_error() gives the message.
 */
#ifndef SPA_H
#define SPA_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include <mpi.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SPA_VERSION "0.1.0"
/* The same version as numbers; tests/install checks all four against CMake's
 * project(VERSION). spa_version() gives the library's own at run time. */
#define SPA_VERSION_MAJOR 0
#define SPA_VERSION_MINOR 1
#define SPA_VERSION_PATCH 0

/* Error codes double as the CLI's exit codes (SPEC section 3). */
typedef enum spa_err {
    SPA_OK = 0,
    SPA_ERR_OTHER = 1, /* internal, MPI, system */
    SPA_ERR_USAGE = 2, /* bad flags or parameters */
    SPA_ERR_INPUT = 3  /* bad input file or data */
} spa_err;

/* The message of the most recent error on this process (never NULL). */
const char *spa_last_error(void);

/* ------------------------------------------------------------------ config */

/* The per-head rules of SPEC section 1.1. A flag's value may end in @a:b,
 * which applies it to heads [a, b) only; spa_config_add_rule collects the
 * values, spa_config_validate resolves them into one spa_head_rules per head. */
typedef enum spa_rule {
    SPA_RULE_LOCAL_BLOCKS = 0, /* --local-blocks W (odd, or 0 = none) */
    SPA_RULE_RADIUS,           /* --radius R */
    SPA_RULE_RANDOM,           /* --random R */
    SPA_RULE_STRIDE,           /* --stride S (S >= 2) */
    SPA_RULE_SUMMARY,          /* --summary L:C (1 <= C <= L) */
    SPA_RULE_DILATED,          /* --dilated w:r[,w:r...] (1 <= r <= w) */
    SPA_RULE_COUNT
} spa_rule;

enum { SPA_MAX_DILATED = 8 };

/* The rules of one head, resolved. */
typedef struct spa_head_rules {
    int32_t local_blocks;  /* W >= 1 odd: block window; 0: none */
    int64_t radius;        /* >= 0: radius rule; -1: none (at most one local rule) */
    int32_t random;        /* random blocks per query block */
    int64_t stride;        /* S >= 2; 0: none */
    int64_t sum_l, sum_c;  /* summary L:C; 0: none */
    int32_t ndilated;      /* (w, r) pairs */
    int64_t dil_w[SPA_MAX_DILATED], dil_r[SPA_MAX_DILATED];
} spa_head_rules;

/* A block layout in compressed rows: row (h, c) lists the key blocks
 * idx[off[h * nb + c] .. off[h * nb + c + 1]), sorted and unique.
 * heads is 1 (the layout applies to every head) or H; 0 = no layout. */
typedef struct spa_layout {
    int32_t heads;
    int64_t nb;
    int64_t *off;          /* [heads * nb + 1] */
    int32_t *idx;          /* [off[heads * nb]] */
} spa_layout;

typedef struct spa_config {
    int64_t n;            /* tokens */
    int32_t heads;        /* H: independent problems */
    int32_t dim;          /* D: head dimension */
    int32_t block;        /* B: block size, default 64 */
    /* The all-heads values of the first three rules, used for a rule with no
     * spa_config_add_rule value (the API's short form). */
    int32_t local_blocks; /* W: odd, or 0 = none; used when radius < 0; default 3 */
    int64_t radius;       /* R >= 0 selects radius mode; -1 = block mode */
    int32_t random;       /* random blocks per (head, query block), default 3 */
    uint64_t seed;        /* keys the random-link generator, default 0 */
    int causal;           /* keep only j <= i */
    float scale;          /* 0 means 1/sqrt(D) once validated */
    /* (bindings mirror the fields n .. fetch_bytes)
     * Memory for fetched remote blocks, in bytes, per rank (--fetch-mib).
     * When a rank's blocks do not fit, its query blocks are processed in
     * batches whose blocks fit half of it, each batch's fetches overlapping
     * the previous batch's compute; a block two batches need is fetched
     * twice. 0: no limit. Default SPA_FETCH_BYTES_DEFAULT. */
    int64_t fetch_bytes;
    char *globals_spec;   /* NULL = default (first and last block); "none" */
    /* Flag values per rule, as given: several values joined by ';'. NULL
     * when the flag was not given. Set with spa_config_add_rule. */
    char *rule_spec[SPA_RULE_COUNT];
    spa_layout layout;    /* --layout; heads == 0 when none */
    char *layout_name;    /* the layout's file, recorded in the output */
    /* Filled by spa_config_validate: sorted unique global token indices,
     * and the sorted unique blocks that hold at least one of them. */
    int64_t *globals;
    int64_t nglobals;
    int64_t *global_blocks;
    int64_t nglobal_blocks;
    spa_head_rules *hr;   /* [heads] the rules of each head */
    int32_t random_max;   /* max over heads of hr[h].random */
    /* Tokens whose K and V every rank gathers once: G and every head's
     * summary columns, sorted unique. */
    int64_t *kv_tokens;
    int64_t nkv_tokens;
} spa_config;

/* 512 MiB per rank: at n = 2^24, H = 1 on 2 ranks the machine's memory in
 * use peaks at 1.07x q + k + v + out (1024 MiB: 1.16x); bench/memory.sh */
#define SPA_FETCH_BYTES_DEFAULT ((int64_t)512 << 20)

/* Defaults of SPEC section 1: n = 131072, H = 4, D = 64, B = 64, W = 3,
 * random 3, seed 0, default globals. Not collective. */
void spa_config_init(spa_config *cfg);

/* Copies spec ("none", "0,5,7:12"); parsed by spa_config_validate. */
spa_err spa_config_set_globals(spa_config *cfg, const char *spec);

/* Checks every parameter, resolves the scale and the global set.
 * Returns SPA_ERR_USAGE for bad parameters. Not collective; every rank
 * gets the same answer on the same flags. */
spa_err spa_config_validate(spa_config *cfg);

/* Adds one value of a per-head rule flag, in the command line's syntax
 * ("3", "3@0:4", "64:8", "2048:1,4096:2@0:2"). Parsed by validate. */
spa_err spa_config_add_rule(spa_config *cfg, spa_rule rule, const char *value);

/* Copies a layout into cfg (NULL removes it). Checked against n and the
 * block by validate. */
spa_err spa_config_set_layout(spa_config *cfg, const spa_layout *lay);

/* Frees a layout's arrays. Accepts NULL. */
void spa_layout_free(spa_layout *lay);

/* Deep copy (globals, rules and layout included). */
spa_err spa_config_copy(spa_config *dst, const spa_config *src);

/* Frees what validate and set_globals allocated. Accepts NULL. */
void spa_config_free(spa_config *cfg);

/* Parses a globals spec against n into a sorted unique array (caller frees).
 * Exposed for tests. */
spa_err spa_parse_globals(const char *spec, int64_t n, int64_t **out, int64_t *count);

/* ----------------------------------------------------------------- pattern */

static inline int64_t spa_nblocks(const spa_config *cfg)
{
    return (cfg->n + cfg->block - 1) / cfg->block;
}

/* One past the last token of block b: (b + 1) B, or n for the last block
 * (which may be partial). Its tokens are [b B, spa_block_end(cfg, b)). */
static inline int64_t spa_block_end(const spa_config *cfg, int64_t b)
{
    const int64_t e = (b + 1) * cfg->block;
    return e < cfg->n ? e : cfg->n;
}

/* Counter-based generator: a SplitMix64-style hash of (seed, head, block,
 * counter). Any rank can draw any block's links alone. */
uint64_t spa_rng(uint64_t seed, uint64_t head, uint64_t block, uint64_t counter);

/* 1 when token j is global. O(log |G|). */
int spa_pattern_is_global(const spa_config *cfg, int64_t j);

/* 1 when block b holds a global token. */
int spa_pattern_block_has_global(const spa_config *cfg, int64_t b);

/* 1 when token j is in G or is a summary column of head h: its K and V
 * are gathered by every rank. */
int spa_pattern_is_gathered(const spa_config *cfg, int32_t h, int64_t j);

/* The local block window of query block c in head h: blocks [*b0, *b1]
 * inclusive. A head without a local rule gets {c} (the random rule's
 * window, SPEC 1.1). */
void spa_pattern_window(const spa_config *cfg, int32_t h, int64_t c, int64_t *b0, int64_t *b1);

/* Union over the rows of block c of their local key ranges, as the
 * half-open token range [*j0, *j1); causal-clipped. Empty (j0 == j1) when
 * head h has no local rule. */
void spa_pattern_local_range(const spa_config *cfg, int32_t h, int64_t c, int64_t *j0, int64_t *j1);

/* Random key blocks of (head h, query block c), sorted ascending.
 * blocks[] has room for cfg->random_max entries. Returns how many were drawn. */
int32_t spa_pattern_random_blocks(const spa_config *cfg, int32_t h, int64_t c, int32_t *blocks);

/* The key blocks of (h, c) that the block-level and residue rules name:
 * random and layout blocks (full[k] = 1: every row attends the whole
 * block, up to causality) and the blocks holding a strided or dilated key
 * of some row of c (full[k] = 0). Sorted ascending, unique; blocks[] and
 * full[] have room for nb entries. The local window and the gathered
 * tokens are not included. Returns the count. */
int64_t spa_pattern_key_blocks(const spa_config *cfg, int32_t h, int64_t c, int32_t *blocks,
                               unsigned char *full);

/* 1 when query block c of head h attends so much of the sequence that its
 * rows take the spread path (partials over every rank's shard, merged by
 * log-sum-exp) instead of fetching their keys. A pure function of the
 * pattern: the same on every rank count. */
int spa_pattern_spread(const spa_config *cfg, int32_t h, int64_t c);

/* Whether key j is in S(i) for head h, straight from the SPEC's rules.
 * Slow; for the reference and tests. */
int spa_pattern_attends(const spa_config *cfg, int32_t h, int64_t i, int64_t j);

/* |S(i)| of each token i of query block c, head h: counts[i - c*B].
 * Set semantics: a key that several rules select counts once. */
void spa_pattern_block_keys(const spa_config *cfg, int32_t h, int64_t c, int64_t *counts);

/* |S(i)| summed over the tokens of query blocks [c0, c1) of head h (for
 * FLOP counts); -1 when out of memory. */
int64_t spa_pattern_pairs(const spa_config *cfg, int32_t h, int64_t c0, int64_t c1);

/* The block layout of (h, c) in FlexAttention's form (SPEC 1.1, spa plan
 * --export-layout): full[] the key blocks in which every existing token
 * pair is attended, part[] those in which some but not all are. Both have
 * room for nb entries and come out ascending. Returns 0, or -1 when out
 * of memory. */
int spa_pattern_export_row(const spa_config *cfg, int32_t h, int64_t c, int32_t *full, int64_t *nfull,
                           int32_t *part, int64_t *npart);

/* --------------------------------------------------------------- partition */

/* Contiguous block-aligned shards whose sizes differ by at most one block.
 * Rank r owns blocks [*b0, *b1) and tokens [*t0, *t1). */
void spa_partition(const spa_config *cfg, int P, int r, int64_t *b0, int64_t *b1, int64_t *t0,
                   int64_t *t1);
/* The rank that owns token j. */
int spa_partition_owner(const spa_config *cfg, int P, int64_t j);

/* ------------------------------------------------------- synthetic inputs */

/* Seeded synthetic values for tensor `which` (0 = q, 1 = k, 2 = v, 3 = dout) of head h,
 * tokens [t0, t1): dst is [t1 - t0][D]. Keyed by (seed, which, h, token,
 * d), so any rank produces the same bytes for the same token. Values are
 * uniform in [-1, 1) times `temperature` for q and k (1 = near-uniform
 * attention at D = 64; larger = peakier), and uniform in [-1, 1) for v and dout. */
void spa_synth(uint64_t seed, float temperature, int which, int32_t h, int64_t t0, int64_t t1,
               int32_t D, float *dst);

/* ------------------------------------------------------ communication plan */

/* A token range [t0, t1) exchanged with one rank. */
typedef struct spa_xfer {
    int rank;
    int64_t t0, t1;
} spa_xfer;

/* A contiguous run of random key blocks [b0, b0 + nblk) of head h, owned
 * by `rank`, fetched with one MPI_Get per tensor. */
typedef struct spa_run_blk {
    int rank;
    int32_t h;
    int64_t b0, nblk;
} spa_run_blk;

/* One row of the spread path: token tok of head h. */
typedef struct spa_spread_row {
    int64_t tok;
    int32_t h;
    int32_t tile;               /* rows of one tile share h and their query block's rules */
} spa_spread_row;

/* Who sends what to rank r, a pure function of (cfg, P, r). One
 * description of four kinds of transfer:
 *   halo      contiguous key ranges from the neighbours (two-sided)
 *   gathered  K and V of cfg->kv_tokens (G and summary columns), allgathered once
 *   fetched   remote key blocks of the random, strided, dilated and layout
 *             rules, each fetched once per rank, coalesced into runs
 *   spread    query rows that attend most of the sequence (G, dense layout
 *             rows): their q is allgathered, every rank reduces them over its
 *             own shard, and the partials are merged by log-sum-exp */
typedef struct spa_commplan {
    int P, rank;
    int64_t b0, b1, t0, t1;     /* owned blocks and tokens */
    int64_t ext0, ext1;         /* keys the owned local windows need, every head: own + halo */
    int nrecv, nsend;           /* halo pieces, sorted by rank then t0 */
    spa_xfer *recv, *send;
    int64_t nkv_own;            /* gathered tokens this rank owns */
    int64_t nglobal_own;        /* global tokens this rank owns */
    int64_t nspread;            /* spread rows of every rank, in tile order */
    spa_spread_row *spread;     /* [nspread]: sorted by (tile, tok) */
    int32_t nspread_tiles;
    int64_t nspread_own;        /* of them, rows this rank owns */
    int64_t nfetch;             /* (head, block) pairs fetched, over all batches */
    int nruns;                  /* coalesced runs of them */
    spa_run_blk *runs;          /* by batch, then (h, b0) */
    /* Batches (cfg->fetch_bytes): batch k fetches runs[batch_run[k] ..
     * batch_run[k + 1]) (batch_slots[k] blocks), then computes the query
     * blocks batch_task[batch_task_off[k] .. batch_task_off[k + 1]) that
     * need a halo or a fetched block. When a strided or dilated rule is
     * present, the last batch holds the keys of the residue pass and no
     * query block. One batch, the whole plan, when everything fits. */
    int nbatch;
    int *batch_run;             /* [nbatch + 1] */
    int64_t *batch_slots;       /* [nbatch] */
    int64_t *batch_task_off;    /* [nbatch + 1] */
    struct spa_hc { int32_t h; int64_t c; } *batch_task;
    int64_t ntask_ready;        /* own query blocks needing neither halo nor fetch */
    struct spa_hc *ready_task;  /* [ntask_ready] */
    /* Bytes this rank receives (SPEC section 3 fields). K and V both count.
     * bytes_global is the allgather of K, V of the gathered tokens and q of
     * the spread rows, plus the partials of every spread row it merges. */
    int64_t bytes_halo, bytes_global, bytes_rma;
} spa_commplan;

/* Builds rank r's plan. Not collective, no MPI. */
spa_err spa_commplan_build(const spa_config *cfg, int P, int r, spa_commplan *plan);
/* The same, taking the spread rows from like, a plan of the same cfg for
 * any P and rank (they depend on neither): every rank's plan in one process
 * without scanning every block of every head for each. */
spa_err spa_commplan_build_like(const spa_config *cfg, int P, int r, const spa_commplan *like,
                                spa_commplan *plan);
void spa_commplan_free(spa_commplan *plan);

/* ------------------------------------------- plan report (issue 12) */
/* The analyses behind `spa plan --stats --image`, block by block (never per
 * token pair, so n = 10M takes seconds). Not collective, no MPI; cfg
 * validated. h is a head in [0, cfg->heads), else SPA_ERR_USAGE. Out of
 * memory is SPA_ERR_OTHER. */

/* Keys per query, |S(i)|, over every token and head: the least, the most
 * and their sum (the pairs; useful flops = 4 D pairs). Runs on the OpenMP
 * threads; the same for any number of them. */
typedef struct spa_plan_keys {
    int64_t min, max, pairs;
} spa_plan_keys;
spa_err spa_plan_key_counts(const spa_config *cfg, spa_plan_keys *out);

/* What rank r of P owns and receives (spa_commplan_build's figures, SPEC
 * section 3): its query blocks [block_begin, block_end), the bytes of K and
 * V (and q, partials) it receives per run, the (head, block) pairs it
 * fetches and the batches they take under cfg->fetch_bytes. */
typedef struct spa_plan_rank {
    int64_t block_begin, block_end, bytes_halo, bytes_global, bytes_rma, fetched_blocks, batches;
} spa_plan_rank;
spa_err spa_plan_rank_bytes(const spa_config *cfg, int P, int r, spa_plan_rank *out);
/* The same for every rank of P, into out[P] (spa_commplan_build_like). */
spa_err spa_plan_ranks_bytes(const spa_config *cfg, int P, spa_plan_rank *out);

/* Kinds of a block-mask pixel, ORed. OTHER: the strided, summary, dilated
 * and layout rules. */
enum { SPA_PLAN_PIX_LOCAL = 1, SPA_PLAN_PIX_GLOBAL = 2, SPA_PLAN_PIX_RANDOM = 4, SPA_PLAN_PIX_OTHER = 8 };

/* Side of a block-mask image of nb blocks (spa_nblocks) at most max_side
 * pixels wide (max_side < 1 counts as 1): ceil(nb / f), with the blocks per
 * pixel f = ceil(nb / max_side) (at least 1) in *factor. */
int64_t spa_plan_mask_side(int64_t nb, int64_t max_side, int64_t *factor);

/* Block-level mask of head h, downsampled by f blocks per pixel:
 *   pix: [side][side], the caller's, row = query block / f, column = key
 *   block / f; side must be ceil(nb / f) (spa_plan_mask_side), else
 *   SPA_ERR_OTHER "bad mask geometry".
 * A pixel ORs the SPA_PLAN_PIX_* kinds of every (query block, key block)
 * pair in it that has at least one (i, j) with j in S(i); 0 = none. */
spa_err spa_plan_block_mask(const spa_config *cfg, int32_t h, int64_t f, int64_t side,
                            unsigned char *pix);

/* Hop counts of head h on the directed block graph: c -> b when some token
 * of block c attends some token of block b, so dist(c, b) is the number of
 * attention layers after which block b's information has reached block c.
 * Exact for block-level rules without causal, a lower bound on token-level
 * hops otherwise. Owns no memory (nothing to free). */
typedef struct spa_plan_hops {
    int64_t sources;     /* BFS roots used */
    int64_t pairs;       /* (source, target) pairs with target != source */
    int64_t reachable;   /* of those, pairs with a path */
    int64_t max;         /* largest finite distance */
    double mean;         /* mean finite distance (0 when none) */
    int64_t hist[16];    /* hist[d]: reachable pairs at distance d (15 = 15+) */
} spa_plan_hops;

/* Fills *out by a BFS from `sources` query blocks: all of them when
 * sources < 1 or sources >= nb, else evenly spaced ones (root k is block
 * (2k + 1) nb / (2 sources)). Runs on the OpenMP threads; the result does
 * not depend on their number. *out is zeroed first, also on error. */
spa_err spa_plan_block_hops(const spa_config *cfg, int32_t h, int64_t sources, spa_plan_hops *out);

/* Writes pix ([side][side], as from spa_plan_block_mask) as an 8-bit RGB
 * PNG, one colour per pixel by priority: global orange, local blue, random
 * red, other green, none white. Atomic: written under a temporary name
 * beside path, then renamed; a failed write leaves path untouched and is
 * SPA_ERR_OTHER. SPA_ERR_USAGE when spa was built without libpng. */
spa_err spa_write_png(const char *path, const unsigned char *pix, int64_t side);

/* ---------------------------------------------------------------- reference */

/* Dense masked reference, O(n^2), test oracle only. Builds S(i) token by
 * token from spa_pattern_attends, accumulates in double.
 *   q, k, v: [H][n][D] whole tensors;  out: [H][r1 - r0][D];  lse: [H][r1 - r0]
 * Only rows [r0, r1) are computed. */
spa_err spa_reference(const spa_config *cfg, const float *q, const float *k, const float *v,
                      int64_t r0, int64_t r1, float *out, float *lse);

/* ---------------------------------------------------------------- runtime */

typedef struct spa_ctx_s *spa_ctx;

/* Communication and compute figures of one spa_ctx_run, SPEC section 3. */
typedef struct spa_stats {
    double seconds_total, seconds_compute, seconds_halo, seconds_global, seconds_rma, seconds_io;
    double seconds_wait; /* blocked on halo and random-link transfers */
    int64_t bytes_halo, bytes_global, bytes_rma;
    int64_t flops;     /* useful FLOPs, 4 * D * sum |S(i)| over all heads */
    double checksum;   /* sum of all out values, all ranks (double, block by block) */
    int rma;           /* 1 when random links went over MPI_Get, 0 for p2p */
    int threads;
    int batches;       /* batches of fetched blocks (cfg->fetch_bytes); 1 when all fit */
    /* spa_ctx_backward only: the bytes this rank SENDS back to the keys'
     * owners, each the mirror of what the forward brought it (K and V of
     * the same pieces, so equal to the plan's bytes_halo and bytes_rma):
     * dk, dv of the halo; of the fetched runs; of the gathered tokens not
     * owned here, plus dq of the spread rows not owned here. */
    int64_t bytes_halo_bwd, bytes_rma_bwd, bytes_global_bwd;
} spa_stats;

/* Collective over comm. Partitions, plans, allocates every buffer and the
 * MPI window for cfg (validated). threads <= 0 keeps the OpenMP default.
 * The environment variable SPA_RANDOM_TRANSPORT=p2p makes random links use
 * the two-sided fallback, as when MPI_Win_allocate fails. */
spa_err spa_ctx_create(MPI_Comm comm, const spa_config *cfg, int threads, spa_ctx *ctx);

/* This rank's tokens [*t0, *t1). Not collective. */
void spa_ctx_shard(spa_ctx ctx, int64_t *t0, int64_t *t1);

/* Collective. Computes attention for this rank's rows.
 *   q, k, v: [H][t1 - t0][D] shard;  out: [H][t1 - t0][D];  lse: [H][t1 - t0]
 * st may be NULL. Rows outside the spread rows (plan->spread: global rows,
 * rows of blocks that attend most keys) are bit-identical for every rank
 * count; the spread rows agree to float32 rounding, or bit for bit in
 * exact mode (spa_ctx_set_exact). */
spa_err spa_ctx_run(spa_ctx ctx, const float *q, const float *k, const float *v, float *out,
                    float *lse, spa_stats *st);

/* Collective. The backward pass of spa_ctx_run: for L with dL/dout = dout,
 * the gradients of this rank's rows and keys.
 *   q, k, v, out, dout: [H][t1 - t0][D];  lse: [H][t1 - t0]  (out and lse
 *   from spa_ctx_run on the same q, k, v)
 *   dq, dk, dv: [H][t1 - t0][D], written
 * K and V travel as in spa_ctx_run (bytes_halo, bytes_global, bytes_rma of
 * st, where bytes_global also counts dout, lse and Dl = dout.out of the
 * spread rows, gathered like their q, and not the merge of partials); the
 * gradients of borrowed keys and the spread rows' dq go back to their
 * owners (bytes_*_bwd). Fetched runs return by MPI_Put when the fetches
 * are one-sided, two-sided otherwise (st->rma). The first call sets up
 * the returns (collective). For a given rank count the result does not
 * depend on the thread count. Across rank counts, dq outside the spread
 * rows is bit-identical; dk, dv and the spread rows' dq agree to float32
 * rounding, or are bit-identical in exact mode (spa_ctx_set_exact). st
 * may be NULL;
 * st->flops counts 10 * D * sum |S(i)|, the checksum is the sum of dq, dk
 * and dv over all ranks. */
spa_err spa_ctx_backward(spa_ctx ctx, const float *q, const float *k, const float *v, const float *out,
                         const float *lse, const float *dout, float *dq, float *dk, float *dv, spa_stats *st);

/* Progress callback: called on this rank from the calling thread during
 * spa_ctx_run with the fraction of query blocks done, at most ~10 times a
 * second. fn NULL turns it off. Not collective. */
void spa_ctx_set_progress(spa_ctx ctx, void (*fn)(double frac, void *arg), void *arg);

/* Overlap of communication with compute, on by default. Off, every
 * transfer completes before the first block is computed: the bench uses it
 * to measure how much communication the overlap hides. Not collective. */
void spa_ctx_set_overlap(spa_ctx ctx, int on);

/* Exact mode, off by default: results that do not depend on the rank
 * count, thread count or batching at all.
 * - spa_ctx_run: the spread rows take a pass for the maxima of their
 *   scores (MPI_MAX), then each key block's sums, rescaled to those maxima
 *   and rounded to 128-bit fixed point, are summed as integers (st's
 *   bytes_global counts the maxima and the 16-byte sums instead of the
 *   double partials). out and lse bit-identical for every P.
 * - spa_ctx_backward: every tile's contribution to a key's dk, dv, and a
 *   spread row's dq over one key block, is rounded once to int64_t fixed
 *   point (units of 2^-F, F from n and the maxima of |q|, |k|, |dout|,
 *   |Dl| and of the norms of dout and v rows, one Allreduce) and summed as
 *   integers, also when returned to the owner. dq, dk, dv bit-identical
 *   for every P given the same inputs (out and lse from an exact forward
 *   run for a P-independent pipeline). The sinks and every gradient
 *   message take twice their float bytes (bytes_*_bwd double). A term
 *   that is not finite makes every dk and dv (or that spread row) NaN.
 * Must be set alike on every rank: spa_ctx_run and spa_ctx_backward check
 * it (one small Allreduce) and fail with SPA_ERR_USAGE on every rank
 * otherwise; the next spa_ctx_backward rebuilds its returns when it
 * changed. Not collective. */
void spa_ctx_set_exact(spa_ctx ctx, int on);

/* This rank's K and V shards inside the MPI window ([H][t1 - t0][D] each),
 * or NULL when random links go two-sided. A caller that fills these and
 * passes them to spa_ctx_run saves a copy of K and V per run. Refill them
 * only between runs that every rank has finished (e.g. after a barrier):
 * other ranks read them with MPI_Get during a run. Not collective. */
void spa_ctx_kv_buffers(spa_ctx ctx, float **k, float **v);

/* The plan this rank executes. */
const spa_commplan *spa_ctx_plan(spa_ctx ctx);

/* Collective. Accepts NULL; sets *ctx to NULL. */
void spa_ctx_destroy(spa_ctx *ctx);

/* Collective: agree on an error. Every rank passes its local code; all get
 * the largest, and the message of the lowest rank that failed becomes this
 * rank's spa_last_error(). */
spa_err spa_agree(MPI_Comm comm, spa_err local);

/* --------------------------------------------------------------------- I/O */

typedef struct spa_input_s *spa_input;

/* Shape of q, k, v in an input file. */
typedef struct spa_shape {
    int rank;           /* 2, 3 or 4 */
    int64_t dims[4];    /* [N, D], [H, N, D] or [Bt, H, N, D] */
    int64_t n;          /* N */
    int32_t heads;      /* product of the leading dims */
    int32_t dim;        /* D */
} spa_shape;

/* Collective. Opens an input file and validates q, k, v (present, same
 * shape, rank 2..4, float type, no zero or overflowing sizes). Errors are
 * SPA_ERR_INPUT and agreed on every rank. */
spa_err spa_io_open(MPI_Comm comm, const char *path, spa_input *in, spa_shape *shape);

/* Collective. Reads this rank's rows [t0, t1) of every head into
 * [H][t1 - t0][D] float buffers, with collective MPI-IO, converting from
 * float64 or float16. Non-finite values are an input error naming the
 * dataset and the first index. */
spa_err spa_io_read(spa_input in, int64_t t0, int64_t t1, float *q, float *k, float *v);

/* Collective. Closes and sets *in to NULL; accepts NULL. */
void spa_io_close(spa_input *in);

/* Collective. Writes the output file of SPEC section 2 atomically: under a
 * temporary name in the same folder, renamed when complete.
 *   out: [H][t1 - t0][D] and lse: [H][t1 - t0] for this rank's rows. */
spa_err spa_io_write(MPI_Comm comm, const char *path, const spa_shape *shape,
                     const spa_config *cfg, int64_t t0, int64_t t1, const float *out,
                     const float *lse, int threads);

/* Collective. Writes a seeded synthetic input (q, k, v as [H, N, D]) with
 * spa_synth: the same bytes
 * for any rank count. */
spa_err spa_io_gen(MPI_Comm comm, const char *path, int64_t n, int32_t heads, int32_t dim,
                   uint64_t seed, float temperature);

/* Gradient files (spa grad, issue 11). */

/* Collective, after spa_io_open. Opens what `spa grad` reads beside q, k,
 * v: dout (required, q's shape) and, when the file holds them, out (q's
 * shape) and lse (q's shape without the last dimension) of a spa run;
 * *has_fwd = 1 then. A missing dout, a wrong shape or type, or only one
 * of out and lse is SPA_ERR_INPUT naming the dataset, on every rank. */
spa_err spa_io_open_grad(spa_input in, int *has_fwd);

/* Collective. Checks that the root attributes recording the pattern
 * (those spa_io_write writes: block, local_mode, local_size, random, seed,
 * causal, scale, the rule flags, layout) match cfg (validated), i.e. that
 * out and lse are from this pattern. SPA_ERR_INPUT naming out and lse and
 * the first attribute that differs or is missing. */
spa_err spa_io_check_forward(spa_input in, const spa_config *cfg);

/* Collective. Reads this rank's rows [t0, t1) of dout ([H][t1 - t0][D])
 * and, when out and lse are not NULL and present, of out ([H][t1 - t0][D])
 * and lse ([H][t1 - t0]). Non-finite values are an input error naming the
 * dataset (-inf is allowed in lse: a row with no keys). */
spa_err spa_io_read_grad(spa_input in, int64_t t0, int64_t t1, float *dout, float *out, float *lse);

/* Collective. spa_io_write for gradients: dq, dk, dv (float32, the shape
 * of q; this rank's [H][t1 - t0][D]), the plan group and the same root
 * attributes, atomically. */
spa_err spa_io_write_grad(MPI_Comm comm, const char *path, const spa_shape *shape,
                          const spa_config *cfg, int64_t t0, int64_t t1, const float *dq,
                          const float *dk, const float *dv, int threads);

/* Collective. spa_io_gen plus dout [H, N, D] (spa_synth tensor 3). */
spa_err spa_io_gen_grad(MPI_Comm comm, const char *path, int64_t n, int32_t heads, int32_t dim,
                        uint64_t seed, float temperature);

/* ------------------------------------------ added for the command line */
/* src/cli sees this header only; these were private helpers before. */

/* Block layout files (SPEC 1.1, --layout and spa plan --export-layout). */

/* Collective over comm: rank 0 reads the small file (default file driver)
 * and broadcasts it; the outcome is agreed. Reads the dense form (`layout`,
 * [H or 1, nb, nb], any integer or boolean type, values 0/1) or the sparse
 * one (`kv_num_blocks` [H or 1, nb] + `kv_indices` [H or 1, nb, K], int32,
 * with optional `full_kv_num_blocks` + `full_kv_indices`; a row is the
 * union). nb must be ceil(n / block), heads 1 or `heads`, an attribute
 * `block` when present must equal block. Every malformed case is
 * SPA_ERR_INPUT with one message naming the dataset. *out is filled for
 * spa_config_set_layout; free it with spa_layout_free. */
spa_err spa_io_read_layout(MPI_Comm comm, const char *path, int32_t block, int64_t n,
                           int32_t heads, spa_layout *out);

/* Not collective. Writes the block layout of cfg (validated) in
 * FlexAttention's form: int32 `full_kv_num_blocks` [H, nb],
 * `full_kv_indices` [H, nb, K], `kv_num_blocks` [H, nb], `kv_indices`
 * [H, nb, K'] from spa_pattern_export_row, unused entries 0, and the root
 * attribute `block`. Atomic: written under a temporary name, renamed. */
spa_err spa_io_export_layout(const char *path, const spa_config *cfg);

/* Walks every object of the HDF5 file at path (links, object headers,
 * attributes, dataset types, shapes, layouts and one element of each
 * dataset) on this process alone, ignoring HDF5's ordinary errors. For a
 * child process to run on an input before the ranks open it: HDF5 1.10
 * faults, loops or allocates without bound on some damaged files, and only
 * a process of its own can be stopped safely (the spa program runs it under
 * a time and memory limit). Returns 1 if an HDF5 allocation failed, else 0.
 * Not collective; needs no MPI. */
int spa_io_probe(const char *path);

/* Stop requests (signals). flag points at a sig_atomic_t that a signal
 * handler sets to the signal's number (NULL: none). spa_io_write,
 * spa_io_gen and spa_io_layer_write agree across ranks, after each write step, whether any rank's
 * flag is set; if so every rank abandons the temporary file (rank 0 removes
 * it, the target is untouched) and they return SPA_ERR_OTHER. spa_io_read
 * holds no temporary file and does not check it. Not collective. */
void spa_io_set_stop(const volatile sig_atomic_t *flag);

/* The signal that stopped the last spa_io_write or spa_io_gen (the largest
 * number set on any rank), or 0. Not collective. */
int spa_io_stopped(void);

/* Records a printf-style message as spa_last_error() and returns code;
 * SPA_ERR_OTHER messages get " (file:line)". Not collective. */
spa_err spa_set_error(spa_err code, const char *file, int line, const char *fmt, ...)
#ifdef __GNUC__
    __attribute__((format(printf, 4, 5)))
#endif
    ;

/* Monotonic wall-clock seconds. */
double spa_now(void);

/* 64-byte aligned, zeroed memory (what the kernels expect of shards);
 * spa_free accepts NULL. */
void *spa_alloc(size_t bytes);
void spa_free(void *p);

/* ------------------------------------ the library as a building block */
/* Issue 12: the installed library (cmake --install, spa::spa, spa.pc). */

/* "MAJOR.MINOR.PATCH" of the library linked in, which may be newer than
 * the SPA_VERSION a program was compiled against. Not collective. */
const char *spa_version(void);

/* sizeof(spa_config), for language bindings that allocate one themselves
 * (python/spa mirrors the fields from n to scale). Not collective. */
size_t spa_config_sizeof(void);

/* Multi-head attention layer (spa layer): projections, attention, output
 * projection, on this rank's rows. The weights follow PyTorch's nn.Linear
 * (y = x W^T + b), so an exported nn.MultiheadAttention or q/k/v/o Linear
 * layers can be used as they are:
 *   wq, wk, wv: [H*D][d_model]    bq, bk, bv: [H*D] or NULL
 *   wo:         [d_model][H*D]    bo:         [d_model] or NULL
 * H and D are the context's heads and dim; row h*D + d of wq is dimension d
 * of head h. Every rank holds all the weights. */
typedef struct spa_layer_weights {
    int64_t d_model;
    const float *wq, *wk, *wv, *wo;
    const float *bq, *bk, *bv, *bo;
} spa_layer_weights;

/* Figures of one spa_layer_run on this rank. */
typedef struct spa_layer_stats {
    spa_stats attn;          /* the attention's own (flops, checksum: global) */
    double seconds_proj_in;  /* x -> q, k, v: three sgemm + bias and head split */
    double seconds_proj_out; /* concat(out) -> y: one sgemm + bias */
    double seconds_total;
    int64_t flops_proj;      /* 2 * rows * d_model * H*D * 4, this rank */
    double checksum;         /* sum of y over every rank */
} spa_layer_stats;

/* Collective over the context's communicator.
 *   x: [rows][d_model] this rank's tokens [t0, t1) (spa_ctx_shard)
 *   y: [rows][d_model]
 *   out: [H][rows][D], lse: [H][rows], the attention's, or NULL
 *   Q = x Wq^T + bq (likewise K, V), split into H heads of D;
 *   out_h = attention(Q_h, K_h, V_h) with the context's pattern;
 *   y = concat_h(out_h) Wo^T + bo.
 * The projections are OpenBLAS sgemm on the context's thread count (outside
 * the attention's block loop). SPA_ERR_USAGE for missing weights or
 * d_model < 1, the same on every rank. st may be NULL. */
spa_err spa_layer_run(spa_ctx ctx, const spa_layer_weights *w, const float *x, float *y, float *out,
                      float *lse, spa_layer_stats *st);

/* Layer files (spa layer --input). Datasets x [n, d_model], wq, wk, wv
 * [H*D, d_model], wo [d_model, H*D], optional bq, bk, bv [H*D] and bo
 * [d_model]; float32, or float64 converted on read. */
typedef struct spa_layer_shape {
    int64_t n, d_model, hd;  /* hd = H*D, the rows of wq */
    int32_t heads;           /* the root attribute `heads`, or 0 when absent */
    int has_bias[4];         /* bq, bk, bv, bo present */
} spa_layer_shape;

/* Collective. Opens a layer file and checks every dataset's presence,
 * type and shape against x and wq (input error naming the dataset). */
typedef struct spa_layer_input_s *spa_layer_input;
spa_err spa_io_layer_open(MPI_Comm comm, const char *path, spa_layer_input *in, spa_layer_shape *shape);

/* Collective. Reads this rank's rows [t0, t1) of x ([t1 - t0][d_model],
 * collective MPI-IO) and every weight on every rank into w, whose arrays
 * it allocates (free them with spa_io_layer_free_weights). Non-finite
 * values are an input error naming the dataset. */
spa_err spa_io_layer_read(spa_layer_input in, int64_t t0, int64_t t1, float *x, spa_layer_weights *w);
void spa_io_layer_free_weights(spa_layer_weights *w);

/* Collective; accepts NULL and sets *in to NULL. */
void spa_io_layer_close(spa_layer_input *in);

/* Collective. Writes y [n, d_model] float32 and, when out and lse are not
 * NULL (on every rank alike), out [H, n, D] and lse [H, n]; root attributes
 * n, heads, dim, d_model, block, seed, causal, scale, ranks, version and
 * `pattern` (the flags, may be NULL). Atomic: under a temporary name
 * beside path, renamed by rank 0 when every rank is done; a failed write
 * leaves an existing file untouched. Rows [t0, t1) are this rank's. */
spa_err spa_io_layer_write(MPI_Comm comm, const char *path, const spa_config *cfg, int64_t d_model,
                           int64_t t0, int64_t t1, const float *y, const float *out,
                           const float *lse, const char *pattern);

/* ------------------------------------ kernel instruction set (issue 10) */
/* The kernel the library chose for this process, once, from the CPU's
 * features: "avx512", "avx2" or "generic"; SPA_KERNEL=avx512|avx2|generic
 * forces one the CPU has, SPA_KERNEL=blas runs the products on OpenBLAS
 * ("blas"). Not collective. */
const char *spa_kernel_name(void);

#ifdef __cplusplus
}
#endif
#endif
