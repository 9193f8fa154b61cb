"""The validated configuration of a multi-stream (DeepSeek mHC) stack.

Every error message about a bad argument is written here once; backends build a
:class:`StreamConfig` from their keyword arguments and let it raise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mhc_spec.config import check_bool, check_choice, check_float, check_int

STREAM_MODES = ("mhc", "hc")
REDUCES = ("sum", "mean", "gated")
PRE_INITS = ("cyclic", "uniform")
SINKHORN = "sinkhorn"
DEFAULT_SINKHORN_ITERATIONS = 20
DEFAULT_A_INIT = 0.01
DEFAULT_RMS_EPS = 1e-6

# A user projection maps Hres logits (..., n, n) to Hres (..., n, n).
ResidualProjection = Callable[[np.ndarray], np.ndarray]
Constraint = str | ResidualProjection


def check_constraint(value: Any) -> Constraint:
    """``value`` as ``"sinkhorn"`` or a callable (a user-supplied Hres projection)."""
    if callable(value) or value == SINKHORN:
        return value
    raise ValueError(
        f"constraint={value!r} is invalid: constraint must be 'sinkhorn' or a callable "
        "mapping Hres logits of shape (..., n, n) to a matrix of the same shape."
    )


@dataclass(frozen=True)
class StreamConfig:
    """Hyper-parameters of an n-stream stack; validated when constructed.

    - ``streams`` (n >= 1): number of parallel residual streams.
    - ``mode``: ``"mhc"`` (Hres = P(Hres~), P the ``constraint``) or ``"hc"`` (unconstrained
      Hres = Hres~, initialised to the identity; Hpre and Hpost keep their sigmoids, so the
      manifold is the only difference between the two).
    - ``constraint`` (mhc only): ``"sinkhorn"`` or a callable projection of Hres logits.
    - ``sinkhorn_iterations`` (T >= 1): column-then-row normalisations of Sinkhorn-Knopp.
    - ``dynamic``: coefficients depend on each token through RMSNorm(flatten(X)) @ phi
      (the paper's default); static coefficients are the biases b alone.
    - ``reduce``: the streams' read-out, ``"sum"``, ``"mean"`` or ``"gated"``
      (sum_i sigmoid(r_i) X[i] with learned logits r).
    - ``rms_eps`` (> 0): RMSNorm's epsilon, x' = x / sqrt(mean(x^2) + eps).
    - ``a_init``: initial value of the scales a_pre, a_post, a_res of the dynamic terms.
    - ``pre_init``: initial Hpre of layer l, ``"cyclic"`` (1/2 + 1/(2n) on stream l mod n,
      1/(2n) on the others) or ``"uniform"`` (1/n everywhere). Both sum to 1, so the
      initial network is the residual network; ``"uniform"`` is symmetric under permuting
      the streams, so gradient descent keeps them equal forever (b_res and phi_res get zero
      gradient); ``"cyclic"`` breaks the symmetry as HC's per-layer one-hot A_m init does.
    """

    streams: int = 4
    mode: str = "mhc"
    constraint: Constraint = SINKHORN
    sinkhorn_iterations: int = DEFAULT_SINKHORN_ITERATIONS
    dynamic: bool = True
    reduce: str = "sum"
    rms_eps: float = DEFAULT_RMS_EPS
    a_init: float = DEFAULT_A_INIT
    pre_init: str = "cyclic"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "streams", check_int("streams", self.streams, 1))
        check_choice("mode", self.mode, STREAM_MODES)
        check_constraint(self.constraint)
        set_(self, "sinkhorn_iterations",
             check_int("sinkhorn_iterations", self.sinkhorn_iterations, 1))
        check_bool("dynamic", self.dynamic)
        check_choice("reduce", self.reduce, REDUCES)
        set_(self, "rms_eps", check_float("rms_eps", self.rms_eps, "> 0", lambda v: v > 0))
        set_(self, "a_init", check_float("a_init", self.a_init, "", lambda v: True))
        check_choice("pre_init", self.pre_init, PRE_INITS)

    @property
    def constrained(self) -> bool:
        """Whether Hres is projected (mode ``"mhc"``) rather than free (``"hc"``)."""
        return self.mode == "mhc"

    @property
    def kind(self) -> str:
        """A short label: ``"mhc/sinkhorn"``, ``"mhc/custom"`` or ``"hc"``."""
        if self.mode == "hc":
            return "hc"
        return "mhc/sinkhorn" if self.constraint == SINKHORN else "mhc/custom"

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain values; a user-supplied projection cannot be serialised."""
        if self.constraint != SINKHORN:
            raise ValueError(
                f"constraint={self.constraint!r} is a user-supplied projection: only "
                "constraint='sinkhorn' can be written to a dict."
            )
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamConfig:
        return cls(**data)
