"""The tape's native steps (mhc_torch/tape_kernels.c) against its PyTorch operations: the same
states and gradients in float64 and float32, with strided block outputs and gradients, and
the native path taken only where it applies (small CPU float states in plain eager mode; the
threaded step and pull for larger ones, in arenas of one chunk or several)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import mhc_torch.tape
from mhc_torch import MHCSequential


class Transposing(nn.Module):
    """y = (W x^T)^T: its output and its input's gradient are transposed views."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width, width) / width ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.weight @ x.t()).t()


class Strided(nn.Module):
    """A 1-D state mapped to a 1-D output with stride 2."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(self.linear(x))
        return torch.stack([y, -y], dim=-1)[..., 0]


def run(model: MHCSequential, x: torch.Tensor, g: torch.Tensor, native: bool,
        monkeypatch: pytest.MonkeyPatch, history: tuple[torch.Tensor, ...],
        path: str = "kernels") -> tuple[torch.Tensor, list[torch.Tensor]]:
    monkeypatch.setenv("MHC_NATIVE_KERNELS", "1" if native else "0")
    model.reset_history()
    for state in history:
        model.history.push(state)
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    out = model(x)
    assert (getattr(out.grad_fn.tape, path) is not None) == native
    out.backward(g)
    return out.detach(), [x.grad] + [p.grad for p in model.parameters()]


def compare(model: MHCSequential, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch,
            tolerance: float, history: tuple[torch.Tensor, ...] = (),
            path: str = "kernels") -> None:
    """Native (the tape's ``path``: ``kernels`` or ``pull_state``) against operations from
    the same carried ``history``, each tensor within ``tolerance`` of its largest entry
    (the two sum in different orders)."""
    g = torch.randn_like(x)
    expected, expected_grads = run(model, x, g, False, monkeypatch, history, path)
    out, grads = run(model, x, g, True, monkeypatch, history, path)
    for ours, theirs in zip([out, *grads], [expected, *expected_grads], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0,
                                   atol=tolerance * float(theirs.abs().max()))


@pytest.mark.parametrize(("mode", "constraint"), [("mhc", "simplex"), ("mhc", "softmax"),
                                                  ("hc", "simplex")])
@pytest.mark.parametrize("h", [2, 4, 8])
def test_native_steps_equal_the_operations_in_float64(monkeypatch, mode: str, constraint: str,
                                                       h: int) -> None:
    torch.manual_seed(h)
    blocks = [nn.Sequential(nn.Linear(6, 6), nn.Tanh()) for _ in range(11)]
    model = MHCSequential(blocks, max_history=h, mode=mode, constraint=constraint,
                          gating=True).double()
    with torch.no_grad():
        model.theta.copy_(torch.randn_like(model.theta))
    compare(model, torch.randn(3, 6, dtype=torch.float64), monkeypatch, 1e-12)


def test_native_steps_equal_the_operations_in_float32_at_the_guides_shape(monkeypatch) -> None:
    torch.manual_seed(0)
    model = MHCSequential([nn.Linear(64, 64) for _ in range(50)], max_history=4, mode="mhc")
    with torch.no_grad():
        model.theta.copy_(torch.randn_like(model.theta))
    compare(model, torch.randn(64, 64), monkeypatch, 1e-5)


@pytest.mark.parametrize("carry", [False, True])
def test_native_steps_with_transposed_outputs_and_gradients(monkeypatch, carry: bool) -> None:
    torch.manual_seed(1)
    model = MHCSequential([Transposing(5) for _ in range(6)], max_history=3, mode="hc",
                          carry_history=carry).double()
    with torch.no_grad():
        model.theta.copy_(torch.randn_like(model.theta))
    history: tuple[torch.Tensor, ...] = ()
    if carry:  # two states carried in before s_0
        model(torch.randn(4, 5, dtype=torch.float64))
        history = model.history.states
        assert len(history) == 2
    compare(model, torch.randn(4, 5, dtype=torch.float64), monkeypatch, 1e-12, history)


def test_native_steps_with_strided_one_dimensional_outputs(monkeypatch) -> None:
    torch.manual_seed(2)
    model = MHCSequential([Strided(7) for _ in range(5)], max_history=4, mode="hc").double()
    with torch.no_grad():
        model.theta.copy_(torch.randn_like(model.theta))
    compare(model, torch.randn(7, dtype=torch.float64), monkeypatch, 1e-12)


class Halving(nn.Module):
    """y = x / 2: a block that saves nothing for backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.5


@pytest.mark.usefixtures("kernel_path")
def test_a_second_backward_without_retain_graph_raises_before_reading_the_arena() -> None:
    model = MHCSequential([Halving() for _ in range(6)], max_history=3, mode="hc")
    out = model(torch.randn(4, 5, requires_grad=True))
    out.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        out.sum().backward()


@pytest.mark.usefixtures("kernel_path")
@pytest.mark.parametrize("reentrant", [False, True])
def test_an_outer_activation_checkpoint_gives_the_same_gradients(reentrant: bool) -> None:
    """The arena may be freed after the forward and recomputed for backward: the steps'
    gradients stay those of the plain run (the native steps read the tape's own arena)."""
    torch.manual_seed(3)
    model = MHCSequential([nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(6)],
                          max_history=3, mode="hc").double()
    with torch.no_grad():
        model.theta.copy_(torch.randn_like(model.theta))
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 8, dtype=torch.float64)
    grads = []
    for wrapped in (False, True):
        model.zero_grad(set_to_none=True)
        x.grad = None
        # the loss keeps no reference to the output, which aliases the arena
        loss = ((checkpoint(model, x, use_reentrant=reentrant) if wrapped else model(x))
                * g).sum()
        # NaN in blocks of the arena's size (7 states of 32), where a freed one would go
        scratch = [torch.full((7 * 32,), torch.nan, dtype=torch.float64) for _ in range(64)]
        loss.backward()
        del scratch
        grads.append([x.grad.clone()] + [p.grad.clone() for p in model.parameters()])
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-12, atol=1e-12)


