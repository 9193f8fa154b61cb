"""Applying a custom autograd Function without the per-call work of ``Function.apply``.

``torch.autograd.Function.apply`` is a Python wrapper around the C++ ``_FunctionBase.apply``:
on every call it inspects ``forward``'s signature to bind default arguments (for Functions
with ``setup_context``) and re-wraps the arguments for torch.func. The eager training path
calls a Function once per layer, where that wrapper costs about as much as the skip-path
arithmetic itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def function_applier(function: type[torch.autograd.Function]) -> Callable[..., Any]:
    """A callable equivalent to ``function.apply`` for the current mode: the C++ entry point
    itself in plain eager mode (the wrapper's work then only binds default arguments, and
    the Functions used here have none), else ``function.apply``, which torch.func
    transforms and torch.compile tracing intercept. Resolve it once per forward."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return function.apply
    return super(torch.autograd.Function, function).apply


def apply_function(function: type[torch.autograd.Function], *args: Any) -> Any:
    """``function.apply(*args)`` through :func:`function_applier`."""
    return function_applier(function)(*args)
