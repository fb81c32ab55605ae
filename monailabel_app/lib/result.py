"""What a task returns: the CT as an int16 NIfTI in HU with its true affine, and a JSON that carries the tumor mask.

MONAI Label sends one file per result, and Slicer's stock module would save it as a uint8 labelmap
(`result_dtype`, `result_extension`): both are ignored here, the CT is always `.nii.gz`, int16 HU.
The tumor mask travels inside the JSON, under `tumor_mask`: a gzipped NIfTI (uint8 0/1, same grid
and affine as the CT), base64-encoded in `data`; writing those bytes to a `.nii.gz` file gives the mask.
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lib.sampling_request import SamplingParams
from scripts.data.volumes import write_nifti

MASK_FORMAT = "nifti-gz-base64"


def write_ct(hu: np.ndarray, affine: np.ndarray) -> str:
    """The CT as an int16 NIfTI in a fresh temporary file, which the /infer endpoint sends and then deletes."""
    with tempfile.NamedTemporaryFile(prefix="synthetic_", suffix="_ct.nii.gz", delete=False) as handle:
        path = Path(handle.name)
    return str(write_nifti(np.asarray(hu, np.int16), affine, path))


def mask_payload(mask: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    """The tumor mask as JSON: a base64 gzipped NIfTI and its voxel count."""
    with tempfile.TemporaryDirectory() as folder:
        data = write_nifti(mask.astype(np.uint8), affine, Path(folder) / "tumor_mask.nii.gz").read_bytes()
    return {"format": MASK_FORMAT, "voxels": int(mask.sum()), "data": base64.b64encode(data).decode("ascii")}


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
