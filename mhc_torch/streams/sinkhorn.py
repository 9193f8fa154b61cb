"""Sinkhorn-Knopp in PyTorch: all T iterations as one autograd node.

The spec's iteration (:func:`mhc_spec.streams.sinkhorn`)

    M_0 = exp(Z - max Z);   for t = 1..T:  C_t = M_{t-1} / colsum(M_{t-1}),  M_t = C_t / rowsum(C_t)

runs here in the log domain, where each normalisation is one log-softmax:

    L_0 = Z;   L_{2t-1} = log_softmax(L_{2t-2}) over each column,
               L_{2t}   = log_softmax(L_{2t-1}) over each row;      SK(Z) = exp(L_{2T})

(log C_t = L_{2t-1} and log M_t = L_{2t} in exact arithmetic; the max shift cancels). It
takes half the kernel calls of the quotient form and never divides 0 by 0: where the spec's
float32 columns underflow to zero (logits ~87 below the matrix's max) it stays finite.
The reverse mode walks the saved L_{2T}..L_1 with the log-softmax VJP
dx = dy - exp(y) sum(dy) (over the same axis), starting from dL_{2T} = G * SK(Z).

The kernels work on the "tokens last" layout (n, n, N): a matrix entry is then a contiguous
vector over the N matrices, so every call is vectorised over the tokens instead of looping
over n x n matrices. The 2T log-iterates, 2T n^2 N numbers, are kept rather than
recomputed.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

COLUMNS, ROWS = 0, 1  # axes of the tokens-last layout (n, n, N) that columns / rows sum over


def _axis(step: int) -> int:
    """The axis half-step ``step`` (0-based) normalises: columns first, then rows."""
    return ROWS if step % 2 else COLUMNS


def sinkhorn_forward(logits: Tensor, iterations: int) -> tuple[Tensor, list[Tensor]]:
    """(SK(Z), [L_1, ..., L_2T]) for Z of shape (n, n, N) (tokens last, any strides)."""
    log_iterates = []
    current = logits
    for step in range(2 * iterations):
        # The private binding skips log_softmax's dtype handling: ~5% of each small call.
        current = torch._log_softmax(current, _axis(step), False)
        log_iterates.append(current)
    return current.exp(), log_iterates


def sinkhorn_backward(result: Tensor, log_iterates: list[Tensor], grad: Tensor) -> Tensor:
    """dLoss/dZ (n, n, N) given dLoss/dSK(Z) (n, n, N), SK(Z) and the log-iterates."""
    g = grad * result
    for step in range(len(log_iterates) - 1, -1, -1):
        # The log-softmax VJP through its direct binding: torch.ops.aten's Python dispatch
        # costs as much again per call.
        g = torch._log_softmax_backward_data(g, log_iterates[step], _axis(step), g.dtype)
    return g


def sinkhorn_reference(logits: Tensor, iterations: int) -> Tensor:
    """SK(Z) for Z (..., n, n) with plain differentiable operations, the same log-domain
    iteration (for torch.compile and torch.func transforms, and any order of derivative)."""
    current = logits
    for _ in range(iterations):
        current = torch.log_softmax(current, dim=-2)
        current = torch.log_softmax(current, dim=-1)
    return current.exp()


def _tokens_last(matrices: Tensor) -> Tensor:
    """(..., n, n) as an (n, n, N) view (N = the leading sizes' product)."""
    n = matrices.shape[-1]
    return matrices.reshape(-1, n, n).permute(1, 2, 0)


class _Sinkhorn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, iterations: int) -> Tensor:
        result, log_iterates = sinkhorn_forward(_tokens_last(logits), iterations)
        # Intermediates only this node can reach: kept as attributes, which skips the
        # per-tensor bookkeeping of save_for_backward for the 2T iterates.
        ctx.result, ctx.log_iterates = result, log_iterates
        return result.permute(2, 0, 1).contiguous().view(logits.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        dz = sinkhorn_backward(ctx.result, ctx.log_iterates, _tokens_last(grad))
        return dz.permute(2, 0, 1).reshape(grad.shape), None


def use_reference_operations() -> bool:
    """Whether to run plain differentiable operations instead of the hand-derived autograd
    nodes: while torch.compile traces (the compiler fuses them itself) and under torch.func
    transforms (the nodes have no vmap or forward-mode rules)."""
    return torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()


def sinkhorn(logits: Tensor, iterations: int) -> Tensor:
    """SK(Z) = (T_r o T_c)^T (exp(Z - max Z)) for Z of shape (..., n, n): T column-then-row
    normalisations of each matrix; rows of the result sum to 1.

    Eager: one autograd node with a hand-derived reverse mode (first derivatives only);
    under torch.compile or torch.func: :func:`sinkhorn_reference`."""
    if use_reference_operations():
        return sinkhorn_reference(logits, iterations)
    return _Sinkhorn.apply(logits, iterations)
