/* Sparsemax over the last axis of the padded (rows, H) weights, forward and backward, as
 * native kernels (see mhc_torch/projection.py for the maths and mhc_torch/native.py for
 * how this file is built and loaded). Masked entries arrive as -inf and leave as 0.
 *
 *   forward:   a = max(z - m - tau, 0),  m = max z,  tau = max_k (sum_{i<=k} w_(i) - 1) / k
 *              over w = z - m sorted in decreasing order (finite entries only);
 *   backward:  dz = s * (g - <s, g> / |s|),  s = [a > 0].
 *
 * One call covers every row, where the PyTorch operations take a dozen calls per direction.
 * Compiled once per element type: REAL is float or double, NAME(f) appends the suffix.
 */
#include <math.h>
#include <stdint.h>

void NAME(mhc_sparsemax_forward)(const REAL *z, int64_t rows, int width, REAL *a) {
    for (int64_t r = 0; r < rows; ++r) {
        const REAL *row = z + r * width;
        REAL *out = a + r * width;
        REAL top = -INFINITY;
        int invalid = 0;
        for (int i = 0; i < width; ++i) {
            top = row[i] > top ? row[i] : top;
            invalid |= isnan(row[i]) || (isinf(row[i]) && row[i] > 0);
        }
        if (invalid) {  /* NaN out, as the operators give: a diverged theta must show */
            for (int i = 0; i < width; ++i) out[i] = NAN;
            continue;
        }
        /* The shifted finite entries, sorted decreasing (insertion sort: the caller passes
         * windows of at most 1024 states, so the array fits any thread's stack). */
        REAL sorted[width];
        int count = 0;
        for (int i = 0; i < width; ++i) {
            if (isinf(row[i]) && row[i] < 0) continue;
            const REAL value = row[i] - top;
            int at = count++;
            while (at > 0 && sorted[at - 1] < value) {
                sorted[at] = sorted[at - 1];
                --at;
            }
            sorted[at] = value;
        }
        /* Prefix sums accumulated in double and rounded per prefix, as PyTorch's CPU
         * cumsum does for float: the same tau, so the same support, on both paths. */
        REAL tau = -INFINITY;
        double partial = 0;
        for (int k = 1; k <= count; ++k) {
            partial += sorted[k - 1];
            const REAL candidate = ((REAL)partial - 1) / k;
            tau = candidate > tau ? candidate : tau;
        }
        for (int i = 0; i < width; ++i) {
            const REAL value = row[i] - top - tau;
            out[i] = value > 0 ? value : 0;
        }
    }
}

void NAME(mhc_sparsemax_backward)(const REAL *a, const REAL *grad, int64_t rows, int width,
                                  REAL *dz) {
    for (int64_t r = 0; r < rows; ++r) {
        const REAL *weights = a + r * width, *g = grad + r * width;
        REAL *out = dz + r * width;
        REAL total = 0;
        int support = 0;
        for (int i = 0; i < width; ++i)
            if (weights[i] > 0) {
                total += g[i];
                ++support;
            }
        const REAL mean = support ? total / support : 0;
        for (int i = 0; i < width; ++i) out[i] = weights[i] > 0 ? g[i] - mean : 0;
    }
}
