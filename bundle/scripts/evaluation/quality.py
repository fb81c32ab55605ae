"""Automatic quality filter for synthetic CTs: measure each volume, judge it by the rules of configs/quality_filter.json.

The thesis removed bad samples by looking at 500 volumes by hand; the failures it shows are pure
noise, air only (at most a table), a body without lungs, a body broken between slices, and lungs
in the wrong place. Each is caught here by a measurable property of the HU volume: the body mask
of `scripts.transforms.body_mask` and the lungs of `scripts.transforms.alignment.lungs_from_hu` (the same masks the
preprocessing uses), their volumes, connected parts and positions, the voxel-scale roughness of
the HU values, and how the body changes from one axial slice to the next.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
from scipy import ndimage

from scripts.bundle_config import BUNDLE_DIR
from scripts.data.volumes import to_hu
from scripts.transforms.alignment import lungs_from_hu
from scripts.transforms.body_mask import body_mask

if TYPE_CHECKING:
    from scripts.evaluation.data import StackedImages

logger = logging.getLogger(__name__)

#: The thresholds shipped with the bundle.
DEFAULT_CONFIG = BUNDLE_DIR / "configs" / "quality_filter.json"
#: The file name pattern of synthetic CTs, as `scripts.sampling.writing.write_samples` writes them.
SAMPLE_PATTERN = "*_ct.nii.gz"


def load_ras(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """HU volume of a NIfTI file reoriented to RAS, as float32, and its voxel spacing in mm."""
    image = nib.as_closest_canonical(nib.load(str(path)))
    if len(image.shape) != 3:
        raise ValueError(f"{path}: expected a 3D CT volume, got shape {image.shape}")
    return np.asarray(image.dataobj, dtype=np.float32), tuple(float(s) for s in image.header.get_zooms()[:3])


def roughness_hu(hu: np.ndarray, inside: np.ndarray) -> float:
    """Median absolute difference between a voxel and its 3x3x3 mean inside `inside`: high for noise, low for anatomy."""
    if not inside.any():
        return 0.0
    return float(np.median(np.abs(hu - ndimage.uniform_filter(hu, size=3))[inside]))


def slice_consistency(body: np.ndarray, min_area_fraction: float) -> tuple[float | None, int]:
    """Lowest overlap of the body between neighbouring axial slices, and the number of runs of slices with a body.

    Overlap is the shared area over the smaller of the two areas, so a body that narrows still
    overlaps fully while one that jumps sideways does not. Only slices whose body area is at least
    `min_area_fraction` of the largest count: the chest, not the neck, head and arms above the
    shoulders (whose shape changes quickly between coarse slices) nor the end of the scanned range.
    """
    area = body.sum(axis=(0, 1))
    if not area.any():
        return None, 0
    present = area >= min_area_fraction * area.max()
    runs = int(np.count_nonzero(np.diff(present.astype(np.int8), prepend=0) == 1))
    overlaps = [
        (body[:, :, k] & body[:, :, k + 1]).sum() / min(area[k], area[k + 1])
        for k in range(body.shape[2] - 1)
        if present[k] and present[k + 1]
    ]
    return (float(min(overlaps)) if overlaps else None), runs


def lung_offset(lungs: np.ndarray) -> float | None:
    """Largest distance, as a fraction of the field of view, between the lungs' bounding-box centre and the volume centre.

    The preprocessing centres every training volume on the lungs, so a good sample has them in the middle.
    """
    where = np.argwhere(lungs)
    if len(where) == 0:
        return None
    centre = (where.min(0) + where.max(0)) / 2.0
    return float(np.max(np.abs(centre - (np.asarray(lungs.shape) - 1) / 2.0) / np.asarray(lungs.shape)))


def lung_balance(lungs: np.ndarray, body: np.ndarray) -> float | None:
    """Share of the lung volume on the smaller side of the body's mid-sagittal plane: near 0.5 for two lungs, 0 for one."""
    total = int(lungs.sum())
    if total == 0:
        return None
    midline = ndimage.center_of_mass(body)[0]
    one_side = int(lungs[: int(np.ceil(midline))].sum())
    return float(min(one_side, total - one_side) / total)


