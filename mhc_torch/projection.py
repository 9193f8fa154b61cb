"""Mixing weights of every layer at once: the spec's projections on the padded (L, H) layout.

Row l-1 belongs to layer l and column j pairs with state s_{l-H+j}; a layer that sees only
K < H states has its H-K leading columns masked, and those weights are exactly 0 (see
:func:`mhc_spec.projections.padded_weights`). All rows are projected by one batched
computation per forward, in the parameters' dtype (float32 under autocast).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mhc_spec.config import MHCConfig
from mhc_torch import native
from mhc_torch.autograd_apply import apply_function


def sorted_threshold(z: Tensor) -> Tensor:
    """tau = max_k (sum_{i<=k} z_(i) - 1) / k over the sorted z (the spec's threshold: the
    partial means rise up to the support size and fall after it), keeping the last axis."""
    cumsum = torch.sort(z, dim=-1, descending=True).values.cumsum(dim=-1)
    k = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
    return ((cumsum - 1.0) / k).amax(dim=-1, keepdim=True)


def pairwise_threshold(z: Tensor) -> Tensor:
    """The same tau without a sort: z_i is in the support iff 1 + k_i z_i > S_i, with
    k_i = #{j : z_j >= z_i} and S_i = sum_{j : z_j >= z_i} z_j (tied entries are in or out
    together), and tau = (sum of the support - 1) / |support|. O(H^2) per row, all
    elementwise operations and reductions, which a compiler fuses; -inf entries are never
    in the support and never summed."""
    above = z.unsqueeze(-2) >= z.unsqueeze(-1)  # [..., i, j]: z_j >= z_i
    count = above.sum(dim=-1)
    total = torch.where(above, z.unsqueeze(-2), 0.0).sum(dim=-1)
    support = 1.0 + count * z > total
    return ((torch.where(support, z, 0.0).sum(dim=-1, keepdim=True) - 1.0)
            / support.sum(dim=-1, keepdim=True))


# Widths up to which a compiled graph takes the pairwise threshold: it fuses where sort and
# cumsum are kernels of their own (compiled 64x64, H = 4: 1.14x against 1.18-1.21x the
# compiled residual stack, three runs each); its (H, H) comparisons per row grow quadratically.
MAX_PAIRWISE_WIDTH = 64


class _Sparsemax(torch.autograd.Function):
    """a = max(z - tau(z), 0) on the last axis, with the closed-form backward
    dz = s * (g - <s, g> / |s|), s = [a > 0] (:func:`mhc_spec.projections.sparsemax_vjp`).

    tau is :func:`sorted_threshold`, or :func:`pairwise_threshold` in a compiled graph of
    at most :data:`MAX_PAIRWISE_WIDTH` entries per row. Masked entries arrive as -inf and
    leave as exact zeros with zero gradient.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(z: Tensor) -> Tensor:
        # Shift-invariant: projecting z - max(z) keeps huge logits exact.
        z = z - z.amax(dim=-1, keepdim=True)
        if torch.compiler.is_compiling() and z.shape[-1] <= MAX_PAIRWISE_WIDTH:
            tau = pairwise_threshold(z)
        else:
            tau = sorted_threshold(z)
        return torch.clamp(z - tau, min=0.0)

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor], output: Tensor) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (a,) = ctx.saved_tensors
        return _sparsemax_vjp(a, grad)


def _sparsemax_vjp(a: Tensor, grad: Tensor) -> Tensor:
    """dz = s * (g - <s, g> / |s|), s = [a > 0], with differentiable operations."""
    support = a > 0
    on_support = torch.where(support, grad, 0.0)
    mean = on_support.sum(dim=-1, keepdim=True) / support.sum(dim=-1, keepdim=True)
    return torch.where(support, grad - mean, 0.0)


KERNELS = Path(__file__).with_name("projection_kernels.c")
_ROWS_SIGNATURE = (ctypes.c_int64, ctypes.c_int)
SIGNATURES: tuple[native.Signature, ...] = (
    ("mhc_sparsemax_forward", (ctypes.c_void_p, *_ROWS_SIGNATURE, ctypes.c_void_p), None),
    ("mhc_sparsemax_backward", (ctypes.c_void_p, ctypes.c_void_p, *_ROWS_SIGNATURE,
                                ctypes.c_void_p), None),
)


MAX_NATIVE_WIDTH = 1024  # states per row the kernel takes (it sorts them on the stack)


