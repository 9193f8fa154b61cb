"""Round-robin timing: every variant runs once per round, so drift and noise from other
processes spread evenly over all variants instead of biasing whichever ran last.

Each timed call follows untimed calls of the same variant (at least ``settle`` calls and
``settle_s`` seconds): a variant's step costs more for a few milliseconds after another
variant's than after its own (measured here: whichever stack was timed right after the
residual stack paid ~0.3 ms of a 4 ms torch step at 64x64; in JAX, one settling call of
2 ms still left 0.25 ms of a 2.2 ms step, three left none). A training loop runs one model
step after step, so the sample is the step that follows its own."""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class Variant:
    """One thing to time: ``step`` is the timed work, ``prepare`` runs untimed before it."""

    name: str
    step: Callable[[], object]
    prepare: Callable[[], object] | None = None
    info: dict[str, object] = field(default_factory=dict)


@dataclass
class Timing:
    """Samples of one variant, in seconds; ``first_s`` is the first (cold) call."""

    name: str
    first_s: float
    samples: list[float]
    info: dict[str, object]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def quantile(self, q: float) -> float:
        """The q-quantile of the samples (linear interpolation between order statistics)."""
        ordered = sorted(self.samples)
        position = q * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    def summary(self) -> dict[str, object]:
        return {
            "name": self.name,
            "median_s": self.median,
            "p25_s": self.quantile(0.25),
            "p75_s": self.quantile(0.75),
            "n": len(self.samples),
            "first_s": self.first_s,
            **self.info,
        }


def _timed(variant: Variant, settle: int = 0, settle_s: float = 0.0) -> float:
    calls, start = 0, time.perf_counter()
    while calls < settle or (calls and time.perf_counter() - start < settle_s):
        if variant.prepare is not None:
            variant.prepare()
        variant.step()
        calls += 1
    if variant.prepare is not None:
        variant.prepare()
    start = time.perf_counter()
    variant.step()
    return time.perf_counter() - start


def settling_calls(call_s: float, settle: int, settle_s: float) -> int:
    """How many untimed calls of ``call_s`` seconds precede each timed one: ``settle``, and
    more until they last ``settle_s`` (none when ``settle`` is 0)."""
    if settle == 0 or call_s <= 0:
        return settle
    return max(settle, math.ceil(settle_s / call_s))


def plan_rounds(round_s: float, budget_s: float, min_rounds: int, max_rounds: int) -> int:
    """Rounds that fit in ``budget_s`` given one round's time, clamped to [min, max]."""
    if round_s <= 0:
        return max_rounds
    return max(min_rounds, min(max_rounds, int(budget_s / round_s)))


def run_interleaved(
    variants: Sequence[Variant],
    warmup: int = 3,
    min_rounds: int = 20,
    max_rounds: int = 200,
    budget_s: float = 60.0,
    log: Callable[[str], object] = print,
    settle: int = 1,
    settle_s: float = 0.01,
) -> list[Timing]:
    """Warm every variant up, then time them round-robin (rotating the order each round),
    each timed call right after untimed calls of the same variant: ``settle`` of them and
    more until ``settle_s`` seconds have passed (none more when ``settle`` is 0).

    The number of rounds is ``budget_s`` divided by one round's time (the settling and timed
    calls of each variant) as the fastest warm-up calls predict it, clamped to [min_rounds,
    max_rounds]; if other load slows the rounds down, timing stops once ``budget_s`` has
    passed and ``min_rounds`` are done. The garbage collector runs between rounds, never
    inside a step.
    """
    firsts: dict[str, float] = {}
    fastest: dict[str, float] = {}
    for variant in variants:
        firsts[variant.name] = _timed(variant)
        warm = [_timed(variant) for _ in range(max(warmup - 1, 1))]
        fastest[variant.name] = min(warm)
        log(f"  warm {variant.name}: first {firsts[variant.name]:.3f}s, "
            f"then {', '.join(f'{t * 1e3:.2f}' for t in warm)} ms")
    round_s = sum((1 + settling_calls(t, settle, settle_s)) * t for t in fastest.values())
    rounds = plan_rounds(round_s, budget_s, min_rounds, max_rounds)
    samples: dict[str, list[float]] = {variant.name: [] for variant in variants}
    enabled = gc.isenabled()
    gc.disable()
    start = time.perf_counter()
    try:
        for index in range(rounds):
            if index >= min_rounds and time.perf_counter() - start > budget_s:
                break
            shift = index % len(variants)
            for variant in [*variants[shift:], *variants[:shift]]:
                samples[variant.name].append(_timed(variant, settle, settle_s))
            gc.collect()
    finally:
        if enabled:
            gc.enable()
    return [Timing(v.name, firsts[v.name], samples[v.name], dict(v.info)) for v in variants]
