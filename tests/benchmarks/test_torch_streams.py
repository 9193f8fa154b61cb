"""The torch_streams section (issue #8) on tiny shapes: every variant timed round-robin and
profiled, the stacks wired as intended (checked against closed forms at initialisation),
the profile's split of backward operators, targets and report. No timing assertions; the
peer's tests need hyper-connections 0.4.11 in benchmarks/.peer-hc and are skipped, saying
so, only where that package is absent (no network is used)."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks import peer_hc
from benchmarks.report import render
from benchmarks.stream_profile import (
    BRANCH,
    MIX,
    SINKHORN,
    breakdown,
    classify,
    forward_parts,
    profile_steps,
)
from benchmarks.stream_stacks import OUR_TARGET, OURS, PEERS, RESIDUAL, STREAMS, build
from benchmarks.streams_report import ABLATIONS
from benchmarks.targets import evaluate
from benchmarks.torch_stacks import linear_layers
from benchmarks.torch_streams import run

PEER_ABSENT = ("hyper-connections 0.4.11 is not installed in benchmarks/.peer-hc (bash "
               "benchmarks/run.sh installs it): the peer variants are NOT checked")
WIDTH, BATCH, DEPTH = 8, 4, 3


def _residual_output(layers, x, pre: float = 1.0, post: float = 1.0) -> torch.Tensor:
    """h_{l+1} = h_l + post F_l(pre h_l), summed over the n equal streams."""
    h = x
    for layer in layers:
        h = h + post * layer(pre * h)
    return STREAMS * h


def test_section_times_and_profiles_every_variant_without_the_peer() -> None:
    payload = run(WIDTH, BATCH, DEPTH, include_peer=False, warmup=1, min_rounds=3,
                  max_rounds=3, budget_s=0.0, profile_steps=1, log=lambda line: None)
    names = [timing["name"] for timing in payload["timings"]]
    assert names == [RESIDUAL, *OURS]
    assert all(timing["n"] == 3 for timing in payload["timings"])
    assert payload["peer"] is None
    assert any("--no-peer" in note for note in payload["notes"])
    assert set(payload["profile"]) == {RESIDUAL, *OURS}
    sinkhorn = {name: profile["parts"][SINKHORN]["aten_calls_per_layer"]
                for name, profile in payload["profile"].items()}
    # Only mode mhc projects Hres by Sinkhorn; the residual stack and hc have none.
    assert sinkhorn[RESIDUAL] == 0 and sinkhorn["ours hc dynamic"] == 0
    assert sinkhorn["ours hc static"] == 0
    assert sinkhorn[OUR_TARGET] > 0 and sinkhorn["ours mhc static"] > 0
    assert payload["native_kernels"]  # CI's machines have a C compiler


@pytest.fixture
def float64_default():
    """Parameters created in float64, so initial values such as logit(Hpre) are exact."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("name", list(OURS))
def test_ours_at_initialisation_is_n_copies_of_the_residual_stack(
        name: str, float64_default: None) -> None:
    # phi = 0, Hpre sums to 1, Hpost = 2 sigmoid(0) = 1 and Hres rows sum to 1, so n equal
    # streams stay equal to the residual stack's h and the sum read-out gives n h.
    torch.manual_seed(0)
    layers = linear_layers(WIDTH, DEPTH)
    x = torch.randn(BATCH, WIDTH)
    model = build(name, layers)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    torch.testing.assert_close(model(x), _residual_output(layers, x), rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not peer_hc.is_installed(), reason=PEER_ABSENT)
@pytest.mark.parametrize("name", list(PEERS))
def test_peer_at_initialisation_matches_its_closed_form(name: str) -> None:
    # hyper-connections' init: dynamic weights 0, a one-hot pre-mix on stream l mod n, Hres
    # logits I, post weights 1. HC uses them as they are (the residual stack per stream);
    # mHC applies sigmoid (pre: sigmoid(1) + 3 sigmoid(0)), 2 sigmoid (post) and Sinkhorn.
    torch.manual_seed(0)
    layers = [layer.double() for layer in linear_layers(WIDTH, DEPTH)]
    x = torch.randn(BATCH, WIDTH, dtype=torch.float64)
    model = build(name, layers).double()
    sigmoid_one = 1 / (1 + math.exp(-1))
    expected = (_residual_output(layers, x) if name == "peer hc" else
                _residual_output(layers, x, sigmoid_one + 1.5, 2 * sigmoid_one))
    # The peer's mHC computes its coefficients and mix in float32 whatever the input.
    tolerance = 1e-10 if name == "peer hc" else 1e-5
    torch.testing.assert_close(model(x), expected, rtol=tolerance, atol=tolerance)


