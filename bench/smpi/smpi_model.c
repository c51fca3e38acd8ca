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
 *   - spa_alloc of 64 KiB or more and MPI_Win_allocate return SMPI shared
 *     memory, which every rank maps onto the same few pages;
 *   - spa_synth writes nothing;
 *   - the MPI_Gets of one batch are summed and issued, at the end of the
 *     batch's posting step, as one transfer of the same bytes from the rank half
 *     the ring away (chunked to the window's size). SimGrid's flow solver
 *     cannot handle the 10^5 concurrent small flows of the real pattern;
 *     with uniformly random links every rank sends about as many bytes as
 *     it receives, so one partner per rank keeps both link directions
 *     loaded as the real pattern does. Per-get latency is not charged.
 * Halo, global and collective messages keep their real sizes, senders and
 * receivers. The trade-off: values, and so the checksum, are meaningless in
 * model mode, in exchange for simulating 1024 ranks in one small machine's
 * memory and time.
 */
#include "runtime.h"

#include <smpi/smpi.h>

#include <string.h>

void __real_spa_kernel_block(const spa_config *cfg, const spa_keysrc *src, spa_scratch *s,
                             int32_t h, int64_t c, const float *q, float *out, float *lse);
void __real_spa_kernel_global_partial(const spa_config *cfg, spa_scratch *s, int32_t h, int64_t c,
                                      const float *qg, const int64_t *gidx, int64_t ng, const float *k,
                                      const float *v, int64_t j0, int64_t len, double *part);
void __real_spa_synth(uint64_t seed, float temperature, int which, int32_t h, int64_t t0,
                      int64_t t1, int32_t D, float *dst);
void *__real_spa_alloc(size_t bytes);
int __real_MPI_Win_allocate(MPI_Aint size, int disp_unit, MPI_Info info, MPI_Comm comm,
                            void *baseptr, MPI_Win *win);
int __real_MPI_Win_free(MPI_Win *win);
int __real_MPI_Get(const void *origin, int ocount, MPI_Datatype otype, int target, MPI_Aint disp,
                   int tcount, MPI_Datatype ttype, MPI_Win win);
spa_err __real_spa_comm_fetch(spa_comm *c, int b, spa_stats *st);

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
    const int64_t B = cfg->block, n = cfg->n, r0 = c * B, r1 = r0 + B < n ? r0 + B : n;
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

void __wrap_spa_kernel_block(const spa_config *cfg, const spa_keysrc *src, spa_scratch *s,
                             int32_t h, int64_t c, const float *q, float *out, float *lse)
{
    if (!model_on()) {
        __real_spa_kernel_block(cfg, src, s, h, c, q, out, lse);
        return;
    }
    charge_pairs(cfg, block_pairs(cfg, h, c));
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

#define MODEL_SHARED_MIN ((size_t)1 << 16)

void *__wrap_spa_alloc(size_t bytes)
{
    if (!model_on() || bytes < MODEL_SHARED_MIN) return __real_spa_alloc(bytes);
    return smpi_shared_malloc(bytes, __FILE__, __LINE__);
}

/* Windows allocated here: freed by the MPI_Win_free wrapper. */
#define MODEL_MAX_WIN 16
static MPI_Win model_win[MODEL_MAX_WIN];
static void *model_base[MODEL_MAX_WIN];

int __wrap_MPI_Win_allocate(MPI_Aint size, int disp_unit, MPI_Info info, MPI_Comm comm,
                            void *baseptr, MPI_Win *win)
{
    if (!model_on()) return __real_MPI_Win_allocate(size, disp_unit, info, comm, baseptr, win);
    int slot = 0;
    while (slot < MODEL_MAX_WIN && model_base[slot]) slot++;
    if (slot == MODEL_MAX_WIN)
        return __real_MPI_Win_allocate(size, disp_unit, info, comm, baseptr, win);
    void *base = smpi_shared_malloc(size > 0 ? (size_t)size : 1, __FILE__, __LINE__);
    int e = MPI_Win_create(base, size, disp_unit, info, comm, win);
    if (e != MPI_SUCCESS) {
        smpi_shared_free(base);
        return e;
    }
    model_win[slot] = *win;
    model_base[slot] = base;
    *(void **)baseptr = base;
    return MPI_SUCCESS;
}

int __wrap_MPI_Win_free(MPI_Win *win)
{
    MPI_Win w = *win;
    int e = __real_MPI_Win_free(win);
    for (int i = 0; i < MODEL_MAX_WIN; i++)
        if (model_base[i] && model_win[i] == w) {
            smpi_shared_free(model_base[i]);
            model_base[i] = NULL;
        }
    return e;
}

/* Model mode: bytes of this run's gets, and the window they target. */
static double model_get_bytes = 0.0;
static MPI_Win model_get_win = MPI_WIN_NULL;

int __wrap_MPI_Get(const void *origin, int ocount, MPI_Datatype otype, int target, MPI_Aint disp,
                   int tcount, MPI_Datatype ttype, MPI_Win win)
{
    if (!model_on()) return __real_MPI_Get(origin, ocount, otype, target, disp, tcount, ttype, win);
    int size = 0;
    MPI_Type_size(otype, &size);
    model_get_bytes += (double)ocount * (double)size;
    model_get_win = win;
    return MPI_SUCCESS;
}

spa_err __wrap_spa_comm_fetch(spa_comm *c, int b, spa_stats *st)
{
    spa_err e = __real_spa_comm_fetch(c, b, st);
    if (!model_on() || e != SPA_OK || model_get_bytes <= 0.0) return e;
    const int P = c->P, rank = c->rank;
    const spa_config *cfg = c->cfg;
    int partner = (rank + P / 2) % P;
    int64_t b0, b1, t0, t1;
    spa_partition(cfg, P, partner, &b0, &b1, &t0, &t1);
    /* the partner's window: K and V of its shard */
    double win_bytes = 2.0 * (double)cfg->heads * (double)(t1 - t0) * (double)cfg->dim * 4.0;
    if (win_bytes < 4.0) win_bytes = 4.0;
    static char *dst;
    static double dst_bytes;
    if (!dst || dst_bytes < win_bytes) {
        if (dst) smpi_shared_free(dst);
        dst = smpi_shared_malloc((size_t)win_bytes, __FILE__, __LINE__);
        dst_bytes = win_bytes;
    }
    for (double left = model_get_bytes; left > 0.0; left -= win_bytes) {
        int cnt = (int)((left < win_bytes ? left : win_bytes) / 4.0);
        if (cnt < 1) cnt = 1;
        __real_MPI_Get(dst, cnt, MPI_FLOAT, partner, 0, cnt, MPI_FLOAT, model_get_win);
    }
    model_get_bytes = 0.0;
    return SPA_OK;
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
