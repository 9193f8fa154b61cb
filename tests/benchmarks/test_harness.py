"""The benchmark harness's logic (no timing assertions): storage counting, round-robin
order, quantiles, step classification, target evaluation and the report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.interleave import (
    Timing,
    Variant,
    plan_rounds,
    run_interleaved,
    settling_calls,
)
from benchmarks.lightning_overhead import (
    HookClock,
    StepStamps,
    compare,
    compare_alternating,
    hook_seconds,
    make_even_step_gate,
)
from benchmarks.report import render
from benchmarks.targets import compiled_target, evaluate, jax_step_target
from benchmarks.torch_memory import saved_for_backward
from benchmarks.torch_stacks import (
    LearnedSkipStack,
    ResidualStack,
    build,
    linear_layers,
    variant_name,
)


def test_residual_stack_saves_each_linear_input_once() -> None:
    depth, batch, width = 3, 5, 8
    model = ResidualStack(linear_layers(width, depth))
    saved = saved_for_backward(model, torch.randn(batch, width))
    # Each Linear keeps its input (batch x width floats) for dW, and its weight for the
    # input's gradient, which the first layer does not need (x has no grad); adds keep nothing.
    assert saved["saved_activation_bytes"] == depth * batch * width * 4
    assert saved["saved_bytes"] == (depth * batch * width + (depth - 1) * width * width) * 4


class StackedViews(nn.Module):
    """Saves two views of one stacked tensor (one storage of 2 x batch x width floats) and,
    twice, the parameter p (one storage)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack([x * 2.0, x * 3.0])
        return stacked[0] * self.p + stacked[1] * self.p


def test_views_of_one_storage_count_once() -> None:
    saved = saved_for_backward(StackedViews(8), torch.randn(5, 8, requires_grad=True))
    assert saved["saved_activation_bytes"] == 2 * 5 * 8 * 4
    assert saved["saved_bytes"] == 2 * 5 * 8 * 4 + 8 * 4


def test_plan_rounds_clamps() -> None:
    assert plan_rounds(0.1, 10.0, 20, 200) == 100
    assert plan_rounds(1.0, 10.0, 20, 200) == 20
    assert plan_rounds(0.001, 10.0, 20, 200) == 200


def test_round_robin_runs_every_variant_once_per_round_rotating() -> None:
    calls: list[str] = []
    prepared: list[str] = []
    variants = [Variant(name, lambda n=name: calls.append(n), lambda n=name: prepared.append(n))
                for name in "abc"]
    timings = run_interleaved(variants, warmup=2, min_rounds=4, max_rounds=4, budget_s=0.0,
                              log=lambda line: None, settle=0)
    rounds = [calls[6 + 3 * i: 9 + 3 * i] for i in range(4)]  # after 2 warm-up calls each
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]
    assert rounds == [list("abc"), list("bca"), list("cab"), list("abc")]
    assert prepared == calls
    assert [len(t.samples) for t in timings] == [4, 4, 4]


