"""One data-parallel train step on 2 forced host devices, compared with one device.

Usage: python data_parallel.py   (prints a JSON report; the test asserts on it)

XLA_FLAGS must force the 2 host devices before JAX starts, hence a process of its own.
For each optimizer: a reference step with ``nnx.Optimizer`` on the whole batch on one
device, the pmap step and the shard_map step on the batch split over both devices; the
report holds the largest parameter differences (replica vs replica, replica vs reference).
"""

import json
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=2").strip()

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mhc_jax import MHCSequential, export_portable
from mhc_jax.parallel import (
    data_mesh,
    init_train_state,
    make_pmap_train_step,
    make_sharded_train_step,
    merge_model,
    replicate,
    replicated,
    sharded_batch,
    split_batch,
)

WIDTH, DEPTH, BATCH, EXTRA_STEPS = 6, 5, 8, 3


def loss_fn(model, batch):
    x, y = batch
    return jnp.mean((model(x) - y) ** 2)


def largest_difference(a: dict, b: dict) -> float:
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)


def params_of(graphdef, state) -> dict:
    return export_portable(merge_model(graphdef, state))


def main() -> None:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((BATCH, WIDTH)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((BATCH, WIDTH)), jnp.float32)
    model = MHCSequential.scanned(lambda r: nnx.Linear(WIDTH, WIDTH, rngs=r), DEPTH,
                                  rngs=nnx.Rngs(0), max_history=3, gating=True)
    report = {"devices": jax.local_device_count()}
    for name, tx in (("sgd", optax.sgd(0.1)), ("adam", optax.adam(1e-2))):
        reference = nnx.clone(model)
        optimizer = nnx.Optimizer(reference, tx, wrt=nnx.Param)

        @nnx.jit
        def reference_step(model, optimizer, batch):
            loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
            optimizer.update(model, grads)
            return loss

        reference_loss = float(reference_step(reference, optimizer, (x, y)))
        expected = export_portable(reference)

        graphdef, state = init_train_state(nnx.clone(model), tx)
        pmap_step = make_pmap_train_step(graphdef, tx, loss_fn)
        replicas, loss = pmap_step(replicate(state, 2), split_batch((x, y), 2))
        first = [params_of(graphdef, jax.tree.map(lambda a, r=r: a[r], replicas))
                 for r in range(2)]
        for _ in range(EXTRA_STEPS):
            replicas, _ = pmap_step(replicas, split_batch((x, y), 2))
        later = [params_of(graphdef, jax.tree.map(lambda a, r=r: a[r], replicas))
                 for r in range(2)]

        mesh = data_mesh()
        sharded_step = make_sharded_train_step(graphdef, tx, loss_fn, mesh)
        global_state, global_loss = sharded_step(replicated(state, mesh),
                                                 sharded_batch((x, y), mesh))
        shard_params = [params_of(graphdef, jax.tree.map(
            lambda a, r=r: np.asarray(a.addressable_shards[r].data), global_state))
            for r in range(2)]
        for _ in range(EXTRA_STEPS):
            global_state, _ = sharded_step(global_state, sharded_batch((x, y), mesh))
        shard_later = [params_of(graphdef, jax.tree.map(
            lambda a, r=r: np.asarray(a.addressable_shards[r].data), global_state))
            for r in range(2)]

        report[name] = {
            "moved": largest_difference(expected, export_portable(model)),
            "pmap_replicas": largest_difference(first[0], first[1]),
            "pmap_vs_single": largest_difference(first[0], expected),
            "pmap_replicas_after_steps": largest_difference(later[0], later[1]),
            "pmap_loss_vs_single": abs(float(loss[0]) - reference_loss),
            "pmap_losses_equal": bool(loss[0] == loss[1]),
            "shard_map_replicas": largest_difference(shard_params[0], shard_params[1]),
            "shard_map_vs_single": largest_difference(shard_params[0], expected),
            "shard_map_replicas_after_steps": largest_difference(*shard_later),
            "shard_map_loss_vs_single": abs(float(global_loss) - reference_loss),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
