"""The stream monitor's event file, read back with TensorBoard's EventAccumulator, holds the
spec's gains, entropies and gradient norms and the stream pictures."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mhc_dashboard import png_to_rgb, read_streams, stream_scalars
from mhc_jax.streams import StreamSequential, export_portable
from mhc_jax.tensorboard import StreamTensorBoardMonitor
from mhc_spec.streams import backward, forward

WIDTH, DEPTH = 4, 3


def stack(mode: str, seed: int, **options) -> StreamSequential:
    model = StreamSequential([nnx.Linear(WIDTH, WIDTH, rngs=nnx.Rngs(seed + i))
                              for i in range(DEPTH)], width=WIDTH, streams=3, mode=mode,
                             **options)
    # phi = 0 at init gives every token the same coefficients; random phi and a = 1 do not,
    # and a b_res off the identity moves hc's gains away from 1.
    rng = np.random.default_rng(seed)
    for name in ("phi_pre", "phi_post", "phi_res", "b_res"):
        variable = getattr(model.mixing, name)
        variable[...] = variable[...] + 0.3 * rng.standard_normal(variable[...].shape)
    for name in ("a_pre", "a_post", "a_res"):
        getattr(model.mixing, name)[...] = jnp.ones(DEPTH)
    return model


def half_square(model: StreamSequential, h: jnp.ndarray) -> jnp.ndarray:
    return 0.5 * jnp.sum(model(h) ** 2)


@nnx.jit
def coefficients_and_grads(model: StreamSequential, h: jnp.ndarray):
    # One compiled call: eager Sinkhorn loops compile per call, forward and reverse.
    return model.forward(h, collect_coefficients=True), nnx.grad(half_square)(model, h)


def expected(name: str, model: StreamSequential, h: np.ndarray):
    """The spec's reading (float64) of ``model`` on ``h``, with the gradients of
    0.5 * sum(output^2), whose dLoss/doutput is the output itself."""
    portable = export_portable(model)
    params = {k: v for k, v in portable.items() if k.startswith("streams.")}
    weight = np.stack([portable[f"blocks.{layer}.weight"] for layer in range(DEPTH)])
    bias = np.stack([portable[f"blocks.{layer}.bias"] for layer in range(DEPTH)])
    trace = forward(model.config, h, params, "linear", weight, bias)
    grads = backward(model.config, trace, params, "linear", weight, bias, trace.output).params
    norms = {key.removeprefix("streams."): float(np.linalg.norm(g)) for key, g in grads.items()}
    return read_streams(name, model.config, (trace.hpre, trace.hpost, trace.hres), norms)


def test_event_file_holds_the_spec_statistics_and_pictures(tmp_path) -> None:
    h = np.random.default_rng(0).standard_normal((2, 5, WIDTH)).astype(np.float32)
    mhc = stack("mhc", 0, reduce="gated", sinkhorn_iterations=5)
    hc = stack("hc", 10)
    mhc_out, grads = coefficients_and_grads(mhc, jnp.asarray(h))
    hc_out = hc.forward(jnp.asarray(h), collect_coefficients=True)
    with StreamTensorBoardMonitor(tmp_path) as monitor:
        monitor.log(10, {"mhc": (mhc, mhc_out), "hc": (hc, hc_out)}, grads={"mhc": grads})
        monitor.log(20, {"hc": (hc, hc_out)}, images=False)

    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    want = {"mhc": stream_scalars("mhc/mhc", expected("mhc", mhc, h)),
            "hc": stream_scalars("mhc/hc", expected("hc", hc, h), gradients=False)}
    assert set(events.Tags()["scalars"]) == set(want["mhc"]) | set(want["hc"])
    assert "mhc/mhc/grad_norm/reduce_logits" in want["mhc"]
    for name, steps in (("mhc", [10]), ("hc", [10, 20])):
        for tag, value in want[name].items():
            got = events.Scalars(tag)
            assert [e.step for e in got] == steps, tag
            for event in got:
                # float32 stacks against the float64 spec.
                assert event.value == pytest.approx(value, rel=2e-4, abs=1e-6), tag
    # Sinkhorn keeps every forward gain at 1; hc's free Hres does not.
    assert events.Scalars("mhc/mhc/composite_forward_gain")[0].value == pytest.approx(1, 1e-5)
    assert want["hc"]["mhc/hc/composite_forward_gain"] > 1.1

    pictures = {f"mhc/{name}/{p}" for name in ("mhc", "hc")
                for p in ("hres", "hpre_hpost", "composite_gain")} | {"mhc/composite_gain"}
    assert set(events.Tags()["images"]) == pictures
    for tag in pictures:
        (image,) = events.Images(tag)
        assert image.step == 10
        pixels = png_to_rgb(image.encoded_image_string)
        assert pixels.shape == (image.height, image.width, 3) and pixels.std() > 0


def test_monitor_validates_its_arguments(tmp_path) -> None:
    model = stack("mhc", 0)
    with pytest.raises(ValueError, match="prefix='/mhc' is invalid"):
        StreamTensorBoardMonitor(tmp_path, prefix="/mhc")
    with StreamTensorBoardMonitor(tmp_path) as monitor:
        with pytest.raises(ValueError, match=r"grads has names \['other'\]"):
            monitor.log(0, {"net": (model, None)}, grads={"other": nnx.state(model)})
        with pytest.raises(ValueError, match="name='net/' is invalid"):
            monitor.log(0, {"net/": (model, None)})