def test_backward_operators_take_the_part_of_their_forward_operator() -> None:
    model = build(RESIDUAL, linear_layers(WIDTH, DEPTH))
    x, g = torch.randn(BATCH, WIDTH), torch.randn(BATCH, WIDTH)
    events = profile_steps(model, x, g, steps=1, warmup=0)
    by_sequence = forward_parts(events)
    backward = [e for e in events if e.name.startswith("autograd::engine::evaluate_function")]
    parts = {e.name.split(": ", 1)[1]: classify(e, by_sequence) for e in backward
             if "AccumulateGrad" not in e.name}
    # AddmmBackward0 / TBackward0 come from each Linear, AddBackward0 from h + F(h).
    assert parts == {"AddmmBackward0": BRANCH, "TBackward0": BRANCH, "AddBackward0": MIX}
    # The matmuls inside the backward nodes have no Python caller and still count as branch.
    matmuls = [e for e in events if e.name == "aten::mm"]
    assert matmuls and {classify(e, by_sequence) for e in matmuls} == {BRANCH}
    parts = breakdown(events, steps=1, depth=DEPTH, top_operators=50)["parts"]
    operators = {part: {name for name, _, _ in parts[part]["top_operators"]} for part in parts}
    assert {"aten::linear", "aten::mm"} <= operators[BRANCH]   # forward, backward products
    assert "aten::add" in operators[MIX]                        # h + F(h)
    assert parts[BRANCH]["aten_calls_per_layer"] > 0


def test_ablations_telescope_from_the_residual_to_our_target() -> None:
    # Each row is minuend - subtrahend; consecutive rows share a stack, so they sum to
    # ours - residual.
    assert ABLATIONS[0][2] == RESIDUAL and ABLATIONS[-1][1] == OUR_TARGET
    for (_, _, subtrahend), (_, minuend, _) in zip(ABLATIONS[1:], ABLATIONS[:-1],
                                                   strict=True):
        assert subtrahend == minuend


def _payload(medians: dict[str, float]) -> dict[str, object]:
    parts = {part: {"us_per_layer": 10.0, "aten_calls_per_layer": 4.0}
             for part in (BRANCH, "coefficient projection", SINKHORN, MIX, "other")}
    return {
        "section": "torch_streams", "width": 512, "batch": 256, "depth": 24, "streams": 4,
        "sinkhorn_iterations": 20, "dtype": "float32",
        "threads": {"intra_op": 2, "inter_op": 1}, "load_before": [0, 0, 0],
        "load_after": [0, 0, 0], "notes": [],
        "peer": {"versions": dict(peer_hc.PINNED), "variants": {"peer mhc": "its mHC"},
                 "gaps": ["peer static HC: not measured"]},
        "timings": [{"name": name, "median_s": value, "p25_s": value, "p75_s": value,
                     "n": 20, "first_s": value} for name, value in medians.items()],
        "profile": {RESIDUAL: {"steps": 5, "depth": 24, "wall_us_per_step": 1e5,
                               "parts": parts},
                    OUR_TARGET: {"steps": 5, "depth": 24, "wall_us_per_step": 2e5,
                                 "parts": parts}},
    }


def test_stream_targets_and_report_from_synthetic_results() -> None:
    medians = {RESIDUAL: 1.0, OUR_TARGET: 1.9, "ours mhc static": 1.5,
               "ours hc dynamic": 1.6, "ours hc static": 1.3, "peer mhc": 3.8,
               "peer hc": 1.8}
    results = {"torch_streams": _payload(medians)}
    status = {o.target.split(" (")[0]: (o.met, o.measured) for o in evaluate(results)}
    assert status["streams: ours <= 2.0x residual"] == (True, "ours mhc 1.900x")
    met, measured = status["streams: ours faster than every hyper-connections 0.4.11 variant"]
    assert met is False  # peer hc at 1.8 beats ours at 1.9
    assert "peer mhc 2.00x" in measured and "peer hc 0.95x" in measured
    text = render(results)
    assert "## Multi-stream stacks, eager forward+backward (issue #8)" in text
    assert "### Distance from the paper's 6.7% overhead (fused GPU kernels) and why" in text
    assert "1.90x the residual stack (+90%)" in text
    # Ablation rows in us per layer: (1.3 - 1.0) / 24 s, (1.6 - 1.3) / 24 s, (1.9 - 1.6) / 24 s.
    assert text.count("| 12500 |") == 3
    assert "peer static HC: not measured" in text
    assert "DISTURBED" not in text and "for the residual's add" in text
    # A profile slower than 1.5x the timed median was hit by other load: said, not used.
    results["torch_streams"]["profile"][RESIDUAL]["wall_us_per_step"] = 2e6
    text = render(results)
    assert "DISTURBED: the profile of `residual`" in text
    assert "for the residual's add" not in text


@pytest.mark.parametrize("native", [True, False])
def test_sinkhorn_sentence_names_the_path_that_ran(native: bool) -> None:
    from benchmarks.streams_report import sinkhorn_sentence

    payload = {"batch": 256, "streams": 4, "sinkhorn_iterations": 20, "native_kernels": native}
    text = sinkhorn_sentence(payload, {"us_per_layer": 123.4, "aten_calls_per_layer": 82.0},
                             per_call=7.0)
    if native:
        assert "one native C call per direction" in text and "123 us per layer" in text
        assert "42 calls per direction" in text
    else:
        assert "82 calls per layer and step at ~7 us each" in text
