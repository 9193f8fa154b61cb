"""Sinkhorn-Knopp and the map from Hres logits to Hres, in JAX.

    M_0 = exp(Z - max Z);   for t = 1..T:  M <- M / colsum(M);  M <- M / rowsum(M)
    SK(Z) = M_T

exactly :mod:`mhc_spec.streams.sinkhorn`. The T iterations run in one ``lax.fori_loop``
(its body compiles once, whatever T; under reverse mode JAX turns it into a scan that keeps
each iterate, so the gradient is the spec's hand-derived reverse sweep). The max is a
``stop_gradient``: SK(Z - c) = SK(Z) for every constant c, so the max carries no gradient,
and differentiating it would only add rounding noise on the argmax entry.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mhc_spec.config import check_int
from mhc_spec.streams import StreamConfig
from mhc_spec.streams.config import SINKHORN
from mhc_spec.streams.constraint import check_projection_output


def sinkhorn(logits: jax.Array, iterations: int) -> jax.Array:
    """SK(Z) = (T_r o T_c)^T (exp(Z - max Z)) for Z of shape (..., n, n); rows sum to 1."""
    iterations = check_int("sinkhorn_iterations", iterations, 1)
    shift = jax.lax.stop_gradient(jnp.max(logits, axis=(-2, -1), keepdims=True))

    def normalise(_: int, m: jax.Array) -> jax.Array:
        m = m / jnp.sum(m, axis=-2, keepdims=True)
        return m / jnp.sum(m, axis=-1, keepdims=True)

    return jax.lax.fori_loop(0, iterations, normalise, jnp.exp(logits - shift))


def project_residual(config: StreamConfig, logits: jax.Array) -> jax.Array:
    """Hres = SK_T(Hres~) (mhc, ``"sinkhorn"``), P(Hres~) (mhc, a user callable P,
    differentiated by JAX) or Hres~ (hc), for logits of shape (..., n, n)."""
    if not config.constrained:
        return logits
    if config.constraint == SINKHORN:
        return sinkhorn(logits, config.sinkhorn_iterations)
    out = jnp.asarray(config.constraint(logits))
    check_projection_output(config, tuple(out.shape), logits.shape)
    return out.astype(logits.dtype)
