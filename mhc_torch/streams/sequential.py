"""StreamSequential: a stack of blocks on n parallel residual streams (DeepSeek mHC)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from mhc_spec.streams import (
    SINKHORN,
    StreamConfig,
    init_parameters,
)
from mhc_spec.streams.config import (
    DEFAULT_A_INIT,
    DEFAULT_RMS_EPS,
    DEFAULT_SINKHORN_ITERATIONS,
)
from mhc_torch.blocks import collect_modules
from mhc_torch.streams.coefficients import LayerParameters, pack_parameters, static_coefficients
from mhc_torch.streams.layer import (
    DYNAMIC_NAMES,
    STATIC_NAMES,
    check_streams_input,
    resolve_width,
    run_layer,
)
from mhc_torch.streams.portable import load_stream_portable, stream_portable
from mhc_torch.streams.readout import StreamReduce, expand_streams


class StreamCoefficients(NamedTuple):
    """What one forward of a recording :class:`StreamSequential` used, detached: Hpre and
    Hpost (L, ..., n) and Hres (L, ..., n, n) of every layer and token, in the precision
    the coefficients were computed in (float32 under autocast)."""

    hpre: Tensor
    hpost: Tensor
    hres: Tensor


class StreamSequential(nn.Module):
    """Branches F_1..F_L on n residual streams (manifold-constrained hyper-connections,
    DeepSeek mHC, arXiv 2512.24880), exactly :func:`mhc_spec.streams.forward`:

        X_0[i] = h;   for l = 1..L:  X_l[i] = sum_j Hres_l[i, j] X_{l-1}[j] + Hpost_l[i] F_l(u_l),
                                     u_l = sum_i Hpre_l[i] X_{l-1}[i]
        output = sum_i w_i X_L[i]

    for h (..., C). Hpre = sigmoid, Hpost = 2 sigmoid, Hres = P of per-token (``dynamic``)
    or static logits; P = Sinkhorn-Knopp with T = ``sinkhorn_iterations`` (``mode="mhc"``),
    a user ``constraint`` callable (logits (..., n, n) -> Hres (..., n, n), differentiated by
    autograd) or the identity (``mode="hc"``); w from ``reduce`` (see
    :class:`mhc_spec.streams.StreamConfig`, which validates every argument). Each branch sees
    u of h's shape and must return that shape. ``width`` (C) defaults to the
    ``in_features`` of an ``nn.Linear`` first block.

    Parameters, stacked over the layers in the portable layout of
    :mod:`mhc_spec.streams.parameters`: ``phi_pre``, ``phi_post`` (L, nC, n), ``phi_res``
    (L, nC, n, n), ``a_pre``, ``a_post``, ``a_res`` (L,) (dynamic only), ``b_pre``, ``b_post``
    (L, n), ``b_res`` (L, n, n), ``readout.reduce_logits`` (n,) (gated only); the branches
    are ``blocks``.

    Recording: set ``record_coefficients = True`` and every forward stores
    ``recorded_coefficients``, a :class:`StreamCoefficients` of detached tensors (the
    dashboard's input). Off (the default) nothing is stored; switching it off keeps the
    last record until the caller sets ``recorded_coefficients = None``.

    Eager forwards with gradients run each layer as two autograd nodes with hand-derived
    reverse modes (first derivatives only; use torch.func or torch.compile for higher
    orders); torch.compile and torch.func trace plain operations. On the CPU, a dynamic
    layer's gates and Sinkhorn run as native kernels (``mhc_torch/streams/kernels.c``, built
    on first use by :mod:`mhc_torch.native`; PyTorch operations where no C compiler works).
    """

    def __init__(
        self,
        blocks: Iterable[nn.Module],
        *,
        width: int | None = None,
        streams: int = 4,
        mode: str = "mhc",
        constraint: str | Callable[[Tensor], Tensor] = SINKHORN,
        sinkhorn_iterations: int = DEFAULT_SINKHORN_ITERATIONS,
        dynamic: bool = True,
        reduce: str = "sum",
        rms_eps: float = DEFAULT_RMS_EPS,
        a_init: float = DEFAULT_A_INIT,
        pre_init: str = "cyclic",
    ) -> None:
        super().__init__()
        self.config = StreamConfig(
            streams=streams, mode=mode, constraint=constraint,
            sinkhorn_iterations=sinkhorn_iterations, dynamic=dynamic, reduce=reduce,
            rms_eps=rms_eps, a_init=a_init, pre_init=pre_init,
        )
        self.blocks = nn.ModuleList(collect_modules("blocks", blocks))
        self.width = resolve_width(width, self.blocks[0])
        params = init_parameters(self.config, len(self.blocks), self.width)
        dtype = torch.get_default_dtype()
        for name in (*DYNAMIC_NAMES, *STATIC_NAMES):
            value = params.get(f"streams.{name}")
            self.register_parameter(
                name, None if value is None else nn.Parameter(torch.as_tensor(value, dtype=dtype)))
        self.readout = StreamReduce(self.config.streams, self.config.reduce)
        self.record_coefficients = False
        self.recorded_coefficients: StreamCoefficients | None = None

    @property
    def depth(self) -> int:
        """L, the number of branches."""
        return len(self.blocks)

    def extra_repr(self) -> str:
        c = self.config
        text = (f"depth={self.depth}, width={self.width}, streams={c.streams}, "
                f"mode={c.kind!r}, dynamic={c.dynamic}, reduce={c.reduce!r}")
        if c.kind == "mhc/sinkhorn":
            text += f", sinkhorn_iterations={c.sinkhorn_iterations}"
        return text

    def packed_parameters(self) -> LayerParameters:
        """(Phi (L, nC, K), s (L, K), beta (L, K)) in the fused layout of
        :mod:`mhc_torch.streams.coefficients` (Phi and s None when static)."""
        dynamic = self.config.dynamic
        return pack_parameters(
            self.config, self.b_pre, self.b_post, self.b_res,
            phi=(self.phi_pre, self.phi_post, self.phi_res) if dynamic else None,
            a=(self.a_pre, self.a_post, self.a_res) if dynamic else None,
        )

    def forward(self, h: Tensor) -> Tensor:
        """output (..., C) for h (..., C)."""
        check_streams_input(type(self).__name__, h, (self.width,))
        token_shape = tuple(h.shape[:-1])
        streams = expand_streams(h.reshape(-1, self.width), self.config.streams)
        packed = self.packed_parameters()
        if self.config.dynamic:
            layers = [{"dynamic": LayerParameters(*params)} for params in zip(
                packed.projection.unbind(0), packed.scale.unbind(0), packed.bias.unbind(0),
                strict=True)]
        else:
            static = static_coefficients(self.config, packed.bias)
            layers = [{"static": coefficients}
                      for coefficients in zip(*(c.unbind(0) for c in static), strict=True)]
        kept: list[tuple[Tensor, Tensor, Tensor]] = []
        for index, (block, source) in enumerate(zip(self.blocks, layers, strict=True)):
            streams, coefficients = run_layer(self.config, block, index, streams, token_shape,
                                              **source)
            if self.record_coefficients:
                kept.append(coefficients)
        if self.record_coefficients:
            self.recorded_coefficients = _stack_record(kept, token_shape)
        return self.readout(streams).view(*token_shape, self.width)

    def to_portable(self) -> dict[str, np.ndarray]:
        """The portable NumPy dict: ``"streams.*"`` (:mod:`mhc_spec.streams.parameters`) and
        ``"blocks.<l>.<state_dict key>"``."""
        return stream_portable(self)

    def load_portable(self, portable: dict[str, np.ndarray]) -> None:
        """Copy a portable dict (from :meth:`to_portable` or ``mhc_jax``) into this stack;
        missing or unexpected keys raise ``KeyError``, wrong shapes ``ValueError``."""
        load_stream_portable(self, portable)


def _stack_record(record: list[tuple[Tensor, Tensor, Tensor]], token_shape: tuple[int, ...]
                  ) -> StreamCoefficients:
    with torch.no_grad():
        hpre, hpost, hres = (torch.stack(values) for values in zip(*record, strict=True))
    depth, n = len(record), hpre.shape[-1]
    return StreamCoefficients(
        hpre.detach().view(depth, *token_shape, n),
        hpost.detach().view(depth, *token_shape, n),
        hres.detach().view(depth, *token_shape, n, n),
    )
