"""The map P from Hres logits to Hres: Sinkhorn-Knopp, a user projection, or none (hc).

    mhc + "sinkhorn":  Hres = SK(Hres~)        (T = sinkhorn_iterations)
    mhc + callable:    Hres = P(Hres~)         (the user's projection)
    hc:                Hres = Hres~            (free)

A user projection gets the logits of shape (..., n, n) and returns Hres of the same shape.
Backends differentiate it with their own autodiff; the spec's reference gradients need it
to also have a method ``vjp(logits, cotangent) -> dLoss/dlogits``.
"""

from __future__ import annotations

import numpy as np

from mhc_spec.streams.config import SINKHORN, StreamConfig
from mhc_spec.streams.sinkhorn import sinkhorn, sinkhorn_vjp


def project_residual(config: StreamConfig, logits: np.ndarray) -> np.ndarray:
    """Hres = P(Hres~) for the configured mode and constraint."""
    logits = np.asarray(logits)
    if not config.constrained:
        return logits.copy()
    if config.constraint == SINKHORN:
        return sinkhorn(logits, config.sinkhorn_iterations)
    out = np.asarray(config.constraint(logits))
    check_projection_output(config, out.shape, logits.shape)
    return out


def check_projection_output(config: StreamConfig, returned: object,
                            logits_shape: tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless a user projection returned the shape of its logits
    (``returned``: the output's shape, or a description of a non-array output)."""
    if returned != tuple(logits_shape):
        raise ValueError(
            f"constraint={config.constraint!r} returned {returned}: a projection must return "
            f"an array of the shape of its logits {tuple(logits_shape)}."
        )


def project_residual_vjp(
    config: StreamConfig, logits: np.ndarray, cotangent: np.ndarray
) -> np.ndarray:
    """dLoss/dHres~ given dLoss/dHres."""
    cotangent = np.asarray(cotangent)
    if not config.constrained:
        return cotangent.copy()
    if config.constraint == SINKHORN:
        return sinkhorn_vjp(logits, config.sinkhorn_iterations, cotangent)
    vjp = getattr(config.constraint, "vjp", None)
    if vjp is None:
        raise TypeError(
            f"constraint={config.constraint!r} has no vjp(logits, cotangent) method: the "
            "spec's reference gradients need one (backends use their own autodiff)."
        )
    return np.asarray(vjp(np.asarray(logits), cotangent))
