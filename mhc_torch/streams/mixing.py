"""The stream update of one layer: X_next[i] = sum_j Hres[i, j] X[j] + Hpost[i] y.

For B tokens, X (B, n, C), y (B, C), Hpost (B, n) and Hres (B, n, n), the update is one
batched matrix product plus one rank-1 update per token, written into the same output:

    X_next = Hres @ X;   X_next += Hpost[:, :, None] @ y[:, None, :]

and its reverse mode is four batched products (the eager node :class:`_WriteStreams`):

    dX = Hres^T @ dX_next;   dy = Hpost^T dX_next;   dHpost = dX_next @ y;   dHres = dX_next @ X^T

Static coefficients arrive as (n,) and (n, n) expanded over the tokens (stride 0); autograd
sums their gradients over the tokens. The streams keep their dtype (the coefficients and y
are cast to it, with autocast off, so a float32 residual stream stays float32).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mhc_torch.projection import autocast_disabled
from mhc_torch.streams.sinkhorn import use_reference_operations


class _WriteStreams(torch.autograd.Function):
    @staticmethod
    def forward(ctx, streams: Tensor, y: Tensor, hpost: Tensor, hres: Tensor) -> Tensor:
        dtype = streams.dtype
        y, hpost, hres = y.to(dtype), hpost.to(dtype), hres.to(dtype)
        with autocast_disabled(streams.device.type):
            out = torch.bmm(hres, streams)
            out.baddbmm_(hpost.unsqueeze(-1), y.unsqueeze(-2))
        ctx.save_for_backward(streams, y, hpost, hres)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        streams, y, hpost, hres = ctx.saved_tensors
        grad = grad.to(streams.dtype)
        needs = ctx.needs_input_grad
        dstreams = torch.bmm(hres.transpose(-2, -1), grad) if needs[0] else None
        dy = torch.bmm(hpost.unsqueeze(-2), grad).squeeze(-2) if needs[1] else None
        dhpost = torch.bmm(grad, y.unsqueeze(-1)).squeeze(-1) if needs[2] else None
        dhres = torch.bmm(grad, streams.transpose(-2, -1)) if needs[3] else None
        return dstreams, dy, dhpost, dhres


def write_streams(streams: Tensor, y: Tensor, hpost: Tensor, hres: Tensor) -> Tensor:
    """X_next (B, n, C) = Hres X + Hpost y for X (B, n, C), y (B, C), Hpost (B, n), Hres
    (B, n, n); one autograd node eagerly, plain operations under torch.compile/torch.func."""
    if use_reference_operations():
        dtype = streams.dtype
        with autocast_disabled(streams.device.type):
            return (hres.to(dtype) @ streams
                    + hpost.to(dtype).unsqueeze(-1) * y.to(dtype).unsqueeze(-2))
    return _WriteStreams.apply(streams, y, hpost, hres)
