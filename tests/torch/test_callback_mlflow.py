"""The dashboard reaches an MLflow logger (local SQLite store, no server): scalars as metric
histories with the spec's values, pictures as per-step image artifacts."""

import os
import re

import lightning as L
import numpy as np
from lightning.pytorch.loggers import MLFlowLogger

from mhc_torch.callback import MHCLightningCallback
from tests.torch.scripts.mhc_testing import (
    SpecRecordingModule,
    expected,
    expected_scalars,
    make_batches,
    read_png,
)

BATCHES, EPOCHS, EVERY = 3, 2, 2
LOGGED = [0, 2, 4]  # global steps 0..5
EPOCH_ENDS = [3, 6]

# MlflowClient.log_image(key=...) stores images/<key with / as ~>+step+<step>+timestamp+...png
_IMAGE_NAME = re.compile(
    r"^images/(?P<key>[^+]+)\+step\+(?P<step>\d+)\+timestamp\+[^+]+\+[^+]+\.png$")


def test_mlflow_gets_metric_histories_and_image_artifacts(tmp_path):
    from mlflow.tracking import MlflowClient

    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"  # tests/conftest.py
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    model = SpecRecordingModule(mode="mhc", constraint="softmax", gating=True)
    logger = MLFlowLogger(experiment_name="mhc-tests", tracking_uri=tracking_uri,
                          artifact_location=str(tmp_path / "artifacts"))
    trainer = L.Trainer(max_epochs=EPOCHS, logger=logger, accelerator="cpu",
                        callbacks=[MHCLightningCallback(log_every_n_steps=EVERY)],
                        log_every_n_steps=1, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(model, make_batches(BATCHES))

    client = MlflowClient(tracking_uri=tracking_uri)
    run_id = logger.run_id
    wanted = {step: expected_scalars("mhc/net", model.net.config,
                                     expected(model.net.config, model.records[step]))
              for step in LOGGED}
    logged_tags = {k for k in client.get_run(run_id).data.metrics if k.startswith("mhc/")}
    assert logged_tags == set(wanted[0])
    for tag in wanted[0]:
        history = {m.step: m.value for m in client.get_metric_history(run_id, tag)}
        assert sorted(history) == LOGGED, tag
        for step in LOGGED:
            np.testing.assert_allclose(history[step], wanted[step][tag], rtol=1e-5, atol=1e-7,
                                       err_msg=f"{tag} at step {step}")

    images: dict[str, list[int]] = {}
    pngs = []
    for artifact in client.list_artifacts(run_id, "images"):
        match = _IMAGE_NAME.match(artifact.path)
        if match:
            images.setdefault(match["key"].replace("~", "/"), []).append(int(match["step"]))
            pngs.append(artifact.path)
    depth = len(model.net.layers)
    pictures = {"mhc/net/mixing_weights": LOGGED, "mhc/net/highway": LOGGED}
    pictures.update({f"mhc/net/weights_over_steps/layer_{layer}": EPOCH_ENDS
                     for layer in range(1, depth + 1)})
    assert {key: sorted(steps) for key, steps in images.items()} == pictures
    heatmap = read_png(client.download_artifacts(run_id, sorted(pngs)[0],
                                                 str(tmp_path / "download")))
    assert heatmap.ndim == 3 and heatmap.shape[2] == 3 and heatmap.shape[0] > 100
