"""The portable dict of stream stacks: the spec's keys and shapes, torch names and layouts,
bit-identical round trips across builds (so loop build == scan build), clear errors."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax_fast import fast_jit

from mhc_jax.streams import StreamSequential, export_portable, load_portable
from mhc_spec import load_portable as read_npz
from mhc_spec import save_portable
from mhc_spec.streams import parameter_shapes

WIDTH, DEPTH = 4, 3


def linear_stack(scan: bool, seed: int, **options) -> StreamSequential:
    options = {"streams": 2, "reduce": "gated", **options}
    if scan:
        return StreamSequential.scanned(lambda r: nnx.Linear(WIDTH, WIDTH, rngs=r), DEPTH,
                                        width=WIDTH, rngs=nnx.Rngs(seed), **options)
    return StreamSequential([nnx.Linear(WIDTH, WIDTH, rngs=nnx.Rngs(seed + i))
                             for i in range(DEPTH)], width=WIDTH, **options)


def randomise(model: StreamSequential, seed: int) -> None:
    """Draw every mixing parameter, so that no two layers or streams are alike."""
    rng = np.random.default_rng(seed)
    for variable in (*vars(model.mixing).values(), model.readout.reduce_logits):
        if isinstance(variable, nnx.Param):
            variable[...] = jnp.asarray(rng.standard_normal(variable.shape) / 2, jnp.float32)


forward = fast_jit(lambda state, graphdef, h: nnx.merge(graphdef, state)(h), static_argnums=1)


def run(model: StreamSequential, h: jnp.ndarray) -> np.ndarray:
    graphdef, state = nnx.split(model)
    return np.asarray(forward(state, graphdef, h))


@pytest.mark.parametrize("dynamic", [False, True])
def test_keys_shapes_names_and_layout_follow_the_spec(dynamic: bool) -> None:
    model = linear_stack(scan=False, seed=0, dynamic=dynamic)
    params = export_portable(model)
    shapes = parameter_shapes(model.config, DEPTH, WIDTH)
    blocks = {f"blocks.{i}.{name}" for i in range(DEPTH) for name in ("weight", "bias")}
    assert set(params) == set(shapes) | blocks
    for key, shape in shapes.items():
        assert params[key].shape == shape and params[key].dtype == np.float32, key
    h = np.random.default_rng(0).standard_normal((2, WIDTH)).astype(np.float32)
    np.testing.assert_allclose(h @ params["blocks.1.weight"].T + params["blocks.1.bias"],
                               np.asarray(model.blocks[1](jnp.asarray(h))), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("source_scan", "target_scan"),
                         [(False, False), (False, True), (True, False), (True, True)])
def test_round_trip_is_bit_identical_across_builds(source_scan, target_scan, tmp_path) -> None:
    source = linear_stack(source_scan, seed=0)
    randomise(source, 1)
    target = linear_stack(target_scan, seed=10)
    exported = export_portable(source)
    save_portable(str(tmp_path / "p.npz"), exported)
    load_portable(target, read_npz(str(tmp_path / "p.npz")))
    back = export_portable(target)
    assert set(back) == set(exported)
    for key in exported:
        assert back[key].dtype == exported[key].dtype
        np.testing.assert_array_equal(back[key], exported[key], err_msg=key)
    h = jnp.asarray(np.random.default_rng(2).standard_normal((2, 3, WIDTH)), jnp.float32)
    np.testing.assert_allclose(run(target, h), run(source, h), rtol=1e-6, atol=1e-6)


def test_loading_checks_keys_and_shapes() -> None:
    model = linear_stack(scan=True, seed=0)
    good = export_portable(model)
    with pytest.raises(KeyError, match=r"missing \['streams.b_res'\]"):
        load_portable(model, {k: v for k, v in good.items() if k != "streams.b_res"})
    with pytest.raises(KeyError, match="unexpected"):
        load_portable(model, {**good, "streams.extra": np.zeros(2)})
    with pytest.raises(KeyError, match="mixing"):
        load_portable(model, {**good, "mixing.theta": np.zeros((DEPTH, 4))})
    with pytest.raises(ValueError, match=r"'streams.phi_pre' has shape \(3, 8, 3\)"):
        load_portable(model, {**good, "streams.phi_pre": np.zeros((DEPTH, 2 * WIDTH, 3))})
    with pytest.raises(ValueError, match=r"blocks\.1\.weight"):
        load_portable(model, {**good, "blocks.1.weight": np.zeros((WIDTH, WIDTH + 1))})
    with pytest.raises(KeyError, match=r"blocks\.2"):
        load_portable(model, {k: v for k, v in good.items() if k != "blocks.2.bias"})
    static = linear_stack(scan=False, seed=0, dynamic=False)
    with pytest.raises(KeyError, match=r"unexpected.*streams\.phi_pre"):
        load_portable(static, good)


def test_batch_statistics_update_in_both_builds() -> None:
    """Blocks' non-parameter state (BatchNorm's running statistics) is written back by the
    scan build as the loop build updates it in place, and is exchanged as torch names."""
    def block(rngs: nnx.Rngs) -> nnx.Module:
        return nnx.Sequential(nnx.Linear(WIDTH, WIDTH, rngs=rngs),
                              nnx.BatchNorm(WIDTH, use_running_average=False, rngs=rngs))

    scanned = StreamSequential.scanned(block, DEPTH, width=WIDTH, rngs=nnx.Rngs(0), streams=2)
    randomise(scanned, 3)
    loop = StreamSequential([block(nnx.Rngs(i)) for i in range(DEPTH)], width=WIDTH, streams=2)
    load_portable(loop, export_portable(scanned))
    h = jnp.asarray(np.random.default_rng(4).standard_normal((5, WIDTH)), jnp.float32)
    call = nnx.jit(lambda model, h: model(h))
    np.testing.assert_allclose(call(scanned, h), call(loop, h), rtol=1e-5, atol=1e-6)
    after_scan, after_loop = export_portable(scanned), export_portable(loop)
    assert np.abs(after_scan["blocks.2.1.running_mean"]).max() > 0
    for key in after_scan:
        np.testing.assert_allclose(after_scan[key], after_loop[key], rtol=1e-5, atol=1e-6,
                                   err_msg=key)
