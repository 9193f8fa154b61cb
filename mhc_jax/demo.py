"""The JAX demo: the guide's 50 x Linear(64, 64) stack on scikit-learn's digits, trained with
the pmap data-parallel step over all local devices.

Run ``python -m mhc_jax.demo``. The model is the PyTorch demo's: ``MHCSequential`` of 50
``nnx.Linear(64, 64)`` (PyTorch's default initialisation, uniform in +-1/sqrt(64)),
``max_history=4``, ``mode="mhc"``, Adam 1e-3, cross-entropy on the first 10 of the 64 output
features; digits standardised with the training split's statistics, split 80/20. On a CPU,
``--devices`` host devices are created (default 2) so the pmap step really splits batches.
``--logdir`` also writes the dashboard to TensorBoard (``tensorboard --logdir DIR``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mhc_jax.parallel import (
    init_train_state,
    make_pmap_train_step,
    merge_model,
    replicate,
    split_batch,
    unreplicate,
)
from mhc_jax.sequential import MHCSequential
from mhc_jax.statistics import highway, mixing_statistics
from mhc_jax.tensorboard import TensorBoardMonitor
from mhc_spec.config import MODES

CLASSES = 10
WIDTH = 64


def torch_linear(width: int, rngs: nnx.Rngs) -> nnx.Linear:
    """nnx.Linear(width, width) initialised like torch.nn.Linear: U(-1/sqrt(in), 1/sqrt(in))."""
    bound = width ** -0.5

    def uniform(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return nnx.Linear(width, width, kernel_init=uniform, bias_init=uniform, rngs=rngs)


def digits(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_val, y_val): the bundled digits, standardised, split 80/20."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.8 * len(y))
    train, val = order[:cut], order[cut:]
    mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-6
    x = ((x - mean) / std).astype(np.float32)
    y = y.astype(np.int32)
    return x[train], y[train], x[val], y[val]


def output_loss(output: jax.Array, y: jax.Array) -> jax.Array:
    """Mean cross-entropy of the first 10 output features of the stack."""
    return optax.softmax_cross_entropy_with_integer_labels(output[:, :CLASSES], y).mean()


def loss_fn(model: MHCSequential, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = batch
    return output_loss(model(x), y)


def logits(model: MHCSequential, x: jax.Array) -> jax.Array:
    return model(x)[:, :CLASSES]


@nnx.jit
def accuracy(model: MHCSequential, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(logits(model, x), axis=-1) == y)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mhc_jax.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    parser.add_argument("--depth", type=int, default=50, help="layers (default 50)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="global batch size, split over the devices (default 64)")
    parser.add_argument("--mode", choices=MODES, default="mhc", help="mixing mode (default mhc)")
    parser.add_argument("--devices", type=int, default=2,
                        help="host devices to create when running on CPU (default 2)")
    parser.add_argument("--logdir", default=None, help="write the dashboard to TensorBoard here")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> float:
    """Train and return the final validation accuracy."""
    args = parse_args(argv)
    # Must precede the first use of a device; ignored by accelerator backends.
    jax.config.update("jax_num_cpu_devices", args.devices)
    devices = jax.local_devices()
    count = len(devices)
    x_train, y_train, x_val, y_val = digits(args.seed)
    batch = args.batch_size - args.batch_size % count
    print(f"mhc_jax demo: {args.depth} x Linear({WIDTH}, {WIDTH}), max_history=4, "
          f"mode={args.mode}; pmap over {count} {devices[0].platform} device(s), "
          f"batch {batch} ({batch // count} per device)", flush=True)

    model = MHCSequential.scanned(lambda r: torch_linear(WIDTH, r), args.depth,
                                  rngs=nnx.Rngs(args.seed), max_history=4, mode=args.mode)
    tx = optax.adam(1e-3)
    graphdef, state = init_train_state(model, tx)
    step = make_pmap_train_step(graphdef, tx, loss_fn, devices=devices)
    state = replicate(state, count)
    monitor = TensorBoardMonitor(args.logdir, name="net") if args.logdir else None
    rng = np.random.default_rng(args.seed)
    start, global_step, acc = time.perf_counter(), 0, 0.0
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(y_train))
        losses = []
        for first in range(0, len(order) - batch + 1, batch):
            index = order[first:first + batch]
            state, loss = step(state, split_batch((x_train[index], y_train[index]), count))
            losses.append(loss[0])
            global_step += 1
        model = merge_model(graphdef, unreplicate(state))
        acc = float(accuracy(model, x_val, y_val))
        print(f"  epoch {epoch}/{args.epochs}  train loss {float(np.mean(losses)):.3f}  "
              f"val acc {acc:.3f}  ({time.perf_counter() - start:.1f} s)", flush=True)
        if monitor is not None:
            monitor.log(global_step, mixing_statistics(model),
                        highway(model, output_loss, x_val, y_val))
    model = merge_model(graphdef, unreplicate(state))
    stats = mixing_statistics(model)
    road = highway(model, output_loss, x_val, y_val)
    print(f"final validation accuracy {acc:.3f}; mean entropy {stats.mean_entropy:.3f}, "
          f"skip gain {stats.skip_gain[-1]:.3f}, highway attenuation {road.attenuation:.3g}")
    if monitor is not None:
        monitor.log_weights_over_steps(global_step)
        monitor.close()
        print(f"dashboard written: tensorboard --logdir {args.logdir}")
    return acc


if __name__ == "__main__":
    main()