def test_each_sample_times_the_call_after_a_settling_call_of_the_same_variant(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr("benchmarks.interleave.time.perf_counter", lambda: clock[0])
    calls: list[str] = []

    def step(name: str) -> None:
        # a variant's first call of a pair costs 100, the one after it 1 (a or b) or 2 (c)
        settled = calls[-1:] == [name] and calls[-2:-1] != [name]
        clock[0] += (2.0 if name == "c" else 1.0) if settled else 100.0
        calls.append(name)

    variants = [Variant(name, lambda n=name: step(n)) for name in "abc"]
    timings = run_interleaved(variants, warmup=2, min_rounds=3, max_rounds=3, budget_s=0.0,
                              log=lambda line: None, settle=1, settle_s=0.0)
    assert calls[6:] == [*"aabbcc", *"bbccaa", *"ccaabb"]
    assert [t.samples for t in timings] == [[1.0] * 3, [1.0] * 3, [2.0] * 3]


def test_settling_calls_cover_settle_s() -> None:
    assert settling_calls(0.002, 1, 0.01) == 5
    assert settling_calls(0.5, 1, 0.01) == 1
    assert settling_calls(0.002, 0, 0.01) == 0
    assert settling_calls(0.003, 2, 0.01) == 4


def test_settling_lasts_settle_s_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr("benchmarks.interleave.time.perf_counter", lambda: clock[0])
    calls: list[str] = []

    def step(name: str) -> None:
        clock[0] += 100.0
        calls.append(name)

    variants = [Variant(name, lambda n=name: step(n)) for name in "ab"]
    run_interleaved(variants, warmup=1, min_rounds=2, max_rounds=2, budget_s=0.0,
                    log=lambda line: None, settle=1, settle_s=250.0)
    # after the warm-up calls (2 each), three settling calls (300 >= 250) and the timed one
    assert calls[4:] == [*"aaaabbbb", *"bbbbaaaa"]


def test_quantiles_match_numpy_linear() -> None:
    samples = [0.3, 0.1, 0.4, 0.15, 0.9, 0.2]
    timing = Timing("x", 0.0, samples, {})
    for q in (0.0, 0.25, 0.5, 0.75, 1.0):
        assert timing.quantile(q) == pytest.approx(np.quantile(samples, q))
    assert timing.median == pytest.approx(np.median(samples))


def test_step_intervals_and_logging_classification() -> None:
    stamps = StepStamps()
    stamps.stamps = [(0, 0.0), (1, 1.0), (2, 1.5), (3, 3.5), (4, 4.0)]
    assert stamps.intervals() == [(1, 0.5), (2, 2.0), (3, 0.5)]  # step 0 dropped as warm-up
    plain = [(1, 1.0), (2, 2.0), (3, 1.0), (4, 2.0)]
    with_cb = [(1, 1.1), (2, 3.0), (3, 1.1), (4, 4.0)]
    result = compare(plain, with_cb, every=2)
    assert result["non_logging"]["ratio"] == pytest.approx(1.1)
    assert result["logging"]["ratio"] == pytest.approx(3.5 / 2.0)


def test_alternating_comparison_pairs_even_against_odd_away_from_logging() -> None:
    # every=10: steps 0, 1 and 9 (mod 10) are next to logging and left out.
    intervals = [(step, 2.0 if step % 2 == 0 else 1.0) for step in range(1, 20)]
    intervals[8] = (9, 100.0)   # the trainer's own logging step: ignored
    result = compare_alternating(intervals, every=10)
    assert result["ratio"] == pytest.approx(2.0)
    assert result["callback_n"] == 8 and result["plain_n"] == 6  # 2,4,6,8,12,14,16,18 / 3..17


def test_even_step_gate_forwards_and_times_the_hooks_of_even_steps_only() -> None:
    calls: list[tuple[str, int]] = []

    class Inner:
        def __getattr__(self, hook: str):
            return lambda trainer, *args: calls.append((hook, trainer.global_step))

    class Trainer:
        global_step = 0

    clock = HookClock()
    gate = make_even_step_gate(Inner(), clock)
    trainer = Trainer()
    for step in range(4):
        trainer.global_step = step
        gate.on_train_batch_start(trainer, None, None, step)
        gate.on_before_optimizer_step(trainer, None, None)
        trainer.global_step = step + 1  # the optimizer stepped
        gate.on_train_batch_end(trainer, None, None, None, step)
    assert [hook for hook, _ in calls] == ["on_train_batch_start", "on_before_optimizer_step",
                                           "on_train_batch_end"] * 2
    assert [step for _, step in calls] == [0, 0, 1, 2, 2, 3]
    assert sorted(clock.per_step) == [0, 2] and all(t > 0 for t in clock.per_step.values())
    # Steps next to logging (every=10: 0, 1, 9 mod 10) and odd steps are not counted.
    clock.per_step = {0: 5.0, 2: 1.0, 4: 3.0}
    assert hook_seconds(clock, [(step, 1.0) for step in range(6)], every=10) == [1.0, 3.0]


def _speed(shape: str, medians: dict[str, float]) -> dict[str, object]:
    return {"shape": shape, "timings": [
        {"name": name, "median_s": value, "p25_s": value, "p75_s": value, "n": 20,
         "first_s": value, "compiled": name.startswith("compiled")}
        for name, value in medians.items()], "load_before": [0, 0, 0],
        "load_after": [0, 0, 0]}


def _memory(name: str, activations: int) -> dict[str, object]:
    return {"shape": "64x64", "name": name, "saved_activation_bytes": activations,
            "saved_bytes": activations + 10, "peak_rss_bytes": 1000 + activations,
            "step_rss_bytes": activations}


def test_targets_from_synthetic_results() -> None:
    results = {
        "torch_speed_64x64": _speed("64x64", {
            "residual": 1.0, "mhc/simplex H4": 1.4, "mhc/softmax H4": 1.3, "hc H4": 1.2,
            "peer detach=False H4": 3.0, "compiled residual": 1.0,
            "compiled mhc/simplex H4": 1.04}),
        "torch_speed_512x256": _speed("512x256", {
            "residual": 1.0, "mhc/simplex H4": 1.2, "mhc/softmax H4": 1.05, "hc H4": 1.0,
            "peer detach=False H4": 1.1}),
        "torch_memory": {"rows": [
            _memory("residual", 100), _memory("mhc/simplex H4", 104),
            _memory("peer default H4", 500)]},
        "lightning_overhead": {
            "comparison": compare([(1, 1.0), (50, 2.0)], [(1, 1.03), (50, 3.0)], every=50),
            "non_logging_ratio_per_round": [1.03], "log_every_n_steps": 50, "rounds": 1,
            "steps_per_fit": 51, "shape": {"depth": 50, "width": 64, "batch": 64,
                                           "history": 4}},
        "jax_compile": {"width": 64, "batch": 64, "rows": [
            {"build": "scan", "depth": depth, "compile_s": total, "trace_lower_s": 0.5,
             "xla_compile_s": total - 0.5} for depth, total in ((25, 2.0), (200, 2.5))]},
    }
    status = {o.target.split(" (")[0]: o.met for o in evaluate(results)}
    assert status == {
        "torch eager <= 1.10x residual at 512x256": False,   # mhc/simplex at 1.2x
        "torch eager <= 1.50x residual at 64x64": True,
        "torch.compile <= 1.05x compiled residual": True,
        "faster than mhc 0.5.5": False,                      # 1.1 / 1.2 < 1 at 512x256
        ">= 2x faster than mhc 0.5.5": True,                 # 3.0 / 1.4
        "saved-for-backward activations <= 1.05x residual": True,  # the peer is not ours
        "callback overhead on non-logging steps <= 2%": False,
        "JAX jitted step <= 1.10x jitted residual": None,
        "scan compile time at depth 200 <= 1.5x depth 25": True,
        "streams: ours <= 2.0x residual": None,             # torch_streams did not run
        "streams: ours faster than every hyper-connections 0.4.11 variant": None,
    }
    text = render(results)
    assert "**MISSED**" in text and "**not measured**" in text


@pytest.mark.parametrize(("ours", "floor", "met"), [
    (1.15, 1.12, True),    # the floor is above 1.05x: the limit is 1.05 x 1.12 = 1.176x
    (1.19, 1.12, False),
    (1.06, 1.04, False),   # the floor is within 1.05x: the residual's limit holds
    (1.05, None, True),
    (1.06, None, False),
])
def test_compiled_target_falls_back_to_the_floor_only_where_it_is_above_the_limit(
        ours: float, floor: float | None, met: bool) -> None:
    medians = {"compiled residual": 1.0, "compiled hc H4": ours}
    if floor is not None:
        medians["compiled learned skips H4"] = floor
    results = {"torch_speed_64x64": _speed("64x64", medians),
               "torch_speed_512x256": _speed("512x256", {
                   "compiled residual": 2.0, "compiled mhc/simplex H4": 2.08})}
    outcome = compiled_target(results)
    assert outcome.met is met
    assert ("floor" in outcome.measured) is (floor is not None and floor > 1.05)


def test_jax_target_takes_the_fastest_hand_written_scan_as_the_floor() -> None:
    def shapes(ours: float, floors: tuple[float, float]) -> dict[str, object]:
        medians = {"residual scan": 1.0, "mhc/simplex H4 scan": ours,
                   "learned skips H4 scan": floors[0], "learned skips H4 G5 scan": floors[1],
                   "mhc/simplex H4 loop": 0.5}
        return {"jax_speed": {"shapes": {"64x64": [
            {"name": name, "median_s": value} for name, value in medians.items()]}}}

    assert jax_step_target(shapes(1.40, (1.70, 1.36))).met is True    # <= 1.05 x 1.36
    assert jax_step_target(shapes(1.45, (1.70, 1.36))).met is False   # the slower floor
    assert jax_step_target(shapes(1.12, (1.30, 1.08))).met is False   # floor within 1.10x
    assert jax_step_target(shapes(1.09, (1.30, 1.08))).met is True


def test_learned_skip_stack_is_the_residual_stack_when_it_keeps_the_newest_state() -> None:
    torch.manual_seed(0)
    layers = linear_layers(6, 5)
    x = torch.randn(3, 6, dtype=torch.float64)
    floor = build("learned skips H3", layers).double()
    assert isinstance(floor, LearnedSkipStack)
    with torch.no_grad():
        floor.weights.zero_()
        floor.weights[:, -1] = 1.0
        torch.testing.assert_close(floor(x), ResidualStack(layers).double()(x))


def test_learned_skip_stack_mixes_the_states_that_exist_with_their_weights() -> None:
    torch.manual_seed(0)
    layers = [layer.double() for layer in linear_layers(5, 4)]
    floor = LearnedSkipStack(layers, history=3).double()
    with torch.no_grad():
        floor.weights.copy_(torch.randn(4, 3, dtype=torch.float64))
    x = torch.randn(2, 5, dtype=torch.float64)
    states = [x]
    for index, layer in enumerate(layers):
        window = states[-3:]
        weights = floor.weights[index, 3 - len(window):]
        states.append(layer(states[-1]) + sum(w * s for w, s in zip(weights, window, strict=True)))
    torch.testing.assert_close(floor(x), states[-1])
    # The weights get true gradients: d out / d w[l, j] by finite differences.
    floor(x).sum().backward()
    eps = 1e-6
    with torch.no_grad():
        floor.weights[2, 1] += eps
        up = floor(x).sum()
        floor.weights[2, 1] -= 2 * eps
        down = floor(x).sum()
    assert floor.weights.grad[2, 1].item() == pytest.approx(((up - down) / (2 * eps)).item(),
                                                            rel=1e-6)


def test_variant_names_build_the_right_stacks() -> None:
    layers = linear_layers(4, 2)
    assert isinstance(build("residual", layers), ResidualStack)
    assert variant_name("mhc/simplex", 4) == "mhc/simplex H4"
    assert variant_name("residual", None) == "residual"


def test_lightning_section_reports_the_hook_time() -> None:
    from benchmarks.report import lightning_section

    payload = {
        "comparison": compare([(1, 1.0), (50, 2.0)], [(1, 1.03), (50, 3.0)], every=50),
        "non_logging_ratio_per_round": [1.03], "log_every_n_steps": 50, "rounds": 1,
        "steps_per_fit": 51, "shape": {"depth": 50, "width": 64, "batch": 64, "history": 4},
    }
    assert not any("own per-batch hooks" in line
                   for line in lightning_section({"lightning_overhead": payload}))
    payload["hook_time"] = {"median_s": 70e-6, "n": 12, "fraction_of_step": 0.0058}
    text = "\n".join(lightning_section({"lightning_overhead": payload}))
    assert "median 70 us per non-logging step (0.58% of the median step; n = 12)" in text


def test_sections_of_the_run_are_not_listed_as_partial_reruns() -> None:
    from benchmarks.report import within_run

    end = "2026-12-05T03:48:36+00:00"
    assert within_run("2026-12-05T03:34:10+00:00", end, 1034.0)  # 14.4 min into a 17 min run
    assert within_run("2026-12-05T03:49:00+00:00", end, 1034.0)  # within the slack
    assert not within_run("2026-12-05T01:50:00+00:00", end, 1034.0)  # an earlier rerun
    assert not within_run("2026-12-05T03:34:10+00:00", end, 60.0)
    assert not within_run("n/a", end, 1034.0)
