"""Where the synthetic volume sits in the user's world, and how points and labels of the user's CT map into it.

The rule (the same alignment the bundle's preprocessing gives every training case):
- The working frame is the box the bundle's preprocessing (`configs/common.json`: orient to RAS,
  remove the table, resample to the working spacing, crop `field_of_view_mm` centred on the lungs'
  bounding box, `scripts.transforms.alignment`) cuts from the user's CT. The synthetic CT is written with that
  box's affine, so in Slicer it overlays the user's CT with the lungs centred alike.
- A click or a label keeps its world position (RAS mm): equivalently, its millimetre offset from the
  centre of the user's lungs becomes the same offset from the centre of the synthetic lungs, which
  the model generates at the centre of its grid because every training case was centred so.
- A CT already on the working grid (shape and spacing of the model, RAS), such as a volume the
  product generated or `python -m scripts preprocess` wrote, is its own working frame: a clicked
  voxel is the same voxel of the result, and a label maps voxel for voxel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from lib.request_params import RequestError
from scripts.data.volumes import centred_affine

#: Finest spacing (mm) the voxel limit allows: a CT of the model's box at 1 mm is the largest image the app reads.
LIMIT_SPACING_MM = 1.0
LUNG_BOX, WORKING_GRID = "lung_box", "working_grid"


@dataclass(frozen=True)
class WorkingFrame:
    """The synthetic volume's grid in the user's world: `affine` maps its voxels to RAS mm."""

    affine: np.ndarray
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    rule: str  # LUNG_BOX or WORKING_GRID

    def to_centred_mm(self, world_mm: Sequence[float]) -> np.ndarray:
        """A world point in the frame's centred coordinates (origin at the volume centre), as scripts.tumor_masks takes it."""
        voxel = np.linalg.solve(self.affine, [*world_mm, 1.0])
        return (centred_affine(self.shape, self.spacing) @ voxel)[:3]


@dataclass(frozen=True)
class UserImage:
    """The header of the CT a request names: its voxel grid and affine (voxel -> RAS mm)."""

    path: Path
    shape: tuple[int, int, int]
    affine: np.ndarray

    def world(self, voxel: Sequence[float]) -> np.ndarray:
        """RAS mm of a voxel position (i, j, k) of this image."""
        return (self.affine @ [*voxel, 1.0])[:3]


def max_voxels(record: dict) -> int:
    """The most voxels an image or label may have: the model's field of view (`image_size` x `image_spacing_mm`) at 1 mm.

    A finer or larger CT holds nothing the model can use (it is resampled to the working grid) and costs
    memory and minutes: 512 x 512 x 256 voxels (just under this limit for a 448 x 448 x 352 mm box)
    took 39 s and 3.8 GB more; the old 512 x 512 x 1024 cap allowed 4x that.
    """
    box_mm = np.asarray(record["image_size"], float) * np.asarray(record["image_spacing_mm"], float)
    return int(np.prod(np.ceil(box_mm / LIMIT_SPACING_MM - 1e-6)))


def read_header(path: str | Path, name: str, voxel_limit: int) -> nib.Nifti1Image:
    """The NIfTI at a path the app resolved itself, refused (naming the request parameter) unless a 3D volume of
    at most `voxel_limit` voxels; only the header is read (a .nii.gz is not decompressed beyond it)."""
    try:
        image = nib.load(str(path))
    except Exception as error:  # any reader failure means the upload is not a NIfTI volume
        raise RequestError(name, f"is not a readable NIfTI volume ({type(error).__name__})") from error
    shape, affine = image.shape, image.affine
    if len(shape) != 3 or min(shape) < 1:
        raise RequestError(name, f"must be a 3D volume, got shape {list(shape)}")
    if int(np.prod(shape)) > voxel_limit:
        raise RequestError(
            name,
            f"has {list(shape)} voxels, more than this server's limit of {voxel_limit} (the model's field of view at 1 mm)",
            413,
        )
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise RequestError(name, "has no valid affine (voxel to world) in its header")
    return image


def user_image(path: str | Path, voxel_limit: int) -> UserImage:
    """The request's CT header, checked."""
    image = read_header(path, "image", voxel_limit)
    return UserImage(Path(path), tuple(int(n) for n in image.shape), np.asarray(image.affine, float))


def on_working_grid(image: UserImage, record: dict) -> bool:
    """Whether the CT already has the model's grid: same shape and spacing, RAS orientation."""
    spacing = np.sqrt((image.affine[:3, :3] ** 2).sum(0))
    return (
        image.shape == tuple(record["image_size"])
        and np.allclose(spacing, record["image_spacing_mm"], rtol=1e-4)
        and nib.aff2axcodes(image.affine) == ("R", "A", "S")
    )


def working_frame(image: UserImage, record: dict, preprocessing: Callable[[dict], dict]) -> WorkingFrame:
    """The working frame of the user's CT: its own grid when on the working grid, else the lung box preprocessing cuts."""
    shape, spacing = tuple(record["image_size"]), tuple(float(s) for s in record["image_spacing_mm"])
    if on_working_grid(image, record):
        return WorkingFrame(image.affine, shape, spacing, WORKING_GRID)
    ct = preprocessing({"image": str(image.path)})["image"]
    affine = np.asarray(ct.affine, float)
    if tuple(ct.shape[1:]) != shape or not np.allclose(np.sqrt((affine[:3, :3] ** 2).sum(0)), spacing, rtol=1e-4):
        raise RuntimeError(
            f"the bundle's preprocessing gives a {list(ct.shape[1:])} grid, the weights were trained on {list(shape)} of {list(spacing)} mm"
        )
    return WorkingFrame(affine, shape, spacing, LUNG_BOX)
