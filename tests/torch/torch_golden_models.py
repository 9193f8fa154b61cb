"""Builders shared by the mhc_torch tests: a golden case as an MHCSequential or MHCSkip loop."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mhc_spec.config import MHCConfig
from mhc_spec.streams.vectors import StreamCase
from mhc_spec.vectors import GoldenCase, default_directory, load_vectors
from mhc_torch import HistoryBuffer, MHCSequential, MHCSkip

CASES = load_vectors(default_directory())
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def config_kwargs(config: MHCConfig) -> dict:
    return config.to_dict()


def case_blocks(case: GoldenCase | StreamCase, dtype: torch.dtype) -> list[nn.Module]:
    """nn.Linear blocks (followed by nn.Tanh for "tanh_linear") holding the weights of a
    case of either family."""
    weight, bias = case.inputs["weight"], case.inputs["bias"]
    blocks = []
    for layer in range(case.depth):
        linear = nn.Linear(weight.shape[-1], weight.shape[-1], dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weight[layer]))
            linear.bias.copy_(torch.from_numpy(bias[layer]))
        blocks.append(linear if case.kind == "linear" else nn.Sequential(linear, nn.Tanh()))
    return blocks


def linear_of(block: nn.Module) -> nn.Linear:
    return block if isinstance(block, nn.Linear) else block[0]


def case_model(case: GoldenCase, dtype: torch.dtype | None = None, **extra) -> MHCSequential:
    """The case's MHCSequential in ``dtype`` (default: the case's dtype) with its parameters."""
    dtype = dtype or DTYPES[case.dtype]
    model = MHCSequential(case_blocks(case, dtype), **config_kwargs(case.config), **extra)
    model.to(dtype)
    with torch.no_grad():
        if model.theta is not None:
            model.theta.copy_(torch.from_numpy(case.inputs["theta"]))
        if model.gamma is not None:
            model.gamma.copy_(torch.from_numpy(case.inputs["gamma"]))
    return model


class SkipLoop(nn.Module):
    """The same stack written by hand with one MHCSkip per block and a HistoryBuffer."""

    def __init__(self, case: GoldenCase, dtype: torch.dtype) -> None:
        super().__init__()
        config = case.config
        self.blocks = nn.ModuleList(case_blocks(case, dtype))
        self.skips = nn.ModuleList(
            MHCSkip(config.max_history, mode=config.mode, constraint=config.constraint,
                    temperature=config.temperature, epsilon=config.epsilon,
                    gating=config.gating).to(dtype)
            for _ in range(case.depth)
        )
        with torch.no_grad():
            for layer, skip in enumerate(self.skips):
                if skip.theta is not None:
                    skip.theta.copy_(torch.from_numpy(case.inputs["theta"][layer]))
                if skip.gamma is not None:
                    skip.gamma.copy_(torch.tensor(case.inputs["gamma"][layer]))
        self.max_history = config.max_history
        self.states: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        history = HistoryBuffer(self.max_history, x)
        self.states = [x]
        h = x
        for block, skip in zip(self.blocks, self.skips, strict=True):
            h = skip(block(h), history)
            self.states.append(h)
        return h


def tensor(array: np.ndarray, dtype: torch.dtype, requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(array, dtype=dtype, requires_grad=requires_grad)


def assert_close(actual, expected: np.ndarray, dtype: torch.dtype, what: str) -> None:
    """float64: rtol 1e-10 (atol 1e-12 * max|expected| for entries near zero); float32:
    rtol 1e-5 with atol 1e-5 * max|expected|, i.e. a norm-wise bound for near-zero entries."""
    if isinstance(actual, torch.Tensor):
        actual = actual.detach().to(torch.float64).cpu().numpy()
    expected = np.asarray(expected, dtype=np.float64)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    rtol, atol = (1e-10, 1e-12 * scale) if dtype == torch.float64 else (1e-5, 1e-5 * scale)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)
