"""Fixtures of the PyTorch tests."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["native", "pytorch"])
def kernel_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test twice: on the native CPU kernels (the stream coefficients, sparsemax, the
    tape's steps), and on the PyTorch operations (the path GPUs and machines without a C
    compiler take)."""
    monkeypatch.setenv("MHC_NATIVE_KERNELS", "1" if request.param == "native" else "0")
    return request.param
