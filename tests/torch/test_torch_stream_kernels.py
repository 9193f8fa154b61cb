"""The native stream kernels (mhc_torch/streams/kernels.c): the update X_next = Hres X +
Hpost y, its reverse mode and the read's terms of dX, each equal to the PyTorch operations
it replaces, the same on any number of threads, and run by a training step. Also the
loader's OpenMP build: it shares PyTorch's runtime, and a compiler without OpenMP still
gives a working (serial) library."""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn

from mhc_torch import StreamSequential, native
from mhc_torch.streams import kernels

if TYPE_CHECKING:
    from tests.torch.conftest import CommandLog

F64 = torch.float64
# (tokens, n, C): odd widths leave vector remainders; the last two pass the threading grain.
SHAPES = [(1, 1, 1), (3, 2, 5), (7, 3, 33), (5, 4, 64), (2, 8, 17), (64, 4, 128), (19, 4, 513)]


def draw(tokens: int, n: int, width: int, dtype: torch.dtype, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=F64).to(dtype)

    return {"streams": randn(tokens, n, width), "y": randn(tokens, width),
            "hres": randn(tokens, n, n), "hpost": randn(tokens, n), "hpre": randn(tokens, n),
            "grad": randn(tokens, n, width), "du": randn(tokens, width),
            "through_rms": randn(tokens)}


