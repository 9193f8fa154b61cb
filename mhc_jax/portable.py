"""Parameter exchange with the PyTorch twin through the portable NumPy dict of
:mod:`mhc_spec.parameters`.

Keys: ``mixing.theta`` (L, H), ``mixing.gamma`` (L,), and ``blocks.<i>.<name>`` for block i
(0-indexed) in the PyTorch ``state_dict`` convention, for both builds (the scan build's
stacked arrays are split per layer):

- the path inside the block joined by ``.``; an ``nnx.Sequential``'s ``layers`` level is
  dropped, so its j-th layer is ``blocks.<i>.<j>.<name>`` like ``torch.nn.Sequential``;
- ``nnx.Linear``: ``weight`` (out, in) = ``kernel``.T, ``bias``;
- ``nnx.Conv``: ``weight`` (out, in, *window) = ``kernel`` (*window, in, out) moved;
- ``nnx.LayerNorm``, ``nnx.RMSNorm``, ``nnx.GroupNorm``: ``weight`` = ``scale``, ``bias``;
- ``nnx.BatchNorm``: ``weight``, ``bias``, ``running_mean`` = ``mean``,
  ``running_var`` = ``var``;
- ``nnx.Embed``: ``weight`` = ``embedding``;
- any other variable keeps its name and layout. Random-number state is not exported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mhc_jax.sequential import MHCSequential
from mhc_spec import from_portable, to_portable

Layout = Callable[[np.ndarray], np.ndarray]


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _linear_to_torch(kernel: np.ndarray) -> np.ndarray:
    return np.swapaxes(kernel, -1, -2)


def _conv_to_torch(kernel: np.ndarray) -> np.ndarray:
    return np.moveaxis(kernel, (-1, -2), (0, 1))


def _conv_from_torch(weight: np.ndarray) -> np.ndarray:
    return np.moveaxis(weight, (0, 1), (-1, -2))


# (module type, nnx name) -> (torch name, nnx -> torch layout, torch -> nnx layout)
_RULES: dict[tuple[type, str], tuple[str, Layout, Layout]] = {
    (nnx.Linear, "kernel"): ("weight", _linear_to_torch, _linear_to_torch),
    (nnx.Conv, "kernel"): ("weight", _conv_to_torch, _conv_from_torch),
    (nnx.Embed, "embedding"): ("weight", _identity, _identity),
    (nnx.BatchNorm, "mean"): ("running_mean", _identity, _identity),
    (nnx.BatchNorm, "var"): ("running_var", _identity, _identity),
}
for _norm in (nnx.LayerNorm, nnx.RMSNorm, nnx.GroupNorm, nnx.BatchNorm):
    _RULES[(_norm, "scale")] = ("weight", _identity, _identity)


@dataclass(frozen=True)
class _Entry:
    path: tuple[Any, ...]
    name: str
    to_torch: Layout
    from_torch: Layout


def _entries(block: nnx.Module) -> list[_Entry]:
    """Every exported variable of ``block`` with its torch name and layout changes."""
    entries = []
    for path, _ in nnx.to_flat_state(nnx.state(block, nnx.Not(nnx.RngState))):
        owner, names = block, []
        for part in path[:-1]:
            if isinstance(owner, nnx.Sequential) and part == "layers":
                owner = owner.layers
                continue
            owner = owner[part] if isinstance(part, int) else getattr(owner, part)
            names.append(str(part))
        rule = next((r for (kind, leaf), r in _RULES.items()
                     if leaf == path[-1] and isinstance(owner, kind)), None)
        torch_name, to_torch, from_torch = rule or (str(path[-1]), _identity, _identity)
        entries.append(_Entry(path, ".".join([*names, torch_name]), to_torch, from_torch))
    return entries


def _values(block: nnx.Module) -> dict[tuple[Any, ...], np.ndarray]:
    return {path: np.asarray(v[...])
            for path, v in nnx.to_flat_state(nnx.state(block, nnx.Not(nnx.RngState)))}


def export_blocks(model: Any) -> list[dict[str, np.ndarray]]:
    """The blocks of a stack (``model.blocks``, one module per layer or, when ``model.scan``,
    one module with stacked arrays) as per-layer dicts in the torch layout."""
    blocks = []
    for index in range(model.depth):
        block = model.blocks if model.scan else model.blocks[index]
        values = _values(block)
        blocks.append({
            e.name: e.to_torch(values[e.path][index] if model.scan else values[e.path])
            for e in _entries(block)
        })
    return blocks


def export_portable(model: MHCSequential) -> dict[str, np.ndarray]:
    """The portable dict of ``model`` (arrays in their own dtype, torch layouts)."""
    mixing = model.mixing
    theta = None if mixing.theta is None else np.asarray(mixing.theta[...])
    gamma = None if mixing.gamma is None else np.asarray(mixing.gamma[...])
    return to_portable(theta, gamma, export_blocks(model))


def _expect_same(kind: str, expected: set[str], given: set[str]) -> None:
    if expected != given:
        raise KeyError(
            f"{kind}: missing {sorted(expected - given)}, unexpected {sorted(given - expected)}"
        )


def _converted(entry: _Entry, array: np.ndarray, like: Any, key: str) -> jnp.ndarray:
    value = entry.from_torch(np.asarray(array))
    if value.shape != tuple(like.shape):
        raise ValueError(
            f"portable {key} has shape {np.shape(array)}, which gives {value.shape} for "
            f"{'.'.join(map(str, entry.path))}; the model holds {tuple(like.shape)}"
        )
    return jnp.asarray(value, dtype=like.dtype)


def _load_mixing(model: MHCSequential, name: str, array: np.ndarray | None) -> None:
    variable = getattr(model.mixing, name)
    key = f"mixing.{name}"
    if (variable is None) != (array is None):
        state = "has no" if variable is None else "needs"
        raise KeyError(f"{key}: this model ({model.config.kind}) {state} {key}")
    if variable is None:
        return
    if np.shape(array) != tuple(variable.shape):
        raise ValueError(f"portable {key} has shape {np.shape(array)}; the model holds "
                         f"{tuple(variable.shape)}")
    variable[...] = jnp.asarray(array, dtype=variable.dtype)


def load_portable(model: MHCSequential, params: Mapping[str, np.ndarray]) -> None:
    """Set ``model``'s parameters from a portable dict (cast to the model's dtypes); the keys
    must be exactly those :func:`export_portable` writes."""
    theta, gamma, blocks = from_portable(params)
    if len(blocks) != model.depth:
        raise KeyError(f"portable dict holds {len(blocks)} blocks; the model has {model.depth}")
    _load_mixing(model, "theta", theta)
    _load_mixing(model, "gamma", gamma)
    load_blocks(model, blocks)


def load_blocks(model: Any, blocks: list[Mapping[str, np.ndarray]]) -> None:
    """Set the blocks of a stack (as :func:`export_blocks` reads them) from per-layer dicts
    in the torch layout; keys must match exactly (``KeyError``), shapes too (``ValueError``)."""
    if len(blocks) != model.depth:
        raise KeyError(f"portable dict holds {len(blocks)} blocks; the model has {model.depth}")
    stacked: dict[tuple[Any, ...], list[jnp.ndarray]] = {}
    for index, arrays in enumerate(blocks):
        block = model.blocks if model.scan else model.blocks[index]
        entries = _entries(block)
        _expect_same(f"blocks.{index}", {e.name for e in entries}, set(arrays))
        like = dict(nnx.to_flat_state(nnx.state(block, nnx.Not(nnx.RngState))))
        converted = {}
        for e in entries:
            target = like[e.path][...]
            target = target[index] if model.scan else target
            converted[e.path] = _converted(e, arrays[e.name], target,
                                           f"blocks.{index}.{e.name}")
        if model.scan:
            for path, value in converted.items():
                stacked.setdefault(path, []).append(value)
        else:
            nnx.update(block, nnx.from_flat_state(converted))
    if model.scan:
        nnx.update(model.blocks,
                   nnx.from_flat_state({p: jnp.stack(v) for p, v in stacked.items()}))
