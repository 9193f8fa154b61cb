"""The committed golden vectors are exactly what the spec generates today."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from golden_compare import assert_regenerates

from mhc_spec import SPEC_VERSION
from mhc_spec.golden_files import MANIFEST
from mhc_spec.vectors import all_cases, default_directory, write_vectors

COMMITTED = default_directory()


def test_regenerated_vectors_equal_the_committed_files(tmp_path):
    assert_regenerates(write_vectors, COMMITTED, tmp_path)


def test_vectors_cover_the_required_grid():
    docs = [json.loads(p.read_text()) for p in COMMITTED.glob("*.json") if p.name != MANIFEST]
    configs = [d["config"] for d in docs]
    kinds = {(c["mode"], c["constraint"] if c["mode"] == "mhc" else "") for c in configs}
    assert kinds == {("residual", ""), ("hc", ""), ("mhc", "simplex"), ("mhc", "softmax"),
                     ("mhc", "identity")}
    assert {c["max_history"] for c in configs} >= {1, 2, 4, 7}
    assert {len(d["inputs"]["weight"]) for d in docs} >= {1, 3, 9}
    assert {c["gating"] for c in configs} == {True, False}
    assert {c["temperature"] for c in configs} >= {0.5, 1.0, 3.0, 1e-3}
    assert {d["block_kind"] for d in docs} == {"linear", "tanh_linear"}
    assert {np.array(d["inputs"]["x"]).ndim for d in docs} == {2, 3}
    assert {d["dtype"] for d in docs} == {"float64", "float32"}
    assert all(d["spec_version"] == SPEC_VERSION for d in docs)
    assert len(docs) == len(all_cases())


def test_float32_cases_have_float32_inputs():
    for path in COMMITTED.glob("*.json"):
        doc = json.loads(path.read_text())
        if path.name == MANIFEST or doc["dtype"] != "float32":
            continue
        for name, value in doc["inputs"].items():
            if value is not None:
                v = np.array(value)
                np.testing.assert_array_equal(v.astype(np.float32).astype(np.float64), v, name)


def test_vectors_are_small():
    total = sum(p.stat().st_size for p in Path(COMMITTED).iterdir())
    assert total < 10_000_000


def test_spec_imports_nothing_but_numpy():
    code = (
        "import sys, mhc_spec, mhc_spec.vectors;"
        "bad = [m for m in ('torch', 'jax', 'flax', 'matplotlib', 'scipy', 'lightning')"
        " if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
