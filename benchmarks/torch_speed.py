"""PyTorch forward+backward of MHCSequential vs a plain residual stack and vs PyPI mhc 0.5.5.

One process per shape (width x batch). Within it every variant shares the same 50
``nn.Linear`` layers and the same input, and all variants are timed round-robin. A timed step
is ``model(x).backward(g)`` with a fixed ``g``; gradients are cleared (set to None) untimed
before each step. Compiled variants use ``torch.compile(model, fullgraph=True)``; their first
call (the cold compile of forward and backward) is recorded as the compile time.

Full sweep: eager {residual, H in {1,4,8} x {mhc/simplex, mhc/softmax, hc}, peer at H=4
(default and detach_history=False)}, compiled {residual, H=4 kinds, and at 64x64 the
learned skip written in plain PyTorch (``LearnedSkipStack``, the floor of the compiled
target there)}. Capped: compile only at H=4, every kind at 64x64 and mhc/simplex alone at
the larger shapes (see :func:`compiled_kinds`); the peer only at H=4 and only eager (its
graph breaks make compiling it slower than running it eagerly, which is not what is being compared).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable

import torch
from torch import nn

from benchmarks import machine, torch_threads
from benchmarks.interleave import Variant, run_interleaved
from benchmarks.results_io import write_result
from benchmarks.torch_stacks import (
    DEPTH,
    HISTORIES,
    KINDS,
    LEARNED_SKIPS,
    SHAPES,
    build,
    linear_layers,
    parse_shape,
    peer_label,
    shape_label,
    variant_name,
)

PEER_HISTORY = 4
COMPILE_HISTORY = 4


def compiled_kinds(label: str, quick: bool) -> tuple[str, ...]:
    """Kinds compiled at a shape: a cold compile of one 50-layer forward+backward graph takes
    one to two minutes on 2 cores, so every kind is compiled only at the smallest shape
    (where the overhead shows most) and mhc/simplex alone at the others; --quick compiles
    mhc/simplex at the smallest shape only."""
    smallest = label == shape_label(*SHAPES[0])
    if quick:
        return ("mhc/simplex",) if smallest else ()
    return KINDS if smallest else ("mhc/simplex",)


def allow_many_graphs() -> None:
    """Every compiled variant shares forward code objects; let dynamo keep a graph for each."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, 64)


def step_variant(name: str, model: nn.Module, runner: Callable[[torch.Tensor], torch.Tensor],
                 x: torch.Tensor, g: torch.Tensor, **info: object) -> Variant:
    """A variant timing ``runner(x).backward(g)``; ``model``'s gradients cleared untimed."""

    def step() -> None:
        runner(x).backward(g)

    def prepare() -> None:
        model.zero_grad(set_to_none=True)

    return Variant(name, step, prepare, dict(info))


def check_finite(name: str, model: nn.Module, x: torch.Tensor) -> None:
    """Refuse to time a stack whose values overflow (inf/NaN arithmetic runs at other speeds)."""
    with torch.no_grad():
        if not bool(torch.isfinite(model(x)).all()):
            raise RuntimeError(f"{name}: the output is not finite; the timings would be void")


def ours_available() -> str | None:
    """None if mhc_torch.MHCSequential imports, else the reason it does not."""
    try:
        from mhc_torch import MHCSequential  # noqa: F401
    except ImportError as error:
        return str(error)
    return None


def build_variants(width: int, batch: int, quick: bool, compile_: bool) -> tuple[
        list[Variant], list[str]]:
    """The variants for one shape and notes on anything left out."""
    torch.manual_seed(1)
    layers = linear_layers(width, DEPTH)
    x = torch.randn(batch, width)
    g = torch.randn(batch, width) / (batch * width) ** 0.5
    histories = (4,) if quick else HISTORIES
    notes: list[str] = []
    names = ["residual"]
    missing = ours_available()
    if missing is not None:
        notes.append(f"mhc_torch.MHCSequential unavailable ({missing}): our variants skipped")
    else:
        names += [variant_name(kind, history) for history in histories for kind in KINDS]
    names += [variant_name(peer_label(detach), PEER_HISTORY) for detach in (None, False)]
    variants = []
    for name in names:
        model = build(name, layers)
        check_finite(name, model, x)
        variants.append(step_variant(name, model, model, x, g, compiled=False))
    kinds = compiled_kinds(shape_label(width, batch), quick) if missing is None else ()
    if compile_ and kinds:
        allow_many_graphs()
        compiled = ["residual", *(variant_name(kind, COMPILE_HISTORY) for kind in kinds)]
        if shape_label(width, batch) == shape_label(*SHAPES[0]):
            compiled.append(variant_name(LEARNED_SKIPS, COMPILE_HISTORY))
        for name in compiled:
            model = build(name, layers)
            runner = torch.compile(model, fullgraph=True)
            variants.append(step_variant(f"compiled {name}", model, runner, x, g,
                                         compiled=True))
    return variants, notes


def run_shape(label: str, quick: bool, compile_: bool) -> dict[str, object]:
    threads = torch_threads.configure()
    width, batch = parse_shape(label)
    load_before = machine.load_average()
    variants, notes = build_variants(width, batch, quick, compile_)
    print(f"torch_speed {label}: {len(variants)} variants", flush=True)
    budget = 20.0 if quick else 90.0
    timings = run_interleaved(variants, warmup=3, min_rounds=20, max_rounds=300,
                              budget_s=budget, log=lambda line: print(line, flush=True))
    return {
        "section": "torch_speed",
        "shape": label,
        "width": width,
        "batch": batch,
        "depth": DEPTH,
        "quick": quick,
        "threads": threads,
        "machine": machine.describe(),
        "load_before": load_before,
        "load_after": machine.load_average(),
        "notes": notes,
        "timings": [timing.summary() for timing in timings],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", help="one WIDTHxBATCH; default: every shape, a process each")
    parser.add_argument("--quick", action="store_true", help="H=4 only and a shorter budget")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    args = parser.parse_args(argv)
    if args.shape is not None:
        payload = run_shape(args.shape, args.quick, not args.no_compile)
        path = write_result(f"torch_speed_{args.shape}", payload)
        print(f"wrote {path}")
        return
    shapes = SHAPES[:2] if args.quick else SHAPES
    for width, batch in shapes:
        command = [sys.executable, "-m", "benchmarks.torch_speed", "--shape",
                   shape_label(width, batch)]
        command += ["--quick"] * args.quick + ["--no-compile"] * args.no_compile
        # A fresh inductor cache: the recorded first-call times are cold compiles.
        with tempfile.TemporaryDirectory() as cache:
            subprocess.run(command, check=True,
                           env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache})


if __name__ == "__main__":
    main()
