"""Parameter exchange through the portable NumPy dict of mhc_spec: round trips are
bit-identical and converted models compute the same outputs and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

import mhc_jax
import mhc_torch
from conformance.tolerances import errors

WIDTH, DEPTH = 5, 6
OPTIONS = [
    {"mode": "mhc", "max_history": 4, "gating": True},
    {"mode": "mhc", "constraint": "softmax", "max_history": 3},
    {"mode": "hc", "max_history": 2},
    {"mode": "residual", "max_history": 4},
]


def torch_model(options, tanh, seed):
    torch.manual_seed(seed)
    blocks = [nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh()) if tanh
              else nn.Linear(WIDTH, WIDTH) for _ in range(DEPTH)]
    model = mhc_torch.MHCSequential(blocks, **options)
    with torch.no_grad():
        for p in (model.theta, model.gamma):
            if p is not None:
                p.add_(0.3 * torch.randn_like(p))  # move off the initialisation
    return model


def jax_model(options, tanh, scan, seed):
    def make(rngs):
        linear = nnx.Linear(WIDTH, WIDTH, rngs=rngs)
        return nnx.Sequential(linear, jnp.tanh) if tanh else linear

    if scan:
        return mhc_jax.MHCSequential.scanned(make, DEPTH, rngs=nnx.Rngs(seed), **options)
    return mhc_jax.MHCSequential([make(nnx.Rngs(seed + i)) for i in range(DEPTH)], **options)


def torch_run(model, x, g):
    xt = torch.tensor(x, requires_grad=True)
    out = model(xt)
    (out * torch.tensor(g)).sum().backward()
    grads = {name: p.grad.numpy().copy() for name, p in model.named_parameters()}
    return out.detach().numpy(), xt.grad.numpy(), grads


def jax_run(model, x, g):
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(params, x):
        return jnp.sum(nnx.merge(graphdef, params)(x) * g)

    out = model(jnp.asarray(x))
    dparams, dx = jax.grad(loss, argnums=(0, 1))(params, jnp.asarray(x))
    return np.asarray(out), np.asarray(dx), mhc_jax.export_portable(nnx.merge(graphdef, dparams))


def assert_close(got, want, name=""):
    """Norm-wise float32 agreement: max|got - want| <= 1e-5 max|want| (as conformance)."""
    _, relative = errors(got, want)
    assert relative <= 1e-5, (name, relative)


def assert_same_dict(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: o["mode"] + o.get("constraint", ""))
@pytest.mark.parametrize("tanh", [False, True])
@pytest.mark.parametrize("scan", [False, True])
def test_torch_to_jax_to_torch_is_bit_identical(options, tanh, scan):
    source = torch_model(options, tanh, seed=0)
    exported = source.export_portable()
    model = jax_model(options, tanh, scan, seed=1)
    mhc_jax.load_portable(model, exported)
    back = mhc_jax.export_portable(model)
    assert_same_dict(exported, back)
    target = torch_model(options, tanh, seed=2)
    target.load_portable(back)
    assert_same_dict(exported, target.export_portable())


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: o["mode"] + o.get("constraint", ""))
@pytest.mark.parametrize("scan", [False, True])
def test_converted_models_compute_the_same_outputs_and_gradients(options, scan):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, WIDTH)).astype(np.float32)
    g = rng.standard_normal((3, WIDTH)).astype(np.float32)
    tanh = True
    # torch -> JAX
    source = torch_model(options, tanh, seed=3)
    model = jax_model(options, tanh, scan, seed=4)
    mhc_jax.load_portable(model, source.export_portable())
    # JAX -> torch (a fresh JAX model with its own initialisation)
    jax_source = jax_model(options, tanh, scan, seed=5)
    torch_target = torch_model(options, tanh, seed=6)
    torch_target.load_portable(mhc_jax.export_portable(jax_source))
    for torch_side, jax_side in ((source, model), (torch_target, jax_source)):
        out_t, dx_t, grads_t = torch_run(torch_side, x, g)
        out_j, dx_j, grads_j = jax_run(jax_side, x, g)
        assert_close(out_j, out_t, "output")
        assert_close(dx_j, dx_t, "x")
        portable_grads = {
            key.replace("layers.", "blocks.", 1).replace("theta", "mixing.theta")
            .replace("gamma", "mixing.gamma"): value for key, value in grads_t.items()
        }
        assert portable_grads.keys() == grads_j.keys()
        for key, value in portable_grads.items():
            assert_close(grads_j[key], value, key)


@pytest.mark.parametrize("h", [1, 2, 4])
def test_torch_carry_history_equals_the_jax_history_value(h):
    # Streaming: torch's carry_history buffer and JAX's explicit History continue the same
    # window across calls (the first H-1 layers of each later call mix carried states).
    options = {"mode": "mhc", "max_history": h}
    source = torch_model(options, tanh=True, seed=7)
    stream = mhc_torch.MHCSequential(
        [nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh()) for _ in range(DEPTH)],
        carry_history=True, **options)
    stream.load_portable(source.export_portable())
    model = jax_model(options, tanh=True, scan=False, seed=8)
    mhc_jax.load_portable(model, source.export_portable())
    rng = np.random.default_rng(h)
    calls = [rng.standard_normal((2, WIDTH)).astype(np.float32) for _ in range(3)]
    history = model.empty_history(jnp.asarray(calls[0]))
    outputs = []
    for x in calls:
        y_torch = stream(torch.tensor(x)).detach().numpy()
        y_jax, history = model(jnp.asarray(x), history=history)
        assert_close(np.asarray(y_jax), y_torch, "carried output")
        outputs.append(y_torch)
    fresh = source(torch.tensor(calls[-1])).detach().numpy()
    if h > 1:  # the carried window really changed the last call's output
        assert np.abs(fresh - outputs[-1]).max() > 1e-4


STREAM_OPTIONS = [
    {"streams": 4, "reduce": "gated"},
    {"streams": 2, "dynamic": False, "reduce": "mean"},
    {"streams": 3, "mode": "hc"},
]


def torch_streams(options, seed):
    torch.manual_seed(seed)
    blocks = [nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh()) for _ in range(DEPTH)]
    model = mhc_torch.StreamSequential(blocks, width=WIDTH, **options)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("blocks."):
                p.add_(0.3 * torch.randn_like(p))  # move off the initialisation
    return model


def jax_streams(options, scan, seed):
    def make(rngs):
        return nnx.Sequential(nnx.Linear(WIDTH, WIDTH, rngs=rngs), jnp.tanh)

    if scan:
        return mhc_jax.StreamSequential.scanned(make, DEPTH, width=WIDTH,
                                                rngs=nnx.Rngs(seed), **options)
    return mhc_jax.StreamSequential([make(nnx.Rngs(seed + i)) for i in range(DEPTH)],
                                    width=WIDTH, **options)


@pytest.mark.parametrize("options", STREAM_OPTIONS, ids=str)
@pytest.mark.parametrize("scan", [False, True])
def test_stream_stacks_exchange_parameters_and_agree(options, scan):
    from mhc_jax.streams import export_portable, load_portable

    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, WIDTH)).astype(np.float32)
    g = rng.standard_normal((3, WIDTH)).astype(np.float32)
    source = torch_streams(options, seed=0)
    exported = source.to_portable()
    model = jax_streams(options, scan, seed=1)
    load_portable(model, exported)
    assert_same_dict(exported, export_portable(model))
    target = torch_streams(options, seed=2)
    target.load_portable(export_portable(model))
    assert_same_dict(exported, target.to_portable())

    xt = torch.tensor(x, requires_grad=True)
    out_t = source(xt)
    (out_t * torch.tensor(g)).sum().backward()
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(params, x):
        out = nnx.merge(graphdef, params)(x)
        return jnp.sum(out * g), out

    (dparams, dx), out_j = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(
        params, jnp.asarray(x))
    assert_close(np.asarray(out_j), out_t.detach().numpy(), "output")
    assert_close(np.asarray(dx), xt.grad.numpy(), "x")
    grads_j = export_portable(nnx.merge(graphdef, dparams))
    grads_t = {(name if name.startswith("blocks.") else
                "streams." + name.removeprefix("readout.")): p.grad.numpy()
               for name, p in source.named_parameters()}
    assert grads_t.keys() == grads_j.keys()
    for key, value in grads_t.items():
        assert_close(grads_j[key], value, key)
