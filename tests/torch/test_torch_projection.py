"""Projections of mhc_torch against mhc_spec: exact sparsemax, its backward, padded weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mhc_spec import MHCConfig, padded_weights, project, sparsemax_vjp
from mhc_spec import sparsemax as spec_sparsemax
from mhc_torch.projection import (
    mixing_coefficients,
    pairwise_threshold,
    sorted_threshold,
    sparsemax,
    window_mask,
)
from mhc_torch.projection import padded_weights as torch_padded_weights

KINDS = [("residual", "simplex"), ("hc", "simplex"), ("mhc", "simplex"), ("mhc", "softmax"),
         ("mhc", "identity")]


def test_sparsemax_matches_spec_with_exact_zeros() -> None:
    rng = np.random.default_rng(0)
    z = rng.standard_normal((200, 7)) * rng.choice([0.1, 1.0, 10.0], size=(200, 1))
    a = sparsemax(torch.tensor(z)).numpy()
    expected = spec_sparsemax(z)
    np.testing.assert_allclose(a, expected, rtol=1e-12, atol=1e-15)
    assert np.array_equal(a == 0.0, expected == 0.0)
    assert (a == 0.0).sum() > 100  # the draw really exercises exact zeros
    np.testing.assert_allclose(a.sum(-1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("z", [
    [2.0, 2.0, 2.0, -5.0],          # ties inside the support
    [3.0, -2.0, 0.0, 1.0],          # zeros and a partial support
    [0.0, 1.0, 0.75, 1.5],          # 0.75 sits exactly on the support boundary
    [0.3, 0.3, 1.0, 1.0],
    [1e4, -1e4, 1e4 - 0.25, 1e4],  # huge logits
    [0.0, 0.0, 0.0, 0.0],
], ids=str)
def test_sparsemax_backward_follows_the_spec_convention(z: list[float]) -> None:
    """support = {a > 0}: at a support boundary the zero stays zero (one-sided derivative)."""
    g = np.array([0.7, -1.3, 0.4, 2.0])
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    a = sparsemax(zt)
    a.backward(torch.tensor(g))
    expected_a = spec_sparsemax(np.array(z))
    np.testing.assert_allclose(a.detach().numpy(), expected_a, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(zt.grad.numpy(), sparsemax_vjp(expected_a, g), rtol=1e-12,
                               atol=1e-15)


def test_sparsemax_masked_entries_are_exact_zeros_with_zero_gradient() -> None:
    z = torch.tensor([[float("-inf"), float("-inf"), 0.3, 1.0],
                      [float("-inf"), 5.0, -5.0, 0.0]], dtype=torch.float64)
    leaf = torch.zeros_like(z, requires_grad=True)
    a = sparsemax(torch.where(torch.isinf(z), z, z + leaf))
    a.backward(torch.randn_like(a))
    assert torch.all(a[:, :1] == 0.0) and a[0, 1] == 0.0
    assert torch.isfinite(leaf.grad).all()
    assert torch.all(leaf.grad[torch.isinf(z)] == 0.0)


@pytest.mark.parametrize("threshold", [sorted_threshold, pairwise_threshold])
@pytest.mark.parametrize("width", [1, 2, 3, 4, 7, 16, 33, 64])
def test_both_thresholds_give_the_spec_projection_with_ties_and_masks(threshold, width: int
                                                                      ) -> None:
    """max(z - tau, 0) with either threshold (the operator path's and the compiled path's)
    against the spec's sparsemax of each row's available entries; -inf entries give 0."""
    rng = np.random.default_rng(width)
    z = rng.standard_normal((60, width)) * rng.choice([0.05, 1.0, 20.0], size=(60, 1))
    z[::4] = np.round(z[::4])  # ties, inside and at the edge of the support
    z[1::5] = 0.5
    masked = np.zeros_like(z, dtype=bool)
    if width > 1:
        masked[2::3, : width // 2] = True  # as window_mask does: the oldest slots
    shifted = torch.tensor(np.where(masked, -np.inf, z))
    shifted = shifted - shifted.amax(dim=-1, keepdim=True)
    a = torch.clamp(shifted - threshold(shifted), min=0.0).numpy()
    for row, (values, hidden) in enumerate(zip(z, masked, strict=True)):
        expected = np.zeros(width)
        expected[~hidden] = spec_sparsemax(values[~hidden])
        np.testing.assert_allclose(a[row], expected, rtol=1e-12, atol=1e-14)
        assert np.array_equal(a[row] == 0.0, expected == 0.0)


def test_sparsemax_gradcheck() -> None:
    z = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(sparsemax, (z,))


@pytest.mark.parametrize(("mode", "constraint"), KINDS)
@pytest.mark.parametrize(("h", "depth"), [(1, 3), (3, 2), (4, 6), (5, 9)])
def test_padded_weights_match_spec(mode: str, constraint: str, h: int, depth: int) -> None:
    config = MHCConfig(max_history=h, mode=mode, constraint=constraint, temperature=0.7,
                       epsilon=0.25)
    theta = np.random.default_rng(h * depth).standard_normal((depth, h))
    mask = window_mask(depth, h, 0, torch.device("cpu"))
    ours = torch_padded_weights(config, torch.tensor(theta), mask, torch.float64)
    np.testing.assert_allclose(ours.numpy(), padded_weights(config, theta, depth), rtol=1e-12,
                               atol=1e-15)


@pytest.mark.parametrize("carried", [1, 2, 3])
def test_window_mask_with_carried_states(carried: int) -> None:
    """With c carried states layer l sees K = min(H, l + c) states; row = spec's projection."""
    h, depth = 4, 5
    config = MHCConfig(max_history=h)
    theta = np.random.default_rng(carried).standard_normal((depth, h))
    mask = window_mask(depth, h, carried, torch.device("cpu"))
    ours = torch_padded_weights(config, torch.tensor(theta), mask, torch.float64).numpy()
    for layer in range(1, depth + 1):
        k = min(h, layer + carried)
        assert mask[layer - 1].sum().item() == k
        expected = np.zeros(h)
        expected[h - k:] = project(config, theta[layer - 1, h - k:], k)
        np.testing.assert_allclose(ours[layer - 1], expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("mode", "constraint"), KINDS[1:])
def test_coefficients_under_autocast_stay_float32_and_finite(mode: str, constraint: str) -> None:
    config = MHCConfig(max_history=4, mode=mode, constraint=constraint, temperature=1e-3,
                       gating=True)
    theta = (1e4 * torch.randn(6, 4)).requires_grad_()
    gamma = torch.randn(6, requires_grad=True)
    mask = window_mask(6, 4, 0, torch.device("cpu"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c = mixing_coefficients(config, theta, gamma, mask, torch.float32)
    assert c.dtype == torch.float32
    c.square().sum().backward()
    assert torch.isfinite(c).all() and torch.isfinite(theta.grad).all()
    assert torch.isfinite(gamma.grad).all()
