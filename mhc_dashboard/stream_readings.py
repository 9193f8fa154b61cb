"""What the dashboard logs for a multi-stream stack, shared by the Lightning callback and the
JAX TensorBoard monitor so both write the same tags, values and pictures.

A backend records one forward's coefficients, keeps at most MAX_SUMMARY_TOKENS tokens of
them (:func:`sample_tokens`, applied before the copy to host), and turns them into a
:class:`StreamReading` with :func:`read_streams`. Tags (``B`` = the stack's base tag, e.g.
``mhc/net``; ``l`` = layer 1..L):

=========================================  ==============  ====================================
tag                                        group           value
=========================================  ==============  ====================================
``B/composite_forward_gain``               mixing          token mean of max_i sum_j |P_L[i, j]|,
                                                           P_L = Hres_L ... Hres_1 (the paper's
                                                           stability measure)
``B/composite_backward_gain``              mixing          token mean of max_j sum_i |P_L[i, j]|
``B/composite_forward_gain_max``           mixing          the token maximum of the same
``B/composite_backward_gain_max``          mixing          the token maximum of the same
``B/composite_forward_gain/layer_l``       mixing          the token-mean gain of P_l
``B/composite_backward_gain/layer_l``      mixing          the token-mean gain of P_l
``B/layer_forward_gain/layer_l``           mixing          the token-mean gain of Hres_l
``B/layer_backward_gain/layer_l``          mixing          the token-mean gain of Hres_l
``B/hres_entropy/layer_l``                 entropy         token mean of the mean over rows i of
                                                           S(|Hres_l[i, :]| / sum_j |Hres_l[i, j]|)
                                                           (:func:`mhc_spec.streams.row_entropy`)
``B/hres_entropy/mean``                    entropy         its mean over layers
``B/grad_norm/<name>``                     gradients       ||dLoss/d<name>|| of each mixing
                                                           parameter (phi_pre, ..., b_res)
=========================================  ==============  ====================================

Pictures (mixing group, :mod:`mhc_dashboard.streams`): ``B/hres`` (each layer's token-mean
Hres), ``B/hpre_hpost`` and ``B/composite_gain`` (forward and backward gains of P_l against
l); :func:`stream_comparison` overlays the gains of several stacks (mhc next to hc).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mhc_dashboard.export import figure_to_rgb
from mhc_dashboard.streams import composite_gain_plot, hpre_hpost_heatmaps, hres_grid
from mhc_spec.config import check_int
from mhc_spec.streams.config import StreamConfig
from mhc_spec.streams.statistics import row_entropy, summary_from_coefficients, token_mean

# The token means (and maxima) are taken over an evenly strided sample of at most this
# many tokens: reading every token would move L * tokens * n^2 numbers to host on each
# logging step (400 MB of float32 Hres for 48 layers, 4 streams and 32 x 4096 tokens).
MAX_SUMMARY_TOKENS = 4096


def sample_tokens(values: Any, trailing: int, limit: int = MAX_SUMMARY_TOKENS) -> Any:
    """Per-layer values (L, ..., *trailing) as (L, T', *trailing): the token axes flattened
    (T tokens) and every ceil(T / limit)-th token kept, all of them when T <= limit. Works
    on NumPy, PyTorch and JAX arrays alike, so a backend samples before copying to host."""
    limit = check_int("limit", limit, 1)
    shape = tuple(values.shape)
    flat = values.reshape(shape[0], -1, *shape[len(shape) - trailing:])
    return flat[:, ::max(1, math.ceil(flat.shape[1] / limit))]


def stream_colour_mode(config: StreamConfig) -> str:
    """The Hres colour scale of a stack: ``"mhc"`` (0..1) for Sinkhorn, whose output is
    doubly stochastic, ``"hc"`` (signed) for hc and user projections."""
    return "mhc" if config.kind == "mhc/sinkhorn" else "hc"


@dataclass(frozen=True)
class StreamReading:
    """One stream stack's numbers at one logging step, host float64: ``summary`` of
    :func:`mhc_spec.streams.summary_from_coefficients` and ``entropy`` (L,), the token-mean
    row entropy of each Hres_l (both None when no coefficients were read), and
    ``grad_norms`` by mixing parameter name."""

    name: str
    kind: str
    mode: str
    summary: dict[str, np.ndarray] | None
    entropy: np.ndarray | None
    grad_norms: dict[str, float] = field(default_factory=dict)


def read_streams(name: str, config: StreamConfig,
                 coefficients: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
                 grad_norms: Mapping[str, float] | None = None) -> StreamReading:
    """The reading of stack ``name`` from host coefficients (Hpre, Hpost (L, ..., n), Hres
    (L, ..., n, n)), or None when only gradient norms were read."""
    summary = entropy = None
    if coefficients is not None:
        hpre, hpost, hres = coefficients
        summary = summary_from_coefficients(hpre, hpost, hres)
        entropy = token_mean(row_entropy(hres), 1).mean(axis=1)
    return StreamReading(name=name, kind=config.kind, mode=stream_colour_mode(config),
                         summary=summary, entropy=entropy, grad_norms=dict(grad_norms or {}))


def stream_scalars(base: str, reading: StreamReading, *, mixing: bool = True,
                   entropy: bool = True, gradients: bool = True) -> dict[str, float]:
    """Every scalar of the module docstring's table for the groups asked for (and read),
    by tag."""
    s = reading.summary
    values: dict[str, float] = {}
    if mixing and s is not None:
        for direction in ("forward", "backward"):
            composite = s[f"composite_{direction}_gain"]
            values[f"{base}/composite_{direction}_gain"] = float(composite[-1])
            values[f"{base}/composite_{direction}_gain_max"] = float(
                s[f"composite_{direction}_gain_max"][-1])
            for layer in range(1, composite.size):
                values[f"{base}/composite_{direction}_gain/layer_{layer}"] = float(
                    composite[layer])
                values[f"{base}/layer_{direction}_gain/layer_{layer}"] = float(
                    s[f"layer_{direction}_gain"][layer - 1])
    if entropy and reading.entropy is not None:
        for layer, value in enumerate(reading.entropy, start=1):
            values[f"{base}/hres_entropy/layer_{layer}"] = float(value)
        values[f"{base}/hres_entropy/mean"] = float(reading.entropy.mean())
    if gradients:
        for name, value in reading.grad_norms.items():
            values[f"{base}/grad_norm/{name}"] = float(value)
    return values


def stream_pictures(base: str, reading: StreamReading, step: int) -> dict[str, np.ndarray]:
    """The mixing group's pictures of one stack as uint8 RGB arrays, by tag (none without
    coefficients)."""
    s, label = reading.summary, f"{base} ({reading.kind})"
    if s is None:
        return {}
    return {
        f"{base}/hres": figure_to_rgb(hres_grid(
            s["hres_mean"], title=f"{label}: Hres, step {step}", mode=reading.mode)),
        f"{base}/hpre_hpost": figure_to_rgb(hpre_hpost_heatmaps(
            s["hpre_mean"], s["hpost_mean"], title=f"{label}: Hpre and Hpost, step {step}")),
        f"{base}/composite_gain": figure_to_rgb(composite_gain_plot(
            {reading.kind: s}, title=f"{label}: composite gain, step {step}")),
    }


def stream_comparison(readings: Sequence[StreamReading], step: int) -> np.ndarray:
    """The composite gains of several stacks in one picture, each labelled "name (kind)"."""
    readings = [r for r in readings if r.summary is not None]
    if not readings:
        raise ValueError("readings must hold at least one stream reading with coefficients.")
    summaries = {f"{r.name} ({r.kind})": r.summary for r in readings}
    return figure_to_rgb(composite_gain_plot(
        summaries, title=f"composite gain of every stream stack, step {step}"))
