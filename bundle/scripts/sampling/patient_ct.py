"""A patient's CT for tumor insertion: read from a NIfTI file or a DICOM series, and put on the model's working grid
(the preprocessing chain's box and spacing) with its lungs and body, where requests are checked."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from pydicom.dataset import Dataset
from scipy import ndimage

from scripts.data.volumes import to_hu, write_nifti
from scripts.dicom.ct_folder import read_ct_folder
from scripts.sampling.blending import voxel_spacing
from scripts.transforms.alignment import lungs_from_hu
from scripts.transforms.body_mask import body_mask
from scripts.transforms.preprocess import preprocessing_chain

#: Below this a voxel is lung (or air).
LUNG_HU = -400.0


class InsertionRefused(ValueError):
    """A tumor or image the insertion cannot use: `parameter` names the request parameter to change, `reason` says why."""

    def __init__(self, parameter: str, reason: str) -> None:
        super().__init__(f"{parameter}: {reason}")
        self.parameter, self.reason = parameter, reason


@dataclass(frozen=True)
class PatientCT:
    """A patient's CT on its native grid: HU (int16) in its own voxel order, the affine (voxel to RAS mm), its name, the
    file or folder it came from, and for DICOM input a slice header (patient, study, frame of reference) that the DICOM
    output keeps."""

    hu: np.ndarray
    affine: np.ndarray
    name: str
    source: str
    header: Dataset | None = None


def read_patient_ct(image: str | Path) -> PatientCT:
    """The CT at `image`: a NIfTI file in HU, or a folder holding one DICOM CT series (read as ingestion reads it)."""
    path = Path(image)
    if path.is_dir():
        hu, grid, header = read_ct_folder(path)
        return PatientCT(hu, grid.affine_ras, path.name, str(path), header)
    if not path.is_file():
        raise FileNotFoundError(f"image: no file or DICOM folder at {path}")
    try:
        nifti = nib.load(path)
        hu = np.asanyarray(nifti.dataobj)
    except Exception as error:  # any reader failure means the file is not a NIfTI volume
        raise ValueError(f"image {path} is not a readable NIfTI volume ({type(error).__name__})") from error
    if hu.ndim != 3:
        raise ValueError(f"image {path} must be a 3D CT volume, it has shape {list(hu.shape)}")
    name = path.name.removesuffix(".nii.gz").removesuffix(".nii").removesuffix("_ct")
    if name == "ct":  # a case folder's ct.nii.gz (ingest, phantoms) takes the case's name
        name = path.parent.name
    hu = np.clip(np.round(hu), -32768, 32767).astype(np.int16)
    return PatientCT(hu, np.asarray(nifti.affine, float), name, str(path))


@dataclass(frozen=True)
class WorkingCase:
    """The CT on the model's working grid (network intensities), its HU, affine, lungs and body."""

    image: torch.Tensor
    hu: np.ndarray
    affine: np.ndarray
    lungs: np.ndarray
    body: np.ndarray


def on_working_grid(hu: np.ndarray, affine: np.ndarray, record: dict) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """A native-grid CT through the preprocessing chain onto the model's grid: network intensities, HU, affine."""
    chain, hu_window = preprocessing_chain(record["image_size"])
    with tempfile.TemporaryDirectory() as folder:  # the chain reads files: the HU as read, from any source
        data = chain({"image": str(write_nifti(hu, affine, Path(folder) / "ct.nii"))})["image"]
    return torch.as_tensor(np.asarray(data)), to_hu(data[0], hu_window), np.asarray(data.affine, float)


def working_case(ct: PatientCT, record: dict) -> WorkingCase:
    """The CT through the preprocessing chain on the model's grid; a CT in which no lungs are found is refused."""
    image, hu, affine = on_working_grid(ct.hu, ct.affine, record)
    spacing = voxel_spacing(affine)
    lungs = lungs_from_hu(hu, spacing)
    if not lungs.any():
        raise InsertionRefused("image", f"no lungs found in {ct.name} (no air enclosed by tissue below {LUNG_HU:g} HU)")
    return WorkingCase(image, hu, affine, lungs, body_mask(hu, spacing))


def working_mask(mask: np.ndarray, ct: PatientCT, case: WorkingCase, parameter: str) -> np.ndarray:
    """The native-grid tumor on the working grid (linear resampling, half a voxel or more), refused outside the model's box.

    A tumor smaller than a working voxel keeps the voxel nearest its centre, so small tumors still condition the model.
    """
    to_native = np.linalg.solve(ct.affine, case.affine)
    share = ndimage.affine_transform(
        mask.astype(np.float32), to_native[:3, :3], to_native[:3, 3], case.hu.shape, order=1
    )
    native_voxels = np.argwhere(mask)
    in_working = np.linalg.solve(case.affine, ct.affine)[:3] @ np.c_[native_voxels, np.ones(len(native_voxels))].T
    if np.any(in_working < -0.5) or np.any(in_working > np.asarray(case.hu.shape)[:, None] - 0.5):
        raise InsertionRefused(parameter, "the tumor leaves the model's field of view around the lungs")
    if share.max() >= 0.5:
        return share >= 0.5
    nearest = np.zeros(case.hu.shape, bool)
    nearest[tuple(np.clip(np.round(in_working.mean(1)).astype(int), 0, np.asarray(case.hu.shape) - 1))] = True
    return nearest


def check_in_body(tumor: np.ndarray, case: WorkingCase, parameter: str) -> float:
    """The share of the tumor inside the body; a tumor mostly outside it is refused naming `parameter`."""
    inside = float(case.body[tumor].mean())
    if inside < 0.5:
        raise InsertionRefused(parameter, f"the tumor lies outside the body ({100 * inside:.0f}% of it inside)")
    return inside
