"""The callback on StreamSequential stacks: a short Trainer.fit, read back from TensorBoard
and CSV, logs the spec's gains, entropies and gradient norms of the coefficients each
logging step's forward used, records nothing on other steps and keeps nothing after."""

import csv
import os

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader

from mhc_dashboard import (
    composite_gain_plot,
    figure_to_rgb,
    read_streams,
    stream_comparison,
    stream_scalars,
)
from mhc_spec.streams import backward, forward
from mhc_torch import StreamSequential
from mhc_torch.callback import MHCLightningCallback
from tests.torch.scripts.mhc_testing import (
    RecordingLogger,
    image_files,
    tensorboard_events,
    tensorboard_images,
    tensorboard_scalars,
)

WIDTH, DEPTH, STREAMS, TOKENS = 4, 3, 3, 2
BATCHES, EVERY = 4, 2
LOGGED = [0, 2]  # global steps 0..3
STACKS = {"mhc": {"mode": "mhc", "reduce": "gated"}, "hc": {"mode": "hc"}}


def stream_batches(count: int, seed: int = 0) -> DataLoader:
    """``count`` fixed (x (8, TOKENS, WIDTH), y (8, TOKENS)) batches: two token axes."""
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(8, TOKENS, WIDTH, generator=g),
                torch.randint(0, WIDTH, (8, TOKENS), generator=g)) for _ in range(count)]
    return DataLoader(batches, batch_size=None)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float64).numpy().copy()


