"""One layer's stream mixing as two autograd nodes with hand-derived reverse modes.

For B tokens with streams X (B, n, C):

    read:   (Hpre, Hpost, Hres) = coefficients(X);   u = Hpre X              (B, C)
    write:  X_next = Hres X + Hpost y,   y = F(u)                            (B, n, C)

Backward, with G = dLoss/dX_next and du from the branch:

    write:  dX = Hres^T G;   dy = Hpost^T G;   dHpost = y G^T;   dHres = G X^T
    read:   dHpre = du X^T;   dX += Hpre du^T + the coefficients' dx      (in place)

The write node hands its partial dX and dHres to the layer's read node through a
:class:`LayerRecord`; only the read node returns dX, so autograd never adds two (B, n, C)
gradients. The write node depends on the read node through Hpost, so its backward always
runs first. Hres is an input of the write node only so that a user projection receives its
gradient; otherwise the read node consumes dHres itself (Sinkhorn's reverse mode included).

On the CPU, for contiguous float32 or float64 tensors, the update, its reverse mode and the
read's additions to dX (Hpre du^T and the coefficients' t x) run as native kernels
(:mod:`mhc_torch.streams.kernels`), one pass over the streams each; elsewhere as PyTorch
operations (batched and outer products).

Static coefficients arrive per layer, (n,) and (n, n), and are expanded over the tokens;
their gradients are summed over the tokens. The streams keep their dtype: coefficients and
y are cast to it, with autocast off, so a float32 residual stream stays float32.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mhc_spec.streams import StreamConfig
from mhc_torch.projection import autocast_disabled
from mhc_torch.streams import kernels
from mhc_torch.streams.coefficients import (
    DynamicCoefficients,
    LayerParameters,
    as_dtype,
    compute_dtype,
    dynamic_coefficients,
    dynamic_coefficients_backward,
    dynamic_logits_reference,
    fused_iterations,
    project_residual,
    split_logits,
    user_projection,
)
from mhc_torch.streams.sinkhorn import use_reference_operations

Coefficients = tuple[Tensor, Tensor, Tensor]


class LayerRecord:
    """What one layer's read and write nodes share: X (and whether it needs a gradient) from
    the read for the write, and the write's backward results for the read's backward: dX so
    far (B, n, C) and dHres."""

    __slots__ = ("dhres", "gradients", "streams", "streams_grad")

    def __init__(self) -> None:
        self.streams: Tensor | None = None
        self.streams_grad = False
        self.gradients: Tensor | None = None
        self.dhres: Tensor | None = None

    def take_gradients(self, streams: Tensor) -> tuple[Tensor | None, Tensor]:
        """(dX so far (B, n, C) or None when X needs no gradient, dHres (B, n, n)) from the
        write's backward; zeros if it did not run (a loss that does not reach X_next). The
        read adds its terms to dX in place."""
        gradients, dhres = self.gradients, self.dhres
        self.gradients = self.dhres = None
        count, n, width = streams.shape
        if gradients is None and self.streams_grad:
            gradients = streams.new_zeros((count, n, width))
        if dhres is None:
            dhres = streams.new_zeros((count, n, n))
        return gradients, dhres


def branch_input(hpre: Tensor, streams: Tensor) -> Tensor:
    """u = sum_i Hpre[i] X[i]: (B, C) from Hpre (B, n) and X (B, n, C)."""
    return torch.bmm(hpre.unsqueeze(-2), streams).squeeze(-2)


def _row_products(row: Tensor, streams: Tensor) -> Tensor:
    """<v, X[i]> for every token: (B, n) from v (B, C) and X (B, n, C). As a row vector times
    X^T: ~2x faster on CPU than bmm's matrix-vector form X v."""
    return torch.bmm(row.unsqueeze(-2), streams.transpose(-2, -1)).squeeze(-2)


def _branch_input_backward(du: Tensor | None, streams: Tensor) -> Tensor:
    """dHpre = du X^T (B, n); zeros if u got no gradient."""
    if du is None:
        return streams.new_zeros(streams.shape[:2])
    return _row_products(du, streams)


def _add_read_gradients(dstreams: Tensor | None, hpre: Tensor, du: Tensor | None,
                        streams: Tensor, through_rms: Tensor | None) -> None:
    """dX += Hpre du^T + through_rms X in place, for Hpre (B, n), du (B, C) and
    through_rms (B,) (each term skipped where its cotangent is None)."""
    if dstreams is None:
        return
    hpre = as_dtype(hpre, streams.dtype)
    if du is not None and kernels.streams_usable(
            dstreams, streams, hpre, du, *(() if through_rms is None else (through_rms,))):
        kernels.read_backward(dstreams, hpre, du, through_rms, streams)
        return
    if du is not None:
        dstreams.addcmul_(hpre.unsqueeze(-1), du.unsqueeze(-2))
    if through_rms is not None:  # in through_rms's precision when it is wider than X's
        dstreams.addcmul_(streams, through_rms.view(-1, 1, 1))


