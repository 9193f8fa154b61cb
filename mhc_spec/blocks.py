"""The two reference block kinds f_l of the spec, with their hand-derived reverse mode.

``linear``: f(s) = s W^T + b;  ``tanh_linear``: f(s) = tanh(s W^T + b).
W has shape (D, D) in the PyTorch layout (out, in); s has shape (..., D).
``np.einsum`` (not BLAS) keeps the reference bit-reproducible across machines.
"""

from __future__ import annotations

import numpy as np

BLOCK_KINDS = ("linear", "tanh_linear")


def check_block_kind(kind: str) -> str:
    if kind not in BLOCK_KINDS:
        raise ValueError(f"block kind={kind!r} is invalid: kind must be one of {BLOCK_KINDS}")
    return kind


def block_forward(kind: str, weight: np.ndarray, bias: np.ndarray, s: np.ndarray) -> np.ndarray:
    """f(s) for one block."""
    pre = np.einsum("...i,oi->...o", s, weight) + bias
    return np.tanh(pre) if check_block_kind(kind) == "tanh_linear" else pre


def block_vjp(
    kind: str, weight: np.ndarray, bias: np.ndarray, s: np.ndarray, g: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dLoss/ds, dLoss/dW, dLoss/db) given g = dLoss/df(s)."""
    if check_block_kind(kind) == "tanh_linear":
        y = block_forward(kind, weight, bias, s)
        g = g * (1.0 - y * y)
    ds = np.einsum("...o,oi->...i", g, weight)
    g2 = g.reshape(-1, g.shape[-1])
    s2 = s.reshape(-1, s.shape[-1])
    dw = np.einsum("no,ni->oi", g2, s2)
    db = g2.sum(axis=0)
    return ds, dw, db
