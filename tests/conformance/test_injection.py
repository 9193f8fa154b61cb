"""A deliberate error in one backend shows up as exactly the cells that use it."""

import pytest

from conformance.backends.jax_backend import JaxBackend
from conformance.backends.torch_backend import TorchBackend
from conformance.runner import run
from mhc_spec.vectors import default_directory, load_vectors

CASES = [c for c in load_vectors(default_directory())
         if c.name.startswith("grid_") and c.dtype == "float64" and c.config.max_history <= 4
         and c.depth <= 3]


@pytest.mark.parametrize("path", ["native", "pytorch"])
def test_wrong_sign_in_torch_sparsemax_backward_fails_exactly_that_cell(monkeypatch, path):
    from mhc_torch import projection

    # The native kernels' node on the CPU, the operators' node elsewhere (and when off).
    function = projection._NativeSparsemax if path == "native" else projection._Sparsemax
    monkeypatch.setenv("MHC_NATIVE_KERNELS", "1" if path == "native" else "0")
    original = function.backward

    def wrong_sign(ctx, grad):
        dz = original(ctx, grad)
        return (-dz[0], *dz[1:]) if isinstance(dz, tuple) else -dz

    monkeypatch.setattr(function, "backward", staticmethod(wrong_sign))
    cells = run([TorchBackend(), JaxBackend("loop")], CASES)
    failing = {(c.backend, c.group) for c in cells if c.status == "fail"}
    # sparsemax serves the simplex and identity constraints of the torch backend only.
    assert failing == {("torch-eager", "mhc/simplex float64"),
                       ("torch-eager", "mhc/identity float64")}
    for cell in cells:
        if cell.status == "fail":
            assert all("gradients.theta" in f for f in cell.failures), cell.failures
    assert all(c.status == "pass" for c in cells if c.backend == "jax-loop")
