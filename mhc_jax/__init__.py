"""mhc_jax: the Flax NNX twin of mhc_torch, checked against the NumPy spec ``mhc_spec``.

- :class:`MHCSequential`: a stack with history-mixing skip connections, built from a list of
  modules (Python loop) or from a block constructor and a depth (stacked, ``nnx.scan``).
- :class:`MHCSkip`: one layer's mixing for hand-written loops; :class:`History`: the window.
- :mod:`mhc_jax.statistics` and :mod:`mhc_jax.tensorboard` (imported on its own: it needs
  TensorBoard and Matplotlib): the dashboard's numbers and pictures;
  :mod:`mhc_jax.parallel`: data-parallel train steps (pmap, shard_map); :mod:`mhc_jax.portable`:
  parameter exchange with PyTorch; ``python -m mhc_jax.demo``: the digits demo.
- :mod:`mhc_jax.streams`: the multi-stream family (DeepSeek mHC): :class:`StreamSequential`,
  :class:`StreamLayer`, :func:`expand_streams`, :class:`StreamReduce`,
  :func:`stream_statistics`; its parameter exchange is ``mhc_jax.streams.export_portable``
  and ``load_portable``.
"""

from mhc_jax.history import History
from mhc_jax.mixing import MHCMixing, MHCSkip
from mhc_jax.portable import export_portable, load_portable
from mhc_jax.sequential import MHCSequential, StackOutput
from mhc_jax.statistics import (
    Highway,
    MixingStatistics,
    highway,
    mixing_statistics,
    state_gradients,
)
from mhc_jax.streams import (
    StreamLayer,
    StreamOutput,
    StreamReduce,
    StreamSequential,
    expand_streams,
    stream_statistics,
)

__all__ = [
    "Highway",
    "History",
    "MHCMixing",
    "MHCSequential",
    "MHCSkip",
    "MixingStatistics",
    "StackOutput",
    "StreamLayer",
    "StreamOutput",
    "StreamReduce",
    "StreamSequential",
    "expand_streams",
    "export_portable",
    "highway",
    "load_portable",
    "mixing_statistics",
    "state_gradients",
    "stream_statistics",
]
