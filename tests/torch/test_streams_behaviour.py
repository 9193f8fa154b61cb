"""What the stream modules compute, checked against formulas written out in the tests: Hres
applied as written (X_next[i] = sum_j Hres[i, j] X[j] + Hpost[i] y), Sinkhorn's rows, the
initial network equal to the plain residual network, a StreamLayer loop equal to
StreamSequential, a user constraint against the spec, recording, and the portable dict."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from mhc_spec.streams import StreamConfig, parameter_shapes
from mhc_spec.streams import backward as spec_backward
from mhc_spec.streams import forward as spec_forward
from mhc_torch import (
    StreamCoefficients,
    StreamLayer,
    StreamReduce,
    StreamSequential,
    expand_streams,
)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def linear(width: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(width, width, dtype=torch.float64)


def randomise(module: nn.Module, seed: int, scale: float = 0.5) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def layer_by_hand(x: np.ndarray, hpre: np.ndarray, hpost: np.ndarray, hres: np.ndarray,
                  block: nn.Linear) -> np.ndarray:
    """X_next for one token's streams x (n, C), stream by stream."""
    n = x.shape[0]
    u = sum(hpre[i] * x[i] for i in range(n))
    y = block.weight.detach().numpy() @ u + block.bias.detach().numpy()
    return np.stack([sum(hres[i, j] * x[j] for j in range(n)) + hpost[i] * y
                     for i in range(n)])


# A non-symmetric, non-identity mixing matrix whose rows do not sum to 1.
HC_RES = np.array([[0.9, 0.3, -0.2], [0.1, 1.2, 0.0], [-0.4, 0.5, 0.7]])
B_PRE = np.array([0.3, -1.0, 0.8])
B_POST = np.array([-0.5, 0.2, 1.1])
# Row i of the cyclic permutation picks stream (i + 1) mod 3.
PERMUTATION = np.roll(np.eye(3), 1, axis=1)


@pytest.mark.parametrize(("mode", "b_res", "hres"), [
    ("hc", HC_RES, HC_RES),
    # SK(60 P) = P up to exp(-60): the mhc stack then mixes by the permutation itself.
    ("mhc", 60.0 * PERMUTATION, PERMUTATION),
])
def test_static_hres_applied_as_written(mode: str, b_res: np.ndarray, hres: np.ndarray) -> None:
    layer = StreamLayer(linear(2, 0), width=2, streams=3, mode=mode, dynamic=False).double()
    with torch.no_grad():
        layer.b_pre.copy_(torch.from_numpy(B_PRE))
        layer.b_post.copy_(torch.from_numpy(B_POST))
        layer.b_res.copy_(torch.from_numpy(b_res))
    x = np.random.default_rng(0).standard_normal((4, 3, 2))
    out = layer(torch.from_numpy(x)).detach().numpy()
    for token in range(4):
        want = layer_by_hand(x[token], sigmoid(B_PRE), 2 * sigmoid(B_POST), hres, layer.block)
        np.testing.assert_allclose(out[token], want, rtol=1e-12, atol=1e-12)


