"""mhc_spec.streams: DeepSeek's multi-stream mHC (arXiv 2512.24880) in plain NumPy.

n parallel residual streams X (..., n, C), read by Hpre, written by Hpost and mixed by a
Sinkhorn-Knopp projected Hres each layer; the executable definition the backends of this
family are checked against (golden vectors in ``conformance/vectors/streams``).
"""

from mhc_spec.streams.coefficients import Coefficients, coefficients, rms_norm, sigmoid
from mhc_spec.streams.config import PRE_INITS, REDUCES, SINKHORN, STREAM_MODES, StreamConfig
from mhc_spec.streams.constraint import project_residual, project_residual_vjp
from mhc_spec.streams.gradients import StreamGradients, backward
from mhc_spec.streams.parameters import (
    check_parameters,
    from_portable,
    init_parameters,
    parameter_shapes,
    pre_init_logits,
    pre_logit,
    to_portable,
)
from mhc_spec.streams.recurrence import (
    StreamTrace,
    branch_input,
    expand,
    forward,
    layer_forward,
    reduce,
    reduce_weights,
    update,
)
from mhc_spec.streams.sinkhorn import sinkhorn, sinkhorn_vjp
from mhc_spec.streams.statistics import (
    backward_gain,
    composite,
    composite_to_output,
    forward_gain,
    row_entropy,
    summary,
    summary_from_coefficients,
    token_mean,
)

__all__ = [
    "PRE_INITS",
    "REDUCES",
    "SINKHORN",
    "STREAM_MODES",
    "Coefficients",
    "StreamConfig",
    "StreamGradients",
    "StreamTrace",
    "backward",
    "backward_gain",
    "branch_input",
    "check_parameters",
    "coefficients",
    "composite",
    "composite_to_output",
    "expand",
    "forward",
    "forward_gain",
    "from_portable",
    "init_parameters",
    "layer_forward",
    "parameter_shapes",
    "pre_init_logits",
    "pre_logit",
    "project_residual",
    "project_residual_vjp",
    "reduce",
    "reduce_weights",
    "rms_norm",
    "row_entropy",
    "sigmoid",
    "sinkhorn",
    "sinkhorn_vjp",
    "summary",
    "summary_from_coefficients",
    "to_portable",
    "token_mean",
    "update",
]
