/* synth.c - seeded synthetic inputs, identical for every rank count.
 *
 * Each value is a hash of (seed, tensor, head, token, d), so a rank fills
 * its own shard without any global state.
 */
#include "spa_impl.h"

void spa_synth(uint64_t seed, float temperature, int which, int32_t h, int64_t t0, int64_t t1,
               int32_t D, float *dst)
{
    float amp = which >= 2 ? 1.0f : temperature; /* v and dout: [-1, 1) */
    uint64_t key = spa_rng(seed ^ 0x5eed5eed5eedull, (uint64_t)which, (uint64_t)h, 0);
#pragma omp parallel for schedule(static)
    for (int64_t t = t0; t < t1; t++) {
        uint64_t row = spa_rng(key, (uint64_t)t, 1, 2);
        float *x = dst + (t - t0) * D;
        for (int32_t d = 0; d < D; d++) {
            uint64_t z = row + 0x9e3779b97f4a7c15ull * (uint64_t)(d + 1);
            z = (z ^ (z >> 31)) * 0xbf58476d1ce4e5b9ull;
            z ^= z >> 29;
            /* top 24 bits -> [-1, 1) exactly representable */
            x[d] = amp * ((float)(int32_t)(z >> 40) * (1.0f / 8388608.0f) - 1.0f);
        }
    }
}
