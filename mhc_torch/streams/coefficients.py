"""A layer's mixing coefficients Hpre, Hpost, Hres: the fused maths and its reverse mode.

The three projections of :mod:`mhc_spec.streams.coefficients` are fused into one matrix
Phi = [phi_pre | phi_post | mat(phi_res)] of shape (nC, K), K = 2n + n^2, with a per-column
scale s = (a_pre 1_n, a_post 1_n, a_res 1_{n^2}) and bias beta = (b_pre, b_post, vec(b_res)).
For each token's streams X (n, C), x = flatten(X):

    r = sqrt(mean(x^2) + eps);   z = beta + s * (x @ Phi) / r                  (K,)
    Hpre = sigmoid(z[:n]);  Hpost = 2 sigmoid(z[n:2n]);  Hres = P(mat(z[2n:]))

which is the spec's RMSNorm-then-project, since x' @ phi = (x @ phi) / r: x' is never
materialised. Static coefficients are z = beta for every token.

Reverse mode (used by the eager autograd nodes of :mod:`mhc_torch.streams.mixing`), with
w = s / r and the cotangents dHpre, dHpost, dHres:

    dz = (dHpre Hpre (1 - Hpre), dHpost Hpost (1 - Hpost / 2), P^T(dHres))
    dbeta = sum_t dz;   ds = sum_t dz (x @ Phi) / r;   dPhi = x^T (dz w)
    dx = (dz w) @ Phi^T + t x,   t = -<dz s, x @ Phi> / (nC r^3)

The coefficient arithmetic runs in the parameters' precision (float32 under autocast).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from mhc_spec.streams import SINKHORN, StreamConfig
from mhc_spec.streams.constraint import check_projection_output
from mhc_torch.projection import autocast_disabled
from mhc_torch.streams import kernels
from mhc_torch.streams.sinkhorn import sinkhorn, sinkhorn_backward, sinkhorn_forward


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


def as_dtype(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """``tensor`` in ``dtype``, skipping the dispatch of a no-op ``to`` (the eager nodes make
    dozens of these calls per layer)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


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
    check_projection_output(
        config, tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__,
        tuple(logits.shape))
    return out


def user_projection(config: StreamConfig) -> bool:
    """Whether Hres comes from a user callable (differentiated by autograd)."""
    return config.constrained and config.constraint != SINKHORN


def fused_iterations(config: StreamConfig) -> int:
    """T when the eager node projects Hres by Sinkhorn itself; 0 when Hres = Hres~ (hc) or a
    user projection is applied to the node's Hres~ under autograd."""
    return config.sinkhorn_iterations if config.kind == "mhc/sinkhorn" else 0


