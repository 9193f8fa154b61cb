"""Projections: sparsemax is the exact Euclidean simplex projection; the hand-derived
vector-Jacobian products match finite differences, also near and at support changes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mhc_spec import MHCConfig, padded_weights, project, project_vjp, softmax, sparsemax
from mhc_spec.projections import sparsemax_vjp

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


def simplex_projection_by_bisection(z: np.ndarray) -> np.ndarray:
    """Independent reference: find tau with sum(max(z - tau, 0)) = 1 by bisection."""
    lo, hi = z.max() - 1.0, z.max()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.maximum(z - mid, 0).sum() > 1.0:
            lo = mid
        else:
            hi = mid
    return np.maximum(z - 0.5 * (lo + hi), 0)


@settings(max_examples=300, deadline=None)
@given(arrays(np.float64, st.integers(1, 9), elements=finite))
def test_sparsemax_is_the_euclidean_projection(z):
    a = sparsemax(z)
    assert np.all(a >= 0)
    assert abs(a.sum() - 1.0) < 1e-12
    np.testing.assert_allclose(a, simplex_projection_by_bisection(z), atol=1e-9)
    # KKT: a_i = z_i - tau on the support, z_i <= tau off it.
    support = a > 0
    tau = (z[support] - a[support]).mean()
    np.testing.assert_allclose(z[support] - a[support], tau, atol=1e-9 * max(1, abs(tau)))
    assert np.all(z[~support] <= tau + 1e-9 * max(1, abs(tau)))


def test_sparsemax_exact_zeros_ties_and_huge_logits():
    np.testing.assert_array_equal(sparsemax(np.array([0.0, 0.0, 2.0, 2.0])), [0, 0, 0.5, 0.5])
    np.testing.assert_array_equal(sparsemax(np.array([3.0, -2.0, 0.0, 1.0])), [1, 0, 0, 0])
    np.testing.assert_array_equal(sparsemax(np.zeros(4)), [0.25] * 4)
    a = sparsemax(np.array([1e4, -1e4, 1e4 - 0.25, 1e4]))
    np.testing.assert_allclose(a, [5 / 12, 0, 1 / 6, 5 / 12], rtol=1e-12)
    assert a[1] == 0.0


def test_recent_init_gives_documented_weights():
    config = MHCConfig(max_history=4)
    np.testing.assert_allclose(
        project(config, np.array([0, 0, 0, 0.5]), 4), [0.125, 0.125, 0.125, 0.625]
    )


def test_each_projection_formula():
    z = np.array([0.3, -1.2, 0.8])
    tau, eps = 0.7, 0.25
    np.testing.assert_array_equal(project(MHCConfig(mode="residual"), None, 3), [0, 0, 1])
    np.testing.assert_array_equal(project(MHCConfig(mode="hc"), z, 3), z)
    soft = np.exp(z / tau) / np.exp(z / tau).sum()
    np.testing.assert_allclose(
        project(MHCConfig(constraint="softmax", temperature=tau), z, 3), soft, rtol=1e-14
    )
    np.testing.assert_allclose(
        project(MHCConfig(constraint="identity", temperature=tau, epsilon=eps), z, 3),
        eps * np.array([0, 0, 1.0]) + (1 - eps) * sparsemax(z / tau),
        rtol=1e-14,
    )


def test_project_checks_the_logit_count():
    with pytest.raises(ValueError, match="expected 3 logits"):
        project(MHCConfig(), np.zeros(4), 3)


CONFIGS = [
    MHCConfig(mode="hc"),
    MHCConfig(temperature=0.6),
    MHCConfig(constraint="softmax", temperature=2.0),
    MHCConfig(constraint="identity", temperature=0.8, epsilon=0.3),
]


def numeric_vjp(config, z, g, h=1e-6):
    out = np.zeros_like(z)
    for i in range(z.size):
        e = np.zeros_like(z)
        e[i] = h
        k = z.size
        out[i] = (g @ project(config, z + e, k) - g @ project(config, z - e, k)) / (2 * h)
    return out


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.kind)
@pytest.mark.parametrize("seed", range(5))
def test_vjp_matches_finite_differences(config, seed):
    rng = np.random.default_rng(seed)
    z, g = rng.standard_normal(5), rng.standard_normal(5)
    np.testing.assert_allclose(project_vjp(config, z, g), numeric_vjp(config, z, g), atol=1e-8)


@pytest.mark.parametrize("offset", [1e-3, -1e-3, 1e-5, -1e-5])
def test_sparsemax_vjp_near_a_support_change(offset):
    # The third logit enters the support at exactly 0.75.
    z = np.array([0.0, 1.0, 0.75 + offset, 1.5])
    g = np.array([0.4, -1.0, 2.0, 0.3])
    config = MHCConfig()
    assert (sparsemax(z)[2] > 0) == (offset > 0)
    np.testing.assert_allclose(
        project_vjp(config, z, g), numeric_vjp(config, z, g, h=1e-7), atol=1e-7
    )


def test_sparsemax_vjp_at_a_support_change_is_the_one_sided_derivative():
    # At z_2 = 0.75 the entry is exactly 0: the convention support = {a > 0} gives the
    # derivative along the side where it stays 0, i.e. z_2 moving down or a support
    # member moving up (both raise the threshold above z_2, or keep it there).
    z = np.array([0.0, 1.0, 0.75, 1.5])
    g = np.array([0.4, -1.0, 2.0, 0.3])
    a = sparsemax(z)
    assert a[2] == 0.0
    h = 1e-7
    one_sided = np.zeros(4)
    for i, direction in enumerate([1.0, 1.0, -1.0, 1.0]):
        e = np.zeros(4)
        e[i] = direction * h
        one_sided[i] = direction * (g @ sparsemax(z + e) - g @ a) / h
    vjp = sparsemax_vjp(a, g)
    assert vjp[2] == 0.0
    np.testing.assert_allclose(vjp, one_sided, atol=1e-6)


def test_softmax_vjp_is_exact_for_saturated_logits():
    a = softmax(np.array([1e7, 0.0, -1e7]))
    np.testing.assert_array_equal(a, [1.0, 0.0, 0.0])
    assert np.all(np.isfinite(project_vjp(MHCConfig(constraint="softmax", temperature=1e-3),
                                          np.array([1e4, 0, -1e4]), np.ones(3))))


@pytest.mark.parametrize("mode", ["residual", "hc", "mhc"])
@pytest.mark.parametrize("h", [1, 3, 5])
def test_padded_layout(mode, h):
    config = MHCConfig(max_history=h, mode=mode)
    depth = 7
    rng = np.random.default_rng(h)
    theta = None if mode == "residual" else rng.standard_normal((depth, h))
    weights = padded_weights(config, theta, depth)
    assert weights.shape == (depth, h)
    for layer in range(1, depth + 1):
        k = min(h, layer)
        np.testing.assert_array_equal(weights[layer - 1, : h - k], 0.0)
        z = None if theta is None else theta[layer - 1, h - k:]
        np.testing.assert_array_equal(weights[layer - 1, h - k:], project(config, z, k))
