"""Bindings of the native coefficient kernels (``kernels.c``, built by :mod:`mhc_torch.native`).

They replace the ~50 small PyTorch calls a dynamic layer spends per direction after the
projection's matmul (the gates, their slopes, and the 2T Sinkhorn normalisations) by one
call each; the maths is in ``kernels.c`` and :mod:`mhc_torch.streams.coefficients`.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from mhc_torch import native

SOURCE = Path(__file__).with_name("kernels.c")
SUFFIXES = {torch.float32: "f32", torch.float64: "f64"}
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


def _functions(dtype: torch.dtype) -> tuple[ctypes._CFuncPtr, ctypes._CFuncPtr] | None:
    lib = native.library(SOURCE)
    if lib is None:
        return None
    suffix = SUFFIXES[dtype]
    forward = getattr(lib, f"mhc_stream_coefficients_forward_{suffix}")
    backward = getattr(lib, f"mhc_stream_coefficients_backward_{suffix}")
    if forward.argtypes is None:
        forward.argtypes = [_POINTER] * 4 + [_INT64, _INT, _INT] + [_POINTER] * 6
        backward.argtypes = [_POINTER] * 5 + [_INT64, _INT, _INT, _POINTER]
    return forward, backward


def usable(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the kernels run for coefficients of ``dtype`` on ``device``."""
    return device.type == "cpu" and dtype in SUFFIXES and _functions(dtype) is not None


def _check(status: int) -> None:
    if status != 0:
        raise MemoryError("mhc_torch native kernel: scratch memory could not be allocated")


def coefficients_forward(raw: Tensor, inverse_rms: Tensor, scale: Tensor, bias: Tensor,
                         streams: int, iterations: int) -> NativeCoefficients:
    """The coefficients of raw = x @ Phi (B, K) and 1/r (B,) (T = ``iterations``; 0: Hres~)."""
    count, width = raw.shape
    n = streams
    raw, inverse_rms, scale, bias = (t.contiguous() for t in (raw, inverse_rms, scale, bias))
    out = NativeCoefficients(
        weight=raw.new_empty((count, width)), logits=raw.new_empty((count, width)),
        hpre=raw.new_empty((count, n)), hpost=raw.new_empty((count, n)),
        slopes=raw.new_empty((count, 2 * n)), hres=raw.new_empty((count, n, n)))
    forward, _ = _functions(raw.dtype)
    _check(forward(raw.data_ptr(), inverse_rms.data_ptr(), scale.data_ptr(), bias.data_ptr(),
                   count, n, iterations, *(t.data_ptr() for t in out)))
    return out


def coefficients_backward(d_hpre: Tensor, d_hpost: Tensor, d_hres: Tensor, slopes: Tensor,
                          logits: Tensor, iterations: int) -> Tensor:
    """dz (B, K) from dHpre, dHpost (B, n), dHres (B, n, n) and the forward's outputs."""
    count, n = d_hpre.shape
    d_logits = logits.new_empty(logits.shape)
    inputs = [t.contiguous() for t in (d_hpre, d_hpost, d_hres, slopes, logits)]
    _, backward = _functions(logits.dtype)
    _check(backward(*(t.data_ptr() for t in inputs), count, n, iterations,
                    d_logits.data_ptr()))
    return d_logits
