"""The tape's native steps (mhc_torch/tape_kernels.c) against its PyTorch operations: the same
states and gradients in float64 and float32, with strided block outputs and gradients, and
the native path taken only where it applies (small CPU float states in plain eager mode)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

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
        monkeypatch: pytest.MonkeyPatch, history: tuple[torch.Tensor, ...]
        ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    monkeypatch.setenv("MHC_NATIVE_KERNELS", "1" if native else "0")
    model.reset_history()
    for state in history:
        model.history.push(state)
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    out = model(x)
    assert (out.grad_fn.tape.kernels is not None) == native
    out.backward(g)
    return out.detach(), [x.grad] + [p.grad for p in model.parameters()]


def compare(model: MHCSequential, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch,
            tolerance: float, history: tuple[torch.Tensor, ...] = ()) -> None:
    """Native against operations from the same carried ``history``, each tensor within
    ``tolerance`` of its largest entry (the two sum in different orders)."""
    g = torch.randn_like(x)
    expected, expected_grads = run(model, x, g, False, monkeypatch, history)
    out, grads = run(model, x, g, True, monkeypatch, history)
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


@pytest.mark.parametrize(("shape", "dtype"), [
    ((mhc_torch.tape.MAX_NATIVE_STATE + 1,), torch.float32), ((8, 8), torch.bfloat16)])
def test_large_or_low_precision_states_take_the_operations(shape, dtype) -> None:
    model = MHCSequential([nn.Identity() for _ in range(3)], max_history=2, mode="hc")
    out = model(torch.randn(*shape).to(dtype).requires_grad_())
    assert out.grad_fn.tape.kernels is None
