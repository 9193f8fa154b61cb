"""The validated configuration shared by every backend.

Every error message about a bad argument is written here once; the PyTorch and JAX
modules build an :class:`MHCConfig` from their keyword arguments and let it raise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

MODES = ("residual", "hc", "mhc")
CONSTRAINTS = ("simplex", "softmax", "identity")
INITS = ("recent", "uniform", "newest")

# sigmoid(3.0) = 0.9526: a gated stack starts close to the ungated one, and the gate
# still receives a useful gradient (sigmoid'(3.0) = 0.045).
DEFAULT_GATE_INIT = 3.0
# Logit given to the newest state by init="recent" (the spec's documented value).
RECENT_LOGIT = 0.5


def _fail(name: str, value: Any, allowed: str, exc: type[Exception] = ValueError) -> None:
    raise exc(f"{name}={value!r} is invalid: {name} must be {allowed}.")


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (bools and floats are rejected)."""
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(name, value, f"an integer >= {minimum}", TypeError)
    if value < minimum:
        _fail(name, value, f"an integer >= {minimum}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a bool (truthy non-bools such as 1 or "yes" are rejected)."""
    if not isinstance(value, bool):
        _fail(name, value, "True or False", TypeError)
    return value


def check_float(name: str, value: Any, allowed: str, ok: Any) -> float:
    """``value`` as a finite float accepted by the predicate ``ok``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(name, value, f"a real number {allowed}", TypeError)
    value = float(value)
    if not math.isfinite(value) or not ok(value):
        _fail(name, value, f"a finite number {allowed}")
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` as one of the strings in ``choices``."""
    if not isinstance(value, str) or value not in choices:
        _fail(name, value, "one of " + ", ".join(repr(c) for c in choices))
    return value


@dataclass(frozen=True)
class MHCConfig:
    """Hyper-parameters of a history-mixing stack; validated when constructed.

    - ``max_history`` (H >= 1): number of past states each layer mixes.
    - ``mode``: ``"residual"`` (a = e_{K-1}), ``"hc"`` (a = z), ``"mhc"`` (a = P(z / tau)).
    - ``constraint`` (mhc only): ``"simplex"`` (sparsemax), ``"softmax"``, or
      ``"identity"`` (a = eps * e_{K-1} + (1 - eps) * sparsemax(z / tau)).
    - ``temperature`` (tau > 0) and ``epsilon`` (in [0, 1)).
    - ``init``: ``"recent"`` (zeros, theta[H-1] = 0.5; default for mhc), ``"uniform"``
      (zeros), ``"newest"`` (one-hot e_{H-1}; default for hc, an exact ResNet at init).
    - ``gating``: multiply the mix by sigmoid(gamma_l), gamma_l initialised to ``gate_init``.
    """

    max_history: int = 4
    mode: str = "mhc"
    constraint: str = "simplex"
    temperature: float = 1.0
    epsilon: float = 0.1
    init: str | None = None
    gating: bool = False
    gate_init: float = DEFAULT_GATE_INIT

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "max_history", check_int("max_history", self.max_history, 1))
        check_choice("mode", self.mode, MODES)
        check_choice("constraint", self.constraint, CONSTRAINTS)
        set_(self, "temperature",
             check_float("temperature", self.temperature, "> 0", lambda v: v > 0))
        set_(self, "epsilon",
             check_float("epsilon", self.epsilon, "in [0, 1)", lambda v: 0 <= v < 1))
        if self.init is not None:
            check_choice("init", self.init, INITS)
        check_bool("gating", self.gating)
        set_(self, "gate_init", check_float("gate_init", self.gate_init, "", lambda v: True))

    @property
    def has_logits(self) -> bool:
        """Whether the layers own mixing logits theta (every mode but ``residual``)."""
        return self.mode != "residual"

    @property
    def resolved_init(self) -> str:
        """The init actually used: ``init`` or the mode's default."""
        if self.init is not None:
            return self.init
        return "newest" if self.mode == "hc" else "recent"

    @property
    def kind(self) -> str:
        """A short label such as ``"mhc/simplex"``, ``"hc"`` or ``"residual"``."""
        return f"mhc/{self.constraint}" if self.mode == "mhc" else self.mode

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MHCConfig:
        return cls(**data)


def check_depth(depth: Any) -> int:
    """The number of layers L of a stack: an integer >= 1."""
    return check_int("depth", depth, 1)
