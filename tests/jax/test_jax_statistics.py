"""Dashboard statistics against the golden vectors' statistics (which the spec computed)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_golden_models import build

from mhc_jax.statistics import highway, mixing_statistics, state_gradients
from mhc_spec.vectors import default_directory, load_vectors

CASES = {case.name: case for case in load_vectors(default_directory())}
# Gated mhc with H > depth's first layers, hc with weights > 1 (amplification > 1),
# residual, and a float32 case.
NAMES = ["grid_mhc-simplex_H4_L9", "edge_hc_large_weights", "grid_residual_H2_L9",
         "init_mhc-softmax_recent"]


def weighted_sum(output: jax.Array, g: jax.Array) -> jax.Array:
    return jnp.sum(output * g)


@pytest.mark.parametrize("name", NAMES)
def test_statistics_match_the_spec(name: str) -> None:
    case = CASES[name]
    expected = case.expected["statistics"]
    rtol = 1e-10 if case.dtype == "float64" else 1e-5
    with jax.enable_x64(case.dtype == "float64"):
        dtype = jnp.dtype(case.dtype)
        model = build(case, scan=True, dtype=dtype)
        stats = mixing_statistics(model)
        x = jnp.asarray(case.inputs["x"], dtype)
        g = jnp.asarray(case.inputs["grad_output"], dtype)
        road = highway(model, weighted_sum, x, g)
        d_states, d_theta = state_gradients(model, weighted_sum, x, g)
    assert stats.kind == case.config.kind
    np.testing.assert_allclose(stats.weights, case.expected["weights"], rtol=rtol, atol=rtol)
    np.testing.assert_allclose(stats.entropy, expected["entropy"], rtol=rtol, atol=rtol)
    np.testing.assert_allclose(stats.mean_entropy, expected["mean_entropy"], rtol=rtol)
    np.testing.assert_allclose(stats.skip_gain, expected["skip_gain"], rtol=rtol)
    np.testing.assert_allclose(stats.amplification, expected["amplification"], rtol=rtol)
    np.testing.assert_allclose(stats.max_amplification, expected["max_amplification"],
                               rtol=rtol)
    np.testing.assert_allclose(road.profile, expected["highway"], rtol=rtol)
    np.testing.assert_allclose(road.attenuation, expected["attenuation"], rtol=rtol)
    np.testing.assert_allclose(d_states, case.expected["gradients"]["states"], rtol=rtol,
                               atol=rtol * np.abs(case.expected["gradients"]["states"]).max())
    expected_theta = case.expected["gradients"]["theta"]
    if expected_theta is None:
        assert d_theta is None and road.theta_grad_norm is None
    else:
        np.testing.assert_allclose(road.theta_grad_norm, np.linalg.norm(expected_theta),
                                   rtol=rtol)
