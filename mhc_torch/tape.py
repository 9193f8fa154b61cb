"""The eager training path of :class:`mhc_torch.MHCSequential`: every state in one arena.

Forward: s_0..s_L are rows of an arena (after any carried states), contiguous within chunks
of at least ``CHUNK_BYTES``, so layer l's window s_{l-K}..s_{l-1} is a (K, N) slice (two,
where it crosses a chunk boundary) and its skip path is a matrix-vector product written
straight into s_l's row:

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

Small states on the CPU (a one-chunk arena of float32/float64 states of at most
:data:`MAX_NATIVE_STATE` entries, in plain eager mode) run a layer's arithmetic as one native
call per direction (``tape_kernels.c``, built by :mod:`mhc_torch.native`): there the
``addmv``, ``mv`` and ring ``copy_`` cost more in Python dispatch than in arithmetic, and
cutting per-layer windows and row aliases costs more than the kernels' own index maths. The
kernels reach the arena and C through addresses taken when the tape is built (the tape
keeps both alive with its graph), and the ring, P and D through addresses taken when the
backward starts. Larger CPU float states (any number of chunks, windows of at most
:data:`MAX_THREADED_HISTORY`) keep the cut windows but run each step and each pull as one
native call on PyTorch's OpenMP threads: one pass over the window and one over the ring,
where ``addmv`` + ``mv`` + ``copy_`` pass over the ring twice and copy ds once more.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mhc_torch import native
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


# A chunk of the arena holds at least this many bytes (and at least H rows): small states
# share one chunk; large ones get several, so the backward frees the arena chunk by chunk
# as it passes (as a residual stack frees each state) instead of holding all of it while
# the weight gradients pile up.
CHUNK_BYTES = 4 << 20


def chunk_rows(h: int, row_bytes: int) -> int:
    """Rows per arena chunk for states of ``row_bytes`` bytes and windows of H rows."""
    return max(h, -(-CHUNK_BYTES // row_bytes))


KERNELS = Path(__file__).with_name("tape_kernels.c")
_POINTER, _INT64 = ctypes.c_void_p, ctypes.c_int64
SIGNATURES: tuple[native.Signature, ...] = (
    ("mhc_tape_step", (_POINTER, _POINTER, _INT64), None),
    ("mhc_tape_pull", (_POINTER, _POINTER, _POINTER, _INT64), None),
    ("mhc_tape_pull_state", (_POINTER,) * 4 + (_INT64, ctypes.c_int), None),
    ("mhc_tape_step_rows", (_POINTER,) * 3 + (_INT64,) + (_POINTER,) * 2 + (_INT64, _POINTER,
                                                                          _INT64, ctypes.c_int),
     None),
)


class _Addresses(ctypes.Structure):
    """``struct mhc_tape`` of :data:`KERNELS`: the addresses and sizes every native call of a
    tape shares (the ring, P and D are set when a backward pass starts)."""

    _fields_ = [(name, _POINTER) for name in ("arena", "coefficients", "ring", "pull", "pairs")
                ] + [(name, _INT64) for name in ("carried", "h", "n")]


# States up to this many entries take the one-thread native kernels: above it a layer's
# arithmetic, not its dispatch, sets the pace, and threads win (measured on 2 cores, H=4:
# one thread faster than PyTorch's threaded operators at 4096 and 16384 entries, even at
# 32768, slower at 65536); larger states take the threaded step and pull.
MAX_NATIVE_STATE = 1 << 14


# Windows up to this many states take the threaded native pull (its per-thread dot products
# live on the C stack: at most 64 threads x H entries).
MAX_THREADED_HISTORY = 64


def _native_kernels(x: Tensor) -> Mapping[str, Callable[..., Any]] | None:
    """The tape's native kernels for states like ``x`` (a plain CPU float tensor, outside
    tracing), else None."""
    if type(x) is not Tensor:
        return None
    return native.kernels_for(KERNELS, SIGNATURES, x.dtype, x.device)


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
        rows = prefix + depth + 1
        size = chunk_rows(h, n * x.element_size())
        chunks = [x.new_empty((min(size, rows - start), n)) for start in range(0, rows, size)]
        for index, state in enumerate(carried):  # prefix < H <= size: all in chunk 0
            chunks[0][index].copy_(state.reshape(-1))
        self.chunks: list[Tensor] = chunks
        self.coefficients = coefficients.detach().to(x.dtype)
        self.coefficient_grads = coefficients.requires_grad
        self.skip_grads = skip_grads
        self.norms = norms
        self.device_type = x.device.type
        self.autocast = torch.is_autocast_enabled(self.device_type)
        # skip paths with coefficient gradients, no highway capture, no autocast; with one
        # chunk, the case the steps handle inline
        common = (skip_grads and self.coefficient_grads and norms is None
                  and not self.autocast)
        self.plain = common and len(chunks) == 1
        kernels = _native_kernels(x) if common else None
        # small states in one chunk: the one-thread native step and pull; larger states
        # (any chunks, windows up to MAX_THREADED_HISTORY): the threaded step and pull
        self.kernels = kernels if self.plain and n <= MAX_NATIVE_STATE else None
        threaded = (kernels is not None and self.kernels is None
                    and h <= MAX_THREADED_HISTORY)
        self.pull_state = kernels["mhc_tape_pull_state"] if threaded else None
        self.step_rows = kernels["mhc_tape_step_rows"] if threaded else None
        # ``.data`` gives every alias a version counter of its own (a view would share its
        # chunk's): the states handed to blocks, and the flat rows the steps write.
        self.states = [row.data for chunk in chunks
                       for row in chunk.view(chunk.shape[0], *x.shape).unbind(0)][prefix:]
        if self.kernels is None:
            flat = [row.data for chunk in chunks for row in chunk.unbind(0)]
            self.targets, self.all_rows = flat[prefix:], flat
            self._cut_windows(chunks, size, self.coefficients.unbind(0))
            if self.step_rows is not None:
                self.threads = torch.get_num_threads()
                self.row_steps = [self._row_step(layer) for layer in range(1, depth + 1)]
        else:
            # the native steps write through pointers (no version counter moves): the input's
            # row and the rows of the tail are plain views
            self.targets, self.all_rows = [chunks[0][prefix]], chunks[0]
            self.native_step = self.kernels["mhc_tape_step"]
            self.native_pull = self.kernels["mhc_tape_pull"]
            self.coefficients = self.coefficients.contiguous()
            self.arena = chunks[0]
            self.addresses = _Addresses(arena=self.arena.data_ptr(),
                                        coefficients=self.coefficients.data_ptr(),
                                        carried=prefix, h=h, n=n)
            self.addresses_pointer = ctypes.addressof(self.addresses)
        if self.pull_state is not None:  # ring, P and D only: states come with each call
            self.addresses = _Addresses(carried=prefix, h=h, n=n)
            self.addresses_pointer = ctypes.addressof(self.addresses)
        self.started = False  # whether the current backward pass has its ring and D
        self.ring: Tensor | None = None
        self.ring_t: Tensor | None = None
        self.ring_rows: tuple[Tensor, ...] = ()
        self.pull_rows: tuple[Tensor, ...] = ()
        self.pairs: Tensor | None = None  # D, a row per arena row
        self.pair_rows: tuple[Tensor, ...] = ()
        self.pull_matrix: Tensor | None = None  # P

    def _cut_windows(self, chunks: list[Tensor], size: int, rows: Sequence[Tensor]) -> None:
        """windows[l-1] (N, K) and vectors[l-1] (K,): layer l's window s_{l-K}..s_{l-1} and
        its coefficients. A window across a chunk boundary keeps its rows in the earlier
        chunk here and puts the rest, with their coefficients, in splits[l-1]."""
        h, prefix, depth = self.h, self.prefix, self.depth
        total = prefix + depth + 1
        self.windows: list[Tensor] = [rows[0]] * depth  # placeholders, all overwritten
        self.vectors: list[Tensor] = list(rows)
        self.splits: list[tuple[Tensor, Tensor] | None] = [None] * depth
        for r in range(prefix + 1, min(h, total)):  # target row r sees K = r < H rows
            self.windows[r - prefix - 1] = chunks[0][:r].t()
            self.vectors[r - prefix - 1] = rows[r - prefix - 1][h - r:]
        for index, chunk in enumerate(chunks):
            first = index * size  # the chunk's first row
            n = chunk.shape[1]
            # targets whose H rows all lie in this chunk: one strided (N, H) view each
            low, high = max(first + h, prefix + 1), min(first + size, total - 1)
            if low <= high:
                self.windows[low - prefix - 1:high - prefix] = chunk.as_strided(
                    (high - low + 1, n, h), (n, 1, n),
                    chunk.storage_offset() + (low - h - first) * n).unbind(0)
            if index:
                previous = chunks[index - 1]
                for r in range(first + 1, min(first + h, total)):
                    head = first - (r - h)  # window rows still in the previous chunk
                    layer = r - prefix
                    self.windows[layer - 1] = previous[size - head:].t()
                    self.vectors[layer - 1] = rows[layer - 1][:head]
                    self.splits[layer - 1] = (chunk[:h - head].t(), rows[layer - 1][head:])

    def _row_step(self, layer: int) -> tuple[int, ...]:
        """The addresses and counts :data:`KERNELS`' ``mhc_tape_step_rows`` takes for
        layer ``layer``'s window (rows, count, coefficients, and the same after a chunk
        boundary), then N and the thread count."""
        window, vector = self.windows[layer - 1], self.vectors[layer - 1]
        split = self.splits[layer - 1]
        rest = (0, 0, 0) if split is None else (
            split[0].data_ptr(), split[1].numel(), split[1].data_ptr())
        return (window.data_ptr(), vector.numel(), vector.data_ptr(), *rest,
                window.shape[0], self.threads)

    def mix(self, layer: int, y: Tensor, target: Tensor) -> None:
        """target = y + C[l-1] @ window_l (flat)."""
        torch.addmv(y, self.windows[layer - 1], self.vectors[layer - 1], out=target)
        split = self.splits[layer - 1]
        if split is not None:
            target.addmv_(*split)

    def tail(self, count: int) -> list[Tensor]:
        """Copies of the newest ``count`` states (the history a carried stream continues)."""
        return [row.view(self.shape).clone() for row in self.all_rows[-count:]]

    def release(self) -> None:
        """Drop the tape's own references to the arena: from here on only saved tensors hold
        it (so an outer activation checkpoint can free it, and the backward frees each chunk
        once it has passed it). With the native kernels, which read it through its address,
        the tape keeps its one chunk (``arena``, at most ``CHUNK_BYTES``) for as long as its
        graph lives, an outer checkpoint included."""
        self.chunks = self.states = self.targets = self.all_rows = []
        self.windows = self.vectors = []
        self.splits = []

    def start_backward(self, g: Tensor) -> None:
        """Step L is the first node of every backward pass (or the first that runs, when the
        loss reads no later state): fresh ring and D."""
        self.started = True
        if self.skip_grads or self.coefficient_grads:
            self.ring = g.new_zeros((self.h, g.numel()))
            self.ring_t, self.ring_rows = self.ring.t(), self.ring.unbind(0)
        if self.skip_grads:
            self.pull_matrix = _pull_matrix(self.coefficients)
            self.pull_rows = self.pull_matrix.unbind(0)
        if self.coefficient_grads:
            self.pairs = g.new_zeros((self.prefix + self.depth + 1, self.h))
            self.pair_rows = self.pairs.unbind(0)
        if self.kernels is not None or self.pull_state is not None:
            addresses = self.addresses
            addresses.ring = self.ring.data_ptr()
            addresses.pull = self.pull_matrix.data_ptr()
            addresses.pairs = self.pairs.data_ptr()
            self.threads = torch.get_num_threads()

    def pull(self, t: int, grad: Tensor, saved: tuple[Tensor, ...]) -> Tensor | None:
        """ds_t (flat, 1 <= t <= L) from the engine's g_t plus the skip gradients of layers
        t+1..t+H; records D[t] from the saved s_t, then puts ds_t into the ring. None when
        ds_t is g_t itself (t = L, or detached skip paths)."""
        g = grad.reshape(-1)
        ds = None
        if t < self.depth:
            if self.skip_grads:
                ds = torch.addmv(g, self.ring_t, self.pull_rows[t])
            if self.coefficient_grads:
                torch.mv(self.ring, saved[0], out=self.pair_rows[self.prefix + t])
        flat = g if ds is None else ds
        if self.ring is not None:
            self.ring_rows[t % self.h].copy_(flat)
        if self.norms is not None:
            self.norms[t] = norm_of(flat)
        return ds

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


def refuse_in_place_change(layer: int) -> None:
    """Raise: layer ``layer``'s block modified its input in place."""
    # The skip paths read that state again (and their gradients bypass the in-place op).
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
            ctx.save_for_backward(tape.chunks[0][:tape.prefix + 1])
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
            refuse_in_place_change(layer)
        if tape.kernels is not None:  # the tape keeps the arena
            # the kernel reads y's memory as it lies: no flat view to dispatch
            if y.dtype != tape.dtype or not y.is_contiguous():
                y = y.to(tape.dtype).contiguous()
            tape.native_step(y.data_ptr(), tape.addresses_pointer, layer)
            ctx.tape = tape
            ctx.layer = layer
            return tape.states[layer]
        flat_y = y.reshape(-1)
        if flat_y.dtype != tape.dtype:
            flat_y = flat_y.to(tape.dtype)
        target = tape.targets[layer]
        if tape.step_rows is not None:  # large states: one threaded pass
            if not flat_y.is_contiguous():
                flat_y = flat_y.contiguous()
            tape.step_rows(flat_y.data_ptr(), target.data_ptr(), *tape.row_steps[layer - 1])
        elif tape.plain:  # the common case inline: a Python call here costs like the addmv
            torch.addmv(flat_y, tape.windows[layer - 1], tape.vectors[layer - 1], out=target)
        elif tape.autocast:
            with torch.autocast(tape.device_type, enabled=False):
                tape.mix(layer, flat_y, target)
        else:
            tape.mix(layer, flat_y, target)
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
        first = layer == tape.depth or not tape.started
        if first:
            # A pass's first node unpacks (even nothing, and once: an outer checkpoint
            # refuses a second unpack): after a pass without retain_graph that raises
            # autograd's error before any native step runs on the freed graph.
            saved = ctx.saved_tensors
            tape.start_backward(grad)
        if layer != tape.depth:
            if tape.kernels is not None or tape.pull_state is not None:
                # ds_t, D[t] and the ring in one native call: from the arena for small
                # states, by the saved state's address (any chunk, threaded) for large ones
                g = grad if grad.is_contiguous() else grad.contiguous()
                ds = torch.empty_like(g)
                if tape.kernels is not None:
                    tape.native_pull(g.data_ptr(), ds.data_ptr(), tape.addresses_pointer, layer)
                else:
                    state = (saved if first else ctx.saved_tensors)[0]
                    tape.pull_state(g.data_ptr(), ds.data_ptr(), state.data_ptr(),
                                    tape.addresses_pointer, layer, tape.threads)
                return ds, None, None, None
            if tape.plain:
                # tape.pull inline for the common case (skip paths, coefficient gradients,
                # no highway capture, no autocast)
                ds = torch.addmv(grad.reshape(-1), tape.ring_t, tape.pull_rows[layer])
                torch.mv(tape.ring, (saved if first else ctx.saved_tensors)[0],
                         out=tape.pair_rows[tape.prefix + layer])
                tape.ring_rows[layer % tape.h].copy_(ds)
                # view_as: a torch.Size argument costs more to parse than the whole view
                return ds.view_as(grad), None, None, None
        if not first:
            saved = ctx.saved_tensors
        if tape.autocast:
            with torch.autocast(tape.device_type, enabled=False):
                ds = tape.pull(layer, grad, saved)
        else:
            ds = tape.pull(layer, grad, saved)
        return (grad if ds is None else ds.view_as(grad)), None, None, None


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
