"""``MHCSequential``: a stack of blocks whose skip connections mix the last H states.

    s_0 = x;  s_l = f_l(s_{l-1}) + g_l * sum_j A[l-1, j] * s_{l-H+j}  (l = 1..L);  output s_L

with A the padded weights of :func:`mhc_jax.projections.project` (unavailable slots weigh
exactly 0, so the first K < H layers mix only the states that exist, as the spec says).

Two builds:

- ``MHCSequential(blocks, ...)``: any list of nnx modules, run by a Python loop (compile
  time grows with depth; blocks may differ).
- ``MHCSequential.scanned(make_block, depth, rngs=...)``: ``depth`` blocks created by
  ``nnx.vmap`` with stacked parameters (leading axis L) and run by ``nnx.scan``. Each scan
  step runs G >= min(H, 8) consecutive layers (a divisor of L when one lies in
  [min(H, 8), max(H, 8)], see :func:`layers_per_scan_step`) with the window as a tuple
  carry: every slot is rewritten within a step, so the carry needs no shifting copies and
  the states saved for backward are not duplicated H times. Each layer's slice of the
  stacked parameters is re-sliced in backward rather than saved (a remat policy). Compile
  time depends on H, not on L.

History is functional (see :mod:`mhc_jax.history`): ``model(x)`` is a pure function of x and
the parameters, and nothing is kept between calls. The PyTorch twin's buffers map as:

- ``carry_history=False`` (torch's default, a fresh ``HistoryBuffer`` per forward) is
  ``model(x)``;
- ``carry_history=True`` is ``y, history = model(x, history=history)``: the returned
  :class:`~mhc_jax.History` holds the last H states, oldest first, with a count of how many
  are real, and the next call pushes its input after them;
- ``reset_history()``, which ``MHCLightningCallback`` calls at the start of every train,
  validation, test and predict batch, is passing ``model.empty_history(x)`` (or no history)
  again. A jitted step that passes no history is therefore reset at every batch, like the
  Lightning callback's runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mhc_jax.history import History, check_state
from mhc_jax.mixing import MHCMixing, mix, resolve_config
from mhc_jax.stacking import collect_blocks, stacked_blocks
from mhc_spec import MHCConfig, check_depth

# Layers per scan step are capped so that a very long window does not unroll a huge body.
MAX_LAYERS_PER_SCAN_STEP = 8


def layers_per_scan_step(depth: int, width: int) -> int:
    """G, the layers each scan step runs, for a window of ``width`` states.

    With G >= width every window slot is rewritten within a step, so the tuple carry needs
    no copies and a step saves each state for backward about once. A divisor of the depth
    lets the stacked parameters be regrouped (L, ...) -> (L/G, G, ...) by a reshape, which
    costs nothing; otherwise the first L mod G layers run before the scan and the rest is
    sliced out, a copy of the parameters (and of their gradients) at every step.
    """
    smallest = min(width, MAX_LAYERS_PER_SCAN_STEP)
    largest = max(smallest, MAX_LAYERS_PER_SCAN_STEP)
    for group in range(smallest, min(largest, depth) + 1):
        if depth % group == 0:
            return group
    return smallest


class StackOutput(NamedTuple):
    """What :meth:`MHCSequential.forward` computed: s_L, the window after the stack (when a
    history was passed in) and all states s_0..s_L stacked (when asked for)."""

    output: jax.Array
    history: History | None
    states: jax.Array | None


def _layer(
    block: Callable[[jax.Array], jax.Array],
    window: tuple[jax.Array, ...],
    coefficients: jax.Array,
    offset: jax.Array | None,
    index: int | str,
) -> tuple[jax.Array, ...]:
    """One layer: the window with s = f(newest) + sum_j c_j W_j (+ offset) pushed."""
    newest = window[-1]
    y = block(newest)
    if tuple(y.shape) != tuple(newest.shape):
        raise ValueError(
            f"block {index} maps a state of shape {tuple(newest.shape)} to shape "
            f"{tuple(y.shape)}; every block must keep the state's shape"
        )
    s = mix(y, window, coefficients)
    if offset is not None:
        s = s + offset.astype(s.dtype)
    return (*window[1:], s)


_SLICING = frozenset({"slice", "squeeze", "dynamic_slice", "reshape"})


def _save_all_but_slices(primitive: Any, *_: Any, **__: Any) -> bool:
    """Remat policy of a scan step's layer: save every intermediate for backward except the
    layer's slice of the step's stacked parameters, which backward re-slices from the
    step's input (already kept) instead of saving a copy of every kernel."""
    return primitive.name not in _SLICING


