/* The eager tape's per-layer arithmetic on a one-chunk arena, as native kernels (see
 * mhc_torch/tape.py for the maths and the layout, mhc_torch/native.py for how this file is
 * built and loaded). For small states, the step and the pull, where a layer's few PyTorch
 * calls cost more in dispatch than in arithmetic; for large ones, threaded versions of both,
 * whose one pass over the ring replaces two products and a copy.
 *
 * The arena A holds a row of n entries per state (the P carried states, then s_0..s_L);
 * C (L, H) holds the coefficients, window slot H-1 being the newest state. Layer l mixes
 * the K = min(H, P + l) newest rows before its own:
 *
 *   step l:  s_l = y + sum_{j<K} C[l-1, H-K+j] A[P+l-K+j]
 *   pull t:  D[P+t, r] = <R_r, s_t>  (r < H),  ds_t = g + sum_r Q[t, r] R_r,  R_{t mod H} = ds_t
 *
 * R is the ring of the newest H state gradients (H rows of n), Q (L+1, H) the pull matrix
 * and D (P+L+1, H) the pairs; D is read before R's slot is overwritten. Every loop runs over
 * blocks of BLOCK entries, so a block of every row stays in L1 across the passes. Large
 * states (an arena of any number of chunks) take the step and the pull by address, on
 * several threads. Compiled
 * once per element type: REAL is float or double, NAME(f) appends the suffix.
 */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define BLOCK 1024
#define GRAIN 32768     /* entries below which a pull stays on one thread (PyTorch's grain) */
#define MAX_THREADS 64  /* threads one pull splits its blocks over at most */

/* What every call of one tape shares (mhc_torch.tape._Addresses): one address instead of
 * seven or ten arguments cuts ctypes' cost per call to about a third. */
struct mhc_tape {
    void *arena, *coefficients, *ring, *pull, *pairs;
    int64_t carried, h, n;
};

/* One block [start, start + size) of a step: out = y + sum_{j<k} c[j] rows[j]
 * + sum_{j<k2} c2[j] rows2[j], for rows n apart (a window in one chunk, or across two). */
static inline void NAME(step_block)(const REAL *y, REAL *out, const REAL *rows, int64_t k,
                                    const REAL *c, const REAL *rows2, int64_t k2,
                                    const REAL *c2, int64_t n, int64_t start, int64_t size) {
    REAL *o = out + start;
    memcpy(o, y + start, (size_t)size * sizeof(REAL));
    for (int64_t j = 0; j < k + k2; ++j) {
        const REAL cj = j < k ? c[j] : c2[j - k];
        const REAL *w = (j < k ? rows + j * n : rows2 + (j - k) * n) + start;
#pragma omp simd
        for (int64_t i = 0; i < size; ++i) o[i] += cj * w[i];
    }
}

void NAME(mhc_tape_step)(const REAL *y, const struct mhc_tape *tape, int64_t layer) {
    REAL *arena = tape->arena;
    const int64_t carried = tape->carried, n = tape->n;
    const int h = (int)tape->h;
    const int64_t k = carried + layer < h ? carried + layer : h;
    const REAL *c = (const REAL *)tape->coefficients + (layer - 1) * h + (h - k);
    for (int64_t start = 0; start < n; start += BLOCK)
        NAME(step_block)(y, arena + (carried + layer) * n, arena + (carried + layer - k) * n,
                         k, c, NULL, 0, NULL, n, start, n - start < BLOCK ? n - start : BLOCK);
}

/* The step of a large state: its window by address, its blocks split over up to `threads`
 * OpenMP threads. */
void NAME(mhc_tape_step_rows)(const REAL *y, REAL *out, const REAL *rows, int64_t k,
                              const REAL *c, const REAL *rows2, int64_t k2, const REAL *c2,
                              int64_t n, int threads) {
    const int64_t blocks = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && n >= GRAIN)
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t start = b * BLOCK;
        NAME(step_block)(y, out, rows, k, c, rows2, k2, c2, n, start,
                         n - start < BLOCK ? n - start : BLOCK);
    }
}

/* One block [start, start + size) of pull t: d = g + sum_r q[r] R_r, dots[r] += <R_r, s>,
 * and the ring's slot gets d. */
static inline void NAME(pull_block)(const REAL *g, REAL *ds, const REAL *state,
                                    REAL *ring, const REAL *q, REAL *slot, int h, int64_t n,
                                    int64_t start, int64_t size, REAL *dots) {
    const REAL *s = state + start;
    REAL *d = ds + start;
    memcpy(d, g + start, (size_t)size * sizeof(REAL));
    for (int r = 0; r < h; ++r) {
        const REAL *row = ring + r * n + start;
        const REAL qr = q[r];
        REAL dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int64_t i = 0; i < size; ++i) {
            dot += row[i] * s[i];
            d[i] += qr * row[i];
        }
        dots[r] += dot;
    }
    memcpy(slot + start, d, (size_t)size * sizeof(REAL));
}

void NAME(mhc_tape_pull)(const REAL *g, REAL *ds, const struct mhc_tape *tape, int64_t t) {
    const int64_t carried = tape->carried, n = tape->n;
    const int h = (int)tape->h;
    REAL *ring = tape->ring;
    REAL *d_row = (REAL *)tape->pairs + (carried + t) * h;
    for (int r = 0; r < h; ++r) d_row[r] = 0;
    for (int64_t start = 0; start < n; start += BLOCK)
        NAME(pull_block)(g, ds, (const REAL *)tape->arena + (carried + t) * n, ring,
                         (const REAL *)tape->pull + t * h, ring + (t % h) * n, h, n, start,
                         n - start < BLOCK ? n - start : BLOCK, d_row);
}

/* Pull t for a state at its own address (an arena of several chunks), its blocks split over
 * up to `threads` OpenMP threads (PyTorch's pool, see native.py); each thread sums its
 * blocks' dot products apart, and D[t] adds the threads' sums in thread order, so a given
 * thread count always gives the same result. */
void NAME(mhc_tape_pull_state)(const REAL *g, REAL *ds, const REAL *state,
                               const struct mhc_tape *tape, int64_t t, int threads) {
    const int64_t carried = tape->carried, n = tape->n;
    const int h = (int)tape->h;
    const int64_t blocks = (n + BLOCK - 1) / BLOCK;
    REAL *ring = tape->ring;
    REAL *d_row = (REAL *)tape->pairs + (carried + t) * h;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > blocks) threads = (int)blocks;
    if (threads < 1 || n < GRAIN) threads = 1;
    REAL partial[MAX_THREADS * h];
    memset(partial, 0, sizeof(REAL) * (size_t)threads * h);
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
#ifdef _OPENMP
        REAL *dots = partial + omp_get_thread_num() * h;
#else
        REAL *dots = partial;
#endif
#pragma omp for schedule(static)
        for (int64_t b = 0; b < blocks; ++b) {
            const int64_t start = b * BLOCK;
            NAME(pull_block)(g, ds, state, ring, (const REAL *)tape->pull + t * h,
                             ring + (t % h) * n, h, n, start,
                             n - start < BLOCK ? n - start : BLOCK, dots);
        }
    }
    for (int r = 0; r < h; ++r) {
        REAL sum = 0;
        for (int i = 0; i < threads; ++i) sum += partial[i * h + r];
        d_row[r] = sum;
    }
}
