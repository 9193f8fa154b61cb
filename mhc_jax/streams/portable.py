"""Parameter exchange of stream stacks through the portable NumPy dict of
:mod:`mhc_spec.streams.parameters`.

Keys: ``streams.<name>`` for the mixing parameters (``phi_pre`` (L, n*C, n), ``phi_post``,
``phi_res`` (L, n*C, n, n), ``a_*`` (L,), ``b_pre``, ``b_post`` (L, n), ``b_res`` (L, n, n),
``reduce_logits`` (n,); those of the configuration only), and ``blocks.<l>.<name>`` for
block l in the PyTorch ``state_dict`` convention with the layouts of
:mod:`mhc_jax.portable` (``nnx.Linear``'s kernel transposed to (out, in), ...), for both
builds (the scan build's stacked arrays are split per layer).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mhc_jax.portable import export_blocks, load_blocks
from mhc_jax.streams.coefficients import PARAMETER_NAMES
from mhc_jax.streams.sequential import StreamSequential
from mhc_spec.streams import check_parameters, from_portable, to_portable
from mhc_spec.streams.parameters import PREFIX, REDUCE_LOGITS


def _variables(model: StreamSequential) -> dict[str, nnx.Param]:
    """The model's mixing variables by portable key."""
    variables = {PREFIX + name: getattr(model.mixing, name) for name in PARAMETER_NAMES}
    variables[REDUCE_LOGITS] = model.readout.reduce_logits
    return {key: v for key, v in variables.items() if v is not None}


def export_portable(model: StreamSequential) -> dict[str, np.ndarray]:
    """The portable dict of ``model`` (arrays in their own dtype, torch layouts)."""
    params = {key: np.asarray(v[...]) for key, v in _variables(model).items()}
    return to_portable(params, export_blocks(model))


def load_portable(model: StreamSequential, portable: Mapping[str, np.ndarray]) -> None:
    """Set ``model``'s parameters from a portable dict (cast to the model's dtypes); the keys
    must be exactly those :func:`export_portable` writes (``KeyError`` otherwise,
    ``ValueError`` for a wrong shape)."""
    params, blocks = from_portable(portable)
    check_parameters(model.config, params, model.depth, model.width)
    if len(blocks) != model.depth:
        raise KeyError(f"portable dict holds {len(blocks)} blocks; the model has {model.depth}")
    for key, variable in _variables(model).items():
        variable[...] = jnp.asarray(params[key], dtype=variable.dtype)
    load_blocks(model, blocks)
