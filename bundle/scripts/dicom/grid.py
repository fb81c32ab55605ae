"""Voxel grids in DICOM patient coordinates (LPS millimetres) and their NIfTI (RAS) counterparts."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import nibabel as nib
import numpy as np

#: Flips x and y: DICOM's LPS patient frame to NIfTI's RAS world frame (and back; it is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Grid:
    """A CT's voxel grid: voxel (column, row, slice) to LPS mm through `affine_lps`, within one frame of reference."""

    shape: tuple[int, int, int]
    affine_lps: np.ndarray
    frame_of_reference: str

    @property
    def affine_ras(self) -> np.ndarray:
        """The same grid's NIfTI affine (voxel to RAS mm)."""
        return LPS_TO_RAS @ self.affine_lps

    @property
    def normal(self) -> np.ndarray:
        """Unit vector along which the slice index grows, in LPS."""
        axis = self.affine_lps[:3, 2]
        return axis / np.linalg.norm(axis)

    @cached_property
    def _inverse(self) -> np.ndarray:
        """LPS mm to voxel, computed once: readers map every contour and SEG frame through it."""
        return np.linalg.inv(self.affine_lps)

    def to_voxel(self, points_lps: np.ndarray) -> np.ndarray:
        """Continuous voxel coordinates (N, 3) of LPS points (N, 3)."""
        return np.asarray(points_lps, float) @ self._inverse[:3, :3].T + self._inverse[:3, 3]


def slice_major(shape: tuple[int, int, int], dtype) -> np.ndarray:
    """Zeros indexed (column, row, slice) but stored slice by slice, row by row, as DICOM and NIfTI store voxels.

    Writing one slice is then one contiguous block, and NIfTI writes the volume without reordering it.
    """
    return np.zeros(tuple(shape)[::-1], dtype).transpose(2, 1, 0)


def reorient(volume: np.ndarray, affine: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """Flip and permute voxel axes (no resampling) so they point along `axcodes` (e.g. "RAS" for a RAS affine)."""
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(tuple(axcodes))
    )
    moved = nib.orientations.apply_orientation(volume, transform)
    return moved, affine @ nib.orientations.inv_ornt_aff(transform, volume.shape)
