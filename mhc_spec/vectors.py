"""Golden vectors: deterministic reference cases that every backend must reproduce.

Regenerate (the test suite fails if the committed files differ)::

    python -m mhc_spec.vectors conformance/vectors

Each case is one JSON file holding the configuration, the inputs and parameters, and the
spec's outputs: padded weights, gates, all states, statistics and every gradient of
loss = sum(G * s_L). References are computed in float64; a ``float32`` case has inputs that
are exactly representable in float32 and is meant to be run by a backend in float32.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mhc_spec.config import MHCConfig
from mhc_spec.golden_files import case_paths, run_generator, to_json_text, write_cases
from mhc_spec.gradients import backward
from mhc_spec.parameters import init_gamma, init_theta
from mhc_spec.recurrence import forward
from mhc_spec.statistics import amplification, attenuation, entropy, highway_profile, skip_gain
from mhc_spec.version import SPEC_VERSION

VECTORS_VERSION = 1


@dataclass(frozen=True)
class CaseSpec:
    """How to generate one case. ``theta`` of ``"random"`` draws N(0, 1) logits,
    ``"init"`` uses the config's initialisation, an array is taken as given."""

    name: str
    config: MHCConfig
    kind: str = "linear"
    depth: int = 3
    shape: tuple[int, ...] = (2, 3)
    dtype: str = "float64"
    theta: Any = "random"
    seed: int = 0


@dataclass
class GoldenCase:
    """A loaded case: the config, inputs and expected outputs as float64 arrays."""

    name: str
    config: MHCConfig
    kind: str
    dtype: str
    inputs: dict[str, np.ndarray | None]
    expected: dict[str, Any] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return int(self.inputs["weight"].shape[0])


KINDS = (
    ("residual", "simplex"),
    ("hc", "simplex"),
    ("mhc", "simplex"),
    ("mhc", "softmax"),
    ("mhc", "identity"),
)
TAUS = (0.5, 1.0, 3.0)


