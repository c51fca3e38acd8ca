/* smpi_model.c - the "model" mode of a SimGrid SMPI build of spa.
 *
 * Linked into the SMPI build only, with the linker's --wrap for the symbols
 * below (scripts/smpi/build.sh does both). With SPA_SMPI_MODEL unset every
 * wrapper calls the real function, so the simulated run computes for real
 * and its checksum is the real one. With SPA_SMPI_MODEL=1 nothing is
 * computed and nothing large is really allocated:
 *   - each kernel call charges its useful FLOPs to the simulated host with
 *     smpi_execute_flops (4 * D per (i, j) pair, divided by SPA_SMPI_THREADS,
 *     the OpenMP threads one rank would spread its blocks over), so the
 *     simulated compute time is FLOPs / (calibrated host speed);
 *   - spa_alloc of 64 KiB or more and MPI_Win_allocate return one arena
 *     that every rank shares, address and pages (model_arena below);
 *   - spa_synth writes nothing;
 *   - no message carries a payload: every point-to-point message spa posts
 *     goes from and into shared scratch, and the MPI_Gets of one batch
 *     become one two-sided message of the same bytes from the rank half
 *     the ring away (details at model_scratch below);
 *   - the plan's spread-block test answers from a memo all ranks share
 *     (spread_memo below).
 * Halo, global and collective messages keep their real sizes, senders and
 * receivers; every byte count spa reports is the real one. The trade-off:
 * values, and so the checksum, are meaningless in model mode, in exchange
 * for simulating 1024 ranks in one small machine's memory and time.
 */
#include "runtime.h"

#include <smpi/smpi.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

double __real_spa_kernel_block(const spa_config *cfg, const spa_keysrc *src, spa_scratch *s,
                               int32_t h, int64_t c, const float *q, float *out, float *lse);
void __real_spa_kernel_global_partial(const spa_config *cfg, spa_scratch *s, int32_t h, int64_t c,
                                      const float *qg, const int64_t *gidx, int64_t ng, const float *k,
                                      const float *v, int64_t j0, int64_t len, double *part);
void __real_spa_synth(uint64_t seed, float temperature, int which, int32_t h, int64_t t0,
                      int64_t t1, int32_t D, float *dst);
void *__real_spa_alloc(size_t bytes);
int __real_MPI_Win_allocate(MPI_Aint size, int disp_unit, MPI_Info info, MPI_Comm comm,
                            void *baseptr, MPI_Win *win);

/* SMPI privatises globals per rank, so these are per simulated rank. */
static int model_mode = -1;
static double model_threads = 1.0;

static int model_on(void)
{
    if (model_mode < 0) {
        const char *m = getenv("SPA_SMPI_MODEL");
        const char *t = getenv("SPA_SMPI_THREADS");
        model_mode = m && *m && strcmp(m, "0") != 0;
        model_threads = t && atof(t) > 0.0 ? atof(t) : 1.0;
    }
    return model_mode;
}

static void charge_pairs(const spa_config *cfg, double pairs)
{
    if (pairs > 0.0) smpi_execute_flops_benched(4.0 * (double)cfg->dim * pairs / model_threads);
}

/* Useful pairs of the non-global rows of block c plus, for its global rows
 * (which the kernel computes and the global path overwrites), the window
 * and random keys a plain row of the block visits. */
static double block_pairs(const spa_config *cfg, int32_t h, int64_t c)
{
    const int64_t B = cfg->block, n = cfg->n, r0 = c * B, r1 = spa_block_end(cfg, c);
    double pairs = (double)spa_pattern_pairs(cfg, h, c, c + 1);
    int64_t lo = 0, hi = cfg->nglobals; /* first global >= r0 */
    while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        if (cfg->globals[mid] < r0) lo = mid + 1;
        else hi = mid;
    }
    int64_t ng = 0;
    for (int64_t g = lo; g < cfg->nglobals && cfg->globals[g] < r1; g++, ng++)
        pairs -= cfg->causal ? (double)(cfg->globals[g] + 1) : (double)n;
    if (ng > 0) {
        int64_t j0, j1;
        int32_t rb[64];
        spa_pattern_local_range(cfg, h, c, &j0, &j1);
        int32_t m = cfg->random_max <= 64 ? spa_pattern_random_blocks(cfg, h, c, rb) : cfg->hr[h].random;
        pairs += (double)ng * (double)((j1 - j0) + (int64_t)m * B);
    }
    return pairs;
}

