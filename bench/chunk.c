/* chunk.c - the kernel's chunk with every operand in cache, one thread:
 * the ceiling of spa's own inner loops, apart from what loading keys and
 * values costs in a real run. For the default pattern's chunk of one
 * query block (B rows against 8 B keys: the 3-block window, the 2 blocks
 * of global tokens and 3 random blocks, as 5 pieces of 3, 2, 1, 1 and 1
 * blocks) at B = 64 and B = 16, it times, over many repetitions of the
 * same chunk, the passes of kernel.c's chunk_update_t: the scores with
 * their column maxima (qk), exp and column sums (expsum), and P V over
 * the pieces (pvp), on the kernel spa chose. Useful flops: 2 * rows *
 * keys * D per product.
 * Prints one JSON object; bench/kernel.sh sets it beside the FMA peak.
 * Not a test. */
#include "spa_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { D = 64, PIECES = 5 };
static const int piece_blocks[PIECES] = {3, 2, 1, 1, 1};

/* Best of 5 runs of reps chunks each: a run that shared its core only
 * lowers the others. Writes GFLOP/s of qk, pvp and the whole chunk, and
 * the share of expsum in the chunk's time. */
static void run(const spa_kernels *K, int rows, int reps, double *gqk, double *gpv, double *gall, double *exp_share)
{
    const int ldq = (rows + 15) / 16 * 16, nk = 8 * rows;
    float *qt = aligned_alloc(64, sizeof(float) * D * ldq), *k = aligned_alloc(64, sizeof(float) * nk * D);
    float *v = aligned_alloc(64, sizeof(float) * nk * D), *st = aligned_alloc(64, sizeof(float) * nk * ldq);
    float *o = aligned_alloc(64, sizeof(float) * ldq * D), mc[64], lc[64];
    srand(1);
    for (int i = 0; i < D * ldq; i++) qt[i] = (float)(rand() % 1000) / 1000.0f - 0.5f;
    for (int i = 0; i < nk * D; i++) {
        k[i] = (float)(rand() % 1000) / 1000.0f - 0.5f;
        v[i] = (float)(rand() % 1000) / 1000.0f;
    }
    const float *pk[PIECES], *pv[PIECES];
    int32_t pn[PIECES];
    for (int p = 0, j = 0; p < PIECES; j += pn[p], p++)
        pk[p] = k + (int64_t)j * D, pv[p] = v + (int64_t)j * D, pn[p] = piece_blocks[p] * rows;
    const double flops = 2.0 * rows * nk * D * reps;
    *gqk = *gpv = *gall = 0.0;
    for (int trial = 0; trial < 5; trial++) {
        double tq = 0.0, te = 0.0, tp = 0.0;
        for (int r = 0; r < reps; r++) {
            double t0 = spa_now();
            for (int i = 0; i < ldq; i++) mc[i] = -INFINITY;
            for (int p = 0, j = 0; p < PIECES; j += pn[p], p++)
                K->qk(pn[p], D, ldq, 0.125f, pk[p], qt, st + (int64_t)j * ldq, mc, NULL);
            double t1 = spa_now();
            K->expsum(st, nk, ldq, mc, lc);
            double t2 = spa_now();
            K->pvp(PIECES, pv, pn, D, ldq, rows, st, o, NULL, 1);
            tp += spa_now() - t2, te += t2 - t1, tq += t1 - t0;
        }
        double all = 2.0 * flops / (tq + te + tp) * 1e-9;
        if (all > *gall) {
            *gall = all, *gqk = flops / tq * 1e-9, *gpv = flops / tp * 1e-9;
            *exp_share = te / (tq + te + tp);
        }
    }
    free(qt), free(k), free(v), free(st), free(o);
}

int main(void)
{
    const spa_kernels *K = spa_kernels_get(NULL);
    if (!K || !K->qk) {
        fprintf(stderr, "chunk: no register-blocked kernel on this CPU\n");
        return 1;
    }
    printf("{\"kernel\": \"%s\"", K->name);
    const int shapes[2] = {64, 16};
    for (int i = 0; i < 2; i++) {
        double q, p, a, e;
        run(K, shapes[i], shapes[i] == 64 ? 4000 : 40000, &q, &p, &a, &e);
        const int b = shapes[i];
        printf(", \"b%d_qk_gflops\": %.2f, \"b%d_pvp_gflops\": %.2f", b, q, b, p);
        printf(", \"b%d_chunk_gflops\": %.2f, \"b%d_exp_share\": %.4f", b, a, b, e);
    }
    printf("}\n");
    return 0;
}
