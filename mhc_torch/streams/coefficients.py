"""A layer's mixing coefficients Hpre, Hpost, Hres, and the branch input u = sum_i Hpre[i] X[i].

The three projections of :mod:`mhc_spec.streams.coefficients` are fused into one matrix
Phi = [phi_pre | phi_post | mat(phi_res)] of shape (nC, K), K = 2n + n^2, with a per-column
scale s = (a_pre 1_n, a_post 1_n, a_res 1_{n^2}) and bias beta = (b_pre, b_post, vec(b_res)).
For each token's streams X (n, C), x = flatten(X):

    r = sqrt(mean(x^2) + eps);   z = beta + s * (x @ Phi) / r                  (K,)
    Hpre = sigmoid(z[:n]);  Hpost = 2 sigmoid(z[n:2n]);  Hres = P(mat(z[2n:]))

which is the spec's RMSNorm-then-project, since x' @ phi = (x @ phi) / r: x' is never
materialised. Static coefficients are z = beta for every token.

The eager training path runs the read of a dynamic layer (coefficients and u) as one
autograd node, :class:`_DynamicRead`, whose reverse mode is derived by hand (w = s / r):

    dHpre[i] = <du, X[i]>;   dz = (dHpre Hpre (1 - Hpre), dHpost Hpost (1 - Hpost / 2), P^T(dHres))
    dbeta = sum_t dz;   ds = sum_t dz (x @ Phi) / r;   dPhi = x^T (dz w)
    dx = (dz w) @ Phi^T - x <dz s, x @ Phi> / (nC r^3);   dX[i] += Hpre[i] du

The coefficient arithmetic runs in the parameters' precision (float32 under autocast).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mhc_spec.streams import SINKHORN, StreamConfig
from mhc_torch.projection import autocast_disabled
from mhc_torch.streams.sinkhorn import (
    SinkhornIterates,
    sinkhorn,
    sinkhorn_backward,
    sinkhorn_forward,
    use_reference_operations,
)


class LayerParameters(NamedTuple):
    """One layer's mixing parameters in the fused layout: ``projection`` Phi (nC, K) and
    ``scale`` s (K,) (None when static) and ``bias`` beta (K,)."""

    projection: Tensor | None
    scale: Tensor | None
    bias: Tensor


def pack_parameters(
    config: StreamConfig,
    b_pre: Tensor,
    b_post: Tensor,
    b_res: Tensor,
    phi: tuple[Tensor, Tensor, Tensor] | None = None,
    a: tuple[Tensor, Tensor, Tensor] | None = None,
) -> LayerParameters:
    """(Phi, s, beta) from the portable layout, with any leading (e.g. layer) axes:
    phi = (phi_pre (..., nC, n), phi_post (..., nC, n), phi_res (..., nC, n, n)),
    a = (a_pre, a_post, a_res) (...,), b_pre and b_post (..., n), b_res (..., n, n)."""
    n = config.streams
    bias = torch.cat([b_pre, b_post, b_res.flatten(-2)], dim=-1)
    if phi is None or a is None:
        return LayerParameters(None, None, bias)
    phi_pre, phi_post, phi_res = phi
    projection = torch.cat([phi_pre, phi_post, phi_res.flatten(-2)], dim=-1)
    scale = torch.cat([value.unsqueeze(-1).expand(*value.shape, size)
                       for value, size in zip(a, (n, n, n * n), strict=True)], dim=-1)
    return LayerParameters(projection, scale, bias)


def compute_dtype(streams: Tensor, parameter: Tensor) -> torch.dtype:
    """The coefficients' precision: the wider of the streams' and the parameters' dtypes."""
    return torch.promote_types(streams.dtype, parameter.dtype)


def project_residual(config: StreamConfig, logits: Tensor) -> Tensor:
    """Hres = SK(Hres~) (mhc, sinkhorn), the user's P(Hres~) (mhc, callable) or Hres~ (hc)."""
    if not config.constrained:
        return logits
    if config.constraint == SINKHORN:
        return sinkhorn(logits, config.sinkhorn_iterations)
    out = config.constraint(logits)
    if not isinstance(out, Tensor) or out.shape != logits.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"constraint={config.constraint!r} returned {got}: a projection must return a "
            f"tensor of the shape of its logits {tuple(logits.shape)}"
        )
    return out


