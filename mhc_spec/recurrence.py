"""The forward recurrence of a history-mixing stack.

    s_0 = x
    for l = 1..L:  K = min(H, l);  a = P(theta_l[H-K:]);
                   s_l = f_l(s_{l-1}) + g_l * sum_j a_j s_{l-K+j}
    output s_L

with g_l = sigmoid(gamma_l) under gating, else 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mhc_spec.blocks import block_forward, check_block_kind
from mhc_spec.config import MHCConfig, check_depth
from mhc_spec.parameters import gates
from mhc_spec.projections import padded_weights


@dataclass(frozen=True)
class Trace:
    """Everything the forward computed: the states s_0..s_L, the padded weights A (L, H)
    and the gates g (L,)."""

    states: list[np.ndarray]
    weights: np.ndarray
    gates: np.ndarray

    @property
    def output(self) -> np.ndarray:
        return self.states[-1]


def window_indices(max_history: int, layer: int) -> list[int]:
    """Indices l-H+j of the states paired with columns j = 0..H-1 of layer l (may be < 0)."""
    return [layer - max_history + j for j in range(max_history)]


def mix(weights_row: np.ndarray, states: list[np.ndarray], layer: int) -> np.ndarray:
    """m_l = sum_j A[l-1, j] * s_{l-H+j}, skipping the unavailable (zero-weight) states."""
    h = weights_row.shape[0]
    out = np.zeros_like(states[layer - 1])
    for j, index in enumerate(window_indices(h, layer)):
        if index >= 0:
            out = out + weights_row[j] * states[index]
    return out


def forward(
    config: MHCConfig,
    x: np.ndarray,
    theta: np.ndarray | None,
    gamma: np.ndarray | None,
    kind: str,
    weight: np.ndarray,
    bias: np.ndarray,
) -> Trace:
    """Run the recurrence in float64 with reference blocks (weight: (L, D, D), bias: (L, D))."""
    check_block_kind(kind)
    depth = check_depth(weight.shape[0])
    weights = padded_weights(config, theta, depth)
    g = gates(config, gamma, depth)
    states = [np.asarray(x, dtype=np.float64)]
    for layer in range(1, depth + 1):
        y = block_forward(kind, weight[layer - 1], bias[layer - 1], states[-1])
        states.append(y + g[layer - 1] * mix(weights[layer - 1], states, layer))
    return Trace(states=states, weights=weights, gates=g)
