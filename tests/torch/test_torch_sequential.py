"""MHCSequential's contract: arguments, parameters, blocks, state_dict, copies, portable
parameters, introspection and the detach/checkpoint options."""

from __future__ import annotations

import copy
import io
import math
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from mhc_spec import MHCConfig, from_portable, padded_weights
from mhc_spec.parameters import init_theta
from mhc_torch import (
    HistoryBuffer,
    MHCSequential,
    MHCSkip,
    iter_mhc_modules,
    reset_history,
)

KINDS = [("residual", "simplex"), ("hc", "simplex"), ("mhc", "simplex"), ("mhc", "softmax"),
         ("mhc", "identity")]


def linears(depth: int = 6, width: int = 8) -> list[nn.Module]:
    return [nn.Linear(width, width) for _ in range(depth)]


def stack(mode: str = "mhc", constraint: str = "simplex", depth: int = 6, width: int = 8,
          seed: int = 0, **kwargs) -> MHCSequential:
    torch.manual_seed(seed)
    model = MHCSequential(linears(depth, width), mode=mode, constraint=constraint, **kwargs)
    with torch.no_grad():
        if model.theta is not None:
            model.theta.add_(0.5 * torch.randn_like(model.theta))
    return model


def train_step(model: nn.Module, x: torch.Tensor) -> None:
    model.zero_grad()
    model(x).square().mean().backward()
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(0.01 * p.grad)


# ---- arguments ---------------------------------------------------------------------------

BAD_ARGUMENTS = [
    ("max_history", 0), ("max_history", 2.5), ("max_history", True), ("max_history", "4"),
    ("mode", "mHC"), ("mode", None), ("constraint", "sparsemax"),
    ("temperature", 0.0), ("temperature", -1.0), ("temperature", math.inf),
    ("temperature", "1"), ("epsilon", 1.0), ("epsilon", -0.1), ("epsilon", math.nan),
    ("init", "zeros"), ("gating", 1), ("gating", "yes"), ("gate_init", math.nan),
    ("gate_init", None), ("carry_history", 1), ("carry_history", "True"),
    ("detach_history", None), ("detach_history", 0), ("checkpoint", "no"),
    ("checkpoint", 1),
]


@pytest.mark.parametrize(("name", "value"), BAD_ARGUMENTS, ids=str)
def test_bad_argument_raises_at_construction_naming_it(name: str, value) -> None:
    with pytest.raises((TypeError, ValueError), match=name):
        MHCSequential(linears(2), **{name: value})


@pytest.mark.parametrize("modules", [nn.Linear(4, 4), [], [nn.Linear(4, 4), "relu"], "abc", 3],
                         ids=["single-module", "empty", "non-module-item", "string", "int"])
def test_bad_modules_raise_naming_modules(modules) -> None:
    with pytest.raises((TypeError, ValueError), match="modules"):
        MHCSequential(modules)


@pytest.mark.parametrize(("name", "value"), [("max_history", 0), ("mode", "x"),
                                             ("detach_history", 1), ("temperature", 0)])
def test_bad_skip_and_buffer_arguments(name: str, value) -> None:
    with pytest.raises((TypeError, ValueError), match=name):
        MHCSkip(**{name: value})
    with pytest.raises(ValueError, match="max_history"):
        HistoryBuffer(0)


def test_block_changing_the_shape_names_layer_and_shapes() -> None:
    model = MHCSequential([nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 5)])
    with pytest.raises(ValueError, match=r"layers\[2\] \(Linear\).*\(3, 8\) to \(3, 5\)"):
        model(torch.randn(3, 8))


def test_block_returning_a_tuple_raises() -> None:
    class Pair(nn.Module):
        def forward(self, s):
            return s, s

    with pytest.raises(TypeError, match=r"layers\[0\] \(Pair\) returned tuple"):
        MHCSequential([Pair()])(torch.randn(2, 2))


def test_integer_input_raises() -> None:
    with pytest.raises(TypeError, match="floating-point"):
        MHCSequential(linears(2, 4))(torch.ones(2, 4, dtype=torch.long))


