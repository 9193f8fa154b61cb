"""Bad arguments of the stream modules raise at construction (or at the offending call)
with a message naming the argument, its value and what is allowed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mhc_torch import StreamLayer, StreamReduce, StreamSequential


def linears(count: int = 2, width: int = 4) -> list[nn.Module]:
    return [nn.Linear(width, width) for _ in range(count)]


# (keyword arguments, exception type, fragments the message must contain)
CONFIG_CASES = [
    ({"streams": 0}, ValueError, ["streams=0", "integer >= 1"]),
    ({"streams": 2.0}, TypeError, ["streams=2.0", "integer"]),
    ({"mode": "residual"}, ValueError, ["mode='residual'", "'mhc', 'hc'"]),
    ({"constraint": "softmax"}, ValueError, ["constraint='softmax'", "'sinkhorn' or a callable"]),
    ({"constraint": 3}, ValueError, ["constraint=3", "callable"]),
    ({"sinkhorn_iterations": 0}, ValueError, ["sinkhorn_iterations=0", "integer >= 1"]),
    ({"sinkhorn_iterations": True}, TypeError, ["sinkhorn_iterations=True", "integer"]),
    ({"dynamic": "yes"}, TypeError, ["dynamic='yes'", "True or False"]),
    ({"dynamic": 1}, TypeError, ["dynamic=1", "True or False"]),
    ({"rms_eps": 0.0}, ValueError, ["rms_eps=0.0", "> 0"]),
    ({"rms_eps": float("nan")}, ValueError, ["rms_eps=nan", "finite"]),
    ({"a_init": "small"}, TypeError, ["a_init='small'", "real number"]),
    ({"a_init": float("inf")}, ValueError, ["a_init=inf", "finite"]),
    ({"pre_init": "onehot"}, ValueError, ["pre_init='onehot'", "'cyclic', 'uniform'"]),
]
SEQUENTIAL_CASES = [
    *CONFIG_CASES,
    ({"reduce": "max"}, ValueError, ["reduce='max'", "'sum', 'mean', 'gated'"]),
    ({"width": 0}, ValueError, ["width=0", "integer >= 1"]),
    ({"width": 8}, ValueError, ["width=8", "in_features=4"]),
    ({"width": "4"}, TypeError, ["width='4'", "integer"]),
]
LAYER_CASES = [
    *CONFIG_CASES,
    ({"width": 0}, ValueError, ["width=0", "integer >= 1"]),
    ({"layer_index": -1}, ValueError, ["layer_index=-1", "integer >= 0"]),
    ({"layer_index": 1.5}, TypeError, ["layer_index=1.5", "integer"]),
]


def check_message(error: pytest.ExceptionInfo, fragments: list[str]) -> None:
    for fragment in fragments:
        assert fragment in str(error.value), (fragment, str(error.value))


@pytest.mark.parametrize(("kwargs", "exc", "fragments"), SEQUENTIAL_CASES,
                         ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_stream_sequential_arguments(kwargs, exc, fragments) -> None:
    with pytest.raises(exc) as error:
        StreamSequential(linears(), **kwargs)
    check_message(error, fragments)


@pytest.mark.parametrize(("kwargs", "exc", "fragments"), LAYER_CASES,
                         ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_stream_layer_arguments(kwargs, exc, fragments) -> None:
    with pytest.raises(exc) as error:
        StreamLayer(nn.Linear(4, 4), **{"width": 4, **kwargs})
    check_message(error, fragments)


@pytest.mark.parametrize(("blocks", "exc", "fragments"), [
    ([], ValueError, ["blocks=[]", "at least one"]),
    ([nn.Linear(4, 4), "relu"], TypeError, ["blocks[1]='relu'", "nn.Module"]),
    (nn.Linear(4, 4), TypeError, ["blocks=Linear", "sequence of nn.Module"]),
    (3, TypeError, ["blocks=int", "sequence of nn.Module"]),
])
def test_stream_sequential_blocks(blocks, exc, fragments) -> None:
    with pytest.raises(exc) as error:
        StreamSequential(blocks, width=4)
    check_message(error, fragments)


def test_width_is_required_unless_the_first_block_is_linear() -> None:
    with pytest.raises(ValueError) as error:
        StreamSequential([nn.Sequential(nn.Linear(4, 4), nn.Tanh())])
    check_message(error, ["width=None", "Sequential", "pass width=C"])
    assert StreamSequential([nn.Sequential(nn.Linear(4, 4))], width=4).width == 4
    assert StreamSequential(linears(width=6)).width == 6


def test_layer_block_must_be_a_module() -> None:
    with pytest.raises(TypeError) as error:
        StreamLayer(torch.tanh, width=4)
    check_message(error, ["block=", "nn.Module"])


@pytest.mark.parametrize(("kwargs", "exc", "fragments"), [
    ({"streams": 0}, ValueError, ["streams=0"]),
    ({"reduce": "max"}, ValueError, ["reduce='max'", "'gated'"]),
])
def test_stream_reduce_arguments(kwargs, exc, fragments) -> None:
    with pytest.raises(exc) as error:
        StreamReduce(**{"streams": 4, **kwargs})
    check_message(error, fragments)


def test_wrong_inputs_at_forward() -> None:
    model = StreamSequential(linears(), streams=2)
    with pytest.raises(ValueError) as error:
        model(torch.randn(3, 5))
    check_message(error, ["StreamSequential", "(..., 4)", "(3, 5)"])
    with pytest.raises(TypeError) as error:
        model(torch.ones(3, 4, dtype=torch.long))
    check_message(error, ["floating-point", "torch.int64"])
    layer = StreamLayer(nn.Linear(4, 4), width=4, streams=2)
    with pytest.raises(ValueError) as error:
        layer(torch.randn(3, 4))
    check_message(error, ["StreamLayer", "(..., 2, 4)", "(3, 4)"])
    with pytest.raises(ValueError) as error:
        StreamReduce(3)(torch.randn(5, 2, 4))
    check_message(error, ["StreamReduce(streams=3)", "(..., 3, C)", "(5, 2, 4)"])


def test_blocks_must_keep_the_shape() -> None:
    model = StreamSequential([nn.Linear(4, 4), nn.Linear(4, 3)], width=4, streams=2)
    with pytest.raises(ValueError) as error:
        model(torch.randn(2, 4))
    check_message(error, ["blocks[1]", "Linear", "(2, 4)", "(2, 3)"])


@pytest.mark.parametrize("dynamic", [True, False])
def test_custom_constraint_must_keep_the_shape(dynamic: bool) -> None:
    def bad(logits: torch.Tensor) -> torch.Tensor:
        return logits[..., 0]

    model = StreamSequential(linears(), streams=2, constraint=bad, dynamic=dynamic)
    with pytest.raises(ValueError) as error:
        model(torch.randn(3, 4))
    check_message(error, ["constraint=", "bad", "shape of its logits"])
