"""A synthetic tumor in a patient's own CT (configs/insert_tumor.json), written on the CT's native grid.

1. The CT (a NIfTI file or a DICOM CT series folder) goes through the bundle's preprocessing chain, so the model
   sees its box and spacing, and is encoded.
2. The tumor ControlNet denoises the latent around the requested tumor while the rest of the latent is held to the
   patient's (`scripts.sampling.inpainting`: blended latent diffusion, or RePaint with `resample_steps` > 1).
3. The decoded region is resampled onto the native grid and blended in with a soft margin
   (`scripts.sampling.blending`): farther than `blend_margin_mm` from the mask every voxel is the patient's.
Every check runs before anything is written; a request that fails one writes nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from scripts.data.masks import read_binary_mask, resample_mask
from scripts.data.preview import save_preview
from scripts.data.shapes import irregular_blob
from scripts.data.volumes import check_writable, write_nifti
from scripts.dicom.export import export_dicom
from scripts.dicom.grid import reorient
from scripts.sampling.blending import blend, boundary_step, voxel_spacing
from scripts.sampling.inpainting import inpaint
from scripts.sampling.patient_ct import (
    LUNG_HU,
    PatientCT,
    WorkingCase,
    check_in_body,
    on_working_grid,
    working_case,
    working_mask,
)
from scripts.sampling.sampler import LatentDiffusionSampler, autocast
from scripts.sampling.structures import Segmenter
from scripts.sampling.tumor_request import MAX_DIAMETER_MM, MIN_DIAMETER_MM
from scripts.transforms.conditioning import tumor_condition

logger = logging.getLogger(__name__)

TISSUE_HU = -300.0
MAX_MARGIN_MM = 50.0


def blob_on_grid(
    shape: Sequence[int], affine: np.ndarray, centre_mm: Sequence[float], diameter_mm: float, seed: int
) -> np.ndarray:
    """A seeded irregular tumor of `diameter_mm` at world point `centre_mm` on any grid, drawn in the box around it."""
    spacing = voxel_spacing(affine)
    centre_voxel = np.linalg.solve(affine, [*centre_mm, 1.0])[:3]
    reach = np.ceil(0.75 * diameter_mm / spacing).astype(int) + 2
    low = np.maximum(np.floor(centre_voxel).astype(int) - reach, 0)
    high = np.minimum(np.ceil(centre_voxel).astype(int) + reach + 1, shape)
    voxels = np.indices(tuple(high - low)).reshape(3, -1) + low[:, None]
    world = (affine[:3, :3] @ voxels + affine[:3, 3:]).reshape(3, *(high - low))
    mask = np.zeros(tuple(shape), bool)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    mask[box] = irregular_blob(tuple(world), spacing, centre_mm, diameter_mm, np.random.default_rng(seed))
    return mask


def native_mask(
    ct: PatientCT,
    mask: str | None,
    tumor_center_mm: Sequence[float] | None,
    tumor_diameter_mm: float,
    seed: int,
) -> np.ndarray:
    """The requested tumor on the CT's native grid: a binary NIfTI resampled by world coordinates, or a seeded blob."""
    if (mask is None) == (tumor_center_mm is None):
        raise ValueError("give either mask (a NIfTI file) or tumor_center_mm (with tumor_diameter_mm), not both")
    if mask is not None:
        image, data = read_binary_mask(mask)
        return resample_mask(data, image.affine, ct.affine, ct.hu.shape, str(mask), f"the image {ct.name}") > 0
    if not MIN_DIAMETER_MM <= float(tumor_diameter_mm) <= MAX_DIAMETER_MM:
        raise ValueError(
            f"tumor_diameter_mm must be between {MIN_DIAMETER_MM} and {MAX_DIAMETER_MM}, got {tumor_diameter_mm}"
        )
    if len(tumor_center_mm) != 3 or not np.all(np.isfinite(np.asarray(tumor_center_mm, float))):
        raise ValueError(f"tumor_center_mm must be three finite numbers (RAS mm), got {tumor_center_mm}")
    voxel = np.linalg.solve(ct.affine, [*map(float, tumor_center_mm), 1.0])[:3]
    if np.any(voxel < -0.5) or np.any(voxel > np.asarray(ct.hu.shape) - 0.5):
        raise ValueError(f"tumor_center_mm {list(tumor_center_mm)} lies outside the image (voxel {voxel.round(1)})")
    tumor = blob_on_grid(ct.hu.shape, ct.affine, tumor_center_mm, float(tumor_diameter_mm), int(seed))
    if not tumor.any():
        raise ValueError(f"tumor_diameter_mm {tumor_diameter_mm} covers no voxel of the image: give a larger one")
    return tumor


