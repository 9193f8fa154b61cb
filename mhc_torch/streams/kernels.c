/* The per-token coefficients of one multi-stream layer, after the projection's matmul, as
 * two native kernels (see mhc_torch/streams/coefficients.py for the maths and
 * mhc_torch/native.py for how this file is built and loaded).
 *
 * With K = 2n + n^2 logits per token, raw = x @ Phi (tokens, K) and 1/r (tokens,):
 *
 *   forward:   w = s / r;  z = beta + raw * w;
 *              Hpre = sigmoid(z[:n]);  Hpost = 2 sigmoid(z[n:2n]);  slopes = dH/dz there;
 *              Hres = SK_T(mat(z[2n:]))   (T = 0: Hres = mat(z[2n:]))
 *   backward:  dz = (dHpre * slopes, dHpost * slopes, SK_T^T(dHres))
 *
 * SK_T is the spec's iteration (mhc_spec.streams.sinkhorn): M_0 = exp(Z - max Z), then T
 * times a column then a row normalisation (here each column of Z is shifted by its own max,
 * which SK_T does not see). It runs in double precision whatever the tensors' type (float32
 * logits ~87 apart do not underflow; ~700 apart, a row can, as in the spec), on blocks of
 * BLOCK tokens laid out token-last so that every step is a vector operation over the block. The
 * backward recomputes the 2T + 1 iterates of its block instead of reading saved ones.
 *
 * Compiled once per element type: REAL is float or double, NAME(f) appends the suffix.
 */
#include <tgmath.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 32  /* tokens per block: 32 measured fastest of 8, 16, 32, 64 (AVX-512) */

/* M_0 of the block's tokens [first, first + count) from their logits (row stride `stride`),
 * each column shifted by its own largest logit: SK_T does not change when a column of M_0
 * is scaled (the first step divides it out), and no column can underflow to all zeros.
 * Lanes past `count` repeat the first token so that every lane stays finite. */
static void NAME(load_block)(double *m0, const REAL *logits, int64_t stride, int n,
                             int64_t first, int count) {
    const int nn = n * n;
    for (int lane = 0; lane < BLOCK; ++lane) {
        const REAL *z = logits + (first + (lane < count ? lane : 0)) * stride;
        for (int k = 0; k < nn; ++k) m0[k * BLOCK + lane] = z[k];
    }
    for (int j = 0; j < n; ++j) {
        double top[BLOCK];
        for (int lane = 0; lane < BLOCK; ++lane) top[lane] = m0[j * BLOCK + lane];
        for (int i = 1; i < n; ++i)
            for (int lane = 0; lane < BLOCK; ++lane)
                top[lane] = fmax(top[lane], m0[(i * n + j) * BLOCK + lane]);
        for (int i = 0; i < n; ++i)
            for (int lane = 0; lane < BLOCK; ++lane)
                m0[(i * n + j) * BLOCK + lane] = exp(m0[(i * n + j) * BLOCK + lane] - top[lane]);
    }
}

/* Iterates 1..2T after iterate 0: step s divides the columns (s odd) or the rows (s even)
 * of iterate s - 1 by their sums. Entry (i, j) of iterate s is at
 * it[(slot(s) nn + i n + j) B + lane], slot(s) = s when all are kept (the backward reads
 * them), else s mod 2 (two buffers; the forward needs only the last). */
static void NAME(sinkhorn_block)(double *it, int n, int iterations, int keep_all) {
    const int nn = n * n;
    for (int step = 1; step <= 2 * iterations; ++step) {
        const double *src = it + (size_t)(keep_all ? step - 1 : (step - 1) % 2) * nn * BLOCK;
        double *dst = it + (size_t)(keep_all ? step : step % 2) * nn * BLOCK;
        const int columns = step % 2;
        for (int line = 0; line < n; ++line) {
            /* entry e of line `line`: column `line`, row e (columns) or row `line`, column e */
            const int along = columns ? n : 1, start = columns ? line : line * n;
            double inverse[BLOCK] = {0};
            for (int e = 0; e < n; ++e)
                for (int lane = 0; lane < BLOCK; ++lane)
                    inverse[lane] += src[(start + e * along) * BLOCK + lane];
            for (int lane = 0; lane < BLOCK; ++lane) inverse[lane] = 1.0 / inverse[lane];
            for (int e = 0; e < n; ++e)
                for (int lane = 0; lane < BLOCK; ++lane) {
                    const int at = (start + e * along) * BLOCK + lane;
                    dst[at] = src[at] * inverse[lane];
                }
        }
    }
}

static double *NAME(iterate_buffer)(int n, int slots) {
    return malloc(sizeof(double) * (size_t)slots * n * n * BLOCK);
}

