/* test_backward.c - the backward pass on one rank (spa_backward_local)
 * against the dense double oracle (spa_reference_grad), over every shared
 * case; 1 and 2 threads bit for bit; and dL/dq, dk, dv of
 * L = sum(w * out) against central differences of spa_reference on tiny
 * cases, so that the oracle itself is checked too.
 * out and lse come from the forward pass (spa_ctx_run on MPI_COMM_SELF). */
#include "cases.h"

/* Forward pass on one rank: out [H][n][D], lse [H][n]. */
static int forward(const spa_config *cfg, const float *q, const float *k, const float *v, float *out, float *lse)
{
    spa_ctx ctx;
    if (spa_ctx_create(MPI_COMM_SELF, cfg, 1, &ctx) != SPA_OK) {
        printf("ctx: %s\n", spa_last_error());
        return 0;
    }
    spa_err e = spa_ctx_run(ctx, q, k, v, out, lse, NULL);
    spa_ctx_destroy(&ctx);
    if (e != SPA_OK) printf("run: %s\n", spa_last_error());
    return e == SPA_OK;
}

/* Largest magnitude of a [count] tensor. */
static double maxabs(const float *x, int64_t count)
{
    double m = 0.0;
    for (int64_t i = 0; i < count; i++) m = fmax(m, fabs(x[i]));
    return m;
}

/* max |got - want| relative to max |want| of one [H][n][D] tensor, or to
 * floor when that is larger (a tensor that vanishes: n = 1 gives dq = dk
 * = 0 exactly); prints maxdiff and the worst row's first values side by
 * side on failure. */
static int compare(const char *cname, const char *tname, const spa_config *cfg, const float *got, const float *want,
                   double floor, double tol, double *relout)
{
    const int64_t n = cfg->n, D = cfg->dim, total = (int64_t)cfg->heads * n * D;
    double maxref = 0.0, maxdiff = 0.0;
    int64_t worst = 0, bad = 0;
    for (int64_t x = 0; x < total; x++) {
        double d = fabs((double)got[x] - want[x]);
        if (!isfinite(got[x])) bad++, d = INFINITY;
        if (fabs(want[x]) > maxref) maxref = fabs(want[x]);
        if (d > maxdiff) maxdiff = d, worst = x;
    }
    const double rel = maxdiff / fmax(fmax(maxref, floor), 1e-30);
    *relout = rel;
    if (bad == 0 && rel <= tol) return 1;
    const int64_t row = worst / D;
    printf("FAIL %-24s %s: maxdiff %.3e (rel %.3e, max |ref| %.3e) nonfinite %lld\n", cname, tname, maxdiff, rel,
           maxref, (long long)bad);
    printf("     worst at head %lld row %lld: got / want\n", (long long)(row / n), (long long)(row % n));
    for (int64_t d = 0; d < D && d < 6; d++) printf("       %+.7e  %+.7e\n", got[row * D + d], want[row * D + d]);
    return 0;
}

static float *falloc(int64_t count) { return spa_alloc((size_t)(count + 1) * sizeof(float)); }

