"""The demo: the user guide's HoneyBadgerModule on scikit-learn's digits, with the dashboard.

Run ``python -m mhc_torch.demo`` (or ``bash scripts/demo.sh`` from a fresh clone). It trains
the guide's stack (``MHCSequential`` of 50 x ``nn.Linear(64, 64)``, ``max_history=4``, Adam
1e-3) in the modes ``mhc``, ``hc`` and ``residual`` with :class:`MHCLightningCallback`,
a TensorBoard logger and a CSV logger (which receives the dashboard as PNG files), prints a
comparison table, composes ``dashboard.png`` and says how to open TensorBoard.

Then (unless ``--no-streams``) the multi-stream family: one LightningModule holds two
``StreamSequential`` stacks of 12 (``--stream-depth``) x ``nn.Linear(64, 64)`` on n = 4
dynamic streams, one ``mode="mhc"`` (Sinkhorn Hres) and one ``mode="hc"`` (free Hres),
trained on the same batches with the same callback, which draws their pictures every 16
(``--stream-log-every``) steps, half as often as the history stacks' because each logging
step draws seven. It prints their accuracy, composite gains and Hres entropy and composes
``dashboard_streams.png`` (Hres per layer, Hpre / Hpost, the mhc-vs-hc gains).

Digits has 64 features and 10 classes; the class logits are the first 10 of the stack's 64
output features, so every mode trains exactly the guide's stack with no extra head.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from csv import DictReader
from dataclasses import dataclass
from datetime import datetime

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mhc_dashboard import png_to_rgb, rgb_to_png, tile
from mhc_torch import MHCSequential, StreamSequential
from mhc_torch.callback import MHCLightningCallback

CLASSES = 10
MODES = ("mhc", "hc", "residual")
# The dashboard's module name: the guide stores its stack as ``self.net``.
STACK = "net"
STREAM_MODES = ("mhc", "hc")
STREAMS = 4
# The stream stacks live in ``self.streams`` (an nn.ModuleDict by mode), so the dashboard
# names them "streams.mhc" and "streams.hc"; their run folder is "streams".
STREAM_STACKS = "streams"


class HoneyBadgerModule(L.LightningModule):
    """The guide's module: ``MHCSequential`` of ``depth`` x ``nn.Linear(channels, channels)``,
    ``max_history=4``, cross-entropy on the first 10 output features, Adam 1e-3."""

    def __init__(self, channels: int = 64, depth: int = 50, mode: str = "mhc") -> None:
        super().__init__()
        self.net = MHCSequential(
            [nn.Linear(channels, channels) for _ in range(depth)], max_history=4, mode=mode
        )
        self.loss_fn = nn.CrossEntropyLoss()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        loss = self.loss_fn(self.net(x)[:, :CLASSES], y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        logits = self.net(x)[:, :CLASSES]
        self.log("val_loss", self.loss_fn(logits, y))
        self.log("val_acc", (logits.argmax(dim=-1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def digits_loaders(batch_size: int, seed: int) -> tuple[DataLoader, DataLoader]:
    """Digits (1797 8x8 images, bundled with scikit-learn), standardised with the training
    split's statistics, split 80/20 at random."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.8 * len(y))
    train, val = order[:cut], order[cut:]
    mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-6
    x = ((x - mean) / std).astype(np.float32)

    def loader(index: np.ndarray, shuffle: bool) -> DataLoader:
        data = TensorDataset(torch.from_numpy(x[index]), torch.from_numpy(y[index]))
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle,
                          generator=torch.Generator().manual_seed(seed))

    return loader(train, True), loader(val, False)


