"""Blending a generated region into a patient's CT on its native grid, and the figures that say how well it sits.

The weight of the generated CT is 1 inside the tumor mask and falls to 0 at `margin_mm` from it along a raised cosine
(flat at both ends, so no edge shows where the blend starts or stops); farther out the patient's voxels are kept
exactly. Everything runs inside the box around the blend zone, so a 512 x 512 x N
CT costs what its tumor region costs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size (mm) along each voxel axis of an affine."""
    return np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(0))


def zone_box(mask: np.ndarray, affine: np.ndarray, margin_mm: float) -> tuple[slice, ...]:
    """The voxel box holding `mask` and everything within `margin_mm` of it (plus one voxel), clipped to the volume."""
    where = np.argwhere(mask)
    pad = np.ceil(float(margin_mm) / voxel_spacing(affine)).astype(int) + 1
    low = np.maximum(where.min(0) - pad, 0)
    high = np.minimum(where.max(0) + pad + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def blend_weights(mask: np.ndarray, spacing: Sequence[float], margin_mm: float) -> np.ndarray:
    """Weight of the generated CT per voxel: 1 in the mask, a raised cosine down to 0 at `margin_mm` outside it, 0 beyond."""
    if margin_mm <= 0:
        return mask.astype(np.float32)
    distance = ndimage.distance_transform_edt(~mask, sampling=spacing)
    return (0.5 * (1.0 + np.cos(np.pi * np.minimum(distance / float(margin_mm), 1.0)))).astype(np.float32)


def resample_into(volume: np.ndarray, affine: np.ndarray, target_affine: np.ndarray, shape: Sequence[int], origin):
    """`volume` (placed by `affine`) sampled trilinearly at the voxels of a `shape` box starting at voxel `origin` of a
    grid placed by `target_affine`; points outside `volume` take its nearest edge value."""
    box = np.eye(4)
    box[:3, 3] = origin
    to_source = np.linalg.solve(affine, target_affine @ box)
    return ndimage.affine_transform(
        volume.astype(np.float32), to_source[:3, :3], to_source[:3, 3], tuple(shape), order=1, mode="nearest"
    )


def blend(
    original: np.ndarray,
    affine: np.ndarray,
    mask: np.ndarray,
    generated: np.ndarray,
    generated_affine: np.ndarray,
    margin_mm: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The patient's CT with the generated CT blended in around `mask`, as int16, and the blend zone (weight > 0).

    `original` and `mask` share the native grid `affine`; `generated` lies on its own grid (`generated_affine`).
    """
    box = zone_box(mask, affine, margin_mm)
    weights = blend_weights(mask[box], voxel_spacing(affine), margin_mm)
    origin = [s.start for s in box]
    drawn = resample_into(generated, generated_affine, affine, weights.shape, origin)
    out = original.copy()
    region = original[box].astype(np.float32)
    out[box] = np.round(weights * drawn + (1.0 - weights) * region).astype(original.dtype)
    zone = np.zeros(original.shape, bool)
    zone[box] = weights > 0
    return out, zone


def boundary_step(volume: np.ndarray, zone: np.ndarray) -> float:
    """Mean absolute HU difference between face neighbours on either side of the blend zone's edge."""
    where = np.argwhere(zone)
    box = tuple(slice(max(int(a) - 1, 0), int(b) + 2) for a, b in zip(where.min(0), where.max(0)))
    volume, zone = volume[box], zone[box]
    steps = []
    for axis in range(3):
        ahead = [slice(None)] * 3
        behind = [slice(None)] * 3
        ahead[axis], behind[axis] = slice(1, None), slice(None, -1)
        crossing = zone[tuple(ahead)] != zone[tuple(behind)]
        difference = volume[tuple(ahead)].astype(np.float32) - volume[tuple(behind)].astype(np.float32)
        steps.append(np.abs(difference[crossing]))
    return float(np.concatenate(steps).mean())