static int check_case(const test_case *tc)
{
    spa_config cfg;
    if (case_config(tc, 7, &cfg) != SPA_OK) {
        printf("FAIL %s: config: %s\n", tc->name, spa_last_error());
        spa_config_free(&cfg);
        return 0;
    }
    const int64_t n = cfg.n, H = cfg.heads, D = cfg.dim, T = H * n * D;
    float *q = falloc(T), *k = falloc(T), *v = falloc(T), *dout = falloc(T), *out = falloc(T), *lse = falloc(H * n);
    float *g1[3] = {falloc(T), falloc(T), falloc(T)}, *g2[3] = {falloc(T), falloc(T), falloc(T)};
    float *gr[3] = {falloc(T), falloc(T), falloc(T)};
    static const char *const names[3] = {"dq", "dk", "dv"};
    case_inputs(&cfg, tc->temperature, 0, n, q, k, v);
    for (int32_t h = 0; h < H; h++) spa_synth(cfg.seed + 23, 1.0f, 3, h, 0, n, (int32_t)D, dout + h * n * D);

    int ok = forward(&cfg, q, k, v, out, lse);
    ok = ok && spa_backward_local(&cfg, q, k, v, out, lse, dout, g1[0], g1[1], g1[2], 1) == SPA_OK;
    ok = ok && spa_backward_local(&cfg, q, k, v, out, lse, dout, g2[0], g2[1], g2[2], 2) == SPA_OK;
    ok = ok && spa_reference_grad(&cfg, q, k, v, dout, gr[0], gr[1], gr[2]) == SPA_OK;
    if (!ok) printf("FAIL %s: %s\n", tc->name, spa_last_error());
    /* error relative to the tensor's largest gradient; a tensor that
     * vanishes is measured against a thousandth of the largest of all three */
    double rel[3] = {0, 0, 0}, floor = 0.0;
    for (int x = 0; x < 3 && ok; x++) floor = fmax(floor, 1e-3 * maxabs(gr[x], T));
    for (int x = 0; x < 3 && ok; x++) ok &= compare(tc->name, names[x], &cfg, g1[x], gr[x], floor, 1e-4, &rel[x]);
    for (int x = 0; x < 3 && ok; x++)
        if (memcmp(g1[x], g2[x], (size_t)T * sizeof(float))) {
            printf("FAIL %s: %s differs between 1 and 2 threads\n", tc->name, names[x]);
            ok = 0;
        }
    /* an empty S(i) (lse = -inf) gives dq = 0 exactly */
    int64_t nempty = 0;
    for (int64_t r = 0; r < H * n && ok; r++) {
        if (lse[r] != -INFINITY) continue;
        nempty++;
        for (int64_t d = 0; d < D; d++)
            if (g1[0][r * D + d] != 0.0f) {
                printf("FAIL %s: empty row %lld (head %lld) has dq %g\n", tc->name, (long long)(r % n),
                       (long long)(r / n), g1[0][r * D + d]);
                ok = 0;
                break;
            }
    }
    printf("%s %-24s n=%lld H=%lld D=%lld rel err dq %.1e dk %.1e dv %.1e empty rows %lld\n", ok ? "ok  " : "FAIL",
           tc->name, (long long)n, (long long)H, (long long)D, rel[0], rel[1], rel[2], (long long)nempty);
    spa_free(q), spa_free(k), spa_free(v), spa_free(dout), spa_free(out), spa_free(lse);
    for (int x = 0; x < 3; x++) spa_free(g1[x]), spa_free(g2[x]), spa_free(gr[x]);
    spa_config_free(&cfg);
    return ok;
}

/* L = sum(w * out) of spa_reference, summed in double. */
static double loss(const spa_config *cfg, const float *q, const float *k, const float *v, const float *w, float *out,
                   float *lse)
{
    spa_reference(cfg, q, k, v, 0, cfg->n, out, lse);
    double L = 0.0;
    for (int64_t x = 0; x < (int64_t)cfg->heads * cfg->n * cfg->dim; x++) L += (double)w[x] * out[x];
    return L;
}

/* dL/dq, dk, dv of the kernel (dout = w) against central differences of
 * the reference, on a tiny case. */
