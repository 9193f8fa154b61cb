"""Regenerated golden vectors against the committed files (both families)."""

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np


def compare(fresh, committed, path="", inputs=False):
    """Equal structure and metadata; inputs bit-identical; computed floats within 1e-12
    relative (room for last-ulp differences of SIMD exp/tanh between CPUs, nothing more)."""
    assert type(fresh) is type(committed), path
    if isinstance(fresh, dict):
        assert fresh.keys() == committed.keys(), path
        for key in fresh:
            compare(fresh[key], committed[key], f"{path}.{key}", inputs or key == "inputs")
    elif isinstance(fresh, list) and fresh and isinstance(fresh[0], str):
        assert fresh == committed, path
    elif isinstance(fresh, list):
        a, b = np.array(fresh, dtype=np.float64), np.array(committed, dtype=np.float64)
        if inputs:
            np.testing.assert_array_equal(a, b, err_msg=path)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-300, err_msg=path)
    elif isinstance(fresh, float) and not inputs:
        np.testing.assert_allclose(fresh, committed, rtol=1e-12, err_msg=path)
    else:
        assert fresh == committed, path


def assert_regenerates(write_vectors: Callable[[Path], list[Path]], committed: Path,
                       directory: Path) -> None:
    """Regenerate into ``directory``: the same files as ``committed``, equal by :func:`compare`."""
    written = write_vectors(directory)
    names = sorted(p.name for p in written)
    assert names == sorted(p.name for p in committed.glob("*.json")), "stale or missing files"
    for path in written:
        fresh = json.loads(path.read_text())
        compare(fresh, json.loads((committed / path.name).read_text()), path.name)
