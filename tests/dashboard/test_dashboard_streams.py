"""The stream pictures draw each coefficient at its cell on its fixed scale, and the gains of
every labelled stack as lines over the layers."""

import numpy as np
import pytest
from matplotlib.colors import Normalize

from mhc_dashboard import (
    composite_gain_plot,
    hpre_hpost_heatmaps,
    hres_grid,
    stream_colour_scale,
)
from tests.dashboard.dashboard_pixels import pixel_at, rendered

MAGENTA = np.array([255, 0, 255])


def colour(value: float, quantity: str, mode: str = "mhc") -> np.ndarray:
    cmap, low, high = stream_colour_scale(quantity, mode)
    rgba = cmap(Normalize(low, high)(value))
    return np.rint(np.asarray(rgba[:3]) * 255).astype(int)


def test_stream_colour_scales_are_fixed_per_quantity():
    expected = {("hres", "mhc"): ("YlOrRd", 0.0, 1.0), ("hres", "hc"): ("RdBu_r", -1.0, 1.0),
                ("hpre", "mhc"): ("YlOrRd", 0.0, 1.0), ("hpre", "hc"): ("YlOrRd", 0.0, 1.0),
                ("hpost", "mhc"): ("YlOrRd", 0.0, 2.0), ("hpost", "hc"): ("YlOrRd", 0.0, 2.0)}
    for (quantity, mode), (name, low, high) in expected.items():
        cmap, got_low, got_high = stream_colour_scale(quantity, mode)
        assert (cmap.name, got_low, got_high) == (name, low, high)
        assert tuple(cmap.get_bad()[:3]) == (1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="quantity='phi'"):
        stream_colour_scale("phi")
    with pytest.raises(ValueError, match="mode='residual'"):
        stream_colour_scale("hres", "residual")


def test_hres_grid_draws_every_cell_of_every_layer():
    hres = np.array([[[0.9, 0.1], [0.1, 0.9]],
                     [[0.5, 0.5], [0.25, 0.75]],
                     [[0.0, 1.0], [1.0, 0.0]]])
    fig = hres_grid(hres, title="net.streams", mode="mhc")
    panels = fig.axes[:3]
    assert [ax.get_title() for ax in panels] == ["layer 1", "layer 2", "layer 3"]
    assert fig.axes[3].get_ylabel().startswith("$H^{res}_l[i, j]$")
    assert fig.get_suptitle().startswith("net.streams\n")
    rgb = rendered(fig)
    for layer, ax in enumerate(panels):
        # Zeros are ordinary values here, not black; n = 2 cells carry their value.
        assert sorted(t.get_text() for t in ax.texts) == sorted(
            f"{v:.2f}" for v in hres[layer].ravel())
        for (i, j), value in np.ndenumerate(hres[layer]):
            # Row i is drawn at y = i (top row first), column j at x = j; off-centre, so the
            # printed value does not cover the sampled pixel.
            got = pixel_at(fig, rgb, ax, j - 0.35, i - 0.3)
            np.testing.assert_allclose(got, colour(value, "hres"), atol=2,
                                       err_msg=f"layer {layer + 1} cell {(i, j)}")


def test_hres_grid_of_hc_is_signed_saturates_and_marks_non_finite():
    hres = np.array([[[1.0, -0.5, 3.0], [0.0, np.nan, -2.0], [0.25, 0.5, -0.75]]])
    fig = hres_grid(hres, mode="hc")
    ax = fig.axes[0]
    rgb = rendered(fig)
    for (i, j), value in np.ndenumerate(hres[0]):
        want = MAGENTA if np.isnan(value) else colour(np.clip(value, -1, 1), "hres", "hc")
        np.testing.assert_allclose(pixel_at(fig, rgb, ax, j - 0.35, i - 0.3), want, atol=2,
                                   err_msg=f"cell {(i, j)}")


def test_hres_grid_lays_panels_out_in_rows_and_annotates_only_small_n():
    depth = 8
    fig = hres_grid(np.tile(np.eye(5) / 1.0, (depth, 1, 1)))
    panels = fig.axes[:depth]
    assert not any(ax.texts for ax in panels)  # n = 5 > 4
    first, seventh = panels[0].get_position(), panels[6].get_position()
    assert seventh.x0 == pytest.approx(first.x0) and seventh.y1 < first.y0  # row two
    assert panels[5].get_position().x0 > panels[4].get_position().x0  # six per row
    assert len(fig.axes) == depth + 1  # and one colour bar


