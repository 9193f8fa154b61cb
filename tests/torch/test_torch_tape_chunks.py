"""The eager tape with its arena cut into chunks (as large states are) or in one chunk (the
steps' inline case) gives the same values and gradients as the plain-operation path,
including windows that cross a chunk boundary, short chunks at the end and carried
histories."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, vjp

import mhc_torch.tape
from mhc_torch import MHCSequential

DEPTH = 9
WIDTH = 3
ROW_BYTES = 2 * WIDTH * 8  # a (2, WIDTH) float64 state


def stack(h: int, gating: bool) -> MHCSequential:
    torch.manual_seed(h)
    blocks = [nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh()) for _ in range(DEPTH)]
    model = MHCSequential(blocks, max_history=h, mode="hc", gating=gating,
                          carry_history=True).double()
    with torch.no_grad():
        model.theta.copy_(torch.randn_like(model.theta))
    return model


def run_with_history(model: MHCSequential, carried: list[torch.Tensor], x, params):
    model.history.reset()
    for state in carried:
        model.history.push(state)
    return functional_call(model, params, (x,))


@pytest.mark.parametrize("chunk_states", [1, 5, 100], ids=["H-rows", "5-rows", "one-chunk"])
@pytest.mark.parametrize(("h", "carried", "gating"),
                         [(2, 0, False), (2, 1, True), (3, 2, False), (4, 0, True),
                          (4, 3, False)])
def test_chunked_arena_matches_the_plain_path(monkeypatch, kernel_path: str, chunk_states: int,
                                              h: int, carried: int, gating: bool) -> None:
    """Chunks of max(H, chunk_states) rows: every chunk boundary falls inside some window;
    100 rows hold the whole arena, whose steps run natively unless switched off. (H = 1 runs
    on the plain-operation path itself.)"""
    monkeypatch.setattr(mhc_torch.tape, "CHUNK_BYTES", chunk_states * ROW_BYTES)
    assert mhc_torch.tape.chunk_rows(h, ROW_BYTES) == max(h, chunk_states)
    model = stack(h, gating)
    history = [torch.randn(2, WIDTH, dtype=torch.float64) for _ in range(carried)]
    params = {name: p.detach().clone().requires_grad_() for name, p in
              model.named_parameters()}
    x = torch.randn(2, WIDTH, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, WIDTH, dtype=torch.float64)

    out = run_with_history(model, history, x, params)  # eager: the tape
    assert out.grad_fn is not None and "Step" in type(out.grad_fn).__name__
    native = out.grad_fn.tape.kernels is not None
    assert native == (kernel_path == "native" and chunk_states == 100)
    tail = model.history.states
    out.backward(g)
    eager = [x.grad] + [params[name].grad for name in params]

    expected, pullback = vjp(lambda x, p: run_with_history(model, history, x, p), x, params)
    reference_x, reference_params = pullback(g)
    torch.testing.assert_close(out.detach(), expected, rtol=1e-12, atol=1e-12)
    for ours, theirs in zip(tail, model.history.states, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    reference = [reference_x] + [reference_params[name] for name in params]
    for ours, theirs in zip(eager, reference, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk_states", [1, 100], ids=["chunks", "one-chunk"])
def test_a_retained_graph_gives_the_same_gradients_on_each_pass(monkeypatch,
                                                                chunk_states: int) -> None:
    monkeypatch.setattr(mhc_torch.tape, "CHUNK_BYTES", chunk_states * ROW_BYTES)
    model = stack(3, gating=False)
    model.carry_history = False
    x = torch.randn(2, WIDTH, dtype=torch.float64, requires_grad=True)
    out = model(x)
    out.backward(torch.ones_like(out), retain_graph=True)
    first = [x.grad.clone()] + [p.grad.clone() for p in model.parameters()]
    x.grad = None
    model.zero_grad(set_to_none=True)
    out.backward(torch.ones_like(out))
    second = [x.grad] + [p.grad for p in model.parameters()]
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the input's gradient is a tensor of its own, not a view keeping the tape's memory alive
    assert x.grad.untyped_storage().nbytes() == x.numel() * x.element_size()
