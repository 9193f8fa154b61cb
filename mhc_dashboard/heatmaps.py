"""Heatmaps of mixing weights: one picture per MHC stack, and one per layer over training steps.

Layout follows :func:`mhc_spec.padded_weights`: history index j in 0..H-1 pairs with state
s_{l-H+j}, so j = H-1 is the newest state (what a plain ResNet uses) and j = 0 the oldest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap, ListedColormap
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

from mhc_spec.config import MODES, check_choice, check_int

# Drawn over non-finite entries so a diverged run is not mistaken for pruned paths (black).
NON_FINITE_COLOUR = "magenta"
NEWEST_OUTLINE = "limegreen"
# Cell values are printed only on small pictures, where the text still fits its cell.
MAX_ANNOTATED_CELLS = 64
MAX_TICKS = 10
# Step numbers are wider than layer numbers.
MAX_STEP_TICKS = 5


def colour_scale(mode: str) -> tuple[Colormap, float, float]:
    """The fixed scale (cmap, vmin, vmax): (YlOrRd, 0, 1), or (RdBu_r, -1, 1) for ``hc``.

    Masked entries (the exact zeros) are drawn in the colour map's "bad" colour, black.
    """
    check_choice("mode", mode, MODES)
    name, low, high = ("RdBu_r", -1.0, 1.0) if mode == "hc" else ("YlOrRd", 0.0, 1.0)
    cmap = colormaps[name].with_extremes(bad="black")
    return cmap, low, high


def _as_matrix(name: str, value: np.ndarray) -> np.ndarray:
    a = np.asarray(value, dtype=np.float64)
    if a.ndim != 2 or 0 in a.shape:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {a.shape}.")
    return a


def _ticks(count: int, first_label: int = 0,
           limit: int = MAX_TICKS) -> tuple[list[int], list[str]]:
    """About ``limit`` evenly spaced positions in 0..count-1, always including both ends."""
    stride = max(1, math.ceil(count / limit))
    positions = list(range(0, count, stride))
    if positions[-1] != count - 1:
        positions.append(count - 1)
    return positions, [str(p + first_label) for p in positions]


def _show(ax: Axes, image: np.ndarray, mode: str, origin: str) -> AxesImage:
    """Draw ``image`` on the fixed scale with exact zeros black and non-finite entries marked."""
    cmap, low, high = colour_scale(mode)
    drawn = ax.imshow(np.ma.masked_equal(image, 0.0), cmap=cmap, vmin=low, vmax=high,
                      aspect="auto", interpolation="nearest", origin=origin)
    _mark_non_finite(ax, image, origin)
    return drawn


def _mark_non_finite(ax: Axes, image: np.ndarray, origin: str) -> None:
    """Overlay the non-finite entries of ``image`` in NON_FINITE_COLOUR, replacing any
    earlier overlay on ``ax``."""
    for old in [im for im in ax.images if im.get_gid() == NON_FINITE_COLOUR]:
        old.remove()
    bad = ~np.isfinite(image)
    if bad.any():
        ax.imshow(np.where(bad, 1.0, np.nan), cmap=ListedColormap([NON_FINITE_COLOUR]),
                  aspect="auto", interpolation="nearest", origin=origin,
                  gid=NON_FINITE_COLOUR)


def _history_labels(h: int, separator: str) -> list[str]:
    return [str(j) for j in range(h - 1)] + [f"{h - 1}{separator}newest"]


def draw_mixing_heatmap(ax: Axes, weights: np.ndarray, mode: str = "mhc",
                        title: str = "mixing weights") -> AxesImage:
    """Draw A (L, H) on ``ax``: row l-1 = layer l, column j = history index (H-1 newest)."""
    a = _as_matrix("weights", weights)
    depth, h = a.shape
    image = _show(ax, a, mode, origin="upper")
    ax.set_xticks(range(h), _history_labels(h, "\n"))
    rows, labels = _ticks(depth, first_label=1)
    ax.set_yticks(rows, labels)
    ax.set_xlabel("history index j (state $s_{l-H+j}$)")
    ax.set_ylabel("layer l")
    ax.add_patch(Rectangle((h - 1.5, -0.5), 1.0, depth, fill=False,
                           edgecolor=NEWEST_OUTLINE, linewidth=2.5))
    if a.size <= MAX_ANNOTATED_CELLS:
        for (row, col), value in np.ndenumerate(a):
            dark = value == 0.0 or not np.isfinite(value) or abs(value) > 0.6
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
    ax.set_title(title)
    return image


def _figure(width: float, height: float, left: float) -> tuple[Figure, Axes, Axes]:
    """A bare Figure (no pyplot, so nothing is registered globally) with a plot area and a
    colour bar axis placed by fixed margins in inches (a layout engine triples render time)."""
    fig = Figure(figsize=(width, height), dpi=100)
    right, bottom, top, bar = 1.05, 0.75, 0.45, 0.15
    ax = fig.add_axes((left / width, bottom / height, 1 - (left + right) / width,
                       1 - (bottom + top) / height))
    cax = fig.add_axes(((width - right + 0.15) / width, bottom / height, bar / width,
                        1 - (bottom + top) / height))
    return fig, ax, cax


def _colour_bar(fig: Figure, image: AxesImage, cax: Axes, mode: str, label: str) -> None:
    fig.colorbar(image, cax=cax, extend="both" if mode == "hc" else "neither", label=label)


def mixing_heatmap(weights: np.ndarray, title: str = "mixing weights",
                   mode: str = "mhc") -> Figure:
    """Heatmap of A (L, H): rows = layers 1..L, columns = history index 0..H-1 (H-1 newest,
    outlined), fixed colour scale of :func:`colour_scale`, exact zeros black."""
    a = _as_matrix("weights", weights)
    depth, h = a.shape
    fig, ax, cax = _figure(width=max(3.8, 2.4 + 0.6 * h),
                           height=min(max(2.8, 1.6 + 0.11 * depth), 9.0), left=0.75)
    image = draw_mixing_heatmap(ax, a, mode, title)
    _colour_bar(fig, image, cax, mode, "weight $a_{l,j}$")
    return fig


def draw_layer_history(ax: Axes, history: np.ndarray, steps: Sequence[int], layer: int,
                       mode: str = "mhc", title: str | None = None) -> AxesImage:
    """Draw one layer's weights over steps on ``ax``: x = logged step, y = history index
    0..H-1 (H-1 newest, at the top)."""
    a = _as_matrix("history", history)
    steps = [int(s) for s in steps]
    if len(steps) != a.shape[0]:
        raise ValueError(f"steps has {len(steps)} entries but history has {a.shape[0]} rows; "
                         "steps must give the training step of each history row.")
    layer = check_int("layer", layer, 1)
    h = a.shape[1]
    image = _show(ax, a.T, mode, origin="lower")
    columns, _ = _ticks(len(steps), limit=MAX_STEP_TICKS)
    ax.set_xticks(columns, [str(steps[c]) for c in columns])
    ax.set_yticks(range(h), _history_labels(h, " "))
    ax.set_xlabel("training step")
    ax.set_ylabel("history index j")
    ax.set_title(title if title is not None else f"layer {layer}: weights over steps")
    return image


def layer_history_heatmap(history: np.ndarray, steps: Sequence[int], layer: int,
                          title: str | None = None, mode: str = "mhc") -> Figure:
    """Heatmap of layer ``layer``'s weights a_{l,j} over training: history (T, H) holds the
    padded row of A at each of the T logged ``steps``; same colour scale as the stack map."""
    a = _as_matrix("history", history)
    fig, ax, cax = _figure(width=min(max(5.0, 3.0 + 0.05 * a.shape[0]), 9.0),
                           height=max(2.6, 1.5 + 0.3 * a.shape[1]), left=1.2)
    image = draw_layer_history(ax, a, steps, layer, mode, title)
    _colour_bar(fig, image, cax, mode, "weight")
    return fig


def layer_history_frames(history: np.ndarray, steps: Sequence[int], mode: str = "mhc",
                         titles: Callable[[int], str] | None = None) -> Iterator[np.ndarray]:
    """The pictures of :func:`layer_history_heatmap` for every layer of a (T, L, H) history,
    as uint8 RGB arrays, layer 1 first, pixel for pixel. The axes, ticks and colour bar are
    drawn once; per layer only the image, spines and title are redrawn over a saved
    background (blitting), about 10x faster than a figure per layer."""
    a = np.asarray(history, dtype=np.float64)
    if a.ndim != 3 or 0 in a.shape:
        raise ValueError(f"history must be a non-empty (steps, layers, H) array, "
                         f"got shape {a.shape}.")

    def title(layer: int) -> str:
        return titles(layer) if titles else f"layer {layer}: weights over steps"

    fig = layer_history_heatmap(a[:, 0], steps, 1, title(1), mode)
    ax = fig.axes[0]
    image = ax.images[0]
    redrawn = [*ax.images, ax.title, *ax.spines.values()]
    for artist in redrawn:
        artist.set_animated(True)  # left out of the background
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    background = canvas.copy_from_bbox(fig.bbox)
    for layer in range(1, a.shape[1] + 1):
        rows = a[:, layer - 1].T
        image.set_data(np.ma.masked_equal(rows, 0.0))
        _mark_non_finite(ax, rows, origin="lower")
        ax.title.set_text(title(layer))
        canvas.restore_region(background)
        # Same order as a full draw: images, then the spines over their edges, then the title.
        for artist in [*ax.images, *ax.spines.values(), ax.title]:
            ax.draw_artist(artist)
        yield np.asarray(canvas.buffer_rgba())[..., :3].copy()
