"""Virtual-patient cohorts: a spec becomes N synthetic patients with their structures, one folder each, and a manifest.

A patient with a tumor is drawn in two passes of its seed: the unconditional CT, whose segmented lung
of the requested side places the tumor, then the CT conditioned on that tumor. Every patient must
pass the quality filter and the anatomy checks; a rejected draw is redrawn with the patient's next
seed. Seeds come from the plan alone, so a cohort split over torchrun ranks writes the same patients
as one process. A patient's folder appears whole, `patient.json` inside: a killed run resumes
without rewriting a finished patient.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from scipy import ndimage
from tqdm import tqdm

from scripts.bundle_config import load_bundle_config
from scripts.data.lungs import split_label_lungs
from scripts.data.preview import save_preview
from scripts.data.staging import remove_leftovers, staged_folder
from scripts.data.volumes import centred_affine, write_nifti
from scripts.dicom.export import export_dicom
from scripts.evaluation.anatomy_checks import structure_problems
from scripts.evaluation.quality import judge_volume, load_config
from scripts.sampling.cohort_files import open_cohort, read_patient_record, write_manifest, write_patient_record
from scripts.sampling.cohort_spec import (
    CohortSpec,
    PatientPlan,
    patients_of_rank,
    plan_cohort,
    rank_and_world,
    read_spec,
)
from scripts.sampling.sampler import LatentDiffusionSampler
from scripts.sampling.structures import Segmenter
from scripts.sampling.tumor_request import mask_from_centre
from scripts.transforms.conditioning import tumor_condition

logger = logging.getLogger(__name__)

#: How long a rank waits at the end for the others (torch.distributed's default of 30 minutes is a few patients).
BARRIER_TIMEOUT = datetime.timedelta(days=7)


@dataclass(frozen=True)
class CohortModels:
    """What draws a patient: the tumor sampler (ControlNet loaded), the structure segmenter, the quality filter."""

    sampler: LatentDiffusionSampler
    segmenter: Segmenter
    quality: dict


@dataclass(frozen=True)
class Draw:
    """One draw of a patient: CT (HU), label map, tumor mask (None without a tumor), and why it is rejected."""

    hu: np.ndarray
    label: np.ndarray
    tumor: np.ndarray | None
    problems: list[str]


def load_cohort_models(
    model_dir: str | None, num_inference_steps: int | None, device: torch.device | str
) -> CohortModels:
    """The networks of configs/inference_tumor.json (its `model_dir` unless given) and the quality filter."""
    overrides = {"device": f"$torch.device('{device}')", **({"model_dir": str(model_dir)} if model_dir else {})}
    parser = load_bundle_config(["inference_tumor.json"], overrides)
    sampler = parser.get_parsed_content("generator")
    if num_inference_steps is not None:
        sampler = sampler.with_schedule(parser.get_parsed_content("sampler"), int(num_inference_steps))
    segmenter = parser.get_parsed_content("segmenter")
    if segmenter is None:
        raise FileNotFoundError(
            f"cohort: every patient needs its structures, and {parser.get_parsed_content('segmentation_path')} "
            "holds no segmentation weights (configs/train_segmentation.json trains them)"
        )
    return CohortModels(sampler, segmenter, load_config())


def tumor_centre(label: np.ndarray, affine: np.ndarray, side: str, diameter_mm: float, seed: int) -> list[float] | None:
    """A seeded point of the `side` lung of a label map as deep inside it as the tumor's radius (or 80% of the
    lung's deepest point, for a tumor wider than the lung), in the world mm the tumor request takes; None without
    that lung."""
    left, right = split_label_lungs(label, affine)
    lung = left if side == "left" else right
    if not lung.any():
        return None
    depth = ndimage.distance_transform_edt(lung, sampling=np.linalg.norm(affine[:3, :3], axis=0))
    candidates = np.argwhere(depth >= min(diameter_mm / 2.0, 0.8 * depth.max()))
    voxel = candidates[np.random.default_rng(seed).integers(len(candidates))]
    return (affine @ [*voxel, 1.0])[:3].tolist()


def draw_patient(models: CohortModels, plan: PatientPlan, seed: int) -> Draw:
    """The patient of `plan` drawn with `seed`, with its structures and the reasons the checks reject it."""
    sampler, record = models.sampler, models.sampler.record
    affine = centred_affine(record["image_size"], record["image_spacing_mm"])
    hu = sampler.sample([seed])[0]
    label, tumor = models.segmenter(hu), None
    if plan.tumor is not None:
        centre = tumor_centre(label, affine, plan.tumor.side, plan.tumor.diameter_mm, seed)
        if centre is None:
            return Draw(hu, label, None, [f"no {plan.tumor.side} lung to place the tumor in"])
        tumor = mask_from_centre(record, centre, plan.tumor.diameter_mm, seed).mask
        hu = sampler.sample([seed], tumor_condition(tumor))[0]
        label = models.segmenter(hu, tumor)
    verdict = judge_volume(hu, sampler.spacing, models.quality)
    return Draw(hu, label, tumor, verdict["reasons"] + structure_problems(label, affine, tumor is not None))


def write_patient(folder: Path, draw: Draw, plan: PatientPlan, record: dict, spec: CohortSpec, spacing) -> None:
    """Write a patient's folder whole: ct.nii.gz, label.nii.gz, a preview and, when asked, dicom/; then patient.json."""
    affine = centred_affine(draw.hu.shape, spacing)
    with staged_folder(folder) as staging:
        ct = write_nifti(draw.hu, affine, staging / "ct.nii.gz")
        label = write_nifti(draw.label, affine, staging / "label.nii.gz")
        save_preview(draw.hu, spacing, staging / "preview.png", title=plan.patient_id, mask=draw.tumor)
        if "dicom" in spec.formats:
            export_dicom(str(ct), str(staging / "dicom"), label=str(label), name=plan.patient_id)
        files = sorted(str(p.relative_to(staging)) for p in staging.iterdir())
        write_patient_record(staging, {**record, "files": [f"{plan.patient_id}/{f}" for f in files]})


