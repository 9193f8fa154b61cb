"""Monitoring statistics of a stream stack, defined once for both dashboards.

Hres, Hpre and Hpost are per token: Hres of all layers has shape (L, ..., n, n). The paper's
stability measure (its Figs. 3 and 7) is the "Amax gain" of the composite residual map:
the forward gain max_i sum_j |P_ij| (worst expansion of a signal), the backward gain
max_j sum_i |P_ij| (worst expansion of a gradient), computed per token and averaged over
tokens. For mhc the rows of Hres sum to 1, so every forward gain is 1 up to rounding and the
backward gains approach 1 as T grows; an unconstrained hc stack can grow exponentially.
"""

from __future__ import annotations

import numpy as np

from mhc_spec.streams.recurrence import StreamTrace


def composite(hres: np.ndarray) -> np.ndarray:
    """P_0 = I, P_l = Hres_l P_{l-1} = Hres_l ... Hres_1: the map from X_0 to X_l through the
    residual paths alone, shape (L+1, ..., n, n)."""
    hres = np.asarray(hres, dtype=np.float64)
    out = [np.broadcast_to(np.eye(hres.shape[-1]), hres.shape[1:]).copy()]
    for matrix in hres:
        out.append(np.einsum("...ij,...jk->...ik", matrix, out[-1]))
    return np.stack(out)


def composite_to_output(hres: np.ndarray) -> np.ndarray:
    """Q_L = I, Q_l = Q_{l+1} Hres_{l+1} = Hres_L ... Hres_{l+1}: the map from X_l to X_L
    through the residual paths (the paper's composite), shape (L+1, ..., n, n)."""
    hres = np.asarray(hres, dtype=np.float64)
    out = [np.broadcast_to(np.eye(hres.shape[-1]), hres.shape[1:]).copy()]
    for matrix in hres[::-1]:
        out.append(np.einsum("...ij,...jk->...ik", out[-1], matrix))
    return np.stack(out[::-1])


def forward_gain(matrices: np.ndarray) -> np.ndarray:
    """max_i sum_j |M_ij| per matrix (the infinity norm): shape (...)."""
    return np.abs(np.asarray(matrices, dtype=np.float64)).sum(axis=-1).max(axis=-1)


def backward_gain(matrices: np.ndarray) -> np.ndarray:
    """max_j sum_i |M_ij| per matrix (the 1-norm): shape (...)."""
    return np.abs(np.asarray(matrices, dtype=np.float64)).sum(axis=-2).max(axis=-1)


def token_mean(values: np.ndarray, trailing: int) -> np.ndarray:
    """The mean over the token axes of per-layer values of shape (L, ..., *trailing axes)."""
    values = np.asarray(values, dtype=np.float64)
    tail = values.shape[values.ndim - trailing:]
    return values.reshape(values.shape[0], -1, *tail).mean(axis=1)


def summary(trace: StreamTrace) -> dict[str, np.ndarray]:
    """The dashboard's numbers: token means of each layer's Hres (L, n, n), Hpre and Hpost
    (L, n); the gains of each Hres_l (L,) and of the composites P_l and Q_l (L+1,), as token
    means (the paper's measure) and, for the composites, token maxima."""
    hres = trace.hres
    p, q = composite(hres), composite_to_output(hres)
    return {
        "hres_mean": token_mean(hres, 2),
        "hpre_mean": token_mean(trace.hpre, 1),
        "hpost_mean": token_mean(trace.hpost, 1),
        "layer_forward_gain": token_mean(forward_gain(hres), 0),
        "layer_backward_gain": token_mean(backward_gain(hres), 0),
        "composite_forward_gain": token_mean(forward_gain(p), 0),
        "composite_backward_gain": token_mean(backward_gain(p), 0),
        "composite_forward_gain_max": forward_gain(p).reshape(len(p), -1).max(axis=1),
        "composite_backward_gain_max": backward_gain(p).reshape(len(p), -1).max(axis=1),
        "to_output_forward_gain": token_mean(forward_gain(q), 0),
        "to_output_backward_gain": token_mean(backward_gain(q), 0),
    }
