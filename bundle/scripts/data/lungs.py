"""The lungs of a label map split into the patient's left and right lung, as planning systems name them apart.

Sides come from world coordinates (the array's affine), so any voxel order works: patient left is +x in RAS.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from scripts.data.labels import LABELS

#: Share of the lung voxels each of the two largest connected components needs to count as a lung of its own.
MIN_LUNG_FRACTION = 0.1


def split_lungs(
    lungs: np.ndarray,
    affine_ras: np.ndarray,
    midline_x_mm: float | None = None,
    min_fraction: float = MIN_LUNG_FRACTION,
) -> tuple[np.ndarray, np.ndarray]:
    """The (left, right) lung of the binary `lungs` on a grid placed by `affine_ras`; every lung voxel goes to one side.

    When the two largest 3D connected components each hold at least `min_fraction` of the lung voxels, the one whose
    centroid lies further to the patient's left (+x) is the left lung and the other the right; smaller pieces go to
    the side of the midline their centroid lies on. Otherwise (lungs fused at the anterior junction, or one piece)
    the voxels are cut at the midline: world x `midline_x_mm` (such as the spinal cord's centre) when given, else the
    lungs' own centre of mass in x.
    """
    left, right = np.zeros(lungs.shape, bool), np.zeros(lungs.shape, bool)
    voxels = np.nonzero(lungs)
    if not voxels[0].size:
        return left, right
    x = affine_ras[0, :3] @ np.asarray(voxels, np.float64) + affine_ras[0, 3]
    midline = float(x.mean()) if midline_x_mm is None else float(midline_x_mm)
    components, count = ndimage.label(lungs)
    piece = components[voxels]
    sizes = np.bincount(piece, minlength=count + 1)
    centroid_x = np.bincount(piece, weights=x, minlength=count + 1) / np.maximum(sizes, 1)
    largest = np.argsort(sizes[1:])[::-1][:2] + 1
    if count >= 2 and sizes[largest].min() >= min_fraction * x.size:
        is_left = centroid_x > midline
        is_left[largest] = largest == largest[np.argmax(centroid_x[largest])]
        on_left = is_left[piece]
    else:
        on_left = x > midline
    left[voxels], right[voxels] = on_left, ~on_left
    return left, right


def midline_x_mm(label: np.ndarray, affine_ras: np.ndarray) -> float | None:
    """World x (RAS mm) of the spinal cord's centre of mass in a label map, else of the body's: the patient's midline."""
    for centre in (label == LABELS["spinal_cord"], label > 0):
        if centre.any():
            return float(affine_ras[0, :3] @ np.mean(np.nonzero(centre), axis=1) + affine_ras[0, 3])
    return None


def split_label_lungs(label: np.ndarray, affine_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The left and right lung of a label map, cut at its midline where the lungs are one piece, so that a single lung
    stays on its own side."""
    return split_lungs(label == LABELS["lungs"], affine_ras, midline_x_mm(label, affine_ras))
