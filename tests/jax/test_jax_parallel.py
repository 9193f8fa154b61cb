"""Data parallelism on 2 forced host devices (a subprocess: XLA_FLAGS must be set before JAX
starts): the pmap and the shard_map steps keep the replicas identical, and one step on a
global batch split over 2 devices equals the single-device step on the whole batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "data_parallel.py"
TIMEOUT_S = 300
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def report() -> dict:
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("step", ["pmap", "shard_map"])
def test_split_batch_step_equals_single_device_step(report, optimizer: str, step: str) -> None:
    assert report["devices"] == 2
    result = report[optimizer]
    # The step really moves the parameters, so the comparisons below are not vacuous.
    assert result["moved"] > 1e-3
    assert result[f"{step}_vs_single"] <= TOLERANCE
    assert result[f"{step}_loss_vs_single"] <= TOLERANCE
    assert result[f"{step}_replicas"] == 0.0
    assert result[f"{step}_replicas_after_steps"] == 0.0
    if step == "pmap":
        assert result["pmap_losses_equal"]
