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


def mix_into(y: Tensor, window: Sequence[Tensor], coefficients: Sequence[Tensor]) -> Tensor:
    """s = y + sum_j c_j * W_j (window oldest first; ``coefficients`` 0-d tensors, same length)."""
    out = y
    for state, coefficient in zip(window, coefficients, strict=True):
        out = torch.addcmul(out, state, coefficient)
    return out
