"""The batched projections against the spec: values, masking and the sparsemax gradient
convention at ties and exact zeros."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_fast import fast_jit

from mhc_jax.projections import (
    available_counts,
    gate_values,
    sparsemax,
    window_mask,
)
from mhc_jax.projections import project as project_eager
from mhc_spec import MHCConfig, gates, padded_weights, project_vjp, sparsemax_vjp
from mhc_spec import project as spec_project
from mhc_spec import sparsemax as spec_sparsemax

CONFIGS = [
    MHCConfig(max_history=h, mode=mode, constraint=constraint, temperature=tau, epsilon=0.25)
    for h, (mode, constraint), tau in itertools.product(
        (1, 3, 5),
        (("residual", "simplex"), ("hc", "simplex"), ("mhc", "simplex"), ("mhc", "softmax"),
         ("mhc", "identity")),
        (0.5, 2.0))
]

# Rows with ties inside and at the support boundary, exact zeros and exact kinks
# (z = [0, 1] sits exactly where the first entry leaves the support).
TIES = np.array([
    [0.3, 0.3, 1.0, 1.0],
    [2.0, 2.0, 2.0, -5.0],
    [0.0, 0.0, 0.0, 0.0],
    [3.0, -2.0, 0.0, 1.0],
    [0.0, 0.0, 0.0, 1.0],
    [-1.0, -1.0, 1.0, 1.2],
    [0.0, 1.0, 0.75, 1.5],
])


project = fast_jit(project_eager, static_argnums=0)
sparsemax_jit = fast_jit(sparsemax)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.kind}-H{c.max_history}-"
                         f"tau{c.temperature}")
def test_padded_weights_match_the_spec(x64, config: MHCConfig) -> None:
    depth = 7
    theta = np.random.default_rng(config.max_history).standard_normal((depth, config.max_history))
    mask = window_mask(config.max_history, available_counts(config.max_history, depth))
    weights = project(config, jnp.asarray(theta), mask)
    expected = padded_weights(config, theta if config.has_logits else None, depth)
    np.testing.assert_allclose(np.asarray(weights), expected, rtol=1e-12, atol=1e-15)
    # Unavailable states weigh exactly 0.
    assert np.all(np.asarray(weights)[~np.asarray(mask)] == 0.0)


@pytest.mark.parametrize("config", CONFIGS[4::5], ids=lambda c: c.kind)
def test_carried_history_counts_give_the_spec_weights_of_k_states(x64, config) -> None:
    """With `first` states already available, layer l mixes K = min(H, first + l - 1)."""
    h, depth, first = 5, 4, 3
    config = MHCConfig(**{**config.to_dict(), "max_history": h})
    theta = np.random.default_rng(1).standard_normal((depth, h))
    counts = np.asarray(available_counts(h, depth, first))
    np.testing.assert_array_equal(counts, [3, 4, 5, 5])
    weights = np.asarray(project(config, jnp.asarray(theta), window_mask(h, counts)))
    for row, k in enumerate(counts):
        z = theta[row, h - k:] if config.has_logits else None
        np.testing.assert_allclose(weights[row, h - k:], spec_project(config, z, k), rtol=1e-12)
        assert np.all(weights[row, :h - k] == 0.0)


def test_sparsemax_gradient_uses_the_spec_support_convention(x64) -> None:
    """The projection's JVP takes the support {a > 0}, like sparsemax_vjp: at a kink the
    zero entry gets no gradient; inside the support the mean is removed."""
    rng = np.random.default_rng(0)
    g = rng.standard_normal(TIES.shape)
    a, dz = fast_jit(lambda z, g: (sparsemax(z), jax.vjp(sparsemax, z)[1](g)[0]))(
        jnp.asarray(TIES), jnp.asarray(g))
    np.testing.assert_allclose(np.asarray(dz), sparsemax_vjp(np.asarray(a), g),
                               rtol=1e-12, atol=1e-14)


def test_project_gradient_matches_the_spec_vjp_at_ties(x64) -> None:
    rng = np.random.default_rng(1)
    z = np.concatenate([np.full((len(TIES), 1), 0.1), TIES], axis=1)
    g = rng.standard_normal(z.shape)
    mask = jnp.ones(z.shape, bool)

    @fast_jit
    def vjps(z, g):
        return [jax.vjp(lambda t, c=c: project_eager(c, t, mask), z)[1](g)[0]
                for c in CONFIGS if c.max_history == 5 and c.has_logits]

    configs = [c for c in CONFIGS if c.max_history == 5 and c.has_logits]
    for config, dz in zip(configs, vjps(jnp.asarray(z), jnp.asarray(g)), strict=True):
        for row in range(len(z)):
            np.testing.assert_allclose(np.asarray(dz)[row], project_vjp(config, z[row], g[row]),
                                       rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("constraint", ["simplex", "softmax", "identity"])
def test_masked_logits_get_exactly_zero_gradient_and_no_nan(constraint: str) -> None:
    """Finite masking: huge, tiny or even non-finite logits in unavailable slots change
    nothing, and the gradient reaching them is exactly 0 (no NaN from inf * 0)."""
    config = MHCConfig(max_history=4, constraint=constraint)
    theta = jnp.array([[jnp.inf, -jnp.inf, 1e30, 0.5],
                       [jnp.nan, 3e38, 0.2, 0.1],
                       [-3e38, 0.0, 0.0, 0.0]], jnp.float32)
    mask = window_mask(4, available_counts(4, 3))
    clean = jnp.where(mask, theta, 0.0)

    def loss(t):
        return jnp.sum(project_eager(config, t, mask) * jnp.arange(1.0, 5.0))

    weights = project(config, theta, mask)
    np.testing.assert_array_equal(np.asarray(weights), np.asarray(project(config, clean, mask)))
    grad = np.asarray(fast_jit(jax.grad(loss))(theta))
    assert np.all(np.isfinite(grad))
    assert np.all(grad[~np.asarray(mask)] == 0.0)


@pytest.mark.parametrize("width", [1, 2, 3, 4, 8, 16, 33, 64, 65, 100])  # pairwise, then sort
def test_rows_of_every_width_equal_the_spec_with_ties(x64, width: int) -> None:
    """The spec's sparsemax and its gradient, on rows of a few levels (ties everywhere, at
    and inside the support boundary) and on continuous rows."""
    rng = np.random.default_rng(width)
    levels = rng.integers(-4, 5, size=(30, width)) * 0.25
    rows = np.concatenate([levels, rng.standard_normal((30, width)) * 2.0])
    g = rng.standard_normal(rows.shape)
    a, dz = fast_jit(lambda z, g: (sparsemax(z), jax.vjp(sparsemax, z)[1](g)[0]))(
        jnp.asarray(rows), jnp.asarray(g))
    for row in range(len(rows)):
        expected = spec_sparsemax(rows[row])
        np.testing.assert_allclose(np.asarray(a)[row], expected, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(np.asarray(dz)[row], sparsemax_vjp(expected, g[row]),
                                   rtol=1e-10, atol=1e-13)


def test_sparsemax_gives_exact_zeros_and_handles_huge_logits() -> None:
    z = jnp.array([[1e4, -1e4, 1e4 - 0.25, 1e4], [0.0, 0.0, 0.0, 1.0]], jnp.float32)
    a = np.asarray(sparsemax_jit(z))
    np.testing.assert_allclose(a[0], spec_sparsemax(np.asarray(z[0], np.float64)), rtol=1e-6)
    assert a[0, 1] == 0.0
    np.testing.assert_array_equal(a[1], [0.0, 0.0, 0.0, 1.0])
    assert a.dtype == np.float32


def test_coefficients_stay_float32_for_bf16_logits() -> None:
    config = MHCConfig(max_history=3, gating=True)
    theta = jnp.array([[0.1, 0.2, 0.3]], jnp.bfloat16)
    mask = jnp.ones((1, 3), bool)
    assert project_eager(config, theta, mask).dtype == jnp.float32
    assert gate_values(config, jnp.array([3.0], jnp.bfloat16), 1).dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(gate_values(config, jnp.array([0.5]), 1)),
                               gates(config, np.array([0.5]), 1), rtol=1e-6)
