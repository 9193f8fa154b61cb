"""Two-process DDP training (gloo on CPU) with MHCLightningCallback, run by
tests/torch/test_ddp_callback.py in a subprocess (Lightning relaunches this script as rank 1).

Usage: python tests/torch/scripts/ddp_train.py OUT_DIR

One LightningModule holds an MHCSequential in every mode (residual, hc, mhc with the simplex,
softmax and identity constraints, a gated one and a carrying one), nested in a ModuleDict,
all feeding the loss, so DDP with find_unused_parameters=False fails if any mode leaves a
parameter without a gradient. Two callbacks watch the same run: ``mhc`` (default, rank 0
only, every 3 steps) and ``perrank`` (rank_zero_only=False, every 5 steps, no highway, so the
two never compete for one capture). Each rank writes under OUT_DIR/rank<r>/:
init.npz and final.npz (its parameters before DDP and after training), resets.json (for
each training batch, whether the model's history buffer was empty when the batch started)
and metrics.json (every log_metrics call its logger received); its logger's PNGs go under
OUT_DIR/rank<r>/images/.
"""

import json
import os
import sys
from datetime import timedelta

import lightning as L
import numpy as np
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mhc_torch import MHCSequential
from mhc_torch.callback import MHCLightningCallback
from mhc_torch.history import HistoryBuffer
from tests.torch.scripts.mhc_testing import RecordingLogger

WIDTH, DEPTH, HISTORY = 6, 4, 3
STACKS = {
    "residual": {"mode": "residual"},
    "hc": {"mode": "hc"},
    "simplex": {"mode": "mhc", "constraint": "simplex"},
    "softmax": {"mode": "mhc", "constraint": "softmax"},
    "identity": {"mode": "mhc", "constraint": "identity"},
    "gated": {"mode": "mhc", "gating": True},
    "carry": {"mode": "mhc", "carry_history": True},
}


def rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def parameters(module: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


class AllModes(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1000 + rank())  # ranks start apart: DDP must broadcast rank 0's
        self.stacks = nn.ModuleDict({
            name: MHCSequential([nn.Linear(WIDTH, WIDTH) for _ in range(DEPTH)],
                                max_history=HISTORY, **kwargs)
            for name, kwargs in STACKS.items()
        })
        self.seen = HistoryBuffer(2)  # filled every step; the callback must empty it
        self.empty_at_batch_start: list[bool] = []

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # The module's hook runs after the callbacks' hook of the same name.
        self.empty_at_batch_start.append(len(self.seen) == 0)

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.push(x)
        return sum(nn.functional.cross_entropy(stack(x), y) for stack in self.stacks.values())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(out: str) -> None:
    here = os.path.join(out, f"rank{rank()}")
    os.makedirs(here, exist_ok=True)
    model = AllModes()
    np.savez(os.path.join(here, "init.npz"), **parameters(model))
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, WIDTH, generator=generator),
                         torch.randint(0, WIDTH, (64,), generator=generator))
    logger = RecordingLogger(here)
    trainer = L.Trainer(
        strategy=DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=60),
                             find_unused_parameters=False),
        accelerator="cpu", devices=2, max_epochs=2, logger=logger,
        callbacks=[MHCLightningCallback(log_every_n_steps=3),
                   MHCLightningCallback(log_every_n_steps=5, rank_zero_only=False,
                                        log_gradients=False, prefix="perrank")],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        log_every_n_steps=1,
    )
    trainer.fit(model, DataLoader(data, batch_size=8))  # 4 batches per rank and epoch
    assert trainer.global_rank == rank()
    np.savez(os.path.join(here, "final.npz"), **parameters(model))
    with open(os.path.join(here, "resets.json"), "w") as file:
        json.dump(model.empty_at_batch_start, file)
    with open(os.path.join(here, "metrics.json"), "w") as file:
        json.dump([[step, {k: float(v) for k, v in m.items()}] for step, m in logger.calls],
                  file)


if __name__ == "__main__":
    main(sys.argv[1])
