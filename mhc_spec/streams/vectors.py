"""Golden vectors of the stream family: deterministic cases every backend must reproduce.

Regenerate (the test suite fails if the committed files differ)::

    python -m mhc_spec.streams.vectors conformance/vectors/streams

Each case is one JSON file holding the configuration, the inputs and parameters, and the
spec's outputs: Hpre, Hpost, Hres of every layer and token, all stream states, the output,
statistics and every gradient of loss = sum(G * output). References are computed in float64;
a ``float32`` case has inputs that are exactly representable in float32 and is meant to be
run by a backend in float32.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mhc_spec.golden_files import case_paths, run_generator, to_json_text, write_cases
from mhc_spec.streams.config import REDUCES, StreamConfig
from mhc_spec.streams.gradients import backward
from mhc_spec.streams.parameters import (
    A_POST,
    A_PRE,
    A_RES,
    B_POST,
    B_PRE,
    B_RES,
    PHI_POST,
    PHI_PRE,
    PHI_RES,
    REDUCE_LOGITS,
    init_parameters,
    parameter_shapes,
)
from mhc_spec.streams.recurrence import forward
from mhc_spec.streams.statistics import summary
from mhc_spec.version import SPEC_VERSION

STREAM_VECTORS_VERSION = 1
PARAMETER_DRAWS = ("random", "init", "large_res")


@dataclass(frozen=True)
class StreamCaseSpec:
    """How to generate one case. ``params``: ``"random"`` draws every parameter (a
    non-symmetric b_res included), ``"init"`` uses :func:`init_parameters`, ``"large_res"``
    draws at random with b_res scaled by 12 (Hres logits spread over ~50). ``h_scale``
    multiplies the input."""

    name: str
    config: StreamConfig
    kind: str = "linear"
    depth: int = 3
    shape: tuple[int, ...] = (2, 3)
    dtype: str = "float64"
    params: str = "random"
    h_scale: float = 1.0
    seed: int = 0


@dataclass
class StreamCase:
    """A loaded case: the config, inputs (``params`` a dict by key) and expected outputs as
    float64 arrays."""

    name: str
    config: StreamConfig
    kind: str
    dtype: str
    inputs: dict[str, Any]
    expected: dict[str, Any] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return int(self.inputs["weight"].shape[0])


def _size(streams: int, dynamic: bool) -> tuple[int, int]:
    """(depth, width): smaller for n = 4 dynamic, whose n*C x (n^2 + 2n) phi dominate."""
    return (2, 2) if streams == 4 and dynamic else (3, 3)


def grid_cases() -> list[StreamCaseSpec]:
    """n in {1, 2, 4} x T in {1, 5, 20} x static/dynamic; the reduce, block kind, input rank
    and dtype rotate (every reduce meets static and dynamic)."""
    cases = []
    for index, (n, t, dynamic) in enumerate(
        itertools.product((1, 2, 4), (1, 5, 20), (False, True))
    ):
        depth, width = _size(n, dynamic)
        config = StreamConfig(streams=n, sinkhorn_iterations=t, dynamic=dynamic,
                              reduce=REDUCES[index % 3])
        label = "dynamic" if dynamic else "static"
        cases.append(StreamCaseSpec(
            name=f"grid_n{n}_T{t}_{label}", config=config,
            kind=("linear", "tanh_linear")[(index // 2) % 2], depth=depth,
            shape=((2, width), (2, 2, width))[(index // 3) % 2],
            dtype=("float64", "float32")[(index // 4) % 2], seed=index,
        ))
    return cases


def edge_cases() -> list[StreamCaseSpec]:
    """Unconstrained hc, initialisations, large Hres logits, and RMSNorm dominated by eps."""
    cases = []
    for n, dynamic in itertools.product((2, 4), (False, True)):
        depth, width = _size(n, dynamic)
        label = "dynamic" if dynamic else "static"
        cases.append(StreamCaseSpec(
            f"hc_n{n}_{label}", StreamConfig(streams=n, mode="hc", dynamic=dynamic),
            kind="tanh_linear", depth=depth, shape=(2, 2, width), seed=100 + n + dynamic,
        ))
    for reduce in REDUCES:
        cases.append(StreamCaseSpec(
            f"init_mhc_n4_{reduce}", StreamConfig(streams=4, reduce=reduce), depth=2,
            shape=(2, 2), dtype="float32", params="init", seed=110,
        ))
    cases += [
        StreamCaseSpec("init_hc_n4_sum", StreamConfig(streams=4, mode="hc"), depth=2,
                       shape=(2, 2), dtype="float32", params="init", seed=111),
        StreamCaseSpec("init_mhc_n1_mean", StreamConfig(streams=1, reduce="mean"),
                       kind="tanh_linear", dtype="float32", params="init", seed=112),
        StreamCaseSpec("init_mhc_n2_static_gated",
                       StreamConfig(streams=2, dynamic=False, reduce="gated"),
                       kind="tanh_linear", shape=(2, 2, 3), params="init", seed=113),
        StreamCaseSpec("edge_sinkhorn_large_logits",
                       StreamConfig(streams=4, dynamic=False), params="large_res", seed=120),
        StreamCaseSpec("edge_sinkhorn_large_logits_f32",
                       StreamConfig(streams=4, dynamic=False, reduce="mean"),
                       dtype="float32", params="large_res", seed=121),
        StreamCaseSpec("edge_rms_eps_dominates",
                       StreamConfig(streams=2, reduce="gated"), h_scale=1e-4, seed=122),
        StreamCaseSpec("edge_rms_large_eps",
                       StreamConfig(streams=2, rms_eps=0.25, sinkhorn_iterations=5),
                       kind="tanh_linear", shape=(2, 2, 3), seed=123),
    ]
    return cases


def all_cases() -> list[StreamCaseSpec]:
    return grid_cases() + edge_cases()


def _draw_params(spec: StreamCaseSpec, width: int, rng: np.random.Generator) -> dict:
    config, depth, n = spec.config, spec.depth, spec.config.streams
    shapes = parameter_shapes(config, depth, width)
    if spec.params == "init":
        return init_parameters(config, depth, width)
    draws = {
        PHI_PRE: lambda s: rng.standard_normal(s) / np.sqrt(n * width),
        PHI_POST: lambda s: rng.standard_normal(s) / np.sqrt(n * width),
        PHI_RES: lambda s: rng.standard_normal(s) / np.sqrt(n * width),
        A_PRE: lambda s: 1.0 + 0.2 * rng.standard_normal(s),
        A_POST: lambda s: 1.0 + 0.2 * rng.standard_normal(s),
        A_RES: lambda s: 1.0 + 0.2 * rng.standard_normal(s),
        B_PRE: lambda s: rng.standard_normal(s),
        B_POST: lambda s: 0.5 * rng.standard_normal(s),
        B_RES: lambda s: rng.standard_normal(s),
        REDUCE_LOGITS: lambda s: rng.standard_normal(s),
    }
    params = {key: draws[key](shape) for key, shape in shapes.items()}
    if not config.constrained:
        params[B_RES] = np.eye(n) + 0.3 * params[B_RES]
    if spec.params == "large_res":
        params[B_RES] = 12.0 * params[B_RES]
    return params


def _draw(spec: StreamCaseSpec) -> dict[str, Any]:
    rng = np.random.default_rng(spec.seed)
    depth, width = spec.depth, spec.shape[-1]
    inputs: dict[str, Any] = {
        "h": spec.h_scale * rng.standard_normal(spec.shape),
        "weight": rng.standard_normal((depth, width, width)) / np.sqrt(width),
        "bias": 0.1 * rng.standard_normal((depth, width)),
        "grad_output": rng.standard_normal(spec.shape),
        "params": _draw_params(spec, width, rng),
    }
    if spec.dtype == "float32":
        def f32(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: f32(v) for k, v in value.items()}
            return value.astype(np.float32).astype(np.float64)

        inputs = f32(inputs)
    return inputs


def compute_expected(config: StreamConfig, kind: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """The spec's outputs for one case: coefficients, states, output, statistics, gradients."""
    args = (inputs["params"], kind, inputs["weight"], inputs["bias"])
    trace = forward(config, inputs["h"], *args)
    grads = backward(config, trace, *args, inputs["grad_output"])
    return {
        "hpre": trace.hpre,
        "hpost": trace.hpost,
        "hres": trace.hres,
        "states": np.stack(trace.states),
        "output": trace.output,
        "statistics": summary(trace),
        "gradients": {
            "h": grads.h,
            "weight": grads.weight,
            "bias": grads.bias,
            "params": grads.params,
            "states": np.stack(grads.states),
        },
    }