def split_logits(config: StreamConfig, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(Hpre, Hpost, Hres) from z (..., K)."""
    n = config.streams
    gates = torch.sigmoid(logits[..., : 2 * n])
    res_logits = logits[..., 2 * n:].unflatten(-1, (n, n))
    return gates[..., :n], 2.0 * gates[..., n:], project_residual(config, res_logits)


def static_coefficients(config: StreamConfig, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(Hpre (..., n), Hpost (..., n), Hres (..., n, n)) of z = beta (..., K), in beta's dtype
    with autocast off; the leading axes are layers, not tokens."""
    with autocast_disabled(bias.device.type):
        return split_logits(config, bias)


def dynamic_logits_reference(config: StreamConfig, streams: Tensor,
                             params: LayerParameters) -> Tensor:
    """z (B, K) for streams (B, n, C) with plain differentiable operations."""
    flat = streams.flatten(-2)
    inverse_rms = torch.rsqrt(flat.square().mean(dim=-1, keepdim=True) + config.rms_eps)
    return torch.addcmul(params.bias, flat @ params.projection, inverse_rms * params.scale)


def branch_input(hpre: Tensor, streams: Tensor) -> Tensor:
    """u = sum_i Hpre[i] X[i]: (B, C) from Hpre (B, n) and X (B, n, C)."""
    return torch.bmm(hpre.unsqueeze(-2), streams).squeeze(-2)


def _fused_iterations(config: StreamConfig) -> int:
    """T when the node projects Hres by Sinkhorn itself; 0 when it returns Hres~ (hc, where
    Hres = Hres~, or a user projection, applied outside under autograd)."""
    if config.constrained and config.constraint == SINKHORN:
        return config.sinkhorn_iterations
    return 0


class _DynamicRead(torch.autograd.Function):
    """(u, Hpre, Hpost, Hres or Hres~) of one dynamic layer for streams (B, n, C)."""

    @staticmethod
    def forward(ctx, streams: Tensor, projection: Tensor, scale: Tensor, bias: Tensor,
                eps: float, iterations: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        count, n, width = streams.shape
        dtype = compute_dtype(streams, projection)
        with autocast_disabled(streams.device.type):
            flat = streams.reshape(count, n * width).to(dtype)
            inverse_rms = torch.linalg.vector_norm(flat, dim=1)
            inverse_rms.square_().div_(n * width).add_(eps).rsqrt_()
            raw = torch.mm(flat, projection.to(dtype))
            weight = torch.outer(inverse_rms, scale.to(dtype))
            logits = torch.addcmul(bias.to(dtype), raw, weight)
            gates = torch.sigmoid(logits[:, : 2 * n])
            hpre, hpost = gates[:, :n], gates[:, n:] * 2.0
            # d gate / d logit: sigmoid' for Hpre, 2 sigmoid' for Hpost.
            slopes = gates * (1.0 - gates)
            slopes[:, n:] *= 2.0
            res_logits = logits[:, 2 * n:].view(count, n, n)
            if iterations:
                saved = sinkhorn_forward(res_logits.permute(1, 2, 0), iterations)
                hres = saved.result.permute(2, 0, 1).contiguous()
            else:
                saved = SinkhornIterates(*(logits.new_empty(0),) * 3)
                hres = res_logits.contiguous()
            hpre = hpre.contiguous()
            u = branch_input(hpre.to(streams.dtype), streams)
        ctx.save_for_backward(flat, projection, scale, raw, weight, inverse_rms, slopes, hpre,
                              *saved)
        ctx.mark_non_differentiable(hpre)
        ctx.streams_dtype, ctx.bias_dtype = streams.dtype, bias.dtype
        return u, hpre, hpost, hres

    @staticmethod
    @once_differentiable
    def backward(ctx, du: Tensor, _dhpre: Tensor, dhpost: Tensor, dhres: Tensor
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, None, None]:
        flat, projection, scale, raw, weight, inverse_rms, slopes, hpre, *saved = (
            ctx.saved_tensors)
        count, n, width = flat.shape[0], hpre.shape[1], flat.shape[1] // hpre.shape[1]
        dtype = flat.dtype
        streams = flat.view(count, n, width)
        du = du.to(dtype)
        dlogits = flat.new_empty((count, 2 * n + n * n))
        dlogits[:, :n] = torch.bmm(streams, du.unsqueeze(-1)).squeeze(-1)
        dlogits[:, n: 2 * n] = dhpost
        dlogits[:, : 2 * n] *= slopes
        dres = dlogits[:, 2 * n:].view(count, n, n)
        if saved[0].numel():
            dres.copy_(sinkhorn_backward(SinkhornIterates(*saved),
                                         dhres.permute(1, 2, 0)).permute(2, 0, 1))
        else:
            dres.copy_(dhres)
        dbias = dlogits.sum(dim=0)
        scaled_raw = dlogits * raw
        dscale = torch.mv(scaled_raw.t(), inverse_rms)
        dz_w = dlogits.mul_(weight)
        dprojection = torch.mm(flat.t(), dz_w)
        dflat = torch.mm(dz_w, projection.to(dtype).t())
        # Through r: d(1/r)/dx = -x / (nC r^3), times dLoss/d(1/r) = <dz s, x @ Phi>.
        through_rms = torch.mv(scaled_raw, scale.to(dtype)).mul_(inverse_rms.pow(3))
        dflat.addcmul_(flat, through_rms.div_(-n * width).unsqueeze(-1))
        dstreams = dflat.view(count, n, width)
        dstreams.baddbmm_(hpre.unsqueeze(-1), du.unsqueeze(-2))
        return (dstreams.to(ctx.streams_dtype), dprojection.to(projection.dtype),
                dscale.to(scale.dtype), dbias.to(ctx.bias_dtype), None, None)


def dynamic_read(config: StreamConfig, streams: Tensor, params: LayerParameters
                 ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """(u (B, C), (Hpre, Hpost, Hres)) of a dynamic layer for streams X (B, n, C).

    Eager: one :class:`_DynamicRead` node (Hres by a user projection is applied to its Hres~
    output under autograd). Under torch.compile or torch.func: plain operations."""
    if use_reference_operations():
        with autocast_disabled(streams.device.type):
            dtype = compute_dtype(streams, params.projection)
            logits = dynamic_logits_reference(
                config, streams.to(dtype), LayerParameters(*(p.to(dtype) for p in params)))
            hpre, hpost, hres = split_logits(config, logits)
            return branch_input(hpre.to(streams.dtype), streams), (hpre, hpost, hres)
    u, hpre, hpost, hres = _DynamicRead.apply(
        streams, params.projection, params.scale, params.bias, config.rms_eps,
        _fused_iterations(config))
    if config.constrained and config.constraint != SINKHORN:
        with autocast_disabled(streams.device.type):
            hres = project_residual(config, hres)
    return u, (hpre, hpost, hres)