def generate_patient(models: CohortModels, plan: PatientPlan, spec: CohortSpec, out: Path) -> dict:
    """Draw the patient until a draw passes (at most `max_attempts` seeds); write it and return its record."""
    rejected: list[int] = []
    for seed in plan.seeds(spec.max_attempts):
        draw = draw_patient(models, plan, seed)
        if not draw.problems:
            break
        logger.info("%s: seed %d rejected: %s", plan.patient_id, seed, "; ".join(draw.problems))
        rejected.append(seed)
    spacing = models.sampler.spacing
    voxel_ml = float(np.prod(spacing)) / 1000.0
    record = {
        "patient_id": plan.patient_id,
        "seed": seed,
        "attempts": len(rejected) + (0 if draw.problems else 1),
        "rejected_seeds": rejected,
        "tumor_side": plan.tumor.side if plan.tumor else None,
        "tumor_diameter_mm": plan.tumor.diameter_mm if plan.tumor else None,
        "tumor_volume_ml": round(float(draw.tumor.sum()) * voxel_ml, 2) if draw.tumor is not None else None,
        "quality": "pass" if not draw.problems else "fail: " + "; ".join(draw.problems),
    }
    write_patient(out / plan.patient_id, draw, plan, record, spec, spacing)
    return read_patient_record(out / plan.patient_id)


def run_cohort(spec: str, out: str, model_dir: str | None = None, device: str | None = None) -> Path:
    """Generate the cohort of the spec file `spec` into `out`; under torchrun each rank writes its share of patients.

    Args:
        spec: cohort spec (YAML or JSON; see configs/cohort_demo.yaml), checked whole before any patient is drawn.
        out: cohort folder: one folder per patient and manifest.csv; a folder of the same spec resumes.
        model_dir: the weights (default: the bundle's `models/`, else the shipped demo).
        device: torch device (default: the GPU of this rank's LOCAL_RANK when there is one, else the CPU).
    """
    cohort = read_spec(spec)
    plans = plan_cohort(cohort)
    rank, world = rank_and_world()
    folder = Path(out)
    if world > 1:
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    try:
        open_cohort(folder, cohort)  # on every rank: each refuses another cohort's folder itself
        if rank == 0:
            remove_leftovers(folder)
        if world > 1:
            dist.barrier()
        own = [p for p in patients_of_rank(plans, rank, world) if read_patient_record(folder / p.patient_id) is None]
        if own:
            local = int(os.environ.get("LOCAL_RANK", rank))
            chosen = device or (f"cuda:{local % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu")
            models = load_cohort_models(model_dir, cohort.num_inference_steps, chosen)
            for plan in tqdm(own, desc=f"patients (rank {rank})" if world > 1 else "patients", unit="patient"):
                generate_patient(models, plan, cohort, folder)
        if world > 1:
            dist.barrier()
        manifest = folder / "manifest.csv"
        if rank == 0:
            manifest = write_manifest(folder, plans)
            logger.info("cohort of %d patients in %s", len(plans), folder.resolve())
        return manifest
    finally:
        if world > 1:
            dist.destroy_process_group()
