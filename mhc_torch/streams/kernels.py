"""Bindings of the native coefficient kernels (``kernels.c``, built by :mod:`mhc_torch.native`).

They replace the ~50 small PyTorch calls a dynamic layer spends per direction after the
projection's matmul (the gates, their slopes, and the 2T Sinkhorn normalisations) by one
call each; the maths is in ``kernels.c`` and :mod:`mhc_torch.streams.coefficients`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from mhc_torch import native

SOURCE = Path(__file__).with_name("kernels.c")
_POINTER, _INT64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


class NativeCoefficients(NamedTuple):
    """Outputs of the forward kernel for B tokens and K = 2n + n^2 logits: w = s / r and
    z (B, K), Hpre, Hpost (B, n), d gate / d logit (B, 2n), Hres (B, n, n)."""

    weight: Tensor
    logits: Tensor
    hpre: Tensor
    hpost: Tensor
    slopes: Tensor
    hres: Tensor


SIGNATURES: tuple[native.Signature, ...] = (
    ("mhc_stream_coefficients_forward", (_POINTER,) * 4 + (_INT64, _INT, _INT) + (_POINTER,) * 6,
     _INT),
    ("mhc_stream_coefficients_backward", (_POINTER,) * 5 + (_INT64, _INT, _INT, _POINTER), _INT),
)


def _bound(dtype: torch.dtype) -> Mapping[str, Callable[..., Any]] | None:
    """The kernels for ``dtype``, bound once per process (None: unavailable)."""
    return native.bind(SOURCE, native.SUFFIXES[dtype], SIGNATURES)


def usable(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the kernels run for coefficients of ``dtype`` on ``device``."""
    return native.kernels_for(SOURCE, SIGNATURES, dtype, device) is not None


def _check(status: int) -> None:
    if status != 0:
        raise MemoryError("mhc_torch native kernel: scratch memory could not be allocated")


def _contiguous(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype,
                **tensors: Tensor) -> list[Tensor]:
    """The tensors made contiguous, after checking what the C code takes on trust: every
    one of ``dtype`` and of its shape in ``shapes``."""
    for name, tensor in tensors.items():
        if tensor.dtype != dtype or tuple(tensor.shape) != shapes[name]:
            raise ValueError(f"native coefficient kernel: {name} is {tensor.dtype} of shape "
                             f"{tuple(tensor.shape)}, expected {dtype} of shape {shapes[name]}")
    return [tensor.contiguous() for tensor in tensors.values()]


def coefficients_forward(raw: Tensor, inverse_rms: Tensor, scale: Tensor, bias: Tensor,
                         streams: int, iterations: int) -> NativeCoefficients:
    """The coefficients of raw = x @ Phi (B, K) and 1/r (B,) (T = ``iterations``; 0: Hres~)."""
    count, width = raw.shape
    n = streams
    shapes = {"raw": (count, 2 * n + n * n), "inverse_rms": (count,), "scale": (width,),
              "bias": (width,)}
    inputs = _contiguous(shapes, raw.dtype, raw=raw, inverse_rms=inverse_rms, scale=scale,
                         bias=bias)
    out = NativeCoefficients(
        weight=raw.new_empty((count, width)), logits=raw.new_empty((count, width)),
        hpre=raw.new_empty((count, n)), hpost=raw.new_empty((count, n)),
        slopes=raw.new_empty((count, 2 * n)), hres=raw.new_empty((count, n, n)))
    forward = _bound(raw.dtype)["mhc_stream_coefficients_forward"]
    _check(forward(*(t.data_ptr() for t in inputs), count, n, iterations,
                   *(t.data_ptr() for t in out)))
    return out


def coefficients_backward(d_hpre: Tensor, d_hpost: Tensor, d_hres: Tensor, slopes: Tensor,
                          logits: Tensor, iterations: int) -> Tensor:
    """dz (B, K) from dHpre, dHpost (B, n), dHres (B, n, n) and the forward's outputs."""
    count, n = d_hpre.shape
    shapes = {"d_hpre": (count, n), "d_hpost": (count, n), "d_hres": (count, n, n),
              "slopes": (count, 2 * n), "logits": (count, 2 * n + n * n)}
    inputs = _contiguous(shapes, logits.dtype, d_hpre=d_hpre, d_hpost=d_hpost, d_hres=d_hres,
                         slopes=slopes, logits=logits)
    d_logits = logits.new_empty(logits.shape)
    backward = _bound(logits.dtype)["mhc_stream_coefficients_backward"]
    _check(backward(*(t.data_ptr() for t in inputs), count, n, iterations,
                    d_logits.data_ptr()))
    return d_logits
