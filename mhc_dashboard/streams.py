"""Pictures of a multi-stream (DeepSeek mHC) stack, from the numbers of
:func:`mhc_spec.streams.summary_from_coefficients`.

- :func:`hres_grid`: each layer's token-mean Hres (n, n), one panel per layer;
  Hres[i, j] takes stream j of X_{l-1} into stream i of X_l.
- :func:`hpre_hpost_heatmaps`: token-mean Hpre (what the branch reads) and Hpost (where its
  output is written), layers by streams.
- :func:`composite_gain_plot`: the paper's stability measure, forward and backward gains of
  the composites P_l = Hres_l ... Hres_1 against l, one line per labelled stack, so an mhc
  stack and an hc one (Hres free, initialised to I) can be drawn side by side.

Colour scales are fixed per quantity (:func:`stream_colour_scale`). Unlike the history
family's maps, exact zeros are ordinary values here (an hc Hres starts as I); non-finite
entries are drawn in magenta.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.ticker import MaxNLocator

from mhc_spec.config import check_choice
from mhc_spec.streams.config import STREAM_MODES

QUANTITIES = ("hres", "hpre", "hpost")
NON_FINITE_COLOUR = "magenta"
# Hres cells carry their value while n is this small (the text still fits a panel's cell).
MAX_ANNOTATED_STREAMS = 4
# Hpre / Hpost maps carry values up to this many cells.
MAX_ANNOTATED_CELLS = 64
MAX_GRID_COLUMNS = 6
MAX_TICKS = 8
MAX_MARKED_POINTS = 40
# The gain axes always show at least 1 / GAIN_MARGIN .. GAIN_MARGIN.
GAIN_MARGIN = 2.0
# Text on a cell turns white below this luminance of the cell's colour.
DARK_LUMINANCE = 0.5


def stream_colour_scale(quantity: str, mode: str = "mhc") -> tuple[Colormap, float, float]:
    """The fixed scale (cmap, vmin, vmax) of a coefficient:

    - ``hres``: (YlOrRd, 0, 1) for ``mhc`` (Sinkhorn output is doubly stochastic), or
      (RdBu_r, -1, 1) for ``hc`` and any Hres not known to lie in [0, 1] (values beyond +-1
      saturate, shown by the colour bar's pointed ends);
    - ``hpre`` = sigmoid(.): (YlOrRd, 0, 1); ``hpost`` = 2 sigmoid(.): (YlOrRd, 0, 2).

    Non-finite entries take the colour map's "bad" colour, magenta.
    """
    check_choice("quantity", quantity, QUANTITIES)
    check_choice("mode", mode, STREAM_MODES)
    if quantity == "hres" and mode == "hc":
        name, low, high = "RdBu_r", -1.0, 1.0
    else:
        name, low, high = "YlOrRd", 0.0, 2.0 if quantity == "hpost" else 1.0
    return colormaps[name].with_extremes(bad=NON_FINITE_COLOUR), low, high


def _as_array(name: str, value: np.ndarray, shape: str, ndim: int) -> np.ndarray:
    a = np.asarray(value, dtype=np.float64)
    if a.ndim != ndim or 0 in a.shape:
        raise ValueError(f"{name} must be a non-empty {shape} array, got shape {a.shape}.")
    return a


def _ticks(count: int) -> list[int]:
    """About MAX_TICKS evenly spaced positions in 0..count-1, both ends included."""
    stride = max(1, math.ceil(count / MAX_TICKS))
    positions = list(range(0, count, stride))
    if positions[-1] != count - 1:
        positions.append(count - 1)
    return positions


def _annotate(ax: Axes, values: np.ndarray, cmap: Colormap, norm: Normalize,
              fontsize: float) -> None:
    """Print each value on its cell, white on dark colours."""
    for (row, col), value in np.ndenumerate(values):
        red, green, blue, _ = cmap(norm(value)) if np.isfinite(value) else (0, 0, 0, 1)
        dark = 0.299 * red + 0.587 * green + 0.114 * blue < DARK_LUMINANCE
        ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=fontsize,
                color="white" if dark else "black")


def _show(ax: Axes, values: np.ndarray, quantity: str, mode: str,
          annotate: bool, fontsize: float = 7.0) -> AxesImage:
    cmap, low, high = stream_colour_scale(quantity, mode)
    norm = Normalize(low, high)
    image = ax.imshow(values, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    if annotate:
        _annotate(ax, values, cmap, norm, fontsize)
    return image


def draw_hres(ax: Axes, hres: np.ndarray, mode: str = "mhc",
              title: str | None = None) -> AxesImage:
    """Draw one (n, n) Hres on ``ax``: row i = stream of X_l written, column j = stream of
    X_{l-1} read, values printed while n <= MAX_ANNOTATED_STREAMS."""
    m = _as_array("hres", hres, "(n, n)", 2)
    if m.shape[0] != m.shape[1]:
        raise ValueError(f"hres must be a non-empty (n, n) array, got shape {m.shape}.")
    n = m.shape[0]
    image = _show(ax, m, "hres", mode, annotate=n <= MAX_ANNOTATED_STREAMS)
    ticks = _ticks(n)
    ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=6)
    ax.set_yticks(ticks, [str(t) for t in ticks], fontsize=6)
    ax.tick_params(length=2, pad=1)
    if title is not None:
        ax.set_title(title, fontsize=8, pad=3)
    return image


def _colour_bar(fig: Figure, image: AxesImage, cax: Axes, quantity: str, mode: str,
                label: str) -> None:
    signed = quantity == "hres" and mode == "hc"
    fig.colorbar(image, cax=cax, extend="both" if signed else "neither", label=label)


def hres_grid(hres_mean: np.ndarray, title: str = "Hres per layer",
              mode: str = "mhc") -> Figure:
    """A panel per layer l = 1..L of the token-mean Hres_l (L, n, n), row by row with up to
    MAX_GRID_COLUMNS panels per row, one shared colour bar of :func:`stream_colour_scale`."""
    h = _as_array("hres_mean", hres_mean, "(L, n, n)", 3)
    if h.shape[1] != h.shape[2]:
        raise ValueError(f"hres_mean must be a non-empty (L, n, n) array, got shape {h.shape}.")
    depth, n = h.shape[:2]
    columns = min(depth, MAX_GRID_COLUMNS)
    rows = math.ceil(depth / columns)
    # Fixed margins in inches rather than a layout engine, which multiplies render time.
    # Annotated panels (n <= 4) grow with n so values fit; larger n is colour only.
    side = max(1.3, 0.3 + 0.3 * n) if n <= MAX_ANNOTATED_STREAMS else 1.5
    gap_x, gap_y, left, right, bottom, top = 0.3, 0.45, 0.35, 1.3, 0.2, 0.75
    width = left + columns * side + (columns - 1) * gap_x + right
    height = top + rows * side + (rows - 1) * gap_y + bottom
    fig = Figure(figsize=(width, height), dpi=100)
    image = None
    for layer in range(depth):
        row, col = divmod(layer, columns)
        x0 = left + col * (side + gap_x)
        y0 = height - top - (row + 1) * side - row * gap_y
        ax = fig.add_axes((x0 / width, y0 / height, side / width, side / height))
        image = draw_hres(ax, h[layer], mode, title=f"layer {layer + 1}")
    cax = fig.add_axes(((width - right + 0.25) / width, bottom / height, 0.15 / width,
                        (height - top - bottom) / height))
    _colour_bar(fig, image, cax, "hres", mode, "$H^{res}_l[i, j]$ (token mean)")
    fig.suptitle(f"{title}\nrow i = stream written, column j = stream read", fontsize=9,
                 y=1 - 0.08 / height, va="top")
    return fig


def draw_stream_weights(ax: Axes, values: np.ndarray, quantity: str,
                        title: str | None = None) -> AxesImage:
    """Draw Hpre or Hpost (L, n) on ``ax``: row l-1 = layer l, column i = stream i."""
    check_choice("quantity", quantity, ("hpre", "hpost"))
    a = _as_array(quantity, values, "(L, n)", 2)
    depth, n = a.shape
    image = _show(ax, a, quantity, "mhc", annotate=a.size <= MAX_ANNOTATED_CELLS)
    columns = _ticks(n)
    ax.set_xticks(columns, [str(c) for c in columns])
    rows = _ticks(depth)
    ax.set_yticks(rows, [str(r + 1) for r in rows])
    ax.set_xlabel("stream i")
    ax.set_ylabel("layer l")
    if title is not None:
        ax.set_title(title)
    return image


def hpre_hpost_heatmaps(hpre_mean: np.ndarray, hpost_mean: np.ndarray,
                        title: str = "Hpre and Hpost per layer") -> Figure:
    """Two heatmaps, layers 1..L by streams 0..n-1: the token-mean Hpre (L, n) (the branch
    reads u = sum_i Hpre[i] X[i]) and Hpost (L, n) (X[i] receives Hpost[i] F(u))."""
    pre = _as_array("hpre_mean", hpre_mean, "(L, n)", 2)
    post = _as_array("hpost_mean", hpost_mean, "(L, n)", 2)
    if pre.shape != post.shape:
        raise ValueError(f"hpre_mean {pre.shape} and hpost_mean {post.shape} must have the "
                         "same (L, n) shape.")
    depth, n = pre.shape
    panel_w = max(1.6, 0.5 * n)
    panel_h = min(max(1.6, 0.12 * depth + 0.8), 8.0)
    left, gap, bar, right, bottom, top = 0.7, 0.5, 0.9, 0.9, 0.6, 0.75
    width = left + 2 * panel_w + bar + gap + right
    height = bottom + panel_h + top
    fig = Figure(figsize=(width, height), dpi=100)
    for index, (quantity, values, label) in enumerate(
            (("hpre", pre, "$H^{pre}_l[i]$ (read)"), ("hpost", post, "$H^{post}_l[i]$ (write)"))):
        x0 = left + index * (panel_w + bar + gap)
        ax = fig.add_axes((x0 / width, bottom / height, panel_w / width, panel_h / height))
        image = draw_stream_weights(ax, values, quantity, title=label)
        cax = fig.add_axes(((x0 + panel_w + 0.12) / width, bottom / height, 0.15 / width,
                            panel_h / height))
        _colour_bar(fig, image, cax, quantity, "mhc", "token mean")
    fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
    return fig


def _as_gain(label: str, key: str, summary: Mapping[str, np.ndarray]) -> np.ndarray:
    if key not in summary:
        raise ValueError(f"the summary of {label!r} has no {key!r}; pass the dict of "
                         "mhc_spec.streams.summary_from_coefficients.")
    g = np.asarray(summary[key], dtype=np.float64)
    if g.ndim != 1 or g.size < 2:
        raise ValueError(f"{key} of {label!r} must be a 1-D array of L+1 >= 2 gains, "
                         f"got shape {g.shape}.")
    return g


def draw_composite_gains(ax: Axes, curves: Mapping[str, np.ndarray], ylabel: str) -> None:
    """Plot each labelled gain curve (L+1,) against l = 0..L on ``ax``, with the value 1
    dashed for reference and a log y-axis when every value is finite and > 0. The y-range
    always holds [1 / GAIN_MARGIN, GAIN_MARGIN], so gains that stay at 1 up to rounding
    draw a flat line rather than an axis zoomed into float32 noise."""
    finite_positive = True
    low, high = 1.0, 1.0
    for label, gains in curves.items():
        layers = np.arange(gains.size)
        finite = gains[np.isfinite(gains)]
        text = f"{label}: {gains[-1]:.3g} at l = {gains.size - 1}"
        if finite.size < gains.size:
            text += f" ({gains.size - finite.size} non-finite, not drawn)"
        ax.plot(layers, gains, marker="o" if gains.size <= MAX_MARKED_POINTS else None,
                markersize=3, label=text)
        finite_positive = finite_positive and finite.size == gains.size and bool(
            np.all(gains > 0))
        if finite.size:
            low, high = min(low, finite.min()), max(high, finite.max())
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
    if finite_positive:
        ax.set_yscale("log")
        ax.set_ylim(low / GAIN_MARGIN, high * GAIN_MARGIN)
    else:
        span = high - low
        ax.set_ylim(min(low, 1.0 / GAIN_MARGIN) - 0.05 * span,
                    max(high, GAIN_MARGIN) + 0.05 * span)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer l ($P_l = H^{res}_l \\cdots H^{res}_1$, $P_0 = I$)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


def composite_gain_plot(summaries: Mapping[str, Mapping[str, np.ndarray]],
                        title: str = "composite gain") -> Figure:
    """The paper's stability measure for each labelled stack's summary (e.g. ``{"mhc": ...,
    "hc": ...}``): the token means of the forward gain max_i sum_j |P_l[i, j]| (left) and
    the backward gain max_j sum_i |P_l[i, j]| (right) against l = 0..L, log y-axis."""
    if not summaries:
        raise ValueError("summaries must hold at least one labelled summary.")
    fig = Figure(figsize=(9.0, 3.6), dpi=100)
    panels = (("composite_forward_gain", "forward gain (max abs row sum)"),
              ("composite_backward_gain", "backward gain (max abs column sum)"))
    for index, (key, ylabel) in enumerate(panels):
        ax = fig.add_axes((0.1 + 0.5 * index, 0.15, 0.38, 0.68))
        curves = {label: _as_gain(label, key, s) for label, s in summaries.items()}
        draw_composite_gains(ax, curves, ylabel)
    fig.suptitle(title, fontsize=10)
    return fig
