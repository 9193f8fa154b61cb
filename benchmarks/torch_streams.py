"""PyTorch eager forward+backward of multi-stream stacks (issue #8): ours
(``mhc_torch.StreamSequential``, n=4, T=20) vs the plain residual stack and PyPI
``hyper-connections`` 0.4.11.

    python -m benchmarks.torch_streams [--quick] [--no-peer]

One process, one shape (24 x ``nn.Linear(512, 512)``, batch 256, float32, the issue's 2
threads). Every variant shares the same 24 layers and the same input and all are timed
round-robin (:func:`benchmarks.interleave.run_interleaved`); a timed step is
``model(x).backward(g)`` with a fixed ``g``, gradients cleared (set to None) untimed. Then
torch.profiler runs once over a few steps of the residual stack and of each of our variants
to split a layer's time into branch, coefficient projection, Sinkhorn and stream mix
(:mod:`benchmarks.stream_profile`). Writes benchmarks/results/torch_streams.json.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from benchmarks import machine, torch_threads
from benchmarks.interleave import Variant, run_interleaved
from benchmarks.peer_hc import installed_versions, missing_reason
from benchmarks.results_io import write_result
from benchmarks.stream_profile import COEFFICIENT_RULES, SINKHORN_RULES, profile_breakdown
from benchmarks.stream_stacks import (
    BATCH,
    DEPTH,
    OURS,
    PEER_GAPS,
    PEERS,
    RESIDUAL,
    SINKHORN_ITERATIONS,
    STREAMS,
    WIDTH,
    build,
    ours_missing,
)
from benchmarks.torch_speed import check_finite, step_variant
from benchmarks.torch_stacks import linear_layers

SECTION = "torch_streams"


def family(name: str) -> str:
    """``residual``, ``ours`` or ``peer``."""
    return RESIDUAL if name == RESIDUAL else name.split(" ", 1)[0]


def variant_names(include_peer: bool) -> tuple[list[str], list[str]]:
    """The variants to time and notes on any left out (and why)."""
    names, notes = [RESIDUAL], []
    missing = ours_missing()
    if missing is None:
        names += list(OURS)
    else:
        notes.append(f"mhc_torch.StreamSequential unavailable ({missing}): our variants "
                     "not measured")
    reason = missing_reason()
    if not include_peer:
        notes.append("peer variants not measured (--no-peer)")
    elif reason is not None:
        notes.append(f"peer variants not measured: {reason}")
    else:
        names += list(PEERS)
    return names, notes


def native_kernels() -> bool:
    """Whether ours ran its dynamic coefficients on the native CPU kernels."""
    from mhc_torch.streams import kernels

    return kernels.usable(torch.float32, torch.device("cpu"))


def run(width: int = WIDTH, batch: int = BATCH, depth: int = DEPTH, *, include_peer: bool = True,
        warmup: int = 3, min_rounds: int = 20, max_rounds: int = 300, budget_s: float = 90.0,
        profile_steps: int = 5, log: Callable[[str], object] = print) -> dict[str, object]:
    """Time every variant round-robin, profile the residual stack and ours; the JSON payload."""
    threads = torch_threads.configure()
    load_before = machine.load_average()
    torch.manual_seed(1)
    layers = linear_layers(width, depth)
    x = torch.randn(batch, width)
    g = torch.randn(batch, width) / (batch * width) ** 0.5
    names, notes = variant_names(include_peer)
    models = {}
    variants: list[Variant] = []
    for name in names:
        models[name] = build(name, layers)
        check_finite(name, models[name], x)
        variants.append(step_variant(name, models[name], models[name], x, g,
                                     family=family(name)))
    log(f"{SECTION} {width}x{batch} depth {depth}: {len(variants)} variants")
    timings = run_interleaved(variants, warmup=warmup, min_rounds=min_rounds,
                              max_rounds=max_rounds, budget_s=budget_s, log=log)
    profiles = {}
    for name in names:
        if family(name) != "peer":
            log(f"  profiling {name}")
            rules = SINKHORN_RULES if OURS.get(name, {}).get("mode") == "mhc" else COEFFICIENT_RULES
            profiles[name] = profile_breakdown(models[name], x, g, profile_steps, depth, log,
                                               rules)
    peer_measured = any(family(name) == "peer" for name in names)
    return {
        "section": SECTION,
        "width": width,
        "batch": batch,
        "depth": depth,
        "streams": STREAMS,
        "sinkhorn_iterations": SINKHORN_ITERATIONS,
        "dtype": str(x.dtype).removeprefix("torch."),
        "threads": threads,
        "native_kernels": native_kernels(),
        "machine": machine.describe(),
        "load_before": load_before,
        "load_after": machine.load_average(),
        "notes": notes,
        "peer": {
            "versions": installed_versions(),
            "variants": {name: PEERS[name].description for name in PEERS if name in names},
            "gaps": list(PEER_GAPS),
        } if peer_measured else None,
        "timings": [timing.summary() for timing in timings],
        "profile": profiles,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a shorter time budget")
    parser.add_argument("--no-peer", action="store_true",
                        help="leave out hyper-connections (said in RESULTS.md)")
    args = parser.parse_args(argv)
    payload = run(include_peer=not args.no_peer, budget_s=20.0 if args.quick else 90.0,
                  profile_steps=3 if args.quick else 5,
                  log=lambda line: print(line, flush=True))
    payload["quick"] = args.quick
    print(f"wrote {write_result(SECTION, payload)}")


if __name__ == "__main__":
    main()
