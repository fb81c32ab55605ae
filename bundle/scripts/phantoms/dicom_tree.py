"""The bundle's thorax phantoms as a DICOM tree in the NSCLC-Radiomics layout, so `ingest` is tested on known truth.

`<out>/PHANTOM-XXX/<study>/<series>/<files>` per case: a CT Image Storage series (unsigned pixels with
RescaleIntercept -1024, standard axial orientation, files numbered from the head down, ImageType ORIGINAL, PRIMARY
like the scanner series these trees stand in for), an RTSTRUCT whose closed planar contours are traced from the
phantom's masks, and a DICOM SEG (written with pydicom-seg). ROI and segment names vary between cases as clinical
names do (GTV-1, GTV1, gtv 1, Lung-Left with Lung-Right, Lungs-Total, lung_r...). The cases are those
`scripts.phantoms.thorax.write_phantoms` writes as NIfTI, converted.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.uid import generate_uid
from tqdm import tqdm

from scripts.data.labels import LABELS, PRECEDENCE
from scripts.data.staging import staged_folder
from scripts.dicom.writer import Rois, Uid, ct_slices, rtstruct_dataset, seg_dataset, study_attributes, to_lps
from scripts.phantoms.thorax import check_size, write_phantoms

logger = logging.getLogger(__name__)

#: ROI name variants per structure, one drawn per case; two names split the lungs into the patient's left and right.
ROI_NAMES = {
    "gtv_1": (("GTV-1",), ("GTV1",), ("gtv 1",), ("GTV_1",)),
    "gtv_other": (("GTV-2",), ("GTV2",), ("gtv 2",)),
    "lungs": (("Lung-Left", "Lung-Right"), ("Lungs-Total",), ("lung_l", "lung_r"), ("Lungs",)),
    "heart": (("Heart",), ("heart",), ("HEART",)),
    "esophagus": (("Esophagus",), ("Oesophagus",), ("esophagus",)),
    "spinal_cord": (("Spinal-Cord",), ("SpinalCord",), ("spinal cord",)),
    "body": (("External",), ("BODY",), ("Body",)),
}


def phantom_rois(label: np.ndarray, affine_lps: np.ndarray, rng: np.random.Generator) -> Rois:
    """(ROI name, structure, mask) per structure present, in precedence order; the body ROI outlines the whole patient."""
    i = np.arange(label.shape[0])[:, None, None]
    j = np.arange(label.shape[1])[None, :, None]
    k = np.arange(label.shape[2])[None, None, :]
    patient_left = affine_lps[0, 0] * i + affine_lps[0, 1] * j + affine_lps[0, 2] * k + affine_lps[0, 3] > 0
    rois = []
    for structure in PRECEDENCE:
        mask = label > 0 if structure == "body" else label == LABELS[structure]
        if not mask.any():
            continue
        variant = ROI_NAMES[structure][rng.integers(len(ROI_NAMES[structure]))]
        if len(variant) == 2:
            rois += [(variant[0], structure, mask & patient_left), (variant[1], structure, mask & ~patient_left)]
        else:
            rois.append((variant[0], structure, mask))
    return rois


def case_uid(seed: int, size: int | tuple[int, int, int], case: str, role: str, number: int = -1) -> str:
    """A UID fixed by the seed, size (as `check_size` gives it), case, role (study, ct, seg...) and instance number."""
    return generate_uid(entropy_srcs=["phantom", str(seed), str(size), case, role, str(number)])


def write_case(
    folder: Path,
    case: str,
    hu: np.ndarray,
    label: np.ndarray,
    affine_ras: np.ndarray,
    rng: np.random.Generator,
    uid: Uid,
) -> None:
    """Write one phantom (RAS arrays) as `<folder>/<study>/<series>/<files>`: CT series, RTSTRUCT and SEG."""
    hu, affine_lps = to_lps(hu, affine_ras)
    label, _ = to_lps(label, affine_ras)
    common = study_attributes(case, case.replace("-", "^"), uid("study"), "scripts.phantom_dicom", "20000101", "120000")
    slices = ct_slices(hu, affine_lps, uid, common)
    rois = phantom_rois(label, affine_lps, rng)
    study = folder / f"01-01-2000-NA-PHANTOM-{common.StudyInstanceUID[-5:]}"
    series = {
        f"0.000000-NA-{slices[0].SeriesInstanceUID[-5:]}": slices,
        f"1.000000-NA-{uid('rtstruct')[-5:]}": [rtstruct_dataset(rois, slices, affine_lps, uid, common, "PHANTOM")],
        f"300.000000-Segmentation-{uid('seg')[-5:]}": [seg_dataset(rois, slices, affine_lps, uid, "scripts.phantoms")],
    }
    for name, datasets in series.items():
        (study / name).mkdir(parents=True)
        for dataset in datasets:
            dataset.save_as(study / name / f"1-{int(dataset.InstanceNumber):03d}.dcm", write_like_original=False)


def write_phantom_dicom(out: str, n: int = 8, size: int | Sequence[int] = 128, seed: int = 0) -> Path:
    """Write the phantoms `write_phantoms(out, n, size, seed)` makes as a DICOM tree `<out>/PHANTOM-XXX/...` for `ingest`.

    `size` is one int or [nx, ny, nz], as `write_phantoms` takes it: the CT series has a file per slice of the volume,
    its SliceThickness their spacing. The same arguments give the same cases (and UIDs); existing case folders are kept.
    """
    size = check_size(size)
    root = Path(out)
    with tempfile.TemporaryDirectory() as nifti:
        write_phantoms(nifti, n=n, size=size, seed=seed)  # the one source of the phantoms, so both formats agree
        cases = sorted(p.name for p in Path(nifti).iterdir() if p.is_dir())
        for index, case in enumerate(tqdm(cases, desc="phantoms to DICOM", unit="case")):
            if (root / case).exists():
                logger.info("%s exists, kept", root / case)
                continue
            ct, label = (nib.load(Path(nifti) / case / name) for name in ("ct.nii.gz", "label.nii.gz"))
            hu, mask, affine = np.asanyarray(ct.dataobj), np.asanyarray(label.dataobj), ct.affine
            with staged_folder(root / case) as staging:
                write_case(
                    staging,
                    case,
                    hu,
                    mask,
                    affine,
                    np.random.default_rng([seed, index]),
                    partial(case_uid, seed, size, case),
                )
    return root