def grid_cases() -> list[CaseSpec]:
    """Every mode/constraint x H in {1, 2, 4, 7} x depth in {1, 3, 9}; gating, tau, block
    kind, input rank and dtype rotate so each value meets every mode."""
    cases = []
    for index, ((mode, constraint), h, depth) in enumerate(
        itertools.product(KINDS, (1, 2, 4, 7), (1, 3, 9))
    ):
        gating = index % 2 == 1
        tau = TAUS[index % 3]
        kind = ("linear", "tanh_linear")[(index // 2) % 2]
        shape = ((2, 3), (2, 3, 3))[(index // 3) % 2]
        dtype = ("float64", "float32")[(index // 6) % 2]
        config = MHCConfig(
            max_history=h, mode=mode, constraint=constraint, temperature=tau,
            epsilon=0.2, gating=gating,
        )
        label = config.kind.replace("/", "-")
        cases.append(CaseSpec(
            name=f"grid_{label}_H{h}_L{depth}", config=config, kind=kind, depth=depth,
            shape=shape, dtype=dtype, seed=index,
        ))
    return cases


def edge_cases() -> list[CaseSpec]:
    """Exact zeros, ties, equal logits, huge logits, tiny temperature, initialisations, and
    logits 1e-3 away from a sparsemax support change."""
    simplex = MHCConfig(max_history=4)
    # Layers 1..3 see only K < 4 logits; the rows of interest start at layer 4 (K = 4).
    lead = np.tile([0.0, 0.0, 0.0, 0.5], (3, 1))
    zeros_and_ties = np.vstack([lead, [
        [3.0, -2.0, 0.0, 1.0],
        [0.3, 0.3, 1.0, 1.0],
        [-1.0, -1.0, 1.0, 1.2],
        [2.0, 2.0, 2.0, -5.0],
        [0.0, 0.0, 0.0, 0.0],
    ]])
    huge = np.vstack([lead * 1e4, [
        [1e4, -1e4, 1e4 - 0.25, 1e4],
        [-1e4, 1e4, -1e4, 1e4 - 0.5],
        [1e4, 1e4, -1e4, -1e4],
    ]])
    # The third logit enters the support at 0.75 (rows 1-2: just inside, just outside);
    # in row 3 the zeros sit 5e-4 below the threshold.
    near_kink = np.vstack([lead, [
        [0.0, 1.0, 0.75 + 1e-3, 1.5],
        [0.0, 1.0, 0.75 - 1e-3, 1.5],
        [0.0, 0.0, 1e-3, 1.0],
    ]])
    cases = [
        CaseSpec("edge_simplex_zeros_ties", simplex, depth=8, theta=zeros_and_ties),
        CaseSpec("edge_simplex_zeros_ties_f32", simplex, depth=8, theta=zeros_and_ties,
                 dtype="float32"),
        CaseSpec("edge_identity_zeros_ties",
                 MHCConfig(max_history=4, constraint="identity", epsilon=0.3),
                 depth=8, theta=zeros_and_ties, kind="tanh_linear"),
        CaseSpec("edge_simplex_near_support_change", simplex, depth=6, theta=near_kink),
        CaseSpec("edge_simplex_huge_logits", simplex, depth=6, theta=huge),
        CaseSpec("edge_softmax_huge_logits", MHCConfig(max_history=4, constraint="softmax"),
                 depth=6, theta=huge),
        CaseSpec("edge_identity_huge_logits",
                 MHCConfig(max_history=4, constraint="identity"), depth=6, theta=huge),
        CaseSpec("edge_hc_large_weights", MHCConfig(max_history=4, mode="hc"), depth=6,
                 theta=1.5e-4 * huge, kind="tanh_linear"),
        CaseSpec("edge_simplex_tiny_tau", MHCConfig(max_history=4, temperature=1e-3),
                 depth=9, seed=1),
        CaseSpec("edge_softmax_tiny_tau",
                 MHCConfig(max_history=4, constraint="softmax", temperature=1e-3),
                 depth=9, seed=2),
        CaseSpec("edge_softmax_equal_logits", MHCConfig(max_history=7, constraint="softmax"),
                 depth=9, theta=np.zeros((9, 7))),
    ]
    for mode, constraint in KINDS[1:]:
        for init in ("recent", "uniform", "newest"):
            config = MHCConfig(max_history=4, mode=mode, constraint=constraint, init=init,
                               gating=init == "recent")
            label = config.kind.replace("/", "-")
            cases.append(CaseSpec(f"init_{label}_{init}", config, depth=6, theta="init",
                                  dtype="float32", seed=3))
    return cases


def all_cases() -> list[CaseSpec]:
    return grid_cases() + edge_cases()


def _draw(spec: CaseSpec) -> dict[str, np.ndarray | None]:
    rng = np.random.default_rng(spec.seed)
    config, depth = spec.config, spec.depth
    width = spec.shape[-1]
    inputs: dict[str, np.ndarray | None] = {
        "x": rng.standard_normal(spec.shape),
        "weight": rng.standard_normal((depth, width, width)) / np.sqrt(width),
        "bias": 0.1 * rng.standard_normal((depth, width)),
        "grad_output": rng.standard_normal(spec.shape),
    }
    if not config.has_logits:
        theta = None
    elif isinstance(spec.theta, str) and spec.theta == "init":
        theta = init_theta(config, depth)
    elif isinstance(spec.theta, str):
        theta = rng.standard_normal((depth, config.max_history))
    else:
        theta = np.array(spec.theta, dtype=np.float64)
    inputs["theta"] = theta
    if not config.gating:
        inputs["gamma"] = None
    elif isinstance(spec.theta, str) and spec.theta == "init":
        inputs["gamma"] = init_gamma(config, depth)
    else:
        inputs["gamma"] = 1.0 + 0.5 * rng.standard_normal(depth)
    if spec.dtype == "float32":
        inputs = {k: None if v is None else v.astype(np.float32).astype(np.float64)
                  for k, v in inputs.items()}
    return inputs


def compute_expected(
    config: MHCConfig, kind: str, inputs: dict[str, np.ndarray | None]
) -> dict[str, Any]:
    """The spec's outputs for one case: weights, gates, states, statistics and gradients."""
    args = (inputs["theta"], inputs["gamma"], kind, inputs["weight"], inputs["bias"])
    trace = forward(config, inputs["x"], *args)
    grads = backward(config, trace, *args, inputs["grad_output"])
    gates = trace.gates if config.gating else None
    ent = entropy(trace.weights, config.mode)
    amp = amplification(trace.weights, gates)
    profile = highway_profile(grads.states)
    return {
        "weights": trace.weights,
        "gates": trace.gates,
        "states": np.stack(trace.states),
        "statistics": {
            "entropy": ent,
            "mean_entropy": float(ent.mean()),
            "skip_gain": skip_gain(trace.weights, gates),
            "amplification": amp,
            "max_amplification": float(amp.max()),
            "highway": profile,
            "attenuation": attenuation(profile),
        },
        "gradients": {
            "x": grads.x,
            "theta": grads.theta,
            "gamma": grads.gamma,
            "weight": grads.weight,
            "bias": grads.bias,
            "states": np.stack(grads.states),
        },
    }


def _arrays(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _arrays(v) for k, v in value.items()}
    if isinstance(value, list):
        return np.array(value, dtype=np.float64)
    return value


def render(spec: CaseSpec) -> str:
    """The JSON text of one case (deterministic: fixed seeds, einsum, sorted keys)."""
    inputs = _draw(spec)
    document = {
        "vectors_version": VECTORS_VERSION,
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
                       VECTORS_VERSION)


def load_case(path: str | Path) -> GoldenCase:
    """Read one case file into float64 arrays."""
    document = json.loads(Path(path).read_text())
    inputs = {k: None if v is None else np.array(v, dtype=np.float64)
              for k, v in document["inputs"].items()}
    return GoldenCase(
        name=document["name"],
        config=MHCConfig.from_dict(document["config"]),
        kind=document["block_kind"],
        dtype=document["dtype"],
        inputs=inputs,
        expected=_arrays(document["expected"]),
    )


def load_vectors(directory: str | Path) -> list[GoldenCase]:
    """Every case listed in the manifest of ``directory``."""
    return [load_case(path) for path in case_paths(directory)]


def default_directory() -> Path:
    """The committed vectors: ``conformance/vectors`` next to this package."""
    return Path(__file__).resolve().parent.parent / "conformance" / "vectors"


def main(argv: list[str] | None = None) -> None:
    run_generator(__doc__.split("\n")[0], default_directory(), write_vectors, argv)


if __name__ == "__main__":
    main()
