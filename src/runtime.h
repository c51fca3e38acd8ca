/* runtime.h - the context of the distributed runtime (private).
 *
 * runtime.c schedules a run; comm.c holds every MPI call of it. */
#ifndef SPA_RUNTIME_H
#define SPA_RUNTIME_H

#include "spa_impl.h"

typedef struct spa_task {
    int32_t h;
    int64_t c;
} spa_task;

struct spa_ctx_s {
    MPI_Comm comm;
    int P, rank, threads, overlap;
    spa_config cfg;
    spa_commplan plan;
    int64_t n_own;          /* t1 - t0 */
    int64_t pairs_total;    /* sum |S(i)| over all ranks and heads */

    /* tasks: (head, query block), the ready ones first */
    spa_task *task;
    int64_t ntask, nready, tasks_done;
    spa_scratch **scr;      /* [threads] */

    /* keys as the kernel sees them */
    spa_keyseg seg[3];      /* left halo, own shard, right halo */
    spa_keysrc src;

    /* halo: [H][len][D] each side, K and V */
    float *hl_k, *hl_v, *hr_k, *hr_v;
    int64_t nleft, nright;
    MPI_Request *reqs;
    int nreqs;

    /* globals: [H][|G|][D] gathered q, k, v; [|G|][3][H][D] staging;
     * [H][|G|][D + 2] partials */
    float *gq, *gk, *gv, *gstage;
    double *part;
    int *gcount, *gdispl;   /* Allgatherv, in floats */
    MPI_Datatype part_type;
    MPI_Op part_op;

    /* random links: window of K then V, [H][n_own][D] each; fetched blocks */
    MPI_Win win;
    float *wbase;
    int rma;                /* 1 = MPI_Get, 0 = two-sided fallback */
    float *fk, *fv;         /* [nfetch][B][D] */
    int64_t *fblock, *fhead_off;
    int64_t *run_slot;      /* [nruns] first slot of each run */
    /* two-sided fallback: runs others request from me */
    int64_t *serve;         /* [nserve][4] (rank, h, b0, nblk) */
    int nserve;
    MPI_Request *rreqs;
    int nrreqs;

    spa_stats *st;          /* the run in progress */
    void (*progress)(double, void *);
    void *progress_arg;
    double progress_last;
};

/* Local: buffers, datatypes, segment lists. */
spa_err spa_comm_setup(spa_ctx ctx);
/* Collective: the MPI window, or the two-sided fallback's request lists. */
spa_err spa_comm_connect(spa_ctx ctx);
void spa_comm_teardown(spa_ctx ctx);
spa_err spa_comm_globals(spa_ctx ctx, const float *q, const float *k, const float *v);
spa_err spa_comm_post(spa_ctx ctx, const float *k, const float *v);
void spa_comm_poke(spa_ctx ctx);
spa_err spa_comm_complete(spa_ctx ctx);
spa_err spa_comm_merge_globals(spa_ctx ctx);

#endif
