"""Inputs of the evaluations: datalist splits, reference folders, sample folders, samples onto the working grid, and volumes stacked into one batch."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
import torch
from monai.data import load_decathlon_datalist
from monai.transforms import Compose, Spacingd, Transform
from monai.utils import convert_to_tensor

from scripts.data.datalist import SPLITS
from scripts.evaluation.quality import sample_files
from scripts.transforms import CropToLungBoxd, RemoveTabled

DATALIST = "datalist.json"
#: The preprocessing steps that place a scan on the working grid; a volume already on it skips them.
PLACING_STEPS = (RemoveTabled, Spacingd, CropToLungBoxd)


def datalist_items(folder: Path) -> list[dict]:
    """Every case of `folder/datalist.json` (as `phantoms` or `ingest` write it), all splits, paths made absolute."""
    splits = json.loads((folder / DATALIST).read_text())
    # MONAI's loader fails on an empty split (a datalist written with no test share has "test": []).
    return [
        item
        for split in SPLITS
        if splits.get(split)
        for item in load_decathlon_datalist(str(folder / DATALIST), True, split)
    ]


def reference_items(reference_dir: str | Path) -> list[dict]:
    """Reference CTs: every case of `reference_dir/datalist.json` (as `phantoms` or `ingest` write it), else every `*.nii.gz` in it."""
    folder = Path(reference_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"reference_dir not found: {folder}")
    if (folder / DATALIST).is_file():
        items = datalist_items(folder)
    else:
        items = [{"image": str(p), "case": p.name.removesuffix(".nii.gz")} for p in sorted(folder.glob("*.nii.gz"))]
    if not items:
        raise ValueError(f"no reference CTs in {folder}: it has neither a {DATALIST} with cases nor *.nii.gz files")
    return items


def volume_grid(path: str | Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Voxels and spacing (mm) per RAS axis of a 3D NIfTI, from its header; an error naming the file when it is not one."""
    try:
        image = nib.load(str(path))
    except nib.filebasedimages.ImageFileError as error:
        raise ValueError(f"{path}: expected a 3D CT volume as NIfTI, but it is not a NIfTI file ({error})") from error
    if len(image.shape) != 3:
        raise ValueError(f"{path}: expected a 3D CT volume, got shape {image.shape}")
    axes = nib.orientations.io_orientation(image.affine)[:, 0].astype(int)  # the RAS axis of each voxel axis
    shape, spacing = np.empty(3, int), np.empty(3)
    shape[axes], spacing[axes] = image.shape, np.sqrt((np.asarray(image.affine)[:3, :3] ** 2).sum(0))
    return tuple(int(n) for n in shape), spacing


def sample_items(samples_dir: str | Path) -> list[dict]:
    """The CTs to score, each checked to be a 3D NIfTI: a data set folder's cases (its labels left out), else its `*_ct.nii.gz` files.

    A sample is scored on its CT alone, so real CTs from a data set take the path synthetic ones take.
    """
    folder = Path(samples_dir)
    if (folder / DATALIST).is_file():
        items = [{"image": item["image"], "case": case_name(item)} for item in datalist_items(folder)]
    else:
        items = [{"image": str(p), "case": p.name} for p in sample_files(folder)]
    for item in items:
        volume_grid(item["image"])
    return items


class SampleToGrid(Transform):
    """A sample onto the working grid through the preprocessing chain; one already on the grid (as the sampler writes it) skips the steps that place a scan.

    Those steps would re-centre a synthetic CT on its lungs and clear what lies outside its body,
    hiding the failures (lungs out of place, debris) that its score should show.

    Args:
        preprocessing: the bundle's preprocessing chain (a label-free item takes its lungs from HU).
        image_size, spacing_mm: the working grid.
        spacing_tolerance_mm: how far a file's spacing may lie from `spacing_mm` for it to count as on the grid.
    """

    def __init__(
        self,
        preprocessing: Compose,
        image_size: Sequence[int],
        spacing_mm: Sequence[float],
        spacing_tolerance_mm: float = 1e-3,
    ) -> None:
        self.preprocessing = preprocessing
        self.on_grid = Compose([t for t in preprocessing.flatten().transforms if not isinstance(t, PLACING_STEPS)])
        self.image_size, self.spacing_mm = tuple(int(n) for n in image_size), np.asarray(spacing_mm, float)
        self.spacing_tolerance_mm = spacing_tolerance_mm

    def __call__(self, item: Mapping) -> dict:
        shape, spacing = volume_grid(item["image"])
        on_grid = shape == self.image_size and np.allclose(spacing, self.spacing_mm, atol=self.spacing_tolerance_mm)
        return (self.on_grid if on_grid else self.preprocessing)(dict(item))


def case_name(item: dict) -> str:
    """A case's name: its datalist `case` (without a folder), else its image file's name."""
    case = item.get("case")
    return Path(str(case)).name if case else Path(str(item["image"].meta.get("filename_or_obj", "?"))).name


class StackedImages(NamedTuple):
    """Volumes as one batch (N, 1, X, Y, Z) and their names, in the same order."""

    images: torch.Tensor
    names: list[str]


def stack_images(dataset: Iterable[dict], expected: Sequence[int], what: str) -> StackedImages:
    """The `image` of every item as one batch (N, 1, X, Y, Z), and the items' names; an error naming a file of another shape."""
    images, names = [], []
    for item in dataset:
        image = item["image"]
        name = case_name(item)
        if tuple(image.shape[1:]) != tuple(expected):
            raise ValueError(
                f"{what} {name} has shape {tuple(image.shape[1:])} after loading, expected {tuple(expected)}"
            )
        images.append(convert_to_tensor(image, dtype=torch.float32, track_meta=False))
        names.append(name)
    if not images:
        raise ValueError(f"no {what} volumes")
    return StackedImages(torch.stack(images), names)
