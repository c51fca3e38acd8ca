/* layer.c - a whole multi-head attention layer on one rank's rows:
 * projections on OpenBLAS, spa's sparse attention in between.
 *
 * Sequence parallelism makes the projections purely local: rank r's rows of
 * Q, K, V and y depend only on its rows of x and on the weights, which every
 * rank holds. Each projection is then one large sgemm (rows x H*D x d_model),
 * where OpenBLAS is at its best, instead of H thin ones per head; the price
 * is one pass that scatters the token-major product [rows][H*D] into spa's
 * head-major shards [H][rows][D] (and gathers out back), which is memory
 * bound and small next to the sgemm. OpenBLAS gets the context's threads
 * for the projections only: the attention's block loop wants it on one.
 */
#include "runtime.h"
#include "spa_impl.h"

#include <cblas.h>
#include <omp.h>
#include <string.h>

void openblas_set_num_threads(int);

/* dst[h][i][d] = src[i][h*D + d] + (b ? b[h*D + d] : 0)
 *   src: [rows][H*D] token-major;  dst: [H][rows][D] head-major */
static void split_heads(float *dst, const float *src, const float *b, int64_t rows, int32_t H,
                        int32_t D, int threads)
{
    const int64_t HD = (int64_t)H * D;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < rows; i++)
        for (int32_t h = 0; h < H; h++) {
            const float *s = src + i * HD + (int64_t)h * D;
            float *o = dst + ((int64_t)h * rows + i) * D;
            if (b)
                for (int32_t d = 0; d < D; d++) o[d] = s[d] + b[(int64_t)h * D + d];
            else
                memcpy(o, s, (size_t)D * sizeof(float));
        }
}

/* dst[i][h*D + d] = src[h][i][d]: concat_h(out_h), the inverse of split_heads. */
static void concat_heads(float *dst, const float *src, int64_t rows, int32_t H, int32_t D, int threads)
{
    const int64_t HD = (int64_t)H * D;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < rows; i++)
        for (int32_t h = 0; h < H; h++)
            memcpy(dst + i * HD + (int64_t)h * D, src + ((int64_t)h * rows + i) * D,
                   (size_t)D * sizeof(float));
}

/* c[rows][n] = a[rows][k] w[n][k]^T: nn.Linear without its bias. */
static void linear(float *c, const float *a, const float *w, int64_t rows, int64_t n, int64_t k)
{
    if (rows == 0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)n, (int)k, 1.0f, a, (int)k, w,
                (int)k, 0.0f, c, (int)n);
}

static spa_err check_weights(const spa_config *cfg, const spa_layer_weights *w, int64_t rows,
                             const float *x, const float *y)
{
    SPA_REQUIRE(w, SPA_ERR_USAGE, "layer: no weights");
    SPA_REQUIRE(w->d_model >= 1 && w->d_model <= INT32_MAX, SPA_ERR_USAGE,
                "layer: d_model must be in [1, 2^31), got %lld", (long long)w->d_model);
    SPA_REQUIRE(w->wq && w->wk && w->wv && w->wo, SPA_ERR_USAGE,
                "layer: wq, wk, wv and wo are all required");
    SPA_REQUIRE((int64_t)cfg->heads * cfg->dim <= INT32_MAX, SPA_ERR_USAGE,
                "layer: heads x dim is too large for sgemm");
    SPA_REQUIRE(rows == 0 || (x && y), SPA_ERR_USAGE, "layer: x and y are required");
    return SPA_OK;
}

