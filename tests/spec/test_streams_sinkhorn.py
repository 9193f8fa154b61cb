"""Sinkhorn-Knopp: the issue's iteration exactly (columns, then rows, T times), rows summing
to 1, columns converging, and the reverse mode through all T iterations."""

import numpy as np
import pytest

from mhc_spec.streams import sinkhorn, sinkhorn_vjp

STEP = 2.0**-20


def test_one_iteration_by_hand():
    # exp(Z) = [[1, 2], [3, 4]]: columns -> [[1/4, 1/3], [3/4, 2/3]], rows -> 3/7, 4/7; 9/17, 8/17.
    z = np.log(np.array([[1.0, 2.0], [3.0, 4.0]]))
    expected = np.array([[3 / 7, 4 / 7], [9 / 17, 8 / 17]])
    np.testing.assert_allclose(sinkhorn(z, 1), expected, rtol=1e-15)
    # Two iterations: one more column then row normalisation of the matrix above.
    c = expected / expected.sum(axis=0)
    np.testing.assert_allclose(sinkhorn(z, 2), c / c.sum(axis=1, keepdims=True), rtol=1e-15)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("iterations", [1, 5, 20])
def test_rows_sum_to_one_in_float32_and_float64(n, iterations):
    z = 2.0 * np.random.default_rng(n).standard_normal((64, n, n))
    m64 = sinkhorn(z, iterations)
    assert m64.dtype == np.float64
    assert np.all(m64 > 0)
    # Exact up to the rounding of n divisions and n - 1 additions.
    np.testing.assert_allclose(m64.sum(axis=-1), 1.0, rtol=0, atol=n * np.finfo(float).eps)
    m32 = sinkhorn(z.astype(np.float32), iterations)
    assert m32.dtype == np.float32
    assert np.abs(m32.sum(axis=-1, dtype=np.float32) - 1).max() <= 1e-6
    assert np.abs(m32.astype(np.float64).sum(axis=-1) - 1).max() <= 1e-6


@pytest.mark.parametrize("n", [2, 3, 4])
def test_columns_approach_one_as_t_grows(n):
    z = 2.0 * np.random.default_rng(10 + n).standard_normal((32, n, n))
    # The L1 error of the column sums never increases from one iteration to the next.
    errors = np.array([np.abs(sinkhorn(z, t).sum(axis=-2) - 1).sum(axis=-1)
                       for t in range(1, 41)])
    assert np.all(np.diff(errors, axis=0) <= 1e-15)
    assert errors[0].max() > 0.1
    assert errors[19].max() < errors[4].max() < errors[0].max()
    np.testing.assert_allclose(sinkhorn(z, 400).sum(axis=-2), 1.0, atol=1e-9)


def test_doubly_stochastic_logits_are_a_fixed_point_and_shifts_do_not_matter():
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.4, 0.1, 0.5]])
    np.testing.assert_allclose(sinkhorn(np.log(p), 20), p, rtol=1e-14)
    z = np.random.default_rng(0).standard_normal((4, 4))
    np.testing.assert_allclose(sinkhorn(z + 123.0, 7), sinkhorn(z, 7), rtol=1e-13)


def test_one_stream_is_exactly_one():
    np.testing.assert_array_equal(sinkhorn(np.array([[[5.0]], [[-700.0]]]), 20), 1.0)


def test_large_logits_do_not_overflow():
    z = np.array([[800.0, 760.0], [770.0, 790.0]])
    m = sinkhorn(z, 20)
    assert np.all(np.isfinite(m))
    np.testing.assert_allclose(m, sinkhorn(z - 780.0, 20), rtol=1e-12)


def finite_difference(z, iterations, g):
    out = np.zeros_like(z)
    for index in np.ndindex(z.shape):
        up, down = z.copy(), z.copy()
        up[index] += STEP
        down[index] -= STEP
        out[index] = (np.sum(g * sinkhorn(up, iterations))
                      - np.sum(g * sinkhorn(down, iterations))) / (2 * STEP)
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("iterations", [1, 2, 5, 20])
def test_vjp_matches_finite_differences(n, iterations):
    rng = np.random.default_rng(100 * n + iterations)
    z = 1.5 * rng.standard_normal((3, n, n))
    g = rng.standard_normal((3, n, n))
    analytic = sinkhorn_vjp(z, iterations, g)
    numeric = finite_difference(z, iterations, g)
    floor = 4 * np.finfo(np.float64).eps * max(1.0, np.abs(g).sum()) / STEP
    assert np.abs(analytic - numeric).max() <= 1e-6 * np.abs(numeric).max() + floor
    # SK(Z + c) = SK(Z): the gradient has no component along the constant shift.
    np.testing.assert_allclose(analytic.sum(axis=(-2, -1)), 0.0, atol=1e-14)
    if n == 1:
        np.testing.assert_array_equal(analytic, 0.0)


def test_vjp_keeps_float32():
    z = np.random.default_rng(0).standard_normal((2, 3, 3)).astype(np.float32)
    assert sinkhorn_vjp(z, 5, np.ones_like(z)).dtype == np.float32


def test_iterations_are_validated():
    with pytest.raises(ValueError, match="sinkhorn_iterations=0"):
        sinkhorn(np.zeros((2, 2)), 0)
    with pytest.raises(TypeError, match=r"sinkhorn_iterations=2\.0"):
        sinkhorn_vjp(np.zeros((2, 2)), 2.0, np.zeros((2, 2)))
