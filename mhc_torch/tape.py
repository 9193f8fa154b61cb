"""The eager training path of :class:`mhc_torch.MHCSequential`: every state in one arena.

Forward: s_0..s_L are rows of one contiguous arena (after any carried states), so layer l's
window s_{l-K}..s_{l-1} is a (K, N) slice and its skip path is a single matrix-vector
product written straight into s_l's row:

    s_l = y_l + C[l-1, H-K:] @ arena[l-K:l]          (one ``addmv``)

Each state handed to the blocks is a tensor of its own aliasing its arena row, so writing a
later row never bumps the version counter of a state a block saved for backward; every
row is written exactly once. No stacked copy of the window exists: the arena *is* the
activations the blocks would save anyway.

Backward walks l = L..0 (each step's output feeds the next step, so the order is fixed)
and pulls the skip gradients instead of pushing them through the autograd engine:

    ds_t = g_t + sum_{l=t+1}^{min(t+H, L)} C[l-1, t-l+H] * ds_l   (one ``addmv`` over a
                                                                  ring of the last H ds_l)
    dC[l-1, H-K:] = arena[l-K:l] @ ds_l                           (one ``mv``)

where g_t is what the autograd engine delivers to s_t (the gradient through block t+1, or
dLoss/ds_L). The rows of dC are written into one (L, H) tensor that the entry node (s_0 = x,
the last node of the pass) returns as the gradient of C: a step node has only two tensor
inputs, y_l and s_{l-1}. This is first-order only: double backward raises.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

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


def _pull_matrix(coefficients: Tensor) -> Tensor:
    """P (L+1, H): P[t, l % H] = C[l-1, t-l+H] for l in [t+1, min(t+H, L)], else 0."""
    depth, h = coefficients.shape
    index, valid = _pull_index(depth, h, coefficients.device)
    return coefficients.reshape(-1)[index] * valid


class _Tape:
    """What the nodes of one forward share: the arena while it is filled (forward only), the
    coefficient rows, and the gradient ring and dC (backward only)."""

    def __init__(self, x: Tensor, coefficients: Tensor, carried: Sequence[Tensor],
                 skip_grads: bool, norms: list | None) -> None:
        self.depth, self.h = coefficients.shape
        self.prefix = len(carried)
        self.shape, self.numel = x.shape, x.numel()
        self.arena: Tensor | None = x.new_empty((self.prefix + self.depth + 1, self.numel))
        self.storage = self.arena.untyped_storage()
        for index, state in enumerate(carried):
            self.arena[index].copy_(state.reshape(-1))
        self.coefficients = coefficients.detach().to(x.dtype)
        self.rows = self.coefficients.unbind(0)
        self.coefficient_grads = coefficients.requires_grad
        self.skip_grads = skip_grads
        self.norms = norms
        self.device_type = x.device.type
        self.autocast = torch.is_autocast_enabled(self.device_type)
        self.ring_t: Tensor | None = None
        self.ring_rows: tuple[Tensor, ...] = ()
        self.pull_rows: tuple[Tensor, ...] = ()
        self.version = 0  # version counter of the newest state when it was written
        self.grad_coefficients: Tensor | None = None
        self.grad_rows: tuple[Tensor, ...] = ()

    def state(self, t: int) -> Tensor:
        """s_t: a tensor of its own (own version counter) aliasing the arena row of s_t."""
        alias = self.arena.new_empty(0)
        return alias.set_(self.storage, (self.prefix + t) * self.numel, self.shape)

    def tail(self, count: int) -> list[Tensor]:
        """Copies of the newest ``count`` states (the history a carried stream continues)."""
        rows = self.arena[max(0, self.arena.shape[0] - count):].clone()
        return [row.view(self.shape) for row in rows]

    def release(self) -> None:
        """Drop the tape's own reference to the arena: from here on only saved tensors hold it
        (so an outer activation checkpoint can free it)."""
        self.arena = self.storage = None

    def start_backward(self, g: Tensor) -> None:
        """Step L is the first node of every backward pass: fresh ring and dC."""
        if self.skip_grads:
            ring = g.new_zeros((self.h, self.numel))
            self.ring_t, self.ring_rows = ring.t(), ring.unbind(0)
            self.pull_rows = _pull_matrix(self.coefficients).unbind(0)
        if self.coefficient_grads:
            self.grad_coefficients = g.new_zeros((self.depth, self.h))
            self.grad_rows = self.grad_coefficients.unbind(0)

    def pull(self, t: int, grad: Tensor) -> Tensor:
        """ds_t (flat) from the engine's g_t plus the skip gradients of layers t+1..t+H."""
        g = grad.reshape(-1)
        if self.skip_grads:
            if t < self.depth:
                g = torch.addmv(g, self.ring_t, self.pull_rows[t])
            self.ring_rows[t % self.h].copy_(g)
        if self.norms is not None:
            self.norms[t] = norm_of(g)
        return g


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
    paths included, and dC assembled by the steps."""

    @staticmethod
    def forward(ctx, x: Tensor, coefficients: Tensor, tape: _Tape) -> Tensor:
        out = tape.state(0)
        out.copy_(x)
        tape.version = out._version
        ctx.tape = tape
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        if torch.is_grad_enabled():
            _refuse_double_backward()
        tape = ctx.tape
        with _guard(tape):
            ds = tape.pull(0, grad).view(tape.shape) if ctx.needs_input_grad[0] else None
        return ds, tape.grad_coefficients, None


class _Step(torch.autograd.Function):
    """s_l = y_l + C[l-1] @ window_l, written into the arena row of s_l.

    ``previous`` (s_{l-1}) is an input only to order the backward pass; its skip gradient
    travels through the tape's ring, so its gradient here is None.
    """

    @staticmethod
    def forward(ctx, y: Tensor, previous: Tensor, tape: _Tape, layer: int) -> Tensor:
        if previous._version != tape.version:
            _refuse_in_place(layer)
        out = tape.state(layer)
        stop = tape.prefix + layer
        start = max(0, stop - tape.h)
        window = tape.arena[start:stop]
        row = tape.rows[layer - 1]
        if stop - start < tape.h:
            row = row[tape.h - stop + start:]
        flat_y = y.reshape(-1)
        if flat_y.dtype != out.dtype:
            flat_y = flat_y.to(out.dtype)
        with _guard(tape):
            torch.addmv(flat_y, window.t(), row, out=out.view(-1))
        ctx.save_for_backward(window)
        ctx.tape, ctx.layer = tape, layer
        tape.version = out._version
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        if torch.is_grad_enabled():
            _refuse_double_backward()
        (window,) = ctx.saved_tensors
        tape, layer = ctx.tape, ctx.layer
        with _guard(tape):
            if layer == tape.depth:
                tape.start_backward(grad)
            ds = tape.pull(layer, grad)
            if tape.grad_coefficients is not None:
                k = window.shape[0]
                dc = tape.grad_rows[layer - 1]
                torch.mv(window, ds, out=dc if k == tape.h else dc[tape.h - k:])
        return ds.view(tape.shape), None, None, None


def run_tape(blocks: Sequence[nn.Module], x: Tensor, coefficients: Tensor, *,
             carried: Sequence[Tensor], skip_grads: bool, norms: list | None,
             run_block: RunBlock, keep: int) -> tuple[Tensor, list[Tensor]]:
    """Run the stack on the arena; returns s_L and copies of the newest ``keep`` states."""
    tape = _Tape(x, coefficients, carried, skip_grads, norms)
    state = _Entry.apply(x, coefficients, tape)
    for layer, block in enumerate(blocks, 1):
        state = _Step.apply(run_block(layer, block, state), state, tape, layer)
    tail = tape.tail(keep) if keep else []
    tape.release()
    return state, tail
