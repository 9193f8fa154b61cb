"""Reading back the colour a rendered figure shows at a point given in data coordinates."""

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from mhc_dashboard import colour_scale, figure_to_rgb


def rendered(fig: Figure) -> np.ndarray:
    return figure_to_rgb(fig).astype(int)


def pixel_at(fig: Figure, rgb: np.ndarray, ax: Axes, x: float, y: float) -> np.ndarray:
    """The RGB pixel under data point (x, y) of ``ax`` (display y counts from the bottom)."""
    col, row_from_bottom = ax.transData.transform((x, y))
    return rgb[round(fig.bbox.height - row_from_bottom), round(col)]


def expected_colour(value: float, mode: str) -> np.ndarray:
    cmap, low, high = colour_scale(mode)
    rgba = cmap(Normalize(low, high, clip=False)(value))
    return np.rint(np.asarray(rgba[:3]) * 255).astype(int)
