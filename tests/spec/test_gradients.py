"""The hand-derived reverse mode agrees with central finite differences (float64) for
every golden-vector case, on every input and parameter."""

import numpy as np
import pytest

from mhc_spec import backward, forward
from mhc_spec.vectors import default_directory, load_vectors

CASES = load_vectors(default_directory())
MAX_RELATIVE_ERROR = 1e-6
# init="newest" puts sparsemax exactly at a support change (the three old logits sit on the
# threshold): there the reference gradient is the one-sided derivative of mhc_spec's
# convention support = {a > 0}, so theta is checked with one-sided differences.
AT_SUPPORT_CHANGE = {"init_mhc-simplex_newest", "init_mhc-identity_newest"}


def loss(case, inputs):
    trace = forward(case.config, inputs["x"], inputs["theta"], inputs["gamma"], case.kind,
                    inputs["weight"], inputs["bias"])
    return float(np.sum(inputs["grad_output"] * trace.output))


# A power of two: original +- STEP is exact for every |original| < 2**32, so the difference
# quotient has no representation error even at the 1e4 logits.
STEP = 2.0**-20


def finite_difference(case, name, directions=None):
    """Central differences, or one-sided ones along +-1 ``directions`` per coordinate."""
    base = {k: None if v is None else v.copy() for k, v in case.inputs.items()}
    values = base[name]
    out = np.zeros_like(values)
    center = loss(case, base)
    for index in np.ndindex(values.shape):
        original = values[index]
        if directions is None:
            values[index] = original + STEP
            up = loss(case, base)
            values[index] = original - STEP
            out[index] = (up - loss(case, base)) / (2 * STEP)
        else:
            step = directions[index] * STEP
            values[index] = original + step
            out[index] = (loss(case, base) - center) / step
        values[index] = original
    return out, center


def assert_close(analytic, numeric, loss_value, name):
    """max|analytic - numeric| <= 1e-6 max|numeric| + the differences' round-off bound
    4 eps max(1, |loss|) / STEP (it matters only for gradients far below the loss's scale)."""
    error = np.max(np.abs(analytic - numeric))
    floor = 4 * np.finfo(np.float64).eps * max(1.0, abs(loss_value)) / STEP
    assert error <= MAX_RELATIVE_ERROR * np.max(np.abs(numeric)) + floor, (name, error)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_reference_gradients_match_finite_differences(case):
    i = case.inputs
    args = (i["theta"], i["gamma"], case.kind, i["weight"], i["bias"])
    trace = forward(case.config, i["x"], *args)
    grads = backward(case.config, trace, *args, i["grad_output"])
    checked = {"x": grads.x, "weight": grads.weight, "bias": grads.bias,
               "theta": grads.theta, "gamma": grads.gamma}
    for name, analytic in checked.items():
        if i[name] is None:
            assert analytic is None, name
            continue
        directions = None
        if name == "theta" and case.name in AT_SUPPORT_CHANGE:
            # Off-support logits move down, support members up: the support stays put.
            directions = np.where(trace.weights > 0, 1.0, -1.0)
        numeric, loss_value = finite_difference(case, name, directions)
        assert_close(analytic, numeric, loss_value, name)


def test_state_gradients_are_the_adjoints():
    # dLoss/ds_l from the reverse mode equals a finite difference on a perturbation added
    # to s_l inside the recurrence (checked on one case with a window of 4).
    case = next(c for c in CASES if c.name == "grid_mhc-simplex_H4_L9")
    i = case.inputs
    args = (i["theta"], i["gamma"], case.kind, i["weight"], i["bias"])
    grads = backward(case.config, forward(case.config, i["x"], *args), *args, i["grad_output"])
    from mhc_spec import recurrence

    original_block_forward = recurrence.block_forward
    rng = np.random.default_rng(0)
    for layer in (0, 4, 8):
        direction = rng.standard_normal(i["x"].shape)
        values = []
        for sign in (1, -1):
            calls = {"n": 0}

            def perturbed(kind, w, b, s, sign=sign, calls=calls, layer=layer,
                          direction=direction):
                # The block of layer l+1 runs right after s_l exists: perturb s_l there.
                y = original_block_forward(kind, w, b, s)
                calls["n"] += 1
                return y + (sign * 1e-6 * direction if calls["n"] == layer else 0.0)

            recurrence.block_forward = perturbed
            try:
                if layer == 0:
                    out = forward(case.config, i["x"] + sign * 1e-6 * direction, *args).output
                else:
                    out = forward(case.config, i["x"], *args).output
            finally:
                recurrence.block_forward = original_block_forward
            values.append(np.sum(i["grad_output"] * out))
        numeric = (values[0] - values[1]) / 2e-6
        np.testing.assert_allclose(np.sum(grads.states[layer] * direction), numeric, rtol=1e-6)
