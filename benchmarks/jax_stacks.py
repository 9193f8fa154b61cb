"""The JAX stacks under test and their jitted SGD train steps.

Every train step has the same form: ``params' = params - lr * grad(sum(model(x) * g))``,
jitted with the parameters donated, so a timed step is the forward, the backward and the
update, exactly like the PyTorch benchmark's ``model(x).backward(g)`` plus an SGD update.
The mhc_jax models are run functionally (``nnx.split`` once, ``nnx.merge`` inside the jitted
function), the pattern Flax recommends for speed, so no Python graph traversal is timed.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.torch_stacks import LEARNED_SKIPS

LEARNING_RATE = 1e-4

Step = Callable[[Any, jax.Array, jax.Array], Any]


def sgd(params: Any, grads: Any) -> Any:
    return jax.tree.map(lambda p, d: p - LEARNING_RATE * d, params, grads)


def residual_params(width: int, depth: int, seed: int = 0) -> dict[str, jax.Array]:
    """Stacked Linear(width, width) parameters: kernel (L, in, out) and bias (L, out)."""
    key_w, key_b = jax.random.split(jax.random.key(seed))
    bound = width ** -0.5
    return {
        "kernel": jax.random.uniform(key_w, (depth, width, width), jnp.float32, -bound, bound),
        "bias": jax.random.uniform(key_b, (depth, width), jnp.float32, -bound, bound),
    }


def residual_scan_forward(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """s_l = s_{l-1} W_l + b_l + s_{l-1}, layers run by lax.scan (compile time flat in L)."""

    def body(s: jax.Array, layer: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        kernel, bias = layer
        return s @ kernel + bias + s, None

    out, _ = jax.lax.scan(body, x, (params["kernel"], params["bias"]))
    return out


def residual_loop_forward(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    """The same stack unrolled by a Python loop over per-layer parameters (a stacked array
    sliced per layer would make the backward pad and sum L full-size gradients)."""
    s = x
    for layer in params:
        s = s @ layer["kernel"] + layer["bias"] + s
    return s


_SLICING = frozenset({"slice", "squeeze", "dynamic_slice", "reshape"})


def _save_all_but_slices(primitive: Any, *_: Any, **__: Any) -> bool:
    return primitive.name not in _SLICING


def learned_skip_params(width: int, depth: int, history: int, seed: int = 0
                        ) -> dict[str, jax.Array]:
    """The residual stack's parameters and skip weights (L, H), 1/H everywhere."""
    return {**residual_params(width, depth, seed),
            "skip": jnp.full((depth, history), 1.0 / history, jnp.float32)}


def learned_skip_forward(group: int) -> Callable[[dict[str, jax.Array], jax.Array], jax.Array]:
    """The floor of the JAX target: the same H-term learned skip written by hand, with no
    library, projection or gate: s_l = s_{l-1} W_l + b_l + sum_j w[l, j] s_{l-H+j}, run by
    lax.scan with ``group`` layers per scan step (a divisor of L) and the window (missing
    states are zeros) as a tuple carry.

    The fastest plain form measured (benchmarks/findings.md): with a group >= H every window
    slot is rewritten within a step (no shifting copies), and a remat policy re-slices each
    layer's kernel from the step's parameters in backward instead of saving a copy of it."""

    def forward(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        depth, history = params["skip"].shape
        grouped = jax.tree.map(
            lambda leaf: leaf.reshape(depth // group, group, *leaf.shape[1:]), params)

        def layer(k: int, window: tuple[jax.Array, ...], step: dict[str, jax.Array]
                  ) -> tuple[jax.Array, ...]:
            s = window[-1] @ step["kernel"][k] + step["bias"][k]
            for j, state in enumerate(window):
                s = s + step["skip"][k, j] * state
            return (*window[1:], s)

        def body(window: tuple[jax.Array, ...], step: dict[str, jax.Array]
                 ) -> tuple[tuple[jax.Array, ...], None]:
            for k in range(group):
                run = jax.checkpoint(partial(layer, k), policy=_save_all_but_slices)
                window = run(window, step)
            return window, None

        start = (*(jnp.zeros_like(x) for _ in range(history - 1)), x)
        window, _ = jax.lax.scan(body, start, grouped)
        return window[-1]

    return forward


def unstacked(params: dict[str, jax.Array]) -> list[dict[str, jax.Array]]:
    """Per-layer parameters (separate arrays) from stacked ones."""
    depth = params["kernel"].shape[0]
    return [{name: leaf[index] for name, leaf in params.items()} for index in range(depth)]


def train_step(forward: Callable[[Any, jax.Array], jax.Array]) -> Step:
    """The jitted SGD step of sum(forward(params, x) * g), parameters donated."""

    def step(params: Any, x: jax.Array, g: jax.Array) -> Any:
        grads = jax.grad(lambda p: jnp.sum(forward(p, x) * g))(params)
        return sgd(params, grads)

    return jax.jit(step, donate_argnums=0)


def kind_options(kind: str) -> dict[str, str]:
    if kind.startswith("mhc/"):
        return {"mode": "mhc", "constraint": kind.split("/", 1)[1]}
    return {"mode": kind}


def mhc_model(width: int, depth: int, history: int, kind: str, scan: bool, seed: int = 0):
    """mhc_jax.MHCSequential of ``depth`` nnx.Linear(width, width): scan or loop build."""
    from flax import nnx

    from mhc_jax import MHCSequential

    rngs = nnx.Rngs(seed)
    options = {"max_history": history, **kind_options(kind)}
    if scan:
        return MHCSequential.scanned(lambda r: nnx.Linear(width, width, rngs=r), depth,
                                     rngs=rngs, **options)
    return MHCSequential([nnx.Linear(width, width, rngs=rngs) for _ in range(depth)],
                         **options)


def functional(model: Any) -> tuple[Callable[[Any, jax.Array], jax.Array], Any]:
    """(forward(params, x), params) for an nnx model: split once, merged inside jit."""
    from flax import nnx

    graphdef, params = nnx.split(model)

    def forward(state: Any, x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, state)(x)

    return forward, params


def variant(name: str, width: int, depth: int) -> tuple[Step, Any]:
    """(jitted step, initial parameters) for a variant name such as ``residual scan``,
    ``mhc/simplex H4 loop`` or ``learned skips H4 G5 scan``."""
    if name.startswith("residual"):
        params = residual_params(width, depth)
        if name.endswith("scan"):
            return train_step(residual_scan_forward), params
        return train_step(residual_loop_forward), unstacked(params)
    if name.startswith(LEARNED_SKIPS):
        # "learned skips H4 scan" (a layer per scan step) or "learned skips H4 G5 scan"
        sizes = {word[0]: int(word[1:]) for word in name.split()[2:-1]}
        return (train_step(learned_skip_forward(sizes.get("G", 1))),
                learned_skip_params(width, depth, sizes["H"]))
    label, build = name.rsplit(" ", 1)
    kind, history = label.rsplit(" H", 1)
    forward, params = functional(mhc_model(width, depth, int(history), kind, build == "scan"))
    return train_step(forward), params
