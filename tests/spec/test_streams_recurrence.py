"""The stream recurrence follows the issue's formulas, computed here by hand: a non-symmetric,
non-identity Hres mixes the streams as X_next[i] = sum_j Hres[i, j] X[j] + Hpost[i] y, and the
initialised network is the plain residual network (n times it with the sum reduce)."""

import itertools

import numpy as np
import pytest

from mhc_spec.blocks import block_forward
from mhc_spec.streams import (
    PRE_INITS,
    REDUCES,
    StreamConfig,
    backward,
    coefficients,
    forward,
    init_parameters,
    layer_forward,
    parameter_shapes,
)

LOG3 = np.log(3.0)
# T = 1 turns exp(b_res) = [[1, 2], [3, 4]] into [[3/7, 4/7], [9/17, 8/17]] (see the
# Sinkhorn tests): rows sum to 1, columns do not, and it is far from symmetric.
HRES = np.array([[3 / 7, 4 / 7], [9 / 17, 8 / 17]])
STATIC_TWO = {
    "streams.b_pre": np.array([[LOG3, 0.0], [0.0, -LOG3]]),  # Hpre: [3/4, 1/2], [1/2, 1/4]
    "streams.b_post": np.array([[0.0, LOG3], [-LOG3, 0.0]]),  # Hpost: [1, 3/2], [1/2, 1]
    "streams.b_res": np.log(np.array([[[1.0, 2.0], [3.0, 4.0]]] * 2)),
}


def test_hres_mixes_distinct_streams_as_the_formula_says():
    config = StreamConfig(streams=2, dynamic=False, sinkhorn_iterations=1)
    x = np.array([[1.0, 2.0, 0.5], [-1.0, 0.25, 3.0]])  # two distinct streams, C = 3

    def branch(u):
        return np.tanh(u) + 0.5

    x_next, coeffs, u, y = layer_forward(config, STATIC_TWO, 0, x, branch)
    np.testing.assert_allclose(coeffs.pre, [0.75, 0.5], rtol=1e-15)
    np.testing.assert_allclose(coeffs.post, [1.0, 1.5], rtol=1e-15)
    np.testing.assert_allclose(coeffs.res, HRES, rtol=1e-15)
    u_hand = [0.75 * x[0, c] + 0.5 * x[1, c] for c in range(3)]
    y_hand = [np.tanh(v) + 0.5 for v in u_hand]
    expected = np.array([
        [3 / 7 * x[0, c] + 4 / 7 * x[1, c] + 1.0 * y_hand[c] for c in range(3)],
        [9 / 17 * x[0, c] + 8 / 17 * x[1, c] + 1.5 * y_hand[c] for c in range(3)],
    ])
    np.testing.assert_allclose(u, u_hand, rtol=1e-15)
    np.testing.assert_allclose(y, y_hand, rtol=1e-15)
    np.testing.assert_allclose(x_next, expected, rtol=1e-14)
    # The transposed matrix (the other convention) gives a visibly different state.
    transposed = HRES.T @ x + np.outer([1.0, 1.5], y_hand)
    assert np.abs(transposed - expected).max() > 0.1


def test_two_layer_stack_by_hand():
    # Layer 1 sees equal streams (Hres then acts through its row sums only) and writes
    # Hpost = [1, 3/2] times y; layer 2's Hres mixes the now distinct streams.
    config = StreamConfig(streams=2, dynamic=False, sinkhorn_iterations=1, reduce="mean")
    rng = np.random.default_rng(0)
    h = rng.standard_normal(3)
    weight, bias = rng.standard_normal((2, 3, 3)), rng.standard_normal((2, 3))
    trace = forward(config, h, STATIC_TWO, "linear", weight, bias)

    def f(layer, u):
        return [sum(weight[layer, o, i] * u[i] for i in range(3)) + bias[layer, o]
                for o in range(3)]

    y1 = f(0, [0.75 * h[c] + 0.5 * h[c] for c in range(3)])
    x1 = [[(3 / 7 + 4 / 7) * h[c] + 1.0 * y1[c] for c in range(3)],
          [(9 / 17 + 8 / 17) * h[c] + 1.5 * y1[c] for c in range(3)]]
    y2 = f(1, [0.5 * x1[0][c] + 0.25 * x1[1][c] for c in range(3)])
    x2 = [[3 / 7 * x1[0][c] + 4 / 7 * x1[1][c] + 0.5 * y2[c] for c in range(3)],
          [9 / 17 * x1[0][c] + 8 / 17 * x1[1][c] + 1.0 * y2[c] for c in range(3)]]
    np.testing.assert_allclose(trace.states[1], x1, rtol=1e-14)
    np.testing.assert_allclose(trace.states[2], x2, rtol=1e-14)
    np.testing.assert_allclose(trace.output, [(x2[0][c] + x2[1][c]) / 2 for c in range(3)],
                               rtol=1e-14)


