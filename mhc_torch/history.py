"""The window of past states a history-mixing layer reads, and a model-wide reset."""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor, nn

from mhc_spec.config import check_int


class HistoryBuffer:
    """The newest ``max_history`` states s_{t-H+1}, ..., s_t, oldest first.

    Pushing a state beyond the capacity drops the oldest one. The buffer is a plain Python
    object, never part of a ``state_dict``; it keeps whatever it holds until
    :meth:`reset` (or :func:`reset_history` on the model), so create it inside ``forward``
    unless the history should deliberately outlive the call.

    Example, a hand-written loop with one :class:`mhc_torch.MHCSkip` per block::

        class Net(nn.Module):
            def __init__(self, blocks, max_history=4):
                super().__init__()
                self.blocks = nn.ModuleList(blocks)
                self.skips = nn.ModuleList(MHCSkip(max_history) for _ in blocks)

            def forward(self, x):
                history = HistoryBuffer(self.skips[0].config.max_history, x)  # s_0 = x
                h = x
                for block, skip in zip(self.blocks, self.skips):
                    h = skip(block(h), history)  # s_l = f_l(s_{l-1}) + mix; pushed
                return h
    """

    def __init__(self, max_history: int, initial: Tensor | None = None) -> None:
        self.max_history = check_int("max_history", max_history, 1)
        self._states: list[Tensor] = []
        if initial is not None:
            self.push(initial)

    def push(self, state: Tensor) -> None:
        """Append ``state`` as the newest entry, dropping the oldest beyond ``max_history``."""
        self._states.append(state)
        if len(self._states) > self.max_history:
            del self._states[0]

    def reset(self, initial: Tensor | None = None) -> None:
        """Forget every state; start again from ``initial`` if given."""
        self._states = []
        if initial is not None:
            self.push(initial)

    @property
    def states(self) -> tuple[Tensor, ...]:
        """The held states, oldest first."""
        return tuple(self._states)

    @property
    def newest(self) -> Tensor:
        if not self._states:
            raise IndexError("the history is empty: push the layer input first")
        return self._states[-1]

    def __len__(self) -> int:
        return len(self._states)

    def __repr__(self) -> str:
        shape = tuple(self._states[-1].shape) if self._states else None
        return (f"HistoryBuffer(max_history={self.max_history}, size={len(self._states)}, "
                f"shape={shape})")


# Instance attributes every nn.Module has; submodules are reached by model.modules().
_MODULE_INTERNALS = frozenset(vars(nn.Module()))
_HOLDERS = (HistoryBuffer, list, tuple, dict)


def _buffers_in(value: object) -> Iterator[HistoryBuffer]:
    if isinstance(value, HistoryBuffer):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _buffers_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _buffers_in(item)


def history_buffers(model: nn.Module) -> list[HistoryBuffer]:
    """Every :class:`HistoryBuffer` held by ``model`` or any of its submodules (as an
    attribute, or inside a list, tuple or dict attribute), each once."""
    found: dict[int, HistoryBuffer] = {}
    for module in model.modules():
        for key, value in vars(module).items():
            # torch's own bookkeeping (parameter, buffer, submodule and hook dicts) cannot
            # hold a HistoryBuffer, and walking it was 3/4 of the cost.
            if key in _MODULE_INTERNALS or not isinstance(value, _HOLDERS):
                continue
            for buffer in _buffers_in(value):
                found.setdefault(id(buffer), buffer)
    return list(found.values())


def reset_history(model: nn.Module) -> int:
    """Reset every :class:`HistoryBuffer` held by ``model`` or any of its submodules
    (as an attribute, or inside a list, tuple or dict attribute); returns how many."""
    buffers = history_buffers(model)
    for buffer in buffers:
        buffer.reset()
    return len(buffers)
