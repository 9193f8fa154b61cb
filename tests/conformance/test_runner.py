"""The matrix machinery: verdicts per cell, "not run" for missing frameworks, crashes."""

import json

import numpy as np

from conformance.backends import Backend
from conformance.runner import case_group, failed, flatten_expected, render_matrix, run, to_json
from conformance.tolerances import errors
from mhc_spec.streams import vectors as stream_vectors
from mhc_spec.vectors import compute_expected, default_directory, load_vectors

CASES = load_vectors(default_directory())


class SpecBackend(Backend):
    """Recomputes every quantity with mhc_spec, optionally corrupting one of them."""

    def __init__(self, name="spec", corrupt=None, requires=()):
        self.name, self.corrupt, self.requires = name, corrupt, requires

    def run(self, case):
        outputs = flatten_expected(compute_expected(case.config, case.kind, case.inputs))
        if self.corrupt and self.corrupt[0](case):
            outputs[self.corrupt[1]] = -outputs[self.corrupt[1]]
        return outputs


def test_errors_are_normwise_relative():
    assert errors(np.array([1.0, 2.0]), np.array([1.0, 4.0])) == (2.0, 0.5)
    assert errors(np.zeros(2), np.zeros(2)) == (0.0, 0.0)
    assert errors(np.array([1e-3]), np.zeros(1)) == (1e-3, 1e-3)
    assert errors(np.zeros(3), np.zeros(2)) == (np.inf, np.inf)
    assert errors(np.array([np.nan]), np.zeros(1)) == (np.inf, np.inf)


def test_a_correct_backend_passes_every_cell():
    cells = run([SpecBackend()], CASES)
    assert not failed(cells)
    assert {c.group for c in cells} == {case_group(c) for c in CASES}
    assert sum(c.cases for c in cells) == len(CASES)


def test_a_wrong_sign_in_one_gradient_fails_exactly_that_cell():
    def softmax_cases(case):
        return case.config.kind == "mhc/softmax" and not case.name.startswith(("edge", "init"))

    cells = run([SpecBackend(), SpecBackend("broken", (softmax_cases, "gradients.theta"))],
                CASES)
    bad = [(c.backend, c.group) for c in cells if c.status == "fail"]
    assert sorted(bad) == [("broken", "mhc/softmax float32"), ("broken", "mhc/softmax float64")]
    cell = next(c for c in cells if c.status == "fail")
    assert all("gradients.theta" in f for f in cell.failures)
    assert "FAIL" in render_matrix(cells)


def test_missing_framework_is_not_run_never_passed():
    cells = run([SpecBackend("ghost", requires=("no_such_framework_xyz",))], CASES)
    assert {c.status for c in cells} == {"not run"}
    assert not failed(cells)
    text = render_matrix(cells)
    assert "PASS" not in text and "not run (no_such_framework_xyz not installed)" in text
    report = json.loads(json.dumps(to_json(cells)))
    assert all(c["status"] == "not run" for c in report["cells"])


def test_a_crash_and_a_missing_quantity_fail_the_cell():
    class Crashing(SpecBackend):
        def run(self, case):
            if case.config.mode == "hc":
                raise RuntimeError("boom")
            outputs = super().run(case)
            if case.config.mode == "residual":
                del outputs["statistics.entropy"]
            return outputs

    cells = {c.group: c for c in run([Crashing("crashing")], CASES)}
    hc = cells["hc float64"]
    assert hc.status == "fail" and "RuntimeError: boom" in hc.failures[0]
    assert cells["residual float32"].status == "fail"
    assert "statistics.entropy" in cells["residual float32"].failures[0]
    assert cells["mhc/simplex float64"].status == "pass"


STREAM_CASES = stream_vectors.load_vectors(stream_vectors.default_directory())


class StreamSpecBackend(Backend):
    """Recomputes every stream quantity with mhc_spec.streams, with optional corruptions."""

    def __init__(self, name="spec", corrupt=lambda case, outputs: None):
        self.name, self.corrupt = name, corrupt

    def run(self, case):
        expected = stream_vectors.compute_expected(case.config, case.kind, case.inputs)
        outputs = flatten_expected(expected)
        self.corrupt(case, outputs)
        return outputs


def test_stream_cases_get_rows_of_their_own():
    cells = run([StreamSpecBackend()], STREAM_CASES)
    assert not failed(cells)
    groups = {c.group for c in cells}
    assert "streams mhc/sinkhorn dynamic float64" in groups
    assert "streams hc float64" in groups and "streams initialisations float32" in groups
    assert sum(c.cases for c in cells if c.group.startswith("streams")) == len(STREAM_CASES)


def test_parameter_gradients_share_one_scale():
    """At initialisation the b_res gradient vanishes in exact arithmetic (the spec holds
    ~1e-19 noise): float32-sized noise there passes, measured against the largest parameter
    gradient; an error of 1e-4 of that gradient in b_res fails."""
    case = next(c for c in STREAM_CASES if c.name == "init_mhc_n4_sum")
    quantity = "gradients.params.streams.b_res"
    grads = case.expected["gradients"]["params"]
    assert np.abs(grads["streams.b_res"]).max() < 1e-12
    largest = max(np.abs(v).max() for v in grads.values())

    def noise(size):
        def corrupt(c, outputs):
            if c.name == case.name:
                outputs[quantity] = outputs[quantity] + size * largest
        return corrupt

    quiet = run([StreamSpecBackend("quiet", noise(1e-7))], [case])
    loud = run([StreamSpecBackend("loud", noise(1e-4))], [case])
    assert not failed(quiet)
    assert failed(loud) and quantity in loud[0].failures[0]


def test_a_wrong_sign_in_a_stream_gradient_fails_exactly_its_cells():
    def flip(case, outputs):
        if case.config.mode == "hc":
            outputs["gradients.params.streams.b_res"] *= -1

    cells = run([StreamSpecBackend("broken", flip)], STREAM_CASES)
    # hc cases live in their own row and among the initialisations (init_hc_n4_sum).
    assert sorted(c.group for c in cells if c.status == "fail") == [
        "streams hc float64", "streams initialisations float32"]
