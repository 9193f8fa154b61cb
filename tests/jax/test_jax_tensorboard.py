"""The TensorBoard monitor's event file, read back with TensorBoard's EventAccumulator."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mhc_dashboard import png_to_rgb
from mhc_jax import MHCSequential
from mhc_jax.statistics import Highway, highway, mixing_statistics
from mhc_jax.tensorboard import TensorBoardMonitor


def squared(output, target):
    return jnp.mean((output - target) ** 2)


def test_event_file_holds_the_documented_scalars_and_images(tmp_path) -> None:
    depth, h = 3, 2
    model = MHCSequential([nnx.Linear(4, 4, rngs=nnx.Rngs(i)) for i in range(depth)],
                          max_history=h, gating=True)
    x, target = jnp.ones((2, 4)), jnp.zeros((2, 4))
    first, road = mixing_statistics(model), highway(model, squared, x, target)
    model.mixing.theta[...] = jnp.array([[0.0, 2.0], [1.0, 0.0], [0.0, 0.0]])
    second = mixing_statistics(model)
    with TensorBoardMonitor(tmp_path, name="net") as monitor:
        monitor.log(10, first, road)
        monitor.log(20, second)
        monitor.log_weights_over_steps(20)

    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    base = "mhc/net"
    # Layer 1 mixes only s_0 (index H-1); layers 2 and 3 mix both states.
    weight_tags = {f"{base}/weight/layer_1/index_1", f"{base}/weight/layer_2/index_0",
                   f"{base}/weight/layer_2/index_1", f"{base}/weight/layer_3/index_0",
                   f"{base}/weight/layer_3/index_1"}
    expected_scalars = weight_tags | {
        f"{base}/gate/layer_{layer}" for layer in (1, 2, 3)} | {
        f"{base}/entropy/layer_{layer}" for layer in (1, 2, 3)} | {
        f"{base}/highway/state_{index}" for index in range(depth + 1)} | {
        f"{base}/skip_gain", f"{base}/amplification", f"{base}/entropy/mean",
        f"{base}/highway/attenuation", f"{base}/theta_grad_norm"}
    assert set(tags["scalars"]) == expected_scalars

    def values(tag):
        return [(e.step, e.value) for e in events.Scalars(tag)]

    assert values(f"{base}/weight/layer_2/index_0") == [
        (10, pytest.approx(first.weights[1, 0])), (20, pytest.approx(second.weights[1, 0]))]
    assert values(f"{base}/entropy/mean") == [
        (10, pytest.approx(first.mean_entropy)), (20, pytest.approx(second.mean_entropy))]
    assert values(f"{base}/skip_gain") == [(10, pytest.approx(first.skip_gain[-1])),
                                           (20, pytest.approx(second.skip_gain[-1]))]
    assert values(f"{base}/highway/state_0") == [(10, pytest.approx(road.profile[0]))]
    assert values(f"{base}/theta_grad_norm") == [(10, pytest.approx(road.theta_grad_norm))]

    expected_images = {f"{base}/mixing_weights", f"{base}/highway"} | {
        f"{base}/weights_over_steps/layer_{layer}" for layer in (1, 2, 3)}
    assert set(tags["images"]) == expected_images
    assert [e.step for e in events.Images(f"{base}/mixing_weights")] == [10, 20]
    for tag in expected_images:
        for image in events.Images(tag):
            pixels = png_to_rgb(image.encoded_image_string)
            assert pixels.shape == (image.height, image.width, 3)
            assert pixels.std() > 0  # a drawn picture, not a blank canvas


def test_highway_without_theta_logs_no_gradient_norm(tmp_path) -> None:
    model = MHCSequential([nnx.Linear(2, 2, rngs=nnx.Rngs(0))], mode="residual")
    road = Highway(np.array([1.0, 2.0]), 0.5, None)
    with TensorBoardMonitor(tmp_path) as monitor:
        monitor.log(1, mixing_statistics(model), road, images=False)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert "mhc/stack/theta_grad_norm" not in events.Tags()["scalars"]
    assert "mhc/stack/highway/attenuation" in events.Tags()["scalars"]
    assert events.Tags()["images"] == []


@pytest.mark.parametrize("name", ["", "/net", 3])
def test_bad_names_are_refused(tmp_path, name) -> None:
    with pytest.raises(ValueError, match="name="):
        TensorBoardMonitor(tmp_path, name=name)