# ---- parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "constraint"), KINDS)
@pytest.mark.parametrize("gating", [False, True])
def test_parameters_and_every_one_gets_a_gradient(mode, constraint, gating) -> None:
    """DDP with find_unused_parameters=False needs every parameter in the graph."""
    model = MHCSequential(linears(5), max_history=3, mode=mode, constraint=constraint,
                          gating=gating)
    block_params = {id(p) for p in model.layers.parameters()}
    own = [name for name, p in model.named_parameters() if id(p) not in block_params]
    expected = ([] if mode == "residual" else ["theta"]) + (["gamma"] if gating else [])
    assert own == expected
    if model.theta is not None:
        assert model.theta.shape == (5, 3)
    if model.gamma is not None:
        assert model.gamma.shape == (5,)
        torch.testing.assert_close(model.gamma.detach(), torch.full((5,), 3.0))
    model(torch.randn(4, 8)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(("mode", "init"), [("mhc", None), ("mhc", "uniform"), ("hc", None),
                                            ("mhc", "newest")])
def test_initial_theta_and_weights_follow_the_spec(mode: str, init: str | None) -> None:
    model = MHCSequential(linears(6), max_history=4, mode=mode, init=init)
    config = MHCConfig(max_history=4, mode=mode, init=init)
    np.testing.assert_array_equal(model.theta.detach().numpy(), init_theta(config, 6))
    weights = model.mixing_weights()
    assert weights.dtype == torch.float32 and weights.requires_grad
    np.testing.assert_allclose(weights.detach().numpy(),
                               padded_weights(config, init_theta(config, 6), 6), atol=1e-7)


def test_gates_and_weights_of_residual_and_ungated_stacks() -> None:
    model = MHCSequential(linears(3), max_history=2, mode="residual")
    torch.testing.assert_close(model.gates(), torch.ones(3))
    torch.testing.assert_close(model.mixing_weights(),
                               torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]))


# ---- blocks of any kind ---------------------------------------------------------------------


def test_accepts_a_generator_and_an_nn_sequential() -> None:
    torch.manual_seed(0)
    blocks = [nn.Linear(4, 4) for _ in range(3)]
    from_generator = MHCSequential(block for block in blocks)
    from_sequential = MHCSequential(nn.Sequential(*blocks))
    x = torch.randn(2, 4)
    assert len(from_generator.layers) == 3
    torch.testing.assert_close(from_generator(x), from_sequential(x))


def test_transformer_and_conv_blocks() -> None:
    torch.manual_seed(0)
    encoder = [nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0,
                                          batch_first=True) for _ in range(3)]
    model = MHCSequential(encoder, max_history=2)
    x = torch.randn(2, 5, 16, requires_grad=True)
    out = model(x)
    assert out.shape == x.shape
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and model.theta.grad is not None

    convs = [nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU()) for _ in range(4)]
    model = MHCSequential(convs, max_history=3, constraint="softmax", gating=True)
    images = torch.randn(2, 3, 6, 6).to(memory_format=torch.channels_last)
    out = model(images)
    assert out.shape == images.shape
    out.mean().backward()
    assert model.gamma.grad is not None


def test_nested_stacks_and_iter_mhc_modules() -> None:
    inner = MHCSequential(linears(2, 4), max_history=2)
    outer = nn.Sequential(nn.Linear(4, 4),
                          MHCSequential([inner, nn.Linear(4, 4)], max_history=2, mode="hc"))
    names = [name for name, _ in iter_mhc_modules(outer)]
    assert names == ["1", "1.layers.0"]
    assert all(isinstance(m, MHCSequential) for _, m in iter_mhc_modules(outer))
    outer(torch.randn(3, 4)).sum().backward()
    assert inner.theta.grad is not None


# ---- state_dict, copies, no activation left behind ----------------------------------------


