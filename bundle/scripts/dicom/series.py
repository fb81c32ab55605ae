"""A CT series as one volume in HU on its true grid: geometry checks, slices ordered along the normal, rescale applied.

The checks run on headers alone, so a series is refused before any pixel is read. A series is refused (with the
reason) when it is multi-frame, has a single slice, is stored in a transfer syntax no installed pixel data handler
decodes, lacks geometry tags, mixes image sizes, pixel spacings, orientations or frames of reference, has duplicate
or missing slices, uneven slice spacing, or a gantry tilt. Compressed slices (JPEG, JPEG-LS, JPEG 2000, RLE) are
decoded by pydicom's handlers (GDCM, from requirements.txt).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pydicom
from pydicom import config
from pydicom.uid import JPEG2000, JPEG2000MC, UID, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless

from scripts.dicom.grid import Grid, slice_major
from scripts.dicom.index import DicomFile, Series

#: Largest difference between two slices' direction cosines that still counts as the same orientation.
ORIENTATION_TOLERANCE = 1e-4
#: Slices closer than this along the normal (mm) are duplicates.
DUPLICATE_TOLERANCE_MM = 0.01
#: Largest deviation of a slice gap from the median gap, as a fraction of it, before spacing counts as uneven.
SPACING_TOLERANCE = 0.01
#: Largest angle (degrees) between the slice normal and the line through the slice positions (gantry tilt).
TILT_TOLERANCE_DEG = 0.1
#: Transfer syntaxes that are, or may be, lossy (JPEG 2000 Image Compression holds either kind).
LOSSY_SYNTAXES = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, JPEG2000, JPEG2000MC})


class SeriesError(ValueError):
    """A CT series that cannot be one regular volume; the message says why and names the files."""


def _syntax_name(uid: str) -> str:
    """A transfer syntax as its name and UID, for messages ("unknown" when pydicom does not know the UID)."""
    name = UID(uid).name
    return f"{name if name != uid else 'unknown'} ({uid})"


def _decodable(uid: str) -> bool:
    """Whether an installed pydicom pixel data handler decodes this transfer syntax; none (no file meta) is native."""
    return not uid or any(h.is_available() and h.supports_transfer_syntax(UID(uid)) for h in config.pixel_data_handlers)


def _decoding_problem(files: Sequence[DicomFile]) -> str | None:
    """Why some slices' pixel data cannot be decoded here (from their transfer syntax), or None when all can."""
    refused = sorted({f.transfer_syntax for f in files if not _decodable(f.transfer_syntax)})
    if not refused:
        return None
    first = next(f.path for f in files if f.transfer_syntax == refused[0])
    return (
        f"transfer syntax {', '.join(map(_syntax_name, refused))} cannot be decoded: no installed pixel data handler "
        f"supports it (python-gdcm decodes JPEG, JPEG-LS and JPEG 2000; first file {first})"
    )


def lossy_warning(files: Sequence[DicomFile]) -> str | None:
    """A warning when slices are (or may be) lossily compressed, as their HU then differ from the scanner's; else None."""
    syntaxes = sorted({f.transfer_syntax for f in files if f.transfer_syntax in LOSSY_SYNTAXES})
    marked = sum(f.lossy for f in files)
    reasons = [f"transfer syntax {_syntax_name(uid)}" for uid in syntaxes]
    reasons += [f"LossyImageCompression 01 in {marked} of {len(files)} slices"] if marked else []
    return (
        f"CT slices may be lossily compressed ({'; '.join(reasons)}): HU may differ from the scanner's"
        if reasons
        else None
    )


def _geometry_problem(files: Sequence[DicomFile]) -> str | None:
    """Why these slices cannot share one in-plane grid, or None when they can."""
    for tag, value in (("ImagePositionPatient", "position"), ("ImageOrientationPatient", "orientation")):
        lacking = [f.path for f in files if getattr(f, value) is None]
        if lacking:
            return f"{lacking[0]} lacks {tag}"
    lacking = [f.path for f in files if f.pixel_spacing is None or not f.rows or not f.columns]
    if lacking:
        return f"{lacking[0]} lacks PixelSpacing, Rows or Columns"
    sizes = {(f.rows, f.columns, f.pixel_spacing) for f in files}
    if len(sizes) > 1:
        return f"slices differ in size or pixel spacing: {sorted(sizes)}"
    orientations = np.array([f.orientation for f in files])
    odd = np.nonzero(np.abs(orientations - orientations[0]).max(axis=1) > ORIENTATION_TOLERANCE)[0]
    if len(odd):
        return f"mixed orientations: {files[odd[0]].path} has {files[odd[0]].orientation}, {files[0].path} has {files[0].orientation}"
    lacking = [f.path for f in files if not f.frame_of_reference]
    if lacking:
        return f"{lacking[0]} lacks FrameOfReferenceUID"
    frames = sorted({f.frame_of_reference for f in files})
    return f"slices in {len(frames)} frames of reference: {frames}" if len(frames) > 1 else None


