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


def resolve_width(width: int | None, first_block: nnx.Module) -> int:
    """C: ``width``, or the ``in_features`` of an ``nnx.Linear`` first block (as the PyTorch
    twin does with ``nn.Linear``)."""
    inferred = first_block.in_features if isinstance(first_block, nnx.Linear) else None
    if width is None:
        if inferred is None:
            raise TypeError(
                f"width=None is invalid: the stream width C cannot be inferred from the first "
                f"block ({type(first_block).__name__}, not an nnx.Linear); pass width=C, the "
                "features of h (..., C)"
            )
        return inferred
    width = check_int("width", width, 1)
    if inferred is not None and inferred != width:
        raise ValueError(f"width={width} is invalid: the first block is nnx.Linear with "
                         f"in_features={inferred}; width must equal it")
    return width


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

    ``width`` (C) defaults to the ``in_features`` of an ``nnx.Linear`` block.
    ``layer_index`` (0-based) is the layer's place in the stack: the cyclic b_pre init
    leans layer l on stream l mod n. Options are :class:`mhc_spec.streams.StreamConfig`'s
    (or ``config=``); bad values raise its errors here. Use :func:`expand_streams` before
    the first layer and :class:`~mhc_jax.streams.StreamReduce` after the last.
    """

    def __init__(
        self,
        block: nnx.Module,
        *,
        width: int | None = None,
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
        self.mixing = StreamMixing(self.config, 1, resolve_width(width, block),
                                   first_layer=self.layer_index,
                                   param_dtype=param_dtype)

    def __call__(self, streams: jax.Array) -> jax.Array:
        return self.forward(streams)[0]

    def forward(self, streams: jax.Array) -> tuple[jax.Array, LayerCoefficients]:
        """(X_next, the layer's Hpre, Hpost, Hres)."""
        check_streams(self.config, self.mixing.width, streams)
        params = {name: value[0] for name, value in self.mixing.stacked().items()}
        return layer_forward(self.config, params, self.block, streams, self.layer_index)
