"""Property-based conformance: random configurations, logits (huge and tied included),
shapes and depths; every backend against the spec in float64."""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conformance.backends.jax_backend import JaxBackend
from conformance.backends.torch_backend import TorchBackend
from conformance.runner import compare_case
from mhc_spec import MHCConfig, padded_weights, sparsemax
from mhc_spec.vectors import GoldenCase, compute_expected

KINDS = [("residual", "simplex"), ("hc", "simplex"), ("mhc", "simplex"), ("mhc", "softmax"),
         ("mhc", "identity")]


def at_support_change(config: MHCConfig, theta: np.ndarray) -> bool:
    """Whether some sparsemax input sits on its threshold (the derivative jumps there, and
    implementations may round to either side), so no tolerance can compare gradients."""
    if config.mode != "mhc" or config.constraint == "softmax":
        return False
    h = config.max_history
    for layer, row in enumerate(theta, 1):
        z = row[h - min(h, layer):] / config.temperature
        a = sparsemax(z)
        support = a > 0
        tau = np.mean(z[support] - a[support])
        if np.any(np.abs(z[~support] - tau) <= 1e-7 * max(1.0, np.abs(z).max())):
            return True
    return False


def saturated_softmax(config: MHCConfig, theta: np.ndarray) -> bool:
    """Whether a softmax over two or more states is saturated past float64: its VJP
    a_i (g_i - <a, g>) cancels, so any evaluation, the spec's included, carries a relative
    error of about eps / (1 - max a) (the reason for edge_softmax_tiny_tau's override)."""
    if config.mode != "mhc" or config.constraint != "softmax":
        return False
    depth, h = theta.shape
    weights = padded_weights(config, theta, depth)
    several = np.minimum(np.arange(1, depth + 1), h) >= 2
    slack = 1.0 - weights.max(axis=-1)[several]
    return bool(np.any(np.finfo(np.float64).eps > 1e-11 * slack) or np.any(slack <= 0))


@st.composite
def cases(draw):
    mode, constraint = draw(st.sampled_from(KINDS))
    h, depth = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    config = MHCConfig(
        max_history=h, mode=mode, constraint=constraint,
        temperature=draw(st.sampled_from([0.05, 0.5, 1.0, 2.5])),
        epsilon=draw(st.sampled_from([0.0, 0.3, 0.9])), gating=draw(st.booleans()),
    )
    width = draw(st.integers(1, 4))
    shape = draw(st.sampled_from([(2, width), (1, 2, width)]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    style = draw(st.sampled_from(["normal", "tied", "huge"]))
    if style == "normal":
        theta = rng.standard_normal((depth, h))
    elif style == "tied":
        theta = rng.integers(-2, 3, size=(depth, h)).astype(np.float64) / 2
    else:
        theta = rng.choice([-1e4, 1e4], size=(depth, h)) + rng.integers(0, 4, (depth, h)) / 4
    if mode == "hc":
        theta = np.clip(theta, -1.5, 1.5)  # hc weights multiply: keep states finite
    assume(not at_support_change(config, theta))
    assume(not saturated_softmax(config, theta))
    kind = draw(st.sampled_from(["linear", "tanh_linear"]))
    inputs = {
        "x": rng.standard_normal(shape),
        "weight": rng.standard_normal((depth, width, width)) / np.sqrt(width),
        "bias": 0.1 * rng.standard_normal((depth, width)),
        "grad_output": rng.standard_normal(shape),
        "theta": theta if config.has_logits else None,
        "gamma": rng.standard_normal(depth) if config.gating else None,
    }
    case = GoldenCase(f"property_{style}", config, kind, "float64", inputs)
    case.expected = compute_expected(config, kind, inputs)
    return case


def check(backend, case):
    failures = [c for c in compare_case(case, backend.run(case)) if not c.passed]
    assert not failures, [(f.quantity, f.relative) for f in failures]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_torch_eager_matches_the_spec(case):
    check(TorchBackend(), case)


@pytest.mark.parametrize("build", ["loop", "scan"])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_jax_matches_the_spec(build, case):
    check(JaxBackend(build), case)
