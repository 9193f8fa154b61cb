"""The forward recurrence of an n-stream stack (DeepSeek mHC, arXiv 2512.24880).

Streams carry a stream axis before the feature axis: X has shape (..., n, C) for an input
h of shape (..., C), e.g. (B, n, C) or (B, T, n, C).

    X_0[i] = h                                            (expand: n copies)
    for l = 1..L:  Hpre, Hpost, Hres = coefficients_l(X_{l-1})
                   u = sum_i Hpre[i] X_{l-1}[i];   y = F_l(u)
                   X_l[i] = sum_j Hres[i, j] X_{l-1}[j] + Hpost[i] y
    output = sum_i w_i X_L[i]                             (reduce)

with w_i = 1 (sum), 1/n (mean) or sigmoid(r_i) (gated).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mhc_spec.blocks import block_forward, check_block_kind
from mhc_spec.config import check_depth
from mhc_spec.streams.coefficients import Coefficients, coefficients, sigmoid
from mhc_spec.streams.config import StreamConfig
from mhc_spec.streams.parameters import B_PRE, REDUCE_LOGITS, check_parameters


@dataclass(frozen=True)
class StreamTrace:
    """Everything the forward computed: the streams X_0..X_L, each layer's coefficients,
    branch inputs u_l and outputs y_l, and the reduced output."""

    states: list[np.ndarray]
    coefficients: list[Coefficients]
    branch_inputs: list[np.ndarray]
    branch_outputs: list[np.ndarray]
    output: np.ndarray

    @property
    def hpre(self) -> np.ndarray:
        """Hpre of every layer and token, shape (L, ..., n)."""
        return np.stack([c.pre for c in self.coefficients])

    @property
    def hpost(self) -> np.ndarray:
        """Hpost of every layer and token, shape (L, ..., n)."""
        return np.stack([c.post for c in self.coefficients])

    @property
    def hres(self) -> np.ndarray:
        """Hres of every layer and token, shape (L, ..., n, n)."""
        return np.stack([c.res for c in self.coefficients])


def expand(h: np.ndarray, streams: int) -> np.ndarray:
    """X_0[..., i, :] = h for i = 0..n-1: shape (..., n, C)."""
    h = np.asarray(h, dtype=np.float64)
    return np.repeat(h[..., None, :], streams, axis=-2)


def branch_input(hpre: np.ndarray, streams: np.ndarray) -> np.ndarray:
    """u = sum_i Hpre[i] X[i]."""
    return np.einsum("...i,...ic->...c", hpre, streams)


def update(coeffs: Coefficients, streams: np.ndarray, y: np.ndarray) -> np.ndarray:
    """X_next[i] = sum_j Hres[i, j] X[j] + Hpost[i] y."""
    return (np.einsum("...ij,...jc->...ic", coeffs.res, streams)
            + coeffs.post[..., :, None] * y[..., None, :])


def layer_forward(
    config: StreamConfig,
    params: dict[str, np.ndarray],
    layer: int,
    streams: np.ndarray,
    branch: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, Coefficients, np.ndarray, np.ndarray]:
    """One layer (0-indexed) with any branch F: (X_next, coefficients, u, y = F(u))."""
    coeffs = coefficients(config, params, layer, streams)
    u = branch_input(coeffs.pre, streams)
    y = np.asarray(branch(u), dtype=np.float64)
    return update(coeffs, streams, y), coeffs, u, y


def reduce_weights(config: StreamConfig, params: dict[str, np.ndarray]) -> np.ndarray:
    """w of the read-out: ones (sum), 1/n (mean) or sigmoid(reduce_logits) (gated)."""
    n = config.streams
    if config.reduce == "gated":
        return sigmoid(params[REDUCE_LOGITS])
    return np.full(n, 1.0 / n) if config.reduce == "mean" else np.ones(n)


def reduce(config: StreamConfig, params: dict[str, np.ndarray], streams: np.ndarray) -> np.ndarray:
    """output = sum_i w_i X[i]."""
    return np.einsum("i,...ic->...c", reduce_weights(config, params), streams)


def forward(
    config: StreamConfig,
    h: np.ndarray,
    params: dict[str, np.ndarray],
    kind: str,
    weight: np.ndarray,
    bias: np.ndarray,
) -> StreamTrace:
    """Run the stack in float64 with reference blocks (weight: (L, C, C), bias: (L, C))."""
    check_block_kind(kind)
    depth = check_depth(np.shape(params[B_PRE])[0])
    h = np.asarray(h, dtype=np.float64)
    check_parameters(config, params, depth, h.shape[-1])
    if np.shape(weight)[0] != depth or np.shape(bias)[0] != depth:
        raise ValueError(
            f"weight {np.shape(weight)} and bias {np.shape(bias)} must have {depth} layers"
        )
    params = {key: np.asarray(value, dtype=np.float64) for key, value in params.items()}
    states = [expand(h, config.streams)]
    coeffs, inputs, outputs = [], [], []
    for layer in range(depth):
        def branch(u: np.ndarray, layer: int = layer) -> np.ndarray:
            return block_forward(kind, weight[layer], bias[layer], u)

        x_next, c, u, y = layer_forward(config, params, layer, states[-1], branch)
        states.append(x_next)
        coeffs.append(c)
        inputs.append(u)
        outputs.append(y)
    return StreamTrace(
        states=states, coefficients=coeffs, branch_inputs=inputs, branch_outputs=outputs,
        output=reduce(config, params, states[-1]),
    )
