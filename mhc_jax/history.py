"""The window of past states, as an explicit value (JAX is functional: nothing is kept
between calls unless the caller passes it back in).

Mapping to the PyTorch twin (``mhc_torch``):

- ``carry_history=False`` (the default there) is ``model(x)`` here: every forward starts a
  fresh window holding only s_0 = x.
- ``carry_history=True`` is ``y, history = model(x, history=history)``: the returned
  :class:`History` holds the last H states (s_{L-H+1} .. s_L) and the next call pushes its
  input after them, so its first layers see K = H states instead of K = l.
- ``reset_history()`` (and the Lightning callback's reset at every batch start) is starting
  again from ``History.empty(...)`` or ``history=None``. A jitted train step that takes no
  history is therefore always "reset".
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from mhc_spec.config import check_int


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class History:
    """The last H states, oldest first: ``states`` (H, *shape); only the last ``count``
    slots hold states (count in 0..H), the others are zeros."""

    states: jax.Array
    count: jax.Array

    @property
    def max_history(self) -> int:
        return self.states.shape[0]

    @property
    def state_shape(self) -> tuple[int, ...]:
        return tuple(self.states.shape[1:])

    @classmethod
    def empty(cls, max_history: int, shape: tuple[int, ...], dtype: jnp.dtype) -> History:
        """A window with no states (count 0): the start of a carried history."""
        max_history = check_int("max_history", max_history, 1)
        return cls(jnp.zeros((max_history, *shape), dtype), jnp.zeros((), jnp.int32))

    @classmethod
    def start(cls, x: jax.Array, max_history: int) -> History:
        """The window before layer 1 of a fresh stack: s_0 = x alone (count 1)."""
        return cls.empty(max_history, x.shape, x.dtype).push(x)

    @property
    def newest(self) -> jax.Array:
        """The most recent state (the input of the next block)."""
        return self.states[-1]

    def push(self, state: jax.Array) -> History:
        """The window with ``state`` appended as the newest and the oldest dropped."""
        check_state(self, state)
        states = jnp.concatenate([self.states[1:], state[None].astype(self.states.dtype)])
        return History(states, jnp.minimum(self.count + 1, self.max_history))


def check_state(history: History, state: jax.Array) -> None:
    """Raise if ``state`` cannot join the window (a batch-shape change needs a new history)."""
    if tuple(state.shape) != history.state_shape:
        raise ValueError(
            f"history holds states of shape {history.state_shape} but got a state of shape "
            f"{tuple(state.shape)}; start a new history (History.empty or history=None) "
            "after a shape change"
        )
