"""Statistics: composites are the residual paths' maps, gains are row / column sums, the
manifold keeps them 1-ish while an unconstrained hc stack can explode."""

import numpy as np
import pytest

from mhc_spec.streams import (
    StreamConfig,
    backward_gain,
    composite,
    composite_to_output,
    forward,
    forward_gain,
    init_parameters,
    layer_forward,
    parameter_shapes,
    row_entropy,
    summary,
    summary_from_coefficients,
    token_mean,
)


def test_gains_are_the_max_absolute_row_and_column_sums():
    m = np.array([[1.0, -2.0], [0.5, 0.25]])
    assert forward_gain(m) == 3.0  # rows: 3, 0.75
    assert backward_gain(m) == 2.25  # columns: 1.5, 2.25
    stacked = np.stack([m, -m.T])
    np.testing.assert_array_equal(forward_gain(stacked), [3.0, 2.25])
    np.testing.assert_array_equal(backward_gain(stacked), [2.25, 3.0])


def test_composites_by_hand():
    a = np.array([[0.5, 0.5], [0.2, 0.8]])
    b = np.array([[1.0, 0.0], [0.3, 0.7]])
    p = composite(np.stack([a, b]))
    np.testing.assert_allclose(p, [np.eye(2), a, b @ a], rtol=1e-15)
    q = composite_to_output(np.stack([a, b]))
    np.testing.assert_allclose(q, [b @ a, b, np.eye(2)], rtol=1e-15)


def test_composite_is_the_map_of_the_residual_paths():
    # With F = 0 the layers are X_l = Hres_l X_{l-1}: X_l = P_l X_0 for every token.
    config = StreamConfig(streams=3, sinkhorn_iterations=4)
    rng = np.random.default_rng(0)
    depth = 5
    params = {k: rng.standard_normal(s) for k, s in parameter_shapes(config, depth, 4).items()}
    x0 = rng.standard_normal((2, 3, 3, 4))
    states, hres = [x0], []
    for layer in range(depth):
        x, coeffs, _, _ = layer_forward(config, params, layer, states[-1], np.zeros_like)
        states.append(x)
        hres.append(coeffs.res)
    p = composite(np.stack(hres))
    for layer, state in enumerate(states):
        np.testing.assert_allclose(state, np.einsum("...ij,...jc->...ic", p[layer], x0),
                                   rtol=1e-13, atol=1e-15)


def static_stack(mode, b_res, depth, iterations=20):
    config = StreamConfig(streams=2, mode=mode, dynamic=False, sinkhorn_iterations=iterations)
    params = init_parameters(config, depth, 2)
    params["streams.b_res"][:] = b_res
    zeros = np.zeros((depth, 2, 2))
    return summary(forward(config, np.ones((3, 2)), params, "linear", zeros, zeros[:, 0]))


def test_unconstrained_hc_explodes_where_mhc_stays_at_one():
    # Rows and columns of [[1.1, 0.1], [0.1, 1.1]] sum to 1.2: P_l has gains 1.2^l.
    depth = 30
    a = np.array([[1.1, 0.1], [0.1, 1.1]])
    hc = static_stack("hc", a, depth)
    powers = 1.2 ** np.arange(depth + 1)
    np.testing.assert_allclose(hc["composite_forward_gain"], powers, rtol=1e-12)
    np.testing.assert_allclose(hc["composite_backward_gain"], powers, rtol=1e-12)
    assert hc["composite_forward_gain"][-1] > 237
    mhc = static_stack("mhc", a, depth)
    np.testing.assert_allclose(mhc["composite_forward_gain"], 1.0, rtol=1e-13)
    np.testing.assert_allclose(mhc["composite_backward_gain"], 1.0, rtol=1e-13)
    np.testing.assert_allclose(mhc["layer_forward_gain"], 1.0, rtol=1e-15)


