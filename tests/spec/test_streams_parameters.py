"""Initial stream parameters and the portable dict of a stream stack."""

import numpy as np
import pytest

from mhc_spec import load_portable, save_portable
from mhc_spec.streams import (
    StreamConfig,
    check_parameters,
    coefficients,
    expand,
    from_portable,
    init_parameters,
    parameter_shapes,
    pre_init_logits,
    pre_logit,
    to_portable,
)
from mhc_spec.streams.parameters import RES_DIAGONAL_LOGIT, SATURATED_LOGIT


def test_shapes_per_variant():
    dynamic = parameter_shapes(StreamConfig(streams=3, reduce="gated"), 5, 4)
    assert dynamic == {
        "streams.phi_pre": (5, 12, 3), "streams.phi_post": (5, 12, 3),
        "streams.phi_res": (5, 12, 3, 3), "streams.a_pre": (5,), "streams.a_post": (5,),
        "streams.a_res": (5,), "streams.b_pre": (5, 3), "streams.b_post": (5, 3),
        "streams.b_res": (5, 3, 3), "streams.reduce_logits": (3,),
    }
    static = parameter_shapes(StreamConfig(streams=2, dynamic=False), 1, 7)
    assert static == {"streams.b_pre": (1, 2), "streams.b_post": (1, 2),
                      "streams.b_res": (1, 2, 2)}
    with pytest.raises(ValueError, match="width=0"):
        parameter_shapes(StreamConfig(), 2, 0)
    with pytest.raises(ValueError, match="depth=0"):
        parameter_shapes(StreamConfig(), 0, 2)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
def test_initial_coefficients(n):
    config = StreamConfig(streams=n, a_init=0.05)
    params = init_parameters(config, 3, 2)
    np.testing.assert_array_equal(params["streams.phi_res"], 0.0)
    np.testing.assert_array_equal(params["streams.a_pre"], 0.05)
    h = np.random.default_rng(n).standard_normal((4, 2))
    c = coefficients(config, params, 1, expand(h, n))
    np.testing.assert_allclose(c.pre.sum(axis=-1), 1.0, rtol=1e-15)
    if n > 1:
        # Layer 1 leans on stream 1 mod n: 1/2 + 1/(2n) there, 1/(2n) elsewhere.
        expected = np.full(n, 0.5 / n)
        expected[1 % n] += 0.5
        np.testing.assert_allclose(c.pre, np.broadcast_to(expected, (4, n)), rtol=1e-14)
    uniform = StreamConfig(streams=n, pre_init="uniform")
    c_uniform = coefficients(uniform, init_parameters(uniform, 3, 2), 1, expand(h, n))
    np.testing.assert_allclose(c_uniform.pre, 1.0 / n, rtol=1e-15)
    np.testing.assert_array_equal(c.post, 1.0)
    np.testing.assert_allclose(c.res.sum(axis=-1), 1.0, rtol=1e-15)
    np.testing.assert_array_equal(params["streams.b_res"][0], RES_DIAGONAL_LOGIT * np.eye(n))
    # SK(4 I): exp(4) / (exp(4) + n - 1) on the diagonal (exact after one iteration).
    diagonal = np.exp(4.0) / (np.exp(4.0) + n - 1)
    np.testing.assert_allclose(np.diagonal(c.res, axis1=-2, axis2=-1), diagonal, rtol=1e-14)
    hc = StreamConfig(streams=n, mode="hc", dynamic=False)
    free = coefficients(hc, init_parameters(hc, 1, 2), 0, expand(h, n)).res
    np.testing.assert_array_equal(free, np.broadcast_to(np.eye(n), (4, n, n)))


@pytest.mark.parametrize("n", [2, 3, 4])
def test_cyclic_pre_init_visits_every_stream(n):
    logits = pre_init_logits(StreamConfig(streams=n), 2 * n + 1)
    leaning = logits.argmax(axis=1)
    np.testing.assert_array_equal(leaning, np.arange(2 * n + 1) % n)
    np.testing.assert_allclose((1 / (1 + np.exp(-logits))).sum(axis=1), 1.0, rtol=1e-15)
    np.testing.assert_array_equal(pre_init_logits(StreamConfig(streams=1), 3), SATURATED_LOGIT)


def test_pre_logit():
    assert pre_logit(2) == 0.0
    assert abs(1 / (1 + np.exp(-pre_logit(5))) - 0.2) < 1e-16
    assert 1 / (1 + np.exp(np.float32(-pre_logit(1)))) == np.float32(1.0)
    assert 1 / (1 + np.exp(-pre_logit(1))) == 1.0


def test_gated_reduce_starts_as_the_mean():
    params = init_parameters(StreamConfig(streams=4, reduce="gated"), 2, 3)
    np.testing.assert_allclose(1 / (1 + np.exp(-params["streams.reduce_logits"])), 0.25,
                               rtol=1e-15)


def test_check_parameters_names_the_problem():
    config = StreamConfig(streams=2)
    params = init_parameters(config, 2, 3)
    check_parameters(config, params, 2, 3)
    with pytest.raises(KeyError, match=r"unexpected \['streams.reduce_logits'\]"):
        check_parameters(config, {**params, "streams.reduce_logits": np.zeros(2)}, 2, 3)
    with pytest.raises(ValueError, match=r"'streams.b_res' has shape \(2, 2\)"):
        check_parameters(config, {**params, "streams.b_res": np.zeros((2, 2))}, 2, 3)


def test_portable_round_trip(tmp_path):
    config = StreamConfig(streams=2, reduce="gated")
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(s) for k, s in parameter_shapes(config, 2, 3).items()}
    blocks = [{"weight": rng.standard_normal((3, 3)), "bias": rng.standard_normal(3)}
              for _ in range(2)]
    portable = to_portable(params, blocks)
    assert set(portable) == set(params) | {f"blocks.{i}.{n}" for i in range(2)
                                           for n in ("weight", "bias")}
    path = tmp_path / "streams.npz"
    save_portable(str(path), portable)
    params2, blocks2 = from_portable(load_portable(str(path)))
    assert params2.keys() == params.keys()
    for key in params:
        np.testing.assert_array_equal(params2[key], params[key])
    for a, b in zip(blocks, blocks2, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_portable_rejects_foreign_keys():
    with pytest.raises(KeyError, match=r"'mixing\.\*'"):
        from_portable({"streams.b_pre": np.zeros((1, 2)), "mixing.theta": np.zeros((1, 2))})
    with pytest.raises(KeyError, match="unknown portable parameter key 'phi'"):
        from_portable({"phi": np.zeros(1)})
