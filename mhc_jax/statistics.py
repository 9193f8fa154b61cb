"""The dashboard's numbers for an :class:`~mhc_jax.MHCSequential`, from the spec's definitions.

Device values are copied to host NumPy once and handed to :mod:`mhc_spec.statistics`, so
both dashboards compute entropy, skip gain, amplification and attenuation with one code.
The highway profile ||dLoss/ds_l|| (l = 0..L) comes from ``jax.grad`` with respect to zero
offsets added to every state as it is computed (``MHCSequential.forward(offsets=...)``):
d loss / d offset_l is exactly d loss / d s_l.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mhc_jax.sequential import MHCSequential
from mhc_spec import statistics as spec


@dataclass(frozen=True)
class MixingStatistics:
    """One stack's mixing at one moment: weights A (L, H) and gates g (L,) (fresh window),
    entropy (L,), skip gain and amplification (L + 1,), all float64."""

    kind: str
    mode: str
    gating: bool
    weights: np.ndarray
    gates: np.ndarray
    entropy: np.ndarray
    skip_gain: np.ndarray
    amplification: np.ndarray

    @property
    def mean_entropy(self) -> float:
        return float(self.entropy.mean())

    @property
    def max_amplification(self) -> float:
        return float(self.amplification.max())


@dataclass(frozen=True)
class Highway:
    """profile[l] = ||dLoss/ds_l|| for l = 0..L, its attenuation ||dLoss/ds_0|| /
    ||dLoss/ds_L||, and ||dLoss/dtheta|| (None for ``mode="residual"``)."""

    profile: np.ndarray
    attenuation: float
    theta_grad_norm: float | None


def mixing_statistics(model: MHCSequential) -> MixingStatistics:
    """Weights, gates, entropy S(a_l), skip gain c_l and amplification (spec definitions)."""
    config = model.config
    weights = np.asarray(model.weights(), dtype=np.float64)
    gates = np.asarray(model.gates(), dtype=np.float64)
    used_gates = gates if config.gating else None
    return MixingStatistics(
        kind=config.kind,
        mode=config.mode,
        gating=config.gating,
        weights=weights,
        gates=gates,
        entropy=spec.entropy(weights, config.mode),
        skip_gain=spec.skip_gain(weights, used_gates),
        amplification=spec.amplification(weights, used_gates),
    )


def _is_theta(path: tuple, _: Any) -> bool:
    return tuple(path) == ("mixing", "theta")


@partial(jax.jit, static_argnums=(0, 1))
def _gradients(graphdef, loss_fn, theta, rest, x, loss_args):
    def loss(theta, offsets):
        model = nnx.merge(graphdef, theta, rest)
        return loss_fn(model.forward(x, offsets=offsets).output, *loss_args)

    depth = nnx.merge(graphdef, theta, rest).depth
    offsets = jnp.zeros((depth + 1, *x.shape), x.dtype)
    return jax.grad(loss, argnums=(0, 1))(theta, offsets)


def state_gradients(
    model: MHCSequential, loss_fn: Callable[..., jax.Array], x: jax.Array, *loss_args: Any
) -> tuple[np.ndarray, np.ndarray | None]:
    """(dLoss/ds_l for l = 0..L stacked, dLoss/dtheta), loss = loss_fn(model(x), *loss_args).

    Jitted once per model structure and ``loss_fn``: pass the same function object on every
    logging step (a new lambda each time compiles again) and the changing data (labels...)
    through ``loss_args``.
    """
    graphdef, theta, rest = nnx.split(model, _is_theta, ...)
    d_theta, d_states = _gradients(graphdef, loss_fn, theta, rest, x, loss_args)
    leaves = jax.tree.leaves(d_theta)
    return np.asarray(d_states), (np.asarray(leaves[0]) if leaves else None)


def highway(
    model: MHCSequential, loss_fn: Callable[..., jax.Array], x: jax.Array, *loss_args: Any
) -> Highway:
    """The history-highway profile ||dLoss/ds_l||, l = 0..L, and ||dLoss/dtheta|| for
    loss = loss_fn(model(x), *loss_args) (see :func:`state_gradients`)."""
    d_states, d_theta = state_gradients(model, loss_fn, x, *loss_args)
    profile = spec.highway_profile(list(d_states))
    theta_norm = None if d_theta is None else float(np.linalg.norm(d_theta.astype(np.float64)))
    return Highway(profile, spec.attenuation(profile), theta_norm)
