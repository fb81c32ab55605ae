"""What a task returns: the CT as an int16 NIfTI in HU with its true affine, and a JSON that carries its masks.

MONAI Label sends one file per result, and Slicer's stock module would save it as a uint8 labelmap
(`result_dtype`, `result_extension`): both are ignored here, the CT is always `.nii.gz`, int16 HU.
The tumor mask travels inside the JSON, under `tumor_mask`: a gzipped NIfTI (uint8 0/1, same grid
and affine as the CT), base64-encoded in `data`; writing those bytes to a `.nii.gz` file gives the mask.
The structures (organs at risk, body, GTVs) travel the same way under `structures`: a uint8 label map
whose `labels` name each id present (TG-263 names).
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lib.sampling_request import SamplingParams
from scripts.data.labels import LABELS, TG263_NAMES
from scripts.data.volumes import write_nifti

MASK_FORMAT = "nifti-gz-base64"


def write_ct(hu: np.ndarray, affine: np.ndarray) -> str:
    """The CT as an int16 NIfTI in a fresh temporary file, which the /infer endpoint sends and then deletes."""
    with tempfile.NamedTemporaryFile(prefix="synthetic_", suffix="_ct.nii.gz", delete=False) as handle:
        path = Path(handle.name)
    return str(write_nifti(np.asarray(hu, np.int16), affine, path))


def _nifti_base64(volume: np.ndarray, affine: np.ndarray) -> str:
    """A uint8 volume as the base64 text of its gzipped NIfTI."""
    with tempfile.TemporaryDirectory() as folder:
        data = write_nifti(volume.astype(np.uint8), affine, Path(folder) / "volume.nii.gz").read_bytes()
    return base64.b64encode(data).decode("ascii")


def mask_payload(mask: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    """The tumor mask as JSON: a base64 gzipped NIfTI and its voxel count."""
    return {"format": MASK_FORMAT, "voxels": int(mask.sum()), "data": _nifti_base64(mask, affine)}


def structures_payload(label: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    """The structures' label map as JSON: a base64 gzipped NIfTI and the TG-263 name of each id it holds."""
    present = set(np.unique(label).tolist())
    labels = {TG263_NAMES[name]: i for name, i in LABELS.items() if i in present and name in TG263_NAMES}
    return {"format": MASK_FORMAT, "labels": labels, "data": _nifti_base64(label, affine)}


def result(
    hu: np.ndarray, affine: np.ndarray, params: SamplingParams, steps_run: int, seconds: float, **extra: Any
) -> tuple[str, dict[str, Any]]:
    """The task's answer to MONAI Label: (CT file, JSON describing it)."""
    description = {
        "seed": params.seed,
        "sampler": params.sampler,
        "num_inference_steps": steps_run,
        "shape": list(hu.shape),
        "spacing_mm": np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0)).tolist(),
        "affine": np.asarray(affine, float).tolist(),
        "dtype": "int16",
        "unit": "HU",
        "sampling_seconds": round(seconds, 3),
        **extra,
    }
    return write_ct(hu, affine), description
