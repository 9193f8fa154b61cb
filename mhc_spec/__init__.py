"""mhc_spec: the mixing maths of manifold-constrained hyper-connections in plain NumPy.

The executable definition that every backend is checked against (see ``conformance``).
"""

from mhc_spec.blocks import BLOCK_KINDS, block_forward, block_vjp
from mhc_spec.config import CONSTRAINTS, INITS, MODES, MHCConfig, check_depth
from mhc_spec.gradients import Gradients, backward
from mhc_spec.parameters import (
    from_portable,
    gates,
    init_gamma,
    init_theta,
    load_portable,
    save_portable,
    to_portable,
)
from mhc_spec.projections import (
    padded_weights,
    project,
    project_vjp,
    softmax,
    sparsemax,
    sparsemax_vjp,
    window_size,
)
from mhc_spec.recurrence import Trace, forward
from mhc_spec.statistics import (
    amplification,
    attenuation,
    entropy,
    highway_profile,
    skip_gain,
)
from mhc_spec.version import SPEC_VERSION

__all__ = [
    "BLOCK_KINDS",
    "CONSTRAINTS",
    "INITS",
    "MODES",
    "SPEC_VERSION",
    "Gradients",
    "MHCConfig",
    "Trace",
    "amplification",
    "attenuation",
    "backward",
    "block_forward",
    "block_vjp",
    "check_depth",
    "entropy",
    "forward",
    "from_portable",
    "gates",
    "highway_profile",
    "init_gamma",
    "init_theta",
    "load_portable",
    "padded_weights",
    "project",
    "project_vjp",
    "save_portable",
    "skip_gain",
    "softmax",
    "sparsemax",
    "sparsemax_vjp",
    "to_portable",
    "window_size",
]
