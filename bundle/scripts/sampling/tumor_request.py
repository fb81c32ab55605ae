"""The tumor mask a user asks for, on the working grid: from a NIfTI file, or from a centre and a diameter.

The working grid is the diffusion model's grid (`image_size`, `image_spacing_mm` in its record).
A mask file may have any geometry: it is resampled by world coordinates into a working-grid box
centred on the file's own volume centre, and the outputs keep that box's affine. A mask taken from
`python -m scripts preprocess` or from a generated sample has exactly that grid, so it maps voxel
for voxel. A centre is given in the output's world frame, whose origin is the volume centre.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from scripts.data.masks import read_binary_mask, resample_mask
from scripts.data.shapes import grid_points, irregular_blob
from scripts.data.volumes import centred_affine

MIN_DIAMETER_MM, MAX_DIAMETER_MM = 5.0, 100.0


class TumorMask(NamedTuple):
    """A binary tumor mask on the working grid (uint8) and the affine that places it in the world."""

    mask: np.ndarray
    affine: np.ndarray


def mask_from_centre(record: dict, centre_mm: Sequence[float], diameter_mm: float, seed: int = 0) -> TumorMask:
    """A seeded irregular tumor of `diameter_mm` at `centre_mm` (RAS, origin at the volume centre), with its affine."""
    if not MIN_DIAMETER_MM <= float(diameter_mm) <= MAX_DIAMETER_MM:
        raise ValueError(
            f"tumor_diameter_mm must be between {MIN_DIAMETER_MM} and {MAX_DIAMETER_MM}, got {diameter_mm}"
        )
    if centre_mm is None or len(centre_mm) != 3 or not np.all(np.isfinite(np.asarray(centre_mm, float))):
        raise ValueError(f"tumor_center_mm must be three finite numbers (x, y, z in mm), got {centre_mm}")
    shape = tuple(record["image_size"])
    affine = centred_affine(shape, record["image_spacing_mm"])
    half_extent = 0.5 * np.asarray(shape) * np.asarray(record["image_spacing_mm"])
    if np.any(np.abs(np.asarray(centre_mm, float)) + diameter_mm / 2.0 > half_extent):
        raise ValueError(
            f"tumor_center_mm {list(centre_mm)} with diameter {diameter_mm} mm leaves the volume (half extent {half_extent.tolist()} mm)"
        )
    rng = np.random.default_rng(seed)
    mask = irregular_blob(grid_points(shape, affine), record["image_spacing_mm"], centre_mm, diameter_mm, rng)
    return TumorMask(mask.astype(np.uint8), affine)


def mask_from_file(record: dict, path: str | Path) -> TumorMask:
    """The binary mask in NIfTI `path` resampled into a working grid centred on the file's volume, with that grid's affine."""
    image, data = read_binary_mask(path)
    shape = tuple(record["image_size"])
    centre = image.affine[:3, :3] @ ((np.asarray(data.shape) - 1) / 2.0) + image.affine[:3, 3]
    affine = centred_affine(shape, record["image_spacing_mm"])
    affine[:3, 3] += centre
    return TumorMask(resample_mask(data, image.affine, affine, shape, str(path)).astype(np.uint8), affine)


def requested_mask(
    record: dict,
    mask: str | None = None,
    tumor_center_mm: Sequence[float] | None = None,
    tumor_diameter_mm: float = 30.0,
    seed: int = 0,
) -> TumorMask:
    """The tumor mask of a conditioned request: from `mask` (a file) or from `tumor_center_mm` and its diameter."""
    if (mask is None) == (tumor_center_mm is None):
        raise ValueError(
            "give either mask (a NIfTI file) or tumor_center_mm (with tumor_diameter_mm), not both or neither"
        )
    if mask is not None:
        return mask_from_file(record, mask)
    return mask_from_centre(record, tumor_center_mm, tumor_diameter_mm, seed)
