"""Network intensities to HU, and writing CT volumes as NIfTI without overwriting anything by accident."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch


def to_hu(image: torch.Tensor | np.ndarray, hu_window: Sequence[float]) -> np.ndarray:
    """Map [-1, 1] network intensities back to HU in `hu_window` (the inverse of the training scaling), as int16."""
    low, high = float(hu_window[0]), float(hu_window[1])
    image = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    hu = low + (np.clip(image, -1.0, 1.0) + 1.0) / 2.0 * (high - low)
    return np.round(hu).astype(np.int16)


def centred_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """RAS affine with `spacing` whose volume centre is the world origin."""
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = -0.5 * (np.asarray(shape[:3], float) - 1.0) * np.asarray(spacing, float)
    return affine


def check_writable(paths: Sequence[Path], overwrite: bool) -> None:
    """Refuse, naming them, to replace existing files unless `overwrite` is set."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"refusing to overwrite {existing}; choose another output_dir or set overwrite to true")


def write_nifti(volume: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Write `volume` with `affine` to `path` (a `.nii.gz`), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(volume, affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)
    return path
