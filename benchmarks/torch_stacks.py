"""The PyTorch stacks under test, all built on one shared list of ``nn.Linear(w, w)`` layers
so that every variant does exactly the same matrix work."""

from __future__ import annotations

import torch
from torch import nn

DEPTH = 50
# (width, batch): the guide's model, a mid-size and a large layer.
SHAPES: tuple[tuple[int, int], ...] = ((64, 64), (512, 256), (1024, 256))
HISTORIES: tuple[int, ...] = (1, 4, 8)
KINDS: tuple[str, ...] = ("mhc/simplex", "mhc/softmax", "hc")
# The floor of the compiled target: the learned skip written by hand, no library.
LEARNED_SKIPS = "learned skips"


def shape_label(width: int, batch: int) -> str:
    return f"{width}x{batch}"


def parse_shape(label: str) -> tuple[int, int]:
    width, batch = label.split("x")
    return int(width), int(batch)


def linear_layers(width: int, depth: int = DEPTH, seed: int = 0) -> list[nn.Linear]:
    """``depth`` layers ``nn.Linear(width, width)`` with PyTorch's default init, seeded."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    layers = [nn.Linear(width, width) for _ in range(depth)]
    torch.random.set_rng_state(generator_state)
    return layers


class ResidualStack(nn.Module):
    """The baseline: s_l = f_l(s_{l-1}) + s_{l-1}."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            s = layer(s) + s
        return s


class LearnedSkipStack(nn.Module):
    """The same H-term learned skip in plain PyTorch, with no projection or gate:
    s_l = f_l(s_{l-1}) + sum_j w[l, j] s_{l-K+j} over the K = min(H, l) states that exist,
    w an (L, H) parameter (1/H everywhere, so the states stay finite).

    Of the plain forms measured under torch.compile (benchmarks/findings.md) this one
    compiles fastest: each layer's row of w broadcast over the width, one ``addcmul`` per
    window state (inductor then reduces the H weight gradients over the batch next to the
    bias gradient)."""

    def __init__(self, layers: list[nn.Module], history: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.history = history
        self.weights = nn.Parameter(torch.full((len(layers), history), 1.0 / history))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        h = self.history
        states = [s]
        for layer, block in enumerate(self.layers):
            window = states[-h:]
            row = self.weights[layer].unsqueeze(-1).expand(h, s.shape[-1])
            out = block(states[-1])
            for j, state in enumerate(window, h - len(window)):
                out = torch.addcmul(out, state, row[j])
            states = [*window, out]
        return states[-1]


def kind_kwargs(kind: str) -> dict[str, str]:
    """MHCSequential keyword arguments for a label such as ``mhc/simplex`` or ``hc``."""
    if kind.startswith("mhc/"):
        return {"mode": "mhc", "constraint": kind.split("/", 1)[1]}
    return {"mode": kind}


def ours(layers: list[nn.Module], history: int, kind: str) -> nn.Module:
    """``mhc_torch.MHCSequential`` over ``layers`` with H = ``history``."""
    from mhc_torch import MHCSequential

    return MHCSequential(layers, max_history=history, **kind_kwargs(kind))


def peer(layers: list[nn.Module], history: int, detach_history: bool | None) -> nn.Module:
    """PyPI ``mhc`` 0.5.5's ``MHCSequential`` over ``layers``.

    Its defaults: mode "mhc", constraint "simplex" (a softmax in that package), init
    "identity", history cleared at each forward; ``detach_history=None`` keeps its default
    (True: gradients stop at every skip path), False is its only setting with true gradients.
    """
    from benchmarks.peer import import_peer

    mhc = import_peer()
    kwargs = {} if detach_history is None else {"detach_history": detach_history}
    return mhc.MHCSequential(layers, max_history=history, **kwargs)


def peer_label(detach_history: bool | None) -> str:
    return "peer default" if detach_history is None else f"peer detach={detach_history}"


def variant_name(kind: str, history: int | None) -> str:
    """``residual`` or e.g. ``mhc/simplex H4``, ``peer default H4``."""
    return kind if history is None else f"{kind} H{history}"


def build(name: str, layers: list[nn.Module]) -> nn.Module:
    """The eager model a variant name stands for (the inverse of :func:`variant_name`)."""
    if name == "residual":
        return ResidualStack(layers)
    kind, _, history_label = name.rpartition(" H")
    history = int(history_label)
    if kind == peer_label(None):
        return peer(layers, history, None)
    if kind.startswith("peer detach="):
        return peer(layers, history, kind.endswith("True"))
    if kind == LEARNED_SKIPS:
        return LearnedSkipStack(layers, history)
    return ours(layers, history, kind)
