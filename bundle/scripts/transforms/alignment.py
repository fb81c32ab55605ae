"""Anatomical alignment: crop or pad every CT to the same physical box, centred on the lungs.

Scans start and stop at different places (chin or shoulders, above or below the diaphragm);
centring a fixed box on the lungs puts apex and diaphragm at the same place of the working grid
for every case. The lungs come from the label map when it has them, else from the HU values.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from scipy import ndimage

from scripts.data.labels import LABELS, TUMOR_IDS

logger = logging.getLogger(__name__)

#: Label ids that lie inside the lungs' envelope.
LUNG_IDS = (LABELS["lungs"], *TUMOR_IDS)


def lungs_from_hu(
    hu: np.ndarray,
    spacing: Sequence[float],
    threshold_hu: float = -400.0,
    airway_mm: float = 10.0,
    min_fraction: float = 0.1,
) -> np.ndarray:
    """Lung mask of a table-free RAS CT: air enclosed by tissue in its axial slice, largest 3D parts.

    An opening of `airway_mm` removes the trachea and main bronchi, which would stretch the
    lungs' extent up into the neck.
    """
    air = hu < threshold_hu
    enclosed = np.zeros_like(air)
    for k in range(air.shape[2]):
        enclosed[:, :, k] = ndimage.binary_fill_holes(~air[:, :, k]) & air[:, :, k]
    core = ndimage.distance_transform_edt(enclosed, sampling=spacing) > airway_mm
    enclosed &= ndimage.distance_transform_edt(~core, sampling=spacing) <= airway_mm
    parts, n = ndimage.label(enclosed)
    if n == 0:
        return enclosed
    sizes = np.bincount(parts.ravel())[1:]
    return np.isin(parts, np.flatnonzero(sizes >= min_fraction * sizes.max()) + 1)


def box_start(lungs: np.ndarray, affine: np.ndarray, box_mm: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """First voxel (may be negative) and size in voxels of a `box_mm` box centred on the lungs' bounding box."""
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    size = np.round(np.asarray(box_mm, float) / spacing).astype(int)
    where = np.argwhere(lungs)
    centre = (where.min(0) + where.max(0)) / 2.0 if len(where) else (np.asarray(lungs.shape) - 1) / 2.0
    return np.round(centre - (size - 1) / 2.0).astype(int), size


def crop_or_pad(image: torch.Tensor, start: np.ndarray, size: np.ndarray, value: float) -> MetaTensor:
    """The `size` voxels of channel-first `image` from `start`, padded with `value` outside it; affine follows."""
    spatial = np.asarray(image.shape[1:])
    lo, hi = np.maximum(start, 0), np.minimum(start + size, spatial)
    cropped = image[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    before, after = lo - start, (start + size) - hi
    pad = [int(p) for pair in zip(before[::-1], after[::-1]) for p in pair]
    out = F.pad(torch.as_tensor(cropped), pad, value=value)
    affine = torch.as_tensor(np.asarray(image.affine), dtype=torch.float64).clone()
    affine[:3, 3] += affine[:3, :3] @ torch.as_tensor(start, dtype=torch.float64)
    meta = dict(getattr(image, "meta", {}))
    meta.pop("affine", None)
    return MetaTensor(out, affine=affine, meta=meta)


class CropToLungBoxd(MapTransform):
    """Crop or pad channel-first RAS volumes to a `box_mm` box centred on the lungs.

    Args:
        keys: volumes to crop (the CT and, when present, the label map), all on one grid.
        box_mm: physical size of the box.
        image_key: the CT in HU, used for the lungs when the label map has none.
        label_key: the label map, whose lung and tumor ids give the lungs when present.
        pad_values: value to pad each key with outside the scan (air for the CT, background for labels).
    """

    def __init__(
        self,
        keys: KeysCollection,
        box_mm: Sequence[float],
        image_key: str = "image",
        label_key: str = "label",
        pad_values: Mapping[str, float] | None = None,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.box_mm, self.image_key, self.label_key = list(box_mm), image_key, label_key
        self.pad_values = dict(pad_values or {image_key: -1000.0})

    def lungs(self, d: Mapping[Hashable, torch.Tensor]) -> np.ndarray:
        """The lung mask of a case: label map first, HU otherwise."""
        if self.label_key in d:
            lungs = np.isin(np.asarray(d[self.label_key][0]), LUNG_IDS)
            if lungs.any():
                return lungs
        image = d[self.image_key]
        return lungs_from_hu(np.asarray(image[0]), np.sqrt((np.asarray(image.affine)[:3, :3] ** 2).sum(0)))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        lungs = self.lungs(d)
        affine = np.asarray(d[self.image_key].affine)
        start, size = box_start(lungs, affine, self.box_mm)
        where = np.argwhere(lungs)
        if len(where) == 0 or np.any(where.max(0) - where.min(0) + 1 > size):
            name = d[self.image_key].meta.get("filename_or_obj", "the image")
            logger.warning("lungs of %s do not fit the %s mm box (or none were found)", name, self.box_mm)
        for key in self.key_iterator(d):
            d[key] = crop_or_pad(d[key], start, size, self.pad_values.get(key, 0.0))
        return d