def latent_region(tumor: np.ndarray, case: WorkingCase, latent_shape: Sequence[int], margin_mm: float) -> torch.Tensor:
    """Latent voxels to generate (1, 1, x, y, z): those over the tumor and its blend margin, and one more around."""
    distance = ndimage.distance_transform_edt(~tumor, sampling=voxel_spacing(case.affine))
    region = torch.as_tensor(distance <= margin_mm, dtype=torch.float32)[None, None]
    latent = F.adaptive_max_pool3d(region, tuple(latent_shape))
    return F.max_pool3d(latent, kernel_size=3, stride=1, padding=1)


def insertion_report(
    ct: PatientCT, out: np.ndarray, mask: np.ndarray, zone: np.ndarray, in_body: float, request: dict, seconds: float
) -> dict:
    """The figures of one insertion: tumor volume and tissue, what stayed unchanged, the step at the blend's edge."""
    before_lung = ct.hu[mask] < LUNG_HU
    soft = out[mask] > TISSUE_HU
    outside = ~zone
    return {
        "request": request,
        "mask_voxels": int(mask.sum()),
        "mask_volume_ml": float(mask.sum() * np.prod(voxel_spacing(ct.affine)) / 1000.0),
        "mask_soft_tissue_fraction": float(soft.mean()),
        "mask_soft_tissue_fraction_where_lung": float(soft[before_lung].mean()) if before_lung.any() else None,
        "mask_lung_fraction_before": float(before_lung.mean()),
        "mask_in_body_fraction": in_body,
        "mask_median_hu": float(np.median(out[mask])),
        "unchanged_fraction_outside_margin": float((out[outside] == ct.hu[outside]).mean()),
        "boundary_hu_step": boundary_step(out, zone),
        "boundary_hu_step_input": boundary_step(ct.hu, zone),
        "seconds": round(seconds, 2),
    }


@dataclass(frozen=True)
class Insertion:
    """The patient's CT with the tumor (int16 HU, native grid) and the figures of `insertion_report`."""

    hu: np.ndarray
    report: dict


def insert_into(
    sampler: LatentDiffusionSampler,
    ct: PatientCT,
    tumor: np.ndarray,
    parameter: str,
    seed: int = 0,
    blend_margin_mm: float = 10.0,
    resample_steps: int = 1,
) -> Insertion:
    """Insert the native-grid `tumor` into `ct`; errors about the tumor name `parameter`."""
    start = time.perf_counter()
    if not 0.0 <= float(blend_margin_mm) <= MAX_MARGIN_MM:
        raise ValueError(f"blend_margin_mm must be between 0 and {MAX_MARGIN_MM:g}, got {blend_margin_mm}")
    if sampler.controlled is None:
        raise ValueError("tumor insertion needs a ControlNet (controlnet_path)")
    case = working_case(ct, sampler.record)
    small = working_mask(tumor, ct, case, parameter)
    in_body = check_in_body(small, case, parameter)
    if case.lungs[small].mean() < 0.5:
        logger.warning("%s: the tumor lies mostly outside the lungs (chest wall or mediastinum)", ct.name)
    generator = sampler.generator(seed)
    known = sampler.encode(case.image)
    free = latent_region(small, case, known.shape[2:], float(blend_margin_mm)).to(known.device)
    predictor = partial(sampler.controlled, context=tumor_condition(small)[None].to(sampler.device))
    with autocast(sampler.device, sampler.options["precision"]):
        latent = inpaint(predictor, sampler.scheduler, known, free, generator, resample_steps)
    generated = sampler.decode(latent)[0]
    out, zone = blend(ct.hu, ct.affine, tumor, generated, case.affine, float(blend_margin_mm))
    request = {
        "image": ct.source,
        "seed": int(seed),
        "blend_margin_mm": float(blend_margin_mm),
        "resample_steps": int(resample_steps),
        "num_inference_steps": len(sampler.scheduler.timesteps),
        "guidance_scale": sampler.options["guidance_scale"],
    }
    report = insertion_report(ct, out, tumor, zone, in_body, request, time.perf_counter() - start)
    return Insertion(out, report)


