"""torch.autograd.gradcheck (float64 finite differences) of the eager stream stack, whose
layers run as hand-derived autograd nodes: static and dynamic, mhc and hc, every reduce,
a user constraint, and a StreamLayer on inputs with two token axes."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from mhc_torch import StreamLayer, StreamSequential

# Both coefficient paths: the native CPU kernels and the PyTorch operations.
pytestmark = pytest.mark.usefixtures("kernel_path")


def randomise(module: nn.Module, seed: int) -> None:
    """Draw every parameter (b_res non-symmetric, phi non-zero) so no gradient vanishes."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype))


def row_softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=-1)


def check(module: nn.Module, x: torch.Tensor) -> None:
    names, values = zip(*module.named_parameters(), strict=True)

    def run(x, *values):
        return torch.func.functional_call(module, dict(zip(names, values, strict=True)), (x,))

    inputs = (x.requires_grad_(), *(v.detach().clone().requires_grad_() for v in values))
    # functional_call keeps the eager path: no torch.func transform is active here.
    assert torch.autograd.gradcheck(run, inputs, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize(("mode", "dynamic", "reduce"),
                         list(itertools.product(("mhc", "hc"), (True, False),
                                                ("sum", "mean", "gated"))))
def test_stream_sequential(mode: str, dynamic: bool, reduce: str) -> None:
    blocks = [nn.Sequential(nn.Linear(2, 2), nn.Tanh()) for _ in range(2)]
    model = StreamSequential(blocks, width=2, streams=3, mode=mode, dynamic=dynamic,
                             reduce=reduce, sinkhorn_iterations=4).double()
    randomise(model, seed=len(mode) + 2 * dynamic + len(reduce))
    check(model, torch.randn(2, 2, dtype=torch.float64))


@pytest.mark.parametrize("dynamic", [True, False])
def test_user_constraint(dynamic: bool) -> None:
    model = StreamSequential([nn.Linear(2, 2) for _ in range(2)], streams=2,
                             constraint=row_softmax, dynamic=dynamic).double()
    randomise(model, seed=5)
    check(model, torch.randn(3, 2, dtype=torch.float64))


def test_stream_layer_with_two_token_axes() -> None:
    layer = StreamLayer(nn.Linear(3, 3), width=3, streams=2, sinkhorn_iterations=3).double()
    randomise(layer, seed=7)
    check(layer, torch.randn(2, 2, 2, 3, dtype=torch.float64))
