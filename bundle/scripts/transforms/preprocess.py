"""Apply the bundle's preprocessing chain (configs/common.json) to one case and write what the networks see."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scripts.bundle_config import load_bundle_config
from scripts.data.grid import network_grid
from scripts.data.volumes import check_writable, to_hu, write_nifti

logger = logging.getLogger(__name__)


def preprocessing_chain(grid: int | Sequence[int] | None = None) -> tuple:
    """The preprocessing Compose of `configs/common.json` and its HU window, on `grid` (a cube or three sizes) if given.

    A grid the default networks cannot take is refused by `scripts.data.network_grid`, naming `image_size`.
    """
    parser = load_bundle_config(["common.json"], {"grid_size": grid} if grid is not None else None)
    network_grid(*(parser.get_parsed_content(k) for k in ("grid_size", "autoencoder_channels", "diffusion_channels")))
    return parser.get_parsed_content("preprocessing"), parser.get_parsed_content("hu_window")


def preprocess_case(
    image: str, out: str, label: str | None = None, grid: int | Sequence[int] | None = None, overwrite: bool = False
) -> list[Path]:
    """Write `out/ct.nii.gz` (HU, int16) and, with `label`, `out/label.nii.gz`, on the working grid with its true affine.

    Args:
        image: CT NIfTI in HU (any orientation and spacing).
        out: output folder.
        label: label map NIfTI on the CT's grid (optional); it also places the lung box.
        grid: voxels per side of the working grid, or three sizes such as [512, 512, 128] (default: the configs' grid_size).
        overwrite: replace existing outputs.
    """
    for name, path in (("image", image), ("label", label)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{name}: no file at {path}")
    targets = [Path(out) / "ct.nii.gz"] + ([Path(out) / "label.nii.gz"] if label else [])
    check_writable(targets, overwrite)
    chain, hu_window = preprocessing_chain(grid)
    data = chain({"image": image, "label": label} if label else {"image": image})
    ct = data["image"]
    written = [write_nifti(to_hu(ct[0], hu_window), np.asarray(ct.affine), targets[0])]
    if label:
        written.append(
            write_nifti(np.asarray(data["label"][0]).astype(np.uint8), np.asarray(data["label"].affine), targets[1])
        )
    logger.info("wrote %s", ", ".join(map(str, written)))
    return written
