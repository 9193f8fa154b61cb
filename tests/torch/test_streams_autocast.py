"""Under CPU bfloat16 autocast the coefficient maths (RMSNorm, projections, sigmoids,
Sinkhorn) runs in float32: layer 1's coefficients, whose input is h itself, equal the float32
run's to float32 rounding (bf16 projections would be off by ~1e-3), the streams keep the
input's dtype, and the result tracks the float32 run to bf16 accuracy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mhc_torch import StreamSequential


def stack(dynamic: bool, mode: str) -> StreamSequential:
    torch.manual_seed(0)
    model = StreamSequential([nn.Sequential(nn.Linear(32, 32), nn.GELU()) for _ in range(6)],
                             width=32, dynamic=dynamic, mode=mode, reduce="gated")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("blocks."):
                p.add_(0.3 * torch.randn(p.shape, generator=generator))
    return model


@pytest.mark.parametrize(("dynamic", "mode"), [(True, "mhc"), (False, "mhc"), (True, "hc")])
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_bf16_autocast(dynamic: bool, mode: str, input_dtype: torch.dtype) -> None:
    model = stack(dynamic, mode)
    model.record_coefficients = True
    h = torch.randn(16, 32).to(input_dtype)
    reference = model(h.float())
    first = [c[0] for c in model.recorded_coefficients]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(h)
        record = model.recorded_coefficients
        with torch.no_grad():
            out_no_grad = model(h)
    assert all(c.dtype == torch.float32 for c in record)
    for got, want in zip(record, first, strict=True):
        torch.testing.assert_close(got[0], want, rtol=1e-6, atol=1e-6)
    assert out.dtype == input_dtype and out_no_grad.dtype == input_dtype
    assert torch.isfinite(out).all() and torch.isfinite(out_no_grad).all()
    assert (out.float() - reference).abs().max() < 0.05 * reference.abs().max()
    out.float().square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name
