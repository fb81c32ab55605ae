"""Segmentation quality: per-structure Dice of the structure segmenter against reference label maps.

Structures are those a planning system gets: the body outline (External: every non-background
voxel), lungs, heart, esophagus, spinal cord and the primary GTV, each scored on the working grid.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from monai.data import load_decathlon_datalist

from scripts.bundle_config import load_bundle_config
from scripts.data.datalist import SPLITS
from scripts.data.labels import LABELS
from scripts.dicom.structures import dice

#: The structures scored, in the order the report lists them; "body" is the whole outline.
SCORED_STRUCTURES = ("body", "lungs", "heart", "esophagus", "spinal_cord", "gtv_1")


def structure_mask(label: np.ndarray, structure: str) -> np.ndarray:
    """The voxels of `structure` in a label map; the body is every labelled voxel (the external outline)."""
    return label > 0 if structure == "body" else label == LABELS[structure]


def structure_dice(predicted: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Dice per scored structure between two label maps on one grid."""
    return {s: dice(structure_mask(predicted, s), structure_mask(reference, s)) for s in SCORED_STRUCTURES}


def working_cases(
    datalist: str | Path, grid: int | list[int], splits: Sequence[str] = SPLITS
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, HU, label map) of each case of the datalist's `splits` on the working grid `grid` (stored preprocessing)."""
    chain = load_bundle_config(["common.json"], {"grid_size": grid}).get_parsed_content("stored_preprocessing")
    listed = json.loads(Path(datalist).read_text())
    for split in (s for s in splits if listed.get(s)):  # a datalist of a few cases may leave a split empty
        for item in load_decathlon_datalist(str(datalist), True, split):
            data = chain(item)
            yield Path(item["image"]).parent.name, np.asarray(data["image"][0]), np.asarray(data["label"][0])


def evaluate_segmentation(
    segmenter: Callable[[np.ndarray], np.ndarray], cases: Iterable[tuple[str, np.ndarray, np.ndarray]]
) -> dict:
    """Per-case and mean Dice of `segmenter` (HU to label map, as scripts.sampling.Segmenter) on (name, HU, label) cases."""
    per_case = {name: structure_dice(segmenter(hu), label) for name, hu, label in cases}
    if not per_case:
        raise ValueError("no cases to evaluate the segmenter on")
    mean = {s: float(np.mean([d[s] for d in per_case.values()])) for s in SCORED_STRUCTURES}
    worst = {s: float(np.min([d[s] for d in per_case.values()])) for s in SCORED_STRUCTURES}
    return {"mean": mean, "min": worst, "cases": per_case}
