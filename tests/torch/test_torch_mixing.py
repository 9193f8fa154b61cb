"""mhc_torch.mixing.mix_into: s = y + sum_j c_j W_j, with the coefficients as one (K,) tensor,
as K 0-d tensors (eager) or as the (K, C) rows of width_rows (the compiled path), checked
against the sum written out."""

from __future__ import annotations

import pytest
import torch

from mhc_torch.mixing import mix_into, width_rows


def test_both_coefficient_forms_give_the_weighted_sum_and_its_gradients() -> None:
    torch.manual_seed(0)
    y = torch.randn(3, 5, dtype=torch.float64)
    window = [torch.randn(3, 5, dtype=torch.float64) for _ in range(3)]
    c = torch.tensor([0.2, -0.7, 1.3], dtype=torch.float64)
    expected = y + 0.2 * window[0] - 0.7 * window[1] + 1.3 * window[2]
    g = torch.randn(3, 5, dtype=torch.float64)
    for form in ("tensor", "unbound", "rows"):
        coefficients = c.clone().requires_grad_()
        states = [w.clone().requires_grad_() for w in window]
        taken = {"tensor": coefficients, "unbound": coefficients.unbind(0),
                 "rows": width_rows(coefficients, y, states)}[form]
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


def test_width_rows_take_the_last_entries_of_the_row_for_a_short_window() -> None:
    row = torch.tensor([0.1, 0.2, 0.3, 0.4], requires_grad=True)
    y = torch.zeros(2, 3)
    window = [torch.full((2, 3), 1.0), torch.full((2, 3), 10.0)]
    rows = width_rows(row, y, window)
    assert rows.shape == (2, 3)
    torch.testing.assert_close(mix_into(y, window, rows), torch.full((2, 3), 0.3 + 4.0))
    mix_into(y, window, rows).sum().backward()
    torch.testing.assert_close(row.grad, torch.tensor([0.0, 0.0, 6.0, 60.0]))


@pytest.mark.parametrize(("states", "expected"), [
    ((torch.bfloat16, torch.bfloat16), torch.bfloat16),
    ((torch.float32, torch.bfloat16), torch.float32),
])
def test_width_rows_keep_the_dtype_a_0d_coefficient_gives(states, expected) -> None:
    row = torch.tensor([0.25, 0.75])
    y = torch.ones(2, 3, dtype=torch.bfloat16)
    window = [torch.ones(2, 3, dtype=dtype) for dtype in states]
    assert width_rows(row, y, window).dtype == expected
    out = mix_into(y, window, width_rows(row, y, window))
    assert out.dtype == mix_into(y, window, row.unbind(0)).dtype == expected
