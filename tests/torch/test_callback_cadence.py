"""When the callback works: on global_step multiples (across epochs), never on other steps
beyond the resets, once per optimizer step under gradient accumulation, per the flags."""

import lightning as L
import numpy as np
import pytest
from torch import nn

import mhc_torch.callback as callback_module
from mhc_torch import MHCSequential
from mhc_torch.callback import MHCLightningCallback
from tests.torch.scripts.mhc_testing import (
    RecordingLogger,
    SpecRecordingModule,
    image_files,
    make_batches,
)


def _trainer(logger, callback, epochs, **kwargs):
    kwargs.setdefault("log_every_n_steps", 1)
    return L.Trainer(max_epochs=epochs, logger=logger, callbacks=[callback], accelerator="cpu",
                     enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=False, num_sanity_val_steps=0, **kwargs)


def _logged_steps(logger, tag="mhc/net/entropy/mean"):
    return sorted(logger.scalars().get(tag, {}))


def test_cadence_counts_global_steps_across_epochs(tmp_path):
    # 3 batches per epoch, every 5 steps: a batch_idx count (restarting each epoch) would
    # never reach 5; global steps 0..11 log at 0, 5 and 10.
    logger = RecordingLogger(str(tmp_path))
    trainer = _trainer(logger, MHCLightningCallback(log_every_n_steps=5), epochs=4)
    trainer.fit(SpecRecordingModule(), make_batches(3))
    assert _logged_steps(logger) == [0, 5, 10]
    images = image_files(str(tmp_path))
    assert images["mhc/net/mixing_weights"] == [0, 5, 10]
    assert images["mhc/net/highway"] == [0, 5, 10]
    assert images["mhc/net/weights_over_steps/layer_1"] == [3, 6, 9, 12]


def test_default_period_is_the_trainers(tmp_path):
    logger = RecordingLogger(str(tmp_path))
    trainer = _trainer(logger, MHCLightningCallback(), epochs=3, log_every_n_steps=4)
    trainer.fit(SpecRecordingModule(), make_batches(3))
    assert _logged_steps(logger) == [0, 4, 8]


class _Spy:
    """Wraps a function and records the trainer's global step at each call."""

    def __init__(self, function, trainer_box):
        self.function, self.trainer_box, self.steps = function, trainer_box, []

    def __call__(self, *args, **kwargs):
        self.steps.append(self.trainer_box[0].global_step)
        return self.function(*args, **kwargs)


def test_no_work_on_non_logging_steps(tmp_path, monkeypatch):
    logger = RecordingLogger(str(tmp_path))
    model = SpecRecordingModule()
    box = []
    spies = {}
    # _host is the callback's only device-to-host copy; the rest is statistics and drawing.
    for name in ("_host", "entropy", "skip_gain", "amplification", "mixing_heatmap",
                 "highway_plot", "figure_to_rgb", "layer_history_frames", "history_buffers"):
        spies[name] = _Spy(getattr(callback_module, name), box)
        monkeypatch.setattr(callback_module, name, spies[name])
    spies["reset"] = _Spy(model.net.history.reset, box)
    monkeypatch.setattr(model.net.history, "reset", spies["reset"])
    for name in ("capture_highway", "pop_highway"):
        spies[name] = _Spy(getattr(model.net, name), box)
        monkeypatch.setattr(model.net, name, spies[name])
    trainer = _trainer(logger, MHCLightningCallback(log_every_n_steps=4), epochs=2,
                       limit_val_batches=2)
    box.append(trainer)
    trainer.fit(model, make_batches(5), make_batches(3, seed=1))
    logged = [0, 4, 8]
    assert _logged_steps(logger) == logged
    for name in ("capture_highway", "pop_highway", "mixing_heatmap", "highway_plot",
                 "figure_to_rgb", "entropy", "skip_gain", "amplification"):
        assert sorted(set(spies[name].steps)) == logged, name
    assert spies["capture_highway"].steps == logged  # armed once per logging step
    assert set(spies["_host"].steps) == set(logged)
    assert spies["layer_history_frames"].steps == [5, 10]  # the two epoch ends
    # Resets: each of the 10 training batches and each of the 2 x 2 validation batches, of
    # the buffers collected at the first batch of training, of each validation run and of
    # training after it (epochs end at steps 5 and 10).
    assert len(spies["reset"].steps) == 10 + 4
    assert spies["history_buffers"].steps == [0, 5, 5, 10]


