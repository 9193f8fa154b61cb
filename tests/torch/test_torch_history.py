"""History semantics: pure forwards by default, carried windows on request, HistoryBuffer and
MHCSkip loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mhc_spec import project
from mhc_torch import HistoryBuffer, MHCSequential, MHCSkip

KINDS = [("residual", "simplex", True), ("hc", "simplex", False), ("mhc", "simplex", True),
         ("mhc", "softmax", False), ("mhc", "identity", True)]


def stack(mode="mhc", constraint="simplex", gating=False, seed=0, **kwargs) -> MHCSequential:
    torch.manual_seed(seed)
    model = MHCSequential([nn.Sequential(nn.Linear(6, 6), nn.Tanh()) for _ in range(5)],
                          max_history=3, mode=mode, constraint=constraint, gating=gating,
                          **kwargs).double()
    with torch.no_grad():
        if model.theta is not None:
            model.theta.copy_(torch.randn_like(model.theta))
        if model.gamma is not None:
            model.gamma.copy_(torch.randn_like(model.gamma))
    return model


def reference_stream(model: MHCSequential, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Outputs of consecutive calls whose windows continue across calls (carry_history), from
    the spec's projection: layer l of a call that inherits c states sees K = min(H, l + c)."""
    config = model.config
    h = config.max_history
    theta = None if model.theta is None else model.theta.detach().numpy()
    gates = model.gates().detach().numpy()
    carried: list[np.ndarray] = []
    outputs = []
    for x in inputs:
        states = [*carried, x]
        c = len(carried)
        for layer, block in enumerate(model.layers, 1):
            with torch.no_grad():
                y = block(torch.from_numpy(states[-1])).numpy()
            k = min(h, layer + c)
            z = None if theta is None else theta[layer - 1, h - k:]
            a = project(config, z, k)
            window = states[len(states) - k:]
            mix = sum(a_j * s for a_j, s in zip(a, window, strict=True))
            states.append(y + gates[layer - 1] * mix)
        outputs.append(states[-1])
        carried = states[len(states) - (h - 1):] if h > 1 else []
    return outputs


@pytest.mark.parametrize(("mode", "constraint", "gating"), KINDS)
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_default_forward_does_not_depend_on_the_previous_batch(mode, constraint, gating, grad):
    model = stack(mode, constraint, gating)
    a, b = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        alone = model(b)
        model(a)
        after_a = model(b)
    torch.testing.assert_close(after_a, alone, rtol=0, atol=0)
    assert len(model.history) == 0


@pytest.mark.parametrize(("mode", "constraint", "gating"), KINDS)
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_carry_history_continues_the_window(mode, constraint, gating, grad) -> None:
    model = stack(mode, constraint, gating, carry_history=True)
    inputs = [torch.randn(4, 6, dtype=torch.float64) for _ in range(3)]
    with torch.set_grad_enabled(grad):
        outputs = [model(x) for x in inputs]
    expected = reference_stream(model, [x.numpy() for x in inputs])
    for out, ref in zip(outputs, expected, strict=True):
        np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-12, atol=1e-12)
    if mode != "residual":  # a residual stack only ever reads the newest state
        assert not torch.allclose(outputs[1], stack(mode, constraint, gating)(inputs[1]))
    model.reset_history()
    torch.testing.assert_close(model(inputs[1]), stack(mode, constraint, gating)(inputs[1]),
                               rtol=0, atol=0)


def test_carry_history_trains_over_consecutive_steps() -> None:
    """Carried states are detached: each step's backward stays within its own call."""
    model = stack(carry_history=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 6, dtype=torch.float64)).square().sum().backward()
        optimizer.step()
    assert all(not s.requires_grad for s in model.history.states)


def test_carry_history_rejects_a_new_batch_shape_until_reset() -> None:
    model = stack(carry_history=True)
    model(torch.randn(4, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"reset_history\(\)"):
        model(torch.randn(2, 6, dtype=torch.float64))
    model.reset_history()
    assert model(torch.randn(2, 6, dtype=torch.float64)).shape == (2, 6)


def test_history_buffer() -> None:
    x = [torch.full((2,), float(i)) for i in range(5)]
    buffer = HistoryBuffer(3, x[0])
    assert len(buffer) == 1 and buffer.newest is x[0]
    for state in x[1:]:
        buffer.push(state)
    assert buffer.states == tuple(x[2:])  # oldest first, capacity 3
    assert "size=3" in repr(buffer)
    buffer.reset(x[4])
    assert buffer.states == (x[4],)
    buffer.reset()
    with pytest.raises(IndexError, match="empty"):
        _ = buffer.newest


@pytest.mark.parametrize(("mode", "constraint", "gating"), KINDS)
def test_skip_loop_equals_mhc_sequential(mode, constraint, gating) -> None:
    model = stack(mode, constraint, gating)
    skips = nn.ModuleList(
        MHCSkip(3, mode=mode, constraint=constraint, gating=gating).double() for _ in range(5))
    with torch.no_grad():
        for layer, skip in enumerate(skips):
            if skip.theta is not None:
                skip.theta.copy_(model.theta[layer])
            if skip.gamma is not None:
                skip.gamma.copy_(model.gamma[layer])
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    history = HistoryBuffer(3, x)
    h = x
    for block, skip in zip(model.layers, skips, strict=True):
        h = skip(block(h), history)
    assert len(history) == 3 and history.newest is h
    expected = model(x)
    torch.testing.assert_close(h, expected, rtol=1e-12, atol=1e-12)
    (dx_loop,) = torch.autograd.grad(h.sum(), x)
    (dx_stack,) = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(dx_loop, dx_stack, rtol=1e-12, atol=1e-12)


def test_skip_needs_a_started_history_and_the_same_shape() -> None:
    skip = MHCSkip(2)
    with pytest.raises(ValueError, match="history is empty"):
        skip(torch.randn(2, 3), HistoryBuffer(2))
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(2, 3\)"):
        skip(torch.randn(2, 4), HistoryBuffer(2, torch.randn(2, 3)))
