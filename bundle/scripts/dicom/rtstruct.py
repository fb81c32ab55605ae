"""Rasterise an RTSTRUCT's closed planar contours onto a CT grid: filled polygons, holes by the even-odd rule.

A voxel belongs to an ROI when its centre lies inside an odd number of the ROI's contours on its slice (the
even-odd rule: a contour inside another cuts a hole, one inside that fills again). An ROI is
not used, with the reason, when it names another frame of reference than the CT, has no closed planar
contour, encloses no voxel centre, or has a contour that lies on no CT slice.
"""

from __future__ import annotations

import numpy as np
import pydicom

from scripts.dicom.grid import Grid, slice_major
from scripts.dicom.roi_names import RoiNames
from scripts.dicom.structures import Roi, StructureSet

#: How far (a fraction of the slice spacing) a contour may sit off a CT slice and still belong to it.
SLICE_TOLERANCE = 0.25


class RoiError(ValueError):
    """An ROI that cannot be rasterised; the message says why."""


def _slice_of(points: np.ndarray, voxels: np.ndarray, grid: Grid) -> int:
    """The CT slice a contour lies on; RoiError when it lies on none (between slices, outside, or not in-plane)."""
    k = int(np.rint(voxels[:, 2].mean()))
    off = float(np.abs(voxels[:, 2] - k).max())
    if off > SLICE_TOLERANCE or not 0 <= k < grid.shape[2]:
        centre = ", ".join(f"{v:.1f}" for v in points.mean(axis=0))
        raise RoiError(
            f"a contour around ({centre}) mm LPS lies on no CT slice (nearest slice {k}, {off:.2f} slices off)"
        )
    return k


def fill_even_odd(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Voxel centres (i, j) inside an odd number of the closed polygons (each N x 2 voxel coordinates), by scanline.

    Each scanline j counts the polygon edges crossing it at or left of each centre i: an odd count is inside.
    An edge covers the scanlines from its lower end (included) to its upper end (excluded), so a vertex on a
    scanline is counted once, and horizontal edges not at all. Work is limited to the polygons' bounding box.
    """
    mask = np.zeros(shape, bool)
    corners = np.concatenate(polygons)
    low = np.clip(np.floor(corners.min(axis=0)).astype(int), 0, shape)
    high = np.clip(np.ceil(corners.max(axis=0)).astype(int) + 1, 0, shape)
    width, height = high - low
    if width <= 0 or height <= 0:
        return mask
    crossings = np.zeros((width + 1, height), np.int32)
    for points in polygons:
        x0, y0 = points[:, 0] - low[0], points[:, 1] - low[1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        first = np.clip(np.ceil(np.minimum(y0, y1)), 0, height).astype(int)
        stop = np.clip(np.ceil(np.maximum(y0, y1)), 0, height).astype(int)
        count = np.maximum(stop - first, 0)
        edge = np.repeat(np.arange(len(points)), count)
        j = np.repeat(first, count) + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        x = x0[edge] + (j - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
        np.add.at(crossings, (np.clip(np.ceil(x), 0, width).astype(int), j), 1)
    mask[low[0] : high[0], low[1] : high[1]] = np.cumsum(crossings, axis=0)[:width] % 2 == 1
    return mask


def _decimals(dataset, keyword: str) -> np.ndarray:
    """A decimal-string tag as a float array, parsed straight from its bytes when pydicom has not converted it yet."""
    value = dataset.get_item(keyword).value
    try:
        return np.array(value.split(b"\\"), float) if isinstance(value, bytes) else np.asarray(value, float).ravel()
    except ValueError as error:
        raise RoiError(f"{keyword} holds text that is not a number") from error


def rasterise(contours, grid: Grid) -> np.ndarray:
    """Fill an ROI's closed planar contours (a ContourSequence) on `grid`, combining those of a slice by the even-odd rule."""
    closed = [c for c in contours if c.get("ContourGeometricType", "") == "CLOSED_PLANAR"]
    if not closed:
        others = sorted({str(c.get("ContourGeometricType", "")) for c in contours})
        raise RoiError("empty: no closed planar contour" + (f" (only {', '.join(others)})" if others else ""))
    by_slice: dict[int, list[np.ndarray]] = {}
    for contour in closed:
        points = _decimals(contour, "ContourData").reshape(-1, 3)
        voxels = grid.to_voxel(points)
        by_slice.setdefault(_slice_of(points, voxels, grid), []).append(voxels[:, :2])
    mask = slice_major(grid.shape, bool)
    for k, polygons in by_slice.items():
        mask[:, :, k] = fill_even_odd(polygons, grid.shape[:2])
    if not mask.any():
        raise RoiError("empty: its contours enclose no voxel centre")
    return mask


def read_rtstruct(path: str, grid: Grid, names: RoiNames) -> StructureSet:
    """Rasterise the ROIs of the RTSTRUCT at `path` whose names map to a structure; list the others as unmapped."""
    dataset = pydicom.dcmread(path, force=True)
    result = StructureSet("RTSTRUCT", path)
    contours = {
        int(item.ReferencedROINumber): item.get("ContourSequence", []) for item in dataset.get("ROIContourSequence", [])
    }
    frames = [item.get("FrameOfReferenceUID", "") for item in dataset.get("ReferencedFrameOfReferenceSequence", [])]
    if not dataset.get("StructureSetROISequence"):
        result.problems.append(f"{path}: holds no ROI")
    for roi in dataset.get("StructureSetROISequence", []):
        name = str(roi.get("ROIName", "")) or f"ROI {roi.ROINumber}"
        structure = names.structure(name)
        if structure is None:
            result.unmapped.append(name)
            continue
        frame = roi.get("ReferencedFrameOfReferenceUID", "") or (frames[0] if frames else "")
        try:
            if frame != grid.frame_of_reference:
                raise RoiError(f"in frame of reference {frame or '(none)'}, the CT is in {grid.frame_of_reference}")
            result.rois.append(Roi(name, structure, rasterise(contours.get(int(roi.ROINumber), []), grid)))
        except RoiError as error:
            result.problems.append(f"ROI '{name}' in {path}: {error}")
    return result
