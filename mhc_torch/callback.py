"""MHCLightningCallback: history resets and the stability dashboard for PyTorch Lightning."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import (
    CometLogger,
    Logger,
    MLFlowLogger,
    TensorBoardLogger,
    WandbLogger,
)
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from mhc_dashboard import (
    StreamReading,
    figure_to_rgb,
    highway_plot,
    layer_history_frames,
    mixing_heatmap,
    read_streams,
    rgb_to_png,
    sample_tokens,
    stream_comparison,
    stream_pictures,
    stream_scalars,
)
from mhc_spec.config import check_bool, check_int
from mhc_spec.projections import window_size
from mhc_spec.statistics import amplification, attenuation, entropy, skip_gain
from mhc_torch.history import HistoryBuffer, history_buffers
from mhc_torch.sequential import MHCSequential, iter_mhc_modules
from mhc_torch.streams import StreamSequential

# Per-layer weight histories keep at most this many logged steps; beyond it every second
# entry is dropped, so a long run keeps an evenly thinned record in bounded memory.
MAX_HISTORY_STEPS = 1024


@dataclass
class _Reading:
    """What one MHC stack showed at a logging step, copied to host NumPy arrays."""

    name: str
    kind: str
    mode: str
    gating: bool
    weights: np.ndarray
    gates: np.ndarray
    profile: np.ndarray | None
    theta_grad_norm: float | None


@dataclass
class _WeightHistory:
    """The padded weights A (L, H) of one stack at each logged step, for the epoch pictures."""

    kind: str
    mode: str
    steps: list[int] = field(default_factory=list)
    weights: list[np.ndarray] = field(default_factory=list)

    def append(self, step: int, weights: np.ndarray) -> None:
        self.steps.append(step)
        self.weights.append(weights)
        if len(self.steps) > MAX_HISTORY_STEPS:
            self.steps = self.steps[::2]
            self.weights = self.weights[::2]


def iter_stream_modules(model: torch.nn.Module) -> Iterator[tuple[str, StreamSequential]]:
    """(qualified name, module) for every StreamSequential inside ``model``, nested included."""
    for name, module in model.named_modules():
        if isinstance(module, StreamSequential):
            yield name, module


class MHCLightningCallback(Callback):
    """Resets every MHC history buffer per batch and logs a stability dashboard, also for
    the multi-stream stacks (:class:`~mhc_torch.StreamSequential`) of the LightningModule.

    **Resets.** On every rank, at the start of each train, validation, test and predict
    batch, every :class:`~mhc_torch.MHCSequential` inside the LightningModule (nested ones
    included) drops its carried history, so batches stay independent. The buffers are
    collected at the first batch of each stage (and of each return to training after a
    validation run), not walked for at every batch: a buffer created later, e.g. inside
    ``forward``, is reset from the next stage on.

    **Cadence.** A training step logs when ``trainer.global_step % every == 0``, with
    ``every = log_every_n_steps`` or, if that is None, the trainer's own
    ``log_every_n_steps``; the count runs across epochs (it is not the batch index).
    Values are read in ``on_before_optimizer_step`` (after backward, before the update, so
    the weights are the ones the step's forward used) and logged at ``step = global_step``.
    Other steps only reset history: no hooks, no statistics, no device-to-host copies.
    With gradient accumulation the highway is read from the step's first micro-batch; with
    manual optimization a step is read only if an optimizer steps.

    **Where it goes.** Scalars go to every logger of the trainer via ``log_metrics``.
    Pictures go to each logger in its own way: TensorBoard ``add_image``, W&B
    ``log_image``, Comet ``experiment.log_image``, MLflow ``experiment.log_image(run_id,
    image, key=tag, step=step)`` (per-step image artifacts under the run's ``images/``,
    shown in the MLflow UI by key and step; tested with mlflow-skinny 3.18); any other
    logger (CSV, custom) gets PNG files under
    ``<its log_dir or save_dir>/images/<tag>/step_<step>.png``.
    By default only global rank 0 reads and logs anything; with ``rank_zero_only=False``
    every rank reads its own values, they are gathered to rank 0 (a collective on all
    ranks, on logging steps only) and logged with ``rank<r>/`` after the prefix.

    **Tags** (``P`` = ``prefix``, ``M`` = the stack's module name in the LightningModule,
    ``l`` = layer 1..L, ``j`` = history index 0..H-1 where H-1 is the newest state):

    ============================================  ===================  ===========================
    tag                                           logged with          value
    ============================================  ===================  ===========================
    ``P/M/weight/layer_l/index_j``                log_mixing_weights   a_{l,j} for the K=min(H,l)
                                                                       states layer l mixes
                                                                       (j = H-K..H-1)
    ``P/M/gate/layer_l``                          log_mixing_weights   sigmoid(gamma_l) (gating
                                                                       stacks only)
    ``P/M/skip_gain``                             log_mixing_weights   c_L of
                                                                       :func:`mhc_spec.skip_gain`
    ``P/M/amplification``                         log_mixing_weights   max over l of
                                                                       :func:`mhc_spec.amplification`
    ``P/M/entropy/layer_l``                       log_entropy          S(a_l) of
                                                                       :func:`mhc_spec.entropy`
    ``P/M/entropy/mean``                          log_entropy          mean of S(a_l) over layers
    ``P/M/highway/state_l`` (l = 0..L)            log_gradients        ||dLoss/ds_l||
    ``P/M/highway/attenuation``                   log_gradients        ||dLoss/ds_0|| /
                                                                       ||dLoss/ds_L||
    ``P/M/theta_grad_norm``                       log_gradients        ||dLoss/dtheta|| (all
                                                                       modes but residual)
    ============================================  ===================  ===========================

    Pictures (:mod:`mhc_dashboard`): ``P/M/mixing_weights`` (heatmap of all layers, each
    logging step, log_mixing_weights), ``P/M/highway`` (line plot of the highway profile,
    each logging step, log_gradients) and ``P/M/weights_over_steps/layer_l`` (one heatmap
    per layer of its weights over all logged steps so far, at the end of each training
    epoch, log_mixing_weights; beyond MAX_HISTORY_STEPS logged steps every second one is
    dropped).

    **Stream stacks.** On a logging step every :class:`~mhc_torch.StreamSequential` (nested
    ones included) records the coefficients of its forward: the callback sets
    ``record_coefficients = True`` at the step's batch start and back to False at its batch
    end (so with gradient accumulation the first micro-batch is read), takes
    ``recorded_coefficients`` in ``on_before_optimizer_step`` and sets it to None; other
    steps record nothing. At most :data:`mhc_dashboard.MAX_SUMMARY_TOKENS` tokens (evenly
    strided) are copied to host, where :func:`mhc_spec.streams.summary_from_coefficients`
    turns them into the tags of :mod:`mhc_dashboard.stream_readings` under ``P/M/``:
    composite and per-layer forward / backward gains (log_mixing_weights), the row entropy
    of each Hres (log_entropy; streams have no history weights, so this is their mixing
    entropy) and ``P/M/grad_norm/<name>`` of each mixing parameter (log_gradients; no
    recording needed). Pictures (log_mixing_weights): ``P/M/hres`` (each layer's
    token-mean Hres), ``P/M/hpre_hpost`` and ``P/M/composite_gain``; with two or more stream
    stacks in the LightningModule (an mhc one and an hc one, say), ``P/composite_gain``
    overlays their gains, which shows the difference the manifold makes. While it logs,
    the callback owns ``record_coefficients``.

    Args:
        log_mixing_weights: log the weights, gates, skip gain, amplification and heatmaps
            (stream stacks: the gains and the Hres, Hpre / Hpost and gain pictures).
        log_entropy: log the entropy of each layer's weights and its mean (stream stacks:
            of each Hres's rows).
        log_gradients: log the highway profile, attenuation and the logits' gradient norm
            (stream stacks: the norm of each mixing parameter's gradient).
        log_every_n_steps: logging period in optimizer steps; None = the trainer's.
        rank_zero_only: log only global rank 0's values (False: every rank's, tagged).
        prefix: first component of every tag.
    """

    def __init__(
        self,
        log_mixing_weights: bool = True,
        log_entropy: bool = True,
        log_gradients: bool = True,
        log_every_n_steps: int | None = None,
        rank_zero_only: bool = True,
        prefix: str = "mhc",
    ) -> None:
        super().__init__()
        self.log_mixing_weights = check_bool("log_mixing_weights", log_mixing_weights)
        self.log_entropy = check_bool("log_entropy", log_entropy)
        self.log_gradients = check_bool("log_gradients", log_gradients)
        self.log_every_n_steps = (
            None if log_every_n_steps is None
            else check_int("log_every_n_steps", log_every_n_steps, 1)
        )
        self.rank_zero_only = check_bool("rank_zero_only", rank_zero_only)
        if not isinstance(prefix, str) or not prefix or prefix.strip("/") != prefix:
            raise (ValueError if isinstance(prefix, str) else TypeError)(
                f"prefix={prefix!r} is invalid: prefix must be a non-empty string that "
                "neither starts nor ends with '/'."
            )
        self.prefix = prefix
        self._pending_step: int | None = None
        self._armed: list[MHCSequential] = []
        self._recording: list[StreamSequential] = []
        self._recording_step: int | None = None
        self._histories: dict[str, _WeightHistory] = {}
        self._buffers: list[HistoryBuffer] | None = None

    @property
    def _logs_anything(self) -> bool:
        return self.log_mixing_weights or self.log_entropy or self.log_gradients

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._pending_step = None
        self._armed = []
        self._drop_recordings()
        self._histories = {}

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._drop_recordings()
        self._forget_buffers()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (next(iter_mhc_modules(pl_module), None) is None
                and next(iter_stream_modules(pl_module), None) is None):
            rank_zero_warn("MHCLightningCallback: the LightningModule holds no MHCSequential "
                           "or StreamSequential; there is nothing to reset or log.")
        elif self._logs_anything and not trainer.loggers:
            rank_zero_warn("MHCLightningCallback: the trainer has no logger, so the "
                           "dashboard is not recorded (history is still reset).")

    # Resets: every batch of every stage, on every rank, of the buffers found at its start.

    def _forget_buffers(self) -> None:
        self._buffers = None

    def _reset_buffers(self, pl_module: pl.LightningModule) -> None:
        # Collected at a stage's first batch, after every start hook (the module's own
        # on_*_start, which Lightning calls after the callbacks', may still build stacks).
        if self._buffers is None:
            self._buffers = history_buffers(pl_module)
        for buffer in self._buffers:
            buffer.reset()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._forget_buffers()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._forget_buffers()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._forget_buffers()  # training batches that follow collect again

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._forget_buffers()

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._forget_buffers()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        # teardown is not called after an exception; drop what points into the module.
        self._forget_buffers()
        self._drop_recordings()
        self._disarm()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        self._reset_buffers(pl_module)
        if self._armed:
            self._disarm()
        step = trainer.global_step
        if self._recording and step != self._recording_step:
            self._drop_recordings()  # a step whose optimizer never stepped
        if step == self._pending_step or not self._reads_at(trainer, step):
            return
        self._pending_step = step
        if self.log_gradients:
            for _, module in iter_mhc_modules(pl_module):
                module.capture_highway()
                self._armed.append(module)
        if self.log_mixing_weights or self.log_entropy:
            for _, stack in iter_stream_modules(pl_module):
                stack.record_coefficients = True
                self._recording.append(stack)
            self._recording_step = step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        # The record stays until on_before_optimizer_step takes it; later micro-batches of
        # an accumulating step (and validation) must not overwrite it.
        for stack in self._recording:
            stack.record_coefficients = False

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                  batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._reset_buffers(pl_module)

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                            batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._reset_buffers(pl_module)

    def on_predict_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                               batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._reset_buffers(pl_module)

    # The dashboard: logging steps only.

    def _reads_at(self, trainer: pl.Trainer, step: int) -> bool:
        """Whether this process reads values at ``step`` (the cadence and the rank rule)."""
        if not self._logs_anything or not trainer.loggers:
            return False
        if self.rank_zero_only and trainer.global_rank != 0:
            return False
        every = self.log_every_n_steps or trainer.log_every_n_steps
        return step % every == 0

    def _drop_recordings(self) -> None:
        for stack in self._recording:
            stack.record_coefficients = False
            stack.recorded_coefficients = None
        self._recording = []

    def _disarm(self) -> list[torch.Tensor | None]:
        profiles = [module.pop_highway() for module in self._armed]
        self._armed = []
        return profiles

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self._pending_step is None or self._pending_step != trainer.global_step:
            return
        step, self._pending_step = self._pending_step, None
        profiles = dict(zip(map(id, self._armed), self._disarm(), strict=True))
        readings: list[_Reading | StreamReading] = [
            self._read(name, module, profiles.get(id(module)))
            for name, module in iter_mhc_modules(pl_module)]
        readings += self._read_streams(pl_module)
        for rank, rank_readings in self._gather(trainer, readings):
            for reading in rank_readings:
                if isinstance(reading, StreamReading):
                    self._emit_streams(trainer, rank, reading, step)
                else:
                    self._emit(trainer, rank, reading, step)
            recorded = [r for r in rank_readings
                        if isinstance(r, StreamReading) and r.summary is not None]
            if self.log_mixing_weights and len(recorded) > 1:
                _log_image(trainer, self._base(rank, "composite_gain"), step,
                           stream_comparison(recorded, step))

    @torch.no_grad()
    def _read_streams(self, pl_module: pl.LightningModule) -> list[StreamReading]:
        """The stream stacks' readings; their records are taken and recording stops."""
        recorded = {}
        for stack in self._recording:
            record, stack.recorded_coefficients = stack.recorded_coefficients, None
            stack.record_coefficients = False
            if record is not None:
                recorded[id(stack)] = tuple(
                    _host(sample_tokens(values, trailing))
                    for values, trailing in zip(record, (1, 1, 2), strict=True))
        self._recording = []
        readings = []
        for name, stack in iter_stream_modules(pl_module):
            grad_norms = _mixing_grad_norms(stack) if self.log_gradients else {}
            coefficients = recorded.get(id(stack))
            if coefficients is not None or grad_norms:
                readings.append(read_streams(name, stack.config, coefficients, grad_norms))
        return readings

    @torch.no_grad()
    def _read(self, name: str, module: MHCSequential,
              profile: torch.Tensor | None) -> _Reading:
        config = module.config
        grad_norm = None
        if self.log_gradients and module.theta is not None and module.theta.grad is not None:
            grad_norm = float(torch.linalg.vector_norm(module.theta.grad.double()))
        return _Reading(
            name=name,
            kind=config.kind,
            mode=config.mode,
            gating=config.gating,
            weights=_host(module.mixing_weights()),
            gates=_host(module.gates()),
            profile=None if profile is None else _host(profile),
            theta_grad_norm=grad_norm,
        )

    def _gather(self, trainer: pl.Trainer,
                readings: list[_Reading]) -> Iterator[tuple[int | None, list[_Reading]]]:
        """(rank, readings) pairs for rank 0 to log: its own with ``rank_zero_only``, else
        every rank's, gathered with a collective that all ranks reach at the same step."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if self.rank_zero_only or not distributed or trainer.world_size == 1:
            if trainer.global_rank == 0:
                yield (None if self.rank_zero_only else 0), readings
            return
        gathered: list[list[_Reading] | None] = [None] * trainer.world_size
        torch.distributed.all_gather_object(gathered, readings)
        if trainer.global_rank == 0:
            yield from enumerate(gathered)

    def _base(self, rank: int | None, name: str) -> str:
        return f"{self.prefix}/{name}" if rank is None else f"{self.prefix}/rank{rank}/{name}"

    def _emit(self, trainer: pl.Trainer, rank: int | None, reading: _Reading, step: int) -> None:
        base = self._base(rank, reading.name)
        metrics = self._scalars(base, reading)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        if self.log_mixing_weights:
            history = self._histories.setdefault(base, _WeightHistory(reading.kind, reading.mode))
            history.append(step, reading.weights)
            _log_image(trainer, f"{base}/mixing_weights", step, figure_to_rgb(mixing_heatmap(
                reading.weights, title=f"{base} ({reading.kind}): mixing weights, step {step}",
                mode=reading.mode)))
        if self.log_gradients and reading.profile is not None:
            _log_image(trainer, f"{base}/highway", step, figure_to_rgb(highway_plot(
                reading.profile, title=f"{base} ({reading.kind}): highway, step {step}")))

    def _emit_streams(self, trainer: pl.Trainer, rank: int | None, reading: StreamReading,
                      step: int) -> None:
        base = self._base(rank, reading.name)
        metrics = stream_scalars(base, reading, mixing=self.log_mixing_weights,
                                 entropy=self.log_entropy, gradients=self.log_gradients)
        if metrics:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
        if self.log_mixing_weights:
            for tag, rgb in stream_pictures(base, reading, step).items():
                _log_image(trainer, tag, step, rgb)

    def _scalars(self, base: str, reading: _Reading) -> dict[str, float]:
        a = reading.weights
        depth, h = a.shape
        metrics: dict[str, float] = {}
        if self.log_mixing_weights:
            for layer in range(1, depth + 1):
                for j in range(h - window_size(h, layer), h):
                    metrics[f"{base}/weight/layer_{layer}/index_{j}"] = float(a[layer - 1, j])
                if reading.gating:
                    metrics[f"{base}/gate/layer_{layer}"] = float(reading.gates[layer - 1])
            metrics[f"{base}/skip_gain"] = float(skip_gain(a, reading.gates)[-1])
            metrics[f"{base}/amplification"] = float(amplification(a, reading.gates).max())
        if self.log_entropy:
            per_layer = entropy(a, mode=reading.mode)
            for layer, value in enumerate(per_layer, start=1):
                metrics[f"{base}/entropy/layer_{layer}"] = float(value)
            metrics[f"{base}/entropy/mean"] = float(per_layer.mean())
        if self.log_gradients:
            if reading.profile is not None:
                for index, value in enumerate(reading.profile):
                    metrics[f"{base}/highway/state_{index}"] = float(value)
                metrics[f"{base}/highway/attenuation"] = attenuation(reading.profile)
            if reading.theta_grad_norm is not None:
                metrics[f"{base}/theta_grad_norm"] = reading.theta_grad_norm
        return metrics

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._armed:
            self._disarm()
        self._drop_recordings()
        step = trainer.global_step
        for base, history in self._histories.items():
            frames = layer_history_frames(
                np.stack(history.weights), history.steps, history.mode,
                titles=lambda layer, b=base, k=history.kind: f"{b} ({k}) layer {layer}: "
                                                           "weights over steps")
            for layer, rgb in enumerate(frames, start=1):
                _log_image(trainer, f"{base}/weights_over_steps/layer_{layer}", step, rgb)


def _host(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(device="cpu", dtype=torch.float64).numpy()


def _mixing_grad_norms(stack: StreamSequential) -> dict[str, float]:
    """||grad|| of each mixing parameter of ``stack`` that has one (not the blocks'), by its
    short name (``phi_res``, ``reduce_logits``, ...), copied to host at once."""
    grads = {name.rsplit(".", 1)[-1]: param.grad for name, param in stack.named_parameters()
             if not name.startswith("blocks.") and param.grad is not None}
    if not grads:
        return {}
    norms = torch.stack([torch.linalg.vector_norm(g.double()) for g in grads.values()])
    return dict(zip(grads, norms.cpu().tolist(), strict=True))


def _image_dir(trainer: pl.Trainer, logger: Logger) -> str:
    """Where PNGs go for a logger that cannot hold images: its log_dir, save_dir, or the
    trainer's root directory."""
    return getattr(logger, "log_dir", None) or logger.save_dir or trainer.default_root_dir


def _log_image(trainer: pl.Trainer, tag: str, step: int, rgb: np.ndarray) -> None:
    """Hand a uint8 (height, width, 3) picture to every logger its own way."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, rgb, global_step=step, dataformats="HWC")
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[rgb], step=step)
        elif isinstance(logger, CometLogger):
            logger.experiment.log_image(rgb, name=tag, step=step)
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_image(logger.run_id, rgb, key=tag, step=step)
        else:
            path = os.path.join(_image_dir(trainer, logger), "images", *tag.split("/"),
                                f"step_{step:08d}.png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as file:
                file.write(rgb_to_png(rgb))