def volume_measures(hu: np.ndarray, spacing: Sequence[float], settings: Mapping[str, float]) -> dict[str, float | None]:
    """The measured properties of one RAS CT volume in HU that the rules judge (None where one cannot be measured)."""
    air_hu = float(settings["air_hu"])
    body = body_mask(hu, spacing)
    lungs = lungs_from_hu(np.where(body, hu, air_hu), spacing) & body
    overlap, runs = slice_consistency(body, float(settings["slice_min_area_fraction"]))
    return {
        "air_fraction": float((hu < float(settings["air_below_hu"])).mean()),
        "body_fraction": float(body.mean()),
        "roughness_hu": roughness_hu(hu, body),
        "body_slice_runs": float(runs),
        "body_slice_overlap_min": overlap,
        "lung_fraction": float(lungs.sum() / body.sum()) if body.any() else 0.0,
        "lung_offset": lung_offset(lungs),
        "lung_balance": lung_balance(lungs, body),
    }


def judge(measures: Mapping[str, float | None], rules: Mapping[str, Mapping]) -> list[str]:
    """Reasons to reject a volume: one per rule whose measure lies outside [min, max]; empty when it passes."""
    reasons = []
    for name, rule in rules.items():
        if name not in measures:
            raise ValueError(f"quality rule {name!r} names no measure; measures are {sorted(measures)}")
        value = measures[name]
        if value is None:
            continue
        if "min" in rule and value < rule["min"]:
            reasons.append(f"{name} {value:.3g} < {rule['min']}: {rule['why_min']}")
        if "max" in rule and value > rule["max"]:
            reasons.append(f"{name} {value:.3g} > {rule['max']}: {rule['why_max']}")
    return reasons


def load_config(config: str | Path | None = None) -> dict:
    """The quality filter's settings and rules, from `config` or the bundle's configs/quality_filter.json."""
    path = Path(config) if config else DEFAULT_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"quality filter config not found: {path}")
    loaded = json.loads(path.read_text())
    missing = [k for k in ("settings", "rules") if k not in loaded]
    if missing:
        raise ValueError(f"quality filter config {path} lacks {missing}")
    for name, rule in loaded["rules"].items():
        limits = [k for k in ("min", "max") if k in rule]
        if not limits or any(f"why_{k}" not in rule for k in limits):
            raise ValueError(
                f"quality filter config {path}: rule {name!r} needs a min or max, each with its why_min or why_max"
            )
    return loaded


def judge_volume(hu: np.ndarray, spacing: Sequence[float], config: Mapping) -> dict:
    """`accept`, `reasons` and `measures` of one RAS CT volume in HU."""
    measures = volume_measures(hu, spacing, config["settings"])
    reasons = judge(measures, config["rules"])
    return {"accept": not reasons, "reasons": reasons, "measures": measures}


def sample_files(samples: str | Path) -> list[Path]:
    """The synthetic CTs (`*_ct.nii.gz`) of a folder, sorted; an error when there are none."""
    folder = Path(samples)
    if not folder.is_dir():
        raise FileNotFoundError(f"samples folder not found: {folder}")
    files = sorted(folder.glob(SAMPLE_PATTERN))
    if not files:
        raise ValueError(f"no {SAMPLE_PATTERN} files in {folder}")
    return files


def judge_files(files: Sequence[Path], config: str | Path | None = None) -> dict[str, dict]:
    """Judgement of each file, keyed by file name."""
    loaded = load_config(config)
    return {Path(f).name: judge_volume(*load_ras(f), loaded) for f in files}


def judge_images(
    images: StackedImages, hu_window: Sequence[float], spacing_mm: Sequence[float], config: str | Path | None = None
) -> dict[str, dict]:
    """Judgement of each volume of a batch in [-1, 1] on the working grid, keyed by name: the volumes the evaluation scores."""
    loaded = load_config(config)
    return {
        name: judge_volume(to_hu(image[0], hu_window).astype(np.float32), spacing_mm, loaded)
        for image, name in zip(images.images, images.names)
    }


def write_quality_report(samples: str, config: str | None = None) -> Path:
    """Judge every `*_ct.nii.gz` in `samples` and write `samples/quality.json`: per file `accept`, `reasons`, `measures`.

    Args:
        samples: folder of synthetic CTs in HU (as the inference configs write them).
        config: thresholds file (default: the bundle's configs/quality_filter.json, which documents each rule).
    """
    judged = judge_files(sample_files(samples), config)
    path = Path(samples) / "quality.json"
    path.write_text(json.dumps(judged, indent=2) + "\n")
    accepted = sum(j["accept"] for j in judged.values())
    logger.info("accepted %d of %d samples; wrote %s", accepted, len(judged), path)
    return path
