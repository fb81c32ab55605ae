"""Real phantom volumes on the working grid, and the failures the thesis saw in its samples, made from them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

from scripts.data.volumes import centred_affine, to_hu, write_nifti
from scripts.transforms.alignment import LUNG_IDS
from scripts.transforms.preprocess import preprocessing_chain

AIR = -1000.0


def preprocessed_phantoms(root: Path, grid: int) -> list[tuple[np.ndarray, np.ndarray, list[float]]]:
    """(HU volume, lung mask, spacing) of every case folder under `root`, through the bundle's preprocessing."""
    chain, hu_window = preprocessing_chain(grid)
    cases = []
    for case in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        d = chain({"image": str(case / "ct.nii.gz"), "label": str(case / "label.nii.gz")})
        spacing = [float(s) for s in np.sqrt((np.asarray(d["image"].affine)[:3, :3] ** 2).sum(0))]
        lungs = np.isin(np.asarray(d["label"][0]), LUNG_IDS)
        cases.append((to_hu(d["image"][0], hu_window).astype(np.float32), lungs, spacing))
    return cases


def _shifted(volume: np.ndarray, axis: int, by: int) -> np.ndarray:
    """`volume` moved `by` voxels along `axis`, air coming in."""
    out = np.full_like(volume, AIR)
    src = [slice(None)] * 3
    dst = [slice(None)] * 3
    src[axis] = slice(max(0, -by), volume.shape[axis] - max(0, by))
    dst[axis] = slice(max(0, by), volume.shape[axis] - max(0, -by))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def white_noise(hu, lungs, spacing, rng):
    """Pure noise: every voxel drawn uniformly from the HU window."""
    return rng.uniform(-1000.0, 1000.0, hu.shape).astype(np.float32)


def smooth_noise(hu, lungs, spacing, rng):
    """Blotchy noise, as a decoder makes from a latent the diffusion model never denoised."""
    noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape), sigma=rng.uniform(0.8, 2.0))
    return np.clip(rng.uniform(-500.0, 0.0) + 600.0 * noise / noise.std(), -1000.0, 1000.0).astype(np.float32)


def air_only(hu, lungs, spacing, rng):
    """Air with at most a table under it (the thesis' third bad CT)."""
    out = np.full_like(hu, AIR) + rng.normal(0.0, 5.0, hu.shape).astype(np.float32)
    rows = int(rng.integers(2, hu.shape[1] // 4))
    half = int(round(200.0 / spacing[0]))
    centre = hu.shape[0] // 2
    out[max(0, centre - half) : centre + half, rows : rows + 2, :] = 250.0
    return out


def lungs_filled(hu, lungs, spacing, rng):
    """A body with no lungs: lung voxels become soft tissue."""
    out = hu.copy()
    out[lungs] = rng.normal(40.0, 15.0, int(lungs.sum()))
    return out


def body_shifted(hu, lungs, spacing, rng):
    """A body broken between slices: the slices above a random level move sideways by 50 to 90 mm."""
    level = int(rng.integers(hu.shape[2] // 3, 2 * hu.shape[2] // 3))
    by = int(round(rng.uniform(50.0, 90.0) / spacing[0])) * int(rng.choice([-1, 1]))
    out = hu.copy()
    out[:, :, level:] = _shifted(hu[:, :, level:], 0, by)
    return out


def body_gap(hu, lungs, spacing, rng):
    """A body missing for a slab of slices (25 to 50 mm) in the middle of the chest."""
    thick = max(2, int(round(rng.uniform(25.0, 50.0) / spacing[2])))
    start = int(rng.integers(hu.shape[2] // 3, 2 * hu.shape[2] // 3 - thick))
    out = hu.copy()
    out[:, :, start : start + thick] = AIR
    return out


def lungs_moved(hu, lungs, spacing, rng):
    """Lungs out of place: everything moves by 20 to 30% of the field of view along one axis."""
    axis = int(rng.integers(0, 3))
    by = int(round(rng.uniform(0.2, 0.3) * hu.shape[axis])) * int(rng.choice([-1, 1]))
    return _shifted(hu, axis, by)


CORRUPTIONS: dict[str, Callable] = {
    f.__name__: f for f in (white_noise, smooth_noise, air_only, lungs_filled, body_shifted, body_gap, lungs_moved)
}


def write_volumes(volumes: list[np.ndarray], spacing, folder: Path, prefix: str) -> list[Path]:
    """Write HU volumes as samples are written: `<prefix>_<i>_ct.nii.gz`, int16, centred affine."""
    return [
        write_nifti(
            np.round(v).astype(np.int16), centred_affine(v.shape, spacing), folder / f"{prefix}_{i:02d}_ct.nii.gz"
        )
        for i, v in enumerate(volumes)
    ]