def split_logits(config: StreamConfig, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(Hpre, Hpost, Hres) from z (..., K) with differentiable operations."""
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


class DynamicCoefficients(NamedTuple):
    """The coefficients of B tokens, (B, n), (B, n), (B, n, n) (Hres~ when ``iterations`` was
    0), and what their reverse mode reads: x (B, nC), x @ Phi (B, K), w = s / r (B, K),
    1/r (B,), d gate / d logit (B, 2n), and either z (B, K) for the native kernels (which
    recompute Sinkhorn's iterates) or SK(Hres~) with its log-iterates (tokens last)."""

    hpre: Tensor
    hpost: Tensor
    hres: Tensor
    flat: Tensor
    raw: Tensor
    weight: Tensor
    inverse_rms: Tensor
    slopes: Tensor
    sinkhorn_result: Tensor | None
    log_iterates: list[Tensor]
    iterations: int
    native_logits: Tensor | None


def dynamic_coefficients(streams: Tensor, params: LayerParameters, eps: float,
                         iterations: int) -> DynamicCoefficients:
    """Hpre, Hpost and Hres (SK with T = ``iterations``, or Hres~ when 0) of streams (B, n, C),
    in the compute dtype, without autograd."""
    count, n, width = streams.shape
    dtype = compute_dtype(streams, params.projection)
    flat = as_dtype(streams.reshape(count, n * width), dtype)
    native = kernels.usable(dtype, flat.device)
    if native and flat.is_contiguous():
        inverse_rms = kernels.inverse_rms(flat, eps)
    else:
        inverse_rms = torch.linalg.vector_norm(flat, dim=1)
        inverse_rms.square_().div_(n * width).add_(eps).rsqrt_()
    raw = torch.mm(flat, as_dtype(params.projection, dtype))
    if native:
        out = kernels.coefficients_forward(raw, inverse_rms, as_dtype(params.scale, dtype),
                                           as_dtype(params.bias, dtype), n, iterations)
        return DynamicCoefficients(
            hpre=out.hpre, hpost=out.hpost, hres=out.hres, flat=flat, raw=raw,
            weight=out.weight, inverse_rms=inverse_rms, slopes=out.slopes,
            sinkhorn_result=None, log_iterates=[], iterations=iterations,
            native_logits=out.logits)
    weight = torch.outer(inverse_rms, as_dtype(params.scale, dtype))
    logits = torch.addcmul(as_dtype(params.bias, dtype), raw, weight)
    gates = torch.sigmoid(logits.narrow(1, 0, 2 * n))
    slopes = torch.addcmul(gates, gates, gates, value=-1.0)  # sigmoid' = g (1 - g)
    slopes.narrow(1, n, n).mul_(2.0)  # Hpost = 2 sigmoid
    res_logits = logits.narrow(1, 2 * n, n * n).view(count, n, n)
    result, log_iterates = None, []
    if iterations:
        result, log_iterates = sinkhorn_forward(res_logits.permute(1, 2, 0), iterations)
        hres = result.permute(2, 0, 1).contiguous()
    else:
        hres = res_logits.contiguous()
    return DynamicCoefficients(
        hpre=gates.narrow(1, 0, n), hpost=gates.narrow(1, n, n).mul(2.0),
        hres=hres, flat=flat,
        raw=raw, weight=weight, inverse_rms=inverse_rms, slopes=slopes,
        sinkhorn_result=result, log_iterates=log_iterates, iterations=iterations,
        native_logits=None,
    )


def _logits_backward(saved: DynamicCoefficients, d_hpre: Tensor, d_hpost: Tensor,
                     d_res: Tensor) -> Tensor:
    """dz (B, K) with PyTorch operations (Sinkhorn through its saved log-iterates)."""
    count, n = d_hpre.shape
    dlogits = saved.flat.new_empty((count, 2 * n + n * n))
    torch.mul(d_hpre, saved.slopes.narrow(1, 0, n), out=dlogits.narrow(1, 0, n))
    torch.mul(d_hpost, saved.slopes.narrow(1, n, n), out=dlogits.narrow(1, n, n))
    dres = dlogits.narrow(1, 2 * n, n * n).view(count, n, n)
    if saved.sinkhorn_result is not None:
        dres.copy_(sinkhorn_backward(saved.sinkhorn_result, saved.log_iterates,
                                     d_res.permute(1, 2, 0)).permute(2, 0, 1))
    else:
        dres.copy_(d_res)
    return dlogits


def dynamic_coefficients_backward(
    saved: DynamicCoefficients, params: LayerParameters, d_hpre: Tensor, d_hpost: Tensor,
    d_res: Tensor, d_flat: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """(dPhi, ds, dbeta, t) given dHpre, dHpost and dHres (dHres~ when the forward did not
    project). Unless ``d_flat`` (B, nC) is None (x needs no gradient), adds (dz w) Phi^T to
    it in place and returns t = -<dz s, x @ Phi> / (nC r^3) (B,), so that dLoss/dx through
    the coefficients is complete once the caller adds t x (fused with its own terms)."""
    dtype = saved.flat.dtype
    scale = as_dtype(params.scale, dtype)
    if saved.native_logits is not None:
        dz_w = kernels.coefficients_backward(d_hpre, d_hpost, d_res, saved.slopes,
                                             saved.native_logits, saved.iterations)
        dbias, dscale, through_rms = kernels.coefficients_reduce(
            dz_w, saved.raw, saved.weight, saved.inverse_rms, scale,
            None if d_flat is None else d_flat.shape[1])
    else:
        dlogits = _logits_backward(saved, d_hpre, d_hpost, d_res)
        dbias = dlogits.sum(dim=0)
        scaled_raw = dlogits * saved.raw
        dscale = torch.mv(scaled_raw.t(), saved.inverse_rms)
        # Through r: d(1/r)/dx = -x / (nC r^3), times dLoss/d(1/r) = <dz s, x @ Phi>.
        through_rms = None if d_flat is None else torch.mv(scaled_raw, scale).mul_(
            saved.inverse_rms.pow(3)).div_(-d_flat.shape[1])
        dz_w = dlogits.mul_(saved.weight)
    # (dz w)^T x, transposed back: ~2x faster than x^T (dz w) for this skinny product.
    dprojection = torch.mm(dz_w.t(), saved.flat).t()
    if d_flat is None:
        return dprojection, dscale, dbias, None
    projection = as_dtype(params.projection, dtype)
    if d_flat.dtype == dtype:
        d_flat.addmm_(dz_w, projection.t())
    else:
        d_flat.add_(torch.mm(dz_w, projection.t()))
    return dprojection, dscale, dbias, through_rms
