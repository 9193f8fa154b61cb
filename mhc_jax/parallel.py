"""Data-parallel train steps with optax: ``jax.pmap`` + ``lax.pmean``, and the same step
with ``jax.shard_map`` under ``jax.jit`` on a ``NamedSharding`` mesh.

Each device computes the gradient of the mean loss over its shard of the batch; the
gradients (and the loss) are averaged with ``pmean`` over the data axis, so with equal
shards every replica applies the gradient of the whole batch's mean loss and the replicas'
parameters stay identical. Non-parameter state (e.g. batch statistics) is averaged the same
way when it is floating point.

Usage::

    graphdef, state = init_train_state(model, tx)
    step = make_pmap_train_step(graphdef, tx, loss_fn)          # loss_fn(model, batch)
    state = replicate(state, jax.local_device_count())
    state, loss = step(state, split_batch(batch, jax.local_device_count()))
    model = merge_model(graphdef, unreplicate(state))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

LossFn = Callable[[nnx.Module, Any], jax.Array]
DATA_AXIS = "data"


class TrainState(NamedTuple):
    """Everything a train step updates: parameters, other model state, optimizer state."""

    params: nnx.State
    rest: nnx.State
    opt_state: optax.OptState


def init_train_state(model: nnx.Module, tx: optax.GradientTransformation
                     ) -> tuple[nnx.GraphDef, TrainState]:
    """Split ``model`` into its static graph and a :class:`TrainState` (tx over nnx.Param)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, TrainState(params, rest, tx.init(params))


def merge_model(graphdef: nnx.GraphDef, state: TrainState) -> nnx.Module:
    """The model of a (single-replica) train state."""
    return nnx.merge(graphdef, state.params, state.rest)


def _mean_floats(tree: Any, axis_name: str) -> Any:
    return jax.tree.map(
        lambda leaf: jax.lax.pmean(leaf, axis_name)
        if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf, tree)


def _local_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_fn: LossFn,
                axis_name: str, typed_axes: bool
                ) -> Callable[[TrainState, Any], tuple[TrainState, jax.Array]]:
    """One device's step: the gradient of the mean loss over all shards, then the update.

    Under pmap the gradient of the shard's loss is averaged with ``pmean``. Under
    shard_map (``typed_axes``, varying-axis checking on) the parameters are typed as
    replicated, so differentiating the ``pmean`` of the shard losses already sums the
    shards' gradients in the transpose; a second ``pmean`` would be a no-op on a replicated
    value, and taking the shard's loss alone would give n times the mean gradient.
    """

    def step(state: TrainState, batch: Any) -> tuple[TrainState, jax.Array]:
        def loss(params):
            model = nnx.merge(graphdef, params, state.rest)
            value = loss_fn(model, batch)
            if typed_axes:
                value = jax.lax.pmean(value, axis_name)
            return value, nnx.state(model, nnx.Not(nnx.Param))

        (value, rest), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
        if not typed_axes:
            grads = jax.lax.pmean(grads, axis_name)
            value = jax.lax.pmean(value, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, _mean_floats(rest, axis_name), opt_state), value

    return step


def make_pmap_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                         loss_fn: LossFn, *, axis_name: str = DATA_AXIS,
                         devices: list[jax.Device] | None = None
                         ) -> Callable[[TrainState, Any], tuple[TrainState, jax.Array]]:
    """``step(state, batch) -> (state, loss)`` under ``jax.pmap``: ``state`` replicated with
    a leading device axis (:func:`replicate`), ``batch`` shaped (devices, per-device, ...)
    (:func:`split_batch`); loss comes back per device (all equal). The input state is
    donated: use the returned one."""
    return jax.pmap(_local_step(graphdef, tx, loss_fn, axis_name, typed_axes=False),
                    axis_name=axis_name,
                    devices=devices, donate_argnums=0)


def make_sharded_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                            loss_fn: LossFn, mesh: Mesh, *, axis_name: str = DATA_AXIS
                            ) -> Callable[[TrainState, Any], tuple[TrainState, jax.Array]]:
    """``step(state, batch) -> (state, loss)``: ``jax.jit`` of ``jax.shard_map`` over
    ``mesh``; ``state`` replicated (:func:`replicated`), ``batch`` the global batch split
    along its first axis (:func:`sharded_batch`). The input state is donated: use the
    returned one."""
    step = jax.shard_map(_local_step(graphdef, tx, loss_fn, axis_name, typed_axes=True),
                         mesh=mesh,
                         in_specs=(P(), P(axis_name)), out_specs=(P(), P()))
    return jax.jit(step, donate_argnums=0)


def data_mesh(devices: list[jax.Device] | None = None, axis_name: str = DATA_AXIS) -> Mesh:
    """A one-axis mesh over ``devices`` (default: all local devices)."""
    devices = jax.local_devices() if devices is None else devices
    return Mesh(devices, (axis_name,))


def replicated(tree: Any, mesh: Mesh) -> Any:
    """A copy of ``tree`` placed whole on every device of ``mesh`` (a copy, so that the
    train step's donation of its input never deletes the arrays of the source model)."""
    # device_put may reuse the source buffer for the shard on its own device.
    return jax.device_put(jax.tree.map(jnp.copy, tree), NamedSharding(mesh, P()))


def sharded_batch(batch: Any, mesh: Mesh, axis_name: str = DATA_AXIS) -> Any:
    """``batch`` split along its first axis over the mesh's ``axis_name`` devices."""
    return jax.device_put(batch, NamedSharding(mesh, P(axis_name)))


def replicate(tree: Any, count: int) -> Any:
    """``count`` copies of ``tree`` stacked on a new leading axis (pmap's replicated input)."""
    return jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (count, *jnp.shape(leaf))), tree)


def unreplicate(tree: Any) -> Any:
    """The first replica of a pmapped tree."""
    return jax.tree.map(lambda leaf: leaf[0], tree)


def split_batch(batch: Any, count: int) -> Any:
    """(B, ...) -> (count, B / count, ...) for pmap; B must be divisible by count."""
    def split(leaf: jax.Array) -> jax.Array:
        if leaf.shape[0] % count:
            raise ValueError(f"batch of {leaf.shape[0]} does not split into {count} equal "
                             "shards; drop or pad the remainder")
        return leaf.reshape(count, leaf.shape[0] // count, *leaf.shape[1:])
    return jax.tree.map(split, batch)
