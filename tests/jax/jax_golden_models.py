"""Golden-vector cases as mhc_jax models, and one function that computes everything the
vectors hold (states, weights, gates and every gradient of loss = sum(G * s_L))."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mhc_jax import MHCSequential, export_portable, load_portable
from mhc_spec.vectors import GoldenCase


def make_block(kind: str, width: int, dtype, rngs: nnx.Rngs) -> nnx.Module:
    """The spec's block kinds: ``linear`` f(s) = s W^T + b, ``tanh_linear`` tanh of it."""
    linear = nnx.Linear(width, width, param_dtype=dtype, rngs=rngs)
    return linear if kind == "linear" else nnx.Sequential(linear, jnp.tanh)


def portable_inputs(case: GoldenCase) -> dict[str, np.ndarray]:
    """The case's parameters as a portable dict (torch layout, Sequential index for tanh)."""
    prefix = "" if case.kind == "linear" else "0."
    params = {}
    if case.inputs["theta"] is not None:
        params["mixing.theta"] = case.inputs["theta"]
    if case.inputs["gamma"] is not None:
        params["mixing.gamma"] = case.inputs["gamma"]
    for i in range(case.depth):
        params[f"blocks.{i}.{prefix}weight"] = case.inputs["weight"][i]
        params[f"blocks.{i}.{prefix}bias"] = case.inputs["bias"][i]
    return params


def build(case: GoldenCase, scan: bool, dtype) -> MHCSequential:
    """The case's stack (loop or scan build) with the case's parameters loaded."""
    width = case.inputs["x"].shape[-1]
    if scan:
        # Stacking copies of one block is much cheaper than nnx.vmap-ing the initialisers
        # (MHCSequential.scanned is tested on its own); load_portable sets every layer.
        graphdef, state = nnx.split(make_block(case.kind, width, dtype, nnx.Rngs(0)))
        stacked = nnx.merge(graphdef, jax.tree.map(lambda a: jnp.stack([a] * case.depth), state))
        model = MHCSequential(stacked=stacked, depth=case.depth, config=case.config,
                              param_dtype=dtype)
    else:
        model = MHCSequential(
            [make_block(case.kind, width, dtype, nnx.Rngs(i)) for i in range(case.depth)],
            config=case.config, param_dtype=dtype)
    load_portable(model, portable_inputs(case))
    return model


@dataclass
class Result:
    states: np.ndarray
    weights: np.ndarray
    gates: np.ndarray
    gradients: dict[str, np.ndarray | None]


def _evaluate(graphdef, state, x, g):
    def loss(state, offsets):
        model = nnx.merge(graphdef, state)
        out = model.forward(x, offsets=offsets, collect_states=True)
        return jnp.sum(g * out.output), (out.states, model.weights(), model.gates())

    model = nnx.merge(graphdef, state)
    offsets = jnp.zeros((model.depth + 1, *x.shape), x.dtype)
    (_, aux), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(state, offsets)
    return aux, grads


evaluate_jit = jax.jit(_evaluate, static_argnums=0)


def run(model: MHCSequential, case: GoldenCase, dtype, jit: bool = True) -> Result:
    graphdef, state = nnx.split(model)
    x = jnp.asarray(case.inputs["x"], dtype)
    g = jnp.asarray(case.inputs["grad_output"], dtype)
    fn = evaluate_jit if jit else _evaluate
    (states, weights, gates), (dstate, doffsets) = fn(graphdef, state, x, g)
    grad_params = export_portable(nnx.merge(graphdef, dstate))
    prefix = "" if case.kind == "linear" else "0."
    gradients = {
        "x": np.asarray(doffsets[0]),
        "states": np.asarray(doffsets),
        "theta": grad_params.get("mixing.theta"),
        "gamma": grad_params.get("mixing.gamma"),
        "weight": np.stack([grad_params[f"blocks.{i}.{prefix}weight"] for i in range(case.depth)]),
        "bias": np.stack([grad_params[f"blocks.{i}.{prefix}bias"] for i in range(case.depth)]),
    }
    return Result(np.asarray(states), np.asarray(weights), np.asarray(gates), gradients)