def test_forward_and_backward_gains_differ_for_a_non_symmetric_hc_map():
    # A = [[1, 0.5], [0, 0.5]]: A^l = [[1, 1 - 2^-l], [0, 2^-l]], rows 2 - 2^-l and 2^-l,
    # columns 1 and 1.
    hc = static_stack("hc", np.array([[1.0, 0.5], [0.0, 0.5]]), 12)
    layers = np.arange(13)
    np.testing.assert_allclose(hc["composite_forward_gain"], 2 - 0.5**layers, rtol=1e-15)
    np.testing.assert_allclose(hc["composite_backward_gain"], 1.0, rtol=1e-15)
    np.testing.assert_allclose(hc["to_output_forward_gain"], 2 - 0.5 ** (12 - layers), rtol=1e-15)


def test_mhc_gains_are_bounded_and_shrink_towards_one_as_t_grows():
    # Rows of SK(Z) sum to 1, so every composite is row stochastic: forward gain 1 and
    # column sums averaging 1, hence a backward gain in [1, n] for any T, nearer 1 as T grows.
    # The Hres logits spread widely (b_res ~ 3 N(0, 1)), so T = 20 is not converged.
    worst = []
    for iterations in (1, 5, 20, 100):
        config = StreamConfig(streams=4, sinkhorn_iterations=iterations)
        rng = np.random.default_rng(7)
        depth = 24
        params = {k: rng.standard_normal(s)
                  for k, s in parameter_shapes(config, depth, 3).items()}
        params["streams.b_res"] *= 3.0
        weight = rng.standard_normal((depth, 3, 3)) / 3
        trace = forward(config, rng.standard_normal((4, 3)), params, "tanh_linear", weight,
                        np.zeros((depth, 3)))
        stats = summary(trace)
        np.testing.assert_allclose(stats["composite_forward_gain_max"], 1.0, rtol=1e-13)
        backward = stats["composite_backward_gain_max"]
        assert np.all(backward >= 1 - 1e-13) and np.all(backward <= 4 + 1e-13)
        worst.append(backward.max())
    assert worst[0] > 2 and worst[1] > 1.2
    assert worst[0] > worst[1] > worst[2] > worst[3]
    assert worst[2] < 1.05 and worst[3] < 1.01


def test_summary_shapes_and_token_means():
    config = StreamConfig(streams=3, reduce="gated")
    rng = np.random.default_rng(3)
    params = {k: rng.standard_normal(s) for k, s in parameter_shapes(config, 4, 2).items()}
    trace = forward(config, rng.standard_normal((2, 5, 2)), params, "linear",
                    rng.standard_normal((4, 2, 2)), np.zeros((4, 2)))
    stats = summary(trace)
    shapes = {k: v.shape for k, v in stats.items()}
    assert shapes["hres_mean"] == (4, 3, 3)
    assert shapes["hpre_mean"] == shapes["hpost_mean"] == (4, 3)
    assert shapes["layer_forward_gain"] == shapes["layer_backward_gain"] == (4,)
    for key in ("composite_forward_gain", "composite_backward_gain", "to_output_forward_gain",
                "to_output_backward_gain", "composite_forward_gain_max",
                "composite_backward_gain_max"):
        assert shapes[key] == (5,), key
    np.testing.assert_allclose(stats["hres_mean"], trace.hres.mean(axis=(1, 2)), rtol=1e-15)
    np.testing.assert_allclose(
        stats["composite_backward_gain"][2],
        np.mean([backward_gain(trace.hres[1, b, t] @ trace.hres[0, b, t])
                 for b in range(2) for t in range(5)]), rtol=1e-14)
    np.testing.assert_allclose(token_mean(np.ones((4, 2, 5, 3)), 1), np.ones((4, 3)))


