"""Writing synthetic CTs: one NIfTI (HU) per seed with a preview, its structures, the tumor mask and adherence when
conditioned, DICOM on request."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from scripts.data.preview import save_preview
from scripts.data.volumes import centred_affine, check_writable, write_nifti
from scripts.dicom.export import export_dicom
from scripts.evaluation.adherence import tumor_adherence
from scripts.sampling.sampler import LatentDiffusionSampler
from scripts.sampling.structures import Segmenter
from scripts.sampling.tumor_request import TumorMask
from scripts.transforms.conditioning import tumor_condition

logger = logging.getLogger(__name__)


def sample_seeds(seed: int, num_samples: int) -> list[int]:
    """The seeds of a request, one per sample: `seed, seed + 1, ...`."""
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    return [int(seed) + i for i in range(int(num_samples))]


def write_samples(
    sampler: LatentDiffusionSampler,
    output_dir: str,
    seeds: list[int],
    batch_size: int = 1,
    overwrite: bool = False,
    tumor: TumorMask | None = None,
    dicom: bool = False,
    segmenter: Segmenter | None = None,
) -> list[Path]:
    """Generate one CT per seed into `output_dir`.

    Each sample is `sample_seed<N>_ct.nii.gz` (HU, int16) with a PNG preview. With a `tumor` mask
    (on the working grid, placed by its affine), sampling is conditioned on it and each sample also
    gets `_mask.nii.gz` and `_adherence.json`; the preview cuts through the tumor and outlines it.
    With a `segmenter`, each sample gets `_label.nii.gz`: its structures (scripts/data/labels.py ids),
    GTV-1 being the requested mask. With `dicom`, each sample is also exported to `sample_seed<N>_dicom/`
    (CT series, RTSTRUCT and SEG with every structure).
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    mask, affine = tumor if tumor is not None else (None, None)
    out = Path(output_dir)
    names = {s: f"sample_seed{s}" for s in seeds}
    suffixes = (
        ["_ct.nii.gz"]
        + (["_mask.nii.gz", "_adherence.json"] if mask is not None else [])
        + (["_label.nii.gz"] if segmenter is not None else [])
        + (["_dicom"] if dicom else [])
    )
    check_writable([out / f"{n}{x}" for n in names.values() for x in suffixes], overwrite)
    condition = tumor_condition(mask) if mask is not None else None
    written = []
    for start in tqdm(range(0, len(seeds), int(batch_size)), desc="samples", unit="batch"):
        batch = seeds[start : start + int(batch_size)]
        for s, hu in zip(batch, sampler.sample(batch, condition)):
            placed = affine if affine is not None else centred_affine(hu.shape, sampler.spacing)
            written.append(write_nifti(hu, placed, out / f"{names[s]}_ct.nii.gz"))
            save_preview(hu, sampler.spacing, out / f"{names[s]}.png", title=names[s], mask=mask)
            mask_path = None
            if mask is not None:
                mask_path = write_nifti(mask.astype(np.uint8), placed, out / f"{names[s]}_mask.nii.gz")
                report = tumor_adherence(hu, mask, sampler.spacing)
                (out / f"{names[s]}_adherence.json").write_text(json.dumps(report, indent=2) + "\n")
                if report["mask_in_lungs_fraction"] < 0.5:
                    inside = 100 * report["mask_in_lungs_fraction"]
                    logger.warning(
                        "%s: the tumor lies mostly outside the sample's lungs (%.0f%% inside)", names[s], inside
                    )
            label_path = None
            if segmenter is not None:
                label_path = write_nifti(segmenter(hu, mask), placed, out / f"{names[s]}_label.nii.gz")
            if dicom:
                files = {"mask": mask_path, "label": label_path}
                export_dicom(
                    str(written[-1]),
                    str(out / f"{names[s]}_dicom"),
                    name=names[s],
                    **{k: str(v) for k, v in files.items() if v is not None},
                )
    logger.info("wrote %d synthetic CTs to %s", len(written), out.resolve())
    return written
