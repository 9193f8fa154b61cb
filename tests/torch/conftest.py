"""Fixtures of the PyTorch tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mhc_torch import native


@pytest.fixture(params=["native", "pytorch"])
def kernel_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test twice: on the native CPU kernels (the stream coefficients, sparsemax, the
    tape's steps), and on the PyTorch operations (the path GPUs and machines without a C
    compiler take)."""
    monkeypatch.setenv("MHC_NATIVE_KERNELS", "1" if request.param == "native" else "0")
    return request.param


class CommandLog:
    """Stands in for ``native._run``: records every command line, refuses those holding a
    flag of ``refused`` (as a compiler without it would), and runs the rest."""

    def __init__(self, run: Callable[[list[str]], str]) -> None:
        self.commands: list[list[str]] = []
        self.refused: set[str] = set()
        self._run = run

    def __call__(self, command: list[str]) -> str:
        self.commands.append(command)
        if refused := self.refused.intersection(command):
            raise native.NativeUnavailable(f"unrecognized options {sorted(refused)}")
        return self._run(command)

    def count(self, flag: str) -> int:
        """How many recorded command lines hold ``flag``."""
        return sum(flag in command for command in self.commands)


@pytest.fixture
def compile_log(monkeypatch: pytest.MonkeyPatch) -> CommandLog:
    """The command lines ``native.build`` runs during the test."""
    log = CommandLog(native._run)
    monkeypatch.setattr(native, "_run", log)
    return log