def test_summary_from_coefficients_by_hand():
    # Two layers, two tokens, n = 2. Token 0: A then B; token 1: I then C.
    a = np.array([[0.5, 0.5], [0.2, 0.8]])
    b = np.array([[1.0, 0.0], [0.3, 0.7]])
    c = np.array([[2.0, -1.0], [0.0, 1.0]])
    hres = np.array([[a, np.eye(2)], [b, c]])
    hpre = np.array([[[0.1, 0.9], [0.3, 0.5]], [[0.2, 0.2], [0.4, 0.6]]])
    hpost = 2.0 - hpre
    stats = summary_from_coefficients(hpre, hpost, hres)
    np.testing.assert_allclose(stats["hres_mean"],
                               [[[0.75, 0.25], [0.1, 0.9]], [[1.5, -0.5], [0.15, 0.85]]],
                               rtol=1e-15)
    np.testing.assert_allclose(stats["hpre_mean"], [[0.2, 0.7], [0.3, 0.4]], rtol=1e-15)
    np.testing.assert_allclose(stats["hpost_mean"], [[1.8, 1.3], [1.7, 1.6]], rtol=1e-15)
    # Rows of A, I, B sum to 1; rows of C to 3 and 1. Columns: A 0.7, 1.3; B 1.3, 0.7; C 2, 2.
    np.testing.assert_allclose(stats["layer_forward_gain"], [1.0, 2.0], rtol=1e-15)
    np.testing.assert_allclose(stats["layer_backward_gain"], [1.15, 1.65], rtol=1e-15)
    # P_2 = B A = [[0.5, 0.5], [0.29, 0.71]] (columns 0.79, 1.21) and C I = C.
    np.testing.assert_allclose(stats["composite_forward_gain"], [1.0, 1.0, 2.0], rtol=1e-15)
    np.testing.assert_allclose(stats["composite_backward_gain"], [1.0, 1.15, 1.605],
                               rtol=1e-15)
    np.testing.assert_allclose(stats["composite_forward_gain_max"], [1.0, 1.0, 3.0],
                               rtol=1e-15)
    np.testing.assert_allclose(stats["composite_backward_gain_max"], [1.0, 1.3, 2.0],
                               rtol=1e-15)
    # Q_0 = P_2, Q_1 = Hres_2, Q_2 = I.
    np.testing.assert_allclose(stats["to_output_forward_gain"], [2.0, 2.0, 1.0], rtol=1e-15)
    np.testing.assert_allclose(stats["to_output_backward_gain"], [1.605, 1.65, 1.0],
                               rtol=1e-15)
    single = summary_from_coefficients(hpre[:, 1:].astype(np.float32),
                                       hpost[:, 1:].astype(np.float32),
                                       hres[:, 1:].astype(np.float32))
    np.testing.assert_allclose(single["composite_forward_gain"], [1.0, 1.0, 3.0], rtol=1e-7)
    assert single["composite_forward_gain"].dtype == np.float64


def test_summary_from_coefficients_rejects_mismatched_shapes():
    hres = np.zeros((3, 5, 2, 2))
    with pytest.raises(ValueError, match=r"hres must be a non-empty \(L, \.\.\., n, n\)"):
        summary_from_coefficients(np.zeros((3, 5, 2)), np.zeros((3, 5, 2)),
                                  np.zeros((3, 5, 2, 3)))
    with pytest.raises(ValueError, match=r"hpre \(3, 4, 2\) and hpost \(3, 5, 2\) must both"):
        summary_from_coefficients(np.zeros((3, 4, 2)), np.zeros((3, 5, 2)), hres)


def test_row_entropy_by_hand():
    # Rows: a permutation row (0), uniform over 2 (log 2), uniform over 4 (log 4), and signed
    # [0.5, -0.5, 0, 0] whose shares are [1/2, 1/2, 0, 0] (log 2); a zero row has entropy 0.
    m = np.array([[0.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.25] * 4, [0.5, -0.5, 0, 0]])
    np.testing.assert_allclose(row_entropy(m), [0.0, np.log(2), np.log(4), np.log(2)],
                               atol=1e-15)
    np.testing.assert_array_equal(row_entropy(np.zeros((3, 2, 2))), np.zeros((3, 2)))
    p = np.array([[0.7, 0.2, 0.1]])
    np.testing.assert_allclose(row_entropy(2 * p), -(p * np.log(p)).sum(axis=-1), rtol=1e-15)
