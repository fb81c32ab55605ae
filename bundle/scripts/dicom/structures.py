"""Structures read from RTSTRUCTs and SEGs, merged into one label map with the ids and precedence of scripts.labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from scripts.data.labels import LABELS, PRECEDENCE
from scripts.dicom.grid import slice_major


@dataclass(frozen=True)
class Roi:
    """One ROI (RTSTRUCT) or segment (SEG), its structure, and its mask on the CT grid."""

    name: str
    structure: str
    mask: np.ndarray


@dataclass
class StructureSet:
    """What one RTSTRUCT or SEG file gave: mapped ROIs, names no pattern maps, and ROIs it could not give (why)."""

    kind: str
    path: str
    rois: list[Roi] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two masks (1 for two empty masks)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def merge(sets: Sequence[StructureSet]) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Take each structure from the first set that gives it (the union of its ROIs there); later sets are compared.

    Returns the masks by structure and, for each, where it came from (`source`, `file`, `rois`) and how the
    later sets that also give it agree with it (`also_in`, with their Dice).
    """
    masks: dict[str, np.ndarray] = {}
    provenance: dict[str, dict] = {}
    for structure_set in sets:
        own: dict[str, np.ndarray] = {}
        names: dict[str, list[str]] = {}
        for roi in structure_set.rois:
            own[roi.structure] = own[roi.structure] | roi.mask if roi.structure in own else roi.mask
            names.setdefault(roi.structure, []).append(roi.name)
        for structure, mask in own.items():
            entry = {"source": structure_set.kind, "file": structure_set.path, "rois": names[structure]}
            if structure in masks:
                provenance[structure]["also_in"].append({**entry, "dice": round(dice(mask, masks[structure]), 4)})
            else:
                masks[structure] = mask
                provenance[structure] = {**entry, "also_in": []}
    return masks, provenance


def label_map(masks: dict[str, np.ndarray], shape: Sequence[int]) -> np.ndarray:
    """One uint8 id per voxel (scripts.labels), the earlier structure of PRECEDENCE winning where masks overlap."""
    label = slice_major(tuple(shape), np.uint8)
    for structure in reversed(PRECEDENCE):
        if structure in masks:
            np.copyto(label, LABELS[structure], where=masks[structure])
    return label
