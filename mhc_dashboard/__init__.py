"""mhc_dashboard: the stability dashboard's pictures, drawn with NumPy and Matplotlib only.

Shared by the PyTorch Lightning callback (:mod:`mhc_torch.callback`) and the JAX monitor;
it imports neither framework. Every function takes host NumPy arrays and returns a
Matplotlib :class:`~matplotlib.figure.Figure` built without ``pyplot`` (no global figure
registry to leak into), or encoded pixels; :mod:`mhc_dashboard.stream_readings` also
defines the multi-stream family's logged tags once for both backends.

Colour scales (fixed, so pictures from different steps and runs compare by eye):

- ``residual`` / ``mhc`` weights lie on the simplex: scale 0..1 (``YlOrRd``).
- ``hc`` weights are unconstrained: symmetric scale -1..1 (``RdBu_r``); values beyond
  +-1 saturate, shown by the colour bar's pointed ends.
- In both, entries that are exactly 0 (unavailable states, pruned paths) are drawn black.
- The multi-stream family's Hres, Hpre and Hpost have scales of their own
  (:func:`stream_colour_scale`, :mod:`mhc_dashboard.streams`).
"""

from mhc_dashboard.export import figure_to_png, figure_to_rgb, png_to_rgb, rgb_to_png, tile
from mhc_dashboard.heatmaps import (
    colour_scale,
    draw_layer_history,
    draw_mixing_heatmap,
    layer_history_frames,
    layer_history_heatmap,
    mixing_heatmap,
)
from mhc_dashboard.highway import draw_highway, highway_plot
from mhc_dashboard.stream_readings import (
    MAX_SUMMARY_TOKENS,
    StreamReading,
    read_streams,
    sample_tokens,
    stream_colour_mode,
    stream_comparison,
    stream_pictures,
    stream_scalars,
)
from mhc_dashboard.streams import (
    composite_gain_plot,
    draw_composite_gains,
    draw_hres,
    draw_stream_weights,
    hpre_hpost_heatmaps,
    hres_grid,
    stream_colour_scale,
)

__all__ = [
    "MAX_SUMMARY_TOKENS",
    "StreamReading",
    "colour_scale",
    "composite_gain_plot",
    "draw_composite_gains",
    "draw_highway",
    "draw_hres",
    "draw_layer_history",
    "draw_mixing_heatmap",
    "draw_stream_weights",
    "figure_to_png",
    "figure_to_rgb",
    "highway_plot",
    "hpre_hpost_heatmaps",
    "hres_grid",
    "layer_history_frames",
    "layer_history_heatmap",
    "mixing_heatmap",
    "png_to_rgb",
    "read_streams",
    "rgb_to_png",
    "sample_tokens",
    "stream_colour_mode",
    "stream_colour_scale",
    "stream_comparison",
    "stream_pictures",
    "stream_scalars",
    "tile",
]
