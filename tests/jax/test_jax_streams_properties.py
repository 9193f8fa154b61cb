"""Properties of the stream family stated by the spec, checked by hand-computed values:
Sinkhorn's rows sum to 1, the initialised stack is the residual network, Hpre, Hpost and
Hres are applied as written, a hand loop of StreamLayers is the stack, and the coefficient
maths runs in float32 under bf16 streams."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax_fast import fast_jit

from mhc_jax.streams import (
    StreamLayer,
    StreamReduce,
    StreamSequential,
    coefficient_summary,
    expand_streams,
    sinkhorn,
    stream_statistics,
)
from mhc_jax.streams.coefficients import PARAMETER_NAMES
from mhc_spec.streams import pre_init_logits

WIDTH = 3


def tanh_block(rngs: nnx.Rngs) -> nnx.Module:
    return nnx.Sequential(nnx.Linear(WIDTH, WIDTH, rngs=rngs), jnp.tanh)


def stack(scan: bool, depth: int = 3, seed: int = 0, **options) -> StreamSequential:
    if scan:
        return StreamSequential.scanned(tanh_block, depth, width=WIDTH, rngs=nnx.Rngs(seed),
                                        **options)
    return StreamSequential([tanh_block(nnx.Rngs(seed + i)) for i in range(depth)],
                            width=WIDTH, **options)


def _apply(state, graphdef, h):
    return nnx.merge(graphdef, state)(h)


apply = fast_jit(_apply, static_argnums=1)


def run(module: nnx.Module, h: jax.Array) -> np.ndarray:
    graphdef, state = nnx.split(module)
    return np.asarray(apply(state, graphdef, h))


@pytest.mark.parametrize("n", [1, 2, 4, 7])
def test_sinkhorn_rows_sum_to_one_in_float32(n: int) -> None:
    # Logits spread over ~70 (12 standard deviations): exp(Z - max Z) spans 1e-30..1.
    logits = jnp.asarray(12 * np.random.default_rng(n).standard_normal((64, n, n)), jnp.float32)
    project = fast_jit(lambda z: [sinkhorn(z, t) for t in (1, 5, 20)])
    for iterations, m in zip((1, 5, 20), project(logits), strict=True):
        m = np.asarray(m)
        assert m.dtype == np.float32
        assert np.all(m >= 0)
        np.testing.assert_allclose(m.sum(axis=-1), 1.0, rtol=0, atol=1e-6,
                                   err_msg=f"n={n}, T={iterations}")


@pytest.mark.parametrize(("scan", "mode", "reduce", "pre_init"), [
    (False, "mhc", "mean", "cyclic"),
    (True, "mhc", "sum", "uniform"),
    (False, "hc", "gated", "cyclic"),
    (True, "mhc", "gated", "cyclic"),
])
def test_initialised_stack_is_the_residual_network(scan, mode, reduce, pre_init) -> None:
    """Every stream is h_l = h_{l-1} + F_l(h_{l-1}): mean and gated reduces return h_L, the
    sum reduce n h_L."""
    model = stack(scan, streams=4, mode=mode, reduce=reduce, pre_init=pre_init)
    h = jnp.asarray(np.random.default_rng(0).standard_normal((5, WIDTH)), jnp.float32)
    residual = h
    for layer in range(model.depth):
        if scan:
            graphdef, state = nnx.split(model.blocks)
            block = nnx.merge(graphdef, jax.tree.map(lambda a, i=layer: a[i], state))
        else:
            block = model.blocks[layer]
        residual = residual + block(residual)
    expected = np.asarray(residual) * (4 if reduce == "sum" else 1)
    np.testing.assert_allclose(run(model, h), expected, rtol=1e-5, atol=1e-5)


def hand_layer() -> StreamLayer:
    """n = 2, C = 3, static hc: Hpre = sigmoid(b_pre) = (3/4, 1/2), Hpost = 2 sigmoid(b_post)
    = (1, 1/2), Hres = b_res = [[1, 2], [3, 4]] (not symmetric), F = identity."""
    layer = StreamLayer(nnx.Linear(WIDTH, WIDTH, rngs=nnx.Rngs(0)), width=WIDTH, streams=2,
                        mode="hc", dynamic=False)
    layer.block.kernel[...] = jnp.eye(WIDTH)
    layer.block.bias[...] = jnp.zeros(WIDTH)
    layer.mixing.b_pre[...] = jnp.asarray([[np.log(3.0), 0.0]], jnp.float32)
    layer.mixing.b_post[...] = jnp.asarray([[0.0, np.log(1 / 3)]], jnp.float32)
    layer.mixing.b_res[...] = jnp.asarray([[[1.0, 2.0], [3.0, 4.0]]], jnp.float32)
    return layer


def test_coefficients_are_applied_as_written() -> None:
    x = jnp.asarray([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    # u = 3/4 X[0] + 1/2 X[1] = (2.75, 4, 5.25) = y;  X_next[i] = sum_j Hres[i, j] X[j] + Hpost[i] y
    # Hres X = [[9, 12, 15], [19, 26, 33]];  Hpost y = [[2.75, 4, 5.25], [1.375, 2, 2.625]]
    expected = np.array([[11.75, 16.0, 20.25], [20.375, 28.0, 35.625]])
    layer = hand_layer()
    np.testing.assert_allclose(run(layer, x), expected, rtol=1e-6)
    np.testing.assert_allclose(run(layer, jnp.stack([x, 2 * x])), [expected, 2 * expected],
                               rtol=1e-6)
    _, c = layer.forward(x)
    np.testing.assert_allclose(c.pre, [0.75, 0.5], rtol=1e-6)
    np.testing.assert_allclose(c.post, [1.0, 0.5], rtol=1e-6)
    np.testing.assert_array_equal(c.res, [[1.0, 2.0], [3.0, 4.0]])


def test_stream_reduce_weights() -> None:
    x = jnp.asarray(np.arange(12.0).reshape(1, 4, 3), jnp.float32)
    np.testing.assert_allclose(StreamReduce(streams=4)(x), x.sum(axis=1))
    np.testing.assert_allclose(StreamReduce(streams=4, reduce="mean")(x), x.mean(axis=1),
                               rtol=1e-6)
    gated = StreamReduce(streams=4, reduce="gated")
    gated.reduce_logits[...] = jnp.asarray([0.0, np.log(3.0), -np.log(3.0), 100.0], jnp.float32)
    np.testing.assert_allclose(gated(x), np.einsum("i,bic->bc", [0.5, 0.75, 0.25, 1.0], x),
                               rtol=1e-6)


def test_hand_loop_of_stream_layers_is_the_stack() -> None:
    model = stack(scan=False, depth=3, streams=2, reduce="gated")
    rng = np.random.default_rng(3)
    for name in PARAMETER_NAMES:
        variable = getattr(model.mixing, name)
        variable[...] = jnp.asarray(rng.standard_normal(variable.shape) / 2, jnp.float32)
    layers = []
    for index, block in enumerate(model.blocks):
        layer = StreamLayer(block, width=WIDTH, layer_index=index, config=model.config)
        # The cyclic init leans layer l on stream l mod n, as in the stack.
        np.testing.assert_allclose(layer.mixing.b_pre[...],
                                   pre_init_logits(model.config, 3)[index:index + 1], rtol=1e-6)
        for name in PARAMETER_NAMES:
            getattr(layer.mixing, name)[...] = getattr(model.mixing, name)[index:index + 1]
        layers.append(layer)
    readout = StreamReduce(2, "gated")
    readout.reduce_logits[...] = model.readout.reduce_logits[...]

    class HandLoop(nnx.Module):
        def __init__(self):
            self.layers, self.readout = nnx.List(layers), readout

        def __call__(self, h):
            x = expand_streams(h, 2)
            for layer in self.layers:
                x = layer(x)
            return self.readout(x)

    h = jnp.asarray(rng.standard_normal((2, 4, WIDTH)), jnp.float32)
    np.testing.assert_allclose(run(HandLoop(), h), run(model, h), rtol=1e-6, atol=1e-6)


def test_bf16_streams_keep_float32_coefficients() -> None:
    model = stack(scan=True, depth=2, streams=2)
    h = jnp.asarray(np.random.default_rng(4).standard_normal((2, WIDTH)), jnp.bfloat16)
    graphdef, state = nnx.split(model)
    out = fast_jit(lambda s, h: nnx.merge(graphdef, s).forward(
        h, collect_coefficients=True, collect_states=True))(state, h)
    assert out.output.dtype == jnp.bfloat16 and out.states.dtype == jnp.bfloat16
    assert out.hres.dtype == jnp.float32 and out.hpre.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out.hres).sum(axis=-1), 1.0, atol=1e-6)


def test_statistics_of_a_stack_and_no_state_kept() -> None:
    model = stack(scan=True, depth=2, streams=4)
    before = jax.tree.map(np.asarray, nnx.state(model))
    h = jnp.asarray(np.random.default_rng(5).standard_normal((3, WIDTH)), jnp.float32)
    stats = stream_statistics(model, h)
    after = jax.tree.map(np.asarray, nnx.state(model))
    jax.tree.map(np.testing.assert_array_equal, after, before)
    graphdef, state = nnx.split(model)
    direct = coefficient_summary(fast_jit(lambda s, h: nnx.merge(graphdef, s).forward(
        h, collect_coefficients=True))(state, h))
    assert set(stats) == set(direct)
    for key in stats:
        np.testing.assert_allclose(stats[key], direct[key], rtol=1e-6, err_msg=key)
    # Rows of every Hres sum to 1: the forward gain of each layer and composite is 1.
    np.testing.assert_allclose(stats["layer_forward_gain"], 1.0, atol=1e-6)
    np.testing.assert_allclose(stats["composite_forward_gain"], 1.0, atol=1e-5)
    assert stats["hres_mean"].shape == (2, 4, 4) and stats["hpre_mean"].shape == (2, 4)
