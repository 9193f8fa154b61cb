"""The read-out of the streams: output = sum_i w_i X[i] (:func:`mhc_spec.streams.reduce`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mhc_jax.streams.coefficients import coefficient_dtype, resolve_stream_config
from mhc_spec.streams import StreamConfig, pre_logit


class StreamReduce(nnx.Module):
    """output = sum_i w_i X[i] for streams X (..., n, C), with w_i = 1 (``reduce="sum"``),
    1/n (``"mean"``) or sigmoid(r_i) (``"gated"``: learned logits r (n,), initialised to
    logit(1/n)). Options are :class:`mhc_spec.streams.StreamConfig`'s (or ``config=``)."""

    def __init__(
        self, *, config: StreamConfig | None = None, param_dtype: Any = jnp.float32,
        **options: Any,
    ):
        self.config = resolve_stream_config(config, options)
        n = self.config.streams
        self.logits = (nnx.Param(jnp.full((n,), pre_logit(n), param_dtype))
                       if self.config.reduce == "gated" else None)

    def weights(self, dtype: Any = jnp.float32) -> jax.Array:
        """w (n,): ones, 1/n, or sigmoid(r), in at least ``dtype``."""
        n = self.config.streams
        if self.logits is not None:
            logits = self.logits[...]
            return jax.nn.sigmoid(logits.astype(coefficient_dtype(dtype, logits.dtype)))
        value = 1.0 / n if self.config.reduce == "mean" else 1.0
        return jnp.full((n,), value, coefficient_dtype(dtype))

    def __call__(self, streams: jax.Array) -> jax.Array:
        """sum_i w_i X[..., i, :], computed in at least float32, in the streams' dtype."""
        w = self.weights(streams.dtype)
        return jnp.sum(w[:, None] * streams.astype(w.dtype), axis=-2).astype(streams.dtype)
