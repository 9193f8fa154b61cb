"""Parameters of a stream stack: names, shapes, initialisation and the portable dict.

The spec passes a stack's mixing parameters as one dict whose keys are the portable names
(n streams, L layers, C features; the stream-major flatten puts X[i, c] at i*C + c):

- ``"streams.phi_pre"`` (L, n*C, n), ``"streams.phi_post"`` (L, n*C, n),
  ``"streams.phi_res"`` (L, n*C, n, n) and ``"streams.a_pre"``, ``"streams.a_post"``,
  ``"streams.a_res"`` (L,): dynamic only. phi is in the maths layout (in, out): the
  paper's phi_res in R^{nC x n^2} is ``phi_res.reshape(L, n*C, n*n)`` (row-major mat()).
- ``"streams.b_pre"`` (L, n), ``"streams.b_post"`` (L, n), ``"streams.b_res"`` (L, n, n).
- ``"streams.reduce_logits"`` (n,): the gated reduce only.

The portable dict adds the branches' arrays as ``"blocks.<l>.<name>"`` (PyTorch layout),
exactly as the history family does; save and load it with :func:`mhc_spec.save_portable`
and :func:`mhc_spec.load_portable`.

Initialisation (every stream then equals the plain residual network's state, see
:func:`init_parameters`): phi = 0, a = ``a_init``, b_pre from :func:`pre_init_logits`
(Hpre sums to 1), b_post = 0 (Hpost = 1), b_res = ``RES_DIAGONAL_LOGIT`` * I for mhc and I
for hc, reduce_logits = logit(1/n).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from mhc_spec.config import check_depth, check_int
from mhc_spec.parameters import from_portable as split_history_portable
from mhc_spec.streams.config import StreamConfig

PREFIX = "streams."
PHI_PRE = "streams.phi_pre"
PHI_POST = "streams.phi_post"
PHI_RES = "streams.phi_res"
A_PRE = "streams.a_pre"
A_POST = "streams.a_post"
A_RES = "streams.a_res"
B_PRE = "streams.b_pre"
B_POST = "streams.b_post"
B_RES = "streams.b_res"
REDUCE_LOGITS = "streams.reduce_logits"

# Diagonal logit of the mhc b_res: SK(4 I) keeps exp(4) / (exp(4) + n - 1) of each stream
# (0.95 for n = 4), close to the identity like hc's start, without saturating SK's gradient.
RES_DIAGONAL_LOGIT = 4.0
# sigmoid(40) rounds to exactly 1 in float32 and float64: the n = 1 stand-in for logit(1).
SATURATED_LOGIT = 40.0


def pre_logit(streams: int) -> float:
    """logit(1/n) = -log(n - 1), so that sigmoid gives 1/n; ``SATURATED_LOGIT`` for n = 1."""
    streams = check_int("streams", streams, 1)
    return SATURATED_LOGIT if streams == 1 else -math.log(streams - 1)


def pre_init_logits(config: StreamConfig, depth: int) -> np.ndarray:
    """b_pre at initialisation, shape (L, n): logit(1/n) (``"uniform"``) or, for layer l,
    logit(1/2 + 1/(2n)) on stream l mod n and logit(1/(2n)) elsewhere (``"cyclic"``).
    sigmoid of every row sums to 1; n = 1 gives ``SATURATED_LOGIT`` (Hpre = 1)."""
    depth = check_depth(depth)
    n = config.streams
    if n == 1 or config.pre_init == "uniform":
        return np.full((depth, n), pre_logit(n))
    main, other = 0.5 + 0.5 / n, 0.5 / n
    logits = np.full((depth, n), math.log(other / (1.0 - other)))
    logits[np.arange(depth), np.arange(depth) % n] = math.log(main / (1.0 - main))
    return logits


def parameter_shapes(config: StreamConfig, depth: int, width: int) -> dict[str, tuple[int, ...]]:
    """The key and shape of every mixing parameter of an L-layer stack of width C."""
    depth = check_depth(depth)
    width = check_int("width", width, 1)
    n = config.streams
    shapes: dict[str, tuple[int, ...]] = {}
    if config.dynamic:
        shapes[PHI_PRE] = (depth, n * width, n)
        shapes[PHI_POST] = (depth, n * width, n)
        shapes[PHI_RES] = (depth, n * width, n, n)
        shapes[A_PRE] = shapes[A_POST] = shapes[A_RES] = (depth,)
    shapes[B_PRE] = (depth, n)
    shapes[B_POST] = (depth, n)
    shapes[B_RES] = (depth, n, n)
    if config.reduce == "gated":
        shapes[REDUCE_LOGITS] = (n,)
    return shapes


def init_parameters(config: StreamConfig, depth: int, width: int) -> dict[str, np.ndarray]:
    """phi = 0, a = a_init, b_pre = :func:`pre_init_logits`, b_post = 0, b_res = 4 I (mhc) or
    I (hc), sigmoid(reduce_logits) = 1/n.

    With equal streams and rows of Hres summing to 1, every stream of every layer then
    equals the residual network's state h_l = h_{l-1} + F_l(h_{l-1}): the mean and gated
    reduces return it, the sum reduce n times it.
    """
    n = config.streams
    params = {key: np.zeros(shape) for key, shape in parameter_shapes(config, depth, width).items()}
    if config.dynamic:
        for key in (A_PRE, A_POST, A_RES):
            params[key][:] = config.a_init
    params[B_PRE][:] = pre_init_logits(config, depth)
    diagonal = RES_DIAGONAL_LOGIT if config.constrained else 1.0
    params[B_RES][:] = diagonal * np.eye(n)
    if config.reduce == "gated":
        params[REDUCE_LOGITS][:] = pre_logit(n)
    return params


def check_parameters(
    config: StreamConfig, params: Mapping[str, np.ndarray], depth: int, width: int
) -> None:
    """Raise ``KeyError`` for missing or unexpected keys, ``ValueError`` for wrong shapes."""
    shapes = parameter_shapes(config, depth, width)
    missing = sorted(set(shapes) - set(params))
    extra = sorted(set(params) - set(shapes))
    if missing or extra:
        raise KeyError(f"stream parameters: missing {missing}, unexpected {extra} for {config}")
    for key, shape in shapes.items():
        actual = np.shape(params[key])
        if actual != shape:
            raise ValueError(f"stream parameter {key!r} has shape {actual}, expected {shape}")


def to_portable(
    params: Mapping[str, np.ndarray], blocks: Sequence[Mapping[str, np.ndarray]] = ()
) -> dict[str, np.ndarray]:
    """One dict of the stream parameters and the per-block arrays ``blocks.<l>.<name>``."""
    out = {key: np.array(value) for key, value in params.items()}
    for index, block in enumerate(blocks):
        for name, value in block.items():
            out[f"blocks.{index}.{name}"] = np.array(value)
    return out


def from_portable(
    portable: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    """Split a portable dict into (stream parameters, blocks); unknown keys raise ``KeyError``."""
    params = {k: np.asarray(v) for k, v in portable.items() if k.startswith(PREFIX)}
    rest = {k: v for k, v in portable.items() if not k.startswith(PREFIX)}
    theta, gamma, blocks = split_history_portable(rest)
    if theta is not None or gamma is not None:
        raise KeyError("history-family keys 'mixing.*' do not belong in a stream stack's dict")
    return params, blocks
