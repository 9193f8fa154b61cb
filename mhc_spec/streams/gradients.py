"""Hand-derived reverse mode of the stream stack for loss = sum(G * output).

    dX_L[i]   = w_i G;          dr_i = sigmoid'(r_i) <G, X_L[i]>          (gated reduce)
    for l = L..1, with X = X_{l-1} and dX_l complete:
        dHres[i, j] = <dX_l[i], X[j]>;    dX[j]  = sum_i Hres[i, j] dX_l[i]
        dHpost[i]   = <dX_l[i], y>;       dy     = sum_i Hpost[i] dX_l[i]
        du, dW_l, db_l = F_l^T(dy)                                 (blocks.block_vjp)
        dHpre[i]    = <du, X[i]>;         dX[i] += Hpre[i] du
        dX += coefficients_l^T(dHpre, dHpost, dHres)               (coefficients_vjp)
    dh = sum_i dX_0[i]

<.,.> sums over the feature axis per token; parameter gradients also sum over tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mhc_spec.blocks import block_vjp
from mhc_spec.streams.coefficients import coefficients_vjp, sigmoid
from mhc_spec.streams.config import StreamConfig
from mhc_spec.streams.parameters import REDUCE_LOGITS
from mhc_spec.streams.recurrence import StreamTrace, reduce_weights


@dataclass(frozen=True)
class StreamGradients:
    """dLoss/d of the input h, the stream parameters (same keys as the parameter dict), the
    blocks' weight and bias, and every state X_0..X_L."""

    h: np.ndarray
    params: dict[str, np.ndarray]
    weight: np.ndarray
    bias: np.ndarray
    states: list[np.ndarray]


def backward(
    config: StreamConfig,
    trace: StreamTrace,
    params: dict[str, np.ndarray],
    kind: str,
    weight: np.ndarray,
    bias: np.ndarray,
    grad_output: np.ndarray,
) -> StreamGradients:
    """Reverse mode of :func:`mhc_spec.streams.recurrence.forward` for loss = sum(G * output)."""
    params = {key: np.asarray(value, dtype=np.float64) for key, value in params.items()}
    g = np.asarray(grad_output, dtype=np.float64)
    depth = len(trace.coefficients)
    grads = {key: np.zeros_like(value) for key, value in params.items()}
    dweight = np.zeros_like(weight, dtype=np.float64)
    dbias = np.zeros_like(bias, dtype=np.float64)

    w = reduce_weights(config, params)
    ds = [np.zeros_like(s) for s in trace.states]
    ds[depth] = w[:, None] * g[..., None, :]
    if config.reduce == "gated":
        r = sigmoid(params[REDUCE_LOGITS])
        x_last = trace.states[-1]
        grads[REDUCE_LOGITS] = r * (1.0 - r) * np.einsum(
            "tic,tc->i", x_last.reshape(-1, *x_last.shape[-2:]), g.reshape(-1, g.shape[-1]))

    for layer in range(depth - 1, -1, -1):
        x, upstream = trace.states[layer], ds[layer + 1]
        c = trace.coefficients[layer]
        u, y = trace.branch_inputs[layer], trace.branch_outputs[layer]
        d_res = np.einsum("...ic,...jc->...ij", upstream, x)
        d_post = np.einsum("...ic,...c->...i", upstream, y)
        dy = np.einsum("...i,...ic->...c", c.post, upstream)
        du, dweight[layer], dbias[layer] = block_vjp(kind, weight[layer], bias[layer], u, dy)
        d_pre = np.einsum("...c,...ic->...i", du, x)
        dx = (np.einsum("...ij,...ic->...jc", c.res, upstream)
              + c.pre[..., :, None] * du[..., None, :])
        d_coeff_x, layer_grads = coefficients_vjp(config, params, layer, c, d_pre, d_post, d_res)
        if d_coeff_x is not None:
            dx = dx + d_coeff_x
        ds[layer] = dx
        for key, value in layer_grads.items():
            grads[key][layer] = value

    return StreamGradients(
        h=ds[0].sum(axis=-2), params=grads, weight=dweight, bias=dbias, states=ds
    )