double __wrap_spa_kernel_block(const spa_config *cfg, const spa_keysrc *src, spa_scratch *s,
                               int32_t h, int64_t c, const float *q, float *out, float *lse)
{
    if (!model_on()) return __real_spa_kernel_block(cfg, src, s, h, c, q, out, lse);
    charge_pairs(cfg, block_pairs(cfg, h, c));
    return 0.0; /* the model writes no output */
}

/* Spread rows: global rows attend every key of the span (up to
 * causality); rows of a spread block (c >= 0) are charged the same, an
 * upper bound, since such a block attends most of the sequence. */
void __wrap_spa_kernel_global_partial(const spa_config *cfg, spa_scratch *s, int32_t h, int64_t c,
                                      const float *qg, const int64_t *gidx, int64_t ng, const float *k,
                                      const float *v, int64_t j0, int64_t len, double *part)
{
    if (!model_on()) {
        __real_spa_kernel_global_partial(cfg, s, h, c, qg, gidx, ng, k, v, j0, len, part);
        return;
    }
    double pairs = 0.0;
    for (int64_t g = 0; g < ng; g++) {
        int64_t keys = cfg->causal ? gidx[g] + 1 - j0 : len;
        pairs += (double)(keys < 0 ? 0 : keys > len ? len : keys);
    }
    charge_pairs(cfg, pairs);
}

void __wrap_spa_synth(uint64_t seed, float temperature, int which, int32_t h, int64_t t0,
                      int64_t t1, int32_t D, float *dst)
{
    if (!model_on()) __real_spa_synth(seed, temperature, which, h, t0, t1, D, dst);
}

/* Large buffers: one arena for every rank, at the same address in all of
 * them. SMPI shared memory (smpi_shared_malloc) maps the same pages again
 * for each allocation of each rank, so the pages cost nothing but every
 * rank's first touch of each page (the window's pre-touch, the copy of K
 * and V into it, the zeroed accumulators) still faults it into that
 * rank's page tables: 1 GiB of mappings a rank at 64K tokens a rank, most
 * of the simulation's time and ~2 GB of page tables at 1024 ranks. With
 * one address range the first rank's touch serves them all. Values are
 * meaningless in model mode, so every large buffer of every rank starting
 * at the same byte is no worse than the shared pages' aliasing.
 *
 * SMPI privatises each rank's globals and even its environment, but the
 * ranks are coroutines of one process with one address space: the first
 * rank maps a page at a fixed address, which records the arena and the
 * message scratch (below) for the others. */
#define MODEL_SHARED_MIN ((size_t)1 << 16)
#define MODEL_ARENA ((size_t)64 << 30)
#define MODEL_TAG_ADDR ((uintptr_t)0x5a5a00000000)
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

typedef struct {
    char magic[16];
    char *arena;
    char *scratch; /* SMPI shared memory, so SimGrid skips the copies */
    size_t scratch_bytes;
    uint64_t spread_key;   /* the pattern spread_memo answers for */
    uint8_t *spread_memo;  /* [heads][nb]: 0 unknown, 1 no, 2 yes */
} model_common;

static const char model_magic[16] = "spa smpi model";
static model_common *model_tag; /* per rank: found once */

