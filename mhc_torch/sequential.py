"""MHCSequential: a stack of blocks whose skip connections mix a window of past states."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from mhc_spec.config import DEFAULT_GATE_INIT, MHCConfig, check_bool
from mhc_spec.parameters import init_gamma, init_theta
from mhc_torch.blocks import check_block_output, collect_modules
from mhc_torch.highway import HighwayRecorder, norm_hook
from mhc_torch.history import HistoryBuffer
from mhc_torch.mixing import mix_into, width_rows
from mhc_torch.portable import export_portable, load_portable
from mhc_torch.projection import (
    autocast_disabled,
    mixing_coefficients,
    padded_weights,
    window_mask,
)
from mhc_torch.tape import refuse_in_place_change, run_tape


def _functorch_active() -> bool:
    return torch._C._are_functorch_transforms_active()


class MHCSequential(nn.Module):
    """Blocks f_1..f_L with history-mixing skip connections (manifold-constrained
    hyper-connections):

        s_0 = x;   s_l = f_l(s_{l-1}) + g_l * sum_{j} a_{l,j} s_{l-K+j},   K = min(H, l)

    with a_l = P(theta_l[H-K:]) the projection of ``mode``/``constraint`` (see
    :class:`mhc_spec.MHCConfig`) and g_l = sigmoid(gamma_l) under ``gating`` (else 1);
    the output is s_L. Every block must return a tensor of its input's shape.

    Arguments beyond the spec's configuration:

    - ``carry_history``: if True, the window continues from the previous call's newest
      H-1 states (values only; gradients never cross calls) until :meth:`reset_history`;
      the first layers then see up to H states. Default False: every forward starts from
      its own input and is a pure function of input and parameters, and nothing
      references an activation after the forward returns.
    - ``detach_history``: if True, the skip paths read detached states, so gradients then
      stop at the skip paths: they reach earlier layers only through the blocks (theta and
      gamma still get theirs). Default False: exact gradients through the history.
    - ``checkpoint``: recompute each block in backward (non-reentrant activation
      checkpointing); gradients equal the plain run.

    Parameters: ``theta`` (L, H) (absent for ``mode="residual"``), ``gamma`` (L,) (with
    gating only) and the blocks under ``layers``. The history never enters ``state_dict``.
    """

    def __init__(
        self,
        modules: Iterable[nn.Module],
        max_history: int = 4,
        mode: str = "mhc",
        constraint: str = "simplex",
        temperature: float = 1.0,
        epsilon: float = 0.1,
        init: str | None = None,
        gating: bool = False,
        gate_init: float = DEFAULT_GATE_INIT,
        carry_history: bool = False,
        detach_history: bool = False,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.config = MHCConfig(
            max_history=max_history, mode=mode, constraint=constraint,
            temperature=temperature, epsilon=epsilon, init=init, gating=gating,
            gate_init=gate_init,
        )
        self.carry_history = check_bool("carry_history", carry_history)
        self.detach_history = check_bool("detach_history", detach_history)
        self.checkpoint = check_bool("checkpoint", checkpoint)
        self.layers = nn.ModuleList(collect_modules("modules", modules))
        depth = len(self.layers)
        dtype = torch.get_default_dtype()
        theta = init_theta(self.config, depth)
        gamma = init_gamma(self.config, depth)
        self.theta = None if theta is None else nn.Parameter(torch.tensor(theta, dtype=dtype))
        self.gamma = None if gamma is None else nn.Parameter(torch.tensor(gamma, dtype=dtype))
        self._history = HistoryBuffer(self.config.max_history)
        self._highway = HighwayRecorder()

    @property
    def depth(self) -> int:
        """L, the number of blocks."""
        return len(self.layers)

    def extra_repr(self) -> str:
        c = self.config
        text = f"depth={self.depth}, max_history={c.max_history}, mode={c.kind!r}"
        if c.mode == "mhc":
            text += f", temperature={c.temperature}"
        if c.constraint == "identity" and c.mode == "mhc":
            text += f", epsilon={c.epsilon}"
        flags = {"gating": c.gating, "carry_history": self.carry_history,
                 "detach_history": self.detach_history, "checkpoint": self.checkpoint}
        return text + "".join(f", {name}=True" for name, on in flags.items() if on)

    # ---- mixing weights -------------------------------------------------------------

    def _reference(self) -> Tensor | None:
        return self.theta if self.theta is not None else self.gamma

    def _param_device_dtype(self) -> tuple[torch.device, torch.dtype]:
        ref = self._reference()
        if ref is not None:
            return ref.device, ref.dtype
        first = next(self.layers.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
        return device, torch.get_default_dtype()

    def mixing_weights(self, carried: int = 0) -> Tensor:
        """A (L, H) in the padded layout of :func:`mhc_spec.padded_weights`: row l-1 holds the
        weights layer l gives states s_{l-H}..s_{l-1}; unavailable states get exactly 0.

        ``carried`` = states a continued history holds before s_0 (``carry_history``).
        Differentiable; in the parameters' dtype (float32 by default, also under autocast).
        """
        device, dtype = self._param_device_dtype()
        mask = window_mask(self.depth, self.config.max_history, carried, device)
        with autocast_disabled(device.type):
            return padded_weights(self.config, self.theta, mask, dtype)

    def gates(self) -> Tensor:
        """g (L,): sigmoid(gamma) with gating, else ones."""
        if self.gamma is not None:
            return torch.sigmoid(self.gamma)
        device, dtype = self._param_device_dtype()
        return torch.ones(self.depth, dtype=dtype, device=device)

    def _coefficients(self, carried: int, device: torch.device) -> Tensor:
        _, dtype = self._param_device_dtype()
        mask = window_mask(self.depth, self.config.max_history, carried, device)
        return mixing_coefficients(self.config, self.theta, self.gamma, mask, dtype)

    # ---- history ----------------------------------------------------------------------

    @property
    def history(self) -> HistoryBuffer:
        """The carried window (``carry_history=True``): the newest H-1 states of the last call,
        detached copies; empty otherwise."""
        return self._history

    def reset_history(self) -> None:
        """Forget the carried history (``carry_history=True``); the next call starts from x."""
        self._history.reset()

    def _carried_states(self, x: Tensor) -> list[Tensor]:
        if not self.carry_history or len(self._history) == 0:
            return []
        newest = self._history.newest
        if newest.shape != x.shape or newest.dtype != x.dtype or newest.device != x.device:
            raise ValueError(
                f"carry_history=True: the input (shape {tuple(x.shape)}, {x.dtype}, "
                f"{x.device}) does not continue the carried history (shape "
                f"{tuple(newest.shape)}, {newest.dtype}, {newest.device}); call "
                "reset_history() on this module (or mhc_torch.reset_history(model)) before "
                "feeding a new batch shape"
            )
        return list(self._history.states)  # at most H-1: see _store_history

    def _store_history(self, tail: list[Tensor]) -> None:
        self._history.reset()
        for state in tail:
            self._history.push(state)

    # ---- highway capture ------------------------------------------------------------

    def capture_highway(self) -> None:
        """Arm a one-shot capture: the next forward records ||dLoss/ds_l||_2, l = 0..L, during
        its backward (read it with :meth:`pop_highway`); otherwise nothing is recorded.

        Eager only: a forward traced by ``torch.compile`` records nothing (backward hooks
        would break the graph), and :meth:`pop_highway` then returns None."""
        self._highway.arm()

    def pop_highway(self) -> Tensor | None:
        """The captured (L+1,) detached gradient norms after backward (None if nothing was
        captured or backward has not run); clears the capture."""
        return self._highway.pop()

    # ---- forward ------------------------------------------------------------------------

    def _run_block(self, layer: int, block: nn.Module, state: Tensor) -> Tensor:
        if self.checkpoint:
            y = activation_checkpoint(block, state, use_reentrant=False)
        else:
            y = block(state)
        return check_block_output(f"layers[{layer - 1}]", block, state, y, "MHCSequential")

    def forward(self, x: Tensor) -> Tensor:
        """s_L of the recurrence for the input s_0 = x."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError("MHCSequential expects a floating-point tensor input, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        carried = self._carried_states(x)
        compiling = torch.compiler.is_compiling()
        norms = None if compiling else self._highway.start(self.depth)
        keep = self.config.max_history - 1 if self.carry_history else 0
        if norms is not None and not x.requires_grad:
            # ||dLoss/ds_0|| needs a gradient at s_0: give s_0 one (logging steps only).
            x = x.detach().requires_grad_()
        plain_residual = self.config.mode == "residual" and not self.config.gating
        eager_training = torch.is_grad_enabled() and not compiling and not _functorch_active()
        if plain_residual:
            out, tail = self._forward_residual(x, carried, norms, keep)
        elif eager_training and self.config.max_history > 1:
            # With H = 1 the skip path is one addcmul per layer, whose built-in autograd node
            # costs less than a Python step of the tape; the tape pays off from H = 2 on.
            coefficients = self._coefficients(len(carried), x.device)
            out, tail = run_tape(self.layers, x, coefficients, carried=carried,
                                 skip_grads=not self.detach_history, norms=norms,
                                 run_block=self._run_block, keep=keep)
        else:
            coefficients = self._coefficients(len(carried), x.device)
            out, tail = self._forward_functional(x, carried, coefficients, norms, keep,
                                                 refuse_in_place=eager_training)
        if self.carry_history:
            self._store_history(tail)
        return out

    def _hooked(self, state: Tensor, norms: list | None, index: int) -> Tensor:
        if norms is not None and state.requires_grad:
            if index == 0:
                state = state.view_as(state)  # never leave a hook on the caller's tensor
            state.register_hook(norm_hook(norms, index))
        return state

    def _forward_residual(self, x: Tensor, carried: list[Tensor], norms: list | None,
                          keep: int) -> tuple[Tensor, list[Tensor]]:
        """s_l = f_l(s_{l-1}) + s_{l-1}: the mixing weights are e_{K-1} and the gates 1."""
        states = [*carried, self._hooked(x, norms, 0)]
        state = states[-1]
        for layer, block in enumerate(self.layers, 1):
            skip = state.detach() if self.detach_history else state
            state = self._hooked(self._run_block(layer, block, state) + skip, norms, layer)
            if keep:
                states = [*states[-keep:], state]
        return state, [s.detach() for s in states[-keep:]] if keep else []

    def _forward_functional(self, x: Tensor, carried: list[Tensor], coefficients: Tensor,
                            norms: list | None, keep: int, refuse_in_place: bool = False
                            ) -> tuple[Tensor, list[Tensor]]:
        """The recurrence with plain tensor operations (compile, no-grad, torch.func, H = 1).

        ``refuse_in_place``: raise like the tape when a block modifies its input in place
        (eager training, where the version counter is cheap to read)."""
        h = self.config.max_history
        # Compiled: each layer's row broadcast over the width (see width_rows); eager: one
        # unbind for all layers costs less dispatch than K selects per layer.
        rows = torch.compiler.is_compiling()
        scalars = None if rows else coefficients.reshape(-1).unbind(0)
        states = [*carried, self._hooked(x, norms, 0)]
        for layer, block in enumerate(self.layers, 1):
            version = states[-1]._version if refuse_in_place else 0
            y = self._run_block(layer, block, states[-1])
            if refuse_in_place and states[-1]._version != version:
                refuse_in_place_change(layer)
            k = min(h, layer + len(carried))
            window = states[-k:]
            if self.detach_history:
                window = [s.detach() for s in window]
            if rows:
                state = mix_into(y, window, width_rows(coefficients[layer - 1], y, window))
            else:
                start = (layer - 1) * h
                state = mix_into(y, window, scalars[start + h - k:start + h])
            states.append(self._hooked(state, norms, layer))
            if len(states) > h:
                del states[0]
        return states[-1], [s.detach() for s in states[-keep:]] if keep else []

    # ---- portable parameters ---------------------------------------------------------

    def export_portable(self) -> dict[str, np.ndarray]:
        """The portable NumPy dict of :mod:`mhc_spec.parameters` ("mixing.theta",
        "mixing.gamma", "blocks.<i>.<state_dict key>")."""
        return export_portable(self.theta, self.gamma, self.layers)

    def load_portable(self, params: dict[str, np.ndarray]) -> None:
        """Load a portable dict (as written by :meth:`export_portable` or ``mhc_jax``)."""
        load_portable(params, self.config, self.theta, self.gamma, self.layers)


def iter_mhc_modules(model: nn.Module) -> Iterator[tuple[str, MHCSequential]]:
    """(qualified name, module) for every MHCSequential inside ``model``, nested included."""
    for name, module in model.named_modules():
        if isinstance(module, MHCSequential):
            yield name, module
