"""Eager training runs the tape for H >= 2 and plain operations for H = 1; both refuse a
block that modifies its input in place, and both give the plain path's gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, vjp

from mhc_torch import MHCSequential


@pytest.mark.parametrize("h", [1, 2, 4])
def test_in_place_input_change_is_refused_on_every_eager_path(h: int) -> None:
    model = MHCSequential([nn.Sequential(nn.ReLU(inplace=True), nn.Linear(4, 4))
                           for _ in range(3)], max_history=h)
    with pytest.raises(RuntimeError, match=r"layers\[0\] modified its input in place"):
        model(torch.randn(2, 4))


@pytest.mark.parametrize(("h", "node"), [(1, "Addcmul"), (2, "_Step"), (3, "_Step")])
def test_eager_path_per_history_and_its_gradients(h: int, node: str) -> None:
    torch.manual_seed(h)
    model = MHCSequential([nn.Sequential(nn.Linear(3, 3), nn.Tanh()) for _ in range(5)],
                          max_history=h, mode="hc", gating=True).double()
    params = {name: p.detach().clone().requires_grad_() for name, p in
              model.named_parameters()}
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, dtype=torch.float64)
    out = functional_call(model, params, (x,))
    assert type(out.grad_fn).__name__.startswith(node)
    out.backward(g)
    _, pullback = vjp(lambda x, p: functional_call(model, p, (x,)), x, params)
    reference_x, reference = pullback(g)
    torch.testing.assert_close(x.grad, reference_x, rtol=1e-12, atol=1e-12)
    for name, value in params.items():
        torch.testing.assert_close(value.grad, reference[name], rtol=1e-12, atol=1e-12)