def insertion_structures(
    segmenter: Segmenter, ct: PatientCT, out: np.ndarray, tumor: np.ndarray, record: dict
) -> np.ndarray:
    """The structures of the CT with the tumor (`out`), labelled on the model's grid and carried onto the CT's own;
    GTV-1 is the native-grid `tumor` exactly."""
    _, hu, affine = on_working_grid(out, ct.affine, record)
    return segmenter.on_native_grid(hu, affine, ct.affine, tumor)


def insert_tumor(
    sampler: LatentDiffusionSampler,
    ct: PatientCT,
    output_dir: str,
    tumor_center_mm: Sequence[float] | None = None,
    tumor_diameter_mm: float = 30.0,
    mask: str | None = None,
    seed: int = 0,
    blend_margin_mm: float = 10.0,
    resample_steps: int = 1,
    overwrite: bool = False,
    dicom: bool = False,
    segmenter: Segmenter | None = None,
) -> dict:
    """Insert a tumor into the patient's `ct` (from `read_patient_ct`) and write `<name>_ct.nii.gz`, `_gtv.nii.gz`,
    `_preview.png`, `_report.json`, with a `segmenter` `_label.nii.gz` (its structures, see `insertion_structures`),
    and with `dicom` `<name>_dicom/`, on its grid into `output_dir`; returns the report."""
    out_dir = Path(output_dir)
    suffixes = ["_ct.nii.gz", "_gtv.nii.gz", "_preview.png", "_report.json"]
    suffixes += (["_label.nii.gz"] if segmenter is not None else []) + (["_dicom"] if dicom else [])
    check_writable([out_dir / f"{ct.name}{x}" for x in suffixes], overwrite)
    tumor = native_mask(ct, mask, tumor_center_mm, tumor_diameter_mm, seed)
    parameter = "mask" if mask is not None else "tumor_center_mm"
    inserted = insert_into(sampler, ct, tumor, parameter, seed, blend_margin_mm, resample_steps)
    inserted.report["request"].update(
        {
            "tumor_center_mm": None if tumor_center_mm is None else [float(c) for c in tumor_center_mm],
            "tumor_diameter_mm": None if mask is not None else float(tumor_diameter_mm),
            "mask": None if mask is None else str(mask),
        }
    )
    label = None if segmenter is None else insertion_structures(segmenter, ct, inserted.hu, tumor, sampler.record)
    write_insertion(ct, inserted.hu, tumor, inserted.report, out_dir, dicom, overwrite, label)
    return inserted.report


def write_insertion(
    ct: PatientCT,
    out: np.ndarray,
    tumor: np.ndarray,
    report: dict,
    out_dir: Path,
    dicom: bool,
    overwrite: bool,
    label: np.ndarray | None = None,
) -> None:
    """The modified CT, its GTV, its structures' `label` map if given, a before/after preview through the tumor and the
    report, on the CT's grid."""
    ct_path = write_nifti(out, ct.affine, out_dir / f"{ct.name}_ct.nii.gz")
    gtv_path = write_nifti(tumor.astype(np.uint8), ct.affine, out_dir / f"{ct.name}_gtv.nii.gz")
    label_path = None if label is None else write_nifti(label, ct.affine, out_dir / f"{ct.name}_label.nii.gz")
    after, ras = reorient(out, ct.affine, "RAS")
    before, _ = reorient(ct.hu, ct.affine, "RAS")
    ras_tumor, _ = reorient(tumor, ct.affine, "RAS")
    save_preview(after, voxel_spacing(ras), out_dir / f"{ct.name}_preview.png", ct.name, ras_tumor, before=before)
    (out_dir / f"{ct.name}_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if dicom:
        folder = str(out_dir / f"{ct.name}_dicom")
        structures = {} if label_path is None else {"label": str(label_path)}
        export_dicom(
            str(ct_path), folder, mask=str(gtv_path), name=ct.name, overwrite=overwrite, source=ct.header, **structures
        )
    logger.info("inserted a %.1f ml tumor into %s: %s", report["mask_volume_ml"], ct.name, out_dir.resolve())
