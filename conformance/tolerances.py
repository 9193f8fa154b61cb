"""Tolerances and the error measure of the conformance suite.

For each compared array the error is norm-wise relative to the expected array:

    rel = max|got - want| / max|want|     (max|got - want| itself when want is all zero)

A cell passes when rel <= RTOL[dtype] for every array of every case in it.

The gradient with respect to the stream family's mixing parameters ("gradients.params.*")
is one vector split into arrays: each array's error is relative to the largest entry of the
whole vector (max over the case's "gradients.params.*"). Per-array scaling would divide
rounding noise by arrays that vanish in exact arithmetic: b_res and phi_res at
initialisation, where SK's reverse mode cancels the cotangent exactly and the spec's float64
value is ~1e-19 noise.
"""

from __future__ import annotations

import numpy as np

RTOL = {"float64": 1e-10, "float32": 1e-5}

# Documented exceptions, (case, quantity) -> rtol. At tau = 1e-3 the softmax is saturated
# (a_max = 1 - 3e-8) and its VJP a_i (g_i - <a, g>) cancels: any float64 evaluation of it,
# the spec's included, carries a relative error of about eps / (1 - a_max) = 4e-9.
RTOL_OVERRIDES = {("edge_softmax_tiny_tau", "gradients.theta"): 1e-7}
# Quantities whose arrays share one scale (see the module docstring).
SHARED_SCALE_PREFIXES = ("gradients.params.",)


def shared_scale(quantity: str) -> str | None:
    """The prefix of the vector ``quantity`` is a part of, or None for a standalone array."""
    return next((p for p in SHARED_SCALE_PREFIXES if quantity.startswith(p)), None)


def tolerance(case: str, quantity: str, dtype: str) -> float:
    """The rtol a quantity of a case must meet."""
    return RTOL_OVERRIDES.get((case, quantity), RTOL[dtype])


def errors(got: np.ndarray, want: np.ndarray, scale: float | None = None
           ) -> tuple[float, float]:
    """(max absolute error, norm-wise relative error) of ``got`` against ``want``, relative
    to ``scale`` when given (the largest entry of the vector ``want`` is a part of)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return float("inf"), float("inf")
    if not np.all(np.isfinite(got)):
        return float("inf"), float("inf")
    absolute = float(np.max(np.abs(got - want), initial=0.0))
    if scale is None:
        scale = float(np.max(np.abs(want), initial=0.0))
    return absolute, absolute / scale if scale > 0 else absolute
