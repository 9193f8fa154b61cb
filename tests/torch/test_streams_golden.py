"""Every golden vector of the stream family (conformance/vectors/streams) reproduced by
mhc_torch: StreamSequential on its eager path (hand-derived autograd nodes), on its plain
operation path (under torch.func), without gradients, and a hand-written loop of
StreamLayers (which exposes the states X_0..X_L and their gradients).

Blocks are nn.Linear (followed by nn.Tanh for "tanh_linear") holding the case's weights;
parameters go in through ``load_portable``. Error measure (as tests/jax/test_streams_golden.py):
max|got - want| <= rtol max|want| + atol max(1, max|want|); float64 cases run in float64
with rtol = 1e-10, atol = 1e-12, float32 cases in float32 with rtol = 1e-5, atol = 1e-6.
The atol covers gradients that vanish in exact arithmetic (b_res and phi_res at
initialisation), which the float64 spec holds as rounding noise of ~1e-19.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch_golden_models import case_blocks, linear_of

from mhc_spec.streams.vectors import StreamCase, default_directory, load_vectors
from mhc_torch import StreamLayer, StreamReduce, StreamSequential, expand_streams

CASES = load_vectors(default_directory())
DTYPES = {"float64": torch.float64, "float32": torch.float32}
TOLERANCES = {"float64": (1e-10, 1e-12), "float32": (1e-5, 1e-6)}
PARAMETER_NAMES = {"streams.reduce_logits": "readout.reduce_logits"}

# Both coefficient paths: the native CPU kernels and the PyTorch operations.
pytestmark = pytest.mark.usefixtures("kernel_path")


def assert_matches(got, want, case: StreamCase, what: str) -> None:
    got = got.detach().to(torch.float64).numpy() if isinstance(got, torch.Tensor) else got
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{case.name}: {what} shape {got.shape} != {want.shape}"
    rtol, atol = TOLERANCES[case.dtype]
    scale = float(np.max(np.abs(want), initial=0.0))
    error = float(np.max(np.abs(got - want), initial=0.0))
    bound = rtol * scale + atol * max(1.0, scale)
    assert error <= bound, f"{case.name}: {what} off by {error:.3g} (allowed {bound:.3g})"


def case_model(case: StreamCase) -> StreamSequential:
    dtype = DTYPES[case.dtype]
    width = case.inputs["h"].shape[-1]
    model = StreamSequential(case_blocks(case, dtype), width=width,
                             **case.config.to_dict()).to(dtype)
    portable = model.to_portable()
    portable.update(case.inputs["params"])
    model.load_portable(portable)
    return model


def tensor(case: StreamCase, name: str, requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(case.inputs[name], dtype=DTYPES[case.dtype], requires_grad=requires_grad)


def check_forward(case: StreamCase, model: StreamSequential, out: torch.Tensor) -> None:
    expected = case.expected
    assert_matches(out, expected["output"], case, "output")
    recorded = model.recorded_coefficients
    assert_matches(recorded.hpre, expected["hpre"], case, "hpre")
    assert_matches(recorded.hpost, expected["hpost"], case, "hpost")
    assert_matches(recorded.hres, expected["hres"], case, "hres")


def check_gradients(case: StreamCase, grads: dict[str, torch.Tensor]) -> None:
    expected = case.expected["gradients"]
    assert_matches(grads.pop("h"), expected["h"], case, "gradient of h")
    assert_matches(grads.pop("weight"), expected["weight"], case, "gradient of weight")
    assert_matches(grads.pop("bias"), expected["bias"], case, "gradient of bias")
    assert sorted(grads) == sorted(expected["params"])
    for key, value in grads.items():
        assert_matches(value, expected["params"][key], case, f"gradient of {key}")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_eager_training_path(case: StreamCase) -> None:
    model = case_model(case)
    model.record_coefficients = True
    h = tensor(case, "h", requires_grad=True)
    out = model(h)
    (out * tensor(case, "grad_output")).sum().backward()
    check_forward(case, model, out)
    params = dict(model.named_parameters())
    grads = {key: params[PARAMETER_NAMES.get(key, key.removeprefix("streams."))].grad
             for key in case.inputs["params"]}
    grads["h"] = h.grad
    grads["weight"] = torch.stack([linear_of(b).weight.grad for b in model.blocks])
    grads["bias"] = torch.stack([linear_of(b).bias.grad for b in model.blocks])
    check_gradients(case, grads)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_forward_without_gradients(case: StreamCase) -> None:
    model = case_model(case)
    model.record_coefficients = True
    with torch.no_grad():
        out = model(tensor(case, "h"))
    check_forward(case, model, out)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_plain_operation_path_under_torch_func(case: StreamCase) -> None:
    """torch.func transforms run plain differentiable operations; their vjp matches too."""
    model = case_model(case)
    model.record_coefficients = True
    params = dict(model.named_parameters())

    def run(h, params):
        return torch.func.functional_call(model, params, (h,))

    out, vjp = torch.func.vjp(run, tensor(case, "h"), params)
    assert_matches(out, case.expected["output"], case, "output")
    dh, dparams = vjp(tensor(case, "grad_output"))
    linear = "" if case.kind == "linear" else "0."
    grads = {key: dparams[PARAMETER_NAMES.get(key, key.removeprefix("streams."))]
             for key in case.inputs["params"]}
    grads["h"] = dh
    grads["weight"] = torch.stack(
        [dparams[f"blocks.{i}.{linear}weight"] for i in range(case.depth)])
    grads["bias"] = torch.stack([dparams[f"blocks.{i}.{linear}bias"] for i in range(case.depth)])
    check_gradients(case, grads)


class LayerLoop(nn.Module):
    """The case's stack written by hand: expand_streams, one StreamLayer per block,
    StreamReduce; keeps the states X_0..X_L of the last call."""

    def __init__(self, case: StreamCase) -> None:
        super().__init__()
        dtype, config = DTYPES[case.dtype], case.config
        kwargs = config.to_dict()
        kwargs.pop("reduce")
        width = case.inputs["h"].shape[-1]
        self.layers = nn.ModuleList(
            StreamLayer(block, width=width, layer_index=index, **kwargs)
            for index, block in enumerate(case_blocks(case, dtype)))
        self.readout = StreamReduce(config.streams, config.reduce)
        self.to(dtype)
        with torch.no_grad():
            for key, value in case.inputs["params"].items():
                name = key.removeprefix("streams.")
                if name == "reduce_logits":
                    self.readout.reduce_logits.copy_(torch.from_numpy(value))
                    continue
                for index, layer in enumerate(self.layers):
                    getattr(layer, name).copy_(torch.as_tensor(value[index]))
        self.streams = config.streams
        self.states: list[torch.Tensor] = []

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = expand_streams(h, self.streams)
        self.states = [x]
        for layer in self.layers:
            x = layer(x)
            self.states.append(x)
        return self.readout(x)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hand_written_layer_loop(case: StreamCase) -> None:
    loop = LayerLoop(case)
    h = tensor(case, "h", requires_grad=True)
    out = loop(h)
    for state in loop.states:
        state.retain_grad()
    (out * tensor(case, "grad_output")).sum().backward()
    assert_matches(out, case.expected["output"], case, "output")
    assert_matches(torch.stack(loop.states), case.expected["states"], case, "states")
    assert_matches(torch.stack([s.grad for s in loop.states]),
                   case.expected["gradients"]["states"], case, "gradients of the states")
    grads = {}
    for key in case.inputs["params"]:
        name = key.removeprefix("streams.")
        grads[key] = (loop.readout.reduce_logits.grad if name == "reduce_logits" else
                      torch.stack([getattr(layer, name).grad for layer in loop.layers]))
    grads["h"] = h.grad
    grads["weight"] = torch.stack([linear_of(la.block).weight.grad for la in loop.layers])
    grads["bias"] = torch.stack([linear_of(la.block).bias.grad for la in loop.layers])
    check_gradients(case, grads)