def _take(tree: Any, index: int | slice) -> Any:
    return jax.tree.map(lambda leaf: leaf[index], tree)


def _has_leaves(tree: Any) -> bool:
    return bool(jax.tree.leaves(tree))


class MHCSequential(nnx.Module):
    """L blocks with history-mixing skip connections (the twin of ``mhc_torch.MHCSequential``).

    Build it from a list of nnx modules (``MHCSequential(blocks, max_history=4, ...)``) or
    with stacked parameters (:meth:`scanned`). Options are the fields of
    :class:`mhc_spec.MHCConfig` (``max_history``, ``mode``, ``constraint``, ``temperature``,
    ``epsilon``, ``init``, ``gating``, ``gate_init``) or ``config=``; bad values raise the
    spec's errors here. ``param_dtype`` is the dtype of the mixing logits.

    Attributes: ``config``, ``depth``, ``scan`` (which build), ``blocks`` (an ``nnx.List``,
    or one module whose arrays have a leading axis L), ``mixing`` (:class:`MHCMixing`).
    """

    def __init__(
        self,
        blocks: Iterable[nnx.Module] | None = None,
        *,
        stacked: nnx.Module | None = None,
        depth: int | None = None,
        config: MHCConfig | None = None,
        param_dtype: Any = jnp.float32,
        **options: Any,
    ):
        self.config = resolve_config(config, options)
        self.depth, self.scan, self.blocks = collect_blocks(blocks, stacked, depth)
        self.mixing = MHCMixing(self.config, self.depth, param_dtype=param_dtype)

    @classmethod
    def scanned(
        cls,
        make_block: Callable[[nnx.Rngs], nnx.Module],
        depth: int,
        *,
        rngs: nnx.Rngs,
        config: MHCConfig | None = None,
        param_dtype: Any = jnp.float32,
        **options: Any,
    ) -> MHCSequential:
        """The scan build: ``depth`` blocks ``make_block(rngs)`` with independent
        initialisations, parameters stacked along a leading axis L."""
        resolved = resolve_config(config, options)
        return cls(stacked=stacked_blocks(make_block, depth, rngs), depth=check_depth(depth),
                   config=resolved, param_dtype=param_dtype)

    @property
    def max_history(self) -> int:
        return self.config.max_history

    def weights(self, first: jax.Array | int = 1) -> jax.Array:
        """Padded mixing weights A (L, H) (``first``: states available to layer 1)."""
        return self.mixing.weights(first)

    def gates(self) -> jax.Array:
        """Gates g (L,) (ones without gating)."""
        return self.mixing.gates()

    def empty_history(self, x: jax.Array) -> History:
        """An empty window for inputs shaped like ``x`` (the torch ``reset_history()``)."""
        return History.empty(self.max_history, x.shape, x.dtype)

    def __call__(
        self, x: jax.Array, history: History | None = None
    ) -> jax.Array | tuple[jax.Array, History]:
        """s_L, or ``(s_L, history')`` when a history is passed in."""
        out = self.forward(x, history)
        return out.output if history is None else (out.output, out.history)

    def states(self, x: jax.Array, history: History | None = None) -> jax.Array:
        """All states s_0..s_L stacked: shape (L + 1, *x.shape)."""
        return self.forward(x, history, collect_states=True).states

    def forward(
        self,
        x: jax.Array,
        history: History | None = None,
        *,
        offsets: jax.Array | None = None,
        collect_states: bool = False,
    ) -> StackOutput:
        """Run the stack. ``offsets`` (L + 1, *x.shape), if given, is added to each state
        s_l as soon as it is computed: d loss / d offsets[l] = d loss / d s_l (the highway
        profile of :mod:`mhc_jax.statistics` uses zeros)."""
        h = self.max_history
        if offsets is not None and tuple(offsets.shape) != (self.depth + 1, *x.shape):
            raise ValueError(
                f"offsets has shape {tuple(offsets.shape)}; expected {(self.depth + 1, *x.shape)}"
            )
        x0 = x if offsets is None else x + offsets[0].astype(x.dtype)
        # Residual mixing and H = 1 only read the newest state: carry one state unless the
        # caller needs the full window back.
        width = 1 if history is None and (h == 1 or self.config.mode == "residual") else h
        if history is None:
            first = jnp.ones((), jnp.int32)
            window = (*(jnp.zeros_like(x0) for _ in range(width - 1)), x0)
        else:
            if history.max_history != h:
                raise ValueError(
                    f"history holds {history.max_history} states but this stack mixes "
                    f"max_history={h}"
                )
            check_state(history, x0)
            pushed = history.push(x0)
            first = pushed.count
            window = tuple(pushed.states[j] for j in range(h))
        coefficients = self.mixing.coefficients(first)[:, h - width:]
        layer_offsets = None if offsets is None else offsets[1:]
        run = self._run_scan if self.scan else self._run_loop
        window, states = run(window, coefficients, layer_offsets, collect_states)
        out_history = None
        if history is not None:
            out_history = History(jnp.stack(window), jnp.minimum(first + self.depth, h))
        if collect_states:
            states = jnp.concatenate([x0[None], states])
        return StackOutput(window[-1], out_history, states)

    def _run_loop(self, window, coefficients, offsets, collect):
        states = []
        for index, block in enumerate(self.blocks):
            offset = None if offsets is None else offsets[index]
            window = _layer(block, window, coefficients[index], offset, index)
            states.append(window[-1])
        return window, (jnp.stack(states) if collect else None)

    def _run_scan(self, window, coefficients, offsets, collect):
        graphdef, variables = nnx.split(self.blocks)
        mutable = nnx.state(self.blocks, nnx.Not(nnx.Param))
        track_mutable = _has_leaves(mutable)

        def run_layer(window, layer_variables, row, offset, index):
            block = nnx.merge(graphdef, layer_variables)
            window = _layer(block, window, row, offset, index)
            changed = nnx.state(block, nnx.Not(nnx.Param)) if track_mutable else None
            return window, changed

        group = layers_per_scan_step(self.depth, len(window))
        steps, lead = divmod(self.depth, group)
        states, lead_changed = [], []
        for index in range(lead):
            offset = None if offsets is None else offsets[index]
            window, changed = run_layer(
                window, _take(variables, index), coefficients[index], offset, index
            )
            states.append(window[-1])
            lead_changed.append(changed)

        def grouped(tree):
            return jax.tree.map(
                lambda leaf: (leaf[lead:] if lead else leaf).reshape(
                    steps, group, *leaf.shape[1:]), tree
            )

        def run_step_layer(k, window, step_variables, row, offset):
            return run_layer(window, _take(step_variables, k), row, offset, "(scanned)")

        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
        def scan_step(window, inputs):
            step_variables, rows, step_offsets = inputs
            step_states, step_changed = [], []
            for k in range(group):
                offset = None if step_offsets is None else step_offsets[k]
                layer = jax.checkpoint(partial(run_step_layer, k), prevent_cse=False,
                                       policy=_save_all_but_slices)
                window, changed = layer(window, step_variables, rows[k], offset)
                step_states.append(window[-1] if collect else None)
                step_changed.append(changed)
            stacked = (
                jnp.stack(step_states) if collect else None,
                jax.tree.map(lambda *leaves: jnp.stack(leaves), *step_changed)
                if track_mutable
                else None,
            )
            return window, stacked

        if steps:
            step_offsets = None if offsets is None else grouped(offsets)
            window, (scanned_states, scanned_changed) = scan_step(
                window, (grouped(variables), grouped(coefficients), step_offsets)
            )
        else:
            scanned_states = scanned_changed = None
        if track_mutable:
            self._write_back(lead_changed, scanned_changed, steps * group)
        if not collect:
            return window, None
        parts = [jnp.stack(states)] if states else []
        if steps:
            parts.append(scanned_states.reshape(-1, *scanned_states.shape[2:]))
        return window, jnp.concatenate(parts)

    def _write_back(self, lead_changed, scanned_changed, scanned_layers):
        """Store the blocks' updated non-parameter state (e.g. batch statistics)."""
        parts = [jax.tree.map(lambda leaf: leaf[None], changed) for changed in lead_changed]
        if scanned_layers:
            parts.append(
                jax.tree.map(lambda leaf: leaf.reshape(-1, *leaf.shape[2:]), scanned_changed)
            )
        nnx.update(self.blocks, jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *parts))
