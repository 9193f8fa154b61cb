"""The JAX part of RESULTS.md (formatting only; importing it does not import JAX)."""

from __future__ import annotations

from benchmarks.targets import Results
from benchmarks.torch_stacks import SHAPES, shape_label


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def speed_lines(payload: dict) -> list[str]:
    lines = ["## JAX jitted train step (depth 50, H=4)", "",
             f"Backend {payload['backend']}, devices {payload['devices']}. Step = forward, "
             "backward and SGD update, jitted, parameters donated; ratio = median / the "
             "pure-JAX residual stack run by lax.scan (the target's baseline), same run; "
             "same-build ratio = scan / residual scan, loop / residual loop.", ""]
    for shape in [shape_label(*s) for s in SHAPES if shape_label(*s) in payload["shapes"]]:
        rows = payload["shapes"][shape]
        medians = {row["name"]: row["median_s"] for row in rows}
        baseline = medians["residual scan"]
        lines += [f"### width x batch = {shape}", "",
                  "| variant | median ms | p25-p75 ms | ratio | same-build ratio | n | "
                  "first call s (compile) |", "|---|---|---|---|---|---|---|"]
        for row in rows:
            same = medians.get("residual " + row["name"].rsplit(" ", 1)[-1])
            same_ratio = "n/a" if same is None else f"{row['median_s'] / same:.3f}x"
            lines.append(f"| {row['name']} | {_ms(row['median_s'])} | [{_ms(row['p25_s'])}-"
                         f"{_ms(row['p75_s'])}] | {row['median_s'] / baseline:.3f}x | "
                         f"{same_ratio} | {row['n']} | {row['first_s']:.2f} |")
        lines.append("")
    return lines


def compile_lines(payload: dict) -> list[str]:
    rows = payload["rows"]
    base = {row["build"]: row["compile_s"] for row in rows if row["depth"] == min(
        r["depth"] for r in rows)}
    lines = ["## JAX compile time of the train step against depth", "",
             f"Width {payload['width']}, batch {payload['batch']}; a fresh process per row. "
             "trace+lower = `jax.jit(step).lower(...)`, XLA = `.compile()`; ratio = total / "
             "the same build's total at the smallest depth.", "",
             "| build | depth | trace+lower s | XLA compile s | total s | ratio |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {row['build']} | {row['depth']} | {row['trace_lower_s']:.2f} | "
              f"{row['xla_compile_s']:.2f} | {row['compile_s']:.2f} | "
              f"{row['compile_s'] / base[row['build']]:.2f}x |" for row in rows]
    return [*lines, ""]


def section(results: Results) -> list[str]:
    lines: list[str] = []
    if "jax_speed" in results:
        lines += speed_lines(results["jax_speed"])
    if "jax_compile" in results:
        lines += compile_lines(results["jax_compile"])
    return lines
