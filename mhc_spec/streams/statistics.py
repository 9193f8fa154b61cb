"""Monitoring statistics of a stream stack, defined once for both dashboards.

Hres, Hpre and Hpost are per token: Hres of all layers has shape (L, ..., n, n). The paper's
stability measure (its Figs. 3 and 7) is the "Amax gain" of the composite residual map:
the forward gain max_i sum_j |P_ij| (worst expansion of a signal), the backward gain
max_j sum_i |P_ij| (worst expansion of a gradient), computed per token and averaged over
tokens. For mhc the rows of Hres sum to 1, so every forward gain is 1 up to rounding and the
backward gains approach 1 as T grows; an unconstrained hc stack can grow exponentially.

Everything is a function of the coefficients alone (:func:`summary_from_coefficients`), so a
backend summarises what its own forward recorded. The difference the manifold makes is
shown by comparing stacks, an mhc one and an hc one (Hres free, initialised to I), each
summarised from its own coefficients. An mhc stack's own logits Hres~ are no stand-in for
the hc setting: they start at b_res = 4 I, whose composites have gains 4^l from the first
step, a property of the initial bias rather than of leaving the manifold.
"""

from __future__ import annotations

import numpy as np

from mhc_spec.statistics import entropy
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


def row_entropy(matrices: np.ndarray) -> np.ndarray:
    """S(p_i) = -sum_j p_ij log p_ij (nats, 0 log 0 = 0) of each row's share
    p_ij = |M_ij| / sum_k |M_ik|, shape (..., n); a zero row has entropy 0.

    How many input streams each output stream draws on: 0 for a permutation, log n for
    uniform mixing. Rows of a Sinkhorn Hres sum to 1, so there p_i is the row itself; the
    absolute shares give hc's signed rows the same reading."""
    return entropy(np.asarray(matrices, dtype=np.float64), mode="hc")


def token_mean(values: np.ndarray, trailing: int) -> np.ndarray:
    """The mean over the token axes of per-layer values of shape (L, ..., *trailing axes)."""
    values = np.asarray(values, dtype=np.float64)
    tail = values.shape[values.ndim - trailing:]
    return values.reshape(values.shape[0], -1, *tail).mean(axis=1)


def _check_coefficients(hpre: np.ndarray, hpost: np.ndarray,
                        hres: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three arrays in float64 after checking they describe the same layers and tokens."""
    hpre, hpost, hres = (np.asarray(v, dtype=np.float64) for v in (hpre, hpost, hres))
    if hres.ndim < 3 or hres.shape[-1] != hres.shape[-2] or 0 in hres.shape:
        raise ValueError(f"hres must be a non-empty (L, ..., n, n) array, got shape "
                         f"{hres.shape}.")
    if hpre.shape != hres.shape[:-1] or hpost.shape != hres.shape[:-1]:
        raise ValueError(f"hpre {hpre.shape} and hpost {hpost.shape} must both have shape "
                         f"{hres.shape[:-1]} (L, ..., n), to match hres {hres.shape}.")
    return hpre, hpost, hres


def summary_from_coefficients(hpre: np.ndarray, hpost: np.ndarray,
                              hres: np.ndarray) -> dict[str, np.ndarray]:
    """The dashboard's numbers from every layer's coefficients, Hpre and Hpost (L, ..., n)
    and Hres (L, ..., n, n) with the same token axes "...":

    - ``hres_mean`` (L, n, n), ``hpre_mean`` and ``hpost_mean`` (L, n): token means;
    - ``layer_forward_gain`` / ``layer_backward_gain`` (L,): token means of
      max_i sum_j |Hres_l[i, j]| and max_j sum_i |Hres_l[i, j]|;
    - ``composite_forward_gain`` / ``composite_backward_gain`` (L+1,): the same gains of
      P_l = Hres_l ... Hres_1 (P_0 = I), token means (the paper's measure), and
      ``composite_*_gain_max`` their token maxima;
    - ``to_output_forward_gain`` / ``to_output_backward_gain`` (L+1,): token means of the
      gains of Q_l = Hres_L ... Hres_{l+1} (Q_L = I).
    """
    hpre, hpost, hres = _check_coefficients(hpre, hpost, hres)
    p, q = composite(hres), composite_to_output(hres)
    return {
        "hres_mean": token_mean(hres, 2),
        "hpre_mean": token_mean(hpre, 1),
        "hpost_mean": token_mean(hpost, 1),
        "layer_forward_gain": token_mean(forward_gain(hres), 0),
        "layer_backward_gain": token_mean(backward_gain(hres), 0),
        "composite_forward_gain": token_mean(forward_gain(p), 0),
        "composite_backward_gain": token_mean(backward_gain(p), 0),
        "composite_forward_gain_max": forward_gain(p).reshape(len(p), -1).max(axis=1),
        "composite_backward_gain_max": backward_gain(p).reshape(len(p), -1).max(axis=1),
        "to_output_forward_gain": token_mean(forward_gain(q), 0),
        "to_output_backward_gain": token_mean(backward_gain(q), 0),
    }


def summary(trace: StreamTrace) -> dict[str, np.ndarray]:
    """:func:`summary_from_coefficients` of the coefficients a forward pass computed."""
    return summary_from_coefficients(trace.hpre, trace.hpost, trace.hres)
