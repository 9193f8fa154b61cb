"""mhc_torch under test: ``MHCSequential`` eager, and compiled with ``fullgraph=True``
(stream cases: :mod:`conformance.backends.torch_streams`).

Each block is wrapped in a probe that adds a zero tensor delta_l to its output, so
dLoss/d(delta_l) = dLoss/ds_l gives every state's gradient without any access to the
library's internals; the states themselves are the blocks' inputs (and the output).
"""

from __future__ import annotations

import numpy as np

from conformance.backends import Backend, Case
from conformance.backends.torch_streams import COMPILED_STREAM_CASES, run_stream_case
from mhc_spec.statistics import amplification, attenuation, entropy, highway_profile, skip_gain
from mhc_spec.streams.vectors import StreamCase
from mhc_spec.vectors import GoldenCase

# torch.compile costs 10-40 s per graph on 2 cores: compile a few short stacks that
# together cover every projection, gating, both block kinds and windows longer than L.
COMPILED_CASES = frozenset({
    "grid_mhc-simplex_H4_L3",
    "grid_mhc-softmax_H2_L3",
    "grid_mhc-identity_H7_L3",
    "grid_hc_H4_L3",
})


def build_model(case: GoldenCase, dtype):
    """The case's stack as an MHCSequential of probed nn.Linear (+ nn.Tanh) blocks."""
    import torch
    from torch import nn

    from mhc_torch import MHCSequential

    class Probe(nn.Module):
        def __init__(self, block: nn.Module, delta: torch.Tensor) -> None:
            super().__init__()
            self.block, self.delta, self.seen = block, delta, None

        def forward(self, s: torch.Tensor) -> torch.Tensor:
            self.seen = s.detach().clone()
            return self.block(s) + self.delta

    i = case.inputs
    width = i["weight"].shape[-1]
    shape = i["x"].shape
    probes = []
    for layer in range(case.depth):
        linear = nn.Linear(width, width, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(i["weight"][layer]))
            linear.bias.copy_(torch.from_numpy(i["bias"][layer]))
        block = nn.Sequential(linear, nn.Tanh()) if case.kind == "tanh_linear" else linear
        delta = torch.zeros(shape, dtype=dtype, requires_grad=True)
        probes.append(Probe(block, delta))
    model = MHCSequential(probes, **case.config.to_dict()).to(dtype)
    with torch.no_grad():
        if model.theta is not None:
            model.theta.copy_(torch.from_numpy(i["theta"]))
        if model.gamma is not None:
            model.gamma.copy_(torch.from_numpy(i["gamma"]))
    return model, probes


class TorchBackend(Backend):
    requires = ("torch",)

    def __init__(self, compiled: bool = False) -> None:
        self.compiled = compiled
        self.name = "torch-compiled" if compiled else "torch-eager"

    def selects(self, case: Case) -> bool:
        subset = COMPILED_STREAM_CASES if isinstance(case, StreamCase) else COMPILED_CASES
        return not self.compiled or case.name in subset

    def run(self, case: Case) -> dict[str, np.ndarray]:
        if isinstance(case, StreamCase):
            return run_stream_case(case, self.compiled)
        import torch

        dtype = torch.float64 if case.dtype == "float64" else torch.float32
        model, probes = build_model(case, dtype)
        i = case.inputs
        x = torch.tensor(i["x"], dtype=dtype, requires_grad=True)
        grad_output = torch.tensor(i["grad_output"], dtype=dtype)
        if self.compiled:
            torch._dynamo.reset()
            forward = torch.compile(model, fullgraph=True)
        else:
            forward = model
            model.capture_highway()
        out = forward(x)
        (out * grad_output).sum().backward()

        def host(t: torch.Tensor) -> np.ndarray:
            return t.detach().to(torch.float64).cpu().numpy()

        weights = host(model.mixing_weights())
        gates = host(model.gates())
        state_grads = [host(x.grad)] + [host(p.delta.grad) for p in probes]
        if self.compiled:
            profile = highway_profile(state_grads)
        else:
            captured = model.pop_highway()
            profile = None if captured is None else host(captured)
        gate_arg = gates if case.config.gating else None
        ent = entropy(weights, case.config.mode)
        amp = amplification(weights, gate_arg)
        outputs = {
            "weights": weights,
            "gates": gates,
            "states": np.stack([host(p.seen) for p in probes] + [host(out)]),
            "statistics.entropy": ent,
            "statistics.mean_entropy": np.asarray(ent.mean()),
            "statistics.skip_gain": skip_gain(weights, gate_arg),
            "statistics.amplification": amp,
            "statistics.max_amplification": np.asarray(amp.max()),
            "gradients.x": state_grads[0],
            "gradients.weight": np.stack([host(_linear(p).weight.grad) for p in probes]),
            "gradients.bias": np.stack([host(_linear(p).bias.grad) for p in probes]),
            "gradients.states": np.stack(state_grads),
        }
        if profile is not None:
            outputs["statistics.highway"] = profile
            outputs["statistics.attenuation"] = np.asarray(attenuation(profile))
        if model.theta is not None:
            outputs["gradients.theta"] = host(model.theta.grad)
        if model.gamma is not None:
            outputs["gradients.gamma"] = host(model.gamma.grad)
        return outputs


def _linear(probe):
    block = probe.block
    return block[0] if hasattr(block, "__getitem__") else block
