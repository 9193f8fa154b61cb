"""The portable parameter dict: torch names and layouts, exact round trips, clear errors."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax_fast import fast_jit

from mhc_jax import MHCSequential, export_portable, load_portable
from mhc_spec import load_portable as read_npz
from mhc_spec import save_portable

WIDTH = 4


def linear_stack(scan: bool, seed: int, depth: int = 3, **options) -> MHCSequential:
    if scan:
        return MHCSequential.scanned(lambda r: nnx.Linear(WIDTH, WIDTH, rngs=r), depth,
                                     rngs=nnx.Rngs(seed), **options)
    return MHCSequential([nnx.Linear(WIDTH, WIDTH, rngs=nnx.Rngs(seed + i))
                          for i in range(depth)], **options)


forward = fast_jit(lambda state, graphdef, x: nnx.merge(graphdef, state)(x), static_argnums=1)


def run(model: MHCSequential, x: jnp.ndarray) -> np.ndarray:
    graphdef, state = nnx.split(model)
    return np.asarray(forward(state, graphdef, x))


def test_keys_names_and_layout_follow_the_torch_state_dict() -> None:
    model = linear_stack(scan=False, seed=0, gating=True)
    params = export_portable(model)
    assert set(params) == {"mixing.theta", "mixing.gamma"} | {
        f"blocks.{i}.{name}" for i in range(3) for name in ("weight", "bias")}
    assert params["mixing.theta"].shape == (3, 4) and params["mixing.gamma"].shape == (3,)
    x = np.random.default_rng(0).standard_normal((2, WIDTH)).astype(np.float32)
    block = model.blocks[1]
    np.testing.assert_allclose(x @ params["blocks.1.weight"].T + params["blocks.1.bias"],
                               np.asarray(block(jnp.asarray(x))), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("source_scan", "target_scan"),
                         [(False, False), (False, True), (True, False), (True, True)])
def test_round_trip_is_bit_identical_across_builds(source_scan, target_scan, tmp_path) -> None:
    source = linear_stack(source_scan, seed=0, gating=True)
    source.mixing.theta[...] = jnp.asarray(np.random.default_rng(1).standard_normal((3, 4)),
                                           jnp.float32)
    target = linear_stack(target_scan, seed=10, gating=True)
    exported = export_portable(source)
    save_portable(str(tmp_path / "p.npz"), exported)
    load_portable(target, read_npz(str(tmp_path / "p.npz")))
    back = export_portable(target)
    assert set(back) == set(exported)
    for key in exported:
        assert back[key].dtype == exported[key].dtype
        np.testing.assert_array_equal(back[key], exported[key], err_msg=key)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, WIDTH)), jnp.float32)
    np.testing.assert_allclose(run(target, x), run(source, x), rtol=1e-6, atol=1e-6)


def test_nested_modules_map_to_torch_names_and_layouts() -> None:
    def block(rngs):
        return nnx.Sequential(nnx.Conv(3, 3, (2, 2), padding="SAME", rngs=rngs),
                              nnx.LayerNorm(3, rngs=rngs), nnx.BatchNorm(3, rngs=rngs))

    model = MHCSequential.scanned(block, 2, rngs=nnx.Rngs(0), mode="residual")
    params = export_portable(model)
    assert set(params) == {f"blocks.{i}.{name}" for i in range(2) for name in (
        "0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias", "2.running_mean",
        "2.running_var")}
    kernel = np.asarray(model.blocks.layers[0].kernel[...])[1]  # (kh, kw, in, out)
    weight = params["blocks.1.0.weight"]  # (out, in, kh, kw)
    assert weight.shape == (3, 3, 2, 2)
    np.testing.assert_array_equal(weight[2, 1, 0, 1], kernel[0, 1, 1, 2])
    np.testing.assert_array_equal(params["blocks.0.1.weight"],
                                  np.asarray(model.blocks.layers[1].scale[...])[0])
    twin = MHCSequential([block(nnx.Rngs(5 + i)) for i in range(2)], mode="residual")
    load_portable(twin, params)
    for key, value in export_portable(twin).items():
        np.testing.assert_array_equal(value, params[key], err_msg=key)


def test_float64_dicts_load_into_float32_models() -> None:
    model = linear_stack(scan=True, seed=0)
    params = {k: v.astype(np.float64) for k, v in export_portable(model).items()}
    load_portable(model, params)
    assert model.blocks.kernel[...].dtype == jnp.float32


def test_mismatches_raise_clear_errors() -> None:
    model = linear_stack(scan=False, seed=0)
    good = export_portable(model)
    with pytest.raises(KeyError, match=r"missing \['bias'\]"):
        load_portable(model, {k: v for k, v in good.items() if k != "blocks.1.bias"})
    with pytest.raises(KeyError, match=r"unexpected \['scale'\]"):
        load_portable(model, {**good, "blocks.0.scale": np.ones(4)})
    with pytest.raises(ValueError, match=r"blocks.2.weight has shape \(4, 5\)"):
        load_portable(model, {**good, "blocks.2.weight": np.ones((4, 5))})
    with pytest.raises(KeyError, match="holds 2 blocks; the model has 3"):
        load_portable(model, {k: v for k, v in good.items() if not k.startswith("blocks.2.")})
    with pytest.raises(KeyError, match=r"has no mixing.gamma"):
        load_portable(model, {**good, "mixing.gamma": np.zeros(3)})
    residual = linear_stack(scan=False, seed=0, mode="residual")
    with pytest.raises(KeyError, match=r"\(residual\) has no mixing.theta"):
        load_portable(residual, good)
    with pytest.raises(KeyError, match=r"needs mixing.theta"):
        load_portable(model, export_portable(residual))
