"""The stream dashboard's readings, tags and pictures, shared by both backends, against
hand-computed coefficients."""

import numpy as np
import pytest

from mhc_dashboard import (
    composite_gain_plot,
    figure_to_rgb,
    read_streams,
    sample_tokens,
    stream_colour_mode,
    stream_comparison,
    stream_pictures,
    stream_scalars,
)
from mhc_spec.streams import StreamConfig

A = np.array([[0.5, 0.5], [0.2, 0.8]])
B = np.array([[1.0, 0.0], [0.3, 0.7]])
C = np.array([[2.0, -1.0], [0.0, 1.0]])


def binary_entropy(p: float) -> float:
    return -p * np.log(p) - (1 - p) * np.log(1 - p)


def hand_reading(name="net", config=None, grad_norms=None):
    # Two layers, two tokens: token 0 passes A then B, token 1 passes I then C.
    hres = np.array([[A, np.eye(2)], [B, C]])
    hpre = np.full((2, 2, 2), 0.5)
    return read_streams(name, config or StreamConfig(streams=2, mode="hc"),
                        (hpre, 2 * hpre, hres), grad_norms)


def test_sample_tokens_keeps_every_kth_flattened_token():
    values = np.arange(2 * 3 * 5 * 4).reshape(2, 3, 5, 4)  # (L, B, T, n): 15 tokens
    sampled = sample_tokens(values, 1, limit=4)  # stride ceil(15 / 4) = 4
    np.testing.assert_array_equal(sampled, values.reshape(2, 15, 4)[:, [0, 4, 8, 12]])
    whole = sample_tokens(values[..., None], 2, limit=15)
    assert whole.shape == (2, 15, 4, 1)
    static = values[:, 0, 0]  # (L, n): no token axes, one token
    np.testing.assert_array_equal(sample_tokens(static, 1), static[:, None])
    with pytest.raises(ValueError, match="limit=0"):
        sample_tokens(values, 1, limit=0)


def test_colour_mode_is_mhc_only_for_sinkhorn():
    assert stream_colour_mode(StreamConfig()) == "mhc"
    assert stream_colour_mode(StreamConfig(mode="hc")) == "hc"
    assert stream_colour_mode(StreamConfig(constraint=lambda z: z)) == "hc"


def test_scalars_by_hand():
    reading = hand_reading(grad_norms={"b_res": 0.5, "phi_res": 2.0})
    assert (reading.kind, reading.mode) == ("hc", "hc")
    values = stream_scalars("mhc/net", reading)
    # Rows of A, I, B sum to 1, of C to 3 and 1; columns of A 0.7, 1.3, of B 1.3, 0.7, of
    # C 2, 2; P_2 = B A = [[0.5, 0.5], [0.29, 0.71]] and C I = C.
    expected = {
        "composite_forward_gain": 2.0, "composite_backward_gain": (1.21 + 2.0) / 2,
        "composite_forward_gain_max": 3.0, "composite_backward_gain_max": 2.0,
        "composite_forward_gain/layer_1": 1.0, "composite_forward_gain/layer_2": 2.0,
        "composite_backward_gain/layer_1": 1.15, "composite_backward_gain/layer_2": 1.605,
        "layer_forward_gain/layer_1": 1.0, "layer_forward_gain/layer_2": 2.0,
        "layer_backward_gain/layer_1": 1.15, "layer_backward_gain/layer_2": 1.65,
        # Row entropies: A log 2 and H(0.2), I 0 and 0; B 0 and H(0.3), C H(1/3) and 0.
        "hres_entropy/layer_1": (np.log(2) + binary_entropy(0.2)) / 4,
        "hres_entropy/layer_2": (binary_entropy(0.3) + binary_entropy(1 / 3)) / 4,
        "grad_norm/b_res": 0.5, "grad_norm/phi_res": 2.0,
    }
    expected["hres_entropy/mean"] = (expected["hres_entropy/layer_1"]
                                     + expected["hres_entropy/layer_2"]) / 2
    assert set(values) == {f"mhc/net/{key}" for key in expected}
    for key, value in expected.items():
        assert values[f"mhc/net/{key}"] == pytest.approx(value, rel=1e-14), key


def test_scalar_groups_are_separate():
    reading = hand_reading(grad_norms={"b_res": 0.5})
    gains = stream_scalars("p/m", reading, entropy=False, gradients=False)
    assert all("gain" in tag for tag in gains) and len(gains) == 12
    only_entropy = stream_scalars("p/m", reading, mixing=False, gradients=False)
    assert set(only_entropy) == {"p/m/hres_entropy/layer_1", "p/m/hres_entropy/layer_2",
                                 "p/m/hres_entropy/mean"}
    assert stream_scalars("p/m", reading, mixing=False, entropy=False) == {
        "p/m/grad_norm/b_res": 0.5}


def test_pictures_are_the_dashboard_figures_of_the_reading():
    reading = hand_reading()
    pictures = stream_pictures("mhc/net", reading, step=7)
    assert set(pictures) == {"mhc/net/hres", "mhc/net/hpre_hpost", "mhc/net/composite_gain"}
    for rgb in pictures.values():
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.std() > 0
    gain = composite_gain_plot({"hc": reading.summary},
                               title="mhc/net (hc): composite gain, step 7")
    np.testing.assert_array_equal(pictures["mhc/net/composite_gain"], figure_to_rgb(gain))


def test_comparison_overlays_every_stack():
    hc = hand_reading("hc_net")
    mhc = hand_reading("mhc_net", StreamConfig(streams=2))
    picture = stream_comparison([mhc, hc], step=3)
    want = composite_gain_plot({"mhc_net (mhc/sinkhorn)": mhc.summary,
                                "hc_net (hc)": hc.summary},
                               title="composite gain of every stream stack, step 3")
    np.testing.assert_array_equal(picture, figure_to_rgb(want))
    gradients_only = read_streams("g", StreamConfig(), None, {"b_pre": 1.0})
    with pytest.raises(ValueError, match="readings must hold at least one stream reading"):
        stream_comparison([gradients_only], step=0)


def test_a_reading_without_coefficients_has_gradient_norms_only():
    reading = read_streams("net", StreamConfig(), None, {"b_pre": 1.5})
    assert stream_scalars("p/net", reading) == {"p/net/grad_norm/b_pre": 1.5}
    assert stream_pictures("p/net", reading, step=0) == {}
