"""An independent reading for the tests: a CT series through SimpleITK (GDCM), as an array and affine in RAS order."""

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from scripts.dicom.grid import LPS_TO_RAS, reorient


def read_series_ras(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The CT series in `folder` read by SimpleITK: voxels in RAS order (as ingest writes them) and their RAS affine."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = np.reshape(image.GetDirection(), (3, 3)) * np.asarray(image.GetSpacing())
    affine_lps[:3, 3] = image.GetOrigin()
    return reorient(sitk.GetArrayFromImage(image).transpose(2, 1, 0), LPS_TO_RAS @ affine_lps, "RAS")
