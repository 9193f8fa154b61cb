"""The mixing parameters of a stream stack and a layer's coefficients Hpre, Hpost, Hres.

For each token's streams X (n, C), with x = flatten(X) (stream-major, length n*C), exactly
:mod:`mhc_spec.streams.coefficients`:

    x'     = x / sqrt(mean(x^2) + eps)                  (RMSNorm without a weight)
    Hpre~  = a_pre  * (x' @ phi_pre)  + b_pre            (n,)
    Hpost~ = a_post * (x' @ phi_post) + b_post           (n,)
    Hres~  = a_res  * (x' @ phi_res)  + b_res            (n, n)
    Hpre = sigmoid(Hpre~);  Hpost = 2 sigmoid(Hpost~);  Hres = P(Hres~)

Static coefficients are the biases alone. The three projections of x' run as one matmul
against [phi_pre | phi_post | mat(phi_res)] (n*C, 2n + n^2), as in the paper. All of this
runs in at least float32 and at the highest matmul precision (bf16 streams never reach the
coefficients, and TF32 would cost the logits three digits).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mhc_jax.stacking import resolve_config_options
from mhc_jax.streams.sinkhorn import project_residual
from mhc_spec.config import check_depth, check_int
from mhc_spec.streams import StreamConfig, init_parameters
from mhc_spec.streams.parameters import PREFIX

# Attribute names of StreamMixing; the portable key of each is "streams.<name>".
PARAMETER_NAMES = ("phi_pre", "phi_post", "phi_res", "a_pre", "a_post", "a_res",
                   "b_pre", "b_post", "b_res")
HIGHEST = jax.lax.Precision.HIGHEST


def resolve_stream_config(config: StreamConfig | None, options: dict[str, Any]) -> StreamConfig:
    """``config`` itself, or a :class:`StreamConfig` built (and validated) from ``options``."""
    return resolve_config_options(config, options, StreamConfig)


def coefficient_dtype(*dtypes: Any) -> jnp.dtype:
    """The dtype of the coefficient maths: ``dtypes`` promoted to at least float32."""
    return jnp.result_type(jnp.float32, *dtypes)


class LayerCoefficients(NamedTuple):
    """One layer's Hpre, Hpost (..., n) and Hres (..., n, n); static coefficients have no
    token axes (they broadcast against every token)."""

    pre: jax.Array
    post: jax.Array
    res: jax.Array


class StreamMixing(nnx.Module):
    """The mixing parameters of ``depth`` consecutive layers, stacked on a leading axis L:
    phi_pre, phi_post (L, n*C, n), phi_res (L, n*C, n, n), a_pre, a_post, a_res (L,) (these
    six ``None`` when static) and b_pre, b_post (L, n), b_res (L, n, n), initialised by
    :func:`mhc_spec.streams.init_parameters` as layers ``first_layer ..`` of a stack (the
    cyclic b_pre depends on the layer's index)."""

    def __init__(
        self,
        config: StreamConfig,
        depth: int,
        width: int,
        *,
        first_layer: int = 0,
        param_dtype: Any = jnp.float32,
    ):
        self.config = config
        self.depth = check_depth(depth)
        self.width = check_int("width", width, 1)
        first_layer = check_int("layer_index", first_layer, 0)
        init = init_parameters(config, first_layer + self.depth, self.width)
        for name in PARAMETER_NAMES:
            value = init.get(PREFIX + name)
            param = None if value is None else nnx.Param(jnp.asarray(value[first_layer:],
                                                                     param_dtype))
            setattr(self, name, param)

    def stacked(self) -> dict[str, jax.Array]:
        """The values of the parameters this configuration has, by name, shape (L, ...)."""
        return {name: getattr(self, name)[...] for name in PARAMETER_NAMES
                if getattr(self, name) is not None}


def check_streams(config: StreamConfig, width: int, streams: jax.Array) -> None:
    """Raise ``ValueError`` unless ``streams`` has shape (..., n, C) for this stack."""
    expected = (config.streams, width)
    if streams.ndim < 2 or tuple(streams.shape[-2:]) != expected:
        raise ValueError(
            f"streams have shape {tuple(streams.shape)}; expected (..., streams, width) = "
            f"(..., {expected[0]}, {expected[1]})"
        )


def coefficients(
    config: StreamConfig, params: dict[str, jax.Array], streams: jax.Array
) -> LayerCoefficients:
    """Hpre, Hpost, Hres of one layer (``params``: its slice of :meth:`StreamMixing.stacked`)
    for streams X of shape (..., n, C)."""
    dtype = coefficient_dtype(streams.dtype, params["b_pre"].dtype)
    p = {name: value.astype(dtype) for name, value in params.items()}
    pre, post, res = p["b_pre"], p["b_post"], p["b_res"]
    if config.dynamic:
        n = config.streams
        x = streams.astype(dtype).reshape(*streams.shape[:-2], -1)
        x = x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + config.rms_eps)
        phi = jnp.concatenate([p["phi_pre"], p["phi_post"], p["phi_res"].reshape(-1, n * n)],
                              axis=-1)
        projected = jnp.matmul(x, phi, precision=HIGHEST)
        pre = p["a_pre"] * projected[..., :n] + pre
        post = p["a_post"] * projected[..., n:2 * n] + post
        res = p["a_res"] * projected[..., 2 * n:].reshape(*x.shape[:-1], n, n) + res
    return LayerCoefficients(jax.nn.sigmoid(pre), 2.0 * jax.nn.sigmoid(post),
                             project_residual(config, res))
