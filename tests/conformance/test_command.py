"""CI runs ``python -m conformance`` over every backend; any failing or missing cell fails."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_every_backend_matches_the_spec(tmp_path):
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "conformance", "--json", str(report)],
        capture_output=True, text=True, timeout=1500,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    cells = json.loads(report.read_text())["cells"]
    assert {c["backend"] for c in cells} == {"torch-eager", "torch-compiled", "jax-loop",
                                             "jax-scan"}
    # Both frameworks are installed here: "not run" would hide a broken backend.
    missing = [c for c in cells if c["status"] == "not run" and c["reason"] != "no case selected"]
    assert not missing
    for backend in ("torch-eager", "jax-loop", "jax-scan"):
        assert all(c["status"] == "pass" for c in cells if c["backend"] == backend)
    assert sum(c["cases"] for c in cells if c["backend"] == "torch-compiled") >= 4


def test_backend_filter_and_unknown_backend(tmp_path):
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "conformance", "--backend", "torch-eager", "--json", str(report)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "torch-eager" in result.stdout and "jax-loop" not in result.stdout
    assert {c["backend"] for c in json.loads(report.read_text())["cells"]} == {"torch-eager"}
    bad = subprocess.run([sys.executable, "-m", "conformance", "--backend", "numpy-magic"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "numpy-magic" in bad.stderr