TOLERANCE = {F64: {"rtol": 1e-12, "atol": 1e-12}, torch.float32: {"rtol": 1e-5, "atol": 1e-5}}


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_update_forward_and_backward_equal_the_operators(
        shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    d = draw(*shape, dtype)
    x, y, hres, hpost, g = d["streams"], d["y"], d["hres"], d["hpost"], d["grad"]
    want = hres @ x + hpost.unsqueeze(-1) * y.unsqueeze(-2)
    torch.testing.assert_close(kernels.update_forward(x, y, hres, hpost), want,
                               **TOLERANCE[dtype])
    d_streams, d_y, d_hpost, d_hres = kernels.update_backward(g, x, y, hres, hpost, True)
    leaves = [t.clone().requires_grad_() for t in (x, y, hres, hpost)]
    out = leaves[2] @ leaves[0] + leaves[3].unsqueeze(-1) * leaves[1].unsqueeze(-2)
    wants = torch.autograd.grad(out, leaves, g)
    for got, expected in zip((d_streams, d_y, d_hres, d_hpost), wants, strict=True):
        torch.testing.assert_close(got, expected, **TOLERANCE[dtype])
    without = kernels.update_backward(g, x, y, hres, hpost, False)
    assert without[0] is None
    for got, expected in zip(without[1:], (d_y, d_hpost, d_hres), strict=True):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_read_backward_adds_both_terms_in_place(
        shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    d = draw(*shape, dtype, seed=1)
    start = d["grad"]
    outer = d["hpre"].unsqueeze(-1) * d["du"].unsqueeze(-2)
    both = start.clone()
    kernels.read_backward(both, d["hpre"], d["du"], d["through_rms"], d["streams"])
    torch.testing.assert_close(
        both, start + outer + d["through_rms"].view(-1, 1, 1) * d["streams"], **TOLERANCE[dtype])
    first = start.clone()
    kernels.read_backward(first, d["hpre"], d["du"], None, d["streams"])
    torch.testing.assert_close(first, start + outer, **TOLERANCE[dtype])


def test_results_do_not_depend_on_the_thread_count() -> None:
    d = draw(256, 4, 512, torch.float32, seed=2)  # well past the grain: threads split tokens
    generator = torch.Generator().manual_seed(3)
    raw, inverse_rms = torch.randn(256, 24, generator=generator), torch.rand(256) + 0.5
    scale, bias = torch.randn(24, generator=generator), torch.randn(24, generator=generator)
    before = torch.get_num_threads()

    def run() -> list[torch.Tensor]:
        grad = d["grad"].clone()
        kernels.read_backward(grad, d["hpre"], d["du"], d["through_rms"], d["streams"])
        coefficients = kernels.coefficients_forward(raw, inverse_rms, scale, bias, 4, 20)
        return [kernels.update_forward(d["streams"], d["y"], d["hres"], d["hpost"]), grad,
                *kernels.update_backward(d["grad"], d["streams"], d["y"], d["hres"],
                                         d["hpost"], True),
                *coefficients,
                kernels.coefficients_backward(d["hpre"], d["hpost"], d["hres"],
                                              coefficients.slopes, coefficients.logits, 20)]

    try:
        torch.set_num_threads(1)
        serial = run()
        torch.set_num_threads(2)
        threaded = run()
    finally:
        torch.set_num_threads(before)
    for a, b in zip(serial, threaded, strict=True):
        assert torch.equal(a, b)  # each token is one thread's: the same arithmetic


def test_the_wrappers_refuse_what_the_c_code_would_misread() -> None:
    d = draw(4, 3, 8, F64)
    with pytest.raises(ValueError, match=r"y is torch.float32 of shape \(4, 8\), expected "
                                         r"contiguous torch.float64 of shape \(4, 8\)"):
        kernels.update_forward(d["streams"], d["y"].float(), d["hres"], d["hpost"])
    with pytest.raises(ValueError, match=r"hres is .* shape \(4, 3, 3\), expected contiguous "
                                         r".* shape \(4, 3, 3\)"):
        kernels.update_forward(d["streams"], d["y"], d["hres"].transpose(1, 2), d["hpost"])
    strided = torch.randn(4, 8, 3, dtype=F64).transpose(1, 2)  # (4, 3, 8), not contiguous
    with pytest.raises(ValueError, match=r"streams must be a contiguous \(B, n, C\) tensor"):
        kernels.update_forward(strided, d["y"], d["hres"], d["hpost"])
    with pytest.raises(ValueError, match=r"through_rms is .* shape \(3,\), expected .* \(4,\)"):
        kernels.read_backward(d["grad"], d["hpre"], d["du"], d["through_rms"][:3],
                              d["streams"])
    assert not kernels.streams_usable(d["streams"], d["y"].float())
    assert not kernels.streams_usable(d["streams"].transpose(1, 2))
    assert not kernels.streams_usable(d["streams"].bfloat16())


@pytest.mark.parametrize("dynamic", [True, False])
def test_a_training_step_runs_the_stream_kernels_and_equals_the_operators(
        monkeypatch: pytest.MonkeyPatch, dynamic: bool) -> None:
    calls = {"update_forward": 0, "update_backward": 0, "read_backward": 0}
    for name in calls:
        real = getattr(kernels, name)

        def counted(*args, _real=real, _name=name):
            calls[_name] += 1
            return _real(*args)

        monkeypatch.setattr(kernels, name, counted)

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model = StreamSequential([nn.Linear(16, 16) for _ in range(3)], streams=4,
                                 dynamic=dynamic).double()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
        x = torch.randn(2, 5, 16, dtype=F64, requires_grad=True)
        out = model(x)
        out.square().sum().backward()
        grads = {name: p.grad for name, p in model.named_parameters()}
        return out.detach(), {**grads, "input": x.grad}

    out, grads = run()
    assert calls == {"update_forward": 3, "update_backward": 3, "read_backward": 3}
    monkeypatch.setattr(kernels, "streams_usable", lambda *tensors: False)
    plain_out, plain_grads = run()
    assert calls == {"update_forward": 3, "update_backward": 3, "read_backward": 3}
    torch.testing.assert_close(out, plain_out, rtol=1e-12, atol=1e-12)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-11, atol=1e-12, msg=name)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_the_kernels_run_on_pytorchs_openmp_runtime() -> None:
    assert native.library(kernels.SOURCE) is not None
    maps = Path("/proc/self/maps").read_text().splitlines()
    # What our library's libgomp.so.1 resolves to (other packages load renamed copies, e.g.
    # scikit-learn's libgomp-<hash>.so, which no one else links against).
    runtimes = {Path(line.split()[-1]).resolve() for line in maps
                if Path(line.split()[-1]).name.startswith("libgomp.so")}
    torch_lib = Path(torch.__file__).parent / "lib"
    assert runtimes == {(torch_lib / "libgomp.so.1").resolve()}  # one pool, not two


def test_a_compiler_without_openmp_gives_a_serial_library(
        tmp_path: Path, compile_log: CommandLog) -> None:
    compile_log.refused = {"-fopenmp"}
    library = native.build(kernels.SOURCE, tmp_path, "cc")
    assert compile_log.count("-fopenmp-simd") == 3  # two compiles and the link
    function = ctypes.CDLL(str(library)).mhc_stream_update_forward_f64
    d = draw(3, 2, 5, F64)
    out = torch.empty_like(d["streams"])
    function.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64, ctypes.c_int, ctypes.c_int64,
                                                 ctypes.c_int]
    function(d["streams"].data_ptr(), d["y"].data_ptr(), d["hres"].data_ptr(),
             d["hpost"].data_ptr(), out.data_ptr(), 3, 2, 5, 2)
    torch.testing.assert_close(
        out, d["hres"] @ d["streams"] + d["hpost"].unsqueeze(-1) * d["y"].unsqueeze(-2))


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize(("tokens", "features"), [(1, 1), (5, 7), (40, 2048), (300, 64)])
def test_inverse_rms_equals_the_formula(dtype: torch.dtype, tokens: int, features: int) -> None:
    x = torch.randn(tokens, features, generator=torch.Generator().manual_seed(features),
                    dtype=F64).to(dtype)
    want = torch.rsqrt(x.double().square().mean(dim=1) + 1e-6)
    got = kernels.inverse_rms(x, 1e-6)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want, **TOLERANCE[dtype])
    with pytest.raises(ValueError, match="contiguous"):
        kernels.inverse_rms(torch.randn(4, 6, dtype=dtype)[:, ::2], 1e-6)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("features", [None, 512])