/* Returns 0, or 1 when scratch memory could not be allocated. */
int NAME(mhc_stream_coefficients_forward)(
        const REAL *raw, const REAL *inverse_rms, const REAL *scale, const REAL *bias,
        int64_t tokens, int n, int iterations,
        REAL *weight, REAL *logits, REAL *hpre, REAL *hpost, REAL *slopes, REAL *hres) {
    const int nn = n * n, width = 2 * n + nn;
    for (int64_t t = 0; t < tokens; ++t) {
        const REAL *row = raw + t * width;
        REAL *w = weight + t * width, *z = logits + t * width;
        for (int k = 0; k < width; ++k) {
            w[k] = inverse_rms[t] * scale[k];
            z[k] = bias[k] + row[k] * w[k];
        }
        for (int i = 0; i < n; ++i) {
            const REAL pre = 1 / (1 + exp(-z[i]));  /* tgmath: expf for float */
            const REAL post = 1 / (1 + exp(-z[n + i]));
            hpre[t * n + i] = pre;
            hpost[t * n + i] = 2 * post;
            slopes[t * 2 * n + i] = pre - pre * pre;
            slopes[t * 2 * n + n + i] = 2 * (post - post * post);
        }
        if (iterations == 0) memcpy(hres + t * nn, z + 2 * n, sizeof(REAL) * nn);
    }
    if (iterations == 0) return 0;
    double *it = NAME(iterate_buffer)(n, 2);
    if (it == NULL) return 1;
    const double *last = it;  /* step 2T lands in slot 0 */
    for (int64_t first = 0; first < tokens; first += BLOCK) {
        const int count = tokens - first < BLOCK ? (int)(tokens - first) : BLOCK;
        NAME(load_block)(it, logits + 2 * n, width, n, first, count);
        NAME(sinkhorn_block)(it, n, iterations, 0);
        for (int lane = 0; lane < count; ++lane)
            for (int k = 0; k < nn; ++k)
                hres[(first + lane) * nn + k] = (REAL)last[k * BLOCK + lane];
    }
    free(it);
    return 0;
}

/* dz (tokens, K) from dHpre, dHpost (tokens, n), dHres (tokens, n, n) and the forward's
 * slopes and logits. Returns 0, or 1 when scratch memory could not be allocated. */
int NAME(mhc_stream_coefficients_backward)(
        const REAL *d_hpre, const REAL *d_hpost, const REAL *d_hres, const REAL *slopes,
        const REAL *logits, int64_t tokens, int n, int iterations, REAL *d_logits) {
    const int nn = n * n, width = 2 * n + nn;
    for (int64_t t = 0; t < tokens; ++t) {
        REAL *dz = d_logits + t * width;
        for (int i = 0; i < n; ++i) {
            dz[i] = d_hpre[t * n + i] * slopes[t * 2 * n + i];
            dz[n + i] = d_hpost[t * n + i] * slopes[t * 2 * n + n + i];
        }
        if (iterations == 0) memcpy(dz + 2 * n, d_hres + t * nn, sizeof(REAL) * nn);
    }
    if (iterations == 0) return 0;
    double *it = NAME(iterate_buffer)(n, 2 * iterations + 1);
    double *grad = NAME(iterate_buffer)(n, 1);
    if (it == NULL || grad == NULL) {
        free(it);
        free(grad);
        return 1;
    }
    for (int64_t first = 0; first < tokens; first += BLOCK) {
        const int count = tokens - first < BLOCK ? (int)(tokens - first) : BLOCK;
        NAME(load_block)(it, logits + 2 * n, width, n, first, count);
        NAME(sinkhorn_block)(it, n, iterations, 1);
        for (int lane = 0; lane < BLOCK; ++lane)
            for (int k = 0; k < nn; ++k)
                grad[k * BLOCK + lane] = lane < count ? d_hres[(first + lane) * nn + k] : 0.0;
        /* y = x / sum(x) along a line: dx = (dy - <dy, y>) / sum(x), line by line. */
        for (int step = 2 * iterations; step >= 1; --step) {
            const double *x = it + (size_t)(step - 1) * nn * BLOCK;
            const double *y = it + (size_t)step * nn * BLOCK;
            const int columns = step % 2;
            for (int line = 0; line < n; ++line) {
                const int along = columns ? n : 1, start = columns ? line : line * n;
                double dot[BLOCK] = {0}, inverse[BLOCK] = {0};
                for (int e = 0; e < n; ++e)
                    for (int lane = 0; lane < BLOCK; ++lane) {
                        const int at = (start + e * along) * BLOCK + lane;
                        dot[lane] += grad[at] * y[at];
                        inverse[lane] += x[at];
                    }
                for (int lane = 0; lane < BLOCK; ++lane) inverse[lane] = 1.0 / inverse[lane];
                for (int e = 0; e < n; ++e)
                    for (int lane = 0; lane < BLOCK; ++lane) {
                        const int at = (start + e * along) * BLOCK + lane;
                        grad[at] = (grad[at] - dot[lane]) * inverse[lane];
                    }
            }
        }
        /* M_0 = exp(Z - column max): dZ = dM_0 * M_0 (the shifts' terms vanish: SK is
         * invariant to scaling a column, so sum_i dM_0[i, j] M_0[i, j] = 0). */
        for (int lane = 0; lane < count; ++lane)
            for (int k = 0; k < nn; ++k)
                d_logits[(first + lane) * width + 2 * n + k] =
                    (REAL)(grad[k * BLOCK + lane] * it[k * BLOCK + lane]);
    }
    free(it);
    free(grad);
    return 0;
}
