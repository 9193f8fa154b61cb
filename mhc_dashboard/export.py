"""Turning figures into pixels: PNG bytes for files and RGB arrays for loggers."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imread, imsave

from mhc_spec.config import check_int


def figure_to_png(fig: Figure) -> bytes:
    """The figure encoded as a PNG at its own dpi."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    return buffer.getvalue()


def figure_to_rgb(fig: Figure) -> np.ndarray:
    """The figure rendered once by Agg: uint8 array (height, width, 3)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def rgb_to_png(rgb: np.ndarray) -> bytes:
    """A uint8 (height, width, 3) array encoded as a PNG, pixel for pixel."""
    buffer = io.BytesIO()
    imsave(buffer, np.asarray(rgb, dtype=np.uint8), format="png")
    return buffer.getvalue()


def png_to_rgb(png: bytes) -> np.ndarray:
    """Decode an 8-bit PNG into a uint8 (height, width, 3) array."""
    pixels = imread(io.BytesIO(png), format="png")
    if pixels.dtype != np.uint8:
        pixels = np.rint(pixels * 255.0).astype(np.uint8)
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    return pixels[..., :3]


def tile(images: Sequence[np.ndarray], columns: int, gap: int = 8) -> np.ndarray:
    """Lay uint8 RGB images out on a white grid, row by row, ``columns`` per row."""
    columns = check_int("columns", columns, 1)
    if not images:
        raise ValueError("images must hold at least one image.")
    rows = [images[i:i + columns] for i in range(0, len(images), columns)]
    width = max(sum(im.shape[1] for im in row) + gap * (len(row) - 1) for row in rows)
    height = sum(max(im.shape[0] for im in row) for row in rows) + gap * (len(rows) - 1)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    top = 0
    for row in rows:
        left = 0
        for im in row:
            canvas[top:top + im.shape[0], left:left + im.shape[1]] = im[..., :3]
            left += im.shape[1] + gap
        top += max(im.shape[0] for im in row) + gap
    return canvas
