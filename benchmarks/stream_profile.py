"""Where a stream stack's step goes: torch.profiler time split into the parts of an mHC layer
(branch, coefficient projection, Sinkhorn, stream mix), per layer and step.

The profiler runs with ``with_stack=True``, which records every Python call as an event with
the aten operators it runs as children, so each event can be named by the innermost Python
function (or operator) that matches a :data:`RULES` pattern. Operators run by the autograd
engine have no Python caller; each backward node carries the ``sequence_nr`` of the forward
operator that created it, so it takes that operator's part. Every event's *self* time is
counted once, so the parts add up to the profiled step (Python interpreter time included,
in the part of the function it was spent in).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

BRANCH = "branch F (Linear)"
COEFFICIENTS = "coefficient projection"
SINKHORN = "Sinkhorn"
MIX = "stream mix"
OTHER = "other"
PARTS = (BRANCH, COEFFICIENTS, SINKHORN, MIX, OTHER)

# (lower-case substring of an event name, part); checked from the innermost event outwards,
# the first hit decides. Python events are named "path/file.py(line): function". The parts
# follow mhc_torch.streams' files: sinkhorn.py, coefficients.py (RMSNorm, x' @ phi,
# sigmoids, and their backward), mixing.py (the read-in u = sum_i Hpre[i] X[i], the update
# X_next = Hres X + Hpost y, and their backward); code that one of them calls from another
# counts where it is written (Sinkhorn called by the coefficients is Sinkhorn). Anything else
# (expand, reduce, the layer loop, gradient accumulation) is "other".
RULES: tuple[tuple[str, str], ...] = (
    ("torch/nn/modules/linear.py", BRANCH),
    ("sinkhorn", SINKHORN),
    ("branch_input", MIX),
    ("mhc_torch/streams/mixing.py", MIX),
    ("coefficient", COEFFICIENTS),
    ("benchmarks/torch_stacks.py", MIX),   # the residual stack's h + F(h)
)
# The native coefficient calls of kernels.py (coefficients_forward/backward) compute the
# gates, and for a Sinkhorn stack Sinkhorn too, which is nearly all of their time: they are
# Sinkhorn there and coefficient projection otherwise. Its other kernels are named by
# function: 1/r and the projection's token sums are coefficient projection; the update, its
# backward and the read's dX terms are stream mix.
NATIVE_KERNELS = "mhc_torch/streams/kernels.py"
NAMED_KERNELS = (
    *((f"): {function}", COEFFICIENTS) for function in ("inverse_rms", "coefficients_reduce")),
    *((f"): {function}", MIX)
      for function in ("update_forward", "update_backward", "read_backward")),
)
SINKHORN_RULES = (*NAMED_KERNELS, (NATIVE_KERNELS, SINKHORN), *RULES)
COEFFICIENT_RULES = (*NAMED_KERNELS, (NATIVE_KERNELS, COEFFICIENTS), *RULES)
PYTHON = "Python and autograd (outside aten operators)"
TOP_OPERATORS = 4
FORWARD_SCOPE = "mhc_bench.forward"
BACKWARD_SCOPE = "mhc_bench.backward"
BACKWARD_NODE = "autograd::engine::evaluate_function:"


def _match(name: str, rules: Iterable[tuple[str, str]]) -> str | None:
    lowered = name.lower()
    return next((part for pattern, part in rules if pattern in lowered), None)


def _scope_of(event) -> str | None:
    node = event
    while node is not None:
        if node.name in (FORWARD_SCOPE, BACKWARD_SCOPE):
            return node.name
        node = node.cpu_parent
    return None


def classify(event, forward_parts: dict[int, str],
             rules: Iterable[tuple[str, str]] = RULES) -> str:
    """The part an event's self time belongs to: the first rule matching it or an enclosing
    event; inside a backward node with no matching Python caller, the part of the forward
    operator with the node's ``sequence_nr``; otherwise :data:`OTHER`."""
    node = event
    while node is not None:
        part = _match(node.name, rules)
        if part is not None:
            return part
        if node.name.startswith(BACKWARD_NODE):
            return forward_parts.get(node.sequence_nr, OTHER)
        node = node.cpu_parent
    return OTHER


