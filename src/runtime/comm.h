/* comm.h - the communication layer (private): it executes a spa_commplan
 * and holds every MPI call of a run.
 *
 * It owns the transfer buffers and datatypes, built once at set-up; a run
 * only posts, waits and counts the bytes it moved into the caller's stats.
 * When to post and when to wait is the schedule's business (runtime.c).
 */
#ifndef SPA_COMM_H
#define SPA_COMM_H

#include "spa_impl.h"

typedef struct spa_comm {
    MPI_Comm comm;
    int P, rank;
    const spa_config *cfg;
    const spa_commplan *plan;
    int64_t n_own;

    /* halo: [H][len][D] per side, K and V; one datatype per piece */
    float *hl_k, *hl_v, *hr_k, *hr_v;
    int64_t nleft, nright;
    MPI_Datatype *rtype, *stype; /* [nrecv], [nsend] */
    MPI_Request *reqs;
    int nreqs;

    /* gathered: K and V of cfg->kv_tokens, [H][nkv][D]; q of the spread
     * rows in tile order, [nspread][D]. One all-gather through stage:
     * rank s's part is its gathered tokens [tok][2][H][D], then its
     * spread rows [row][D]. */
    float *gk, *gv, *sq, *stage;
    int *gcount, *gdispl;        /* [P], in floats */
    int64_t *kv_first;           /* [P + 1] first gathered token of each rank */
    int64_t *spos;               /* [nspread] offset of each spread row in stage */
    int gather_mpi;              /* 1: MPI_Allgatherv (SPA_GATHER=mpi); 0: spa's own Bruck */
    MPI_Datatype part_type;
    MPI_Op part_op;
    MPI_Datatype i128_type;      /* exact mode: 128-bit integers, summed by i128_op */
    MPI_Op i128_op;

    /* fetched blocks: a window over K then V ([H][n_own][D] each), or the
     * two-sided fallback. Batch k lands in buffer k % nbuf, in slots in
     * plan order, (head, block) ascending within the batch. */
    MPI_Win win;
    float *wbase;
    int rma;                     /* 1 = MPI_Get, 0 = two-sided */
    int nbuf;                    /* 2 when there are several batches */
    int64_t buf_slots;           /* slots of one buffer: the largest batch */
    float *fk, *fv;              /* [nbuf][buf_slots][B][D] */
    int64_t *fblock;             /* [nfetch] block of each slot, batch by batch */
    int64_t *batch_first;        /* [nbatch + 1] first slot of each batch in fblock */
    int64_t *fhead_off;          /* [nbatch][H + 1] slots of each head, within its batch */
    int64_t *run_slot;           /* [nruns] first slot of each run, within its batch */
    int *btarget;                /* ranks each batch fetches from, batch by batch, each once */
    int *btarget_first;          /* [nbatch + 1] first of each batch in btarget */
    int64_t *serve;              /* two-sided: [nserve][4] (rank, h, b0, nblk) others want */
    int nserve;
    MPI_Request *rreqs;          /* two-sided: [2 nruns] receives, then [2 nserve] sends */
    double poke_last;            /* spa_now() of the last poke that entered MPI */
} spa_comm;

/* Duplicates comm for the context; its size and this rank. Collective. */
spa_err spa_comm_dup(MPI_Comm comm, MPI_Comm *dup, int *P, int *rank);

/* Local: buffers and datatypes for plan (which must outlive c). Takes
 * ownership of the duplicated communicator. Not collective. */
spa_err spa_comm_create(MPI_Comm dup, const spa_config *cfg, const spa_commplan *plan, spa_comm **c);

/* Collective: the MPI window, or the two-sided fallback's request lists. */
spa_err spa_comm_connect(spa_comm *c);

/* Collective. Accepts NULL; sets *c to NULL. Frees the communicator. */
void spa_comm_destroy(spa_comm **c);

/* Collective: K, V of the gathered tokens and q of the spread rows.
 *   q, k, v: [H][n_own][D] this rank's shard */
spa_err spa_comm_gather(spa_comm *c, const float *q, const float *k, const float *v, spa_stats *st);

/* Collective: posts the halo exchange, exposes K and V for the fetches
 * (window) or posts what other ranks fetch from this one (two-sided). */
spa_err spa_comm_post(spa_comm *c, const float *k, const float *v, spa_stats *st);

/* Posts the fetches of batch b, into buffer b % nbuf. At most one batch
 * is in flight: wait for batch b - 1 first. */
spa_err spa_comm_fetch(spa_comm *c, int b, spa_stats *st);

/* Where batch b's blocks are, for the kernel. */
void spa_comm_batch_keys(const spa_comm *c, int b, spa_keysrc *src);

/* Drives MPI progress (thread 0, between blocks). */
void spa_comm_poke(spa_comm *c);

/* Waits for the halo; for batch b's fetches. */
spa_err spa_comm_wait_halo(spa_comm *c, spa_stats *st);
spa_err spa_comm_wait_batch(spa_comm *c, int b, spa_stats *st);
/* Waits for batch b's gets from rank r, when b is the only batch in
 * flight (one-sided only: returns at once on the two-sided transport,
 * whose caller waits for the whole batch). */
spa_err spa_comm_wait_rank(spa_comm *c, int b, int r, spa_stats *st);

/* Waits for what other ranks fetched from this one (two-sided); the end of
 * a run. */
spa_err spa_comm_finish(spa_comm *c, spa_stats *st);

/* Collective: merges the spread rows' partials, [nspread][D + 2], by
 * log-sum-exp over the ranks, in place. */
spa_err spa_comm_merge(spa_comm *c, double *part, spa_stats *st);

/* Collective, exact mode's two steps instead (spa_kernel_spread_exact):
 * with mx, the maxima mx[nspread + 1] (MPI_MAX); else the fixed-point sums
 * acc[nspread][D + 2] (integer sums). In place. */
spa_err spa_comm_merge_exact(spa_comm *c, float *mx, spa_i128 *acc, spa_stats *st);

/* Collective sums over the context's ranks. */
spa_err spa_comm_sum_i64(spa_comm *c, int64_t local, int64_t *total);
spa_err spa_comm_sum_f64(spa_comm *c, double local, double *total);

/* MPI_Allgatherv of floats in place (buf: every rank's part at displ[s],
 * count[s] long, the parts contiguous in rank order) in ceil(log2 P) steps
 * of Isend/Irecv with tag, whatever the part sizes (comm.c says why). */
enum { SPA_TAG_GATHER = 99, SPA_TAG_GATHER_ROWS = 98 };
spa_err spa_allgatherv_bruck(float *buf, const int *count, const int *displ, int tag, MPI_Comm comm);

#endif
