"""mhc_torch's stream family under test: ``StreamSequential`` eager or compiled
(``fullgraph=True``), loaded from the case's portable dict.

Coefficients come from the stack's own recording (``record_coefficients``), statistics from
them through the dashboards' :func:`mhc_spec.streams.summary_from_coefficients`. The streams
X_l and their gradients come from the hand-loop pieces (``expand_streams``, ``StreamLayer``,
``StreamReduce``) loaded with the same parameters: a zero tensor added to each X_l gives
dLoss/dX_l. So a cell passes only when both public forms match the spec.
"""

from __future__ import annotations

import numpy as np

from mhc_spec.streams import summary_from_coefficients, to_portable
from mhc_spec.streams.vectors import StreamCase

# torch.compile costs 10-40 s per graph on 2 cores: two cases covering dynamic Sinkhorn
# with a gated reduce and a static hc stack with tanh blocks.
COMPILED_STREAM_CASES = frozenset({"grid_n4_T5_dynamic", "hc_n2_static"})


def _blocks(case: StreamCase, dtype):
    import torch
    from torch import nn

    width = case.inputs["weight"].shape[-1]
    blocks = []
    for layer in range(case.depth):
        linear = nn.Linear(width, width, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(case.inputs["weight"][layer]))
            linear.bias.copy_(torch.from_numpy(case.inputs["bias"][layer]))
        blocks.append(nn.Sequential(linear, nn.Tanh()) if case.kind == "tanh_linear"
                      else linear)
    return blocks


def _linear(block):
    return block if hasattr(block, "weight") else block[0]


def _width(case: StreamCase) -> int:
    return int(case.inputs["weight"].shape[-1])


def _portable(case: StreamCase) -> dict[str, np.ndarray]:
    prefix = "0." if case.kind == "tanh_linear" else ""
    blocks = [{f"{prefix}weight": case.inputs["weight"][layer],
               f"{prefix}bias": case.inputs["bias"][layer]} for layer in range(case.depth)]
    return to_portable(case.inputs["params"], blocks)


def _layer_params(portable: dict[str, np.ndarray], layer: int) -> dict[str, np.ndarray]:
    return {key.removeprefix("streams."): value[layer] for key, value in portable.items()
            if key.startswith("streams.") and key != "streams.reduce_logits"}


def _state_pass(case: StreamCase, dtype, portable, compiled: bool):
    """(X_0..X_L, dLoss/dX_0..dLoss/dX_L) through a hand loop of StreamLayers."""
    import torch

    from mhc_torch import StreamLayer, StreamReduce, expand_streams

    config = case.config
    options = {k: v for k, v in config.to_dict().items() if k != "reduce"}
    layers = []
    for layer, block in enumerate(_blocks(case, dtype)):
        module = StreamLayer(block, width=_width(case), layer_index=layer,
                             **options).to(dtype)
        with torch.no_grad():
            for name, value in _layer_params(portable, layer).items():
                getattr(module, name).copy_(torch.as_tensor(np.asarray(value)))
        layers.append(module)
    readout = StreamReduce(config.streams, config.reduce).to(dtype)
    if readout.reduce_logits is not None:
        with torch.no_grad():
            readout.reduce_logits.copy_(torch.from_numpy(portable["streams.reduce_logits"]))

    def run(h, offsets):
        states = [expand_streams(h, config.streams) + offsets[0]]
        for layer, module in enumerate(layers):
            states.append(module(states[-1]) + offsets[layer + 1])
        return readout(states[-1]), torch.stack(states)

    h = torch.tensor(case.inputs["h"], dtype=dtype)
    g = torch.tensor(case.inputs["grad_output"], dtype=dtype)
    shape = (*h.shape[:-1], config.streams, h.shape[-1])
    offsets = torch.zeros((case.depth + 1, *shape), dtype=dtype, requires_grad=True)
    forward = torch.compile(run, fullgraph=True) if compiled else run
    out, states = forward(h, offsets)
    (out * g).sum().backward()
    return states.detach(), offsets.grad


def run_stream_case(case: StreamCase, compiled: bool) -> dict[str, np.ndarray]:
    """The flattened outputs of a stream case computed by mhc_torch."""
    import torch

    from mhc_torch import StreamSequential

    dtype = torch.float64 if case.dtype == "float64" else torch.float32
    portable = _portable(case)
    model = StreamSequential(_blocks(case, dtype), width=_width(case),
                             **case.config.to_dict()).to(dtype)
    model.load_portable(portable)
    model.record_coefficients = True
    h = torch.tensor(case.inputs["h"], dtype=dtype, requires_grad=True)
    g = torch.tensor(case.inputs["grad_output"], dtype=dtype)
    if compiled:
        torch._dynamo.reset()
    forward = torch.compile(model, fullgraph=True) if compiled else model
    out = forward(h)
    (out * g).sum().backward()
    states, state_grads = _state_pass(case, dtype, portable, compiled)

    def host(t) -> np.ndarray:
        return t.detach().to(torch.float64).cpu().numpy()

    recorded = model.recorded_coefficients
    hpre, hpost, hres = host(recorded.hpre), host(recorded.hpost), host(recorded.hres)
    outputs = {
        "hpre": hpre,
        "hpost": hpost,
        "hres": hres,
        "states": host(states),
        "output": host(out),
        "gradients.h": host(h.grad),
        "gradients.weight": np.stack([host(_linear(b).weight.grad) for b in model.blocks]),
        "gradients.bias": np.stack([host(_linear(b).bias.grad) for b in model.blocks]),
        "gradients.states": host(state_grads),
    }
    for key, value in summary_from_coefficients(hpre, hpost, hres).items():
        outputs[f"statistics.{key}"] = value
    for name, parameter in model.named_parameters():
        if not name.startswith("blocks."):
            key = "reduce_logits" if name == "readout.reduce_logits" else name
            outputs[f"gradients.params.streams.{key}"] = host(parameter.grad)
    return outputs