def test_user_projection_and_free_hc_matrices_are_applied():
    fixed = np.array([[0.9, 0.1], [0.3, 0.7]])

    def projection(z):
        return np.broadcast_to(fixed, z.shape).copy()

    x = np.array([[1.0, -2.0], [0.5, 4.0]])

    def zero_branch(u):
        return np.zeros_like(u)

    custom = StreamConfig(streams=2, dynamic=False, constraint=projection)
    out, *_ = layer_forward(custom, STATIC_TWO, 0, x, zero_branch)
    np.testing.assert_allclose(out, [[0.9 * 1 + 0.1 * 0.5, 0.9 * -2 + 0.1 * 4],
                                     [0.3 * 1 + 0.7 * 0.5, 0.3 * -2 + 0.7 * 4]], rtol=1e-15)
    free = {**STATIC_TWO, "streams.b_res": np.array([[[1.2, -0.3], [0.5, 0.9]]] * 2)}
    out, coeffs, *_ = layer_forward(StreamConfig(streams=2, dynamic=False, mode="hc"), free,
                                    0, x, zero_branch)
    np.testing.assert_array_equal(coeffs.res, [[1.2, -0.3], [0.5, 0.9]])
    np.testing.assert_allclose(out, [[1.2 - 0.15, -2.4 - 1.2], [0.5 + 0.45, -1.0 + 3.6]],
                               rtol=1e-15)


def test_dynamic_coefficients_by_hand():
    # n = 2, C = 2; flatten is stream-major: x = [X00, X01, X10, X11].
    config = StreamConfig(streams=2, sinkhorn_iterations=3, rms_eps=0.01)
    rng = np.random.default_rng(1)
    params = {k: rng.standard_normal(s) for k, s in parameter_shapes(config, 1, 2).items()}
    x = np.array([[0.3, -1.1], [2.0, 0.4]])
    flat = [0.3, -1.1, 2.0, 0.4]
    r = np.sqrt(sum(v * v for v in flat) / 4 + 0.01)
    xn = [v / r for v in flat]
    p = {k: v[0] for k, v in params.items()}

    def logits(name, shape):
        out = np.zeros(shape)
        for index in np.ndindex(shape):
            out[index] = p[f"streams.a_{name}"] * sum(
                xn[k] * p[f"streams.phi_{name}"][(k, *index)] for k in range(4)
            ) + p[f"streams.b_{name}"][index]
        return out

    c = coefficients(config, params, 0, x)
    np.testing.assert_allclose(c.normalized, xn, rtol=1e-15)
    np.testing.assert_allclose(c.pre, 1 / (1 + np.exp(-logits("pre", (2,)))), rtol=1e-14)
    np.testing.assert_allclose(c.post, 2 / (1 + np.exp(-logits("post", (2,)))), rtol=1e-14)
    m = np.exp(logits("res", (2, 2)))
    for _ in range(3):
        m = m / m.sum(axis=0)
        m = m / m.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(c.res, m, rtol=1e-14)


def test_tokens_are_independent_and_both_input_ranks_work():
    config = StreamConfig(streams=4, sinkhorn_iterations=5, reduce="gated")
    rng = np.random.default_rng(2)
    params = {k: rng.standard_normal(s) for k, s in parameter_shapes(config, 3, 3).items()}
    weight, bias = rng.standard_normal((3, 3, 3)), rng.standard_normal((3, 3))
    h = rng.standard_normal((2, 5, 3))
    batched = forward(config, h, params, "tanh_linear", weight, bias)
    assert batched.states[-1].shape == (2, 5, 4, 3) and batched.hres.shape == (3, 2, 5, 4, 4)
    assert batched.output.shape == (2, 5, 3)
    flat = forward(config, h.reshape(10, 3), params, "tanh_linear", weight, bias)
    np.testing.assert_array_equal(flat.output, batched.output.reshape(10, 3))
    for b, t in itertools.product(range(2), range(5)):
        single = forward(config, h[b, t], params, "tanh_linear", weight, bias)
        np.testing.assert_allclose(single.output, batched.output[b, t], rtol=1e-14)
        np.testing.assert_allclose(single.hres, batched.hres[:, b, t], rtol=1e-14)


