"""Bad arguments to the stream modules raise at construction (or at the first call, for
shapes only the input knows) with the argument, the value and what is allowed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from mhc_jax.streams import (
    StreamLayer,
    StreamReduce,
    StreamSequential,
    expand_streams,
    sinkhorn,
)
from mhc_spec.streams import StreamConfig

WIDTH = 3


def blocks(depth: int = 2) -> list[nnx.Module]:
    return [nnx.Linear(WIDTH, WIDTH, rngs=nnx.Rngs(i)) for i in range(depth)]


BAD_OPTIONS = [
    ({"streams": 0}, ValueError, r"streams=0 is invalid: streams must be an integer >= 1"),
    ({"streams": 2.0}, TypeError, r"streams=2.0 is invalid"),
    ({"mode": "free"}, ValueError, r"mode='free' is invalid: mode must be one of 'mhc', 'hc'"),
    ({"constraint": "softmax"}, ValueError,
     r"constraint='softmax' is invalid: constraint must be 'sinkhorn' or a callable"),
    ({"sinkhorn_iterations": 0}, ValueError, r"sinkhorn_iterations=0 is invalid"),
    ({"dynamic": 1}, TypeError, r"dynamic=1 is invalid: dynamic must be True or False"),
    ({"reduce": "max"}, ValueError, r"reduce='max' is invalid: reduce must be one of"),
    ({"rms_eps": 0.0}, ValueError, r"rms_eps=0.0 is invalid: rms_eps must be a finite number > 0"),
    ({"pre_init": "random"}, ValueError, r"pre_init='random' is invalid"),
    ({"width": 0}, ValueError, r"width=0 is invalid: width must be an integer >= 1"),
    ({"max_history": 4}, TypeError, r"max_history"),
]


@pytest.mark.parametrize(("options", "error", "message"), BAD_OPTIONS,
                         ids=[", ".join(f"{k}={v!r}" for k, v in o.items())
                              for o, _, _ in BAD_OPTIONS])
def test_bad_options_raise_at_construction(options, error, message) -> None:
    options = {"width": WIDTH, **options}
    with pytest.raises(error, match=message):
        StreamSequential(blocks(), **options)
    with pytest.raises(error, match=message):
        StreamSequential.scanned(lambda r: nnx.Linear(WIDTH, WIDTH, rngs=r), 2,
                                 rngs=nnx.Rngs(0), **options)
    with pytest.raises(error, match=message):
        StreamLayer(nnx.Linear(WIDTH, WIDTH, rngs=nnx.Rngs(0)), **options)


def test_bad_construction_raises() -> None:
    with pytest.raises(TypeError, match="either blocks"):
        StreamSequential(width=WIDTH)
    with pytest.raises(TypeError, match=r"blocks\[1\]=.* every block must be an nnx.Module"):
        StreamSequential([blocks(1)[0], jnp.tanh], width=WIDTH)
    with pytest.raises(ValueError, match="depth=0 is invalid"):
        StreamSequential([], width=WIDTH)
    stacked = nnx.Linear(WIDTH, WIDTH, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="leading axis of depth=2"):
        StreamSequential(stacked=stacked, depth=2, width=WIDTH)
    with pytest.raises(TypeError, match="either config or keyword options"):
        StreamSequential(blocks(), width=WIDTH, config=StreamConfig(), streams=2)
    with pytest.raises(TypeError, match="config must be a StreamConfig"):
        StreamSequential(blocks(), width=WIDTH, config={"streams": 2})
    with pytest.raises(TypeError, match=r"block must be an nnx\.Module"):
        StreamLayer(jnp.tanh, width=WIDTH)
    with pytest.raises(ValueError, match="layer_index=-1 is invalid"):
        StreamLayer(blocks(1)[0], width=WIDTH, layer_index=-1)
    with pytest.raises(ValueError, match="reduce='max' is invalid"):
        StreamReduce(reduce="max")
    with pytest.raises(ValueError, match="streams=0 is invalid"):
        expand_streams(jnp.ones(WIDTH), 0)
    with pytest.raises(ValueError, match="sinkhorn_iterations=0 is invalid"):
        sinkhorn(jnp.zeros((2, 2)), 0)


def test_width_defaults_to_a_linear_first_block() -> None:
    assert StreamSequential(blocks(), streams=2).width == WIDTH
    assert StreamSequential.scanned(lambda r: nnx.Linear(WIDTH, WIDTH, rngs=r), 2,
                                    rngs=nnx.Rngs(0), streams=2).width == WIDTH
    assert StreamLayer(blocks(1)[0], streams=2).mixing.width == WIDTH
    with pytest.raises(ValueError, match=r"width=4 is invalid: the first block is nnx\.Linear "
                                         r"with in_features=3; width must equal it"):
        StreamSequential(blocks(), width=4)
    with pytest.raises(TypeError, match=r"width=None is invalid: .* \(Sequential, not an "
                                        r"nnx\.Linear\); pass width=C"):
        StreamSequential([nnx.Sequential(blocks(1)[0], jnp.tanh)])


def test_bad_inputs_raise_at_the_call() -> None:
    # Shapes are checked while tracing: jax.eval_shape raises the same errors, computing nothing.
    def trace(module, *args, **kwargs):
        return jax.eval_shape(lambda *a: module(*a, **kwargs), *args)

    model = StreamSequential(blocks(), width=WIDTH, streams=2)
    with pytest.raises(ValueError, match=r"h has shape \(2, 4\); expected \(..., width=3\)"):
        trace(model, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match=r"offsets has shape \(2, 2, 2, 3\); expected "
                                         r"\(3, 2, 2, 3\)"):
        trace(model.forward, jnp.ones((2, WIDTH)), offsets=jnp.zeros((2, 2, 2, WIDTH)))
    wide = StreamSequential([nnx.Linear(WIDTH, WIDTH + 1, rngs=nnx.Rngs(0))], width=WIDTH,
                            streams=2)
    with pytest.raises(ValueError, match=r"block 0 maps an input of shape \(2, 3\) to shape "
                                         r"\(2, 4\)"):
        trace(wide, jnp.ones((2, WIDTH)))
    layer = StreamLayer(blocks(1)[0], width=WIDTH, streams=2)
    with pytest.raises(ValueError, match=r"streams have shape \(3, 3\); expected "
                                         r"\(..., streams, width\) = \(..., 2, 3\)"):
        trace(layer, jnp.ones((3, WIDTH)))
    bad_projection = StreamSequential(blocks(), width=WIDTH, streams=2,
                                      constraint=lambda z: z[..., 0])
    with pytest.raises(ValueError, match="must return an array of the shape of its logits"):
        trace(bad_projection, jnp.ones((2, WIDTH)))
