"""The eager training path of :class:`mhc_torch.MHCSequential`: every state in one arena.

Forward: s_0..s_L are rows of one contiguous arena (after any carried states), so layer l's
window s_{l-K}..s_{l-1} is a (K, N) slice and its skip path is a single matrix-vector
product written straight into s_l's row:

    s_l = y_l + C[l-1, H-K:] @ arena[l-K:l]          (one ``addmv``)

Each state handed to the blocks is a tensor of its own aliasing its arena row, so writing a
later row never bumps the version counter of a state a block saved for backward; every
row is written exactly once. No stacked copy of the window exists: the arena *is* the
activations the blocks would save anyway. Everything a layer needs (its window, its
coefficient row, its row aliases) is cut from the arena in bulk before the first block runs,
so the per-layer Python work is one ``addmv``.

Backward walks t = L..0 (each step's output feeds the next step, so the order is fixed)
and pulls the skip gradients instead of pushing them through the autograd engine; a ring R
holds the newest H state gradients, ds_l in slot l mod H:

    ds_t = g_t + sum_{l=t+1}^{min(t+H, L)} C[l-1, t-l+H] * ds_l   (one ``addmv`` over R)
    D[t, l mod H] = <s_t, ds_l>,  l = t+1..t+H                   (one ``mv``: R @ s_t)

where g_t is what the autograd engine delivers to s_t (the gradient through block t+1, or
dLoss/ds_L). dC[l-1, j] = <s_{l-H+j}, ds_l> = D[l-H+j, l mod H] is gathered from D once, at
the entry node (s_0 = x, the last node of the pass), which returns it as the gradient of C:
a step node has only two tensor inputs, y_l and s_{l-1}. Pairing each state with the ring
(hot in cache after the pull) reads one state per layer instead of the H of its window. The
carried states' rows of D are one ``mm`` at the entry. This is first-order only: double
backward raises.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from mhc_torch.autograd_apply import function_applier
from mhc_torch.highway import norm_of

RunBlock = Callable[[int, nn.Module, Tensor], Tensor]


@functools.lru_cache(maxsize=64)
def _pull_index(depth: int, h: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """For P[t, r] (t = 0..L, r = 0..H-1): the flat index into C of the coefficient of s_t in
    the layer l in [t+1, t+H] with l = r (mod H), and whether that layer exists (l <= L)."""
    t = torch.arange(depth + 1, device=device).unsqueeze(-1)
    r = torch.arange(h, device=device)
    layer = t + 1 + torch.remainder(r - t - 1, h)
    index = ((layer - 1) * h + t - layer + h).clamp(max=depth * h - 1)
    return index, layer <= depth


@functools.lru_cache(maxsize=64)
def _gather_index(depth: int, h: int, prefix: int, device: torch.device
                  ) -> tuple[Tensor, Tensor]:
    """For dC[l-1, j]: the flat index of D[prefix + l - H + j, l mod H] (D has a row per arena
    row) and whether that state exists (prefix + l - H + j >= 0; else dC is 0 there)."""
    layer = torch.arange(1, depth + 1, device=device).unsqueeze(-1)
    row = prefix + layer - h + torch.arange(h, device=device)
    index = row.clamp(min=0) * h + torch.remainder(layer, h)
    return index, row >= 0


def _pull_matrix(coefficients: Tensor) -> Tensor:
    """P (L+1, H): P[t, l % H] = C[l-1, t-l+H] for l in [t+1, min(t+H, L)], else 0."""
    depth, h = coefficients.shape
    index, valid = _pull_index(depth, h, coefficients.device)
    return coefficients.reshape(-1)[index] * valid


class _Tape:
    """What the nodes of one forward share: the arena and its per-layer cuts while it is
    filled (forward only), the coefficient rows, and the gradient ring and D (backward
    only)."""

    def __init__(self, x: Tensor, coefficients: Tensor, carried: Sequence[Tensor],
                 skip_grads: bool, norms: list | None) -> None:
        depth, h = coefficients.shape
        prefix = len(carried)
        n = x.numel()
        self.depth, self.h, self.prefix, self.shape = depth, h, prefix, x.shape
        self.dtype = x.dtype
        arena = x.new_empty((prefix + depth + 1, n))
        for index, state in enumerate(carried):
            arena[index].copy_(state.reshape(-1))
        self.arena: Tensor | None = arena
        # ``.data`` gives every alias a version counter of its own (a view would share the
        # arena's): the states handed to blocks, and the flat rows the steps write.
        shaped = arena.view(arena.shape[0], *x.shape).unbind(0)
        self.states = [row.data for row in shaped[prefix:]]
        self.targets = [row.data for row in arena.unbind(0)[prefix:]]
        self.coefficients = coefficients.detach().to(x.dtype)
        rows = self.coefficients.unbind(0)
        full = max(1, h - prefix)  # the first layer whose window holds H states
        short = range(1, min(full, depth + 1))
        self.windows = [arena[:prefix + layer].t() for layer in short]
        self.rows = [rows[layer - 1][h - prefix - layer:] for layer in short]
        if full <= depth:
            # windows (N, H) of layers full..L: H consecutive rows, one strided view each
            self.windows += arena.as_strided(
                (depth - full + 1, n, h), (n, 1, n),
                arena.storage_offset() + (prefix + full - h) * n).unbind(0)
            self.rows += rows[full - 1:]
        self.coefficient_grads = coefficients.requires_grad
        self.skip_grads = skip_grads
        self.norms = norms
        self.device_type = x.device.type
        self.autocast = torch.is_autocast_enabled(self.device_type)
        self.started = False  # whether the current backward pass has its ring and D
        self.ring: Tensor | None = None
        self.ring_t: Tensor | None = None
        self.ring_rows: tuple[Tensor, ...] = ()
        self.pull_rows: tuple[Tensor, ...] = ()
        self.pairs: Tensor | None = None  # D, a row per arena row
        self.pair_rows: tuple[Tensor, ...] = ()

    def tail(self, count: int) -> list[Tensor]:
        """Copies of the newest ``count`` states (the history a carried stream continues)."""
        rows = self.arena[max(0, self.arena.shape[0] - count):].clone()
        return [row.view(self.shape) for row in rows]

    def release(self) -> None:
        """Drop the tape's own references to the arena: from here on only saved tensors hold
        it (so an outer activation checkpoint can free it)."""
        self.arena = None
        self.states = self.targets = self.windows = self.rows = []

    def start_backward(self, g: Tensor) -> None:
        """Step L is the first node of every backward pass (or the first that runs, when the
        loss reads no later state): fresh ring and D."""
        self.started = True
        if self.skip_grads or self.coefficient_grads:
            self.ring = g.new_zeros((self.h, g.numel()))
            self.ring_t, self.ring_rows = self.ring.t(), self.ring.unbind(0)
        if self.skip_grads:
            self.pull_rows = _pull_matrix(self.coefficients).unbind(0)
        if self.coefficient_grads:
            self.pairs = g.new_zeros((self.prefix + self.depth + 1, self.h))
            self.pair_rows = self.pairs.unbind(0)

    def pull(self, t: int, grad: Tensor, saved: tuple[Tensor, ...]) -> Tensor:
        """ds_t (flat, 1 <= t <= L) from the engine's g_t plus the skip gradients of layers
        t+1..t+H; records D[t] from the saved s_t, then puts ds_t into the ring."""
        g = grad.reshape(-1)
        if t < self.depth:
            if self.skip_grads:
                g = torch.addmv(g, self.ring_t, self.pull_rows[t])
            if self.coefficient_grads:
                torch.mv(self.ring, saved[0], out=self.pair_rows[self.prefix + t])
        if self.ring is not None:
            self.ring_rows[t % self.h].copy_(g)
        if self.norms is not None:
            self.norms[t] = norm_of(g)
        return g

    def entry_pull(self, grad: Tensor, prefix_states: Tensor) -> Tensor:
        """ds_0 and the rows of D of s_0 and the carried states (one ``mm``)."""
        g = grad.reshape(-1)
        if self.skip_grads:
            g = torch.addmv(g, self.ring_t, self.pull_rows[0])
        if self.coefficient_grads:
            torch.mm(prefix_states, self.ring_t, out=self.pairs[:self.prefix + 1])
        if self.norms is not None:
            self.norms[0] = norm_of(g)
        return g

    def coefficient_grad(self) -> Tensor:
        """dC (L, H) gathered from D."""
        index, valid = _gather_index(self.depth, self.h, self.prefix, self.pairs.device)
        return self.pairs.reshape(-1)[index] * valid


_NO_GUARD = contextlib.nullcontext()


def _guard(tape: _Tape) -> contextlib.AbstractContextManager:
    """Keep the skip-path products in the states' dtype under autocast (CUDA's would lower
    addmv/mv to half precision); a no-op context otherwise."""
    return torch.autocast(tape.device_type, enabled=False) if tape.autocast else _NO_GUARD


def _refuse_in_place(layer: int) -> None:
    # The window reads the arena row; the skip gradients would bypass the in-place op.
    raise RuntimeError(
        f"layers[{layer - 1}] modified its input in place (e.g. nn.ReLU(inplace=True) as its "
        "first operation); MHCSequential's skip paths read that state again, so blocks must "
        "leave their input unchanged: use the out-of-place operation"
    )


def _refuse_double_backward() -> None:
    raise RuntimeError(
        "double backward (create_graph=True) through MHCSequential's eager training path is "
        "not supported; run the model under torch.compile for higher-order gradients"
    )


class _Entry(torch.autograd.Function):
    """s_0 = x, copied into the arena. Backward (the pass's last node) returns ds_0, skip
    paths included, and dC gathered from the pairs the steps recorded."""

    @staticmethod
    def forward(ctx, x: Tensor, coefficients: Tensor, tape: _Tape) -> Tensor:
        tape.targets[0].copy_(x.reshape(-1))
        if tape.coefficient_grads:
            ctx.save_for_backward(tape.arena[:tape.prefix + 1])
        ctx.tape = tape
        return tape.states[0]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        if torch.is_grad_enabled():
            _refuse_double_backward()
        tape = ctx.tape
        if not tape.started:
            tape.start_backward(grad)
        prefix_states = ctx.saved_tensors[0] if tape.coefficient_grads else None
        with _guard(tape):
            ds = tape.entry_pull(grad, prefix_states)
            grad_coefficients = tape.coefficient_grad() if tape.coefficient_grads else None
        tape.started = False  # the pass is complete: a retained graph's next pass starts anew
        return (ds.view_as(grad) if ctx.needs_input_grad[0] else None), grad_coefficients, None


class _Step(torch.autograd.Function):
    """s_l = y_l + C[l-1] @ window_l, written into the arena row of s_l.

    ``previous`` (s_{l-1}) is an input only to order the backward pass; its skip gradient
    travels through the tape's ring, so its gradient here is None.
    """

    @staticmethod
    def forward(ctx, y: Tensor, previous: Tensor, tape: _Tape, layer: int) -> Tensor:
        if previous._version:
            _refuse_in_place(layer)
        flat_y = y.reshape(-1)
        if flat_y.dtype != tape.dtype:
            flat_y = flat_y.to(tape.dtype)
        target = tape.targets[layer]
        if tape.autocast:
            with torch.autocast(tape.device_type, enabled=False):
                torch.addmv(flat_y, tape.windows[layer - 1], tape.rows[layer - 1], out=target)
        else:
            torch.addmv(flat_y, tape.windows[layer - 1], tape.rows[layer - 1], out=target)
        if tape.coefficient_grads:
            ctx.save_for_backward(target)
        ctx.tape = tape
        ctx.layer = layer
        return tape.states[layer]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        if torch.is_grad_enabled():
            _refuse_double_backward()
        tape = ctx.tape
        layer = ctx.layer
        if layer == tape.depth or not tape.started:
            tape.start_backward(grad)
        if tape.autocast:
            with torch.autocast(tape.device_type, enabled=False):
                ds = tape.pull(layer, grad, ctx.saved_tensors)
        else:
            ds = tape.pull(layer, grad, ctx.saved_tensors)
        # view_as: a torch.Size argument costs more to parse than the whole view
        return ds.view_as(grad), None, None, None


def run_tape(blocks: Sequence[nn.Module], x: Tensor, coefficients: Tensor, *,
             carried: Sequence[Tensor], skip_grads: bool, norms: list | None,
             run_block: RunBlock, keep: int) -> tuple[Tensor, list[Tensor]]:
    """Run the stack on the arena; returns s_L and copies of the newest ``keep`` states."""
    tape = _Tape(x, coefficients, carried, skip_grads, norms)
    state = function_applier(_Entry)(x, coefficients, tape)
    step = function_applier(_Step)
    for layer, block in enumerate(blocks, 1):
        state = step(run_block(layer, block, state), state, tape, layer)
    tail = tape.tail(keep) if keep else []
    tape.release()
    return state, tail
