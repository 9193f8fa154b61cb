"""Backends under test. Each adapter builds its framework's model from a golden case, runs
forward and backward of loss = sum(G * s_L), and returns the quantities named as in the
case's ``expected`` dict, flattened (``"states"``, ``"statistics.entropy"``,
``"gradients.theta"``...). Frameworks are imported lazily: a missing one is "not run".
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod

import numpy as np

from mhc_spec.streams.vectors import StreamCase
from mhc_spec.vectors import GoldenCase

# A case of either family: history mixing (GoldenCase) or multi-stream mHC (StreamCase).
Case = GoldenCase | StreamCase


class Backend(ABC):
    """One column of the conformance matrix."""

    name: str
    requires: tuple[str, ...] = ()

    def unavailable(self) -> str | None:
        """Why this backend cannot run here, or None."""
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        return f"{', '.join(missing)} not installed" if missing else None

    def selects(self, case: Case) -> bool:
        """Whether this backend runs ``case`` (all by default)."""
        return True

    @abstractmethod
    def run(self, case: Case) -> dict[str, np.ndarray]:
        """The flattened outputs of ``case`` computed by this backend."""


def all_backends() -> list[Backend]:
    """Every backend the suite knows, in matrix column order."""
    from conformance.backends.jax_backend import JaxBackend
    from conformance.backends.torch_backend import TorchBackend

    return [TorchBackend(compiled=False), TorchBackend(compiled=True),
            JaxBackend(build="loop"), JaxBackend(build="scan")]
