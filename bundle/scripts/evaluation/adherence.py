"""Conditioning adherence: is the generated tumor where the mask asked for it?

Tumor-like tissue is segmented inside the generated lungs (the soft tissue within the lung
envelope that touches the mask) and compared with the requested mask: Dice, centroid distance,
the share of mask voxels that became soft tissue, their median HU (a solid tumor lies near 0 to
60 HU; strong guidance can overshoot to bone-bright values the share alone does not show), and
the share of the mask inside the lungs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from scripts.transforms.alignment import lungs_from_hu


def lung_envelope(hu: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """The lungs with everything they enclose (tumors, vessels), slice by slice."""
    lungs = lungs_from_hu(hu, spacing)
    return np.stack([ndimage.binary_fill_holes(lungs[:, :, k]) for k in range(hu.shape[2])], axis=2)


def tumor_adherence(
    hu: np.ndarray, mask: np.ndarray, spacing: Sequence[float], tissue_hu: float = -300.0
) -> dict[str, float | None]:
    """Per-sample adherence figures of a generated CT `hu` to the requested binary `mask` (same grid)."""
    mask = mask > 0
    if not mask.any():
        raise ValueError("the requested mask is empty")
    envelope = lung_envelope(hu, spacing)
    tissue = (hu > tissue_hu) & (envelope | mask)
    parts, _ = ndimage.label(tissue)
    touching = np.unique(parts[mask & (parts > 0)])
    found = np.isin(parts, touching[touching > 0])
    dice = 2.0 * (found & mask).sum() / (found.sum() + mask.sum())
    spacing = np.asarray(spacing, float)
    shift = (np.argwhere(found).mean(0) - np.argwhere(mask).mean(0)) * spacing if found.any() else None
    distance = float(np.linalg.norm(shift)) if shift is not None else None  # None: no tumor-like tissue at the mask
    return {
        "dice": float(dice),
        "centroid_distance_mm": distance,
        "mask_soft_tissue_fraction": float((hu[mask] > tissue_hu).mean()),
        "mask_median_hu": float(np.median(hu[mask])),
        "mask_in_lungs_fraction": float((envelope | found)[mask].mean()),
    }
