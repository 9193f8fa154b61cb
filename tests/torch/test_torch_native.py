"""The native coefficient kernels (mhc_torch/streams/kernels.c) and their loader: equal to
the PyTorch operations they replace, built once and cached, and a clean fallback to the
PyTorch operations where they cannot be built or are switched off. These tests need the C
compiler that CI and the set-up script's machines have."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from mhc_torch import StreamSequential, native
from mhc_torch.streams import kernels
from mhc_torch.streams.sinkhorn import sinkhorn_reference

F64 = torch.float64


def heads(z: torch.Tensor, n: int, iterations: int) -> tuple[torch.Tensor, ...]:
    """Hpre, Hpost, Hres of logits z (B, K) by plain differentiable operations."""
    gates = torch.sigmoid(z[:, : 2 * n])
    res = z[:, 2 * n:].unflatten(-1, (n, n))
    hres = sinkhorn_reference(res, iterations) if iterations else res
    return gates[:, :n], 2 * gates[:, n:], hres


def draw(tokens: int, n: int, dtype: torch.dtype, spread: float = 3.0
         ) -> tuple[torch.Tensor, ...]:
    """raw (B, K), 1/r (B,), s (K,), beta (K,)."""
    generator = torch.Generator().manual_seed(tokens * 100 + n)
    width = 2 * n + n * n

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=F64).to(dtype)

    inverse_rms = (torch.rand(tokens, generator=generator, dtype=F64) + 0.5).to(dtype)
    return randn(tokens, width) * spread, inverse_rms, randn(width), randn(width)


@pytest.mark.parametrize(("n", "iterations", "tokens"), [
    (1, 5, 3), (2, 1, 17), (3, 20, 40), (4, 20, 1), (4, 20, 100), (8, 5, 33), (4, 0, 20),
    (2, 0, 5)])
def test_forward_and_backward_equal_the_pytorch_operations(
        n: int, iterations: int, tokens: int) -> None:
    raw, inverse_rms, scale, bias = draw(tokens, n, F64)
    out = kernels.coefficients_forward(raw, inverse_rms, scale, bias, n, iterations)
    weight = inverse_rms[:, None] * scale
    z = bias + raw * weight
    gates = torch.sigmoid(z[:, : 2 * n])
    slopes = gates * (1 - gates) * torch.tensor([1.0] * n + [2.0] * n, dtype=F64)
    for got, want in zip((out.weight, out.logits, out.slopes, *out[2:4], out.hres),
                         (weight, z, slopes, *heads(z, n, iterations)), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)

    generator = torch.Generator().manual_seed(1)
    cotangents = [torch.randn(shape, generator=generator, dtype=F64)
                  for shape in ((tokens, n), (tokens, n), (tokens, n, n))]
    z = z.detach().requires_grad_()
    sum((h * d).sum() for h, d in zip(heads(z, n, iterations), cotangents, strict=True)
        ).backward()
    d_logits = kernels.coefficients_backward(*cotangents, out.slopes, out.logits, iterations)
    torch.testing.assert_close(d_logits, z.grad, rtol=1e-10, atol=1e-13)


def test_float32_kernels_match_float64() -> None:
    raw, inverse_rms, scale, bias = draw(300, 4, torch.float32)
    out = kernels.coefficients_forward(raw, inverse_rms, scale, bias, 4, 20)
    exact = kernels.coefficients_forward(*(t.double() for t in (raw, inverse_rms, scale, bias)),
                                         4, 20)
    assert out.hres.dtype == torch.float32
    torch.testing.assert_close(out.hres.double(), exact.hres, rtol=1e-6, atol=1e-7)
    cotangents = [torch.randn(shape) for shape in ((300, 4), (300, 4), (300, 4, 4))]
    d32 = kernels.coefficients_backward(*cotangents, out.slopes, out.logits, 20)
    d64 = kernels.coefficients_backward(*(c.double() for c in cotangents), exact.slopes,
                                        exact.logits, 20)
    torch.testing.assert_close(d32.double(), d64, rtol=1e-5, atol=1e-6)


def test_sinkhorn_of_widely_spread_float32_logits_is_finite_and_row_stochastic() -> None:
    # Logits 150 apart: exp(-150) underflows in float32; the kernel iterates in double.
    raw, inverse_rms, scale, bias = draw(64, 4, torch.float32, spread=50.0)
    out = kernels.coefficients_forward(raw, inverse_rms, scale, bias, 4, 20)
    assert (out.logits.amax(1) - out.logits.amin(1)).max() > 150
    assert torch.isfinite(out.hres).all()
    torch.testing.assert_close(out.hres.sum(-1), torch.ones(64, 4), rtol=0, atol=1e-6)


def stack_run(dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = StreamSequential([nn.Linear(8, 8) for _ in range(3)], streams=4,
                             sinkhorn_iterations=20).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 5, 8, dtype=dtype)
    out = model(x)
    out.square().sum().backward()
    return out.detach(), {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize(("dtype", "tolerance"), [(F64, 1e-12), (torch.float32, 1e-5)])
def test_stack_is_the_same_with_the_kernels_switched_off(
        monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, tolerance: float) -> None:
    out, grads = stack_run(dtype)
    monkeypatch.setenv("MHC_NATIVE_KERNELS", "0")
    assert not kernels.usable(dtype, torch.device("cpu"))
    plain_out, plain_grads = stack_run(dtype)
    torch.testing.assert_close(out, plain_out, rtol=tolerance, atol=tolerance)
    for name, grad in grads.items():
        # Relative to each gradient's largest entry: float32 rounding scales with it.
        scale = plain_grads[name].abs().max().item()
        torch.testing.assert_close(grad, plain_grads[name], rtol=tolerance,
                                   atol=tolerance * scale, msg=name)


def test_kernels_are_used_for_cpu_float_tensors_only() -> None:
    cpu = torch.device("cpu")
    assert kernels.usable(torch.float32, cpu) and kernels.usable(F64, cpu)
    assert not kernels.usable(torch.bfloat16, cpu)
    assert not kernels.usable(torch.float32, torch.device("meta"))


def test_build_compiles_once_then_reuses_the_cached_library(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    commands: list[list[str]] = []
    run = native._run

    def counting(command: list[str]) -> str:
        commands.append(command)
        return run(command)

    monkeypatch.setattr(native, "_run", counting)
    first = native.build(kernels.SOURCE, tmp_path, "cc")
    compiles = sum("-c" in command for command in commands)
    assert compiles == 2  # float and double
    assert native.build(kernels.SOURCE, tmp_path, "cc") == first
    assert sum("-c" in command for command in commands) == compiles
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no scratch left behind


def test_a_missing_compiler_is_named() -> None:
    with pytest.raises(native.NativeUnavailable, match="'no-such-cc' is not on PATH"):
        native.build(kernels.SOURCE, native.cache_dir(), "no-such-cc")


def test_a_compiler_error_is_reported(tmp_path) -> None:
    broken = tmp_path / "broken.c"
    broken.write_text("this is not C\n")
    with pytest.raises(native.NativeUnavailable, match="failed"):
        native.build(broken, tmp_path, "cc")


@pytest.fixture
def fresh_loader():
    native._load.cache_clear()
    yield
    native._load.cache_clear()


def test_unavailable_kernels_warn_once_and_fall_back(
        tmp_path, monkeypatch: pytest.MonkeyPatch, fresh_loader) -> None:
    monkeypatch.setenv("CC", "no-such-cc")
    monkeypatch.setenv("MHC_CACHE_DIR", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="native CPU kernels unavailable .*no-such-cc"):
        assert native.library(kernels.SOURCE) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not kernels.usable(torch.float32, torch.device("cpu"))
        out, _ = stack_run(torch.float32)  # the PyTorch operations
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("MHC_NATIVE_KERNELS", value)
    assert not native.enabled() and native.library(kernels.SOURCE) is None


def test_cache_dir_settings(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("MHC_CACHE_DIR", str(tmp_path / "mine"))
    assert native.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("MHC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert native.cache_dir() == tmp_path / "mhc"