class StreamRecordingModule(L.LightningModule):
    """Stream stacks of Linear blocks, each trained with cross-entropy on its output. It
    keeps, per optimizer step, each micro-batch's input and dLoss/doutput and the
    parameters the forward used (what the spec needs), and what every forward saw of
    ``record_coefficients``."""

    def __init__(self, stacks: dict[str, dict], lr: float = 0.5,
                 input_dependent: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.nets = nn.ModuleDict({
            name: StreamSequential([nn.Linear(WIDTH, WIDTH) for _ in range(DEPTH)],
                                   streams=STREAMS, **options)
            for name, options in stacks.items()})
        if input_dependent:
            # phi = 0 at init makes every token's coefficients equal; random phi and a = 1
            # make them depend on the input from the first step.
            with torch.no_grad():
                for net in self.nets.values():
                    for name in ("phi_pre", "phi_post", "phi_res"):
                        getattr(net, name).normal_(0.0, 0.5)
                    for name in ("a_pre", "a_post", "a_res"):
                        getattr(net, name).fill_(1.0)
        self.lr = lr
        self.records: dict[int, dict] = {}
        self.micro_batches: list[dict] = []
        self.forwards: list[tuple[int, bool, str, bool]] = []
        for name, net in self.nets.items():
            net.register_forward_pre_hook(
                lambda module, args, name=name: self.forwards.append(
                    (self.trainer.global_step, self.training, name,
                     module.record_coefficients)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        micro = {"x": _numpy(x), "grad_output": {}}
        loss = 0.0
        for name, net in self.nets.items():
            out = net(x)
            out.register_hook(lambda g, name=name: micro["grad_output"].__setitem__(
                name, _numpy(g)))
            loss = loss + nn.functional.cross_entropy(out.reshape(-1, WIDTH), y.reshape(-1))
        self.micro_batches.append(micro)
        return loss

    def validation_step(self, batch, batch_idx):
        x, _ = batch
        for net in self.nets.values():
            net(x)

    def on_before_optimizer_step(self, optimizer) -> None:
        # Runs after the callback's hook, before the update: the forward's parameters.
        self.records[self.trainer.global_step] = {
            "micro_batches": self.micro_batches,
            "params": {name: net.to_portable() for name, net in self.nets.items()},
        }
        self.micro_batches = []

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def expected_reading(module: StreamRecordingModule, name: str, step: int, micro: int = 0):
    """The reading the spec gives for stack ``name`` at ``step``: forward and backward in
    float64 on the micro-batch's input with the parameters the forward used."""
    config = module.nets[name].config
    record = module.records[step]
    portable = record["params"][name]
    params = {k: v for k, v in portable.items() if k.startswith("streams.")}
    weight = np.stack([portable[f"blocks.{layer}.weight"] for layer in range(DEPTH)])
    bias = np.stack([portable[f"blocks.{layer}.bias"] for layer in range(DEPTH)])
    batch = record["micro_batches"][micro]
    trace = forward(config, batch["x"], params, "linear", weight, bias)
    grads = backward(config, trace, params, "linear", weight, bias,
                     batch["grad_output"][name]).params
    norms = {key.removeprefix("streams."): float(np.linalg.norm(g)) for key, g in grads.items()}
    return read_streams(f"nets.{name}", config, (trace.hpre, trace.hpost, trace.hres), norms)


def _fit(module, logger, callback, max_epochs=1, **trainer_options) -> None:
    trainer = L.Trainer(max_epochs=max_epochs, logger=logger, accelerator="cpu",
                        callbacks=[callback], log_every_n_steps=1,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, **trainer_options)
    trainer.fit(module, stream_batches(BATCHES), stream_batches(1, seed=1))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    module = StreamRecordingModule(STACKS)
    logger = TensorBoardLogger(tmp_path_factory.mktemp("tensorboard"), name="tb")
    _fit(module, logger, MHCLightningCallback(log_every_n_steps=EVERY),
         limit_val_batches=1)
    events = tensorboard_events(logger.log_dir)
    return module, tensorboard_scalars(events), tensorboard_images(events)


def _expected_scalars(module) -> dict[int, dict[str, float]]:
    return {step: {tag: value for name in STACKS
                   for tag, value in stream_scalars(
                       f"mhc/nets.{name}", expected_reading(module, name, step)).items()}
            for step in LOGGED}


def test_scalar_tags_are_the_documented_ones_on_logging_steps_only(run):
    module, scalars, _ = run
    wanted = _expected_scalars(module)[0]
    assert set(scalars) == set(wanted)
    assert "mhc/nets.mhc/composite_backward_gain" in scalars
    assert "mhc/nets.mhc/grad_norm/reduce_logits" in scalars  # gated read-out
    assert "mhc/nets.hc/grad_norm/reduce_logits" not in scalars
    for tag, values in scalars.items():
        assert sorted(values) == LOGGED, tag


def test_logged_values_equal_the_spec(run):
    module, scalars, _ = run
    for step, wanted in _expected_scalars(module).items():
        for tag, value in wanted.items():
            # TensorBoard stores float32; the stacks train in float32.
            np.testing.assert_allclose(scalars[tag][step], value, rtol=2e-4, atol=1e-6,
                                       err_msg=f"{tag} at step {step}")


def test_mhc_gains_stay_at_one_where_hc_moves(run):
    # Rows of a Sinkhorn Hres sum to 1: every composite has forward gain 1. The trained hc
    # stack's free Hres leaves the identity it started from.
    _, scalars, _ = run
    for step in LOGGED:
        assert scalars["mhc/nets.mhc/composite_forward_gain"][step] == pytest.approx(1, 1e-5)
    assert scalars["mhc/nets.hc/composite_forward_gain"][2] != pytest.approx(1, abs=1e-4)


def test_pictures_are_logged_per_logging_step(run):
    module, _, images = run
    wanted = {f"mhc/nets.{name}/{picture}": LOGGED for name in STACKS
              for picture in ("hres", "hpre_hpost", "composite_gain")}
    wanted["mhc/composite_gain"] = LOGGED
    assert {tag: sorted(steps) for tag, steps in images.items()} == wanted
    for step in LOGGED:
        mhc = expected_reading(module, "mhc", step)
        plot = composite_gain_plot({"mhc/sinkhorn": mhc.summary},
                                   title=f"mhc/nets.mhc (mhc/sinkhorn): composite gain, "
                                         f"step {step}")
        _close(images["mhc/nets.mhc/composite_gain"][step], figure_to_rgb(plot))
        both = stream_comparison([mhc, expected_reading(module, "hc", step)], step)
        _close(images["mhc/composite_gain"][step], both)


def _close(got: np.ndarray, want: np.ndarray) -> None:
    # float32 values against float64 ones: a line may land a pixel over in a few places.
    assert got.shape == want.shape
    differs = np.abs(got.astype(int) - want.astype(int)).max(axis=-1) > 0
    assert differs.mean() < 0.01


def test_only_logging_steps_record_and_nothing_is_kept(run):
    module, _, _ = run
    training = [(step, name, flag) for step, is_training, name, flag in module.forwards
                if is_training]
    assert len(training) == BATCHES * len(STACKS)
    for step, name, flag in training:
        assert flag == (step in LOGGED), (step, name)
    validation = [flag for _, is_training, _, flag in module.forwards if not is_training]
    assert validation and not any(validation)
    for net in module.nets.values():
        assert net.record_coefficients is False and net.recorded_coefficients is None


def test_csv_gets_the_mixing_scalars_and_png_files_only(tmp_path):
    module = StreamRecordingModule({"mhc": {"mode": "mhc"}})
    logger = CSVLogger(tmp_path, name="csv")
    _fit(module, logger, MHCLightningCallback(log_every_n_steps=EVERY, log_entropy=False,
                                              log_gradients=False), limit_val_batches=0)
    with open(os.path.join(logger.log_dir, "metrics.csv"), newline="") as file:
        rows = list(csv.DictReader(file))
    gain_tag = "mhc/nets.mhc/composite_backward_gain"
    assert sorted(int(r["step"]) for r in rows if r[gain_tag]) == LOGGED
    logged = {tag for r in rows for tag, value in r.items() if tag.startswith("mhc/") and value}
    assert logged and all("gain" in tag for tag in logged)
    for step in LOGGED:
        (row,) = [r for r in rows if r["step"] == str(step) and r[gain_tag]]
        wanted = stream_scalars("mhc/nets.mhc", expected_reading(module, "mhc", step))
        for tag in logged:
            np.testing.assert_allclose(float(row[tag]), wanted[tag], rtol=1e-5, atol=1e-7,
                                       err_msg=f"{tag} at step {step}")
    assert image_files(logger.log_dir) == {f"mhc/nets.mhc/{picture}": LOGGED
                                           for picture in ("hres", "hpre_hpost",
                                                           "composite_gain")}


def test_gradient_norms_alone_record_no_coefficients(tmp_path):
    module = StreamRecordingModule({"hc": {"mode": "hc"}})
    logger = RecordingLogger(str(tmp_path))
    _fit(module, logger, MHCLightningCallback(log_every_n_steps=EVERY, log_entropy=False,
                                              log_mixing_weights=False), limit_val_batches=0)
    assert not any(flag for *_, flag in module.forwards)
    scalars = logger.scalars()
    assert set(scalars) == {f"mhc/nets.hc/grad_norm/{name}" for name in (
        "phi_pre", "phi_post", "phi_res", "a_pre", "a_post", "a_res", "b_pre", "b_post",
        "b_res")}
    for step in LOGGED:
        norms = expected_reading(module, "hc", step).grad_norms
        for name, value in norms.items():
            assert scalars[f"mhc/nets.hc/grad_norm/{name}"][step] == pytest.approx(
                value, rel=1e-4, abs=1e-7), (name, step)
    assert not image_files(str(tmp_path))


def test_accumulating_steps_read_the_first_micro_batch(tmp_path):
    module = StreamRecordingModule({"mhc": {"mode": "mhc"}}, input_dependent=True)
    logger = RecordingLogger(str(tmp_path))
    _fit(module, logger, MHCLightningCallback(log_every_n_steps=1, log_gradients=False),
         limit_val_batches=0, accumulate_grad_batches=2)
    scalars = logger.scalars()
    tag = "mhc/nets.mhc/hres_entropy/layer_3"
    assert sorted(scalars[tag]) == [0, 1]
    for step in (0, 1):
        first = stream_scalars("mhc/nets.mhc", expected_reading(module, "mhc", step, 0))
        second = stream_scalars("mhc/nets.mhc", expected_reading(module, "mhc", step, 1))
        assert first[tag] != pytest.approx(second[tag], rel=1e-4)  # the inputs tell apart
        assert scalars[tag][step] == pytest.approx(first[tag], rel=1e-5)
    recorded = [(step, flag) for step, is_training, _, flag in module.forwards if is_training]
    assert recorded == [(0, True), (0, False), (1, True), (1, False)]
