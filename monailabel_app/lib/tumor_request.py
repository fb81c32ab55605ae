"""The tumor a request asks for: checked against the request's image, then as a mask on the grid the task needs.

Two ways, exactly one per request:
- `foreground`: clicks as voxel positions [i, j, k] of the request's image (MONAI Label's convention;
  fractions allowed), each the centre of an irregular tumor of `tumor_diameter_mm`, seeded with `seed + n` for click n.
- an uploaded `label`: a binary (0/1) NIfTI on the image's grid (same shape and affine).
`synthesize_tumor` maps them into the synthetic volume as `lib.working_frame` defines (`tumor_request`, the blobs of
`scripts.sampling.tumor_request.mask_from_centre`); `insert_tumor` keeps them on the image's own grid
(`native_tumor`, the blobs of `scripts.sampling.insertion.blob_on_grid`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lib.request_params import RequestError, number, points
from lib.working_frame import UserImage, WorkingFrame, max_voxels, read_header, user_image, working_frame
from scripts.data.masks import resample_mask
from scripts.sampling.insertion import blob_on_grid
from scripts.sampling.tumor_request import MAX_DIAMETER_MM, MIN_DIAMETER_MM, mask_from_centre

MAX_CLICKS = 8


@dataclass(frozen=True)
class TumorInput:
    """A request's tumor, checked against its image: the clicks with their diameter, or the uploaded label's voxels."""

    image: UserImage
    source: str  # "foreground" or "label"
    clicks: list[tuple[float, float, float]]
    diameter_mm: float
    label: np.ndarray | None  # the label's 0/1 voxels on the image's grid when source is "label"


@dataclass(frozen=True)
class TumorRequest:
    """The tumor mask on the working grid, the frame that places it, and where it came from."""

    mask: np.ndarray
    frame: WorkingFrame
    source: str  # "foreground" or "label"


def check_clicks(image: UserImage, clicks: list[tuple[float, float, float]]) -> None:
    """Refuse a click that lies outside the image's voxels, naming `foreground` and the click."""
    for n, click in enumerate(clicks):
        if any(not -0.5 <= c <= size - 0.5 for c, size in zip(click, image.shape)):
            raise RequestError(
                "foreground", f"point {n} {list(click)} lies outside the image ({list(image.shape)} voxels)"
            )


def checked_label(image: UserImage, path: str | Path, voxel_limit: int) -> np.ndarray:
    """The uploaded label's voxels, refused unless a non-empty binary mask on the image's grid."""
    label = read_header(path, "label", voxel_limit)
    if tuple(label.shape) != image.shape:
        raise RequestError(
            "label", f"has shape {list(label.shape)} but the image has {list(image.shape)}: draw it on the image's grid"
        )
    if not np.allclose(label.affine, image.affine, atol=1e-3):
        raise RequestError("label", "has another geometry (affine) than the image: draw it on the image's grid")
    data = np.asanyarray(label.dataobj)
    values = np.unique(data)
    if not set(values.tolist()) <= {0, 1}:
        raise RequestError("label", f"must be a binary 0/1 tumor mask, found values {values[:10].tolist()}")
    if not values.any():
        raise RequestError("label", "is empty: mark the tumor with 1")
    return data


def tumor_input(request: Mapping[str, Any], voxel_limit: int, default_diameter_mm: float) -> TumorInput:
    """Read `foreground` and `tumor_diameter_mm`, or `label`, from a request whose `image` and `label` paths the app
    resolved, and check them against the image."""
    clicks = points(request, "foreground", MAX_CLICKS)
    diameter = number(request, "tumor_diameter_mm", default_diameter_mm, MIN_DIAMETER_MM, MAX_DIAMETER_MM)
    label = request.get("label")
    if bool(clicks) == bool(label):
        raise RequestError(
            "foreground",
            "give either foreground clicks (with tumor_diameter_mm) or an uploaded label, not both or neither",
        )
    image = user_image(request["image"], voxel_limit)
    if label:
        return TumorInput(image, "label", [], diameter, checked_label(image, label, voxel_limit))
    check_clicks(image, clicks)
    return TumorInput(image, "foreground", clicks, diameter, None)


def clicked_mask(tumor: TumorInput, frame: WorkingFrame, record: dict, seed: int) -> np.ndarray:
    """The union of one seeded tumor per click, on the frame's grid."""
    mask = np.zeros(frame.shape, np.uint8)
    for n, click in enumerate(tumor.clicks):
        centre = frame.to_centred_mm(tumor.image.world(click))
        try:
            blob, _ = mask_from_centre(record, centre, tumor.diameter_mm, seed + n)
        except ValueError as error:  # the bundle explains why the tumor does not fit
            raise RequestError("foreground", f"point {n} {list(click)}: {error}") from error
        mask |= blob
    return mask


def label_mask(tumor: TumorInput, frame: WorkingFrame) -> np.ndarray:
    """The uploaded label mapped onto the frame's grid."""
    try:
        return resample_mask(tumor.label, tumor.image.affine, frame.affine, frame.shape, "label")
    except ValueError as error:  # the tumor leaves the synthetic volume, or is smaller than a voxel
        raise RequestError("label", str(error)) from error


def tumor_request(
    request: Mapping[str, Any],
    record: dict,
    preprocessing: Callable[[dict], dict],
    default_diameter_mm: float,
    seed: int,
) -> TumorRequest:
    """The tumor of a `synthesize_tumor` request on the synthetic volume's grid, and the frame that places it."""
    tumor = tumor_input(request, max_voxels(record), default_diameter_mm)
    frame = working_frame(tumor.image, record, preprocessing)
    if tumor.source == "label":
        return TumorRequest(label_mask(tumor, frame), frame, "label")
    return TumorRequest(clicked_mask(tumor, frame, record, seed), frame, "foreground")


def native_tumor(tumor: TumorInput, seed: int) -> np.ndarray:
    """The tumor on the image's own grid (for `insert_tumor`): the label's voxels, or one seeded blob per click."""
    if tumor.label is not None:
        return tumor.label > 0
    mask = np.zeros(tumor.image.shape, bool)
    for n, click in enumerate(tumor.clicks):
        mask |= blob_on_grid(
            tumor.image.shape, tumor.image.affine, tumor.image.world(click), tumor.diameter_mm, seed + n
        )
    if not mask.any():
        raise RequestError(
            "tumor_diameter_mm", f"a tumor of {tumor.diameter_mm:g} mm covers no voxel of the image: give a larger one"
        )
    return mask
