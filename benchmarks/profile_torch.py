"""Where the time goes: torch.profiler over forward+backward steps of some variants, with
the per-operator self CPU time of each variant next to the residual stack's.

    python -m benchmarks.profile_torch --shape 64x64 --variants "mhc/simplex H4,hc H4"

Writes benchmarks/results/profile_<shape>.txt: per variant, the operators sorted by how much
more self time they take than in the residual stack (per step), then the raw top-20 table.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks import torch_threads
from benchmarks.results_io import RESULTS_DIR
from benchmarks.torch_speed import allow_many_graphs
from benchmarks.torch_stacks import DEPTH, build, linear_layers, parse_shape


def self_times(model: torch.nn.Module, runner, x: torch.Tensor, g: torch.Tensor,
               steps: int) -> tuple[dict[str, tuple[float, int]], str]:
    """{operator: (self CPU microseconds per step, calls per step)} and the top-20 table."""
    for _ in range(3):
        model.zero_grad(set_to_none=True)
        runner(x).backward(g)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            model.zero_grad(set_to_none=True)
            runner(x).backward(g)
    averages = prof.key_averages()
    table = averages.table(sort_by="self_cpu_time_total", row_limit=20)
    return ({e.key: (e.self_cpu_time_total / steps, e.count // steps) for e in averages}, table)


def compare(base: dict[str, tuple[float, int]], other: dict[str, tuple[float, int]],
            rows: int = 15) -> list[str]:
    """Operators ordered by extra self time per step over ``base``."""
    keys = set(base) | set(other)
    extra = sorted(keys, key=lambda k: other.get(k, (0, 0))[0] - base.get(k, (0, 0))[0],
                   reverse=True)
    total_base = sum(t for t, _ in base.values())
    total_other = sum(t for t, _ in other.values())
    lines = [f"  total self CPU per step: residual {total_base / 1e3:.2f} ms, "
             f"variant {total_other / 1e3:.2f} ms (+{(total_other - total_base) / 1e3:.2f} ms)",
             f"  {'operator':<48} {'extra us/step':>14} {'variant us':>11} {'calls':>6} "
             f"{'residual us':>12} {'calls':>6}"]
    for key in extra[:rows]:
        t_other, n_other = other.get(key, (0.0, 0))
        t_base, n_base = base.get(key, (0.0, 0))
        lines.append(f"  {key[:48]:<48} {t_other - t_base:>14.1f} {t_other:>11.1f} "
                     f"{n_other:>6} {t_base:>12.1f} {n_base:>6}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="64x64")
    parser.add_argument("--variants", default="mhc/simplex H4,mhc/softmax H4,hc H4")
    parser.add_argument("--compiled", action="store_true", help="profile torch.compile'd")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    torch_threads.configure()
    width, batch = parse_shape(args.shape)
    torch.manual_seed(1)
    layers = linear_layers(width, DEPTH)
    x = torch.randn(batch, width)
    g = torch.randn(batch, width) / (batch * width) ** 0.5
    if args.compiled:
        allow_many_graphs()

    def measure(name: str) -> tuple[dict[str, tuple[float, int]], str]:
        model = build(name, layers)
        runner = torch.compile(model, fullgraph=True) if args.compiled else model
        return self_times(model, runner, x, g, args.steps)

    base, base_table = measure("residual")
    label = "compiled " if args.compiled else ""
    lines = [f"# profile {label}{args.shape}, {args.steps} steps, self CPU time per step", "",
             f"## {label}residual", base_table]
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        times, table = measure(name)
        lines += [f"## {label}{name} vs {label}residual", *compare(base, times), "", table]
    suffix = "_compiled" if args.compiled else ""
    path = RESULTS_DIR / f"profile_{args.shape}{suffix}.txt"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
