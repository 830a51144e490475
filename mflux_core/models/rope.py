"""FLUX.1 rotary position embedding over several position axes (diffusers' FluxPosEmbed).

Each token has one position per axis (FLUX.1: (image index, row, column)); axis i rotates
`axes_dims[i]` channels of every attention head, in consecutive (real, imaginary) pairs.
The tables depend only on the position ids, so a caller computes them once per resolution
and passes them to every step.
"""

import mlx.core as mx
import numpy as np

from mflux_core.models.kernels import fused

ROPE_THETA = 10000.0


def rope_tables(ids, axes_dims: tuple[int, ...], theta: float = ROPE_THETA) -> tuple[mx.array, mx.array]:
    """Position ids (S, n_axes) -> (cos, sin) tables, each (S, head_dim // 2, 2), for apply_rope.

    Angles are computed in float64, as diffusers does, then stored as float32. The sin table
    carries the rotation's signs, (-sin, +sin) per pair, so apply_rope is one multiply-add.
    """
    positions = np.asarray(ids, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != len(axes_dims):
        raise ValueError(f"Position ids must have shape (tokens, {len(axes_dims)}), got {positions.shape}.")
    angles = []
    for axis, dim in enumerate(axes_dims):
        frequencies = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
        angles.append(np.outer(positions[:, axis], frequencies))
    angles = np.concatenate(angles, axis=1)
    cos = np.cos(angles).astype(np.float32)
    sin = np.sin(angles).astype(np.float32)
    return mx.array(np.stack([cos, cos], axis=-1)), mx.array(np.stack([-sin, sin], axis=-1))


@fused
def apply_rope(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """Rotate each (real, imaginary) channel pair of x (..., S, head_dim) by its token's angles.

    (a, b) -> (a cos - b sin, b cos + a sin): the pairs times cos plus the swapped pairs times
    the signed sin table. Computed in the tables' dtype and returned in x's, in one fused pass.
    """
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    rotated = pairs * cos + pairs[..., ::-1] * sin
    return rotated.reshape(x.shape).astype(x.dtype)
