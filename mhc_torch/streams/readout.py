"""Into and out of the streams: X_0 = n copies of h, and output = sum_i w_i X_L[i]."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mhc_spec.streams import StreamConfig, pre_logit, reduce_weights
from mhc_torch.projection import autocast_disabled


def expand_streams(h: Tensor, streams: int) -> Tensor:
    """X_0[..., i, :] = h for i = 0..n-1: shape (..., n, C) from h (..., C) (a new tensor;
    its gradient is the sum over the streams)."""
    return h.unsqueeze(-2).expand(*h.shape[:-1], streams, h.shape[-1]).contiguous()


class StreamReduce(nn.Module):
    """output = sum_i w_i X[i] for streams X (..., n, C), with w_i = 1 (``"sum"``), 1/n
    (``"mean"``) or sigmoid(r_i) (``"gated"``; r = ``reduce_logits`` (n,), initialised to
    logit(1/n) so that it starts as the mean)."""

    def __init__(self, streams: int, reduce: str = "sum") -> None:
        super().__init__()
        self.config = StreamConfig(streams=streams, reduce=reduce)
        self.streams, self.reduce = self.config.streams, self.config.reduce
        self.reduce_logits = (
            nn.Parameter(torch.full((self.streams,), pre_logit(self.streams)))
            if self.reduce == "gated" else None
        )

    def extra_repr(self) -> str:
        return f"streams={self.streams}, reduce={self.reduce!r}"

    def weights(self) -> Tensor:
        """w (n,): ones, 1/n or sigmoid(reduce_logits)."""
        if self.reduce_logits is not None:
            return torch.sigmoid(self.reduce_logits)
        dtype = torch.get_default_dtype()
        return torch.as_tensor(reduce_weights(self.config, {}), dtype=dtype)

    def forward(self, streams: Tensor) -> Tensor:
        """(..., C) from X (..., n, C), in X's dtype."""
        if streams.ndim < 2 or streams.shape[-2] != self.streams:
            raise ValueError(f"StreamReduce(streams={self.streams}) expects streams of shape "
                             f"(..., {self.streams}, C), got {tuple(streams.shape)}")
        if self.reduce == "sum":
            return streams.sum(dim=-2)
        if self.reduce == "mean":
            return streams.mean(dim=-2)
        with autocast_disabled(streams.device.type):
            w = torch.sigmoid(self.reduce_logits).to(streams.dtype)
            return torch.matmul(w, streams)
