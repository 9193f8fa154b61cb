"""StreamConfig validates every argument at construction, with messages naming it."""

import math

import numpy as np
import pytest

from mhc_spec.streams import StreamConfig

BAD = [
    ({"streams": 0}, ValueError, "streams=0"),
    ({"streams": -2}, ValueError, "streams=-2"),
    ({"streams": 2.0}, TypeError, "streams=2.0"),
    ({"streams": True}, TypeError, "streams=True"),
    ({"mode": "residual"}, ValueError, "mode='residual'"),
    ({"mode": None}, ValueError, "mode=None"),
    ({"constraint": "softmax"}, ValueError, "constraint='softmax'"),
    ({"constraint": None}, ValueError, "constraint=None"),
    ({"sinkhorn_iterations": 0}, ValueError, "sinkhorn_iterations=0"),
    ({"sinkhorn_iterations": 1.5}, TypeError, "sinkhorn_iterations=1.5"),
    ({"dynamic": 1}, TypeError, "dynamic=1"),
    ({"dynamic": "yes"}, TypeError, "dynamic='yes'"),
    ({"reduce": "max"}, ValueError, "reduce='max'"),
    ({"rms_eps": 0.0}, ValueError, "rms_eps=0.0"),
    ({"rms_eps": -1e-6}, ValueError, "rms_eps=-1e-06"),
    ({"rms_eps": math.nan}, ValueError, "rms_eps=nan"),
    ({"rms_eps": "1e-6"}, TypeError, "rms_eps='1e-6'"),
    ({"a_init": math.inf}, ValueError, "a_init=inf"),
    ({"a_init": None}, TypeError, "a_init=None"),
]


@pytest.mark.parametrize(("kwargs", "error", "shown"), BAD, ids=[str(b[0]) for b in BAD])
def test_bad_argument_raises_naming_it(kwargs, error, shown):
    name = next(iter(kwargs))
    with pytest.raises(error) as info:
        StreamConfig(**kwargs)
    message = str(info.value)
    assert shown in message
    assert f"{name} must be" in message


def test_messages_say_what_is_allowed():
    with pytest.raises(ValueError, match=r"one of 'sum', 'mean', 'gated'"):
        StreamConfig(reduce="max")
    with pytest.raises(ValueError, match=r"one of 'mhc', 'hc'"):
        StreamConfig(mode="x")
    with pytest.raises(ValueError, match=r"'sinkhorn' or a callable"):
        StreamConfig(constraint="birkhoff")
    with pytest.raises(ValueError, match=r"integer >= 1"):
        StreamConfig(sinkhorn_iterations=0)


def test_defaults_follow_the_paper():
    config = StreamConfig()
    assert (config.streams, config.mode, config.constraint) == (4, "mhc", "sinkhorn")
    assert (config.sinkhorn_iterations, config.dynamic, config.reduce) == (20, True, "sum")
    assert (config.a_init, config.rms_eps) == (0.01, 1e-6)
    assert config.kind == "mhc/sinkhorn" and config.constrained
    assert StreamConfig(mode="hc").kind == "hc" and not StreamConfig(mode="hc").constrained


def test_round_trip_and_normalised_numbers():
    config = StreamConfig(streams=2, rms_eps=1, a_init=0, reduce="gated", dynamic=False)
    assert isinstance(config.rms_eps, float) and isinstance(config.a_init, float)
    assert StreamConfig.from_dict(config.to_dict()) == config


def test_user_projection_is_accepted_but_not_serialised():
    def rows(z):
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    config = StreamConfig(constraint=rows)
    assert config.kind == "mhc/custom"
    with pytest.raises(ValueError, match=r"constraint=.*user-supplied projection"):
        config.to_dict()


def test_config_is_immutable():
    with pytest.raises(AttributeError):
        StreamConfig().streams = 3
