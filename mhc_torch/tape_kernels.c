/* The eager tape's per-layer arithmetic on a one-chunk arena, as native kernels (see
 * mhc_torch/tape.py for the maths and the layout, mhc_torch/native.py for how this file is
 * built and loaded). Small states only: there a layer's few PyTorch calls cost more in
 * dispatch than in arithmetic.
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
 * blocks of BLOCK entries, so a block of every row stays in L1 across the passes. Compiled
 * once per element type: REAL is float or double, NAME(f) appends the suffix.
 */
#include <stdint.h>
#include <string.h>

#define BLOCK 1024

/* What every call of one tape shares (mhc_torch.tape._Addresses): one address instead of
 * seven or ten arguments cuts ctypes' cost per call to about a third. */
struct mhc_tape {
    void *arena, *coefficients, *ring, *pull, *pairs;
    int64_t carried, h, n;
};

void NAME(mhc_tape_step)(const REAL *y, const struct mhc_tape *tape, int64_t layer) {
    REAL *arena = tape->arena;
    const REAL *coefficients = tape->coefficients;
    const int64_t carried = tape->carried, n = tape->n;
    const int h = (int)tape->h;
    const int64_t k = carried + layer < h ? carried + layer : h;
    const REAL *window = arena + (carried + layer - k) * n;
    const REAL *c = coefficients + (layer - 1) * h + (h - k);
    REAL *out = arena + (carried + layer) * n;
    for (int64_t start = 0; start < n; start += BLOCK) {
        const int64_t size = n - start < BLOCK ? n - start : BLOCK;
        REAL *o = out + start;
        memcpy(o, y + start, (size_t)size * sizeof(REAL));
        for (int64_t j = 0; j < k; ++j) {
            const REAL cj = c[j];
            const REAL *w = window + j * n + start;
#pragma omp simd
            for (int64_t i = 0; i < size; ++i) o[i] += cj * w[i];
        }
    }
}

void NAME(mhc_tape_pull)(const REAL *g, REAL *ds, const struct mhc_tape *tape, int64_t t) {
    REAL *ring = tape->ring, *pairs = tape->pairs;
    const REAL *pull = tape->pull, *arena = tape->arena;
    const int64_t carried = tape->carried, n = tape->n;
    const int h = (int)tape->h;
    const REAL *state = arena + (carried + t) * n;
    const REAL *q = pull + t * h;
    REAL *d_row = pairs + (carried + t) * h;
    REAL *slot = ring + (t % h) * n;
    for (int r = 0; r < h; ++r) d_row[r] = 0;
    for (int64_t start = 0; start < n; start += BLOCK) {
        const int64_t size = n - start < BLOCK ? n - start : BLOCK;
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
            d_row[r] += dot;
        }
        memcpy(slot + start, d, (size_t)size * sizeof(REAL));
    }
}