static int check_fd(const test_case *tc)
{
    spa_config cfg;
    if (case_config(tc, 3, &cfg) != SPA_OK) {
        printf("FAIL %s: config: %s\n", tc->name, spa_last_error());
        spa_config_free(&cfg);
        return 0;
    }
    const int64_t n = cfg.n, H = cfg.heads, D = cfg.dim, T = H * n * D;
    float *in[3] = {falloc(T), falloc(T), falloc(T)}, *w = falloc(T), *out = falloc(T), *lse = falloc(H * n);
    float *g[3] = {falloc(T), falloc(T), falloc(T)};
    static const char *const names[3] = {"dL/dq", "dL/dk", "dL/dv"};
    case_inputs(&cfg, tc->temperature, 0, n, in[0], in[1], in[2]);
    for (int32_t h = 0; h < H; h++) spa_synth(cfg.seed + 5, 1.0f, 4, h, 0, n, (int32_t)D, w + h * n * D);
    int ok = forward(&cfg, in[0], in[1], in[2], out, lse) &&
             spa_backward_local(&cfg, in[0], in[1], in[2], out, lse, w, g[0], g[1], g[2], 1) == SPA_OK;
    /* eps: float rounding of L (~1e-7 |L|) over 2 eps stays below 1e-5, and
     * the O(eps^2) truncation too; the step actually taken is (xp - xm) */
    const float eps = 1e-2f;
    double worst[3] = {0, 0, 0}, maxg[3] = {0, 0, 0};
    int64_t at[3] = {0, 0, 0};
    double fd_at[3] = {0, 0, 0};
    for (int x = 0; x < 3 && ok; x++)
        for (int64_t e = 0; e < T; e++) {
            const float x0 = in[x][e], xp = x0 + eps, xm = x0 - eps;
            in[x][e] = xp;
            const double Lp = loss(&cfg, in[0], in[1], in[2], w, out, lse);
            in[x][e] = xm;
            const double Lm = loss(&cfg, in[0], in[1], in[2], w, out, lse);
            in[x][e] = x0;
            const double fd = (Lp - Lm) / ((double)xp - (double)xm), d = fabs(fd - g[x][e]);
            if (fabs(fd) > maxg[x]) maxg[x] = fabs(fd);
            if (d > worst[x] || !isfinite(g[x][e])) {
                worst[x] = isfinite(g[x][e]) ? d : INFINITY;
                at[x] = e, fd_at[x] = fd;
            }
        }
    const double tol = 1e-3;
    for (int x = 0; x < 3 && ok; x++) {
        const double rel = worst[x] / fmax(maxg[x], 1e-30);
        if (rel > tol) {
            printf("FAIL %-24s %s: max |kernel - central difference| %.3e (rel %.3e) at head %lld row %lld d %lld: "
                   "%+.7e / %+.7e\n",
                   tc->name, names[x], worst[x], rel, (long long)(at[x] / (n * D)), (long long)(at[x] / D % n),
                   (long long)(at[x] % D), g[x][at[x]], fd_at[x]);
            ok = 0;
        }
    }
    printf("%s %-24s finite differences n=%lld H=%lld D=%lld rel err dq %.1e dk %.1e dv %.1e\n", ok ? "ok  " : "FAIL",
           tc->name, (long long)n, (long long)H, (long long)D, worst[0] / fmax(maxg[0], 1e-30),
           worst[1] / fmax(maxg[1], 1e-30), worst[2] / fmax(maxg[2], 1e-30));
    for (int x = 0; x < 3; x++) spa_free(in[x]), spa_free(g[x]);
    spa_free(w), spa_free(out), spa_free(lse);
    spa_config_free(&cfg);
    return ok;
}

int main(int argc, char **argv)
{
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    int fails = 0, total = 0;
    for (int i = 0; i < spa_ncases; i++, total++) fails += !check_case(&spa_cases[i]);

    /* tiny cases for the finite differences: globals, random, stride and
     * summary; causal radius and dilated; a layout with dilated keys */
    const test_case tiny[] = {
        {"fd_union", 40, 2, 4, 8, 3, -1, "0,21", 1, 0, 1.0f, "stride=5;summary=10:2", 0},
        {"fd_causal_radius", 40, 2, 4, 8, 0, 3, "none", 1, 1, 1.0f, "dilated=16:2", 0},
        {"fd_layout_dilated", 40, 1, 4, 8, 3, -1, "none", 0, 0, 2.0f, "local_blocks=0;dilated=20:3", CASE_LAYOUT_BAND},
    };
    for (int i = 0; i < (int)(sizeof tiny / sizeof *tiny); i++, total++) fails += !check_fd(&tiny[i]);

    printf("%d passed, %d failed\n", total - fails, fails);
    MPI_Finalize();
    return fails ? 1 : 0;
}