class StreamPairModule(L.LightningModule):
    """Two ``StreamSequential`` stacks of ``depth`` x ``nn.Linear(channels, channels)`` on
    ``STREAMS`` dynamic streams with sum read-out, ``self.streams["mhc"]`` (Sinkhorn Hres,
    20 iterations) and ``self.streams["hc"]`` (free Hres), each with cross-entropy on its
    first 10 output features. The loss is the sum of the two; they share no parameter, so
    each gets exactly the gradient and the Adam 1e-3 update it would get trained alone on
    the same batches."""

    def __init__(self, channels: int = 64, depth: int = 12) -> None:
        super().__init__()
        self.streams = nn.ModuleDict({
            mode: StreamSequential([nn.Linear(channels, channels) for _ in range(depth)],
                                   streams=STREAMS, mode=mode, dynamic=True)
            for mode in STREAM_MODES})
        self.loss_fn = nn.CrossEntropyLoss()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        losses = {mode: self.loss_fn(net(x)[:, :CLASSES], y)
                  for mode, net in self.streams.items()}
        for mode, loss in losses.items():
            self.log(f"train_loss/{mode}", loss)
        return sum(losses.values())

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        for mode, net in self.streams.items():
            logits = net(x)[:, :CLASSES]
            self.log(f"val_loss/{mode}", self.loss_fn(logits, y))
            self.log(f"val_acc/{mode}", (logits.argmax(dim=-1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class EpochPrinter(Callback):
    """One line per epoch instead of a progress bar; with ``stacks``, the losses and
    accuracies logged as ``train_loss/<stack>`` and ``val_acc/<stack>`` for each."""

    def __init__(self, mode: str, epochs: int, stacks: Sequence[str] = ()) -> None:
        self.mode, self.epochs, self.stacks = mode, epochs, stacks
        self.start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        if self.stacks:
            values = "  ".join(
                f"{stack}: train loss {float(m[f'train_loss/{stack}']):.3f}  "
                f"val acc {float(m[f'val_acc/{stack}']):.3f}" for stack in self.stacks)
        else:
            values = (f"train loss {float(m['train_loss']):.3f}  "
                      f"val acc {float(m['val_acc']):.3f}")
        print(f"  [{self.mode:>8}] epoch {trainer.current_epoch + 1}/{self.epochs}  "
              f"{values}  ({time.perf_counter() - self.start:.1f} s)", flush=True)


@dataclass
class Result:
    mode: str
    val_acc: float
    entropy: float
    skip_gain: float
    attenuation: float
    seconds: float


def _last_logged(csv: CSVLogger, key: str) -> float:
    """The last value the dashboard logged under ``key``, read back from the CSV file."""
    with open(os.path.join(csv.log_dir, "metrics.csv"), newline="") as file:
        values = [row[key] for row in DictReader(file) if row.get(key)]
    return float(values[-1]) if values else float("nan")


@dataclass
class StreamResult:
    """One stream stack's summary: its last validation accuracy and, as last logged, the
    composite gains (token means of max_i sum_j |P_L[i, j]| and max_j sum_i |P_L[i, j]|,
    P_L = Hres_L ... Hres_1) and the mean over layers of each Hres's row entropy."""

    mode: str
    kind: str
    val_acc: float
    forward_gain: float
    backward_gain: float
    entropy: float


@dataclass
class DemoResults:
    """What :func:`main` trained: the history family's modes, then the stream stacks
    (empty with ``--no-streams``); ``stream_seconds`` is the stream pair's training time."""

    history: list[Result]
    streams: list[StreamResult]
    stream_seconds: float = float("nan")


def _fit(model: L.LightningModule, name: str, run_dir: str, args: argparse.Namespace,
         printer: EpochPrinter, log_every: int) -> tuple[L.Trainer, CSVLogger, float]:
    """Train ``model`` on digits with the dashboard every ``log_every`` steps, logging to
    ``run_dir/name``; returns the trainer, its CSV logger and the seconds ``fit`` took."""
    train, val = digits_loaders(args.batch_size, args.seed)
    loggers = [TensorBoardLogger(run_dir, name=name, version=""),
               CSVLogger(run_dir, name=name, version="")]
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=loggers,
        callbacks=[MHCLightningCallback(log_every_n_steps=log_every), printer],
        log_every_n_steps=log_every,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(model, train, val)
    return trainer, loggers[1], time.perf_counter() - start


def train_mode(mode: str, run_dir: str, args: argparse.Namespace) -> Result:
    """Train one mode with the dashboard and return its summary row."""
    L.seed_everything(args.seed, verbose=False)
    model = HoneyBadgerModule(depth=args.depth, mode=mode)
    trainer, csv, seconds = _fit(model, mode, run_dir, args, EpochPrinter(mode, args.epochs),
                                 args.log_every)
    return Result(
        mode=mode,
        val_acc=float(trainer.callback_metrics["val_acc"]),
        entropy=_last_logged(csv, f"mhc/{STACK}/entropy/mean"),
        skip_gain=_last_logged(csv, f"mhc/{STACK}/skip_gain"),
        attenuation=_last_logged(csv, f"mhc/{STACK}/highway/attenuation"),
        seconds=seconds,
    )


def train_streams(run_dir: str, args: argparse.Namespace) -> tuple[list[StreamResult], float]:
    """Train the mhc and hc stream stacks together with the dashboard; their rows and the
    seconds it took."""
    L.seed_everything(args.seed, verbose=False)
    model = StreamPairModule(depth=args.stream_depth)
    trainer, csv, seconds = _fit(model, STREAM_STACKS, run_dir, args,
                                 EpochPrinter(STREAM_STACKS, args.epochs, STREAM_MODES),
                                 args.stream_log_every)
    results = []
    for mode, net in model.streams.items():
        base = f"mhc/{STREAM_STACKS}.{mode}"
        results.append(StreamResult(
            mode=mode,
            kind=net.config.kind,
            val_acc=float(trainer.callback_metrics[f"val_acc/{mode}"]),
            forward_gain=_last_logged(csv, f"{base}/composite_forward_gain"),
            backward_gain=_last_logged(csv, f"{base}/composite_backward_gain"),
            entropy=_last_logged(csv, f"{base}/hres_entropy/mean"),
        ))
    return results, seconds


def format_table(results: Sequence[Result]) -> str:
    """The comparison table, one row per mode."""
    lines = [f"{'mode':<10}{'val acc':>9}{'mean entropy':>14}{'skip gain':>11}"
             f"{'highway attenuation':>21}{'time (s)':>10}"]
    for r in results:
        lines.append(f"{r.mode:<10}{r.val_acc:>9.3f}{r.entropy:>14.3f}{r.skip_gain:>11.3f}"
                     f"{r.attenuation:>21.3g}{r.seconds:>10.1f}")
    return "\n".join(lines)


def format_stream_table(results: Sequence[StreamResult]) -> str:
    """The stream stacks' table, one row per stack (named as in the dashboard's tags)."""
    lines = [f"{'stream stack':<14}{'kind':<14}{'val acc':>8}{'forward gain':>14}"
             f"{'backward gain':>15}{'Hres entropy':>14}"]
    for r in results:
        lines.append(f"{STREAM_STACKS + '.' + r.mode:<14}{r.kind:<14}{r.val_acc:>8.3f}"
                     f"{r.forward_gain:>14.4f}{r.backward_gain:>15.4f}{r.entropy:>14.3f}")
    return "\n".join(lines)


def _latest_png(folder: str) -> np.ndarray:
    """The dashboard PNG of the highest step in ``folder`` (the callback's file layout)."""
    name = sorted(f for f in os.listdir(folder) if f.endswith(".png"))[-1]
    with open(os.path.join(folder, name), "rb") as file:
        return png_to_rgb(file.read())


def compose_dashboard(run_dir: str, modes: Sequence[str], layer: int) -> str:
    """Tile the final pictures the callback wrote: per mode (a column) the weight heatmap,
    the highway profile and one layer's weights over steps. Returns the PNG's path."""
    rows = ("mixing_weights", "highway", f"weights_over_steps/layer_{layer}")
    images = [_latest_png(os.path.join(run_dir, mode, "images", "mhc", STACK, *row.split("/")))
              for row in rows for mode in modes]
    path = os.path.join(run_dir, "dashboard.png")
    with open(path, "wb") as file:
        file.write(rgb_to_png(tile(images, columns=len(modes))))
    return path


def compose_stream_dashboard(run_dir: str) -> str:
    """Tile the stream stacks' final pictures: a row per stack (its Hres per layer, its
    Hpre / Hpost), then the gains of both. Returns the PNG's path."""
    images = os.path.join(run_dir, STREAM_STACKS, "images", "mhc")
    pictures = [_latest_png(os.path.join(images, f"{STREAM_STACKS}.{mode}", picture))
                for mode in STREAM_MODES for picture in ("hres", "hpre_hpost")]
    pictures.append(_latest_png(os.path.join(images, "composite_gain")))
    path = os.path.join(run_dir, "dashboard_streams.png")
    with open(path, "wb") as file:
        file.write(rgb_to_png(tile(pictures, columns=2)))
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mhc_torch.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs per mode and for the stream stacks (default 3)")
    parser.add_argument("--depth", type=int, default=50,
                        help="layers in the MHCSequential stack (default 50)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--log-every", type=int, default=8,
                        help="dashboard period of the MHCSequential stacks in optimizer "
                             "steps (default 8)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="modes to train (default: mhc hc residual)")
    parser.add_argument("--stream-depth", type=int, default=12,
                        help="layers in each stream stack (default 12)")
    parser.add_argument("--stream-log-every", type=int, default=16,
                        help="dashboard period of the stream stacks in optimizer steps "
                             "(default 16: each logging step draws 7 pictures)")
    parser.add_argument("--no-streams", dest="streams", action="store_false",
                        help="skip the multi-stream (StreamSequential mhc vs hc) part")
    parser.add_argument("--out", default="runs", help="parent folder of the run (default runs)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    for name in ("epochs", "depth", "stream_depth", "batch_size", "log_every",
                 "stream_log_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


@contextmanager
def _quiet() -> Iterator[None]:
    """Keep the output to the demo's own lines: Lightning's banners, tips and warnings go
    (restored afterwards, so callers of :func:`main` keep their settings)."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def main(argv: Sequence[str] | None = None) -> DemoResults:
    """Train every requested mode and the stream pair, print the tables and where the
    dashboards are."""
    args = parse_args(argv)
    with _quiet():
        return _run(args)


def _run(args: argparse.Namespace) -> DemoResults:
    run_dir = os.path.abspath(os.path.join(
        args.out, f"demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"))
    os.makedirs(run_dir, exist_ok=True)
    print(f"mhc demo: {args.depth} x Linear(64, 64), max_history=4, digits, "
          f"{args.epochs} epochs per mode, run folder {run_dir}", flush=True)
    start = time.perf_counter()
    results = []
    for mode in args.modes:
        print(f"training mode={mode!r}", flush=True)
        results.append(train_mode(mode, run_dir, args))
    outcome = DemoResults(results, [])
    if args.streams:
        print(f"training StreamSequential mode='mhc' and mode='hc' together: "
              f"{args.stream_depth} x Linear(64, 64) each, {STREAMS} dynamic streams",
              flush=True)
        outcome.streams, outcome.stream_seconds = train_streams(run_dir, args)
    dashboard = compose_dashboard(run_dir, args.modes, layer=min(4, args.depth))
    stream_dashboard = compose_stream_dashboard(run_dir) if args.streams else None
    print()
    print(format_table(results))
    if args.streams:
        print()
        print(format_stream_table(outcome.streams))
        print(f"(both stream stacks trained together in {outcome.stream_seconds:.1f} s; "
              "gains of the last logged step)")
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    print(f"dashboard PNGs: {run_dir}/<mode>/images/  (overview: {dashboard})")
    if stream_dashboard is not None:
        print(f"stream dashboard PNGs: {run_dir}/{STREAM_STACKS}/images/  "
              f"(overview: {stream_dashboard})")
    print(f"open the dashboard in TensorBoard:\n  .venv/bin/tensorboard --logdir {run_dir}\n"
          "  then browse http://localhost:6006 (SCALARS: mhc/net/..., IMAGES: heatmaps)")
    if args.streams:
        print(f"  streams: SCALARS mhc/{STREAM_STACKS}.mhc/... and mhc/{STREAM_STACKS}.hc/..., "
              "IMAGES mhc/composite_gain (mhc vs hc)")
    return outcome


if __name__ == "__main__":
    main()
