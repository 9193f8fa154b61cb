"""torch.compile(model, fullgraph=True): no graph break in any mode, and the compiled forward
and backward equal eager (relative 1e-5 of the largest magnitude, float32).

Every mode and option is traced with the ``aot_eager`` backend (dynamo + AOT autograd, the
parts that see graph breaks and trace the custom backward); one representative stack (gated
mhc/simplex) also goes through the default inductor backend (slow: ~20-40 s cold).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mhc_torch import MHCSequential

KINDS = [("residual", "simplex"), ("hc", "simplex"), ("mhc", "simplex"), ("mhc", "softmax"),
         ("mhc", "identity")]


def stack(seed: int = 0, **kwargs) -> MHCSequential:
    torch.manual_seed(seed)
    model = MHCSequential([nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(4)],
                          max_history=3, **kwargs)
    with torch.no_grad():
        if model.theta is not None:
            model.theta.copy_(torch.randn_like(model.theta))
        if model.gamma is not None:
            model.gamma.copy_(torch.randn_like(model.gamma))
    return model


def run(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    out = model(x)
    out.square().sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


def assert_matches(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item(), msg=what)


def check_compiled(model: MHCSequential, backend: str, calls: int = 1) -> None:
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    x = torch.randn(5, 8)
    for _ in range(calls):
        model.reset_history()
        out_c, grads_c = run(compiled, x)
        model.reset_history()
        out_e, grads_e = run(model, x)
        assert_matches(out_c, out_e, "output")
        for name, gc, ge in zip([n for n, _ in model.named_parameters()], grads_c, grads_e,
                                strict=True):
            assert_matches(gc, ge, f"gradient of {name}")


@pytest.mark.slow
@pytest.mark.parametrize("gating", [False, True], ids=["ungated", "gated"])
@pytest.mark.parametrize(("mode", "constraint"), KINDS)
def test_fullgraph_every_mode(mode: str, constraint: str, gating: bool) -> None:
    check_compiled(stack(mode=mode, constraint=constraint, gating=gating), "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("option", ["checkpoint", "detach_history", "carry_history"])
def test_fullgraph_options(option: str) -> None:
    model = stack(gating=True, **{option: True})
    check_compiled(model, "aot_eager", calls=2)


@pytest.mark.slow
def test_highway_capture_is_skipped_inside_a_compiled_forward() -> None:
    model = stack()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    model.capture_highway()
    compiled(torch.randn(5, 8)).sum().backward()
    assert model.pop_highway() is None


@pytest.mark.slow
def test_inductor() -> None:
    check_compiled(stack(mode="mhc", constraint="simplex", gating=True), "inductor")