spa_err spa_layer_run(spa_ctx ctx, const spa_layer_weights *w, const float *x, float *y, float *out,
                      float *lse, spa_layer_stats *st)
{
    /* Shapes (rows = this rank's tokens, HD = H*D, dm = d_model):
     *   x, y: [rows][dm]   wq, wk, wv: [HD][dm]   wo: [dm][HD]
     *   tmp: [rows][HD] token-major   q, k, v, out: [H][rows][D]   lse: [H][rows] */
    const spa_config *cfg = &ctx->cfg;
    const MPI_Comm comm = ctx->cm->comm;
    const int32_t H = cfg->heads, D = cfg->dim;
    const int64_t rows = ctx->n_own, HD = (int64_t)H * D;
    const int T = ctx->threads;
    spa_layer_stats z;
    memset(&z, 0, sizeof z);
    double t_start = spa_now(), t;

    /* the same weights everywhere: every rank gets the same answer */
    spa_err err = check_weights(cfg, w, rows, x, y);
    if (err) return spa_agree(comm, err);
    const int64_t dm = w->d_model;

    /* K and V go straight into the context's MPI window when it has one.
     * Other ranks may still be reading the previous run's from it: wait. */
    float *k = NULL, *v = NULL;
    spa_ctx_kv_buffers(ctx, &k, &v);
    int own_kv = k == NULL;
    size_t shard = (size_t)HD * (size_t)rows * sizeof(float);
    float *tmp = spa_alloc(shard), *q = spa_alloc(shard);
    float *o = out ? out : spa_alloc(shard);
    float *l = lse ? lse : spa_alloc((size_t)H * (size_t)rows * sizeof(float));
    if (own_kv) k = spa_alloc(shard), v = spa_alloc(shard);
    if (!(tmp && q && o && l && k && v))
        err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__,
                            "layer: out of memory for the projections (%.3g GB)", 6.0 * (double)shard * 1e-9);
    if ((err = spa_agree(comm, err)) != SPA_OK) goto done;
    if (!own_kv && MPI_Barrier(comm) != MPI_SUCCESS) {
        err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "layer: MPI_Barrier failed");
        goto done;
    }

    /* pass 1: Q, K, V = x W^T + b, split into heads */
    t = spa_now();
    openblas_set_num_threads(T);
    const float *wi[3] = {w->wq, w->wk, w->wv}, *bi[3] = {w->bq, w->bk, w->bv};
    float *dst[3] = {q, k, v};
    for (int p = 0; p < 3; p++) {
        linear(tmp, x, wi[p], rows, HD, dm);
        split_heads(dst[p], tmp, bi[p], rows, H, D, T);
    }
    openblas_set_num_threads(1);
    z.seconds_proj_in = spa_now() - t;

    /* pass 2: attention over the ranks */
    if ((err = spa_ctx_run(ctx, q, k, v, o, l, &z.attn)) != SPA_OK) goto done;

    /* pass 3: y = concat_h(out_h) Wo^T + bo */
    t = spa_now();
    concat_heads(tmp, o, rows, H, D, T);
    openblas_set_num_threads(T);
    linear(y, tmp, w->wo, rows, dm, HD);
    openblas_set_num_threads(1);
    double sum = 0.0;
    if (w->bo) {
#pragma omp parallel for schedule(static) num_threads(T) reduction(+ : sum)
        for (int64_t i = 0; i < rows; i++)
            for (int64_t c = 0; c < dm; c++) {
                y[i * dm + c] += w->bo[c];
                sum += y[i * dm + c];
            }
    } else {
#pragma omp parallel for schedule(static) num_threads(T) reduction(+ : sum)
        for (int64_t i = 0; i < rows * dm; i++) sum += y[i];
    }
    z.seconds_proj_out = spa_now() - t;
    if (MPI_Allreduce(&sum, &z.checksum, 1, MPI_DOUBLE, MPI_SUM, comm) != MPI_SUCCESS) {
        err = spa_set_error(SPA_ERR_OTHER, __FILE__, __LINE__, "layer: MPI_Allreduce failed");
        goto done;
    }
    z.flops_proj = 2 * rows * dm * HD * 4;
    z.seconds_total = spa_now() - t_start;
    if (st) *st = z;

done:
    spa_free(tmp);
    spa_free(q);
    if (!out) spa_free(o);
    if (!lse) spa_free(l);
    if (own_kv) spa_free(k), spa_free(v);
    return err;
}