class _DynamicRead(torch.autograd.Function):
    """(u, Hpre, Hpost, Hres or Hres~) of a dynamic layer for streams (B, n, C)."""

    @staticmethod
    def forward(ctx, streams: Tensor, projection: Tensor, scale: Tensor, bias: Tensor,
                record: LayerRecord, eps: float, iterations: int, external: bool
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        params = LayerParameters(projection, scale, bias)
        with autocast_disabled(streams.device.type):
            saved = dynamic_coefficients(streams, params, eps, iterations)
            u = branch_input(as_dtype(saved.hpre, streams.dtype), streams)
        record.streams, record.streams_grad = streams, ctx.needs_input_grad[0]
        # Intermediates only this node reaches (the Sinkhorn iterates among them) stay plain
        # attributes, which skips save_for_backward's per-tensor bookkeeping; the outputs
        # must be saved properly (an output on ctx would be a reference cycle).
        ctx.saved = saved._replace(hpre=None, hpost=None, hres=None)
        ctx.record, ctx.external, ctx.bias_dtype = record, external, bias.dtype
        ctx.set_materialize_grads(False)  # no zero tensors for Hpre, Hres (never used)
        ctx.save_for_backward(streams, projection, scale, saved.hpre)
        ctx.mark_non_differentiable(saved.hpre)
        if not external:
            ctx.mark_non_differentiable(saved.hres)
        return u, saved.hpre, saved.hpost, saved.hres

    @staticmethod
    @once_differentiable
    def backward(ctx, du: Tensor, _dhpre: Tensor, dhpost: Tensor, dres: Tensor
                 ) -> tuple[Tensor | None, ...]:
        streams, projection, scale, hpre = ctx.saved_tensors
        saved: DynamicCoefficients = ctx.saved
        dstreams, dhres = ctx.record.take_gradients(streams)
        dtype = saved.flat.dtype
        du = None if du is None else as_dtype(du, streams.dtype)
        dhpre = _branch_input_backward(du, streams)
        if dhpost is None:
            dhpost = torch.zeros_like(hpre)
        if ctx.external and dres is not None:
            dhres = dres  # dLoss/dHres~ through the user's projection
        dprojection, dscale, dbias, through_rms = dynamic_coefficients_backward(
            saved, LayerParameters(projection, scale, None), as_dtype(dhpre, dtype),
            as_dtype(dhpost, dtype), as_dtype(dhres, dtype),
            None if dstreams is None else dstreams.view(streams.shape[0], -1))
        _add_read_gradients(dstreams, hpre, du, streams, through_rms)
        return (dstreams, as_dtype(dprojection, projection.dtype), as_dtype(dscale, scale.dtype),
                as_dtype(dbias, ctx.bias_dtype), None, None, None, None)


class _StaticRead(torch.autograd.Function):
    """(u, Hpre, Hpost, Hres) per token for streams (B, n, C) and one layer's static Hpre
    (n,), Hpost (n,), Hres (n, n)."""

    @staticmethod
    def forward(ctx, streams: Tensor, hpre: Tensor, hpost: Tensor, hres: Tensor,
                record: LayerRecord) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        count, n = streams.shape[0], hpre.shape[0]
        tokens_pre = hpre.expand(count, n).contiguous()
        tokens_res = hres.expand(count, n, n).contiguous()
        with autocast_disabled(streams.device.type):
            u = branch_input(as_dtype(tokens_pre, streams.dtype), streams)
        record.streams, record.streams_grad = streams, ctx.needs_input_grad[0]
        ctx.record = record
        ctx.set_materialize_grads(False)  # no zero tensors for Hpre, Hres (never used)
        ctx.save_for_backward(streams, hpre)
        ctx.mark_non_differentiable(tokens_pre, tokens_res)
        return u, tokens_pre, hpost.expand(count, n).contiguous(), tokens_res

    @staticmethod
    @once_differentiable
    def backward(ctx, du: Tensor, _dhpre: Tensor, dhpost: Tensor, _dhres: Tensor
                 ) -> tuple[Tensor | None, ...]:
        streams, hpre = ctx.saved_tensors
        dstreams, dhres = ctx.record.take_gradients(streams)
        du = None if du is None else as_dtype(du, streams.dtype)
        dhpre = _branch_input_backward(du, streams).sum(dim=0)
        _add_read_gradients(dstreams, hpre.expand(streams.shape[:2]).contiguous(), du, streams,
                            None)
        dhpost = torch.zeros_like(hpre) if dhpost is None else dhpost.sum(dim=0)
        return (dstreams, as_dtype(dhpre, hpre.dtype), dhpost,
                as_dtype(dhres.sum(dim=0), hpre.dtype), None)


class _WriteStreams(torch.autograd.Function):
    """X_next = Hres X + Hpost y, with X from the layer's read (``record``)."""

    @staticmethod
    def forward(ctx, y: Tensor, hpost: Tensor, hres: Tensor, record: LayerRecord) -> Tensor:
        streams, record.streams = record.streams, None
        dtype = streams.dtype
        with autocast_disabled(streams.device.type):
            hres, hpost, y = as_dtype(hres, dtype), as_dtype(hpost, dtype), as_dtype(y, dtype)
            if kernels.streams_usable(streams, y, hres, hpost):
                out = kernels.update_forward(streams, y, hres, hpost)
            else:
                out = torch.bmm(hres, streams)
                out.addcmul_(hpost.unsqueeze(-1), y.unsqueeze(-2))
        ctx.record = record
        ctx.save_for_backward(y, hpost, hres, streams)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        y, hpost, hres, streams = ctx.saved_tensors
        dtype = streams.dtype
        # A reduce by sum or mean hands back an expanded (stride 0) gradient, which sends
        # the four products below to bmm's per-matrix fallback: ~40x slower than one copy.
        grad = as_dtype(grad, dtype).contiguous()
        record = ctx.record
        if kernels.streams_usable(streams, grad, y, hres, hpost):
            record.gradients, dy, dhpost, dhres = kernels.update_backward(
                grad, streams, y, hres, hpost, record.streams_grad)
        else:
            if record.streams_grad:
                record.gradients = torch.bmm(hres.transpose(-2, -1), grad)
            dy = torch.bmm(hpost.unsqueeze(-2), grad).squeeze(-2)
            dhpost = _row_products(y, grad)
            dhres = torch.bmm(grad, streams.transpose(-2, -1))
        if ctx.needs_input_grad[2]:
            return dy, dhpost, dhres, None
        record.dhres = dhres
        return dy, dhpost, None, None


def read_dynamic(config: StreamConfig, streams: Tensor, params: LayerParameters,
                 record: LayerRecord) -> tuple[Tensor, Coefficients]:
    """(u (B, C), (Hpre, Hpost, Hres) per token) of a dynamic layer for X (B, n, C)."""
    if use_reference_operations():
        with autocast_disabled(streams.device.type):
            dtype = compute_dtype(streams, params.projection)
            logits = dynamic_logits_reference(
                config, streams.to(dtype), LayerParameters(*(p.to(dtype) for p in params)))
            hpre, hpost, hres = split_logits(config, logits)
            return branch_input(hpre.to(streams.dtype), streams), (hpre, hpost, hres)
    external = user_projection(config)
    u, hpre, hpost, hres = _DynamicRead.apply(
        streams, params.projection, params.scale, params.bias, record, config.rms_eps,
        fused_iterations(config), external)
    if external:
        with autocast_disabled(streams.device.type):
            hres = project_residual(config, hres)
    return u, (hpre, hpost, hres)


def read_static(streams: Tensor, coefficients: Coefficients, record: LayerRecord
                ) -> tuple[Tensor, Coefficients]:
    """(u (B, C), (Hpre, Hpost, Hres) per token) for X (B, n, C) and one layer's static
    Hpre (n,), Hpost (n,), Hres (n, n)."""
    if use_reference_operations():
        count, n = streams.shape[0], coefficients[0].shape[0]
        hpre, hpost, hres = coefficients
        tokens = (hpre.expand(count, n), hpost.expand(count, n), hres.expand(count, n, n))
        with autocast_disabled(streams.device.type):
            return branch_input(tokens[0].to(streams.dtype), streams), tokens
    u, hpre, hpost, hres = _StaticRead.apply(streams, *coefficients, record)
    return u, (hpre, hpost, hres)


def write_streams(streams: Tensor, y: Tensor, coefficients: Coefficients,
                  record: LayerRecord) -> Tensor:
    """X_next (B, n, C) = Hres X + Hpost y for X (B, n, C), y (B, C) and the per-token
    (Hpre, Hpost, Hres) the layer's read returned."""
    _, hpost, hres = coefficients
    if use_reference_operations():
        dtype = streams.dtype
        with autocast_disabled(streams.device.type):
            return (hres.to(dtype) @ streams
                    + hpost.to(dtype).unsqueeze(-1) * y.to(dtype).unsqueeze(-2))
    return _WriteStreams.apply(y, hpost, hres, record)