def _arrays(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _arrays(v) for k, v in value.items()}
    return np.array(value, dtype=np.float64)


def render(spec: StreamCaseSpec) -> str:
    """The JSON text of one case (deterministic: fixed seeds, einsum, sorted keys)."""
    inputs = _draw(spec)
    document = {
        "vectors_version": STREAM_VECTORS_VERSION,
        "spec_version": SPEC_VERSION,
        "name": spec.name,
        "config": spec.config.to_dict(),
        "block_kind": spec.kind,
        "dtype": spec.dtype,
        "inputs": inputs,
        "expected": compute_expected(spec.config, spec.kind, inputs),
    }
    return to_json_text(document)


def write_vectors(directory: str | Path) -> list[Path]:
    """Write every case and a manifest into ``directory``; returns the paths written."""
    return write_cases(directory, ((spec.name, render(spec)) for spec in all_cases()),
                       STREAM_VECTORS_VERSION)


def load_case(path: str | Path) -> StreamCase:
    """Read one case file into float64 arrays."""
    document = json.loads(Path(path).read_text())
    return StreamCase(
        name=document["name"],
        config=StreamConfig.from_dict(document["config"]),
        kind=document["block_kind"],
        dtype=document["dtype"],
        inputs=_arrays(document["inputs"]),
        expected=_arrays(document["expected"]),
    )


def load_vectors(directory: str | Path) -> list[StreamCase]:
    """Every case listed in the manifest of ``directory``."""
    return [load_case(path) for path in case_paths(directory)]


def default_directory() -> Path:
    """The committed vectors: ``conformance/vectors/streams`` next to the package."""
    return Path(__file__).resolve().parents[2] / "conformance" / "vectors" / "streams"


def main(argv: list[str] | None = None) -> None:
    run_generator(__doc__.split("\n")[0], default_directory(), write_vectors, argv)


if __name__ == "__main__":
    main()