def test_large_states_take_the_threaded_kernels_and_low_precision_the_operations() -> None:
    model = MHCSequential([nn.Identity() for _ in range(3)], max_history=2, mode="hc")
    large = model(torch.randn(mhc_torch.tape.MAX_NATIVE_STATE + 1).requires_grad_())
    assert large.grad_fn.tape.kernels is None and large.grad_fn.tape.pull_state is not None
    low = model(torch.randn(8, 8).bfloat16().requires_grad_())
    assert low.grad_fn.tape.kernels is None and low.grad_fn.tape.pull_state is None


def test_long_windows_take_the_operations() -> None:
    h = mhc_torch.tape.MAX_THREADED_HISTORY + 1
    model = MHCSequential([nn.Identity() for _ in range(3)], max_history=h, mode="hc")
    out = model(torch.randn(mhc_torch.tape.MAX_NATIVE_STATE + 1).requires_grad_())
    assert out.grad_fn.tape.pull_state is None and out.grad_fn.tape.step_rows is None


class Gate(nn.Module):
    """y = tanh(w * x): an elementwise block, cheap at any state size."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.weight * x)


@pytest.mark.parametrize("chunk_rows", [None, 3, 5])
@pytest.mark.parametrize("h", [2, 4, 8])
@pytest.mark.parametrize("carry", [False, True])
def test_threaded_steps_equal_the_operations_across_chunks(
        monkeypatch, chunk_rows: int | None, h: int, carry: bool) -> None:
    """Small states sent down the large states' path, in arenas whose windows cross chunk
    boundaries (``chunk_rows`` rows a chunk; None: one chunk)."""
    monkeypatch.setattr(mhc_torch.tape, "MAX_NATIVE_STATE", 0)
    width = 6
    if chunk_rows is not None:
        monkeypatch.setattr(mhc_torch.tape, "CHUNK_BYTES", chunk_rows * 3 * width * 8)
    torch.manual_seed(h)
    model = MHCSequential([Gate(width) for _ in range(11)], max_history=h, mode="mhc",
                          carry_history=carry).double()
    with torch.no_grad():
        model.theta.copy_(torch.randn_like(model.theta))
    history: tuple[torch.Tensor, ...] = ()
    if carry:
        model(torch.randn(3, width, dtype=torch.float64))
        history = model.history.states
    compare(model, torch.randn(3, width, dtype=torch.float64), monkeypatch, 1e-12, history,
            path="pull_state")


@pytest.mark.parametrize("threads", [1, 2])
def test_threaded_steps_equal_the_operations_on_a_large_state(monkeypatch, threads: int) -> None:
    """States past the kernels' threading grain (32768 entries), on 1 and 2 threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(threads)
        model = MHCSequential([Gate(20000) for _ in range(9)], max_history=4, mode="mhc")
        model.double()
        with torch.no_grad():
            model.theta.copy_(torch.randn_like(model.theta))
        compare(model, torch.randn(2, 20000, dtype=torch.float64), monkeypatch, 1e-12,
                path="pull_state")
    finally:
        torch.set_num_threads(before)
