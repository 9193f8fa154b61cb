"""The demo trains every mode with the dashboard, prints its table, writes the run folder
(TensorBoard events, CSV metrics, PNGs, the composed dashboard) and says how to open it."""

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
FAST = ["--epochs", "1", "--depth", "6", "--log-every", "4", "--batch-size", "128"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = demo.main([*FAST, "--out", str(out)])
    (run_dir,) = [os.path.join(out, d) for d in os.listdir(out)]
    return results, printed.getvalue(), run_dir


def _rows(run_dir, mode):
    with open(os.path.join(run_dir, mode, "metrics.csv"), newline="") as file:
        return [row for row in csv.DictReader(file) if row.get("mhc/net/entropy/mean")]


def test_every_mode_is_trained_and_summarised(demo_run):
    results, _, run_dir = demo_run
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
    for r in results:
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
        assert sorted(os.listdir(os.path.join(images, "mixing_weights"))) == [
            "step_00000000.png", "step_00000004.png", "step_00000008.png"]  # 12 steps
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


def test_demo_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--epochs", "0"])
    assert "--epochs must be >= 1" in capsys.readouterr().err


def test_demo_script_sets_up_and_runs_the_demo(tmp_path):
    completed = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "demo.sh"), *FAST, "--modes", "residual",
         "--out", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert re.search(r"^residual\s+\d\.\d{3}\s+0\.000\s+1\.000\s", completed.stdout,
                     re.MULTILINE)
    (run_dir,) = os.listdir(tmp_path)
    assert os.path.isfile(os.path.join(tmp_path, run_dir, "dashboard.png"))
