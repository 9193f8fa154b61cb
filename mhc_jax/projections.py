"""Mixing weights of every layer from its logits, in one batched projection.

The padded layout of :func:`mhc_spec.projections.padded_weights`: row l-1 belongs to layer
l, column j pairs with the state H-1-j steps older than the newest, and the columns of
unavailable states are exactly 0. All maths runs in at least float32 (bf16 activations
never reach the coefficients).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from optax.projections import projection_simplex

from mhc_spec import MHCConfig

# A masked logit this far below the row's largest available logit (after the shift by
# that maximum) lies below every sparsemax threshold (tau >= max - 1), so its weight is
# exactly 0 and its slot is never on the support; finite, so no inf/NaN in gradients.
_SPARSEMAX_FILL = -2.0


def coefficient_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """The dtype of the mixing maths: ``dtype`` promoted to at least float32."""
    return jnp.promote_types(dtype, jnp.float32)


def available_counts(max_history: int, depth: int, first: jax.Array | int = 1) -> jax.Array:
    """K_l = min(H, first + l - 1) for l = 1..L, where ``first`` states are available to
    layer 1 (1 for a fresh stack: only s_0; more when a history is carried in)."""
    return jnp.minimum(max_history, first + jnp.arange(depth))


def window_mask(max_history: int, counts: jax.Array) -> jax.Array:
    """mask[l, j] = j >= H - K_l: which padded columns hold an available state."""
    return jnp.arange(max_history) >= max_history - jnp.asarray(counts)[..., None]


# Rows up to this width are projected by pairwise comparisons, wider ones by optax's sort.
# At depth 50, H = 4 the sort was the whole cost of the simplex kind over softmax in the
# jitted step at 64x64 (1.39x against 1.32x the residual scan, pairwise 1.32x, same run).
MAX_PAIRWISE_WIDTH = 64


def pairwise_projection(rows: jax.Array) -> jax.Array:
    """The projection onto the simplex of every row without a sort: z_i is in the support iff
    1 + k_i z_i > S_i, k_i = #{j : z_j >= z_i}, S_i = sum_{j : z_j >= z_i} z_j (tied entries
    are in or out together); tau = (sum of the support - 1) / |support|, a = max(z - tau, 0).
    O(H^2) per row, elementwise operations and reductions that XLA fuses."""
    above = rows[..., None, :] >= rows[..., :, None]  # [..., i, j]: z_j >= z_i
    count = jnp.sum(above, axis=-1).astype(rows.dtype)
    total = jnp.sum(jnp.where(above, rows[..., None, :], 0.0), axis=-1)
    support = 1.0 + count * rows > total
    size = jnp.sum(support, axis=-1, keepdims=True).astype(rows.dtype)
    tau = (jnp.sum(jnp.where(support, rows, 0.0), axis=-1, keepdims=True) - 1.0) / size
    return jnp.maximum(rows - tau, 0.0)


@jax.custom_jvp
def _project_rows(rows: jax.Array) -> jax.Array:
    """The projection onto the simplex of every row of a 2-D array: pairwise up to
    :data:`MAX_PAIRWISE_WIDTH` entries, else ``optax.projections.projection_simplex``."""
    if rows.shape[-1] <= MAX_PAIRWISE_WIDTH:
        return pairwise_projection(rows)
    return jax.vmap(projection_simplex)(rows)


@_project_rows.defjvp
def _project_rows_jvp(primals, tangents):
    """da = s * (dz - <s, dz> / |s|), s = [a > 0]: optax's rule for its projection (the
    convention of :func:`mhc_spec.projections.sparsemax_vjp`), except that a row with a
    single support entry gets exactly 0. There a = e_i does not depend on z, but XLA fuses
    the rule with what produced dz (e.g. the gate times the upstream gradient) into a fused
    multiply-add, so dz - dz / 1 comes out as the product's rounding error (~1e-7 in float32), which
    Adam turns into steps of the size of the learning rate on logits that do nothing."""
    (rows,), (tangent,) = primals, tangents
    a = _project_rows(rows)
    support = (a > 0).astype(tangent.dtype)
    size = jnp.sum(support, axis=-1, keepdims=True)
    centred = support * (tangent - jnp.sum(support * tangent, axis=-1, keepdims=True) / size)
    return a, jnp.where(size > 1, centred, 0.0)


def sparsemax(z: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """a = argmin_{a in simplex} ||a - z||^2 along the last axis, over the ``mask``ed entries
    (the others get exactly 0).

    The projection is :func:`pairwise_projection` per row (optax's
    ``projection_simplex`` for rows wider than :data:`MAX_PAIRWISE_WIDTH`). Its JVP,
    :func:`_project_rows_jvp`, uses the support s = [a > 0] (J = diag(s) - s s^T / |s|, so
    at a support change the zero entry gets no gradient), the convention of
    :func:`mhc_spec.projections.sparsemax_vjp` and of optax, and makes single-support rows
    exactly 0.
    Rows are shifted by their (available) maximum first: the projection is shift-invariant,
    and huge logits stay exact.
    """
    if mask is None:
        shifted = z - jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    else:
        lowest = jnp.finfo(z.dtype).min
        top = jnp.max(jnp.where(mask, z, lowest), axis=-1, keepdims=True)
        shifted = jnp.where(mask, z - jax.lax.stop_gradient(top), _SPARSEMAX_FILL)
    # projection_simplex computes 1 / |support| in the default float dtype, so with
    # jax_enable_x64 a float32 row would come back float64 (and its custom JVP fails):
    # project in the wider of the two and cast back.
    rows = shifted.reshape(-1, shifted.shape[-1])
    wide = jnp.promote_types(rows.dtype, jnp.result_type(float))
    projected = _project_rows(rows.astype(wide)).astype(rows.dtype)
    return projected.reshape(shifted.shape)


def masked_softmax(z: jax.Array, mask: jax.Array) -> jax.Array:
    """a_j = exp(z_j) / sum_{k in mask} exp(z_k) on the mask, exactly 0 elsewhere.

    A row with one available entry is the constant 1 there, selected rather than computed,
    so that its logit's gradient is exactly 0 (see :func:`_project_rows_jvp`)."""
    a = jax.nn.softmax(jnp.where(mask, z, 0.0), axis=-1, where=mask)
    single = jnp.sum(mask, axis=-1, keepdims=True) == 1
    return jnp.where(single, mask.astype(a.dtype), a)


