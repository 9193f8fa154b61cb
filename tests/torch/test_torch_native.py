"""The native coefficient kernels (mhc_torch/streams/kernels.c) and their loader: equal to
the PyTorch operations they replace, built once and cached, and a clean fallback to the
PyTorch operations where they cannot be built or are switched off. These tests need the C
compiler that CI and the set-up script's machines have."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn

from mhc_torch import StreamSequential, native
from mhc_torch.streams import kernels
from mhc_torch.streams.sinkhorn import sinkhorn_reference

if TYPE_CHECKING:
    from tests.torch.conftest import CommandLog

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
    (1, 5, 3), (2, 1, 17), (3, 20, 40), (4, 20, 1), (4, 20, 32), (4, 20, 100), (8, 5, 33),
    (16, 20, 64), (4, 0, 20), (2, 0, 5)])
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
    generator = torch.Generator().manual_seed(2)
    cotangents = [torch.randn(shape, generator=generator)
                  for shape in ((300, 4), (300, 4), (300, 4, 4))]
    d32 = kernels.coefficients_backward(*cotangents, out.slopes, out.logits, 20)
    d64 = kernels.coefficients_backward(*(c.double() for c in cotangents), exact.slopes,
                                        exact.logits, 20)
    torch.testing.assert_close(d32.double(), d64, rtol=1e-5, atol=1e-6)


def test_widely_spread_logits_match_the_log_domain_reference_forward_and_backward() -> None:
    # Logits ~150 apart: exp(-150) underflows in float32; the kernel iterates in double.
    raw, inverse_rms, scale, bias = draw(64, 4, torch.float32, spread=50.0)
    out = kernels.coefficients_forward(raw, inverse_rms, scale, bias, 4, 20)
    assert (out.logits.amax(1) - out.logits.amin(1)).max() > 150
    z = out.logits.double().requires_grad_()
    want = heads(z, 4, 20)[2]
    torch.testing.assert_close(out.hres.double(), want, rtol=1e-5, atol=1e-6)
    d_hres = torch.randn(64, 4, 4, generator=torch.Generator().manual_seed(3))
    (want * d_hres.double()).sum().backward()
    zeros = torch.zeros(64, 4)
    d_logits = kernels.coefficients_backward(zeros, zeros, d_hres, out.slopes, out.logits, 20)
    torch.testing.assert_close(d_logits[:, 8:].double(), z.grad[:, 8:], rtol=1e-4, atol=1e-5)


def test_a_column_far_below_the_others_does_not_underflow() -> None:
    # Column 0 sits 800 below the rest: exp(-800) is 0 even in double, so a shift by the
    # matrix's max would divide 0 by 0; each column is shifted by its own max instead.
    n, tokens = 3, 5
    generator = torch.Generator().manual_seed(4)
    res = torch.randn(tokens, n, n, generator=generator, dtype=F64)
    res[:, :, 0] -= 800.0
    logits = torch.cat([torch.zeros(tokens, 2 * n, dtype=F64), res.flatten(1)], dim=1)
    raw, ones = logits, torch.ones(tokens, dtype=F64)
    out = kernels.coefficients_forward(raw, ones, torch.ones(2 * n + n * n, dtype=F64),
                                       torch.zeros(2 * n + n * n, dtype=F64), n, 20)
    torch.testing.assert_close(out.hres, sinkhorn_reference(res, 20), rtol=1e-12, atol=1e-14)


def test_the_wrappers_refuse_what_the_c_code_would_misread() -> None:
    raw, inverse_rms, scale, bias = draw(10, 4, F64)
    with pytest.raises(ValueError, match=r"inverse_rms is torch.float32 .* expected "
                                         r"torch.float64 of shape \(10,\)"):
        kernels.coefficients_forward(raw, inverse_rms.float(), scale, bias, 4, 20)
    with pytest.raises(ValueError, match=r"raw is .* shape \(10, 24\), expected .* \(10, 15\)"):
        kernels.coefficients_forward(raw, inverse_rms, scale, bias, 3, 20)


def test_a_backward_after_the_kernels_are_switched_off_still_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = StreamSequential([nn.Linear(8, 8) for _ in range(2)], streams=4)
    loss = model(torch.randn(3, 8)).square().sum()
    monkeypatch.setenv("MHC_NATIVE_KERNELS", "0")  # the forward's nodes keep their kernels
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


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
    calls = {"forward": 0, "backward": 0}
    for direction in calls:
        real = getattr(kernels, f"coefficients_{direction}")

        def counted(*args, _real=real, _direction=direction):
            calls[_direction] += 1
            return _real(*args)

        monkeypatch.setattr(kernels, f"coefficients_{direction}", counted)
    out, grads = stack_run(dtype)
    assert calls == {"forward": 3, "backward": 3}  # one per layer: the native path ran
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


def test_every_dtype_the_kernels_take_is_compiled() -> None:
    assert sorted(native.SUFFIXES.values()) == sorted(native.ELEMENT_TYPES)


def test_build_compiles_once_then_reuses_the_cached_library(
        tmp_path: Path, compile_log: CommandLog) -> None:
    first = native.build(kernels.SOURCE, tmp_path, "cc")
    assert compile_log.count("-c") == 2  # float and double
    assert native.build(kernels.SOURCE, tmp_path, "cc") == first
    assert compile_log.count("-c") == 2
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no scratch left behind


def test_a_missing_compiler_is_named() -> None:
    with pytest.raises(native.NativeUnavailable, match="'no-such-cc' is not on PATH"):
        native.build(kernels.SOURCE, native.cache_dir(), "no-such-cc")


def test_a_compiler_error_is_reported(tmp_path: Path) -> None:
    broken = tmp_path / "broken.c"
    broken.write_text("this is not C\n")
    with pytest.raises(native.NativeUnavailable, match="failed"):
        native.build(broken, tmp_path, "cc")


@pytest.fixture
def fresh_loader() -> Iterator[None]:
    """The loader and the bindings forget what this process built, before and after."""
    native._load.cache_clear()
    native.bind.cache_clear()
    yield
    native._load.cache_clear()
    native.bind.cache_clear()


def test_unavailable_kernels_warn_once_and_fall_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_loader: None) -> None:
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


def test_cache_dir_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MHC_CACHE_DIR", str(tmp_path / "mine"))
    assert native.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("MHC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert native.cache_dir() == tmp_path / "mhc"


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("style", ["normal", "tied", "huge", "masked"])
def test_native_sparsemax_equals_the_operators_forward_and_backward(
        monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, style: str) -> None:
    from mhc_torch.projection import _native, sparsemax

    generator = torch.Generator().manual_seed(5)
    z = torch.randn(50, 6, generator=generator, dtype=F64)
    if style == "tied":  # entries on the support's threshold included
        z = torch.randint(-2, 3, (50, 6), generator=generator).to(F64) / 2
    elif style == "huge":
        z = z * 1e4
    elif style == "masked":
        z = torch.where(torch.rand(50, 6, generator=generator, dtype=F64) < 0.4,
                        float("-inf"), z)
        z[:, -1] = 0.5  # the newest state is always available
    z = z.to(dtype)
    g = torch.randn(50, 6, generator=generator, dtype=F64).to(dtype)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        leaf = z.clone().requires_grad_()
        a = sparsemax(leaf)
        return a.detach(), torch.autograd.grad(a, leaf, g)[0]

    assert _native(z) is not None
    a, grad = run()
    monkeypatch.setenv("MHC_NATIVE_KERNELS", "0")
    assert _native(z) is None
    want, want_grad = run()
    tolerance = {F64: 1e-12, torch.float32: 1e-6}[dtype]
    torch.testing.assert_close(a, want, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(grad, want_grad, rtol=tolerance, atol=tolerance)
    assert (a[torch.isinf(z)] == 0).all()
    torch.testing.assert_close(a.sum(-1), torch.ones(50, dtype=dtype))


def test_native_sparsemax_edge_rows_and_support_equal_the_operators(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from mhc_torch.projection import _native, sparsemax

    inf, nan = float("inf"), float("nan")
    rows = torch.tensor([[-inf, -inf, 0.3], [-inf, 2.0, 2.0], [0.5, 0.5, 0.5], [1.0, 0.0, -1.0],
                         [1e30, -1e30, 0.0], [nan, 1.0, 2.0], [1.0, 2.0, nan], [inf, 0.0, 1.0]],
                        dtype=F64)
    single = torch.tensor([[0.7], [-3.0]], dtype=F64)
    for z in (rows, single, rows.float()):
        assert _native(z) is not None
        got = sparsemax(z)
        monkeypatch.setenv("MHC_NATIVE_KERNELS", "0")
        want = sparsemax(z)
        monkeypatch.delenv("MHC_NATIVE_KERNELS")
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(got > 0, want > 0)
    assert torch.isnan(sparsemax(rows)[5:]).all()  # a diverged theta shows, as on a GPU


def test_native_sparsemax_is_skipped_where_it_cannot_run() -> None:
    from mhc_torch.projection import MAX_NATIVE_WIDTH, _native

    z = torch.randn(4, 6, dtype=F64)
    assert _native(z) is not None
    assert _native(z.t()) is None  # not contiguous
    assert _native(torch.randn(3, 4, 6)) is None
    assert _native(torch.randn(2, MAX_NATIVE_WIDTH + 1)) is None
    assert _native(z.to(torch.bfloat16)) is None


def test_native_sparsemax_supports_double_backward() -> None:
    from mhc_torch.projection import sparsemax

    z = torch.randn(5, 4, dtype=F64, requires_grad=True)
    g = torch.randn(5, 4, dtype=F64, requires_grad=True)
    (dz,) = torch.autograd.grad(sparsemax(z), z, g, create_graph=True)
    (second,) = torch.autograd.grad(dz.square().sum(), g)
    assert torch.isfinite(second).all() and second.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda gg: torch.autograd.grad(
        sparsemax(z), z, gg, create_graph=True)[0], (g,))
