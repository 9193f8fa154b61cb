"""The dashboard reaches CSV (scalars + PNG files), W&B offline and Comet offline loggers,
each in its own way, with the spec's values."""

import glob
import os

import lightning as L
import numpy as np
import pytest
from lightning.pytorch.loggers import CometLogger, CSVLogger, WandbLogger

from mhc_torch.callback import MHCLightningCallback
from tests.torch.scripts.mhc_testing import (
    RecordingLogger,
    SpecRecordingModule,
    comet_messages,
    expected,
    expected_scalars,
    image_files,
    make_batches,
    read_png,
    wandb_history,
)

BATCHES, EPOCHS, EVERY = 3, 2, 2
LOGGED = [0, 2, 4]  # global steps 0..5
EPOCH_ENDS = [3, 6]


def _fit(model, logger) -> None:
    trainer = L.Trainer(max_epochs=EPOCHS, logger=logger, accelerator="cpu",
                        callbacks=[MHCLightningCallback(log_every_n_steps=EVERY)],
                        log_every_n_steps=1, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(model, make_batches(BATCHES))


def _picture_tags(depth: int) -> dict[str, list[int]]:
    tags = {"mhc/net/mixing_weights": LOGGED, "mhc/net/highway": LOGGED}
    tags.update({f"mhc/net/weights_over_steps/layer_{layer}": EPOCH_ENDS
                 for layer in range(1, depth + 1)})
    return tags


def test_csv_gets_the_scalars_and_png_files(tmp_path):
    import csv

    model = SpecRecordingModule(mode="hc")  # hc: entropy of |a| / sum |a|, signed weights
    logger = CSVLogger(tmp_path, name="csv")
    _fit(model, logger)
    with open(os.path.join(logger.log_dir, "metrics.csv"), newline="") as file:
        rows = list(csv.DictReader(file))
    for step in LOGGED:
        e = expected(model.net.config, model.records[step])
        wanted = expected_scalars("mhc/net", model.net.config, e)
        (row,) = [r for r in rows if r["step"] == str(step) and r["mhc/net/entropy/mean"]]
        for tag, value in wanted.items():
            np.testing.assert_allclose(float(row[tag]), value, rtol=1e-5, atol=1e-7,
                                       err_msg=f"{tag} at step {step}")
    logged_steps = sorted(int(r["step"]) for r in rows if r["mhc/net/entropy/mean"])
    assert logged_steps == LOGGED
    assert image_files(logger.log_dir) == _picture_tags(len(model.net.layers))
    heatmap = read_png(os.path.join(logger.log_dir, "images", "mhc", "net", "mixing_weights",
                                    "step_00000004.png"))
    assert heatmap.ndim == 3 and heatmap.shape[2] == 3 and heatmap.shape[0] > 100
    assert (heatmap == 0).all(axis=-1).any()  # hc's unavailable states: exact zeros, black


def test_wandb_offline_gets_scalars_and_images(tmp_path):
    import wandb

    model = SpecRecordingModule(mode="mhc", constraint="softmax")
    logger = WandbLogger(project="mhc-tests", save_dir=str(tmp_path), offline=True)
    try:
        _fit(model, logger)
    finally:
        wandb.finish()
        wandb.teardown()  # finish() may return before the service has written the run file
    (run_file,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    rows = wandb_history(run_file)
    by_step = {}
    for row in rows:
        if "mhc/net/entropy/mean" in row:
            by_step[row["trainer/global_step"]] = row
    assert sorted(by_step) == LOGGED
    for step, row in by_step.items():
        wanted = expected_scalars("mhc/net", model.net.config,
                                  expected(model.net.config, model.records[step]))
        assert {k for k in row if k.startswith("mhc/")} == set(wanted)
        for tag, value in wanted.items():
            np.testing.assert_allclose(row[tag], value, rtol=1e-5, atol=1e-7, err_msg=tag)
    media = os.path.dirname(run_file)
    images = {tag: sorted(row["trainer/global_step"] for row in rows
                          if f"{tag}/filenames" in row)
              for tag in _picture_tags(len(model.net.layers))}
    assert images == _picture_tags(len(model.net.layers))
    pngs = glob.glob(os.path.join(media, "files", "media", "images", "mhc", "net", "**", "*.png"),
                     recursive=True)
    assert len(pngs) == sum(len(steps) for steps in images.values())
    assert read_png(pngs[0]).shape[2] == 3


def test_comet_offline_gets_scalars_and_images(tmp_path):
    model = SpecRecordingModule(mode="mhc", constraint="identity")
    # Not online=False: Lightning then makes a disabled experiment that records nothing.
    logger = CometLogger(project="mhc-tests", offline_directory=str(tmp_path),
                         log_env_details=False, log_code=False, log_git_metadata=False,
                         log_git_patch=False, display_summary_level=0)
    _fit(model, logger)
    logger.experiment.end()
    (archive_path,) = glob.glob(str(tmp_path / "*.zip"))
    messages, archive = comet_messages(archive_path)
    metrics = {}
    for m in messages:
        if m["type"] == "metric_msg":
            metric = m["payload"]["metric"]
            metrics.setdefault(metric["metricName"], {})[metric["step"]] = metric["metricValue"]
    for step in LOGGED:
        wanted = expected_scalars("mhc/net", model.net.config,
                                  expected(model.net.config, model.records[step]))
        for tag, value in wanted.items():
            np.testing.assert_allclose(float(metrics[tag][step]), value, rtol=1e-5, atol=1e-7,
                                       err_msg=f"{tag} at step {step}")
    assert sorted(metrics["mhc/net/entropy/mean"]) == LOGGED
    uploads = {}
    for m in messages:
        if m["type"] == "file_upload":
            params = m["payload"]["additional_params"]
            uploads.setdefault(params["figName"], []).append(params["step"])
            assert archive.read(m["payload"]["file_path"]).startswith(b"\x89PNG")
    assert {tag: sorted(steps) for tag, steps in uploads.items()} == _picture_tags(
        len(model.net.layers))


@pytest.mark.parametrize(("mode", "constraint", "gating"), [
    ("residual", "simplex", False),
    ("mhc", "simplex", False),
    ("mhc", "identity", True),
])
def test_values_match_the_spec_in_every_mode(tmp_path, mode, constraint, gating):
    model = SpecRecordingModule(mode=mode, constraint=constraint, gating=gating)
    logger = RecordingLogger(str(tmp_path))
    _fit(model, logger)
    scalars = logger.scalars()
    for step in LOGGED:
        wanted = expected_scalars("mhc/net", model.net.config,
                                  expected(model.net.config, model.records[step]))
        assert set(scalars) == set(wanted)
        for tag, value in wanted.items():
            np.testing.assert_allclose(scalars[tag][step], value, rtol=1e-5, atol=1e-7,
                                       err_msg=f"{tag} at step {step}")
    if mode == "residual":
        assert "mhc/net/theta_grad_norm" not in scalars  # no logits to differentiate
        assert scalars["mhc/net/entropy/mean"][0] == 0.0
        assert scalars["mhc/net/skip_gain"][0] == 1.0
