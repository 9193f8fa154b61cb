"""One layer of a stream stack, and the expansion of an input into n streams.

    Hpre, Hpost, Hres = coefficients(X);   u = sum_i Hpre[i] X[i];   y = F(u)
    X_next[i] = sum_j Hres[i, j] X[j] + Hpost[i] y

exactly :func:`mhc_spec.streams.layer_forward`. The mixing runs in at least float32 and
X_next is returned in X's dtype; F gets u in X's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mhc_jax.streams.coefficients import (
    HIGHEST,
    LayerCoefficients,
    StreamMixing,
    check_streams,
    coefficients,
    resolve_stream_config,
)
from mhc_spec.config import check_int
from mhc_spec.streams import StreamConfig


def expand_streams(h: jax.Array, streams: int) -> jax.Array:
    """X_0[..., i, :] = h for i = 0..n-1: shape (..., n, C) for h of shape (..., C)."""
    n = check_int("streams", streams, 1)
    return jnp.broadcast_to(h[..., None, :], (*h.shape[:-1], n, h.shape[-1]))


def layer_forward(
    config: StreamConfig,
    params: dict[str, jax.Array],
    block: Callable[[jax.Array], jax.Array],
    streams: jax.Array,
    index: int | str,
) -> tuple[jax.Array, LayerCoefficients]:
    """(X_next, coefficients) of one layer with branch F = ``block`` (``index`` names the
    layer in errors); ``params`` is the layer's slice of :meth:`StreamMixing.stacked`."""
    c = coefficients(config, params, streams)
    x = streams.astype(c.pre.dtype)
    u = jnp.sum(c.pre[..., :, None] * x, axis=-2).astype(streams.dtype)
    y = block(u)
    if tuple(y.shape) != tuple(u.shape):
        raise ValueError(
            f"block {index} maps an input of shape {tuple(u.shape)} to shape "
            f"{tuple(y.shape)}; every block must keep its input's shape"
        )
    mixed = jnp.matmul(c.res, x, precision=HIGHEST)
    x_next = mixed + c.post[..., :, None] * y.astype(x.dtype)[..., None, :]
    return x_next.astype(streams.dtype), c


class StreamLayer(nnx.Module):
    """One layer for hand-written loops: ``X = layer(X)`` maps streams X (..., n, C) to
    X_next, running ``block`` (an nnx module, C -> C) as its branch F.

    ``layer_index`` (0-based) is the layer's place in the stack: the cyclic b_pre init
    leans layer l on stream l mod n. Options are :class:`mhc_spec.streams.StreamConfig`'s
    (or ``config=``); bad values raise its errors here. Use :func:`expand_streams` before
    the first layer and :class:`~mhc_jax.streams.StreamReduce` after the last.
    """

    def __init__(
        self,
        block: nnx.Module,
        *,
        width: int,
        layer_index: int = 0,
        config: StreamConfig | None = None,
        param_dtype: Any = jnp.float32,
        **options: Any,
    ):
        self.config = resolve_stream_config(config, options)
        if not isinstance(block, nnx.Module):
            raise TypeError(f"block={block!r} is invalid: block must be an nnx.Module")
        self.layer_index = check_int("layer_index", layer_index, 0)
        self.block = block
        self.mixing = StreamMixing(self.config, 1, width, first_layer=self.layer_index,
                                   param_dtype=param_dtype)

    def __call__(self, streams: jax.Array) -> jax.Array:
        return self.forward(streams)[0]

    def forward(self, streams: jax.Array) -> tuple[jax.Array, LayerCoefficients]:
        """(X_next, the layer's Hpre, Hpost, Hres)."""
        check_streams(self.config, self.mixing.width, streams)
        params = {name: value[0] for name, value in self.mixing.stacked().items()}
        return layer_forward(self.config, params, self.block, streams, self.layer_index)
