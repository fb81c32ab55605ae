"""Read a DICOM SEG's segments onto a CT grid, frame by frame, by world position (no assumption that the grids match).

Each frame must lie in a plane parallel to the CT slices and on one of them; its pixels are sampled (nearest
neighbour) at the CT voxel centres of that slice. FRACTIONAL segments count where they reach half their maximum.
A segment is not used, with the reason, when the SEG names another frame of reference than the CT, the
segment has no frame or no voxel, or one of its frames lies on no CT slice.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from scripts.dicom.grid import Grid, slice_major
from scripts.dicom.roi_names import RoiNames
from scripts.dicom.rtstruct import SLICE_TOLERANCE
from scripts.dicom.structures import Roi, StructureSet

#: SOP Class UID of Segmentation Storage.
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
#: Largest sine of the angle between a frame and the CT slices that still counts as parallel.
PARALLEL_TOLERANCE = 1e-3
#: Largest deviation (frame pixels) of the CT-voxel-to-frame-pixel map from the identity for a frame to be read as is.
SAME_GRID_TOLERANCE = 1e-3


class FrameError(ValueError):
    """A SEG frame that does not lie on the CT grid; the message says where it is."""


def _functional(frame: Dataset, shared: Dataset, sequence: str) -> Dataset:
    """The item of a functional group for one frame: its own, else the shared one."""
    group = frame.get(sequence) or shared.get(sequence)
    if not group:
        raise FrameError(f"no {sequence} for a frame")
    return group[0]


def _nearest_pixels(
    matrix: np.ndarray, shift: np.ndarray, frame_shape: tuple[int, int], shape
) -> tuple[np.ndarray, np.ndarray]:
    """For each CT voxel (i, j) of a slice: the flat index of the nearest frame pixel, and whether it lies in the frame."""
    i, j = np.arange(shape[0])[:, None], np.arange(shape[1])[None, :]
    rows = np.rint(matrix[0, 0] * i + matrix[0, 1] * j + shift[0]).astype(np.int64)
    columns = np.rint(matrix[1, 0] * i + matrix[1, 1] * j + shift[1]).astype(np.int64)
    inside = (rows >= 0) & (rows < frame_shape[0]) & (columns >= 0) & (columns < frame_shape[1])
    return np.where(inside, rows * frame_shape[1] + columns, 0), inside


def _sampler(
    matrix: np.ndarray, shift: np.ndarray, frame_shape: tuple[int, int], shape
) -> Callable[[np.ndarray], np.ndarray]:
    """From a frame's pixels to their values at one CT slice's voxel centres (nearest neighbour, 0 outside the frame).

    A frame on the CT's own pixel grid (the usual SEG) is only transposed, skipping the per-voxel lookup.
    """
    identity = np.allclose(matrix, [[0, 1], [1, 0]], atol=SAME_GRID_TOLERANCE)
    if identity and np.allclose(shift, 0, atol=SAME_GRID_TOLERANCE) and tuple(frame_shape) == (shape[1], shape[0]):
        return np.transpose
    flat, inside = _nearest_pixels(matrix, shift, frame_shape, shape)
    return lambda pixels: np.where(inside, np.take(pixels, flat), 0)


def _frame_placement(frame: Dataset, shared: Dataset, grid: Grid) -> tuple[int, np.ndarray, np.ndarray]:
    """The CT slice a frame lies on, and the affine map from that slice's voxel (i, j) to the frame's (row, column)."""
    orientation = np.asarray(_functional(frame, shared, "PlaneOrientationSequence").ImageOrientationPatient, float)
    spacing = np.asarray(_functional(frame, shared, "PixelMeasuresSequence").PixelSpacing, float)
    origin = np.asarray(_functional(frame, shared, "PlanePositionSequence").ImagePositionPatient, float)
    along_row, along_column = orientation[:3], orientation[3:]
    if np.linalg.norm(np.cross(np.cross(along_row, along_column), grid.normal)) > PARALLEL_TOLERANCE:
        raise FrameError(f"a frame at {origin.round(1).tolist()} mm LPS is not parallel to the CT slices")
    offset = grid.to_voxel(origin[None])[0, 2]
    k = int(np.rint(offset))
    if abs(offset - k) > SLICE_TOLERANCE or not 0 <= k < grid.shape[2]:
        raise FrameError(f"a frame at {origin.round(1).tolist()} mm LPS lies on no CT slice")
    # project the LPS position of CT voxel (i, j, k) onto the frame's row and column axes
    axes = np.stack([along_column / spacing[0], along_row / spacing[1]])
    return k, axes @ grid.affine_lps[:3, :2], axes @ (grid.affine_lps[:3, 2] * k + grid.affine_lps[:3, 3] - origin)


def _mapped_segments(dataset: Dataset, names: RoiNames) -> tuple[dict[int, tuple[str, str]], list[str]]:
    """Segment number to (label, structure) for the labels a pattern maps, and the labels none maps."""
    mapped, unmapped = {}, []
    for segment in dataset.get("SegmentSequence", []):
        label = (
            str(segment.get("SegmentLabel", "") or segment.get("SegmentDescription", ""))
            or f"segment {segment.SegmentNumber}"
        )
        structure = names.structure(label)
        if structure is None:
            unmapped.append(label)
        else:
            mapped[int(segment.SegmentNumber)] = (label, structure)
    return mapped, unmapped


def _segment_masks(dataset: Dataset, grid: Grid, numbers: set[int]) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """The frames of the segments `numbers` sampled onto the CT grid, and why a segment could not be placed."""
    binary = dataset.SegmentationType == "BINARY"
    threshold = 0 if binary else 0.5 * float(dataset.get("MaximumFractionalValue", 255))
    pixels = dataset.pixel_array.reshape(-1, dataset.Rows, dataset.Columns)
    shared = dataset.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    masks = {number: slice_major(grid.shape, bool) for number in numbers}
    errors: dict[int, str] = {}
    samplings: dict[tuple, Callable[[np.ndarray], np.ndarray]] = {}  # frames usually share one in-plane placement
    for index, frame_item in enumerate(dataset.get("PerFrameFunctionalGroupsSequence", [])):
        number = int(_functional(frame_item, shared, "SegmentIdentificationSequence").ReferencedSegmentNumber)
        if number not in masks or number in errors:
            continue
        try:
            k, matrix, shift = _frame_placement(frame_item, shared, grid)
        except FrameError as error:
            errors[number] = str(error)
            continue
        key = tuple(np.round(np.concatenate([matrix.ravel(), shift]), 6))
        if key not in samplings:
            samplings[key] = _sampler(matrix, shift, pixels.shape[1:], grid.shape[:2])
        masks[number][:, :, k] |= samplings[key](pixels[index]) > threshold
    return masks, errors


def read_seg(path: str, grid: Grid, names: RoiNames) -> StructureSet:
    """Read the segments of the SEG at `path` whose labels map to a structure; list the others as unmapped."""
    dataset = pydicom.dcmread(path)
    result = StructureSet("SEG", path)
    if dataset.get("SOPClassUID") != SEGMENTATION_STORAGE:
        result.problems.append(f"{path}: not a Segmentation Storage object (SOP Class {dataset.get('SOPClassUID')})")
        return result
    segments, result.unmapped = _mapped_segments(dataset, names)
    if not segments:
        return result
    frame = str(dataset.get("FrameOfReferenceUID", ""))
    if frame != grid.frame_of_reference:
        labels = ", ".join(label for label, _ in segments.values())
        result.problems.append(
            f"segments {labels} in {path}: in frame of reference {frame or '(none)'}, the CT is in {grid.frame_of_reference}"
        )
        return result
    masks, errors = _segment_masks(dataset, grid, set(segments))
    for number, (label, structure) in segments.items():
        if number in errors or not masks[number].any():
            result.problems.append(
                f"segment '{label}' in {path}: {errors.get(number, 'empty: no voxel on the CT grid')}"
            )
        else:
            result.rois.append(Roi(label, structure, masks[number]))
    return result
