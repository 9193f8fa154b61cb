"""Figures become PNG bytes and RGB arrays that agree pixel for pixel."""

import numpy as np
import pytest
from matplotlib.figure import Figure

from mhc_dashboard import figure_to_png, figure_to_rgb, png_to_rgb, rgb_to_png, tile

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _figure() -> Figure:
    fig = Figure(figsize=(2.0, 1.5), dpi=50)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow([[0.0, 1.0], [1.0, 0.0]], cmap="gray", interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    return fig


def test_figure_to_rgb_renders_the_figure_at_its_size():
    rgb = figure_to_rgb(_figure())
    assert rgb.shape == (75, 100, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[10, 10], [0, 0, 0])
    np.testing.assert_array_equal(rgb[10, 90], [255, 255, 255])


def test_figure_to_png_encodes_the_same_pixels():
    fig = _figure()
    png = figure_to_png(fig)
    assert png.startswith(PNG_SIGNATURE)
    np.testing.assert_array_equal(png_to_rgb(png), figure_to_rgb(fig))


def test_rgb_png_round_trip_is_exact():
    rgb = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    png = rgb_to_png(rgb)
    assert png.startswith(PNG_SIGNATURE)
    np.testing.assert_array_equal(png_to_rgb(png), rgb)


def test_tile_lays_images_out_row_by_row_on_white():
    red = np.zeros((2, 3, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((4, 1, 3), np.uint8)
    blue[..., 2] = 255
    out = tile([red, blue, red], columns=2, gap=1)
    assert out.shape == (4 + 1 + 2, 3 + 1 + 1, 3)  # row heights 4 and 2, one gap
    np.testing.assert_array_equal(out[0:2, 0:3], red)
    np.testing.assert_array_equal(out[0:4, 4:5], blue)
    np.testing.assert_array_equal(out[5:7, 0:3], red)
    assert (out[2:4, 0:3] == 255).all() and (out[:, 3] == 255).all()


def test_tile_validates_its_arguments():
    with pytest.raises(ValueError, match="columns=0"):
        tile([np.zeros((1, 1, 3), np.uint8)], columns=0)
    with pytest.raises(ValueError, match="images must hold at least one image"):
        tile([], columns=1)
