"""The highway plot draws the profile against the state index and reports attenuation."""

import numpy as np
import pytest

from mhc_dashboard import highway_plot


def test_highway_plot_draws_the_profile_on_a_log_axis():
    profile = np.array([0.5, 1.0, 2.0, 4.0])
    fig = highway_plot(profile, title="net")
    ax = fig.axes[0]
    (line,) = ax.get_lines()
    np.testing.assert_array_equal(line.get_xdata(), [0, 1, 2, 3])
    np.testing.assert_array_equal(line.get_ydata(), profile)
    assert ax.get_yscale() == "log"
    assert ax.get_title() == "net\nattenuation first/last = 0.125"
    assert "state index" in ax.get_xlabel()


def test_highway_plot_with_zero_gradients_stays_linear():
    fig = highway_plot(np.array([0.0, 1.0, 0.0]), title="t")
    ax = fig.axes[0]
    assert ax.get_yscale() == "linear"
    assert ax.get_title() == "t\nattenuation first/last = nan"


@pytest.mark.parametrize("bad", [np.zeros(1), np.zeros((2, 2))])
def test_highway_plot_rejects_bad_profiles(bad):
    with pytest.raises(ValueError, match="profile must be a 1-D array"):
        highway_plot(bad)
