"""A short Trainer.fit with a TensorBoard logger: the event file, read back, holds the
documented tags on the logging steps with the values the spec computes, and the pictures."""

import lightning as L
import numpy as np
import pytest
from lightning.pytorch.loggers import TensorBoardLogger

from mhc_dashboard import figure_to_rgb, highway_plot, layer_history_heatmap, mixing_heatmap
from mhc_torch.callback import MHCLightningCallback
from tests.torch.scripts.mhc_testing import (
    SpecRecordingModule,
    expected,
    expected_scalars,
    make_batches,
    tensorboard_events,
    tensorboard_images,
    tensorboard_scalars,
)

BATCHES, EPOCHS, EVERY = 4, 2, 3
LOGGED = [0, 3, 6]  # global steps 0..7, every 3rd: the count runs across the epoch boundary
EPOCH_ENDS = [4, 8]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tensorboard")
    model = SpecRecordingModule(mode="mhc", gating=True)
    logger = TensorBoardLogger(root, name="tb")
    trainer = L.Trainer(max_epochs=EPOCHS, logger=logger, accelerator="cpu",
                        callbacks=[MHCLightningCallback(log_every_n_steps=EVERY)],
                        log_every_n_steps=1, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(model, make_batches(BATCHES))
    events = tensorboard_events(logger.log_dir)
    return model, tensorboard_scalars(events), tensorboard_images(events)


def _expected_by_step(model):
    return {step: expected(model.net.config, model.records[step]) for step in LOGGED}


def test_scalar_tags_are_exactly_the_documented_ones(run):
    model, scalars, _ = run
    wanted = expected_scalars("mhc/net", model.net.config, _expected_by_step(model)[0])
    assert set(scalars) == set(wanted)
    assert "mhc/net/weight/layer_1/index_2" in scalars  # layer 1 mixes only the newest state
    assert "mhc/net/weight/layer_1/index_0" not in scalars  # padding is not a weight


def test_scalars_are_logged_on_the_logging_steps_only(run):
    _, scalars, _ = run
    for tag, values in scalars.items():
        assert sorted(values) == LOGGED, tag


def test_logged_values_equal_the_spec(run):
    model, scalars, _ = run
    for step, e in _expected_by_step(model).items():
        for tag, value in expected_scalars("mhc/net", model.net.config, e).items():
            # TensorBoard stores float32; the stack trains in float32.
            np.testing.assert_allclose(scalars[tag][step], value, rtol=2e-4, atol=1e-6,
                                       err_msg=f"{tag} at step {step}")


def test_training_moved_the_weights_between_logging_steps(run):
    # Otherwise equal values at every step would not show that each step is read afresh.
    model, scalars, _ = run
    e = _expected_by_step(model)
    assert not np.allclose(e[0].weights, e[6].weights)
    assert scalars["mhc/net/entropy/mean"][0] != scalars["mhc/net/entropy/mean"][6]


def test_pictures_are_logged_per_step_and_per_epoch(run):
    model, _, images = run
    depth = len(model.net.layers)
    wanted = {"mhc/net/mixing_weights": LOGGED, "mhc/net/highway": LOGGED}
    wanted.update({f"mhc/net/weights_over_steps/layer_{layer}": EPOCH_ENDS
                   for layer in range(1, depth + 1)})
    assert {tag: sorted(steps) for tag, steps in images.items()} == wanted


def _close(got: np.ndarray, want: np.ndarray) -> None:
    # The callback renders float32 weights, the reference float64 ones: a value on the edge
    # of a colour-map bin may land one bin over, a few units in a few pixels.
    assert got.shape == want.shape
    differs = np.abs(got.astype(int) - want.astype(int)).max(axis=-1) > 0
    assert differs.mean() < 0.002
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 16


def test_pictures_show_the_spec_weights_and_highway(run):
    model, _, images = run
    e = _expected_by_step(model)
    kind = model.net.config.kind
    for step in LOGGED:
        heatmap = mixing_heatmap(e[step].weights, mode="mhc",
                                 title=f"mhc/net ({kind}): mixing weights, step {step}")
        _close(images["mhc/net/mixing_weights"][step], figure_to_rgb(heatmap))
        plot = highway_plot(e[step].profile, title=f"mhc/net ({kind}): highway, step {step}")
        _close(images["mhc/net/highway"][step], figure_to_rgb(plot))
    # At the end of epoch 1 (step 4) layer 3's picture holds the steps logged so far: 0 and 3.
    history = np.stack([e[0].weights[2], e[3].weights[2]])
    picture = layer_history_heatmap(history, [0, 3], 3, mode="mhc",
                                    title=f"mhc/net ({kind}) layer 3: weights over steps")
    _close(images["mhc/net/weights_over_steps/layer_3"][4], figure_to_rgb(picture))
