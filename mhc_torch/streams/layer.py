"""One layer of an n-stream stack, as a function (:func:`run_layer`) and as a module
(:class:`StreamLayer`) for hand-written loops:

    Hpre, Hpost, Hres = coefficients(X);   u = sum_i Hpre[i] X[i];   y = F(u)
    X_next[i] = sum_j Hres[i, j] X[j] + Hpost[i] y
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mhc_spec.config import check_int
from mhc_spec.streams import (
    SINKHORN,
    StreamConfig,
    init_parameters,
    pre_init_logits,
)
from mhc_spec.streams.config import (
    DEFAULT_A_INIT,
    DEFAULT_RMS_EPS,
    DEFAULT_SINKHORN_ITERATIONS,
)
from mhc_torch.blocks import check_block_output
from mhc_torch.streams.coefficients import (
    LayerParameters,
    pack_parameters,
    static_coefficients,
)
from mhc_torch.streams.mixing import (
    Coefficients,
    LayerRecord,
    read_dynamic,
    read_static,
    write_streams,
)

# Attribute name of each portable mixing parameter ("streams.<name>").
DYNAMIC_NAMES = ("phi_pre", "phi_post", "phi_res", "a_pre", "a_post", "a_res")
STATIC_NAMES = ("b_pre", "b_post", "b_res")


def _call_block(block: nn.Module, index: int, u: Tensor, token_shape: tuple[int, ...]) -> Tensor:
    """y = F(u), with u given to the block in the caller's token shape (..., C)."""
    shaped = u.view(*token_shape, u.shape[-1])
    y = check_block_output(f"blocks[{index}]", block, shaped, block(shaped),
                           "a stream stack")
    return y.reshape(u.shape)


def run_layer(
    config: StreamConfig,
    block: nn.Module,
    index: int,
    streams: Tensor,
    token_shape: tuple[int, ...],
    dynamic: LayerParameters | None = None,
    static: Coefficients | None = None,
) -> tuple[Tensor, Coefficients]:
    """(X_next, (Hpre, Hpost, Hres)) for X (B, n, C) with B tokens flattened from
    ``token_shape``; coefficients from ``dynamic`` parameters, or the ``static`` Hpre (n,),
    Hpost (n,), Hres (n, n) of the layer. Every coefficient is returned per token."""
    record = LayerRecord()
    if dynamic is not None:
        u, coefficients = read_dynamic(config, streams, dynamic, record)
    else:
        u, coefficients = read_static(streams, static, record)
    y = _call_block(block, index, u, token_shape)
    return write_streams(streams, y, coefficients, record), coefficients


def resolve_width(width: Any, first_block: nn.Module) -> int:
    """C: ``width``, or the ``in_features`` of an ``nn.Linear`` first block."""
    inferred = first_block.in_features if isinstance(first_block, nn.Linear) else None
    if width is None:
        if inferred is None:
            raise ValueError(
                f"width=None is invalid: the stream width C cannot be inferred from the first "
                f"block ({type(first_block).__name__}, not an nn.Linear); pass width=C, the "
                "feature size of the input h (..., C)"
            )
        return inferred
    width = check_int("width", width, 1)
    if inferred is not None and inferred != width:
        raise ValueError(f"width={width} is invalid: the first block is nn.Linear with "
                         f"in_features={inferred}; width must equal it")
    return width


