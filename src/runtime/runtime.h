/* runtime.h - the context of the distributed runtime (private).
 *
 * runtime.c is the schedule: which blocks run when, and where the kernel
 * finds its keys. It makes no MPI call; comm.c makes them all. */
#ifndef SPA_RUNTIME_H
#define SPA_RUNTIME_H

#include "comm.h"

/* a (head, query block) task: the plan's own pair */
typedef struct spa_hc spa_task;

struct spa_ctx_s {
    spa_comm *cm;
    int P, rank, threads, overlap;
    int exact;         /* spa_ctx_set_exact */
    spa_config cfg;
    spa_commplan plan;
    int64_t n_own;          /* t1 - t0 */
    int64_t pairs_total;    /* sum |S(i)| over all ranks and heads */

    /* tasks: (head, query block) of the non-spread blocks, the ready ones first */
    spa_task *task;
    int64_t ntask, nready, tasks_done;
    /* the last batch's tasks again, in stages: stage 0 reads no block that
     * batch fetches, stage s >= 1 reads blocks of the rank at distance s
     * ((rank + s) mod P) and of nearer ones only, so that it can run once
     * those ranks' gets are complete (stage_task[stage_off[s] ..
     * stage_off[s + 1])). The forward pass waits for the ranks one by one
     * and computes each stage as it is ready. */
    spa_task *stage_task;
    int64_t *stage_off;     /* [P + 1] */
    spa_scratch **scr;      /* [threads] */
    /* [H][b1 - b0] each own block's share of the checksum, from its task;
     * bresum: summed again after the tasks (its rows include spread rows,
     * which the merge writes, or no block task writes it) */
    double *bsum;
    unsigned char *bresum;

    /* the kernel's key sources: left halo, own shard, right halo, the
     * gathered tokens and the fetched blocks */
    spa_keyseg seg[3];
    spa_keysrc src;

    /* spread rows, in the plan's tile order: tokens, the first row of each
     * tile, and their partials [nspread][D + 2] */
    int64_t *stok;
    int64_t *tile_row;      /* [ntiles + 1] */
    double *part;
    /* a spread tile's keys in nunit ranges (units) of whole pieces of keys
     * (absolute multiples), one task each, so that a tile is not one long
     * task on many threads: unit u is [unit_base + u * unit_keys, + unit_keys)
     * within the shard; unit 0 sums into part, unit u > 0 into upart +
     * (u - 1) * nspread * (D + 2), merged into part in unit order */
    int64_t nunit, unit_base, unit_keys;
    double *upart;
    float *xmax;            /* exact mode: the spread rows' maxima [nspread], then max |v| */
    spa_i128 *xacc;         /* exact mode: their fixed-point sums [nspread][D + 2] */

    /* residue pass (strided and dilated rules): tasks in phases, one phase
     * per rule so that each row merges its rules in a fixed order; every
     * task is up to SPA_RESIDUE_ROWS rows of one class. Rows' partials [H][n_own](D + 2). */
    spa_residue *rgroup;    /* [nrtask] the class of each task */
    int64_t *rrow_off;      /* [nrtask + 1] into rrows */
    int64_t *rrows;         /* row tokens */
    int64_t nrtask;
    int64_t rphase[SPA_MAX_DILATED + 2]; /* first task of each rule, then the end */
    float *rm, *rl, *racc;

    void (*progress)(double, void *);
    void *progress_arg;
    double progress_last;

    /* the backward pass (backward_rt.c): set up by the first
     * spa_ctx_backward, freed by spa_ctx_backward_free */
    struct spa_bwd *bwd;
};

/* The c of the kernels' spread path for the tile whose first row is
 * plan->spread[r0]: -1 for global rows, else the spread block whose rule
 * its rows follow. */
static inline int64_t spa_ctx_tile_block(const struct spa_ctx_s *ctx, int64_t r0)
{
    const int64_t tok = ctx->plan.spread[r0].tok;
    return spa_pattern_is_global(&ctx->cfg, tok) ? -1 : tok / ctx->cfg.block;
}

/* Collective: a usage error on every rank when ranks differ in exact
 * mode, whose collectives differ (never a hang). One Allreduce of 2 ints
 * when P > 1. */
spa_err spa_ctx_agree_exact(spa_ctx ctx);

/* Collective (when the backward was set up). Frees ctx->bwd. */
void spa_ctx_backward_free(spa_ctx ctx);

#endif