def test_coefficient_sums_equal_the_operations(dtype: torch.dtype, features: int | None
                                               ) -> None:
    generator = torch.Generator().manual_seed(7)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=F64).to(dtype)

    dz, raw, weight, scale = randn(37, 24), randn(37, 24), randn(37, 24), randn(24)
    inverse_rms = randn(37).abs() + 0.5
    want_bias, want_scale = dz.sum(0), (dz * raw).t() @ inverse_rms
    want_through = None if features is None else (
        -((dz * raw) @ scale) * inverse_rms ** 3 / features)
    want_dz = dz * weight
    d_bias, d_scale, through = kernels.coefficients_reduce(dz, raw, weight, inverse_rms, scale,
                                                           features)
    torch.testing.assert_close(dz, want_dz, **TOLERANCE[dtype])  # dz w, in place
    torch.testing.assert_close(d_bias, want_bias, **TOLERANCE[dtype])
    torch.testing.assert_close(d_scale, want_scale, **TOLERANCE[dtype])
    if features is None:
        assert through is None
    else:
        torch.testing.assert_close(through, want_through, **TOLERANCE[dtype])
    with pytest.raises(ValueError, match=r"scale is .* shape \(23,\), expected .* \(24,\)"):
        kernels.coefficients_reduce(dz, raw, weight, inverse_rms, scale[:23], features)


def test_without_pytorchs_openmp_runtime_the_kernels_build_serial(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compile_log: CommandLog) -> None:
    monkeypatch.setattr(native, "shares_pytorch_runtime", lambda: False)
    native.build(kernels.SOURCE, tmp_path, "cc")
    assert compile_log.count("-fopenmp") == 0
    assert compile_log.count("-fopenmp-simd") == 3


def test_the_runtime_is_recognised_by_its_soname(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    anonymous = "7f00-7f01 rw-p 00000000 00:00 0\n"
    maps.write_text(anonymous + "7f02-7f03 r-xp 00000000 08:01 42 /opt/x/libgomp-ab12.so.1\n")
    assert not native.shares_pytorch_runtime(maps)  # a vendored copy nobody links against
    maps.write_text(anonymous + "7f02-7f03 r-xp 00000000 08:01 42 /opt/torch/lib/libgomp.so.1\n")
    assert native.shares_pytorch_runtime(maps)
    assert not native.shares_pytorch_runtime(tmp_path / "missing")