def test_state_dict_round_trip_into_a_fresh_model() -> None:
    model = stack(gating=True, carry_history=True, seed=1)
    x = torch.randn(3, 8)
    train_step(model, x)
    keys = set(model.state_dict())
    assert keys == {"theta", "gamma"} | {f"layers.{i}.{n}" for i in range(6)
                                         for n in ("weight", "bias")}
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    fresh = stack(gating=True, carry_history=True, seed=2)
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    model.reset_history()
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def activation_references(model: nn.Module) -> list[str]:
    """Tensors (other than parameters/buffers) reachable from the modules' attributes."""
    found = []

    def visit(value, path):
        if isinstance(value, torch.Tensor):
            found.append(path)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                visit(item, f"{path}[{i}]")
        elif isinstance(value, dict):
            for key, item in value.items():
                visit(item, f"{path}[{key!r}]")
        elif isinstance(value, HistoryBuffer):
            visit(list(value.states), f"{path}.states")
        elif hasattr(value, "__dict__") and not isinstance(value, (nn.Module, type)):
            visit(vars(value), path)

    for name, module in model.named_modules():
        for key, value in vars(module).items():
            if key not in ("_parameters", "_buffers", "_modules"):
                visit(value, f"{name}.{key}")
    return found


@pytest.mark.parametrize(("mode", "constraint"), KINDS)
def test_no_activation_is_referenced_after_a_training_step(mode, constraint) -> None:
    model = stack(mode, constraint, checkpoint=(mode == "hc"))
    model.capture_highway()
    train_step(model, torch.randn(3, 8))
    assert model.pop_highway() is not None
    assert activation_references(model) == []
    with torch.no_grad():
        model(torch.randn(3, 8))
    assert activation_references(model) == []


@pytest.mark.parametrize("carry_history", [False, True])
def test_deepcopy_and_pickle_after_a_training_step(carry_history: bool) -> None:
    model = stack(gating=True, carry_history=carry_history)
    x = torch.randn(3, 8)
    train_step(model, x)
    model.capture_highway()  # an armed, unread capture must not block copying either
    model(x).sum().backward()
    twins = (copy.deepcopy(model), pickle.loads(pickle.dumps(model)))
    expected = model(x)
    for twin in twins:
        assert len(twin.history) == (3 if carry_history else 0)
        assert twin.pop_highway() is None
        torch.testing.assert_close(twin(x), expected, rtol=0, atol=0)


# ---- portable parameters --------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "gating"), [("mhc", True), ("hc", False),
                                              ("residual", False), ("residual", True)])
def test_portable_round_trip(mode: str, gating: bool) -> None:
    model = stack(mode, gating=gating, seed=3)
    params = model.export_portable()
    theta, gamma, blocks = from_portable(params)
    assert (theta is None) == (mode == "residual") and (gamma is None) == (not gating)
    assert len(blocks) == 6 and set(blocks[0]) == {"weight", "bias"}
    assert all(isinstance(v, np.ndarray) for v in params.values())
    fresh = stack(mode, gating=gating, seed=4)
    fresh.load_portable(params)
    x = torch.randn(3, 8)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_load_portable_rejects_mismatches() -> None:
    params = stack("mhc", gating=True).export_portable()
    with pytest.raises(KeyError, match=r"mixing\.gamma"):
        stack("mhc").load_portable(params)
    with pytest.raises(KeyError, match=r"mixing\.theta"):
        stack("residual", gating=True).load_portable(params)
    with pytest.raises(KeyError, match="blocks"):
        stack("mhc", gating=True, depth=5).load_portable(params)
    with pytest.raises(ValueError, match="shape"):
        stack("mhc", gating=True, width=4).load_portable(params)


# ---- highway capture ------------------------------------------------------------------------


def test_highway_is_captured_only_when_armed() -> None:
    model = stack()
    x = torch.randn(3, 8)
    model(x).sum().backward()
    assert model.pop_highway() is None
    model.capture_highway()
    out = model(x)
    assert model.pop_highway() is None  # backward has not run yet
    model.capture_highway()
    out = model(x)
    out.sum().backward()
    profile = model.pop_highway()
    assert profile.shape == (7,) and not profile.requires_grad
    # the newest state's gradient is dLoss/ds_L = ones
    torch.testing.assert_close(profile[-1], torch.tensor(math.sqrt(24.0)))
    assert model.pop_highway() is None
    model(x).sum().backward()
    assert model.pop_highway() is None


# ---- detach_history and checkpointing -------------------------------------------------------


def manual_detached_recurrence(model: MHCSequential, x: torch.Tensor) -> torch.Tensor:
    """s_l = f_l(s_{l-1}) + sum_j C[l-1, j] * stopgrad(s_{l-H+j}), written out in the test."""
    h = model.config.max_history
    coefficients = model.mixing_weights() * model.gates().unsqueeze(-1)
    states = [x]
    for layer, block in enumerate(model.layers, 1):
        mix = sum(coefficients[layer - 1, j] * states[layer - h + j].detach()
                  for j in range(h) if layer - h + j >= 0)
        states.append(block(states[-1]) + mix)
    return states[-1]


