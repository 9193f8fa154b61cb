"""The read-out of the streams: output = sum_i w_i X[i] (:func:`mhc_spec.streams.reduce`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mhc_jax.streams.coefficients import coefficient_dtype
from mhc_spec.streams import StreamConfig, pre_logit


class StreamReduce(nnx.Module):
    """output = sum_i w_i X[i] for streams X (..., n, C), with w_i = 1 (``reduce="sum"``),
    1/n (``"mean"``) or sigmoid(r_i) (``"gated"``: learned ``reduce_logits`` r (n,),
    initialised to logit(1/n) so that it starts as the mean). ``streams`` and ``reduce``
    are validated by :class:`mhc_spec.streams.StreamConfig`."""

    def __init__(self, streams: int = 4, reduce: str = "sum", *, param_dtype: Any = jnp.float32):
        self.config = StreamConfig(streams=streams, reduce=reduce)
        n = self.config.streams
        self.reduce_logits = (nnx.Param(jnp.full((n,), pre_logit(n), param_dtype))
                              if self.config.reduce == "gated" else None)

    def weights(self, dtype: Any = jnp.float32) -> jax.Array:
        """w (n,): ones, 1/n, or sigmoid(r), in ``dtype`` promoted to at least float32."""
        n = self.config.streams
        if self.reduce_logits is not None:
            logits = self.reduce_logits[...]
            return jax.nn.sigmoid(logits.astype(coefficient_dtype(dtype, logits.dtype)))
        value = 1.0 / n if self.config.reduce == "mean" else 1.0
        return jnp.full((n,), value, coefficient_dtype(dtype))

    def __call__(self, streams: jax.Array) -> jax.Array:
        """sum_i w_i X[..., i, :], computed in at least float32, in the streams' dtype."""
        n = self.config.streams
        if streams.ndim < 2 or streams.shape[-2] != n:
            raise ValueError(f"StreamReduce(streams={n}) expects streams of shape (..., {n}, C), "
                             f"got {tuple(streams.shape)}")
        w = self.weights(streams.dtype)
        return jnp.sum(w[:, None] * streams.astype(w.dtype), axis=-2).astype(streams.dtype)