def _is_dispatched_operator(event) -> bool:
    """An aten operator called from Python or the autograd engine, not from another one."""
    parent = event.cpu_parent
    return event.name.startswith("aten::") and (
        parent is None or not parent.name.startswith("aten::"))


def _dispatched_operator(event) -> str:
    """The name of the operator an event's self time is spent under: the outermost aten
    operator enclosing it (itself included), or :data:`PYTHON` for interpreter time."""
    operator = None
    node = event
    while node is not None and node.name.startswith("aten::"):
        operator = node.name
        node = node.cpu_parent
    return operator or PYTHON


def forward_parts(events, rules: Iterable[tuple[str, str]] = RULES) -> dict[int, str]:
    """{sequence_nr: part} of the operators run inside :data:`FORWARD_SCOPE`."""
    rules = tuple(rules)
    return {event.sequence_nr: classify(event, {}, rules) for event in events
            if event.sequence_nr >= 0 and _scope_of(event) == FORWARD_SCOPE}


def breakdown(events, steps: int, depth: int, rules: Iterable[tuple[str, str]] = RULES,
              top_operators: int = TOP_OPERATORS) -> dict[str, object]:
    """Per-layer, per-step microseconds and aten operator calls (those dispatched from Python
    or the autograd engine; operators nested in them are timed, not counted) of each part,
    its ``top_operators`` costliest dispatched operators ([name, us, calls] per layer
    and step, nested operators' time included), and the profiled wall time per step
    (forward and backward scopes)."""
    rules = tuple(rules)
    scoped = [(event, _scope_of(event)) for event in events]
    parts_by_sequence = forward_parts(events, rules)
    micros: dict[str, float] = defaultdict(float)
    operators: dict[str, int] = defaultdict(int)
    by_operator: dict[str, dict[str, list[float]]] = defaultdict(
        lambda: defaultdict(lambda: [0.0, 0]))
    wall = 0.0
    for event, scope in scoped:
        if scope is None:
            continue
        if event.name in (FORWARD_SCOPE, BACKWARD_SCOPE):
            wall += event.cpu_time_total
        part = classify(event, parts_by_sequence, rules)
        micros[part] += event.self_cpu_time_total
        operators[part] += _is_dispatched_operator(event)
        entry = by_operator[part][_dispatched_operator(event)]
        entry[0] += event.self_cpu_time_total
        entry[1] += _is_dispatched_operator(event)
    per_layer = steps * depth

    def top(part: str) -> list[list[object]]:
        ranked = sorted(by_operator[part].items(), key=lambda item: -item[1][0])
        return [[name, micro / per_layer, calls / per_layer]
                for name, (micro, calls) in ranked[:top_operators]]

    return {
        "steps": steps,
        "depth": depth,
        "wall_us_per_step": wall / steps,
        "parts": {part: {"us_per_layer": micros[part] / per_layer,
                         "aten_calls_per_layer": operators[part] / per_layer,
                         "top_operators": top(part)}
                  for part in PARTS},
    }


def profile_steps(model: nn.Module, x: torch.Tensor, g: torch.Tensor, steps: int,
                  warmup: int = 2) -> list:
    """The profiler events of ``steps`` forward+backward steps (gradients cleared between)."""
    def step() -> None:
        model.zero_grad(set_to_none=True)
        with record_function(FORWARD_SCOPE):
            y = model(x)
        with record_function(BACKWARD_SCOPE):
            y.backward(g)

    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
        for _ in range(steps):
            step()
    return list(prof.events())


def profile_breakdown(model: nn.Module, x: torch.Tensor, g: torch.Tensor, steps: int,
                      depth: int, log: Callable[[str], object] = print,
                      rules: Iterable[tuple[str, str]] = COEFFICIENT_RULES
                      ) -> dict[str, object]:
    """:func:`breakdown` of :func:`profile_steps`."""
    result = breakdown(profile_steps(model, x, g, steps), steps, depth, rules)
    parts = ", ".join(f"{part} {value['us_per_layer']:.0f}"
                      for part, value in result["parts"].items())
    log(f"  profile: {result['wall_us_per_step'] / 1e3:.1f} ms/step; us per layer: {parts}")
    return result
