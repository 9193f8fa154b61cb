"""mhc_torch.streams: DeepSeek's multi-stream mHC (arXiv 2512.24880) in PyTorch.

``StreamSequential`` wraps a stack of branches on n residual streams; ``StreamLayer`` with
``expand_streams`` and ``StreamReduce`` is the same stack for hand-written loops. The maths
and validation live in :mod:`mhc_spec.streams`.
"""

from mhc_torch.streams.layer import StreamLayer
from mhc_torch.streams.readout import StreamReduce, expand_streams
from mhc_torch.streams.sequential import StreamCoefficients, StreamSequential
from mhc_torch.streams.sinkhorn import sinkhorn

__all__ = [
    "StreamCoefficients",
    "StreamLayer",
    "StreamReduce",
    "StreamSequential",
    "expand_streams",
    "sinkhorn",
]
