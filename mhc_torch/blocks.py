"""The user's blocks, as both stack families take and call them: a non-empty list of
modules, each returning a tensor of its input's shape."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


def collect_modules(name: str, value: Any) -> list[nn.Module]:
    """``value`` (the argument ``name``) as a non-empty list of modules, else a clear error.
    A container (``nn.Sequential``, ``nn.ModuleList``) counts as its items; any other single
    module is refused."""
    if isinstance(value, (str, bytes, nn.Module)) and not isinstance(
            value, nn.ModuleList | nn.Sequential):
        raise TypeError(f"{name}={value!r} is invalid: {name} must be a sequence of "
                        "nn.Module blocks")
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"{name}={type(value).__name__} is invalid: {name} must be a "
                        "sequence of nn.Module blocks (e.g. a list or an nn.Sequential)"
                        ) from None
    for index, block in enumerate(items):
        if not isinstance(block, nn.Module):
            raise TypeError(f"{name}[{index}]={block!r} is invalid: every item of {name} "
                            "must be an nn.Module")
    if not items:
        raise ValueError(f"{name}=[] is invalid: {name} must hold at least one nn.Module")
    return items


def check_block_output(label: str, block: nn.Module, given: Tensor, output: Any,
                       owner: str) -> Tensor:
    """``output`` of ``block`` (named ``label``, e.g. ``"layers[3]"``) if it is a tensor of
    ``given``'s shape, else a clear error naming the block and the stack ``owner``."""
    if not isinstance(output, Tensor):
        raise TypeError(f"{label} ({type(block).__name__}) returned "
                        f"{type(output).__name__}; every block must return a Tensor")
    if output.shape != given.shape:
        raise ValueError(
            f"{label} ({type(block).__name__}) changed the shape from "
            f"{tuple(given.shape)} to {tuple(output.shape)}; every block of {owner} must "
            "return a tensor of its input's shape"
        )
    return output
