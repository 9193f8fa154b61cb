"""Finite-difference checks (float64) of every gradient of MHCSequential: the input, theta,
gamma and the blocks' parameters, for every mode and constraint, with and without gating
and activation checkpointing."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from mhc_torch import MHCSequential

KINDS = [("residual", "simplex"), ("hc", "simplex"), ("mhc", "simplex"), ("mhc", "softmax"),
         ("mhc", "identity")]


def small_stack(mode: str, constraint: str, gating: bool, checkpoint: bool) -> MHCSequential:
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(2, 2), nn.Tanh()) for _ in range(4)]
    model = MHCSequential(blocks, max_history=3, mode=mode, constraint=constraint,
                          temperature=0.8, epsilon=0.2, gating=gating,
                          checkpoint=checkpoint).double()
    with torch.no_grad():
        if model.theta is not None:
            model.theta.copy_(torch.randn_like(model.theta))
        if model.gamma is not None:
            model.gamma.copy_(torch.randn_like(model.gamma))
    return model


@pytest.mark.parametrize("checkpoint", [False, True], ids=["plain", "checkpoint"])
@pytest.mark.parametrize("gating", [False, True], ids=["ungated", "gated"])
@pytest.mark.parametrize(("mode", "constraint"), KINDS, ids=lambda v: v)
def test_gradcheck(mode: str, constraint: str, gating: bool, checkpoint: bool) -> None:
    model = small_stack(mode, constraint, gating, checkpoint)
    names = [name for name, _ in model.named_parameters()]
    x = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]

    def run(x, *values):
        return functional_call(model, dict(zip(names, values, strict=True)), (x,))

    assert torch.autograd.gradcheck(run, (x, *params))


@pytest.mark.parametrize("gating", [False, True], ids=["ungated", "gated"])
def test_gradcheck_with_a_carried_history(gating: bool) -> None:
    """After a first call (carry_history=True) the carried states are constants; gradients
    of the second call are exact for its input and parameters."""
    model = small_stack("mhc", "simplex", gating, checkpoint=False)
    model.carry_history = True
    model(torch.randn(2, 2, dtype=torch.float64))
    carried = model.history.states
    names = [name for name, _ in model.named_parameters()]
    x = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]

    def run(x, *values):
        model.history.reset()
        for state in carried:
            model.history.push(state)
        return functional_call(model, dict(zip(names, values, strict=True)), (x,))

    assert torch.autograd.gradcheck(run, (x, *params))
