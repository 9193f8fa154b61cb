"""MHCSkip: the history-mixing skip connection of one layer, for hand-written loops."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mhc_spec.config import DEFAULT_GATE_INIT, MHCConfig, check_bool
from mhc_spec.parameters import init_gamma, init_theta
from mhc_torch.history import HistoryBuffer
from mhc_torch.mixing import mix_into
from mhc_torch.projection import mixing_coefficients, window_mask


class MHCSkip(nn.Module):
    """One layer's skip path: s = y + g * sum_j a_j W_j over the window W of a
    :class:`mhc_torch.HistoryBuffer`, then s is pushed onto it.

    With K = min(H, len(history)) states available, a = P(theta[H-K:]) is the projection of
    ``mode``/``constraint`` (:class:`mhc_spec.MHCConfig`) and g = sigmoid(gamma) under
    ``gating`` (else 1). A loop that starts the history with s_0 = x and calls one MHCSkip
    per block after the block gives exactly :class:`mhc_torch.MHCSequential`'s numbers for
    the same parameters (theta row l-1 and gamma entry l-1 of the stack). See
    :class:`mhc_torch.HistoryBuffer` for a usage example.

    ``detach_history=True`` mixes detached states: gradients then stop at the skip path.
    Parameters: ``theta`` (H,) (absent for ``mode="residual"``), ``gamma`` () (gating only).
    """

    def __init__(
        self,
        max_history: int = 4,
        mode: str = "mhc",
        constraint: str = "simplex",
        temperature: float = 1.0,
        epsilon: float = 0.1,
        init: str | None = None,
        gating: bool = False,
        gate_init: float = DEFAULT_GATE_INIT,
        detach_history: bool = False,
    ) -> None:
        super().__init__()
        self.config = MHCConfig(
            max_history=max_history, mode=mode, constraint=constraint,
            temperature=temperature, epsilon=epsilon, init=init, gating=gating,
            gate_init=gate_init,
        )
        self.detach_history = check_bool("detach_history", detach_history)
        dtype = torch.get_default_dtype()
        theta = init_theta(self.config, 1)
        gamma = init_gamma(self.config, 1)
        self.theta = None if theta is None else nn.Parameter(torch.tensor(theta[0], dtype=dtype))
        self.gamma = None if gamma is None else nn.Parameter(torch.tensor(gamma[0], dtype=dtype))

    def extra_repr(self) -> str:
        return f"max_history={self.config.max_history}, mode={self.config.kind!r}"

    def _reference(self) -> Tensor | None:
        return self.theta if self.theta is not None else self.gamma

    def coefficients(self, available: int) -> Tensor:
        """(H,) padded row g * a for K = min(H, available) states; unavailable columns are 0."""
        ref = self._reference()
        return self._coefficients(available, torch.device("cpu") if ref is None else ref.device)

    def _coefficients(self, available: int, device: torch.device) -> Tensor:
        h = self.config.max_history
        ref = self._reference()
        dtype = torch.get_default_dtype() if ref is None else ref.dtype
        mask = window_mask(1, h, min(h, available) - 1, device)
        theta = None if self.theta is None else self.theta.unsqueeze(0)
        gamma = None if self.gamma is None else self.gamma.reshape(1)
        return mixing_coefficients(self.config, theta, gamma, mask, dtype)[0]

    def forward(self, y: Tensor, history: HistoryBuffer) -> Tensor:
        """s = y + g * sum_j a_j W_j (W = the newest K states of ``history``); pushes s."""
        if len(history) == 0:
            raise ValueError("the history is empty: start it with the input, e.g. "
                             "HistoryBuffer(max_history, x)")
        newest = history.newest
        if y.shape != newest.shape:
            raise ValueError(f"MHCSkip got y of shape {tuple(y.shape)} but the newest state has "
                             f"shape {tuple(newest.shape)}; the block must keep the shape")
        h = self.config.max_history
        k = min(h, len(history))
        window = history.states[len(history) - k:]
        if self.detach_history:
            window = tuple(state.detach() for state in window)
        row = self._coefficients(k, y.device)
        state = mix_into(y, window, row[h - k:])
        history.push(state)
        return state
