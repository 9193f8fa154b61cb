"""Writing the dashboard of an MHC stack to a TensorBoard log directory.

Event files are written with TensorBoard's own writer and summary protos (TensorFlow is not
needed). Tags and pictures are those of ``mhc_torch.MHCLightningCallback`` (``P`` = prefix,
``M`` = the stack's name, ``l`` = layer 1..L, ``j`` = history index, H-1 the newest):

- scalars: ``P/M/weight/layer_l/index_j`` (the K = min(H, l) weights layer l mixes),
  ``P/M/gate/layer_l`` (gating only), ``P/M/skip_gain`` (c_L), ``P/M/amplification``
  (its maximum), ``P/M/entropy/layer_l``, ``P/M/entropy/mean``, ``P/M/highway/state_l``
  (l = 0..L), ``P/M/highway/attenuation``, ``P/M/theta_grad_norm``;
- images: ``P/M/mixing_weights`` and ``P/M/highway`` at each logged step, and
  ``P/M/weights_over_steps/layer_l`` from :meth:`TensorBoardMonitor.log_weights_over_steps`
  (each layer's weights over every step logged so far; the callback draws them at each
  epoch end).

:class:`StreamTensorBoardMonitor` writes the multi-stream family's dashboard
(:class:`mhc_jax.streams.StreamSequential`) with the tags, values and pictures of
:mod:`mhc_dashboard.stream_readings`, as the callback does for the PyTorch stacks: the
composite and per-layer gains, the row entropy of each Hres, ``P/M/grad_norm/<name>`` of
each mixing parameter (when gradients are given), the ``P/M/hres``, ``P/M/hpre_hpost`` and
``P/M/composite_gain`` pictures, and ``P/composite_gain`` overlaying every stack of a step
when there are two or more (an mhc stack next to an hc one).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

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
from mhc_jax.statistics import Highway, MixingStatistics
from mhc_jax.streams import StreamOutput, StreamSequential
from mhc_spec.projections import window_size

RGB_CHANNELS = 3


def scalar_tags(base: str, stats: MixingStatistics,
                highway: Highway | None = None) -> dict[str, float]:
    """Every scalar of one logging step, by tag."""
    depth, h = stats.weights.shape
    values: dict[str, float] = {}
    for layer in range(1, depth + 1):
        for j in range(h - window_size(h, layer), h):
            values[f"{base}/weight/layer_{layer}/index_{j}"] = float(stats.weights[layer - 1, j])
        if stats.gating:
            values[f"{base}/gate/layer_{layer}"] = float(stats.gates[layer - 1])
        values[f"{base}/entropy/layer_{layer}"] = float(stats.entropy[layer - 1])
    values[f"{base}/skip_gain"] = float(stats.skip_gain[-1])
    values[f"{base}/amplification"] = stats.max_amplification
    values[f"{base}/entropy/mean"] = stats.mean_entropy
    if highway is not None:
        for index, value in enumerate(highway.profile):
            values[f"{base}/highway/state_{index}"] = float(value)
        values[f"{base}/highway/attenuation"] = highway.attenuation
        if highway.theta_grad_norm is not None:
            values[f"{base}/theta_grad_norm"] = highway.theta_grad_norm
    return values


def _image(tag: str, rgb: np.ndarray) -> Summary.Value:
    height, width = rgb.shape[:2]
    return Summary.Value(tag=tag, image=Summary.Image(
        height=height, width=width, colorspace=RGB_CHANNELS, encoded_image_string=rgb_to_png(rgb)))


def _check_tag_part(label: str, value: str) -> str:
    if not isinstance(value, str) or not value or value.strip("/") != value:
        raise ValueError(f"{label}={value!r} is invalid: {label} must be a non-empty "
                         "string that does not start or end with '/'.")
    return value


class TensorBoardMonitor:
    """Logs one MHC stack's statistics and heatmaps to ``logdir`` (a context manager).

    ``monitor.log(step, mixing_statistics(model), highway(model, loss_fn, x))`` on logging
    steps; ``monitor.log_weights_over_steps(step)`` when the per-layer pictures are wanted.
    """

    def __init__(self, logdir: str | Path, name: str = "stack", prefix: str = "mhc"):
        _check_tag_part("name", name)
        _check_tag_part("prefix", prefix)
        self.base = f"{prefix}/{name}"
        self.logdir = str(logdir)
        self._writer = EventFileWriter(self.logdir)
        self._steps: list[int] = []
        self._weights: list[np.ndarray] = []
        self._mode = "mhc"
        self._kind = "mhc"

    def _write(self, step: int, values: list[Summary.Value]) -> None:
        self._writer.add_event(Event(wall_time=time.time(), step=step,
                                     summary=Summary(value=values)))

    def log(self, step: int, stats: MixingStatistics, highway: Highway | None = None,
            images: bool = True) -> None:
        """Write the scalars (and, with ``images``, the heatmap and highway plot) of a step."""
        values = [Summary.Value(tag=tag, simple_value=value)
                  for tag, value in scalar_tags(self.base, stats, highway).items()]
        self._steps.append(int(step))
        self._weights.append(stats.weights)
        self._mode, self._kind = stats.mode, stats.kind
        if images:
            values.append(_image(f"{self.base}/mixing_weights", figure_to_rgb(mixing_heatmap(
                stats.weights, title=f"{self.base} ({stats.kind}): mixing weights, step {step}",
                mode=stats.mode))))
            if highway is not None:
                values.append(_image(f"{self.base}/highway", figure_to_rgb(highway_plot(
                    highway.profile, title=f"{self.base} ({stats.kind}): highway, step {step}"))))
        self._write(int(step), values)

    def log_weights_over_steps(self, step: int) -> None:
        """One heatmap per layer of its weights over every step logged so far."""
        if not self._steps:
            return
        frames = layer_history_frames(
            np.stack(self._weights), self._steps, self._mode,
            titles=lambda layer: f"{self.base} ({self._kind}) layer {layer}: weights over steps")
        values = [_image(f"{self.base}/weights_over_steps/layer_{layer}", rgb)
                  for layer, rgb in enumerate(frames, start=1)]
        self._write(int(step), values)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> TensorBoardMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stream_grad_norms(grads: nnx.State) -> dict[str, float]:
    """||dLoss/d<name>|| of each mixing parameter in the gradient state of a
    :class:`~mhc_jax.streams.StreamSequential` (from ``nnx.grad``), by its portable name
    (``phi_res``, ..., ``reduce_logits``); the blocks are left out.
    One device-to-host copy."""
    norms = {}
    for path, leaf in nnx.to_flat_state(grads):
        path = tuple(path)
        if len(path) == 2 and path[0] == "mixing":
            name = path[1]
        elif path == ("readout", "reduce_logits"):
            name = path[1]
        else:
            continue
        value = leaf[...] if isinstance(leaf, nnx.Variable) else leaf
        norms[name] = jnp.linalg.norm(jnp.ravel(value).astype(jnp.float32))
    return {name: float(value) for name, value in jax.device_get(norms).items()}


def read_stream_stack(name: str, model: StreamSequential, output: StreamOutput | None,
                      grads: nnx.State | None = None) -> StreamReading:
    """The reading of one stack: the coefficients of ``output`` (from ``model.forward(h,
    collect_coefficients=True)``; None or an output without them logs gradients only), at
    most :data:`mhc_dashboard.MAX_SUMMARY_TOKENS` tokens sampled on device and copied to
    host at once, and the gradient norms of ``grads`` when given."""
    coefficients = None
    if output is not None and output.hres is not None:
        sampled = (sample_tokens(output.hpre, 1), sample_tokens(output.hpost, 1),
                   sample_tokens(output.hres, 2))
        coefficients = tuple(np.asarray(v, dtype=np.float64) for v in jax.device_get(sampled))
    norms = stream_grad_norms(grads) if grads is not None else {}
    return read_streams(name, model.config, coefficients, norms)


class StreamTensorBoardMonitor:
    """Logs stream stacks' statistics and pictures to ``logdir`` (a context manager).

    On a logging step::

        out = model.forward(h, collect_coefficients=True)  # or returned by the train step
        monitor.log(step, {"net": (model, out)}, grads={"net": grads})  # grads optional

    Several stacks in one call (e.g. ``{"mhc": ..., "hc": ...}``) also get the overlay
    ``P/composite_gain``. Tags: ``P/M/...`` with ``P`` = ``prefix`` and ``M`` the name.
    """

    def __init__(self, logdir: str | Path, prefix: str = "mhc"):
        self.prefix = _check_tag_part("prefix", prefix)
        self.logdir = str(logdir)
        self._writer = EventFileWriter(self.logdir)

    def log(self, step: int, stacks: Mapping[str, tuple[StreamSequential, StreamOutput | None]],
            grads: Mapping[str, nnx.State] | None = None, images: bool = True) -> None:
        """Write the scalars (and, with ``images``, the pictures) of every stack at ``step``;
        ``grads`` maps some of the names to the gradient state of their stack."""
        grads = dict(grads or {})
        unknown = sorted(set(grads) - set(stacks))
        if unknown:
            raise ValueError(f"grads has names {unknown} that are not in stacks "
                             f"{sorted(stacks)}; grads must map stack names to gradients.")
        values = []
        readings = []
        for name, (model, output) in stacks.items():
            base = f"{self.prefix}/{_check_tag_part('name', name)}"
            reading = read_stream_stack(name, model, output, grads.get(name))
            readings.append(reading)
            values += [Summary.Value(tag=tag, simple_value=value)
                       for tag, value in stream_scalars(base, reading).items()]
            if images:
                values += [_image(tag, rgb)
                           for tag, rgb in stream_pictures(base, reading, step).items()]
        recorded = [r for r in readings if r.summary is not None]
        if images and len(recorded) > 1:
            values.append(_image(f"{self.prefix}/composite_gain",
                                 stream_comparison(recorded, step)))
        self._writer.add_event(Event(wall_time=time.time(), step=int(step),
                                     summary=Summary(value=values)))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> StreamTensorBoardMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
