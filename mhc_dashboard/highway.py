"""The history-highway profile: how much gradient reaches each state of the stack."""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mhc_spec.statistics import attenuation

# Markers only while they stay distinguishable.
MAX_MARKED_POINTS = 40


def _as_profile(profile: np.ndarray) -> np.ndarray:
    p = np.asarray(profile, dtype=np.float64)
    if p.ndim != 1 or p.size < 2:
        raise ValueError(f"profile must be a 1-D array of L+1 >= 2 gradient norms, "
                         f"got shape {p.shape}.")
    return p


def draw_highway(ax: Axes, profile: np.ndarray, label: str | None = None,
                 log: bool = True) -> None:
    """Plot ||dLoss/ds_l|| against l = 0..L on ``ax`` (log y-axis when ``log`` and all > 0)."""
    p = _as_profile(profile)
    ax.plot(np.arange(p.size), p, marker="o" if p.size <= MAX_MARKED_POINTS else None,
            markersize=3, label=label)
    if log and np.all(p > 0) and np.all(np.isfinite(p)):
        ax.set_yscale("log")
    ax.set_xlabel("state index l ($s_0$ = input, $s_L$ = output)")
    ax.set_ylabel(r"$\|\partial \mathrm{Loss} / \partial s_l\|$")
    ax.grid(True, alpha=0.3)


def highway_plot(profile: np.ndarray, title: str = "history highway") -> Figure:
    """Line plot of the profile ||dLoss/ds_l||, l = 0..L, titled with the attenuation
    ||dLoss/ds_0|| / ||dLoss/ds_L|| (:func:`mhc_spec.attenuation`)."""
    p = _as_profile(profile)
    # Fixed margins rather than a layout engine, which triples the render time.
    fig = Figure(figsize=(5.0, 3.4), dpi=100)
    ax = fig.add_axes((0.2, 0.16, 0.76, 0.68))
    draw_highway(ax, p)
    ax.set_title(f"{title}\nattenuation first/last = {attenuation(p):.3g}")
    return fig
