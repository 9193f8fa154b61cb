"""Monitoring statistics, defined once for both dashboards.

All functions take the padded weights A of shape (L, H) (see
:func:`mhc_spec.projections.padded_weights`); the zero columns of unavailable states
contribute nothing, so each formula equals its K-vector form.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def entropy(weights: np.ndarray, mode: str = "mhc") -> np.ndarray:
    """S(a) = -sum_j a_j log a_j with 0 log 0 = 0, per row; for ``hc`` on |a| / sum|a|.

    A row of ``hc`` weights that is all zero has entropy 0.
    """
    a = np.asarray(weights, dtype=np.float64)
    if mode == "hc":
        a = np.abs(a)
        total = a.sum(axis=-1, keepdims=True)
        a = np.divide(a, total, out=np.zeros_like(a), where=total > 0)
    positive = a > 0
    logs = np.log(np.where(positive, a, 1.0))
    return -np.sum(np.where(positive, a * logs, 0.0), axis=-1)


def _gain(weights: np.ndarray, gates: np.ndarray | None) -> np.ndarray:
    a = np.asarray(weights, dtype=np.float64)
    depth, h = a.shape
    g = np.ones(depth) if gates is None else np.asarray(gates, dtype=np.float64)
    c = np.zeros(depth + 1)
    c[0] = 1.0
    for layer in range(1, depth + 1):
        total = 0.0
        for j in range(h):
            index = layer - h + j
            if index >= 0:
                total += a[layer - 1, j] * c[index]
        c[layer] = g[layer - 1] * total
    return c


def skip_gain(weights: np.ndarray, gates: np.ndarray | None = None) -> np.ndarray:
    """c_0 = 1; c_l = g_l * sum_j a_{l,j} c_{l-K+j}: the input's coefficient in s_l through
    the skip paths alone, for l = 0..L (exactly 1 on the simplex without gating)."""
    return _gain(weights, gates)


def amplification(weights: np.ndarray, gates: np.ndarray | None = None) -> np.ndarray:
    """The skip-gain recurrence with |a_{l,j}|, for l = 0..L; report ``max`` of it."""
    return _gain(np.abs(np.asarray(weights, dtype=np.float64)), gates)


def highway_profile(state_grads: Sequence[np.ndarray]) -> np.ndarray:
    """||dLoss/ds_l||_2 for l = 0..L."""
    return np.array([np.linalg.norm(np.asarray(g, dtype=np.float64).ravel()) for g in state_grads])


def attenuation(profile: np.ndarray) -> float:
    """||dLoss/ds_0|| / ||dLoss/ds_L|| (inf when the output gradient is zero but not the input's,
    nan when both are zero)."""
    first, last = float(profile[0]), float(profile[-1])
    if last == 0.0:
        return float("nan") if first == 0.0 else float("inf")
    return first / last


