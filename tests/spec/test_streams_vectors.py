"""The committed stream-family golden vectors are exactly what the spec generates today, and
they cover the grid the issue asks for."""

import json
import subprocess
import sys

import numpy as np
from golden_compare import assert_regenerates

from mhc_spec import SPEC_VERSION
from mhc_spec.golden_files import MANIFEST
from mhc_spec.streams.vectors import (
    all_cases,
    default_directory,
    load_vectors,
    write_vectors,
)

COMMITTED = default_directory()


def test_regenerated_vectors_equal_the_committed_files(tmp_path):
    assert_regenerates(write_vectors, COMMITTED, tmp_path)


def documents():
    return [json.loads(p.read_text()) for p in COMMITTED.glob("*.json") if p.name != MANIFEST]


def test_vectors_cover_the_required_grid():
    docs = documents()
    configs = [d["config"] for d in docs]
    assert {c["streams"] for c in configs} == {1, 2, 4}
    assert {c["sinkhorn_iterations"] for c in configs} >= {1, 5, 20}
    assert {c["dynamic"] for c in configs} == {True, False}
    assert {c["reduce"] for c in configs} == {"sum", "mean", "gated"}
    assert {(c["dynamic"], c["reduce"]) for c in configs} == {
        (d, r) for d in (True, False) for r in ("sum", "mean", "gated")}
    assert {c["mode"] for c in configs} == {"mhc", "hc"}
    assert {(c["streams"], c["sinkhorn_iterations"], c["dynamic"]) for c in configs} >= {
        (n, t, d) for n in (1, 2, 4) for t in (1, 5, 20) for d in (True, False)}
    assert {d["block_kind"] for d in docs} == {"linear", "tanh_linear"}
    assert {np.array(d["inputs"]["h"]).ndim for d in docs} == {2, 3}
    assert {d["dtype"] for d in docs} == {"float64", "float32"}
    assert all(d["spec_version"] == SPEC_VERSION for d in docs)
    assert len(docs) == len(all_cases())


def test_random_cases_mix_distinct_streams_with_non_symmetric_hres():
    # Hres only matters once the streams differ (they start as n copies of h). A 2 x 2
    # doubly stochastic matrix is symmetric, so n = 2 is non-symmetric only while SK has
    # not converged (T = 1); every random n = 4 case must mix distinct streams.
    mixing = set()
    for case in load_vectors(COMMITTED):
        hres, states = case.expected["hres"], case.expected["states"]
        asymmetry = np.abs(hres - np.swapaxes(hres, -1, -2)).max(axis=(-2, -1))
        spread = np.abs(states - states[..., :1, :]).max(axis=(-2, -1))
        if np.any((asymmetry[1:] > 0.05) & (spread[1:-1] > 0.05)):
            mixing.add(case.name)
    four = {c.name for c in load_vectors(COMMITTED)
            if c.config.streams == 4 and not c.name.startswith("init_")}
    assert four <= mixing
    assert len(mixing) >= 12


def test_float32_cases_have_float32_inputs():
    def check(value, name):
        if isinstance(value, dict):
            for key, item in value.items():
                check(item, f"{name}.{key}")
        else:
            v = np.array(value)
            np.testing.assert_array_equal(v.astype(np.float32).astype(np.float64), v, name)

    for doc in documents():
        if doc["dtype"] == "float32":
            check(doc["inputs"], doc["name"])


def test_vectors_are_small():
    total = sum(p.stat().st_size for p in COMMITTED.iterdir())
    assert total < 3_000_000


def test_streams_import_nothing_but_numpy():
    code = (
        "import sys, mhc_spec.streams, mhc_spec.streams.vectors;"
        "bad = [m for m in ('torch', 'jax', 'flax', 'matplotlib', 'scipy', 'lightning')"
        " if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
