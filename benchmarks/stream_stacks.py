"""The multi-stream stacks under test (issue #8), all built on one shared list of
``nn.Linear(w, w)`` branches so that every variant does exactly the same branch work.

- ``residual``: the baseline h = h + F_l(h) (:class:`benchmarks.torch_stacks.ResidualStack`).
- ``ours <mode> <dynamic|static>``: ``mhc_torch.StreamSequential`` with n = 4 streams and
  T = 20 Sinkhorn iterations; mode ``mhc`` (Hres on the Birkhoff polytope by Sinkhorn) or
  ``hc`` (Hres free), coefficients per token (dynamic) or the biases alone (static).
- ``peer ...``: PyPI ``hyper-connections`` 0.4.11 wired as its README says: the package's
  ``get_init_and_expand_reduce_stream_functions(4, ...)`` gives ``init_hyper_conn``,
  ``expand_stream`` and ``reduce_stream``; each branch is wrapped once,
  ``init_hyper_conn(dim=w, branch=F_l, layer_index=l)``; the input is expanded to the streams
  before the trunk and reduced by a sum after it. ``layer_index=l`` is the package's own
  argument for the stream whose one-hot starts the branch input (it picks one at random when
  it is left out), so every run builds the same stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from benchmarks.torch_stacks import ResidualStack

DEPTH = 24
WIDTH = 512
BATCH = 256
STREAMS = 4
SINKHORN_ITERATIONS = 20

RESIDUAL = "residual"
# The target variant: n = 4, dynamic coefficients, T = 20, eager.
OUR_TARGET = "ours mhc dynamic"
# Variant name -> StreamSequential keyword arguments besides streams and sinkhorn_iterations.
OURS: dict[str, dict[str, object]] = {
    OUR_TARGET: {"mode": "mhc", "dynamic": True},
    "ours mhc static": {"mode": "mhc", "dynamic": False},
    "ours hc dynamic": {"mode": "hc", "dynamic": True},
    "ours hc static": {"mode": "hc", "dynamic": False},
}


@dataclass(frozen=True)
class PeerVariant:
    """One way to build the peer: the module holding ``factory`` (its
    ``get_init_and_expand_reduce_stream_functions``) and the keyword arguments given to it."""

    module: str
    factory: str
    kwargs: dict[str, object] = field(default_factory=dict)
    description: str = ""


PEERS: dict[str, PeerVariant] = {
    "peer mhc": PeerVariant(
        "hyper_connections", "mc_get_init_and_expand_reduce_stream_functions",
        {"sinkhorn_iters": SINKHORN_ITERATIONS},
        "ManifoldConstrainedHyperConnections (its mHC, exported as `mHC`): per-stream "
        "RMSNorm and projections, Sinkhorn on exp(logits) with T=20"),
    "peer mhc log-domain": PeerVariant(
        "hyper_connections", "mc_get_init_and_expand_reduce_stream_functions",
        {"sinkhorn_iters": SINKHORN_ITERATIONS, "log_domain_sinkhorn": True},
        "the same with `log_domain_sinkhorn=True` (T=20 pairs of log_softmax)"),
    "peer mhc v2": PeerVariant(
        "hyper_connections.mHCv2", "get_init_and_expand_reduce_stream_functions",
        {"sinkhorn_iters": SINKHORN_ITERATIONS},
        "`hyper_connections.mHCv2` (not exported at the top level; streams kept as a "
        "separate axis instead of folded into the batch), T=20"),
    "peer hc": PeerVariant(
        "hyper_connections", "get_init_and_expand_reduce_stream_functions", {},
        "HyperConnections (its dynamic HC: tanh projections, free Hres)"),
}
# What the peer does not offer, said in RESULTS.md next to its variants.
PEER_GAPS = ("peer static HC: not measured; hyper-connections 0.4.11 has no constructor "
             "option for static coefficients (HyperConnections always computes its dynamic "
             "tanh projections; `disable=True` gives the plain residual, not static HC)",)


def ours_missing() -> str | None:
    """None if ``mhc_torch.StreamSequential`` imports, else the reason it does not."""
    try:
        from mhc_torch import StreamSequential  # noqa: F401
    except ImportError as error:
        return str(error)
    return None


def ours(blocks: list[nn.Module], name: str) -> nn.Module:
    """``mhc_torch.StreamSequential`` over ``blocks`` for one of the :data:`OURS` names."""
    from mhc_torch import StreamSequential

    return StreamSequential(blocks, streams=STREAMS, sinkhorn_iterations=SINKHORN_ITERATIONS,
                            **OURS[name])


class PeerStreamStack(nn.Module):
    """expand_stream, then each wrapped branch in turn, then reduce_stream (the peer's README)."""

    def __init__(self, expand: nn.Module, wrapped: list[nn.Module], reduce: nn.Module) -> None:
        super().__init__()
        self.expand = expand
        self.wrapped = nn.ModuleList(wrapped)
        self.reduce = reduce

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        streams = self.expand(h)
        for block in self.wrapped:
            streams = block(streams)
        return self.reduce(streams)


def peer(blocks: list[nn.Module], name: str) -> nn.Module:
    """The peer's stack over ``blocks`` for one of the :data:`PEERS` names."""
    from benchmarks.peer_hc import import_module

    variant = PEERS[name]
    factory = getattr(import_module(variant.module), variant.factory)
    init_hyper_conn, expand_stream, reduce_stream = factory(STREAMS, **variant.kwargs)
    width = blocks[0].in_features
    wrapped = [init_hyper_conn(dim=width, branch=block, layer_index=index)
               for index, block in enumerate(blocks)]
    return PeerStreamStack(expand_stream, wrapped, reduce_stream)


def build(name: str, blocks: list[nn.Module]) -> nn.Module:
    """The eager model a variant name stands for."""
    if name == RESIDUAL:
        return ResidualStack(blocks)
    if name in OURS:
        return ours(blocks, name)
    if name in PEERS:
        return peer(blocks, name)
    raise ValueError(f"variant {name!r} is unknown: choose {RESIDUAL!r}, one of "
                     f"{sorted(OURS)} or one of {sorted(PEERS)}")
