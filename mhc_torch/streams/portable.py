"""Conversion between a :class:`StreamSequential` and the portable NumPy dict of the spec.

Keys (:mod:`mhc_spec.streams.parameters`): ``"streams.phi_pre"`` ... ``"streams.b_res"``,
``"streams.reduce_logits"`` (gated) and ``"blocks.<l>.<state_dict key of block l>"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from mhc_spec.streams import check_parameters, to_portable
from mhc_spec.streams.parameters import PREFIX, REDUCE_LOGITS
from mhc_torch.streams.layer import DYNAMIC_NAMES, STATIC_NAMES

if TYPE_CHECKING:
    from mhc_torch.streams.sequential import StreamSequential

BLOCK_PREFIX = "blocks."


def stream_tensors(model: StreamSequential) -> dict[str, Tensor]:
    """The mixing parameters of ``model`` by portable key."""
    tensors = {PREFIX + name: getattr(model, name) for name in (*DYNAMIC_NAMES, *STATIC_NAMES)}
    tensors[REDUCE_LOGITS] = model.readout.reduce_logits
    return {key: value for key, value in tensors.items() if value is not None}


def _to_numpy(tensor: Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()  # NumPy has no bfloat16
    return tensor.numpy().copy()


def stream_portable(model: StreamSequential) -> dict[str, np.ndarray]:
    """Every mixing parameter and every block's ``state_dict`` as NumPy arrays."""
    return to_portable(
        {key: _to_numpy(value) for key, value in stream_tensors(model).items()},
        [{key: _to_numpy(value) for key, value in block.state_dict().items()}
         for block in model.blocks],
    )


def _split_blocks(portable: Mapping[str, np.ndarray], depth: int) -> list[dict[str, np.ndarray]]:
    blocks: list[dict[str, np.ndarray]] = [{} for _ in range(depth)]
    for key, value in portable.items():
        if key.startswith(PREFIX):
            continue
        index, _, name = key[len(BLOCK_PREFIX):].partition(".")
        if not key.startswith(BLOCK_PREFIX) or not index.isdigit() or not name:
            raise KeyError(f"unknown portable parameter key {key!r}: keys are 'streams.*' "
                           "and 'blocks.<l>.<state_dict key>'")
        if int(index) >= depth:
            raise KeyError(f"portable key {key!r} names block {index}, this stack has "
                           f"{depth} blocks")
        blocks[int(index)][name] = np.asarray(value)
    return blocks


def _copy_into(key: str, target: Tensor, value: np.ndarray) -> None:
    if tuple(np.shape(value)) != tuple(target.shape):
        raise ValueError(f"portable parameter {key!r} has shape {tuple(np.shape(value))}, "
                         f"this model expects {tuple(target.shape)}")
    with torch.no_grad():
        target.copy_(torch.as_tensor(np.asarray(value)))


def load_stream_portable(model: StreamSequential, portable: Mapping[str, np.ndarray]) -> None:
    """Check every key and shape first, then copy into the model."""
    params = {k: np.asarray(v) for k, v in portable.items() if k.startswith(PREFIX)}
    check_parameters(model.config, params, model.depth, model.width)
    blocks = _split_blocks(portable, model.depth)
    states = [block.state_dict() for block in model.blocks]
    for index, (arrays, state) in enumerate(zip(blocks, states, strict=True)):
        if set(arrays) != set(state):
            raise KeyError(f"block {index}: portable keys {sorted(arrays)} do not match the "
                           f"block's state_dict keys {sorted(state)}")
        for name, value in arrays.items():
            if tuple(value.shape) != tuple(state[name].shape):
                raise ValueError(f"portable parameter '{BLOCK_PREFIX}{index}.{name}' has shape "
                                 f"{tuple(value.shape)}, this model expects "
                                 f"{tuple(state[name].shape)}")
    for key, target in stream_tensors(model).items():
        _copy_into(key, target, params[key])
    for index, (arrays, state) in enumerate(zip(blocks, states, strict=True)):
        for name, value in arrays.items():
            _copy_into(f"{BLOCK_PREFIX}{index}.{name}", state[name], value)
