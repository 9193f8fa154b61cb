"""The hand-derived reverse mode of the stream stack agrees with central finite differences
(float64) for every golden-vector case, on the input, every stream parameter, the reduce's
logits and the branches' weights and biases."""

import numpy as np
import pytest

from mhc_spec.blocks import block_forward
from mhc_spec.streams import (
    StreamConfig,
    backward,
    expand,
    forward,
    layer_forward,
    parameter_shapes,
    reduce,
)
from mhc_spec.streams.vectors import default_directory, load_vectors

CASES = load_vectors(default_directory())
MAX_RELATIVE_ERROR = 1e-6
# A power of two: original +- STEP is exact for every |original| < 2**32.
STEP = 2.0**-20


def loss_from(config, kind, inputs, layer, streams):
    """sum(G * output) running layers ``layer``..L-1 from the streams X_layer."""
    params, weight, bias = inputs["params"], inputs["weight"], inputs["bias"]
    for index in range(layer, len(weight)):
        def branch(u, index=index):
            return block_forward(kind, weight[index], bias[index], u)

        streams, *_ = layer_forward(config, params, index, streams, branch)
    return float(np.sum(inputs["grad_output"] * reduce(config, params, streams)))


def finite_difference(config, kind, inputs, states, array, first_layer):
    """Central differences of the loss in every entry of ``array`` (an array inside
    ``inputs``); ``first_layer(index)`` is the first layer the entry influences, so the
    unperturbed states before it are reused."""
    out = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        layer = first_layer(index)
        values = []
        original = array[index]
        for step in (STEP, -STEP):
            array[index] = original + step
            start = expand(inputs["h"], config.streams) if layer == 0 else states[layer]
            values.append(loss_from(config, kind, inputs, layer, start))
        array[index] = original
        out[index] = (values[0] - values[1]) / (2 * STEP)
    return out


def assert_close(analytic, numeric, loss_value, name):
    """max|analytic - numeric| <= 1e-6 max|numeric| + the differences' round-off bound
    4 eps max(1, |loss|) / STEP (as tests/spec/test_gradients.py)."""
    error = np.max(np.abs(analytic - numeric))
    floor = 4 * np.finfo(np.float64).eps * max(1.0, abs(loss_value)) / STEP
    assert error <= MAX_RELATIVE_ERROR * np.max(np.abs(numeric)) + floor, (name, error)


def check_every_gradient(config, kind, inputs):
    inputs = {**inputs, "params": {k: v.copy() for k, v in inputs["params"].items()},
              "h": inputs["h"].copy(), "weight": inputs["weight"].copy(),
              "bias": inputs["bias"].copy()}
    args = (inputs["params"], kind, inputs["weight"], inputs["bias"])
    trace = forward(config, inputs["h"], *args)
    grads = backward(config, trace, *args, inputs["grad_output"])
    loss_value = float(np.sum(inputs["grad_output"] * trace.output))
    assert loss_from(config, kind, inputs, 0, trace.states[0]) == loss_value
    depth = len(inputs["weight"])
    checked = [("h", inputs["h"], grads.h, lambda i: 0),
               ("weight", inputs["weight"], grads.weight, lambda i: i[0]),
               ("bias", inputs["bias"], grads.bias, lambda i: i[0])]
    for key, value in inputs["params"].items():
        per_layer = key != "streams.reduce_logits"
        checked.append((key, value, grads.params[key],
                        (lambda i: i[0]) if per_layer else (lambda i: depth)))
    assert set(grads.params) == set(inputs["params"])
    for name, array, analytic, first_layer in checked:
        assert analytic.shape == array.shape, name
        numeric = finite_difference(config, kind, inputs, trace.states, array, first_layer)
        assert_close(analytic, numeric, loss_value, name)
    return trace, grads


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_reference_gradients_match_finite_differences(case):
    check_every_gradient(case.config, case.kind, case.inputs)


def test_state_gradients_are_the_adjoints():
    case = next(c for c in CASES if c.name == "grid_n4_T20_dynamic")
    i = case.inputs
    args = (i["params"], case.kind, i["weight"], i["bias"])
    trace = forward(case.config, i["h"], *args)
    grads = backward(case.config, trace, *args, i["grad_output"])
    rng = np.random.default_rng(0)
    for layer, state in enumerate(trace.states):
        direction = rng.standard_normal(state.shape)
        up = loss_from(case.config, case.kind, i, layer, state + 1e-6 * direction)
        down = loss_from(case.config, case.kind, i, layer, state - 1e-6 * direction)
        np.testing.assert_allclose(np.sum(grads.states[layer] * direction),
                                   (up - down) / 2e-6, rtol=1e-6)
    np.testing.assert_allclose(grads.h, grads.states[0].sum(axis=-2), rtol=1e-15)


class RowSoftmax:
    """A user projection (rows on the simplex, columns free) with its vjp."""

    def __call__(self, z):
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def vjp(self, z, g):
        p = self(z)
        return p * (g - np.sum(g * p, axis=-1, keepdims=True))


def random_inputs(config, depth, shape, seed):
    rng = np.random.default_rng(seed)
    width = shape[-1]
    return {
        "h": rng.standard_normal(shape),
        "weight": rng.standard_normal((depth, width, width)) / np.sqrt(width),
        "bias": rng.standard_normal((depth, width)),
        "grad_output": rng.standard_normal(shape),
        "params": {k: rng.standard_normal(s)
                   for k, s in parameter_shapes(config, depth, width).items()},
    }


def test_user_projection_gradients():
    config = StreamConfig(streams=3, constraint=RowSoftmax(), reduce="gated")
    check_every_gradient(config, "tanh_linear", random_inputs(config, 2, (2, 2), 5))


def test_user_projection_without_vjp_has_no_reference_gradient():
    config = StreamConfig(streams=2, dynamic=False, constraint=RowSoftmax().__call__)
    inputs = random_inputs(config, 1, (2, 3), 6)
    args = (inputs["params"], "linear", inputs["weight"], inputs["bias"])
    trace = forward(config, inputs["h"], *args)
    with pytest.raises(TypeError, match=r"constraint=.* has no vjp"):
        backward(config, trace, *args, inputs["grad_output"])
