"""JAX: the jitted SGD train step of mhc_jax.MHCSequential against a jitted residual stack.

Depth 50, H=4, the PyTorch benchmark's shapes. Variants (timed round-robin per shape, the
first call, which compiles, recorded apart): the residual stack in pure JAX run by
``lax.scan`` (the baseline of the target) and unrolled by a Python loop; our scan build for
mhc/simplex, mhc/softmax and hc; our loop build for mhc/simplex; and the learned skip
written by hand in pure JAX (the floor of the target), run by ``lax.scan`` one layer per
step and 5 layers per step. A timed step ends with ``jax.block_until_ready`` on the new
parameters.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from benchmarks import machine
from benchmarks.interleave import Variant, run_interleaved
from benchmarks.results_io import write_result
from benchmarks.torch_stacks import LEARNED_SKIPS, SHAPES, parse_shape, shape_label

DEPTH = 50
HISTORY = 4
VARIANTS = ("residual scan", "residual loop", f"mhc/simplex H{HISTORY} scan",
            f"mhc/softmax H{HISTORY} scan", f"hc H{HISTORY} scan",
            f"mhc/simplex H{HISTORY} loop", f"{LEARNED_SKIPS} H{HISTORY} scan",
            f"{LEARNED_SKIPS} H{HISTORY} G5 scan")
QUICK_VARIANTS = ("residual scan", f"mhc/simplex H{HISTORY} scan",
                  f"mhc/simplex H{HISTORY} loop", f"{LEARNED_SKIPS} H{HISTORY} G5 scan")


def timed_variant(name: str, width: int, batch: int) -> Variant:
    """A variant timing one step from the initial parameters: each call starts from a fresh
    copy of them (made untimed), so every step computes the same thing on finite values
    (SGD on the linear loss sum(out * g) diverges within a few hundred steps, and inf/NaN
    arithmetic would be timed instead)."""
    import jax
    import jax.numpy as jnp

    from benchmarks.jax_stacks import variant

    step, initial = variant(name, width, DEPTH)
    keys = jax.random.split(jax.random.key(1))
    x = jax.random.normal(keys[0], (batch, width))
    g = jax.random.normal(keys[1], (batch, width)) / (batch * width) ** 0.5
    state: dict[str, Any] = {}

    def prepare() -> None:
        state["params"] = jax.block_until_ready(jax.tree.map(jnp.copy, initial))

    def run() -> None:
        state["params"] = jax.block_until_ready(step(state["params"], x, g))
        if not state.get("checked"):  # the first call (which compiles)
            leaves = jax.tree.leaves(state["params"])
            if not all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves):
                raise RuntimeError(f"{name}: a step gives non-finite parameters; the timings "
                                   "would be void")
            state["checked"] = True

    return Variant(name, run, prepare)


def run(quick: bool) -> dict[str, object]:
    import jax

    load_before = machine.load_average()
    names = QUICK_VARIANTS if quick else VARIANTS
    shapes = [shape_label(*s) for s in (SHAPES[:2] if quick else SHAPES)]
    timings = {}
    for label in shapes:
        width, batch = parse_shape(label)
        print(f"jax_speed {label}: {len(names)} variants", flush=True)
        variants = [timed_variant(name, width, batch) for name in names]
        timings[label] = [t.summary() for t in run_interleaved(
            variants, warmup=3, min_rounds=20, max_rounds=300,
            budget_s=15.0 if quick else 60.0, log=lambda line: print(line, flush=True))]
    return {
        "section": "jax_speed",
        "quick": quick,
        "depth": DEPTH,
        "history": HISTORY,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "machine": machine.describe(),
        "load_before": load_before,
        "load_after": machine.load_average(),
        "shapes": timings,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 variants, 2 shapes")
    args = parser.parse_args(argv)
    path = write_result("jax_speed", run(args.quick))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
