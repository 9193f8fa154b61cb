"""Initial parameters and the portable NumPy parameter dict exchanged between backends.

Portable dict keys (all values NumPy arrays, float64 or float32 as saved):

- ``"mixing.theta"``: logits theta of shape (L, H) (absent for ``mode="residual"``);
- ``"mixing.gamma"``: gate logits gamma of shape (L,) (absent without gating);
- ``"blocks.<l>.<name>"``: the arrays of block l (0-indexed) in the PyTorch layout,
  e.g. ``blocks.0.weight`` (out, in) and ``blocks.0.bias`` (out,) for a linear block.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mhc_spec.config import RECENT_LOGIT, MHCConfig, check_depth

THETA = "mixing.theta"
GAMMA = "mixing.gamma"
BLOCK_PREFIX = "blocks."


def init_theta(config: MHCConfig, depth: int) -> np.ndarray | None:
    """theta of shape (L, H): "recent" = zeros with theta[:, H-1] = 0.5, "uniform" = zeros,
    "newest" = e_{H-1} per row. None for ``mode="residual"`` (no mixing parameters)."""
    depth = check_depth(depth)
    if not config.has_logits:
        return None
    theta = np.zeros((depth, config.max_history))
    init = config.resolved_init
    if init == "recent":
        theta[:, -1] = RECENT_LOGIT
    elif init == "newest":
        theta[:, -1] = 1.0
    return theta


def init_gamma(config: MHCConfig, depth: int) -> np.ndarray | None:
    """gamma of shape (L,) filled with ``gate_init``; None without gating."""
    depth = check_depth(depth)
    return np.full(depth, config.gate_init) if config.gating else None


def gates(config: MHCConfig, gamma: np.ndarray | None, depth: int) -> np.ndarray:
    """g_l = sigmoid(gamma_l) with gating, else 1."""
    if not config.gating:
        return np.ones(depth)
    return 1.0 / (1.0 + np.exp(-np.asarray(gamma, dtype=np.float64)))


def to_portable(
    theta: np.ndarray | None,
    gamma: np.ndarray | None,
    blocks: Sequence[Mapping[str, np.ndarray]] = (),
) -> dict[str, np.ndarray]:
    """Build a portable dict from mixing parameters and per-block arrays (PyTorch layout)."""
    out: dict[str, np.ndarray] = {}
    if theta is not None:
        out[THETA] = np.array(theta)
    if gamma is not None:
        out[GAMMA] = np.array(gamma)
    for index, block in enumerate(blocks):
        for name, value in block.items():
            out[f"{BLOCK_PREFIX}{index}.{name}"] = np.array(value)
    return out


def from_portable(
    params: Mapping[str, np.ndarray],
) -> tuple[np.ndarray | None, np.ndarray | None, list[dict[str, np.ndarray]]]:
    """Split a portable dict into (theta, gamma, blocks); unknown keys raise ``KeyError``."""
    blocks: dict[int, dict[str, np.ndarray]] = {}
    for key, value in params.items():
        if key in (THETA, GAMMA):
            continue
        if not key.startswith(BLOCK_PREFIX) or key.count(".") < 2:
            raise KeyError(f"unknown portable parameter key {key!r}")
        index, name = key[len(BLOCK_PREFIX):].split(".", 1)
        blocks.setdefault(int(index), {})[name] = np.asarray(value)
    if sorted(blocks) != list(range(len(blocks))):
        raise KeyError(f"block indices must be 0..n-1, got {sorted(blocks)}")
    return params.get(THETA), params.get(GAMMA), [blocks[i] for i in range(len(blocks))]


def save_portable(path: str, params: Mapping[str, np.ndarray]) -> None:
    """Write a portable dict as an ``.npz`` file."""
    np.savez(path, **params)


def load_portable(path: str) -> dict[str, np.ndarray]:
    """Read a portable dict written by :func:`save_portable`."""
    with np.load(path) as data:
        return {key: data[key] for key in data.files}