def _spacing_problem(along: np.ndarray, files: Sequence[DicomFile]) -> str | None:
    """Why slices at sorted positions `along` the normal are not evenly spaced, or None when they are."""
    gaps = np.diff(along)
    duplicate = np.nonzero(gaps < DUPLICATE_TOLERANCE_MM)[0]
    if len(duplicate):
        i = duplicate[0]
        return f"duplicate slices at {along[i]:.2f} mm along the normal: {files[i].path} and {files[i + 1].path}"
    step = float(np.median(gaps))
    uneven = np.nonzero(np.abs(gaps - step) > SPACING_TOLERANCE * step)[0]
    if not len(uneven):
        return None
    i = uneven[0]
    missing = round(gaps[i] / step) - 1
    if missing >= 1 and abs(gaps[i] / step - (missing + 1)) < 0.1:
        return (
            f"missing slice(s): a gap of {gaps[i]:.2f} mm (spacing {step:.2f} mm, so {missing} slice(s) missing) "
            f"between {files[i].path} and {files[i + 1].path}"
        )
    return (
        f"uneven slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm (first odd gap after {files[i].path})"
    )


def check_series(series: Series) -> tuple[Grid, list[DicomFile]]:
    """Check that a CT series' slices form one regular volume; returns its grid and the files in slice order."""
    files = series.files
    multi_frame = [f.path for f in files if f.frames > 1]
    if multi_frame:
        raise SeriesError(f"multi-frame (enhanced) CT is not supported: {multi_frame[0]}")
    if len(files) < 2:
        raise SeriesError(f"single-slice series ({files[0].path}): not a volume")
    problem = _decoding_problem(files) or _geometry_problem(files)
    if problem:
        raise SeriesError(problem)
    row_direction, column_direction = np.array(files[0].orientation[:3]), np.array(files[0].orientation[3:])
    normal = np.cross(row_direction, column_direction)
    positions = np.array([f.position for f in files])
    order = np.argsort(positions @ normal, kind="stable")
    files, positions = [files[i] for i in order], positions[order]
    problem = _spacing_problem(positions @ normal, files)
    if problem:
        raise SeriesError(problem)
    extent = positions[-1] - positions[0]
    tilt = np.degrees(np.arctan2(np.linalg.norm(extent - (extent @ normal) * normal), extent @ normal))
    if tilt > TILT_TOLERANCE_DEG:
        raise SeriesError(f"gantry tilt: slice positions run {tilt:.2f} degrees off the slice normal")
    row_spacing, column_spacing = files[0].pixel_spacing
    affine = np.eye(4)
    affine[:3, 0] = row_direction * column_spacing  # along a row: the column index grows
    affine[:3, 1] = column_direction * row_spacing  # down a column: the row index grows
    affine[:3, 2] = extent / (len(files) - 1)
    affine[:3, 3] = positions[0]
    return Grid((files[0].columns, files[0].rows, len(files)), affine, files[0].frame_of_reference), files


def read_hu(files: Sequence[DicomFile]) -> np.ndarray:
    """Read checked slices, in order, as HU (slope and intercept applied, rounded, clipped to int16), shape (columns, rows, slices)."""
    volume = slice_major((files[0].columns, files[0].rows, len(files)), np.int16)
    limits = np.iinfo(np.int16)
    for k, file in enumerate(files):
        try:
            dataset = pydicom.dcmread(file.path)
            pixels = dataset.pixel_array
        except Exception as error:  # truncated files and unsupported compression raise various types
            raise SeriesError(f"{file.path}: pixel data unreadable ({type(error).__name__}: {error})") from error
        if pixels.shape != (file.rows, file.columns):
            raise SeriesError(
                f"{file.path}: pixel data of shape {pixels.shape}, expected ({file.rows}, {file.columns})"
            )
        slope, intercept = float(dataset.get("RescaleSlope", 1) or 1), float(dataset.get("RescaleIntercept", 0) or 0)
        hu = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)  # exact for CT's integer range
        volume[:, :, k] = np.clip(np.rint(hu), limits.min, limits.max).T
    return volume
