"""mhc_torch: manifold-constrained hyper-connections for PyTorch.

``MHCSequential`` wraps a stack of blocks; ``MHCSkip`` with a ``HistoryBuffer`` is the same
skip path for hand-written loops. ``StreamSequential`` (with ``StreamLayer``,
``expand_streams`` and ``StreamReduce`` for hand-written loops) is the multi-stream family
(DeepSeek mHC). The maths and validation live in :mod:`mhc_spec`.
"""

from __future__ import annotations

from typing import Any

from mhc_torch.history import HistoryBuffer, reset_history
from mhc_torch.sequential import MHCSequential, iter_mhc_modules
from mhc_torch.skip import MHCSkip
from mhc_torch.streams import (
    StreamCoefficients,
    StreamLayer,
    StreamReduce,
    StreamSequential,
    expand_streams,
)

__all__ = [
    "HistoryBuffer",
    "MHCLightningCallback",
    "MHCSequential",
    "MHCSkip",
    "StreamCoefficients",
    "StreamLayer",
    "StreamReduce",
    "StreamSequential",
    "expand_streams",
    "iter_mhc_modules",
    "reset_history",
]


def __getattr__(name: str) -> Any:
    # The callback imports lightning: load it only when asked for.
    if name == "MHCLightningCallback":
        from mhc_torch.callback import MHCLightningCallback

        return MHCLightningCallback
    raise AttributeError(f"module 'mhc_torch' has no attribute {name!r}")
