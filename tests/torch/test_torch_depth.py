"""The user guide's deep stack: 50 x nn.Linear(64, 64), max_history=4, mode="mhc".

With gradients through the history the first layer learns about as fast as the last (a plain
residual stack gives a ratio of order 1); detaching the history (the failure this library
must not repeat) starves it by many orders of magnitude.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mhc_torch import MHCSequential


def weight_gradient_ratio(seed: int, **kwargs) -> float:
    torch.manual_seed(seed)
    model = MHCSequential([nn.Linear(64, 64) for _ in range(50)], max_history=4, mode="mhc",
                          **kwargs)
    x, target = torch.randn(32, 64), torch.randn(32, 64)
    nn.functional.mse_loss(model(x), target).backward()
    first = model.layers[0].weight.grad.norm()
    last = model.layers[-1].weight.grad.norm()
    return (first / last).item()


@pytest.mark.parametrize("seed", [0, 1])
def test_first_layer_gradient_within_2x_of_the_last(seed: int) -> None:
    assert 0.5 <= weight_gradient_ratio(seed) <= 2.0


def test_detached_history_starves_the_first_layer() -> None:
    assert weight_gradient_ratio(0, detach_history=True) < 1e-6
