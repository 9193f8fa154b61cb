"""Projections P that turn a layer's logits z (length K <= H) into mixing weights a.

The newest state is always the last entry. Every function works on the last axis and in
float64; the vector-Jacobian products are the hand-derived reverse mode used by
:mod:`mhc_spec.gradients`.
"""

from __future__ import annotations

import numpy as np

from mhc_spec.config import MHCConfig


def sparsemax(z: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the simplex: argmin_{a in simplex} ||a - z||^2.

    a_i = max(z_i - tau(z), 0) with tau chosen so that sum(a) = 1 (Martins & Astudillo,
    2016). Shift-invariant, so z - max(z) is projected to keep huge logits exact.
    """
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    z_sorted = -np.sort(-z, axis=-1)
    k = np.arange(1, z.shape[-1] + 1, dtype=np.float64)
    cumsum = np.cumsum(z_sorted, axis=-1)
    support_size = np.sum(1.0 + k * z_sorted > cumsum, axis=-1, keepdims=True)
    tau = (np.take_along_axis(cumsum, support_size - 1, axis=-1) - 1.0) / support_size
    return np.maximum(z - tau, 0.0)


def sparsemax_vjp(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """dz = s * (g - <s, g> / |s|) with s = [a > 0], the support (Jacobian diag(s) - s s^T / |s|).

    At a support change the support is taken as {a > 0}, the one-sided derivative from
    the side where the zero stays zero.
    """
    s = (np.asarray(a) > 0).astype(np.float64)
    mean = np.sum(s * g, axis=-1, keepdims=True) / np.sum(s, axis=-1, keepdims=True)
    return s * (g - mean)


def softmax(z: np.ndarray) -> np.ndarray:
    """a_i = exp(z_i) / sum_j exp(z_j)."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_vjp(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """dz = a * (g - <a, g>)."""
    return a * (g - np.sum(a * g, axis=-1, keepdims=True))


def newest_one_hot(k: int) -> np.ndarray:
    """e_{K-1}: all weight on the newest state."""
    e = np.zeros(k)
    e[-1] = 1.0
    return e


def project(config: MHCConfig, z: np.ndarray | None, k: int) -> np.ndarray:
    """The mixing weights a = P(z) of one layer with K = k available states.

    residual: e_{K-1};  hc: z;  mhc: sparsemax(z/tau), softmax(z/tau), or
    eps * e_{K-1} + (1 - eps) * sparsemax(z/tau) for the constraint "identity".
    """
    if config.mode == "residual":
        return newest_one_hot(k)
    z = np.asarray(z, dtype=np.float64)
    if z.shape != (k,):
        raise ValueError(f"expected {k} logits, got shape {z.shape}")
    if config.mode == "hc":
        return z.copy()
    scaled = z / config.temperature
    if config.constraint == "softmax":
        return softmax(scaled)
    a = sparsemax(scaled)
    if config.constraint == "identity":
        a = config.epsilon * newest_one_hot(k) + (1.0 - config.epsilon) * a
    return a


def project_vjp(config: MHCConfig, z: np.ndarray | None, g: np.ndarray) -> np.ndarray:
    """dLoss/dz given g = dLoss/da for the projection of :func:`project`."""
    g = np.asarray(g, dtype=np.float64)
    if config.mode == "residual":
        return np.zeros_like(g)
    if config.mode == "hc":
        return g.copy()
    scaled = np.asarray(z, dtype=np.float64) / config.temperature
    if config.constraint == "softmax":
        return softmax_vjp(softmax(scaled), g) / config.temperature
    dz = sparsemax_vjp(sparsemax(scaled), g) / config.temperature
    if config.constraint == "identity":
        dz = (1.0 - config.epsilon) * dz
    return dz


def window_size(max_history: int, layer: int) -> int:
    """K = min(H, l): the states available to layer l (1-indexed)."""
    return min(max_history, layer)


def padded_weights(config: MHCConfig, theta: np.ndarray | None, depth: int) -> np.ndarray:
    """All layers' weights in the padded layout A of shape (L, H).

    Row l-1 belongs to layer l; column j pairs with state s_{l-H+j}, so column H-1 is the
    newest state and the H-K columns of unavailable states are exactly 0.
    """
    h = config.max_history
    out = np.zeros((depth, h))
    for layer in range(1, depth + 1):
        k = window_size(h, layer)
        z = None if theta is None else theta[layer - 1, h - k:]
        out[layer - 1, h - k:] = project(config, z, k)
    return out
