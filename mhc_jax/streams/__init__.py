"""mhc_jax.streams: the Flax NNX twin of DeepSeek's multi-stream mHC (arXiv 2512.24880),
checked against :mod:`mhc_spec.streams` and its golden vectors.

- :class:`StreamSequential`: an n-stream stack, built from a list of modules (Python loop)
  or from a block constructor and a depth (stacked, ``jax.lax.scan``);
  ``forward(h, collect_coefficients=True)`` also returns every layer's Hpre, Hpost, Hres.
- :class:`StreamLayer`, :func:`expand_streams` and :class:`StreamReduce`: the pieces for
  hand-written loops.
- :func:`sinkhorn`: Sinkhorn-Knopp; :func:`export_portable` / :func:`load_portable`: the
  parameter exchange with PyTorch; :func:`coefficient_summary` / :func:`stream_statistics`:
  the dashboard's numbers.
"""

from mhc_jax.streams.coefficients import LayerCoefficients, StreamMixing
from mhc_jax.streams.layer import StreamLayer, expand_streams
from mhc_jax.streams.portable import export_portable, load_portable
from mhc_jax.streams.reduce import StreamReduce
from mhc_jax.streams.sequential import StreamOutput, StreamSequential
from mhc_jax.streams.sinkhorn import sinkhorn
from mhc_jax.streams.statistics import coefficient_summary, stream_statistics

__all__ = [
    "LayerCoefficients",
    "StreamLayer",
    "StreamMixing",
    "StreamOutput",
    "StreamReduce",
    "StreamSequential",
    "coefficient_summary",
    "expand_streams",
    "export_portable",
    "load_portable",
    "sinkhorn",
    "stream_statistics",
]