def project(config: MHCConfig, theta: jax.Array | None, mask: jax.Array) -> jax.Array:
    """Padded weights A = P(theta) of rows whose available columns are ``mask``.

    residual: e_{H-1};  hc: theta on the mask;  mhc: sparsemax(theta/tau), softmax(theta/tau)
    or eps * e_{H-1} + (1 - eps) * sparsemax(theta/tau), all restricted to the mask.
    """
    newest = (jnp.arange(mask.shape[-1]) == mask.shape[-1] - 1).astype(jnp.float32)
    if config.mode == "residual":
        return jnp.broadcast_to(newest, mask.shape)
    z = theta.astype(coefficient_dtype(theta.dtype))
    if config.mode == "hc":
        return jnp.where(mask, z, 0.0)
    scaled = z / config.temperature
    if config.constraint == "softmax":
        return masked_softmax(scaled, mask)
    a = sparsemax(scaled, mask)
    if config.constraint == "identity":
        a = config.epsilon * newest.astype(a.dtype) + (1.0 - config.epsilon) * a
    return a


def gate_values(config: MHCConfig, gamma: jax.Array | None, depth: int) -> jax.Array:
    """g_l = sigmoid(gamma_l) with gating, else 1."""
    if gamma is None or not config.gating:
        return jnp.ones((depth,), jnp.float32)
    return jax.nn.sigmoid(gamma.astype(coefficient_dtype(gamma.dtype)))
