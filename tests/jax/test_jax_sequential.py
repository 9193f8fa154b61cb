"""MHCSequential and MHCSkip: scan == loop, construction errors, history carrying, purity,
mixed precision and non-parameter block state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax_fast import fast_jit

from mhc_jax import History, MHCSequential, MHCSkip, export_portable, load_portable
from mhc_spec import MHCConfig
from mhc_spec import project as spec_project

WIDTH = 5


def tanh_block(rngs: nnx.Rngs) -> nnx.Module:
    return nnx.Sequential(nnx.Linear(WIDTH, WIDTH, rngs=rngs), jnp.tanh)


def twin_builds(config: MHCConfig, depth: int, seed: int = 0):
    """A scan build and a loop build holding the same parameters (through the portable
    dict), with random logits and gates so that no layer is trivial."""
    scan = MHCSequential.scanned(tanh_block, depth, rngs=nnx.Rngs(seed), config=config)
    rng = np.random.default_rng(seed)
    if scan.mixing.theta is not None:
        scan.mixing.theta[...] = jnp.asarray(rng.standard_normal((depth, config.max_history)),
                                             jnp.float32)
    if scan.mixing.gamma is not None:
        scan.mixing.gamma[...] = jnp.asarray(rng.standard_normal(depth), jnp.float32)
    loop = MHCSequential([tanh_block(nnx.Rngs(100 + i)) for i in range(depth)], config=config)
    load_portable(loop, export_portable(scan))
    return scan, loop


@fast_jit
def _loss_and_grads(state, graphdef, x, g):
    def loss(state, x):
        model = nnx.merge(graphdef, state)
        out = model.forward(x, collect_states=True)
        return jnp.sum(out.output * g), out.states

    (_, states), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(state, x)
    return states, grads


def outputs_and_gradients(model: MHCSequential, x: jax.Array, g: jax.Array):
    graphdef, state = nnx.split(model)
    states, (d_state, d_x) = _loss_and_grads(state, graphdef, x, g)
    return np.asarray(states), np.asarray(d_x), export_portable(nnx.merge(graphdef, d_state))


SCAN_CASES = [
    # (config, depth) -> layers per scan step G and layers before the scan:
    # 7 -> G 7 (one step); 11 -> G 4 after 3 lead layers (no divisor of 11 in [4, 8]);
    # 9 with H 2 -> G 3; H 9 -> G 8 (capped) after 2 lead layers; residual and H 1 -> G 1;
    # depth 2 < H 6 -> no scan step at all.
    (MHCConfig(max_history=4, gating=True), 7),
    (MHCConfig(max_history=4, gating=True), 11),
    (MHCConfig(max_history=2, constraint="softmax"), 9),
    (MHCConfig(max_history=3, mode="hc"), 6),
    (MHCConfig(max_history=9, constraint="softmax", temperature=0.7), 10),
    (MHCConfig(max_history=4, mode="residual", gating=True), 5),
    (MHCConfig(max_history=1, constraint="identity"), 3),
    (MHCConfig(max_history=6, constraint="identity", epsilon=0.3), 2),
]


@pytest.mark.parametrize(("config", "depth"), SCAN_CASES,
                         ids=[f"{c.kind}-H{c.max_history}-L{d}" for c, d in SCAN_CASES])
def test_scan_build_equals_loop_build(config: MHCConfig, depth: int) -> None:
    scan, loop = twin_builds(config, depth)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((3, WIDTH)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((3, WIDTH)), jnp.float32)
    states_s, dx_s, grads_s = outputs_and_gradients(scan, x, g)
    states_l, dx_l, grads_l = outputs_and_gradients(loop, x, g)
    np.testing.assert_allclose(states_s, states_l, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx_s, dx_l, rtol=1e-5, atol=1e-6)
    assert set(grads_s) == set(grads_l)
    for key in grads_s:
        np.testing.assert_allclose(grads_s[key], grads_l[key], rtol=1e-5, atol=1e-6,
                                   err_msg=key)


def test_scanned_layers_have_independent_initialisations() -> None:
    model = MHCSequential.scanned(tanh_block, 4, rngs=nnx.Rngs(0))
    kernels = np.asarray(model.blocks.layers[0].kernel[...])
    assert kernels.shape == (4, WIDTH, WIDTH)
    assert all(not np.allclose(kernels[0], kernels[i]) for i in range(1, 4))


def test_mixing_parameters_exist_only_where_the_spec_has_them() -> None:
    def params(**options):
        model = MHCSequential([nnx.Linear(2, 2, rngs=nnx.Rngs(0))], **options)
        return {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}

    assert params(mode="residual") == {"blocks.0.kernel", "blocks.0.bias"}
    assert params(mode="residual", gating=True) == {"blocks.0.kernel", "blocks.0.bias",
                                                    "mixing.gamma"}
    assert params(mode="hc") == {"blocks.0.kernel", "blocks.0.bias", "mixing.theta"}


BAD_OPTIONS = [
    ({"max_history": 0}, ValueError, "max_history=0"),
    ({"max_history": 2.5}, TypeError, "max_history=2.5"),
    ({"mode": "bogus"}, ValueError, "mode='bogus'"),
    ({"constraint": "sinkhorn"}, ValueError, "constraint='sinkhorn'"),
    ({"temperature": 0.0}, ValueError, "temperature=0.0"),
    ({"temperature": float("nan")}, ValueError, "temperature=nan"),
    ({"epsilon": 1.0}, ValueError, "epsilon=1.0"),
    ({"init": "x"}, ValueError, "init='x'"),
    ({"gating": 1}, TypeError, "gating=1"),
    ({"gate_init": float("inf")}, ValueError, "gate_init=inf"),
    ({"colour": "red"}, TypeError, "colour"),
]


@pytest.mark.parametrize(("options", "error", "text"), BAD_OPTIONS,
                         ids=[next(iter(o)) for o, _, _ in BAD_OPTIONS])
def test_bad_options_raise_the_spec_errors_at_construction(options, error, text) -> None:
    with pytest.raises(error, match=text.replace("(", r"\(").replace(".", r"\.")):
        MHCSequential([nnx.Linear(2, 2, rngs=nnx.Rngs(0))], **options)
    with pytest.raises(error, match=text.replace(".", r"\.")):
        MHCSequential.scanned(lambda r: nnx.Linear(2, 2, rngs=r), 3, rngs=nnx.Rngs(0),
                              **options)
    with pytest.raises(error, match=text.replace(".", r"\.")):
        MHCSkip(**options)


def test_bad_stacks_raise_at_construction() -> None:
    linear = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="depth=0"):
        MHCSequential([])
    with pytest.raises(ValueError, match="depth=0"):
        MHCSequential.scanned(lambda r: nnx.Linear(2, 2, rngs=r), 0, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"blocks\[1\]"):
        MHCSequential([linear, jnp.tanh])
    with pytest.raises(TypeError, match="either config or keyword options"):
        MHCSequential([linear], config=MHCConfig(), max_history=3)
    with pytest.raises(ValueError, match="leading axis of depth=3"):
        MHCSequential(stacked=linear, depth=3)


def test_a_block_that_changes_the_shape_is_named() -> None:
    model = MHCSequential([nnx.Linear(3, 3, rngs=nnx.Rngs(0)), nnx.Linear(3, 4, rngs=nnx.Rngs(1))])
    with pytest.raises(ValueError, match=r"block 1 maps a state of shape \(2, 3\) to shape"):
        jax.eval_shape(lambda x: model(x), jnp.ones((2, 3)))


def _reference_stream(config: MHCConfig, weight, bias, theta, inputs):
    """Test-local NumPy model of a carried history: one window runs on across the calls;
    each call pushes its input, then every layer mixes the K = min(H, available) newest."""
    h = config.max_history
    window, outputs = [], []
    for x in inputs:
        window = [*window, x][-h:]
        for layer in range(weight.shape[0]):
            k = len(window)
            a = spec_project(config, theta[layer, h - k:], k)
            s = np.tanh(window[-1] @ weight[layer].T + bias[layer])
            s = s + sum(a_j * w for a_j, w in zip(a, window, strict=True))
            window = [*window, s][-h:]
        outputs.append(window[-1])
    return outputs, window


@pytest.mark.parametrize("scan", [False, True], ids=["loop", "scan"])
def test_carried_history_continues_the_window_across_calls(scan: bool) -> None:
    config = MHCConfig(max_history=4, constraint="softmax")
    built_scan, built_loop = twin_builds(config, depth=3, seed=2)
    model = built_scan if scan else built_loop
    params = export_portable(model)
    weight = np.stack([params[f"blocks.{i}.0.weight"] for i in range(3)]).astype(np.float64)
    bias = np.stack([params[f"blocks.{i}.0.bias"] for i in range(3)]).astype(np.float64)
    theta = params["mixing.theta"].astype(np.float64)
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((2, WIDTH)) for _ in range(3)]
    expected, window = _reference_stream(config, weight, bias, theta, inputs)

    step = fast_jit(lambda state, x, history: nnx.merge(graphdef, state)(x, history))
    graphdef, state = nnx.split(model)
    history = model.empty_history(jnp.zeros((2, WIDTH), jnp.float32))
    for x, want in zip(inputs, expected, strict=True):
        y, history = step(state, jnp.asarray(x, jnp.float32), history)
        np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5)
    assert int(history.count) == 4
    np.testing.assert_allclose(np.asarray(history.states), np.stack(window), rtol=1e-5,
                               atol=1e-5)
    # Without a history every call starts afresh: the third input alone gives another value.
    fresh = fast_jit(lambda state, x: nnx.merge(graphdef, state)(x))(state, inputs[2])
    assert not np.allclose(np.asarray(fresh), expected[2], atol=1e-3)


def test_history_errors_name_the_problem() -> None:
    model = MHCSequential([nnx.Linear(3, 3, rngs=nnx.Rngs(0))], max_history=2)
    with pytest.raises(ValueError, match=r"history holds states of shape \(2, 3\).*\(5, 3\)"):
        model(jnp.ones((5, 3)), History.empty(2, (2, 3), jnp.float32))
    with pytest.raises(ValueError, match="max_history=2"):
        model(jnp.ones((2, 3)), History.empty(3, (2, 3), jnp.float32))


def test_forward_is_pure_and_keeps_no_state() -> None:
    model = MHCSequential([nnx.Linear(3, 3, rngs=nnx.Rngs(i)) for i in range(3)])
    before = jax.tree.map(np.asarray, nnx.state(model))
    a = model(jnp.ones((2, 3)))
    model(jnp.full((2, 3), 5.0))
    b = model(jnp.ones((2, 3)))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    after = jax.tree.map(np.asarray, nnx.state(model))
    assert jax.tree.all(jax.tree.map(np.array_equal, before, after))


def test_mhc_skip_loop_equals_mhc_sequential() -> None:
    config = MHCConfig(max_history=3, gating=True)
    depth = 5
    blocks = [tanh_block(nnx.Rngs(i)) for i in range(depth)]
    skips = [MHCSkip(config=config) for _ in range(depth)]
    rng = np.random.default_rng(4)
    for skip in skips:
        skip.mixing.theta[...] = jnp.asarray(rng.standard_normal((1, 3)), jnp.float32)
        skip.mixing.gamma[...] = jnp.asarray(rng.standard_normal(1), jnp.float32)
    model = MHCSequential(blocks, config=config)
    model.mixing.theta[...] = jnp.concatenate([s.mixing.theta[...] for s in skips])
    model.mixing.gamma[...] = jnp.concatenate([s.mixing.gamma[...] for s in skips])
    x = jnp.asarray(rng.standard_normal((2, WIDTH)), jnp.float32)

    @nnx.jit
    def hand_loop(blocks, skips, x):
        history = skips[0].start(x)
        for block, skip in zip(blocks, skips, strict=True):
            s, history = skip(block(history.newest), history)
        return s

    expected = nnx.jit(lambda m, x: m(x))(model, x)
    np.testing.assert_allclose(np.asarray(hand_loop(nnx.List(blocks), nnx.List(skips), x)),
                               np.asarray(expected), rtol=1e-6, atol=1e-6)


def test_bf16_states_keep_float32_coefficients() -> None:
    config = MHCConfig(max_history=4, gating=True)
    model = MHCSequential.scanned(
        lambda r: nnx.Linear(8, 8, dtype=jnp.bfloat16, rngs=r), 6, rngs=nnx.Rngs(0),
        config=config)
    graphdef, state = nnx.split(model)
    x = jnp.asarray(np.random.default_rng(5).standard_normal((4, 8)), jnp.float32)

    @fast_jit
    def run(state, x):
        model = nnx.merge(graphdef, state)
        out = model.forward(x, collect_states=True)
        grads = jax.grad(lambda s: jnp.sum(nnx.merge(graphdef, s)(x).astype(jnp.float32)))(
            state)
        return out.states, model.mixing.coefficients(), grads

    states16, coefficients, grads = run(state, x.astype(jnp.bfloat16))
    states32, _, _ = run(state, x)
    assert states16.dtype == jnp.bfloat16
    assert coefficients.dtype == jnp.float32
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(grads))
    np.testing.assert_allclose(np.asarray(states16, np.float32), np.asarray(states32),
                               rtol=0.05, atol=0.05)


def test_scan_build_writes_back_batch_statistics_like_the_loop_build() -> None:
    def block(rngs):
        return nnx.Sequential(nnx.Linear(WIDTH, WIDTH, rngs=rngs), nnx.BatchNorm(WIDTH, rngs=rngs))

    scan = MHCSequential.scanned(block, 5, rngs=nnx.Rngs(0), max_history=3)
    loop = MHCSequential([block(nnx.Rngs(i)) for i in range(5)], max_history=3)
    load_portable(loop, export_portable(scan))
    x = jnp.asarray(np.random.default_rng(6).standard_normal((8, WIDTH)), jnp.float32)
    forward = nnx.jit(lambda m, x: m(x))
    np.testing.assert_allclose(np.asarray(forward(scan, x)), np.asarray(forward(loop, x)),
                               rtol=1e-5, atol=1e-5)
    after_scan, after_loop = export_portable(scan), export_portable(loop)
    assert not np.allclose(after_scan["blocks.4.1.running_mean"], 0.0)
    for key in after_scan:
        np.testing.assert_allclose(after_scan[key], after_loop[key], rtol=1e-5, atol=1e-6,
                                   err_msg=key)


@pytest.mark.parametrize("constraint", ["simplex", "softmax", "identity"])
def test_weights_that_cannot_change_get_exactly_zero_logit_gradient(constraint) -> None:
    """Layer 1 (K = 1) and one-hot sparsemax rows have weights that do not depend on their
    logits: the jitted gradient is exactly 0 there, even with gating (where XLA's fused
    multiply-adds would otherwise leave rounding noise that Adam amplifies)."""
    config = MHCConfig(max_history=3, constraint=constraint, gating=True, init="newest")
    model = MHCSequential([nnx.Linear(4, 4, rngs=nnx.Rngs(i)) for i in range(4)], config=config)
    graphdef, state = nnx.split(model)
    x = jnp.asarray(np.random.default_rng(7).standard_normal((3, 4)), jnp.float32)
    grads = fast_jit(jax.grad(lambda s: jnp.sum(nnx.merge(graphdef, s)(x) ** 2)))(state)
    d_theta = np.asarray(grads["mixing"]["theta"][...])
    assert np.all(d_theta[0] == 0.0)
    if constraint != "softmax":  # init "newest" makes every sparsemax row one-hot
        assert np.all(d_theta == 0.0)
    assert np.any(np.asarray(grads["mixing"]["gamma"][...]) != 0.0)
