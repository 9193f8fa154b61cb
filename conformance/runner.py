"""Run backends over the golden vectors and collect a matrix of worst errors."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from conformance.backends import Backend, Case
from conformance.tolerances import RTOL, errors, shared_scale, tolerance
from mhc_spec.streams.vectors import StreamCase


def flatten_expected(expected: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """{"weights": ..., "statistics.entropy": ..., "gradients.theta": ...}; None entries dropped."""
    flat: dict[str, np.ndarray] = {}
    for key, value in expected.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_expected(value, f"{name}."))
        elif value is not None:
            flat[name] = np.asarray(value, dtype=np.float64)
    return flat


def case_group(case: Case) -> str:
    """Matrix row of a case: its mode/constraint (or the edge-case and initialisation sets)
    and the dtype it runs in; stream-family rows start with "streams"."""
    if case.name.startswith("edge_"):
        family = "edge cases"
    elif case.name.startswith("init_"):
        family = "initialisations"
    else:
        family = case.config.kind
    if isinstance(case, StreamCase):
        if family == "mhc/sinkhorn":
            family += " dynamic" if case.config.dynamic else " static"
        family = f"streams {family}"
    return f"{family} {case.dtype}"


@dataclass
class Check:
    case: str
    quantity: str
    absolute: float
    relative: float
    passed: bool


@dataclass
class Cell:
    """One (group, backend) cell: the worst errors over its cases and what failed."""

    group: str
    backend: str
    status: str = "pass"  # "pass", "fail" or "not run"
    cases: int = 0
    worst_relative: float = 0.0
    worst_absolute: float = 0.0
    failures: list[str] = field(default_factory=list)
    reason: str = ""


def compare_case(case: Case, outputs: Mapping[str, np.ndarray]) -> list[Check]:
    """Every expected quantity of ``case`` against a backend's ``outputs``; a missing
    quantity fails. Parts of one vector share its scale (:func:`shared_scale`)."""
    expected = flatten_expected(case.expected)
    scales: dict[str, float] = {}
    for quantity, want in expected.items():
        prefix = shared_scale(quantity)
        if prefix is not None:
            scales[prefix] = max(scales.get(prefix, 0.0),
                                 float(np.max(np.abs(want), initial=0.0)))
    checks = []
    for quantity, want in expected.items():
        if quantity not in outputs:
            checks.append(Check(case.name, quantity, np.inf, np.inf, False))
            continue
        scale = scales.get(shared_scale(quantity) or "")
        absolute, relative = errors(outputs[quantity], want, scale)
        rtol = tolerance(case.name, quantity, case.dtype)
        checks.append(Check(case.name, quantity, absolute, relative, relative <= rtol))
    return checks


def run(backends: Iterable[Backend], cases: list[Case]) -> list[Cell]:
    """Cells for every group x backend; a backend that cannot run yields "not run" cells."""
    groups = list(dict.fromkeys(case_group(c) for c in cases))
    cells = []
    for backend in backends:
        reason = backend.unavailable()
        row = {g: Cell(g, backend.name) for g in groups}
        for cell in row.values():
            if reason:
                cell.status, cell.reason = "not run", reason
        if not reason:
            for case in cases:
                if not backend.selects(case):
                    continue
                cell = row[case_group(case)]
                cell.cases += 1
                try:
                    checks = compare_case(case, backend.run(case))
                except Exception as exc:  # a crash is a failure of that cell, not of the run
                    cell.status = "fail"
                    cell.worst_relative = cell.worst_absolute = float("inf")
                    cell.failures.append(f"{case.name}: {type(exc).__name__}: {exc}")
                    continue
                for check in checks:
                    cell.worst_relative = max(cell.worst_relative, check.relative)
                    cell.worst_absolute = max(cell.worst_absolute, check.absolute)
                    if not check.passed:
                        cell.status = "fail"
                        cell.failures.append(
                            f"{check.case}: {check.quantity} rel={check.relative:.2e}")
            for cell in row.values():
                if cell.cases == 0:
                    cell.status, cell.reason = "not run", "no case selected"
        cells.extend(row.values())
    return cells


def failed(cells: Iterable[Cell]) -> bool:
    return any(cell.status == "fail" for cell in cells)


def render_matrix(cells: list[Cell]) -> str:
    """Rows = case groups, columns = backends, cells = worst relative error and verdict."""
    backends = list(dict.fromkeys(c.backend for c in cells))
    groups = list(dict.fromkeys(c.group for c in cells))
    lookup = {(c.group, c.backend): c for c in cells}

    def text(cell: Cell) -> str:
        if cell.status == "not run":
            return "-" if cell.reason == "no case selected" else "not run"
        mark = "PASS" if cell.status == "pass" else "FAIL"
        return f"{mark} {cell.worst_relative:.1e} ({cell.cases})"

    width = max(len(g) for g in groups) + 2
    col = max(18, *(len(b) + 2 for b in backends))
    lines = ["group".ljust(width) + "".join(b.ljust(col) for b in backends)]
    lines.append("-" * len(lines[0]))
    for group in groups:
        lines.append(group.ljust(width) + "".join(
            text(lookup[(group, b)]).ljust(col) for b in backends))
    rtols = ", ".join(f"{k} {v:.0e}" for k, v in RTOL.items())
    lines.append("cells: verdict, worst norm-wise relative error, (cases); '-' = not in this "
                 f"backend's subset; tolerances {rtols}")
    reasons = {c.backend: c.reason for c in cells
               if c.status == "not run" and c.reason != "no case selected"}
    lines.extend(f"{backend}: not run ({reason})" for backend, reason in reasons.items())
    for cell in cells:
        for failure in cell.failures[:5]:
            lines.append(f"FAIL {cell.backend} / {cell.group}: {failure}")
    return "\n".join(lines)


def to_json(cells: list[Cell]) -> dict[str, Any]:
    return {"passed": not failed(cells), "cells": [asdict(c) for c in cells]}
