"""The weight heatmaps draw each value at its cell on the fixed scale, zeros black."""

import numpy as np
import pytest

from mhc_dashboard import (
    colour_scale,
    figure_to_rgb,
    layer_history_frames,
    layer_history_heatmap,
    mixing_heatmap,
)
from mhc_spec import MHCConfig, padded_weights
from tests.dashboard.dashboard_pixels import expected_colour, pixel_at, rendered

BLACK = np.array([0, 0, 0])
MAGENTA = np.array([255, 0, 255])


def test_colour_scales_are_fixed_per_mode():
    for mode in ("mhc", "residual"):
        cmap, low, high = colour_scale(mode)
        assert (low, high) == (0.0, 1.0)
        assert tuple(cmap.get_bad()[:3]) == (0.0, 0.0, 0.0)
    cmap, low, high = colour_scale("hc")
    assert (low, high) == (-1.0, 1.0)
    assert tuple(cmap.get_bad()[:3]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="mode='sphere'"):
        colour_scale("sphere")


def test_mixing_heatmap_draws_every_cell_with_zeros_black():
    config = MHCConfig(max_history=3)
    theta = np.array([[0.0, 0.0, 2.0], [0.0, 0.3, 0.1], [0.2, 0.0, 0.1], [1.0, 0.0, 3.0]])
    weights = padded_weights(config, theta, depth=4)
    assert (weights == 0).sum() >= 4  # unavailable states plus pruned paths
    fig = mixing_heatmap(weights, title="net", mode="mhc")
    ax = fig.axes[0]
    rgb = rendered(fig)
    for (row, col), value in np.ndenumerate(weights):
        # Off-centre, so the printed value does not cover the sampled pixel.
        got = pixel_at(fig, rgb, ax, col - 0.35, row - 0.3)
        want = BLACK if value == 0 else expected_colour(value, "mhc")
        np.testing.assert_allclose(got, want, atol=2, err_msg=f"cell {(row, col)}={value}")


def test_mixing_heatmap_axes_are_labelled_and_newest_marked():
    depth, h = 30, 4
    weights = padded_weights(MHCConfig(max_history=h), np.zeros((depth, h)), depth)
    fig = mixing_heatmap(weights, title="encoder.mix", mode="mhc")
    ax = fig.axes[0]
    assert ax.get_title() == "encoder.mix"
    assert "history index" in ax.get_xlabel()
    assert "layer" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[:h - 1] == ["0", "1", "2"]
    assert labels[h - 1] == "3\nnewest"
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows[0] == "1" and rows[-1] == str(depth)
    outlines = [p for p in ax.patches if p.get_x() == pytest.approx(h - 1.5)]
    assert len(outlines) == 1
    assert outlines[0].get_width() == 1.0 and outlines[0].get_height() == depth
    assert fig.axes[1].get_ylabel().startswith("weight")


def test_hc_heatmap_is_symmetric_and_saturates():
    weights = np.array([[0.0, 1.0], [-0.5, 2.5], [-3.0, 0.25]])
    fig = mixing_heatmap(weights, title="hc", mode="hc")
    ax = fig.axes[0]
    rgb = rendered(fig)
    clipped = np.clip(weights, -1, 1)
    for (row, col), value in np.ndenumerate(weights):
        got = pixel_at(fig, rgb, ax, col - 0.4, row - 0.35)
        want = BLACK if value == 0 else expected_colour(clipped[row, col], "hc")
        np.testing.assert_allclose(got, want, atol=2, err_msg=f"cell {(row, col)}={value}")


def test_non_finite_weights_are_marked_not_black():
    weights = np.array([[0.0, 1.0], [np.nan, 0.5]])
    fig = mixing_heatmap(weights, mode="mhc")
    rgb = rendered(fig)
    np.testing.assert_allclose(pixel_at(fig, rgb, fig.axes[0], -0.4, 0.65), MAGENTA, atol=2)


@pytest.mark.parametrize("bad", [np.zeros(4), np.zeros((0, 3)), np.zeros((2, 2, 2))])
def test_mixing_heatmap_rejects_non_matrices(bad):
    with pytest.raises(ValueError, match="weights must be a non-empty 2-D array"):
        mixing_heatmap(bad)


def test_layer_history_puts_steps_on_x_and_newest_on_top():
    history = np.array([[0.0, 0.2, 0.8], [0.0, 0.6, 0.4], [0.1, 0.0, 0.9], [0.3, 0.3, 0.4]])
    steps = [0, 50, 100, 150]
    fig = layer_history_heatmap(history, steps, layer=2, mode="mhc")
    ax = fig.axes[0]
    assert ax.get_title() == "layer 2: weights over steps"
    assert ax.get_xlabel() == "training step"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "50", "100", "150"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2 newest"]
    rgb = rendered(fig)
    for (t, j), value in np.ndenumerate(history):
        got = pixel_at(fig, rgb, ax, t, j)
        want = BLACK if value == 0 else expected_colour(value, "mhc")
        np.testing.assert_allclose(got, want, atol=2, err_msg=f"step {steps[t]} index {j}")
    top_left = ax.transData.transform((0, 2))[1]
    assert top_left > ax.transData.transform((0, 0))[1]  # index H-1 drawn above index 0


def test_layer_history_validates_its_arguments():
    with pytest.raises(ValueError, match="steps has 2 entries but history has 3 rows"):
        layer_history_heatmap(np.zeros((3, 2)), [0, 1], layer=1)
    with pytest.raises(ValueError, match="layer=0"):
        layer_history_heatmap(np.zeros((3, 2)), [0, 1, 2], layer=0)
    with pytest.raises(ValueError, match="history must be a non-empty 2-D array"):
        layer_history_heatmap(np.zeros(3), [0, 1, 2], layer=1)


def test_layer_history_frames_match_one_figure_per_layer():
    history = np.random.default_rng(1).uniform(size=(5, 4, 3))
    history[:, 0, :2] = 0.0  # layer 1 sees only the newest state
    history[0, 0, 2] = np.inf  # non-finite entries in layers 1 and 2 only: their overlays
    history[2, 1, 1] = np.nan  # must not stay in the frames of later layers
    steps = [0, 10, 20, 30, 40]
    frames = list(layer_history_frames(history, steps, mode="mhc",
                                       titles=lambda layer: f"net layer {layer}"))
    assert len(frames) == 4
    for layer, frame in enumerate(frames, start=1):
        fig = layer_history_heatmap(history[:, layer - 1], steps, layer,
                                    title=f"net layer {layer}", mode="mhc")
        np.testing.assert_array_equal(frame, figure_to_rgb(fig), err_msg=f"layer {layer}")


def test_layer_history_frames_reject_non_3d_history():
    with pytest.raises(ValueError, match=r"history must be a non-empty \(steps, layers, H\)"):
        list(layer_history_frames(np.zeros((3, 2)), [0, 1, 2]))
