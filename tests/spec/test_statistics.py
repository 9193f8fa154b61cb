"""Statistics follow their formulas; skip gain is the input's coefficient through the skips."""

import numpy as np
import pytest

from mhc_spec import (
    MHCConfig,
    amplification,
    attenuation,
    backward,
    entropy,
    forward,
    highway_profile,
    padded_weights,
    skip_gain,
)


def test_entropy_formula():
    weights = np.array([[0.0, 0.0, 0.0, 1.0], [0.25, 0.25, 0.25, 0.25], [0.0, 0.0, 0.5, 0.5]])
    np.testing.assert_allclose(entropy(weights), [0.0, np.log(4), np.log(2)], rtol=1e-15)
    a = np.array([[0.1, 0.2, 0.7]])
    np.testing.assert_allclose(entropy(a), [-np.sum(a * np.log(a))], rtol=1e-15)


def test_entropy_of_hc_weights_uses_normalised_magnitudes():
    a = np.array([[-1.0, 0.0, 3.0], [0.0, 0.0, 0.0]])
    p = np.array([0.25, 0.75])
    np.testing.assert_allclose(entropy(a, "hc"), [-np.sum(p * np.log(p)), 0.0], rtol=1e-15)


@pytest.mark.parametrize("constraint", ["simplex", "softmax", "identity"])
@pytest.mark.parametrize("h", [1, 3, 4])
def test_skip_gain_is_exactly_one_on_the_simplex(constraint, h):
    config = MHCConfig(max_history=h, constraint=constraint)
    theta = np.random.default_rng(h).standard_normal((12, h))
    weights = padded_weights(config, theta, 12)
    np.testing.assert_allclose(skip_gain(weights), 1.0, rtol=1e-14)
    np.testing.assert_allclose(amplification(weights), 1.0, rtol=1e-14)


def test_skip_gain_by_hand():
    # H = 2, layer 1: a = [1] (K = 1), layer 2: a = [0.5, 2], gates 0.5 and 1.
    weights = np.array([[0.0, 1.0], [0.5, 2.0]])
    gates = np.array([0.5, 1.0])
    # c1 = 0.5 * 1 * c0 = 0.5; c2 = 1 * (0.5 c0 + 2 c1) = 1.5
    np.testing.assert_allclose(skip_gain(weights, gates), [1.0, 0.5, 1.5])
    signed = np.array([[0.0, 1.0], [-0.5, 2.0]])
    np.testing.assert_allclose(skip_gain(signed, gates), [1.0, 0.5, 0.5])
    np.testing.assert_allclose(amplification(signed, gates), [1.0, 0.5, 1.5])


def test_hc_weights_can_explode():
    # a = [1, 1] on two states: the skip gain follows the Fibonacci numbers.
    weights = np.tile([1.0, 1.0], (20, 1))
    weights[0, 0] = 0.0
    gain = skip_gain(weights)
    assert gain[-1] == 10946.0
    assert amplification(-weights).max() == 10946.0


@pytest.mark.parametrize("mode", ["residual", "hc", "mhc"])
def test_skip_gain_is_the_coefficient_of_the_input_through_the_skips(mode):
    # With blocks f = 0 (zero weights and bias) the recurrence is linear in x through the
    # skip paths alone: s_l = c_l x exactly.
    config = MHCConfig(max_history=3, mode=mode, gating=True)
    rng = np.random.default_rng(1)
    depth, width = 7, 4
    theta = None if mode == "residual" else rng.standard_normal((depth, 3))
    gamma = rng.standard_normal(depth)
    x = rng.standard_normal((2, width))
    zeros_w, zeros_b = np.zeros((depth, width, width)), np.zeros((depth, width))
    trace = forward(config, x, theta, gamma, "linear", zeros_w, zeros_b)
    gain = skip_gain(trace.weights, trace.gates)
    for layer, state in enumerate(trace.states):
        np.testing.assert_allclose(state, gain[layer] * x, rtol=1e-12, atol=1e-300)


def test_highway_profile_and_attenuation():
    config = MHCConfig(max_history=2)
    rng = np.random.default_rng(2)
    depth, width = 5, 3
    theta = rng.standard_normal((depth, 2))
    w, b = rng.standard_normal((depth, width, width)), rng.standard_normal((depth, width))
    x, g = rng.standard_normal((4, width)), rng.standard_normal((4, width))
    trace = forward(config, x, theta, None, "tanh_linear", w, b)
    grads = backward(config, trace, theta, None, "tanh_linear", w, b, g)
    profile = highway_profile(grads.states)
    assert profile.shape == (depth + 1,)
    np.testing.assert_allclose(profile[-1], np.sqrt(np.sum(g * g)), rtol=1e-15)
    np.testing.assert_allclose(profile[0], np.sqrt(np.sum(grads.x**2)), rtol=1e-15)
    assert attenuation(profile) == profile[0] / profile[-1]
    assert attenuation(np.array([1.0, 0.0])) == np.inf
    assert np.isnan(attenuation(np.array([0.0, 0.0])))
