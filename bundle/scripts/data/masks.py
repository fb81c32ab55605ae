"""Binary masks in NIfTI: read and check one, and resample it onto another grid by world coordinates."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage


def read_binary_mask(path: str | Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The NIfTI image at `path` and its voxels, checked to be a non-empty 3D binary (0/1) mask."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask: no file at {path}")
    image = nib.load(path)
    data = np.asanyarray(image.dataobj)
    values = np.unique(data)
    if data.ndim != 3 or not set(values.tolist()) <= {0, 1}:
        raise ValueError(
            f"mask {path} must be a 3D binary (0/1) volume; it has shape {data.shape} and values {values[:10].tolist()}"
        )
    if not values.any():
        raise ValueError(f"mask {path} is empty")
    return image, data


def resample_mask(
    data: np.ndarray,
    affine: np.ndarray,
    grid_affine: np.ndarray,
    shape: Sequence[int],
    name: str,
    grid: str = "the working grid",
) -> np.ndarray:
    """Binary `data` placed by `affine`, resampled (nearest) by world coordinates onto a grid; refused if it leaves it.

    `name` (the file or request parameter) and `grid` (what the grid is to the user) go into the error messages.
    """
    source_voxels = np.linalg.solve(affine, grid_affine)  # grid voxel -> mask voxel
    resampled = ndimage.affine_transform(
        data.astype(np.uint8), source_voxels[:3, :3], source_voxels[:3, 3], tuple(shape), order=0
    )
    foreground = np.argwhere(data > 0)
    in_grid = np.linalg.solve(grid_affine, affine)[:3] @ np.c_[foreground, np.ones(len(foreground))].T
    spacing = np.sqrt((grid_affine[:3, :3] ** 2).sum(0)).round(3).tolist()
    if np.any(in_grid < -0.5) or np.any(in_grid > np.asarray(shape)[:, None] - 0.5):
        raise ValueError(f"mask {name} extends beyond {grid} ({list(shape)} voxels of {spacing} mm)")
    if not resampled.any():
        raise ValueError(f"mask {name} vanishes on {grid} ({spacing} mm voxels): it is smaller than a voxel")
    return resampled
