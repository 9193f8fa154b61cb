"""jax.test_util.check_grads (forward and reverse mode against finite differences, float64)
for every mode and constraint through the whole stack; gating alternates between kinds (its
gradient path does not depend on the projection) and mhc/simplex runs both ways."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from mhc_jax import MHCSequential
from mhc_spec import MHCConfig

KINDS = [("residual", "simplex"), ("hc", "simplex"), ("mhc", "simplex"), ("mhc", "softmax"),
         ("mhc", "identity")]
CASES = [(mode, constraint, index % 2 == 0) for index, (mode, constraint) in enumerate(KINDS)]
CASES.append(("mhc", "simplex", True))


@pytest.mark.parametrize(("mode", "constraint", "gating"), CASES,
                         ids=[f"{m}-{c}-{'gated' if g else 'plain'}" for m, c, g in CASES])
def test_check_grads(mode: str, constraint: str, gating: bool) -> None:
    with jax.enable_x64(True):
        config = MHCConfig(max_history=3, mode=mode, constraint=constraint, temperature=0.8,
                           epsilon=0.2, gating=gating)
        depth, width = 4, 3
        model = MHCSequential(
            [nnx.Sequential(nnx.Linear(width, width, param_dtype=jnp.float64, rngs=nnx.Rngs(i)),
                            jnp.tanh) for i in range(depth)],
            config=config, param_dtype=jnp.float64)
        rng = np.random.default_rng(0)
        # Random logits sit far (>> eps) from every sparsemax support change.
        if model.mixing.theta is not None:
            model.mixing.theta[...] = jnp.asarray(rng.standard_normal((depth, 3)))
        if model.mixing.gamma is not None:
            model.mixing.gamma[...] = jnp.asarray(rng.standard_normal(depth))
        graphdef, params = nnx.split(model)
        x = jnp.asarray(rng.standard_normal((2, width)))
        g = jnp.asarray(rng.standard_normal((2, width)))

        @jax.jit
        def loss(params, x):
            return jnp.sum(nnx.merge(graphdef, params)(x) * g)

        check_grads(loss, (params, x), order=1, modes=("fwd", "rev"), eps=1e-6, rtol=1e-6,
                    atol=1e-8)