def check_streams_input(owner: str, x: Any, trailing: tuple[int, ...]) -> None:
    """A floating-point tensor whose last axes are ``trailing``, else a clear error."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"{owner} expects a floating-point tensor input, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim < len(trailing) or tuple(x.shape[x.ndim - len(trailing):]) != trailing:
        expected = ", ".join(["..."] + [str(s) for s in trailing])
        raise ValueError(f"{owner} expects an input of shape ({expected}), got "
                         f"{tuple(x.shape)}")


class StreamLayer(nn.Module):
    """One mHC layer around ``block`` F for a hand-written loop over streams X (..., n, C):

        X_next[i] = sum_j Hres[i, j] X[j] + Hpost[i] F(sum_k Hpre[k] X[k])

    with the coefficients of :mod:`mhc_spec.streams.coefficients`. Start a loop with
    :func:`expand_streams` and end it with :class:`StreamReduce`; with the same parameters
    such a loop equals :class:`StreamSequential`. ``block`` sees u of shape (..., C).

    Parameters (the spec's, for one layer): ``phi_pre``, ``phi_post`` (nC, n), ``phi_res``
    (nC, n, n), ``a_pre``, ``a_post``, ``a_res`` () (dynamic only), ``b_pre``, ``b_post``
    (n,), ``b_res`` (n, n), initialised by :func:`mhc_spec.streams.init_parameters`; b_pre is
    row ``layer_index`` of :func:`mhc_spec.streams.pre_init_logits` (``pre_init="cyclic"``
    leans on stream ``layer_index`` mod n). A layer has no read-out, so no ``reduce``.
    """

    def __init__(
        self,
        block: nn.Module,
        *,
        width: int,
        streams: int = 4,
        layer_index: int = 0,
        mode: str = "mhc",
        constraint: str | Callable[[Tensor], Tensor] = SINKHORN,
        sinkhorn_iterations: int = DEFAULT_SINKHORN_ITERATIONS,
        dynamic: bool = True,
        rms_eps: float = DEFAULT_RMS_EPS,
        a_init: float = DEFAULT_A_INIT,
        pre_init: str = "cyclic",
    ) -> None:
        super().__init__()
        self.config = StreamConfig(
            streams=streams, mode=mode, constraint=constraint,
            sinkhorn_iterations=sinkhorn_iterations, dynamic=dynamic, rms_eps=rms_eps,
            a_init=a_init, pre_init=pre_init,
        )
        if not isinstance(block, nn.Module):
            raise TypeError(f"block={block!r} is invalid: block must be an nn.Module")
        self.width = check_int("width", width, 1)
        self.layer_index = check_int("layer_index", layer_index, 0)
        self.block = block
        params = init_parameters(self.config, 1, self.width)
        params["streams.b_pre"] = pre_init_logits(self.config, self.layer_index + 1)[-1:]
        dtype = torch.get_default_dtype()
        for name in (*DYNAMIC_NAMES, *STATIC_NAMES):
            value = params.get(f"streams.{name}")
            self.register_parameter(
                name, None if value is None else
                nn.Parameter(torch.as_tensor(np.asarray(value[0]), dtype=dtype)))

    def extra_repr(self) -> str:
        c = self.config
        return (f"width={self.width}, streams={c.streams}, layer_index={self.layer_index}, "
                f"mode={c.kind!r}, dynamic={c.dynamic}")

    def packed_parameters(self) -> LayerParameters:
        """(Phi, s, beta) in the fused layout of :mod:`mhc_torch.streams.coefficients`."""
        dynamic = self.config.dynamic
        return pack_parameters(
            self.config, self.b_pre, self.b_post, self.b_res,
            phi=(self.phi_pre, self.phi_post, self.phi_res) if dynamic else None,
            a=(self.a_pre, self.a_post, self.a_res) if dynamic else None,
        )

    def forward(self, streams: Tensor) -> Tensor:
        """X_next (..., n, C) for X (..., n, C)."""
        n = self.config.streams
        check_streams_input(type(self).__name__, streams, (n, self.width))
        token_shape = tuple(streams.shape[:-2])
        flat = streams.reshape(-1, n, self.width)
        packed = self.packed_parameters()
        if self.config.dynamic:
            out, _ = run_layer(self.config, self.block, 0, flat, token_shape, dynamic=packed)
        else:
            static = static_coefficients(self.config, packed.bias)
            out, _ = run_layer(self.config, self.block, 0, flat, token_shape, static=static)
        return out.view(streams.shape)
