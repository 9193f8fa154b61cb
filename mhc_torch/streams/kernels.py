"""Bindings of a multi-stream layer's native kernels (``kernels.c``, built by
:mod:`mhc_torch.native`).

The coefficient kernels replace the ~50 small PyTorch calls a dynamic layer spends per
direction after the projection's matmul (the gates, their slopes, and the 2T Sinkhorn
normalisations) by one call each; the maths is in :mod:`mhc_torch.streams.coefficients`.
The stream kernels make one pass over the streams where PyTorch makes two to four (the
update X_next = Hres X + Hpost y, its reverse mode, the read's terms of dX; the maths is in
:mod:`mhc_torch.streams.mixing`). Every kernel runs on PyTorch's thread count.
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
    ("mhc_stream_coefficients_forward",
     (_POINTER,) * 4 + (_INT64, _INT, _INT) + (_POINTER,) * 6 + (_INT,), _INT),
    ("mhc_stream_coefficients_backward",
     (_POINTER,) * 5 + (_INT64, _INT, _INT, _POINTER, _INT), _INT),
    ("mhc_stream_inverse_rms", (_POINTER, _INT64, _INT64, ctypes.c_double, _POINTER, _INT),
     None),
    ("mhc_stream_coefficients_reduce",
     (_POINTER,) * 5 + (_INT64, _INT, _INT64) + (_POINTER,) * 3, None),
    ("mhc_stream_update_forward", (_POINTER,) * 5 + (_INT64, _INT, _INT64, _INT), None),
    ("mhc_stream_update_backward", (_POINTER,) * 9 + (_INT64, _INT, _INT64, _INT), None),
    ("mhc_stream_read_backward", (_POINTER,) * 5 + (_INT64, _INT, _INT64, _INT), None),
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
                   *(t.data_ptr() for t in out), torch.get_num_threads()))
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
                    d_logits.data_ptr(), torch.get_num_threads()))
    return d_logits


def inverse_rms(flat: Tensor, eps: float) -> Tensor:
    """1/r = (mean(x^2) + eps)^(-1/2) (B,) for x (B, F), a contiguous tensor of a compiled
    dtype."""
    if not flat.is_contiguous() or flat.dim() != 2:
        raise ValueError(f"native coefficient kernel: x must be a contiguous (B, F) tensor, "
                         f"got shape {tuple(flat.shape)} with strides {flat.stride()}")
    count, features = flat.shape
    out = flat.new_empty((count,))
    _bound(flat.dtype)["mhc_stream_inverse_rms"](flat.data_ptr(), count, features, eps,
                                                 out.data_ptr(), torch.get_num_threads())
    return out


def coefficients_reduce(dz: Tensor, raw: Tensor, weight: Tensor, inverse_rms: Tensor,
                        scale: Tensor, features: int | None
                        ) -> tuple[Tensor, Tensor, Tensor | None]:
    """(dbeta (K,), ds (K,), t (B,) or None when ``features`` is None) from dz, raw, w (B, K),
    1/r (B,) and s (K,); dz becomes dz w in place (see kernels.c)."""
    count, width = dz.shape
    shapes = {"dz": (count, width), "raw": (count, width), "weight": (count, width),
              "inverse_rms": (count,), "scale": (width,)}
    _, raw, weight, inverse_rms, scale = _contiguous(
        shapes, dz.dtype, dz=dz, raw=raw, weight=weight, inverse_rms=inverse_rms, scale=scale)
    if not dz.is_contiguous():
        raise ValueError("native coefficient kernel: dz must be contiguous (written in place)")
    d_bias, d_scale = dz.new_empty((width,)), dz.new_empty((width,))
    through_rms = None if features is None else dz.new_empty((count,))
    _bound(dz.dtype)["mhc_stream_coefficients_reduce"](
        dz.data_ptr(), raw.data_ptr(), weight.data_ptr(), inverse_rms.data_ptr(),
        scale.data_ptr(), count, width, 0 if features is None else features,
        d_bias.data_ptr(), d_scale.data_ptr(),
        None if through_rms is None else through_rms.data_ptr())
    return d_bias, d_scale, through_rms


def streams_usable(*tensors: Tensor) -> bool:
    """Whether the stream kernels take these tensors as they are: contiguous CPU tensors of
    one dtype the kernels are compiled for (anything else uses PyTorch operations)."""
    dtype, device = tensors[0].dtype, tensors[0].device
    return (all(t.dtype == dtype and t.is_contiguous() for t in tensors)
            and native.kernels_for(SOURCE, SIGNATURES, dtype, device) is not None)


def _check_streams(streams: Tensor, **tensors: Tensor) -> None:
    """Each tensor of the shape the stream kernels take on trust for X (B, n, C), named by
    its dimensions: ``token`` (B,), ``row`` (B, C), ``vector`` (B, n), ``matrix`` (B, n, n),
    ``state`` (B, n, C)."""
    if streams.dim() != 3 or not streams.is_contiguous():
        raise ValueError(f"native stream kernel: streams must be a contiguous (B, n, C) "
                         f"tensor, got shape {tuple(streams.shape)} with strides "
                         f"{streams.stride()}")
    count, n, width = streams.shape
    shapes = {"token": (count,), "row": (count, width), "vector": (count, n),
              "matrix": (count, n, n), "state": (count, n, width)}
    for key, tensor in tensors.items():
        kind, _, name = key.partition("_")
        if (tuple(tensor.shape) != shapes[kind] or tensor.dtype != streams.dtype
                or not tensor.is_contiguous()):
            raise ValueError(f"native stream kernel: {name} is {tensor.dtype} of shape "
                             f"{tuple(tensor.shape)}, expected contiguous {streams.dtype} of "
                             f"shape {shapes[kind]}")


def update_forward(streams: Tensor, y: Tensor, hres: Tensor, hpost: Tensor) -> Tensor:
    """X_next = Hres X + Hpost y (B, n, C) for X (B, n, C), y (B, C), Hres (B, n, n) and
    Hpost (B, n)."""
    _check_streams(streams, row_y=y, matrix_hres=hres, vector_hpost=hpost)
    count, n, width = streams.shape
    out = streams.new_empty(streams.shape)
    _bound(streams.dtype)["mhc_stream_update_forward"](
        streams.data_ptr(), y.data_ptr(), hres.data_ptr(), hpost.data_ptr(), out.data_ptr(),
        count, n, width, torch.get_num_threads())
    return out


def update_backward(grad: Tensor, streams: Tensor, y: Tensor, hres: Tensor, hpost: Tensor,
                    streams_grad: bool) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
    """(dX = Hres^T G or None unless ``streams_grad``, dy = Hpost^T G (B, C),
    dHpost = G y (B, n), dHres = G X^T (B, n, n)) for G = dLoss/dX_next (B, n, C)."""
    _check_streams(streams, state_grad=grad, row_y=y, matrix_hres=hres, vector_hpost=hpost)
    count, n, width = streams.shape
    d_streams = streams.new_empty(streams.shape) if streams_grad else None
    d_y, d_hpost = y.new_empty(y.shape), hpost.new_empty(hpost.shape)
    d_hres = hres.new_empty(hres.shape)
    _bound(streams.dtype)["mhc_stream_update_backward"](
        grad.data_ptr(), streams.data_ptr(), y.data_ptr(), hres.data_ptr(), hpost.data_ptr(),
        None if d_streams is None else d_streams.data_ptr(), d_y.data_ptr(),
        d_hpost.data_ptr(), d_hres.data_ptr(), count, n, width, torch.get_num_threads())
    return d_streams, d_y, d_hpost, d_hres


def read_backward(d_streams: Tensor, hpre: Tensor, du: Tensor, through_rms: Tensor | None,
                  streams: Tensor) -> None:
    """dX += Hpre du^T + through_rms X in place (the second term only when given), for
    dX, X (B, n, C), Hpre (B, n), du (B, C), through_rms (B,)."""
    _check_streams(streams, state_gradient=d_streams, vector_hpre=hpre, row_du=du,
                   **({} if through_rms is None else {"token_through_rms": through_rms}))
    count, n, width = streams.shape
    _bound(streams.dtype)["mhc_stream_read_backward"](
        d_streams.data_ptr(), hpre.data_ptr(), du.data_ptr(),
        None if through_rms is None else through_rms.data_ptr(), streams.data_ptr(),
        count, n, width, torch.get_num_threads())
