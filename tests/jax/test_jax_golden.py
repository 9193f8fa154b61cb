"""Every golden vector through both builds: states, weights, gates and every gradient of
loss = sum(G * s_L) against the spec.

The builds run in subprocesses (scripts/golden_run.py): float64 needs jax_enable_x64, which
must not leak into this process, and XLA's compile options there are tuned for the tiny
graphs. Parameters go in through ``load_portable`` (so the exchange format is exercised too)
and gradients come back through ``export_portable`` (torch layouts).

Tolerances, per array e of the spec and a of mhc_jax:
|a - e| <= rtol * |e| + atol, atol = a_scale * max(1, max|e|), with
float64: rtol = 1e-10, a_scale = 1e-12; float32: rtol = 1e-5, a_scale = 1e-6. The atol only
matters for entries that are near zero next to the rest of their array (exact zeros of
sparsemax gradients, cancellations).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mhc_spec.vectors import GoldenCase, default_directory, load_vectors

SCRIPT = Path(__file__).parent / "scripts" / "golden_run.py"
TOLERANCES = {"float64": (1e-10, 1e-12), "float32": (1e-5, 1e-6)}
BUILDS = ("loop", "scan")
CASES = load_vectors(default_directory())
RUN_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def computed(tmp_path_factory) -> dict[tuple[str, str], np.lib.npyio.NpzFile]:
    """Launch the four (build, dtype) runs, two at a time, and load their arrays."""
    folder = tmp_path_factory.mktemp("golden")
    jobs = [(build, dtype) for build in BUILDS for dtype in TOLERANCES]
    results = {}
    for start in range(0, len(jobs), 2):
        running = []
        for build, dtype in jobs[start:start + 2]:
            out = folder / f"{build}-{dtype}.npz"
            process = subprocess.Popen(
                [sys.executable, str(SCRIPT), build, dtype, str(out)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            running.append((build, dtype, out, process))
        for build, dtype, out, process in running:
            log, _ = process.communicate(timeout=RUN_TIMEOUT_S)
            assert process.returncode == 0, f"golden run {build}/{dtype} failed:\n{log}"
            results[(build, dtype)] = np.load(out)
    return results


def _expected(case: GoldenCase) -> dict[str, np.ndarray]:
    expected = {name: case.expected[name] for name in ("states", "weights", "gates")}
    for name, value in case.expected["gradients"].items():
        if value is not None:
            expected[f"d_{name}"] = value
    return expected


@pytest.mark.slow
@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_golden_vector(computed, case: GoldenCase, build: str) -> None:
    arrays = computed[(build, case.dtype)]
    rtol, scale = TOLERANCES[case.dtype]
    present = {key.split("/", 1)[1] for key in arrays.files if key.startswith(f"{case.name}/")}
    expected = _expected(case)
    # Parameters that the spec does not have (theta for residual, gamma without gating)
    # must not exist in the model either.
    assert present == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(
            arrays[f"{case.name}/{name}"], value, rtol=rtol,
            atol=scale * max(1.0, float(np.max(np.abs(value)))),
            err_msg=f"{case.name} [{build}, {case.dtype}] {name}")
