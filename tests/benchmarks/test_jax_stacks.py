"""The pure-JAX stacks of the JAX benchmark compute the recurrence they are named after."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.jax_stacks import (
    learned_skip_forward,
    learned_skip_params,
    residual_scan_forward,
    variant,
)


def _direct(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """s_l = s_{l-1} W_l + b_l + sum_j w[l, j] s_{l-H+j}, missing states zero, layer by layer."""
    depth, history = params["skip"].shape
    states = [jnp.zeros_like(x)] * (history - 1) + [x]
    for layer in range(depth):
        window = states[-history:]
        s = states[-1] @ params["kernel"][layer] + params["bias"][layer]
        states.append(s + sum(params["skip"][layer, j] * window[j] for j in range(history)))
    return states[-1]


@pytest.mark.parametrize("group", [1, 5])
def test_learned_skip_scan_matches_the_direct_recurrence_and_its_gradients(group: int) -> None:
    params = learned_skip_params(6, 10, 4)
    params["skip"] = jax.random.normal(jax.random.key(3), (10, 4)) * 0.5
    x = jax.random.normal(jax.random.key(4), (3, 6))
    forward = learned_skip_forward(group)
    np.testing.assert_allclose(forward(params, x), _direct(params, x), rtol=1e-5, atol=1e-5)
    grads = jax.grad(lambda p: jnp.sum(forward(p, x) ** 2))(params)
    expected = jax.grad(lambda p: jnp.sum(_direct(p, x) ** 2))(params)
    for name in params:
        np.testing.assert_allclose(grads[name], expected[name], rtol=1e-4, atol=1e-5)


def test_learned_skip_scan_keeping_the_newest_state_is_the_residual_scan() -> None:
    params = learned_skip_params(6, 10, 4)
    params["skip"] = jnp.zeros((10, 4)).at[:, -1].set(1.0)
    x = jax.random.normal(jax.random.key(5), (3, 6))
    np.testing.assert_allclose(learned_skip_forward(5)(params, x),
                               residual_scan_forward(params, x), rtol=1e-6, atol=1e-6)


def test_learned_skip_variant_names_set_history_and_group() -> None:
    step, params = variant("learned skips H3 G5 scan", 4, 10)
    assert params["skip"].shape == (10, 3)
    x = jnp.ones((2, 4))
    updated = step(params, x, x)
    assert jax.tree.map(jnp.shape, updated) == jax.tree.map(jnp.shape,
                                                            learned_skip_params(4, 10, 3))