static model_common *model_shared(void)
{
    if (model_tag) return model_tag;
    void *want = (void *)MODEL_TAG_ADDR;
    void *p = mmap(want, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (p == want) { /* the first rank */
        model_common *m = p;
        m->arena = mmap(NULL, MODEL_ARENA, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m->arena == MAP_FAILED) {
            fprintf(stderr, "smpi model: cannot reserve the %zu-byte arena\n", MODEL_ARENA);
            return NULL;
        }
        memcpy(m->magic, model_magic, sizeof model_magic);
    } else if (p == MAP_FAILED && errno == EEXIST && memcmp(want, model_magic, sizeof model_magic) == 0) {
        p = want; /* another rank's */
    } else {
        if (p != MAP_FAILED) munmap(p, 4096); /* a kernel that took the address as a hint */
        fprintf(stderr, "smpi model: cannot map the ranks' common page at %p\n", want);
        return NULL;
    }
    return model_tag = p;
}

static char *model_arena(size_t bytes)
{
    model_common *m = model_shared();
    return m && bytes <= MODEL_ARENA ? m->arena : NULL;
}

static int in_arena(const void *p)
{
    return model_tag && (const char *)p >= model_tag->arena && (const char *)p < model_tag->arena + MODEL_ARENA;
}

void __real_spa_free(void *p);

void *__wrap_spa_alloc(size_t bytes)
{
    if (!model_on() || bytes < MODEL_SHARED_MIN) return __real_spa_alloc(bytes);
    return model_arena(bytes);
}

void __wrap_spa_free(void *p)
{
    if (!in_arena(p)) __real_spa_free(p);
}

int __wrap_MPI_Win_allocate(MPI_Aint size, int disp_unit, MPI_Info info, MPI_Comm comm,
                            void *baseptr, MPI_Win *win)
{
    if (!model_on()) return __real_MPI_Win_allocate(size, disp_unit, info, comm, baseptr, win);
    void *base = model_arena(size > 0 ? (size_t)size : 1);
    if (!base) return MPI_ERR_NO_MEM;
    int e = MPI_Win_create(base, size, disp_unit, info, comm, win);
    if (e == MPI_SUCCESS) *(void **)baseptr = base;
    return e;
}

/* Whether a block is spread (attends most of the sequence): every rank's
 * plan asks it of every block of every head, O(n) work a rank, so O(n P)
 * for the simulation, which runs all ranks on one core: at 64K tokens a
 * node it took most of the simulation's time from 256 nodes up (each rank
 * of a real cluster pays its own O(n) once per context, in parallel).
 * The answer depends on the pattern only, the same in every rank, so the
 * first rank's answers serve the others. The memo is keyed by the
 * pattern's parameters; a rank whose key differs computes its own. */
int __real_spa_pattern_spread_ws(const spa_config *cfg, int32_t h, int64_t c, spa_patws *w);

static uint64_t fnv(uint64_t x, const void *p, size_t len)
{
    for (size_t i = 0; i < len; i++) x = (x ^ ((const unsigned char *)p)[i]) * 0x100000001b3ULL;
    return x;
}

static uint8_t *spread_memo(const spa_config *cfg)
{
    model_common *m = model_shared();
    if (!m) return NULL;
    uint64_t k = 0xcbf29ce484222325ULL;
    int64_t v[6] = {cfg->n, cfg->heads, cfg->block, cfg->causal, (int64_t)cfg->seed, cfg->nglobals};
    k = fnv(k, v, sizeof v);
    k = fnv(k, cfg->globals, (size_t)cfg->nglobals * sizeof *cfg->globals);
    for (int32_t h = 0; h < cfg->heads; h++) {
        const spa_head_rules *r = &cfg->hr[h];
        int64_t f[7] = {r->local_blocks, r->radius, r->random, r->stride, r->sum_l, r->sum_c, r->ndilated};
        k = fnv(k, f, sizeof f);
        k = fnv(k, r->dil_w, (size_t)r->ndilated * sizeof r->dil_w[0]);
        k = fnv(k, r->dil_r, (size_t)r->ndilated * sizeof r->dil_r[0]);
    }
    k = fnv(k, &cfg->layout.heads, sizeof cfg->layout.heads);
    if (!m->spread_memo) {
        m->spread_memo = calloc((size_t)(cfg->heads * spa_nblocks(cfg)), 1);
        m->spread_key = k;
    }
    return m->spread_key == k ? m->spread_memo : NULL;
}

/* per rank: the memo of the last config asked about (hashing it is ~1 KB) */
static const spa_config *spread_cfg;
static uint8_t *spread_cfg_memo;

int __wrap_spa_pattern_spread_ws(const spa_config *cfg, int32_t h, int64_t c, spa_patws *w)
{
    if (model_on() && cfg != spread_cfg) {
        spread_cfg = cfg;
        spread_cfg_memo = spread_memo(cfg);
    }
    uint8_t *memo = model_on() ? spread_cfg_memo : NULL;
    if (!memo) return __real_spa_pattern_spread_ws(cfg, h, c, w);
    uint8_t *e = memo + (int64_t)h * spa_nblocks(cfg) + c;
    if (!*e) *e = (uint8_t)(1 + (__real_spa_pattern_spread_ws(cfg, h, c, w) != 0));
    return *e - 1;
}

/* Model mode moves no payloads. SimGrid 3.32 copies a message's bytes
 * into a fresh heap buffer whenever the send is detached: always for the
 * sends behind MPI_Get (RMA), for any message below
 * smpi/send-is-detached-thresh (64 KiB), and for every derived datatype
 * (packed on both sides). It skips the copy only between SMPI shared
 * buffers of a contiguous type. With every rank's gets in flight at once
 * the heap copies alone took P x (bytes a rank fetches): 400 MB a rank at
 * 64K tokens a rank. So in model mode
 *   - every MPI_Isend/MPI_Irecv spa posts (halo, the gathered rows, the
 *     two-sided fallback) becomes the same number of bytes as MPI_BYTE
 *     from or into a shared scratch buffer;
 *   - the gets become two-sided messages of the same bytes, from shared
 *     scratch too: each batch's gets are one message (chunked below 2 GiB)
 *     from the rank half the ring away. SimGrid's flow solver cannot handle
 *     the 10^5 concurrent small flows of the real pattern; with uniformly
 *     random links every rank serves about as many bytes as it fetches, so
 *     one partner per rank loads both directions of every link as the real
 *     pattern does. The serving rank posts all of a run's sends when it
 *     exposes its window (after spa_comm_post's barriers), so a transfer
 *     starts when the fetching rank posts its receive, as a get would, and
 *     the server never waits for it. Per-get latency is not charged.
 * Collectives run on spa's buffers, which spa_alloc puts in shared memory
 * from 64 KiB; below that SimGrid's copies are small and short-lived. */

/* Scratch every model message reads or writes, one for all ranks (at
 * the same address, so SimGrid's smpi_is_shared knows it in every rank).
 * A larger one replaces it when needed; the old one stays mapped, as
 * messages in flight may still point into it. */
static void *model_scratch(size_t bytes)
{
    model_common *m = model_shared();
    if (!m) return NULL;
    if (bytes > m->scratch_bytes) {
        size_t want = (size_t)1 << 20;
        while (want < bytes) want <<= 1;
        m->scratch = smpi_shared_malloc(want, __FILE__, __LINE__);
        m->scratch_bytes = want;
    }
    return m->scratch;
}

/* bytes of count elements of type t; 0 if MPI cannot tell */
static double type_bytes(int count, MPI_Datatype t)
{
    int size = 0;
    MPI_Type_size(t, &size);
    return (double)count * (double)size;
}

int __real_MPI_Isend(const void *buf, int count, MPI_Datatype type, int dest, int tag, MPI_Comm comm,
                     MPI_Request *req);
int __real_MPI_Irecv(void *buf, int count, MPI_Datatype type, int src, int tag, MPI_Comm comm, MPI_Request *req);

int __wrap_MPI_Isend(const void *buf, int count, MPI_Datatype type, int dest, int tag, MPI_Comm comm,
                     MPI_Request *req)
{
    double bytes = type_bytes(count, type);
    if (!model_on() || bytes <= 0.0 || bytes > (double)INT32_MAX)
        return __real_MPI_Isend(buf, count, type, dest, tag, comm, req);
    return __real_MPI_Isend(model_scratch((size_t)bytes), (int)bytes, MPI_BYTE, dest, tag, comm, req);
}

int __wrap_MPI_Irecv(void *buf, int count, MPI_Datatype type, int src, int tag, MPI_Comm comm, MPI_Request *req)
{
    double bytes = type_bytes(count, type);
    if (!model_on() || bytes <= 0.0 || bytes > (double)INT32_MAX)
        return __real_MPI_Irecv(buf, count, type, src, tag, comm, req);
    return __real_MPI_Irecv(model_scratch((size_t)bytes), (int)bytes, MPI_BYTE, src, tag, comm, req);
}

/* The get model's state, per simulated rank. */
enum { MODEL_TAG_NB = 900, MODEL_TAG_BYTES, MODEL_TAG_DATA };
#define MODEL_CHUNK ((int64_t)1 << 30)

static int model_gets;                 /* 1 while the model replaces this context's gets */
static int model_src, model_dst;       /* who serves my gets; whose gets I serve */
static int model_nb;                   /* my batches */
static int64_t *model_mine;            /* [model_nb] bytes of my gets per batch */
static MPI_Request *model_rreq;        /* [model_nb * ...] receives, model_rfirst[b] on */
static int *model_rfirst;              /* [model_nb + 1] */
static int model_dnb;                  /* the batches of the rank I serve */
static int64_t *model_theirs;          /* [model_dnb] their bytes per batch */
static MPI_Request *model_sreq;        /* sends of one run */
static int model_nsreq;
static double model_get_bytes;         /* bytes the real spa_comm_fetch posted, for a check */

static int chunks(int64_t bytes)
{
    return bytes <= 0 ? 0 : (int)((bytes + MODEL_CHUNK - 1) / MODEL_CHUNK);
}

int __real_MPI_Get(const void *origin, int ocount, MPI_Datatype otype, int target, MPI_Aint disp,
                   int tcount, MPI_Datatype ttype, MPI_Win win);

int __wrap_MPI_Get(const void *origin, int ocount, MPI_Datatype otype, int target, MPI_Aint disp,
                   int tcount, MPI_Datatype ttype, MPI_Win win)
{
    if (!model_gets) return __real_MPI_Get(origin, ocount, otype, target, disp, tcount, ttype, win);
    model_get_bytes += type_bytes(ocount, otype);
    return MPI_SUCCESS;
}

static void model_gets_free(void)
{
    free(model_mine), free(model_rreq), free(model_rfirst), free(model_theirs), free(model_sreq);
    model_mine = model_theirs = NULL;
    model_rreq = model_sreq = NULL;
    model_rfirst = NULL;
    model_gets = model_nb = model_dnb = model_nsreq = 0;
}

spa_err __real_spa_comm_connect(spa_comm *c);

/* After the window exists: tell the rank that serves my gets how many
 * bytes each of my batches fetches, and learn the same of the rank I
 * serve, so that both sides post matching messages. */
spa_err __wrap_spa_comm_connect(spa_comm *c)
{
    spa_err e = __real_spa_comm_connect(c);
    if (!model_on() || e != SPA_OK || !c->rma || c->P < 2) return e;
    const spa_commplan *pl = c->plan;
    const spa_config *cfg = c->cfg;
    const int64_t D = cfg->dim;
    model_gets_free();
    model_src = (c->rank + c->P / 2) % c->P;
    model_dst = (c->rank - c->P / 2 + c->P) % c->P;
    model_nb = pl->nbatch;
    model_mine = calloc((size_t)model_nb + 1, sizeof(int64_t));
    model_rfirst = calloc((size_t)model_nb + 1, sizeof(int));
    SPA_REQUIRE(model_mine && model_rfirst, SPA_ERR_OTHER, "out of memory");
    for (int b = 0; b < model_nb; b++) {
        for (int i = pl->batch_run[b]; i < pl->batch_run[b + 1]; i++) {
            const spa_run_blk *r = &pl->runs[i];
            model_mine[b] += 2 * spa_run_tokens(cfg, r->b0, r->nblk) * D * (int64_t)sizeof(float);
        }
        model_rfirst[b + 1] = model_rfirst[b] + chunks(model_mine[b]);
    }
    model_rreq = malloc(((size_t)model_rfirst[model_nb] + 1) * sizeof(MPI_Request));
    SPA_REQUIRE(model_rreq, SPA_ERR_OTHER, "out of memory");
    SPA_MPI_CHECK(MPI_Sendrecv(&model_nb, 1, MPI_INT, model_src, MODEL_TAG_NB, &model_dnb, 1, MPI_INT, model_dst,
                               MODEL_TAG_NB, c->comm, MPI_STATUS_IGNORE));
    model_theirs = calloc((size_t)model_dnb + 1, sizeof(int64_t));
    SPA_REQUIRE(model_theirs, SPA_ERR_OTHER, "out of memory");
    SPA_MPI_CHECK(MPI_Sendrecv(model_mine, model_nb, MPI_INT64_T, model_src, MODEL_TAG_BYTES, model_theirs, model_dnb,
                               MPI_INT64_T, model_dst, MODEL_TAG_BYTES, c->comm, MPI_STATUS_IGNORE));
    int ns = 0;
    for (int b = 0; b < model_dnb; b++) ns += chunks(model_theirs[b]);
    model_sreq = malloc(((size_t)ns + 1) * sizeof(MPI_Request));
    SPA_REQUIRE(model_sreq, SPA_ERR_OTHER, "out of memory");
    model_gets = 1;
    return SPA_OK;
}

/* bytes as messages of at most MODEL_CHUNK, sent to or received from peer */
static spa_err model_xfer(int64_t bytes, int peer, int send, MPI_Comm comm, MPI_Request *req)
{
    for (int64_t left = bytes; left > 0; left -= MODEL_CHUNK) {
        int cnt = (int)(left < MODEL_CHUNK ? left : MODEL_CHUNK);
        void *buf = model_scratch((size_t)cnt);
        if (send) SPA_MPI_CHECK(__real_MPI_Isend(buf, cnt, MPI_BYTE, peer, MODEL_TAG_DATA, comm, req++));
        else SPA_MPI_CHECK(__real_MPI_Irecv(buf, cnt, MPI_BYTE, peer, MODEL_TAG_DATA, comm, req++));
    }
    return SPA_OK;
}

spa_err __real_spa_comm_post(spa_comm *c, const float *k, const float *v, spa_stats *st);

/* The window is exposed once the real post returns: serve this run's gets. */
spa_err __wrap_spa_comm_post(spa_comm *c, const float *k, const float *v, spa_stats *st)
{
    spa_err e = __real_spa_comm_post(c, k, v, st);
    if (!model_gets || e != SPA_OK) return e;
    double t = spa_now();
    /* the previous run's sends: done, since its receivers passed the barrier */
    if (model_nsreq) SPA_MPI_CHECK(MPI_Waitall(model_nsreq, model_sreq, MPI_STATUSES_IGNORE));
    model_nsreq = 0;
    for (int b = 0; b < model_dnb; b++) {
        SPA_CHECK(model_xfer(model_theirs[b], model_dst, 1, c->comm, model_sreq + model_nsreq));
        model_nsreq += chunks(model_theirs[b]);
    }
    st->seconds_rma += spa_now() - t;
    return SPA_OK;
}

spa_err __real_spa_comm_fetch(spa_comm *c, int b, spa_stats *st);

spa_err __wrap_spa_comm_fetch(spa_comm *c, int b, spa_stats *st)
{
    model_get_bytes = 0.0;
    spa_err e = __real_spa_comm_fetch(c, b, st);
    if (!model_gets || e != SPA_OK) return e;
    SPA_REQUIRE(b < model_nb && model_get_bytes == (double)model_mine[b], SPA_ERR_OTHER,
                "smpi model: batch %d posted %.0f bytes of gets, the plan %lld", b, model_get_bytes,
                (long long)(b < model_nb ? model_mine[b] : -1));
    double t = spa_now();
    SPA_CHECK(model_xfer(model_mine[b], model_src, 0, c->comm, model_rreq + model_rfirst[b]));
    st->seconds_rma += spa_now() - t;
    return SPA_OK;
}

spa_err __real_spa_comm_wait_batch(spa_comm *c, int b, spa_stats *st);

/* In place of the flushes: the batch's receives. */
spa_err __wrap_spa_comm_wait_batch(spa_comm *c, int b, spa_stats *st)
{
    if (!model_gets) return __real_spa_comm_wait_batch(c, b, st);
    double t = spa_now();
    int n = model_rfirst[b + 1] - model_rfirst[b];
    if (n) SPA_MPI_CHECK(MPI_Waitall(n, model_rreq + model_rfirst[b], MPI_STATUSES_IGNORE));
    double t2 = spa_now();
    st->seconds_rma += t2 - t;
    st->seconds_wait += t2 - t;
    return SPA_OK;
}

spa_err __real_spa_comm_wait_rank(spa_comm *c, int b, int r, spa_stats *st);

/* In place of the last batch's flush per rank: the batch's receives (one
 * message carries the whole batch), at the first rank waited for; they
 * are null requests after it. */
spa_err __wrap_spa_comm_wait_rank(spa_comm *c, int b, int r, spa_stats *st)
{
    if (!model_gets) return __real_spa_comm_wait_rank(c, b, r, st);
    return __wrap_spa_comm_wait_batch(c, b, st);
}

void __real_spa_comm_destroy(spa_comm **c);

/* The last run's sends complete once their receivers have them, which
 * every rank has by the time it leaves its run. */
void __wrap_spa_comm_destroy(spa_comm **c)
{
    if (model_gets && c && *c) {
        if (model_nsreq) MPI_Waitall(model_nsreq, model_sreq, MPI_STATUSES_IGNORE);
        model_gets_free();
    }
    __real_spa_comm_destroy(c);
}

int __real_MPI_Init_thread(int *argc, char ***argv, int required, int *provided);

/* SMPI provides MPI_THREAD_SINGLE only. This build compiles OpenMP out, so
 * each rank has one thread and FUNNELED asks for nothing more than that. */
int __wrap_MPI_Init_thread(int *argc, char ***argv, int required, int *provided)
{
    int e = __real_MPI_Init_thread(argc, argv, required, provided);
    if (e == MPI_SUCCESS && *provided < required && required <= MPI_THREAD_FUNNELED)
        *provided = required;
    return e;
}
