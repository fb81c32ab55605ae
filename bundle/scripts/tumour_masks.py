"""The tumour mask a user asks for, on the working grid: from a NIfTI file, or from a centre and a diameter.

The working grid is the diffusion model's grid (`image_size`, `image_spacing_mm` in its record).
A mask file may have any geometry: it is resampled by world coordinates into a working-grid box
centred on the file's own volume centre, and the outputs keep that box's affine. A mask taken from
`python -m scripts preprocess` or from a generated sample has exactly that grid, so it maps voxel
for voxel. A centre is given in the output's world frame, whose origin is the volume centre.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from scripts.volumes import centred_affine

MIN_DIAMETER_MM, MAX_DIAMETER_MM = 5.0, 100.0


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


def mask_from_centre(
    record: dict, centre_mm: Sequence[float], diameter_mm: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded irregular tumour of `diameter_mm` at `centre_mm` (RAS, origin at the volume centre), with its affine."""
    if not MIN_DIAMETER_MM <= float(diameter_mm) <= MAX_DIAMETER_MM:
        raise ValueError(f"tumor_diameter_mm must be between {MIN_DIAMETER_MM} and {MAX_DIAMETER_MM}, got {diameter_mm}")
    if centre_mm is None or len(centre_mm) != 3:
        raise ValueError(f"tumor_center_mm must be three numbers (x, y, z in mm), got {centre_mm}")
    shape = tuple(record["image_size"])
    affine = centred_affine(shape, record["image_spacing_mm"])
    half_extent = 0.5 * np.asarray(shape) * np.asarray(record["image_spacing_mm"])
    if np.any(np.abs(np.asarray(centre_mm, float)) + diameter_mm / 2.0 > half_extent):
        raise ValueError(f"tumor_center_mm {list(centre_mm)} with diameter {diameter_mm} mm leaves the volume (half extent {half_extent.tolist()} mm)")
    rng = np.random.default_rng(seed)
    mask = irregular_blob(grid_points(shape, affine), record["image_spacing_mm"], centre_mm, diameter_mm, rng)
    return mask.astype(np.uint8), affine


def read_binary_mask(path: str | Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The NIfTI image at `path` and its voxels, checked to be a non-empty 3D binary (0/1) mask."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask: no file at {path}")
    image = nib.load(path)
    data = np.asanyarray(image.dataobj)
    values = np.unique(data)
    if data.ndim != 3 or not set(values.tolist()) <= {0, 1}:
        raise ValueError(f"mask {path} must be a 3D binary (0/1) volume; it has shape {data.shape} and values {values[:10].tolist()}")
    if not values.any():
        raise ValueError(f"mask {path} is empty")
    return image, data


def resample_mask(data: np.ndarray, affine: np.ndarray, grid_affine: np.ndarray, shape: Sequence[int], name: str) -> np.ndarray:
    """Binary `data` placed by `affine`, resampled (nearest) by world coordinates onto a grid; refused if it leaves it.

    `name` (the file or request parameter) goes into the error messages.
    """
    source_voxels = np.linalg.solve(affine, grid_affine)  # grid voxel -> mask voxel
    resampled = ndimage.affine_transform(data.astype(np.uint8), source_voxels[:3, :3], source_voxels[:3, 3], tuple(shape), order=0)
    foreground = np.argwhere(data > 0)
    in_grid = np.linalg.solve(grid_affine, affine)[:3] @ np.c_[foreground, np.ones(len(foreground))].T
    spacing = np.sqrt((grid_affine[:3, :3] ** 2).sum(0)).round(3).tolist()
    if np.any(in_grid < -0.5) or np.any(in_grid > np.asarray(shape)[:, None] - 0.5):
        raise ValueError(f"mask {name} extends beyond the working grid ({list(shape)} voxels of {spacing} mm)")
    if not resampled.any():
        raise ValueError(f"mask {name} vanishes on the working grid ({spacing} mm voxels): it is smaller than a voxel")
    return resampled


def mask_from_file(record: dict, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The binary mask in NIfTI `path` resampled into a working grid centred on the file's volume, with that grid's affine."""
    image, data = read_binary_mask(path)
    shape = tuple(record["image_size"])
    centre = image.affine[:3, :3] @ ((np.asarray(data.shape) - 1) / 2.0) + image.affine[:3, 3]
    affine = centred_affine(shape, record["image_spacing_mm"])
    affine[:3, 3] += centre
    return resample_mask(data, image.affine, affine, shape, str(path)).astype(np.uint8), affine


def requested_mask(
    record: dict,
    mask: str | None = None,
    tumor_center_mm: Sequence[float] | None = None,
    tumor_diameter_mm: float = 30.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The tumour mask of a conditioned request: from `mask` (a file) or from `tumor_center_mm` and its diameter."""
    if (mask is None) == (tumor_center_mm is None):
        raise ValueError("give either mask (a NIfTI file) or tumor_center_mm (with tumor_diameter_mm), not both or neither")
    if mask is not None:
        return mask_from_file(record, mask)
    return mask_from_centre(record, tumor_center_mm, tumor_diameter_mm, seed)
