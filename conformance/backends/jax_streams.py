"""mhc_jax's stream family under test: ``StreamSequential`` built from a list of blocks
(Python loop) or with stacked parameters (``jax.lax.scan``), loaded from the case's portable
dict, forward and ``jax.grad`` under ``jax.jit``.

The stack's ``offsets`` argument (zeros added to every X_l) gives dLoss/dX_l; coefficients
come from ``collect_coefficients`` and statistics from the JAX monitor's
:func:`mhc_jax.streams.coefficient_summary`.
"""

from __future__ import annotations

import numpy as np

from mhc_spec.streams import to_portable
from mhc_spec.streams.vectors import StreamCase


def _portable(case: StreamCase) -> dict[str, np.ndarray]:
    prefix = "0." if case.kind == "tanh_linear" else ""
    blocks = [{f"{prefix}weight": case.inputs["weight"][layer],
               f"{prefix}bias": case.inputs["bias"][layer]} for layer in range(case.depth)]
    return to_portable(case.inputs["params"], blocks)


def _build(case: StreamCase, scan: bool, dtype):
    import jax.numpy as jnp
    from flax import nnx

    from mhc_jax.streams import StreamSequential, load_portable

    width = int(case.inputs["weight"].shape[-1])

    def make_block(rngs: nnx.Rngs) -> nnx.Module:
        linear = nnx.Linear(width, width, param_dtype=dtype, rngs=rngs)
        return linear if case.kind == "linear" else nnx.Sequential(linear, jnp.tanh)

    if scan:
        model = StreamSequential.scanned(make_block, case.depth, width=width,
                                         rngs=nnx.Rngs(0), config=case.config,
                                         param_dtype=dtype)
    else:
        model = StreamSequential([make_block(nnx.Rngs(n)) for n in range(case.depth)],
                                 width=width, config=case.config, param_dtype=dtype)
    load_portable(model, _portable(case))
    return model


def run_stream_case(case: StreamCase, scan: bool) -> dict[str, np.ndarray]:
    """The flattened outputs of a stream case computed by mhc_jax (call inside the case's
    ``jax.enable_x64`` setting)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from mhc_jax.streams import coefficient_summary, export_portable

    dtype = jnp.float64 if case.dtype == "float64" else jnp.float32
    model = _build(case, scan, dtype)
    h = jnp.asarray(case.inputs["h"], dtype)
    g = jnp.asarray(case.inputs["grad_output"], dtype)
    graphdef, params = nnx.split(model, nnx.Param)

    @jax.jit
    def evaluate(params, h, offsets):
        def loss(params, h, offsets):
            stack = nnx.merge(graphdef, params)
            out = stack.forward(h, offsets=offsets, collect_coefficients=True,
                                collect_states=True)
            return jnp.sum(g * out.output), out

        return jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(params, h, offsets)

    offsets = jnp.zeros((case.depth + 1, *h.shape[:-1], case.config.streams, h.shape[-1]),
                        dtype)
    (dparams, dh, doffsets), out = evaluate(params, h, offsets)

    def host(a) -> np.ndarray:
        return np.asarray(a, dtype=np.float64)

    outputs = {
        "hpre": host(out.hpre),
        "hpost": host(out.hpost),
        "hres": host(out.hres),
        "states": host(out.states),
        "output": host(out.output),
        "gradients.h": host(dh),
        "gradients.states": host(doffsets),
    }
    for key, value in coefficient_summary(out).items():
        outputs[f"statistics.{key}"] = value
    # The gradient as a model, exported through the portable dict: the exchange's own
    # layout conversion (kernel -> weight) applies to it.
    for key, value in export_portable(nnx.merge(graphdef, dparams)).items():
        name = key.split(".")[-1]
        if key.startswith("streams."):
            outputs[f"gradients.params.{key}"] = host(value)
        elif name in ("weight", "bias"):
            outputs.setdefault(f"gradients.{name}", []).append(host(value))
    for name in ("weight", "bias"):
        outputs[f"gradients.{name}"] = np.stack(outputs[f"gradients.{name}"])
    return outputs
