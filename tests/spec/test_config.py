"""MHCConfig validates every argument at construction, with messages naming it."""

import math

import pytest

from mhc_spec import MHCConfig, check_depth

BAD = [
    ({"max_history": 0}, ValueError, "max_history=0"),
    ({"max_history": -3}, ValueError, "max_history=-3"),
    ({"max_history": 2.5}, TypeError, "max_history=2.5"),
    ({"max_history": True}, TypeError, "max_history=True"),
    ({"max_history": "4"}, TypeError, "max_history='4'"),
    ({"mode": "bogus"}, ValueError, "mode='bogus'"),
    ({"mode": None}, ValueError, "mode=None"),
    ({"constraint": "sphere"}, ValueError, "constraint='sphere'"),
    ({"temperature": 0}, ValueError, "temperature=0.0"),
    ({"temperature": -1.0}, ValueError, "temperature=-1.0"),
    ({"temperature": math.nan}, ValueError, "temperature=nan"),
    ({"temperature": math.inf}, ValueError, "temperature=inf"),
    ({"temperature": "1"}, TypeError, "temperature='1'"),
    ({"epsilon": 1.0}, ValueError, "epsilon=1.0"),
    ({"epsilon": -0.1}, ValueError, "epsilon=-0.1"),
    ({"epsilon": math.nan}, ValueError, "epsilon=nan"),
    ({"init": "x"}, ValueError, "init='x'"),
    ({"gating": 1}, TypeError, "gating=1"),
    ({"gate_init": math.inf}, ValueError, "gate_init=inf"),
]


@pytest.mark.parametrize(("kwargs", "error", "shown"), BAD, ids=[str(b[0]) for b in BAD])
def test_bad_argument_raises_naming_it(kwargs, error, shown):
    name = next(iter(kwargs))
    with pytest.raises(error) as info:
        MHCConfig(**kwargs)
    message = str(info.value)
    assert shown in message
    assert f"{name} must be" in message


def test_messages_say_what_is_allowed():
    with pytest.raises(ValueError, match=r"one of 'residual', 'hc', 'mhc'"):
        MHCConfig(mode="bogus")
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        MHCConfig(epsilon=1.0)
    with pytest.raises(ValueError, match=r"integer >= 1"):
        MHCConfig(max_history=0)


def test_defaults_and_resolved_init():
    config = MHCConfig()
    assert (config.max_history, config.mode, config.constraint) == (4, "mhc", "simplex")
    assert config.resolved_init == "recent"
    assert MHCConfig(mode="hc").resolved_init == "newest"
    assert MHCConfig(mode="hc", init="uniform").resolved_init == "uniform"
    assert not MHCConfig(mode="residual").has_logits
    assert MHCConfig(mode="mhc", constraint="softmax").kind == "mhc/softmax"


def test_numbers_are_normalised_and_round_trip():
    config = MHCConfig(temperature=2, epsilon=0)
    assert isinstance(config.temperature, float) and isinstance(config.epsilon, float)
    assert MHCConfig.from_dict(config.to_dict()) == config


def test_config_is_immutable():
    config = MHCConfig()
    with pytest.raises(AttributeError):
        config.max_history = 3


@pytest.mark.parametrize("depth", [0, -1, 1.0, None])
def test_bad_depth(depth):
    with pytest.raises((ValueError, TypeError), match="depth="):
        check_depth(depth)
