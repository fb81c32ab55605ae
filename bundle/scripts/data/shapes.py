"""Shape primitives shared by the phantoms and the tumor requests: smooth noise, wobbly blobs, grid coordinates."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: Sequence[float] | float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    return field / max(float(field.std()), 1e-6)


def irregular_blob(
    points: tuple[np.ndarray, np.ndarray, np.ndarray],
    spacing: Sequence[float],
    centre_mm: Sequence[float],
    diameter_mm: float,
    rng: np.random.Generator,
    irregularity: float = 0.2,
) -> np.ndarray:
    """A roughly spherical mask with a wobbly outline, on broadcastable world coordinates `points` (mm)."""
    x, y, z = points
    radius = diameter_mm / 2.0
    distance = np.sqrt((x - centre_mm[0]) ** 2 + (y - centre_mm[1]) ** 2 + (z - centre_mm[2]) ** 2) / radius
    shape = np.broadcast_shapes(x.shape, y.shape, z.shape)
    wobble = smooth_noise(rng, shape, [radius / 2.5 / s for s in spacing])
    return distance + irregularity * wobble <= 1.0


def grid_points(shape: Sequence[int], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable world coordinates (mm) of the voxel centres of an axis-aligned grid."""
    return tuple(  # type: ignore[return-value]
        (affine[axis, 3] + affine[axis, axis] * np.arange(n)).reshape([-1 if a == axis else 1 for a in range(3)])
        for axis, n in enumerate(shape[:3])
    )
