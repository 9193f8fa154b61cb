"""The skip path of one layer as plain differentiable tensor operations.

This is the formulation used by :class:`mhc_torch.MHCSkip`, under ``torch.compile``
(where the compiler fuses it into one pass), without gradients, and under ``torch.func``
transforms, and in eager training of :class:`mhc_torch.MHCSequential` with H = 1; eager
training with H >= 2 uses the equivalent :mod:`mhc_torch.tape` instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def mix_into(y: Tensor, window: Sequence[Tensor], coefficients: Tensor | Sequence[Tensor]
             ) -> Tensor:
    """s = y + sum_j c_j * W_j (window oldest first; ``coefficients`` K 0-d tensors or a
    (K,) tensor, or the (K, C) rows of :func:`width_rows`; K = len(window))."""
    if len(coefficients) != len(window):
        raise ValueError(f"mix_into: {len(coefficients)} coefficients for a window of "
                         f"{len(window)} states")
    out = y
    for j, state in enumerate(window):
        out = torch.addcmul(out, state, coefficients[j])
    return out


def width_rows(row: Tensor, y: Tensor, window: Sequence[Tensor]) -> Tensor:
    """The last K = len(window) entries of one layer's coefficients (H,), each broadcast
    over the state width C: (K, C) rows r_j = c_j 1_C for :func:`mix_into`.

    The form for ``torch.compile``: inductor reduces each row's gradient over the batch in
    the kernels that already read the state gradient (with the blocks' bias gradients),
    where 0-d coefficients cost a scalar buffer each per layer in backward (measured at
    64x64, H = 4: 1.107-1.140x against 1.159-1.168x the compiled residual stack). The rows
    take the dtype the states promote to, as a 0-d coefficient would be cast to."""
    dtype = y.dtype
    for state in window:
        dtype = torch.promote_types(dtype, state.dtype)
    h = row.shape[-1]
    return row.to(dtype).unsqueeze(-1).expand(h, y.shape[-1])[h - len(window):]
