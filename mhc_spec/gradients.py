"""Hand-derived reverse mode of the recurrence for loss = sum(G * s_L).

Walking l = L..1, ds_l is complete when layer l is reached (only later layers read s_l):

    m_l      = sum_j a_j s_{l-K+j}
    dgamma_l = <ds_l, m_l> * g_l (1 - g_l)                (gating only)
    da_j     = g_l <ds_l, s_{l-K+j}>,   ds_{l-K+j} += g_l a_j ds_l
    dtheta_l[H-K:] = P^T(da)                               (projections.project_vjp)
    ds_{l-1}, dW_l, db_l += block_vjp(ds_l)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mhc_spec.blocks import block_vjp
from mhc_spec.config import MHCConfig
from mhc_spec.projections import project_vjp, window_size
from mhc_spec.recurrence import Trace, mix, window_indices


@dataclass(frozen=True)
class Gradients:
    """dLoss/d of the input, the parameters and every state s_0..s_L."""

    x: np.ndarray
    theta: np.ndarray | None
    gamma: np.ndarray | None
    weight: np.ndarray
    bias: np.ndarray
    states: list[np.ndarray]


def backward(
    config: MHCConfig,
    trace: Trace,
    theta: np.ndarray | None,
    gamma: np.ndarray | None,
    kind: str,
    weight: np.ndarray,
    bias: np.ndarray,
    grad_output: np.ndarray,
) -> Gradients:
    """Reverse mode of :func:`mhc_spec.recurrence.forward` for loss = sum(G * s_L)."""
    states = trace.states
    depth = len(states) - 1
    h = config.max_history
    ds = [np.zeros_like(s) for s in states]
    ds[depth] = np.asarray(grad_output, dtype=np.float64).copy()
    dtheta = None if theta is None else np.zeros_like(theta, dtype=np.float64)
    dgamma = np.zeros(depth) if config.gating else None
    dweight = np.zeros_like(weight, dtype=np.float64)
    dbias = np.zeros_like(bias, dtype=np.float64)

    for layer in range(depth, 0, -1):
        g_l = trace.gates[layer - 1]
        row = trace.weights[layer - 1]
        upstream = ds[layer]
        if dgamma is not None:
            m = mix(row, states, layer)
            dgamma[layer - 1] = np.sum(upstream * m) * g_l * (1.0 - g_l)
        k = window_size(h, layer)
        da = np.zeros(h)
        for j, index in enumerate(window_indices(h, layer)):
            if index >= 0:
                da[j] = g_l * np.sum(upstream * states[index])
                ds[index] = ds[index] + g_l * row[j] * upstream
        if dtheta is not None:
            z = theta[layer - 1, h - k:]
            dtheta[layer - 1, h - k:] = project_vjp(config, z, da[h - k:])
        d_prev, dw, db = block_vjp(
            kind, weight[layer - 1], bias[layer - 1], states[layer - 1], upstream
        )
        ds[layer - 1] = ds[layer - 1] + d_prev
        dweight[layer - 1] = dw
        dbias[layer - 1] = db

    return Gradients(
        x=ds[0], theta=dtheta, gamma=dgamma, weight=dweight, bias=dbias, states=ds
    )
