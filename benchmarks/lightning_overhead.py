"""Step time of a Lightning training run without MHCLightningCallback and with it, on its
non-logging and its logging steps.

Method: the guide's model (MHCSequential of 50 x nn.Linear(64, 64), H=4, mode "mhc", a
Linear(64, 10) head, cross-entropy, Adam 1e-3, batch 64) is trained by a real
``lightning.Trainer`` (CPU, TensorBoard logger, no progress bar, checkpointing or
validation). A timing callback placed first in the callback list stamps
``on_train_batch_start``; the interval between consecutive stamps is one whole training step,
every hook of every callback, the optimizer and the trainer's own logging included. Runs
without ("plain") and with the callback alternate (round-robin over fits, a fresh seeded model
each fit); the first step of each fit is dropped. Steps are compared index by index: step i is
a callback logging step when i % log_every_n_steps == 0, and is compared with the plain run's
steps at the same indices (so the trainer's own logging falls on the same steps in both).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import torch
from torch import nn

from benchmarks import machine, torch_threads
from benchmarks.results_io import write_result

WIDTH = 64
BATCH = 64
DEPTH = 50
CLASSES = 10
LOG_EVERY = 50


class StepStamps:
    """Records time.perf_counter() and global_step at each on_train_batch_start."""

    def __init__(self) -> None:
        self.stamps: list[tuple[int, float]] = []

    def intervals(self) -> list[tuple[int, float]]:
        """(step, seconds) of every complete step but the first of the fit."""
        pairs = zip(self.stamps[:-1], self.stamps[1:], strict=True)
        return [(step, later - now) for (step, now), (_, later) in pairs][1:]


def make_stamp_callback(stamps: StepStamps) -> Any:
    from lightning.pytorch.callbacks import Callback

    class StampCallback(Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                                 batch_idx: int) -> None:
            stamps.stamps.append((trainer.global_step, time.perf_counter()))

    return StampCallback()


def make_module() -> Any:
    import lightning.pytorch as pl

    from mhc_torch import MHCSequential

    class HoneyBadger(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.stack = MHCSequential([nn.Linear(WIDTH, WIDTH) for _ in range(DEPTH)],
                                       max_history=4, mode="mhc")
            self.head = nn.Linear(WIDTH, CLASSES)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor],
                          batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.cross_entropy(self.head(self.stack(x)), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    return HoneyBadger()


def fit_once(with_callback: bool, steps: int, root: str) -> list[tuple[int, float]]:
    """One Trainer.fit of ``steps`` steps; the (step, seconds) intervals it measured."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    from mhc_torch import MHCLightningCallback

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(steps * BATCH, WIDTH),
                                          torch.randint(0, CLASSES, (steps * BATCH,)))
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH)
    stamps = StepStamps()
    callbacks = [make_stamp_callback(stamps)]
    if with_callback:
        callbacks.append(MHCLightningCallback())
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, log_every_n_steps=LOG_EVERY,
        logger=TensorBoardLogger(root, name="with" if with_callback else "plain"),
        callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
    )
    trainer.fit(make_module(), loader)
    return stamps.intervals()


def compare(plain: list[tuple[int, float]], with_cb: list[tuple[int, float]],
            every: int = LOG_EVERY) -> dict[str, dict[str, float]]:
    """Median step time of both runs on the callback's logging and non-logging steps."""
    result = {}
    for label, wanted in (("non_logging", False), ("logging", True)):
        a = [s for step, s in plain if (step % every == 0) == wanted]
        b = [s for step, s in with_cb if (step % every == 0) == wanted]
        result[label] = {"plain_median_s": statistics.median(a),
                         "callback_median_s": statistics.median(b),
                         "ratio": statistics.median(b) / statistics.median(a),
                         "plain_n": len(a), "callback_n": len(b)}
    return result


def run(quick: bool) -> dict[str, object]:
    threads = torch_threads.configure()
    load_before = machine.load_average()
    rounds, steps = (2, 120) if quick else (6, 250)
    plain: list[tuple[int, float]] = []
    with_cb: list[tuple[int, float]] = []
    per_round = []
    with tempfile.TemporaryDirectory() as root:
        for index in range(rounds):
            order = (False, True) if index % 2 == 0 else (True, False)
            got = {flag: fit_once(flag, steps, root) for flag in order}
            plain += got[False]
            with_cb += got[True]
            per_round.append(compare(got[False], got[True])["non_logging"]["ratio"])
            print(f"  round {index}: non-logging ratio {per_round[-1]:.4f}", flush=True)
    return {
        "section": "lightning_overhead",
        "quick": quick,
        "rounds": rounds,
        "steps_per_fit": steps,
        "log_every_n_steps": LOG_EVERY,
        "shape": {"width": WIDTH, "batch": BATCH, "depth": DEPTH, "history": 4},
        "threads": threads,
        "machine": machine.describe(),
        "load_before": load_before,
        "load_after": machine.load_average(),
        "comparison": compare(plain, with_cb),
        "non_logging_ratio_per_round": per_round,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 120 steps")
    args = parser.parse_args(argv)
    path = write_result("lightning_overhead", run(args.quick))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
