"""Conversion between a PyTorch stack and the portable NumPy parameter dict of the spec.

Keys (:mod:`mhc_spec.parameters`): ``"mixing.theta"`` (L, H), ``"mixing.gamma"`` (L,) and
``"blocks.<i>.<state_dict key of block i>"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mhc_spec.config import MHCConfig
from mhc_spec.parameters import GAMMA, THETA, from_portable, to_portable


def _to_numpy(tensor: Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()  # NumPy has no bfloat16
    return tensor.numpy().copy()


def export_portable(theta: Tensor | None, gamma: Tensor | None,
                    blocks: Sequence[nn.Module]) -> dict[str, np.ndarray]:
    """theta, gamma and every block's ``state_dict`` as one portable dict of NumPy arrays."""
    return to_portable(
        None if theta is None else _to_numpy(theta),
        None if gamma is None else _to_numpy(gamma),
        [{key: _to_numpy(value) for key, value in block.state_dict().items()}
         for block in blocks],
    )


def _copy_into(name: str, target: Tensor, value: np.ndarray) -> None:
    if tuple(value.shape) != tuple(target.shape):
        raise ValueError(f"portable parameter {name!r} has shape {tuple(value.shape)}, "
                         f"this model expects {tuple(target.shape)}")
    with torch.no_grad():
        target.copy_(torch.as_tensor(value))


def load_portable(params: Mapping[str, np.ndarray], config: MHCConfig, theta: Tensor | None,
                  gamma: Tensor | None, blocks: Sequence[nn.Module]) -> None:
    """Copy a portable dict into theta, gamma and the blocks (shapes and keys must match)."""
    new_theta, new_gamma, new_blocks = from_portable(params)
    if len(new_blocks) != len(blocks):
        raise KeyError(f"the portable dict holds {len(new_blocks)} blocks, this model has "
                       f"{len(blocks)}")
    for key, ours, theirs in ((THETA, theta, new_theta), (GAMMA, gamma, new_gamma)):
        if (ours is None) != (theirs is None):
            state = "has" if theirs is not None else "lacks"
            raise KeyError(f"the portable dict {state} {key!r} but this {config.kind} model "
                           f"{'does not use' if ours is None else 'needs'} it")
        if ours is not None:
            _copy_into(key, ours, theirs)
    for index, (block, arrays) in enumerate(zip(blocks, new_blocks, strict=True)):
        state = block.state_dict()
        if set(arrays) != set(state):
            raise KeyError(f"block {index}: portable keys {sorted(arrays)} do not match the "
                           f"block's state_dict keys {sorted(state)}")
        for key, value in arrays.items():
            _copy_into(f"blocks.{index}.{key}", state[key], value)