@pytest.mark.parametrize("gating", [False, True])
@pytest.mark.parametrize(("mode", "constraint"), KINDS)
def test_detach_history_stops_gradients_at_the_skip_paths(mode, constraint, gating) -> None:
    model = stack(mode, constraint, gating=gating, detach_history=True).double()
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    model(x).sum().backward()
    ours = [x.grad.clone()] + [p.grad.clone() for p in model.parameters()]
    x.grad = None
    model.zero_grad()
    manual_detached_recurrence(model, x).sum().backward()
    reference = [x.grad] + [p.grad for p in model.parameters()]
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert "gradients then stop at the skip paths" in " ".join(MHCSequential.__doc__.split())


@pytest.mark.parametrize(("mode", "constraint"), KINDS)
def test_checkpoint_gives_the_plain_gradients(mode: str, constraint: str) -> None:
    plain = stack(mode, constraint, gating=True, seed=5)
    checkpointed = stack(mode, constraint, gating=True, seed=5, checkpoint=True)
    x = torch.randn(3, 8)
    for model in (plain, checkpointed):
        model(x).square().sum().backward()
    for a, b in zip(plain.parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-7)


def test_double_backward_is_refused_clearly() -> None:
    model = stack()
    x = torch.randn(3, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(model(x).sum(), x, create_graph=True)


def test_reset_history_over_a_model() -> None:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = stack(carry_history=True)
            self.b = nn.Sequential(stack(depth=2, carry_history=True))
            self.buffer = HistoryBuffer(3)
            self.buffers = [HistoryBuffer(2), HistoryBuffer(2)]
            self.by_name = OrderedDict(deep=({"inner": [HistoryBuffer(2)]},))
            self.alias = self.buffer  # counted once
            self.shared = self.b  # a module reached twice
            self.register_module("empty", None)  # a submodule slot left empty

    net = Net()
    x = torch.randn(3, 8)
    net.a(x)
    net.b(x)
    net.buffer.push(x)
    net.buffers[1].push(x)
    deep = net.by_name["deep"][0]["inner"][0]
    deep.push(x)
    assert len(net.a.history) == 3 and len(net.b[0].history) == 3
    assert reset_history(net) == 6
    assert len(net.a.history) == 0 and len(net.b[0].history) == 0
    assert len(net.buffer) == 0 and len(net.buffers[1]) == 0 and len(deep) == 0


def test_block_modifying_its_input_in_place_is_refused() -> None:
    """The skip paths read the state again: an in-place change would corrupt their gradient."""
    model = MHCSequential([nn.Sequential(nn.ReLU(inplace=True), nn.Linear(4, 4))
                           for _ in range(3)])
    with pytest.raises(RuntimeError, match=r"layers\[0\] modified its input in place"):
        model(torch.randn(2, 4))
    after_input = MHCSequential([nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True))
                                 for _ in range(3)])
    after_input(torch.randn(2, 4)).sum().backward()


def saved_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the unique non-parameter storages autograd saves during model(x)."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for pointer, n in storages.items() if pointer not in params)


class PlainResidual(nn.Module):
    def __init__(self, blocks):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x):
        for block in self.blocks:
            x = block(x) + x
        return x


@pytest.mark.parametrize(("mode", "constraint", "h"), [("mhc", "simplex", 4), ("hc", "simplex", 8),
                                                       ("mhc", "softmax", 2)])
def test_saved_for_backward_memory_is_that_of_a_residual_stack(mode, constraint, h) -> None:
    """The window is never copied: the states the blocks save are all the mixing needs."""
    x = torch.randn(16, 32)
    residual = saved_activation_bytes(PlainResidual(linears(50, 32)), x)
    ours = saved_activation_bytes(
        MHCSequential(linears(50, 32), max_history=h, mode=mode, constraint=constraint,
                      gating=True), x)
    assert ours <= 1.05 * residual  # the extra: s_L's arena row and the (L, H) coefficients
