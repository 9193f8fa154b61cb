"""jax.test_util.check_grads (reverse mode, and forward mode for one stack and Sinkhorn,
against finite differences, float64) through whole stream stacks: static and dynamic
coefficients, Sinkhorn mhc, a user's projection (differentiated by JAX's autodiff) and
unconstrained hc, both builds."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from mhc_jax.streams import StreamSequential, export_portable, load_portable, sinkhorn


def row_softmax(logits: jax.Array) -> jax.Array:
    """A user projection: each row of Hres a softmax of its logits."""
    return jax.nn.softmax(logits, axis=-1)


CASES = [
    ("mhc", "sinkhorn", False, False),
    ("mhc", "sinkhorn", True, True),
    ("mhc", row_softmax, True, False),
    ("hc", "sinkhorn", False, True),
    ("hc", "sinkhorn", True, False),
]
IDS = [f"{mode}-{getattr(c, '__name__', c)}-{'dynamic' if d else 'static'}-"
       f"{'scan' if s else 'loop'}" for mode, c, d, s in CASES]
WIDTH, DEPTH, STREAMS = 3, 2, 3


def random_stack(mode, constraint, dynamic: bool, scan: bool) -> StreamSequential:
    """A float64 stack with every parameter drawn at random (a non-symmetric b_res)."""
    options = dict(streams=STREAMS, mode=mode, constraint=constraint, dynamic=dynamic,
                   sinkhorn_iterations=4, reduce="gated", width=WIDTH, param_dtype=jnp.float64)

    def block(rngs: nnx.Rngs) -> nnx.Module:
        return nnx.Sequential(
            nnx.Linear(WIDTH, WIDTH, param_dtype=jnp.float64, rngs=rngs), jnp.tanh)

    if scan:
        model = StreamSequential.scanned(block, DEPTH, rngs=nnx.Rngs(0), **options)
    else:
        model = StreamSequential([block(nnx.Rngs(i)) for i in range(DEPTH)], **options)
    rng = np.random.default_rng(1)
    portable = export_portable(model)
    for key, value in portable.items():
        if key.startswith("streams."):
            portable[key] = rng.standard_normal(value.shape) / 2
    load_portable(model, portable)
    return model


@pytest.mark.parametrize(("mode", "constraint", "dynamic", "scan"), CASES, ids=IDS)
def test_check_grads(mode, constraint, dynamic: bool, scan: bool) -> None:
    with jax.enable_x64(True):
        graphdef, params = nnx.split(random_stack(mode, constraint, dynamic, scan))
        rng = np.random.default_rng(0)
        h = jnp.asarray(rng.standard_normal((2, WIDTH)))
        g = jnp.asarray(rng.standard_normal((2, WIDTH)))

        @jax.jit
        def loss(params, h):
            return jnp.sum(nnx.merge(graphdef, params)(h) * g)

        # Forward mode once (it compiles a third function); reverse mode is what trains.
        modes = ("fwd", "rev") if dynamic and scan else ("rev",)
        check_grads(loss, (params, h), order=1, modes=modes, eps=1e-6, rtol=1e-6, atol=1e-8)


def test_sinkhorn_check_grads() -> None:
    with jax.enable_x64(True):
        logits = jnp.asarray(np.random.default_rng(2).standard_normal((2, 4, 4)) * 2)
        check_grads(jax.jit(lambda z: sinkhorn(z, 7)), (logits,), order=1,
                    modes=("fwd", "rev"), eps=1e-5, rtol=1e-5, atol=1e-8)
