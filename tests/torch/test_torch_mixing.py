"""mhc_torch.mixing.mix_into: s = y + sum_j c_j W_j, with the coefficients as one (K,) tensor
(the compiled path) or as K 0-d tensors (eager), checked against the sum written out."""

from __future__ import annotations

import pytest
import torch

from mhc_torch.mixing import mix_into


def test_both_coefficient_forms_give_the_weighted_sum_and_its_gradients() -> None:
    torch.manual_seed(0)
    y = torch.randn(3, 5, dtype=torch.float64)
    window = [torch.randn(3, 5, dtype=torch.float64) for _ in range(3)]
    c = torch.tensor([0.2, -0.7, 1.3], dtype=torch.float64)
    expected = y + 0.2 * window[0] - 0.7 * window[1] + 1.3 * window[2]
    g = torch.randn(3, 5, dtype=torch.float64)
    for form in ("tensor", "unbound"):
        coefficients = c.clone().requires_grad_()
        states = [w.clone().requires_grad_() for w in window]
        taken = coefficients if form == "tensor" else coefficients.unbind(0)
        out = mix_into(y, states, taken)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
        out.backward(g)
        torch.testing.assert_close(coefficients.grad, torch.stack([(g * w).sum() for w in window]))
        for state, weight in zip(states, c, strict=True):
            torch.testing.assert_close(state.grad, weight * g)


@pytest.mark.parametrize("count", [2, 4])
def test_a_coefficient_count_other_than_the_window_is_refused(count: int) -> None:
    window = [torch.zeros(2) for _ in range(3)]
    with pytest.raises(ValueError, match=f"{count} coefficients for a window of 3 states"):
        mix_into(torch.zeros(2), window, torch.ones(count))
