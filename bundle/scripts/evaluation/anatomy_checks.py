"""Anatomical plausibility of a synthetic patient's structures: what a physicist checks before planning on it.

Each check names what is wrong: a lung missing on one side, a heart not between the lungs, a spinal
cord not behind the heart, a requested GTV that touches no lung. The checks read world coordinates
(RAS: +x patient left, +y anterior), so they hold for any voxel order.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from scripts.data.labels import LABELS
from scripts.data.lungs import split_label_lungs


def centroid_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The world (RAS mm) centre of a non-empty mask."""
    return (affine @ [*np.argwhere(mask).mean(0), 1.0])[:3]


def structure_problems(label: np.ndarray, affine: np.ndarray, tumor: bool = False) -> list[str]:
    """What makes the label map implausible, as sentences; empty when it passes every check."""
    masks = {name: label == LABELS[name] for name in ("lungs", "heart", "spinal_cord", "gtv_1")}
    left, right = split_label_lungs(label, affine)
    problems = [f"no {side} lung" for side, lung in (("left", left), ("right", right)) if not lung.any()]
    problems += [f"no {name.replace('_', ' ')}" for name in ("heart", "spinal_cord") if not masks[name].any()]
    if problems:
        return problems
    x_left, x_right = centroid_mm(left, affine)[0], centroid_mm(right, affine)[0]
    heart, cord = centroid_mm(masks["heart"], affine), centroid_mm(masks["spinal_cord"], affine)
    if not x_right < heart[0] < x_left:
        problems.append(
            f"heart at x {heart[0]:.0f} mm is not between the lungs (right {x_right:.0f}, left {x_left:.0f})"
        )
    if not cord[1] < heart[1]:
        problems.append(f"spinal cord at y {cord[1]:.0f} mm is not posterior to the heart (y {heart[1]:.0f} mm)")
    if tumor and not (ndimage.binary_dilation(masks["gtv_1"], iterations=1) & (masks["lungs"])).any():
        problems.append("the GTV touches no lung")
    return problems
