"""Opt-in capture of the gradient highway: ||dLoss/ds_l||_2 for every state l = 0..L.

Armed by :meth:`mhc_torch.MHCSequential.capture_highway`, it records during the backward
pass of the next forward only; unarmed it costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def norm_of(grad: Tensor) -> Tensor:
    """||grad||_2 as a detached 0-d tensor, accumulated in at least float32."""
    dtype = torch.float64 if grad.dtype == torch.float64 else torch.float32
    return torch.linalg.vector_norm(grad.detach(), dtype=dtype)


class HighwayRecorder:
    """Holds the per-state gradient norms of one armed forward until they are popped."""

    def __init__(self) -> None:
        self._armed = False
        self._norms: list[Tensor | None] | None = None

    def arm(self) -> None:
        self._armed = True
        self._norms = None

    def start(self, depth: int) -> list[Tensor | None] | None:
        """For a forward: a fresh list of L+1 slots if armed (then disarm), else None."""
        if not self._armed:
            return None
        self._armed = False
        self._norms = [None] * (depth + 1)
        return self._norms

    def pop(self) -> Tensor | None:
        """The (L+1,) norms if a full backward filled them, else None; clears the record."""
        norms, self._norms = self._norms, None
        self._armed = False
        if norms is None or any(value is None for value in norms):
            return None
        return torch.stack(norms)

    def __getstate__(self) -> dict:
        # Captured norms belong to one step; copies of a model start unarmed and empty.
        return {"_armed": False, "_norms": None}


def norm_hook(norms: list[Tensor | None], index: int) -> Callable[[Tensor], None]:
    """A tensor hook storing ||grad|| of state ``index`` into ``norms``."""

    def hook(grad: Tensor) -> None:
        norms[index] = norm_of(grad)

    return hook
