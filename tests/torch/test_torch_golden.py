"""Every golden vector of the spec, reproduced by MHCSequential and by an MHCSkip loop.

Blocks are nn.Linear (+ nn.Tanh for "tanh_linear") with the case's weights; each block is
wrapped in a probe that records its input s_{l-1} and adds a zero parameter delta_l to its
output, so dLoss/d delta_l = dLoss/ds_l (s_l = y_l + mix). Tolerances: float64 cases rtol
1e-10, float32 cases (run in float32) rtol 1e-5; atol is the same factor times the largest
expected magnitude, a norm-wise bound for entries near zero.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch_golden_models import (
    CASES,
    DTYPES,
    SkipLoop,
    assert_close,
    case_model,
    linear_of,
    tensor,
)

from mhc_spec.vectors import GoldenCase


class Probe(nn.Module):
    """f(s) + delta, remembering s: exposes s_{l-1} and dLoss/ds_l of the stack."""

    def __init__(self, block: nn.Module, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        super().__init__()
        self.block = block
        self.delta = nn.Parameter(torch.zeros(shape, dtype=dtype))
        self.seen: torch.Tensor | None = None

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        if not torch._C._are_functorch_transforms_active():
            self.seen = s.detach().clone()
        return self.block(s) + self.delta


def probed_model(case: GoldenCase, dtype: torch.dtype):
    model = case_model(case, dtype)
    shape = case.inputs["x"].shape
    probes = [Probe(block, shape, dtype) for block in model.layers]
    model.layers = nn.ModuleList(probes)
    return model, probes


def check_gradients(case: GoldenCase, dtype, grads: dict[str, torch.Tensor]) -> None:
    expected = case.expected["gradients"]
    for name, value in grads.items():
        assert_close(value, expected[name], dtype, f"{case.name}: gradient of {name}")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_eager_training_path(case: GoldenCase) -> None:
    dtype = DTYPES[case.dtype]
    model, probes = probed_model(case, dtype)
    x = tensor(case.inputs["x"], dtype, requires_grad=True)
    model.capture_highway()
    out = model(x)
    (out * tensor(case.inputs["grad_output"], dtype)).sum().backward()

    states = torch.stack([p.seen for p in probes] + [out.detach()])
    assert_close(states, case.expected["states"], dtype, f"{case.name}: states")
    assert_close(model.mixing_weights(), case.expected["weights"], dtype, "weights")
    assert_close(model.gates(), case.expected["gates"], dtype, "gates")
    grads = {
        "x": x.grad,
        "weight": torch.stack([linear_of(p.block).weight.grad for p in probes]),
        "bias": torch.stack([linear_of(p.block).bias.grad for p in probes]),
        "states": torch.stack([x.grad] + [p.delta.grad for p in probes]),
    }
    if model.theta is not None:
        grads["theta"] = model.theta.grad
    if model.gamma is not None:
        grads["gamma"] = model.gamma.grad
    check_gradients(case, dtype, grads)
    assert_close(model.pop_highway(), case.expected["statistics"]["highway"], dtype, "highway")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_forward_without_gradients(case: GoldenCase) -> None:
    dtype = DTYPES[case.dtype]
    model, probes = probed_model(case, dtype)
    with torch.no_grad():
        out = model(tensor(case.inputs["x"], dtype))
    states = torch.stack([p.seen for p in probes] + [out])
    assert_close(states, case.expected["states"], dtype, f"{case.name}: states (no grad)")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_functional_path_gradients_under_torch_func(case: GoldenCase) -> None:
    """torch.func transforms run the plain-operation path; its vjp must match the spec too."""
    dtype = DTYPES[case.dtype]
    model, _ = probed_model(case, dtype)
    params = dict(model.named_parameters())
    x = tensor(case.inputs["x"], dtype)

    def run(x, params):
        return torch.func.functional_call(model, params, (x,))

    out, vjp = torch.func.vjp(run, x, params)
    assert_close(out, case.expected["states"][-1], dtype, f"{case.name}: output")
    dx, dparams = vjp(tensor(case.inputs["grad_output"], dtype))
    linear = "block" if case.kind == "linear" else "block.0"
    grads = {
        "x": dx,
        "weight": torch.stack([dparams[f"layers.{i}.{linear}.weight"] for i in range(case.depth)]),
        "bias": torch.stack([dparams[f"layers.{i}.{linear}.bias"] for i in range(case.depth)]),
        "states": torch.stack([dx] + [dparams[f"layers.{i}.delta"] for i in range(case.depth)]),
    }
    if model.theta is not None:
        grads["theta"] = dparams["theta"]
    if model.gamma is not None:
        grads["gamma"] = dparams["gamma"]
    check_gradients(case, dtype, grads)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_skip_loop(case: GoldenCase) -> None:
    """A hand-written loop of MHCSkip + HistoryBuffer gives the spec's numbers."""
    dtype = DTYPES[case.dtype]
    loop = SkipLoop(case, dtype)
    x = tensor(case.inputs["x"], dtype, requires_grad=True)
    out = loop(x)
    for state in loop.states[1:]:
        state.retain_grad()
    (out * tensor(case.inputs["grad_output"], dtype)).sum().backward()
    assert_close(torch.stack([s.detach() for s in loop.states]), case.expected["states"], dtype,
                 f"{case.name}: states")
    grads = {
        "x": x.grad,
        "weight": torch.stack([linear_of(b).weight.grad for b in loop.blocks]),
        "bias": torch.stack([linear_of(b).bias.grad for b in loop.blocks]),
        "states": torch.stack([s.grad for s in loop.states]),
    }
    if case.config.has_logits:
        grads["theta"] = torch.stack([s.theta.grad for s in loop.skips])
    if case.config.gating:
        grads["gamma"] = torch.stack([s.gamma.grad for s in loop.skips])
    check_gradients(case, dtype, grads)
    h = case.config.max_history
    rows = [skip.coefficients(min(h, layer + 1)) for layer, skip in enumerate(loop.skips)]
    gates = case.expected["gates"][:, None]
    assert_close(torch.stack(rows), np.asarray(case.expected["weights"]) * gates, dtype,
                 "MHCSkip.coefficients = g * padded weights")
