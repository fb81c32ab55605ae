"""One CT series from a folder of DICOM files, read the way ingestion reads it, with the header that identifies it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from scripts.dicom.grid import Grid
from scripts.dicom.index import group, list_files, read_headers
from scripts.dicom.series import SeriesError, check_series, read_hu


def read_ct_folder(folder: str | Path, parameter: str = "image") -> tuple[np.ndarray, Grid, Dataset]:
    """HU (columns, rows, slices), grid and first slice header (patient, study, frame of reference) of the one CT series
    under `folder`; a folder with no CT series, several, or a broken one is refused naming `parameter` and the folder."""
    root = Path(folder)
    paths = list_files(root)
    index = group(root, paths, read_headers(paths))
    series = [s for patient in index.patients.values() for s in patient.of_modality("CT")]
    if len(series) != 1:
        uids = [s.uid for s in series]
        raise ValueError(f"{parameter} {root}: needs exactly one CT series, found {len(series)} {uids}")
    try:
        grid, files = check_series(series[0])
        hu = read_hu(files)
    except SeriesError as error:
        raise ValueError(f"{parameter} {root}: {error}") from error
    return hu, grid, pydicom.dcmread(files[0].path, stop_before_pixels=True)