def test_gradient_accumulation_reads_once_per_optimizer_step(tmp_path, monkeypatch):
    logger = RecordingLogger(str(tmp_path))
    model = SpecRecordingModule()
    box = []
    arm = _Spy(model.net.capture_highway, box)
    monkeypatch.setattr(model.net, "capture_highway", arm)
    trainer = _trainer(logger, MHCLightningCallback(log_every_n_steps=2), epochs=1,
                       accumulate_grad_batches=2)
    box.append(trainer)
    trainer.fit(model, make_batches(8))  # 8 micro-batches, optimizer steps 0..3
    assert _logged_steps(logger) == [0, 2]
    assert arm.steps == [0, 2]
    assert [step for step, m in logger.calls if "mhc/net/entropy/mean" in m] == [0, 2]


def test_flags_choose_what_is_logged(tmp_path, monkeypatch):
    model = SpecRecordingModule()
    box = []
    arm = _Spy(model.net.capture_highway, box)
    monkeypatch.setattr(model.net, "capture_highway", arm)
    logger = RecordingLogger(str(tmp_path))
    callback = MHCLightningCallback(log_mixing_weights=False, log_gradients=False,
                                    log_every_n_steps=2)
    trainer = _trainer(logger, callback, epochs=1)
    box.append(trainer)
    trainer.fit(model, make_batches(3))
    assert set(logger.scalars()) == {f"mhc/net/entropy/layer_{layer}" for layer in range(1, 6)} | {
        "mhc/net/entropy/mean"}
    assert arm.steps == []  # no highway hooks without log_gradients
    assert image_files(str(tmp_path)) == {}


def test_nothing_is_read_with_every_flag_off(tmp_path, monkeypatch):
    host = _Spy(callback_module._host, [None])
    monkeypatch.setattr(callback_module, "_host", host)
    logger = RecordingLogger(str(tmp_path))
    callback = MHCLightningCallback(log_mixing_weights=False, log_entropy=False,
                                    log_gradients=False, log_every_n_steps=1)
    _trainer(logger, callback, epochs=1).fit(SpecRecordingModule(), make_batches(3))
    assert host.steps == [] and logger.scalars() == {}


def test_per_rank_tags_without_rank_zero_only(tmp_path):
    logger = RecordingLogger(str(tmp_path))
    callback = MHCLightningCallback(rank_zero_only=False, log_every_n_steps=2)
    _trainer(logger, callback, epochs=1).fit(SpecRecordingModule(), make_batches(3))
    tags = set(logger.scalars())
    assert "mhc/rank0/net/entropy/mean" in tags
    assert all(tag.startswith("mhc/rank0/net/") for tag in tags)
    assert "mhc/rank0/net/mixing_weights" in image_files(str(tmp_path))


def test_prefix_and_nested_module_names_make_the_tags(tmp_path):
    class Nested(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.encoder = nn.ModuleDict({"stack": MHCSequential(
                [nn.Linear(6, 6) for _ in range(3)], max_history=2, mode="mhc")})
            self.head = MHCSequential([nn.Linear(6, 6) for _ in range(2)], max_history=2,
                                      mode="hc")

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.head(self.encoder["stack"](x)), y)

        def configure_optimizers(self):
            import torch

            return torch.optim.SGD(self.parameters(), lr=0.01)

    logger = RecordingLogger(str(tmp_path))
    callback = MHCLightningCallback(prefix="stability", log_every_n_steps=1)
    _trainer(logger, callback, epochs=1).fit(Nested(), make_batches(2))
    tags = set(logger.scalars(prefix="stability/"))
    assert "stability/encoder.stack/entropy/layer_3" in tags
    assert "stability/head/highway/state_2" in tags
    assert "stability/head/weight/layer_2/index_0" in tags


def test_warns_when_there_is_nothing_to_do(tmp_path):
    class Plain(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(6, 6)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.layer(x), y)

        def configure_optimizers(self):
            import torch

            return torch.optim.SGD(self.parameters(), lr=0.01)

    with pytest.warns(UserWarning, match="holds no MHCSequential"):
        _trainer(RecordingLogger(str(tmp_path)), MHCLightningCallback(), epochs=1).fit(
            Plain(), make_batches(1))
    with pytest.warns(UserWarning, match="has no logger"):
        _trainer(False, MHCLightningCallback(), epochs=1).fit(
            SpecRecordingModule(), make_batches(1))


def test_long_runs_keep_an_evenly_thinned_bounded_history():
    history = callback_module._WeightHistory("mhc/simplex", "mhc")
    cap = callback_module.MAX_HISTORY_STEPS
    for step in range(cap + 1):
        history.append(step * 10, np.full((2, 3), float(step)))
    assert len(history.steps) == cap // 2 + 1
    assert history.steps == [10 * s for s in range(0, cap + 1, 2)]
    assert [w[0, 0] for w in history.weights] == [float(s) for s in range(0, cap + 1, 2)]
