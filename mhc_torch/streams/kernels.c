/* Native kernels of one multi-stream layer: its per-token coefficients after the projection's
 * matmul, and the passes over the streams (see mhc_torch/streams/coefficients.py and
 * mhc_torch/streams/mixing.py for the maths, mhc_torch/native.py for how this file is built
 * and loaded).
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
 * Around the projection's matmuls, 1/r per token and the token sums of its reverse mode
 * replace a handful of small PyTorch calls each.
 *
 * The stream kernels do in one pass over a token's streams X (n, C) what PyTorch does in
 * two to four (batched products, outer products): the update X_next = Hres X + Hpost y, its
 * reverse mode, and the read's additions to dX. Every kernel splits its tokens over
 * `threads` OpenMP threads (PyTorch's pool: see native.py) when the work is large enough.
 *
 * Compiled once per element type: REAL is float or double, NAME(f) appends the suffix.
 */
#include <tgmath.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 32  /* tokens per block: 32 measured fastest of 8, 16, 32, 64 (AVX-512) */
#define GRAIN 32768  /* elements below which a pass stays on one thread (PyTorch's grain) */

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
        REAL *weight, REAL *logits, REAL *hpre, REAL *hpost, REAL *slopes, REAL *hres,
        int threads) {
    const int nn = n * n, width = 2 * n + nn;
    int status = 0;
    #pragma omp parallel num_threads(threads) if (threads > 1 && tokens > BLOCK) \
        reduction(| : status)
    {
        double *it = iterations ? NAME(iterate_buffer)(n, 2) : NULL;
        const double *last = it;  /* step 2T lands in slot 0 */
        #pragma omp for schedule(static)
        for (int64_t first = 0; first < tokens; first += BLOCK) {
            const int count = tokens - first < BLOCK ? (int)(tokens - first) : BLOCK;
            for (int64_t t = first; t < first + count; ++t) {
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
            if (iterations == 0) continue;
            if (it == NULL) {
                status = 1;
                continue;
            }
            NAME(load_block)(it, logits + 2 * n, width, n, first, count);
            NAME(sinkhorn_block)(it, n, iterations, 0);
            for (int lane = 0; lane < count; ++lane)
                for (int k = 0; k < nn; ++k)
                    hres[(first + lane) * nn + k] = (REAL)last[k * BLOCK + lane];
        }
        free(it);
    }
    return status;
}

/* dz (tokens, K) from dHpre, dHpost (tokens, n), dHres (tokens, n, n) and the forward's
 * slopes and logits. Returns 0, or 1 when scratch memory could not be allocated. */
int NAME(mhc_stream_coefficients_backward)(
        const REAL *d_hpre, const REAL *d_hpost, const REAL *d_hres, const REAL *slopes,
        const REAL *logits, int64_t tokens, int n, int iterations, REAL *d_logits,
        int threads) {
    const int nn = n * n, width = 2 * n + nn;
    int status = 0;
    #pragma omp parallel num_threads(threads) if (threads > 1 && tokens > BLOCK) \
        reduction(| : status)
    {
        double *it = iterations ? NAME(iterate_buffer)(n, 2 * iterations + 1) : NULL;
        double *grad = iterations ? NAME(iterate_buffer)(n, 1) : NULL;
        #pragma omp for schedule(static)
        for (int64_t first = 0; first < tokens; first += BLOCK) {
            const int count = tokens - first < BLOCK ? (int)(tokens - first) : BLOCK;
            for (int64_t t = first; t < first + count; ++t) {
                REAL *dz = d_logits + t * width;
                for (int i = 0; i < n; ++i) {
                    dz[i] = d_hpre[t * n + i] * slopes[t * 2 * n + i];
                    dz[n + i] = d_hpost[t * n + i] * slopes[t * 2 * n + n + i];
                }
                if (iterations == 0) memcpy(dz + 2 * n, d_hres + t * nn, sizeof(REAL) * nn);
            }
            if (iterations == 0) continue;
            if (it == NULL || grad == NULL) {
                status = 1;
                continue;
            }
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
    }
    return status;
}

/* 1/r = (mean(x^2) + eps)^(-1/2) per token of x (tokens, features), summed in double. */
void NAME(mhc_stream_inverse_rms)(const REAL *restrict flat, int64_t tokens, int64_t features,
                                  double eps, REAL *restrict inverse_rms, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static) \
        if (threads > 1 && tokens * features >= GRAIN)
    for (int64_t t = 0; t < tokens; ++t) {
        const REAL *x = flat + t * features;
        double sum = 0;
        #pragma omp simd reduction(+ : sum)
        for (int64_t c = 0; c < features; ++c) sum += (double)x[c] * x[c];
        inverse_rms[t] = (REAL)(1.0 / sqrt(sum / features + eps));
    }
}

/* The token sums of the projection's reverse mode, from dz (tokens, K), raw = x @ Phi,
 * w = s / r (tokens, K), 1/r (tokens,) and s (K,): dbeta = sum_t dz, ds = sum_t dz raw / r,
 * dz becomes dz w in place, and (unless NULL) t = -<dz s, raw> / (features r^3) per token.
 * Summed in token order on one thread: (tokens, K) is a few thousand entries. */
void NAME(mhc_stream_coefficients_reduce)(
        REAL *restrict dz, const REAL *restrict raw, const REAL *restrict weight,
        const REAL *restrict inverse_rms, const REAL *restrict scale, int64_t tokens, int width,
        int64_t features, REAL *restrict d_bias, REAL *restrict d_scale,
        REAL *restrict through_rms) {
    for (int k = 0; k < width; ++k) d_bias[k] = d_scale[k] = 0;
    for (int64_t t = 0; t < tokens; ++t) {
        REAL *d = dz + t * width;
        const REAL *r = raw + t * width, *w = weight + t * width, inverse = inverse_rms[t];
        REAL along = 0;
        for (int k = 0; k < width; ++k) {
            const REAL scaled = d[k] * r[k];
            d_bias[k] += d[k];
            d_scale[k] += scaled * inverse;
            along += scaled * scale[k];
            d[k] *= w[k];
        }
        if (through_rms != NULL)
            through_rms[t] = -along * inverse * inverse * inverse / (REAL)features;
    }
}

/* out = Hres X + Hpost y per token: out[t, i, :] = sum_j Hres[t, i, j] X[t, j, :]
 * + Hpost[t, i] y[t, :], for X, out (tokens, n, C), y (tokens, C). */
void NAME(mhc_stream_update_forward)(
        const REAL *restrict streams, const REAL *restrict y, const REAL *restrict hres,
        const REAL *restrict hpost, REAL *restrict out, int64_t tokens, int n, int64_t width,
        int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static) \
        if (threads > 1 && tokens * n * width >= GRAIN)
    for (int64_t t = 0; t < tokens; ++t) {
        const REAL *x = streams + t * n * width, *yt = y + t * width, *h = hres + t * n * n;
        for (int i = 0; i < n; ++i) {
            REAL *o = out + (t * n + i) * width;
            const REAL post = hpost[t * n + i];
            #pragma omp simd
            for (int64_t c = 0; c < width; ++c) o[c] = post * yt[c];
            for (int j = 0; j < n; ++j) {
                const REAL weight = h[i * n + j];
                const REAL *xj = x + j * width;
                #pragma omp simd
                for (int64_t c = 0; c < width; ++c) o[c] += weight * xj[c];
            }
        }
    }
}

