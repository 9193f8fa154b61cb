"""The dashboard's numbers for a :class:`~mhc_jax.streams.StreamSequential`, from the spec.

The coefficients a forward pass recorded (``forward(h, collect_coefficients=True)``) are
copied to host NumPy once and handed to
:func:`mhc_spec.streams.statistics.summary_from_coefficients`, so both dashboards compute
the token means of Hpre, Hpost, Hres and the forward / backward gains of each Hres_l and of
the composites P_l = Hres_l ... Hres_1 and Q_l = Hres_L ... Hres_{l+1} with one code.
"""

from __future__ import annotations

from functools import partial

import jax
import numpy as np
from flax import nnx

from mhc_jax.streams.sequential import StreamOutput, StreamSequential
from mhc_spec.streams.statistics import summary_from_coefficients


def coefficient_summary(coefficients: StreamOutput) -> dict[str, np.ndarray]:
    """:func:`~mhc_spec.streams.statistics.summary_from_coefficients` (float64) of the Hpre,
    Hpost (L, ..., n) and Hres (L, ..., n, n) of a ``forward(h, collect_coefficients=True)``."""
    if coefficients.hres is None:
        raise ValueError("the output holds no coefficients: run forward(h, "
                         "collect_coefficients=True)")
    hpre, hpost, hres = jax.device_get((coefficients.hpre, coefficients.hpost,
                                        coefficients.hres))
    return summary_from_coefficients(hpre, hpost, hres)


@partial(jax.jit, static_argnums=0)
def _coefficients(graphdef, state, h):
    out = nnx.merge(graphdef, state).forward(h, collect_coefficients=True)
    return out._replace(output=None)


def stream_statistics(model: StreamSequential, h: jax.Array) -> dict[str, np.ndarray]:
    """:func:`coefficient_summary` of ``model`` run on ``h`` (jitted once per model
    structure and input shape; the model is not changed)."""
    graphdef, state = nnx.split(model)
    return coefficient_summary(_coefficients(graphdef, state, h))
