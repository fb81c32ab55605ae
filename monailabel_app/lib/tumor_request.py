"""The tumor a `synthesize_tumor` request asks for, as a mask on the synthetic volume's grid.

Two ways, exactly one per request:
- `foreground`: clicks as voxel positions [i, j, k] of the request's image (MONAI Label's convention;
  fractions allowed), each the centre of an irregular tumor of `tumor_diameter_mm`
  (`scripts.sampling.tumor_request.mask_from_centre`, seeded with `seed + n` for click n).
- an uploaded `label`: a binary (0/1) NIfTI on the image's grid (same shape and affine).
Both map into the synthetic volume as `lib.working_frame` defines.
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
from scripts.sampling.tumor_request import MAX_DIAMETER_MM, MIN_DIAMETER_MM, mask_from_centre

MAX_CLICKS = 8


@dataclass(frozen=True)
class TumorRequest:
    """The tumor mask on the working grid, the frame that places it, and where it came from."""

    mask: np.ndarray
    frame: WorkingFrame
    source: str  # "foreground" or "label"


def clicked_mask(
    image: UserImage, frame: WorkingFrame, record: dict, clicks: list, diameter_mm: float, seed: int
) -> np.ndarray:
    """The union of one seeded tumor per click, on the frame's grid."""
    mask = np.zeros(frame.shape, np.uint8)
    for n, click in enumerate(clicks):
        if any(not -0.5 <= c <= size - 0.5 for c, size in zip(click, image.shape)):
            raise RequestError(
                "foreground", f"point {n} {list(click)} lies outside the image ({list(image.shape)} voxels)"
            )
        try:
            blob, _ = mask_from_centre(record, frame.to_centred_mm(image.world(click)), diameter_mm, seed + n)
        except ValueError as error:  # the bundle explains why the tumor does not fit
            raise RequestError("foreground", f"point {n} {list(click)}: {error}") from error
        mask |= blob
    return mask


def label_mask(image: UserImage, frame: WorkingFrame, path: str | Path, voxel_limit: int) -> np.ndarray:
    """The uploaded binary label, checked against the image's grid and mapped onto the frame's grid."""
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
    try:
        return resample_mask(data, image.affine, frame.affine, frame.shape, "label")
    except ValueError as error:  # the tumor leaves the synthetic volume, or is smaller than a voxel
        raise RequestError("label", str(error)) from error


def tumor_request(
    request: Mapping[str, Any],
    record: dict,
    preprocessing: Callable[[dict], dict],
    default_diameter_mm: float,
    seed: int,
) -> TumorRequest:
    """Read `foreground` and `tumor_diameter_mm`, or `label`, from a request whose `image` and `label` paths the app resolved."""
    clicks = points(request, "foreground", MAX_CLICKS)
    diameter = number(request, "tumor_diameter_mm", default_diameter_mm, MIN_DIAMETER_MM, MAX_DIAMETER_MM)
    label = request.get("label")
    if bool(clicks) == bool(label):
        raise RequestError(
            "foreground",
            "give either foreground clicks (with tumor_diameter_mm) or an uploaded label, not both or neither",
        )
    voxel_limit = max_voxels(record)
    image = user_image(request["image"], voxel_limit)
    frame = working_frame(image, record, preprocessing)
    if label:
        return TumorRequest(label_mask(image, frame, label, voxel_limit), frame, "label")
    return TumorRequest(clicked_mask(image, frame, record, clicks, diameter, seed), frame, "foreground")
