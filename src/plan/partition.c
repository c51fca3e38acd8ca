/* partition.c - contiguous, block-aligned shards of the sequence.
 *
 * Rank r owns blocks [r*q + min(r, rem), ...): the first nb % P ranks own one
 * block more, so sizes differ by at most one block and ranks past nb own
 * nothing but still take part in every collective.
 */
#include "spa_impl.h"

void spa_partition(const spa_config *cfg, int P, int r, int64_t *b0, int64_t *b1, int64_t *t0,
                   int64_t *t1)
{
    int64_t nb = spa_nblocks(cfg), q = nb / P, rem = nb % P;
    *b0 = (int64_t)r * q + (r < rem ? r : rem);
    *b1 = *b0 + q + (r < rem ? 1 : 0);
    *t0 = *b0 * cfg->block;
    *t1 = spa_block_end(cfg, *b1 - 1); /* 0 when b1 = 0 */
    if (*t0 > cfg->n) *t0 = cfg->n;
}

int spa_partition_owner(const spa_config *cfg, int P, int64_t j)
{
    int64_t nb = spa_nblocks(cfg), q = nb / P, rem = nb % P, b = j / cfg->block;
    /* the first rem ranks own q + 1 blocks each */
    if (b < rem * (q + 1)) return (int)(b / (q + 1));
    return (int)(rem + (b - rem * (q + 1)) / q);
}
