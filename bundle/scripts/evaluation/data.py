"""Inputs of the evaluations: datalist splits, reference folders, sample folders, and volumes stacked into one batch."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import torch
from monai.data import load_decathlon_datalist
from monai.utils import convert_to_tensor

from scripts.data.datalist import SPLITS
from scripts.evaluation.quality import sample_files

DATALIST = "datalist.json"


def reference_items(reference_dir: str | Path) -> list[dict]:
    """Reference CTs: every case of `reference_dir/datalist.json` (as `phantoms` or `ingest` write it), else every `*.nii.gz` in it."""
    folder = Path(reference_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"reference_dir not found: {folder}")
    if (folder / DATALIST).is_file():
        splits = json.loads((folder / DATALIST).read_text())
        # MONAI's loader fails on an empty split (a datalist written with no test share has "test": []).
        items = [
            item
            for split in SPLITS
            if splits.get(split)
            for item in load_decathlon_datalist(str(folder / DATALIST), True, split)
        ]
    else:
        items = [{"image": str(p), "case": p.name.removesuffix(".nii.gz")} for p in sorted(folder.glob("*.nii.gz"))]
    if not items:
        raise ValueError(f"no reference CTs in {folder}: it has neither a {DATALIST} with cases nor *.nii.gz files")
    return items


def sample_grid(samples_dir: str | Path) -> list[int]:
    """Voxels per axis of the synthetic CTs in `samples_dir` (on the working grid, as the sampler writes them)."""
    first = sample_files(samples_dir)[0]
    shape = nib.load(str(first)).shape
    if len(shape) != 3:
        raise ValueError(f"{first}: expected a 3D volume on the working grid, got shape {shape}")
    return [int(n) for n in shape]


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


def sample_items(samples_dir: str | Path) -> list[dict]:
    """Datalist-style items of the synthetic CTs in `samples_dir`, named by file."""
    return [{"image": str(p), "case": p.name} for p in sample_files(samples_dir)]
