"""JAX: compile time of the jitted train step, loop build vs scan build, against depth.

One fresh process per (build, depth), so no trace or compilation cache is shared; each first
jits a tiny unrelated function (backend start-up is not counted). Measured: tracing and
lowering (``jax.jit(step).lower(...)``) and XLA compilation (``.compile()``) of the SGD train
step at width 64, batch 64, H=4, mhc/simplex; the pure-JAX residual stack (scan and loop)
for reference.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from benchmarks import machine
from benchmarks.results_io import write_result

DEPTHS = (25, 50, 100, 200)
QUICK_DEPTHS = (25, 200)
WIDTH = 64
BATCH = 64
BUILDS = {"scan": "mhc/simplex H4 scan", "loop": "mhc/simplex H4 loop",
          "residual scan": "residual scan", "residual loop": "residual loop"}


def child(build: str, depth: int) -> dict[str, float]:
    """In a fresh process: seconds to trace+lower and to compile one train step."""
    import jax
    import jax.numpy as jnp

    from benchmarks.jax_stacks import variant

    jax.jit(lambda v: jnp.sin(v) * 2.0)(jnp.ones(3)).block_until_ready()
    start = time.perf_counter()
    step, params = variant(BUILDS[build], WIDTH, depth)
    built = time.perf_counter()
    x = jnp.ones((BATCH, WIDTH))
    lowered = step.lower(params, x, x)
    traced = time.perf_counter()
    lowered.compile()
    compiled = time.perf_counter()
    return {"build_model_s": built - start, "trace_lower_s": traced - built,
            "xla_compile_s": compiled - traced, "compile_s": compiled - built}


def run(quick: bool) -> dict[str, object]:
    load_before = machine.load_average()
    rows = []
    builds = ("scan", "loop", "residual scan") if quick else tuple(BUILDS)
    for build in builds:
        for depth in QUICK_DEPTHS if quick else DEPTHS:
            command = [sys.executable, "-m", "benchmarks.jax_compile", "--child", build,
                       "--depth", str(depth)]
            result = subprocess.run(command, check=True, capture_output=True, text=True,
                                    timeout=900)
            row = {"build": build, "depth": depth,
                   **json.loads(result.stdout.strip().splitlines()[-1])}
            print(f"  {build} depth {depth}: trace+lower {row['trace_lower_s']:.2f}s, "
                  f"compile {row['xla_compile_s']:.2f}s", flush=True)
            rows.append(row)
    return {"section": "jax_compile", "quick": quick, "width": WIDTH, "batch": BATCH,
            "variants": BUILDS, "machine": machine.describe(), "load_before": load_before,
            "load_after": machine.load_average(), "rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="depths 25 and 200 only")
    parser.add_argument("--child", choices=tuple(BUILDS), help=argparse.SUPPRESS)
    parser.add_argument("--depth", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.depth)))
        return
    path = write_result("jax_compile", run(args.quick))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
