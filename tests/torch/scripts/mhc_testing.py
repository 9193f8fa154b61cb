"""Shared pieces of the callback tests: a module that records what the spec needs, a logger
that keeps everything it is sent, readers for the loggers' files, and the spec's numbers."""

from __future__ import annotations

import glob
import json
import os
import struct
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader

import mhc_spec
from mhc_dashboard import png_to_rgb
from mhc_torch import MHCSequential

WIDTH = 6  # features = classes, so the stack's output is the logits
DEPTH = 5
HISTORY = 3


def make_batches(count: int, batch: int = 8, width: int = WIDTH, seed: int = 0) -> DataLoader:
    """``count`` fixed random (x, y) batches, in order, as a DataLoader."""
    generator = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(batch, width, generator=generator),
                torch.randint(0, width, (batch,), generator=generator)) for _ in range(count)]
    return DataLoader(batches, batch_size=None)


def _numpy(tensor: torch.Tensor | None) -> np.ndarray | None:
    return None if tensor is None else tensor.detach().to(torch.float64).numpy().copy()


class SpecRecordingModule(L.LightningModule):
    """An MHCSequential of Linear layers trained with cross-entropy on its output. For every
    optimizer step it keeps the input, the parameters the forward used and dLoss/ds_L, which
    is all :func:`mhc_spec.forward` and :func:`mhc_spec.backward` need."""

    def __init__(self, mode: str = "mhc", constraint: str = "simplex", gating: bool = False,
                 depth: int = DEPTH, width: int = WIDTH, history: int = HISTORY,
                 lr: float = 0.05) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = MHCSequential([nn.Linear(width, width) for _ in range(depth)],
                                 max_history=history, mode=mode, constraint=constraint,
                                 gating=gating)
        self.lr = lr
        self.records: dict[int, dict[str, Any]] = {}
        self._x: torch.Tensor | None = None
        self._grad_output: torch.Tensor | None = None

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self.net(x)
        out.register_hook(self._keep_grad_output)
        self._x = x
        loss = nn.functional.cross_entropy(out, y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def _keep_grad_output(self, grad: torch.Tensor) -> None:
        self._grad_output = grad

    def on_before_optimizer_step(self, optimizer) -> None:
        # Runs after the callbacks' hook, before the update: the forward's parameters.
        net = self.net
        self.records[self.trainer.global_step] = {
            "x": _numpy(self._x),
            "theta": _numpy(net.theta),
            "gamma": _numpy(net.gamma),
            "weight": np.stack([_numpy(layer.weight) for layer in net.layers]),
            "bias": np.stack([_numpy(layer.bias) for layer in net.layers]),
            "grad_output": _numpy(self._grad_output),
        }

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


@dataclass
class Expected:
    """The dashboard's numbers for one step, computed by the spec in float64."""

    weights: np.ndarray
    gates: np.ndarray
    entropy: np.ndarray
    skip_gain: float
    amplification: float
    profile: np.ndarray
    attenuation: float
    theta_grad_norm: float | None


def expected(config: mhc_spec.MHCConfig, record: dict[str, Any]) -> Expected:
    args = (record["theta"], record["gamma"], "linear", record["weight"], record["bias"])
    trace = mhc_spec.forward(config, record["x"], *args)
    grads = mhc_spec.backward(config, trace, *args, record["grad_output"])
    profile = mhc_spec.highway_profile(grads.states)
    return Expected(
        weights=trace.weights,
        gates=trace.gates,
        entropy=mhc_spec.entropy(trace.weights, mode=config.mode),
        skip_gain=float(mhc_spec.skip_gain(trace.weights, trace.gates)[-1]),
        amplification=float(mhc_spec.amplification(trace.weights, trace.gates).max()),
        profile=profile,
        attenuation=mhc_spec.attenuation(profile),
        theta_grad_norm=None if grads.theta is None else float(np.linalg.norm(grads.theta)),
    )


def expected_scalars(base: str, config: mhc_spec.MHCConfig, e: Expected) -> dict[str, float]:
    """The documented tag -> value table of the callback for one stack (all flags on)."""
    depth, h = e.weights.shape
    out: dict[str, float] = {}
    for layer in range(1, depth + 1):
        for j in range(h - min(h, layer), h):
            out[f"{base}/weight/layer_{layer}/index_{j}"] = e.weights[layer - 1, j]
        if config.gating:
            out[f"{base}/gate/layer_{layer}"] = e.gates[layer - 1]
        out[f"{base}/entropy/layer_{layer}"] = e.entropy[layer - 1]
    out[f"{base}/entropy/mean"] = e.entropy.mean()
    out[f"{base}/skip_gain"] = e.skip_gain
    out[f"{base}/amplification"] = e.amplification
    for index, value in enumerate(e.profile):
        out[f"{base}/highway/state_{index}"] = value
    out[f"{base}/highway/attenuation"] = e.attenuation
    if e.theta_grad_norm is not None:
        out[f"{base}/theta_grad_norm"] = e.theta_grad_norm
    return out


class RecordingLogger(Logger):
    """A Lightning logger that keeps every ``log_metrics`` call. It cannot hold images, so the
    callback writes its PNGs under ``log_dir``. Unlike Lightning's loggers it is not limited
    to rank 0: it records whatever any rank sends it."""

    def __init__(self, log_dir: str) -> None:
        super().__init__()
        self._log_dir = log_dir
        self.calls: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    @property
    def log_dir(self) -> str:
        return self._log_dir

    @property
    def save_dir(self) -> str:
        return self._log_dir

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append((step, dict(metrics)))

    def scalars(self, prefix: str = "mhc/") -> dict[str, dict[int, float]]:
        """tag -> {step: value} for the tags starting with ``prefix``."""
        out: dict[str, dict[int, float]] = defaultdict(dict)
        for step, metrics in self.calls:
            for tag, value in metrics.items():
                if tag.startswith(prefix):
                    out[tag][step] = float(value)
        return dict(out)


def image_files(log_dir: str) -> dict[str, list[int]]:
    """tag -> sorted steps of the PNGs the callback wrote under ``log_dir``/images."""
    root = os.path.join(log_dir, "images")
    out: dict[str, list[int]] = defaultdict(list)
    for path in glob.glob(os.path.join(root, "**", "step_*.png"), recursive=True):
        tag = os.path.relpath(os.path.dirname(path), root).replace(os.sep, "/")
        out[tag].append(int(os.path.basename(path)[len("step_"):-len(".png")]))
    return {tag: sorted(steps) for tag, steps in out.items()}


def read_png(path: str) -> np.ndarray:
    with open(path, "rb") as file:
        return png_to_rgb(file.read())


def tensorboard_events(log_dir: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(log_dir, size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def tensorboard_scalars(events, prefix: str = "mhc/") -> dict[str, dict[int, float]]:
    return {tag: {e.step: e.value for e in events.Scalars(tag)}
            for tag in events.Tags()["scalars"] if tag.startswith(prefix)}


def tensorboard_images(events, prefix: str = "mhc/") -> dict[str, dict[int, np.ndarray]]:
    return {tag: {e.step: png_to_rgb(e.encoded_image_string) for e in events.Images(tag)}
            for tag in events.Tags()["images"] if tag.startswith(prefix)}


# W&B 0.31 keeps a run in a LevelDB-style log: a 7-byte file header, then 32 KiB blocks of
# records, each with a 7-byte header (crc32, length, type); a protobuf may span records.
_WANDB_BLOCK, _WANDB_HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(path: str) -> list[bytes]:
    """The serialized protobuf records of a ``run-*.wandb`` file."""
    data = open(path, "rb").read()
    assert data[:4] == b":W&B", "not a W&B run file"
    records, partial, offset = [], b"", _WANDB_HEADER
    while offset + _WANDB_HEADER <= len(data):
        left_in_block = _WANDB_BLOCK - offset % _WANDB_BLOCK
        if left_in_block < _WANDB_HEADER:
            offset += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[offset:offset + _WANDB_HEADER])
        payload = data[offset + _WANDB_HEADER:offset + _WANDB_HEADER + length]
        offset += _WANDB_HEADER + length
        if kind == 0 and length == 0:
            offset += _WANDB_BLOCK - offset % _WANDB_BLOCK  # zero padding to the next block
            continue
        if kind in (_FULL, _FIRST):
            partial = payload
        else:
            partial += payload
        if kind in (_FULL, _LAST):
            records.append(partial)
    return records


def wandb_history(path: str) -> list[dict[str, Any]]:
    """Each ``history`` row of a W&B run file as {key: decoded JSON value}."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for raw in wandb_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def comet_messages(zip_path: str) -> tuple[list[dict[str, Any]], zipfile.ZipFile]:
    """The messages of an offline Comet experiment archive, and the archive itself."""
    archive = zipfile.ZipFile(zip_path)
    lines = archive.read("messages.json").decode().splitlines()
    return [json.loads(line) for line in lines if line.strip()], archive
