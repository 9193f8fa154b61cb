"""What both stack families share: the configuration from ``config=`` or keyword options, and
the blocks as a list (Python loop build) or one module with stacked arrays (scan build)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import jax.numpy as jnp
from flax import nnx

from mhc_spec import check_depth

Config = TypeVar("Config")


def resolve_config_options(config: Config | None, options: dict[str, Any],
                           config_type: type[Config]) -> Config:
    """``config`` itself, or a ``config_type`` built (and validated) from ``options``."""
    if config is None:
        return config_type(**options)
    if not isinstance(config, config_type):
        raise TypeError(f"config={config!r} is invalid: config must be a "
                        f"{config_type.__name__} or None.")
    if options:
        raise TypeError(
            f"pass either config or keyword options, not both (got config and {sorted(options)})"
        )
    return config


def collect_blocks(blocks: Iterable[nnx.Module] | None, stacked: nnx.Module | None,
                   depth: int | None) -> tuple[int, bool, nnx.Module]:
    """(L, scan, blocks): ``blocks`` as an ``nnx.List`` of modules, or ``stacked`` whose every
    array has a leading axis of ``depth``; exactly one of the two must be given."""
    if (blocks is None) == (stacked is None):
        raise TypeError("pass either blocks (a list of modules) or stacked= (with depth=)")
    if blocks is not None:
        blocks = list(blocks)
        for index, block in enumerate(blocks):
            if not isinstance(block, nnx.Module):
                raise TypeError(
                    f"blocks[{index}]={block!r} is invalid: every block must be an nnx.Module"
                )
        return check_depth(len(blocks)), False, nnx.List(blocks)
    depth = check_depth(depth)
    for path, leaf in nnx.to_flat_state(nnx.state(stacked)):
        if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != depth:
            raise ValueError(
                f"stacked block array {'.'.join(map(str, path))} has shape "
                f"{jnp.shape(leaf)}; every array needs a leading axis of depth={depth}"
            )
    return depth, True, stacked


def stacked_blocks(make_block: Callable[[nnx.Rngs], nnx.Module], depth: int,
                   rngs: nnx.Rngs) -> nnx.Module:
    """``depth`` blocks ``make_block(rngs)`` with independent initialisations, as one module
    whose arrays have a leading axis L (the scan build's ``stacked``)."""

    @nnx.split_rngs(splits=check_depth(depth))
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(layer_rngs: nnx.Rngs) -> nnx.Module:
        return make_block(layer_rngs)

    return create(rngs)