/* The update's reverse mode for G = dLoss/dX_next, per token: dHres = G X^T,
 * dHpost = G y, dy = Hpost^T G and (unless d_streams is NULL) dX = Hres^T G. The token's
 * G, X and y are read from memory once; the dot products re-read them from L1. */
void NAME(mhc_stream_update_backward)(
        const REAL *restrict grad, const REAL *restrict streams, const REAL *restrict y,
        const REAL *restrict hres, const REAL *restrict hpost, REAL *restrict d_streams,
        REAL *restrict d_y, REAL *restrict d_hpost, REAL *restrict d_hres, int64_t tokens,
        int n, int64_t width, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static) \
        if (threads > 1 && tokens * n * width >= GRAIN)
    for (int64_t t = 0; t < tokens; ++t) {
        const REAL *g = grad + t * n * width, *x = streams + t * n * width,
                   *yt = y + t * width, *h = hres + t * n * n, *post = hpost + t * n;
        for (int i = 0; i < n; ++i) {
            const REAL *gi = g + i * width;
            for (int j = 0; j < n; ++j) {
                const REAL *xj = x + j * width;
                REAL dot = 0;
                #pragma omp simd reduction(+ : dot)
                for (int64_t c = 0; c < width; ++c) dot += gi[c] * xj[c];
                d_hres[(t * n + i) * n + j] = dot;
            }
            REAL dot = 0;
            #pragma omp simd reduction(+ : dot)
            for (int64_t c = 0; c < width; ++c) dot += gi[c] * yt[c];
            d_hpost[t * n + i] = dot;
        }
        /* row j < n: dX[j] = sum_i Hres[i, j] G[i]; row n: dy = sum_i Hpost[i] G[i] */
        for (int j = d_streams == NULL ? n : 0; j <= n; ++j) {
            REAL *d = j < n ? d_streams + (t * n + j) * width : d_y + t * width;
            const REAL first = j < n ? h[j] : post[0];
            #pragma omp simd
            for (int64_t c = 0; c < width; ++c) d[c] = first * g[c];
            for (int i = 1; i < n; ++i) {
                const REAL weight = j < n ? h[i * n + j] : post[i];
                const REAL *gi = g + i * width;
                #pragma omp simd
                for (int64_t c = 0; c < width; ++c) d[c] += weight * gi[c];
            }
        }
    }
}

/* The read's terms of dX in one pass: dX[t, i, :] += Hpre[t, i] du[t, :]
 * + through_rms[t] X[t, i, :] (the second term only when through_rms is not NULL). */
void NAME(mhc_stream_read_backward)(
        REAL *restrict d_streams, const REAL *restrict hpre, const REAL *restrict du,
        const REAL *restrict through_rms, const REAL *restrict streams, int64_t tokens, int n,
        int64_t width, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static) \
        if (threads > 1 && tokens * n * width >= GRAIN)
    for (int64_t t = 0; t < tokens; ++t) {
        const REAL *u = du + t * width;
        for (int i = 0; i < n; ++i) {
            REAL *d = d_streams + (t * n + i) * width;
            const REAL pre = hpre[t * n + i];
            if (through_rms == NULL) {
                #pragma omp simd
                for (int64_t c = 0; c < width; ++c) d[c] += pre * u[c];
            } else {
                const REAL *x = streams + (t * n + i) * width;
                const REAL rms = through_rms[t];
                #pragma omp simd
                for (int64_t c = 0; c < width; ++c) d[c] += pre * u[c] + rms * x[c];
            }
        }
    }
}
