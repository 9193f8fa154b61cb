"""The mixing parameters and the per-layer mixing module.

:class:`MHCMixing` owns the logits of a whole stack, theta (L, H) and gamma (L,), and
projects all layers at once; :class:`MHCSkip` is one layer's mixing for users who write
their own loop (the twin of ``mhc_torch.MHCSkip``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mhc_jax.history import History, check_state
from mhc_jax.projections import (
    available_counts,
    coefficient_dtype,
    gate_values,
    project,
    window_mask,
)
from mhc_jax.stacking import resolve_config_options
from mhc_spec import MHCConfig, check_depth, init_gamma, init_theta


def resolve_config(config: MHCConfig | None, options: dict[str, Any]) -> MHCConfig:
    """``config`` itself, or an :class:`MHCConfig` built (and validated) from ``options``."""
    return resolve_config_options(config, options, MHCConfig)


def mix(y: jax.Array, window: tuple[jax.Array, ...], coefficients: jax.Array) -> jax.Array:
    """s = y + sum_j c_j * window_j in one fused pass, computed in at least float32 and
    returned in the window's dtype (c_j = g * a_j)."""
    dtype = coefficient_dtype(jnp.promote_types(coefficients.dtype, window[-1].dtype))
    total = y.astype(dtype)
    for c, state in zip(coefficients.astype(dtype), window, strict=True):
        total = total + c * state.astype(dtype)
    return total.astype(window[-1].dtype)


class MHCMixing(nnx.Module):
    """Logits theta (L, H) (absent for ``mode="residual"``) and gate logits gamma (L,)
    (gating only) of an L-layer stack, initialised by :mod:`mhc_spec.parameters`."""

    def __init__(self, config: MHCConfig, depth: int, *, param_dtype: Any = jnp.float32):
        self.config = config
        self.depth = check_depth(depth)
        theta = init_theta(config, self.depth)
        gamma = init_gamma(config, self.depth)
        self.theta = None if theta is None else nnx.Param(jnp.asarray(theta, param_dtype))
        self.gamma = None if gamma is None else nnx.Param(jnp.asarray(gamma, param_dtype))

    def weights(self, first: jax.Array | int = 1) -> jax.Array:
        """A (L, H) = P(theta_l[H-K_l:]) padded, K_l = min(H, first + l - 1); ``first`` is
        the number of states available to layer 1 (1 without a carried history)."""
        h = self.config.max_history
        mask = window_mask(h, available_counts(h, self.depth, first))
        theta = None if self.theta is None else self.theta[...]
        return project(self.config, theta, mask)

    def gates(self) -> jax.Array:
        """g (L,): sigmoid(gamma) with gating, else ones."""
        gamma = None if self.gamma is None else self.gamma[...]
        return gate_values(self.config, gamma, self.depth)

    def coefficients(self, first: jax.Array | int = 1) -> jax.Array:
        """c (L, H) = g_l * A[l]: what multiplies each window slot."""
        return self.gates()[:, None] * self.weights(first)


class MHCSkip(nnx.Module):
    """One layer's history mixing: ``s, history = skip(f(history.newest), history)`` gives
    s = f(s_{l-1}) + g * sum_j a_j W_j with a = P(theta[H-K:]) over the K = history.count
    available states, and the window with s pushed.

    Options are those of :class:`mhc_spec.MHCConfig` (or pass ``config=``); bad values
    raise its errors here, at construction.
    """

    def __init__(
        self, *, config: MHCConfig | None = None, param_dtype: Any = jnp.float32, **options: Any
    ):
        self.config = resolve_config(config, options)
        self.mixing = MHCMixing(self.config, 1, param_dtype=param_dtype)

    @property
    def max_history(self) -> int:
        return self.config.max_history

    def start(self, x: jax.Array) -> History:
        """The window before the first layer: s_0 = x alone."""
        return History.start(x, self.max_history)

    def weights(self, available: jax.Array | int) -> jax.Array:
        """a (H,) padded, for ``available`` = K states in the window."""
        return self.mixing.weights(available)[0]

    def __call__(self, y: jax.Array, history: History) -> tuple[jax.Array, History]:
        if history.max_history != self.max_history:
            raise ValueError(
                f"history holds {history.max_history} states but this MHCSkip mixes "
                f"max_history={self.max_history}"
            )
        check_state(history, y)
        coefficients = self.mixing.coefficients(jnp.maximum(history.count, 1))[0]
        window = tuple(history.states[j] for j in range(self.max_history))
        s = mix(y, window, coefficients)
        return s, history.push(s)
