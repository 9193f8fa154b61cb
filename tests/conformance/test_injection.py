"""A deliberate error in one backend shows up as exactly the cells that use it."""

from conformance.backends.jax_backend import JaxBackend
from conformance.backends.torch_backend import TorchBackend
from conformance.runner import run
from mhc_spec.vectors import default_directory, load_vectors

CASES = [c for c in load_vectors(default_directory())
         if c.name.startswith("grid_") and c.dtype == "float64" and c.config.max_history <= 4
         and c.depth <= 3]


def test_wrong_sign_in_torch_sparsemax_backward_fails_exactly_that_cell(monkeypatch):
    from mhc_torch import projection

    original = projection._Sparsemax.backward

    def wrong_sign(ctx, grad):
        return -original(ctx, grad)

    monkeypatch.setattr(projection._Sparsemax, "backward", staticmethod(wrong_sign))
    cells = run([TorchBackend(), JaxBackend("loop")], CASES)
    failing = {(c.backend, c.group) for c in cells if c.status == "fail"}
    # sparsemax serves the simplex and identity constraints of the torch backend only.
    assert failing == {("torch-eager", "mhc/simplex float64"),
                       ("torch-eager", "mhc/identity float64")}
    for cell in cells:
        if cell.status == "fail":
            assert all("gradients.theta" in f for f in cell.failures), cell.failures
    assert all(c.status == "pass" for c in cells if c.backend == "jax-loop")
