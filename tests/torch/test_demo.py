"""The demo trains every mode with the dashboard, prints its table, writes the run folder
(TensorBoard events, CSV metrics, PNGs, the composed dashboard) and says how to open it;
then it trains the mhc and hc stream stacks side by side and does the same for them."""

import contextlib
import csv
import io
import os
import re
import subprocess

import numpy as np
import pytest

import mhc_spec
from mhc_torch import demo
from tests.torch.scripts.mhc_testing import read_png

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = ["--epochs", "1", "--depth", "6", "--log-every", "4", "--batch-size", "128",
        "--stream-depth", "4", "--stream-log-every", "4"]
LOGGED_PNGS = ["step_00000000.png", "step_00000004.png", "step_00000008.png"]  # 12 steps


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = demo.main([*FAST, "--out", str(out)])
    (run_dir,) = [os.path.join(out, d) for d in os.listdir(out)]
    return results, printed.getvalue(), run_dir


def _rows(run_dir, mode, tag="mhc/net/entropy/mean"):
    with open(os.path.join(run_dir, mode, "metrics.csv"), newline="") as file:
        return [row for row in csv.DictReader(file) if row.get(tag)]


def test_every_mode_is_trained_and_summarised(demo_run):
    results, _, run_dir = demo_run
    results = results.history
    assert [r.mode for r in results] == ["mhc", "hc", "residual"]
    assert re.fullmatch(r"demo-\d{8}-\d{6}", os.path.basename(run_dir))
    by_mode = {r.mode: r for r in results}
    # Spec facts: residual weights are one-hot (entropy 0, skip gain 1); simplex weights
    # without gating keep the input's skip coefficient at exactly 1.
    assert by_mode["residual"].entropy == 0.0 and by_mode["residual"].skip_gain == 1.0
    assert by_mode["mhc"].skip_gain == pytest.approx(1.0, abs=1e-6)
    for r in results:
        assert 0.0 <= r.val_acc <= 1.0
        assert np.isfinite(r.attenuation) and r.attenuation > 0


def test_the_table_reports_the_last_logged_values(demo_run):
    results, printed, run_dir = demo_run
    for r in results.history:
        last = _rows(run_dir, r.mode)[-1]
        assert float(last["mhc/net/entropy/mean"]) == r.entropy
        assert float(last["mhc/net/highway/attenuation"]) == r.attenuation
        # The logged mean entropy is the spec's entropy of the logged weights.
        depth, h = 6, 4
        weights = np.zeros((depth, h))
        for layer in range(1, depth + 1):
            for j in range(h - min(h, layer), h):
                weights[layer - 1, j] = float(last[f"mhc/net/weight/layer_{layer}/index_{j}"])
        assert mhc_spec.entropy(weights, mode=r.mode).mean() == pytest.approx(r.entropy,
                                                                                 rel=1e-6)
        row = re.search(rf"^{r.mode}\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+\S+$", printed,
                        re.MULTILINE)
        assert row, printed
        assert [float(v) for v in row.groups()] == pytest.approx(
            [r.val_acc, r.entropy, r.skip_gain, r.attenuation], abs=1e-3, rel=2e-3)
    assert "mode" in printed and "highway attenuation" in printed


def test_the_run_folder_holds_the_dashboard(demo_run):
    _, printed, run_dir = demo_run
    for mode in ("mhc", "hc", "residual"):
        files = os.listdir(os.path.join(run_dir, mode))
        assert any(f.startswith("events.out.tfevents") for f in files)
        assert "metrics.csv" in files
        images = os.path.join(run_dir, mode, "images", "mhc", "net")
        assert sorted(os.listdir(os.path.join(images, "mixing_weights"))) == LOGGED_PNGS
        assert len(os.listdir(os.path.join(images, "weights_over_steps"))) == 6
    dashboard = read_png(os.path.join(run_dir, "dashboard.png"))
    tiles = [read_png(os.path.join(run_dir, "mhc", "images", "mhc", "net", *name))
             for name in (("mixing_weights", "step_00000008.png"),
                          ("highway", "step_00000008.png"))]
    # Top-left tile: mhc's last heatmap; below it, after an 8-pixel gap, its highway plot.
    np.testing.assert_array_equal(dashboard[:tiles[0].shape[0], :tiles[0].shape[1]], tiles[0])
    top = max(read_png(os.path.join(run_dir, mode, "images", "mhc", "net", "mixing_weights",
                                    "step_00000008.png")).shape[0]
              for mode in ("mhc", "hc", "residual")) + 8
    np.testing.assert_array_equal(
        dashboard[top:top + tiles[1].shape[0], :tiles[1].shape[1]], tiles[1])
    assert f"tensorboard --logdir {run_dir}" in printed
    assert "dashboard.png" in printed


