"""Mixed precision: under CPU bf16 autocast the mixing coefficients stay float32, nothing is
NaN, and the result tracks the float32 run to bf16 accuracy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mhc_torch import MHCSequential

KINDS = [("residual", "simplex", True), ("hc", "simplex", False), ("mhc", "simplex", False),
         ("mhc", "softmax", True), ("mhc", "identity", False)]


def stack(mode: str, constraint: str, gating: bool) -> MHCSequential:
    torch.manual_seed(0)
    return MHCSequential([nn.Sequential(nn.Linear(32, 32), nn.GELU()) for _ in range(12)],
                         max_history=4, mode=mode, constraint=constraint, gating=gating,
                         temperature=0.5)


@pytest.mark.parametrize(("mode", "constraint", "gating"), KINDS)
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_bf16_autocast(mode: str, constraint: str, gating: bool, input_dtype) -> None:
    model = stack(mode, constraint, gating)
    x = torch.randn(16, 32)
    reference = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        weights = model.mixing_weights()
        out = model(x.to(input_dtype))
        with torch.no_grad():
            out_no_grad = model(x.to(input_dtype))
    assert weights.dtype == torch.float32
    assert out.dtype == input_dtype
    assert torch.isfinite(out).all() and torch.isfinite(out_no_grad).all()
    scale = reference.abs().max()
    assert (out.float() - reference).abs().max() < 0.1 * scale
    out.float().square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name
