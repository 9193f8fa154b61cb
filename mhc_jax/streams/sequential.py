"""``StreamSequential``: an n-stream stack (DeepSeek mHC, arXiv 2512.24880), exactly
:func:`mhc_spec.streams.forward`:

    X_0[i] = h;   X_l = layer_l(X_{l-1}) (l = 1..L, see :mod:`mhc_jax.streams.layer`)
    output = sum_i w_i X_L[i]

Two builds, as :class:`mhc_jax.MHCSequential`:

- ``StreamSequential(blocks, width=C, ...)``: any list of nnx modules, run by a Python loop
  (compile time grows with depth; blocks may differ).
- ``StreamSequential.scanned(make_block, depth, width=C, rngs=...)``: ``depth`` blocks
  created by ``nnx.vmap`` with stacked parameters (leading axis L), run by ``jax.lax.scan``
  over the layers together with the stacked mixing parameters (compile time does not grow
  with depth).

The stack is functional: ``model(h)`` is a pure function of h and the parameters, and
nothing is kept between calls. For monitoring, ``model.forward(h,
collect_coefficients=True)`` also returns every layer's Hpre, Hpost and Hres.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mhc_jax.stacking import collect_blocks, stacked_blocks
from mhc_jax.streams.coefficients import (
    LayerCoefficients,
    StreamMixing,
    resolve_stream_config,
)
from mhc_jax.streams.layer import expand_streams, layer_forward, resolve_width
from mhc_jax.streams.reduce import StreamReduce
from mhc_spec.config import check_depth, check_int
from mhc_spec.streams import StreamConfig


class StreamOutput(NamedTuple):
    """What :meth:`StreamSequential.forward` computed: the output (..., C); when asked for,
    Hpre and Hpost (L, ..., n) and Hres (L, ..., n, n) of every layer and token (static
    coefficients broadcast to every token), and the streams X_0..X_L (L + 1, ..., n, C)."""

    output: jax.Array
    hpre: jax.Array | None = None
    hpost: jax.Array | None = None
    hres: jax.Array | None = None
    states: jax.Array | None = None


def _unstack(params: dict[str, jax.Array], depth: int) -> list[dict[str, jax.Array]]:
    """Per-layer slices of stacked parameters, cut by one split per array: its reverse mode
    is one concatenation, where indexing each layer would pad every slice's gradient to
    the full (L, ...) shape and sum L of them."""
    pieces = {name: jnp.split(value, depth) for name, value in params.items()}
    return [{name: pieces[name][layer][0] for name in params} for layer in range(depth)]


def _per_token(c: LayerCoefficients, tokens: tuple[int, ...]) -> LayerCoefficients:
    n = c.pre.shape[-1]
    return LayerCoefficients(jnp.broadcast_to(c.pre, (*tokens, n)),
                             jnp.broadcast_to(c.post, (*tokens, n)),
                             jnp.broadcast_to(c.res, (*tokens, n, n)))


class StreamSequential(nnx.Module):
    """L blocks on n residual streams mixed by Hpre, Hpost and Hres (the twin of
    ``mhc_torch``'s stream stack).

    Build it from a list of nnx modules (``StreamSequential(blocks, width=C, streams=4,
    ...)``) or with stacked parameters (:meth:`scanned`). ``width`` is C, the features of
    the input h (..., C) and of each stream; it defaults to the ``in_features`` of an
    ``nnx.Linear`` first block. Options are the fields of
    :class:`mhc_spec.streams.StreamConfig` (``streams``, ``mode``, ``constraint``,
    ``sinkhorn_iterations``, ``dynamic``, ``reduce``, ``rms_eps``, ``a_init``,
    ``pre_init``) or ``config=``; bad values raise the spec's errors here. ``param_dtype``
    is the dtype of the mixing parameters.

    Attributes: ``config``, ``depth``, ``width``, ``scan`` (which build), ``blocks`` (an
    ``nnx.List``, or one module whose arrays have a leading axis L), ``mixing``
    (:class:`~mhc_jax.streams.coefficients.StreamMixing`, every layer's parameters
    stacked) and ``readout`` (:class:`~mhc_jax.streams.StreamReduce`).
    """

    def __init__(
        self,
        blocks: Iterable[nnx.Module] | None = None,
        *,
        width: int | None = None,
        stacked: nnx.Module | None = None,
        depth: int | None = None,
        config: StreamConfig | None = None,
        param_dtype: Any = jnp.float32,
        **options: Any,
    ):
        self.config = resolve_stream_config(config, options)
        self.depth, self.scan, self.blocks = collect_blocks(blocks, stacked, depth)
        self.width = resolve_width(width, self.blocks if self.scan else self.blocks[0])
        self.mixing = StreamMixing(self.config, self.depth, self.width, param_dtype=param_dtype)
        self.readout = StreamReduce(self.config.streams, self.config.reduce,
                                    param_dtype=param_dtype)

    @classmethod
    def scanned(
        cls,
        make_block: Callable[[nnx.Rngs], nnx.Module],
        depth: int,
        *,
        rngs: nnx.Rngs,
        width: int | None = None,
        config: StreamConfig | None = None,
        param_dtype: Any = jnp.float32,
        **options: Any,
    ) -> StreamSequential:
        """The scan build: ``depth`` blocks ``make_block(rngs)`` with independent
        initialisations, parameters stacked along a leading axis L."""
        resolved = resolve_stream_config(config, options)
        depth = check_depth(depth)
        if width is not None:
            check_int("width", width, 1)

        return cls(stacked=stacked_blocks(make_block, depth, rngs), depth=depth, width=width,
                   config=resolved, param_dtype=param_dtype)

    @property
    def streams(self) -> int:
        return self.config.streams

    def __call__(self, h: jax.Array) -> jax.Array:
        """output = reduce(X_L) for h of shape (..., C)."""
        return self.forward(h).output

    def forward(
        self,
        h: jax.Array,
        *,
        offsets: jax.Array | None = None,
        collect_coefficients: bool = False,
        collect_states: bool = False,
    ) -> StreamOutput:
        """Run the stack on h (..., C). ``offsets`` (L + 1, ..., n, C), if given, is added
        to each X_l as soon as it is computed: d loss / d offsets[l] = d loss / d X_l
        (pass zeros to get the gradients of the streams)."""
        if h.ndim < 1 or h.shape[-1] != self.width:
            raise ValueError(f"h has shape {tuple(h.shape)}; expected (..., width={self.width})")
        x = expand_streams(h, self.streams)
        expected = (self.depth + 1, *x.shape)
        if offsets is not None:
            if tuple(offsets.shape) != expected:
                raise ValueError(f"offsets has shape {tuple(offsets.shape)}; expected {expected}")
            x = x + offsets[0].astype(x.dtype)
        run = self._run_scan if self.scan else self._run_loop
        x_last, coeffs, states = run(
            x, None if offsets is None else offsets[1:], collect_coefficients, collect_states)
        output = self.readout(x_last)
        if collect_states:
            states = jnp.concatenate([x[None], states])
        if not collect_coefficients:
            return StreamOutput(output, states=states)
        return StreamOutput(output, coeffs.pre, coeffs.post, coeffs.res, states)

    def _run_loop(self, x, offsets, collect_coefficients, collect_states):
        tokens = x.shape[:-2]
        layers = _unstack(self.mixing.stacked(), self.depth)
        coeffs, states = [], []
        for index, block in enumerate(self.blocks):
            x, c = layer_forward(self.config, layers[index], block, x, index)
            if offsets is not None:
                x = x + offsets[index].astype(x.dtype)
            coeffs.append(_per_token(c, tokens) if collect_coefficients else None)
            states.append(x)
        stacked = (LayerCoefficients(*map(jnp.stack, zip(*coeffs, strict=True)))
                   if collect_coefficients else None)
        return x, stacked, (jnp.stack(states) if collect_states else None)

    def _run_scan(self, x, offsets, collect_coefficients, collect_states):
        tokens = x.shape[:-2]
        graphdef, variables = nnx.split(self.blocks)
        track_mutable = bool(jax.tree.leaves(nnx.state(self.blocks, nnx.Not(nnx.Param))))

        def step(x, inputs):
            layer_variables, params, offset = inputs
            block = nnx.merge(graphdef, layer_variables)
            x, c = layer_forward(self.config, params, block, x, "(scanned)")
            if offset is not None:
                x = x + offset.astype(x.dtype)
            changed = nnx.state(block, nnx.Not(nnx.Param)) if track_mutable else None
            return x, (_per_token(c, tokens) if collect_coefficients else None,
                       x if collect_states else None, changed)

        x, (coeffs, states, changed) = jax.lax.scan(
            step, x, (variables, self.mixing.stacked(), offsets))
        if track_mutable:
            # The blocks' updated non-parameter state (e.g. batch statistics).
            nnx.update(self.blocks, changed)
        return x, coeffs, states
