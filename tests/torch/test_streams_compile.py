"""torch.compile(StreamSequential, fullgraph=True): no graph break, and the compiled forward
and backward (plain operations traced by the compiler) equal the eager ones (hand-derived
autograd nodes) to 1e-10 of the largest magnitude, in float64 (in float32 the two round
differently, and gradients such as phi_res's, sums over tokens that cancel, then differ by
~1e-5 while both are that close to the float64 values). The default inductor backend takes
one dynamic mhc stack (~15 s cold); a static gated one goes through aot_eager."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mhc_torch import StreamSequential


def stack(**kwargs) -> StreamSequential:
    torch.manual_seed(0)
    model = StreamSequential([nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(2)],
                             width=8, streams=3, sinkhorn_iterations=3, **kwargs)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("blocks."):
                p.add_(0.5 * torch.randn_like(p))
    return model.double()


def run(model: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    out = model(h)
    out.square().sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize(("backend", "kwargs"), [
    ("inductor", {"mode": "mhc", "dynamic": True, "reduce": "sum"}),
    ("aot_eager", {"mode": "mhc", "dynamic": False, "reduce": "gated"}),
])
def test_compiled_equals_eager(backend: str, kwargs: dict) -> None:
    torch._dynamo.reset()
    model = stack(**kwargs)
    h = torch.randn(2, 5, 8, dtype=torch.float64)
    out_eager, grads_eager = run(model, h)
    out_compiled, grads_compiled = run(torch.compile(model, fullgraph=True, backend=backend), h)
    scale = out_eager.abs().max().item()
    torch.testing.assert_close(out_compiled, out_eager, rtol=1e-10, atol=1e-10 * scale)
    for got, want in zip(grads_compiled, grads_eager, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10 * want.abs().max().item())
