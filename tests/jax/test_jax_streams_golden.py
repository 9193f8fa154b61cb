"""Every golden vector of the stream family through both builds of StreamSequential:
Hpre, Hpost, Hres, the states X_0..X_L, the output, the statistics, and every gradient of
loss = sum(G * output) (h, states, stream parameters, block weight and bias) against the
spec.

Parameters go in through ``load_portable`` and gradients come back through
``export_portable`` (torch layouts), so the exchange format is exercised too. float64
cases run inside ``jax.enable_x64``.

Error measure (norm-wise, as conformance/tolerances.py): max|got - want| <= rtol *
max|want| + atol * max(1, max|want|), float64: rtol = 1e-10, atol = 1e-12; float32:
rtol = 1e-5, atol = 1e-6. The atol matters for gradients that are exactly zero in exact
arithmetic, which the float64 spec holds as rounding noise (~1e-19: b_res and phi_res at
initialisation, where every stream is equal and SK's reverse mode cancels a row-constant
cotangent), and for sums that cancel (the gated reduce's logits).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax_fast import FAST_COMPILE

from mhc_jax.streams import StreamSequential, coefficient_summary, export_portable, load_portable
from mhc_spec.streams.vectors import StreamCase, default_directory, load_vectors

TOLERANCES = {"float64": (1e-10, 1e-12), "float32": (1e-5, 1e-6)}
CASES = load_vectors(default_directory())


def make_block(kind: str, width: int, dtype, rngs: nnx.Rngs) -> nnx.Module:
    """The spec's block kinds: ``linear`` f(u) = u W^T + b, ``tanh_linear`` tanh of it
    (initialised to zeros: ``load_portable`` sets every array, and a random initialiser
    would compile for every shape)."""
    linear = nnx.Linear(width, width, param_dtype=dtype, kernel_init=nnx.initializers.zeros,
                        rngs=rngs)
    return linear if kind == "linear" else nnx.Sequential(linear, jnp.tanh)


def block_prefix(case: StreamCase) -> str:
    return "" if case.kind == "linear" else "0."


def portable_inputs(case: StreamCase) -> dict[str, np.ndarray]:
    params = dict(case.inputs["params"])
    for layer in range(case.depth):
        params[f"blocks.{layer}.{block_prefix(case)}weight"] = case.inputs["weight"][layer]
        params[f"blocks.{layer}.{block_prefix(case)}bias"] = case.inputs["bias"][layer]
    return params


def build(case: StreamCase, scan: bool, dtype) -> StreamSequential:
    """The case's stack (loop or scan build) with the case's parameters loaded."""
    width = case.inputs["h"].shape[-1]
    if scan:
        # Stacking copies of one block is cheaper than nnx.vmap-ing the initialisers
        # (StreamSequential.scanned is tested on its own); load_portable sets every layer.
        graphdef, state = nnx.split(make_block(case.kind, width, dtype, nnx.Rngs(0)))
        stacked = nnx.merge(graphdef, jax.tree.map(lambda a: jnp.stack([a] * case.depth), state))
        model = StreamSequential(stacked=stacked, depth=case.depth, width=width,
                                 config=case.config, param_dtype=dtype)
    else:
        rngs = nnx.Rngs(0)
        model = StreamSequential(
            [make_block(case.kind, width, dtype, rngs) for _ in range(case.depth)],
            width=width, config=case.config, param_dtype=dtype)
    load_portable(model, portable_inputs(case))
    return model


def _evaluate(graphdef, state, h, g):
    def loss(state, h, offsets):
        out = nnx.merge(graphdef, state).forward(
            h, offsets=offsets, collect_coefficients=True, collect_states=True)
        return jnp.sum(g * out.output), out

    model = nnx.merge(graphdef, state)
    offsets = jnp.zeros((model.depth + 1, *h.shape[:-1], model.streams, h.shape[-1]), h.dtype)
    return jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(state, h, offsets)


# One codegen thread: these graphs compile a third faster without splitting their LLVM module.
evaluate = jax.jit(_evaluate, static_argnums=0,
                   compiler_options={**FAST_COMPILE, "xla_cpu_parallel_codegen_split_count": 1})


def computed(case: StreamCase, scan: bool) -> dict[str, np.ndarray]:
    """Everything the case's ``expected`` holds, computed by mhc_jax in the case's dtype."""
    dtype = jnp.dtype(case.dtype)
    graphdef, state = nnx.split(build(case, scan, dtype))
    h = jnp.asarray(case.inputs["h"], dtype)
    g = jnp.asarray(case.inputs["grad_output"], dtype)
    (d_state, d_h, d_states), out = evaluate(graphdef, state, h, g)
    for name in ("hpre", "hpost", "hres", "states", "output"):
        assert getattr(out, name).dtype == dtype, name
    grads = export_portable(nnx.merge(graphdef, d_state))
    prefix = block_prefix(case)
    got = {name: np.asarray(getattr(out, name))
           for name in ("hpre", "hpost", "hres", "states", "output")}
    got.update({
        "gradients.h": np.asarray(d_h),
        "gradients.states": np.asarray(d_states),
        "gradients.weight": np.stack([grads.pop(f"blocks.{i}.{prefix}weight")
                                      for i in range(case.depth)]),
        "gradients.bias": np.stack([grads.pop(f"blocks.{i}.{prefix}bias")
                                    for i in range(case.depth)]),
    })
    got.update({f"gradients.params.{key}": value for key, value in grads.items()})
    got.update({f"statistics.{key}": value
                for key, value in coefficient_summary(out).items()})
    return got


def expected(case: StreamCase) -> dict[str, np.ndarray]:
    want = {name: case.expected[name] for name in ("hpre", "hpost", "hres", "states", "output")}
    gradients = case.expected["gradients"]
    want.update({f"gradients.{name}": gradients[name]
                 for name in ("h", "states", "weight", "bias")})
    want.update({f"gradients.params.{key}": value for key, value in gradients["params"].items()})
    want.update({f"statistics.{key}": value
                 for key, value in case.expected["statistics"].items()})
    return want


@pytest.mark.parametrize("build_name", ["loop", "scan"])
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_golden_vector(case: StreamCase, build_name: str) -> None:
    with jax.enable_x64(case.dtype == "float64"):
        got = computed(case, build_name == "scan")
    want = expected(case)
    # Parameters the spec's configuration lacks (phi when static, reduce_logits unless
    # gated) must not exist in the model either.
    assert set(got) == set(want)
    rtol, atol = TOLERANCES[case.dtype]
    for name, value in want.items():
        assert got[name].shape == value.shape, name
        scale = float(np.max(np.abs(value)))
        error = float(np.max(np.abs(got[name] - value)))
        assert error <= rtol * scale + atol * max(1.0, scale), (
            f"{case.name} [{build_name}, {case.dtype}] {name}: max error {error:.3g}, "
            f"max |expected| {scale:.3g}")
