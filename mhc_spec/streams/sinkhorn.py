"""Sinkhorn-Knopp: the map from Hres logits to a (nearly) doubly stochastic matrix.

    M_0 = exp(Z - max Z)
    for t = 1..T:  C_t = M_{t-1} / colsum(M_{t-1})      (each column divided by its sum)
                   M_t = C_t / rowsum(C_t)              (each row divided by its sum)
    SK(Z) = M_T

It ends on rows, so the rows of SK(Z) sum to 1 up to rounding; the columns approach 1 as T
grows. Subtracting the max (per matrix, over its n x n entries) only prevents overflow:
SK(Z - c) = SK(Z) for every constant c, so the max carries no gradient.

Reverse mode, walking t = T..1 with G = dLoss/dM_t (dividing A = B / s by its sums s):

    dC_t     = (G - rowsum(G * M_t)) / rowsum(C_t)
    dM_{t-1} = (dC_t - colsum(dC_t * C_t)) / colsum(M_{t-1})
    dZ       = dM_0 * M_0

Every function keeps its input's dtype (float32 stays float32) and works on any leading
axes (..., n, n).
"""

from __future__ import annotations

import numpy as np

from mhc_spec.config import check_int


def _start(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits)
    return np.exp(z - z.max(axis=(-2, -1), keepdims=True))


def sinkhorn(logits: np.ndarray, iterations: int) -> np.ndarray:
    """SK(Z) = (T_r o T_c)^T (exp(Z - max Z)) for Z of shape (..., n, n)."""
    iterations = check_int("sinkhorn_iterations", iterations, 1)
    m = _start(logits)
    for _ in range(iterations):
        m = m / m.sum(axis=-2, keepdims=True)
        m = m / m.sum(axis=-1, keepdims=True)
    return m


def sinkhorn_vjp(logits: np.ndarray, iterations: int, cotangent: np.ndarray) -> np.ndarray:
    """dLoss/dZ given G = dLoss/dSK(Z), through all T iterations."""
    iterations = check_int("sinkhorn_iterations", iterations, 1)
    m0 = _start(logits)
    # The forward again, keeping every iterate (n x n per token) for the reverse sweep.
    steps = []
    m = m0
    for _ in range(iterations):
        column_sums = m.sum(axis=-2, keepdims=True)
        c = m / column_sums
        row_sums = c.sum(axis=-1, keepdims=True)
        m = c / row_sums
        steps.append((column_sums, c, row_sums, m))
    g = np.asarray(cotangent, dtype=m0.dtype)
    for column_sums, c, row_sums, m in reversed(steps):
        g = (g - np.sum(g * m, axis=-1, keepdims=True)) / row_sums
        g = (g - np.sum(g * c, axis=-2, keepdims=True)) / column_sums
    return g * m0
