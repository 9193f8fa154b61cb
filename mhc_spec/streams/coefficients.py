"""A layer's mixing coefficients Hpre, Hpost, Hres and their reverse mode.

For each token's streams X (n, C), with x = flatten(X) (stream-major, length n*C):

    x'     = x / r,  r = sqrt(mean(x^2) + eps)          (RMSNorm without a weight:
                                                         phi absorbs it, as in the paper)
    Hpre~  = a_pre  * (x' @ phi_pre)  + b_pre            (n,)
    Hpost~ = a_post * (x' @ phi_post) + b_post           (n,)
    Hres~  = a_res  * (x' @ phi_res)  + b_res            (n, n); phi_res is (n*C, n, n)
    Hpre = sigmoid(Hpre~);  Hpost = 2 sigmoid(Hpost~);  Hres = P(Hres~)

Static coefficients drop the x' terms (Hpre~ = b_pre, ...) and are broadcast to every token.
Reverse mode, with dHpre~ = dHpre Hpre (1 - Hpre), dHpost~ = dHpost Hpost (1 - Hpost / 2),
dHres~ = P^T(dHres), summing over tokens t:

    db = sum_t dH~;   da = sum_t <dH~, x' @ phi>;   dphi = a sum_t x' (x) dH~
    dx' = a_pre phi_pre dHpre~ + a_post phi_post dHpost~ + a_res phi_res : dHres~
    dx  = (dx' - x' mean(dx' * x')) / r
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mhc_spec.streams.config import StreamConfig
from mhc_spec.streams.constraint import project_residual, project_residual_vjp
from mhc_spec.streams.parameters import (
    A_POST,
    A_PRE,
    A_RES,
    B_POST,
    B_PRE,
    B_RES,
    PHI_POST,
    PHI_PRE,
    PHI_RES,
)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)), evaluated without overflow for large |x|."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def rms_norm(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(x', r) with x' = x / r, r = sqrt(mean(x^2) + eps) over the last axis (r keeps it)."""
    r = np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return x / r, r


def rms_norm_vjp(normalized: np.ndarray, r: np.ndarray, g: np.ndarray) -> np.ndarray:
    """dLoss/dx = (g - x' mean(g * x')) / r given g = dLoss/dx'."""
    return (g - normalized * np.mean(g * normalized, axis=-1, keepdims=True)) / r


@dataclass(frozen=True)
class Coefficients:
    """One layer's coefficients for every token: Hpre, Hpost (..., n) and Hres (..., n, n),
    their logits, and (dynamic only) x' (..., n*C) and r (..., 1) for the reverse mode."""

    pre: np.ndarray
    post: np.ndarray
    res: np.ndarray
    pre_logits: np.ndarray
    post_logits: np.ndarray
    res_logits: np.ndarray
    normalized: np.ndarray | None = None
    rms: np.ndarray | None = None


def coefficients(
    config: StreamConfig, params: dict[str, np.ndarray], layer: int, streams: np.ndarray
) -> Coefficients:
    """Hpre, Hpost, Hres of layer ``layer`` (0-indexed) for streams X of shape (..., n, C)."""
    tokens = streams.shape[:-2]
    n = config.streams
    pre = np.broadcast_to(params[B_PRE][layer], (*tokens, n))
    post = np.broadcast_to(params[B_POST][layer], (*tokens, n))
    res = np.broadcast_to(params[B_RES][layer], (*tokens, n, n))
    normalized = rms = None
    if config.dynamic:
        normalized, rms = rms_norm(streams.reshape(*tokens, -1), config.rms_eps)
        pre = params[A_PRE][layer] * np.einsum(
            "...k,km->...m", normalized, params[PHI_PRE][layer]) + pre
        post = params[A_POST][layer] * np.einsum(
            "...k,km->...m", normalized, params[PHI_POST][layer]) + post
        res = params[A_RES][layer] * np.einsum(
            "...k,kij->...ij", normalized, params[PHI_RES][layer]) + res
    pre, post, res = (np.array(v, dtype=np.float64) for v in (pre, post, res))
    return Coefficients(
        pre=sigmoid(pre), post=2.0 * sigmoid(post), res=project_residual(config, res),
        pre_logits=pre, post_logits=post, res_logits=res, normalized=normalized, rms=rms,
    )


def _token_sum(values: np.ndarray, trailing: int) -> np.ndarray:
    """Sum over the leading token axes, keeping the last ``trailing`` axes."""
    return values.reshape(-1, *values.shape[values.ndim - trailing:]).sum(axis=0)


def coefficients_vjp(
    config: StreamConfig,
    params: dict[str, np.ndarray],
    layer: int,
    coeffs: Coefficients,
    d_pre: np.ndarray,
    d_post: np.ndarray,
    d_res: np.ndarray,
) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """(dLoss/dX or None when static, the layer's parameter gradients by key) given the
    cotangents of Hpre, Hpost and Hres."""
    d_pre = d_pre * coeffs.pre * (1.0 - coeffs.pre)
    d_post = d_post * coeffs.post * (1.0 - 0.5 * coeffs.post)
    d_res = project_residual_vjp(config, coeffs.res_logits, d_res)
    grads = {
        B_PRE: _token_sum(d_pre, 1),
        B_POST: _token_sum(d_post, 1),
        B_RES: _token_sum(d_res, 2),
    }
    if not config.dynamic:
        return None, grads
    x = coeffs.normalized
    terms = (
        (PHI_PRE, A_PRE, d_pre, "...k,km->...m", "...m,km->...k", "tk,tm->km"),
        (PHI_POST, A_POST, d_post, "...k,km->...m", "...m,km->...k", "tk,tm->km"),
        (PHI_RES, A_RES, d_res, "...k,kij->...ij", "...ij,kij->...k", "tk,tij->kij"),
    )
    dx = np.zeros_like(x)
    x_tokens = x.reshape(-1, x.shape[-1])
    for phi_key, a_key, d, project_eq, back_eq, outer_eq in terms:
        phi, a = params[phi_key][layer], params[a_key][layer]
        grads[a_key] = np.sum(d * np.einsum(project_eq, x, phi))
        d_tokens = d.reshape(-1, *phi.shape[1:])
        grads[phi_key] = a * np.einsum(outer_eq, x_tokens, d_tokens)
        dx = dx + a * np.einsum(back_eq, d, phi)
    d_streams = rms_norm_vjp(x, coeffs.rms, dx)
    return d_streams.reshape(*d_streams.shape[:-1], config.streams, -1), grads