def test_hpre_hpost_heatmaps_draw_each_layer_and_stream():
    hpre = np.array([[0.1, 0.9, 0.5], [0.3, 0.3, 0.4]])
    hpost = np.array([[2.0, 0.0, 1.0], [0.5, 1.5, 1.9]])
    fig = hpre_hpost_heatmaps(hpre, hpost, title="net.streams")
    pre_ax, pre_bar, post_ax, post_bar = fig.axes
    assert pre_ax.get_xlabel() == "stream i" and pre_ax.get_ylabel() == "layer l"
    assert [t.get_text() for t in pre_ax.get_yticklabels()] == ["1", "2"]
    assert pre_bar.get_ylim() == (0.0, 1.0) and post_bar.get_ylim() == (0.0, 2.0)
    rgb = rendered(fig)
    for ax, values, quantity in ((pre_ax, hpre, "hpre"), (post_ax, hpost, "hpost")):
        for (layer, stream), value in np.ndenumerate(values):
            got = pixel_at(fig, rgb, ax, stream - 0.4, layer - 0.35)
            np.testing.assert_allclose(got, colour(value, quantity), atol=2,
                                       err_msg=f"{quantity} layer {layer + 1} stream {stream}")


def test_composite_gain_plot_draws_each_stack_per_direction():
    mhc = {"composite_forward_gain": np.ones(4),
           "composite_backward_gain": np.array([1.0, 1.5, 1.25, 1.125])}
    hc = {"composite_forward_gain": 1.2 ** np.arange(4),
          "composite_backward_gain": 2.0 ** np.arange(4)}
    fig = composite_gain_plot({"mhc": mhc, "hc": hc}, title="net")
    forward_ax, backward_ax = fig.axes
    assert fig.get_suptitle() == "net"
    assert "row sum" in forward_ax.get_ylabel() and "column sum" in backward_ax.get_ylabel()
    for ax, key in ((forward_ax, "composite_forward_gain"),
                    (backward_ax, "composite_backward_gain")):
        assert ax.get_yscale() == "log"
        mhc_line, hc_line, reference = ax.get_lines()
        np.testing.assert_array_equal(mhc_line.get_xdata(), [0, 1, 2, 3])
        np.testing.assert_array_equal(mhc_line.get_ydata(), mhc[key])
        np.testing.assert_array_equal(hc_line.get_ydata(), hc[key])
        np.testing.assert_array_equal(reference.get_ydata(), [1.0, 1.0])
    legend = [t.get_text() for t in backward_ax.get_legend().get_texts()]
    assert legend == ["mhc: 1.12 at l = 3", "hc: 8 at l = 3"]


def test_composite_gain_plot_with_a_zero_gain_stays_linear():
    zero = {"composite_forward_gain": np.array([1.0, 0.0]),
            "composite_backward_gain": np.array([1.0, 0.5])}
    fig = composite_gain_plot({"hc": zero})
    assert [ax.get_yscale() for ax in fig.axes] == ["linear", "log"]


def test_stream_pictures_validate_their_arguments():
    with pytest.raises(ValueError, match=r"hres_mean must be a non-empty \(L, n, n\)"):
        hres_grid(np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match=r"hpre_mean \(2, 3\) and hpost_mean \(2, 2\)"):
        hpre_hpost_heatmaps(np.zeros((2, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"hpost_mean must be a non-empty \(L, n\)"):
        hpre_hpost_heatmaps(np.zeros((2, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="summaries must hold at least one"):
        composite_gain_plot({})
    with pytest.raises(ValueError, match="the summary of 'mhc' has no 'composite_forward_gain'"):
        composite_gain_plot({"mhc": {}})
    with pytest.raises(ValueError, match="composite_forward_gain of 'mhc' must be a 1-D"):
        composite_gain_plot({"mhc": {"composite_forward_gain": np.ones(1),
                                     "composite_backward_gain": np.ones(1)}})


def test_gains_at_one_up_to_rounding_draw_a_flat_line():
    # float32 rounding must not zoom the axis: it always spans at least 1/2 .. 2.
    flat = {"composite_forward_gain": 1 + np.array([0.0, 1e-7, -1e-7, 3e-7]),
            "composite_backward_gain": np.array([1.0, 1.02, 1.05, 1.1])}
    fig = composite_gain_plot({"mhc": flat})
    for ax in fig.axes:
        low, high = ax.get_ylim()
        assert low <= 0.5 and high >= 2.0
        assert [t for t in ax.get_xticks() if 0 <= t <= 3] == [0, 1, 2, 3]  # layers only


def test_non_finite_gains_are_named_in_the_legend():
    diverged = {"composite_forward_gain": np.array([1.0, np.inf, np.nan]),
                "composite_backward_gain": np.array([1.0, 2.0, 4.0])}
    forward_ax, backward_ax = composite_gain_plot({"hc": diverged}).axes
    assert forward_ax.get_yscale() == "linear" and backward_ax.get_yscale() == "log"
    assert [t.get_text() for t in forward_ax.get_legend().get_texts()] == [
        "hc: nan at l = 2 (2 non-finite, not drawn)"]
    assert np.isfinite(forward_ax.get_ylim()).all()