def residual_network(h, kind, weight, bias):
    s = h
    for layer in range(len(weight)):
        s = s + block_forward(kind, weight[layer], bias[layer], s)
    return s


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("mode", ["mhc", "hc"])
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("pre_init", PRE_INITS)
def test_initialised_network_is_the_residual_network(n, mode, dynamic, reduce, pre_init):
    config = StreamConfig(streams=n, mode=mode, dynamic=dynamic, reduce=reduce,
                          pre_init=pre_init)
    rng = np.random.default_rng(n)
    depth, width = 6, 5
    h = rng.standard_normal((3, 4, width))
    weight = rng.standard_normal((depth, width, width)) / np.sqrt(width)
    bias = rng.standard_normal((depth, width))
    for kind in ("linear", "tanh_linear"):
        trace = forward(config, h, init_parameters(config, depth, width), kind, weight, bias)
        s = residual_network(h, kind, weight, bias)
        expected = n * s if reduce == "sum" else s
        # Equal up to the rounding of sum_i X[i] / n and of Hres's row sums.
        np.testing.assert_allclose(trace.output, expected, rtol=0,
                                   atol=1e-14 * np.abs(expected).max())
        for state in trace.states[1:]:
            np.testing.assert_allclose(state, state[..., :1, :].repeat(n, axis=-2), rtol=0,
                                       atol=1e-14 * np.abs(state).max())
        if n == 1:
            np.testing.assert_array_equal(trace.output, s)


@pytest.mark.parametrize("pre_init", PRE_INITS)
def test_only_the_cyclic_init_lets_the_streams_diverge(pre_init):
    """With uniform Hpre every stream gets the same gradient, so gradient descent keeps the
    streams equal and b_res, phi_res never move (SK's reverse mode removes a cotangent
    that is constant along rows). The cyclic init gives the streams distinct gradients
    (b_post first), after which Hres learns."""
    config = StreamConfig(streams=4, pre_init=pre_init)
    rng = np.random.default_rng(7)
    depth, width = 3, 5
    h = rng.standard_normal((6, width))
    weight = rng.standard_normal((depth, width, width)) / np.sqrt(width)
    bias = rng.standard_normal((depth, width))
    target = rng.standard_normal((6, width))
    params = init_parameters(config, depth, width)
    for _ in range(3):
        trace = forward(config, h, params, "tanh_linear", weight, bias)
        grads = backward(config, trace, params, "tanh_linear", weight, bias,
                         trace.output - target)
        params = {key: value - 0.1 * grads.params[key] for key, value in params.items()}
    last = trace.states[-1]
    spread = np.abs(last - last[..., :1, :]).max() / np.abs(last).max()
    res_grad = max(np.abs(grads.params[key]).max() for key in ("streams.b_res",
                                                                 "streams.phi_res"))
    res_grad /= np.abs(grads.params["streams.b_pre"]).max()
    if pre_init == "uniform":
        assert spread < 1e-12 and res_grad < 1e-12
    else:
        assert spread > 1e-3 and res_grad > 1e-3


def test_parameters_are_checked():
    config = StreamConfig(streams=2)
    params = init_parameters(config, 2, 3)
    weight, bias = np.zeros((2, 3, 3)), np.zeros((2, 3))
    bad = {**params, "streams.phi_res": np.zeros((2, 6, 4))}
    with pytest.raises(ValueError, match=r"'streams.phi_res' has shape \(2, 6, 4\), expected"):
        forward(config, np.zeros((1, 3)), bad, "linear", weight, bias)
    missing = {k: v for k, v in params.items() if k != "streams.a_res"}
    with pytest.raises(KeyError, match=r"missing \['streams\.a_res'\]"):
        forward(config, np.zeros((1, 3)), missing, "linear", weight, bias)
    with pytest.raises(ValueError, match="must have 2 layers"):
        forward(config, np.zeros((1, 3)), params, "linear", weight[:1], bias[:1])
    with pytest.raises(ValueError, match="kind"):
        forward(config, np.zeros((1, 3)), params, "relu", weight, bias)