def _native(tensor: Tensor) -> Mapping[str, Callable[..., Any]] | None:
    """The native sparsemax kernels for a contiguous CPU (rows, H) float tensor in plain eager
    mode (one call for all layers instead of a dozen operators per direction), else None:
    the operators then run (torch.func transforms, torch.compile and TorchScript tracing
    record them; tensor subclasses such as FakeTensor have no memory behind data_ptr)."""
    if (tensor.ndim != 2 or not 0 < tensor.shape[1] <= MAX_NATIVE_WIDTH
            or not tensor.is_contiguous() or type(tensor) is not Tensor
            or torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()):
        return None
    return native.kernels_for(KERNELS, SIGNATURES, tensor.dtype, tensor.device)


class _NativeSparsemax(torch.autograd.Function):
    """:class:`_Sparsemax` as one native call per direction for all rows (plain eager mode
    on the CPU; the kernels are :data:`KERNELS`)."""

    @staticmethod
    def forward(ctx, z: Tensor, kernels: Mapping[str, Callable[..., Any]]) -> Tensor:
        a = torch.empty_like(z)
        kernels["mhc_sparsemax_forward"](z.data_ptr(), z.shape[0], z.shape[1], a.data_ptr())
        ctx.kernels = kernels
        ctx.save_for_backward(a)
        return a

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (a,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a backward that is itself differentiable
            return _sparsemax_vjp(a, grad), None
        grad, dz = grad.contiguous(), torch.empty_like(a)
        ctx.kernels["mhc_sparsemax_backward"](a.data_ptr(), grad.data_ptr(), a.shape[0],
                                              a.shape[1], dz.data_ptr())
        return dz, None


def sparsemax(z: Tensor) -> Tensor:
    """argmin_{a in simplex} ||a - z||^2 on the last axis (entries of -inf get exactly 0)."""
    if (kernels := _native(z)) is not None:
        return apply_function(_NativeSparsemax, z, kernels)
    return apply_function(_Sparsemax, z)


def window_mask(depth: int, max_history: int, carried: int, device: torch.device) -> Tensor:
    """Bool (L, H): column j of layer l is available iff j >= H - K_l, K_l = min(H, l + carried).

    ``carried`` counts the states a continued history holds before s_0 (0 without one).
    Eager calls share one cached read-only tensor per arguments; a compiled graph builds
    it inline (the compiler folds the constants; dynamo does not trace caches).
    """
    if torch.compiler.is_compiling():
        return _build_window_mask(depth, max_history, carried, device)
    return _cached_window_mask(depth, max_history, carried, device)


def _build_window_mask(depth: int, max_history: int, carried: int, device: torch.device
                       ) -> Tensor:
    columns = torch.arange(max_history, device=device)
    available = (torch.arange(1, depth + 1, device=device) + carried).clamp(max=max_history)
    return columns >= (max_history - available).unsqueeze(-1)


_cached_window_mask = functools.lru_cache(maxsize=64)(_build_window_mask)


def _newest(h: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """e_{H-1}: all weight on the newest state (column H-1 is always available)."""
    return (torch.arange(h, device=device) == h - 1).to(dtype)


def padded_weights(config: MHCConfig, theta: Tensor | None, mask: Tensor, dtype: torch.dtype
                   ) -> Tensor:
    """The padded weights A (rows of ``mask``, H) of ``config``'s projection P.

    residual: e_{K-1};  hc: z;  mhc: sparsemax(z/tau), softmax(z/tau) or
    eps * e_{K-1} + (1 - eps) * sparsemax(z/tau); masked entries exactly 0.
    """
    h = config.max_history
    if config.mode == "residual":
        return _newest(h, dtype, mask.device).expand(mask.shape)
    if config.mode == "hc":
        return torch.where(mask, theta, 0.0)
    scaled = theta if config.temperature == 1.0 else theta / config.temperature
    scaled = torch.where(mask, scaled, float("-inf"))
    if config.constraint == "softmax":
        return torch.softmax(scaled, dim=-1)
    a = sparsemax(scaled)
    if config.constraint == "identity":
        a = torch.add(config.epsilon * _newest(h, a.dtype, a.device), a,
                      alpha=1.0 - config.epsilon)
    return a


def mixing_coefficients(config: MHCConfig, theta: Tensor | None, gamma: Tensor | None,
                        mask: Tensor, dtype: torch.dtype) -> Tensor:
    """C = g[:, None] * A: the coefficient of every window state in every layer's skip path.

    Computed with autocast disabled, so the coefficients keep the parameters' precision.
    """
    with autocast_disabled(mask.device.type):
        weights = padded_weights(config, theta, mask, dtype)
        if gamma is None:
            return weights
        return weights * torch.sigmoid(gamma).unsqueeze(-1)


def autocast_disabled(device_type: str) -> contextlib.AbstractContextManager:
    """A context without autocast on ``device_type`` (a no-op context when it is off)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
