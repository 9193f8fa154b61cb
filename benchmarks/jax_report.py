"""The JAX part of RESULTS.md (formatting only; importing it does not import JAX)."""

from __future__ import annotations

from benchmarks.targets import Results


def section(results: Results) -> list[str]:
    return []
