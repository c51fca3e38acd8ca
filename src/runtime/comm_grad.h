/* comm_grad.h - the MPI calls of the backward pass (private): the mirror of
 * comm.c. The forward brings K and V to the ranks whose rows attend them;
 * the backward sends their gradients back the same way, reversed:
 *   halo      dk, dv of the halo keys back to their owners (two-sided)
 *   fetched   dk, dv of each fetched run back to its owner, batch by batch
 *             (MPI_Put into a landing window, or two-sided sends)
 *   gathered  dk, dv of the gathered tokens and dq of the spread rows, one
 *             Alltoallv: the mirror of the forward's Allgatherv
 * and it gathers what the spread rows need besides q: dout, lse and Dl.
 *
 * Every returned partial lands in its own place at the owner (a landing
 * buffer per source and piece), and spa_gcomm_finish adds them in a fixed
 * order, so the result does not depend on when messages arrive. The price
 * is memory: the landing of fetched runs holds what other ranks fetched
 * from this one (the mirror of their fetched blocks), not bounded by
 * cfg->fetch_bytes. The K and V transfers themselves are comm.c's, called
 * by the schedule (backward_rt.c) as in a forward run.
 *
 * Exact mode (exact = 1): every sink and landing holds int64_t fixed
 * point (spa_bscratch_set_exact) instead of float, sent as MPI_INT64_T,
 * so the sums are exact and their order does not matter; the buffers keep
 * their float * type and hold ew = 2 floats per element. Offsets below are
 * in elements times ew; message counts stay in elements, and the bytes
 * moved double.
 */
#ifndef SPA_COMM_GRAD_H
#define SPA_COMM_GRAD_H

#include "comm.h"

typedef struct spa_gcomm {
    MPI_Comm comm;               /* a duplicate of the forward's, for the returns */
    const spa_comm *cm;          /* the forward's transfers and layouts */
    const spa_config *cfg;
    const spa_commplan *plan;
    int P, rank;
    int64_t n_own;
    int rma;                     /* fetched runs return by MPI_Put (1) or two-sided (0) */
    int exact, ew;               /* int64_t sinks (1, ew = 2 floats an element) or float (0, ew = 1) */
    MPI_Datatype et;             /* MPI_INT64_T or MPI_FLOAT: a sink element */
    MPI_Datatype *htype;         /* exact: comm.c's rtype[] of int64_t, [nrecv] */
    double xq;                   /* exact: the fixed-point scale of the spread rows' dq (set per pass) */

    /* halo sinks, laid out as comm.c's halo buffers: [H][nleft][D], [H][nright][D] */
    float *hl_dk, *hl_dv, *hr_dk, *hr_dv;
    /* what each neighbour returns for plan->send[i]: [2][H][len][D] at hland_off[i] */
    float *hland;
    int64_t *hland_off;          /* [nsend + 1] */
    MPI_Request *hreq;           /* [2 nsend] receives, then [2 nrecv] sends */

    /* gathered sinks [H][NK][D]; dq of the spread rows [NS][D] (tile order;
     * exact: int64_t fixed point at scale xq, as the sinks) */
    float *gdk, *gdv, *sdq;
    /* dout, lse, Dl of the spread rows, gathered: [NS][D], [NS], [NS] */
    float *sdo, *slse, *sdl;
    float *rows_stage;           /* Allgatherv of [row][D + 2], by owner */
    int *rows_count, *rows_displ;/* [P], in floats */
    int64_t *rows_pos;           /* [NS] offset of each spread row in rows_stage */
    /* the partials going home: comm.c's Allgatherv layout (gcount, gdispl,
     * kv_first, spos), and what each rank returns to this one, [P][gcount[rank]] */
    float *part_stage, *part_land;
    int *a2a;                    /* [4 P] the Alltoallv's counts and displacements */
    int64_t *xsum;               /* [D + 1] exact: one spread row's dq summed over the sources */

    /* fetched sinks, parallel to comm.c's fetched buffers: [nbuf][buf_slots][B][D] */
    float *fdk, *fdv;
    int64_t *run_land;           /* [nruns] offset (floats) of each run's landing at its owner */
    int *btarget, *btarget_first;/* owners each batch returns to, [nbatch + 1] offsets */
    int done_batch;              /* batches [0, done_batch) have completed their returns */
    /* what other ranks return to this one: (source, h, b0, nblk), by source,
     * then in the source's run order, and where each lands ([2][tokens][D]) */
    int64_t *serve, *serve_land; /* [nserve][4], [nserve + 1] */
    int nserve;
    float *fland;                /* the landing: the window's memory, or a plain buffer */
    int64_t fland_floats;
    MPI_Win win;
    MPI_Request *freq;           /* two-sided: [2 nruns] sends, then [2 nserve] receives */
} spa_gcomm;

/* Local: the sinks and landing buffers that do not depend on other ranks,
 * in float or (exact) int64_t fixed point. Not collective. */
spa_err spa_gcomm_create(const spa_comm *cm, int exact, spa_gcomm **g);

/* Collective: learns what other ranks return to this one, sizes the
 * landing, and creates the landing window when the forward's fetches are
 * one-sided (two-sided when any rank cannot). */
spa_err spa_gcomm_connect(spa_gcomm *g);

/* Collective. Accepts NULL; sets *g to NULL. */
void spa_gcomm_destroy(spa_gcomm **g);

/* Collective: the start of a backward pass. Posts the receives of every
 * return (two-sided), or waits until every rank may write into this
 * rank's landing window. */
spa_err spa_gcomm_begin(spa_gcomm *g, spa_stats *st);

/* Collective: dout, lse and Dl of the spread rows onto every rank.
 *   dout: [H][n_own][D];  lse, Dl: [H][n_own] this rank's rows */
spa_err spa_gcomm_gather_rows(spa_gcomm *g, const float *dout, const float *lse, const float *Dl, spa_stats *st);

/* The sinks of batch b: completes the returns of the batch that used its
 * buffer before, zeroes it, and points sink's fetched sinks at it. */
spa_err spa_gcomm_batch_sinks(spa_gcomm *g, int b, spa_gradsink *sink, spa_stats *st);

/* Posts the returns of batch b's fetched runs. */
spa_err spa_gcomm_batch_return(spa_gcomm *g, int b, spa_stats *st);

/* Posts the returns of the halo. */
spa_err spa_gcomm_return_halo(spa_gcomm *g, spa_stats *st);

/* Collective: the gathered tokens' dk, dv and the spread rows' dq, one
 * Alltoallv to their owners. */
spa_err spa_gcomm_return_gathered(spa_gcomm *g, spa_stats *st);

/* Drives MPI progress (thread 0, between blocks). */
void spa_gcomm_poke(spa_gcomm *g);

/* Collective: waits for every return and adds them to this rank's
 *   dq, dk, dv: [H][n_own][D] (exact: dk, dv are int64_t fixed point)
 * in a fixed order: halo returns by source rank, fetched runs by source
 * rank and the source's run order, then the gathered tokens and spread
 * rows by source rank (this rank's own at its place). In exact mode the
 * spread rows' dq partials are summed in fixed point (scale xq), then
 * added to dq once. */
spa_err spa_gcomm_finish(spa_gcomm *g, float *dq, float *dk, float *dv, spa_stats *st);

#endif
