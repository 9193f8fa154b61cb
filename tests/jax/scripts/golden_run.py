"""Run the golden vectors of one dtype through one mhc_jax build and save what it computed.

Usage: python golden_run.py {loop,scan} {float32,float64} OUT.npz

Run as its own process: float64 needs ``jax_enable_x64`` (set here, before JAX starts),
and keeping it out of the pytest process keeps it from leaking into other tests. XLA's
backend optimisation is lowered: for these tiny graphs compile time is all that costs.
"""

import os
import sys

if sys.argv[2] == "float64":
    os.environ["JAX_ENABLE_X64"] = "1"
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from jax_golden_models import build, run  # noqa: E402

from mhc_spec.vectors import default_directory, load_vectors  # noqa: E402


def main() -> None:
    build_name, dtype_name, out = sys.argv[1:4]
    arrays = {}
    for case in load_vectors(default_directory()):
        if case.dtype != dtype_name:
            continue
        dtype = jnp.dtype(case.dtype)
        result = run(build(case, build_name == "scan", dtype), case, dtype)
        arrays[f"{case.name}/states"] = result.states
        arrays[f"{case.name}/weights"] = result.weights
        arrays[f"{case.name}/gates"] = result.gates
        for name, value in result.gradients.items():
            if value is not None:
                arrays[f"{case.name}/d_{name}"] = value
    np.savez(out, **arrays)


if __name__ == "__main__":
    main()