def test_two_layer_stack_by_hand() -> None:
    """Layer 2 sees unequal streams, so a transposed Hres would show."""
    blocks = [linear(2, 1), linear(2, 2)]
    model = StreamSequential(blocks, streams=3, mode="hc", dynamic=False,
                             reduce="mean").double()
    second_res = HC_RES.T[::-1].copy()
    with torch.no_grad():
        model.b_pre.copy_(torch.from_numpy(np.stack([B_PRE, B_PRE[::-1].copy()])))
        model.b_post.copy_(torch.from_numpy(np.stack([B_POST, -B_POST])))
        model.b_res.copy_(torch.from_numpy(np.stack([HC_RES, second_res])))
    h = np.random.default_rng(1).standard_normal((5, 2))
    out = model(torch.from_numpy(h)).detach().numpy()
    for token in range(5):
        x = np.stack([h[token]] * 3)
        x = layer_by_hand(x, sigmoid(B_PRE), 2 * sigmoid(B_POST), HC_RES, blocks[0])
        x = layer_by_hand(x, sigmoid(B_PRE[::-1]), 2 * sigmoid(-B_POST), second_res, blocks[1])
        np.testing.assert_allclose(out[token], x.mean(axis=0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dynamic", [True, False])
def test_float32_sinkhorn_rows_sum_to_one(dynamic: bool) -> None:
    torch.manual_seed(0)
    model = StreamSequential([nn.Linear(16, 16) for _ in range(3)], dynamic=dynamic)
    randomise(model, seed=1, scale=1.0)
    model.record_coefficients = True
    model(torch.randn(64, 16))
    hres = model.recorded_coefficients.hres
    assert hres.dtype == torch.float32
    assert (hres.sum(dim=-1) - 1).abs().max() < 1e-6


@pytest.mark.parametrize(("pre_init", "dynamic", "mode", "reduce"), list(itertools.product(
    ("cyclic", "uniform"), (True, False), ("mhc", "hc"), ("sum", "mean", "gated"))))
def test_initial_network_is_the_residual_network(pre_init, dynamic, mode, reduce) -> None:
    blocks = [nn.Sequential(linear(6, seed), nn.Tanh()) for seed in range(5)]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the initial logits themselves in float64
    try:
        model = StreamSequential(blocks, width=6, streams=4, pre_init=pre_init,
                                 dynamic=dynamic, mode=mode, reduce=reduce)
    finally:
        torch.set_default_dtype(previous)
    h = torch.randn(3, 2, 6, dtype=torch.float64)
    residual = h
    for block in blocks:
        residual = residual + block(residual)
    want = 4 * residual if reduce == "sum" else residual
    torch.testing.assert_close(model(h), want, rtol=1e-12, atol=1e-12)


def copy_into_layers(model: StreamSequential, layers: list[StreamLayer],
                     readout: StreamReduce) -> None:
    with torch.no_grad():
        for key, value in model.to_portable().items():
            name = key.removeprefix("streams.")
            if name == "reduce_logits":
                readout.reduce_logits.copy_(torch.from_numpy(value))
            elif key.startswith("streams."):
                for index, layer in enumerate(layers):
                    getattr(layer, name).copy_(torch.as_tensor(value[index]))


@pytest.mark.parametrize(("dynamic", "reduce"), [(True, "gated"), (False, "sum")])
def test_layer_loop_equals_stream_sequential(dynamic: bool, reduce: str) -> None:
    blocks = [linear(5, seed) for seed in range(3)]
    model = StreamSequential(blocks, streams=3, dynamic=dynamic, reduce=reduce,
                             sinkhorn_iterations=6).double()
    randomise(model, seed=2)
    layers = [StreamLayer(block, width=5, streams=3, layer_index=index, dynamic=dynamic,
                          sinkhorn_iterations=6).double()
              for index, block in enumerate(blocks)]
    readout = StreamReduce(3, reduce).double()
    copy_into_layers(model, layers, readout)

    h = torch.randn(2, 4, 5, dtype=torch.float64)
    out = model(h)
    x = expand_streams(h, 3)
    for layer in layers:
        x = layer(x)
    torch.testing.assert_close(readout(x), out, rtol=1e-13, atol=1e-13)

    mixing = [p for name, p in model.named_parameters() if not name.startswith("blocks.")]
    grads_model = torch.autograd.grad(out.square().sum(), mixing, retain_graph=True)
    x = expand_streams(h, 3)
    for layer in layers:
        x = layer(x)
    loop_out = readout(x)
    loop_params = {name: [getattr(layer, name) for layer in layers]
                   for name, _ in model.named_parameters() if not name.startswith(("blocks.",
                                                                                   "readout."))}
    flat = [p for ps in loop_params.values() for p in ps] + list(readout.parameters())
    grads_loop = torch.autograd.grad(loop_out.square().sum(), flat)
    stacked, start = [], 0
    for ps in loop_params.values():
        stacked.append(torch.stack(grads_loop[start:start + len(ps)]))
        start += len(ps)
    stacked += list(grads_loop[start:])
    for got, want in zip(stacked, grads_model, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


class NumpyRowSoftmax:
    """The spec's form of a user projection: a function with a ``vjp`` method."""

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def vjp(self, logits: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
        a = self(logits)
        return a * (cotangent - np.sum(cotangent * a, axis=-1, keepdims=True))


def torch_row_softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=-1)


@pytest.mark.parametrize("dynamic", [True, False])
def test_user_constraint_matches_spec(dynamic: bool) -> None:
    """A row softmax differentiated by autograd equals the spec's hand-derived reverse mode."""
    blocks = [linear(3, seed) for seed in range(2)]
    model = StreamSequential(blocks, streams=3, constraint=torch_row_softmax,
                             dynamic=dynamic, reduce="gated").double()
    randomise(model, seed=3)
    config = StreamConfig(streams=3, constraint=NumpyRowSoftmax(), dynamic=dynamic,
                          reduce="gated")
    params = {k: v for k, v in model.to_portable().items() if k.startswith("streams.")}
    weight = np.stack([b.weight.detach().numpy() for b in blocks])
    bias = np.stack([b.bias.detach().numpy() for b in blocks])
    rng = np.random.default_rng(4)
    h, g = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    trace = spec_forward(config, h, params, "linear", weight, bias)
    grads = spec_backward(config, trace, params, "linear", weight, bias, g)

    model.record_coefficients = True
    h_t = torch.tensor(h, requires_grad=True)
    out = model(h_t)
    (out * torch.from_numpy(g)).sum().backward()
    np.testing.assert_allclose(out.detach().numpy(), trace.output, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(model.recorded_coefficients.hres.numpy(), trace.hres,
                               rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(h_t.grad.numpy(), grads.h, rtol=1e-10, atol=1e-12)
    named = dict(model.named_parameters())
    for key, want in grads.params.items():
        name = key.removeprefix("streams.").replace("reduce_logits", "readout.reduce_logits")
        np.testing.assert_allclose(named[name].grad.numpy(), want, rtol=1e-10, atol=1e-12,
                                   err_msg=key)


def test_recording() -> None:
    model = StreamSequential([nn.Linear(4, 4) for _ in range(3)], streams=2)
    h = torch.randn(2, 5, 4)
    model(h)
    assert model.record_coefficients is False and model.recorded_coefficients is None

    model.record_coefficients = True
    model(h).sum().backward()
    record = model.recorded_coefficients
    assert isinstance(record, StreamCoefficients)
    assert record.hpre.shape == record.hpost.shape == (3, 2, 5, 2)
    assert record.hres.shape == (3, 2, 5, 2, 2)
    assert not any(t.requires_grad for t in record)
    assert all(t.grad_fn is None for t in record)

    model.record_coefficients = False
    model(h)
    assert model.recorded_coefficients is record  # kept until the caller clears it


def test_static_recording_is_per_token() -> None:
    model = StreamSequential([nn.Linear(4, 4) for _ in range(2)], streams=3, dynamic=False)
    model.record_coefficients = True
    model(torch.randn(7, 4))
    record = model.recorded_coefficients
    assert record.hpre.shape == (2, 7, 3) and record.hres.shape == (2, 7, 3, 3)
    torch.testing.assert_close(record.hpre[:, 0], torch.sigmoid(model.b_pre.detach()))


def test_blocks_see_the_token_shape() -> None:
    seen = []

    class Probe(nn.Linear):
        def forward(self, u: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(u.shape))
            return super().forward(u)

    model = StreamSequential([Probe(4, 4), Probe(4, 4)], streams=2)
    assert model(torch.randn(2, 3, 4)).shape == (2, 3, 4)
    assert seen == [(2, 3, 4), (2, 3, 4)]


@pytest.mark.parametrize(("dynamic", "reduce"), [(True, "gated"), (False, "mean")])
def test_portable_round_trip(dynamic: bool, reduce: str) -> None:
    torch.manual_seed(0)
    source = StreamSequential([nn.Linear(3, 3) for _ in range(2)], streams=2, dynamic=dynamic,
                              reduce=reduce)
    randomise(source, seed=6)
    portable = source.to_portable()
    shapes = parameter_shapes(source.config, 2, 3)
    assert {k: v.shape for k, v in portable.items() if k.startswith("streams.")} == shapes
    assert sorted(k for k in portable if k.startswith("blocks.")) == [
        "blocks.0.bias", "blocks.0.weight", "blocks.1.bias", "blocks.1.weight"]
    target = StreamSequential([nn.Linear(3, 3) for _ in range(2)], streams=2, dynamic=dynamic,
                              reduce=reduce)
    target.load_portable(portable)
    h = torch.randn(4, 3)
    torch.testing.assert_close(target(h), source(h))


def test_portable_errors() -> None:
    model = StreamSequential([nn.Linear(3, 3) for _ in range(2)], streams=2)
    good = model.to_portable()
    with pytest.raises(KeyError, match=r"missing \['streams.a_res'\]"):
        model.load_portable({k: v for k, v in good.items() if k != "streams.a_res"})
    with pytest.raises(KeyError, match=r"unexpected \['streams.reduce_logits'\]"):
        model.load_portable({**good, "streams.reduce_logits": np.zeros(2)})
    with pytest.raises(ValueError, match=r"'streams.b_res' has shape \(2, 3, 3\)"):
        model.load_portable({**good, "streams.b_res": np.zeros((2, 3, 3))})
    with pytest.raises(KeyError, match=r"unknown portable parameter key 'mixing\.theta'"):
        model.load_portable({**good, "mixing.theta": np.zeros((2, 4))})
    with pytest.raises(KeyError, match="block 1"):
        model.load_portable({k: v for k, v in good.items() if k != "blocks.1.bias"})
    with pytest.raises(KeyError, match="names block 2"):
        model.load_portable({**good, "blocks.2.bias": np.zeros(3)})
    with pytest.raises(ValueError, match=r"'blocks.0.weight' has shape \(3, 2\)"):
        model.load_portable({**good, "blocks.0.weight": np.zeros((3, 2))})


@pytest.mark.parametrize("dynamic", [True, False])
def test_gradients_of_a_loss_that_skips_the_update(dynamic: bool) -> None:
    """A loss on a branch's output alone runs a layer's read node without its write node
    (the write's hand-off is then empty); gradients still equal the plain-operation path."""
    outputs: list[torch.Tensor] = []

    class Keep(nn.Linear):
        def forward(self, u: torch.Tensor) -> torch.Tensor:
            y = super().forward(u)
            outputs.append(y)
            return y

    torch.manual_seed(0)
    model = StreamSequential([Keep(3, 3, dtype=torch.float64) for _ in range(2)], streams=2,
                             dynamic=dynamic).double()
    randomise(model, seed=8)
    names, values = zip(*model.named_parameters(), strict=True)
    h = torch.randn(4, 3, dtype=torch.float64)

    def loss(h, *values):
        outputs.clear()
        torch.func.functional_call(model, dict(zip(names, values, strict=True)), (h,))
        return outputs[1].sin().sum()

    eager = torch.autograd.grad(loss(h.requires_grad_(), *values), (h, *values))
    plain = torch.func.grad(loss, argnums=tuple(range(len(values) + 1)))(h.detach(), *values)
    for got, want in zip(eager, plain, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dynamic", [True, False])
def test_parameter_gradients_do_not_depend_on_the_input_needing_one(dynamic: bool) -> None:
    """With a constant input the layers skip dX where nothing upstream needs it; every
    parameter gradient stays what it is when the input requires a gradient."""
    torch.manual_seed(0)
    model = StreamSequential([linear(4, seed) for seed in range(3)], streams=3,
                             dynamic=dynamic).double()
    randomise(model, seed=9)
    h = torch.randn(5, 4, dtype=torch.float64)
    params = list(model.parameters())
    constant = torch.autograd.grad(model(h).sin().sum(), params)
    variable = torch.autograd.grad(model(h.clone().requires_grad_()).sin().sum(), params)
    for got, want in zip(constant, variable, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
