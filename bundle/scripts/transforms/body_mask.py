"""Body mask and table removal for chest CT in HU.

Steps, each for a failure seen on real scans:
1. Tissue is everything above `threshold_hu`.
2. The table top is found as a flat plate: rows that hold, in nearly every slice, a long
   horizontal run of tissue with air above its ends (radiotherapy couch tops are flat, wider than
   the patient, and run the whole scan); everything at or behind its top surface is removed. This holds when the patient lies on the table directly or
   through a dense cushion, where morphology alone would keep the table.
3. An opening of `opening_mm` (by distance transforms) cuts thin bridges (blankets, tubes,
   cushion edges); connected parts smaller than `min_part` of the largest are dropped, so arms
   beside the body or above the head stay while debris goes.
4. Holes are filled slice by slice, so lungs and airways count as body although the airway
   opens to the outside in 3D.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage


def longest_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Length and end index (exclusive) of the longest run of True along axis 0, per (axis 1, axis 2) position."""
    run = np.zeros(mask.shape[1:], np.int32)
    best, end = run.copy(), run.copy()
    for i, row in enumerate(mask):
        run = (run + 1) * row
        longer = run > best
        best[longer], end[longer] = run[longer], i + 1
    return best, end


def table_top_row(
    tissue: np.ndarray,
    spacing: Sequence[float],
    min_width_mm: float = 300.0,
    min_slices: float = 0.9,
    clearance_mm: float = 15.0,
    max_gap_mm: float = 50.0,
) -> int | None:
    """Index along y (RAS: posterior is low) of the table's top surface, or None when no table is in view.

    A table row holds, in at least `min_slices` of the slices, a run of tissue at least
    `min_width_mm` long whose two ends have air above them for `clearance_mm`: a flat plate wider
    than what lies on it. A patient's own wide rows fail this, as the body above them is as wide.
    Table rows are grouped from the most posterior upwards across gaps up to `max_gap_mm` (the
    foam between a table's two shells); the top of the group is the table's top surface.
    """
    lengths, ends = longest_runs(tissue)  # (y, z)
    edge = max(1, int(round(10.0 / spacing[0])))
    above = max(1, int(round(clearance_mm / spacing[1])))
    plate = np.zeros(lengths.shape, bool)
    for j, k in zip(*np.nonzero(lengths * spacing[0] >= min_width_mm)):
        x1 = ends[j, k]
        x0 = x1 - lengths[j, k]
        rows = slice(j + 1, j + 1 + above)
        plate[j, k] = not tissue[x0 : x0 + edge, rows, k].any() and not tissue[x1 - edge : x1, rows, k].any()
    rows = np.flatnonzero(plate.mean(axis=1) >= min_slices)
    if rows.size == 0:
        return None
    top = rows[0]
    for row in rows[1:]:
        if (row - top) * spacing[1] > max_gap_mm:
            break
        top = row
    return int(top)


def body_mask(
    hu: np.ndarray,
    spacing: Sequence[float],
    threshold_hu: float = -400.0,
    opening_mm: float = 6.0,
    min_part: float = 0.02,
    table_min_width_mm: float = 300.0,
) -> np.ndarray:
    """Boolean body mask of a RAS-oriented CT volume `hu` (x, y, z) with voxel `spacing` in mm."""
    tissue = hu > threshold_hu
    table_top = table_top_row(tissue, spacing, min_width_mm=table_min_width_mm)
    if table_top is not None:
        tissue[:, : table_top + 1, :] = False
    core = ndimage.distance_transform_edt(tissue, sampling=spacing) > opening_mm
    parts, n = ndimage.label(core)
    if n == 0:
        return np.zeros_like(tissue)
    sizes = np.bincount(parts.ravel())[1:]
    kept = np.isin(parts, np.flatnonzero(sizes >= min_part * sizes.max()) + 1)
    body = tissue & (ndimage.distance_transform_edt(~kept, sampling=spacing) <= opening_mm + max(spacing))
    for k in range(body.shape[2]):
        body[:, :, k] = ndimage.binary_fill_holes(body[:, :, k])
    return body


class RemoveTabled(MapTransform):
    """Set everything outside the body to air (`air_hu`) in a channel-first RAS CT in HU."""

    def __init__(self, keys: KeysCollection, air_hu: float = -1000.0, **mask_kwargs: float) -> None:
        super().__init__(keys)
        self.air_hu, self.mask_kwargs = air_hu, mask_kwargs

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            spacing = [float(s) for s in np.sqrt((np.asarray(image.affine)[:3, :3] ** 2).sum(0))]
            inside = torch.as_tensor(body_mask(np.asarray(image[0]), spacing, **self.mask_kwargs))
            d[key] = torch.where(inside[None].to(image.device), image, torch.as_tensor(self.air_hu, dtype=image.dtype))
        return d
