"""Initialisation and the portable parameter dict."""

import numpy as np
import pytest

from mhc_spec import (
    MHCConfig,
    from_portable,
    gates,
    init_gamma,
    init_theta,
    load_portable,
    padded_weights,
    save_portable,
    to_portable,
)


def test_init_theta_per_option():
    recent = init_theta(MHCConfig(max_history=4), 3)
    np.testing.assert_array_equal(recent, np.tile([0, 0, 0, 0.5], (3, 1)))
    np.testing.assert_array_equal(init_theta(MHCConfig(init="uniform"), 2), np.zeros((2, 4)))
    hc = init_theta(MHCConfig(mode="hc"), 2)
    np.testing.assert_array_equal(hc, np.tile([0, 0, 0, 1.0], (2, 1)))
    assert init_theta(MHCConfig(mode="residual"), 5) is None


def test_hc_default_init_is_exactly_a_resnet():
    config = MHCConfig(mode="hc", max_history=3)
    weights = padded_weights(config, init_theta(config, 6), 6)
    np.testing.assert_array_equal(weights, padded_weights(MHCConfig(mode="residual",
                                                                    max_history=3), None, 6))


def test_gates():
    config = MHCConfig(gating=True, gate_init=0.0)
    np.testing.assert_array_equal(init_gamma(config, 3), np.zeros(3))
    np.testing.assert_array_equal(gates(config, init_gamma(config, 3), 3), 0.5)
    np.testing.assert_array_equal(gates(MHCConfig(), None, 2), 1.0)
    assert init_gamma(MHCConfig(), 3) is None


def test_portable_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    theta, gamma = rng.standard_normal((3, 4)), rng.standard_normal(3)
    blocks = [{"weight": rng.standard_normal((5, 5)), "bias": rng.standard_normal(5)}
              for _ in range(3)]
    params = to_portable(theta, gamma, blocks)
    assert set(params) == {"mixing.theta", "mixing.gamma"} | {
        f"blocks.{i}.{n}" for i in range(3) for n in ("weight", "bias")}
    path = tmp_path / "params.npz"
    save_portable(str(path), params)
    theta2, gamma2, blocks2 = from_portable(load_portable(str(path)))
    np.testing.assert_array_equal(theta2, theta)
    np.testing.assert_array_equal(gamma2, gamma)
    for a, b in zip(blocks, blocks2, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_portable_rejects_unknown_keys_and_gaps():
    with pytest.raises(KeyError, match="unknown portable parameter key 'weights'"):
        from_portable({"weights": np.zeros(1)})
    with pytest.raises(KeyError, match="block indices"):
        from_portable({"blocks.1.weight": np.zeros(1)})
