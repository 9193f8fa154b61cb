"""mhc_jax under test: ``MHCSequential`` built from a list of blocks (Python loop) or with
stacked parameters (``nnx.scan``), forward and ``jax.grad`` under ``jax.jit`` (stream cases:
:mod:`conformance.backends.jax_streams`).

State gradients come from the stack's ``offsets`` argument (zeros added to every state,
so d loss / d offsets[l] = d loss / d s_l). float64 cases run inside ``jax.enable_x64``.
"""

from __future__ import annotations

import numpy as np

from conformance.backends import Backend, Case
from conformance.backends.jax_streams import run_stream_case
from mhc_spec.statistics import attenuation, highway_profile
from mhc_spec.streams.vectors import StreamCase
from mhc_spec.vectors import GoldenCase


def build_model(case: GoldenCase, scan: bool, dtype):
    """The case's stack with nnx.Linear (+ tanh) blocks holding the case's parameters."""
    import jax.numpy as jnp
    from flax import nnx

    from mhc_jax import MHCSequential

    i = case.inputs
    width = i["weight"].shape[-1]

    def make_block(rngs: nnx.Rngs) -> nnx.Module:
        linear = nnx.Linear(width, width, param_dtype=dtype, rngs=rngs)
        return linear if case.kind == "linear" else nnx.Sequential(linear, jnp.tanh)

    def linear_of(block):
        return block if case.kind == "linear" else block.layers[0]

    # nnx.Linear computes s @ kernel + bias: kernel = W^T.
    kernels = np.swapaxes(i["weight"], -1, -2)
    if scan:
        model = MHCSequential.scanned(make_block, case.depth, rngs=nnx.Rngs(0),
                                      config=case.config, param_dtype=dtype)
        linear = linear_of(model.blocks)
        linear.kernel[...] = jnp.asarray(kernels, dtype)
        linear.bias[...] = jnp.asarray(i["bias"], dtype)
    else:
        model = MHCSequential([make_block(nnx.Rngs(n)) for n in range(case.depth)],
                              config=case.config, param_dtype=dtype)
        for layer, block in enumerate(model.blocks):
            linear_of(block).kernel[...] = jnp.asarray(kernels[layer], dtype)
            linear_of(block).bias[...] = jnp.asarray(i["bias"][layer], dtype)
    if i["theta"] is not None:
        model.mixing.theta[...] = jnp.asarray(i["theta"], dtype)
    if i["gamma"] is not None:
        model.mixing.gamma[...] = jnp.asarray(i["gamma"], dtype)
    return model, linear_of


class JaxBackend(Backend):
    requires = ("jax", "flax")

    def __init__(self, build: str = "loop") -> None:
        if build not in ("loop", "scan"):
            raise ValueError(f"build={build!r} is invalid: build must be 'loop' or 'scan'")
        self.build = build
        self.name = f"jax-{build}"

    def run(self, case: Case) -> dict[str, np.ndarray]:
        import jax

        with jax.enable_x64(case.dtype == "float64"):
            if isinstance(case, StreamCase):
                return run_stream_case(case, self.build == "scan")
            return self._run(case)

    def _run(self, case: GoldenCase) -> dict[str, np.ndarray]:
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from mhc_jax.statistics import mixing_statistics

        dtype = jnp.float64 if case.dtype == "float64" else jnp.float32
        model, linear_of = build_model(case, self.build == "scan", dtype)
        x = jnp.asarray(case.inputs["x"], dtype)
        g = jnp.asarray(case.inputs["grad_output"], dtype)
        graphdef, params = nnx.split(model, nnx.Param)

        @jax.jit
        def evaluate(params, offsets):
            def loss(params, offsets):
                stack = nnx.merge(graphdef, params)
                out = stack.forward(x, offsets=offsets, collect_states=True)
                return jnp.sum(g * out.output), (out.states, stack.weights(), stack.gates())

            return jax.grad(loss, argnums=(0, 1), has_aux=True)(params, offsets)

        offsets = jnp.zeros((case.depth + 1, *x.shape), dtype)
        (dparams, doffsets), (states, weights, gates) = evaluate(params, offsets)
        grads = nnx.merge(graphdef, dparams)

        def host(a) -> np.ndarray:
            return np.asarray(a, dtype=np.float64)

        state_grads = host(doffsets)
        # The JAX dashboard's own statistics of the model (mhc_jax.statistics).
        stats = mixing_statistics(model)
        profile = highway_profile(list(state_grads))
        if self.build == "scan":
            linear = linear_of(grads.blocks)
            dkernel, dbias = host(linear.kernel[...]), host(linear.bias[...])
        else:
            dkernel = np.stack([host(linear_of(b).kernel[...]) for b in grads.blocks])
            dbias = np.stack([host(linear_of(b).bias[...]) for b in grads.blocks])
        outputs = {
            "weights": host(weights),
            "gates": host(gates),
            "states": host(states),
            "statistics.entropy": stats.entropy,
            "statistics.mean_entropy": np.asarray(stats.mean_entropy),
            "statistics.skip_gain": stats.skip_gain,
            "statistics.amplification": stats.amplification,
            "statistics.max_amplification": np.asarray(stats.max_amplification),
            "statistics.highway": profile,
            "statistics.attenuation": np.asarray(attenuation(profile)),
            "gradients.x": state_grads[0],
            "gradients.weight": np.swapaxes(dkernel, -1, -2),
            "gradients.bias": dbias,
            "gradients.states": state_grads,
        }
        if grads.mixing.theta is not None:
            outputs["gradients.theta"] = host(grads.mixing.theta[...])
        if grads.mixing.gamma is not None:
            outputs["gradients.gamma"] = host(grads.mixing.gamma[...])
        return outputs