def test_the_stream_pair_is_trained_and_summarised(demo_run):
    results, _, _ = demo_run
    by_mode = {r.mode: r for r in results.streams}
    assert list(by_mode) == ["mhc", "hc"]
    assert by_mode["mhc"].kind == "mhc/sinkhorn" and by_mode["hc"].kind == "hc"
    mhc, hc = by_mode["mhc"], by_mode["hc"]
    # Spec facts: Sinkhorn ends on a row normalisation, so every Hres and their product
    # P_L have non-negative rows summing to 1: forward gain 1 (float32 noise). The columns
    # of P_L then sum to n in all, so the largest is at least 1, and 20 iterations leave
    # each within far less than 1e-2 of 1.
    assert mhc.forward_gain == pytest.approx(1.0, abs=1e-5)
    assert 1.0 - 1e-5 <= mhc.backward_gain <= 1.0 + 1e-2
    # hc's free Hres starts at I and Adam moves it off: its gains leave 1.
    assert hc.forward_gain != pytest.approx(1.0, abs=1e-3)
    assert hc.backward_gain != pytest.approx(1.0, abs=1e-3)
    for r in (mhc, hc):
        assert 0.3 < r.val_acc <= 1.0  # they learn (chance is 0.1)
        assert np.isfinite(r.entropy) and r.entropy >= 0.0
    assert results.stream_seconds > 0


def test_the_stream_table_reports_the_last_logged_values(demo_run):
    results, printed, run_dir = demo_run
    assert re.search(r"^stream stack\s+kind\s+val acc\s+forward gain\s+backward gain\s+"
                     r"Hres entropy$", printed, re.MULTILINE), printed
    for r in results.streams:
        base = f"mhc/streams.{r.mode}"
        last = _rows(run_dir, "streams", f"{base}/composite_forward_gain")[-1]
        assert int(last["step"]) == 8
        assert float(last[f"{base}/composite_forward_gain"]) == r.forward_gain
        assert float(last[f"{base}/composite_backward_gain"]) == r.backward_gain
        # The overall composite is P_L, the last of the per-layer composites.
        assert float(last[f"{base}/composite_forward_gain/layer_4"]) == r.forward_gain
        entropies = [float(last[f"{base}/hres_entropy/layer_{layer}"]) for layer in range(1, 5)]
        assert np.mean(entropies) == pytest.approx(r.entropy, rel=1e-6)
        row = re.search(rf"^streams\.{r.mode}\s+{re.escape(r.kind)}\s+(\S+)\s+(\S+)\s+(\S+)"
                        r"\s+(\S+)$", printed, re.MULTILINE)
        assert row, printed
        assert [float(v) for v in row.groups()] == pytest.approx(
            [r.val_acc, r.forward_gain, r.backward_gain, r.entropy], abs=1e-3, rel=2e-3)


def test_the_run_folder_holds_the_stream_dashboard(demo_run):
    _, printed, run_dir = demo_run
    folder = os.path.join(run_dir, "streams")
    files = os.listdir(folder)
    assert any(f.startswith("events.out.tfevents") for f in files)
    assert "metrics.csv" in files
    images = os.path.join(folder, "images", "mhc")
    for mode in ("mhc", "hc"):
        for picture in ("hres", "hpre_hpost", "composite_gain"):
            assert sorted(os.listdir(os.path.join(images, f"streams.{mode}", picture))) == (
                LOGGED_PNGS)
    # Two stream stacks in one module: the callback overlays their gains.
    assert sorted(os.listdir(os.path.join(images, "composite_gain"))) == LOGGED_PNGS

    def last(*path):
        return read_png(os.path.join(images, *path, "step_00000008.png"))

    dashboard = read_png(os.path.join(run_dir, "dashboard_streams.png"))
    # Rows of two with 8-pixel gaps: mhc's Hres | Hpre/Hpost, hc's, then the overlay.
    rows = [[last("streams.mhc", "hres"), last("streams.mhc", "hpre_hpost")],
            [last("streams.hc", "hres"), last("streams.hc", "hpre_hpost")],
            [last("composite_gain")]]
    top = 0
    for row in rows:
        left = 0
        for tile in row:
            np.testing.assert_array_equal(
                dashboard[top:top + tile.shape[0], left:left + tile.shape[1]], tile)
            left += tile.shape[1] + 8
        top += max(tile.shape[0] for tile in row) + 8
    assert dashboard.shape[0] == top - 8
    assert f"{run_dir}/streams/images/" in printed
    assert os.path.join(run_dir, "dashboard_streams.png") in printed


def test_demo_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--epochs", "0"])
    assert "--epochs must be >= 1" in capsys.readouterr().err
    for flag in ("--stream-depth", "--stream-log-every"):
        with pytest.raises(SystemExit):
            demo.main([flag, "0"])
        assert f"{flag} must be >= 1" in capsys.readouterr().err


def test_demo_script_sets_up_and_runs_the_demo(tmp_path):
    completed = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "demo.sh"), *FAST, "--modes", "residual",
         "--no-streams", "--out", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert re.search(r"^residual\s+\d\.\d{3}\s+0\.000\s+1\.000\s", completed.stdout,
                     re.MULTILINE)
    (run_dir,) = os.listdir(tmp_path)
    assert os.path.isfile(os.path.join(tmp_path, run_dir, "dashboard.png"))
    # --no-streams skips the stream part entirely.
    assert sorted(os.listdir(os.path.join(tmp_path, run_dir))) == ["dashboard.png", "residual"]
    assert "stream" not in completed.stdout
