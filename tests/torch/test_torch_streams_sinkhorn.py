"""mhc_torch.streams.sinkhorn (one autograd node, hand-derived reverse mode) against the
spec's NumPy Sinkhorn-Knopp and its VJP, finite differences, and its plain-operation twin."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mhc_spec.streams import sinkhorn as spec_sinkhorn
from mhc_spec.streams import sinkhorn_vjp as spec_sinkhorn_vjp
from mhc_torch.streams import sinkhorn
from mhc_torch.streams.sinkhorn import sinkhorn_reference


@pytest.mark.parametrize("iterations", [1, 7, 20])
@pytest.mark.parametrize(("shape", "scale"), [((2, 3, 4, 4), 1.0), ((5, 3, 3), 30.0),
                                              ((4, 1, 1), 1.0), ((2, 2), 3.0)])
def test_matches_spec(iterations: int, shape: tuple[int, ...], scale: float) -> None:
    rng = np.random.default_rng(iterations)
    logits = scale * rng.standard_normal(shape)
    cotangent = rng.standard_normal(shape)
    z = torch.tensor(logits, requires_grad=True)
    out = sinkhorn(z, iterations)
    out.backward(torch.tensor(cotangent))
    np.testing.assert_allclose(out.detach().numpy(), spec_sinkhorn(logits, iterations),
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(z.grad.numpy(), spec_sinkhorn_vjp(logits, iterations, cotangent),
                               rtol=1e-10, atol=1e-12 * np.abs(cotangent).max())


def test_plain_operations_agree() -> None:
    z = torch.randn(6, 4, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(6, 4, 4, dtype=torch.float64)
    (grad_node,) = torch.autograd.grad(sinkhorn(z, 20), z, g)
    (grad_plain,) = torch.autograd.grad(sinkhorn_reference(z, 20), z, g)
    torch.testing.assert_close(sinkhorn(z, 20), sinkhorn_reference(z, 20), rtol=1e-13, atol=0)
    torch.testing.assert_close(grad_node, grad_plain, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("iterations", [1, 5])
def test_gradcheck(iterations: int) -> None:
    z = torch.randn(3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: sinkhorn(x, iterations), (z,))


def test_float32_rows_sum_to_one() -> None:
    torch.manual_seed(0)
    for scale in (0.1, 1.0, 10.0):
        out = sinkhorn(scale * torch.randn(512, 4, 4), 20)
        assert out.dtype == torch.float32
        assert (out.sum(dim=-1) - 1).abs().max() < 1e-6
        assert (out >= 0).all()
